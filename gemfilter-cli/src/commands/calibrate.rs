//! `gemfilter calibrate`: find the filter layer automatically. One forward per probe prompt
//! captures the selection of every selector at every layer; the mean needle recall per layer
//! decides. The calibration file is written for the first selector.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use gemfilter_core::{LayerObserver, Probe, TokenSelector};
use gemfilter_models::SelectorSpec;
use gemfilter_models::filter_layers::{Calibration, LayerRecall, calibration_path, signature};
use gemfilter_models::needle::{NeedlePrompt, build_prompt};

use super::needle::NeedleOptions;
use super::{ComputeArgs, load_model_or_demo};
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
    /// Selector spec to calibrate, repeatable (see `needle --selector`); single-layer specs only.
    /// The file is written for the first.
    #[arg(long = "selector", default_values_t = ["gemfilter".to_string()])]
    pub selectors: Vec<String>,
    /// Recommend the earliest layer whose mean recall is at most this far below the best.
    #[arg(long, default_value_t = 0.05)]
    pub tolerance: f64,
    #[command(flatten)]
    pub prompt: NeedleOptions,
    #[command(flatten)]
    pub compute: ComputeArgs,
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
    let specs: Vec<SelectorSpec> = args
        .selectors
        .iter()
        .map(|s| s.parse())
        .collect::<std::result::Result<_, _>>()?;
    if let Some(spec) = specs.iter().find(|s| !s.vote.is_empty()) {
        bail!(
            "--selector {spec}: a voting selector reads fixed layers and cannot be calibrated per layer; compare it with `gemfilter needle` instead"
        );
    }
    let haystack = args.prompt.haystack()?;
    let needle = args.prompt.needle()?;
    let compute = args.compute.resolve()?;
    let model = load_model_or_demo(args.model.as_deref(), &compute)?;
    let config = model.decoder().config().clone();
    let chat = args.prompt.chat(&model);

    let probes = args.lengths.len() * args.depths.len();
    let bar = progress::counter(probes as u64, "calibration prompts");
    let run = progress::run_options();
    // recall[spec][length index][layer], summed over depths.
    let mut sums = vec![vec![vec![0.0f64; config.num_layers]; args.lengths.len()]; specs.len()];
    for (li, &length) in args.lengths.iter().enumerate() {
        for &depth in &args.depths {
            bar.set_message(format!("{length} tokens, depth {depth:.2}"));
            let prompt = build_prompt(&model, &haystack, &needle, length, depth, chat)?;
            let selectors: Vec<Box<dyn TokenSelector>> = specs
                .iter()
                .map(|spec| spec.build(model.tokenizer(), &prompt.ids))
                .collect::<std::result::Result<_, _>>()?;
            let window = selectors
                .iter()
                .map(|s| s.query_window())
                .max()
                .unwrap_or(1);
            let mut observer = RecallPerLayer {
                selectors: &selectors,
                prompt: &prompt,
                top_k: args.top_k,
                recalls: Vec::new(),
            };
            model.decoder().observe(
                &prompt.ids,
                config.num_layers - 1,
                window,
                &mut observer,
                &run,
            )?;
            for (layer, per_spec) in observer.recalls.into_iter().enumerate() {
                for (si, recall) in per_spec?.into_iter().enumerate() {
                    sums[si][li][layer] += recall;
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let depths = args.depths.len() as f64;
    let mean_over_lengths = |si: usize| -> Vec<LayerRecall> {
        (0..config.num_layers)
            .map(|layer| LayerRecall {
                layer,
                mean_recall: sums[si].iter().map(|l| l[layer]).sum::<f64>() / probes as f64,
            })
            .collect()
    };
    let per_layer = mean_over_lengths(0);
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
        selector: specs[0].to_string(),
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
        "mean needle recall per layer (top-k {}, {probes} prompts; `{}` drawn)",
        args.top_k, specs[0]
    );
    let all: Vec<Vec<LayerRecall>> = (0..specs.len()).map(mean_over_lengths).collect();
    print!("layer");
    for spec in &specs {
        print!("  {:>12}", short(&spec.to_string()));
    }
    println!();
    for layer in 0..config.num_layers {
        let marker = match layer {
            x if x == recommended && x == best => "  <- recommended, best",
            x if x == recommended => "  <- recommended",
            x if x == best => "  <- best",
            _ => "",
        };
        print!("{layer:>5}");
        for per_spec in &all {
            print!("  {:>12.3}", per_spec[layer].mean_recall);
        }
        println!(
            " {}{marker}",
            "#".repeat((all[0][layer].mean_recall * 40.0).round() as usize)
        );
    }
    for (si, spec) in specs.iter().enumerate() {
        let (rec, best) = Calibration::recommend(&all[si], args.tolerance).expect("layers");
        let per_length: Vec<String> = args
            .lengths
            .iter()
            .enumerate()
            .map(|(li, length)| format!("{length}: {:.3}", sums[si][li][rec] / depths))
            .collect();
        println!(
            "{spec}: recommended layer {rec} (best {best} at {:.3}); recall at {rec} per length: {}",
            all[si][best].mean_recall,
            per_length.join(", ")
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

/// First 12 characters of a spec, for table headers.
fn short(spec: &str) -> String {
    spec.chars().take(12).collect()
}

/// Scores every layer's probe with every selector as the pass goes by, keeping only recalls.
struct RecallPerLayer<'a> {
    selectors: &'a [Box<dyn TokenSelector>],
    prompt: &'a NeedlePrompt,
    top_k: usize,
    recalls: Vec<gemfilter_core::Result<Vec<f64>>>,
}

impl LayerObserver for RecallPerLayer<'_> {
    fn wants(&self, _layer: usize) -> bool {
        true
    }

    fn observe(&mut self, probe: Probe) {
        let n = self.prompt.ids.len();
        let recalls = self
            .selectors
            .iter()
            .map(|selector| {
                let selection = selector.select(&probe, self.top_k)?;
                selection.validate(selector.name(), n, self.top_k)?;
                Ok(self.prompt.recall(&selection.positions))
            })
            .collect();
        self.recalls.push(recalls);
    }
}
