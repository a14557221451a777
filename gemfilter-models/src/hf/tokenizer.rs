//! Text ↔ token ids through the `tokenizers` crate.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// Token ids with the byte span of the text each covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `(start, end)` byte offsets into the encoded text, one per id.
    pub offsets: Vec<(usize, usize)>,
}

/// A tokenizer plus where it came from (for error messages).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    source: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl TextTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::NotFound {
                what: "tokenizer.json".into(),
                path: path.to_path_buf(),
            });
        }
        let inner = Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self::new(inner, path))
    }

    /// Wraps a tokenizer built elsewhere (e.g. from GGUF metadata); `source` names its origin.
    pub fn new(inner: Tokenizer, source: &Path) -> Self {
        Self {
            inner,
            source: source.to_path_buf(),
        }
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    fn error(&self, message: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer {
            path: self.source.clone(),
            message: message.to_string(),
        }
    }

    /// Token ids of `text`; with `add_special_tokens` the post-processor adds what it defines
    /// (e.g. LLaMA 3's BOS), exactly as transformers' `tokenizer(text)` does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text` with the byte span each covers in `text` (empty for added specials).
    pub fn encode_with_offsets(&self, text: &str, add_special_tokens: bool) -> Result<Encoded> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.error(e))?;
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        })
    }

    /// Text of `ids`, optionally without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.error(e))
    }

    /// Id of a token given by its text, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
