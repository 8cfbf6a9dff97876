//! `WanDecoder3d`: latents `[B, z_dim, T, h, w]` to video `[B, 3, T', 8h, 8w]`, one chunk per call
//! with the causal cache carrying context. Fed one latent frame at a time (as the reference does), the
//! first call yields one video frame and every later call `temporal_factor` (4) frames.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{MidBlock, ResidualBlock};
use super::cache::CausalCache;
use super::config::VaeConfig;
use super::conv::Conv;
use super::norm::RmsNorm;
use super::resample::{Resample, ResampleMode};

/// `WanUpBlock`: `num_res_blocks + 1` residual blocks, then an optional upsampler.
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, cache: &mut CausalCache) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.resnets {
            x = block.forward(&x, cache)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, cache),
            None => Ok(x),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    conv_in: Conv,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: Conv,
}

impl Decoder {
    pub fn new(vb: &VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let dims = cfg.decoder_dims();
        let levels = cfg.dim_mult.len();
        let conv_in = Conv::causal3d(&vb.pp("conv_in"), (cfg.z_dim, dims[0]), (3, 3, 3), 1, (1, 1, 1))?;
        let mid = MidBlock::new(&vb.pp("mid_block"), dims[0])?;
        let mut up = Vec::with_capacity(levels);
        for level in 0..levels {
            let vb = vb.pp(format!("up_blocks.{level}"));
            // Every upsampler halves the width, so each level after the first starts at half its
            // predecessor's.
            let in_dim = if level > 0 { dims[level] / 2 } else { dims[level] };
            let out_dim = dims[level + 1];
            let resnets = (0..=cfg.num_res_blocks)
                .map(|i| {
                    ResidualBlock::new(&vb.pp(format!("resnets.{i}")), if i == 0 { in_dim } else { out_dim }, out_dim)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if level + 1 != levels {
                // Time is upsampled in the reverse order it was downsampled.
                let temporal = cfg.temperal_downsample[levels - 2 - level];
                let mode = if temporal { ResampleMode::Upsample3d } else { ResampleMode::Upsample2d };
                Some(Resample::new(&vb.pp("upsamplers.0"), out_dim, mode)?)
            } else {
                None
            };
            up.push(UpBlock { resnets, upsampler });
        }
        let last = dims[levels];
        Ok(Decoder {
            conv_in,
            mid,
            up,
            norm_out: RmsNorm::load(&vb.pp("norm_out"), last, false)?,
            conv_out: Conv::causal3d(&vb.pp("conv_out"), (last, cfg.out_channels), (3, 3, 3), 1, (1, 1, 1))?,
        })
    }

    /// One chunk of (post-quant-conv) latents, continuing the video the cache has seen so far.
    pub fn forward(&self, x: &Tensor, cache: &mut CausalCache) -> Result<Tensor> {
        cache.rewind();
        let x = cache.conv(&self.conv_in, x)?;
        let mut x = self.mid.forward(&x, cache)?;
        for block in &self.up {
            x = block.forward(&x, cache)?;
        }
        cache.conv(&self.conv_out, &self.norm_out.forward_silu(&x)?)
    }
}
