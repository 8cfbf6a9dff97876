//! Tensor parallelism for the transformer (Megatron style). Each block's q, k, v and first feed-forward
//! layer are column-parallel (a rank holds some of their output features: whole attention heads, a part of
//! the hidden layer); the attention output and the second feed-forward layer are row-parallel (a rank
//! holds the matching input features) and their partial products are summed with one all-reduce each.
//! Everything else (embeddings, norms, modulation, the output head) is replicated, and every rank keeps
//! the whole residual stream, identical on all ranks.
//!
//! Wan normalises q and k over all heads together (`rms_norm_across_heads`): with the heads split, each
//! rank's sum of squares is all-reduced first, so the norm is the same as on one device.

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::WanTransformerConfig;
use super::layers::Linear;
use crate::collective::{Collective, CpuCollective};
use crate::model::error::ModelError;
use crate::model::sharded::{Split, SplitRule};

/// The shard group a model part belongs to.
pub type Comm = Arc<dyn Collective>;

/// A group of one: the model unsharded.
pub fn solo() -> Comm {
    Arc::new(CpuCollective::group(1).remove(0))
}

/// Refuses a degree that cannot split the model: heads are never cut, and every rank needs a part of
/// the feed-forward layer.
pub fn check_degree(cfg: &WanTransformerConfig, world: usize) -> std::result::Result<(), ModelError> {
    let heads = cfg.num_attention_heads;
    if world == 0 || !heads.is_multiple_of(world) {
        return Err(ModelError::input(
            "tp",
            format!("tensor-parallel degree {world} does not divide the model's {heads} attention heads"),
        ));
    }
    if cfg.ffn_dim < world {
        return Err(ModelError::input(
            "tp",
            format!("tensor-parallel degree {world} exceeds the feed-forward width {}", cfg.ffn_dim),
        ));
    }
    Ok(())
}

/// Which of the transformer's tensors are split, and along which dimension (diffusers key names).
pub fn split_rule(cfg: &WanTransformerConfig) -> SplitRule {
    let inner = cfg.num_attention_heads * cfg.attention_head_dim;
    let ffn = cfg.ffn_dim;
    Arc::new(move |name: &str| {
        let (_, local) = name.strip_prefix("blocks.")?.split_once('.')?;
        let (module, tensor) = local.split_once('.')?;
        match (module, tensor) {
            ("attn1" | "attn2", "to_q.weight" | "to_q.bias" | "to_k.weight" | "to_k.bias")
            | ("attn1" | "attn2", "to_v.weight" | "to_v.bias" | "norm_q.weight" | "norm_k.weight") => {
                Some(Split { dim: 0, total: inner })
            }
            ("attn1" | "attn2", "to_out.0.weight") => Some(Split { dim: 1, total: inner }),
            ("ffn", "net.0.proj.weight" | "net.0.proj.bias") => Some(Split { dim: 0, total: ffn }),
            ("ffn", "net.2.weight") => Some(Split { dim: 1, total: ffn }),
            _ => None,
        }
    })
}

/// A row-parallel linear layer: this rank's input features of `W`; the partial products are summed
/// across the group and the whole bias is added once, after the sum.
#[derive(Debug, Clone)]
pub struct RowParallelLinear {
    local: Linear,
    /// Added after the all-reduce; `None` in a group of one, where `local` carries it.
    bias: Option<Tensor>,
    comm: Comm,
}

impl RowParallelLinear {
    pub fn load(vb: VarBuilder, local_in: usize, out: usize, comm: &Comm) -> Result<Self> {
        let weight = vb.get((out, local_in), "weight")?;
        let bias = vb.get(out, "bias")?;
        let (local, bias) = if comm.world() == 1 {
            (Linear::from_parts(weight, Some(bias)), None)
        } else {
            (Linear::from_parts(weight, None), Some(bias))
        };
        Ok(RowParallelLinear { local, bias, comm: comm.clone() })
    }
}

impl Module for RowParallelLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let partial = self.local.forward(x)?;
        match &self.bias {
            Some(bias) => self.comm.all_reduce_sum(&partial)?.broadcast_add(bias),
            None => Ok(partial),
        }
    }
}

/// RMS norm with a learned scale over a last dimension of `total` features, of which this rank holds
/// its part.
#[derive(Debug, Clone)]
pub struct ShardedRmsNorm {
    weight: Tensor,
    eps: f64,
    total: usize,
    comm: Comm,
}

impl ShardedRmsNorm {
    pub fn load(vb: VarBuilder, local: usize, total: usize, eps: f64, comm: &Comm) -> Result<Self> {
        Ok(ShardedRmsNorm { weight: vb.get(local, "weight")?, eps, total, comm: comm.clone() })
    }
}

impl Module for ShardedRmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.comm.world() == 1 {
            let x = x.contiguous()?;
            return if crate::model::cpu::tracked(&[&x, &self.weight]) {
                candle_nn::ops::rms_norm_slow(&x, &self.weight, self.eps as f32)
            } else {
                candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)
            };
        }
        let xf = x.to_dtype(DType::F32)?;
        let squares = self.comm.all_reduce_sum(&xf.sqr()?.sum_keepdim(D::Minus1)?)?;
        let inv_rms = ((squares / self.total as f64)? + self.eps)?.sqrt()?.recip()?;
        xf.broadcast_mul(&inv_rms)?.broadcast_mul(&self.weight.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
    }
}
