//! Temporal consistency: how much the main object and the whole frame change from one frame to the
//! next, and whether they change more across the seams between separately rendered windows.
//!
//! A smooth video changes by about the same amount every frame (an object gliding at constant speed
//! moves the same distance each time), so the typical change is the yardstick: a seam is judged by
//! its change over the median change elsewhere, and a ratio near 1 means the seam does not show.

use super::measure::Detection;
use super::stats::{distance, max, median, median_of};
use crate::video::Video;
use serde::Serialize;

/// Floors for both sides of the seam ratios, so that a quantity that barely changes anywhere (colour
/// under good compression, size of a rigid object) gives a ratio of 1 rather than a ratio of noise.
/// Position is in pixels at reference size; size is relative; colour in RGB units; frame difference
/// in mean absolute byte difference.
const FLOOR_POSITION: f64 = 0.25;
const FLOOR_SIZE: f64 = 0.02;
const FLOOR_COLOUR: f64 = 3.0;
const FLOOR_FRAME: f64 = 0.5;

/// Median and maximum of a change over the frame pairs where it can be measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Change {
    pub median: f64,
    pub max: f64,
}

/// Frame-to-frame changes over the whole clip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Consistency {
    /// Movement of the main object's centroid, in pixels.
    pub position_px: Option<Change>,
    /// Change of its area relative to the larger of the two.
    pub size_relative: Option<Change>,
    /// Change of its mean colour (RGB distance).
    pub colour_rgb: Option<Change>,
    /// Mean absolute difference of all pixel bytes, object or not.
    pub frame_difference: Option<Change>,
}

/// One quantity at the seams against elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeamChange {
    /// The change across each seam, in the order of [`SeamReport::seams`].
    pub per_seam: Vec<Option<f64>>,
    /// Mean change over the seam pairs where it can be measured.
    pub at_seams: f64,
    /// Median change over all other pairs.
    pub elsewhere: f64,
    /// `max(at_seams, floor) / max(elsewhere, floor)`: about 1 when the seams do not show.
    pub ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeamReport {
    /// The seams used: frame indices `s` with the seam between frames `s - 1` and `s`.
    pub seams: Vec<usize>,
    pub position_px: Option<SeamChange>,
    pub size_relative: Option<SeamChange>,
    pub colour_rgb: Option<SeamChange>,
    pub frame_difference: Option<SeamChange>,
    /// Geometric mean of the ratios above: a jump in any of them raises it, while the noise of
    /// the individual ratios averages out.
    pub combined_ratio: Option<f64>,
}

/// Per frame pair `(i, i + 1)`, each quantity's change (`None` where the object is missing).
pub(super) struct Changes {
    position: Vec<Option<f64>>,
    size: Vec<Option<f64>>,
    colour: Vec<Option<f64>>,
    frame: Vec<Option<f64>>,
    scale: f64,
}

impl Changes {
    /// `track[f]` is the main object's detection in frame `f`, if any.
    pub fn measure(video: &Video, track: &[Option<&Detection>]) -> Changes {
        let pairs = video.frames.saturating_sub(1);
        let both = |i: usize| track[i].zip(track[i + 1]);
        Changes {
            position: (0..pairs)
                .map(|i| both(i).map(|(a, b)| (b.centroid[0] - a.centroid[0]).hypot(b.centroid[1] - a.centroid[1])))
                .collect(),
            size: (0..pairs).map(|i| both(i).map(|(a, b)| (b.area - a.area).abs() / a.area.max(b.area))).collect(),
            colour: (0..pairs).map(|i| both(i).map(|(a, b)| distance(a.mean_rgb, b.mean_rgb))).collect(),
            frame: (0..pairs).map(|i| Some(mean_abs_difference(video.frame(i), video.frame(i + 1)))).collect(),
            scale: video.width.min(video.height) as f64 / crate::scene::REFERENCE_SIZE,
        }
    }

    pub fn summary(&self) -> Consistency {
        Consistency {
            position_px: change(&self.position),
            size_relative: change(&self.size),
            colour_rgb: change(&self.colour),
            frame_difference: change(&self.frame),
        }
    }

    /// Compares the seam pairs with the others; seams outside `1..frames` are ignored.
    pub fn seams(&self, seams: &[usize]) -> SeamReport {
        let mut valid: Vec<usize> = seams.iter().copied().filter(|&s| s >= 1 && s <= self.frame.len()).collect();
        valid.sort_unstable();
        valid.dedup();
        let compare = |series: &[Option<f64>], floor: f64| seam_change(series, &valid, floor);
        let report = SeamReport {
            position_px: compare(&self.position, FLOOR_POSITION * self.scale),
            size_relative: compare(&self.size, FLOOR_SIZE),
            colour_rgb: compare(&self.colour, FLOOR_COLOUR),
            frame_difference: compare(&self.frame, FLOOR_FRAME),
            combined_ratio: None,
            seams: valid,
        };
        let ratios: Vec<f64> =
            [&report.position_px, &report.size_relative, &report.colour_rgb, &report.frame_difference]
                .into_iter()
                .flatten()
                .map(|c| c.ratio.max(1e-6))
                .collect();
        let combined_ratio =
            (!ratios.is_empty()).then(|| (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp());
        SeamReport { combined_ratio, ..report }
    }
}

fn change(series: &[Option<f64>]) -> Option<Change> {
    let mut values: Vec<f64> = series.iter().flatten().copied().collect();
    let max = max(&values)?;
    Some(Change { median: median(&mut values)?, max })
}

/// `series[i]` is the change from frame `i` to `i + 1`, so seam `s` is `series[s - 1]`.
fn seam_change(series: &[Option<f64>], seams: &[usize], floor: f64) -> Option<SeamChange> {
    let per_seam: Vec<Option<f64>> = seams.iter().map(|&s| series[s - 1]).collect();
    let measured: Vec<f64> = per_seam.iter().flatten().copied().collect();
    if measured.is_empty() {
        return None;
    }
    let at_seams = measured.iter().sum::<f64>() / measured.len() as f64;
    let elsewhere =
        median_of(series.iter().enumerate().filter(|(i, _)| !seams.contains(&(i + 1))).filter_map(|(_, v)| *v))?;
    Some(SeamChange { per_seam, at_seams, elsewhere, ratio: at_seams.max(floor) / elsewhere.max(floor) })
}

fn mean_abs_difference(a: &[u8], b: &[u8]) -> f64 {
    let total: u64 = a.iter().zip(b).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
    total as f64 / a.len().max(1) as f64
}
