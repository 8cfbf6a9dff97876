//! The VAE's building blocks shared by encoder and decoder: the residual block, the single-head
//! per-frame attention block, and the middle block made of both.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::cache::CausalCache;
use super::conv::Conv;
use super::norm::RmsNorm;
use crate::model::attention::{attention, AttentionTiling};

/// `WanResidualBlock`: `conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x)`, both convolutions
/// 3×3×3 causal; the shortcut is a 1×1×1 convolution when the width changes.
#[derive(Debug, Clone)]
pub(crate) struct ResidualBlock {
    norm1: RmsNorm,
    conv1: Conv,
    norm2: RmsNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl ResidualBlock {
    pub fn new(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let shortcut = if in_dim != out_dim {
            Some(Conv::causal3d(&vb.pp("conv_shortcut"), (in_dim, out_dim), (1, 1, 1), 1, (0, 0, 0))?)
        } else {
            None
        };
        Ok(ResidualBlock {
            norm1: RmsNorm::load(&vb.pp("norm1"), in_dim, false)?,
            conv1: Conv::causal3d(&vb.pp("conv1"), (in_dim, out_dim), (3, 3, 3), 1, (1, 1, 1))?,
            norm2: RmsNorm::load(&vb.pp("norm2"), out_dim, false)?,
            conv2: Conv::causal3d(&vb.pp("conv2"), (out_dim, out_dim), (3, 3, 3), 1, (1, 1, 1))?,
            shortcut,
        })
    }

    /// `x [B, in_dim, T, H, W] -> [B, out_dim, T, H, W]`; uses two cache slots (conv1, conv2).
    /// Intermediates are dropped as soon as they are used: at 480×832 each is 600 MB.
    pub fn forward(&self, x: &Tensor, cache: &mut CausalCache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(conv) => conv.forward(None, x)?,
            None => x.clone(),
        };
        let y = {
            let a = self.norm1.forward_silu(x)?;
            cache.conv(&self.conv1, &a)?
        };
        // Dropout is the identity at inference.
        let a = self.norm2.forward_silu(&y)?;
        drop(y);
        cache.conv_add(&self.conv2, &a, Some(&h))
    }
}

/// `WanAttentionBlock`: single-head self-attention among the pixels of each frame (frames never attend
/// to each other, so it needs no cache), with a residual connection.
#[derive(Debug, Clone)]
pub(crate) struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv,
    proj: Conv,
    dim: usize,
}

impl AttentionBlock {
    pub fn new(vb: &VarBuilder, dim: usize) -> Result<Self> {
        Ok(AttentionBlock {
            norm: RmsNorm::load(&vb.pp("norm"), dim, true)?,
            to_qkv: Conv::per_frame2d(&vb.pp("to_qkv"), (dim, 3 * dim), 1, 1, [0; 4])?,
            proj: Conv::per_frame2d(&vb.pp("proj"), (dim, dim), 1, 1, [0; 4])?,
            dim,
        })
    }

    /// `x [B, C, T, H, W] -> [B, C, T, H, W]`. The norm and both projections act on each pixel's
    /// channels alone, so they run on the video layout directly; only the attention groups by frame.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let qkv = self.to_qkv.forward(None, &self.norm.forward(x)?)?; // [B, 3C, T, H, W]
                                                                      // Channels [0, C) are queries, [C, 2C) keys, [2C, 3C) values (the reference's `chunk(3)`).
                                                                      // [B, C, T, H, W] -> [B, T, H*W, C] -> [B*T, 1, H*W, C]: one single-head sequence per frame.
        let per_frame = |i: usize| -> Result<Tensor> {
            qkv.narrow(1, i * c, c)?.reshape((b, c, t, h * w))?.permute((0, 2, 3, 1))?.reshape((b * t, 1, h * w, c))
        };
        let (q, k, v) = (per_frame(0)?, per_frame(1)?, per_frame(2)?);
        let scale = 1.0 / (self.dim as f64).sqrt();
        let y = attention(&q, &k, &v, scale, AttentionTiling::default())?;
        // [B*T, 1, H*W, C] -> [B, T, H*W, C] -> [B, C, T, H*W] -> [B, C, T, H, W]
        let y = y.reshape((b, t, h * w, c))?.permute((0, 3, 1, 2))?.reshape((b, c, t, h, w))?;
        self.proj.forward(None, &y)? + x
    }
}

/// `WanMidBlock` with one layer: residual, attention, residual, all at the deepest width.
#[derive(Debug, Clone)]
pub(crate) struct MidBlock {
    res0: ResidualBlock,
    attn: AttentionBlock,
    res1: ResidualBlock,
}

impl MidBlock {
    pub fn new(vb: &VarBuilder, dim: usize) -> Result<Self> {
        Ok(MidBlock {
            res0: ResidualBlock::new(&vb.pp("resnets.0"), dim, dim)?,
            attn: AttentionBlock::new(&vb.pp("attentions.0"), dim)?,
            res1: ResidualBlock::new(&vb.pp("resnets.1"), dim, dim)?,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut CausalCache) -> Result<Tensor> {
        let x = self.res0.forward(x, cache)?;
        let x = self.attn.forward(&x)?;
        self.res1.forward(&x, cache)
    }
}
