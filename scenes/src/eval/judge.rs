//! Names what a track shows: its colour, shape, direction and speed.

use super::measure::Detection;
use super::stats::median_of;
use super::track::Track;
use crate::palette::Colour;
use crate::scene::{Direction, Shape, Speed, REFERENCE_SIZE};
use serde::{Serialize, Serializer};

/// Below this vertical skewness an object is an upright triangle (-0.57; circles and squares have 0).
const TRIANGLE_SKEW: f64 = -0.28;
/// Above this fill of its box, an object is a square (1) rather than a circle (π/4 ≈ 0.79).
const SQUARE_FILL: f64 = 0.89;
/// Slower than this (px per frame at reference size, net along the axis of motion) is standing still:
/// a third of "slowly", far above the centroid jitter of a compressed still object.
const STILL: f64 = 0.25;
/// Between the two speeds (0.75 and 1.5 px per frame at reference size), at their geometric mean.
const QUICK: f64 = 1.06;
/// An object whose thresholded box comes this close to the frame's edge (px at reference size) may
/// be bouncing off it. Generous, because thresholding and blur trim thin parts such as a triangle's apex.
const EDGE: f64 = 6.0;

/// What one tracked object looks like over the clip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observed {
    /// Frames the object was detected in.
    pub frames_seen: usize,
    /// Per-channel median over frames of the object's mean colour.
    pub mean_rgb: [f64; 3],
    pub colour: Colour,
    /// Medians over the frames where the object keeps off the frame's edge (see [`Detection`]); they
    /// decide `shape`.
    pub fill: f64,
    pub skew: f64,
    pub shape: Shape,
    /// The direction it starts moving in; "still" when it barely moves.
    #[serde(serialize_with = "direction_or_still")]
    pub direction: Option<Direction>,
    /// Pixels per frame along the axis of motion: the median of the absolute slopes between all
    /// pairs of frames on the same side of a bounce.
    pub speed_px_per_frame: f64,
    /// `None` when still.
    pub speed: Option<Speed>,
}

fn direction_or_still<S: Serializer>(direction: &Option<Direction>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(direction.map_or("still", Direction::name))
}

/// Describes a track; `None` when it has no detections.
pub(super) fn observe(track: &Track, frames: &[Vec<Detection>], width: usize, height: usize) -> Option<Observed> {
    let seen: Vec<(usize, &Detection)> =
        track.members.iter().enumerate().filter_map(|(f, m)| m.map(|d| (f, &frames[f][d]))).collect();
    if seen.is_empty() {
        return None;
    }
    let mean_rgb = [0, 1, 2].map(|c| median_of(seen.iter().map(|(_, d)| d.mean_rgb[c])).unwrap_or(0.0));
    let whole: Vec<&Detection> = seen.iter().map(|(_, d)| *d).filter(|d| !d.touches_edge).collect();
    let shaped = if whole.is_empty() { seen.iter().map(|(_, d)| *d).collect() } else { whole };
    let fill = median_of(shaped.iter().map(|d| d.fill)).unwrap_or(0.0);
    let skew = median_of(shaped.iter().map(|d| d.skew)).unwrap_or(0.0);
    let shape = if skew < TRIANGLE_SKEW {
        Shape::Triangle
    } else if fill > SQUARE_FILL {
        Shape::Square
    } else {
        Shape::Circle
    };
    let scale = width.min(height) as f64 / REFERENCE_SIZE;
    let (direction, speed_px_per_frame) = motion(&seen, [width, height], scale);
    let speed = direction.map(|_| if speed_px_per_frame > QUICK * scale { Speed::Quickly } else { Speed::Slowly });
    Some(Observed {
        frames_seen: seen.len(),
        mean_rgb,
        colour: Colour::nearest(mean_rgb),
        fill,
        skew,
        shape,
        direction,
        speed_px_per_frame,
        speed,
    })
}

/// The starting direction and the speed along the axis of larger total motion.
///
/// Velocities are Theil–Sen slopes (the median of the slopes between all pairs of frames), which
/// shrug off a frame or two where a codec froze the object or a detection jittered. Objects bounce,
/// so the direction is read before the first bounce: a frame near an edge of the axis where the
/// motion before and after it has opposite signs.
fn motion(seen: &[(usize, &Detection)], extents: [usize; 2], scale: f64) -> (Option<Direction>, f64) {
    if seen.len() < 2 {
        return (None, 0.0);
    }
    let total =
        |axis: usize| seen.windows(2).map(|w| (w[1].1.centroid[axis] - w[0].1.centroid[axis]).abs()).sum::<f64>();
    let axis = if total(0) >= total(1) { 0 } else { 1 };
    let points: Vec<(f64, f64)> = seen.iter().map(|(f, d)| (*f as f64, d.centroid[axis])).collect();

    let (margin, still) = (EDGE * scale, STILL * scale);
    let near_edge = |d: &Detection| {
        let (low, high) = (d.bbox[axis] as f64, d.bbox[axis + 2] as f64);
        low <= margin || high >= extents[axis] as f64 - margin
    };
    let bounce = (1..points.len() - 1).filter(|&k| near_edge(seen[k].1)).find(|&k| {
        let (before, after) = (slope(&points[..=k]), slope(&points[k..]));
        before.abs() >= still && after.abs() >= still && (before > 0.0) != (after > 0.0)
    });
    let (velocity, speed) = match bounce {
        Some(k) => {
            let pooled = pair_slopes(&points[..=k]).chain(pair_slopes(&points[k..]));
            (slope(&points[..=k]), median_of(pooled.map(f64::abs)).unwrap_or(0.0))
        }
        None => (slope(&points), median_of(pair_slopes(&points).map(f64::abs)).unwrap_or(0.0)),
    };
    if velocity.abs() < still {
        return (None, speed);
    }
    let direction = match (axis, velocity > 0.0) {
        (0, true) => Direction::Right,
        (0, false) => Direction::Left,
        (_, true) => Direction::Down,
        (_, false) => Direction::Up,
    };
    (Some(direction), speed)
}

/// Slopes between every pair of `(frame, position)` points.
fn pair_slopes(points: &[(f64, f64)]) -> impl Iterator<Item = f64> + '_ {
    points
        .iter()
        .enumerate()
        .flat_map(move |(i, &(f0, p0))| points[i + 1..].iter().map(move |&(f1, p1)| (p1 - p0) / (f1 - f0)))
}

/// The Theil–Sen slope: the median of the pairwise slopes.
fn slope(points: &[(f64, f64)]) -> f64 {
    median_of(pair_slopes(points)).unwrap_or(0.0)
}
