//! Phase 3: the transformer and the text encoder learn together, with the rectified-flow objective the
//! Wan2.1 samplers assume: for a clean latent `x₀`, noise `ε` and a level `σ`, the model sees
//! `x_σ = (1 − σ)·x₀ + σ·ε` at timestep `1000·σ` and is taught the velocity `ε − x₀`.

use candle_core::{DType, Device, Result, Tensor};

use super::data::{self, Stream};
use super::recipe::Recipe;
use crate::model::dit::WanTransformer;
use crate::model::t5::TextEncoder;

/// The clips the transformer learns from: latents normalised by the VAE's statistics, and captions.
pub struct Dataset {
    /// `[N, z, F, h, w]`.
    pub latents: Tensor,
    pub captions: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.captions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }
}

/// The inputs of transformer step `step`: which clips, at which noise levels, with which captions.
pub struct Batch {
    pub noisy: Tensor,
    pub timesteps: Tensor,
    pub target: Tensor,
    pub captions: Vec<String>,
}

/// Draws step `step`'s batch from `data`.
pub fn batch(recipe: &Recipe, data: &Dataset, step: usize, device: &Device) -> Result<Batch> {
    let r = &recipe.dit;
    let draws = |i: u64| data::uniforms(data::seed_for(recipe.seed, Stream::DitBatch, step as u64, i), r.batch);
    let picks: Vec<u32> =
        draws(0).iter().map(|u| ((u * data.len() as f64) as usize).min(data.len() - 1) as u32).collect();
    let sigmas: Vec<f32> = draws(1).iter().map(|&u| (r.shift * u / (1.0 + (r.shift - 1.0) * u)) as f32).collect();
    let captions = picks
        .iter()
        .zip(draws(2))
        .map(|(&i, u)| if u < r.caption_dropout { String::new() } else { data.captions[i as usize].clone() })
        .collect();
    let x0 = data.latents.index_select(&Tensor::from_vec(picks, r.batch, device)?, 0)?;
    let eps = data::normal(data::seed_for(recipe.seed, Stream::DitNoise, step as u64, 0), x0.dims(), device)?;
    let sigma = Tensor::from_vec(sigmas.clone(), (r.batch, 1, 1, 1, 1), device)?;
    let noisy = (x0.broadcast_mul(&(1.0 - &sigma)?)? + eps.broadcast_mul(&sigma)?)?;
    let target = (eps - x0)?;
    let timesteps = Tensor::from_vec(sigmas.iter().map(|s| s * 1000.0).collect::<Vec<_>>(), r.batch, device)?;
    Ok(Batch { noisy, timesteps, target, captions })
}

/// The mean squared error of the predicted velocity.
pub fn loss(dit: &WanTransformer, text: &TextEncoder, text_len: usize, batch: &Batch) -> Result<(Tensor, f64)> {
    let prompts: Vec<&str> = batch.captions.iter().map(String::as_str).collect();
    let context = text.encode_prompts(&prompts, text_len).map_err(candle_core::Error::wrap)?;
    let pred = dit.forward(&batch.noisy, &batch.timesteps, &context).map_err(candle_core::Error::wrap)?;
    let loss = (pred - &batch.target)?.sqr()?.mean_all()?;
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((loss, value))
}
