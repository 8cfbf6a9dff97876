//! Types and pure logic shared by the coordinator and the workers: flow-matching samplers and latent
//! geometry.

pub mod sampler;
