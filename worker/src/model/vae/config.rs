//! The VAE's hyper-parameters, read from diffusers' `vae/config.json` (class `AutoencoderKLWan`).
//!
//! Only the Wan2.1 layout is supported: the Wan2.2 options (`is_residual`, `patch_size`) are accepted in
//! the file when they keep their Wan2.1 values and rejected otherwise, so a Wan2.2 VAE fails at load with
//! the field named instead of decoding garbage.

use serde::Deserialize;

use crate::model::error::{ModelError, Result};

/// `AutoencoderKLWan`'s config. Field names (typos included: `temperal_downsample`) are diffusers'; keys
/// this struct does not know (`_class_name`, `scale_factor_*`, ...) are ignored. Missing keys take
/// diffusers' defaults, which are the Wan2.1 values.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct VaeConfig {
    /// Channels of the first encoder level; every level is `base_dim * dim_mult[i]`.
    #[serde(default = "default_base_dim")]
    pub base_dim: usize,
    /// The decoder's base width when it differs from the encoder's (Wan2.2); `None` means `base_dim`.
    #[serde(default)]
    pub decoder_base_dim: Option<usize>,
    /// Latent channels (the encoder emits twice as many: mean and log-variance).
    #[serde(default = "default_z_dim")]
    pub z_dim: usize,
    /// Channel multiplier per resolution level; `len - 1` spatial halvings.
    #[serde(default = "default_dim_mult")]
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more per level).
    #[serde(default = "default_num_res_blocks")]
    pub num_res_blocks: usize,
    /// Encoder levels (as a scale 1, 1/2, 1/4, ...) that get an attention block after each residual
    /// block. Empty for Wan2.1; the decoder never has them.
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    /// Per downsampling level, whether time is halved as well (`len = dim_mult.len() - 1`). The decoder
    /// upsamples in the reverse order.
    #[serde(default = "default_temperal_downsample")]
    pub temperal_downsample: Vec<bool>,
    /// Training-time dropout; inference ignores it.
    #[serde(default)]
    pub dropout: f64,
    /// Per-channel statistics of raw latents, used to normalise them for the transformer.
    #[serde(default = "default_latents_mean")]
    pub latents_mean: Vec<f64>,
    #[serde(default = "default_latents_std")]
    pub latents_std: Vec<f64>,
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    /// Wan2.2 only; must be false.
    #[serde(default)]
    pub is_residual: bool,
    /// Wan2.2 only; must be absent or 1.
    #[serde(default)]
    pub patch_size: Option<usize>,
}

fn default_base_dim() -> usize {
    96
}
fn default_z_dim() -> usize {
    16
}
fn default_dim_mult() -> Vec<usize> {
    vec![1, 2, 4, 4]
}
fn default_num_res_blocks() -> usize {
    2
}
fn default_temperal_downsample() -> Vec<bool> {
    vec![false, true, true]
}
fn default_channels() -> usize {
    3
}
fn default_latents_mean() -> Vec<f64> {
    vec![
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
        -0.9497, 0.2503, -0.2921,
    ]
}
fn default_latents_std() -> Vec<f64> {
    vec![
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
        2.8251, 1.9160,
    ]
}

impl VaeConfig {
    /// The published Wan2.1 VAE (`Wan-AI/Wan2.1-T2V-*-Diffusers/vae`), shared by the 1.3B and 14B models.
    pub fn wan2_1() -> Self {
        VaeConfig {
            base_dim: default_base_dim(),
            decoder_base_dim: None,
            z_dim: default_z_dim(),
            dim_mult: default_dim_mult(),
            num_res_blocks: default_num_res_blocks(),
            attn_scales: Vec::new(),
            temperal_downsample: default_temperal_downsample(),
            dropout: 0.0,
            latents_mean: default_latents_mean(),
            latents_std: default_latents_std(),
            in_channels: default_channels(),
            out_channels: default_channels(),
            is_residual: false,
            patch_size: None,
        }
    }

    /// Checks every field the model relies on; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(ModelError::config(field, "must be positive"))
            } else {
                Ok(())
            }
        };
        positive("base_dim", self.base_dim)?;
        if let Some(d) = self.decoder_base_dim {
            positive("decoder_base_dim", d)?;
        }
        positive("z_dim", self.z_dim)?;
        positive("num_res_blocks", self.num_res_blocks)?;
        positive("in_channels", self.in_channels)?;
        positive("out_channels", self.out_channels)?;
        if self.dim_mult.is_empty() {
            return Err(ModelError::config("dim_mult", "must list at least one level"));
        }
        if let Some(i) = self.dim_mult.iter().position(|&m| m == 0) {
            return Err(ModelError::config("dim_mult", format!("entry {i} is 0")));
        }
        if self.temperal_downsample.len() != self.dim_mult.len() - 1 {
            return Err(ModelError::config(
                "temperal_downsample",
                format!(
                    "has {} entries but dim_mult has {} levels, so {} are needed (one per downsampling)",
                    self.temperal_downsample.len(),
                    self.dim_mult.len(),
                    self.dim_mult.len() - 1
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::config("dropout", format!("{} is not in [0, 1)", self.dropout)));
        }
        for (field, stats) in [("latents_mean", &self.latents_mean), ("latents_std", &self.latents_std)] {
            if stats.len() != self.z_dim {
                return Err(ModelError::config(field, format!("has {} entries, z_dim is {}", stats.len(), self.z_dim)));
            }
            if let Some(i) = stats.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::config(field, format!("entry {i} is not finite")));
            }
        }
        if let Some(i) = self.latents_std.iter().position(|&v| v <= 0.0) {
            return Err(ModelError::config("latents_std", format!("entry {i} is not positive")));
        }
        if self.is_residual {
            return Err(ModelError::config("is_residual", "the Wan2.2 residual VAE is not supported"));
        }
        if let Some(p) = self.patch_size.filter(|&p| p != 1) {
            return Err(ModelError::config("patch_size", format!("{p}: patchified (Wan2.2) VAEs are not supported")));
        }
        Ok(())
    }

    /// Channels per encoder level: `[base, base*m0, base*m1, ...]`.
    pub(crate) fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(1).chain(self.dim_mult.iter().copied()).map(|m| self.base_dim * m).collect()
    }

    /// Channels per decoder level: `[d*m_last, d*m_last, ..., d*m0]` (the multipliers reversed, the
    /// deepest repeated first), with `d` the decoder's base width.
    pub(crate) fn decoder_dims(&self) -> Vec<usize> {
        let d = self.decoder_base_dim.unwrap_or(self.base_dim);
        let last = *self.dim_mult.last().unwrap_or(&1);
        std::iter::once(last).chain(self.dim_mult.iter().rev().copied()).map(|m| d * m).collect()
    }

    /// Pixels per latent pixel along height and width.
    pub fn spatial_factor(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }

    /// Pixel frames per latent frame (after the first, which maps to one pixel frame).
    pub fn temporal_factor(&self) -> usize {
        1 << self.temperal_downsample.iter().filter(|&&t| t).count()
    }

    /// Pixel frames decoded from `latent_frames` latent frames: `1 + factor * (F - 1)`.
    pub fn decoded_frames(&self, latent_frames: usize) -> usize {
        if latent_frames == 0 {
            0
        } else {
            1 + self.temporal_factor() * (latent_frames - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan2_1_preset_is_valid_and_matches_the_published_layout() {
        let cfg = VaeConfig::wan2_1();
        cfg.validate().expect("preset is valid");
        assert_eq!(cfg.encoder_dims(), vec![96, 96, 192, 384, 384]);
        assert_eq!(cfg.decoder_dims(), vec![384, 384, 384, 192, 96]);
        assert_eq!(cfg.spatial_factor(), 8);
        assert_eq!(cfg.temporal_factor(), 4);
        assert_eq!(cfg.decoded_frames(21), 81);
    }

    #[test]
    fn config_json_parses_with_unknown_keys_and_defaults() {
        let json = r#"{"_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16, "attn_scales": [],
            "temperal_downsample": [false, true, true], "scale_factor_spatial": 8}"#;
        let cfg: VaeConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(cfg, VaeConfig::wan2_1());
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = VaeConfig::wan2_1();
        cfg.latents_std.pop();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("latents_std"), "{err}");

        let mut cfg = VaeConfig::wan2_1();
        cfg.temperal_downsample = vec![true];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("temperal_downsample"), "{err}");

        let mut cfg = VaeConfig::wan2_1();
        cfg.is_residual = true;
        assert!(cfg.validate().unwrap_err().to_string().contains("is_residual"));
    }
}
