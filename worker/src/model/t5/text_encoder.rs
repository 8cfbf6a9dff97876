//! Prompt to embeddings, as the Wan pipeline does it (`WanPipeline._get_t5_prompt_embeds`): tokenize to a
//! fixed length, run the encoder, then keep only each prompt's real tokens and zero the rest. The zeros
//! matter: the DiT cross-attends to all `text_len` rows without a mask, so padding must contribute
//! exactly zero keys and values, not the encoder's (nonzero) outputs at pad positions.

use candle_core::{DType, Device, Tensor};

use super::encoder::UMT5Encoder;
use crate::model::error::{ModelError, Result};
use crate::model::load::PipelineDir;
use crate::model::tokenizer::PromptTokenizer;

/// The tokenizer and the umT5 encoder together.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    tokenizer: PromptTokenizer,
    encoder: UMT5Encoder,
}

impl TextEncoder {
    pub fn new(tokenizer: PromptTokenizer, encoder: UMT5Encoder) -> Self {
        TextEncoder { tokenizer, encoder }
    }

    /// Loads the pipeline's `tokenizer/` and `text_encoder/` components.
    pub fn load(pipeline: &PipelineDir, dtype: DType, device: &Device) -> Result<Self> {
        let tokenizer = PromptTokenizer::load(pipeline.component_path("tokenizer")?)?;
        let encoder = UMT5Encoder::load(&pipeline.component("text_encoder")?, dtype, device)?;
        Ok(TextEncoder { tokenizer, encoder })
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    pub fn encoder(&self) -> &UMT5Encoder {
        &self.encoder
    }

    /// `[B, text_len, d_model]` in the encoder's dtype: each prompt's embeddings for its real tokens
    /// (including `</s>`), followed by zero rows up to `text_len`.
    pub fn encode_prompts(&self, prompts: &[&str], text_len: usize) -> Result<Tensor> {
        let batch = self.tokenizer.encode(prompts, text_len)?;
        let (ids, mask) = batch.to_tensors(self.encoder.device())?;
        let hidden = self.encoder.forward(&ids, &mask)?;
        keep_real_tokens(&hidden, &batch.seq_lens())
    }
}

/// Keeps rows `0..seq_lens[b]` of each `hidden[b]` (`[B, L, D]`) and replaces the rest with zeros, as the
/// pipeline's cut-and-pad does (it counts the mask's nonzero entries and keeps that many leading rows).
pub fn keep_real_tokens(hidden: &Tensor, seq_lens: &[usize]) -> Result<Tensor> {
    let (b, l, d) = hidden.dims3()?;
    if seq_lens.len() != b {
        return Err(ModelError::input("seq_lens", format!("{} lengths for a batch of {b}", seq_lens.len())));
    }
    let rows = seq_lens
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            if len > l {
                return Err(ModelError::input("seq_lens", format!("length {len} exceeds the sequence length {l}")));
            }
            let row = hidden.get(i)?;
            // Zero-length pieces are avoided rather than trusted to every backend's `cat`.
            if len == l {
                return Ok(row);
            }
            let zeros = Tensor::zeros((l - len, d), hidden.dtype(), hidden.device())?;
            if len == 0 {
                return Ok(zeros);
            }
            Ok(Tensor::cat(&[&row.narrow(0, 0, len)?, &zeros], 0)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_leading_rows_and_zeros_the_rest() -> Result<()> {
        let hidden = Tensor::arange(1f32, 13.0, &Device::Cpu)?.reshape((2, 3, 2))?;
        let out = keep_real_tokens(&hidden, &[1, 3])?.to_vec3::<f32>()?;
        assert_eq!(out[0], vec![vec![1.0, 2.0], vec![0.0, 0.0], vec![0.0, 0.0]]);
        assert_eq!(out[1], vec![vec![7.0, 8.0], vec![9.0, 10.0], vec![11.0, 12.0]]);
        assert!(keep_real_tokens(&hidden, &[4, 0]).is_err());
        Ok(())
    }
}
