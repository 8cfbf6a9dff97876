//! Vectorisable f32 math for the CPU kernels: libm's `expf` and `tanhf` are scalar calls that keep the
//! loops around them from vectorising, and in attention and GELU they are a large share of the time.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The row's maximum (the scores hold no NaN). Sixteen running maxima with a plain comparison, which
/// vectorises; `f32::max`'s NaN rules keep a fold over it scalar.
pub(crate) fn row_max(row: &[f32]) -> f32 {
    match simd() {
        // SAFETY: the features were detected by `simd()`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { row_max_avx512(row) },
        _ => row_max_generic(row),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn row_max_avx512(row: &[f32]) -> f32 {
    row_max_generic(row)
}

#[inline(always)]
fn row_max_generic(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    lanes.iter().copied().fold(tail, f32::max)
}

/// The widest vector unit this CPU has, detected once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simd {
    Avx512,
    Avx2,
    Baseline,
}

pub(crate) fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Baseline
    })
}

/// `x ← e^(x − m)` over the row; returns the row's new sum. Compiled three times (AVX-512, AVX2+FMA,
/// baseline); the widest the CPU has is chosen at run time.
pub(crate) fn exp_shifted_in_place(row: &mut [f32], m: f32) -> f32 {
    match simd() {
        // SAFETY: the features were detected by `simd()`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { exp_shifted_avx512(row, m) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { exp_shifted_avx2(row, m) },
        _ => exp_shifted_generic(row, m),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_shifted_avx512(row: &mut [f32], m: f32) -> f32 {
    exp_shifted_generic(row, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(row: &mut [f32], m: f32) -> f32 {
    exp_shifted_generic(row, m)
}

#[inline(always)]
fn exp_shifted_generic(row: &mut [f32], m: f32) -> f32 {
    // Sixteen partial sums so the loop vectorises (a single accumulator is a serial dependency).
    let mut sums = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (x, acc) in chunk.iter_mut().zip(sums.iter_mut()) {
            *x = fast_exp(*x - m);
            *acc += *x;
        }
    }
    for x in chunks.into_remainder() {
        *x = fast_exp(*x - m);
        sums[0] += *x;
    }
    sums.iter().sum()
}

/// `e^x` for f32 to about 2 ulp, branch-free so that loops over it vectorise: `x = n·ln2 + r` with
/// |r| ≤ ln2/2, a degree-6 polynomial for `e^r`, and `2^n` put straight into the exponent bits.
/// Inputs below −87 give 0 (the softmax only ever takes `x ≤ 0`).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    // Taylor coefficients 1/k! for k = 0..6.
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The integer n sits in the low mantissa bits of `shifted`: 2^n without a float-to-int conversion.
    let bits = (shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
    let e = p * f32::from_bits(bits);
    if xc <= -87.0 {
        0.0
    } else {
        e
    }
}

/// GELU with the tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, for contiguous f32
/// on CPU, with `tanh(y) = 1 − 2/(e^{2y} + 1)` from [`fast_exp`].
pub(crate) struct FastGeluTanh;

impl CustomOp1 for FastGeluTanh {
    fn name(&self) -> &'static str {
        "fast-gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fast gelu takes f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fast gelu needs a contiguous input");
        };
        let input = &data[start..end];
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(16 * 1024).zip(input.par_chunks(16 * 1024)).for_each(|(o, i)| gelu_slice(i, o));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `grad · gelu'(x)`, with the derivative from the same fast `tanh` (training's feed-forward).
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let slope = arg.contiguous()?.apply_op1_no_bwd(&FastGeluTanhSlope)?;
        Ok(Some(grad_res.mul(&slope)?))
    }
}

/// The derivative of [`FastGeluTanh`]: `0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)` with
/// `t = tanh(√(2/π)·(x + 0.044715·x³))`.
struct FastGeluTanhSlope;

impl CustomOp1 for FastGeluTanhSlope {
    fn name(&self) -> &'static str {
        "fast-gelu-tanh-slope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("fast gelu slope takes contiguous f32");
        };
        let input = &data[start..end];
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(16 * 1024).zip(input.par_chunks(16 * 1024)).for_each(|(o, i)| {
            for (o, &x) in o.iter_mut().zip(i) {
                let y = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
                let t = 1.0 - 2.0 / (fast_exp(2.0 * y) + 1.0);
                *o = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

fn gelu_slice(input: &[f32], out: &mut [f32]) {
    match simd() {
        // SAFETY: the features were detected by `simd()`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { gelu_avx512(input, out) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { gelu_avx2(input, out) },
        _ => gelu_generic(input, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gelu_avx512(input: &[f32], out: &mut [f32]) {
    gelu_generic(input, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(input: &[f32], out: &mut [f32]) {
    gelu_generic(input, out)
}

#[inline(always)]
fn gelu_generic(input: &[f32], out: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (o, &x) in out.iter_mut().zip(input) {
        let y = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
        let tanh = 1.0 - 2.0 / (fast_exp(2.0 * y) + 1.0);
        *o = 0.5 * x * (1.0 + tanh);
    }
}

/// GELU (tanh approximation) of any tensor: the fast kernel for f32 on CPU, candle's op elsewhere.
pub fn gelu_tanh(x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        // With a backward pass only when one is wanted (recording the op costs a little).
        if x.track_op() {
            x.contiguous()?.apply_op1(FastGeluTanh)
        } else {
            x.contiguous()?.apply_op1_no_bwd(&FastGeluTanh)
        }
    } else {
        x.gelu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn gelu_gradient_matches_candles() {
        let dev = Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 2.0, 4096, &dev).unwrap()).unwrap();
        let ours = gelu_tanh(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let theirs = x.as_tensor().gelu().unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (ours.get(&x).unwrap(), theirs.get(&x).unwrap());
        let err = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-4, "max difference {err}");
    }

    #[test]
    fn fast_exp_is_accurate_over_the_softmax_range() {
        let mut worst = 0f64;
        let mut x = -86.0f32;
        while x <= 10.0 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 5e-7, "worst relative error {worst:e}");
        assert_eq!(fast_exp(-200.0), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
    }

    #[test]
    fn fast_gelu_matches_candle() {
        let x = (Tensor::randn(0f32, 1.0, 10_000, &Device::Cpu).unwrap() * 4.0).unwrap();
        let want = x.gelu().unwrap();
        let got = gelu_tanh(&x).unwrap();
        let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-6, "max abs error {err}");
    }
}
