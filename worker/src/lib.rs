//! The patchwork worker: model code for Wan2.1 (diffusion transformer, VAE, umT5 text encoder and its
//! tokenizer), the engine that evaluates windows and decodes chunks, and the gRPC service around it.

pub mod collective;
pub mod engine;
pub mod group;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod run;
pub mod service;
pub mod train;
