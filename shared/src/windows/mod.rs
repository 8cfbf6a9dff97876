//! Latent geometry: cutting a job's latent into overlapping spacetime windows and fusing the windows'
//! outputs back into one latent.
//!
//! The coordinator plans once per job ([`plan_windows`]), builds the [`Fusion`] weights once, and then every
//! step sends each window's slice ([`extract`]) to a worker and fuses what comes back ([`Fusion::fuse`]).

mod fusion;
mod plan;

pub use fusion::{axis_ramp, extract, insert, Fusion, FusionError, FusionMode};
pub use plan::{
    continued_seams, plan_axis, plan_windows, temporal_seams, Axis, LatentShape, PlanError, PlanRequest, Span, Window,
    WindowBox, WindowPlan,
};
