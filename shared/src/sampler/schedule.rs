//! Noise schedules (timesteps and sigmas) for flow matching with a timestep shift.
//!
//! Wan was trained and is sampled with diffusers' schedulers, so a schedule here reproduces, value for value,
//! what `FlowMatchEulerDiscreteScheduler.set_timesteps` and `UniPCMultistepScheduler.set_timesteps` (with
//! `use_flow_sigmas=True`) produce. That includes their float32 roundings: the model sees the timestep as a
//! float32 (Euler) or a truncated integer (UniPC), and the sigmas are stored as float32, so a schedule computed
//! in pure f64 would drift from the reference by up to 1e-7 relative, which is visible in a bit-for-bit
//! comparison. The values are kept as f64 (exact images of the float32 ones) so that the samplers can do their
//! scalar algebra in f64.

use super::error::SamplerError;

/// The number of discrete timesteps Wan was trained with; a sigma σ is timestep `σ · 1000`.
pub const NUM_TRAIN_TIMESTEPS: usize = 1000;

/// The most steps a schedule may have: finer than the training grid, UniPC's integer timesteps repeat.
pub const MAX_STEPS: usize = NUM_TRAIN_TIMESTEPS;

/// The timestep shift σ' = s·σ / (1 + (s − 1)·σ): with s > 1 it spends more of the steps at high noise, which
/// large latents (many tokens) need. It maps 0 to 0 and 1 to 1 and is monotone for s > 0.
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// Checks the two user-facing parameters of a schedule; the errors name the field.
pub fn validate(steps: usize, shift: f64) -> Result<(), SamplerError> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(SamplerError::InvalidSteps { got: steps, max: MAX_STEPS });
    }
    if !(shift.is_finite() && shift > 0.0) {
        return Err(SamplerError::InvalidShift(shift));
    }
    Ok(())
}

/// The timesteps a sampler passes to the model, one per step, and the sigmas (noise levels) it integrates
/// between: `sigmas[i]` is the level at step `i`, and `sigmas[steps] == 0` is the clean end point.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    shift: f64,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
}

impl Schedule {
    /// The schedule of `FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift)` after
    /// `set_timesteps(steps)`.
    ///
    /// Quirk kept on purpose: diffusers shifts the training grid once in its constructor and takes the smallest
    /// shifted sigma as the end of the inference grid, which it then shifts again. So the last nonzero sigma is
    /// shift(shift(0.001)), not shift(0.001).
    pub fn flow_match_euler(steps: usize, shift: f64) -> Result<Self, SamplerError> {
        validate(steps, shift)?;
        // Constructor: the training sigmas t/1000 for t = 1000..1, shifted, all in float32.
        let sigma_max = shift_sigma_f32(1.0, shift);
        let sigma_min = shift_sigma_f32(1.0 / NUM_TRAIN_TIMESTEPS as f32, shift);
        // set_timesteps: a float64 linspace between the two timesteps, back to sigmas, shifted, then float32.
        let train = NUM_TRAIN_TIMESTEPS as f64;
        let grid = numpy_linspace(f64::from(sigma_max) * train, f64::from(sigma_min) * train, steps);
        let sigmas32: Vec<f32> = grid.iter().map(|&t| shift_sigma(t / train, shift) as f32).collect();
        // The timesteps are the float32 product sigma · 1000.
        let timesteps = sigmas32.iter().map(|&s| f64::from(s * NUM_TRAIN_TIMESTEPS as f32)).collect();
        Ok(Self::with_zero_end(shift, timesteps, &sigmas32))
    }

    /// The schedule of Wan's `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift,
    /// final_sigmas_type="zero")` after `set_timesteps(steps)`.
    ///
    /// Quirks kept on purpose: the first sigma, which the shift leaves at 1, is lowered by 1e-6 so that
    /// log(1 − σ) stays finite; and the timesteps are truncated to integers (diffusers casts them to int64), so
    /// the model is conditioned on `floor(σ · 1000)`, not on σ · 1000.
    pub fn unipc_flow(steps: usize, shift: f64) -> Result<Self, SamplerError> {
        validate(steps, shift)?;
        let train = NUM_TRAIN_TIMESTEPS as f64;
        // `steps + 1` points from 1 down to 1/1000; the last one is dropped.
        let mut sigmas: Vec<f64> =
            numpy_linspace(1.0, 1.0 / train, steps + 1)[..steps].iter().map(|&s| shift_sigma(s, shift)).collect();
        if (sigmas[0] - 1.0).abs() < 1e-6 {
            sigmas[0] -= 1e-6;
        }
        let timesteps = sigmas.iter().map(|&s| (s * train).trunc()).collect();
        let sigmas32: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        Ok(Self::with_zero_end(shift, timesteps, &sigmas32))
    }

    fn with_zero_end(shift: f64, timesteps: Vec<f64>, sigmas32: &[f32]) -> Self {
        let sigmas = sigmas32.iter().map(|&s| f64::from(s)).chain(std::iter::once(0.0)).collect();
        Self { shift, timesteps, sigmas }
    }

    /// The number of model evaluations (sampler steps).
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The shift the schedule was built with.
    pub fn shift(&self) -> f64 {
        self.shift
    }

    /// The timestep to condition the model on at each step; `steps()` values, decreasing.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The noise level at each step and after the last one: `steps() + 1` values, decreasing, ending in 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

/// The shift as diffusers' constructor computes it on a float32 tensor: every operation rounds to float32, and
/// the Python scalars `shift` and `shift - 1` are rounded to float32 before they meet the tensor.
fn shift_sigma_f32(sigma: f32, shift: f64) -> f32 {
    let numerator = shift as f32 * sigma;
    let denominator = 1.0f32 + (shift - 1.0) as f32 * sigma;
    numerator / denominator
}

/// `numpy.linspace(start, stop, num)`, with numpy's rounding: `start + i · step` with `step = (stop − start) /
/// (num − 1)`, and the last point set to `stop` exactly.
fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut points: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    points[num - 1] = stop;
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_fixes_the_end_points_and_pushes_noise_up() {
        for shift in [0.5, 1.0, 3.0, 5.0] {
            assert_eq!(shift_sigma(0.0, shift), 0.0);
            assert!((shift_sigma(1.0, shift) - 1.0).abs() < 1e-15);
        }
        assert_eq!(shift_sigma(0.5, 1.0), 0.5);
        // s = 3 at σ = 0.5: 1.5 / 2 = 0.75.
        assert!((shift_sigma(0.5, 3.0) - 0.75).abs() < 1e-15);
        assert!(shift_sigma(0.5, 0.5) < 0.5);
    }

    #[test]
    fn validation_names_the_field() {
        let steps = validate(0, 3.0).unwrap_err().to_string();
        assert!(steps.starts_with("steps:"), "{steps}");
        let steps = validate(MAX_STEPS + 1, 3.0).unwrap_err().to_string();
        assert!(steps.starts_with("steps:"), "{steps}");
        for shift in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = validate(10, shift).unwrap_err().to_string();
            assert!(err.starts_with("shift:"), "{err}");
        }
        assert!(validate(1, 1e-3).is_ok());
    }

    #[test]
    fn linspace_matches_numpy_end_points() {
        assert_eq!(numpy_linspace(2.0, 5.0, 1), vec![2.0]);
        assert_eq!(numpy_linspace(1.0, 0.0, 5), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    fn check_shape_of(schedule: &Schedule, steps: usize) {
        assert_eq!(schedule.steps(), steps);
        assert_eq!(schedule.sigmas().len(), steps + 1);
        assert_eq!(*schedule.sigmas().last().unwrap(), 0.0);
        assert!(schedule.sigmas().windows(2).all(|w| w[0] > w[1]), "{:?}", schedule.sigmas());
        assert!(schedule.timesteps().windows(2).all(|w| w[0] > w[1]), "{:?}", schedule.timesteps());
        assert!(schedule.sigmas()[0] <= 1.0);
        assert!(schedule.timesteps()[0] <= 1000.0);
    }

    #[test]
    fn schedules_are_decreasing_and_end_at_zero() {
        for steps in [1, 2, 10, 50, 1000] {
            for shift in [1.0, 3.0, 5.0] {
                check_shape_of(&Schedule::flow_match_euler(steps, shift).unwrap(), steps);
                if steps < 1000 {
                    check_shape_of(&Schedule::unipc_flow(steps, shift).unwrap(), steps);
                }
            }
        }
    }

    #[test]
    fn euler_starts_at_full_noise_and_shifts_twice_at_the_end() {
        let schedule = Schedule::flow_match_euler(50, 3.0).unwrap();
        assert_eq!(schedule.sigmas()[0], 1.0);
        assert_eq!(schedule.timesteps()[0], 1000.0);
        let twice = shift_sigma(shift_sigma(0.001, 3.0), 3.0);
        assert!((schedule.sigmas()[49] - twice).abs() < 1e-6, "{}", schedule.sigmas()[49]);
    }

    #[test]
    fn unipc_timesteps_are_integers_below_the_sigmas() {
        let schedule = Schedule::unipc_flow(50, 5.0).unwrap();
        assert_eq!(schedule.timesteps()[0], 999.0);
        assert!((schedule.sigmas()[0] - (1.0 - 1e-6)).abs() < 1e-7);
        for (t, s) in schedule.timesteps().iter().zip(schedule.sigmas()) {
            assert_eq!(t.fract(), 0.0);
            assert!(*t <= s * 1000.0 + 1e-3 && s * 1000.0 - t < 1.0 + 1e-3, "t {t} sigma {s}");
        }
    }
}
