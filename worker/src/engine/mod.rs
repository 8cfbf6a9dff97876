//! What a worker computes: a model loaded once, evaluating denoise requests for windows and decoding latent
//! chunks. [`Evaluator`] is the seam the gRPC service talks to; [`Engine`] is the real model behind it and
//! [`LoadTest`] a stand-in that only waits, for measuring the control plane.

mod cache;
mod load_test;
pub mod tiny;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use patchwork_shared::model::{ModelGeometry, DEFAULT_MODEL};
use patchwork_shared::sampler::classifier_free_guidance;

pub use cache::PromptCache;
pub use load_test::LoadTest;

use crate::model::dit::WanTransformer;
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
}

/// A Wan2.1 text-to-video model: text encoder, transformer and VAE on one device.
#[derive(Debug)]
pub struct Engine {
    geometry: ModelGeometry,
    transformer: WanTransformer,
    vae: WanVae,
    text: TextEncoder,
    text_len: usize,
    prompts: PromptCache,
}

impl Engine {
    pub fn load(source: &ModelSource, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let (geometry, (transformer, vae, text), text_len) = match source {
            ModelSource::Tiny => (ModelGeometry::tiny(), tiny::build(dtype, device)?, tiny::TINY_TEXT_LEN),
            ModelSource::Dir { path, name } => {
                let pipeline = PipelineDir::open(path)?;
                let transformer = WanTransformer::load(&pipeline.component("transformer")?, dtype, device)?;
                let vae = WanVae::load(&pipeline.component("vae")?, dtype, device)?;
                let text = TextEncoder::load(&pipeline, dtype, device)?;
                let name = name.clone().unwrap_or_else(|| {
                    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
                });
                (geometry_for(&transformer, &name), (transformer, vae, text), 512)
            }
        };
        let d_model = text.encoder().config().d_model;
        if d_model != transformer.config().text_dim {
            return Err(ModelError::input(
                "text_encoder",
                format!("its width {d_model} is not the transformer's text_dim {}", transformer.config().text_dim),
            ));
        }
        Ok(Self { geometry, transformer, vae, text, text_len, prompts: PromptCache::new(64) })
    }

    fn embeddings(&self, prompt: &str) -> Result<Tensor, ModelError> {
        self.prompts.get_or_insert(prompt, || self.text.encode_prompts(&[prompt], self.text_len))
    }
}

/// The geometry of a loaded pipeline: a published Wan2.1 shape gets its preset, anything else the tiny
/// model's window and defaults under its own name.
fn geometry_for(transformer: &WanTransformer, name: &str) -> ModelGeometry {
    let cfg = transformer.config();
    let preset = match (cfg.dim(), cfg.num_layers) {
        (1536, 30) => ModelGeometry::wan2_1_t2v_1_3b(),
        (5120, 40) => ModelGeometry::wan2_1_t2v_14b(),
        _ => ModelGeometry::tiny(),
    };
    let name = if name.is_empty() { DEFAULT_MODEL } else { name };
    ModelGeometry { name: name.to_string(), ..preset }
}

impl Evaluator for Engine {
    fn geometry(&self) -> &ModelGeometry {
        &self.geometry
    }

    fn denoise(&self, input: &DenoiseInput) -> Result<Vec<f32>, ModelError> {
        let device = self.transformer.device();
        let dtype = self.transformer.dtype();
        let [c, f, h, w] = input.shape;
        let latent = Tensor::from_slice(&input.latent, (1, c, f, h, w), device)?.to_dtype(dtype)?;
        let cond = self.embeddings(&input.prompt)?;
        let guided = if input.guidance_scale > 1.0 {
            let uncond = self.embeddings(&input.negative_prompt)?;
            // One batch of two: conditional and unconditional evaluated together.
            let text = Tensor::cat(&[&cond, &uncond], 0)?;
            let x = Tensor::cat(&[&latent, &latent], 0)?;
            let t = Tensor::new(&[input.timestep, input.timestep], device)?.to_dtype(dtype)?;
            let out = self.transformer.forward(&x, &t, &text)?.to_dtype(DType::F32)?;
            classifier_free_guidance(&out.narrow(0, 0, 1)?, &out.narrow(0, 1, 1)?, input.guidance_scale as f64)
                .map_err(|e| ModelError::input("guidance", e.to_string()))?
        } else {
            let t = Tensor::new(&[input.timestep], device)?.to_dtype(dtype)?;
            self.transformer.forward(&latent, &t, &cond)?.to_dtype(DType::F32)?
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
