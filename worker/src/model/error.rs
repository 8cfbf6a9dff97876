//! The one error type of the model code. Every variant names the file, tensor or field at fault, so
//! that a broken model directory says what is broken instead of panicking.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: missing (expected {what})", path.display())]
    MissingFile { path: PathBuf, what: String },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {msg}", path.display())]
    InvalidFile { path: PathBuf, msg: String },
    #[error("invalid config: {field}: {msg}")]
    InvalidConfig { field: String, msg: String },
    #[error("input `{name}`: {msg}")]
    InvalidInput { name: String, msg: String },
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    /// A shard group lost a rank during the evaluation; the group is being re-formed.
    #[error("{0}")]
    GroupFailed(String),
    /// No shard group is free to take the evaluation.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for ModelError {
    fn from(err: candle_core::Error) -> Self {
        ModelError::Candle(super::load::without_backtrace(err))
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub fn input(name: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::InvalidInput { name: name.into(), msg: msg.into() }
    }

    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::InvalidConfig { field: field.into(), msg: msg.into() }
    }
}
