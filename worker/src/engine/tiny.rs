//! The embedded default model: Wan2.1's architecture at a tiny size, its weights drawn from a fixed seed.
//!
//! Until the project's trained tiny model ships (issue 6), this is what `render` and a worker started
//! without `--model` use: it exercises every part of the farm (text encoder, transformer, VAE, windows)
//! in seconds on a CPU, but its videos are patterned noise, not pictures of the prompt.

use candle_core::{DType, Device};

use std::sync::Arc;

use crate::group::ShardLoader;
use crate::model::dit::{parallel, WanTransformer, WanTransformerConfig};
use crate::model::random::RandomWeights;
use crate::model::sharded::{ShardedWeights, WeightSource};
use crate::model::t5::{TextEncoder, UMT5Config, UMT5Encoder};
use crate::model::tokenizer::PromptTokenizer;
use crate::model::vae::{VaeConfig, WanVae};
use crate::model::Result;

/// The seed the embedded weights are drawn from; changing it changes every default video.
pub const TINY_SEED: u64 = 0x7061_7463_6877_6f72;
/// Text length the tiny model encodes prompts to.
pub const TINY_TEXT_LEN: usize = 64;

/// The project's own small Unigram tokenizer (256 pieces), made by `tools/reference/make_fixtures.sh`.
const TOKENIZER_JSON: &[u8] = include_bytes!("../../../fixtures/reference/pipeline/tokenizer/tokenizer.json");

pub fn transformer_config() -> WanTransformerConfig {
    WanTransformerConfig {
        patch_size: [1, 2, 2],
        num_attention_heads: 2,
        attention_head_dim: 32,
        in_channels: 16,
        out_channels: Some(16),
        text_dim: 32,
        freq_dim: 32,
        ffn_dim: 128,
        num_layers: 2,
        cross_attn_norm: true,
        qk_norm: Some("rms_norm_across_heads".into()),
        eps: 1e-6,
        image_dim: None,
        added_kv_proj_dim: None,
        rope_max_seq_len: 1024,
    }
}

pub fn vae_config() -> VaeConfig {
    VaeConfig { base_dim: 8, ..VaeConfig::wan2_1() }
}

pub fn text_encoder_config() -> UMT5Config {
    UMT5Config {
        vocab_size: 256,
        d_model: 32,
        d_kv: 8,
        d_ff: 64,
        num_layers: 2,
        num_heads: 4,
        relative_attention_num_buckets: 32,
        relative_attention_max_distance: 128,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".into(),
    }
}

/// Builds the text encoder and the VAE with seeded weights.
pub fn build_vae_and_text(dtype: DType, device: &Device) -> Result<(WanVae, TextEncoder)> {
    let vae = WanVae::new(vae_config(), RandomWeights::var_builder(TINY_SEED + 1, dtype, device))?;
    let encoder = UMT5Encoder::new(&text_encoder_config(), RandomWeights::var_builder(TINY_SEED + 2, dtype, device))?;
    let tokenizer = PromptTokenizer::from_json(TOKENIZER_JSON, "<embedded tiny tokenizer.json>")?;
    Ok((vae, TextEncoder::new(tokenizer, encoder)))
}

/// Builds a rank's shard of the transformer with seeded weights: each rank draws the whole tensors and
/// keeps its slices, so every degree computes the same model.
pub fn shard_loader(dtype: DType) -> ShardLoader {
    Arc::new(move |device, comm| {
        let cfg = transformer_config();
        let vb = ShardedWeights::var_builder(
            WeightSource::Whole(Box::new(RandomWeights::new(TINY_SEED))),
            comm.rank(),
            comm.world(),
            parallel::split_rule(&cfg),
            dtype,
            device,
        );
        WanTransformer::new_shard(&cfg, vb, comm)
    })
}
