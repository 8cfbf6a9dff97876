//! Writes a trained model as a diffusers `WanPipeline` folder, the layout `--model DIR` and the embedded
//! default load: `model_index.json`, `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use super::tokenizer;
use super::TrainError;
use crate::model::dit::WanTransformerConfig;
use crate::model::t5::UMT5Config;
use crate::model::vae::VaeConfig;

/// Everything a pipeline folder holds.
pub struct Pipeline<'a> {
    pub transformer: (&'a WanTransformerConfig, HashMap<String, Tensor>),
    /// The dtype the transformer's weights are stored in (the loader widens them to the serving dtype).
    pub transformer_dtype: DType,
    pub vae: (&'a VaeConfig, HashMap<String, Tensor>),
    pub text_encoder: (&'a UMT5Config, HashMap<String, Tensor>),
    pub vocabulary: &'a [&'a str],
    pub text_len: usize,
    pub shift: f64,
}

/// Writes the folder next to `dir` and renames it into place, so a reader sees the old model or the new
/// one, never half of each.
pub fn write(dir: &Path, p: Pipeline) -> Result<(), TrainError> {
    let staging = dir.with_extension("partial");
    remove_dir(&staging)?;
    let json_file = |path: &Path, value: Value| -> Result<(), TrainError> {
        let text = serde_json::to_string_pretty(&value).map_err(|e| TrainError::io(path, std::io::Error::other(e)))?;
        write_file(path, format!("{text}\n").as_bytes())
    };
    let weights = |path: &Path, tensors: &HashMap<String, Tensor>| -> Result<(), TrainError> {
        create_dir(path.parent().unwrap_or(path))?;
        candle_core::safetensors::save(tensors, path).map_err(|e| TrainError::io(path, std::io::Error::other(e)))
    };
    create_dir(&staging)?;
    json_file(
        &staging.join("model_index.json"),
        json!({
            "_class_name": "WanPipeline",
            "_diffusers_version": "0.33.0",
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"]
        }),
    )?;
    let with_class = |value: Value, class: &str| -> Value {
        let mut map = match value {
            Value::Object(m) => m,
            other => return other,
        };
        map.insert("_class_name".into(), json!(class));
        map.insert("_diffusers_version".into(), json!("0.33.0"));
        Value::Object(map)
    };
    let to_value = |v: Result<Value, serde_json::Error>, path: &Path| {
        v.map_err(|e| TrainError::io(path, std::io::Error::other(e)))
    };

    let t = staging.join("transformer");
    create_dir(&t)?;
    json_file(
        &t.join("config.json"),
        with_class(to_value(serde_json::to_value(p.transformer.0), &t)?, "WanTransformer3DModel"),
    )?;
    let stored = p
        .transformer
        .1
        .iter()
        .map(|(name, t)| Ok((name.clone(), t.to_dtype(p.transformer_dtype)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    weights(&t.join("diffusion_pytorch_model.safetensors"), &stored)?;

    let v = staging.join("vae");
    create_dir(&v)?;
    json_file(&v.join("config.json"), with_class(to_value(serde_json::to_value(p.vae.0), &v)?, "AutoencoderKLWan"))?;
    weights(&v.join("diffusion_pytorch_model.safetensors"), &p.vae.1)?;

    let e = staging.join("text_encoder");
    create_dir(&e)?;
    let mut config = to_value(serde_json::to_value(p.text_encoder.0), &e)?;
    if let Value::Object(map) = &mut config {
        for (k, val) in [
            ("architectures", json!(["UMT5EncoderModel"])),
            ("model_type", json!("umt5")),
            ("dense_act_fn", json!("gelu_new")),
            ("is_gated_act", json!(true)),
            ("tie_word_embeddings", json!(true)),
            ("pad_token_id", json!(0)),
            ("eos_token_id", json!(1)),
            ("dtype", json!("float32")),
        ] {
            map.insert(k.into(), val);
        }
    }
    json_file(&e.join("config.json"), config)?;
    weights(&e.join("model.safetensors"), &p.text_encoder.1)?;

    let k = staging.join("tokenizer");
    create_dir(&k)?;
    json_file(&k.join("tokenizer.json"), tokenizer::tokenizer_json(p.vocabulary))?;
    json_file(&k.join("tokenizer_config.json"), tokenizer::tokenizer_config(p.text_len))?;

    let s = staging.join("scheduler");
    create_dir(&s)?;
    json_file(
        &s.join("scheduler_config.json"),
        json!({
            "_class_name": "UniPCMultistepScheduler",
            "_diffusers_version": "0.33.0",
            "num_train_timesteps": 1000,
            "prediction_type": "flow_prediction",
            "use_flow_sigmas": true,
            "flow_shift": p.shift,
            "solver_order": 2,
            "solver_type": "bh2"
        }),
    )?;

    remove_dir(dir)?;
    std::fs::rename(&staging, dir).map_err(|e| TrainError::io(dir, e))
}

fn create_dir(path: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))
}

fn remove_dir(path: &Path) -> Result<(), TrainError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TrainError::io(path, e)),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}
