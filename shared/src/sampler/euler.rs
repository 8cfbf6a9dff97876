//! The first-order flow-matching sampler: one straight step along the predicted velocity per model call.

use candle_core::Tensor;

use super::error::{check_shape, SamplerError};
use super::schedule::Schedule;
use super::Sampler;

/// Euler on the flow ODE dx/dσ = v: `x ← x + (σ_next − σ) · v`, step for step equal to diffusers'
/// `FlowMatchEulerDiscreteScheduler.step` (without its stochastic and per-token options).
///
/// The only state is the step index, so a checkpoint is `(schedule parameters, step_index, sample)`.
#[derive(Clone, Debug)]
pub struct EulerSampler {
    schedule: Schedule,
    step_index: usize,
}

impl EulerSampler {
    /// A sampler at step 0 of `FlowMatchEulerDiscreteScheduler`'s schedule for `steps` and `shift`.
    pub fn new(steps: usize, shift: f64) -> Result<Self, SamplerError> {
        Ok(Self { schedule: Schedule::flow_match_euler(steps, shift)?, step_index: 0 })
    }

    /// A sampler that continues at `step_index` (from a checkpoint); `step_index == steps` means finished.
    pub fn resume(schedule: Schedule, step_index: usize) -> Result<Self, SamplerError> {
        if step_index > schedule.steps() {
            return Err(SamplerError::InvalidState {
                field: "step_index",
                reason: format!("{step_index} is past the schedule's {} steps", schedule.steps()),
            });
        }
        Ok(Self { schedule, step_index })
    }
}

impl Sampler for EulerSampler {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step_index
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor, SamplerError> {
        let i = self.step_index;
        if i >= self.schedule.steps() {
            return Err(SamplerError::Finished { steps: self.schedule.steps() });
        }
        check_shape("model_output", model_output, sample.shape())?;
        let velocity = model_output.to_dtype(sample.dtype())?;
        let sigmas = self.schedule.sigmas();
        // Both sigmas are float32 values, so their f64 difference rounds to the same float32 step as diffusers'.
        let dt = sigmas[i + 1] - sigmas[i];
        let next = (sample + velocity.affine(dt, 0.0)?)?;
        self.step_index += 1;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn constant_velocity_is_integrated_exactly() {
        // With v constant, x(0) = x(1) − v whatever the step sizes: Euler is exact on straight flows.
        let device = Device::Cpu;
        let noise = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0], &device).unwrap();
        let velocity = Tensor::new(&[0.25f32, -1.0, 2.0, 0.0], &device).unwrap();
        let mut sampler = EulerSampler::new(7, 3.0).unwrap();
        let mut x = noise.clone();
        for _ in 0..7 {
            x = sampler.step(&velocity, &x).unwrap();
        }
        assert!(sampler.is_finished());
        let expected = (&noise - &velocity).unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in x.to_vec1::<f32>().unwrap().iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn refuses_a_step_past_the_end_and_a_wrong_shape() {
        let device = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &device).unwrap();
        let mut sampler = EulerSampler::new(1, 1.0).unwrap();
        let bad = Tensor::zeros((3, 2), DType::F32, &device).unwrap();
        let err = sampler.step(&bad, &x).unwrap_err().to_string();
        assert!(err.starts_with("model_output:"), "{err}");
        assert_eq!(sampler.step_index(), 0);
        sampler.step(&x, &x).unwrap();
        assert!(matches!(sampler.step(&x, &x), Err(SamplerError::Finished { steps: 1 })));
    }

    #[test]
    fn resume_checks_the_step_index() {
        let schedule = Schedule::flow_match_euler(4, 3.0).unwrap();
        assert!(EulerSampler::resume(schedule.clone(), 4).unwrap().is_finished());
        let err = EulerSampler::resume(schedule, 5).unwrap_err().to_string();
        assert!(err.starts_with("state.step_index:"), "{err}");
    }
}
