//! The one error type of the sampler module. Every variant names the field (or argument) at fault, so a
//! rejected job or a corrupt checkpoint can be reported to the client without guessing.

/// What can go wrong when building or stepping a sampler.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// `steps` outside `1..=max`.
    #[error("steps: must be between 1 and {max}, got {got}")]
    InvalidSteps { got: usize, max: usize },
    /// `shift` not a finite number greater than zero.
    #[error("shift: must be a finite number greater than 0, got {0}")]
    InvalidShift(f64),
    /// A sampler name that is neither `euler` nor `unipc`.
    #[error("sampler: unknown kind {0:?}, expected \"euler\" or \"unipc\"")]
    UnknownKind(String),
    /// A classifier-free guidance scale that is NaN or infinite.
    #[error("guidance_scale: must be finite, got {0}")]
    InvalidGuidance(f64),
    /// `step` was called after the last step.
    #[error("step: the sampler has already taken all {steps} steps")]
    Finished { steps: usize },
    /// A tensor whose shape differs from the one it must match.
    #[error("{field}: shape {got:?} does not match {expected:?}")]
    ShapeMismatch { field: &'static str, expected: Vec<usize>, got: Vec<usize> },
    /// A resumed (checkpointed) state that is inconsistent with the schedule it is resumed into.
    #[error("state.{field}: {reason}")]
    InvalidState { field: &'static str, reason: String },
    /// An error from the tensor library (device, dtype).
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Checks that `tensor` has the shape `expected`, naming `field` if not.
pub(crate) fn check_shape(
    field: &'static str,
    tensor: &candle_core::Tensor,
    expected: &candle_core::Shape,
) -> Result<(), SamplerError> {
    if tensor.shape() == expected {
        Ok(())
    } else {
        Err(SamplerError::ShapeMismatch { field, expected: expected.dims().to_vec(), got: tensor.dims().to_vec() })
    }
}
