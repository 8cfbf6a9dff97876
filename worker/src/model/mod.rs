//! Wan2.1 in candle: every component the farm evaluates, loaded from a diffusers-format directory.
//!
//! Each component has a `Config` (deserialised from the component's `config.json`, with presets for the
//! published checkpoints) and a `load(dir, dtype, device)` constructor whose variable paths mirror the
//! diffusers checkpoint keys.

pub mod attention;
pub mod cpu;
pub mod dit;
pub mod error;
pub mod forward;
pub mod load;
pub mod random;
pub mod sharded;
pub mod t5;
pub mod tokenizer;
pub mod vae;

pub use error::{ModelError, Result};
pub use load::{ComponentDir, PipelineDir};
