//! The prompt tokenizer: umT5's SentencePiece-Unigram tokenizer read from the pipeline's
//! `tokenizer/tokenizer.json`, used the way the Wan pipeline calls it (clean the prompt, append `</s>`,
//! truncate and pad to a fixed `text_len`, and report which positions are real tokens).

mod clean;
mod html;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::{PaddingDirection, PostProcessor, Tokenizer, TruncationDirection};

pub use clean::prompt_clean;
pub use html::unescape as html_unescape;

use super::error::{ModelError, Result};

/// A tokenized batch: every row exactly `text_len` long, padded on the right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// `[B][text_len]` token ids, `</s>` after the prompt's tokens, then the pad id.
    pub input_ids: Vec<Vec<u32>>,
    /// `[B][text_len]`: 1 for the prompt's tokens and `</s>`, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
}

impl TokenBatch {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The number of real tokens per row (what the pipeline keeps of the encoder's output).
    pub fn seq_lens(&self) -> Vec<usize> {
        self.attention_mask.iter().map(|row| row.iter().filter(|&&m| m > 0).count()).collect()
    }

    /// `(input_ids, attention_mask)` as `[B, text_len]` u32 tensors, the encoder's inputs.
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let rows = self.input_ids.len();
        let cols = self.input_ids.first().map_or(0, Vec::len);
        let ids = Tensor::from_vec(self.input_ids.concat(), (rows, cols), device)?;
        let mask = Tensor::from_vec(self.attention_mask.concat(), (rows, cols), device)?;
        Ok((ids, mask))
    }
}

/// umT5's tokenizer, configured at call time for the pipeline's fixed text length.
#[derive(Clone)]
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    pad_id: u32,
    pad_token: String,
    /// Tokens the post-processor adds to one sequence (`</s>`): truncation leaves room for them.
    added_tokens: usize,
    /// `model_max_length` from `tokenizer_config.json`: the text length the model was trained with.
    max_length: Option<usize>,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer").field("path", &self.path).field("pad_token", &self.pad_token).finish()
    }
}

impl PromptTokenizer {
    /// Loads `tokenizer.json` from a tokenizer folder (the pipeline's `tokenizer/`). The pad token is the
    /// one `tokenizer_config.json` names if there is such a file, else the one `tokenizer.json`'s own
    /// padding section names, else `<pad>` (umT5's, id 0).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::MissingFile { path, what: "the tokenizer's tokenizer.json".into() });
        }
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer { path: path.clone(), msg: e.to_string() })?;
        let config = tokenizer_config(dir.as_ref())?;
        let mut loaded = Self::from_tokenizer(tokenizer, path, configured_pad_token(&config))?;
        loaded.max_length = config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(|v| v.as_u64())
            .filter(|&n| n > 0 && n <= 1 << 20)
            .map(|n| n as usize);
        Ok(loaded)
    }

    /// A tokenizer from the bytes of a `tokenizer.json` (an embedded model's); `label` names it in errors.
    pub fn from_json(json: &[u8], label: impl Into<PathBuf>) -> Result<Self> {
        let path = label.into();
        let tokenizer = Tokenizer::from_bytes(json)
            .map_err(|e| ModelError::Tokenizer { path: path.clone(), msg: e.to_string() })?;
        Self::from_tokenizer(tokenizer, path, None)
    }

    fn from_tokenizer(mut tokenizer: Tokenizer, path: PathBuf, configured_pad: Option<String>) -> Result<Self> {
        let pad_token = match configured_pad {
            Some(token) => token,
            None => tokenizer.get_padding().map_or_else(|| "<pad>".to_string(), |p| p.pad_token.clone()),
        };
        let pad_id = tokenizer.token_to_id(&pad_token).ok_or_else(|| ModelError::Tokenizer {
            path: path.clone(),
            msg: format!("pad token `{pad_token}` is not in the vocabulary"),
        })?;
        let added_tokens = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        // Truncation and padding depend on the call's text length, so they are done per call below, in
        // the same order the library's own post-processing does them.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer { path: path.clone(), msg: e.to_string() })?;
        Ok(PromptTokenizer { tokenizer, path, pad_id, pad_token, added_tokens, max_length: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The text length named by `tokenizer_config.json` (`model_max_length`), if any.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// Tokenizes prompts exactly as `WanPipeline._get_t5_prompt_embeds` does: each prompt is cleaned
    /// ([`prompt_clean`]), its tokens truncated to leave room for `</s>`, `</s>` appended, and the row
    /// padded with the pad token to `text_len` (transformers' `padding="max_length", truncation=True,
    /// add_special_tokens=True`).
    pub fn encode(&self, prompts: &[&str], text_len: usize) -> Result<TokenBatch> {
        if prompts.is_empty() {
            return Err(ModelError::input("prompts", "no prompts to encode"));
        }
        if text_len < self.added_tokens.max(1) {
            return Err(ModelError::input(
                "text_len",
                format!("{text_len} leaves no room for the {} special token(s)", self.added_tokens),
            ));
        }
        let mut batch = TokenBatch { input_ids: Vec::new(), attention_mask: Vec::new() };
        for prompt in prompts {
            let (ids, mask) = self.encode_one(&prompt_clean(prompt), text_len)?;
            batch.input_ids.push(ids);
            batch.attention_mask.push(mask);
        }
        Ok(batch)
    }

    fn encode_one(&self, text: &str, text_len: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        let err = |e: tokenizers::Error| ModelError::Tokenizer { path: self.path.clone(), msg: e.to_string() };
        let mut encoding = self.tokenizer.encode(text, false).map_err(err)?;
        encoding.truncate(text_len - self.added_tokens, 0, TruncationDirection::Right);
        // What truncation cut off is of no use to the pipeline.
        drop(encoding.take_overflowing());
        let mut encoding = self.tokenizer.post_process(encoding, None, true).map_err(err)?;
        encoding.pad(text_len, self.pad_id, 0, &self.pad_token, PaddingDirection::Right);
        let ids = encoding.get_ids().to_vec();
        if ids.len() != text_len {
            return Err(ModelError::Tokenizer {
                path: self.path.clone(),
                msg: format!("post-processing made {} tokens where {text_len} were expected", ids.len()),
            });
        }
        Ok((ids, encoding.get_attention_mask().to_vec()))
    }
}

/// `tokenizer_config.json` next to `tokenizer.json`, if there is one.
fn tokenizer_config(dir: &Path) -> Result<Option<serde_json::Value>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    super::load::read_json(&path).map(Some)
}

/// The pad token the config names (as a string or as an added-token object with `content`).
fn configured_pad_token(config: &Option<serde_json::Value>) -> Option<String> {
    match config.as_ref()?.get("pad_token")? {
        serde_json::Value::String(token) => Some(token.clone()),
        serde_json::Value::Object(token) => token.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}
