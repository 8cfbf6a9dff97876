//! The umT5 encoder stack (transformers' `UMT5EncoderModel`): token embedding, `num_layers` pre-norm
//! blocks of self-attention and feed-forward, and a final norm. Its `last_hidden_state` is what the Wan
//! transformer cross-attends to.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::attention::SelfAttention;
use super::config::{FeedForwardKind, UMT5Config};
use super::layers::{relative_position_buckets, FeedForward, T5LayerNorm};
use crate::model::error::{ModelError, Result};
use crate::model::load::ComponentDir;

/// What a masked-out key adds to the scores: the most negative f32, as transformers uses the dtype's
/// minimum rather than -inf so that a row with every key masked stays finite (uniform) instead of NaN.
const MASKED: f32 = f32::MIN;

/// One encoder block: `h += attn(norm(h)); h += ffn(norm(h))`.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: T5LayerNorm,
    attn: SelfAttention,
    ffn_norm: T5LayerNorm,
    ffn: FeedForward,
}

impl Block {
    /// `vb` points at `encoder.block.{i}`; `layer.0` is self-attention and `layer.1` the feed-forward.
    fn new(cfg: &UMT5Config, kind: FeedForwardKind, vb: VarBuilder) -> candle_core::Result<Self> {
        let attn_vb = vb.pp("layer").pp(0);
        let ffn_vb = vb.pp("layer").pp(1);
        Ok(Block {
            attn_norm: T5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, attn_vb.pp("layer_norm"))?,
            attn: SelfAttention::new(cfg, attn_vb.pp("SelfAttention"))?,
            ffn_norm: T5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, ffn_vb.pp("layer_norm"))?,
            ffn: FeedForward::new(cfg, kind, ffn_vb.pp("DenseReluDense"))?,
        })
    }

    /// `h`: the residual stream, `[B, L, d_model]` f32. `buckets`: `[L, L]`. `mask`: `[B, 1, 1, L]` f32.
    /// With `scores`, this layer's content scores and position bias are pushed to it.
    fn forward(
        &self,
        h: &Tensor,
        buckets: &Tensor,
        mask: &Tensor,
        scores: Option<&mut Vec<AttentionScores>>,
    ) -> candle_core::Result<Tensor> {
        let position = self.attn.position_bias(buckets)?;
        let bias = position.broadcast_add(mask)?;
        let x = self.attn_norm.forward(h)?;
        let content = self.attn.content_scores(&x)?;
        if let Some(scores) = scores {
            scores.push(AttentionScores { content: content.clone(), position });
        }
        let attended = self.attn.forward(&x, &content, &bias)?;
        let h = (h + attended.to_dtype(DType::F32)?)?;
        let fed = self.ffn.forward(&self.ffn_norm.forward(&h)?)?;
        h + fed.to_dtype(DType::F32)?
    }
}

/// One layer's self-attention scores before the mask and softmax, in their two parts: what the tokens'
/// contents give (`q·k`, `[B, heads, L, L]`) and what their relative positions add (`[1, heads, L, L]`),
/// both f32. Only the position part knows where a word stands.
#[derive(Debug, Clone)]
pub struct AttentionScores {
    pub content: Tensor,
    pub position: Tensor,
}

/// The umT5 encoder. The residual stream is kept in f32 whatever the weights' dtype: the reference keeps
/// it in the weights' dtype (bf16 for Wan), so in bf16 this is slightly more precise than the reference,
/// at a cost of a few MiB for 512 tokens. Norms, matmuls and the FFN run in the weights' dtype.
#[derive(Debug, Clone)]
pub struct UMT5Encoder {
    embed_tokens: Embedding,
    blocks: Vec<Block>,
    final_layer_norm: T5LayerNorm,
    cfg: UMT5Config,
    device: Device,
}

impl UMT5Encoder {
    /// Loads the encoder from a transformers `UMT5EncoderModel` folder (`config.json` and safetensors).
    /// A missing or misshapen tensor is an error naming the folder and the tensor.
    pub fn load(dir: &ComponentDir, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: UMT5Config = dir.config()?;
        cfg.validate()?;
        let vb = dir.var_builder(dtype, device)?;
        Self::new(&cfg, vb).map_err(|e| dir.weights_error(e))
    }

    /// Builds the encoder from `vb` (rooted at the checkpoint's top level).
    ///
    /// The token embedding is tied: transformers saves it once, as `shared.weight`, and ties
    /// `encoder.embed_tokens.weight` to it; checkpoints written by other tools may hold only the latter.
    pub fn new(cfg: &UMT5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let kind = cfg.feed_forward().map_err(candle_core::Error::wrap)?;
        let embed_vb =
            if vb.contains_tensor("shared.weight") { vb.pp("shared") } else { vb.pp("encoder.embed_tokens") };
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.d_model, embed_vb)?;
        let encoder = vb.pp("encoder");
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::new(cfg, kind, encoder.pp("block").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = T5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, encoder.pp("final_layer_norm"))?;
        Ok(UMT5Encoder { embed_tokens, blocks, final_layer_norm, cfg: cfg.clone(), device: vb.device().clone() })
    }

    pub fn config(&self) -> &UMT5Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weights' dtype, which is also the output's.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    /// `input_ids`: `[B, L]` integer token ids (u8, u32 or i64). `attention_mask`: `[B, L]`, any dtype, 0
    /// for padding and nonzero for tokens (transformers reads it as a boolean). Returns the
    /// `last_hidden_state`, `[B, L, d_model]` in the weights' dtype. Padding positions get values too (they
    /// attend to the real tokens); callers that want them zeroed cut them off afterwards.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.forward_inspected(input_ids, attention_mask, None)
    }

    /// Each layer's self-attention scores for these tokens (see [`forward`](Self::forward)), in order.
    pub fn attention_scores(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Vec<AttentionScores>> {
        let mut scores = Vec::with_capacity(self.blocks.len());
        self.forward_inspected(input_ids, attention_mask, Some(&mut scores))?;
        Ok(scores)
    }

    fn forward_inspected(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mut scores: Option<&mut Vec<AttentionScores>>,
    ) -> Result<Tensor> {
        let (b, l) = self.check_ids(input_ids)?;
        let mask = self.mask_bias(attention_mask, b, l)?;
        let ids = input_ids.to_device(&self.device)?;
        // [B, L] -> [B, L, d_model], then f32 for the residual stream.
        let mut h = self.embed_tokens.forward(&ids)?.to_dtype(DType::F32)?;
        let buckets = relative_position_buckets(&self.cfg, l, &self.device)?;
        for block in &self.blocks {
            h = block.forward(&h, &buckets, &mask, scores.as_deref_mut())?;
        }
        Ok(self.final_layer_norm.forward(&h)?)
    }

    /// Checks shape, dtype and range of the ids: an id past the vocabulary would otherwise be an opaque
    /// indexing failure deep inside the embedding (or garbage on some devices).
    fn check_ids(&self, input_ids: &Tensor) -> Result<(usize, usize)> {
        let (b, l) = input_ids.dims2().map_err(|_| {
            ModelError::input("input_ids", format!("expected [batch, length], got {:?}", input_ids.dims()))
        })?;
        if b == 0 || l == 0 {
            return Err(ModelError::input("input_ids", format!("empty batch or sequence: {:?}", input_ids.dims())));
        }
        if !matches!(input_ids.dtype(), DType::U8 | DType::U32 | DType::I64) {
            return Err(ModelError::input("input_ids", format!("expected integer ids, got {:?}", input_ids.dtype())));
        }
        let ids = input_ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id as u64 >= self.cfg.vocab_size as u64) {
            return Err(ModelError::input(
                "input_ids",
                format!("token id {bad} outside the vocabulary of {}", self.cfg.vocab_size),
            ));
        }
        Ok((b, l))
    }

    /// The padding mask as an additive bias over keys: `[B, 1, 1, L]` f32, 0 to attend and [`MASKED`] not.
    fn mask_bias(&self, attention_mask: &Tensor, b: usize, l: usize) -> Result<Tensor> {
        if attention_mask.dims() != [b, l] {
            return Err(ModelError::input(
                "attention_mask",
                format!("expected [{b}, {l}] like input_ids, got {:?}", attention_mask.dims()),
            ));
        }
        let mask = attention_mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bias: Vec<f32> = mask.iter().map(|&m| if m != 0.0 { 0.0 } else { MASKED }).collect();
        Ok(Tensor::from_vec(bias, (b, 1, 1, l), &self.device)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Seeded stand-in weights for every tensor a 1-layer encoder reads, under `embed` for the embedding.
    fn weights(cfg: &UMT5Config, embed: &str, gated: bool) -> candle_core::Result<HashMap<String, Tensor>> {
        let dev = Device::Cpu;
        let (d, inner, ff) = (cfg.d_model, cfg.inner_dim(), cfg.d_ff);
        let block = "encoder.block.0.layer";
        let mut shapes = vec![
            (embed.to_string(), vec![cfg.vocab_size, d]),
            (format!("{block}.0.layer_norm.weight"), vec![d]),
            (format!("{block}.1.layer_norm.weight"), vec![d]),
            (
                format!("{block}.0.SelfAttention.relative_attention_bias.weight"),
                vec![cfg.relative_attention_num_buckets, cfg.num_heads],
            ),
            (format!("{block}.1.DenseReluDense.wo.weight"), vec![d, ff]),
            ("encoder.final_layer_norm.weight".to_string(), vec![d]),
        ];
        for name in ["q", "k", "v"] {
            shapes.push((format!("{block}.0.SelfAttention.{name}.weight"), vec![inner, d]));
        }
        shapes.push((format!("{block}.0.SelfAttention.o.weight"), vec![d, inner]));
        let wi: &[&str] = if gated { &["wi_0", "wi_1"] } else { &["wi"] };
        for name in wi {
            shapes.push((format!("{block}.1.DenseReluDense.{name}.weight"), vec![ff, d]));
        }
        shapes.into_iter().map(|(name, shape)| Ok((name, Tensor::randn(0f32, 0.5, shape, &dev)?))).collect()
    }

    /// One layer, three heads of two, inner dim 6 ≠ d_model 8.
    fn tiny_config() -> UMT5Config {
        UMT5Config {
            vocab_size: 10,
            d_model: 8,
            d_kv: 2,
            d_ff: 12,
            num_layers: 1,
            num_heads: 3,
            ..UMT5Config::default()
        }
    }

    #[test]
    fn embedding_falls_back_to_encoder_embed_tokens_and_plain_ffn_loads() -> candle_core::Result<()> {
        let cfg = UMT5Config { feed_forward_proj: "relu".into(), ..tiny_config() };
        let tensors = weights(&cfg, "encoder.embed_tokens.weight", false)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let encoder = UMT5Encoder::new(&cfg, vb)?;
        let ids = Tensor::new(&[[1u32, 2, 3, 0]], &Device::Cpu)?;
        let mask = Tensor::new(&[[1u32, 1, 1, 0]], &Device::Cpu)?;
        let out = encoder.forward(&ids, &mask).map_err(candle_core::Error::wrap)?;
        assert_eq!(out.dims(), [1, 4, 8]);
        // A gated config over the same (ungated) weights names the missing gate tensor.
        let gated = UMT5Config { feed_forward_proj: "gated-gelu".into(), ..cfg.clone() };
        let vb = VarBuilder::from_tensors(weights(&cfg, "shared.weight", false)?, DType::F32, &Device::Cpu);
        let err = UMT5Encoder::new(&gated, vb).expect_err("no wi_0");
        assert!(err.to_string().contains("encoder.block.0.layer.1.DenseReluDense.wi_0.weight"), "{err}");
        Ok(())
    }

    #[test]
    fn padding_does_not_change_the_real_tokens() -> candle_core::Result<()> {
        let cfg = tiny_config();
        let vb = VarBuilder::from_tensors(weights(&cfg, "shared.weight", true)?, DType::F32, &Device::Cpu);
        let encoder = UMT5Encoder::new(&cfg, vb)?;
        let run = |ids: &[u32], mask: &[u32]| -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
            let mask = Tensor::new(mask, &Device::Cpu)?.unsqueeze(0)?;
            encoder.forward(&ids, &mask).map_err(candle_core::Error::wrap)?.squeeze(0)?.to_vec2()
        };
        let short = run(&[4, 5, 1], &[1, 1, 1])?;
        let padded = run(&[4, 5, 1, 0, 0], &[1, 1, 1, 0, 0])?;
        for (a, b) in short.iter().flatten().zip(padded[..3].iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }
}
