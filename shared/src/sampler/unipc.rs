//! UniPC (Zhao et al. 2023), the predictor-corrector multistep sampler Wan ships with, in the configuration
//! of Wan's diffusers scheduler: data prediction (x0) from a flow-matching velocity, the "bh2" variant
//! (B(h) = e^{−h} − 1 in the data-prediction form), order 2, first order at the last step, and a terminal sigma
//! of zero.
//!
//! The solver works in λ = log(α/σ) with α = 1 − σ. Each step first corrects the sample it was handed, using
//! the model's new x0 prediction (UniC), then predicts the next sample from the last two x0 predictions (UniP).
//! Scalars are computed in f64 from the schedule's float32 sigmas; the tensor work is one weighted sum per
//! update in the sample's dtype.

use candle_core::Tensor;

use super::error::{check_shape, SamplerError};
use super::schedule::Schedule;
use super::Sampler;

/// The solver order (how many x0 predictions the multistep formulas use).
const ORDER: usize = 2;

/// Everything a UniPC run carries from one step to the next, as plain fields so that it can be checkpointed
/// and restored with [`UniPcSampler::resume`].
#[derive(Clone, Debug)]
pub struct UniPcState {
    /// The next step to take (0-based); equal to the schedule's step count when sampling is finished.
    pub step_index: usize,
    /// The x0 predictions of the last `min(step_index, 2)` steps, oldest first.
    pub model_outputs: Vec<Tensor>,
    /// The sample the last predictor started from (after its own correction); the corrector of the next step
    /// re-integrates from it. `None` exactly at step 0.
    pub last_sample: Option<Tensor>,
}

/// UniPC bh2, order 2, flow prediction, step for step equal to diffusers' `UniPCMultistepScheduler` with Wan's
/// configuration.
#[derive(Clone, Debug)]
pub struct UniPcSampler {
    schedule: Schedule,
    state: UniPcState,
}

impl UniPcSampler {
    /// A sampler at step 0 of the UniPC flow schedule for `steps` and `shift`.
    pub fn new(steps: usize, shift: f64) -> Result<Self, SamplerError> {
        let state = UniPcState { step_index: 0, model_outputs: Vec::new(), last_sample: None };
        Ok(Self { schedule: Schedule::unipc_flow(steps, shift)?, state })
    }

    /// A sampler that continues from a checkpointed `state`, which must be consistent with `schedule`.
    pub fn resume(schedule: Schedule, state: UniPcState) -> Result<Self, SamplerError> {
        let invalid = |field, reason: String| SamplerError::InvalidState { field, reason };
        let i = state.step_index;
        if i > schedule.steps() {
            return Err(invalid("step_index", format!("{i} is past the schedule's {} steps", schedule.steps())));
        }
        if state.model_outputs.len() != i.min(ORDER) {
            let reason = format!("{} tensors at step {i}, expected {}", state.model_outputs.len(), i.min(ORDER));
            return Err(invalid("model_outputs", reason));
        }
        match &state.last_sample {
            None if i > 0 => return Err(invalid("last_sample", format!("missing at step {i}"))),
            Some(_) if i == 0 => return Err(invalid("last_sample", "present at step 0".to_string())),
            Some(last) => {
                for output in &state.model_outputs {
                    check_shape("state.model_outputs", output, last.shape())?;
                }
            }
            None => {}
        }
        Ok(Self { schedule, state })
    }

    /// The state to checkpoint.
    pub fn state(&self) -> &UniPcState {
        &self.state
    }

    /// The order of the predictor at step `i`: 1 while there is only one x0 prediction (warm-up) and at the
    /// last step (`lower_order_final`, which keeps few-step runs stable), 2 otherwise. The corrector of step
    /// `i` uses the order of the predictor of step `i − 1`.
    fn predictor_order(&self, i: usize) -> usize {
        ORDER.min(self.schedule.steps() - i).min(i + 1)
    }

    /// UniC: refines the sample the model has just seen, now that its x0 prediction `x0_t` is known. It
    /// re-integrates the previous segment from `last_sample`; the predicted sample itself enters only through
    /// `x0_t`.
    fn correct(&self, outputs: &[Tensor], x0_t: &Tensor, last_sample: &Tensor) -> Result<Tensor, SamplerError> {
        let i = self.state.step_index;
        let sigmas = self.schedule.sigmas();
        let m0 = &outputs[outputs.len() - 1];
        let s = Segment::new(sigmas[i - 1], sigmas[i]);
        let k = s.alpha_t * s.b_h;
        let mut terms = vec![(s.sample_weight(), last_sample)];
        let mut m0_weight = s.first_order_weight();
        if self.predictor_order(i - 1) == 1 {
            // One earlier prediction: − α B(h) · ½ (x0_t − m0), the weight ½ fixed.
            let rho_t = 0.5;
            m0_weight += k * rho_t;
            terms.push((-k * rho_t, x0_t));
        } else {
            // Two: − α B(h) (ρ₁ (m1 − m0) / r + ρ_t (x0_t − m0)), where (ρ₁, ρ_t) solves
            // [[1, 1], [r, 1]] · ρ = (b₁, b₂) and r is the earlier segment's length in λ relative to h.
            let m1 = &outputs[outputs.len() - 2];
            let r = (lambda(sigmas[i - 2]) - s.lambda_s) / s.h;
            let phi_2 = s.h_phi_1 / s.hh - 1.0;
            let phi_3 = phi_2 / s.hh - 0.5;
            let b1 = phi_2 / s.b_h;
            let b2 = 2.0 * phi_3 / s.b_h;
            let rho_1 = (b1 - b2) / (1.0 - r);
            let rho_t = b1 - rho_1;
            m0_weight += k * (rho_1 / r + rho_t);
            terms.push((-k * rho_1 / r, m1));
            terms.push((-k * rho_t, x0_t));
        }
        terms.push((m0_weight, m0));
        Ok(weighted_sum(&terms)?)
    }

    /// UniP: the sample at the next sigma from the x0 predictions of this step and (order 2) the one before,
    /// the last entries of `outputs`.
    fn predict(&self, outputs: &[Tensor], sample: &Tensor, order: usize) -> Result<Tensor, SamplerError> {
        let i = self.state.step_index;
        let sigmas = self.schedule.sigmas();
        let m0 = &outputs[outputs.len() - 1];
        // At the last step σ_next = 0, λ = +∞ and e^{−h} − 1 = −1: the update returns m0, the clean estimate.
        let s = Segment::new(sigmas[i], sigmas[i + 1]);
        let mut terms = vec![(s.sample_weight(), sample)];
        let mut m0_weight = s.first_order_weight();
        if order == 2 {
            // The second-order term − α B(h) · ½ (m1 − m0) / r, with the weight ½ fixed (not solved) and r the
            // previous segment's length in λ relative to h.
            let m1 = &outputs[outputs.len() - 2];
            let r = (lambda(sigmas[i - 1]) - s.lambda_s) / s.h;
            let k = s.alpha_t * s.b_h * 0.5 / r;
            m0_weight += k;
            terms.push((-k, m1));
        }
        terms.push((m0_weight, m0));
        Ok(weighted_sum(&terms)?)
    }
}

impl Sampler for UniPcSampler {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.state.step_index
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor, SamplerError> {
        let i = self.state.step_index;
        if i >= self.schedule.steps() {
            return Err(SamplerError::Finished { steps: self.schedule.steps() });
        }
        check_shape("model_output", model_output, sample.shape())?;
        let velocity = model_output.to_dtype(sample.dtype())?;
        // Flow prediction to data prediction: x = (1 − σ) x0 + σ ε and v = ε − x0 give x0 = x − σ v. It uses
        // the sample as the model saw it, before the correction below.
        let x0 = (sample - velocity.affine(self.schedule.sigmas()[i], 0.0)?)?;
        let sample = match &self.state.last_sample {
            Some(last) => {
                check_shape("sample", sample, last.shape())?;
                self.correct(&self.state.model_outputs, &x0, last)?
            }
            None => sample.clone(),
        };
        // The new history is built aside and committed only once the predictor has succeeded, so that a failed
        // step leaves the state as it was (tensors are reference-counted: the clones are cheap).
        let keep = self.state.model_outputs.len().min(ORDER - 1);
        let mut outputs = self.state.model_outputs[self.state.model_outputs.len() - keep..].to_vec();
        outputs.push(x0);
        let next = self.predict(&outputs, &sample, self.predictor_order(i))?;
        self.state = UniPcState { step_index: i + 1, model_outputs: outputs, last_sample: Some(sample) };
        Ok(next)
    }
}

/// The scalars of one integration segment from σ_s to σ_t (σ_t < σ_s) in the data-prediction form, where
/// `hh = −h` and both φ₁ and B(h) are `e^{hh} − 1`.
struct Segment {
    alpha_t: f64,
    sigma_ratio: f64,
    lambda_s: f64,
    h: f64,
    hh: f64,
    h_phi_1: f64,
    b_h: f64,
}

impl Segment {
    fn new(sigma_s: f64, sigma_t: f64) -> Self {
        let lambda_s = lambda(sigma_s);
        let h = lambda(sigma_t) - lambda_s;
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        Self { alpha_t: 1.0 - sigma_t, sigma_ratio: sigma_t / sigma_s, lambda_s, h, hh, h_phi_1, b_h: h_phi_1 }
    }

    /// The weight of the segment's starting sample: σ_t / σ_s.
    fn sample_weight(&self) -> f64 {
        self.sigma_ratio
    }

    /// The weight of the newest x0 prediction in the first-order update: −α_t (e^{−h} − 1).
    fn first_order_weight(&self) -> f64 {
        -self.alpha_t * self.h_phi_1
    }
}

/// The half log signal-to-noise ratio λ = log(α) − log(σ) of flow matching, where α = 1 − σ; +∞ at σ = 0.
fn lambda(sigma: f64) -> f64 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// Σ wᵢ · tᵢ in the tensors' dtype, in order, skipping zero weights (the last step's sample weight is exactly 0,
/// and 0 · x would turn an infinite x into NaN). `terms` is never empty: it always holds the sample.
fn weighted_sum(terms: &[(f64, &Tensor)]) -> candle_core::Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    for &(weight, tensor) in terms.iter().filter(|(weight, _)| *weight != 0.0) {
        let term = tensor.affine(weight, 0.0)?;
        sum = Some(match sum {
            Some(sum) => (sum + term)?,
            None => term,
        });
    }
    match (sum, terms.first()) {
        (Some(sum), _) => Ok(sum),
        (None, Some((_, tensor))) => tensor.zeros_like(),
        (None, None) => candle_core::bail!("weighted_sum of no terms"),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn constant_velocity_is_integrated_exactly() {
        // On a straight flow x0 = x − σ v is exact at every step, so every update lands on the line.
        let device = Device::Cpu;
        let noise = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0], &device).unwrap();
        let velocity = Tensor::new(&[0.25f32, -1.0, 2.0, 0.0], &device).unwrap();
        for steps in [1, 2, 3, 10] {
            let mut sampler = UniPcSampler::new(steps, 5.0).unwrap();
            let mut x = noise.clone();
            for _ in 0..steps {
                x = sampler.step(&velocity, &x).unwrap();
            }
            assert!(sampler.is_finished());
            assert!(max_abs_diff(&x, &(&noise - &velocity).unwrap()) < 1e-5, "steps {steps}");
        }
    }

    #[test]
    fn orders_warm_up_and_drop_at_the_end() {
        let sampler = UniPcSampler::new(5, 3.0).unwrap();
        let orders: Vec<usize> = (0..5).map(|i| sampler.predictor_order(i)).collect();
        assert_eq!(orders, vec![1, 2, 2, 2, 1]);
        let single = UniPcSampler::new(1, 3.0).unwrap();
        assert_eq!(single.predictor_order(0), 1);
    }

    #[test]
    fn resumed_state_continues_identically() {
        let device = Device::Cpu;
        let mut x = Tensor::arange(0f32, 6.0, &device).unwrap().reshape((2, 3)).unwrap();
        let outputs: Vec<Tensor> =
            (0..6).map(|k| Tensor::full(k as f32 * 0.3 - 0.5, (2, 3), &device).unwrap()).collect();
        let mut sampler = UniPcSampler::new(6, 3.0).unwrap();
        for output in &outputs[..3] {
            x = sampler.step(output, &x).unwrap();
        }
        let mut resumed = UniPcSampler::resume(sampler.schedule().clone(), sampler.state().clone()).unwrap();
        let (mut a, mut b) = (x.clone(), x);
        for output in &outputs[3..] {
            a = sampler.step(output, &a).unwrap();
            b = resumed.step(output, &b).unwrap();
        }
        assert_eq!(max_abs_diff(&a, &b), 0.0);
    }

    #[test]
    fn resume_rejects_inconsistent_state_by_field() {
        let device = Device::Cpu;
        let schedule = Schedule::unipc_flow(4, 3.0).unwrap();
        let t = Tensor::zeros((2, 2), DType::F32, &device).unwrap();
        let other = Tensor::zeros((4,), DType::F32, &device).unwrap();
        let cases = [
            (UniPcState { step_index: 5, model_outputs: vec![], last_sample: None }, "state.step_index:"),
            (UniPcState { step_index: 2, model_outputs: vec![t.clone()], last_sample: None }, "state.model_outputs:"),
            (UniPcState { step_index: 1, model_outputs: vec![t.clone()], last_sample: None }, "state.last_sample:"),
            (UniPcState { step_index: 0, model_outputs: vec![], last_sample: Some(t.clone()) }, "state.last_sample:"),
            (
                UniPcState { step_index: 1, model_outputs: vec![other], last_sample: Some(t.clone()) },
                "state.model_outputs:",
            ),
        ];
        for (state, prefix) in cases {
            let err = UniPcSampler::resume(schedule.clone(), state).unwrap_err().to_string();
            assert!(err.starts_with(prefix), "{err} should start with {prefix}");
        }
        let ok = UniPcState { step_index: 1, model_outputs: vec![t.clone()], last_sample: Some(t) };
        assert_eq!(UniPcSampler::resume(schedule, ok).unwrap().step_index(), 1);
    }

    #[test]
    fn a_sample_of_another_shape_leaves_the_state_unchanged() {
        let device = Device::Cpu;
        let x = Tensor::ones((2, 2), DType::F32, &device).unwrap();
        let mut sampler = UniPcSampler::new(4, 3.0).unwrap();
        let x = sampler.step(&x, &x).unwrap();
        let wrong = Tensor::ones((4,), DType::F32, &device).unwrap();
        let err = sampler.step(&wrong, &wrong).unwrap_err().to_string();
        assert!(err.starts_with("sample:"), "{err}");
        assert_eq!(sampler.step_index(), 1);
        sampler.step(&x, &x).unwrap();
    }
}
