//! Classifier-free guidance: the model is run with and without the prompt, and the difference is amplified.

use candle_core::Tensor;

use super::error::{check_shape, SamplerError};

/// `uncond + scale · (cond − uncond)`, in the tensors' dtype. Scale 1 returns the conditional prediction,
/// scale 0 the unconditional one; Wan uses 5.
pub fn classifier_free_guidance(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor, SamplerError> {
    if !scale.is_finite() {
        return Err(SamplerError::InvalidGuidance(scale));
    }
    check_shape("uncond", uncond, cond.shape())?;
    let uncond = uncond.to_dtype(cond.dtype())?;
    Ok((&uncond + (cond - &uncond)?.affine(scale, 0.0)?)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn guidance_extrapolates_from_uncond_through_cond() {
        let device = Device::Cpu;
        let cond = Tensor::new(&[1.0f32, 2.0, -1.0], &device).unwrap();
        let uncond = Tensor::new(&[0.5f32, 2.0, 1.0], &device).unwrap();
        let guided = classifier_free_guidance(&cond, &uncond, 5.0).unwrap();
        assert_eq!(guided.to_vec1::<f32>().unwrap(), vec![3.0, 2.0, -9.0]);
        let same = classifier_free_guidance(&cond, &uncond, 1.0).unwrap();
        assert_eq!(same.to_vec1::<f32>().unwrap(), cond.to_vec1::<f32>().unwrap());
    }

    #[test]
    fn guidance_rejects_bad_inputs_by_name() {
        let device = Device::Cpu;
        let cond = Tensor::new(&[1.0f32, 2.0], &device).unwrap();
        let uncond = Tensor::new(&[1.0f32, 2.0, 3.0], &device).unwrap();
        let err = classifier_free_guidance(&cond, &uncond, 5.0).unwrap_err().to_string();
        assert!(err.starts_with("uncond:"), "{err}");
        let err = classifier_free_guidance(&cond, &cond, f64::NAN).unwrap_err().to_string();
        assert!(err.starts_with("guidance_scale:"), "{err}");
    }
}
