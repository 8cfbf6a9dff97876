//! Hand-written CPU kernels for the hot spots that candle's generic ops leave slow: fused attention and
//! vectorisable exp / GELU. Each is a candle custom op, used only for f32 tensors on CPU.

use candle_core::Tensor;

pub(crate) mod attention;
pub mod fast_math;
pub(crate) mod linear;

/// Whether any of `tensors` belongs to a gradient graph (a trainable variable, or computed from one).
/// The hand-written kernels have no backward pass and some copy weights into their own layout when a
/// model is built, so such tensors take candle's differentiable ops instead: training runs the same
/// model code as inference, only slower.
pub(crate) fn tracked(tensors: &[&Tensor]) -> bool {
    tensors.iter().any(|t| t.track_op())
}

/// Softmax over the last dimension: candle's fused kernel for inference, the differentiable
/// composition of ops when a gradient is wanted.
pub(crate) fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}
