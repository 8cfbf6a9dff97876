//! The crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Wraps any other error with the file it concerns, so the message names it. The inner error is
    /// part of the message, not a `source`, so that error chains do not print it twice.
    #[error("{}: {inner}", path.display())]
    File { path: PathBuf, inner: Box<Error> },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("not a readable MP4: {0}")]
    Container(String),
    #[error("unsupported video: {0}")]
    Unsupported(String),
    #[error("H.264 decoding failed at sample {sample}: {reason}")]
    Decode { sample: usize, reason: String },
    #[error("cannot encode video: {0}")]
    Encode(String),
}

impl Error {
    /// Attaches the file the error is about.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Error {
        Error::File { path: path.into(), inner: Box::new(self) }
    }
}
