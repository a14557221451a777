//! Running the suite: every method on every sample, sharing passes, one JSON line per result.
//!
//! Per sample, one full-attention prefill serves full attention, SnapKV and H2O at every
//! budget ([`Model::generate_shared`]), and one selection pass serves every GemFilter selector
//! at every budget ([`gemfilter_core::Decoder::probe_layers`]); propagation and selectors with
//! pruning stages run their own passes. Each result is appended to the
//! results file as soon as it exists; a run started again on the same file skips what is there.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gemfilter_core::{EarlyKv, HeadSharing, RunOptions, Sampling, TokenSelector};
use gemfilter_models::{Answer, KvMethod, Mode, Model, Request, SelectorSpec};
use serde::{Deserialize, Serialize};

use super::sample::{ModelPrompt, Sample, build_sample};
use super::tasks::{Sources, Task};
use crate::calibration::EvidencePrompt;
use crate::error::{EvalError, Result, io};

/// A method family of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// Standard attention over the whole prompt.
    Full,
    /// GemFilter: selection pass, rerun on the kept tokens.
    Gemfilter,
    /// SnapKV at the budget.
    Snapkv,
    /// H2O at the budget.
    H2o,
    /// Propagation from the filter layer, decoding with every early-layer position.
    Propagate,
    /// Propagation, decoding with the kept positions only in the early layers too.
    PropagateKept,
}

impl MethodKind {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Full => "full",
            MethodKind::Gemfilter => "gemfilter",
            MethodKind::Snapkv => "snapkv",
            MethodKind::H2o => "h2o",
            MethodKind::Propagate => "propagate",
            MethodKind::PropagateKept => "propagate-kept",
        }
    }

    /// Whether this method selects tokens (GemFilter, propagation): it has a selector and a
    /// filter layer.
    pub fn selects(self) -> bool {
        matches!(
            self,
            MethodKind::Gemfilter | MethodKind::Propagate | MethodKind::PropagateKept
        )
    }

    /// The early-layer KV choice of a propagation method.
    pub fn early_kv(self) -> Option<EarlyKv> {
        match self {
            MethodKind::Propagate => Some(EarlyKv::All),
            MethodKind::PropagateKept => Some(EarlyKv::Kept),
            _ => None,
        }
    }

    /// Parses `full`, `gemfilter`, `snapkv`, `h2o`, `propagate` or `propagate-kept`.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "full" => MethodKind::Full,
            "gemfilter" => MethodKind::Gemfilter,
            "snapkv" => MethodKind::Snapkv,
            "h2o" => MethodKind::H2o,
            "propagate" => MethodKind::Propagate,
            "propagate-kept" => MethodKind::PropagateKept,
            other => {
                return Err(EvalError::InvalidParameter(format!(
                    "unknown method `{other}` (full, gemfilter, snapkv, h2o, propagate, propagate-kept)"
                )));
            }
        })
    }
}

/// One column of the comparison: a method at a budget (with its selector for GemFilter).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Variant {
    /// Method.
    pub method: MethodKind,
    /// Selector spec (GemFilter; `gemfilter` is the paper's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Kept tokens (GemFilter) or cache entries per layer and head (SnapKV, H2O); none for full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<usize>,
    /// GemFilter's filter layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
}

impl Variant {
    /// `full`, `gemfilter@256/L14`, `gemfilter[window=32,…]@1024/L21`, `snapkv@256`.
    pub fn label(&self) -> String {
        let mut label = self.method.name().to_string();
        if let Some(selector) = self.selector.as_deref().filter(|s| *s != "gemfilter") {
            label.push_str(&format!("[{selector}]"));
        }
        if let Some(budget) = self.budget {
            label.push_str(&format!("@{budget}"));
        }
        if let Some(layer) = self.layer {
            label.push_str(&format!("/L{layer}"));
        }
        label
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Tasks.
    pub tasks: Vec<Task>,
    /// Target lengths in tokens (prompt + answer budget).
    pub lengths: Vec<usize>,
    /// Samples per task and length.
    pub samples: usize,
    /// Generator seed.
    pub seed: u64,
    /// Methods.
    pub methods: Vec<MethodKind>,
    /// GemFilter selectors.
    pub selectors: Vec<SelectorSpec>,
    /// Budgets (GemFilter's k, SnapKV's and H2O's cache entries).
    pub budgets: Vec<usize>,
    /// GemFilter's filter layers (each selector runs at each; one selection pass per layer).
    pub filter_layers: Vec<usize>,
    /// Heads sharing kept positions in SnapKV and H2O.
    pub kv_heads: HeadSharing,
    /// Wrap prompts in the model's chat template.
    pub chat: bool,
    /// Attention kernel, chunking, progress of the passes.
    pub run: RunOptions,
}

impl SuiteConfig {
    /// The columns, in order: full, each selector at each budget, SnapKV and H2O per budget.
    pub fn variants(&self) -> Vec<Variant> {
        let mut out = Vec::new();
        for &method in &self.methods {
            match method {
                MethodKind::Full => out.push(Variant {
                    method,
                    selector: None,
                    budget: None,
                    layer: None,
                }),
                MethodKind::Gemfilter | MethodKind::Propagate | MethodKind::PropagateKept => {
                    for &layer in &self.filter_layers {
                        for spec in &self.selectors {
                            for &budget in &self.budgets {
                                out.push(Variant {
                                    method,
                                    selector: Some(spec.to_string()),
                                    budget: Some(budget),
                                    layer: Some(layer),
                                });
                            }
                        }
                    }
                }
                MethodKind::Snapkv | MethodKind::H2o => {
                    for &budget in &self.budgets {
                        out.push(Variant {
                            method,
                            selector: None,
                            budget: Some(budget),
                            layer: None,
                        });
                    }
                }
            }
        }
        out
    }

    /// Checks the settings against the model.
    pub fn validate(&self, model: &Model) -> Result<()> {
        let invalid = |m: String| Err(EvalError::InvalidParameter(m));
        if self.tasks.is_empty() || self.lengths.is_empty() || self.methods.is_empty() {
            return invalid("at least one task, length and method are needed".into());
        }
        if self.samples == 0 {
            return invalid("--samples must be at least 1".into());
        }
        if self.budgets.is_empty() || self.budgets.contains(&0) {
            return invalid("budgets must be positive token counts".into());
        }
        let selects = self.methods.iter().any(|m| m.selects());
        if selects && self.selectors.is_empty() {
            return invalid("GemFilter and propagation need at least one selector".into());
        }
        let config = model.decoder().config();
        if selects && self.filter_layers.is_empty() {
            return invalid("GemFilter and propagation need at least one filter layer".into());
        }
        for &layer in &self.filter_layers {
            if layer >= config.num_layers {
                return invalid(format!(
                    "filter layer {layer} is out of range: the model has {} layers",
                    config.num_layers
                ));
            }
            for spec in &self.selectors {
                if let Some(above) = spec.vote.iter().find(|&&l| l > layer) {
                    return invalid(format!(
                        "selector {spec} reads layer {above}, above the filter layer {layer}"
                    ));
                }
                if let Some(stage) = spec.stages.iter().find(|s| s.layer >= layer) {
                    return invalid(format!(
                        "selector {spec} prunes at layer {}, not below the filter layer {layer}",
                        stage.layer
                    ));
                }
                let smallest = spec.stages.iter().map(|s| s.keep).min();
                if let Some(budget) = self
                    .budgets
                    .iter()
                    .find(|&&b| smallest.is_some_and(|k| b > k))
                {
                    return invalid(format!(
                        "selector {spec} keeps fewer positions at a stage than the budget {budget}"
                    ));
                }
            }
        }
        if let Some(&long) = self
            .lengths
            .iter()
            .find(|&&l| l > config.max_position_embeddings)
        {
            return invalid(format!(
                "length {long} exceeds the model's {} positions",
                config.max_position_embeddings
            ));
        }
        if self.chat && model.chat_template().is_none() {
            return invalid("the model has no chat template; run without chat".into());
        }
        Ok(())
    }
}

/// One result: a method on a sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Task.
    pub task: String,
    /// Target length.
    pub length: usize,
    /// Sample index.
    pub index: usize,
    /// The column.
    pub variant: Variant,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Score in [0, 1] (RULER's metric).
    pub score: f64,
    /// The answer.
    pub answer: String,
    /// References.
    pub references: Vec<String>,
    /// Fraction of the evidence tokens kept (GemFilter: by the selection; SnapKV/H2O: mean over
    /// layers and heads); absent where the task has no evidence span or for full attention.
    #[serde(default)]
    pub recall: Option<f64>,
    /// Selection time (shared pass + own scoring), ms.
    pub select_ms: f64,
    /// Prefill time, ms (shared by full/SnapKV/H2O).
    pub prefill_ms: f64,
    /// Decode time, ms.
    pub decode_ms: f64,
    /// Time to first token, ms.
    pub ttft_ms: f64,
    /// Key/value storage the answer decoded with, MiB (room for its new tokens included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_mib: Option<f64>,
}

impl Record {
    fn key(&self) -> (String, usize, usize, String) {
        (
            self.task.clone(),
            self.length,
            self.index,
            self.variant.label(),
        )
    }
}

/// The settings a results file is tied to: resuming with other ones is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// Model path.
    pub model: String,
    /// Generator seed.
    pub seed: u64,
    /// Chat template used.
    pub chat: bool,
    /// SnapKV/H2O head sharing.
    pub kv_heads: String,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Header { run: RunIdentity },
    Record(Box<Record>),
}

/// What a results file holds.
struct ParsedResults {
    identity: Option<RunIdentity>,
    records: Vec<Record>,
    /// Where a last line cut short by an interruption starts.
    cut_at: Option<u64>,
}

/// The append-only results file.
pub struct ResultsFile {
    path: PathBuf,
    records: Vec<Record>,
    done: HashSet<(String, usize, usize, String)>,
}

impl ResultsFile {
    /// Opens (or creates) `path` for `identity`: existing records are loaded and kept; a file
    /// written with other settings is refused. A last line cut short by an interruption is
    /// dropped (its result runs again).
    pub fn open(path: &Path, identity: &RunIdentity) -> Result<Self> {
        let records = if path.is_file() {
            let contents = Self::parse(path)?;
            if let Some(run) = contents.identity.filter(|run| run != identity) {
                return Err(EvalError::Resume {
                    path: path.to_path_buf(),
                    reason: format!(
                        "it was written for {run:?}, this run is {identity:?}; use another --output"
                    ),
                });
            }
            if let Some(valid_bytes) = contents.cut_at {
                // An interrupted write: drop the partial line.
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io(path))?;
                f.set_len(valid_bytes).map_err(io(path))?;
            }
            contents.records
        } else {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            let header = serde_json::to_string(&Line::Header {
                run: identity.clone(),
            })
            .expect("serialisable");
            std::fs::write(path, format!("{header}\n")).map_err(io(path))?;
            Vec::new()
        };
        let done = records.iter().map(Record::key).collect();
        Ok(Self {
            path: path.to_path_buf(),
            records,
            done,
        })
    }

    /// Every record so far.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Reads a results file without running anything (for reports): the settings it was
    /// written for and its records. A last line cut short by an interruption is ignored; the
    /// file is left as it is.
    pub fn read(path: &Path) -> Result<(RunIdentity, Vec<Record>)> {
        let contents = Self::parse(path)?;
        let identity = contents.identity.ok_or_else(|| EvalError::Resume {
            path: path.to_path_buf(),
            reason: "it has no header line naming the model and settings".into(),
        })?;
        Ok((identity, contents.records))
    }

    fn parse(path: &Path) -> Result<ParsedResults> {
        let file = std::fs::File::open(path).map_err(io(path))?;
        let lines: Vec<String> = std::io::BufReader::new(file)
            .lines()
            .collect::<std::io::Result<_>>()
            .map_err(io(path))?;
        let count = lines.len();
        let mut parsed = ParsedResults {
            identity: None,
            records: Vec::new(),
            cut_at: None,
        };
        let mut valid_bytes = 0u64;
        for (i, line) in lines.iter().enumerate() {
            if !line.trim().is_empty() {
                match serde_json::from_str::<Line>(line) {
                    Ok(Line::Header { run }) => parsed.identity = Some(run),
                    Ok(Line::Record(record)) => parsed.records.push(*record),
                    Err(_) if i + 1 == count => {
                        parsed.cut_at = Some(valid_bytes);
                        break;
                    }
                    Err(e) => {
                        return Err(EvalError::Resume {
                            path: path.to_path_buf(),
                            reason: format!("line {} is not a result ({e})", i + 1),
                        });
                    }
                }
            }
            valid_bytes += line.len() as u64 + 1;
        }
        Ok(parsed)
    }

    fn has(&self, task: &str, length: usize, index: usize, variant: &Variant) -> bool {
        self.done
            .contains(&(task.to_string(), length, index, variant.label()))
    }

    fn append(&mut self, record: Record) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        let line = serde_json::to_string(&record).expect("serialisable");
        file.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| file.flush())
            .map_err(io(&self.path))?;
        self.done.insert(record.key());
        self.records.push(record);
        Ok(())
    }
}

/// Progress after each result.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Results done (including those found in the file).
    pub done: usize,
    /// Results in the whole run.
    pub total: usize,
    /// Results computed by this process.
    pub computed: usize,
    /// Estimated time left, from this process's pace.
    pub eta: Option<Duration>,
}

/// Runs the suite, appending to `results`; `on_record` sees each new result with the progress.
pub fn run_suite(
    model: &Model,
    sources: &Sources,
    config: &SuiteConfig,
    results: &mut ResultsFile,
    on_record: &mut dyn FnMut(&Record, Progress),
) -> Result<()> {
    config.validate(model)?;
    let variants = config.variants();
    let total = config.lengths.len() * config.tasks.len() * config.samples * variants.len();
    let mut done = 0;
    for &length in &config.lengths {
        for task in &config.tasks {
            for index in 0..config.samples {
                done += variants
                    .iter()
                    .filter(|v| results.has(task.name, length, index, v))
                    .count();
            }
        }
    }
    let started = Instant::now();
    let mut computed = 0usize;
    let format = ModelPrompt {
        model,
        chat: config.chat,
    };
    for &length in &config.lengths {
        for task in &config.tasks {
            for index in 0..config.samples {
                let pending: Vec<&Variant> = variants
                    .iter()
                    .filter(|v| !results.has(task.name, length, index, v))
                    .collect();
                if pending.is_empty() {
                    continue;
                }
                let sample = build_sample(task, sources, &format, length, config.seed, index)?;
                let prepared = Prepared::new(model, &sample, config.chat)?;
                let mut emit = |record: Record, results: &mut ResultsFile| -> Result<()> {
                    results.append(record.clone())?;
                    done += 1;
                    computed += 1;
                    let pace = started.elapsed().as_secs_f64() / computed as f64;
                    let eta = Some(Duration::from_secs_f64(pace * (total - done) as f64));
                    on_record(
                        &record,
                        Progress {
                            done,
                            total,
                            computed,
                            eta,
                        },
                    );
                    Ok(())
                };
                for record in run_prefill_group(model, &prepared, task, config, &pending)? {
                    emit(record, results)?;
                }
                for record in run_selection_group(model, &prepared, task, config, &pending)? {
                    emit(record, results)?;
                }
                for record in run_own_pass_group(model, &prepared, task, config, &pending)? {
                    emit(record, results)?;
                }
            }
        }
    }
    Ok(())
}

/// A sample tokenised, with the positions of its evidence.
struct Prepared<'a> {
    sample: &'a Sample,
    ids: Vec<u32>,
    evidence: EvidencePrompt,
}

impl<'a> Prepared<'a> {
    fn new(model: &Model, sample: &'a Sample, chat: bool) -> Result<Self> {
        let evidence = EvidencePrompt::from_text(model, &sample.prompt, &sample.evidence, !chat)?;
        Ok(Self {
            sample,
            ids: evidence.ids.clone(),
            evidence,
        })
    }

    /// Fraction of evidence positions in `kept` (ascending); none without evidence.
    fn recall(&self, kept: &[usize]) -> Option<f64> {
        (!self.evidence.evidence.is_empty()).then(|| self.evidence.recall(kept))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn request(config: &SuiteConfig, max_new_tokens: usize) -> Request {
    Request {
        mode: Mode::Full,
        max_new_tokens,
        chat: false,
        sampling: Sampling::Greedy,
        selector: None,
        run: config.run.clone(),
        ignore_eos: false,
        stop: Vec::new(),
    }
}

fn record(
    prepared: &Prepared<'_>,
    task: &Task,
    variant: &Variant,
    answer: &Answer,
    recall: Option<f64>,
    select: Duration,
) -> Record {
    let t = answer.generation.timings;
    Record {
        task: task.name.to_string(),
        length: prepared.sample.target_tokens,
        index: prepared.sample.index,
        variant: variant.clone(),
        prompt_tokens: prepared.ids.len(),
        score: task
            .metric()
            .score(&answer.text, &prepared.sample.references),
        answer: answer.text.trim().to_string(),
        references: prepared.sample.references.clone(),
        recall,
        select_ms: ms(select),
        prefill_ms: ms(t.prefill),
        decode_ms: ms(t.decode),
        ttft_ms: ms(select + t.prefill),
        kv_cache_mib: Some(answer.generation.kv_cache_bytes as f64 / (1024.0 * 1024.0)),
    }
}

/// Full attention, SnapKV and H2O from one prefill.
fn run_prefill_group(
    model: &Model,
    prepared: &Prepared<'_>,
    task: &Task,
    config: &SuiteConfig,
    pending: &[&Variant],
) -> Result<Vec<Record>> {
    let group: Vec<&Variant> = pending
        .iter()
        .copied()
        .filter(|v| !v.method.selects())
        .collect();
    if group.is_empty() {
        return Ok(Vec::new());
    }
    let modes: Vec<Mode> = group
        .iter()
        .map(|v| match v.method {
            MethodKind::Full => Mode::Full,
            MethodKind::Snapkv | MethodKind::H2o => Mode::KvCompressed {
                method: if v.method == MethodKind::Snapkv {
                    KvMethod::SnapKv
                } else {
                    KvMethod::H2o
                },
                budget: v.budget.expect("budgeted"),
                heads: config.kv_heads,
            },
            MethodKind::Gemfilter | MethodKind::Propagate | MethodKind::PropagateKept => {
                unreachable!("filtered out")
            }
        })
        .collect();
    let answers = model.generate_shared(
        &prepared.ids,
        &modes,
        &request(config, prepared.sample.max_new_tokens),
    )?;
    Ok(group
        .iter()
        .zip(&answers)
        .map(|(variant, answer)| {
            let recall = answer.generation.compression.as_ref().and_then(|outcome| {
                if !outcome.compressed() {
                    return prepared.recall(&(0..prepared.ids.len()).collect::<Vec<_>>());
                }
                let sets: Vec<&Vec<usize>> = outcome.kept.iter().flatten().collect();
                let recalls: Vec<f64> = sets.iter().filter_map(|k| prepared.recall(k)).collect();
                (!recalls.is_empty()).then(|| recalls.iter().sum::<f64>() / recalls.len() as f64)
            });
            record(prepared, task, variant, answer, recall, Duration::ZERO)
        })
        .collect())
}

/// The selector spec of a selecting variant.
fn spec_of(variant: &Variant) -> Result<SelectorSpec> {
    variant
        .selector
        .as_deref()
        .unwrap_or("gemfilter")
        .parse()
        .map_err(EvalError::Model)
}

/// Whether a variant's selection shares the one selection pass per layer: GemFilter's rerun
/// with a one-stage selector.
fn shares_selection_pass(variant: &Variant) -> bool {
    variant.method == MethodKind::Gemfilter && spec_of(variant).is_ok_and(|s| s.stages.is_empty())
}

/// Propagation, and GemFilter with a staged selector: each runs its own pass (its selection
/// pass is part of the method), timed end to end.
fn run_own_pass_group(
    model: &Model,
    prepared: &Prepared<'_>,
    task: &Task,
    config: &SuiteConfig,
    pending: &[&Variant],
) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for variant in pending
        .iter()
        .copied()
        .filter(|v| v.method.selects() && !shares_selection_pass(v))
    {
        let spec = spec_of(variant)?;
        let selector = spec.build(model.tokenizer(), &prepared.ids)?;
        let (filter_layer, top_k) = (variant.layer, variant.budget.expect("budgeted"));
        let mode = match variant.method.early_kv() {
            Some(early_kv) => Mode::Propagate {
                filter_layer,
                top_k,
                early_kv,
            },
            None => Mode::GemFilter {
                filter_layer,
                top_k,
            },
        };
        let request = Request {
            mode,
            selector: Some(selector.into()),
            ..request(config, prepared.sample.max_new_tokens)
        };
        let answer = model.generate_ids(&prepared.ids, &request)?;
        let generation = &answer.generation;
        let recall = generation
            .selection
            .as_ref()
            .and_then(|s| prepared.recall(&s.positions));
        let select = generation.timings.select;
        out.push(record(prepared, task, variant, &answer, recall, select));
    }
    Ok(out)
}

/// Every one-stage GemFilter selector at every budget from one selection pass.
fn run_selection_group(
    model: &Model,
    prepared: &Prepared<'_>,
    task: &Task,
    config: &SuiteConfig,
    pending: &[&Variant],
) -> Result<Vec<Record>> {
    let group: Vec<&Variant> = pending
        .iter()
        .copied()
        .filter(|v| shares_selection_pass(v))
        .collect();
    if group.is_empty() {
        return Ok(Vec::new());
    }
    let mut layers: Vec<usize> = group.iter().filter_map(|v| v.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let request = request(config, prepared.sample.max_new_tokens);
    let mut out = Vec::new();
    // One selection pass per filter layer (each variant's time to first token is then its own
    // method's), shared by every selector and budget at that layer.
    for layer in layers {
        let at_layer: Vec<&Variant> = group
            .iter()
            .copied()
            .filter(|v| v.layer == Some(layer))
            .collect();
        let mut specs: Vec<SelectorSpec> = Vec::new();
        for variant in &at_layer {
            let spec = spec_of(variant)?;
            if !specs.contains(&spec) {
                specs.push(spec);
            }
        }
        let selectors: Vec<Box<dyn TokenSelector>> = specs
            .iter()
            .map(|spec| spec.build(model.tokenizer(), &prepared.ids))
            .collect::<std::result::Result<_, _>>()?;
        let mut probed = Vec::new();
        for selector in &selectors {
            probed.extend(selector.layers(layer));
        }
        let window = selectors
            .iter()
            .map(|s| s.query_window())
            .max()
            .unwrap_or(1);
        let started = Instant::now();
        let probes = model
            .decoder()
            .probe_layers(&prepared.ids, &probed, window, &config.run)?;
        let pass = started.elapsed();
        for variant in at_layer {
            let spec_text = variant.selector.as_deref().unwrap_or("gemfilter");
            let position = specs
                .iter()
                .position(|s| s.to_string() == spec_text)
                .unwrap_or(0);
            let selector = &selectors[position];
            let wanted = selector.layers(layer);
            let own: Vec<_> = probes
                .iter()
                .filter(|p| wanted.contains(&p.layer))
                .cloned()
                .collect();
            let budget = variant.budget.expect("budgeted");
            let started = Instant::now();
            let selection = selector.select_layers(&own, budget)?;
            selection.validate(selector.name(), prepared.ids.len(), budget)?;
            let select = pass + started.elapsed();
            let answer = model.generate_preselected(&prepared.ids, &selection, layer, &request)?;
            let recall = prepared.recall(&selection.positions);
            out.push(record(prepared, task, variant, &answer, recall, select));
        }
    }
    Ok(out)
}
