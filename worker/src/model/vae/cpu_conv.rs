//! The f32 CPU kernel behind every spatial VAE convolution: a 3D convolution computed as a sum of
//! matrix products, one per kernel tap, without ever materialising an im2col matrix.
//!
//! Why not candle's `conv2d`: its CPU path gathers an im2col tile element by element and, for a 3D
//! kernel, would need the three temporal taps concatenated along channels first (a 3× copy of the input)
//! and then a 9× im2col of that. Here each output tile (one output frame, a band of rows, all output
//! channels) is built as follows:
//! 1. the input rows the band needs are copied once per input frame into a zero-padded patch
//!    `[cin, rows, padded_width]` (this is the only copy of the input, about `1 + 2/rows` of it);
//! 2. with stride 1, the input under kernel tap `(kh, kw)` for *every* output pixel of the band is the
//!    patch itself shifted by `kh * padded_width + kw` elements, if outputs are computed on the padded
//!    width (the `kw - 1` extra columns per row are garbage and dropped). So each tap is a single GEMM
//!    `[cout, cin] x [cin, rows * padded_width]` reading the patch in place, accumulated into one
//!    output tile; strided convolutions (the encoder's downsampling) do one GEMM per output row and tap;
//! 3. the tile is copied into the output with the bias added.
//!
//! Bands are independent, so threads take bands from a shared counter and each GEMM runs single-threaded:
//! on few cores that scales better than splitting each (small) GEMM across threads. Zero frames (the
//! causal padding before the first frame) are skipped, not multiplied.

use super::par::{run_jobs, SharedMut};

/// Output pixels per band (rounded to whole rows). Large enough for efficient GEMMs, small enough that
/// a band's patch and accumulator stay in the last-level cache.
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
}

/// One input frame of one batch item: element `(c, y, x)` is `data[c * c_stride + y * w + x]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    pub data: &'a [f32],
    pub c_stride: usize,
}

/// The weights rearranged for the kernel: one contiguous `[cout, cin]` matrix per tap.
#[derive(Debug, Clone)]
pub(crate) struct TapWeights {
    /// `[kt * kh * kw][cout][cin]`.
    taps: Vec<f32>,
    bias: Vec<f32>,
}

impl TapWeights {
    /// `weight` is PyTorch's `[cout, cin, kt, kh, kw]`, contiguous.
    pub fn new(g: &ConvGeometry, weight: &[f32], bias: Vec<f32>) -> Self {
        let ntaps = g.kt * g.kh * g.kw;
        let mut taps = vec![0f32; ntaps * g.cout * g.cin];
        for o in 0..g.cout {
            for c in 0..g.cin {
                for tap in 0..ntaps {
                    taps[(tap * g.cout + o) * g.cin + c] = weight[(o * g.cin + c) * ntaps + tap];
                }
            }
        }
        TapWeights { taps, bias }
    }
}

/// Convolves one batch item. `frames` is the whole input sequence in time, `None` standing for a frame
/// of zeros; every present frame is `[cin, h, w]`. `out` is `[cout, out_frames, out_h, out_w]`.
pub(crate) fn conv3d(
    g: &ConvGeometry,
    weights: &TapWeights,
    frames: &[Option<Frame<'_>>],
    (h, w): (usize, usize),
    out: &mut [f32],
    threads: usize,
    tile_pixels: usize,
) {
    let (hout, wout) = g.out_hw(h, w);
    let tout = g.out_frames(frames.len());
    assert_eq!(out.len(), g.cout * tout * hout * wout, "conv3d: output buffer of the wrong size");
    // Outputs are computed `wide` columns per row: the padded width when stride is 1 (the flat-shift
    // trick), else exactly `wout` (one GEMM per row).
    let wp = g.pad[2] + w + g.pad[3];
    let wide = if g.stride_s == 1 { wp } else { wout };
    let rows_per_band = (tile_pixels / wide).clamp(1, hout.max(1));
    let bands_per_frame = hout.div_ceil(rows_per_band);
    let out_ptr = SharedMut(out.as_mut_ptr());
    run_jobs(tout * bands_per_frame, threads, |job, scratch: &mut Scratch| {
        let (t, band) = (job / bands_per_frame, job % bands_per_frame);
        let y0 = band * rows_per_band;
        let rows = rows_per_band.min(hout - y0);
        let band = Band { t, y0, rows, h, w, hout, wout, tout, wp, wide };
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
    // `kw` floats of slack: the wide accumulator's garbage columns read past the last channel's plane.
    let patch_len = g.kt * g.cin * plane + g.kw;
    scratch.patch.clear();
    scratch.patch.resize(patch_len, 0.0);
    let n = b.rows * b.wide;
    scratch.acc.clear();
    scratch.acc.resize(g.cout * n, 0.0);

    let mut first = true;
    for it in 0..g.kt {
        let Some(frame) = frames[b.t * g.stride_t + it] else { continue };
        let patch = &mut scratch.patch[it * g.cin * plane..(it + 1) * g.cin * plane];
        fill_patch(g, frame, b, patch_rows, patch);
        for ih in 0..g.kh {
            for iw in 0..g.kw {
                let tap = (it * g.kh + ih) * g.kw + iw;
                let lhs = &weights.taps[tap * g.cout * g.cin..(tap + 1) * g.cout * g.cin];
                let base = it * g.cin * plane + ih * b.wp + iw;
                if s == 1 {
                    // SAFETY: lhs is `[cout, cin]`; rhs reads `cin` rows of `n` elements starting at
                    // `base + c * plane`, the furthest at `(cin-1)*plane + (kh-1)*wp + kw-1 + rows*wp - 1`
                    // < `kt*cin*plane + kw` = patch_len; acc is `[cout, n]`.
                    unsafe {
                        gemm_acc(g, n, scratch.acc.as_mut_ptr(), n, lhs, scratch.patch.as_ptr().add(base), 1, plane, first)
                    };
                } else {
                    for r in 0..b.rows {
                        // SAFETY: row r of the output reads patch row `r*s + ih`, columns `iw + x*s` for
                        // x < wout, all inside the frame's padded plane; acc row offset `r * wout`.
                        unsafe {
                            gemm_acc(
                                g,
                                b.wout,
                                scratch.acc.as_mut_ptr().add(r * b.wide),
                                n,
                                lhs,
                                scratch.patch.as_ptr().add(base + r * s * b.wp),
                                s,
                                plane,
                                first,
                            )
                        };
                    }
                }
                first = false;
            }
        }
    }
    // Every output frame has at least one real input frame (zero frames only ever precede the input),
    // but if none ran the accumulator is still the zeros it was filled with.
    for o in 0..g.cout {
        let bias = weights.bias[o];
        for r in 0..b.rows {
            let src = &scratch.acc[o * n + r * b.wide..o * n + r * b.wide + b.wout];
            let dst_off = ((o * b.tout + b.t) * b.hout + b.y0 + r) * b.wout;
            // SAFETY: (o, t, y0 + r) is a row owned by this band alone; it lies inside `out`, whose
            // length conv3d checked.
            let dst = unsafe { out.slice(dst_off, b.wout) };
            for (d, v) in dst.iter_mut().zip(src) {
                *d = v + bias;
            }
        }
    }
}

/// Copies the input rows of one frame that the band reads into `patch` (`[cin, patch_rows, wp]`),
/// leaving the padding zero.
fn fill_patch(g: &ConvGeometry, frame: Frame<'_>, b: &Band, patch_rows: usize, patch: &mut [f32]) {
    let (top, left) = (g.pad[0], g.pad[2]);
    let first_row = b.y0 * g.stride_s;
    for c in 0..g.cin {
        for r in 0..patch_rows {
            let dst = &mut patch[(c * patch_rows + r) * b.wp..(c * patch_rows + r + 1) * b.wp];
            let y = (first_row + r).checked_sub(top).filter(|&y| y < b.h);
            match y {
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

/// `acc[cout, ncols] (+)= lhs[cout, cin] x rhs[cin, ncols]`, rhs with column stride `rhs_cs` and row
/// stride `rhs_rs`, acc with row stride `acc_rs`.
///
/// # Safety
/// All pointers must be valid for the elements this addresses.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_acc(
    g: &ConvGeometry,
    ncols: usize,
    acc: *mut f32,
    acc_rs: usize,
    lhs: &[f32],
    rhs: *const f32,
    rhs_cs: usize,
    rhs_rs: usize,
    first: bool,
) {
    gemm::gemm(
        g.cout,
        ncols,
        g.cin,
        acc,
        1,
        acc_rs as isize,
        !first,
        lhs.as_ptr(),
        1,
        g.cin as isize,
        rhs,
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
