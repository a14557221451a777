//! `gemfilter calibrate`: find the filter layer automatically. One forward per probe prompt
//! captures the GemFilter selection at every layer; the mean needle recall per layer decides.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use gemfilter_core::{GemFilterSelector, selections_per_layer};
use gemfilter_models::filter_layers::{Calibration, LayerRecall, calibration_path, signature};
use gemfilter_models::needle::build_prompt;

use super::needle::NeedleOptions;
use super::{load_model_or_demo, select_device};
use crate::backend::Backend;
use crate::progress;

/// Arguments of `gemfilter calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Model folder or .gguf file (default: the demo model, fetched if absent).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Probe prompt lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 2000])]
    pub lengths: Vec<usize>,
    /// Needle depths of the probe prompts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.3, 0.5, 0.7, 0.9])]
    pub depths: Vec<f64>,
    /// Token budget of the selection.
    #[arg(long, default_value_t = 256)]
    pub top_k: usize,
    /// Recommend the earliest layer whose mean recall is at most this far below the best.
    #[arg(long, default_value_t = 0.05)]
    pub tolerance: f64,
    #[command(flatten)]
    pub prompt: NeedleOptions,
    /// Compute backend.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Write the calibration here instead of the model's calibration file in the cache.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: CalibrateArgs) -> Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1 (got 0)");
    }
    if args.lengths.is_empty() || args.lengths.contains(&0) {
        bail!("--lengths must list positive token counts");
    }
    if args.depths.is_empty() || args.depths.iter().any(|d| !(0.0..=1.0).contains(d)) {
        bail!("--depths must list values in [0, 1]");
    }
    if !(0.0..=1.0).contains(&args.tolerance) {
        bail!("--tolerance must lie in [0, 1] (got {})", args.tolerance);
    }
    let haystack = args.prompt.haystack()?;
    let needle = args.prompt.needle()?;
    let (_, device) = select_device(args.backend, 0)?;
    let model = load_model_or_demo(args.model.as_deref(), &device)?;
    let config = model.decoder().config().clone();
    let chat = args.prompt.chat(&model);
    let selector = GemFilterSelector::default();

    let probes = args.lengths.len() * args.depths.len();
    let bar = progress::counter(probes as u64, "calibration prompts");
    let mut sums = vec![0.0f64; config.num_layers];
    for &length in &args.lengths {
        for &depth in &args.depths {
            bar.set_message(format!("{length} tokens, depth {depth:.2}"));
            let prompt = build_prompt(&model, &haystack, &needle, length, depth, chat)?;
            let selections = selections_per_layer(
                model.decoder(),
                &prompt.ids,
                args.top_k,
                &selector,
                config.num_layers - 1,
            )?;
            for (layer, selection) in selections.iter().enumerate() {
                sums[layer] += prompt.recall(&selection.positions);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let per_layer: Vec<LayerRecall> = sums
        .iter()
        .enumerate()
        .map(|(layer, sum)| LayerRecall {
            layer,
            mean_recall: sum / probes as f64,
        })
        .collect();
    let (recommended, best) =
        Calibration::recommend(&per_layer, args.tolerance).expect("at least one layer");
    let calibration = Calibration {
        model: model.info().path.display().to_string(),
        signature: signature(model.info().architecture, &config),
        recommended_layer: recommended,
        best_layer: best,
        tolerance: args.tolerance,
        top_k: args.top_k,
        lengths: args.lengths.clone(),
        depths: args.depths.clone(),
        per_layer: per_layer.clone(),
    };
    let default_path = calibration_path(&model.info().path, model.info().architecture, &config);
    let path = args.output.clone().unwrap_or_else(|| default_path.clone());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&calibration)?)
        .with_context(|| format!("cannot write {}", path.display()))?;

    println!(
        "layer  mean needle recall (top-k {}, {probes} prompts)",
        args.top_k
    );
    for l in &per_layer {
        let marker = match l.layer {
            x if x == recommended && x == best => "  <- recommended, best",
            x if x == recommended => "  <- recommended",
            x if x == best => "  <- best",
            _ => "",
        };
        println!(
            "{:>5}  {:.3} {}{marker}",
            l.layer,
            l.mean_recall,
            "#".repeat((l.mean_recall * 40.0).round() as usize)
        );
    }
    println!(
        "recommended filter layer: {recommended} (earliest within {} of the best, layer {best} at {:.3})",
        args.tolerance, per_layer[best].mean_recall
    );
    if path == default_path {
        println!(
            "written to {} (generate, needle and demo now use it for this model)",
            path.display()
        );
    } else {
        println!("written to {}", path.display());
    }
    Ok(())
}
