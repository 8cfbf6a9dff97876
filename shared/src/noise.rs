//! The job's initial noise.
//!
//! The whole latent's noise is drawn once from the job's seed, never per window, so that overlapping
//! windows see the same values and the video does not depend on who evaluated it. The default draw does
//! not depend on how the latent was cut up either; the `shuffled` layout follows the window plan, which
//! the spec fixes.
//!
//! The stream is fixed by this file: ChaCha8 (whose output `rand_chacha` pins across versions) feeding a
//! Box–Muller transform written here, not a distribution crate whose sampling algorithm may change between
//! releases. A seed therefore means the same video forever. The transcendental functions come from the
//! platform's libm, which may differ in the last bit of an f64 between platforms; the cast to f32 hides
//! that almost always, and the project's bit-for-bit promise is per hardware anyway.

use std::f64::consts::TAU;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How a job's initial noise is laid out along time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NoiseMode {
    /// Every value of the latent drawn on its own ([`gaussian_noise`]).
    #[default]
    Independent,
    /// Later windows hold the first window's noise frames in another order ([`shuffled_noise`]).
    Shuffled,
}

impl NoiseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Independent => "independent",
            Self::Shuffled => "shuffled",
        }
    }

    /// The initial latent of a job with `dims` `[C, F, H, W]` whose windows span `spans` frames.
    pub fn draw(self, seed: u64, dims: [usize; 4], spans: &[(usize, usize)]) -> Vec<f32> {
        match self {
            Self::Independent => gaussian_noise(seed, dims.iter().product()),
            Self::Shuffled => shuffled_noise(seed, dims, spans),
        }
    }
}

impl std::fmt::Display for NoiseMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NoiseMode {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "independent" => Ok(Self::Independent),
            "shuffled" => Ok(Self::Shuffled),
            _ => Err(format!("unknown noise {name:?} (known: independent, shuffled)")),
        }
    }
}

/// 2⁻⁵³: turns the top 53 bits of a u64 into an f64 in [0, 1) exactly.
const UNIT: f64 = 1.0 / (1u64 << 53) as f64;

/// Standard normal noise of `len` values from `seed`: the job's whole initial latent, drawn once.
///
/// Values come in Box–Muller pairs, both used; an odd `len` drops the last pair's second value, so a
/// shorter draw is a prefix of a longer one.
pub fn gaussian_noise(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        // u1 in (0, 1], so ln(u1) is finite; u2 in [0, 1).
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 * UNIT;
        let u2 = (rng.next_u64() >> 11) as f64 * UNIT;
        let radius = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (TAU * u2).sin_cos();
        out.push((radius * cos) as f32);
        if out.len() < len {
            out.push((radius * sin) as f32);
        }
    }
    out
}

/// The job's initial noise with every temporal window holding the first window's noise frames in another
/// order (the rescheduling of FreeNoise, Qiu et al. 2023), so that each window starts from noise that
/// looks, frame for frame, like the first window's, and tends to draw the same things where the first
/// window drew them.
///
/// `dims` is the latent's `[C, F, H, W]`; `spans` are the windows' frame spans (start, end), in any order,
/// repeats allowed (spatial tiles share them). The frames of the first window keep the values of
/// [`gaussian_noise`], so a video of one window is the same either way. Going along the windows in order
/// of their start, the frames a window adds after the previous one's end take, in a shuffled order, the
/// previous window's frames that it does not share: with windows of `W` frames `S` apart these are `S`
/// frames for `S`, and every window then holds a permutation of the first window's frames. Where a
/// window adds more frames than that, the previous window's frames are drawn again, shuffled anew. The
/// shuffles come from a ChaCha8 stream of the seed's own (stream 1), not the Gaussian one.
pub fn shuffled_noise(seed: u64, dims: [usize; 4], spans: &[(usize, usize)]) -> Vec<f32> {
    let [channels, frames, height, width] = dims;
    let plane = height * width;
    let mut out = gaussian_noise(seed, channels * frames * plane);
    let mut spans: Vec<(usize, usize)> =
        spans.iter().map(|&(s, e)| (s.min(frames), e.min(frames))).filter(|(s, e)| s < e).collect();
    spans.sort_unstable();
    spans.dedup();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    let mut shuffled = |mut pool: Vec<usize>| {
        for i in (1..pool.len()).rev() {
            pool.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        pool
    };
    let mut covered = match spans.first() {
        Some(&(_, end)) => end,
        None => return out,
    };
    for pair in spans.windows(2) {
        let ((prev_start, prev_end), (start, end)) = (pair[0], pair[1]);
        if end <= covered {
            continue;
        }
        let new: Vec<usize> = (covered.max(start)..end).collect();
        let unshared: Vec<usize> = (prev_start..start.min(prev_end)).collect();
        let mut sources = shuffled(if unshared.is_empty() { (prev_start..prev_end).collect() } else { unshared });
        while sources.len() < new.len() {
            sources.extend(shuffled((prev_start..prev_end).collect()));
        }
        for (&to, &from) in new.iter().zip(&sources) {
            for c in 0..channels {
                let base = c * frames * plane;
                out.copy_within(base + from * plane..base + (from + 1) * plane, base + to * plane);
            }
        }
        covered = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values() {
        let a = gaussian_noise(42, 1001);
        let b = gaussian_noise(42, 1001);
        assert_eq!(a.len(), 1001);
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn shorter_draw_is_a_prefix() {
        let long = gaussian_noise(7, 100);
        assert_eq!(gaussian_noise(7, 33), long[..33]);
        assert!(gaussian_noise(7, 0).is_empty());
    }

    #[test]
    fn different_seeds_differ() {
        let a = gaussian_noise(1, 64);
        let b = gaussian_noise(2, 64);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert_eq!(same, 0);
    }

    #[test]
    fn values_are_standard_normal() {
        let n = 100_000;
        let v = gaussian_noise(1234, n);
        assert!(v.iter().all(|x| x.is_finite()));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/sqrt(n) ≈ 0.003 for the mean, sqrt(2/n) ≈ 0.0045 for the variance.
        assert!(mean.abs() < 0.015, "mean {mean}");
        assert!((var - 1.0).abs() < 0.025, "variance {var}");
        let within_one = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n as f64;
        assert!((within_one - 0.6827).abs() < 0.01, "P(|x| < 1) = {within_one}");
    }

    /// The `[H, W]` planes of frame `f` of every channel, bit patterns, for comparing frames.
    fn frame(v: &[f32], dims: [usize; 4], f: usize) -> Vec<u32> {
        let [c, frames, h, w] = dims;
        (0..c)
            .flat_map(|c| v[(c * frames + f) * h * w..(c * frames + f + 1) * h * w].iter().map(|x| x.to_bits()))
            .collect()
    }

    /// The frames of a span, sorted, so that two spans holding the same frames in another order compare equal.
    fn frames_of(v: &[f32], dims: [usize; 4], span: (usize, usize)) -> Vec<Vec<u32>> {
        let mut frames: Vec<Vec<u32>> = (span.0..span.1).map(|f| frame(v, dims, f)).collect();
        frames.sort();
        frames
    }

    #[test]
    fn every_shuffled_window_is_the_first_window_reordered() {
        let dims = [3, 20, 2, 4];
        // The farm's 77-frame plans: windows of 5 latent frames 3 apart, and side by side.
        let overlapping = [(0, 5), (3, 8), (6, 11), (9, 14), (12, 17), (15, 20)];
        let side_by_side = [(0, 5), (5, 10), (10, 15), (15, 20)];
        for spans in [&overlapping[..], &side_by_side[..]] {
            let v = shuffled_noise(9, dims, spans);
            let plain = gaussian_noise(9, dims.iter().product());
            assert_eq!(v[..].len(), plain.len());
            for f in 0..5 {
                assert_eq!(frame(&v, dims, f), frame(&plain, dims, f), "the first window keeps its noise");
            }
            let first = frames_of(&v, dims, spans[0]);
            for &span in &spans[1..] {
                assert_eq!(frames_of(&v, dims, span), first, "window {span:?}");
            }
            // Reordered, not repeated in place: some window differs from the first frame by frame.
            assert!(spans[1..].iter().any(|&(s, e)| (s..e).any(|f| frame(&v, dims, f) != frame(&v, dims, f - s))));
        }
    }

    #[test]
    fn shuffling_ignores_repeats_and_order_and_keeps_a_lone_window() {
        let dims = [2, 11, 3, 3];
        let spans = [(6, 11), (0, 5), (3, 8), (0, 5), (3, 8), (6, 11)];
        let sorted = [(0, 5), (3, 8), (6, 11)];
        let v = shuffled_noise(4, dims, &spans);
        assert_eq!(v, shuffled_noise(4, dims, &sorted));
        assert_ne!(v, shuffled_noise(5, dims, &sorted));
        let len = dims.iter().product();
        assert_eq!(shuffled_noise(4, dims, &[(0, 11)]), gaussian_noise(4, len));
        assert_eq!(shuffled_noise(4, dims, &[]), gaussian_noise(4, len));
    }

    #[test]
    fn a_window_that_adds_more_frames_than_it_drops_draws_the_previous_window_again() {
        // The second window drops one frame of the first and adds three.
        let dims = [2, 7, 2, 2];
        let v = shuffled_noise(11, dims, &[(0, 4), (1, 7)]);
        let first: Vec<Vec<u32>> = (0..4).map(|f| frame(&v, dims, f)).collect();
        assert_eq!(frame(&v, dims, 4), first[0], "the one dropped frame comes first");
        for f in 5..7 {
            assert!(first.contains(&frame(&v, dims, f)), "frame {f} is one of the first window's");
        }
    }
}
