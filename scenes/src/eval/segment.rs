//! Finds the objects in one frame: pixels far from the background, cleaned up, grouped into blobs.

use super::background::BackgroundModel;
use super::stats::median;
use crate::video::Video;

/// The lowest foreground threshold (RGB distance): several times H.264's colour error, well below
/// the palette's object-to-background contrast (at least 100).
const MIN_THRESHOLD: f64 = 40.0;
/// The highest: a noisy background may raise the threshold, but never past what hides objects.
const MAX_THRESHOLD: f64 = 70.0;
/// Blobs smaller than this many pixels at reference size are noise, not objects (the smallest
/// object covers about 100).
const MIN_AREA: f64 = 8.0;

/// One frame's foreground split into blobs: `labels[p]` is the blob of pixel `p`, if any.
pub(super) struct Segmentation {
    pub labels: Vec<Option<usize>>,
    /// Pixel indices of each blob.
    pub blobs: Vec<Vec<usize>>,
}

/// The foreground threshold for a video: the background's own noise (the median pixel's distance
/// from the model, which is a background pixel's) times four, kept within the fixed bounds.
pub(super) fn threshold(video: &Video, background: &BackgroundModel) -> f64 {
    let mut distances = Vec::with_capacity(video.frames * video.width * video.height);
    for f in 0..video.frames {
        for (p, px) in video.frame(f).chunks_exact(3).enumerate() {
            let rgb = [f64::from(px[0]), f64::from(px[1]), f64::from(px[2])];
            distances.push(background.distance(f, p / video.width, p % video.width, rgb));
        }
    }
    let noise = median(&mut distances).unwrap_or(0.0);
    (4.0 * noise).clamp(MIN_THRESHOLD, MAX_THRESHOLD)
}

/// Thresholds a frame against the background, removes specks and hairlines with a 3×3 opening, and
/// labels 8-connected blobs, dropping those too small to be an object.
pub(super) fn segment(video: &Video, f: usize, background: &BackgroundModel, threshold: f64) -> Segmentation {
    let (w, h) = (video.width, video.height);
    let frame = video.frame(f);
    let mask: Vec<bool> = (0..w * h)
        .map(|p| {
            let rgb = [f64::from(frame[p * 3]), f64::from(frame[p * 3 + 1]), f64::from(frame[p * 3 + 2])];
            background.distance(f, p / w, p % w, rgb) > threshold
        })
        .collect();
    let opened = dilate(&erode(&mask, w, h), w, h);
    let min_area = (MIN_AREA * (w.min(h) as f64 / crate::scene::REFERENCE_SIZE).powi(2)).ceil() as usize;
    let mut labels = vec![None; w * h];
    let mut visited = vec![false; w * h];
    let mut blobs = Vec::new();
    for start in 0..w * h {
        if !opened[start] || visited[start] {
            continue;
        }
        let blob = flood(&opened, &mut visited, start, w, h);
        if blob.len() >= min_area {
            for &p in &blob {
                labels[p] = Some(blobs.len());
            }
            blobs.push(blob);
        }
    }
    Segmentation { labels, blobs }
}

/// The in-frame 3×3 neighbourhood of a pixel, itself included.
pub(super) fn neighbours(p: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = ((p % w) as isize, (p / w) as isize);
    (-1..=1).flat_map(move |dy| {
        (-1..=1).filter_map(move |dx| {
            let (nx, ny) = (x + dx, y + dy);
            (nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h).then(|| ny as usize * w + nx as usize)
        })
    })
}

/// Keeps a pixel when its whole in-frame neighbourhood is set: the frame edge does not erode, so an
/// object touching it keeps its size.
fn erode(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    (0..w * h).map(|p| mask[p] && neighbours(p, w, h).all(|q| mask[q])).collect()
}

fn dilate(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    (0..w * h).map(|p| neighbours(p, w, h).any(|q| mask[q])).collect()
}

/// Collects the 8-connected blob around `start`, marking its pixels visited.
fn flood(mask: &[bool], visited: &mut [bool], start: usize, w: usize, h: usize) -> Vec<usize> {
    let mut blob = Vec::new();
    let mut stack = vec![start];
    visited[start] = true;
    while let Some(p) = stack.pop() {
        blob.push(p);
        for q in neighbours(p, w, h) {
            if mask[q] && !visited[q] {
                visited[q] = true;
                stack.push(q);
            }
        }
    }
    blob
}
