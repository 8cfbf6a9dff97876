//! `WanResample`: halving or doubling height and width, and optionally time.
//!
//! The temporal halves of these layers are where the reference's chunking is not just "a causal conv
//! with a cache", and where the 1 + 4k frame counts come from:
//! - temporal upsampling doubles every latent frame *except the very first*: on the first chunk the
//!   layer passes its input through untouched (the reference marks its slot `"Rep"`); from the second
//!   chunk on, a causal 3×1×1 convolution makes `2C` channels that are interleaved into two frames;
//! - temporal downsampling keeps the very first frame as is and then turns each pair of new frames into
//!   one, with a stride-2 3×1×1 convolution over the previous chunk's last frame and the new ones.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::cache::{tail, CausalCache, Slot};
use super::conv::Conv;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

#[derive(Debug, Clone)]
pub(crate) struct Resample {
    mode: ResampleMode,
    /// The spatial convolution (`resample.1`; `resample.0` is the parameterless upsample or padding).
    conv: Conv,
    time_conv: Option<Conv>,
}

impl Resample {
    /// Upsamplers output `dim / 2` channels (the decoder's next level starts at half width);
    /// downsamplers keep `dim`.
    pub fn new(vb: &VarBuilder, dim: usize, mode: ResampleMode) -> Result<Self> {
        use ResampleMode::*;
        let conv_vb = vb.pp("resample.1");
        let conv = match mode {
            Upsample2d | Upsample3d => Conv::per_frame2d(&conv_vb, (dim, dim / 2), 3, 1, [1, 1, 1, 1])?,
            // ZeroPad2d((0, 1, 0, 1)) then a 3×3 stride-2 convolution.
            Downsample2d | Downsample3d => Conv::per_frame2d(&conv_vb, (dim, dim), 3, 2, [0, 1, 0, 1])?,
        };
        let tvb = vb.pp("time_conv");
        let time_conv = match mode {
            Upsample3d => Some(Conv::causal3d(&tvb, (dim, 2 * dim), (3, 1, 1), 1, (1, 0, 0))?),
            Downsample3d => Some(Conv::causal3d(&tvb, (dim, dim), (3, 1, 1), 2, (0, 0, 0))?),
            Upsample2d | Downsample2d => None,
        };
        Ok(Resample { mode, conv, time_conv })
    }

    /// `x [B, C, T, H, W]` to `[B, C', T', 2H, 2W]` (up: nearest-neighbour ×2, which is what the
    /// reference's `nearest-exact` does at scale 2, then a 3×3 convolution) or `[B, C, T', H/2, W/2]` (down); the 3D modes
    /// use one cache slot.
    pub fn forward(&self, x: &Tensor, cache: &mut CausalCache) -> Result<Tensor> {
        match (self.mode, &self.time_conv) {
            (ResampleMode::Upsample3d, Some(tc)) => {
                let x = upsample_time(tc, x, cache)?;
                self.conv.forward_upsampled(&x)
            }
            (ResampleMode::Upsample2d, _) => self.conv.forward_upsampled(x),
            (ResampleMode::Downsample2d, _) => self.conv.forward(None, x),
            (ResampleMode::Downsample3d, Some(tc)) => {
                let x = self.conv.forward(None, x)?;
                downsample_time(tc, &x, cache)
            }
            (_, None) => candle_core::bail!("resample: 3D mode without a time convolution"),
        }
    }
}

fn upsample_time(tc: &Conv, x: &Tensor, cache: &mut CausalCache) -> Result<Tensor> {
    let slot = cache.next();
    let past = match slot {
        Slot::Fresh => {
            *slot = Slot::Started;
            return Ok(x.clone());
        }
        Slot::Started => None,
        Slot::Frames(t) => Some(&*t),
    };
    let y = tc.forward(past, x)?; // [B, 2C, T, H, W]
    *slot = Slot::Frames(tail(past, x, tc.causal_pad())?);
    let (b, c, t, h, w) = x.dims5()?;
    // Channel halves are the two output frames of each input frame, in order:
    // [B, 2C, T, H, W] -> [B, 2, C, T, H, W] -> [B, C, T, 2, H, W] -> [B, C, 2T, H, W]
    y.reshape((b, 2, c, t, h, w))?.permute((0, 2, 3, 1, 4, 5))?.reshape((b, c, 2 * t, h, w))
}

fn downsample_time(tc: &Conv, x: &Tensor, cache: &mut CausalCache) -> Result<Tensor> {
    let slot = cache.next();
    let t = x.dim(2)?;
    let last = x.narrow(2, t - 1, 1)?.force_contiguous()?;
    match std::mem::replace(slot, Slot::Frames(last)) {
        // The first chunk passes through: its frames are not paired with anything.
        Slot::Fresh | Slot::Started => Ok(x.clone()),
        Slot::Frames(prev) => tc.forward(None, &Tensor::cat(&[&prev, x], 2)?),
    }
}
