//! Running one component on named input tensors, as `patchwork model forward` does: the inputs carry
//! the reference's argument names, so any fixture made with the reference can be checked without code.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use super::dit::WanTransformer;
use super::error::{ModelError, Result};
use super::load::ComponentDir;
use super::t5::UMT5Encoder;
use super::vae::WanVae;
use crate::group::{DeviceName, ShardGroup, ShardLoader};

/// The components that can be run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// `hidden_states`, `timestep`, `encoder_hidden_states` → `sample`.
    Transformer,
    /// `latents` (raw, before the pipeline's mean/std) → `sample`.
    VaeDecode,
    /// `sample` → `mean` (the latent distribution's mode, raw).
    VaeEncode,
    /// `input_ids`, `attention_mask` → `last_hidden_state`.
    TextEncoder,
}

impl Component {
    pub const ALL: [Component; 4] =
        [Component::Transformer, Component::VaeDecode, Component::VaeEncode, Component::TextEncoder];

    pub fn name(self) -> &'static str {
        match self {
            Component::Transformer => "transformer",
            Component::VaeDecode => "vae-decode",
            Component::VaeEncode => "vae-encode",
            Component::TextEncoder => "text-encoder",
        }
    }
}

impl FromStr for Component {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        Component::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<_> = Component::ALL.iter().map(|c| c.name()).collect();
            ModelError::input("component", format!("unknown component `{s}`; one of {}", names.join(", ")))
        })
    }
}

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(ModelError::input("dtype", format!("unknown dtype `{other}`; one of f32, bf16, f16"))),
    }
}

/// Loads `component` from `model_dir` (the folder holding its `config.json`) in `dtype` and runs it on
/// `inputs`. Outputs are returned in f32.
pub fn run_component(
    component: Component,
    model_dir: &Path,
    inputs: &HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let dir = ComponentDir::open(model_dir)?;
    let input = |name: &str| -> Result<&Tensor> {
        inputs.get(name).ok_or_else(|| ModelError::input(name, format!("missing; the {} takes it", component.name())))
    };
    let (name, output) = match component {
        Component::Transformer => {
            let model = WanTransformer::load(&dir, dtype, device)?;
            let out = model.forward(
                &input("hidden_states")?.to_device(device)?,
                &input("timestep")?.to_device(device)?,
                &input("encoder_hidden_states")?.to_device(device)?,
            )?;
            ("sample", out)
        }
        Component::VaeDecode => {
            let vae = WanVae::load(&dir, dtype, device)?;
            ("sample", vae.decode(&input("latents")?.to_device(device)?)?)
        }
        Component::VaeEncode => {
            let vae = WanVae::load(&dir, dtype, device)?;
            ("mean", vae.encode(&input("sample")?.to_device(device)?)?)
        }
        Component::TextEncoder => {
            let encoder = UMT5Encoder::load(&dir, dtype, device)?;
            let out = encoder
                .forward(&input("input_ids")?.to_device(device)?, &input("attention_mask")?.to_device(device)?)?;
            ("last_hidden_state", out)
        }
    };
    Ok(HashMap::from([(name.to_string(), output.to_dtype(DType::F32)?)]))
}

/// Runs the transformer in `model_dir` on `inputs` sharded over `devices` (one rank each, tensor
/// parallel), as `patchwork model forward --tp N` does. The output is returned in f32.
pub fn run_transformer_sharded(
    model_dir: &Path,
    inputs: &HashMap<String, Tensor>,
    dtype: DType,
    devices: &[DeviceName],
) -> Result<HashMap<String, Tensor>> {
    let dir = ComponentDir::open(model_dir)?;
    let input = |name: &str| -> Result<&Tensor> {
        inputs.get(name).ok_or_else(|| ModelError::input(name, "missing; the transformer takes it"))
    };
    let (hidden, timestep, text) = (input("hidden_states")?, input("timestep")?, input("encoder_hidden_states")?);
    let loader: ShardLoader =
        std::sync::Arc::new(move |device, comm| WanTransformer::load_shard(&dir, dtype, device, comm));
    let group = ShardGroup::start(0, devices.to_vec(), loader)?;
    let out = group.forward(hidden, timestep, text).map_err(|e| ModelError::input("tp", e.to_string()))?;
    Ok(HashMap::from([("sample".to_string(), out.to_dtype(DType::F32)?)]))
}
