//! The f32 CPU kernel behind the VAE's spatial convolutions: a 3D convolution as a few large matrix
//! products over a padded band of rows, with no element-by-element im2col gather.
//!
//! Why not candle's `conv2d`: its CPU path gathers its im2col tiles one element at a time and, for a 3D
//! kernel, would first need the temporal taps concatenated along channels (a copy of the whole input
//! per tap); measured at the decoder's shapes it runs 2–4× slower than this kernel.
//!
//! The idea: store the input a band of output rows needs, zero-padded, as `[cin, rows, padded_width]`.
//! With stride 1, the input under kernel tap `(kh, kw)` for *every* output pixel of the band is that
//! block shifted by `kh * padded_width + kw` elements, if outputs are computed on the padded width (the
//! extra `kw - 1` columns per row are garbage and dropped). So each tap is one GEMM
//! `[cout, cin] x [cin, band]` that reads the block in place, accumulated into the band's output: the
//! input is copied once (plus `kh - 1` halo rows per band), never expanded 27× into an im2col matrix.
//! Strided convolutions (the encoder's downsampling) do one GEMM per output row and tap.
//!
//! Measured on the 2-core benchmark machine at the decoder's 480×832 shapes, this runs at 110–140
//! GFLOP per CPU-second, the speed of a plain candle matmul of the same FLOPs, against 14–43 for
//! candle's `conv2d` with the taps folded into channels. Folding taps into a larger K (building `kw` or
//! `kh*kw` shifted copies so that one GEMM covers several taps) was measured too and was slower at every
//! shape but the thinnest (3 or 16 input channels, negligible in the total): the copies cost more than
//! the larger K saves.
//!
//! Bands are independent: rayon's threads share them out and each GEMM is single-threaded, which
//! scales better on few cores than splitting each GEMM. Zero frames (the causal padding before
//! the first frame) are neither copied nor multiplied.

use super::par::{run_jobs, SharedMut};

/// Output pixels per band (rounded to whole rows). Between 1024 and 8192 the speed barely changes;
/// 2048 keeps a band's input and accumulator within the per-core cache at every VAE width.
pub(crate) const DEFAULT_TILE_PIXELS: usize = 2048;

/// The shape of one convolution. Spatial stride is the same along height and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    pub cin: usize,
    pub cout: usize,
    pub kt: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride_t: usize,
    pub stride_s: usize,
    /// Zero padding: top, bottom, left, right.
    pub pad: [usize; 4],
}

impl ConvGeometry {
    /// The output's height and width, or an error when the padded input is smaller than the kernel
    /// (a frame too small for the network: it would otherwise wrap around in release builds).
    pub fn out_hw(&self, h: usize, w: usize) -> candle_core::Result<(usize, usize)> {
        let hp = self.pad[0] + h + self.pad[1];
        let wp = self.pad[2] + w + self.pad[3];
        match (hp.checked_sub(self.kh), wp.checked_sub(self.kw)) {
            (Some(dh), Some(dw)) => Ok((dh / self.stride_s + 1, dw / self.stride_s + 1)),
            _ => candle_core::bail!("a {h}x{w} input is smaller than the {}x{} convolution kernel", self.kh, self.kw),
        }
    }

    pub fn out_frames(&self, in_frames: usize) -> usize {
        if in_frames < self.kt {
            0
        } else {
            (in_frames - self.kt) / self.stride_t + 1
        }
    }

    fn k_total(&self) -> usize {
        self.kt * self.kh * self.kw * self.cin
    }
}

/// One input frame of one batch item, of logical size `[cin, h, w]`. With `up == 1`, element
/// `(c, y, x)` is `data[c * c_stride + y * w + x]`; with `up == 2` the frame is the nearest-neighbour ×2
/// upsampling of the `[cin, h/2, w/2]` frame stored in `data`, read on the fly instead of materialised.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    pub data: &'a [f32],
    pub c_stride: usize,
    pub up: usize,
}

/// The weights as one `[cout, (kt, kh, kw, cin)]` matrix: any run of consecutive taps is a column range.
#[derive(Debug, Clone)]
pub(crate) struct TapWeights {
    w: Vec<f32>,
    bias: Vec<f32>,
}

impl TapWeights {
    /// `weight` is PyTorch's `[cout, cin, kt, kh, kw]`, contiguous.
    pub fn new(g: &ConvGeometry, weight: &[f32], bias: Vec<f32>) -> Self {
        let ntaps = g.kt * g.kh * g.kw;
        let mut w = vec![0f32; g.cout * ntaps * g.cin];
        for o in 0..g.cout {
            for c in 0..g.cin {
                for tap in 0..ntaps {
                    w[(o * ntaps + tap) * g.cin + c] = weight[(o * g.cin + c) * ntaps + tap];
                }
            }
        }
        TapWeights { w, bias }
    }
}

/// Convolves one batch item. `frames` is the whole input sequence in time, `None` standing for a frame
/// of zeros; every present frame is `[cin, h, w]`. `out` is `[cout, out_frames, out_h, out_w]`; if
/// `residual` (same shape) is given it is added to the result, saving a pass and a tensor.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3d(
    g: &ConvGeometry,
    weights: &TapWeights,
    frames: &[Option<Frame<'_>>],
    (h, w): (usize, usize),
    out: &mut [f32],
    residual: Option<&[f32]>,
    tile_pixels: usize,
) -> candle_core::Result<()> {
    let (hout, wout) = g.out_hw(h, w)?;
    let tout = g.out_frames(frames.len());
    // The unsafe band writes rely on these sizes.
    if Some(out.len()) != g.cout.checked_mul(tout).and_then(|n| n.checked_mul(hout)).and_then(|n| n.checked_mul(wout)) {
        candle_core::bail!("conv3d: output buffer of {} values for [{}, {tout}, {hout}, {wout}]", out.len(), g.cout);
    }
    if residual.is_some_and(|r| r.len() != out.len()) {
        candle_core::bail!("conv3d: residual of the wrong size");
    }
    // Outputs are computed `wide` columns per row: the padded width when stride is 1, else `wout`.
    let wp = g.pad[2] + w + g.pad[3];
    let wide = if g.stride_s == 1 { wp } else { wout };
    let rows_per_band = (tile_pixels / wide).clamp(1, hout.max(1));
    let bands_per_frame = hout.div_ceil(rows_per_band);
    let out_ptr = SharedMut(out.as_mut_ptr());
    run_jobs(tout * bands_per_frame, |job, scratch: &mut Scratch| {
        let (t, band) = (job / bands_per_frame, job % bands_per_frame);
        let y0 = band * rows_per_band;
        let rows = rows_per_band.min(hout - y0);
        let band = Band { t, y0, rows, h, w, hout, wout, tout, wp, wide };
        run_band(g, weights, frames, &band, scratch, out_ptr, residual);
    });
    Ok(())
}

#[derive(Default)]
struct Scratch {
    patch: Vec<f32>,
    acc: Vec<f32>,
}

/// One unit of work: output frame `t`, output rows `y0 .. y0 + rows`.
struct Band {
    t: usize,
    y0: usize,
    rows: usize,
    h: usize,
    w: usize,
    hout: usize,
    wout: usize,
    tout: usize,
    /// Padded input width.
    wp: usize,
    /// Accumulator columns per output row.
    wide: usize,
}

fn run_band(
    g: &ConvGeometry,
    weights: &TapWeights,
    frames: &[Option<Frame<'_>>],
    b: &Band,
    scratch: &mut Scratch,
    out: SharedMut,
    residual: Option<&[f32]>,
) {
    let s = g.stride_s;
    // Padded input rows the band reads: `patch_rows` of them from padded row `y0 * s`.
    let patch_rows = (b.rows - 1) * s + g.kh;
    let plane = patch_rows * b.wp;
    // Patch layout [kt][cin][plane]; channel rows of the GEMM's right-hand side are `plane` apart.
    let frame_len = g.cin * plane;
    // Slack: the garbage columns of the last channel read up to `kw - 1` past its plane.
    let patch_len = g.kt * frame_len + g.kw;
    // Neither buffer is cleared between bands: every element a valid output reads is written below
    // (stale values only reach the garbage columns), and each position's first GEMM overwrites the
    // accumulator.
    if scratch.patch.len() < patch_len {
        scratch.patch.resize(patch_len, 0.0);
    }
    let n = b.rows * b.wide;
    if scratch.acc.len() < g.cout * n {
        scratch.acc.resize(g.cout * n, 0.0);
    }
    let mut first = true;
    for it in 0..g.kt {
        let Some(frame) = frames[b.t * g.stride_t + it] else { continue };
        fill_patch(g, frame, b, patch_rows, &mut scratch.patch[it * frame_len..(it + 1) * frame_len]);
        for ih in 0..g.kh {
            for iw in 0..g.kw {
                let k_col = ((it * g.kh + ih) * g.kw + iw) * g.cin;
                let base = it * frame_len + ih * b.wp + iw;
                if s == 1 {
                    // rhs: `cin` rows `plane` apart from `base`, `n` columns each; the last element read
                    // is `(it+1)*frame_len + kw - 2`, inside the slack (kh rows of halo fill the rest).
                    gemm_acc(g, weights, k_col, &scratch.patch, base, 1, plane, &mut scratch.acc, 0, n, n, first);
                } else {
                    for r in 0..b.rows {
                        // Output row r reads patch row `r*s + ih < patch_rows`, columns `iw + x*s <= wp - 1`
                        // for x < wout: inside the frame's block.
                        let off = base + r * s * b.wp;
                        gemm_acc(
                            g,
                            weights,
                            k_col,
                            &scratch.patch,
                            off,
                            s,
                            plane,
                            &mut scratch.acc,
                            r * b.wide,
                            b.wout,
                            n,
                            first,
                        );
                    }
                }
                first = false;
            }
        }
    }
    if first {
        // No input frame at all (cannot happen for a causal conv, whose padding only precedes frames).
        scratch.acc[..g.cout * n].fill(0.0);
    }
    write_out(g, weights, b, &scratch.acc, out, residual)
}

/// `acc[cout, ncols] (+)= w[:, k_col .. k_col + cin] x rhs[cin, ncols]`, where rhs starts at
/// `patch[rhs_off]` with column stride `rhs_cs` and row stride `rhs_rs`, and acc starts at
/// `acc[acc_off]` with row stride `acc_rs`. The first GEMM of a band overwrites instead of adding.
/// The bounds of all three operands are checked (a few integer operations per GEMM of a million or
/// more multiply-adds), so the raw-pointer call below cannot stray outside them.
#[allow(clippy::too_many_arguments)]
fn gemm_acc(
    g: &ConvGeometry,
    weights: &TapWeights,
    k_col: usize,
    patch: &[f32],
    rhs_off: usize,
    rhs_cs: usize,
    rhs_rs: usize,
    acc: &mut [f32],
    acc_off: usize,
    ncols: usize,
    acc_rs: usize,
    overwrite: bool,
) {
    let last = |off: usize, rows: usize, rs: usize, cols: usize, cs: usize| off + (rows - 1) * rs + (cols - 1) * cs;
    assert!(ncols > 0 && g.cin > 0 && g.cout > 0);
    assert!(last(rhs_off, g.cin, rhs_rs, ncols, rhs_cs) < patch.len(), "conv3d: GEMM input out of bounds");
    assert!(last(acc_off, g.cout, acc_rs, ncols, 1) < acc.len(), "conv3d: GEMM output out of bounds");
    assert!(last(k_col, g.cout, g.k_total(), g.cin, 1) < weights.w.len(), "conv3d: GEMM weights out of bounds");
    // SAFETY: the three asserts above bound every element the GEMM addresses; `acc` is borrowed mutably.
    unsafe {
        gemm::gemm(
            g.cout,
            ncols,
            g.cin,
            acc.as_mut_ptr().add(acc_off),
            1,
            acc_rs as isize,
            !overwrite,
            weights.w.as_ptr().add(k_col),
            1,
            g.k_total() as isize,
            patch.as_ptr().add(rhs_off),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Copies the band's accumulator into the output, dropping the garbage columns and adding the bias (and
/// the residual).
fn write_out(g: &ConvGeometry, weights: &TapWeights, b: &Band, acc: &[f32], out: SharedMut, residual: Option<&[f32]>) {
    let n = b.rows * b.wide;
    for o in 0..g.cout {
        let bias = weights.bias[o];
        for r in 0..b.rows {
            let src = &acc[o * n + r * b.wide..o * n + r * b.wide + b.wout];
            let dst_off = ((o * b.tout + b.t) * b.hout + b.y0 + r) * b.wout;
            // SAFETY: row (o, t, y0 + r) of the output belongs to this band alone and lies inside
            // `out`, whose length conv3d checked.
            let dst = unsafe { out.slice(dst_off, b.wout) };
            match residual {
                Some(res) => {
                    for ((d, v), x) in dst.iter_mut().zip(src).zip(&res[dst_off..dst_off + b.wout]) {
                        *d = v + bias + x;
                    }
                }
                None => {
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d = v + bias;
                    }
                }
            }
        }
    }
}

/// Copies the input rows of one frame that the band reads into `patch` (`[cin, patch_rows, wp]`),
/// zero-padded (and upsampled, if the frame says so).
fn fill_patch(g: &ConvGeometry, frame: Frame<'_>, b: &Band, patch_rows: usize, patch: &mut [f32]) {
    let (top, left) = (g.pad[0], g.pad[2]);
    let first_row = b.y0 * g.stride_s;
    let (up, src_w) = (frame.up, b.w / frame.up);
    for c in 0..g.cin {
        for r in 0..patch_rows {
            let dst = &mut patch[(c * patch_rows + r) * b.wp..(c * patch_rows + r + 1) * b.wp];
            match (first_row + r).checked_sub(top).filter(|&y| y < b.h) {
                Some(y) => {
                    let start = c * frame.c_stride + (y / up) * src_w;
                    let src = &frame.data[start..start + src_w];
                    dst[..left].fill(0.0);
                    if up == 1 {
                        dst[left..left + b.w].copy_from_slice(src);
                    } else {
                        for (pair, &v) in dst[left..left + b.w].chunks_exact_mut(up).zip(src) {
                            pair.fill(v);
                        }
                    }
                    dst[left + b.w..].fill(0.0);
                }
                None => dst.fill(0.0),
            }
        }
    }
}
