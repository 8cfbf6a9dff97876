//! The f32 CPU kernel behind the VAE's spatial convolutions: a 3D convolution as a few large matrix
//! products over a padded band of rows, with no element-by-element im2col gather.
//!
//! Why not candle's `conv2d`: its CPU path gathers its im2col tiles one element at a time and, for a 3D
//! kernel, would first need the temporal taps concatenated along channels (a copy of the whole input
//! per tap); measured at the decoder's shapes it runs 2–4× slower than this kernel.
//!
//! The idea: store a band of output rows' input, zero-padded, as `[cin, rows, padded_width]`. With
//! stride 1, the input under kernel tap `(kh, kw)` for every output pixel of the band is that block
//! *shifted* by `kh * padded_width + kw` elements, if outputs are computed on the padded width (the
//! extra `kw - 1` columns per row are garbage and dropped). A shifted block is one `memcpy`, so an
//! im2col matrix `[kt*kh*kw*cin, band]` costs `kh*kw` memcpys per input frame instead of a gather, and
//! the whole band is ONE GEMM `[cout, K] x [K, band]` (the [`Fold`] setting decides how many taps go
//! into one GEMM). Strided convolutions (the encoder's downsampling) do one GEMM per output row and tap.
//! Bands are independent: threads take bands from a shared counter and each GEMM is single-threaded,
//! which scales better on few cores than splitting each GEMM. Zero frames (the causal padding before
//! the first frame) are neither copied nor multiplied.

use super::par::{run_jobs, SharedMut};

/// How many kernel taps one GEMM covers. More taps per GEMM means a larger K (better GEMM efficiency,
/// fewer passes over the accumulator) but a larger band copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fold {
    /// One GEMM per tap, `K = cin`, reading the band in place.
    None,
    /// One GEMM per `(kt, kh)`, `K = kw*cin`: `kw` shifted copies of the band.
    Width,
    /// One GEMM per band, `K = kt*kh*kw*cin` (over the present frames): `kh*kw` shifted copies.
    All,
}

/// The default: measured fastest at every decoder shape on the benchmark machine (see `perf_tests`).
pub(crate) const DEFAULT_FOLD: Fold = Fold::All;

/// Target output pixels per band for [`Fold::All`] (rounded to whole rows): the band's im2col block is
/// `K x band` floats, which should stay in the per-core cache.
pub(crate) const DEFAULT_TILE_PIXELS: usize = 1024;

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
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let hp = self.pad[0] + h + self.pad[1];
        let wp = self.pad[2] + w + self.pad[3];
        ((hp - self.kh) / self.stride_s + 1, (wp - self.kw) / self.stride_s + 1)
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

/// One input frame of one batch item: element `(c, y, x)` is `data[c * c_stride + y * w + x]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    pub data: &'a [f32],
    pub c_stride: usize,
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
/// of zeros; every present frame is `[cin, h, w]`. `out` is `[cout, out_frames, out_h, out_w]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3d(
    g: &ConvGeometry,
    weights: &TapWeights,
    frames: &[Option<Frame<'_>>],
    (h, w): (usize, usize),
    out: &mut [f32],
    threads: usize,
    tile_pixels: usize,
    fold: Fold,
) {
    let (hout, wout) = g.out_hw(h, w);
    let tout = g.out_frames(frames.len());
    assert_eq!(out.len(), g.cout * tout * hout * wout, "conv3d: output buffer of the wrong size");
    // Strided convolutions read the band in place, row by row.
    let fold = if g.stride_s == 1 { fold } else { Fold::None };
    let shifts = match fold {
        Fold::None => 1,
        Fold::Width => g.kw,
        Fold::All => g.kh * g.kw,
    };
    // Outputs are computed `wide` columns per row: the padded width when stride is 1, else `wout`.
    let wp = g.pad[2] + w + g.pad[3];
    let wide = if g.stride_s == 1 { wp } else { wout };
    let rows_per_band = (tile_pixels / wide).clamp(1, hout.max(1));
    let bands_per_frame = hout.div_ceil(rows_per_band);
    let out_ptr = SharedMut(out.as_mut_ptr());
    run_jobs(tout * bands_per_frame, threads, |job, scratch: &mut Scratch| {
        let (t, band) = (job / bands_per_frame, job % bands_per_frame);
        let y0 = band * rows_per_band;
        let rows = rows_per_band.min(hout - y0);
        let band = Band { t, y0, rows, h, w, hout, wout, tout, wp, wide, fold, shifts };
        run_band(g, weights, frames, &band, scratch, out_ptr);
    });
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
    fold: Fold,
    /// Shifted copies of the band per input frame.
    shifts: usize,
}

fn run_band(
    g: &ConvGeometry,
    weights: &TapWeights,
    frames: &[Option<Frame<'_>>],
    b: &Band,
    scratch: &mut Scratch,
    out: SharedMut,
) {
    let s = g.stride_s;
    // Padded input rows the band reads: `patch_rows` of them from padded row `y0 * s`.
    let patch_rows = (b.rows - 1) * s + g.kh;
    let plane = patch_rows * b.wp;
    // Patch layout [kt][shift][cin][plane]: row k of the im2col matrix, k = (tap, c), is at k * plane.
    let copy_len = g.cin * plane;
    let frame_len = b.shifts * copy_len;
    // Slack: the garbage columns of the last rows read up to `kh*wp + kw` past a copy's end.
    let patch_len = g.kt * frame_len + g.kh * b.wp + g.kw;
    // Neither buffer is cleared between bands: every element a valid output reads is written below
    // (stale values only reach the garbage columns), and the first GEMM overwrites the accumulator.
    if scratch.patch.len() < patch_len {
        scratch.patch.resize(patch_len, 0.0);
    }
    let n = b.rows * b.wide;
    if scratch.acc.len() < g.cout * n {
        scratch.acc.resize(g.cout * n, 0.0);
    }

    let k_frame = g.kh * g.kw * g.cin;
    let first_present = (0..g.kt).find(|&it| frames[b.t * g.stride_t + it].is_some());
    for it in first_present.unwrap_or(g.kt)..g.kt {
        // Causal padding only ever precedes the input, so present frames are a suffix of the taps.
        let Some(frame) = frames[b.t * g.stride_t + it] else { continue };
        let block = &mut scratch.patch[it * frame_len..(it + 1) * frame_len];
        fill_patch(g, frame, b, patch_rows, &mut block[..copy_len]);
        for m in 1..b.shifts {
            let shift = if b.fold == Fold::Width { m } else { (m / g.kw) * b.wp + m % g.kw };
            block.copy_within(shift..copy_len, m * copy_len);
        }
    }
    let Some(first) = first_present else {
        scratch.acc.fill(0.0);
        return write_out(g, weights, b, &scratch.acc, out);
    };
    let patch = scratch.patch.as_ptr();
    let acc = scratch.acc.as_mut_ptr();
    let gemm_at = |k_col: usize, k: usize, rhs_off: usize, cs: usize, acc_off: usize, ncols: usize, read: bool| {
        // SAFETY: lhs columns `k_col .. k_col + k` of the `[cout, k_total]` weights; rhs rows are
        // `plane` apart from `rhs_off`, each read for `ncols` columns (`cs` apart) that stay inside the
        // patch and its slack (see `patch_len`); acc rows are `n` apart, each written for `ncols`.
        unsafe {
            gemm::gemm(
                g.cout,
                ncols,
                k,
                acc.add(acc_off),
                1,
                n as isize,
                read,
                weights.w.as_ptr().add(k_col),
                1,
                g.k_total() as isize,
                patch.add(rhs_off),
                cs as isize,
                plane as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    match b.fold {
        Fold::All => gemm_at(first * k_frame, (g.kt - first) * k_frame, first * frame_len, 1, 0, n, false),
        Fold::Width => {
            for it in first..g.kt {
                for ih in 0..g.kh {
                    let k_col = it * k_frame + ih * g.kw * g.cin;
                    let read = it > first || ih > 0;
                    gemm_at(k_col, g.kw * g.cin, it * frame_len + ih * b.wp, 1, 0, n, read);
                }
            }
        }
        Fold::None => {
            for it in first..g.kt {
                for ih in 0..g.kh {
                    for iw in 0..g.kw {
                        let k_col = ((it * g.kh + ih) * g.kw + iw) * g.cin;
                        let read = it > first || ih > 0 || iw > 0;
                        let base = it * frame_len + ih * b.wp + iw;
                        if s == 1 {
                            gemm_at(k_col, g.cin, base, 1, 0, n, read);
                        } else {
                            for r in 0..b.rows {
                                gemm_at(k_col, g.cin, base + r * s * b.wp, s, r * b.wide, b.wout, read);
                            }
                        }
                    }
                }
            }
        }
    }
    write_out(g, weights, b, &scratch.acc, out)
}

/// Copies the band's accumulator into the output, dropping the garbage columns and adding the bias.
fn write_out(g: &ConvGeometry, weights: &TapWeights, b: &Band, acc: &[f32], out: SharedMut) {
    let n = b.rows * b.wide;
    for o in 0..g.cout {
        let bias = weights.bias[o];
        for r in 0..b.rows {
            let src = &acc[o * n + r * b.wide..o * n + r * b.wide + b.wout];
            let dst_off = ((o * b.tout + b.t) * b.hout + b.y0 + r) * b.wout;
            // SAFETY: row (o, t, y0 + r) of the output belongs to this band alone and lies inside
            // `out`, whose length conv3d checked.
            let dst = unsafe { out.slice(dst_off, b.wout) };
            for (d, v) in dst.iter_mut().zip(src) {
                *d = v + bias;
            }
        }
    }
}

/// Copies the input rows of one frame that the band reads into `patch` (`[cin, patch_rows, wp]`),
/// zero-padded.
fn fill_patch(g: &ConvGeometry, frame: Frame<'_>, b: &Band, patch_rows: usize, patch: &mut [f32]) {
    let (top, left) = (g.pad[0], g.pad[2]);
    let first_row = b.y0 * g.stride_s;
    for c in 0..g.cin {
        for r in 0..patch_rows {
            let dst = &mut patch[(c * patch_rows + r) * b.wp..(c * patch_rows + r + 1) * b.wp];
            match (first_row + r).checked_sub(top).filter(|&y| y < b.h) {
                Some(y) => {
                    let src = &frame.data[c * frame.c_stride + y * b.w..c * frame.c_stride + (y + 1) * b.w];
                    dst[..left].fill(0.0);
                    dst[left..left + b.w].copy_from_slice(src);
                    dst[left + b.w..].fill(0.0);
                }
                None => dst.fill(0.0),
            }
        }
    }
}
