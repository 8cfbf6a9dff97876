//! Cutting a latent into overlapping spacetime windows.
//!
//! A window is the largest unit a worker holds, so the plan bounds a worker's memory whatever the video's
//! length. Windows overlap so that fusion can blend neighbours without seams; starts are spread evenly so no
//! window is a thin sliver, and snapped to the transformer's patch so every window patchifies exactly.

use std::fmt;

use thiserror::Error;

/// Half-open range [start, end) along one axis, in latent units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        debug_assert!(start <= end, "span [{start}, {end}) is reversed");
        Self { start, end }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// How many positions this span shares with `other`; 0 when they are disjoint or merely touch.
    pub fn overlap(&self, other: &Span) -> usize {
        self.end.min(other.end).saturating_sub(self.start.max(other.start))
    }
}

/// The dimensions of a latent [C, F, H, W], row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentShape {
    pub channels: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl LatentShape {
    /// Number of f32 values in the latent.
    pub fn len(&self) -> usize {
        self.channels * self.frames * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [C, F, H, W], the order of the flat buffer.
    pub fn dims(&self) -> [usize; 4] {
        [self.channels, self.frames, self.height, self.width]
    }
}

/// One of the three axes a latent is cut along; arrays of per-axis values are indexed in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    Frames,
    Rows,
    Cols,
}

impl Axis {
    /// The axes in the order of `[frames, rows, cols]` arrays and of window enumeration.
    pub const ALL: [Axis; 3] = [Axis::Frames, Axis::Rows, Axis::Cols];

    pub fn name(self) -> &'static str {
        match self {
            Axis::Frames => "frames",
            Axis::Rows => "rows",
            Axis::Cols => "cols",
        }
    }
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A window's box in the latent grid; channels are never cut, so the box is spatiotemporal only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowBox {
    pub frames: Span,
    pub rows: Span,
    pub cols: Span,
}

impl WindowBox {
    /// The spans in `[frames, rows, cols]` order, for code that loops over axes.
    pub fn spans(&self) -> [Span; 3] {
        [self.frames, self.rows, self.cols]
    }

    /// The shape of this window's slice [C, f, h, w] of a latent with `channels` channels.
    pub fn latent_shape(&self, channels: usize) -> LatentShape {
        LatentShape { channels, frames: self.frames.len(), height: self.rows.len(), width: self.cols.len() }
    }

    /// Positions per channel, f * h * w: the length of the window's weight map.
    pub fn area(&self) -> usize {
        self.frames.len() * self.rows.len() * self.cols.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Position in the plan's order; fences and fusion identify a window by it.
    pub index: usize,
    pub bbox: WindowBox,
}

/// What to plan: sizes per axis [frames, rows, cols], in latent units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanRequest {
    pub shape: LatentShape,
    /// Longest window per axis; the model's native length for frames.
    pub window: [usize; 3],
    /// Least overlap between neighbours per axis; even spreading may give more.
    pub overlap: [usize; 3],
    /// Every start, window and length must be a multiple of this: 1 for frames, the patch size (2) for
    /// rows and cols.
    pub align: [usize; 3],
}

#[derive(Debug, Clone, PartialEq)]
pub struct WindowPlan {
    pub shape: LatentShape,
    /// Ordered frames-major (frame span, then row span, then col span); `windows[i].index == i`.
    pub windows: Vec<Window>,
}

impl WindowPlan {
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("channels must be at least 1")]
    ZeroChannels,
    #[error("{axis}: length must be at least 1")]
    ZeroLength { axis: Axis },
    #[error("{axis}: window must be at least 1")]
    ZeroWindow { axis: Axis },
    #[error("{axis}: align must be at least 1")]
    ZeroAlign { axis: Axis },
    #[error("{axis}: {what} {value} must be a multiple of align {align}")]
    Misaligned { axis: Axis, what: &'static str, value: usize, align: usize },
    #[error("{axis}: overlap {overlap} must be at most window {window} minus align {align} when length {len} needs more than one window")]
    OverlapTooLarge { axis: Axis, len: usize, window: usize, overlap: usize, align: usize },
    #[error("{axis}: no aligned spread of windows {window} over length {len} overlaps by {overlap}")]
    NoSpread { axis: Axis, len: usize, window: usize, overlap: usize },
}

/// Plans every axis and takes the cartesian product, frames-major, so window order (and with it fusion's
/// summation order) is a pure function of the request.
pub fn plan_windows(req: &PlanRequest) -> Result<WindowPlan, PlanError> {
    if req.shape.channels == 0 {
        return Err(PlanError::ZeroChannels);
    }
    let lens = [req.shape.frames, req.shape.height, req.shape.width];
    let mut axes: [Vec<Span>; 3] = Default::default();
    for (i, axis) in Axis::ALL.into_iter().enumerate() {
        axes[i] = plan_axis(axis, lens[i], req.window[i], req.overlap[i], req.align[i])?;
    }
    let [frames, rows, cols] = &axes;
    let mut windows = Vec::with_capacity(frames.len() * rows.len() * cols.len());
    for &f in frames {
        for &r in rows {
            for &c in cols {
                let index = windows.len();
                windows.push(Window { index, bbox: WindowBox { frames: f, rows: r, cols: c } });
            }
        }
    }
    Ok(WindowPlan { shape: req.shape, windows })
}

/// The video frames where the temporal windows hand over: for every latent frame at which the set of
/// windows covering it changes (a window begins or ends there), the first video frame decoded from it. A
/// seam `s` lies between video frames `s − 1` and `s`; this is where an evaluation looks for jumps.
pub fn temporal_seams(
    g: &crate::model::ModelGeometry,
    frames: usize,
    window_frames: usize,
    overlap_frames: usize,
) -> Result<Vec<usize>, PlanError> {
    let (spans, len) = temporal_spans(g, frames, window_frames, overlap_frames)?;
    Ok(to_seams(g, spans.iter().flat_map(|s| [s.start, s.end]), len))
}

/// The seams of windows continued one after another (the "continue" joining): a window holds the frames
/// earlier windows drew and draws only those after them, so a new hand begins only where a window's own
/// frames begin, which is where the window before it ends.
pub fn continued_seams(
    g: &crate::model::ModelGeometry,
    frames: usize,
    window_frames: usize,
    overlap_frames: usize,
) -> Result<Vec<usize>, PlanError> {
    let (spans, len) = temporal_spans(g, frames, window_frames, overlap_frames)?;
    Ok(to_seams(g, spans.iter().map(|s| s.end), len))
}

/// The temporal windows' spans in latent frames, and the latent length.
fn temporal_spans(
    g: &crate::model::ModelGeometry,
    frames: usize,
    window_frames: usize,
    overlap_frames: usize,
) -> Result<(Vec<Span>, usize), PlanError> {
    let len = g.latent_frames(frames);
    let spans =
        plan_axis(Axis::Frames, len, g.latent_frames(window_frames), overlap_frames / g.temporal_factor, g.patch[0])?;
    Ok((spans, len))
}

/// Latent frames strictly inside `0..len`, sorted and deduplicated, as the first video frames decoded
/// from them.
fn to_seams(g: &crate::model::ModelGeometry, latent: impl Iterator<Item = usize>, len: usize) -> Vec<usize> {
    let mut changes: Vec<usize> = latent.filter(|&k| k > 0 && k < len).collect();
    changes.sort_unstable();
    changes.dedup();
    changes.into_iter().map(|k| g.video_frames(k)).collect()
}

/// Spans along one axis: the fewest windows that overlap by at least `overlap`, spread evenly from 0 to
/// `len - window` and snapped down to `align`. `axis` only names the axis in errors.
///
/// Snapping down can widen a gap by up to `align - 1`, so when it would break the overlap the count grows
/// by one until it holds; that terminates because `align` apart always works once `overlap <= window - align`.
pub fn plan_axis(axis: Axis, len: usize, window: usize, overlap: usize, align: usize) -> Result<Vec<Span>, PlanError> {
    if len == 0 {
        return Err(PlanError::ZeroLength { axis });
    }
    if window == 0 {
        return Err(PlanError::ZeroWindow { axis });
    }
    if align == 0 {
        return Err(PlanError::ZeroAlign { axis });
    }
    if !len.is_multiple_of(align) {
        return Err(PlanError::Misaligned { axis, what: "length", value: len, align });
    }
    if !window.is_multiple_of(align) {
        return Err(PlanError::Misaligned { axis, what: "window", value: window, align });
    }
    if len <= window {
        return Ok(vec![Span::new(0, len)]);
    }
    if overlap + align > window {
        return Err(PlanError::OverlapTooLarge { axis, len, window, overlap, align });
    }
    let travel = len - window;
    // Distinct aligned starts in [0, travel]; more windows than this would repeat one.
    let max_n = travel / align + 1;
    let first_n = (len - overlap).div_ceil(window - overlap);
    for n in first_n..=max_n {
        let spans: Vec<Span> = (0..n)
            .map(|i| {
                // round(i * travel / (n - 1)), half up, in integers so it is exact.
                let start = (2 * i * travel + (n - 1)) / (2 * (n - 1));
                let start = start - start % align;
                Span::new(start, start + window)
            })
            .collect();
        if spread_is_valid(&spans, len, overlap) {
            return Ok(spans);
        }
    }
    Err(PlanError::NoSpread { axis, len, window, overlap })
}

/// Covers [0, len) with strictly increasing starts and neighbours sharing at least `overlap`.
fn spread_is_valid(spans: &[Span], len: usize, overlap: usize) -> bool {
    let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
        return false;
    };
    first.start == 0
        && last.end == len
        && spans.windows(2).all(|pair| pair[0].start < pair[1].start && pair[0].end >= pair[1].start + overlap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(spans: &[Span]) -> Vec<usize> {
        spans.iter().map(|s| s.start).collect()
    }

    fn assert_valid(spans: &[Span], len: usize, window: usize, overlap: usize, align: usize) {
        assert!(spread_is_valid(spans, len, overlap), "{spans:?}");
        for s in spans {
            assert_eq!(s.len(), window.min(len));
            assert_eq!(s.start % align, 0, "{spans:?}");
        }
        for pair in spans.windows(2) {
            assert!(pair[0].overlap(&pair[1]) >= overlap, "{spans:?}");
        }
    }

    #[test]
    fn single_window_when_length_fits() {
        assert_eq!(plan_axis(Axis::Frames, 21, 21, 4, 1), Ok(vec![Span::new(0, 21)]));
        assert_eq!(plan_axis(Axis::Frames, 13, 21, 4, 1), Ok(vec![Span::new(0, 13)]));
        // Overlap is irrelevant with one window, even if it is larger than the window.
        assert_eq!(plan_axis(Axis::Rows, 8, 8, 8, 2), Ok(vec![Span::new(0, 8)]));
    }

    #[test]
    fn exact_fit_has_exact_overlap() {
        let spans = plan_axis(Axis::Frames, 20, 8, 2, 1).unwrap();
        assert_eq!(starts(&spans), vec![0, 6, 12]);
        assert_valid(&spans, 20, 8, 2, 1);
        let spans = plan_axis(Axis::Cols, 16, 8, 0, 2).unwrap();
        assert_eq!(starts(&spans), vec![0, 8]);
    }

    #[test]
    fn uneven_length_spreads_evenly() {
        // n = ceil(19 / 6) = 4, starts round(i * 13 / 3) = 0, 4.33, 8.67, 13.
        let spans = plan_axis(Axis::Frames, 21, 8, 2, 1).unwrap();
        assert_eq!(starts(&spans), vec![0, 4, 9, 13]);
        assert_valid(&spans, 21, 8, 2, 1);
        // 161 frames -> 41 latent frames in Wan-sized 21-frame windows: n = ceil(36 / 16) = 3.
        let spans = plan_axis(Axis::Frames, 41, 21, 5, 1).unwrap();
        assert_eq!(starts(&spans), vec![0, 10, 20]);
        assert_valid(&spans, 41, 21, 5, 1);
    }

    #[test]
    fn overlap_grows_beyond_request_when_spread() {
        let spans = plan_axis(Axis::Frames, 41, 21, 1, 1).unwrap();
        assert_eq!(starts(&spans), vec![0, 20]);
        assert_eq!(spans[0].overlap(&spans[1]), 1);
        let spans = plan_axis(Axis::Frames, 50, 21, 5, 1).unwrap();
        // n = ceil(45 / 16) = 3, starts 0, 14.5 -> 15, 29.
        assert_eq!(starts(&spans), vec![0, 15, 29]);
        assert_eq!((spans[0].overlap(&spans[1]), spans[1].overlap(&spans[2])), (6, 7));
    }

    #[test]
    fn many_lengths_cover_and_overlap() {
        for align in [1, 2] {
            for window in (align..=24).step_by(align) {
                for overlap in 0..=window.saturating_sub(align) {
                    for len in (align..=120).step_by(align) {
                        let spans = plan_axis(Axis::Rows, len, window, overlap, align)
                            .unwrap_or_else(|e| panic!("len {len} window {window} overlap {overlap}: {e}"));
                        assert_valid(&spans, len, window, overlap, align);
                        if len > window {
                            let n = (len - overlap).div_ceil(window - overlap);
                            assert!(spans.len() >= n, "fewer windows than the overlap allows");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn snapping_to_align_adds_a_window_when_needed() {
        // n = ceil(19 / 5) = 4 gives starts 0, 4.67, 9.33, 14 -> 4, 8 after snapping: the last gap is 6 and
        // the overlap only 2, so a fifth window is needed.
        let spans = plan_axis(Axis::Cols, 22, 8, 3, 2).unwrap();
        assert_eq!(spans.len(), 5);
        assert_valid(&spans, 22, 8, 3, 2);
    }

    #[test]
    fn alignment_is_respected() {
        let spans = plan_axis(Axis::Rows, 60, 16, 4, 2).unwrap();
        assert_valid(&spans, 60, 16, 4, 2);
        assert!(spans.iter().all(|s| s.start % 2 == 0 && s.end % 2 == 0));
    }

    #[test]
    fn errors_name_the_axis() {
        assert_eq!(plan_axis(Axis::Frames, 0, 8, 2, 1), Err(PlanError::ZeroLength { axis: Axis::Frames }));
        assert_eq!(plan_axis(Axis::Rows, 10, 0, 0, 2), Err(PlanError::ZeroWindow { axis: Axis::Rows }));
        assert_eq!(plan_axis(Axis::Cols, 10, 4, 0, 0), Err(PlanError::ZeroAlign { axis: Axis::Cols }));
        assert_eq!(
            plan_axis(Axis::Rows, 11, 4, 0, 2),
            Err(PlanError::Misaligned { axis: Axis::Rows, what: "length", value: 11, align: 2 })
        );
        assert_eq!(
            plan_axis(Axis::Cols, 12, 5, 0, 2),
            Err(PlanError::Misaligned { axis: Axis::Cols, what: "window", value: 5, align: 2 })
        );
        assert_eq!(
            plan_axis(Axis::Frames, 20, 8, 8, 1),
            Err(PlanError::OverlapTooLarge { axis: Axis::Frames, len: 20, window: 8, overlap: 8, align: 1 })
        );
        assert!(matches!(plan_axis(Axis::Cols, 20, 8, 7, 2), Err(PlanError::OverlapTooLarge { .. })));
        let msg = plan_axis(Axis::Cols, 12, 5, 0, 2).unwrap_err().to_string();
        assert!(msg.starts_with("cols:"), "{msg}");
        let msg = plan_axis(Axis::Frames, 0, 5, 0, 1).unwrap_err().to_string();
        assert!(msg.starts_with("frames:"), "{msg}");
    }

    fn request(shape: [usize; 4], window: [usize; 3], overlap: [usize; 3], align: [usize; 3]) -> PlanRequest {
        let [channels, frames, height, width] = shape;
        PlanRequest { shape: LatentShape { channels, frames, height, width }, window, overlap, align }
    }

    #[test]
    fn temporal_only_plan() {
        let plan = plan_windows(&request([16, 21, 60, 104], [8, 60, 104], [2, 0, 0], [1, 2, 2])).unwrap();
        assert_eq!(plan.len(), 4);
        for (i, w) in plan.windows.iter().enumerate() {
            assert_eq!(w.index, i);
            assert_eq!(w.bbox.rows, Span::new(0, 60));
            assert_eq!(w.bbox.cols, Span::new(0, 104));
        }
        let frame_starts: Vec<usize> = plan.windows.iter().map(|w| w.bbox.frames.start).collect();
        assert_eq!(frame_starts, vec![0, 4, 9, 13]);
    }

    #[test]
    fn spatial_tiles_are_row_major_within_a_frame_span() {
        let plan = plan_windows(&request([4, 5, 12, 12], [8, 8, 8], [0, 4, 4], [1, 2, 2])).unwrap();
        assert_eq!(plan.len(), 4);
        let corners: Vec<(usize, usize)> =
            plan.windows.iter().map(|w| (w.bbox.rows.start, w.bbox.cols.start)).collect();
        assert_eq!(corners, vec![(0, 0), (0, 4), (4, 0), (4, 4)]);
    }

    #[test]
    fn three_axis_plan_is_frames_major() {
        let plan = plan_windows(&request([2, 20, 12, 16], [8, 8, 8], [2, 4, 0], [1, 2, 2])).unwrap();
        // frames: 0, 6, 12; rows: 0, 4; cols: 0, 8.
        assert_eq!(plan.len(), 3 * 2 * 2);
        let f = [0, 6, 12];
        let r = [0, 4];
        let c = [0, 8];
        let mut i = 0;
        for &fs in &f {
            for &rs in &r {
                for &cs in &c {
                    let w = &plan.windows[i];
                    assert_eq!(w.index, i);
                    assert_eq!((w.bbox.frames.start, w.bbox.rows.start, w.bbox.cols.start), (fs, rs, cs));
                    assert_eq!(w.bbox.area(), 8 * 8 * 8);
                    i += 1;
                }
            }
        }
    }

    #[test]
    fn plan_errors_name_the_failing_axis() {
        let err = plan_windows(&request([16, 21, 61, 104], [8, 60, 104], [2, 0, 0], [1, 2, 2])).unwrap_err();
        assert_eq!(err, PlanError::Misaligned { axis: Axis::Rows, what: "length", value: 61, align: 2 });
        let err = plan_windows(&request([0, 21, 60, 104], [8, 60, 104], [2, 0, 0], [1, 2, 2])).unwrap_err();
        assert_eq!(err, PlanError::ZeroChannels);
        let err = plan_windows(&request([16, 21, 60, 104], [8, 60, 104], [2, 0, 0], [1, 2, 0])).unwrap_err();
        assert_eq!(err, PlanError::ZeroAlign { axis: Axis::Cols });
    }

    #[test]
    fn shapes_report_lengths() {
        let shape = LatentShape { channels: 16, frames: 21, height: 60, width: 104 };
        assert_eq!(shape.len(), 16 * 21 * 60 * 104);
        assert_eq!(shape.dims(), [16, 21, 60, 104]);
        assert_eq!(Span::new(3, 10).len(), 7);
        assert_eq!(Span::new(3, 10).overlap(&Span::new(8, 20)), 2);
        assert_eq!(Span::new(3, 10).overlap(&Span::new(10, 20)), 0);
    }
}

#[cfg(test)]
mod seam_tests {
    use super::*;
    use crate::model::ModelGeometry;

    #[test]
    fn seams_are_where_windows_begin_and_end() {
        let g = ModelGeometry::tiny();
        // 77 frames = 20 latent frames; windows of 5 latent frames with no overlap: 0..5, 5..10, ...
        assert_eq!(temporal_seams(&g, 77, 17, 0).unwrap(), vec![17, 37, 57]);
        // Overlap of 2 latent frames: windows start every 3 (0, 3, ..., 15); each begins and ends inside.
        let seams = temporal_seams(&g, 77, 17, 8).unwrap();
        assert_eq!(seams.first(), Some(&9), "{seams:?}");
        assert!(seams.windows(2).all(|w| w[0] < w[1]) && seams.iter().all(|&s| s > 0 && s < 77), "{seams:?}");
        // One window: no seams.
        assert!(temporal_seams(&g, 17, 17, 4).unwrap().is_empty());
    }

    #[test]
    fn continued_seams_are_where_each_windows_own_frames_begin() {
        let g = ModelGeometry::tiny();
        // Windows 0..5, 3..8, ..., 15..20: the windows' own frames begin at latent 5, 8, 11, 14, 17.
        let video = |k: usize| g.video_frames(k);
        assert_eq!(continued_seams(&g, 77, 17, 8).unwrap(), [5, 8, 11, 14, 17].map(video));
        // Every continued seam is also a seam of the fused joinings; with no overlap they are the same.
        let all = temporal_seams(&g, 77, 17, 8).unwrap();
        assert!(continued_seams(&g, 77, 17, 8).unwrap().iter().all(|s| all.contains(s)));
        assert_eq!(continued_seams(&g, 77, 17, 0).unwrap(), temporal_seams(&g, 77, 17, 0).unwrap());
        assert!(continued_seams(&g, 17, 17, 4).unwrap().is_empty());
    }
}
