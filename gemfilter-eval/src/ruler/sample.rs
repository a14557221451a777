//! Samples at a target length: the largest haystack whose prompt fits, with the model's own
//! tokenizer and chat template.

use serde::{Deserialize, Serialize};

use gemfilter_models::{ChatMessage, Model};

use super::tasks::{Sources, Task, TaskText, generate};
use crate::error::{EvalError, Result};
use crate::needle::SplitMix64;

/// Turns a task text into the prompt a model reads, and counts its tokens.
pub trait PromptFormat {
    /// The prompt: the body as the user turn (or as is) and the answer prefix after it.
    fn render(&self, text: &TaskText) -> Result<String>;
    /// Tokens of `prompt`.
    fn count_tokens(&self, prompt: &str) -> Result<usize>;
}

/// A model's tokenizer and, when `chat`, its chat template: the body is the user turn and the
/// answer prefix (leading space removed) opens the assistant's turn.
pub struct ModelPrompt<'a> {
    /// The model.
    pub model: &'a Model,
    /// Use the chat template.
    pub chat: bool,
}

impl PromptFormat for ModelPrompt<'_> {
    fn render(&self, text: &TaskText) -> Result<String> {
        if self.chat {
            let template = self.model.chat_template().ok_or_else(|| {
                EvalError::InvalidParameter("the model has no chat template".into())
            })?;
            let turn = template.render(&[ChatMessage::user(text.body.clone())], true)?;
            Ok(format!("{turn}{}", text.answer_prefix.trim_start()))
        } else {
            Ok(format!("{}{}", text.body, text.answer_prefix))
        }
    }

    fn count_tokens(&self, prompt: &str) -> Result<usize> {
        Ok(self.model.tokenizer().encode(prompt, !self.chat)?.len())
    }
}

/// One sample, ready to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Task name.
    pub task: String,
    /// Sample index (0-based).
    pub index: usize,
    /// Requested length (prompt + answer budget), in tokens.
    pub target_tokens: usize,
    /// The prompt.
    pub prompt: String,
    /// Its length in tokens.
    pub prompt_tokens: usize,
    /// Haystack size used (essay words, repeats, documents, …).
    pub size: usize,
    /// QA: the question asked (its index in the dataset; see [`QA_FALLBACK_STRIDE`]).
    #[serde(default)]
    pub question: Option<usize>,
    /// References.
    pub references: Vec<String>,
    /// Answer-carrying pieces of the prompt (for selection recall).
    pub evidence: Vec<String>,
    /// RULER's answer budget.
    pub max_new_tokens: usize,
}

/// A QA sample asks question `index` (as RULER's sample `index` does); when that question's own
/// documents alone exceed the length (HotpotQA's ten paragraphs at 2K tokens, sometimes), it asks
/// question `index + 1000`, then `index + 2000`, and so on.
pub const QA_FALLBACK_STRIDE: usize = 1000;

/// The generator seed of a sample: a hash of the run seed, task, length and index, so samples
/// do not change when other tasks, lengths or counts are added.
pub fn sample_seed(seed: u64, task: &str, target_tokens: usize, index: usize) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&seed.to_le_bytes());
    eat(task.as_bytes());
    eat(&(target_tokens as u64).to_le_bytes());
    eat(&(index as u64).to_le_bytes());
    SplitMix64::new(hash).next_u64()
}

/// Builds sample `index` of `task` whose prompt plus the answer budget fits `target_tokens`:
/// the largest haystack size that fits, by bisection.
pub fn build_sample(
    task: &Task,
    sources: &Sources,
    format: &dyn PromptFormat,
    target_tokens: usize,
    seed: u64,
    index: usize,
) -> Result<Sample> {
    let budget = target_tokens
        .checked_sub(task.tokens_to_generate())
        .filter(|b| *b > 0)
        .ok_or_else(|| {
            EvalError::InvalidParameter(format!(
                "{} tokens cannot hold {}'s {}-token answer budget",
                target_tokens,
                task.name,
                task.tokens_to_generate()
            ))
        })?;
    let base = sample_seed(seed, task.name, target_tokens, index);
    let attempt = |item: usize, size: usize| -> Result<(String, usize, TaskText)> {
        let mut rng = SplitMix64::new(base);
        let text = generate(task, sources, size, item, target_tokens, &mut rng)?;
        let prompt = format.render(&text)?;
        let tokens = format.count_tokens(&prompt)?;
        Ok((prompt, tokens, text))
    };
    let smallest = 1;
    let questions = sources.questions(task);
    let mut item = index;
    loop {
        let (_, tokens, _) = attempt(item, smallest)?;
        if tokens <= budget {
            break;
        }
        match questions {
            Some(count) if item + QA_FALLBACK_STRIDE < count => item += QA_FALLBACK_STRIDE,
            _ => {
                return Err(EvalError::InvalidParameter(format!(
                    "{}: even the smallest prompt has {tokens} tokens, over the {budget} that {target_tokens} leaves after the answer budget",
                    task.name
                )));
            }
        }
    }
    let attempt = |size: usize| attempt(item, size);
    // Grow until over, then bisect between the last fit and the first miss.
    let max = sources.max_size(task).max(smallest);
    let mut low = smallest;
    let mut high = None;
    let mut probe = 16.min(max);
    while high.is_none() {
        let (_, tokens, _) = attempt(probe)?;
        if tokens <= budget {
            low = probe;
            if probe == max {
                break;
            }
            probe = (probe * 2).min(max);
        } else {
            high = Some(probe);
        }
    }
    if let Some(mut high) = high {
        while high - low > 1 {
            let mid = (low + high) / 2;
            if attempt(mid)?.1 <= budget {
                low = mid;
            } else {
                high = mid;
            }
        }
    }
    let (prompt, prompt_tokens, text) = attempt(low)?;
    Ok(Sample {
        task: task.name.to_string(),
        index,
        target_tokens,
        prompt,
        prompt_tokens,
        size: low,
        question: questions.map(|_| item),
        references: text.references,
        evidence: text.evidence,
        max_new_tokens: task.tokens_to_generate(),
    })
}
