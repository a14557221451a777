//! Load a Hugging Face LLaMA folder, answer a long prompt with GemFilter, print the kept text.
//!
//! ```text
//! cargo run --release -p gemfilter-examples --example basic -- MODEL_DIR [PROMPT_FILE]
//! ```
//! Without arguments it runs on the tiny test checkpoint under `tests/fixtures/llama-gqa`.

use anyhow::Result;
use gemfilter_models::burn::tensor::Device;
use gemfilter_models::{Model, Request};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let folder = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/llama-gqa").to_string()
    });
    let prompt = match args.next() {
        Some(path) => std::fs::read_to_string(path)?,
        None => {
            "The copper lantern is under the bridge. ".repeat(40) + "Where is the copper lantern?"
        }
    };

    // The device picks the backend: Device::flex() here; Device::cuda(0), Device::wgpu(..)
    // with the matching cargo feature.
    let model = Model::load(&folder, &Device::flex())?;
    let request = Request {
        max_new_tokens: 32,
        ..Request::gemfilter(64)
    };
    let answer = model.generate(&prompt, &request)?;

    let generation = &answer.generation;
    println!("answer: {}", answer.text);
    println!(
        "{} → {} tokens at filter layer {:?}; time to first token {:.3} s",
        generation.input_tokens,
        generation.kept_tokens,
        answer.filter_layer,
        generation.timings.time_to_first_token().as_secs_f64()
    );
    println!("kept text: {}", model.kept_text(&answer)?);
    Ok(())
}
