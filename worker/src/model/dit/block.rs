//! One transformer block: modulated self-attention with 3D RoPE, cross-attention to the text, and a
//! modulated GELU feed-forward, each added back through the residual stream.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::WanTransformerConfig;
use super::layers::{F32LayerNorm, Linear};
use super::parallel::{Comm, RowParallelLinear, ShardedRmsNorm};
use super::rope::{apply_rope, RopeTables};
use crate::model::attention::{attention, AttentionTiling};
use crate::model::cpu::fast_math::gelu_tanh;
use crate::model::cpu::{add_rows, mul_rows};

/// Tokens per chunk of the feed-forward: its hidden layer is several times the model width, so it is
/// evaluated a slice of tokens at a time to keep memory flat in the sequence length.
const FFN_TOKEN_CHUNK: usize = 8192;

/// Multi-head attention with RMS norm of q and k across all heads (`attn1`, `attn2` in diffusers). In a
/// shard group each rank holds `heads / world` whole heads.
#[derive(Debug, Clone)]
pub struct WanAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: RowParallelLinear,
    norm_q: ShardedRmsNorm,
    norm_k: ShardedRmsNorm,
    /// Heads on this rank.
    heads: usize,
    head_dim: usize,
}

impl WanAttention {
    pub fn load(vb: VarBuilder, cfg: &WanTransformerConfig, comm: &Comm) -> Result<Self> {
        let dim = cfg.dim();
        let inner = cfg.num_attention_heads * cfg.attention_head_dim;
        let heads = cfg.num_attention_heads / comm.world();
        let local = heads * cfg.attention_head_dim;
        Ok(WanAttention {
            to_q: Linear::load(vb.pp("to_q"), dim, local)?,
            to_k: Linear::load(vb.pp("to_k"), dim, local)?,
            to_v: Linear::load(vb.pp("to_v"), dim, local)?,
            to_out: RowParallelLinear::load(vb.pp("to_out.0"), local, dim, comm)?,
            norm_q: ShardedRmsNorm::load(vb.pp("norm_q"), local, inner, cfg.eps, comm)?,
            norm_k: ShardedRmsNorm::load(vb.pp("norm_k"), local, inner, cfg.eps, comm)?,
            heads,
            head_dim: cfg.attention_head_dim,
        })
    }

    /// `x` `[B, N, dim]` attends to `context` `[B, L, dim]` (itself for self-attention); `rope` rotates
    /// q and k when given (self-attention only).
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        rope: Option<&RopeTables>,
        tiling: AttentionTiling,
    ) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let l = context.dim(1)?;
        let q = self.norm_q.forward(&self.to_q.forward(x)?)?;
        let k = self.norm_k.forward(&self.to_k.forward(context)?)?;
        let v = self.to_v.forward(context)?;
        // [B, N, heads·head_dim] → [B, heads, N, head_dim]
        let split =
            |t: Tensor, len: usize| t.reshape((b, len, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous();
        let (mut q, mut k, v) = (split(q, n)?, split(k, l)?, split(v, l)?);
        if let Some(tables) = rope {
            q = apply_rope(&q, tables)?;
            k = apply_rope(&k, tables)?;
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = attention(&q, &k, &v, scale, tiling)?;
        // [B, heads, N, head_dim] → [B, N, heads·head_dim]
        let out = out.transpose(1, 2)?.reshape((b, n, self.heads * self.head_dim))?;
        self.to_out.forward(&out)
    }
}

/// The GELU (tanh approximation) feed-forward, `ffn.net.0.proj` then `ffn.net.2`. In a shard group each
/// rank holds a part of the hidden layer.
#[derive(Debug, Clone)]
pub struct FeedForward {
    up: Linear,
    down: RowParallelLinear,
}

impl FeedForward {
    pub fn load(vb: VarBuilder, cfg: &WanTransformerConfig, comm: &Comm) -> Result<Self> {
        let local = crate::collective::partition(cfg.ffn_dim, comm.world(), comm.rank()).len();
        Ok(FeedForward {
            up: Linear::load(vb.pp("net.0.proj"), cfg.dim(), local)?,
            down: RowParallelLinear::load(vb.pp("net.2"), local, cfg.dim(), comm)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(1)?;
        if n <= FFN_TOKEN_CHUNK {
            return self.down.forward(&gelu_tanh(&self.up.forward(x)?)?);
        }
        let mut parts = Vec::with_capacity(n.div_ceil(FFN_TOKEN_CHUNK));
        for start in (0..n).step_by(FFN_TOKEN_CHUNK) {
            let len = FFN_TOKEN_CHUNK.min(n - start);
            let slice = x.narrow(1, start, len)?;
            parts.push(self.down.forward(&gelu_tanh(&self.up.forward(&slice)?)?)?);
        }
        Tensor::cat(&parts, 1)
    }
}

/// One `WanTransformerBlock`.
#[derive(Debug, Clone)]
pub struct WanBlock {
    norm1: F32LayerNorm,
    attn1: WanAttention,
    norm2: Option<F32LayerNorm>,
    attn2: WanAttention,
    norm3: F32LayerNorm,
    ffn: FeedForward,
    /// Learned offsets of the six modulation vectors `[1, 6, dim]`, in f32.
    scale_shift_table: Tensor,
}

impl WanBlock {
    pub fn load(vb: VarBuilder, cfg: &WanTransformerConfig, comm: &Comm) -> Result<Self> {
        let dim = cfg.dim();
        let device = vb.device().clone();
        let norm2 = if cfg.cross_attn_norm { Some(F32LayerNorm::affine(vb.pp("norm2"), dim, cfg.eps)?) } else { None };
        Ok(WanBlock {
            norm1: F32LayerNorm::plain(dim, cfg.eps, &device)?,
            attn1: WanAttention::load(vb.pp("attn1"), cfg, comm)?,
            norm2,
            attn2: WanAttention::load(vb.pp("attn2"), cfg, comm)?,
            norm3: F32LayerNorm::plain(dim, cfg.eps, &device)?,
            ffn: FeedForward::load(vb.pp("ffn"), cfg, comm)?,
            scale_shift_table: vb.set_dtype(DType::F32).get((1, 6, dim), "scale_shift_table")?,
        })
    }

    /// `x` `[B, N, dim]`, `context` `[B, L, dim]`, `modulation` `[B, 1, 6, dim]` (or `[B, N, 6, dim]`,
    /// one per token) f32.
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        modulation: &Tensor,
        rope: &RopeTables,
        tiling: AttentionTiling,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let m = modulation.broadcast_add(&self.scale_shift_table.unsqueeze(0)?)?;
        // Each [B, 1, dim] (or [B, N, dim]), f32: shift, scale, gate for attention, then for the feed-forward.
        let part = |i: usize| m.narrow(2, i, 1)?.squeeze(2);
        let (shift, scale, gate) = (part(0)?, part(1)?, part(2)?);
        let (c_shift, c_scale, c_gate) = (part(3)?, part(4)?, part(5)?);

        let h = modulate(&self.norm1.forward(x)?, &shift, &scale)?.to_dtype(dtype)?;
        let attn = self.attn1.forward(&h, &h, Some(rope), tiling)?;
        let x = gated_residual(x, &attn, &gate)?;

        let h = match &self.norm2 {
            Some(norm) => norm.forward(&x)?.to_dtype(dtype)?,
            None => x.clone(),
        };
        let x = (&x + self.attn2.forward(&h, context, None, tiling)?)?;

        let h = modulate(&self.norm3.forward(&x)?, &c_shift, &c_scale)?.to_dtype(dtype)?;
        let ff = self.ffn.forward(&h)?;
        gated_residual(&x, &ff, &c_gate)
    }
}

/// `x·(1 + scale) + shift` with f32 `x`, `shift`, `scale`.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    add_rows(&mul_rows(x, &(scale + 1.0)?)?, shift)
}

/// `x + y·gate` computed in f32 and returned in `x`'s dtype.
fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let sum = (x.to_dtype(DType::F32)? + mul_rows(&y.to_dtype(DType::F32)?, gate)?)?;
    sum.to_dtype(x.dtype())
}
