//! What a training run makes and how: the model sizes, the steps and the learning rates. A run's work
//! folder records its recipe, and a resumed run must use the same one.

use patchwork_scenes::SceneSampler;
use serde::{Deserialize, Serialize};

use crate::model::dit::WanTransformerConfig;
use crate::model::t5::UMT5Config;
use crate::model::vae::VaeConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub seed: u64,
    /// The clips' frame size and the transformer's native window (1 + 4k frames).
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub vae: VaeRecipe,
    pub dit: DitRecipe,
    pub text: TextRecipe,
    /// A pipeline folder (a finished run's output, e.g. `models/tiny`) whose weights the phases start
    /// from instead of random ones: the VAE phase from its VAE, the transformer's from its transformer
    /// and text encoder. Its sizes must be the recipe's. With `vae.steps` 0 its VAE is kept as it is,
    /// and the run fine-tunes the transformer. A relative path is taken from where `train` runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_from: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeRecipe {
    pub base_dim: usize,
    pub steps: usize,
    pub batch: usize,
    /// The clips' shapes, taken in turn step by step. Long clips train what a decode deep into a long
    /// video sees (the causal cache after many chunks); large crops train sharp detail; a step's cost
    /// is about frames × crop², so each shape trades one for the other.
    pub clips: Vec<ClipShape>,
    pub lr: f64,
    /// How much more a pixel covered by an object counts in the reconstruction loss than one of the
    /// background.
    pub object_weight: f64,
    /// The share of crops placed around an object (its centre at the clip's middle frame, jittered by up
    /// to a quarter crop) rather than anywhere: objects cover a few percent of a frame, so random crops
    /// are mostly flat background.
    #[serde(default)]
    pub object_crops: f64,
    /// Weight of the latent's L2 penalty (half its mean square) against the reconstruction loss.
    pub latent_penalty: f64,
    /// A last phase that trains the decoder alone, the encoder frozen; off when its steps are 0.
    #[serde(default)]
    pub decoder: DecoderRecipe,
    /// A term that holds colours apart in the latent; off unless its weight is positive.
    #[serde(default, skip_serializing_if = "Contrast::is_off")]
    pub colour_contrast: Contrast,
    /// Its counterpart for shapes: the second clip of a three reshapes the object instead of recolouring
    /// it. With both on, a step's threes are split between the two (alternating when there is one).
    #[serde(default, skip_serializing_if = "Contrast::is_off")]
    pub shape_contrast: Contrast,
}

/// A VAE phase contrast term, for colour or for shape. A reconstruction loss lets the encoder put
/// neighbouring hues (yellow and orange, cyan and blue) close together in the latent as long as the
/// decoder can still tell them apart, and the transformer's squared error on that latent then barely sees
/// the difference; the same goes for a circle and a square, which differ at their corners. With a term
/// on, the batch's clips come in threes: a scene, the same scene with its first object recoloured to one
/// of the three colours nearest its own (or, for shape, redrawn as another shape), and the scene without
/// that object, all cut at the same place. For each three the term compares how far apart the two
/// objects lie against the object's own signal, in the latent (`‖z − z′‖` over the mean of `‖z − z∅‖`
/// and `‖z′ − z∅‖`, on the encoder's mean) and in pixels (the same ratio of the clips), and costs
/// `max(0, margin · pixel ratio − latent ratio)²`: the latent must keep at least `margin` of the
/// distance the pixels have. The latent ratio's denominator counts as a constant, so the term moves the
/// two apart rather than shrink the object; it does not hold the latent's overall scale (the latent
/// statistics the export records do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    /// The term's weight against the reconstruction loss.
    pub weight: f64,
    pub margin: f64,
}

impl Contrast {
    pub fn is_off(&self) -> bool {
        self.weight == 0.0
    }
}

/// The decoder's own phase, after the transformer's. The encoder is frozen, so the latents the transformer
/// learned stay exactly what they were, and the decoder can keep learning what the joint training left
/// undone (the objects' colours, mostly) without moving them. Its clips are drawn as the VAE phase's are
/// (the same batch and object crops, and the same shapes unless it names its own) from a stream of
/// their own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecoderRecipe {
    pub steps: usize,
    pub lr: f64,
    /// How much more an object's pixels count than the background's.
    pub object_weight: f64,
    /// Gaussian noise added to the latent before decoding, in units of each channel's standard deviation
    /// over the dataset: a decoder that sees slightly wrong latents is steadier on the transformer's,
    /// which are never exactly an encoder's.
    #[serde(default)]
    pub latent_noise: f64,
    /// The decoder phase's own clip shapes, cycled step by step; empty: the VAE phase's (`vae.clips`).
    /// The farm runs the causal decoder over up to 16 latent frames at once (a chunk of 8 after 8 of
    /// context, 61 video frames), several windows long, so its decoder must have seen clips as long.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clips: Vec<ClipShape>,
    /// The decoder's base width (the VAE config's `decoder_base_dim`); none: the encoder's `base_dim`.
    /// The decoder's finest levels are this many channels wide (its deepest four times as many) and draw
    /// the objects' edges and colours; the latent is the encoder's alone, so a wider decoder keeps every
    /// transformer trained on that encoder valid. A start model whose decoder is narrower by a whole
    /// factor is widened without changing what it computes ([`super::widen`]), and its phase trains on
    /// from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dim: Option<usize>,
}

/// One shape of VAE training clip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipShape {
    /// Frames: 1 + 4k with k ≥ 2, so that the first frame's path, a chunk after it and a chunk after a
    /// chunk are all trained.
    pub frames: usize,
    /// Side of the square crops (a multiple of 8, at most the frame size).
    pub crop: usize,
}

/// How often a transformer draw holds clean context frames, and how many ([`DitRecipe::context`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextFrames {
    /// The share of draws with context frames.
    pub chance: f64,
    /// A draw with context holds 1 to this many of its first latent frames clean (drawn evenly); fewer
    /// than the window's latent frames.
    pub max_frames: usize,
    /// Draws with context take a later window of their clip (evenly), never its first: the farm holds
    /// frames from the middle of a video, each latent frame four frames long, while a clip's first
    /// latent frame holds one. Needs `dit.clip_frames` longer than `frames`; the draws without context
    /// take their windows as `dit.first_window` says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub later_windows: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DitRecipe {
    pub heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub ffn_dim: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// Clips encoded once by the trained VAE and then sampled from.
    pub clips: usize,
    /// The length the dataset's clips are rendered and encoded at (1 + 4k, at least `frames`); none:
    /// `frames`. Each step cuts a window of `frames` from each clip it draws, starting at a latent
    /// frame drawn uniformly (or as `first_window` says). The farm's later windows start mid-video,
    /// where the first latent frame holds four frames and the causal encoder has seen what came
    /// before; a transformer that learned only clips' starts has seen no such window. A clip's first
    /// window has the scene's caption; a later window's names each object the way it moves over most
    /// of the window's frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_frames: Option<usize>,
    /// With `clip_frames`: the share of draws that take a clip's first window (the rest spread evenly
    /// over the later ones); none: every start alike. A video's first window is the one the farm draws
    /// from nothing, and the one whose objects the prompt's direction is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_window: Option<f64>,
    /// The clip length the dataset's scenes are planned for (see the scene sampler: room to move and
    /// paths kept clear this long); none: the sampler's own (17 frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_frames: Option<usize>,
    /// Video continuation: some draws hold their window's first latent frames clean, at timestep 0,
    /// beside the frames being drawn (a timestep per latent frame), and the loss leaves those frames
    /// out. A transformer so trained can draw a later window of a long video from the frames its
    /// neighbour has already drawn; none: every frame of a draw at one noise level, as Wan2.1 was
    /// trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextFrames>,
    /// The share of the dataset's scenes that hold two objects; none: the scene sampler's own (0.2).
    /// Objects of two-object scenes are where the transformer binds words to the wrong object most, so a
    /// fine-tune can show it more of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_objects: Option<f64>,
    /// The share of captions replaced by the empty prompt, so that classifier-free guidance has an
    /// unconditional model to push away from.
    pub caption_dropout: f64,
    /// The chance that a caption leaves out each optional part of its grammar, the speed words and the
    /// background (drawn apart): prompts that do not say everything then still draw what they say.
    #[serde(default)]
    pub caption_part_dropout: f64,
    /// Noise levels are drawn as `shift·u / (1 + (shift − 1)·u)` for uniform `u`: the distribution the
    /// sampler's shifted schedule visits.
    pub shift: f64,
    /// How much more the latent positions an object touches count in the velocity loss than the
    /// background's: an object covers one or two transformer tokens of a frame, so an unweighted loss
    /// is almost all background.
    #[serde(default = "unweighted")]
    pub object_weight: f64,
    /// Weight of a loss in pixels beside the velocity's: the clean latent the prediction implies
    /// (`x_σ − σ·v`) has its first latent frame (the clip's first frame alone) decoded by the run's frozen
    /// decoder and compared with the rendered frame, object pixels weighted by `object_weight`. In the
    /// latent, neighbouring hues lie close (yellow and orange 0.09 of an object's signal, in the same
    /// few directions as the object itself), so the velocity loss barely tells them apart; in pixels
    /// they are 83 RGB units apart. 0: off. Needs windows that start their clips (no `clip_frames`) and
    /// a CPU run (the decoder's training ops are CPU kernels).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pixel_loss: f64,
    /// Weight of a contrastive term for two-object captions: each such clip is also denoised under its
    /// caption with the two objects' colours swapped (every word kept, only which colour goes with which
    /// shape changed), and the term is `max(0, m − (e_swapped − e)/e)` with the clip's (weighted) velocity
    /// errors `e` under its own caption and `e_swapped` under the swapped one, `m` the
    /// [`super::binding::BINDING_MARGIN`]. A transformer that reads its caption as a bag of words scores the
    /// two alike (`benches/binding`); this asks it to fit its own caption better. 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub binding_loss: f64,
    /// The dtype of the exported transformer weights: `f32`, `f16` or `bf16` (training runs in f32; f16
    /// halves the folder at a relative rounding of 2⁻¹¹).
    #[serde(default = "f32_name")]
    pub stored_dtype: String,
}

fn f32_name() -> String {
    "f32".into()
}

fn unweighted() -> f64 {
    1.0
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextRecipe {
    pub d_model: usize,
    pub heads: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub layers: usize,
    /// Tokens per prompt, `</s>` included (the tokenizer's `model_max_length`).
    pub text_len: usize,
    /// What the text encoder's query weights are multiplied by where the transformer phase starts (from
    /// random weights or from `start_from`; not on resume). umT5's attention has no `1/√d_kv` scaling,
    /// so its content scores can grow until the softmax is all but one-hot and the relative position
    /// bias, the only thing that tells where a word stands, no longer counts or learns. A scale below 1
    /// softens the scores; T5's own initialisation corresponds to `1/√d_kv`.
    #[serde(default = "unweighted", skip_serializing_if = "is_one")]
    pub query_scale: f64,
    /// The learning rate of the text encoder's relative position bias tables, as a multiple of the
    /// transformer phase's. AdamW moves each weight by about the learning rate per step, so at a
    /// fine-tune's rate a bias entry can move only a fraction of a unit in a few hundred steps, while
    /// the content scores, sums over many weights, move far faster.
    #[serde(default = "unweighted", skip_serializing_if = "is_one")]
    pub position_lr: f64,
}

impl Default for Recipe {
    /// The recipe of the shipped model's first run (`models/tiny/` is that run fine-tuned by
    /// `models/recipes/finetune-captions.json`).
    fn default() -> Self {
        Recipe {
            seed: 2026,
            width: 64,
            height: 64,
            frames: 17,
            vae: VaeRecipe {
                base_dim: 8,
                steps: 3000,
                batch: 3,
                clips: vec![
                    ClipShape { frames: 9, crop: 32 },
                    ClipShape { frames: 17, crop: 24 },
                    ClipShape { frames: 9, crop: 32 },
                    ClipShape { frames: 33, crop: 16 },
                ],
                lr: 2e-3,
                object_weight: 1.0,
                object_crops: 0.75,
                latent_penalty: 1e-4,
                decoder: DecoderRecipe {
                    steps: 2000,
                    lr: 1e-3,
                    object_weight: 5.0,
                    latent_noise: 0.3,
                    clips: Vec::new(),
                    base_dim: None,
                },
                colour_contrast: Contrast::default(),
                shape_contrast: Contrast::default(),
            },
            dit: DitRecipe {
                heads: 6,
                head_dim: 32,
                layers: 6,
                ffn_dim: 768,
                steps: 2500,
                batch: 128,
                lr: 1.5e-3,
                clips: 8000,
                clip_frames: None,
                first_window: None,
                planned_frames: None,
                context: None,
                two_objects: None,
                caption_dropout: 0.1,
                caption_part_dropout: 0.0,
                shift: 3.0,
                object_weight: 5.0,
                pixel_loss: 0.0,
                binding_loss: 0.0,
                stored_dtype: "f16".into(),
            },
            text: TextRecipe {
                d_model: 128,
                heads: 4,
                d_kv: 32,
                d_ff: 256,
                layers: 2,
                text_len: 32,
                query_scale: 1.0,
                position_lr: 1.0,
            },
            start_from: None,
        }
    }
}

impl Recipe {
    pub fn vae_config(&self) -> VaeConfig {
        let decoder_base_dim = self.vae.decoder.base_dim.filter(|&d| d != self.vae.base_dim);
        VaeConfig { base_dim: self.vae.base_dim, decoder_base_dim, ..VaeConfig::wan2_1() }
    }

    pub fn transformer_config(&self) -> WanTransformerConfig {
        WanTransformerConfig {
            patch_size: [1, 2, 2],
            num_attention_heads: self.dit.heads,
            attention_head_dim: self.dit.head_dim,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: self.text.d_model,
            freq_dim: 64,
            ffn_dim: self.dit.ffn_dim,
            num_layers: self.dit.layers,
            cross_attn_norm: true,
            qk_norm: Some("rms_norm_across_heads".into()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
        }
    }

    pub fn text_encoder_config(&self, vocab_size: usize) -> UMT5Config {
        UMT5Config {
            vocab_size,
            d_model: self.text.d_model,
            d_kv: self.text.d_kv,
            d_ff: self.text.d_ff,
            num_layers: self.text.layers,
            num_heads: self.text.heads,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }

    /// The frames of the transformer's dataset clips (`dit.clip_frames`, or the native window's).
    pub fn clip_frames(&self) -> usize {
        self.dit.clip_frames.unwrap_or(self.frames)
    }

    /// The sampler of the transformer's dataset scenes (`dit.two_objects` skews it).
    pub fn dataset_sampler(&self) -> SceneSampler {
        let mut sampler = SceneSampler::new(self.width, self.height);
        if let Some(p) = self.dit.two_objects {
            sampler.two_objects = p;
        }
        if let Some(f) = self.dit.planned_frames {
            sampler.planned_frames = f;
        }
        sampler
    }

    /// Checks what would otherwise fail deep inside a phase.
    pub fn validate(&self) -> Result<(), String> {
        let multiple = |v: usize, m: usize| v > 0 && v.is_multiple_of(m);
        if !multiple(self.width, 16) || !multiple(self.height, 16) {
            return Err(format!("width and height must be multiples of 16, got {}x{}", self.width, self.height));
        }
        if self.frames == 0 || !(self.frames - 1).is_multiple_of(4) {
            return Err(format!("frames must be 1 + a multiple of 4, got {}", self.frames));
        }
        if let Some(f) = self.dit.clip_frames {
            if f < self.frames || !(f - 1).is_multiple_of(4) {
                return Err(format!(
                    "dit.clip_frames must be 1 + a multiple of 4 and at least frames ({}), got {f}",
                    self.frames
                ));
            }
        }
        if !(self.dit.pixel_loss >= 0.0 && self.dit.pixel_loss.is_finite()) {
            return Err(format!("dit.pixel_loss must be at least 0, got {}", self.dit.pixel_loss));
        }
        if !(self.dit.binding_loss >= 0.0 && self.dit.binding_loss.is_finite()) {
            return Err(format!("dit.binding_loss must be at least 0, got {}", self.dit.binding_loss));
        }
        for (field, v) in [("text.query_scale", self.text.query_scale), ("text.position_lr", self.text.position_lr)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("{field} must be a positive number, got {v}"));
            }
        }
        if self.dit.pixel_loss > 0.0 && self.clip_frames() != self.frames {
            return Err("dit.pixel_loss decodes each window's first frame, so it needs windows that start their \
                        clips: leave dit.clip_frames out"
                .into());
        }
        if let Some(p) = self.dit.first_window {
            if !(0.0..1.0).contains(&p) || self.clip_frames() == self.frames {
                return Err(format!(
                    "dit.first_window must be a probability in 0..1 and needs dit.clip_frames longer than \
                     frames, got {p}"
                ));
            }
        }
        if let Some(c) = &self.dit.context {
            let window = (self.frames - 1) / 4 + 1;
            if !(0.0..=1.0).contains(&c.chance) {
                return Err(format!("dit.context.chance must be a probability in 0..=1, got {}", c.chance));
            }
            if c.max_frames == 0 || c.max_frames >= window {
                return Err(format!(
                    "dit.context.max_frames must be 1 to {} (fewer than the window's {window} latent frames), got {}",
                    window - 1,
                    c.max_frames
                ));
            }
            if c.later_windows && self.clip_frames() == self.frames {
                return Err("dit.context.later_windows needs dit.clip_frames longer than frames".into());
            }
            if self.dit.pixel_loss > 0.0 {
                return Err("dit.context and dit.pixel_loss do not go together: the pixel loss takes one \
                            timestep per clip"
                    .into());
            }
        }
        if self.dit.planned_frames == Some(0) {
            return Err("dit.planned_frames must be at least 1".into());
        }
        if let Some(p) = self.dit.two_objects {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("dit.two_objects must be a probability in 0..=1, got {p}"));
            }
        }
        if self.vae.object_weight.is_nan() || self.vae.object_weight < 1.0 {
            return Err(format!("vae.object_weight must be at least 1, got {}", self.vae.object_weight));
        }
        if self.dit.object_weight.is_nan() || self.dit.object_weight < 1.0 {
            return Err(format!("dit.object_weight must be at least 1, got {}", self.dit.object_weight));
        }
        let d = &self.vae.decoder;
        if d.steps > 0 && (d.object_weight.is_nan() || d.object_weight < 1.0) {
            return Err(format!("vae.decoder.object_weight must be at least 1, got {}", d.object_weight));
        }
        if d.steps > 0 && !(d.lr > 0.0 && d.lr.is_finite()) {
            return Err(format!("vae.decoder.lr must be positive, got {}", d.lr));
        }
        if !(d.latent_noise >= 0.0 && d.latent_noise.is_finite()) {
            return Err(format!("vae.decoder.latent_noise must be at least 0, got {}", d.latent_noise));
        }
        if d.base_dim == Some(0) {
            return Err("vae.decoder.base_dim must be positive".into());
        }
        for (field, c) in [("colour_contrast", &self.vae.colour_contrast), ("shape_contrast", &self.vae.shape_contrast)]
        {
            if !(c.weight >= 0.0 && c.weight.is_finite()) {
                return Err(format!("vae.{field}.weight must be at least 0, got {}", c.weight));
            }
            let margin_ok = c.margin > 0.0 && c.margin.is_finite();
            if !c.is_off() && !margin_ok {
                return Err(format!("vae.{field}.margin must be positive, got {}", c.margin));
            }
            if !c.is_off() && !self.vae.batch.is_multiple_of(3) {
                return Err(format!(
                    "vae.batch must be a multiple of 3 with vae.{field} (its clips come in threes), got {}",
                    self.vae.batch
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.vae.object_crops) {
            return Err(format!("vae.object_crops must be in [0, 1], got {}", self.vae.object_crops));
        }
        if self.vae.clips.is_empty() {
            return Err("vae.clips must list at least one clip shape".into());
        }
        for (field, clips) in [("vae.clips", &self.vae.clips), ("vae.decoder.clips", &d.clips)] {
            for (i, c) in clips.iter().enumerate() {
                if c.frames < 9 || !(c.frames - 1).is_multiple_of(4) {
                    return Err(format!(
                        "{field}[{i}].frames must be 1 + a multiple of 4 and at least 9, got {}",
                        c.frames
                    ));
                }
                if c.crop == 0 || !c.crop.is_multiple_of(8) {
                    return Err(format!("{field}[{i}].crop must be a positive multiple of 8, got {}", c.crop));
                }
            }
        }
        if self.vae.batch == 0 || self.dit.batch == 0 || self.dit.clips < self.dit.batch {
            return Err("batches must be positive and the clips at least one batch".into());
        }
        crate::model::forward::parse_dtype(&self.dit.stored_dtype)
            .map_err(|_| format!("dit.stored_dtype must be f32, f16 or bf16, got {:?}", self.dit.stored_dtype))?;
        if !(0.0..1.0).contains(&self.dit.caption_dropout) || self.dit.shift <= 0.0 {
            return Err("caption_dropout must be in [0, 1) and shift positive".into());
        }
        if !(0.0..1.0).contains(&self.dit.caption_part_dropout) {
            return Err(format!("dit.caption_part_dropout must be in [0, 1), got {}", self.dit.caption_part_dropout));
        }
        if self.vae.steps == 0 && self.start_from.is_none() {
            return Err("vae.steps must be positive unless start_from names a model whose VAE is kept".into());
        }
        self.transformer_config().validate().map_err(|e| e.to_string())?;
        self.vae_config().validate().map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
