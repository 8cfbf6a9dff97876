//! Measures one blob: where it is, how big, what colour, and the two numbers that tell shapes apart.
//!
//! Measurements use soft coverage rather than the thresholded mask: each pixel near the blob gets an
//! alpha in [0, 1] by projecting its colour onto the line from the background to the object colour.
//! Sums of alpha are sub-pixel accurate on antialiased edges and are preserved by blur (which moves
//! coverage around but keeps its total), so the shape features, built from sums and moments rather
//! than from extremes or thresholds, hold for codec-smeared, noisy and soft generated edges alike.

use super::background::BackgroundModel;
use super::segment::{neighbours, Segmentation};
use crate::video::Video;
use serde::Serialize;

/// How far around a blob's box soft coverage is gathered, in pixels: enough for blurred edges.
const MARGIN: usize = 2;
/// Alphas below this are codec noise around the edge, not coverage.
const ALPHA_FLOOR: f64 = 0.1;

/// One object found in one frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Coverage-weighted centre `[x, y]` in pixels from the top-left corner of the frame.
    pub centroid: [f64; 2],
    /// Area in pixels, partly covered pixels counted by their coverage.
    pub area: f64,
    /// Mean colour of the blob's interior (its edge pixels are blended with the background).
    pub mean_rgb: [f64; 3],
    /// Bounding box of the thresholded blob: `[x0, y0, x1, y1]`, ends exclusive.
    pub bbox: [usize; 4],
    /// Area over the product of the longest column and the longest row (each summed over its
    /// coverage): square 1, circle π/4, upright triangle 1/2.
    pub fill: f64,
    /// Skewness of the coverage along y: 0 for a circle or square, -2√2/5 ≈ -0.57 for an upright
    /// triangle, whose coverage piles up at its base and thins out towards its apex.
    pub skew: f64,
    /// Whether the blob reaches the frame's edge, where its shape may be cut off.
    pub touches_edge: bool,
}

/// Measures blob `blob` of frame `f`: soft coverage is gathered around the blob's box, skipping
/// pixels that belong to other blobs.
pub(super) fn measure(
    video: &Video,
    f: usize,
    background: &BackgroundModel,
    seg: &Segmentation,
    blob: usize,
) -> Detection {
    let (w, h) = (video.width, video.height);
    let frame = video.frame(f);
    let rgb_at = |p: usize| [f64::from(frame[p * 3]), f64::from(frame[p * 3 + 1]), f64::from(frame[p * 3 + 2])];
    let pixels = &seg.blobs[blob];
    let mine = |p: usize| seg.labels[p] == Some(blob);

    let interior: Vec<usize> = pixels.iter().copied().filter(|&p| neighbours(p, w, h).all(mine)).collect();
    let core = if interior.len() >= 3 { &interior } else { pixels };
    let mut mean_rgb = [0.0; 3];
    for &p in core {
        let rgb = rgb_at(p);
        (0..3).for_each(|c| mean_rgb[c] += rgb[c] / core.len() as f64);
    }

    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for &p in pixels {
        let (x, y) = (p % w, p / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
    }
    let (rx0, ry0) = (x0.saturating_sub(MARGIN), y0.saturating_sub(MARGIN));
    let (rx1, ry1) = ((x1 + MARGIN).min(w), (y1 + MARGIN).min(h));
    let (rw, rh) = (rx1 - rx0, ry1 - ry0);
    let mut column_mass = vec![0.0f64; rw];
    let mut row_mass = vec![0.0f64; rh];
    let mut alphas = Vec::with_capacity(rw * rh);
    for y in ry0..ry1 {
        for x in rx0..rx1 {
            let p = y * w + x;
            // Pixels of another blob belong to another object.
            if seg.labels[p].is_some_and(|other| other != blob) {
                continue;
            }
            let alpha = coverage(rgb_at(p), background.colour_at(f, y, x), mean_rgb, mine(p));
            column_mass[x - rx0] += alpha;
            row_mass[y - ry0] += alpha;
            alphas.push((x as f64 + 0.5, y as f64 + 0.5, alpha));
        }
    }
    let area = alphas.iter().map(|a| a.2).sum::<f64>().max(f64::MIN_POSITIVE);
    let cx = alphas.iter().map(|a| a.2 * a.0).sum::<f64>() / area;
    let cy = alphas.iter().map(|a| a.2 * a.1).sum::<f64>() / area;
    let moment = |k: i32| alphas.iter().map(|a| a.2 * (a.1 - cy).powi(k)).sum::<f64>() / area;
    let longest = |mass: &[f64]| mass.iter().copied().fold(0.0, f64::max);
    Detection {
        centroid: [cx, cy],
        area,
        mean_rgb,
        bbox: [x0, y0, x1, y1],
        fill: area / (longest(&column_mass) * longest(&row_mass)).max(1e-9),
        skew: moment(3) / moment(2).powf(1.5).max(1e-9),
        touches_edge: x0 == 0 || y0 == 0 || x1 == w || y1 == h,
    }
}

/// How much of a pixel the object covers, from where its colour lies between background and object.
fn coverage(rgb: [f64; 3], background: [f64; 3], object: [f64; 3], in_blob: bool) -> f64 {
    let span: [f64; 3] = [0, 1, 2].map(|c| object[c] - background[c]);
    let length = span.iter().map(|v| v * v).sum::<f64>();
    if length < 1.0 {
        return if in_blob { 1.0 } else { 0.0 };
    }
    let alpha = ((0..3).map(|c| (rgb[c] - background[c]) * span[c]).sum::<f64>() / length).clamp(0.0, 1.0);
    if alpha < ALPHA_FLOOR {
        0.0
    } else {
        alpha
    }
}
