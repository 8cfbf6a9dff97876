//! The embedded default model: the project's tiny Wan2.1, trained on procedural videos by
//! `patchwork train` (see `docs/quality.md`) and shipped in `models/tiny/` as a diffusers pipeline folder.
//!
//! The folder's files are compiled into the binary, so `render` and a worker started without `--model`
//! need nothing on disk. On first use they are written once to a folder named by their content hash
//! under the system's temporary directory and loaded from there by the same loader as any Wan2.1
//! folder.

use std::path::{Path, PathBuf};

use crate::model::{ModelError, Result};

/// The name the embedded model is served under.
pub const NAME: &str = patchwork_shared::model::DEFAULT_MODEL;

macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../../../models/tiny/", $path)) as &[u8])),*]
    };
}

/// Every file of `models/tiny/`, by its path in the folder.
pub const FILES: &[(&str, &[u8])] = embedded!(
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
);

/// The embedded folder on disk, written there if it is not yet: `<tmp>/patchwork-tiny-<hash>`.
pub fn folder() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("patchwork-tiny-{:016x}", content_hash()));
    if dir.join("model_index.json").is_file() {
        return Ok(dir);
    }
    // Written beside the final name and renamed into place, so that concurrent processes never see a
    // half-written folder; whichever rename comes second finds the folder there and drops its copy.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let staging = dir.with_extension(format!("{}-{nanos}.partial", std::process::id()));
    for (path, bytes) in FILES {
        write(&staging.join(path), bytes)?;
    }
    if let Err(e) = std::fs::rename(&staging, &dir) {
        let _ = std::fs::remove_dir_all(&staging);
        if !dir.join("model_index.json").is_file() {
            return Err(ModelError::Io { path: dir, source: e });
        }
    }
    Ok(dir)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ModelError::Io { path: parent.to_path_buf(), source })?;
    }
    std::fs::write(path, bytes).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
}

/// FNV-1a over every file's path and bytes.
fn content_hash() -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (path, bytes) in FILES {
        for b in path.bytes().chain([0]).chain(bytes.iter().copied()) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_folder_is_the_shipped_one() {
        let dir = folder().unwrap();
        for (path, bytes) in FILES {
            assert_eq!(&std::fs::read(dir.join(path)).unwrap(), bytes, "{path}");
        }
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny");
        let mut on_disk: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&shipped).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                for f in std::fs::read_dir(&p).unwrap() {
                    on_disk.push(f.unwrap().path().strip_prefix(&shipped).unwrap().display().to_string());
                }
            } else {
                on_disk.push(p.strip_prefix(&shipped).unwrap().display().to_string());
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "models/tiny/ and the embedded file list differ");
        assert_eq!(folder().unwrap(), dir);
    }
}
