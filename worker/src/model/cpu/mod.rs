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

/// `t` repeated along the rows of `x` (`[D]` over `[.., D]`, or `[B, 1, D]` over `[B, N, D]`), made for a
/// gradient graph: as a matmul with a column of ones, so that the backward pass sums the rows with a GEMM
/// (onesᵀ·grad). Through `broadcast_add` / `broadcast_mul`, candle's backward pass reduces over a strided
/// axis instead, which took a fifth of a transformer training step for the biases and modulations.
pub(crate) fn expand_rows(t: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    match (t.dims(), x.dims()) {
        (&[td], _) if td == d => {
            let rows = x.elem_count() / d.max(1);
            Tensor::ones((rows, 1), t.dtype(), t.device())?.matmul(&t.reshape((1, d))?)?.reshape(x.shape())
        }
        (&[tb, 1, td], &[b, n, _]) if tb == b && td == d => {
            Tensor::ones((b, n, 1), t.dtype(), t.device())?.contiguous()?.matmul(&t.contiguous()?)
        }
        _ => t.broadcast_as(x.shape())?.contiguous(),
    }
}

/// `x + t` with `t` repeated along `x`'s rows (see [`expand_rows`] for the shapes).
pub(crate) fn add_rows(x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    if tracked(&[t]) {
        x + expand_rows(t, x)?
    } else {
        x.broadcast_add(t)
    }
}

/// `x · t` with `t` repeated along `x`'s rows (see [`expand_rows`] for the shapes).
pub(crate) fn mul_rows(x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    if tracked(&[t]) {
        x * expand_rows(t, x)?
    } else {
        x.broadcast_mul(t)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The rows' sum and product through `add_rows` / `mul_rows` give the same values and gradients as
    /// candle's broadcasting ops, for both shapes.
    #[test]
    fn row_ops_match_broadcasting_in_value_and_gradient() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (t_shape, x_shape) in [(vec![5], vec![2, 3, 5]), (vec![2, 1, 5], vec![2, 3, 5])] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, x_shape.as_slice(), &dev)?)?;
            let t = Var::from_tensor(&Tensor::randn(0f32, 1.0, t_shape.as_slice(), &dev)?)?;
            let w = Tensor::randn(0f32, 1.0, x_shape.as_slice(), &dev)?;
            let ours = (add_rows(&mul_rows(x.as_tensor(), t.as_tensor())?, t.as_tensor())? * &w)?.sum_all()?;
            let theirs = (x.as_tensor().broadcast_mul(t.as_tensor())?.broadcast_add(t.as_tensor())? * &w)?.sum_all()?;
            let close = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
                (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
            };
            assert!(close(&ours, &theirs)? < 1e-4);
            let (g1, g2) = (ours.backward()?, theirs.backward()?);
            for v in [&x, &t] {
                let (a, b) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                assert_eq!(a.dims(), b.dims());
                assert!(close(a, b)? < 1e-4, "{t_shape:?} over {x_shape:?}");
            }
        }
        Ok(())
    }
}
