//! Hand-written CPU kernels for the hot spots that candle's generic ops leave slow: fused attention and
//! vectorisable exp / GELU. Each is a candle custom op, used only for f32 tensors on CPU.

pub(crate) mod attention;
pub mod fast_math;
pub(crate) mod linear;
