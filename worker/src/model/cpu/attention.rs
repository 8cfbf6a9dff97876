//! A fused attention kernel for f32 on CPU.
//!
//! Built from candle's tensor ops, attention allocates a fresh score block, a max, an exp and a sum per
//! tile, each a pass over memory and a round of page faults, and candle's `exp` is scalar libm. Here each
//! (batch·head, query tile) task owns one score buffer, reused for every key tile: the scores are one
//! GEMM straight into it, the online softmax runs in place with a vectorisable `exp`, and the values are
//! accumulated by a second GEMM into the output rows. Tasks run in parallel on rayon's pool, each GEMM
//! single-threaded, so the cores never wait on each other inside a tile.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::fast_math::{exp_shifted_in_place, fast_exp, row_max};
use crate::model::attention::AttentionTiling;

/// The op: `q` `[bh, nq, d]`, `k`/`v` `[bh, nk, d]`, all contiguous f32.
pub(crate) struct FusedCpuAttention {
    pub scale: f32,
    pub tiling: AttentionTiling,
}

impl CustomOp3 for FusedCpuAttention {
    fn name(&self) -> &'static str {
        "fused-cpu-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let slice = |s: &'_ CpuStorage, l: &Layout| -> Result<Vec<usize>> {
            if !l.is_contiguous() {
                candle_core::bail!("fused attention needs contiguous inputs");
            }
            match s {
                CpuStorage::F32(_) => Ok(l.dims().to_vec()),
                _ => candle_core::bail!("fused attention takes f32"),
            }
        };
        let (dq, dk, dv) = (slice(q, lq)?, slice(k, lk)?, slice(v, lv)?);
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (q, k, v) else {
            candle_core::bail!("fused attention takes f32");
        };
        let (&[bh, nq, d], &[bhk, nk, dk2]) = (dq.as_slice(), dk.as_slice()) else {
            candle_core::bail!("fused attention takes [bh, n, d] inputs, got {dq:?} and {dk:?}");
        };
        if bh != bhk || d != dk2 || dv != dk || nk == 0 {
            candle_core::bail!("fused attention: q {dq:?}, k {dk:?}, v {dv:?} do not fit together");
        }
        let q = &q[lq.start_offset()..lq.start_offset() + bh * nq * d];
        let k = &k[lk.start_offset()..lk.start_offset() + bh * nk * d];
        let v = &v[lv.start_offset()..lv.start_offset() + bh * nk * d];
        let mut out = vec![0f32; bh * nq * d];
        let q_tile = self.tiling.q_tile.clamp(1, nq.max(1));
        let k_tile = self.tiling.k_tile.clamp(1, nk);
        // One task per (bh, query tile): its output rows are a disjoint chunk of `out`.
        let tasks: Vec<(usize, usize, &mut [f32])> = out
            .chunks_mut(nq * d)
            .enumerate()
            .flat_map(|(h, rows)| rows.chunks_mut(q_tile * d).enumerate().map(move |(t, chunk)| (h, t * q_tile, chunk)))
            .collect();
        let scale = self.scale;
        tasks.into_par_iter().for_each_init(
            || Scratch::new(q_tile, k_tile),
            |scratch, (h, q_start, out_rows)| {
                let q_len = out_rows.len() / d;
                let q_blk = &q[(h * nq + q_start) * d..(h * nq + q_start + q_len) * d];
                let k_h = &k[h * nk * d..(h + 1) * nk * d];
                let v_h = &v[h * nk * d..(h + 1) * nk * d];
                attend_tile(q_blk, k_h, v_h, out_rows, d, k_tile, scale, scratch);
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((bh, nq, d))))
    }
}

/// Per-task buffers, reused across tasks of the same worker.
struct Scratch {
    scores: Vec<f32>,
    row_max: Vec<f32>,
    row_sum: Vec<f32>,
}

impl Scratch {
    fn new(q_tile: usize, k_tile: usize) -> Self {
        Scratch { scores: vec![0.0; q_tile * k_tile], row_max: vec![0.0; q_tile], row_sum: vec![0.0; q_tile] }
    }
}

/// Attention of `q_len` query rows over all `nk` keys of one head, written to `out` (`[q_len, d]`).
#[allow(clippy::too_many_arguments)]
fn attend_tile(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], d: usize, k_tile: usize, scale: f32, s: &mut Scratch) {
    let q_len = q.len() / d;
    let nk = k.len() / d;
    s.row_max[..q_len].fill(f32::NEG_INFINITY);
    s.row_sum[..q_len].fill(0.0);
    for k_start in (0..nk).step_by(k_tile) {
        let k_len = k_tile.min(nk - k_start);
        let scores = &mut s.scores[..q_len * k_len];
        // scores [q_len, k_len] = scale · q [q_len, d] · kᵀ [d, k_len]
        // SAFETY: all pointers address live slices of the sizes the strides describe.
        unsafe {
            gemm::gemm(
                q_len,
                k_len,
                d,
                scores.as_mut_ptr(),
                1,
                k_len as isize,
                false,
                q.as_ptr(),
                1,
                d as isize,
                k[k_start * d..].as_ptr(),
                d as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let first = k_start == 0;
        for i in 0..q_len {
            let row = &mut scores[i * k_len..(i + 1) * k_len];
            let m_old = s.row_max[i];
            let m_new = m_old.max(row_max(row));
            let sum = exp_shifted_in_place(row, m_new);
            if first {
                s.row_sum[i] = sum;
            } else {
                let correction = fast_exp(m_old - m_new);
                s.row_sum[i] = s.row_sum[i] * correction + sum;
                out[i * d..(i + 1) * d].iter_mut().for_each(|o| *o *= correction);
            }
            s.row_max[i] = m_new;
        }
        // out [q_len, d] (+)= p [q_len, k_len] · v [k_len, d]
        // SAFETY: as above.
        unsafe {
            gemm::gemm(
                q_len,
                d,
                k_len,
                out.as_mut_ptr(),
                1,
                d as isize,
                !first,
                scores.as_ptr(),
                1,
                k_len as isize,
                v[k_start * d..].as_ptr(),
                1,
                d as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    for i in 0..q_len {
        let inv = 1.0 / s.row_sum[i];
        out[i * d..(i + 1) * d].iter_mut().for_each(|o| *o *= inv);
    }
}
