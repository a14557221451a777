//! RULER's tasks, written from its generators in the `nvidia-long-context-eval==26.3` wheel
//! (`data/synthetic/{niah,variable_tracking,common_words_extraction,freq_words_extraction,qa}.py`,
//! `synthetic.yaml`, `data/synthetic/constants.py`): the same templates, needle and noise
//! sentences, answer sets and size parameters. Where this differs from RULER, by choice:
//!
//! - Random draws come from this crate's seeded SplitMix64, not Python's Mersenne Twister, so a
//!   sample has RULER's structure and answer rules but not its exact random keys and values
//!   (QA samples use the same questions as RULER's: sample `i` asks question `i`).
//! - Essays are split into sentences by [`split_sentences`], not NLTK's punkt.
//! - Prompt length: the largest haystack whose prompt (with the model's chat template and the
//!   answer prefix) plus the task's answer budget fits the target, found by bisection for each
//!   sample, where RULER grows the haystack in fixed steps once and shrinks per sample.
//! - With a chat template, the task text is the user turn and the answer prefix opens the
//!   assistant turn (RULER's `base` template is plain concatenation).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::data::{QaDataset, RulerData, WordLists};
use crate::error::{EvalError, Result};
use crate::needle::{SplitMix64, split_sentences};

/// How an answer is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Fraction of the references found in the answer.
    StringMatchAll,
    /// 1 when any reference is found.
    StringMatchPart,
}

impl Metric {
    /// The score of `prediction` (post-processed as RULER does) in [0, 1].
    pub fn score(self, prediction: &str, references: &[String]) -> f64 {
        let prediction = super::metrics::postprocess(prediction);
        match self {
            Metric::StringMatchAll => super::metrics::string_match_all(&prediction, references),
            Metric::StringMatchPart => super::metrics::string_match_part(&prediction, references),
        }
    }
}

/// What fills a needle task's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NiahHaystack {
    /// The Paul Graham essays (real prose).
    Essay,
    /// "The grass is green. …" repeated.
    Repeat,
    /// Other needles with other keys and values.
    Needle,
}

/// What a needle key or value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NiahItem {
    /// `adjective-noun` from the word lists.
    Words,
    /// Seven-digit numbers.
    Numbers,
    /// UUID version 4 strings.
    Uuids,
}

impl NiahItem {
    fn plural(self) -> &'static str {
        match self {
            NiahItem::Words => "words",
            NiahItem::Numbers => "numbers",
            NiahItem::Uuids => "uuids",
        }
    }
}

/// The generator and settings of a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TaskKind {
    /// Needle in a haystack.
    Niah {
        /// Context filler.
        haystack: NiahHaystack,
        /// Key type.
        key: NiahItem,
        /// Value type.
        value: NiahItem,
        /// Needle keys in the context.
        keys: usize,
        /// Values per key.
        values: usize,
        /// Keys asked for.
        queries: usize,
    },
    /// Variable tracking: chains of `VAR X = VAR Y` in noise.
    VariableTracking {
        /// Chains.
        chains: usize,
        /// Assignments after the first in each chain.
        hops: usize,
    },
    /// Common words extraction: ten words repeated often among words repeated rarely.
    CommonWords {
        /// Repeats of each common word (32K-style settings; short prompts use RULER's smaller ones).
        common_repeats: usize,
        /// Repeats of each uncommon word.
        uncommon_repeats: usize,
        /// Common words.
        common: usize,
    },
    /// Frequent words extraction: coded words with Zipf frequencies.
    FrequentWords {
        /// Zipf exponent.
        alpha: f64,
    },
    /// Question answering over documents with distractors.
    Qa {
        /// The dataset.
        dataset: QaSource,
    },
}

/// Which QA dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QaSource {
    /// SQuAD v2 dev (qa_1).
    Squad,
    /// HotpotQA dev, distractor setting (qa_2) — held out: never used for tuning.
    HotpotQa,
}

/// One RULER task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Task {
    /// RULER's name (`niah_single_1`, …, `qa_2`).
    pub name: &'static str,
    /// Generator and settings.
    pub kind: TaskKind,
}

const NIAH_TEMPLATE: &str = "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text?";
const NIAH_PREFIX: &str =
    " The special magic {type_needle_v} for {query} mentioned in the provided text are";
const NIAH_NEEDLE: &str = "One of the special magic {type_needle_v} for {key} is: {value}.";
const VT_TEMPLATE: &str = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.";
const VT_PREFIX: &str = " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assgined the value {query}, they are: ";
const CWE_TEMPLATE: &str = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?";
const CWE_PREFIX: &str = " Answer: The top 10 words that appear most often in the list are:";
const FWE_TEMPLATE: &str = "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?";
const FWE_PREFIX: &str =
    " Answer: According to the coded text above, the three most frequently appeared words are:";
const QA_TEMPLATE: &str = "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}";
const QA_PREFIX: &str = " Answer:";
/// The repeated noise of `niah_single_1` and variable tracking.
pub const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

impl Task {
    /// RULER's thirteen tasks in its order.
    pub fn all() -> Vec<Task> {
        use NiahHaystack::*;
        use NiahItem::*;
        let niah = |name, haystack, key, value, keys, values, queries| Task {
            name,
            kind: TaskKind::Niah {
                haystack,
                key,
                value,
                keys,
                values,
                queries,
            },
        };
        vec![
            niah("niah_single_1", Repeat, Words, Numbers, 1, 1, 1),
            niah("niah_single_2", Essay, Words, Numbers, 1, 1, 1),
            niah("niah_single_3", Essay, Words, Uuids, 1, 1, 1),
            niah("niah_multikey_1", Essay, Words, Numbers, 4, 1, 1),
            niah("niah_multikey_2", Needle, Words, Numbers, 1, 1, 1),
            niah("niah_multikey_3", Needle, Uuids, Uuids, 1, 1, 1),
            niah("niah_multivalue", Essay, Words, Numbers, 1, 4, 1),
            niah("niah_multiquery", Essay, Words, Numbers, 1, 1, 4),
            Task {
                name: "vt",
                kind: TaskKind::VariableTracking { chains: 1, hops: 4 },
            },
            Task {
                name: "cwe",
                kind: TaskKind::CommonWords {
                    common_repeats: 30,
                    uncommon_repeats: 3,
                    common: 10,
                },
            },
            Task {
                name: "fwe",
                kind: TaskKind::FrequentWords { alpha: 2.0 },
            },
            Task {
                name: "qa_1",
                kind: TaskKind::Qa {
                    dataset: QaSource::Squad,
                },
            },
            Task {
                name: "qa_2",
                kind: TaskKind::Qa {
                    dataset: QaSource::HotpotQa,
                },
            },
        ]
    }

    /// The task called `name`.
    pub fn named(name: &str) -> Result<Task> {
        Task::all()
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| {
                EvalError::InvalidParameter(format!(
                    "unknown RULER task `{name}`; known: {}",
                    Task::all()
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// RULER's answer budget (`tokens_to_generate`).
    pub fn tokens_to_generate(&self) -> usize {
        match self.kind {
            TaskKind::Niah { .. } => 128,
            TaskKind::VariableTracking { .. } => 30,
            TaskKind::CommonWords { .. } => 120,
            TaskKind::FrequentWords { .. } => 50,
            TaskKind::Qa { .. } => 32,
        }
    }

    /// The task's metric.
    pub fn metric(&self) -> Metric {
        match self.kind {
            TaskKind::Qa { .. } => Metric::StringMatchPart,
            _ => Metric::StringMatchAll,
        }
    }

    /// Whether the task is held out: HotpotQA (qa_2) is never used to tune selectors or layers.
    pub fn held_out(&self) -> bool {
        matches!(
            self.kind,
            TaskKind::Qa {
                dataset: QaSource::HotpotQa
            }
        )
    }

    /// Whether the answer is spread over the context with no span that carries it (common and
    /// frequent words extraction, HotpotQA): such tasks have no selection recall.
    pub fn evidence_free(&self) -> bool {
        matches!(
            self.kind,
            TaskKind::CommonWords { .. }
                | TaskKind::FrequentWords { .. }
                | TaskKind::Qa {
                    dataset: QaSource::HotpotQa
                }
        )
    }

    /// Whether this is a needle task.
    pub fn is_niah(&self) -> bool {
        matches!(self.kind, TaskKind::Niah { .. })
    }
}

/// One built sample: the task text with RULER's template, the answer prefix, the references.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskText {
    /// Text of the user turn (or the start of a plain prompt).
    pub body: String,
    /// Text the answer continues from.
    pub answer_prefix: String,
    /// References scored by the task's metric.
    pub references: Vec<String>,
    /// Pieces of the body that carry the answer (needles, the chain, the gold document), for
    /// selection recall; empty where the answer is spread over the context (cwe, fwe, qa_2).
    pub evidence: Vec<String>,
}

/// The inputs of every generator, read once.
pub struct Sources {
    essay_words: Vec<String>,
    words: WordLists,
    /// `adjective-noun` keys are drawn from these (sorted, unique).
    adjectives: Vec<String>,
    nouns: Vec<String>,
    /// Sorted unique nouns + adjectives + verbs (common words extraction).
    all_words: Vec<String>,
    squad: Option<QaDataset>,
    hotpotqa: Option<QaDataset>,
}

impl Sources {
    /// Reads what `tasks` need from `data` (the QA sets only when asked for).
    pub fn load(data: &RulerData, tasks: &[Task]) -> Result<Self> {
        let wants = |source| {
            tasks
                .iter()
                .any(|t| t.kind == TaskKind::Qa { dataset: source })
        };
        let essay = data.essays()?;
        let words = data.words()?;
        Ok(Self::from_parts(
            &essay,
            words,
            if wants(QaSource::Squad) {
                Some(data.squad()?)
            } else {
                None
            },
            if wants(QaSource::HotpotQa) {
                Some(data.hotpotqa()?)
            } else {
                None
            },
        ))
    }

    /// Sources from text already in memory.
    pub fn from_parts(
        essay: &str,
        words: WordLists,
        squad: Option<QaDataset>,
        hotpotqa: Option<QaDataset>,
    ) -> Self {
        let sorted = |list: &[String]| {
            let mut v: Vec<String> = list.iter().filter(|w| !w.is_empty()).cloned().collect();
            v.sort();
            v.dedup();
            v
        };
        let mut all: Vec<String> = words
            .nouns
            .iter()
            .chain(&words.adjectives)
            .chain(&words.verbs)
            .cloned()
            .collect();
        all = sorted(&all);
        Self {
            essay_words: essay.split_whitespace().map(str::to_string).collect(),
            adjectives: sorted(&words.adjectives),
            nouns: sorted(&words.nouns),
            all_words: all,
            words,
            squad,
            hotpotqa,
        }
    }

    /// The word lists.
    pub fn words(&self) -> &WordLists {
        &self.words
    }

    fn qa(&self, source: QaSource) -> Result<&QaDataset> {
        match source {
            QaSource::Squad => self.squad.as_ref(),
            QaSource::HotpotQa => self.hotpotqa.as_ref(),
        }
        .ok_or_else(|| EvalError::Data(format!("{source:?} was not loaded")))
    }

    /// Questions of a QA task's dataset; `None` for other tasks.
    pub fn questions(&self, task: &Task) -> Option<usize> {
        match task.kind {
            TaskKind::Qa { dataset } => Some(self.qa(dataset).map_or(0, |d| d.items.len())),
            _ => None,
        }
    }

    /// The largest size a task can use (essay words, documents, words).
    pub fn max_size(&self, task: &Task) -> usize {
        match task.kind {
            TaskKind::Niah {
                haystack: NiahHaystack::Essay,
                ..
            } => self.essay_words.len(),
            TaskKind::CommonWords { .. } => self.all_words.len(),
            TaskKind::Qa { dataset } => self.qa(dataset).map_or(0, |d| d.documents.len()),
            _ => 1 << 20,
        }
    }
}

fn random_item(rng: &mut SplitMix64, item: NiahItem, sources: &Sources) -> String {
    match item {
        NiahItem::Numbers => (1_000_000 + rng.below(9_000_000)).to_string(),
        NiahItem::Words => format!(
            "{}-{}",
            sources.adjectives[rng.below(sources.adjectives.len())],
            sources.nouns[rng.below(sources.nouns.len())]
        ),
        NiahItem::Uuids => {
            let hi = rng.next_u64();
            let lo = rng.next_u64();
            // Version 4, RFC 4122 variant.
            let hi = (hi & !0xF000) | 0x4000;
            let lo = (lo & !(0b11 << 62)) | (0b10 << 62);
            format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                hi >> 32,
                (hi >> 16) & 0xFFFF,
                hi & 0xFFFF,
                lo >> 48,
                lo & 0xFFFF_FFFF_FFFF
            )
        }
    }
}

/// Fisher–Yates shuffle.
fn shuffle<T>(rng: &mut SplitMix64, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// `count` distinct indices below `n`, in draw order.
fn sample_indices(rng: &mut SplitMix64, n: usize, count: usize) -> Vec<usize> {
    let count = count.min(n);
    if count * 4 >= n {
        let mut all: Vec<usize> = (0..n).collect();
        shuffle(rng, &mut all);
        all.truncate(count);
        return all;
    }
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let i = rng.below(n);
        if seen.insert(i) {
            out.push(i);
        }
    }
    out
}

fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (key, value) in pairs {
        out = out.replace(&format!("{{{key}}}"), value);
    }
    out
}

/// RULER's `query` string: `a`, or `a, b, and c`.
fn join_queries(queries: &[String]) -> String {
    match queries {
        [one] => one.clone(),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
        [] => String::new(),
    }
}

/// Builds a task's text with haystack `size` (essay words, repeats, noise sentences, words,
/// coded words or documents) for sample `index` of a `target_tokens` run from `rng`.
pub fn generate(
    task: &Task,
    sources: &Sources,
    size: usize,
    index: usize,
    target_tokens: usize,
    rng: &mut SplitMix64,
) -> Result<TaskText> {
    // RULER switches common-words settings at 4096 tokens and sizes the coded vocabulary of
    // frequent-words extraction by the target (`max_seq_length // 50`).
    let long_context = target_tokens >= 4096;
    match task.kind {
        TaskKind::Niah {
            haystack,
            key,
            value,
            keys,
            values,
            queries,
        } => Ok(niah(
            sources, haystack, key, value, keys, values, queries, size, rng,
        )),
        TaskKind::VariableTracking { chains, hops } => {
            // RULER prepends one solved example with 3-letter names, about 500 tokens long
            // (its noise grown in steps of 5 sentences); 20 noise sentences is that size.
            let example = variable_tracking(chains, hops.min(10), 20, 3, rng);
            let renamed = rename_example(&example, rng);
            let task_text = variable_tracking(chains, hops, size, 5, rng);
            Ok(TaskText {
                body: format!(" {renamed}\n\n{}", task_text.body),
                ..task_text
            })
        }
        TaskKind::CommonWords {
            common_repeats,
            uncommon_repeats,
            common,
        } => {
            let (example, main) = if long_context {
                ((40, 10, 3), (common_repeats, uncommon_repeats))
            } else {
                ((20, 3, 1), (6, 1))
            };
            let (example_context, example_answer) =
                common_words(sources, example.0, example.1, example.2, common, rng);
            let (context, answer) = common_words(sources, size, main.0, main.1, common, rng);
            let numbered = |words: &[String]| {
                words
                    .iter()
                    .enumerate()
                    .map(|(i, w)| format!("{}. {w}", i + 1))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let example_text = format!(
                "{}{} {}",
                fill(
                    CWE_TEMPLATE,
                    &[("context", &example_context), ("query", "")]
                ),
                CWE_PREFIX,
                numbered(&example_answer)
            );
            Ok(TaskText {
                body: format!(
                    "{example_text}\n{}",
                    fill(CWE_TEMPLATE, &[("context", &context), ("query", "")])
                ),
                answer_prefix: CWE_PREFIX.to_string(),
                references: answer,
                evidence: Vec::new(),
            })
        }
        TaskKind::FrequentWords { alpha } => Ok(frequent_words(
            alpha,
            size,
            (target_tokens / 50).max(10),
            rng,
        )),
        TaskKind::Qa { dataset } => qa(sources.qa(dataset)?, dataset, size, index, rng),
    }
}

#[allow(clippy::too_many_arguments)]
fn niah(
    sources: &Sources,
    haystack: NiahHaystack,
    key_type: NiahItem,
    value_type: NiahItem,
    num_keys: usize,
    num_values: usize,
    num_queries: usize,
    size: usize,
    rng: &mut SplitMix64,
) -> TaskText {
    let num_keys = num_keys.max(num_queries);
    let type_v = value_type.plural();
    let mut keys = Vec::new();
    let mut values: Vec<Vec<String>> = Vec::new();
    let mut needles: Vec<(usize, String)> = Vec::new();
    for k in 0..num_keys {
        keys.push(random_item(rng, key_type, sources));
        let mut these = Vec::new();
        for _ in 0..num_values {
            let value = random_item(rng, value_type, sources);
            needles.push((
                k,
                fill(
                    NIAH_NEEDLE,
                    &[
                        ("type_needle_v", type_v),
                        ("key", &keys[k]),
                        ("value", &value),
                    ],
                ),
            ));
            these.push(value);
        }
        values.push(these);
    }
    shuffle(rng, &mut needles);
    let context = match haystack {
        NiahHaystack::Essay => {
            let text = sources.essay_words[..size.min(sources.essay_words.len())].join(" ");
            let sentences = split_sentences(&text);
            // RULER's depths: 40 evenly spaced percentages, drawn without replacement.
            let depths: Vec<usize> = (0..40)
                .map(|i| (i as f64 * 100.0 / 39.0).round() as usize)
                .collect();
            let mut positions: Vec<usize> = sample_indices(rng, depths.len(), needles.len())
                .into_iter()
                .map(|d| sentences.len() * depths[d] / 100)
                .collect();
            positions.sort_unstable();
            let mut parts = Vec::new();
            let mut last = 0;
            for (position, (_, needle)) in positions.iter().zip(&needles) {
                parts.push(sentences[last..*position].join(" "));
                parts.push(needle.clone());
                last = *position;
            }
            parts.push(sentences[last..].join(" "));
            parts.join(" ")
        }
        NiahHaystack::Repeat | NiahHaystack::Needle => {
            let mut lines: Vec<String> = (0..size)
                .map(|_| match haystack {
                    NiahHaystack::Repeat => NOISE.to_string(),
                    _ => {
                        let key = random_item(rng, key_type, sources);
                        let value = random_item(rng, value_type, sources);
                        fill(
                            NIAH_NEEDLE,
                            &[("type_needle_v", type_v), ("key", &key), ("value", &value)],
                        )
                    }
                })
                .collect();
            let mut at = sample_indices(rng, size.max(needles.len()), needles.len());
            at.sort_unstable_by(|a, b| b.cmp(a));
            for (index, (_, needle)) in at.into_iter().zip(&needles) {
                lines.insert(index.min(lines.len()), needle.clone());
            }
            lines.join("\n")
        }
    };
    let asked = sample_indices(rng, num_keys, num_queries);
    let queries: Vec<String> = asked.iter().map(|&k| keys[k].clone()).collect();
    let references: Vec<String> = asked.iter().flat_map(|&k| values[k].clone()).collect();
    let evidence = needles
        .iter()
        .filter(|(k, _)| asked.contains(k))
        .map(|(_, n)| n.clone())
        .collect();
    let query = join_queries(&queries);
    let mut template = format!("{NIAH_TEMPLATE}\u{0}{NIAH_PREFIX}");
    let mut type_shown = type_v.to_string();
    if num_queries * num_values == 1 {
        template = template
            .replace("Some", "A")
            .replace("are all", "is")
            .replace("are", "is")
            .replace("answers", "answer");
        type_shown.pop();
    }
    let text = fill(
        &template,
        &[
            ("type_needle_v", &type_shown),
            ("context", &context),
            ("query", &query),
        ],
    );
    let (body, prefix) = text.split_once('\u{0}').expect("marker kept");
    TaskText {
        body: body.to_string(),
        answer_prefix: prefix.to_string(),
        references,
        evidence,
    }
}

/// One variable-tracking text: (`body + prefix`, with answers) for `noises` noise sentences and
/// names of `name_len` letters.
fn variable_tracking(
    chains: usize,
    hops: usize,
    noises: usize,
    name_len: usize,
    rng: &mut SplitMix64,
) -> TaskText {
    let mut names: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    while names.len() < chains * (hops + 1) {
        let name: String = (0..name_len)
            .map(|_| (b'A' + rng.below(26) as u8) as char)
            .collect();
        if seen.insert(name.clone()) {
            names.push(name);
        }
    }
    let mut statements: Vec<Vec<String>> = Vec::new();
    for chain in names.chunks(hops + 1) {
        let value = 10_000 + rng.below(89_999);
        let mut these = vec![format!("VAR {} = {value}", chain[0])];
        for j in 0..hops {
            these.push(format!("VAR {} = VAR {} ", chain[j + 1], chain[j]));
        }
        statements.push(these);
    }
    let noise = format!("{NOISE}\n");
    let mut sentences: Vec<String> = vec![noise; noises.max(1)];
    for chain in &statements {
        let mut positions = sample_indices(rng, sentences.len(), chain.len());
        positions.sort_unstable();
        for (j, (position, statement)) in positions.iter().zip(chain).enumerate() {
            sentences.insert(position + j, statement.clone());
        }
    }
    let context = sentences.join(" ").replace(". \n", ".\n");
    let value = statements[0][0]
        .rsplit('=')
        .next()
        .expect("has a value")
        .trim()
        .to_string();
    let num_v = (hops + 1).to_string();
    TaskText {
        body: fill(VT_TEMPLATE, &[("context", &context), ("query", &value)]),
        answer_prefix: fill(VT_PREFIX, &[("num_v", &num_v), ("query", &value)]),
        references: names[..hops + 1].to_vec(),
        evidence: statements[0].clone(),
    }
}

/// RULER's `randomize_icl`: the solved example with its answer names replaced by fresh ones.
fn rename_example(example: &TaskText, rng: &mut SplitMix64) -> String {
    let mut text = format!(
        "{}{} {}",
        example.body,
        example.answer_prefix,
        example.references.join(" ")
    );
    for name in &example.references {
        let fresh: String = (0..name.len())
            .map(|_| (b'A' + rng.below(26) as u8) as char)
            .collect();
        text = text.replace(name.as_str(), &fresh);
    }
    text
}

/// RULER's `get_example`: (numbered list, the common words).
fn common_words(
    sources: &Sources,
    num_words: usize,
    common_repeats: usize,
    uncommon_repeats: usize,
    common: usize,
    rng: &mut SplitMix64,
) -> (String, Vec<String>) {
    let num_words = num_words.max(common + 1).min(sources.all_words.len());
    let chosen: Vec<String> = sample_indices(rng, sources.all_words.len(), num_words)
        .into_iter()
        .map(|i| sources.all_words[i].clone())
        .collect();
    let (top, rest) = chosen.split_at(common);
    let mut list: Vec<&String> = Vec::new();
    for _ in 0..common_repeats {
        list.extend(top);
    }
    for _ in 0..uncommon_repeats {
        list.extend(rest);
    }
    shuffle(rng, &mut list);
    let context = list
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}. {w}", i + 1))
        .collect::<Vec<_>>()
        .join(" ");
    (context, top.to_vec())
}

/// Riemann zeta(alpha) for alpha > 1 (sum plus an integral tail).
fn zeta(alpha: f64) -> f64 {
    let terms = 10_000;
    let sum: f64 = (1..=terms).map(|k| (k as f64).powf(-alpha)).sum();
    sum + (terms as f64).powf(1.0 - alpha) / (alpha - 1.0) - 0.5 * (terms as f64).powf(-alpha)
}

/// RULER's `gen_text`: `size` coded words with Zipf counts over `vocab_size` words, the most
/// frequent one replaced by `...` (noise); the answer is the next three.
fn frequent_words(alpha: f64, size: usize, vocab_size: usize, rng: &mut SplitMix64) -> TaskText {
    let mut vocab: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    while vocab.len() < vocab_size {
        let word: String = (0..6)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        if seen.insert(word.clone()) {
            vocab.push(word);
        }
    }
    vocab.sort();
    shuffle(rng, &mut vocab);
    vocab[0] = "...".to_string();
    let z = zeta(alpha);
    let mut words: Vec<&String> = Vec::new();
    for (k, word) in vocab.iter().enumerate() {
        let count = (size as f64 * ((k + 1) as f64).powf(-alpha) / z) as usize;
        words.extend(std::iter::repeat_n(word, count));
    }
    shuffle(rng, &mut words);
    let context = words
        .iter()
        .map(|w| w.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    TaskText {
        body: fill(FWE_TEMPLATE, &[("context", &context), ("query", "")]),
        answer_prefix: FWE_PREFIX.to_string(),
        references: vocab[1..4].to_vec(),
        evidence: Vec::new(),
    }
}

fn qa(
    dataset: &QaDataset,
    source: QaSource,
    num_docs: usize,
    index: usize,
    rng: &mut SplitMix64,
) -> Result<TaskText> {
    let item = dataset
        .items
        .get(index)
        .ok_or_else(|| {
            EvalError::InvalidParameter(format!(
                "{source:?} has {} questions; sample {index} is beyond them",
                dataset.items.len()
            ))
        })?
        .clone();
    let total = dataset.documents.len();
    let mut docs: Vec<usize> = item.gold.clone();
    if num_docs < total {
        if num_docs.saturating_sub(item.gold.len()) > item.related.len() {
            docs.extend(&item.related);
            let taken: HashSet<usize> = docs.iter().copied().collect();
            let wanted = num_docs - docs.len();
            let mut added = 0;
            let mut seen = HashSet::new();
            while added < wanted {
                let d = rng.below(total);
                if !taken.contains(&d) && seen.insert(d) {
                    docs.push(d);
                    added += 1;
                }
            }
        } else {
            let extra = num_docs.saturating_sub(item.gold.len());
            for i in sample_indices(rng, item.related.len(), extra) {
                docs.push(item.related[i]);
            }
        }
    } else {
        docs = (0..total).collect();
    }
    shuffle(rng, &mut docs);
    let context = docs
        .iter()
        .enumerate()
        .map(|(i, &d)| format!("Document {}:\n{}", i + 1, dataset.documents[d]))
        .collect::<Vec<_>>()
        .join("\n\n");
    let evidence = match source {
        QaSource::Squad => item
            .gold
            .iter()
            .map(|&d| dataset.documents[d].clone())
            .collect(),
        QaSource::HotpotQa => Vec::new(),
    };
    Ok(TaskText {
        body: fill(
            QA_TEMPLATE,
            &[("context", &context), ("query", &item.question)],
        ),
        answer_prefix: QA_PREFIX.to_string(),
        references: item.answers,
        evidence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeta_two_is_pi_squared_over_six() {
        assert!((zeta(2.0) - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-9);
    }

    #[test]
    fn queries_join_like_ruler() {
        let q = |v: &[&str]| join_queries(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(q(&["a"]), "a");
        assert_eq!(q(&["a", "b"]), "a, and b");
        assert_eq!(q(&["a", "b", "c"]), "a, b, and c");
    }

    #[test]
    fn uuids_are_version_4() {
        let sources = Sources::from_parts(
            "x",
            WordLists {
                nouns: vec!["n".into()],
                adjectives: vec!["a".into()],
                verbs: vec!["v".into()],
            },
            None,
            None,
        );
        let mut rng = SplitMix64::new(1);
        for _ in 0..20 {
            let u = random_item(&mut rng, NiahItem::Uuids, &sources);
            assert_eq!(u.len(), 36);
            assert_eq!(&u[14..15], "4");
            assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        }
    }
}
