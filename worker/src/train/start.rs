//! A run that starts from a finished model (the recipe's `start_from`) instead of random weights, to
//! fine-tune it: the weights are read and checked against the recipe's models before any work starts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::params::{Params, Start};
use super::run::{load_params, read_json};
use super::widen::{decoder_width, widen_decoder};
use super::{Recipe, TrainError};
use crate::model::dit::WanTransformer;
use crate::model::t5::UMT5Encoder;
use crate::model::vae::{VaeConfig, WanVae};

/// A pipeline folder's weights as stored (f16 or f32; the run's variables take them as f32), by component.
pub(super) struct StartModel {
    /// The VAE's weights, its decoder widened to the recipe's width when it was narrower.
    pub vae: HashMap<String, Tensor>,
    /// The VAE config's `latents_mean` and `latents_std`: the normalisation its transformer learned with.
    pub latent_stats: (Vec<f64>, Vec<f64>),
    pub transformer: HashMap<String, Tensor>,
    pub text_encoder: HashMap<String, Tensor>,
}

const VAE: &str = "vae/diffusion_pytorch_model.safetensors";
const VAE_CONFIG: &str = "vae/config.json";
const TRANSFORMER: &str = "transformer/diffusion_pytorch_model.safetensors";
const TEXT_ENCODER: &str = "text_encoder/model.safetensors";
const TOKENIZER: &str = "tokenizer/tokenizer.json";

impl StartModel {
    /// Reads the pipeline folder `dir` and checks that its weights are those of `recipe`'s models (every
    /// tensor the models ask for, at their shapes, and no other) and that its tokenizer is the one this
    /// run writes (`tokenizer_json`): the text encoder's embeddings are rows of that vocabulary.
    pub fn open(dir: &Path, recipe: &Recipe, vocab_size: usize, tokenizer_json: &[u8]) -> Result<Self, TrainError> {
        let unfit =
            |file: &str, msg: String| TrainError::WorkDir { path: dir.join(file), msg: format!("start_from: {msg}") };
        if !dir.join("model_index.json").is_file() {
            return Err(unfit("", "not a pipeline folder (it has no model_index.json)".into()));
        }
        let theirs: serde_json::Value = read_json(&dir.join(TOKENIZER))?;
        let ours: serde_json::Value =
            serde_json::from_slice(tokenizer_json).map_err(|e| unfit(TOKENIZER, e.to_string()))?;
        if theirs.get("model") != ours.get("model") {
            return Err(unfit(TOKENIZER, "the model's vocabulary is not the one this build trains with".into()));
        }
        // Each component is built once on its weights: a missing tensor or a shape the recipe's model does
        // not have fails here, with the file's name, and a tensor the model never asked for is left over.
        let vae_config: VaeConfig = read_json(&dir.join(VAE_CONFIG))?;
        let ours = recipe.vae_config();
        let checked = |file: &str, build: &dyn Fn(&Arc<Params>) -> Result<(), String>| {
            let mut weights = load_params(&dir.join(file), "")?;
            if file == VAE && decoder_width(&vae_config) != decoder_width(&ours) {
                // A narrower decoder is widened to the recipe's; any other difference fails the check below.
                let theirs = VaeConfig { decoder_base_dim: vae_config.decoder_base_dim, ..ours.clone() };
                weights =
                    widen_decoder(&weights, &theirs, &ours, recipe.seed).map_err(|e| unfit(VAE, e.to_string()))?;
            }
            // The check's variables are copies, dropped after it; the run's start from `weights`.
            let params = Arc::new(Params::new(Start::Saved(weights.clone())));
            build(&params).map_err(|e| unfit(file, format!("does not fit the recipe's model: {e}")))?;
            let unused = params.unused();
            if !unused.is_empty() {
                let shown = unused.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
                let msg = format!("{} tensors the recipe's model does not have ({shown}, …)", unused.len());
                return Err(unfit(file, msg));
            }
            Ok(weights)
        };
        let cpu = Device::Cpu;
        Ok(StartModel {
            vae: checked(VAE, &|p| {
                WanVae::new(ours.clone(), p.var_builder(&cpu)).map(drop).map_err(|e| e.to_string())
            })?,
            latent_stats: (vae_config.latents_mean.clone(), vae_config.latents_std.clone()),
            transformer: checked(TRANSFORMER, &|p| {
                WanTransformer::new(&recipe.transformer_config(), p.var_builder(&cpu))
                    .map(drop)
                    .map_err(|e| e.to_string())
            })?,
            text_encoder: checked(TEXT_ENCODER, &|p| {
                UMT5Encoder::new(&recipe.text_encoder_config(vocab_size), p.var_builder(&cpu))
                    .map(drop)
                    .map_err(|e| e.to_string())
            })?,
        })
    }
}
