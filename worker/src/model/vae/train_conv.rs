//! The convolution used while the VAE is trained: a 2-D convolution as im2col and one GEMM per frame,
//! with a backward pass built the same way. candle's CPU `conv2d` and `conv_transpose2d` (its backward)
//! compute dot products pixel by pixel, which made a training step of the VAE take seconds; here every
//! pass is a few large GEMMs.
//!
//! Padding is done by the caller (the input is already padded), so the op has just a kernel and a stride.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `y[n, co] = Σ w[co, c, i, j] · x[n, c, y·s + i, x·s + j]` over `x [N, C, H, W]` (padded) and
/// `w [Co, C, kh, kw]`, both f32.
pub(crate) struct Im2colConv {
    pub stride: usize,
}

/// The geometry of one call.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    s: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &[usize], k: &[usize], s: usize) -> Result<Self> {
        let (&[n, c, h, w], &[co, c2, kh, kw]) = (x, k) else {
            candle_core::bail!("im2col conv: input {x:?} and kernel {k:?} must be 4-D");
        };
        if c != c2 || kh > h || kw > w || s == 0 {
            candle_core::bail!("im2col conv: input {x:?}, kernel {k:?}, stride {s} do not fit");
        }
        Ok(Geom { n, c, h, w, co, kh, kw, s, ho: (h - kh) / s + 1, wo: (w - kw) / s + 1 })
    }

    /// Rows of the column matrix: one per (channel, kernel row, kernel column).
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per frame.
    fn p(&self) -> usize {
        self.ho * self.wo
    }
}

/// The column matrix `[C·kh·kw, Ho·Wo]` of one frame `x [C, H, W]`.
fn im2col(g: &Geom, x: &[f32]) -> Vec<f32> {
    let mut col = vec![0f32; g.k() * g.p()];
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * g.p()..][..g.p()];
                for y in 0..g.ho {
                    let src = &x[(c * g.h + y * g.s + i) * g.w + j..];
                    let dst = &mut row[y * g.wo..][..g.wo];
                    if g.s == 1 {
                        dst.copy_from_slice(&src[..g.wo]);
                    } else {
                        for (xo, d) in dst.iter_mut().enumerate() {
                            *d = src[xo * g.s];
                        }
                    }
                }
            }
        }
    }
    col
}

/// Adds the column matrix's entries back onto the pixels they were read from (im2col's adjoint).
fn col2im_add(g: &Geom, col: &[f32], x: &mut [f32]) {
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * g.p()..][..g.p()];
                for y in 0..g.ho {
                    let dst = &mut x[(c * g.h + y * g.s + i) * g.w + j..];
                    for (xo, v) in row[y * g.wo..][..g.wo].iter().enumerate() {
                        dst[xo * g.s] += v;
                    }
                }
            }
        }
    }
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

/// `dst [m, n] (+)= a [m, k] · b [k, n]`, `dst` row-major.
fn gemm(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && a.fits() && b.fits() && dst.len() >= m * n, "im2col conv: GEMM operands out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: `fits` bounds every element of `a` and `b` the strides address, and `dst` holds m·n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
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
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { candle_core::bail!("im2col conv takes f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("im2col conv needs contiguous inputs") };
    Ok(&data[a..b])
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

impl CustomOp2 for Im2colConv {
    fn name(&self) -> &'static str {
        "im2col-conv2d"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(xl.dims(), wl.dims(), self.stride)?;
        let (x, w) = (f32_slice(xs, xl)?, f32_slice(ws, wl)?);
        let mut out = vec![0f32; g.n * g.co * g.p()];
        out.par_chunks_mut(g.co * g.p()).enumerate().for_each(|(n, y)| {
            let col = im2col(&g, &x[n * g.c * g.h * g.w..][..g.c * g.h * g.w]);
            gemm(y, Mat::new(w, g.co, g.k()), Mat::new(&col, g.k(), g.p()), false);
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.co, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), w.dims(), self.stride)?;
        let (xh, wh, gh) = (host(x)?, host(w)?, host(grad)?);
        let frame = g.c * g.h * g.w;
        let mut grad_x = vec![0f32; g.n * frame];
        // Each frame's share of the kernel's gradient, summed afterwards in frame order (deterministic).
        let parts: Vec<Vec<f32>> = grad_x
            .par_chunks_mut(frame)
            .enumerate()
            .map(|(n, gx)| {
                let col = im2col(&g, &xh[n * frame..][..frame]);
                let gy = Mat::new(&gh[n * g.co * g.p()..][..g.co * g.p()], g.co, g.p());
                let mut gw = vec![0f32; g.co * g.k()];
                gemm(&mut gw, gy, Mat::new(&col, g.k(), g.p()).t(), false);
                let mut gcol = vec![0f32; g.k() * g.p()];
                gemm(&mut gcol, Mat::new(&wh, g.co, g.k()).t(), gy, false);
                col2im_add(&g, &gcol, gx);
                gw
            })
            .collect();
        let mut grad_w = vec![0f32; g.co * g.k()];
        for part in parts {
            grad_w.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        let grad_x = Tensor::from_vec(grad_x, x.shape(), x.device())?;
        let grad_w = Tensor::from_vec(grad_w, w.shape(), w.device())?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Forward and both gradients against candle's own conv2d, at stride 1 and 2.
    #[test]
    fn matches_candle_conv2d_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for stride in [1, 2] {
            // 9×11: candle's own conv2d backward derives the transposed convolution's output padding from
            // the height alone, so the reference is only right where both sides leave the same remainder.
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4, 9, 11), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 4, 3, 3), &dev)?)?;
            let probe = Tensor::randn(0f32, 1.0, (3, 5, (9 - 3) / stride + 1, (11 - 3) / stride + 1), &dev)?;
            let ours = x.as_tensor().apply_op2(w.as_tensor(), Im2colConv { stride })?;
            let theirs = x.as_tensor().conv2d(w.as_tensor(), 0, stride, 1, 1)?;
            let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
                ((a - b)?.sqr()?.sum_all()?.sqrt()? / b.sqr()?.sum_all()?.sqrt()?)?.to_scalar::<f32>()
            };
            assert!(rel(&ours, &theirs)? < 1e-5);
            let g1 = (ours * &probe)?.sum_all()?.backward()?;
            let g2 = (theirs * &probe)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                let (a, b) = (g1.get(v).expect("gradient"), g2.get(v).expect("gradient"));
                assert!(rel(a, b)? < 1e-5, "stride {stride}: gradient differs by {}", rel(a, b)?);
            }
        }
        Ok(())
    }
}
