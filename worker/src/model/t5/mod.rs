//! umT5, Wan2.1's text encoder: the encoder half of `google/umt5-xxl` as transformers'
//! `UMT5EncoderModel` computes it, and the pipeline's prompt-encoding path around it.
//!
//! umT5 differs from T5 in one way that matters here: every layer has its own relative-position bias
//! table (T5 shares layer 0's). The rest is T5: scale-only RMS norms, unscaled dot-product attention,
//! a gated-GELU (tanh) feed-forward, no biases.

mod attention;
mod config;
mod encoder;
mod layers;
mod text_encoder;

pub use config::{Activation, FeedForwardKind, UMT5Config};
pub use encoder::{AttentionScores, UMT5Encoder};
pub use layers::relative_position_bucket;
pub use text_encoder::{keep_real_tokens, TextEncoder};
