//! The patchwork worker: model code for Wan2.1 (diffusion transformer, VAE, umT5 text encoder and its
//! tokenizer), and the pieces a worker process uses to evaluate it.

pub mod model;
