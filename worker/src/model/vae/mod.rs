//! The Wan2.1 video VAE (diffusers' `AutoencoderKLWan`) in candle.
//!
//! Video `[B, 3, 1 + 4k, H, W]` in `[-1, 1]` <-> raw latents `[B, 16, 1 + k, H/8, W/8]`. Both directions
//! run a chunk at a time with a causal cache (`cache.rs`), exactly as the reference does, so that memory
//! depends on the frame size and not on the video's length: decoding takes one latent frame per step
//! ([`VaeDecodeStream`]), encoding takes 1 frame and then 4 at a time.
//!
//! Latents come in two scales: *raw* (what the VAE produces and consumes) and *normalised* (per-channel
//! standardised with the config's `latents_mean`/`latents_std`, what the transformer works in).
//! [`WanVae::denormalize`] and [`WanVae::normalize`] convert between them the way the Wan pipelines do.

mod blocks;
mod cache;
mod config;
mod conv;
mod cpu_conv;
mod decoder;
mod encoder;
mod norm;
mod par;
mod resample;
mod stream;
#[cfg(test)]
mod tests;
mod train_conv;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::VaeConfig;
pub use stream::VaeDecodeStream;

use self::cache::CausalCache;
use self::conv::Conv;
use self::decoder::Decoder;
use self::encoder::Encoder;
use crate::model::error::{ModelError, Result};
use crate::model::load::ComponentDir;

/// Pixel frames the encoder takes per chunk after the first single frame (the reference's fixed 4).
const ENCODE_CHUNK: usize = 4;

#[derive(Debug, Clone)]
pub struct WanVae {
    cfg: VaeConfig,
    encoder: Encoder,
    quant_conv: Conv,
    post_quant_conv: Conv,
    decoder: Decoder,
    /// `latents_mean` and `1 / latents_std` as `[1, z, 1, 1, 1]` f32, as the pipeline builds them.
    mean: Tensor,
    inv_std: Tensor,
    dtype: DType,
    device: Device,
}

impl WanVae {
    /// Loads `vae/` of a diffusers Wan pipeline: `config.json` (validated) and the safetensors weights.
    pub fn load(dir: &ComponentDir, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: VaeConfig = dir.config()?;
        cfg.validate()?;
        let vb = dir.var_builder(dtype, device)?;
        Self::new(cfg, vb).map_err(|e| dir.weights_error(e))
    }

    /// Builds the VAE from any variable source whose names are diffusers' keys (`encoder.conv_in.weight`,
    /// `decoder.up_blocks.0.resnets.0.conv1.bias`, ...).
    pub fn new(cfg: VaeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let z = cfg.z_dim;
        let encoder = Encoder::new(&vb.pp("encoder"), &cfg)?;
        let quant_conv = Conv::causal3d(&vb.pp("quant_conv"), (2 * z, 2 * z), (1, 1, 1), 1, (0, 0, 0))?;
        let post_quant_conv = Conv::causal3d(&vb.pp("post_quant_conv"), (z, z), (1, 1, 1), 1, (0, 0, 0))?;
        let decoder = Decoder::new(&vb.pp("decoder"), &cfg)?;
        let stats = |v: &[f64]| -> Result<Tensor> {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Ok(Tensor::from_vec(v, (1, z, 1, 1, 1), vb.device())?)
        };
        let mean = stats(&cfg.latents_mean)?;
        let inv_std = (1.0 / stats(&cfg.latents_std)?)?;
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        Ok(WanVae { cfg, encoder, quant_conv, post_quant_conv, decoder, mean, inv_std, dtype, device })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Starts decoding a video latent by latent frame; see [`VaeDecodeStream`].
    pub fn decode_stream(&self) -> VaeDecodeStream<'_> {
        VaeDecodeStream::new(self)
    }

    /// Decodes raw latents `[B, z_dim, F, h, w]` to video `[B, 3, 1 + 4(F-1), 8h, 8w]` clamped to
    /// `[-1, 1]`, in the VAE's dtype. Holds the whole output; use [`decode_stream`](Self::decode_stream)
    /// to keep memory independent of the length.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let frames = self.check_latents(latents)?;
        let mut stream = self.decode_stream();
        let mut chunks = Vec::with_capacity(frames);
        for f in 0..frames {
            chunks.push(stream.push(&latents.narrow(2, f, 1)?)?);
        }
        Ok(Tensor::cat(&chunks, 2)?)
    }

    /// Encodes video `[B, in_channels, 1 + 4k, H, W]` (values in `[-1, 1]`) to the latent
    /// distribution's mode, the raw latent mean `[B, z_dim, 1 + k, H/8, W/8]`.
    pub fn encode(&self, sample: &Tensor) -> Result<Tensor> {
        // The first z_dim channels are the mean, the rest the log-variance.
        Ok(self.encode_moments(sample)?.narrow(1, 0, self.cfg.z_dim)?)
    }

    /// The latent distribution of video `[B, in_channels, 1 + 4k, H, W]`: `[B, 2·z_dim, 1 + k, H/8, W/8]`,
    /// the mean's channels then the log-variance's (what training samples from).
    pub fn encode_moments(&self, sample: &Tensor) -> Result<Tensor> {
        let (_, c, t, h, w) = sample.dims5().map_err(|_| {
            ModelError::input("sample", format!("expected [B, C, T, H, W], got shape {:?}", sample.dims()))
        })?;
        if c != self.cfg.in_channels {
            return Err(ModelError::input("sample", format!("{c} channels, the VAE takes {}", self.cfg.in_channels)));
        }
        if t == 0 || (t - 1) % ENCODE_CHUNK != 0 {
            return Err(ModelError::input("sample", format!("{t} frames; the encoder takes 1 + 4k frames")));
        }
        let f = self.cfg.spatial_factor();
        if h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            return Err(ModelError::input("sample", format!("frames of {h}x{w}; the encoder takes multiples of {f}")));
        }
        let x = sample.to_device(&self.device)?.to_dtype(self.dtype)?;
        let mut cache = CausalCache::default();
        let mut chunks = vec![self.encoder.forward(&x.narrow(2, 0, 1)?, &mut cache)?];
        for start in (1..t).step_by(ENCODE_CHUNK) {
            chunks.push(self.encoder.forward(&x.narrow(2, start, ENCODE_CHUNK)?, &mut cache)?);
        }
        Ok(self.quant_conv.forward(None, &Tensor::cat(&chunks, 2)?)?)
    }

    /// Raw latents to the transformer's scale: `(raw - mean) * (1 / std)`, per channel.
    pub fn normalize(&self, raw: &Tensor) -> Result<Tensor> {
        let (mean, inv_std) = self.stats_like(raw)?;
        Ok(raw.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?)
    }

    /// The transformer's latents back to raw, as the pipeline does before decoding:
    /// `latents / (1 / std) + mean`, per channel.
    pub fn denormalize(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, inv_std) = self.stats_like(latents)?;
        Ok(latents.broadcast_div(&inv_std)?.broadcast_add(&mean)?)
    }

    fn stats_like(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = x.dims().get(1).copied().unwrap_or(0);
        if x.rank() != 5 || c != self.cfg.z_dim {
            return Err(ModelError::input(
                "latents",
                format!("expected [B, {}, F, h, w], got shape {:?}", self.cfg.z_dim, x.dims()),
            ));
        }
        let conv = |t: &Tensor| t.to_device(x.device())?.to_dtype(x.dtype());
        Ok((conv(&self.mean)?, conv(&self.inv_std)?))
    }

    /// Checks a raw latent video `[B, z_dim, F, h, w]`; returns F.
    fn check_latents(&self, latents: &Tensor) -> Result<usize> {
        match latents.dims() {
            &[b, c, f, h, w] if c == self.cfg.z_dim && b > 0 && f > 0 && h > 0 && w > 0 => Ok(f),
            dims => Err(ModelError::input(
                "latents",
                format!("expected [B, {}, F, h, w] with no empty dimension, got shape {dims:?}", self.cfg.z_dim),
            )),
        }
    }
}
