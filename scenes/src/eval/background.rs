//! Estimates the background: plain or two-tone, one colour per region per frame.
//!
//! The scenes' backgrounds are flat (one colour, or two halves), so the model is piecewise constant:
//! the layout and split line come from the per-pixel temporal median (moving objects drop out of
//! it), and each frame gets its own region colours, so a background that drifts or flickers (as a
//! small generative model's may, notably at window seams) is followed rather than flagged.

use super::stats::{distance, median, median_of};
use crate::video::Video;
use serde::Serialize;

/// Pixels this far (RGB) from their background count as disagreeing with it; far above codec noise,
/// far below the contrast the palette guarantees between objects and backgrounds.
const AGREEMENT: f64 = 30.0;
/// A split must explain at least this share of the pixels better than a plain background does.
const SPLIT_GAIN: f64 = 0.05;
/// Half-width of the band around a split where blended colours count as background, in reference
/// pixels: codecs and generative models blur the edge between the two halves.
const SPLIT_BAND: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Layout {
    Plain,
    /// Rows above `at` are the first region.
    TopBottom {
        at: usize,
    },
    /// Columns left of `at` are the first region.
    LeftRight {
        at: usize,
    },
}

pub(super) struct BackgroundModel {
    pub layout: Layout,
    /// Per frame, the colour of each region (the second unused when plain).
    colours: Vec<[[f64; 3]; 2]>,
    band: f64,
}

impl BackgroundModel {
    pub fn estimate(video: &Video) -> BackgroundModel {
        let still = temporal_median(video);
        let (w, h) = (video.width, video.height);
        let band = SPLIT_BAND * w.min(h) as f64 / crate::scene::REFERENCE_SIZE;
        // Median colour of each row and column of the still image: a region's colour is then the
        // median of its rows' (or columns') medians, cheap enough to try every split.
        let rows: Vec<[f64; 3]> = (0..h).map(|y| channel_medians((0..w).map(|x| still[y * w + x]))).collect();
        let columns: Vec<[f64; 3]> = (0..w).map(|x| channel_medians((0..h).map(|y| still[y * w + x]))).collect();
        let plain = channel_medians(rows.iter().copied());
        let mut best = (Layout::Plain, disagreement(&still, w, Layout::Plain, [plain, plain]));
        let needed = (SPLIT_GAIN * (w * h) as f64) as usize;
        let candidates = (h / 4..=3 * h / 4)
            .map(|at| (Layout::TopBottom { at }, &rows, at))
            .chain((w / 4..=3 * w / 4).map(|at| (Layout::LeftRight { at }, &columns, at)));
        for (layout, profile, at) in candidates {
            let halves =
                [channel_medians(profile[..at].iter().copied()), channel_medians(profile[at..].iter().copied())];
            // Halves of the same colour explain nothing a plain background does not.
            if distance(halves[0], halves[1]) < AGREEMENT {
                continue;
            }
            let cost = disagreement(&still, w, layout, halves);
            if cost + needed < best.1 || (cost < best.1 && best.0 != Layout::Plain) {
                best = (layout, cost);
            }
        }
        let layout = best.0;
        let colours = (0..video.frames).map(|f| frame_colours(video, f, &still, layout)).collect();
        BackgroundModel { layout, colours, band }
    }

    /// The region colours of frame `f` (one for a plain background).
    pub fn colours(&self, f: usize) -> Vec<[f64; 3]> {
        let count = if self.layout == Layout::Plain { 1 } else { 2 };
        self.colours[f][..count].to_vec()
    }

    /// The background colour expected at a pixel.
    pub fn colour_at(&self, f: usize, y: usize, x: usize) -> [f64; 3] {
        self.colours[f][region(self.layout, y, x)]
    }

    /// How far a pixel's colour is from the background there. Near a split, any blend of the two
    /// region colours is background too, so the distance is to the segment between them.
    pub fn distance(&self, f: usize, y: usize, x: usize, rgb: [f64; 3]) -> f64 {
        let offset = match self.layout {
            Layout::Plain => return distance(rgb, self.colours[f][0]),
            Layout::TopBottom { at } => (y as f64 + 0.5 - at as f64).abs(),
            Layout::LeftRight { at } => (x as f64 + 0.5 - at as f64).abs(),
        };
        let [a, b] = self.colours[f];
        if offset > self.band {
            return distance(rgb, self.colours[f][region(self.layout, y, x)]);
        }
        let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let length = ab.iter().map(|v| v * v).sum::<f64>();
        let along = (0..3).map(|i| (rgb[i] - a[i]) * ab[i]).sum::<f64>();
        let t = if length > 0.0 { (along / length).clamp(0.0, 1.0) } else { 0.0 };
        distance(rgb, [a[0] + t * ab[0], a[1] + t * ab[1], a[2] + t * ab[2]])
    }
}

/// Which region (0: top or left, 1: bottom or right) a pixel belongs to.
fn region(layout: Layout, y: usize, x: usize) -> usize {
    match layout {
        Layout::Plain => 0,
        Layout::TopBottom { at } => usize::from(y >= at),
        Layout::LeftRight { at } => usize::from(x >= at),
    }
}

/// Per pixel and channel, the median over frames: what stays put, i.e. the background wherever
/// objects move on within half the clip.
fn temporal_median(video: &Video) -> Vec<[f64; 3]> {
    let pixels = video.width * video.height;
    let mut values = Vec::with_capacity(video.frames);
    (0..pixels)
        .map(|p| {
            [0, 1, 2].map(|c| {
                values.clear();
                values.extend((0..video.frames).map(|f| f64::from(video.frame(f)[p * 3 + c])));
                median(&mut values).unwrap_or(0.0)
            })
        })
        .collect()
}

/// The per-channel median of some colours.
fn channel_medians(colours: impl Iterator<Item = [f64; 3]> + Clone) -> [f64; 3] {
    [0, 1, 2].map(|c| median_of(colours.clone().map(|rgb| rgb[c])).unwrap_or(0.0))
}

/// How many pixels of the still image a layout with these region colours fails to explain.
fn disagreement(still: &[[f64; 3]], w: usize, layout: Layout, colours: [[f64; 3]; 2]) -> usize {
    (0..still.len()).filter(|&p| distance(still[p], colours[region(layout, p / w, p % w)]) > AGREEMENT).count()
}

/// A frame's region colours: the median of its pixels that agree with the still image, i.e. that no
/// object covers in this frame; all of the region's pixels when too few agree (a drifting background).
fn frame_colours(video: &Video, f: usize, still: &[[f64; 3]], layout: Layout) -> [[f64; 3]; 2] {
    let w = video.width;
    let frame: Vec<[f64; 3]> =
        video.frame(f).chunks_exact(3).map(|px| [f64::from(px[0]), f64::from(px[1]), f64::from(px[2])]).collect();
    [0, 1].map(|wanted| {
        let members: Vec<usize> = (0..frame.len()).filter(|&p| region(layout, p / w, p % w) == wanted).collect();
        let agreeing: Vec<usize> =
            members.iter().copied().filter(|&p| distance(frame[p], still[p]) < AGREEMENT).collect();
        let chosen = if agreeing.len() * 4 >= members.len() { agreeing } else { members };
        [0, 1, 2].map(|c| median_of(chosen.iter().map(|&p| frame[p][c])).unwrap_or(0.0))
    })
}
