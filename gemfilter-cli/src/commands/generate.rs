//! `gemfilter generate`: answer a prompt with GemFilter or full attention.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use gemfilter_core::{EarlyKv, Sampling};
use gemfilter_models::{Answer, KvMethod, Mode, Model, Request, SelectorSpec};
use serde_json::json;

use super::needle::KvHeads;
use super::{ComputeArgs, load_model};
use crate::backend::Backend;
use crate::progress;

/// Arguments of `gemfilter generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Hugging Face model folder (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Read the prompt from this file.
    #[arg(long, conflicts_with = "prompt", required_unless_present = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// The prompt text.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Tokens kept by the selection (k).
    #[arg(long, default_value_t = 1024)]
    pub top_k: usize,
    /// 0-based filter layer r (default: the model's known or fallback layer; see `inspect`).
    #[arg(long)]
    pub filter_layer: Option<usize>,
    /// Selector spec: `gemfilter` (the paper's) or settings such as
    /// `window=32,norm=softmax,spans=sentence` (see the README).
    #[arg(long, default_value = "gemfilter", conflicts_with = "full")]
    pub selector: String,
    /// Use full attention over the whole prompt instead of GemFilter.
    #[arg(long)]
    pub full: bool,
    /// Answer with a KV-compression baseline instead of GemFilter: full prefill, then `--top-k`
    /// cache entries per layer and head (`snapkv` or `h2o`, reference settings).
    #[arg(long, value_enum, conflicts_with_all = ["full", "selector"])]
    pub baseline: Option<Baseline>,
    /// Propagate instead of rerunning: after the selection, the kept tokens carry on from the
    /// filter layer with what the early layers computed over the whole prompt; decoding sees
    /// every early-layer position (`all`) or the kept ones only (`kept`).
    #[arg(long, value_enum, conflicts_with_all = ["full", "baseline"])]
    pub propagate: Option<EarlyKvArg>,
    /// Heads sharing kept positions in a baseline.
    #[arg(long, value_enum, default_value_t = KvHeads::Query, requires = "baseline")]
    pub kv_heads: KvHeads,
    /// Upper bound on generated tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Wrap the prompt as a user turn of the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Generate exactly --max-new-tokens, past end-of-sequence tokens (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop where the answer text contains this sequence (repeat for several).
    #[arg(long)]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus mass kept when sampling.
    #[arg(long, default_value_t = 1.0, requires = "temperature")]
    pub top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0, requires = "temperature")]
    pub seed: u64,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A KV-compression baseline of the paper's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// SnapKV (observation window 32, average pooling, kernel 5).
    Snapkv,
    /// H2O (accumulated attention, 32 recent positions).
    H2o,
}

/// Which early-layer keys and values a propagated prompt decodes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EarlyKvArg {
    /// Every position the early layers computed.
    All,
    /// The kept positions only (the smallest cache).
    Kept,
}

impl Baseline {
    fn kv_method(self) -> KvMethod {
        match self {
            Baseline::Snapkv => KvMethod::SnapKv,
            Baseline::H2o => KvMethod::H2o,
        }
    }
}

/// Runs the subcommand.
pub fn run(args: GenerateArgs) -> Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1 (got 0)");
    }
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read prompt file {}", path.display()))?,
        (None, None) => bail!("give the prompt with --prompt TEXT or --prompt-file FILE"),
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty: nothing to generate from");
    }
    let spec: SelectorSpec = args.selector.parse()?;
    let compute = args.compute.resolve()?;
    let backend = compute.backend;
    let model = load_model(&args.model, &compute)?;
    if let Some(layer) = args.filter_layer {
        let layers = model.decoder().config().num_layers;
        if layer >= layers {
            bail!(
                "--filter-layer {layer} is out of range: the model has {layers} layers (valid: 0..={})",
                layers - 1
            );
        }
    }
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::TopP {
            temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
    };
    let mode = match (args.full, args.baseline) {
        (true, _) => Mode::Full,
        (false, None) if args.propagate.is_some() => Mode::Propagate {
            filter_layer: args.filter_layer,
            top_k: args.top_k,
            early_kv: match args.propagate {
                Some(EarlyKvArg::Kept) => EarlyKv::Kept,
                _ => EarlyKv::All,
            },
        },
        (false, Some(baseline)) => Mode::KvCompressed {
            method: baseline.kv_method(),
            budget: args.top_k,
            heads: args.kv_heads.sharing(),
        },
        (false, None) => Mode::GemFilter {
            filter_layer: args.filter_layer,
            top_k: args.top_k,
        },
    };
    let ids = model.prompt_ids(&prompt, args.chat)?;
    let selector = spec.build(model.tokenizer(), &ids)?;
    let request = Request {
        mode,
        max_new_tokens: args.max_new_tokens,
        chat: args.chat,
        sampling,
        selector: Some(selector.into()),
        run: progress::run_options(),
        ignore_eos: args.ignore_eos,
        stop: args.stop.clone(),
    };
    let answer = model.generate_ids(&ids, &request)?;
    if args.json {
        print_json(&args, backend, &model, &answer)
    } else {
        print_human(backend, &model, &answer)
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn print_json(args: &GenerateArgs, backend: Backend, model: &Model, answer: &Answer) -> Result<()> {
    let generation = &answer.generation;
    let selection = generation.selection.as_ref();
    let object = json!({
        "model": args.model.display().to_string(),
        "architecture": model.info().architecture.name(),
        "backend": backend.name(),
        "method": method_name(args, answer),
        "selector": selection.map(|_| args.selector.clone()),
        "input_tokens": generation.input_tokens,
        "kept_tokens": generation.kept_tokens,
        "selection_skipped": generation.selection_skipped,
        "filter_layer": answer.filter_layer,
        "top_k": answer.top_k,
        "selected_positions": selection.map(|s| s.positions.clone()),
        "kv_cache_entries": generation.compression.as_ref().map(|c| c.entries),
        "kv_heads": generation.compression.as_ref().map(|c| c.heads),
        "kept_text": if selection.is_some() { Some(model.kept_text(answer)?) } else { None },
        "answer": answer.text,
        "answer_tokens": generation.tokens,
        "finish_reason": generation.finish_reason,
        "timings_ms": {
            "select": ms(generation.timings.select),
            "prefill": ms(generation.timings.prefill),
            "decode": ms(generation.timings.decode),
        },
    });
    println!("{}", serde_json::to_string(&object)?);
    Ok(())
}

fn method_name(args: &GenerateArgs, answer: &Answer) -> &'static str {
    match (args.baseline, &answer.generation.selection) {
        (Some(Baseline::Snapkv), _) => "snapkv",
        (Some(Baseline::H2o), _) => "h2o",
        (None, Some(_)) => "gemfilter",
        (None, None) => "full",
    }
}

fn print_human(backend: Backend, model: &Model, answer: &Answer) -> Result<()> {
    let generation = &answer.generation;
    let timings = generation.timings;
    println!("{}", answer.text.trim());
    println!();
    let config = model.decoder().config();
    println!(
        "model:   {} ({}, {} layers) on {}",
        model.info().path.display(),
        model.info().architecture.name(),
        config.num_layers,
        backend.name()
    );
    match (answer.filter_layer, answer.top_k, &generation.compression) {
        (Some(_), Some(top_k), _) if generation.selection_skipped => println!(
            "method:  gemfilter, top-k {top_k}: the {} prompt tokens fit in the budget, so no \
             selection pass ran (same answer as full attention)",
            generation.input_tokens
        ),
        (Some(layer), Some(top_k), _) => println!(
            "method:  gemfilter, filter layer {layer}, top-k {top_k}: {} → {} tokens",
            generation.input_tokens, generation.kept_tokens
        ),
        (_, _, Some(outcome)) => println!(
            "method:  KV compression after full prefill over {} tokens: {} cache entries per layer for each of {} heads",
            generation.input_tokens, outcome.entries, outcome.heads
        ),
        _ => println!(
            "method:  full attention over {} tokens",
            generation.input_tokens
        ),
    }
    let decode_rate = if timings.decode.as_secs_f64() > 0.0 && generation.tokens.len() > 1 {
        format!(
            ", {:.1} tokens/s",
            (generation.tokens.len() - 1) as f64 / timings.decode.as_secs_f64()
        )
    } else {
        String::new()
    };
    println!(
        "timings: select {:.3} s, prefill {:.3} s, decode {:.3} s ({} tokens{decode_rate}, {:?})",
        timings.select.as_secs_f64(),
        timings.prefill.as_secs_f64(),
        timings.decode.as_secs_f64(),
        generation.tokens.len(),
        generation.finish_reason,
    );
    if generation.selection.is_some() {
        println!();
        println!(
            "kept text ({} marks dropped text):",
            gemfilter_models::GAP_MARKER.trim()
        );
        println!("{}", model.kept_text(answer)?);
    }
    Ok(())
}
