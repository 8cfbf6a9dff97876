//! Decoding a latent video one latent frame at a time.
//!
//! This is the reference's decode loop turned inside out: instead of concatenating every chunk's
//! output into one tensor, each step hands its pixel frames back to the caller (to encode into a video,
//! send over the network, ...) and forgets them. What stays between steps is the causal cache alone,
//! whose size is set by the frame size: an 81-frame and an 8,001-frame video decode in the same memory.

use candle_core::Tensor;

use super::cache::CausalCache;
use super::WanVae;
use crate::model::error::{ModelError, Result};

/// A decode in progress. Feed raw latent frames in order with [`push`](Self::push).
#[derive(Debug)]
pub struct VaeDecodeStream<'a> {
    vae: &'a WanVae,
    cache: CausalCache,
    /// Shape `[B, h, w]` of the first frame; later frames must match.
    shape: Option<(usize, usize, usize)>,
    frames_in: usize,
}

impl<'a> VaeDecodeStream<'a> {
    pub(crate) fn new(vae: &'a WanVae) -> Self {
        VaeDecodeStream { vae, cache: CausalCache::default(), shape: None, frames_in: 0 }
    }

    /// Decodes the next raw latent frame `[B, z_dim, 1, h, w]` (or `[B, z_dim, h, w]`) into pixel
    /// frames `[B, 3, n, 8h, 8w]` clamped to `[-1, 1]` (unless the weights are being trained): `n = 1`
    /// for the first latent frame, 4 (the temporal factor) for every later one.
    pub fn push(&mut self, latent_frame: &Tensor) -> Result<Tensor> {
        let cfg = self.vae.config();
        let frame = match latent_frame.rank() {
            4 => latent_frame.unsqueeze(2)?,
            _ => latent_frame.clone(),
        };
        let (b, c, t, h, w) = match frame.dims() {
            &[b, c, 1, h, w] if c == cfg.z_dim && b > 0 && h > 0 && w > 0 => (b, c, 1, h, w),
            dims => {
                return Err(ModelError::input(
                    "latent_frame",
                    format!("expected one frame [B, {}, 1, h, w], got shape {dims:?}", cfg.z_dim),
                ))
            }
        };
        debug_assert_eq!((c, t), (cfg.z_dim, 1));
        match self.shape {
            None => self.shape = Some((b, h, w)),
            Some(prev) if prev != (b, h, w) => {
                return Err(ModelError::input(
                    "latent_frame",
                    format!("frame {} is [B, h, w] = {:?}, earlier frames were {prev:?}", self.frames_in, (b, h, w)),
                ))
            }
            Some(_) => {}
        }
        let x = frame.to_device(self.vae.device())?.to_dtype(self.vae.dtype())?;
        let x = self.vae.post_quant_conv.forward(None, &x)?;
        let out = self.vae.decoder.forward(&x, &mut self.cache)?;
        self.frames_in += 1;
        // While the VAE is trained its output is left unclamped: a clamped pixel has no gradient, and an
        // untrained decoder overshoots [-1, 1] often enough to stall.
        if out.track_op() {
            return Ok(out);
        }
        Ok(out.clamp(-1f32, 1f32)?)
    }

    /// Latent frames decoded so far.
    pub fn frames_in(&self) -> usize {
        self.frames_in
    }

    /// Bytes the causal cache holds between steps.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
}
