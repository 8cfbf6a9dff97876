//! The reference's `WanRMS_norm` over channels: `x / max(‖x‖₂ over channels, 1e-12) * sqrt(C) * gamma`
//! (`F.normalize`, then a per-channel gain; the VAE never uses the optional bias, so the checkpoint has
//! none). It is always followed by SiLU before a convolution, so the two are fused on the CPU: one pass
//! for the per-pixel sums of squares, one for normalise-scale-activate, instead of six tensor ops with a
//! temporary each.

use std::ops::Range;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::par::{run_jobs, split, SharedMut};
use crate::model::cpu::fast_math::{fast_exp, simd, Simd};

/// `F.normalize`'s floor on the norm.
const EPS: f64 = 1e-12;

#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    /// `gamma` as `[1, C, 1]` (a view of the weight, so that training updates reach it).
    gamma: Tensor,
    /// `gamma * sqrt(C)` on the host, for the CPU kernel (when the weights are f32 on the CPU and are
    /// not being trained).
    gain_host: Option<Vec<f32>>,
}

impl RmsNorm {
    /// `gamma` is stored as `[C, 1, 1, 1]` for video norms (`images=False`) and `[C, 1, 1]` for the
    /// per-frame norm in attention.
    pub fn load(vb: &VarBuilder, dim: usize, images: bool) -> Result<Self> {
        let gamma = if images { vb.get((dim, 1, 1), "gamma")? } else { vb.get((dim, 1, 1, 1), "gamma")? };
        let gamma = gamma.reshape((1, dim, 1))?;
        let gain_host = if gamma.device().is_cpu() && gamma.dtype() == DType::F32 && !gamma.track_op() {
            Some((&gamma * (dim as f64).sqrt())?.flatten_all()?.to_vec1::<f32>()?)
        } else {
            None
        };
        Ok(RmsNorm { gamma, gain_host })
    }

    /// Normalises `x [B, C, ...]` over dim 1.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// `silu(norm(x))`, the input of every residual-block convolution.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    fn apply(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let s: usize = dims[2..].iter().product();
        let x3 = x.reshape((b, c, s))?; // [B, C, rest...] -> [B, C, S]
        let y = match &self.gain_host {
            Some(gain) if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() => cpu_norm(&x3, gain, silu)?,
            _ => {
                let dtype = x.dtype();
                // The reference normalises half-precision inputs in f32.
                let xf = x3.to_dtype(DType::F32)?;
                let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(EPS)?;
                let gain = (self.gamma.to_dtype(DType::F32)? * (c as f64).sqrt())?;
                let y = xf.broadcast_div(&norm)?.broadcast_mul(&gain)?;
                let y = if silu { candle_nn::ops::silu(&y)? } else { y };
                y.to_dtype(dtype)?
            }
        };
        y.reshape(dims)
    }
}

/// Fused CPU kernel over `x [B, C, S]` (f32): per pixel, `x * gain[c] / max(norm, eps)`, then SiLU.
fn cpu_norm(x: &Tensor, gain: &[f32], silu: bool) -> Result<Tensor> {
    let (b, c, s) = x.dims3()?;
    if c != gain.len() {
        candle_core::bail!("rms norm: {c} channels, the gain has {}", gain.len())
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let data = match &*storage {
        candle_core::Storage::Cpu(cpu) => &cpu.as_slice::<f32>()?[layout.start_offset()..][..b * c * s],
        _ => candle_core::bail!("rms norm: CPU kernel on a non-CPU tensor"),
    };
    let mut out = vec![0f32; b * c * s];
    let out_ptr = SharedMut(out.as_mut_ptr());
    // Jobs are (batch item, pixel range); a range is a few thousand pixels so that its per-pixel sums
    // stay in cache while the channels stream past.
    const PIXELS: usize = 4096;
    let ranges = split(s, s.div_ceil(PIXELS));
    run_jobs(b * ranges.len(), |job, inv: &mut Vec<f32>| {
        let (bi, r) = (job / ranges.len(), ranges[job % ranges.len()].clone());
        let item = &data[bi * c * s..(bi + 1) * c * s];
        // SAFETY: rows (bi, 0..c) restricted to this job's pixel range are written by this job only.
        let dst = |ci: usize| unsafe { out_ptr.slice((bi * c + ci) * s + r.start, r.len()) };
        norm_range(item, s, r.clone(), gain, silu, inv, dst);
    });
    drop(storage);
    Tensor::from_vec(out, (b, c, s), x.device())
}

/// Normalises pixels `r` of one item `[c, s]`: sums of squares over channels into `inv` (per pixel),
/// then every channel row scaled (and activated) into `dst(c)`. Compiled for AVX-512, AVX2+FMA and the
/// baseline (the widest the CPU has is chosen at run time), so that the loops and [`fast_exp`] vectorise
/// at full width.
fn norm_range<'a>(
    item: &[f32],
    s: usize,
    r: Range<usize>,
    gain: &[f32],
    silu: bool,
    inv: &mut Vec<f32>,
    dst: impl Fn(usize) -> &'a mut [f32],
) {
    match simd() {
        // SAFETY: the features were detected by `simd()`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { norm_range_avx512(item, s, r, gain, silu, inv, dst) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { norm_range_avx2(item, s, r, gain, silu, inv, dst) },
        _ => norm_range_generic(item, s, r, gain, silu, inv, dst),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn norm_range_avx512<'a>(
    item: &[f32],
    s: usize,
    r: Range<usize>,
    gain: &[f32],
    silu: bool,
    inv: &mut Vec<f32>,
    dst: impl Fn(usize) -> &'a mut [f32],
) {
    norm_range_generic(item, s, r, gain, silu, inv, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn norm_range_avx2<'a>(
    item: &[f32],
    s: usize,
    r: Range<usize>,
    gain: &[f32],
    silu: bool,
    inv: &mut Vec<f32>,
    dst: impl Fn(usize) -> &'a mut [f32],
) {
    norm_range_generic(item, s, r, gain, silu, inv, dst)
}

#[inline(always)]
fn norm_range_generic<'a>(
    item: &[f32],
    s: usize,
    r: Range<usize>,
    gain: &[f32],
    silu: bool,
    inv: &mut Vec<f32>,
    dst: impl Fn(usize) -> &'a mut [f32],
) {
    inv.clear();
    inv.resize(r.len(), 0.0);
    for ci in 0..gain.len() {
        for (acc, v) in inv.iter_mut().zip(&item[ci * s + r.start..ci * s + r.end]) {
            *acc += v * v;
        }
    }
    for acc in inv.iter_mut() {
        *acc = 1.0 / acc.sqrt().max(EPS as f32);
    }
    for (ci, &g) in gain.iter().enumerate() {
        let src = &item[ci * s + r.start..ci * s + r.end];
        let out = dst(ci);
        if silu {
            for ((d, v), n) in out.iter_mut().zip(src).zip(inv.iter()) {
                let y = v * n * g;
                *d = y / (1.0 + fast_exp(-y));
            }
        } else {
            for ((d, v), n) in out.iter_mut().zip(src).zip(inv.iter()) {
                *d = v * n * g;
            }
        }
    }
}
