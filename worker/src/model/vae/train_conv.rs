//! The convolution used while the VAE is trained: the causal 3-D convolution as im2col and one GEMM per
//! (clip, output frame), with a backward pass built the same way. candle's CPU `conv2d` and
//! `conv_transpose2d` (its backward) compute dot products pixel by pixel, which made a training step of
//! the VAE take seconds; composing the temporal taps, the spatial padding and the bias from candle's
//! tensor ops cost as much again in copies and strided reductions. Here one op does the whole
//! convolution, bias included, and its backward.
//!
//! The input is already padded in time (the causal past in front); spatial zero padding is done here.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_conv::ConvGeometry;
use super::par::SharedMut;

/// `y[b, co, t] = bias[co] + Σ w[co, c, i, j, k] · x[b, c, t·st + i, y·s + j − top, x·s + k − left]`
/// over `x [B, C, T, H, W]`, `w [Co, C, kt, kh, kw]` and `bias [Co]`, all f32.
pub(crate) struct CausalConvOp {
    pub geom: ConvGeometry,
}

/// The sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    c: usize,
    t: usize,
    h: usize,
    w: usize,
    co: usize,
    kt: usize,
    kh: usize,
    kw: usize,
    st: usize,
    ss: usize,
    top: usize,
    left: usize,
    tout: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(g: &ConvGeometry, x: &[usize], k: &[usize]) -> Result<Self> {
        let (&[b, c, t, h, w], &[co, c2, kt, kh, kw]) = (x, k) else {
            candle_core::bail!("causal conv: input {x:?} and kernel {k:?} must be 5-D");
        };
        if c != c2 || [co, kt, kh, kw] != [g.cout, g.kt, g.kh, g.kw] || t < kt || g.stride_t == 0 || g.stride_s == 0 {
            candle_core::bail!("causal conv: input {x:?} and kernel {k:?} do not fit {g:?}");
        }
        let (ho, wo) = g.out_hw(h, w)?;
        let tout = g.out_frames(t);
        let (st, ss, top, left) = (g.stride_t, g.stride_s, g.pad[0], g.pad[2]);
        Ok(Geom { b, c, t, h, w, co, kt, kh, kw, st, ss, top, left, tout, ho, wo })
    }

    /// Rows of the column matrix: one per (channel, temporal tap, kernel row, kernel column), the order
    /// of the kernel's own layout.
    fn k(&self) -> usize {
        self.c * self.kt * self.kh * self.kw
    }

    /// Output pixels per frame.
    fn p(&self) -> usize {
        self.ho * self.wo
    }

    fn item_len(&self) -> usize {
        self.c * self.t * self.h * self.w
    }

    /// The output columns `lo..hi` whose input column `xo·s + j − left` lies inside the frame.
    fn valid_x(&self, j: usize) -> (usize, usize) {
        let lo = self.left.saturating_sub(j).div_ceil(self.ss).min(self.wo);
        let hi = (self.w + self.left).saturating_sub(j).div_ceil(self.ss).clamp(lo, self.wo);
        (lo, hi)
    }

    /// Visits every (row of the column matrix, output row) pair whose input row lies inside the frame,
    /// with the column matrix's offset, the input's offset of column 0 (before the left padding, as a
    /// signed number) and the valid output columns.
    fn for_each_row(&self, to: usize, mut f: impl FnMut(usize, isize, (usize, usize))) {
        let (p, hw) = (self.p(), self.h * self.w);
        for c in 0..self.c {
            for tap in 0..self.kt {
                let frame = (c * self.t + to * self.st + tap) * hw;
                for i in 0..self.kh {
                    for j in 0..self.kw {
                        let row = (((c * self.kt + tap) * self.kh + i) * self.kw + j) * p;
                        let cols = self.valid_x(j);
                        for y in 0..self.ho {
                            let Some(yy) = (y * self.ss + i).checked_sub(self.top).filter(|&yy| yy < self.h) else {
                                continue;
                            };
                            let src = (frame + yy * self.w) as isize + j as isize - self.left as isize;
                            f(row + y * self.wo, src, cols);
                        }
                    }
                }
            }
        }
    }
}

/// The column matrix `[K, Ho·Wo]` of output frame `to` of one clip `x [C, T, H, W]`.
fn im2col(g: &Geom, x: &[f32], to: usize, col: &mut Vec<f32>) {
    col.clear();
    col.resize(g.k() * g.p(), 0.0);
    g.for_each_row(to, |dst, src, (lo, hi)| {
        if lo == hi {
            return;
        }
        // The first valid output column's input pixel; `src` may be negative only before it.
        let first = (src + (lo * g.ss) as isize) as usize;
        let dst = &mut col[dst + lo..dst + hi];
        if g.ss == 1 {
            dst.copy_from_slice(&x[first..first + dst.len()]);
        } else {
            let src = &x[first..first + (dst.len() - 1) * g.ss + 1];
            dst.iter_mut().zip(src.iter().step_by(g.ss)).for_each(|(d, v)| *d = *v);
        }
    });
}

/// Adds a column matrix's entries back onto the pixels they were read from (im2col's adjoint).
fn col2im_add(g: &Geom, col: &[f32], to: usize, x: &mut [f32]) {
    g.for_each_row(to, |row, src, (lo, hi)| {
        if lo == hi {
            return;
        }
        let first = (src + (lo * g.ss) as isize) as usize;
        let row = &col[row + lo..row + hi];
        let dst = &mut x[first..first + (row.len() - 1) * g.ss + 1];
        if g.ss == 1 {
            dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
        } else {
            dst.iter_mut().step_by(g.ss).zip(row).for_each(|(d, v)| *d += v);
        }
    });
}

/// A row-major matrix operand, or the transpose of one: `rows × cols` with element (r, c) at
/// `r·rs + c·cs`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst [m, n] (+)= a [m, k] · b [k, n]`, `dst` row-major with rows `dst_rs` apart.
fn gemm(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, accumulate: bool) {
    let (m, n) = (a.rows, b.cols);
    assert!(m == 0 || n == 0 || dst.len() > (m - 1) * dst_rs + n - 1, "im2col conv: GEMM output out of bounds");
    // SAFETY: `dst` holds every element the rows address.
    unsafe { gemm_rows(dst.as_mut_ptr(), dst_rs, a, b, accumulate) }
}

/// [`gemm`] into rows `dst_rs` apart from `dst`, which other threads may be writing between (rows of
/// other output frames): only the `m × n` elements addressed are touched, and no slice spans the gaps.
///
/// # Safety
/// The `m` rows of `n` elements from `dst` must be valid for writes and written by no one else meanwhile.
unsafe fn gemm_rows(dst: *mut f32, dst_rs: usize, a: Mat, b: Mat, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && a.fits() && b.fits() && dst_rs >= n, "im2col conv: GEMM operands out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|r| std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n).fill(0.0));
        }
        return;
    }
    // `fits` bounds every element of `a` and `b` the strides address; the caller vouches for `dst`.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { candle_core::bail!("im2col conv takes f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("im2col conv needs contiguous inputs") };
    Ok(&data[a..b])
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

impl CustomOp3 for CausalConvOp {
    fn name(&self) -> &'static str {
        "im2col-causal-conv3d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.geom, xl.dims(), wl.dims())?;
        let (x, w, bias) = (f32_slice(xs, xl)?, f32_slice(ws, wl)?, f32_slice(bs, bl)?);
        if bias.len() != g.co {
            candle_core::bail!("causal conv: {} biases for {} output channels", bias.len(), g.co)
        }
        let (p, tp) = (g.p(), g.tout * g.p());
        let mut out = vec![0f32; g.b * g.co * tp];
        let dst = SharedMut(out.as_mut_ptr());
        (0..g.b * g.tout).into_par_iter().for_each_init(Vec::new, |col, job| {
            let (bi, to) = (job / g.tout, job % g.tout);
            im2col(&g, &x[bi * g.item_len()..][..g.item_len()], to, col);
            // Rows co of frame `to` in [B, Co, Tout, P]: `p` values every `tp`.
            let base = bi * g.co * tp + to * p;
            for (co, &v) in bias.iter().enumerate() {
                // SAFETY: (bi, co, to) rows are written by this job only, inside `out`.
                unsafe { dst.slice(base + co * tp, p) }.fill(v);
            }
            // SAFETY: as above; the GEMM writes exactly those rows, through a pointer rather than one slice
            // spanning the other frames' rows between them.
            unsafe { gemm_rows(dst.0.add(base), tp, Mat::new(w, g.co, g.k()), Mat::new(col, g.k(), p), true) };
        });
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.co, g.tout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(&self.geom, x.dims(), w.dims())?;
        let (xh, wh, gh) = (host(x)?, host(w)?, host(grad)?);
        let (p, tp) = (g.p(), g.tout * g.p());
        // Per (clip, output frame): its share of the kernel's and the bias's gradients and its column
        // gradient; summed afterwards in a fixed order (deterministic).
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..g.b * g.tout)
            .into_par_iter()
            .map_init(Vec::new, |col, job| {
                let (bi, to) = (job / g.tout, job % g.tout);
                im2col(&g, &xh[bi * g.item_len()..][..g.item_len()], to, col);
                let gy = Mat { data: &gh[bi * g.co * tp + to * p..], rows: g.co, cols: p, rs: tp, cs: 1 };
                let mut gw = vec![0f32; g.co * g.k()];
                gemm(&mut gw, g.k(), gy, Mat::new(col, g.k(), p).t(), false);
                let gb = (0..g.co).map(|co| gh[bi * g.co * tp + co * tp + to * p..][..p].iter().sum()).collect();
                let mut gcol = vec![0f32; g.k() * p];
                gemm(&mut gcol, p, Mat::new(&wh, g.co, g.k()).t(), gy, false);
                (gw, gb, gcol)
            })
            .collect();
        let mut grad_x = vec![0f32; g.b * g.item_len()];
        grad_x.par_chunks_mut(g.item_len()).enumerate().for_each(|(bi, gx)| {
            for to in 0..g.tout {
                col2im_add(&g, &parts[bi * g.tout + to].2, to, gx);
            }
        });
        let (mut grad_w, mut grad_b) = (vec![0f32; g.co * g.k()], vec![0f32; g.co]);
        for (gw, gb, _) in &parts {
            grad_w.iter_mut().zip(gw).for_each(|(a, b)| *a += b);
            grad_b.iter_mut().zip(gb).for_each(|(a, b)| *a += b);
        }
        Ok((
            Some(Tensor::from_vec(grad_x, x.shape(), x.device())?),
            Some(Tensor::from_vec(grad_w, w.shape(), w.device())?),
            Some(Tensor::from_vec(grad_b, bias.shape(), bias.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The same convolution from candle's ops: per output frame, a `conv2d` per temporal tap on the
    /// zero-padded frame, summed, plus the bias.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, g: &ConvGeometry) -> Result<Tensor> {
        let tout = g.out_frames(x.dim(2)?);
        let frames = (0..tout)
            .map(|to| {
                let mut y = b.reshape((1, g.cout, 1, 1))?;
                for tap in 0..g.kt {
                    let xi = x
                        .narrow(2, to * g.stride_t + tap, 1)?
                        .squeeze(2)?
                        .pad_with_zeros(2, g.pad[0], g.pad[1])?
                        .pad_with_zeros(3, g.pad[2], g.pad[3])?;
                    let wi = w.narrow(2, tap, 1)?.squeeze(2)?.contiguous()?;
                    y = y.broadcast_add(&xi.conv2d(&wi, 0, g.stride_s, 1, 1)?)?;
                }
                y.unsqueeze(2)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&frames, 2)
    }

    fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        ((a - b)?.sqr()?.sum_all()?.sqrt()? / b.sqr()?.sum_all()?.sqrt()?)?.to_scalar::<f32>()
    }

    /// Forward and all three gradients against candle's own conv2d, for the geometries the VAE uses:
    /// 3×3×3 causal, per-frame 3×3 at stride 1 and 2 (padded bottom and right), and 3×1×1 in time at
    /// temporal stride 1 and 2.
    #[test]
    fn matches_candle_conv2d_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            ((3, 3, 3), (1, 1), [1, 1, 1, 1], 5),
            ((1, 3, 3), (1, 1), [1, 1, 1, 1], 2),
            // 9×11 padded to 10×12: candle's own conv2d backward derives the transposed convolution's
            // output padding from the height alone, so the reference is only right where both sides
            // leave the same remainder.
            ((1, 3, 3), (1, 2), [0, 1, 0, 1], 2),
            ((3, 1, 1), (1, 1), [0; 4], 4),
            ((3, 1, 1), (2, 1), [0; 4], 7),
        ];
        for ((kt, kh, kw), (stride_t, stride_s), pad, t) in cases {
            let g = ConvGeometry { cin: 4, cout: 5, kt, kh, kw, stride_t, stride_s, pad };
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 4, t, 9, 11), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 4, kt, kh, kw), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 5, &dev)?)?;
            let ours = x.as_tensor().apply_op3(w.as_tensor(), b.as_tensor(), CausalConvOp { geom: g })?;
            let theirs = reference(x.as_tensor(), w.as_tensor(), b.as_tensor(), &g)?;
            assert_eq!(ours.dims(), theirs.dims(), "{g:?}");
            assert!(rel(&ours, &theirs)? < 1e-5, "{g:?}: output differs by {}", rel(&ours, &theirs)?);
            let probe = Tensor::randn(0f32, 1.0, ours.shape(), &dev)?;
            let g1 = (ours * &probe)?.sum_all()?.backward()?;
            let g2 = (theirs * &probe)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("w", &w), ("bias", &b)] {
                let (a, b) = (g1.get(v).expect("gradient"), g2.get(v).expect("gradient"));
                assert!(rel(a, b)? < 1e-5, "{g:?}: gradient of {name} differs by {}", rel(a, b)?);
            }
        }
        Ok(())
    }
}
