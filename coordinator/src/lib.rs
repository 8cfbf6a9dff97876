//! The patchwork coordinator: the client API, the job store and queue, the worker pool, the per-job
//! sampling loop over windows, chunked decoding and MP4 muxing.

pub mod checkpoint;
pub mod cluster;
pub mod decode;
pub mod dispatch;
pub mod metrics;
pub mod pool;
pub mod runner;
pub mod server;
pub mod service;
pub mod store;
pub mod video;
pub mod web;

pub use server::{run, run_with_http, CoordinatorConfig, CoordinatorError};
