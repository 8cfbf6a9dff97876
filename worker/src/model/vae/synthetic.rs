//! A VAE with made-up weights, and a timed streaming decode, for benchmarks that must run without the
//! real checkpoint. Speed does not depend on the weights' values, only on the config, so the published
//! Wan2.1 config with synthetic weights times exactly like the real model.
//!
//! Weights are deterministic in `(seed, tensor name)`: uniform with variance `1 / fan_in` for
//! convolution kernels (so activations keep their scale), zero biases, unit norm gains.

use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{VaeConfig, WanVae};
use crate::model::error::Result;

/// Builds a VAE with `cfg`'s architecture and synthetic weights.
pub fn synthetic_vae(cfg: VaeConfig, dtype: DType, device: &Device, seed: u64) -> Result<WanVae> {
    let vb = VarBuilder::from_backend(Box::new(Synthetic { seed }), dtype, device.clone());
    WanVae::new(cfg, vb)
}

/// What a timed streaming decode measured.
#[derive(Debug, Clone)]
pub struct DecodeTiming {
    /// Pixel frames produced.
    pub frames_out: usize,
    /// Seconds per latent frame pushed, in order (the first is cheaper: it yields one frame, not four).
    pub step_seconds: Vec<f64>,
    pub total_seconds: f64,
    /// Bytes held by the causal cache after the last step (the decoder's steady-state carried state).
    pub cache_bytes: usize,
}

/// Decodes `latent_frames` random latent frames of `[batch, z_dim, 1, h, w]` through a
/// [`super::VaeDecodeStream`], handing every chunk of pixel frames to `sink` and then dropping it, so
/// memory stays at one step's worth whatever the length.
pub fn time_stream_decode(
    vae: &WanVae,
    batch: usize,
    latent_frames: usize,
    (h, w): (usize, usize),
    mut sink: impl FnMut(&Tensor) -> Result<()>,
) -> Result<DecodeTiming> {
    let z = vae.config().z_dim;
    let mut stream = vae.decode_stream();
    let mut step_seconds = Vec::with_capacity(latent_frames);
    let mut frames_out = 0;
    let start = Instant::now();
    for _ in 0..latent_frames {
        let latent = Tensor::randn(0f32, 1f32, (batch, z, 1, h, w), vae.device())?;
        let step = Instant::now();
        let frames = stream.push(&latent)?;
        step_seconds.push(step.elapsed().as_secs_f64());
        frames_out += frames.dim(2)?;
        sink(&frames)?;
    }
    Ok(DecodeTiming {
        frames_out,
        step_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
        cache_bytes: stream.cache_bytes(),
    })
}

/// A `VarBuilder` backend that invents every tensor it is asked for.
struct Synthetic {
    seed: u64,
}

impl SimpleBackend for Synthetic {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _hint: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = shape.elem_count();
        let values: Vec<f32> = if name.ends_with("gamma") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            let fan_in: usize = shape.dims().iter().skip(1).product();
            let bound = (3.0 / fan_in.max(1) as f64).sqrt() as f32;
            let mut state = self.seed ^ fnv1a(name);
            (0..n).map(|_| (2.0 * unit(&mut state) - 1.0) * bound).collect()
        };
        Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("synthetic VAE weights need a shape (asked for `{name}` without one)")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// splitmix64, mapped to `[0, 1)`.
fn unit(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}
