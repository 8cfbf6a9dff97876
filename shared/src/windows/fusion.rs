//! Blending the windows' outputs into one latent.
//!
//! A plain average over an overlap leaves a visible seam where a window's influence stops abruptly; instead
//! each window's weight falls smoothly toward zero at every edge it shares with a neighbour, and the fused
//! value is the weighted mean `v = Σ wᵢ·vᵢ / Σ wᵢ`. Sums run in window index order with f32 accumulation in
//! a fixed order, so the same outputs always fuse to the same bits, however and whenever they arrived.

use std::f64::consts::FRAC_PI_2;

use thiserror::Error;

use super::plan::{LatentShape, WindowBox, WindowPlan};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FusionError {
    #[error("expected {expected} window outputs, got {got}")]
    WindowCount { expected: usize, got: usize },
    #[error("output of window {index} has {got} values, expected {expected}")]
    OutputLength { index: usize, expected: usize, got: usize },
}

/// How the windows' outputs are weighed where they overlap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FusionMode {
    /// Each window's weight falls smoothly (sin²) toward an edge it shares with a neighbour, so the
    /// hand-over is gradual and a window's edge, where it sees the least context, counts the least.
    #[default]
    Smooth,
    /// Every window weighs the same everywhere: a plain average over each overlap.
    Average,
    /// Nothing is fused: windows are drawn one after another along time, each holding the frames it
    /// shares with the windows before it clean (a timestep of 0 for those frames) while it draws its own
    /// from their noise. Needs a transformer trained to continue a video (`dit.context` in a training
    /// recipe) and frames that fit one window.
    Continue,
}

impl FusionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smooth => "smooth",
            Self::Average => "average",
            Self::Continue => "continue",
        }
    }
}

impl std::fmt::Display for FusionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FusionMode {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "smooth" => Ok(Self::Smooth),
            "average" => Ok(Self::Average),
            "continue" => Ok(Self::Continue),
            _ => Err(format!("unknown fusion {name:?} (known: smooth, average, continue)")),
        }
    }
}

/// Precomputed fusion weights for a plan: built once per job, used every step.
#[derive(Debug, Clone)]
pub struct Fusion {
    shape: LatentShape,
    boxes: Vec<WindowBox>,
    /// Per window, [f, h, w] of its box, row-major.
    weights: Vec<Vec<f32>>,
    /// Σ wᵢ per position of [F, H, W]; the same for every channel.
    totals: Vec<f32>,
}

impl Fusion {
    /// `plan` must cover the latent with boxes inside it, as every plan from `plan_windows` does; a position
    /// no window covers would fuse to NaN.
    pub fn new(plan: &WindowPlan) -> Self {
        Self::with_mode(plan, FusionMode::Smooth)
    }

    /// Weights of the given mode for `plan`.
    pub fn with_mode(plan: &WindowPlan, mode: FusionMode) -> Self {
        let shape = plan.shape;
        let boxes: Vec<WindowBox> = plan.windows.iter().map(|w| w.bbox).collect();
        let weights: Vec<Vec<f32>> = (0..boxes.len())
            .map(|i| match mode {
                FusionMode::Smooth => window_weights(&boxes, i),
                // A continued video fuses nothing; its weights are never used.
                FusionMode::Average | FusionMode::Continue => vec![1.0; boxes[i].area()],
            })
            .collect();

        let (height, width) = (shape.height, shape.width);
        let mut totals = vec![0.0f32; shape.frames * height * width];
        for (bbox, w) in boxes.iter().zip(&weights) {
            let row_len = bbox.cols.len();
            let mut rows = w.chunks_exact(row_len);
            for f in bbox.frames.start..bbox.frames.end {
                for r in bbox.rows.start..bbox.rows.end {
                    let start = (f * height + r) * width + bbox.cols.start;
                    let dst = &mut totals[start..start + row_len];
                    if let Some(src) = rows.next() {
                        for (t, &x) in dst.iter_mut().zip(src) {
                            *t += x;
                        }
                    }
                }
            }
        }
        debug_assert!(totals.iter().all(|&t| t > 0.0), "plan leaves part of the latent uncovered");
        Self { shape, boxes, weights, totals }
    }

    pub fn shape(&self) -> LatentShape {
        self.shape
    }

    /// The weight of each position of window `index`, shape [f, h, w] of its box, row-major.
    ///
    /// # Panics
    /// If `index` is not a window of the plan.
    pub fn weights(&self, index: usize) -> &[f32] {
        &self.weights[index]
    }

    /// Fuses one output per window (each [C, f, h, w] of its box, in window order) into the whole latent
    /// [C, F, H, W]. Lengths are checked because outputs come back from workers over the network.
    pub fn fuse(&self, outputs: &[&[f32]]) -> Result<Vec<f32>, FusionError> {
        if outputs.len() != self.boxes.len() {
            return Err(FusionError::WindowCount { expected: self.boxes.len(), got: outputs.len() });
        }
        let channels = self.shape.channels;
        for (index, (bbox, out)) in self.boxes.iter().zip(outputs).enumerate() {
            let expected = channels * bbox.area();
            if out.len() != expected {
                return Err(FusionError::OutputLength { index, expected, got: out.len() });
            }
        }

        let LatentShape { frames, height, width, .. } = self.shape;
        let plane = frames * height * width;
        let mut acc = vec![0.0f32; self.shape.len()];
        for ((bbox, weights), out) in self.boxes.iter().zip(&self.weights).zip(outputs) {
            let row_len = bbox.cols.len();
            let mut src_rows = out.chunks_exact(row_len);
            for c in 0..channels {
                let mut weight_rows = weights.chunks_exact(row_len);
                for f in bbox.frames.start..bbox.frames.end {
                    for r in bbox.rows.start..bbox.rows.end {
                        let start = c * plane + (f * height + r) * width + bbox.cols.start;
                        let dst = &mut acc[start..start + row_len];
                        if let (Some(src), Some(w)) = (src_rows.next(), weight_rows.next()) {
                            for ((d, &v), &w) in dst.iter_mut().zip(src).zip(w) {
                                *d += w * v;
                            }
                        }
                    }
                }
            }
        }
        for channel in acc.chunks_exact_mut(plane) {
            for (d, &t) in channel.iter_mut().zip(&self.totals) {
                *d /= t;
            }
        }
        Ok(acc)
    }
}

/// Copies window `bbox`'s slice [C, f, h, w] out of a whole latent [C, F, H, W].
///
/// # Panics
/// If `latent` is not `shape.len()` long or `bbox` reaches outside `shape`: both come from the coordinator's
/// own plan, so a mismatch is a bug, not bad input.
pub fn extract(latent: &[f32], shape: LatentShape, bbox: &WindowBox) -> Vec<f32> {
    assert_eq!(latent.len(), shape.len(), "latent length does not match its shape");
    assert!(
        bbox.frames.end <= shape.frames && bbox.rows.end <= shape.height && bbox.cols.end <= shape.width,
        "window {bbox:?} reaches outside latent {shape:?}"
    );
    let LatentShape { channels, frames, height, width } = shape;
    let plane = frames * height * width;
    let mut out = Vec::with_capacity(channels * bbox.area());
    for c in 0..channels {
        for f in bbox.frames.start..bbox.frames.end {
            for r in bbox.rows.start..bbox.rows.end {
                let start = c * plane + (f * height + r) * width + bbox.cols.start;
                out.extend_from_slice(&latent[start..start + bbox.cols.len()]);
            }
        }
    }
    out
}

/// Writes window `bbox`'s slice [C, f, h, w] into a whole latent [C, F, H, W]: the inverse of [`extract`].
///
/// # Panics
/// As [`extract`], and if `values` is not `shape.channels × bbox.area()` long.
pub fn insert(latent: &mut [f32], shape: LatentShape, bbox: &WindowBox, values: &[f32]) {
    assert_eq!(latent.len(), shape.len(), "latent length does not match its shape");
    assert_eq!(values.len(), shape.channels * bbox.area(), "window values do not match the window");
    assert!(
        bbox.frames.end <= shape.frames && bbox.rows.end <= shape.height && bbox.cols.end <= shape.width,
        "window {bbox:?} reaches outside latent {shape:?}"
    );
    let LatentShape { channels, frames, height, width } = shape;
    let plane = frames * height * width;
    let mut rows = values.chunks_exact(bbox.cols.len());
    for c in 0..channels {
        for f in bbox.frames.start..bbox.frames.end {
            for r in bbox.rows.start..bbox.rows.end {
                let start = c * plane + (f * height + r) * width + bbox.cols.start;
                latent[start..start + bbox.cols.len()].copy_from_slice(rows.next().expect("checked length"));
            }
        }
    }
}

/// The 1-D ramp along one axis of a window of `len` positions: 1 inside, and over the first
/// `shared_before` / last `shared_after` positions (shared with a neighbour on that side; 0 at the latent's
/// border) a raised cosine from near 0 up to 1.
///
/// The rise is sin²(π/2 · (k + 0.5)/n): sampling at half-steps keeps every weight strictly positive, so every
/// position has a positive total, and the neighbour's fall over the same n positions is cos² of the same
/// argument, so two overlapping windows' weights sum to 1.
pub fn axis_ramp(len: usize, shared_before: usize, shared_after: usize) -> Vec<f32> {
    let rise = |k: usize, n: usize| -> f64 {
        if k < n {
            let s = (FRAC_PI_2 * (k as f64 + 0.5) / n as f64).sin();
            s * s
        } else {
            1.0
        }
    };
    let before = shared_before.min(len);
    let after = shared_after.min(len);
    (0..len).map(|i| (rise(i, before) * rise(len - 1 - i, after)) as f32).collect()
}

/// Weight map [f, h, w] of window `index`: the product of its three axis ramps.
fn window_weights(boxes: &[WindowBox], index: usize) -> Vec<f32> {
    let bbox = boxes[index];
    let spans = bbox.spans();
    let ramps: Vec<Vec<f32>> = (0..3)
        .map(|axis| {
            let (before, after) = shared_lengths(boxes, index, axis);
            axis_ramp(spans[axis].len(), before, after)
        })
        .collect();
    let (rf, rr, rc) = (&ramps[0], &ramps[1], &ramps[2]);
    let mut out = Vec::with_capacity(bbox.area());
    for &wf in rf {
        for &wr in rr {
            let wfr = wf * wr;
            out.extend(rc.iter().map(|&wc| wfr * wc));
        }
    }
    out
}

/// How far window `index`'s span on `axis` is shared with neighbours on its low and high sides.
///
/// A neighbour on a side is any other window whose box meets this one on the other two axes and whose span
/// on `axis` starts before (ends after) this one's and reaches into it. Taking the deepest reach rather than
/// the requested overlap matters because even spreading can make neighbours overlap by more than requested.
fn shared_lengths(boxes: &[WindowBox], index: usize, axis: usize) -> (usize, usize) {
    let me = boxes[index].spans();
    let span = me[axis];
    let mut before = 0;
    let mut after = 0;
    for (j, other) in boxes.iter().enumerate() {
        if j == index {
            continue;
        }
        let theirs = other.spans();
        let meets_elsewhere = (0..3).filter(|&a| a != axis).all(|a| me[a].overlap(&theirs[a]) > 0);
        if !meets_elsewhere {
            continue;
        }
        let shared = span.overlap(&theirs[axis]);
        if theirs[axis].start < span.start {
            before = before.max(shared);
        }
        if theirs[axis].end > span.end {
            after = after.max(shared);
        }
    }
    (before, after)
}

#[cfg(test)]
mod tests {
    use super::super::plan::{plan_windows, PlanRequest, Span, Window};
    use super::*;

    fn plan(shape: [usize; 4], window: [usize; 3], overlap: [usize; 3]) -> WindowPlan {
        let [channels, frames, height, width] = shape;
        plan_windows(&PlanRequest {
            shape: LatentShape { channels, frames, height, width },
            window,
            overlap,
            align: [1, 2, 2],
        })
        .unwrap()
    }

    /// A latent whose every value differs, so a misplaced copy shows.
    fn ramp_latent(shape: LatentShape) -> Vec<f32> {
        (0..shape.len()).map(|i| ((i as f32) * 0.37).sin() + (i % 7) as f32 * 0.1).collect()
    }

    fn fuse_owned(fusion: &Fusion, outputs: &[Vec<f32>]) -> Result<Vec<f32>, FusionError> {
        let refs: Vec<&[f32]> = outputs.iter().map(|o| o.as_slice()).collect();
        fusion.fuse(&refs)
    }

    #[test]
    fn ramp_is_one_without_neighbours() {
        assert_eq!(axis_ramp(6, 0, 0), vec![1.0; 6]);
    }

    #[test]
    fn ramp_rises_strictly_over_the_shared_part() {
        let r = axis_ramp(10, 4, 0);
        assert!(r[..4].iter().all(|&x| x > 0.0 && x < 1.0), "{r:?}");
        assert!(r[..4].windows(2).all(|p| p[0] < p[1]), "{r:?}");
        assert!(r[4..].iter().all(|&x| x == 1.0), "{r:?}");
        let mirrored = axis_ramp(10, 0, 4);
        let reversed: Vec<f32> = r.iter().rev().copied().collect();
        assert_eq!(mirrored, reversed);
    }

    #[test]
    fn ramps_of_two_neighbours_are_complementary() {
        // Spans [0, 10) and [6, 16): they share 4 positions.
        let left = axis_ramp(10, 0, 4);
        let right = axis_ramp(10, 4, 0);
        for k in 0..4 {
            let sum = left[6 + k] + right[k];
            assert!((sum - 1.0).abs() < 1e-6, "position {k}: {sum}");
        }
    }

    #[test]
    fn ramp_with_both_sides_shared_over_the_whole_span_stays_positive() {
        let r = axis_ramp(4, 4, 4);
        assert!(r.iter().all(|&x| x > 0.0 && x < 1.0), "{r:?}");
        assert_eq!(axis_ramp(3, 9, 0).len(), 3);
    }

    #[test]
    fn average_mode_weighs_every_window_equally() {
        let p = plan([2, 20, 4, 6], [8, 4, 6], [2, 0, 0]);
        let fusion = Fusion::with_mode(&p, FusionMode::Average);
        assert!((0..p.len()).all(|i| fusion.weights(i).iter().all(|&w| w == 1.0)));
        // Frame 6 is in windows 0 and 1: the fused value is their mean.
        let outputs: Vec<Vec<f32>> = (0..p.len()).map(|i| vec![i as f32 * 2.0; p.windows[i].bbox.area() * 2]).collect();
        let refs: Vec<&[f32]> = outputs.iter().map(|o| o.as_slice()).collect();
        let fused = fusion.fuse(&refs).unwrap();
        let frame = |f: usize| fused[f * 4 * 6];
        assert_eq!((frame(0), frame(6), frame(9), frame(12)), (0.0, 1.0, 2.0, 3.0));
        assert_eq!("AVERAGE".parse::<FusionMode>().unwrap(), FusionMode::Average);
        assert!("hard".parse::<FusionMode>().is_err());
    }

    #[test]
    fn weights_are_one_away_from_neighbours_and_at_borders() {
        // Frames 0..8, 6..14, 12..20; rows and cols are one window each.
        let p = plan([2, 20, 4, 6], [8, 4, 6], [2, 0, 0]);
        let fusion = Fusion::new(&p);
        let area = 4 * 6;
        let by_frame = |index: usize| -> Vec<f32> {
            let w = fusion.weights(index);
            assert_eq!(w.len(), 8 * area);
            // Within a frame, rows and cols are at the border, so every value of the frame is equal.
            for frame in w.chunks(area) {
                assert!(frame.iter().all(|&x| x == frame[0]), "{frame:?}");
            }
            w.chunks(area).map(|frame| frame[0]).collect()
        };
        let first = by_frame(0);
        assert!(first[..6].iter().all(|&x| x == 1.0), "{first:?}");
        assert!(first[6..].iter().all(|&x| x > 0.0 && x < 1.0), "{first:?}");
        let middle = by_frame(1);
        assert!(middle[..2].iter().all(|&x| x > 0.0 && x < 1.0), "{middle:?}");
        assert!(middle[2..6].iter().all(|&x| x == 1.0), "{middle:?}");
        assert!(middle[6..].iter().all(|&x| x > 0.0 && x < 1.0), "{middle:?}");
        let last = by_frame(2);
        assert!(last[..2].iter().all(|&x| x > 0.0 && x < 1.0), "{last:?}");
        assert!(last[2..].iter().all(|&x| x == 1.0), "{last:?}");
    }

    #[test]
    fn corner_weights_are_products_of_axis_ramps() {
        // 2 x 2 spatial tiles: rows 0..8, 4..12; cols 0..8, 4..12.
        let p = plan([1, 1, 12, 12], [1, 8, 8], [0, 4, 4]);
        let fusion = Fusion::new(&p);
        let w = fusion.weights(0);
        let ramp = axis_ramp(8, 0, 4);
        for r in 0..8 {
            for c in 0..8 {
                assert_eq!(w[r * 8 + c], ramp[r] * ramp[c]);
            }
        }
        assert_eq!(w[0], 1.0);
        assert!(w[63] > 0.0 && w[63] < ramp[7]);
    }

    #[test]
    fn identical_outputs_fuse_to_themselves() {
        let p = plan([3, 20, 12, 16], [8, 8, 10], [2, 4, 4]);
        assert!(p.len() > 8);
        let fusion = Fusion::new(&p);
        let c = 0.731_f32;
        let outputs: Vec<Vec<f32>> = p.windows.iter().map(|w| vec![c; 3 * w.bbox.area()]).collect();
        let fused = fuse_owned(&fusion, &outputs).unwrap();
        assert_eq!(fused.len(), p.shape.len());
        assert!(fused.iter().all(|&v| (v - c).abs() < 1e-6), "max err {}", max_err(&fused, c));
    }

    fn max_err(values: &[f32], c: f32) -> f32 {
        values.iter().map(|v| (v - c).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn deep_overlaps_reaching_past_the_next_window_still_fuse() {
        // Frames 0..8, 2..10, 4..12: the first and last windows overlap too.
        let p = plan([1, 12, 2, 2], [8, 2, 2], [6, 0, 0]);
        assert_eq!(p.len(), 3);
        let fusion = Fusion::new(&p);
        for i in 0..3 {
            assert!(fusion.weights(i).iter().all(|&x| x > 0.0));
        }
        let outputs: Vec<Vec<f32>> = p.windows.iter().map(|w| vec![-2.5; w.bbox.area()]).collect();
        let fused = fuse_owned(&fusion, &outputs).unwrap();
        assert!(fused.iter().all(|&v| (v + 2.5).abs() < 1e-6), "{fused:?}");
    }

    #[test]
    fn two_constants_blend_monotonically_across_the_overlap() {
        // Cols 0..10 and 6..16 share cols 6..10.
        let p = plan([2, 1, 2, 16], [1, 2, 10], [0, 0, 4]);
        assert_eq!(p.windows[1].bbox.cols, Span::new(6, 16));
        let fusion = Fusion::new(&p);
        let (a, b) = (-1.0_f32, 3.0_f32);
        let outputs = vec![vec![a; 2 * 2 * 10], vec![b; 2 * 2 * 10]];
        let fused = fuse_owned(&fusion, &outputs).unwrap();
        for c in 0..2 {
            for r in 0..2 {
                let row = &fused[(c * 2 + r) * 16..][..16];
                assert!(row[..6].iter().all(|&v| v == a), "{row:?}");
                assert!(row[10..].iter().all(|&v| v == b), "{row:?}");
                assert!(row[6..10].iter().all(|&v| v > a && v < b), "{row:?}");
                assert!(row[5..11].windows(2).all(|p| p[0] < p[1]), "{row:?}");
            }
        }
    }

    #[test]
    fn insert_writes_back_what_extract_reads() {
        let p = plan([4, 20, 12, 16], [8, 8, 10], [2, 4, 4]);
        let latent = ramp_latent(p.shape);
        let bbox = p.windows[1].bbox;
        let mut other = vec![f32::NAN; latent.len()];
        insert(&mut other, p.shape, &bbox, &extract(&latent, p.shape, &bbox));
        assert_eq!(extract(&other, p.shape, &bbox), extract(&latent, p.shape, &bbox));
        let outside = other.iter().filter(|a| a.is_nan()).count();
        assert_eq!(outside, latent.len() - p.shape.channels * bbox.area(), "only the window was written");
    }

    #[test]
    fn extract_then_fuse_returns_the_latent() {
        let p = plan([4, 20, 12, 16], [8, 8, 10], [2, 4, 4]);
        let latent = ramp_latent(p.shape);
        let outputs: Vec<Vec<f32>> = p.windows.iter().map(|w| extract(&latent, p.shape, &w.bbox)).collect();
        let fused = fuse_owned(&Fusion::new(&p), &outputs).unwrap();
        for (i, (x, y)) in latent.iter().zip(&fused).enumerate() {
            assert!((x - y).abs() <= 1e-6, "position {i}: {x} vs {y}");
        }
    }

    #[test]
    fn extract_takes_the_boxes_values() {
        let shape = LatentShape { channels: 2, frames: 3, height: 4, width: 5 };
        let latent: Vec<f32> = (0..shape.len()).map(|i| i as f32).collect();
        let bbox = WindowBox { frames: Span::new(1, 3), rows: Span::new(2, 4), cols: Span::new(1, 4) };
        let slice = extract(&latent, shape, &bbox);
        assert_eq!(slice.len(), 2 * 2 * 2 * 3);
        let at = |c: usize, f: usize, r: usize, col: usize| (((c * 3 + f) * 4 + r) * 5 + col) as f32;
        assert_eq!(slice[0], at(0, 1, 2, 1));
        assert_eq!(slice[2], at(0, 1, 2, 3));
        assert_eq!(slice[3], at(0, 1, 3, 1));
        assert_eq!(slice[6], at(0, 2, 2, 1));
        assert_eq!(slice[12], at(1, 1, 2, 1));
        assert_eq!(slice[23], at(1, 2, 3, 3));
    }

    #[test]
    fn fusing_is_bit_for_bit_repeatable() {
        let p = plan([2, 20, 12, 16], [8, 8, 10], [2, 4, 4]);
        let outputs: Vec<Vec<f32>> = p
            .windows
            .iter()
            .map(|w| ramp_latent(w.bbox.latent_shape(2)).iter().map(|v| v * (w.index as f32 + 1.0)).collect())
            .collect();
        let first = fuse_owned(&Fusion::new(&p), &outputs).unwrap();
        let second = fuse_owned(&Fusion::new(&p.clone()), &outputs).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&first), bits(&second));
    }

    #[test]
    fn wrong_counts_and_lengths_are_errors() {
        let p = plan([2, 20, 4, 4], [8, 4, 4], [2, 0, 0]);
        let fusion = Fusion::new(&p);
        let good: Vec<Vec<f32>> = p.windows.iter().map(|w| vec![1.0; 2 * w.bbox.area()]).collect();
        assert!(fuse_owned(&fusion, &good).is_ok());
        assert_eq!(fuse_owned(&fusion, &good[..2]), Err(FusionError::WindowCount { expected: 3, got: 2 }));
        let mut bad = good.clone();
        bad[1].pop();
        assert_eq!(
            fuse_owned(&fusion, &bad),
            Err(FusionError::OutputLength { index: 1, expected: 2 * 8 * 16, got: 2 * 8 * 16 - 1 })
        );
        let mut long = good;
        long[2].push(0.0);
        assert!(matches!(fuse_owned(&fusion, &long), Err(FusionError::OutputLength { index: 2, .. })));
    }

    #[test]
    fn single_window_fuses_to_its_output_exactly() {
        let shape = LatentShape { channels: 2, frames: 3, height: 4, width: 6 };
        let whole = WindowBox { frames: Span::new(0, 3), rows: Span::new(0, 4), cols: Span::new(0, 6) };
        let p = WindowPlan { shape, windows: vec![Window { index: 0, bbox: whole }] };
        let latent = ramp_latent(shape);
        let fused = Fusion::new(&p).fuse(&[&latent]).unwrap();
        assert_eq!(fused, latent);
    }
}
