//! The coordinator's gRPC services.

mod registry;
mod render;

pub use registry::RegistryService;
pub use render::{RenderApi, MAX_SUBMIT_BYTES};
