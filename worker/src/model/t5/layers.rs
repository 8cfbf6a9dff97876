//! The small pieces of a umT5 block: T5's scale-only RMS norm, the (gated) feed-forward network, and the
//! bucketing of relative positions that every layer's attention bias is indexed by.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::config::{Activation, FeedForwardKind, UMT5Config};

/// T5's layer norm: `x / sqrt(mean(x²) + eps) * weight`, with no mean subtraction and no bias. The mean
/// square is taken in f32 whatever the model's dtype, because bf16 cannot accumulate 4096 squares
/// without losing most of its bits; the result comes back in the weight's dtype.
#[derive(Debug, Clone)]
pub struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(T5LayerNorm { weight: vb.get(size, "weight")?, eps })
    }

    /// `x`: `[..., d_model]` in any float dtype; returns the weight's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv_rms)?.to_dtype(self.weight.dtype())?.broadcast_mul(&self.weight)
    }
}

/// The feed-forward network: `wo(act(wi_0 x) * wi_1 x)` when gated (umT5's `gated-gelu`), or
/// `wo(act(wi x))` when not. No biases anywhere, as in all T5 models.
#[derive(Debug, Clone)]
pub struct FeedForward {
    wi: Linear,
    /// The linear branch of a gated FFN (`wi_1`); `wi` then holds `wi_0`.
    wi_gate: Option<Linear>,
    wo: Linear,
    activation: Activation,
}

impl FeedForward {
    /// `vb` points at `DenseReluDense`.
    pub fn new(cfg: &UMT5Config, kind: FeedForwardKind, vb: VarBuilder) -> Result<Self> {
        let (wi, wi_gate) = if kind.gated {
            let wi_0 = candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_0"))?;
            let wi_1 = candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_1"))?;
            (wi_0, Some(wi_1))
        } else {
            (candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi"))?, None)
        };
        // transformers keeps `wo` in f32 whatever the model's dtype (`_keep_in_fp32_modules`): the
        // gated FFN's output overflows f16 in umT5-XXL otherwise.
        let wo = candle_nn::linear_no_bias(cfg.d_ff, cfg.d_model, vb.pp("wo").set_dtype(DType::F32))?;
        Ok(FeedForward { wi, wi_gate, wo, activation: kind.activation })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pre = self.wi.forward(x)?;
        let mut hidden = match self.activation {
            Activation::Relu => pre.relu()?,
            Activation::GeluErf => pre.gelu_erf()?,
            // candle's `gelu` is the tanh approximation, transformers' `gelu_new`.
            Activation::GeluTanh => pre.gelu()?,
            Activation::Silu => pre.silu()?,
        };
        if let Some(gate) = &self.wi_gate {
            hidden = (hidden * gate.forward(x)?)?;
        }
        // In f32, like the reference's `wo`; the caller adds it to its f32 residual stream.
        self.wo.forward(&hidden.to_dtype(DType::F32)?)
    }
}

/// The bucket of each (query, key) pair of a bidirectional encoder over `len` tokens: a `[len, len]`
/// u32 tensor, the same for every layer (each layer has its own table of what a bucket adds).
pub fn relative_position_buckets(cfg: &UMT5Config, len: usize, device: &Device) -> Result<Tensor> {
    let mut buckets = Vec::with_capacity(len * len);
    for query in 0..len {
        for key in 0..len {
            let relative = key as i64 - query as i64;
            buckets.push(relative_position_bucket(
                relative,
                cfg.relative_attention_num_buckets,
                cfg.relative_attention_max_distance,
            ));
        }
    }
    Tensor::from_vec(buckets, (len, len), device)
}

/// T5's bidirectional bucketing of `relative = key - query`: half the buckets for keys after the query,
/// half for keys before (or at) it; within each half, distances below `max_exact` get a bucket each and
/// larger ones share logarithmically wider buckets up to `max_distance`, past which all share the last.
///
/// The logarithm is computed in f32 with the operations in the reference's order so that distances that
/// fall exactly on a bucket boundary (powers of two, for Wan's 32 buckets and distance 128) land in the
/// same bucket as there.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = num_buckets / 2;
    let offset = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    let within = if distance < max_exact {
        distance
    } else {
        let scale = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let log_ratio = (distance as f32 / max_exact as f32).ln() / scale * (half - max_exact) as f32;
        (max_exact + log_ratio as usize).min(half - 1)
    };
    (offset + within) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_reference_for_wan_settings() {
        // Values from transformers' `UMT5Attention._relative_position_bucket` (32 buckets, distance 128).
        let cases = [
            (0, 0),
            (1, 17),
            (-1, 1),
            (7, 23),
            (-7, 7),
            (8, 24),
            (-8, 8),
            (11, 24),
            (15, 25),
            (16, 26),
            (-16, 10),
            (22, 26),
            (23, 27),
            (31, 27),
            (32, 28),
            (-32, 12),
            (45, 28),
            (63, 29),
            (64, 30),
            (-64, 14),
            (90, 30),
            (91, 31),
            (127, 31),
            (128, 31),
            (-128, 15),
            (511, 31),
            (-511, 15),
        ];
        for (relative, expected) in cases {
            assert_eq!(relative_position_bucket(relative, 32, 128), expected, "relative position {relative}");
        }
    }

    #[test]
    fn norm_is_scale_only() -> Result<()> {
        let device = Device::Cpu;
        let norm = T5LayerNorm { weight: Tensor::new(&[1f32, 2.0], &device)?, eps: 0.0 };
        let out = norm.forward(&Tensor::new(&[[3f32, 4.0]], &device)?)?.to_vec2::<f32>()?;
        let rms = (12.5f32).sqrt();
        assert!((out[0][0] - 3.0 / rms).abs() < 1e-6 && (out[0][1] - 8.0 / rms).abs() < 1e-6);
        Ok(())
    }
}
