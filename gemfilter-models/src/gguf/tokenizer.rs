//! A `tokenizers` tokenizer rebuilt from GGUF metadata, the way transformers rebuilds it
//! (`integrations/gguf/gguf_tokenizer_mapping.py`), so both give the same ids for a file:
//!
//! - `gpt2`: byte-level BPE from the file's vocabulary and merges; the split regex chosen by
//!   `tokenizer.ggml.pre` for the names transformers knows (LLaMA 3, tekken, Qwen 2, GPT-4o
//!   families), else GPT-2's byte-level regex; BOS prepended when `add_bos_token` says so.
//! - `llama`: SentencePiece-style BPE with byte fallback, merges recovered from the scores,
//!   `▁` Metaspace pre-tokenizer, BOS prepended unless the file says otherwise.
//!
//! Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
//! tokens, so neither is ever split.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::reader::{GgufFile, MetaValue};
use crate::error::{ModelError, Result};
use crate::hf::tokenizer::TextTokenizer;

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex of a `tokenizer.ggml.pre` name, `None` for GPT-2's byte-level default.
fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => Some(LLAMA3_SPLIT),
        "tekken" => Some(TEKKEN_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => Some(QWEN2_SPLIT),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => Some(GPT4O_SPLIT),
        _ => None,
    }
}

/// GPT-2's reversible byte → printable character map.
fn bytes_to_unicode() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("latin-1")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("valid")
            }
        })
        .collect()
}

struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn error(&self, message: impl Into<String>) -> ModelError {
        ModelError::Tokenizer {
            path: self.file.path().to_path_buf(),
            message: message.into(),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.error(format!("`{key}` must hold strings")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.error(format!("`{key}` must be an array of strings"))),
        }
    }

    fn numbers(&self, key: &str) -> Result<Option<Vec<f64>>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| self.error(format!("`{key}` must hold numbers")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.error(format!("`{key}` must be an array of numbers"))),
        }
    }

    fn id(&self, key: &str, vocab: usize) -> Result<Option<usize>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as usize) < vocab => Ok(Some(id as usize)),
                _ => Err(self.error(format!(
                    "`{key}` = {v:?} is not a token id of the {vocab}-token vocabulary"
                ))),
            },
        }
    }
}

/// Builds the tokenizer a GGUF file describes.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<TextTokenizer> {
    let meta = Meta { file };
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| {
            meta.error("no tokenizer in the file: metadata `tokenizer.ggml.model` is missing")
        })?
        .to_string();
    let tokens = meta
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| meta.error("metadata `tokenizer.ggml.tokens` is missing"))?;
    if tokens.is_empty() {
        return Err(meta.error("`tokenizer.ggml.tokens` is empty"));
    }
    let token_types: Vec<i64> = meta
        .numbers("tokenizer.ggml.token_type")?
        .map(|t| t.into_iter().map(|x| x as i64).collect())
        .unwrap_or_default();
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(meta.error(format!(
            "`tokenizer.ggml.token_type` has {} entries for {} tokens",
            token_types.len(),
            tokens.len()
        )));
    }
    let bos = meta.id("tokenizer.ggml.bos_token_id", tokens.len())?;
    let add_bos_flag = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(MetaValue::as_bool);

    let (json, byte_level) = match model.as_str() {
        "gpt2" => {
            let add_bos = add_bos_flag.unwrap_or(false);
            (gpt2_json(&meta, &tokens, bos.filter(|_| add_bos))?, true)
        }
        "llama" => {
            // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
            let add_bos = add_bos_flag.unwrap_or(true);
            (
                sentencepiece_json(&meta, &tokens, bos.filter(|_| add_bos))?,
                false,
            )
        }
        other => {
            return Err(meta.error(format!(
                "tokenizer type `{other}` (tokenizer.ggml.model) is not supported (supported: gpt2, llama)"
            )));
        }
    };
    let mut json = json;
    json["added_tokens"] = added_tokens(&tokens, &token_types, byte_level, &json["model"]["vocab"]);
    let inner = Tokenizer::from_bytes(serde_json::to_vec(&json).expect("serialisable"))
        .map_err(|e| meta.error(format!("cannot build the tokenizer: {e}")))?;
    Ok(TextTokenizer::new(inner, file.path()))
}

fn template(bos: Option<(usize, &str)>) -> Value {
    match bos {
        None => json!({
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {},
        }),
        Some((id, token)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {token: {"id": token, "ids": [id], "tokens": [token]}},
        }),
    }
}

fn gpt2_json(meta: &Meta<'_>, tokens: &[String], bos: Option<usize>) -> Result<Value> {
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let mut vocab = serde_json::Map::new();
    for (id, token) in tokens.iter().enumerate() {
        // Tokens spelled outside the byte alphabet (llama.cpp mislabels) are re-spelled from
        // their UTF-8 bytes, as transformers does.
        let spelled = if token.chars().all(|c| alphabet.contains(&c)) {
            token.clone()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }
    let merges: Vec<Value> = meta
        .strings("tokenizer.ggml.merges")?
        .ok_or_else(|| {
            meta.error("a gpt2 tokenizer needs `tokenizer.ggml.merges`, which is missing")
        })?
        .iter()
        .map(|m| {
            let mut parts = m.splitn(2, ' ');
            let left = parts.next().unwrap_or_default();
            let right = parts.next().unwrap_or_default();
            json!([left, right])
        })
        .collect();
    let pre = meta
        .file
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or_default();
    let pre_tokenizer = match split_regex(pre) {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
        None => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": template(bos.map(|id| (id, tokens[id].as_str()))),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

fn sentencepiece_json(meta: &Meta<'_>, tokens: &[String], bos: Option<usize>) -> Result<Value> {
    let mut vocab = serde_json::Map::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), json!(id));
        index.insert(token, id);
    }
    let merges = match meta.strings("tokenizer.ggml.merges")? {
        Some(merges) => merges
            .iter()
            .map(|m| {
                let mut parts = m.splitn(2, ' ');
                json!([
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default()
                ])
            })
            .collect(),
        None => {
            let scores = meta.numbers("tokenizer.ggml.scores")?.ok_or_else(|| {
                meta.error("a llama tokenizer needs `tokenizer.ggml.scores` or merges")
            })?;
            if scores.len() != tokens.len() {
                return Err(meta.error(format!(
                    "`tokenizer.ggml.scores` has {} entries for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            merges_from_scores(tokens, &scores, &index)
                .into_iter()
                .map(|(l, r)| json!([l, r]))
                .collect::<Vec<_>>()
        }
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false},
        "post_processor": template(bos.map(|id| (id, tokens[id].as_str()))),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// transformers' `generate_merges(vocab, scores)`: every split of every token into two
/// vocabulary pieces, best score first (ties: shorter left piece, then shorter right piece),
/// stable in vocabulary order.
fn merges_from_scores(
    tokens: &[String],
    scores: &[f64],
    index: &HashMap<&str, usize>,
) -> Vec<(String, String)> {
    // A dict keyed by token: first position kept, last score wins.
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f64> = HashMap::new();
    for (token, &score) in tokens.iter().zip(scores) {
        if score_of.insert(token, score).is_none() {
            order.push(token);
        }
    }
    let mut merges: Vec<(String, String, f64)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str)> = Vec::new();
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(split);
            if index.contains_key(left) && index.contains_key(right) {
                local.push((left, right));
            }
        }
        local.sort_by_key(|(l, r)| (index[l], index[r]));
        merges.extend(
            local
                .into_iter()
                .map(|(l, r)| (l.to_string(), r.to_string(), score)),
        );
    }
    // Python's sorted(..., reverse=True) on (score, len(left), len(right)), stable.
    merges.sort_by(|a, b| {
        let key = |m: &(String, String, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

fn added_tokens(tokens: &[String], types: &[i64], byte_level: bool, vocab: &Value) -> Value {
    let alphabet: Option<HashSet<char>> =
        byte_level.then(|| bytes_to_unicode().into_iter().collect());
    let entry = |id: usize, content: &str, special: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": special})
    };
    let mut added = Vec::new();
    for (id, (token, &ty)) in tokens.iter().zip(types).enumerate() {
        let spelled_ok = alphabet
            .as_ref()
            .is_none_or(|a| token.chars().all(|c| a.contains(&c)));
        if ty == CONTROL && spelled_ok {
            added.push(entry(id, token, true));
        } else if ty == USER_DEFINED && vocab.get(token).is_some() {
            added.push(entry(id, token, false));
        }
    }
    Value::Array(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let map = bytes_to_unicode();
        assert_eq!(map[b'!' as usize], '!');
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
        assert_eq!(map.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn merges_follow_scores() {
        let tokens: Vec<String> = ["a", "b", "ab", "c", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, -1.0, 0.0, -3.0, -2.0];
        let index: HashMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let merges = merges_from_scores(&tokens, &scores, &index);
        let expected: Vec<(String, String)> = [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]
            .iter()
            .map(|(l, r)| (l.to_string(), r.to_string()))
            .collect();
        assert_eq!(merges, expected);
    }
}
