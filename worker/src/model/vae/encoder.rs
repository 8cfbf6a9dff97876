//! `WanEncoder3d`: video `[B, 3, T, H, W]` to the latent distribution's parameters
//! `[B, 2*z_dim, T', H/8, W/8]`, one chunk of frames per call with the causal cache carrying context.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{AttentionBlock, MidBlock, ResidualBlock};
use super::cache::CausalCache;
use super::config::VaeConfig;
use super::conv::Conv;
use super::norm::RmsNorm;
use super::resample::{Resample, ResampleMode};

/// One entry of `down_blocks`: the reference keeps residual blocks, optional attention blocks and the
/// downsamplers in one flat list, and its checkpoint keys number them in that order.
#[derive(Debug, Clone)]
enum DownLayer {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Resample(Resample),
}

#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    conv_in: Conv,
    down: Vec<DownLayer>,
    mid: MidBlock,
    norm_out: RmsNorm,
    conv_out: Conv,
}

impl Encoder {
    pub fn new(vb: &VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let dims = cfg.encoder_dims();
        let conv_in = Conv::causal3d(&vb.pp("conv_in"), (cfg.in_channels, dims[0]), (3, 3, 3), 1, (1, 1, 1))?;
        let mut down = Vec::new();
        let mut scale = 1.0;
        let levels = cfg.dim_mult.len();
        for level in 0..levels {
            let (mut in_dim, out_dim) = (dims[level], dims[level + 1]);
            for _ in 0..cfg.num_res_blocks {
                let block = ResidualBlock::new(&vb.pp(format!("down_blocks.{}", down.len())), in_dim, out_dim)?;
                down.push(DownLayer::Residual(block));
                if cfg.attn_scales.contains(&scale) {
                    let attn = AttentionBlock::new(&vb.pp(format!("down_blocks.{}", down.len())), out_dim)?;
                    down.push(DownLayer::Attention(attn));
                }
                in_dim = out_dim;
            }
            if level + 1 != levels {
                let mode = if cfg.temperal_downsample[level] {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                let resample = Resample::new(&vb.pp(format!("down_blocks.{}", down.len())), out_dim, mode)?;
                down.push(DownLayer::Resample(resample));
                scale /= 2.0;
            }
        }
        let top = dims[levels];
        Ok(Encoder {
            conv_in,
            down,
            mid: MidBlock::new(&vb.pp("mid_block"), top)?,
            norm_out: RmsNorm::load(&vb.pp("norm_out"), top, false)?,
            conv_out: Conv::causal3d(&vb.pp("conv_out"), (top, 2 * cfg.z_dim), (3, 3, 3), 1, (1, 1, 1))?,
        })
    }

    /// One chunk: `x [B, in_channels, T, H, W]`, continuing the video the cache has seen so far.
    pub fn forward(&self, x: &Tensor, cache: &mut CausalCache) -> Result<Tensor> {
        cache.rewind();
        let mut x = cache.conv(&self.conv_in, x)?;
        for layer in &self.down {
            x = match layer {
                DownLayer::Residual(block) => block.forward(&x, cache)?,
                DownLayer::Attention(block) => block.forward(&x)?,
                DownLayer::Resample(block) => block.forward(&x, cache)?,
            };
        }
        let x = self.mid.forward(&x, cache)?;
        cache.conv(&self.conv_out, &self.norm_out.forward_silu(&x)?)
    }
}
