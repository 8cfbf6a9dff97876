//! The reference's `WanRMS_norm` over channels: `x / max(‖x‖₂ over channels, 1e-12) * sqrt(C) * gamma`
//! (`F.normalize`, then a per-channel gain; the VAE never uses the optional bias, so the checkpoint has
//! none). It is always followed by SiLU before a convolution, so the two are fused on the CPU: one pass
//! for the per-pixel sums of squares, one for normalise-scale-activate, instead of six tensor ops with a
//! temporary each.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

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
            // Training on the CPU: one op with its own backward instead of a dozen tensor ops and the
            // strided reductions their gradients need.
            _ if x.device().is_cpu() && x.dtype() == DType::F32 && self.gamma.dtype() == DType::F32 => {
                x3.contiguous()?.apply_op2(&self.gamma.flatten_all()?, NormOp { silu })?
            }
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
    let out = norm_slices(data, (b, c, s), gain, silu);
    drop(storage);
    Tensor::from_vec(out, (b, c, s), x.device())
}

/// Jobs are (batch item, pixel range); a range is a few thousand pixels so that its per-pixel sums stay
/// in cache while the channels stream past.
fn jobs(b: usize, s: usize) -> (Vec<Range<usize>>, usize) {
    const PIXELS: usize = 4096;
    let ranges = split(s, s.div_ceil(PIXELS));
    let n = b * ranges.len();
    (ranges, n)
}

fn norm_slices(data: &[f32], (b, c, s): (usize, usize, usize), gain: &[f32], silu: bool) -> Vec<f32> {
    let mut out = vec![0f32; b * c * s];
    let out_ptr = SharedMut(out.as_mut_ptr());
    let (ranges, n) = jobs(b, s);
    run_jobs(n, |job, inv: &mut Vec<f32>| {
        let (bi, r) = (job / ranges.len(), ranges[job % ranges.len()].clone());
        let item = &data[bi * c * s..(bi + 1) * c * s];
        // SAFETY: rows (bi, 0..c) restricted to this job's pixel range are written by this job only.
        let dst = |ci: usize| unsafe { out_ptr.slice((bi * c + ci) * s + r.start, r.len()) };
        norm_range(item, s, r.clone(), gain, silu, inv, dst);
    });
    out
}

/// The norm (then SiLU, when `silu`) as one differentiable op over `x [B, C, S]` and `gamma [C]`, both
/// f32 on the CPU: what training uses.
struct NormOp {
    silu: bool,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { candle_core::bail!("rms norm: the training op takes f32") };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("rms norm: the training op needs contiguous inputs")
    };
    Ok(&data[a..b])
}

fn gain_of(gamma: &[f32]) -> Vec<f32> {
    let scale = (gamma.len() as f32).sqrt();
    gamma.iter().map(|g| g * scale).collect()
}

impl CustomOp2 for NormOp {
    fn name(&self) -> &'static str {
        "rms-norm-silu"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, s) = xl.shape().dims3()?;
        let gamma = slice(gs, gl)?;
        if gamma.len() != c {
            candle_core::bail!("rms norm: {c} channels, gamma has {}", gamma.len())
        }
        let out = norm_slices(slice(xs, xl)?, (b, c, s), &gain_of(gamma), self.silu);
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    /// With `r = x / n` (`n` the floored norm), `u = r·gain` and `a = ∂L/∂u · gain`:
    /// `∂L/∂x = (a − r·(a·r)) / n` where the norm is above its floor (`a / n` where it is not), and
    /// `∂L/∂gamma = √C · Σ ∂L/∂u · r` over batch and pixels.
    fn bwd(&self, x: &Tensor, gamma: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, c, s) = x.dims3()?;
        let host = |t: &Tensor| t.contiguous()?.flatten_all()?.to_vec1::<f32>();
        let (xh, gh, gam) = (host(x)?, host(grad)?, host(gamma)?);
        let gain = gain_of(&gam);
        let mut dx = vec![0f32; b * c * s];
        let dx_ptr = SharedMut(dx.as_mut_ptr());
        let (ranges, n) = jobs(b, s);
        let parts: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|job| {
                let (bi, r) = (job / ranges.len(), ranges[job % ranges.len()].clone());
                let at = |ci: usize| (bi * c + ci) * s + r.start;
                let mut inv = vec![0f32; r.len()];
                let mut floored = vec![false; r.len()];
                for ci in 0..c {
                    inv.iter_mut().zip(&xh[at(ci)..][..r.len()]).for_each(|(acc, v)| *acc += v * v);
                }
                for (acc, fl) in inv.iter_mut().zip(floored.iter_mut()) {
                    let norm = acc.sqrt();
                    *fl = norm < EPS as f32;
                    *acc = 1.0 / norm.max(EPS as f32);
                }
                let mut dot = vec![0f32; r.len()];
                let mut dgamma = vec![0f32; c];
                for ci in 0..c {
                    // SAFETY: rows (bi, ci) in this job's pixel range belong to this job alone.
                    let out = unsafe { dx_ptr.slice(at(ci), r.len()) };
                    let (xs, gs) = (&xh[at(ci)..][..r.len()], &gh[at(ci)..][..r.len()]);
                    let mut dg = 0f32;
                    for i in 0..r.len() {
                        let rr = xs[i] * inv[i];
                        let u = rr * gain[ci];
                        let du = if self.silu {
                            let sig = 1.0 / (1.0 + (-u).exp());
                            gs[i] * sig * (1.0 + u * (1.0 - sig))
                        } else {
                            gs[i]
                        };
                        dg += du * rr;
                        let a = du * gain[ci];
                        dot[i] += a * rr;
                        out[i] = a;
                    }
                    dgamma[ci] = dg * (c as f32).sqrt();
                }
                for ci in 0..c {
                    // SAFETY: as above.
                    let out = unsafe { dx_ptr.slice(at(ci), r.len()) };
                    let xs = &xh[at(ci)..][..r.len()];
                    for i in 0..r.len() {
                        out[i] = if floored[i] { out[i] * inv[i] } else { (out[i] - xs[i] * inv[i] * dot[i]) * inv[i] };
                    }
                }
                dgamma
            })
            .collect();
        let mut dgamma = vec![0f32; c];
        for part in parts {
            dgamma.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dgamma, gamma.shape(), gamma.device())?),
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The training op against the same norm made of candle's differentiable ops: outputs and the
    /// gradients of input and gain, with and without SiLU, including a pixel whose channels are all
    /// zero (the norm's floor).
    #[test]
    fn training_op_matches_composed_ops_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let (b, c, s) = (2, 6, 37);
        let x0 = Tensor::randn(0f32, 1.0, (b, c, s), &dev)?;
        let mask = Tensor::ones((1, 1, s), DType::F32, &dev)?
            .slice_assign(&[0..1, 0..1, 5..6], &Tensor::zeros((1, 1, 1), DType::F32, &dev)?)?;
        let x = Var::from_tensor(&x0.broadcast_mul(&mask)?)?;
        let gamma = Var::from_tensor(&(Tensor::randn(0f32, 0.5, c, &dev)? + 1.0)?)?;
        let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
            ((a - b)?.sqr()?.sum_all()?.sqrt()? / b.sqr()?.sum_all()?.sqrt()?)?.to_scalar::<f32>()
        };
        for silu in [false, true] {
            let ours = x.as_tensor().apply_op2(gamma.as_tensor(), NormOp { silu })?;
            let norm = x.as_tensor().sqr()?.sum_keepdim(1)?.sqrt()?.maximum(EPS)?;
            let gain = (gamma.as_tensor().reshape((1, c, 1))? * (c as f64).sqrt())?;
            let theirs = x.as_tensor().broadcast_div(&norm)?.broadcast_mul(&gain)?;
            let theirs = if silu { candle_nn::ops::silu(&theirs)? } else { theirs };
            assert!(rel(&ours, &theirs)? < 1e-5, "silu {silu}: output differs by {}", rel(&ours, &theirs)?);
            let probe = Tensor::randn(0f32, 1.0, (b, c, s), &dev)?;
            let g1 = (ours * &probe)?.sum_all()?.backward()?;
            let g2 = (theirs * &probe)?.sum_all()?.backward()?;
            let (a, b) = (g1.get(&gamma).expect("gradient"), g2.get(&gamma).expect("gradient"));
            assert!(rel(a, b)? < 1e-4, "silu {silu}: gradient of gamma differs by {}", rel(a, b)?);
            // candle's sqrt has an infinite slope at the zero pixel, so the composed gradient is NaN
            // there; ours is the floor's (∂L/∂u · gain / eps, as PyTorch's `F.normalize` gives).
            let (a, b) = (g1.get(&x).expect("gradient"), g2.get(&x).expect("gradient"));
            for r in [0..5, 6..s] {
                let (a, b) = (a.narrow(2, r.start, r.len())?, b.narrow(2, r.start, r.len())?);
                assert!(rel(&a, &b)? < 1e-4, "silu {silu}: gradient of x differs by {}", rel(&a, &b)?);
            }
            let floor: Vec<f32> = a.narrow(0, 0, 1)?.narrow(2, 5, 1)?.flatten_all()?.to_vec1()?;
            assert!(floor.iter().all(|v| v.is_finite()), "silu {silu}: gradient at the zero pixel {floor:?}");
        }
        Ok(())
    }
}
