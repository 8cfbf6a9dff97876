//! Scaled dot-product attention with bounded memory.
//!
//! A long video is tens of thousands of tokens: the 1.3B model at 480×832×81 frames attends over 32,760
//! of them, and a full score matrix per head would be 4 GiB. Queries and keys are therefore processed in
//! tiles, and the softmax is accumulated online (running row maximum, running denominator, rescaled
//! accumulator), so the largest temporary is one `heads × q_tile × k_tile` score block whatever the length.
//! When all keys fit in one tile (every short sequence, and cross-attention to the text), the plain
//! softmax over that tile is exact and cheaper, and is used instead.

use candle_core::{DType, Result, Tensor, D};

use super::cpu::attention::FusedCpuAttention;
use super::cpu::{softmax_last, tracked};

/// How large the score blocks may get. The fused CPU kernel holds one `q_tile × k_tile` f32 block per
/// thread (16 MiB with the defaults); the op-based path (other devices) holds about four blocks for every
/// batch·head at once (192 MiB each for 12 heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionTiling {
    /// Queries per tile.
    pub q_tile: usize,
    /// Keys per tile.
    pub k_tile: usize,
}

impl Default for AttentionTiling {
    fn default() -> Self {
        AttentionTiling { q_tile: 1024, k_tile: 4096 }
    }
}

/// Attention of `q` over `k`/`v`: all `[batch, heads, tokens, head_dim]`, `k` and `v` with the same
/// token count. Returns `[batch, heads, q_tokens, head_dim]` in `q`'s dtype. Scores and the softmax are
/// computed in f32 whatever the input dtype, as the reference's kernels do.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, tiling: AttentionTiling) -> Result<Tensor> {
    let (b, h, nq, d) = q.dims4()?;
    let nk = k.dim(2)?;
    let dtype = q.dtype();
    if b * h * nq * d == 0 || nk == 0 {
        candle_core::bail!("attention over an empty tensor: q {:?}, k {:?}", q.dims(), k.dims());
    }
    // Fold batch and heads together: every (batch, head) pair is an independent matmul.
    let q = q.reshape((b * h, nq, d))?;
    let k = k.reshape((b * h, nk, d))?;
    let v = v.reshape((b * h, nk, d))?;
    if q.device().is_cpu() && dtype.is_float() && !tracked(&[&q, &k, &v]) {
        // The fused kernel computes in f32; reduced-precision inputs are widened (the reference computes
        // scores and softmax in f32 too).
        let f32 = |t: Tensor| t.to_dtype(DType::F32)?.contiguous();
        let op = FusedCpuAttention { scale: scale as f32, tiling };
        let out = f32(q)?.apply_op3_no_bwd(&f32(k)?, &f32(v)?, &op)?;
        return out.to_dtype(dtype)?.reshape((b, h, nq, d));
    }
    tiled(&q, &k, &v, scale, tiling)?.to_dtype(dtype)?.reshape((b, h, nq, d))
}

/// The same algorithm from candle's tensor ops, for devices without the fused kernel.
/// `q` `[bh, nq, d]`, `k`/`v` `[bh, nk, d]`; returns f32 or the input dtype.
fn tiled(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, tiling: AttentionTiling) -> Result<Tensor> {
    let nq = q.dim(1)?;
    let nk = k.dim(1)?;
    let q_tile = tiling.q_tile.max(1);
    let k_tile = tiling.k_tile.max(1);
    let mut outputs = Vec::with_capacity(nq.div_ceil(q_tile));
    for q_start in (0..nq).step_by(q_tile) {
        let q_len = q_tile.min(nq - q_start);
        let q_blk = q.narrow(1, q_start, q_len)?;
        let out =
            if nk <= k_tile { single_tile(&q_blk, k, v, scale)? } else { online_tiles(&q_blk, k, v, scale, k_tile)? };
        outputs.push(out.to_dtype(q.dtype())?);
    }
    Tensor::cat(&outputs, 1)
}

/// Scores of a query tile against a key tile, scaled, in f32: `[bh, q, k]`.
fn scores(q: &Tensor, k: &Tensor, scale: f64) -> Result<Tensor> {
    let s = q.matmul(&k.t()?)?;
    let s = if s.dtype() == DType::F32 { s } else { s.to_dtype(DType::F32)? };
    s * scale
}

/// All keys in one tile: an exact softmax, then one matmul with the values.
fn single_tile(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let p = softmax_last(&scores(q, k, scale)?)?;
    p.to_dtype(v.dtype())?.matmul(v)
}

/// Keys in several tiles: the online softmax. For each key tile, with `m` the running row maximum and
/// `l` the running denominator, `acc ← acc·e^(m−m') + e^(s−m')·V`, `l ← l·e^(m−m') + Σ e^(s−m')`;
/// the result is `acc / l`.
fn online_tiles(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, k_tile: usize) -> Result<Tensor> {
    let nk = k.dim(1)?;
    let mut state: Option<(Tensor, Tensor, Tensor)> = None; // (m [bh,q,1], l [bh,q,1], acc [bh,q,d] f32)
    for k_start in (0..nk).step_by(k_tile) {
        let k_len = k_tile.min(nk - k_start);
        let s = scores(q, &k.narrow(1, k_start, k_len)?, scale)?;
        let v_blk = v.narrow(1, k_start, k_len)?;
        let tile_max = s.max_keepdim(D::Minus1)?;
        state = Some(match state {
            None => {
                let p = s.broadcast_sub(&tile_max)?.exp()?;
                let l = p.sum_keepdim(D::Minus1)?;
                let acc = p.to_dtype(v.dtype())?.matmul(&v_blk)?.to_dtype(DType::F32)?;
                (tile_max, l, acc)
            }
            Some((m, l, acc)) => {
                let m_new = m.maximum(&tile_max)?;
                let correction = (m - &m_new)?.exp()?;
                let p = s.broadcast_sub(&m_new)?.exp()?;
                let l = ((l * &correction)? + p.sum_keepdim(D::Minus1)?)?;
                let pv = p.to_dtype(v.dtype())?.matmul(&v_blk)?.to_dtype(DType::F32)?;
                let acc = (acc.broadcast_mul(&correction)? + pv)?;
                (m_new, l, acc)
            }
        });
    }
    match state {
        Some((_, l, acc)) => acc.broadcast_div(&l),
        None => candle_core::bail!("attention over zero keys"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The textbook formula, materialising the whole score matrix.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        p.matmul(v).unwrap()
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let norm = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        (diff / norm).sqrt()
    }

    #[test]
    fn tiled_matches_naive_for_every_tiling() {
        let dev = Device::Cpu;
        let q = (Tensor::randn(0f32, 1.0, (2, 3, 37, 16), &dev).unwrap() * 2.0).unwrap();
        let k = (Tensor::randn(0f32, 1.0, (2, 3, 53, 16), &dev).unwrap() * 2.0).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 3, 53, 16), &dev).unwrap();
        let expected = naive(&q, &k, &v, 0.25);
        for (q_tile, k_tile) in [(1, 1), (5, 7), (16, 53), (37, 8), (100, 100), (3, 52)] {
            let got = attention(&q, &k, &v, 0.25, AttentionTiling { q_tile, k_tile }).unwrap();
            assert_eq!(got.dims(), &[2, 3, 37, 16]);
            let err = rel_err(&got, &expected);
            assert!(err < 1e-5, "tiles {q_tile}x{k_tile}: relative error {err}");
        }
    }

    #[test]
    fn op_based_path_matches_naive() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (6, 37, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (6, 53, 16), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (6, 53, 16), &dev).unwrap();
        let expected = naive(&q, &k, &v, 0.3);
        for (q_tile, k_tile) in [(5, 7), (37, 53), (8, 100)] {
            let got = tiled(&q, &k, &v, 0.3, AttentionTiling { q_tile, k_tile }).unwrap();
            assert!(rel_err(&got, &expected) < 1e-5);
        }
    }

    #[test]
    fn large_scores_do_not_overflow() {
        // Scores near 1e4 would overflow exp() without the running maximum.
        let dev = Device::Cpu;
        let q = (Tensor::randn(0f32, 1.0, (1, 1, 9, 8), &dev).unwrap() * 40.0).unwrap();
        let k = (Tensor::randn(0f32, 1.0, (1, 1, 20, 8), &dev).unwrap() * 40.0).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 1, 20, 8), &dev).unwrap();
        let got = attention(&q, &k, &v, 1.0, AttentionTiling { q_tile: 4, k_tile: 6 }).unwrap();
        let expected = naive(&q, &k, &v, 1.0);
        assert!(rel_err(&got, &expected) < 1e-5);
    }

    #[test]
    fn bf16_inputs_give_bf16_output_close_to_f32() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 2, 30, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 2, 30, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 2, 30, 8), &dev).unwrap();
        let tiling = AttentionTiling { q_tile: 7, k_tile: 11 };
        let cast = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = attention(&cast(&q), &cast(&k), &cast(&v), 0.35, tiling).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let err = rel_err(&got.to_dtype(DType::F32).unwrap(), &naive(&q, &k, &v, 0.35));
        assert!(err < 2e-2, "bf16 relative error {err}");
    }
}
