//! Reading diffusers-format directories: a pipeline folder with `model_index.json`, and component
//! folders (`transformer/`, `vae/`, `text_encoder/`, `tokenizer/`) each with a `config.json` and
//! safetensors weights, single-file or sharded with an index.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::error::{ModelError, Result};

/// One component folder (the one holding its `config.json`).
#[derive(Debug, Clone)]
pub struct ComponentDir {
    path: PathBuf,
}

impl ComponentDir {
    /// Opens a component folder; it must exist and hold a `config.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_dir() {
            return Err(ModelError::MissingFile { path, what: "a model component directory".into() });
        }
        let dir = ComponentDir { path };
        let config = dir.path.join("config.json");
        if !config.is_file() {
            return Err(ModelError::MissingFile { path: config, what: "the component's config.json".into() });
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `config.json` into `T`; a malformed file or field is an error naming the file.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        read_json(&self.path.join("config.json"))
    }

    /// The safetensors files holding this component's weights: the shards listed by a
    /// `*.safetensors.index.json` if there is one, else the single `*.safetensors` file.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        let entries =
            std::fs::read_dir(&self.path).map_err(|source| ModelError::Io { path: self.path.clone(), source })?;
        let mut indexes = Vec::new();
        let mut singles = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ModelError::Io { path: self.path.clone(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                indexes.push(entry.path());
            } else if name.ends_with(".safetensors") {
                singles.push(entry.path());
            }
        }
        indexes.sort();
        singles.sort();
        if let Some(index) = indexes.first() {
            return self.shards_of(index);
        }
        match singles.len() {
            0 => Err(ModelError::MissingFile {
                path: self.path.join("diffusion_pytorch_model.safetensors"),
                what: "safetensors weights (a *.safetensors file or a *.safetensors.index.json)".into(),
            }),
            1 => Ok(singles),
            _ => Err(ModelError::InvalidFile {
                path: self.path.clone(),
                msg: format!(
                    "{} safetensors files but no *.safetensors.index.json saying how they fit together",
                    singles.len()
                ),
            }),
        }
    }

    fn shards_of(&self, index: &Path) -> Result<Vec<PathBuf>> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: std::collections::HashMap<String, String>,
        }
        let parsed: Index = read_json(index)?;
        let names: BTreeSet<&String> = parsed.weight_map.values().collect();
        if names.is_empty() {
            return Err(ModelError::InvalidFile { path: index.to_path_buf(), msg: "weight_map is empty".into() });
        }
        names
            .into_iter()
            .map(|name| {
                let shard = self.path.join(name);
                if shard.is_file() {
                    Ok(shard)
                } else {
                    Err(ModelError::MissingFile { path: shard, what: format!("a shard listed in {}", index.display()) })
                }
            })
            .collect()
    }

    /// A `VarBuilder` over the memory-mapped weights, converting to `dtype` on load.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        Ok(VarBuilder::from_backend(Box::new(self.mapped()?), dtype, device.clone()))
    }

    /// The weight files, memory-mapped after a check that each is a whole safetensors file (a truncated
    /// or foreign file is reported by name).
    pub fn mapped(&self) -> Result<MmapedSafetensors> {
        let files = self.weight_files()?;
        for file in &files {
            check_safetensors_header(file)?;
        }
        // SAFETY: the files are memory-mapped read-only; patchwork never writes model files while serving.
        unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| ModelError::InvalidFile { path: self.path.clone(), msg: without_backtrace(e).to_string() })
    }

    /// Wraps an error raised while building the model from this folder's weights (a missing tensor,
    /// a wrong shape) so that it names the folder as well as the tensor; other errors pass unchanged.
    pub fn weights_error(&self, err: impl Into<ModelError>) -> ModelError {
        match err.into() {
            ModelError::Candle(err) => {
                ModelError::InvalidFile { path: self.path.clone(), msg: format!("weights: {}", without_backtrace(err)) }
            }
            other => other,
        }
    }
}

/// A full pipeline folder: `model_index.json` and one sub-folder per component.
#[derive(Debug, Clone)]
pub struct PipelineDir {
    path: PathBuf,
    index: serde_json::Map<String, serde_json::Value>,
}

impl PipelineDir {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let index_path = path.join("model_index.json");
        if !index_path.is_file() {
            return Err(ModelError::MissingFile {
                path: index_path,
                what: "a diffusers pipeline's model_index.json".into(),
            });
        }
        let index = read_json(&index_path)?;
        Ok(PipelineDir { path, index })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pipeline class named by `model_index.json` (e.g. `WanPipeline`).
    pub fn class_name(&self) -> Option<&str> {
        self.index.get("_class_name").and_then(|v| v.as_str())
    }

    /// The folder of a component listed in `model_index.json`.
    pub fn component_path(&self, name: &str) -> Result<PathBuf> {
        // diffusers lists optional components it does not have as `[null, null]`.
        let listed = match self.index.get(name) {
            Some(serde_json::Value::Array(parts)) => parts.iter().any(|p| !p.is_null()),
            Some(value) => !value.is_null(),
            None => false,
        };
        if !listed {
            return Err(ModelError::InvalidFile {
                path: self.path.join("model_index.json"),
                msg: format!("no component `{name}` in this pipeline"),
            });
        }
        let dir = self.path.join(name);
        if !dir.is_dir() {
            return Err(ModelError::MissingFile { path: dir, what: format!("the `{name}` component folder") });
        }
        Ok(dir)
    }

    /// A component folder holding a `config.json` (transformer, vae, text_encoder).
    pub fn component(&self, name: &str) -> Result<ComponentDir> {
        ComponentDir::open(self.component_path(name)?)
    }
}

/// candle attaches a backtrace to its errors when `RUST_BACKTRACE` is set, and prints it as part of the
/// message; a user-facing message about a bad file wants only the words.
pub(crate) fn without_backtrace(err: candle_core::Error) -> candle_core::Error {
    match err {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => {
            ModelError::MissingFile { path: path.to_path_buf(), what: "a JSON file".into() }
        }
        _ => ModelError::Io { path: path.to_path_buf(), source },
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })
}

/// Reads just the header of a safetensors file so that a truncated or foreign file is reported by name
/// before it is memory-mapped.
fn check_safetensors_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |msg: String| ModelError::InvalidFile { path: path.to_path_buf(), msg };
    let mut file = std::fs::File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let len = file.metadata().map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|_| bad("not a safetensors file (shorter than its 8-byte header length)".into()))?;
    let header_len = u64::from_le_bytes(prefix);
    // safetensors itself refuses headers over 100 MB; a larger length is a corrupt file, not a reason
    // to allocate gigabytes.
    if header_len > 100_000_000 || header_len.saturating_add(8) > len {
        return Err(bad(format!("not a safetensors file (header of {header_len} bytes in a file of {len})")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| bad(format!("reading header: {e}")))?;
    let parsed: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors file (header is not JSON: {e})")))?;
    let max_end = parsed
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|t| t.get("data_offsets")?.as_array()?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let end = max_end.saturating_add(8 + header_len);
    if end > len {
        return Err(bad(format!("truncated: tensors end at byte {end} but the file has {len}")));
    }
    Ok(())
}
