//! The coordinator's gRPC services.

mod registry;
mod render;

pub use registry::RegistryService;
pub use render::{Backend, RenderApi, LEADER_HEADER, MAX_SUBMIT_BYTES};
