//! The training run: phases in order, checkpoints in the work folder, resumption from them.
//!
//! The work folder holds `state.json` (the recipe, the phase and step reached, the time spent and a loss
//! log) and each phase's checkpoint: parameters and optimiser moments in one safetensors file. Every
//! batch is a function of the seed and the step, so a resumed run continues exactly where the
//! interrupted one was, and gives the same model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{self, Stream};
use super::dit::{self, Dataset};
use super::export::{self, write_file};
use super::optim::{AdamW, AdamWConfig};
use super::params::{Params, Start};
use super::start::StartModel;
use super::{vae, Recipe, TrainError};
use crate::group::DeviceName;
use crate::model::dit::WanTransformer;
use crate::model::t5::{TextEncoder, UMT5Encoder};
use crate::model::tokenizer::PromptTokenizer;
use crate::model::vae::WanVae;

pub struct TrainConfig {
    pub recipe: Recipe,
    /// Checkpoints and state; a run found here is resumed.
    pub work_dir: PathBuf,
    /// Where the finished pipeline folder is written.
    pub out_dir: PathBuf,
    /// Steps between checkpoints (a phase's end is always saved).
    pub checkpoint_every: usize,
    /// Stop after this many steps of training in this call (for tests of resumption); `None` runs on.
    pub stop_after: Option<usize>,
    /// Where the transformer phase runs (`cuda:N` needs the `cuda` build). The VAE phases run on the CPU
    /// whatever this says: their training convolutions are CPU kernels.
    pub device: DeviceName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Vae,
    Latents,
    Transformer,
    /// The decoder alone, the encoder frozen (when the recipe has `vae.decoder.steps`).
    Decoder,
    Done,
}

/// What the caller shows while training runs.
pub trait Progress {
    /// A phase starts (or resumes at `done` of `total` units).
    fn phase(&mut self, phase: Phase, done: usize, total: usize);
    /// A unit of the phase finished; `loss` for training steps.
    fn advance(&mut self, done: usize, loss: Option<f64>);
    fn note(&mut self, message: &str);
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub seconds: f64,
    pub vae_parameters: usize,
    pub transformer_parameters: usize,
    pub text_encoder_parameters: usize,
    pub out_dir: PathBuf,
    pub final_vae_loss: Option<f64>,
    pub vae_reconstruction: Option<vae::ReconstructionCheck>,
    pub final_transformer_loss: Option<f64>,
    /// The same clips reconstructed after the decoder's own phase.
    pub decoder_reconstruction: Option<vae::ReconstructionCheck>,
    /// Clips as long as the decoder phase's longest, reconstructed before and after that phase, when
    /// they are longer than the recipe's clips.
    pub long_reconstruction: Option<LongCheck>,
}

/// Reconstructions of clips longer than the transformer's, before and after the decoder's phase: the
/// farm runs the causal decoder over several windows' latent frames at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LongCheck {
    pub frames: usize,
    pub before: vae::ReconstructionCheck,
    pub after: vae::ReconstructionCheck,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    recipe: Recipe,
    phase: Phase,
    /// Steps of `phase` done.
    step: usize,
    /// Training time spent over all calls.
    seconds: f64,
    log: Vec<LogLine>,
    /// How well the trained VAE reconstructs unseen clips, measured after its training.
    #[serde(default)]
    vae_check: Option<vae::ReconstructionCheck>,
    /// The same after the decoder's own phase.
    #[serde(default)]
    decoder_check: Option<vae::ReconstructionCheck>,
    /// Long clips before and after the decoder's own phase.
    #[serde(default)]
    long_check: Option<LongCheck>,
    /// The latent statistics of a start model whose VAE the run keeps (none: the dataset's own).
    #[serde(default)]
    start_stats: Option<(Vec<f64>, Vec<f64>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogLine {
    phase: Phase,
    step: usize,
    loss: f64,
    seconds: f64,
}

const STATE: &str = "state.json";
const VAE_CKPT: &str = "vae.safetensors";
const LATENTS: &str = "latents.safetensors";
const CAPTIONS: &str = "captions.json";
const DIT_CKPT: &str = "transformer.safetensors";
const DECODER_CKPT: &str = "decoder.safetensors";
/// Unseen clips (the first of the transformer's dataset, which the VAE never trains on) on which the
/// reconstructions are measured.
const CHECK_CLIPS: usize = 64;
/// Unseen clips for the check of long clips.
const LONG_CHECK_CLIPS: usize = 16;

/// Runs (or resumes) the recipe to the end, or to `stop_after` steps.
pub fn train(cfg: &TrainConfig, progress: &mut dyn Progress) -> Result<Summary, TrainError> {
    cfg.recipe.validate().map_err(TrainError::Recipe)?;
    let dit_device = cfg.device.open()?;
    let device = Device::Cpu; // the VAE phases
    let work = &cfg.work_dir;
    std::fs::create_dir_all(work).map_err(|e| TrainError::io(work, e))?;
    let mut state = match read_state(work)? {
        Some(state) if state.recipe != cfg.recipe => {
            return Err(TrainError::WorkDir {
                path: work.join(STATE),
                msg: "this work folder holds a run with another recipe; use another --work-dir or remove it".into(),
            })
        }
        Some(state) => {
            progress.note(&format!("resuming: {:?} step {} ({:.0} s spent)", state.phase, state.step, state.seconds));
            state
        }
        None => State {
            recipe: cfg.recipe.clone(),
            phase: Phase::Vae,
            step: 0,
            seconds: 0.0,
            log: Vec::new(),
            vae_check: None,
            decoder_check: None,
            long_check: None,
            start_stats: None,
        },
    };
    let mut budget = cfg.stop_after.unwrap_or(usize::MAX);
    let r = cfg.recipe.clone();
    let vocabulary = patchwork_scenes::vocabulary();
    let tokenizer_json = serde_json::to_vec(&super::tokenizer::tokenizer_json(&vocabulary))
        .map_err(|e| TrainError::Recipe(e.to_string()))?;

    // A fine-tune's start model, read and checked before any work (once a phase past its start has a
    // checkpoint, the run resumes from that instead).
    let starting =
        matches!(state.phase, Phase::Vae | Phase::Latents) || (state.phase == Phase::Transformer && state.step == 0);
    let vocab_size = super::tokenizer::SPECIAL.len() + vocabulary.len();
    let start_from = match &r.start_from {
        Some(dir) if starting => Some(StartModel::open(dir, &r, vocab_size, &tokenizer_json)?),
        _ => None,
    };
    if let (Some(dir), Some(_)) = (&r.start_from, &start_from) {
        progress.note(&format!("starting from the weights of {}", dir.display()));
    }

    // Phase 1: the VAE.
    let vae_params = Arc::new(Params::new(match (state.phase, &start_from) {
        (Phase::Vae, None) if state.step == 0 => Start::Random { seed: r.seed, zero: |_| false },
        (Phase::Vae, Some(model)) if state.step == 0 => Start::Saved(model.vae.clone()),
        _ => Start::Saved(load_params(&work.join(VAE_CKPT), "")?),
    }));
    let vae_model = WanVae::new(r.vae_config(), vae_params.var_builder(&device))?;
    if state.phase == Phase::Vae {
        let mut opt = AdamW::new(vae_params.vars(), AdamWConfig::default())?;
        if state.step > 0 {
            opt.restore(&load_params(&work.join(VAE_CKPT), "opt.")?, state.step)?;
        }
        progress.phase(Phase::Vae, state.step, r.vae.steps);
        while state.step < r.vae.steps && budget > 0 {
            let started = Instant::now();
            let batch = vae::batch(&r, vae::Draw::vae(&r), state.step, &device)?;
            let contrasts = [&r.vae.colour_contrast, &r.vae.shape_contrast];
            let (loss, report) = vae::loss(&vae_model, &batch, r.vae.latent_penalty, contrasts)?;
            opt.step(&loss.backward()?, lr_at(r.vae.lr, state.step, r.vae.steps))?;
            state.step += 1;
            budget -= 1;
            state.seconds += started.elapsed().as_secs_f64();
            progress.advance(state.step, Some(report.total));
            log(&mut state, Phase::Vae, report.total, cfg.checkpoint_every);
            if contrasts.iter().any(|c| !c.is_off()) && state.step.is_multiple_of(cfg.checkpoint_every.max(1)) {
                progress.note(&format!(
                    "VAE step {}: reconstruction {:.4}, colour contrast {:.4}, shape contrast {:.4}",
                    state.step, report.reconstruction, report.colour_contrast, report.shape_contrast
                ));
            }
            if state.step.is_multiple_of(cfg.checkpoint_every.max(1)) || state.step == r.vae.steps {
                save_checkpoint(work, VAE_CKPT, &vae_params, &opt)?;
                write_state(work, &state)?;
            }
        }
        if state.step < r.vae.steps {
            return Err(stopped(&state));
        }
        if r.vae.steps == 0 {
            // The start model's VAE, kept: the later phases and a resumed run read it from here.
            save_checkpoint(work, VAE_CKPT, &vae_params, &opt)?;
        }
        state.phase = Phase::Latents;
        state.step = 0;
        write_state(work, &state)?;
    }
    // The trained VAE as served: plain tensors, fast kernels.
    let served_vae = |stats: Option<(Vec<f64>, Vec<f64>)>| -> Result<WanVae, TrainError> {
        let mut config = r.vae_config();
        if let Some((mean, std)) = stats {
            config.latents_mean = mean;
            config.latents_std = std;
        }
        let vb = candle_nn::VarBuilder::from_tensors(vae_params.tensors(), candle_core::DType::F32, &device);
        Ok(WanVae::new(config, vb)?)
    };

    // Phase 2: encode the transformer's clips once.
    if state.phase == Phase::Latents {
        let started = Instant::now();
        let encoder = served_vae(None)?;
        let sampler = r.dataset_sampler();
        progress.phase(Phase::Latents, 0, r.dit.clips);
        let mut raw = Vec::with_capacity(r.dit.clips);
        let mut captions = Vec::with_capacity(r.dit.clips);
        const CHUNK: usize = 16;
        for start in (0..r.dit.clips).step_by(CHUNK) {
            let n = CHUNK.min(r.dit.clips - start);
            let (videos, caps): (Vec<_>, Vec<_>) = (start..start + n)
                .map(|i| {
                    let scene = sampler.sample(data::seed_for(r.seed, Stream::DatasetClips, 0, i as u64));
                    (scene.render(r.clip_frames()), scene.caption())
                })
                .unzip();
            let x = data::video_batch(&videos, &device)?;
            raw.push(encoder.encode(&x)?);
            captions.extend(caps);
            progress.advance(start + n, None);
        }
        let raw = Tensor::cat(&raw, 0)?;
        let check = reconstruction_check(&r, &encoder, &raw, &captions)?;
        progress.note(&check_line("VAE", &check));
        state.vae_check = Some(check);
        // A kept VAE keeps its normalisation: the start model's transformer learned with it, and a
        // dataset of other clips (a fine-tune's, or a decoder's few check clips) would move it a little.
        if r.vae.steps == 0 {
            state.start_stats = start_from.as_ref().map(|m| m.latent_stats.clone());
        }
        candle_core::safetensors::save(&HashMap::from([("raw".to_string(), raw)]), work.join(LATENTS))
            .map_err(|e| TrainError::io(&work.join(LATENTS), std::io::Error::other(e)))?;
        write_file(&work.join(CAPTIONS), &serde_json::to_vec(&captions).unwrap_or_default())?;
        state.seconds += started.elapsed().as_secs_f64();
        state.phase = Phase::Transformer;
        state.step = 0;
        write_state(work, &state)?;
    }
    let raw = load_params(&work.join(LATENTS), "")?
        .remove("raw")
        .ok_or_else(|| TrainError::WorkDir { path: work.join(LATENTS), msg: "no `raw` tensor".into() })?;
    let captions: Vec<String> = read_json(&work.join(CAPTIONS))?;
    let forms = dit::caption_forms(&r, captions.len());
    if let Some(i) = (0..captions.len()).find(|&i| forms[i][0][0] != captions[i]) {
        return Err(TrainError::WorkDir {
            path: work.join(CAPTIONS),
            msg: format!("clip {i}'s caption {:?} is not its scene's ({:?})", captions[i], forms[i][0][0]),
        });
    }
    let clip_latents = dit::latent_frames(r.clip_frames());
    if raw.dim(2)? != clip_latents {
        return Err(TrainError::WorkDir {
            path: work.join(LATENTS),
            msg: format!("the clips have {} latent frames, the recipe's {clip_latents}", raw.dim(2)?),
        });
    }
    // The statistics are those of the clips' first windows whatever the clips' length: the causal
    // encoder gives a longer clip's first window the latents of the window alone, so lengthening the
    // clips leaves the normalisation as it was for the same scenes.
    let window = dit::latent_frames(r.frames);
    let stats = match &state.start_stats {
        Some(stats) => stats.clone(),
        None => vae::latent_stats(&raw.narrow(2, 0, window)?)?,
    };
    let final_vae = served_vae(Some(stats.clone()))?;
    // The transformer phase runs on the asked device, with the whole dataset there.
    let weights =
        if r.dit.object_weight == 1.0 { None } else { Some(dit::object_weights(&r, captions.len(), &dit_device)?) };
    let dataset =
        Dataset { latents: final_vae.normalize(&raw)?.to_device(&dit_device)?, window, captions: forms, weights };

    // Phase 3: the transformer and the text encoder.
    let text_config = r.text_encoder_config(vocab_size);
    let dit_config = r.transformer_config();
    let fresh = state.phase == Phase::Transformer && state.step == 0;
    let start = if let (true, Some(model)) = (fresh, &start_from) {
        (Start::Saved(model.transformer.clone()), Start::Saved(model.text_encoder.clone()))
    } else if fresh {
        (
            Start::Random { seed: r.seed ^ 0x5151, zero: |name| name.starts_with("proj_out.") },
            Start::Random { seed: r.seed ^ 0x7e47, zero: |_| false },
        )
    } else {
        (
            Start::Saved(load_params(&work.join(DIT_CKPT), "transformer.")?),
            Start::Saved(load_params(&work.join(DIT_CKPT), "text_encoder.")?),
        )
    };
    let dit_params = Arc::new(Params::new(start.0));
    let text_params = Arc::new(Params::new(start.1));
    let dit_model = WanTransformer::new(&dit_config, dit_params.var_builder(&dit_device))?;
    let tokenizer = PromptTokenizer::from_json(&tokenizer_json, "<training tokenizer.json>")?;
    let text = TextEncoder::new(tokenizer, UMT5Encoder::new(&text_config, text_params.var_builder(&dit_device))?);
    if fresh {
        super::binding::scale_text_queries(&text_params, r.text.query_scale)?;
    }
    if state.phase == Phase::Transformer {
        let mut vars = Vec::new();
        for (prefix, p) in [("transformer.", &dit_params), ("text_encoder.", &text_params)] {
            vars.extend(p.vars().into_iter().map(|(n, v)| (format!("{prefix}{n}"), v)));
        }
        let mut opt = AdamW::new(vars, AdamWConfig::default())?;
        opt.scale_lr(|name| if super::binding::is_position_bias(name) { r.text.position_lr } else { 1.0 });
        if state.step > 0 {
            opt.restore(&load_params(&work.join(DIT_CKPT), "opt.")?, state.step)?;
        }
        // The pixel loss's decoder: the run's VAE as variables (their training ops carry gradients to the
        // predicted latent), frozen since the optimiser never holds them.
        let pixel_vae = if r.dit.pixel_loss > 0.0 {
            if !dit_device.is_cpu() {
                return Err(TrainError::Recipe(
                    "dit.pixel_loss runs the VAE's training ops, which are CPU kernels: train on the CPU".into(),
                ));
            }
            let mut config = r.vae_config();
            (config.latents_mean, config.latents_std) = stats.clone();
            let frozen = Arc::new(Params::new(Start::Saved(vae_params.tensors())));
            Some(WanVae::new(config, frozen.var_builder(&dit_device))?)
        } else {
            None
        };
        let pixel = pixel_vae.as_ref().map(|vae| dit::PixelLoss { vae, weight: r.dit.pixel_loss });
        progress.phase(Phase::Transformer, state.step, r.dit.steps);
        while state.step < r.dit.steps && budget > 0 {
            let started = Instant::now();
            let batch = dit::batch(&r, &dataset, state.step, &dit_device)?;
            let (loss, value) =
                dit::loss(&dit_model, &text, r.text.text_len, &batch, pixel.as_ref(), r.dit.binding_loss)?;
            opt.step(&loss.backward()?, lr_at(r.dit.lr, state.step, r.dit.steps))?;
            state.step += 1;
            budget -= 1;
            state.seconds += started.elapsed().as_secs_f64();
            progress.advance(state.step, Some(value));
            log(&mut state, Phase::Transformer, value, cfg.checkpoint_every);
            if state.step.is_multiple_of(cfg.checkpoint_every.max(1)) || state.step == r.dit.steps {
                let mut tensors = HashMap::new();
                for (prefix, p) in [("transformer.", &dit_params), ("text_encoder.", &text_params)] {
                    tensors.extend(p.tensors().into_iter().map(|(n, t)| (format!("{prefix}{n}"), t)));
                }
                tensors.extend(opt.state().into_iter().map(|(n, t)| (format!("opt.{n}"), t)));
                save_tensors(&work.join(DIT_CKPT), &tensors)?;
                write_state(work, &state)?;
            }
        }
        if state.step < r.dit.steps {
            return Err(stopped(&state));
        }
        state.phase = if r.vae.decoder.steps > 0 { Phase::Decoder } else { Phase::Done };
        state.step = 0;
        write_state(work, &state)?;
    }

    // Phase 4: the decoder alone, from the frozen encoder's latents.
    let d = &r.vae.decoder;
    let out_vae = if d.steps == 0 {
        vae_params.clone()
    } else {
        let from = if state.phase == Phase::Decoder && state.step == 0 { VAE_CKPT } else { DECODER_CKPT };
        let tuned = Arc::new(Params::new(Start::Saved(load_params(&work.join(from), "")?)));
        if state.phase == Phase::Decoder {
            let trained = WanVae::new(r.vae_config(), tuned.var_builder(&device))?;
            let decoder_vars = tuned
                .vars()
                .into_iter()
                .filter(|(name, _)| name.starts_with("decoder.") || name.starts_with("post_quant_conv."))
                .collect();
            let mut opt = AdamW::new(decoder_vars, AdamWConfig::default())?;
            if state.step > 0 {
                opt.restore(&load_params(&work.join(DECODER_CKPT), "opt.")?, state.step)?;
            }
            progress.phase(Phase::Decoder, state.step, d.steps);
            while state.step < d.steps && budget > 0 {
                let started = Instant::now();
                let draw = vae::Draw::decoder(&r);
                let batch = vae::batch(&r, draw, state.step, &device)?;
                let noise_seed = data::seed_for(r.seed, Stream::DecoderClips, state.step as u64, u64::MAX - 2);
                let (loss, value) = vae::decoder_loss(&final_vae, &trained, &batch, d.latent_noise, noise_seed)?;
                opt.step(&loss.backward()?, lr_at(d.lr, state.step, d.steps))?;
                state.step += 1;
                budget -= 1;
                state.seconds += started.elapsed().as_secs_f64();
                progress.advance(state.step, Some(value));
                log(&mut state, Phase::Decoder, value, cfg.checkpoint_every);
                if state.step.is_multiple_of(cfg.checkpoint_every.max(1)) || state.step == d.steps {
                    save_checkpoint(work, DECODER_CKPT, &tuned, &opt)?;
                    write_state(work, &state)?;
                }
            }
            if state.step < d.steps {
                return Err(stopped(&state));
            }
            let started = Instant::now();
            let vb = candle_nn::VarBuilder::from_tensors(tuned.tensors(), candle_core::DType::F32, &device);
            let served = WanVae::new(final_vae.config().clone(), vb)?;
            let check = reconstruction_check(&r, &served, &raw, &captions)?;
            progress.note(&check_line("decoder", &check));
            state.decoder_check = Some(check);
            let longest = r.vae.decoder.clips.iter().map(|c| c.frames).max().unwrap_or(0);
            if longest > r.frames {
                let (x, captions) = unseen_clips(&r, LONG_CHECK_CLIPS, longest)?;
                // The encoder is frozen: one encoding serves both decoders.
                let latents = final_vae.encode(&x)?;
                let before = vae::reconstruction_check(&final_vae, &x, &latents, &captions)?;
                progress.note(&check_line(&format!("{longest}-frame: before the decoder's phase,"), &before));
                let after = vae::reconstruction_check(&served, &x, &latents, &captions)?;
                progress.note(&check_line(&format!("{longest}-frame: after it,"), &after));
                state.long_check = Some(LongCheck { frames: longest, before, after });
            }
            state.seconds += started.elapsed().as_secs_f64();
            state.phase = Phase::Done;
            state.step = 0;
            write_state(work, &state)?;
        }
        tuned
    };

    let mut vae_config = r.vae_config();
    (vae_config.latents_mean, vae_config.latents_std) = stats;
    export::write(
        &cfg.out_dir,
        export::Pipeline {
            transformer: (&dit_config, dit_params.tensors()),
            transformer_dtype: crate::model::forward::parse_dtype(&r.dit.stored_dtype)?,
            vae: (&vae_config, out_vae.tensors()),
            text_encoder: (&text_config, text_params.tensors()),
            vocabulary: &vocabulary,
            text_len: r.text.text_len,
            shift: r.dit.shift,
        },
    )?;
    let last = |phase: Phase| state.log.iter().rev().find(|l| l.phase == phase).map(|l| l.loss);
    Ok(Summary {
        seconds: state.seconds,
        vae_parameters: vae_params.count(),
        transformer_parameters: dit_params.count(),
        text_encoder_parameters: text_params.count(),
        out_dir: cfg.out_dir.clone(),
        final_vae_loss: last(Phase::Vae),
        vae_reconstruction: state.vae_check.clone(),
        final_transformer_loss: last(Phase::Transformer),
        decoder_reconstruction: state.decoder_check.clone(),
        long_reconstruction: state.long_check.clone(),
    })
}

/// How well `vae` reconstructs the first [`CHECK_CLIPS`] clips of the transformer's dataset, whose raw
/// latents (by the same encoder) and captions are `raw` and `captions`.
fn reconstruction_check(
    r: &Recipe,
    vae: &WanVae,
    raw: &Tensor,
    captions: &[String],
) -> Result<vae::ReconstructionCheck, TrainError> {
    let n = CHECK_CLIPS.min(raw.dim(0)?);
    let (x, _) = unseen_clips(r, n, r.frames)?;
    let window = raw.narrow(0, 0, n)?.narrow(2, 0, dit::latent_frames(r.frames))?;
    Ok(vae::reconstruction_check(vae, &x, &window, &captions[..n])?)
}

/// The scenes of the transformer's first `n` clips (which the VAE never trains on) rendered `frames`
/// long, as a batch `[n, 3, frames, H, W]`, with their captions.
fn unseen_clips(r: &Recipe, n: usize, frames: usize) -> Result<(Tensor, Vec<String>), TrainError> {
    let sampler = r.dataset_sampler();
    let scenes: Vec<_> =
        (0..n).map(|i| sampler.sample(data::seed_for(r.seed, Stream::DatasetClips, 0, i as u64))).collect();
    let videos: Vec<_> = scenes.iter().map(|s| s.render(frames)).collect();
    let x = data::video_batch(&videos, &Device::Cpu)?;
    Ok((x, scenes.iter().map(|s| s.caption()).collect()))
}

fn check_line(what: &str, check: &vae::ReconstructionCheck) -> String {
    let frames = check.psnr_by_frame.iter().map(|p| format!("{p:.1}")).collect::<Vec<_>>();
    format!(
        "{what} reconstruction of {} unseen clips: PSNR {:.1} dB (by frame: {}); the evaluator reads colour \
         {:.0}%, shape {:.0}%, direction {:.0}% of their objects",
        check.clips,
        check.psnr,
        frames.join(" "),
        100.0 * check.colour,
        100.0 * check.shape,
        100.0 * check.direction
    )
}

/// Linear warm-up over the first 5% of steps (at most 100), then a cosine decay to a tenth.
fn lr_at(peak: f64, step: usize, steps: usize) -> f64 {
    let warmup = (steps / 20).clamp(1, 100);
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (steps - warmup).max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// Keeps a log line every `every` steps (the mean loss of those steps is what `advance` shows; the log
/// keeps the step's own).
fn log(state: &mut State, phase: Phase, loss: f64, every: usize) {
    if state.step.is_multiple_of(every.max(1)) {
        state.log.push(LogLine { phase, step: state.step, loss, seconds: state.seconds });
    }
}

fn stopped(state: &State) -> TrainError {
    TrainError::WorkDir {
        path: PathBuf::from(STATE),
        msg: format!("stopped as asked after {:?} step {}; run again to resume", state.phase, state.step),
    }
}

fn save_checkpoint(work: &Path, name: &str, params: &Params, opt: &AdamW) -> Result<(), TrainError> {
    let mut tensors = params.tensors();
    tensors.extend(opt.state().into_iter().map(|(n, t)| (format!("opt.{n}"), t)));
    save_tensors(&work.join(name), &tensors)
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| TrainError::io(&tmp, std::io::Error::other(e)))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// The tensors of a safetensors file whose names start with `prefix`, with the prefix removed; with an
/// empty prefix, those without an `opt.` prefix.
pub(super) fn load_params(path: &Path, prefix: &str) -> Result<HashMap<String, Tensor>, TrainError> {
    let all = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| TrainError::WorkDir { path: path.to_path_buf(), msg: e.to_string() })?;
    Ok(all
        .into_iter()
        .filter_map(|(name, t)| match prefix {
            "" if name.starts_with("opt.") => None,
            "" => Some((name, t)),
            _ => name.strip_prefix(prefix).map(|n| (n.to_string(), t)),
        })
        .collect())
}

fn read_state(work: &Path) -> Result<Option<State>, TrainError> {
    let path = work.join(STATE);
    if !path.is_file() {
        return Ok(None);
    }
    read_json(&path).map(Some)
}

fn write_state(work: &Path, state: &State) -> Result<(), TrainError> {
    let text = serde_json::to_vec_pretty(state).map_err(|e| TrainError::io(work, std::io::Error::other(e)))?;
    write_file(&work.join(STATE), &text)
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| TrainError::WorkDir { path: path.to_path_buf(), msg: e.to_string() })
}
