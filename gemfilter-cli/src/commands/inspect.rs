//! `gemfilter inspect`: what a model is and how GemFilter would use it.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use gemfilter_core::RopeScaling;
use gemfilter_models::FilterLayerSource;
use serde_json::json;

use super::{ComputeArgs, load_model};

/// Arguments of `gemfilter inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand.
pub fn run(args: InspectArgs) -> Result<()> {
    let compute = args.compute.resolve()?;
    let model = load_model(&args.model, &compute)?;
    let info = model.info();
    let c = model.decoder().config();
    let rope = match &c.rope.scaling {
        RopeScaling::None => "default".to_string(),
        RopeScaling::Linear { factor } => format!("linear (factor {factor})"),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => format!(
            "llama3 (factor {factor}, low {low_freq_factor}, high {high_freq_factor}, original context {original_max_position_embeddings})"
        ),
        RopeScaling::Frequencies { divisors } => {
            format!(
                "per-frequency divisors from the file ({} values)",
                divisors.len()
            )
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            attention_factor,
        } => format!(
            "longrope (original context {original_max_position_embeddings}, attention factor {attention_factor:.4}, short factors {short_factor:?}, long factors {long_factor:?}; long ones apply past the original context)"
        ),
    };
    let source = match &info.filter_layer.source {
        FilterLayerSource::Known(name) => format!("known: {name}"),
        FilterLayerSource::Calibration(path) => format!("calibrated: {}", path.display()),
        FilterLayerSource::Fallback => {
            "fallback: round(layers × 13 / 32), not calibrated".to_string()
        }
    };
    if args.json {
        let object = json!({
            "model": info.path.display().to_string(),
            "architecture": info.architecture.name(),
            "config": c,
            "eos_token_ids": info.eos_token_ids,
            "chat_template": model.chat_template().is_some(),
            "default_filter_layer": info.filter_layer,
            "weight_files": info.weight_files,
            "unused_tensors": info.unused_tensors,
            "weight_format": info.weight_format.name(),
            "weights": info.weights,
            "weight_bytes": info.weights.total_bytes(),
        });
        println!("{}", serde_json::to_string_pretty(&object)?);
        return Ok(());
    }
    println!("model:          {}", info.path.display());
    println!("architecture:   {}", info.architecture.name());
    println!("layers:         {}", c.num_layers);
    println!(
        "hidden size:    {} (MLP {})",
        c.hidden_size, c.intermediate_size
    );
    println!(
        "attention:      {} heads, {} KV heads ({} per group), head_dim {}",
        c.num_heads,
        c.num_kv_heads,
        c.kv_groups(),
        c.head_dim
    );
    println!(
        "window:         {}",
        c.sliding_window
            .map_or("none".to_string(), |w| format!("{w} positions"))
    );
    println!(
        "rope:           θ = {}, rotary dims {}, {rope}",
        c.rope.theta, c.rope.rotary_dim
    );
    println!("context:        {} positions", c.max_position_embeddings);
    println!(
        "vocabulary:     {} ({} in tokenizer)",
        c.vocab_size,
        model.tokenizer().vocab_size()
    );
    println!(
        "embeddings:     {}",
        if c.tie_word_embeddings {
            "tied"
        } else {
            "separate LM head"
        }
    );
    println!("eos token ids:  {:?}", info.eos_token_ids);
    println!(
        "chat template:  {}",
        if model.chat_template().is_some() {
            "yes"
        } else {
            "no"
        }
    );
    println!("filter layer:   {} ({source})", info.filter_layer.layer);
    println!(
        "weights:        --weights {}: {} ({:.1} MiB in all)",
        info.weight_format,
        info.weights.describe(),
        info.weights.total_bytes() as f64 / (1024.0 * 1024.0)
    );
    if !info.unused_tensors.is_empty() {
        println!("unused tensors: {}", info.unused_tensors.join(", "));
    }
    Ok(())
}
