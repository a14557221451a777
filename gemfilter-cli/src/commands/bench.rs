//! `gemfilter bench`: time to first token, decode speed and peak memory of full attention and
//! GemFilter at several prompt lengths (a benchmark, not a test).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use gemfilter_core::{GemFilterSelector, GenerationConfig, Method, generate};
use gemfilter_models::needle::{Haystack, Needle, build_prompt};
use serde::Serialize;

use super::{load_model_or_demo, select_device};
use crate::backend::Backend;
use crate::memory;

/// Arguments of `gemfilter bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model folder or .gguf file (default: the demo model, fetched if absent).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 2000, 4000, 8000])]
    pub lengths: Vec<usize>,
    /// GemFilter budgets to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 1024])]
    pub top_k: Vec<usize>,
    /// 0-based filter layer (default: calibrated, known or fallback).
    #[arg(long)]
    pub filter_layer: Option<usize>,
    /// Tokens decoded after the first (for tokens/s).
    #[arg(long, default_value_t = 16)]
    pub decode_tokens: usize,
    /// Skip full attention (long prompts on slow machines).
    #[arg(long)]
    pub skip_full: bool,
    /// Use the blocked attention with explicit masks instead of the backend's fused op.
    #[arg(long)]
    pub no_fused_attention: bool,
    /// Compute backend.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Prompt tokens.
    pub tokens: usize,
    /// "full" or "gemfilter-k<k>".
    pub method: String,
    /// Selection time (s).
    pub select_s: f64,
    /// Prefill time (s).
    pub prefill_s: f64,
    /// Time to first token (s).
    pub ttft_s: f64,
    /// Decode speed after the first token.
    pub decode_tokens_per_s: f64,
    /// Peak resident memory during the run (MiB).
    pub peak_rss_mib: Option<f64>,
    /// TTFT relative to full attention at the same length.
    pub ttft_vs_full: Option<f64>,
    /// Peak memory relative to full attention at the same length.
    pub memory_vs_full: Option<f64>,
}

/// Runs the subcommand.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.lengths.is_empty() || args.lengths.contains(&0) {
        bail!("--lengths must list positive token counts");
    }
    if args.top_k.contains(&0) {
        bail!("--top-k must be at least 1 (got 0)");
    }
    let (backend, device) = select_device(args.backend, 0)?;
    let mut model = load_model_or_demo(args.model.as_deref(), &device)?;
    model
        .decoder_mut()
        .set_fused_attention(!args.no_fused_attention);
    model.decoder_mut().set_progress_hook(None);
    let layer = args.filter_layer.unwrap_or(model.info().filter_layer.layer);
    let max_positions = model.decoder().config().max_position_embeddings;
    if let Some(&too_long) = args.lengths.iter().find(|&&l| l > max_positions) {
        bail!(
            "--lengths {too_long} exceeds the model's {max_positions} positions (max_position_embeddings)"
        );
    }
    let chat = model.chat_template().is_some();
    let selector = GemFilterSelector::default();
    // No EOS: every run decodes the same number of tokens.
    let config = GenerationConfig::greedy(args.decode_tokens + 1, Vec::new());
    let mut rows: Vec<Row> = Vec::new();
    for &length in &args.lengths {
        let prompt = build_prompt(
            &model,
            &Haystack::default(),
            &Needle::default(),
            length,
            0.5,
            chat,
        )?;
        let mut methods: Vec<(String, Method)> = Vec::new();
        if !args.skip_full {
            methods.push(("full".into(), Method::Full));
        }
        for &top_k in &args.top_k {
            methods.push((
                format!("gemfilter-k{top_k}"),
                Method::GemFilter {
                    filter_layer: layer,
                    top_k,
                    selector: &selector,
                },
            ));
        }
        let mut full: Option<(f64, Option<f64>)> = None;
        for (name, method) in methods {
            memory::reset_peak();
            let out = generate(model.decoder(), &prompt.ids, method, &config)?;
            let peak = memory::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0));
            let t = out.timings;
            let decoded = out.tokens.len().saturating_sub(1);
            let ttft = t.time_to_first_token().as_secs_f64();
            if name == "full" {
                full = Some((ttft, peak));
            }
            let row = Row {
                tokens: prompt.ids.len(),
                method: name,
                select_s: t.select.as_secs_f64(),
                prefill_s: t.prefill.as_secs_f64(),
                ttft_s: ttft,
                decode_tokens_per_s: if decoded > 0 {
                    decoded as f64 / t.decode.as_secs_f64()
                } else {
                    0.0
                },
                peak_rss_mib: peak,
                ttft_vs_full: full.map(|(f, _)| ttft / f),
                memory_vs_full: full.and_then(|(_, m)| Some(peak? / m?)),
            };
            if !args.json {
                print_row(&row, rows.is_empty());
            }
            rows.push(row);
        }
    }
    if args.json {
        let object = serde_json::json!({
            "model": model.info().path.display().to_string(),
            "backend": backend.name(),
            "filter_layer": layer,
            "fused_attention": !args.no_fused_attention,
            "rows": rows,
        });
        println!("{}", serde_json::to_string(&object)?);
    }
    Ok(())
}

fn print_row(row: &Row, header: bool) {
    if header {
        println!(
            "{:>7} {:>16} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9}",
            "tokens",
            "method",
            "select s",
            "prefill s",
            "ttft s",
            "decode t/s",
            "peak MiB",
            "ttft/full",
            "mem/full"
        );
    }
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    println!(
        "{:>7} {:>16} {:>9.2} {:>9.2} {:>9.2} {:>10.1} {:>9} {:>9} {:>9}",
        row.tokens,
        row.method,
        row.select_s,
        row.prefill_s,
        row.ttft_s,
        row.decode_tokens_per_s,
        row.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
        ratio(row.ttft_vs_full),
        ratio(row.memory_vs_full)
    );
}
