//! Types and pure logic shared by the coordinator and the workers: the generated gRPC code, validated job
//! specs, model geometry, window planning and fusion, the tensor wire codec and flow-matching samplers.

pub mod auth;
pub mod cluster;
pub mod json;
pub mod metrics;
pub mod model;
pub mod noise;
pub mod pb;
pub mod sampler;
pub mod spec;
pub mod windows;
pub mod wire;
