//! umT5 self-attention: T5 attention (no `1/sqrt(d)` scaling; the learned relative position bias is
//! added to the scores) where, unlike T5, EVERY layer owns its `relative_attention_bias` table.
//! candle-transformers' T5 shares layer 0's table across layers, which is why this is written anew.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::config::UMT5Config;

#[derive(Debug, Clone)]
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// `[num_buckets, num_heads]`: what each bucket of relative position adds to each head's scores.
    relative_attention_bias: Embedding,
    num_heads: usize,
    d_kv: usize,
}

impl SelfAttention {
    /// `vb` points at `SelfAttention` (`encoder.block.{i}.layer.0.SelfAttention`).
    pub fn new(cfg: &UMT5Config, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.inner_dim();
        let q = candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("q"))?;
        let k = candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("k"))?;
        let v = candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("v"))?;
        let o = candle_nn::linear_no_bias(inner, cfg.d_model, vb.pp("o"))?;
        let relative_attention_bias =
            candle_nn::embedding(cfg.relative_attention_num_buckets, cfg.num_heads, vb.pp("relative_attention_bias"))?;
        Ok(SelfAttention { q, k, v, o, relative_attention_bias, num_heads: cfg.num_heads, d_kv: cfg.d_kv })
    }

    /// This layer's position bias for a bucket table `[L, L]`: `[1, heads, L, L]` in f32.
    pub fn position_bias(&self, buckets: &Tensor) -> Result<Tensor> {
        // [L, L, heads] -> [heads, L, L]
        self.relative_attention_bias.forward(buckets)?.permute((2, 0, 1))?.unsqueeze(0)?.to_dtype(DType::F32)
    }

    /// `[B, L, heads * d_kv]` -> `[B, heads, L, d_kv]`.
    fn split_heads(&self, t: Tensor) -> Result<Tensor> {
        let (b, l, _) = t.dims3()?;
        t.reshape((b, l, self.num_heads, self.d_kv))?.transpose(1, 2)?.contiguous()
    }

    /// What the tokens' contents alone give the scores, `q·k` (no scaling): `[B, heads, L, L]` in f32, for
    /// `x` `[B, L, d_model]`, already normed. [`forward`](Self::forward) adds the position bias and mask.
    pub fn content_scores(&self, x: &Tensor) -> Result<Tensor> {
        let q = self.split_heads(self.q.forward(x)?)?;
        let k = self.split_heads(self.k.forward(x)?)?;
        q.matmul(&k.t()?)?.to_dtype(DType::F32)
    }

    /// `x`: `[B, L, d_model]`, already normed, in the model's dtype. `content`: its
    /// [`content_scores`](Self::content_scores). `bias`: `[B or 1, heads, L, L]` f32, the position bias
    /// with the padding mask folded in. Returns `[B, L, d_model]` in the model's dtype.
    ///
    /// The scores are in f32 before the bias is added and the softmax taken: in bf16 a bias of -3.4e38
    /// and scores in the hundreds would otherwise round the distribution coarsely.
    pub fn forward(&self, x: &Tensor, content: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let v = self.split_heads(self.v.forward(x)?)?;
        let probs = crate::model::cpu::softmax_last(&content.broadcast_add(bias)?)?.to_dtype(x.dtype())?;
        // [B, heads, L, d_kv] -> [B, L, heads * d_kv]
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, self.num_heads * self.d_kv))?;
        self.o.forward(&out)
    }
}
