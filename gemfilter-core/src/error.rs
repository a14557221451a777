//! Errors a caller can cause: bad parameters, bad configurations, prompts that do not fit.

use thiserror::Error;

/// Result alias used throughout `gemfilter-core`.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Everything `gemfilter-core` refuses, with the offending value named.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// The architecture description is inconsistent.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// The prompt holds no tokens.
    #[error("the prompt is empty: nothing to generate from")]
    EmptyPrompt,
    /// The prompt (plus any cached tokens) does not fit the model's position range.
    #[error(
        "the prompt needs {needed} positions but the model accepts at most {max} (max_position_embeddings)"
    )]
    PromptTooLong {
        /// Positions the request needs.
        needed: usize,
        /// `max_position_embeddings` of the model.
        max: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenOutOfVocabulary {
        /// The offending id.
        id: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// The token budget `k` is zero.
    #[error("top-k must be at least 1 (got 0)")]
    ZeroTopK,
    /// The filter layer does not exist.
    #[error("filter layer {layer} is out of range: the model has {num_layers} layers (valid: 0..={max})", max = num_layers - 1)]
    FilterLayerOutOfRange {
        /// Requested layer.
        layer: usize,
        /// Number of decoder layers.
        num_layers: usize,
    },
    /// A generation parameter is outside its domain.
    #[error("invalid generation parameter: {0}")]
    InvalidParameter(String),
    /// The KV cache is full.
    #[error("the KV cache holds {capacity} positions; {needed} are needed")]
    CacheFull {
        /// Positions the cache was sized for.
        capacity: usize,
        /// Positions the request needs.
        needed: usize,
    },
    /// A token selector broke its contract.
    #[error("token selector `{selector}` returned an invalid selection: {reason}")]
    InvalidSelection {
        /// Selector name.
        selector: String,
        /// What was wrong.
        reason: String,
    },
    /// A token selector was configured with parameters it cannot work with.
    #[error("token selector `{selector}` is misconfigured: {reason}")]
    InvalidSelector {
        /// Selector name.
        selector: String,
        /// What was wrong.
        reason: String,
    },
    /// The caller cancelled the work (see [`CancelFlag`](crate::options::CancelFlag)).
    #[error("the generation was cancelled")]
    Cancelled,
    /// A weight cannot be packed or multiplied as asked.
    #[error("quantised weights: {0}")]
    Quantization(String),
}
