//! Everything that can go wrong turning files into a model, with the file and field named.

use std::path::PathBuf;

use gemfilter_core::CoreError;
use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Why a model could not be loaded or run.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A file or folder that must exist does not.
    #[error("{what} not found: {path}")]
    NotFound {
        /// What was looked for ("model folder", "config.json", ...).
        what: String,
        /// Where.
        path: PathBuf,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{path} is not valid JSON: {message}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A configuration field is missing or has the wrong type or value.
    #[error("{path}: field `{field}` {problem}")]
    InvalidField {
        /// The file.
        path: PathBuf,
        /// Dotted field name.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The configuration is self-inconsistent (e.g. heads not divisible by KV heads).
    #[error("{path}: {message}")]
    InconsistentConfig {
        /// The config file.
        path: PathBuf,
        /// What the decoder refused.
        message: String,
    },
    /// The checkpoint describes an architecture this crate does not implement.
    #[error("unsupported architecture: {found} in {path} (supported: {supported})")]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// What the file says (`model_type` value).
        found: String,
        /// What is supported.
        supported: String,
    },
    /// A weights file cannot be parsed or is truncated.
    #[error("corrupt weights file {path}: {message}")]
    CorruptWeights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Tensors the architecture needs are absent from the checkpoint.
    #[error("missing tensors in {path}: {}", format_names(names))]
    MissingTensors {
        /// Folder or file searched.
        path: PathBuf,
        /// Checkpoint names of the absent tensors.
        names: Vec<String>,
    },
    /// A tensor has a shape other than the architecture requires.
    #[error("tensor `{name}` in {path} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file holding it.
        path: PathBuf,
        /// Checkpoint name.
        name: String,
        /// Required shape.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has an element type the loader cannot use.
    #[error("tensor `{name}` in {path} has unsupported element type {dtype}")]
    UnsupportedDType {
        /// The file holding it.
        path: PathBuf,
        /// Checkpoint name.
        name: String,
        /// Element type in the file.
        dtype: String,
    },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer error ({path}): {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The chat template is missing, invalid or failed to render.
    #[error("chat template error: {0}")]
    ChatTemplate(String),
    /// A selector spec (`--selector`) could not be understood.
    #[error("invalid selector spec `{spec}`: {problem}")]
    SelectorSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A tensor cannot be stored in the weight format asked for.
    #[error("cannot store tensor `{name}` of {path} as {format}: {reason}")]
    CannotPack {
        /// The file holding it.
        path: PathBuf,
        /// Checkpoint name.
        name: String,
        /// The weight format asked for.
        format: String,
        /// Why not.
        reason: String,
    },
    /// The weights would not fit in the memory available, estimated before allocating.
    #[error(
        "{path} with {format} weights needs about {needed_gib:.1} GiB, but only {available_gib:.1} GiB of memory is available{hint}"
    )]
    NotEnoughMemory {
        /// The model loaded.
        path: PathBuf,
        /// The weight format asked for.
        format: String,
        /// Estimated bytes of the weights, in GiB.
        needed_gib: f64,
        /// Memory available (`MemAvailable`), in GiB.
        available_gib: f64,
        /// What would fit, when something would.
        hint: String,
    },
    /// The request was refused by the decoder.
    #[error(transparent)]
    Core(#[from] CoreError),
}

fn format_names(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}
