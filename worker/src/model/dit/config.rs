//! The diffusion transformer's configuration, as diffusers writes it in `transformer/config.json`.

use serde::Deserialize;

use crate::model::error::{ModelError, Result};

/// `WanTransformer3DModel`'s configuration. Field names are diffusers'; keys this model does not use
/// (`_class_name`, `_diffusers_version`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct WanTransformerConfig {
    #[serde(default = "default_patch_size")]
    pub patch_size: [usize; 3],
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    pub text_dim: usize,
    #[serde(default = "default_freq_dim")]
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    #[serde(default = "default_true")]
    pub cross_attn_norm: bool,
    #[serde(default = "default_qk_norm")]
    pub qk_norm: Option<String>,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Image conditioning (the I2V models): not supported by this text-to-video implementation.
    #[serde(default)]
    pub image_dim: Option<usize>,
    #[serde(default)]
    pub added_kv_proj_dim: Option<usize>,
    #[serde(default = "default_rope_max_seq_len")]
    pub rope_max_seq_len: usize,
}

fn default_patch_size() -> [usize; 3] {
    [1, 2, 2]
}
fn default_channels() -> usize {
    16
}
fn default_freq_dim() -> usize {
    256
}
fn default_true() -> bool {
    true
}
fn default_qk_norm() -> Option<String> {
    Some("rms_norm_across_heads".into())
}
fn default_eps() -> f64 {
    1e-6
}
fn default_rope_max_seq_len() -> usize {
    1024
}

impl WanTransformerConfig {
    /// Wan2.1 text-to-video 1.3B.
    pub fn t2v_1_3b() -> Self {
        Self::preset(12, 8960, 30)
    }

    /// Wan2.1 text-to-video 14B.
    pub fn t2v_14b() -> Self {
        Self::preset(40, 13824, 40)
    }

    fn preset(heads: usize, ffn_dim: usize, num_layers: usize) -> Self {
        WanTransformerConfig {
            patch_size: default_patch_size(),
            num_attention_heads: heads,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim,
            num_layers,
            cross_attn_norm: true,
            qk_norm: default_qk_norm(),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
        }
    }

    /// The model width: heads × head_dim.
    pub fn dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// The head dimension's split over (t, h, w) for the 3D rotary embedding: h = w = 2·⌊d/6⌋, t the rest.
    pub fn rope_split(&self) -> [usize; 3] {
        let d = self.attention_head_dim;
        let hw = 2 * (d / 6);
        [d - 2 * hw, hw, hw]
    }

    /// Checks what the model code relies on; every error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("text_dim", self.text_dim),
            ("freq_dim", self.freq_dim),
            ("ffn_dim", self.ffn_dim),
            ("rope_max_seq_len", self.rope_max_seq_len),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ModelError::config(field, "must be positive"));
            }
        }
        if self.patch_size.contains(&0) {
            return Err(ModelError::config("patch_size", format!("{:?} has a zero", self.patch_size)));
        }
        if self.out_channels == Some(0) {
            return Err(ModelError::config("out_channels", "must be positive"));
        }
        if !self.attention_head_dim.is_multiple_of(2) || self.attention_head_dim < 6 {
            return Err(ModelError::config(
                "attention_head_dim",
                format!("{} cannot be split into even rotary parts for t, h and w", self.attention_head_dim),
            ));
        }
        if !self.freq_dim.is_multiple_of(2) {
            return Err(ModelError::config("freq_dim", format!("{} must be even", self.freq_dim)));
        }
        match self.qk_norm.as_deref() {
            Some("rms_norm_across_heads") => {}
            other => {
                return Err(ModelError::config(
                    "qk_norm",
                    format!("{other:?} is not supported (only \"rms_norm_across_heads\", as in Wan2.1)"),
                ))
            }
        }
        if self.image_dim.is_some() || self.added_kv_proj_dim.is_some() {
            return Err(ModelError::config(
                "image_dim",
                "image conditioning (Wan I2V) is not supported; this is a text-to-video transformer",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_published_shapes() {
        let small = WanTransformerConfig::t2v_1_3b();
        assert_eq!((small.dim(), small.num_layers, small.ffn_dim), (1536, 30, 8960));
        assert_eq!(small.rope_split(), [44, 42, 42]);
        let big = WanTransformerConfig::t2v_14b();
        assert_eq!((big.dim(), big.num_layers, big.ffn_dim), (5120, 40, 13824));
        small.validate().unwrap();
        big.validate().unwrap();
    }

    #[test]
    fn reads_diffusers_config_and_rejects_bad_fields() {
        let json = r#"{"_class_name": "WanTransformer3DModel", "num_attention_heads": 2, "attention_head_dim": 24,
            "text_dim": 40, "freq_dim": 32, "ffn_dim": 96, "num_layers": 2, "patch_size": [1, 2, 2]}"#;
        let cfg: WanTransformerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.dim(), 48);
        assert_eq!(cfg.out_channels(), 16);
        cfg.validate().unwrap();
        let bad = WanTransformerConfig { freq_dim: 33, ..cfg.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("freq_dim"));
        let i2v = WanTransformerConfig { image_dim: Some(1280), ..cfg };
        assert!(i2v.validate().unwrap_err().to_string().contains("image_dim"));
    }
}
