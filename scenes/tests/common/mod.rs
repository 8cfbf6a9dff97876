//! Helpers shared by the integration tests.

use patchwork_scenes::eval::evaluate;
use patchwork_scenes::{Scene, Video};

/// How often the evaluator's colour, shape and direction agreed with the scenes' ground truth.
#[derive(Debug, Default)]
pub struct Tally {
    pub objects: usize,
    pub colour: usize,
    pub shape: usize,
    pub direction: usize,
    pub failures: Vec<String>,
}

impl Tally {
    /// Evaluates `video` against `scene`'s caption and counts agreement object by object (the
    /// report lists objects in caption order, which is the scene's order).
    pub fn add(&mut self, scene: &Scene, video: &Video) {
        let caption = scene.caption();
        let report = evaluate(video, &caption, None);
        assert_eq!(report.objects.len(), scene.objects.len(), "{caption}");
        for (object, truth) in report.objects.iter().zip(&scene.objects) {
            self.objects += 1;
            let seen = object.observed.as_ref();
            let colour = seen.is_some_and(|o| o.colour == truth.colour);
            let shape = seen.is_some_and(|o| o.shape == truth.shape);
            let direction = seen.is_some_and(|o| o.direction == Some(truth.direction));
            // The report's own verdicts must say the same as this comparison with the ground truth.
            assert_eq!(object.colour_ok, Some(colour), "{caption}");
            assert_eq!(object.shape_ok, Some(shape), "{caption}");
            assert_eq!(object.direction_ok, Some(direction), "{caption}");
            self.colour += usize::from(colour);
            self.shape += usize::from(shape);
            self.direction += usize::from(direction);
            if !(colour && shape && direction) {
                self.failures.push(format!("{caption}: saw {seen:?}"));
            }
        }
    }

    /// Panics unless every attribute agreed at least `share` of the time.
    pub fn require(&self, share: f64) {
        let need = (share * self.objects as f64).ceil() as usize;
        let ok = self.colour >= need && self.shape >= need && self.direction >= need;
        assert!(
            ok,
            "{} objects: colour {} shape {} direction {}; failures:\n{}",
            self.objects,
            self.colour,
            self.shape,
            self.direction,
            self.failures.join("\n")
        );
    }
}

/// What a small generative model might make of a clean render: softer edges (a 3×3 binomial blur),
/// muted contrast with a lifted black level, and per-pixel noise of up to ±12, from a fixed seed.
pub fn degrade(video: &Video, seed: u64) -> Video {
    let (w, h) = (video.width, video.height);
    let mut out = video.clone();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let weights = [1.0, 2.0, 1.0];
    for f in 0..video.frames {
        for y in 0..h {
            for x in 0..w {
                let mut sum = [0.0f64; 3];
                for (dy, wy) in weights.iter().enumerate() {
                    for (dx, wx) in weights.iter().enumerate() {
                        let yy = (y + dy).saturating_sub(1).min(h - 1);
                        let xx = (x + dx).saturating_sub(1).min(w - 1);
                        let rgb = video.pixel(f, yy, xx);
                        (0..3).for_each(|c| sum[c] += wy * wx * f64::from(rgb[c]) / 16.0);
                    }
                }
                for (c, value) in sum.iter().enumerate() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let noise = (state % 25) as f64 - 12.0;
                    out.data[((f * h + y) * w + x) * 3 + c] = (value * 0.9 + 10.0 + noise).clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    out
}
