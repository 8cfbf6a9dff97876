//! The job's initial noise.
//!
//! The whole latent's noise is drawn once from the job's seed, never per window, so that overlapping
//! windows see the same values and the video does not depend on how it was cut up or who evaluated it.
//!
//! The stream is fixed by this file: ChaCha8 (whose output `rand_chacha` pins across versions) feeding a
//! Box–Muller transform written here, not a distribution crate whose sampling algorithm may change between
//! releases. A seed therefore means the same video forever. The transcendental functions come from the
//! platform's libm, which may differ in the last bit of an f64 between platforms; the cast to f32 hides
//! that almost always, and the project's bit-for-bit promise is per hardware anyway.

use std::f64::consts::TAU;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
}
