//! Training the project's tiny Wan2.1 on procedural videos, with the same model code that serves it.
//!
//! Four phases, each resumable from its last checkpoint in a work folder:
//! 1. the VAE learns to reconstruct clips ([`vae`]);
//! 2. a fixed set of clips is encoded once, which also gives the per-channel latent statistics;
//! 3. the transformer and the umT5 text encoder learn together to denoise those latents ([`dit`]);
//! 4. when the recipe asks, the decoder alone learns more, the encoder frozen.
//!
//! The weights start random, or from a finished model when the recipe names one (`start_from`), so that
//! a run can fine-tune the shipped model. The result is written as a diffusers `WanPipeline` folder ([`export`]).

pub mod binding;
pub mod data;
pub mod dit;
pub mod export;
pub mod optim;
pub mod params;
pub mod recipe;
mod run;
pub mod separation;
mod start;
pub mod tokenizer;
pub mod vae;
pub mod widen;

use std::path::{Path, PathBuf};

pub use recipe::Recipe;
pub use run::{train, Phase, Progress, Summary, TrainConfig};

use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("recipe: {0}")]
    Recipe(String),
    #[error("{path}: {msg}")]
    WorkDir { path: PathBuf, msg: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("training: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), source }
    }
}
