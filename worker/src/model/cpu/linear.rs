//! `y = x·Wᵀ + b` for f32 on CPU as one GEMM that starts from the bias: the output rows are filled with
//! `b` and the product is accumulated into them, instead of a matmul followed by a broadcast add (one
//! fewer pass over the output, and no zero fill).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};

/// The op: `x` `[rows, in]`, `weight` `[out, in]`, `bias` `[out]`, all contiguous f32.
pub(crate) struct FusedLinear;

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) = (x, w, b) else {
            candle_core::bail!("fused linear takes f32");
        };
        let (Some((x0, x1)), Some((w0, w1)), Some((b0, b1))) =
            (lx.contiguous_offsets(), lw.contiguous_offsets(), lb.contiguous_offsets())
        else {
            candle_core::bail!("fused linear needs contiguous inputs");
        };
        let (&[rows, k], &[n, k2], &[n2]) = (lx.dims(), lw.dims(), lb.dims()) else {
            candle_core::bail!("fused linear: x {:?}, weight {:?}, bias {:?}", lx.dims(), lw.dims(), lb.dims());
        };
        if k != k2 || n != n2 {
            candle_core::bail!(
                "fused linear: x {:?}, weight {:?}, bias {:?} do not fit",
                lx.dims(),
                lw.dims(),
                lb.dims()
            );
        }
        let (x, w, b) = (&x[x0..x1], &w[w0..w1], &b[b0..b1]);
        let mut out = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            out.extend_from_slice(b);
        }
        let threads = candle_core::utils::get_num_threads();
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // out [rows, n] += x [rows, k] · wᵀ [k, n]
        // SAFETY: the slices have exactly the sizes the dimensions and strides describe (checked above).
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
}
