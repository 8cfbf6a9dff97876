//! The umT5 encoder's configuration, as transformers writes it in `text_encoder/config.json`.

use serde::Deserialize;

use crate::model::error::{ModelError, Result};

/// `UMT5Config`'s fields that the encoder uses. Keys it does not use (`architectures`, `dropout_rate`,
/// `num_decoder_layers`, `dense_act_fn`, …) are ignored; missing keys take transformers' defaults, which
/// are those of `google/umt5-small`. `dense_act_fn` and `is_gated_act` are ignored on purpose:
/// transformers recomputes both from `feed_forward_proj` when it loads a config, and so do we.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct UMT5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// `"gated-gelu"`, `"relu"`, `"gated-silu"`, …: an optional `gated-` and an activation name.
    pub feed_forward_proj: String,
}

impl Default for UMT5Config {
    fn default() -> Self {
        UMT5Config {
            vocab_size: 250112,
            d_model: 512,
            d_kv: 64,
            d_ff: 1024,
            num_layers: 8,
            num_heads: 6,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }
}

/// The feed-forward activation. Names follow transformers' `ACT2FN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// `gelu`: the exact (erf) form.
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation, which `gated-gelu` means.
    GeluTanh,
    /// `silu` / `swish`.
    Silu,
}

/// What `feed_forward_proj` asks for: whether the FFN is gated (`wi_0`, `wi_1`) or plain (`wi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedForwardKind {
    pub gated: bool,
    pub activation: Activation,
}

impl UMT5Config {
    /// The encoder of Wan2.1's text encoder, `google/umt5-xxl`.
    pub fn umt5_xxl() -> Self {
        UMT5Config {
            vocab_size: 256384,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }

    /// The attention's inner width, `num_heads × d_kv` (not necessarily `d_model`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Parses `feed_forward_proj` the way transformers does: `gated-<act>` or `<act>`, and the special
    /// case that `gated-gelu` means the tanh approximation while a plain `gelu` is the exact one.
    pub fn feed_forward(&self) -> Result<FeedForwardKind> {
        let bad = || {
            ModelError::config(
                "feed_forward_proj",
                format!("`{}` is not `gated-<activation>` or `<activation>`", self.feed_forward_proj),
            )
        };
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, name) = match parts.as_slice() {
            [name] => (false, *name),
            ["gated", name] => (true, *name),
            _ => return Err(bad()),
        };
        let activation = match name {
            "gelu" if gated => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(ModelError::config(
                    "feed_forward_proj",
                    format!("unsupported activation `{other}` (relu, gelu, gelu_new, gelu_pytorch_tanh, silu)"),
                ))
            }
        };
        Ok(FeedForwardKind { gated, activation })
    }

    /// Checks what the model code relies on; every error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ModelError::config(field, "must be positive"));
            }
        }
        // Bidirectional buckets: half per direction, half of those exact. Fewer than 4 leaves no exact
        // bucket, and the logarithmic buckets need a maximum distance beyond the exact range.
        if self.relative_attention_num_buckets < 4 {
            return Err(ModelError::config(
                "relative_attention_num_buckets",
                format!("must be at least 4, got {}", self.relative_attention_num_buckets),
            ));
        }
        let max_exact = self.relative_attention_num_buckets / 4;
        if self.relative_attention_max_distance <= max_exact {
            return Err(ModelError::config(
                "relative_attention_max_distance",
                format!("must exceed the {max_exact} exact buckets, got {}", self.relative_attention_max_distance),
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(ModelError::config("layer_norm_epsilon", "must be a positive number"));
        }
        self.feed_forward()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxl_preset_matches_wan() {
        let cfg = UMT5Config::umt5_xxl();
        cfg.validate().expect("preset is valid");
        assert_eq!(cfg.inner_dim(), 4096);
        assert_eq!(cfg.feed_forward().ok(), Some(FeedForwardKind { gated: true, activation: Activation::GeluTanh }));
    }

    #[test]
    fn parses_transformers_json_and_ignores_extra_keys() {
        let json = r#"{"architectures": ["UMT5EncoderModel"], "d_model": 32, "d_kv": 8, "d_ff": 64,
            "num_layers": 2, "num_heads": 4, "vocab_size": 100, "dense_act_fn": "gelu_new",
            "is_gated_act": true, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false}"#;
        let cfg: UMT5Config = serde_json::from_str(json).expect("parses");
        assert_eq!((cfg.d_model, cfg.num_layers, cfg.relative_attention_num_buckets), (32, 2, 32));
        cfg.validate().expect("valid");
    }

    #[test]
    fn errors_name_the_field() {
        let mut cfg = UMT5Config { num_heads: 0, ..UMT5Config::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("num_heads"));
        cfg = UMT5Config { feed_forward_proj: "gated-gelu-x".into(), ..UMT5Config::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("feed_forward_proj"));
        cfg = UMT5Config { relative_attention_max_distance: 8, ..UMT5Config::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("relative_attention_max_distance"));
        assert_eq!(
            UMT5Config { feed_forward_proj: "gelu".into(), ..UMT5Config::default() }.feed_forward().ok(),
            Some(FeedForwardKind { gated: false, activation: Activation::GeluErf })
        );
    }
}
