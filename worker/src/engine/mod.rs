//! What a worker computes: a model loaded once, evaluating denoise requests for windows and decoding latent
//! chunks. [`Evaluator`] is the seam the gRPC service talks to; [`Engine`] is the real model behind it and
//! [`LoadTest`] a stand-in that only waits, for measuring the control plane.

mod cache;
mod load_test;
pub mod tiny;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use patchwork_shared::model::{ModelGeometry, DEFAULT_MODEL};
use patchwork_shared::pb;
use patchwork_shared::sampler::classifier_free_guidance;

pub use cache::PromptCache;
pub use load_test::LoadTest;

use crate::group::{DeviceName, ShardGroup, ShardLoader};
use crate::model::dit::parallel::check_degree;
use crate::model::dit::{WanTransformer, WanTransformerConfig};
use crate::model::t5::TextEncoder;
use crate::model::vae::WanVae;
use crate::model::{ModelError, PipelineDir};

/// Which model a worker loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The embedded default ([`tiny`]).
    Tiny,
    /// A diffusers `WanPipeline` directory, served under `name` (default: the directory's name).
    Dir { path: PathBuf, name: Option<String> },
}

/// One window's denoise evaluation.
#[derive(Debug, Clone)]
pub struct DenoiseInput {
    /// `[C, f, h, w]` and its values, normalised latent space.
    pub shape: [usize; 4],
    pub latent: Vec<f32>,
    pub timestep: f32,
    /// One timestep per latent frame (`f` of them), or empty: every frame at `timestep`.
    pub frame_timesteps: Vec<f32>,
    pub prompt: String,
    pub negative_prompt: String,
    pub guidance_scale: f32,
}

/// One temporal chunk to decode: `context_frames` leading latent frames are causal context only.
#[derive(Debug, Clone)]
pub struct DecodeInput {
    pub shape: [usize; 4],
    pub latent: Vec<f32>,
    pub context_frames: usize,
}

/// Decoded RGB frames, `[frames, height, width, 3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Frames {
    pub shape: [usize; 4],
    pub data: Vec<u8>,
}

/// What the worker service needs of a model.
pub trait Evaluator: Send + Sync + 'static {
    fn geometry(&self) -> &ModelGeometry;
    /// The guided velocity for a window, the latent's shape.
    fn denoise(&self, input: &DenoiseInput) -> Result<Vec<f32>, ModelError>;
    fn decode(&self, input: &DecodeInput) -> Result<Frames, ModelError>;
    /// The shard groups and their health, when the evaluator has them (one evaluation at a time each).
    fn shard_groups(&self) -> Option<Vec<pb::ShardGroup>> {
        None
    }
}

/// A Wan2.1 text-to-video model: the transformer in shard groups (one evaluation at a time each), the
/// text encoder and the VAE on the first group's first device.
#[derive(Debug)]
pub struct Engine {
    geometry: ModelGeometry,
    groups: Vec<Arc<GroupSlot>>,
    vae: WanVae,
    text: TextEncoder,
    text_len: usize,
    prompts: PromptCache,
    device: Device,
    dtype: DType,
}

/// One shard group and what the worker reports about it.
#[derive(Debug)]
struct GroupSlot {
    group: Mutex<ShardGroup>,
    devices: Vec<DeviceName>,
    /// False from a rank's failure until the group is re-formed.
    healthy: AtomicBool,
    failures: AtomicU64,
    last_error: Mutex<String>,
    evaluations: AtomicU64,
    /// A planned fault: the rank, and the evaluation number at which it fails.
    fault: Mutex<Option<(usize, u64)>>,
}

/// A rank failure planned for a test: `group:rank:at` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedFault {
    pub group: usize,
    pub rank: usize,
    /// The group's evaluation that fails, counted from 1.
    pub at: u64,
}

impl std::str::FromStr for InjectedFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let numbers: Vec<u64> = parts.iter().filter_map(|p| p.parse().ok()).collect();
        match numbers[..] {
            [group, rank, at] if parts.len() == 3 && at > 0 => {
                Ok(InjectedFault { group: group as usize, rank: rank as usize, at })
            }
            _ => Err(format!("{s:?}: expected GROUP:RANK:EVALUATION, e.g. 0:1:3")),
        }
    }
}

impl Engine {
    /// The model on one device, unsharded.
    pub fn load(source: &ModelSource, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let name = match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => DeviceName::Cuda(gpu_id),
            _ => DeviceName::Cpu(0),
        };
        Self::load_groups(source, dtype, &[vec![name]])
    }

    /// The model with one shard group per entry of `groups` (each a list of devices, one rank each).
    pub fn load_groups(source: &ModelSource, dtype: DType, groups: &[Vec<DeviceName>]) -> Result<Self, ModelError> {
        let first = groups.first().and_then(|g| g.first()).ok_or_else(|| ModelError::input("devices", "no devices"))?;
        let device = first.open()?;
        let (path, name) = match source {
            ModelSource::Tiny => (tiny::folder()?, tiny::NAME.to_string()),
            ModelSource::Dir { path, name } => {
                let name = name.clone().unwrap_or_else(|| {
                    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
                });
                (path.clone(), name)
            }
        };
        let pipeline = PipelineDir::open(&path)?;
        let dir = pipeline.component("transformer")?;
        let cfg: WanTransformerConfig = dir.config()?;
        cfg.validate()?;
        let vae = WanVae::load(&pipeline.component("vae")?, dtype, &device)?;
        let text = TextEncoder::load(&pipeline, dtype, &device)?;
        let loader: ShardLoader = Arc::new(move |device, comm| WanTransformer::load_shard(&dir, dtype, device, comm));
        // The length the model was trained with (Wan2.1's tokenizer says 512, the pipeline's default).
        let text_len = text.tokenizer().max_length().unwrap_or(512).min(512);
        let geometry = geometry_for(&cfg, &name);
        let d_model = text.encoder().config().d_model;
        if d_model != cfg.text_dim {
            return Err(ModelError::input(
                "text_encoder",
                format!("its width {d_model} is not the transformer's text_dim {}", cfg.text_dim),
            ));
        }
        for devices in groups {
            check_degree(&cfg, devices.len())?;
        }
        let groups = groups
            .iter()
            .enumerate()
            .map(|(index, devices)| {
                let group = ShardGroup::start(index, devices.clone(), loader.clone())?;
                Ok(Arc::new(GroupSlot {
                    group: Mutex::new(group),
                    devices: devices.clone(),
                    healthy: AtomicBool::new(true),
                    failures: AtomicU64::new(0),
                    last_error: Mutex::new(String::new()),
                    evaluations: AtomicU64::new(0),
                    fault: Mutex::new(None),
                }))
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self { geometry, groups, vae, text, text_len, prompts: PromptCache::new(64), device, dtype })
    }

    fn embeddings(&self, prompt: &str) -> Result<Tensor, ModelError> {
        self.prompts.get_or_insert(prompt, || self.text.encode_prompts(&[prompt], self.text_len))
    }

    /// Makes `rank` of group `group` fail at the group's evaluation number `at` (1 = the next one), as
    /// a lost device would: for testing recovery end to end.
    pub fn inject_fault(&self, fault: InjectedFault) -> Result<(), ModelError> {
        let slot = self.groups.get(fault.group).ok_or_else(|| {
            ModelError::input(
                "inject_rank_fault",
                format!("no shard group {} (the worker has {})", fault.group, self.groups.len()),
            )
        })?;
        if fault.rank >= slot.devices.len() {
            return Err(ModelError::input(
                "inject_rank_fault",
                format!("group {} has no rank {}", fault.group, fault.rank),
            ));
        }
        *lock(&slot.fault) = Some((fault.rank, slot.evaluations.load(Ordering::SeqCst) + fault.at.max(1)));
        Ok(())
    }

    /// The transformer on a free, healthy group. A rank failure marks the group unhealthy and re-forms it
    /// in the background; this evaluation fails (the coordinator gives it to another group).
    fn transformer(&self, hidden: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor, ModelError> {
        let Some((slot, group)) = self.groups.iter().find_map(|slot| {
            if !slot.healthy.load(Ordering::SeqCst) {
                return None;
            }
            slot.group.try_lock().ok().map(|g| (slot, g))
        }) else {
            return Err(ModelError::Busy("every shard group is busy or being re-formed".into()));
        };
        let evaluation = slot.evaluations.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((rank, at)) = *lock(&slot.fault) {
            if at == evaluation {
                tracing::warn!(rank, evaluation, "injecting a rank fault (--inject-rank-fault)");
                group.inject_fault(rank);
            }
        }
        match group.forward(hidden, timestep, text) {
            Ok(out) => Ok(out.to_device(&self.device)?),
            Err(failure) => {
                slot.healthy.store(false, Ordering::SeqCst);
                slot.failures.fetch_add(1, Ordering::SeqCst);
                *lock(&slot.last_error) = failure.to_string();
                tracing::error!(%failure, "shard group failed; re-forming it");
                drop(group);
                let slot = slot.clone();
                std::thread::spawn(move || {
                    let reformed = lock(&slot.group).reform();
                    match reformed {
                        Ok(()) => {
                            tracing::info!(devices = ?slot.devices.iter().map(|d| d.to_string()).collect::<Vec<_>>(), "shard group re-formed");
                            slot.healthy.store(true, Ordering::SeqCst);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "re-forming the shard group failed; it stays out of service");
                            *lock(&slot.last_error) = format!("re-forming failed: {e}");
                        }
                    }
                });
                Err(ModelError::GroupFailed(failure.to_string()))
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The geometry of a loaded pipeline: a published Wan2.1 shape gets its preset, anything else the tiny
/// model's window and defaults under its own name.
fn geometry_for(cfg: &WanTransformerConfig, name: &str) -> ModelGeometry {
    let preset = match (cfg.dim(), cfg.num_layers) {
        (1536, 30) => ModelGeometry::wan2_1_t2v_1_3b(),
        (5120, 40) => ModelGeometry::wan2_1_t2v_14b(),
        _ => ModelGeometry::tiny(),
    };
    let name = if name.is_empty() { DEFAULT_MODEL } else { name };
    ModelGeometry { name: name.to_string(), ..preset }
}

/// The transformer's timesteps for `batch` copies of `input`'s window: `[batch]`, or `[batch, f]` with a
/// timestep per latent frame.
fn timesteps(input: &DenoiseInput, batch: usize, device: &Device) -> Result<Tensor, ModelError> {
    let f = input.shape[1];
    if input.frame_timesteps.is_empty() {
        return Ok(Tensor::new(vec![input.timestep; batch], device)?);
    }
    if input.frame_timesteps.len() != f {
        let got = input.frame_timesteps.len();
        return Err(ModelError::input("frame_timesteps", format!("{got} timesteps for a window of {f} latent frames")));
    }
    let all: Vec<f32> = (0..batch).flat_map(|_| input.frame_timesteps.iter().copied()).collect();
    Ok(Tensor::from_vec(all, (batch, f), device)?)
}

impl Evaluator for Engine {
    fn geometry(&self) -> &ModelGeometry {
        &self.geometry
    }

    fn shard_groups(&self) -> Option<Vec<pb::ShardGroup>> {
        Some(
            self.groups
                .iter()
                .enumerate()
                .map(|(index, slot)| pb::ShardGroup {
                    index: index as u32,
                    devices: slot.devices.iter().map(|d| d.to_string()).collect(),
                    healthy: slot.healthy.load(Ordering::SeqCst),
                    failures: slot.failures.load(Ordering::SeqCst),
                    last_error: lock(&slot.last_error).clone(),
                })
                .collect(),
        )
    }

    fn denoise(&self, input: &DenoiseInput) -> Result<Vec<f32>, ModelError> {
        let device = &self.device;
        let dtype = self.dtype;
        let [c, f, h, w] = input.shape;
        let latent = Tensor::from_slice(&input.latent, (1, c, f, h, w), device)?.to_dtype(dtype)?;
        let cond = self.embeddings(&input.prompt)?;
        let guided = if input.guidance_scale > 1.0 {
            let uncond = self.embeddings(&input.negative_prompt)?;
            // One batch of two: conditional and unconditional evaluated together.
            let text = Tensor::cat(&[&cond, &uncond], 0)?;
            let x = Tensor::cat(&[&latent, &latent], 0)?;
            let t = timesteps(input, 2, device)?.to_dtype(dtype)?;
            let out = self.transformer(&x, &t, &text)?.to_dtype(DType::F32)?;
            classifier_free_guidance(&out.narrow(0, 0, 1)?, &out.narrow(0, 1, 1)?, input.guidance_scale as f64)
                .map_err(|e| ModelError::input("guidance", e.to_string()))?
        } else {
            let t = timesteps(input, 1, device)?.to_dtype(dtype)?;
            self.transformer(&latent, &t, &cond)?.to_dtype(DType::F32)?
        };
        Ok(guided.flatten_all()?.to_vec1::<f32>()?)
    }

    fn decode(&self, input: &DecodeInput) -> Result<Frames, ModelError> {
        let [c, f, h, w] = input.shape;
        if input.context_frames >= f {
            return Err(ModelError::input("context_frames", format!("{} of {f} frames", input.context_frames)));
        }
        let latent = Tensor::from_slice(&input.latent, (1, c, f, h, w), self.vae.device())?;
        let raw = self.vae.denormalize(&latent.to_dtype(self.vae.dtype())?)?;
        let mut stream = self.vae.decode_stream();
        let mut kept = Vec::new();
        for i in 0..f {
            let out = stream.push(&raw.narrow(2, i, 1)?)?;
            if i >= input.context_frames {
                kept.push(out);
            }
        }
        // [1, 3, T, H, W] in [-1, 1] -> [T, H, W, 3] bytes.
        let video = Tensor::cat(&kept, 2)?.squeeze(0)?.permute((1, 2, 3, 0))?.to_dtype(DType::F32)?;
        let (t, hh, ww, _) = video.dims4()?;
        let bytes = ((video + 1.0)? * 127.5)?.round()?.clamp(0f32, 255f32)?.to_dtype(DType::U8)?;
        Ok(Frames { shape: [t, hh, ww, 3], data: bytes.flatten_all()?.to_vec1::<u8>()? })
    }
}
