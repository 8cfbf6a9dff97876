//! Latent checkpoints: a job's whole latent and its sampler's state after some step, in one file that is
//! written atomically (temporary file, fsync, rename) and checked on load (a CRC-32 over every byte before
//! it). A coordinator that resumes from one continues exactly as the run that wrote it would have.
//!
//! Layout: `PWCKPT1\n`, a little-endian u64 header length, a JSON header (job, step, sampler, tensor names
//! and shapes), the tensors' f32 values little-endian in header order, and the CRC-32 (u32 LE).

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use patchwork_shared::sampler::{EulerSampler, FlowSampler, Sampler, SamplerKind, Schedule, UniPcSampler, UniPcState};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"PWCKPT1\n";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a checkpoint, or damaged: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Mismatch { path: PathBuf, why: String },
}

/// A job's state after `step` steps.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub job_id: String,
    /// Steps done; the sampler's next step.
    pub step: usize,
    /// The latent's dims `[C, F, H, W]` and values.
    pub dims: [usize; 4],
    pub latent: Vec<f32>,
    pub sampler: FlowSampler,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    job_id: String,
    step: usize,
    dims: [usize; 4],
    sampler: SamplerKind,
    steps: usize,
    shift: f64,
    /// UniPC's x0 predictions held, and whether its last sample is present.
    model_outputs: usize,
    last_sample: bool,
}

/// Writes `checkpoint` to `path` atomically.
pub fn write(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let corrupt = |why: String| CheckpointError::Corrupt { path: path.to_path_buf(), why };
    let sampler = &checkpoint.sampler;
    let (model_outputs, last_sample): (Vec<&Tensor>, Option<&Tensor>) = match sampler {
        FlowSampler::UniPc(s) => (s.state().model_outputs.iter().collect(), s.state().last_sample.as_ref()),
        FlowSampler::Euler(_) => (Vec::new(), None),
    };
    let header = Header {
        job_id: checkpoint.job_id.clone(),
        step: checkpoint.step,
        dims: checkpoint.dims,
        sampler: sampler.kind(),
        steps: sampler.num_steps(),
        shift: sampler.schedule().shift(),
        model_outputs: model_outputs.len(),
        last_sample: last_sample.is_some(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| corrupt(e.to_string()))?;
    let mut bytes = Vec::with_capacity(16 + json.len() + 4 * checkpoint.latent.len() * (2 + model_outputs.len()));
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    push_f32(&mut bytes, &checkpoint.latent);
    for tensor in model_outputs.into_iter().chain(last_sample) {
        let values = tensor.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| corrupt(e.to_string()))?;
        if values.len() != checkpoint.latent.len() {
            return Err(corrupt(format!(
                "a sampler tensor has {} values, the latent {}",
                values.len(),
                checkpoint.latent.len()
            )));
        }
        push_f32(&mut bytes, &values);
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());

    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&bytes).and_then(|_| file.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename itself must survive a crash: sync the directory that holds it.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Reads and checks the checkpoint at `path`, which must belong to `job_id`.
pub fn read(path: &Path, job_id: &str) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    let corrupt = |why: &str| CheckpointError::Corrupt { path: path.to_path_buf(), why: why.to_string() };
    if bytes.len() < MAGIC.len() + 12 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("no checkpoint header"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(corrupt("checksum mismatch"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&body[8..16]);
    let header_len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| corrupt("header length"))?;
    let json = body.get(16..16usize.saturating_add(header_len)).ok_or_else(|| corrupt("truncated header"))?;
    let header: Header = serde_json::from_slice(json).map_err(|e| corrupt(&e.to_string()))?;
    if header.job_id != job_id {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            why: format!("belongs to job {}, not {job_id}", header.job_id),
        });
    }
    let values: usize = header.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| corrupt("dims"))?;
    let tensors = 1 + header.model_outputs + usize::from(header.last_sample);
    let data = &body[16 + header_len..];
    if Some(data.len()) != values.checked_mul(4 * tensors) {
        return Err(corrupt("tensor data does not match the header"));
    }
    let mut chunks = data.chunks_exact(4 * values.max(1)).map(read_f32);
    let latent = chunks.next().unwrap_or_default();
    let mismatch = |e: String| CheckpointError::Mismatch { path: path.to_path_buf(), why: e };
    let to_tensor =
        |v: Vec<f32>| Tensor::from_vec(v, header.dims.as_slice(), &Device::Cpu).map_err(|e| mismatch(e.to_string()));
    let sampler = match header.sampler {
        SamplerKind::Euler => {
            let schedule =
                Schedule::flow_match_euler(header.steps, header.shift).map_err(|e| mismatch(e.to_string()))?;
            FlowSampler::Euler(EulerSampler::resume(schedule, header.step).map_err(|e| mismatch(e.to_string()))?)
        }
        SamplerKind::UniPc => {
            let schedule = Schedule::unipc_flow(header.steps, header.shift).map_err(|e| mismatch(e.to_string()))?;
            let model_outputs = (0..header.model_outputs)
                .map(|_| to_tensor(chunks.next().unwrap_or_default()))
                .collect::<Result<_, _>>()?;
            let last_sample =
                if header.last_sample { Some(to_tensor(chunks.next().unwrap_or_default())?) } else { None };
            let state = UniPcState { step_index: header.step, model_outputs, last_sample };
            FlowSampler::UniPc(UniPcSampler::resume(schedule, state).map_err(|e| mismatch(e.to_string()))?)
        }
    };
    Ok(Checkpoint { job_id: header.job_id, step: header.step, dims: header.dims, latent, sampler })
}

fn push_f32(out: &mut Vec<u8>, values: &[f32]) {
    let start = out.len();
    out.resize(start + values.len() * 4, 0);
    for (slot, v) in out[start..].chunks_exact_mut(4).zip(values) {
        slot.copy_from_slice(&v.to_le_bytes());
    }
}

fn read_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
