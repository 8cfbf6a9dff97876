//! Phase 3: the transformer and the text encoder learn together, with the rectified-flow objective the
//! Wan2.1 samplers assume: for a clean latent `x₀`, noise `ε` and a level `σ`, the model sees
//! `x_σ = (1 − σ)·x₀ + σ·ε` at timestep `1000·σ` and is taught the velocity `ε − x₀`.

use candle_core::{DType, Device, Result, Tensor};

use patchwork_scenes::{swap_object_colours, CaptionParts, Scene};

use super::data::{self, Stream};
use super::recipe::Recipe;
use super::vae;
use crate::model::dit::WanTransformer;
use crate::model::t5::TextEncoder;
use crate::model::vae::WanVae;

/// The clips the transformer learns from: latents normalised by the VAE's statistics, and captions. A
/// clip may be longer than the transformer's window (`dit.clip_frames`); each draw cuts a window from it.
pub struct Dataset {
    /// `[N, z, L, h, w]`: whole clips of `L` latent frames.
    pub latents: Tensor,
    /// The latent frames of a window (the native window's), at most `L`.
    pub window: usize,
    /// For each clip, the captions of the windows starting at latent frames `0..=L − window`, each in
    /// its four forms ([`caption_forms`]).
    pub captions: Vec<Vec<CaptionForms>>,
    /// `[N, 1, L, h, w]`: each latent position's weight in the loss (see [`object_weights`]); `None`
    /// weighs all alike.
    pub weights: Option<Tensor>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.captions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }
}

/// A caption with and without its optional parts: form `s + 2·b` leaves out the speed words when `s`
/// is 1 and the background when `b` is 1, so form 0 is the full caption.
pub type CaptionForms = [String; 4];

/// Latent frames of a clip of `frames` frames.
pub fn latent_frames(frames: usize) -> usize {
    (frames - 1) / FRAMES_PER_LATENT + 1
}

/// The first video frame latent frame `k` encodes.
fn first_frame(k: usize) -> usize {
    (FRAMES_PER_LATENT * k).saturating_sub(FRAMES_PER_LATENT - 1)
}

/// The caption forms of the dataset's first `count` clips (scene `i` drawn as the latents phase drew
/// it), for a window at each latent frame a clip has room for. A clip's first window has the scene's
/// own caption, naming the way each object starts moving (as a prompt does, and as the evaluator reads
/// it). A later window names each object the way it moves over most of the window's frames, so that a
/// window after a bounce, or just before one, names the way the object is seen to move.
pub fn caption_forms(recipe: &Recipe, count: usize) -> Vec<Vec<CaptionForms>> {
    let sampler = recipe.dataset_sampler();
    let window = latent_frames(recipe.frames);
    let windows = latent_frames(recipe.clip_frames()) - window + 1;
    let forms = |scene: &Scene| -> CaptionForms {
        let form = |speed, background| scene.caption_with(CaptionParts { speed, background });
        [form(true, true), form(false, true), form(true, false), form(false, false)]
    };
    (0..count)
        .map(|i| {
            let scene = sampler.sample(data::seed_for(recipe.seed, Stream::DatasetClips, 0, i as u64));
            let first = forms(&scene);
            let later = (1..windows).map(|k| {
                let (from, to) = (first_frame(k), FRAMES_PER_LATENT * (k + window - 1));
                let mut seen = scene.at(from);
                for (object, o) in seen.objects.iter_mut().zip(&scene.objects) {
                    object.direction = scene.heading_over(o, from, to);
                }
                forms(&seen)
            });
            std::iter::once(first).chain(later).collect()
        })
        .collect()
}

/// The inputs of transformer step `step`: which clips, at which noise levels, with which captions.
pub struct Batch {
    pub noisy: Tensor,
    pub timesteps: Tensor,
    pub target: Tensor,
    pub captions: Vec<String>,
    /// `[batch, 1, F, h, w]`, or `None` for an unweighted loss.
    pub weight: Option<Tensor>,
    /// With `dit.pixel_loss`: each clip's first frame as rendered, `[batch, 3, 1, H, W]`, and its pixels'
    /// weights (`dit.object_weight` on the objects).
    pub first_frames: Option<vae::Batch>,
    /// With `dit.binding_loss`: the clips whose caption names two objects (their index in the batch), each
    /// with its caption's colours swapped.
    pub swapped: Vec<(u32, String)>,
}

/// The pixel loss's frozen decoder (built on variables, so that gradients flow through its training
/// ops to the predicted latent; the optimiser never sees them) and the loss's weight.
pub struct PixelLoss<'a> {
    pub vae: &'a WanVae,
    pub weight: f64,
}

/// Latent frames and pixels per latent position: the Wan VAE keeps frame 0 alone and folds each later
/// group of four frames into one, and folds 8×8 pixels into one.
const FRAMES_PER_LATENT: usize = 4;
const PIXELS_PER_LATENT: usize = 8;

/// The loss weights of the dataset's clips (scene `i` drawn as the latents phase drew it, `dit.clip_frames`
/// long): `recipe.dit.object_weight` at each latent position whose frames and pixels an object touches,
/// 1 elsewhere. `[count, 1, L, h, w]`.
pub fn object_weights(recipe: &Recipe, count: usize, device: &Device) -> Result<Tensor> {
    let sampler = recipe.dataset_sampler();
    let (f, h, w) = (recipe.clip_frames(), recipe.height, recipe.width);
    let (lf, lh, lw) = (latent_frames(f), h / PIXELS_PER_LATENT, w / PIXELS_PER_LATENT);
    let heavy = recipe.dit.object_weight as f32;
    let mut out = Vec::with_capacity(count * lf * lh * lw);
    for i in 0..count {
        let scene = sampler.sample(data::seed_for(recipe.seed, Stream::DatasetClips, 0, i as u64));
        let video = scene.render(f);
        // The objects' pixels are those that differ from the background rendered alone.
        let background = Scene { objects: Vec::new(), ..scene }.render(f);
        let mut touched = vec![false; lf * lh * lw];
        for frame in 0..f {
            let k = frame.div_ceil(FRAMES_PER_LATENT);
            let (a, b) = (video.frame(frame), background.frame(frame));
            for (p, (x, y)) in a.chunks_exact(3).zip(b.chunks_exact(3)).enumerate() {
                if x != y {
                    let (py, px) = (p / w, p % w);
                    touched[(k * lh + py / PIXELS_PER_LATENT) * lw + px / PIXELS_PER_LATENT] = true;
                }
            }
        }
        out.extend(touched.iter().map(|&t| if t { heavy } else { 1.0 }));
    }
    Tensor::from_vec(out, (count, 1, lf, lh, lw), device)
}

/// Draws step `step`'s batch from `data`.
pub fn batch(recipe: &Recipe, data: &Dataset, step: usize, device: &Device) -> Result<Batch> {
    let r = &recipe.dit;
    let draws = |i: u64| data::uniforms(data::seed_for(recipe.seed, Stream::DitBatch, step as u64, i), r.batch);
    let picks: Vec<u32> =
        draws(0).iter().map(|u| ((u * data.len() as f64) as usize).min(data.len() - 1) as u32).collect();
    let windows = data.latents.dim(2)? - data.window + 1;
    // A window other than the clip's first, spread evenly over `u` in 0..1.
    let later_window = |u: f64| 1 + ((u * (windows - 1) as f64) as usize).min(windows - 2);
    // With `dit.first_window` a draw below it takes the clip's first window and the rest spread over the
    // others; without it every start is alike.
    let start = |u: f64| match r.first_window {
        Some(p) if windows > 1 && u >= p => later_window((u - p) / (1.0 - p)),
        Some(_) => 0,
        None => ((u * windows as f64) as usize).min(windows - 1),
    };
    // With `dit.context`, the clean leading frames of each draw (0 for most).
    let frames = data.window;
    let held: Vec<usize> = match &r.context {
        Some(c) => draws(6)
            .into_iter()
            .zip(draws(7))
            .map(|(u, k)| if u < c.chance { 1 + ((k * c.max_frames as f64) as usize).min(c.max_frames - 1) } else { 0 })
            .collect(),
        None => vec![0; r.batch],
    };
    // With `dit.context.later_windows`, a draw that holds frames takes a later window.
    let later = r.context.as_ref().is_some_and(|c| c.later_windows) && windows > 1;
    let starts: Vec<usize> = draws(5)
        .into_iter()
        .zip(&held)
        .map(|(u, &c)| if later && c > 0 { later_window(u) } else { start(u) })
        .collect();
    let sigmas: Vec<f32> = draws(1).iter().map(|&u| (r.shift * u / (1.0 + (r.shift - 1.0) * u)) as f32).collect();
    // Each optional part is left out on a draw of its own; at a part dropout of 0 every caption is full
    // and the batch is what it was before part dropout existed.
    let left_out = |u: f64| (u < r.caption_part_dropout) as usize;
    let forms =
        draws(3).into_iter().zip(draws(4)).map(|(speed, background)| left_out(speed) + 2 * left_out(background));
    let captions: Vec<String> = picks
        .iter()
        .zip(&starts)
        .zip(draws(2))
        .zip(forms)
        .map(
            |(((&i, &start), u), form)| {
                if u < r.caption_dropout {
                    String::new()
                } else {
                    data.captions[i as usize][start][form].clone()
                }
            },
        )
        .collect();
    let picked = Tensor::from_vec(picks, r.batch, device)?;
    // Each clip's window, cut at its own start.
    let cut = |clips: Tensor| -> Result<Tensor> {
        let parts: Vec<Tensor> = starts
            .iter()
            .enumerate()
            .map(|(b, &start)| clips.narrow(0, b, 1)?.narrow(2, start, data.window))
            .collect::<Result<_>>()?;
        Tensor::cat(&parts, 0)
    };
    let x0 = cut(data.latents.index_select(&picked, 0)?)?;
    let eps = data::normal(data::seed_for(recipe.seed, Stream::DitNoise, step as u64, 0), x0.dims(), device)?;
    // The noise level of every latent frame of every draw: the draw's own, 0 on its context frames.
    let frame_sigmas: Vec<f32> =
        sigmas.iter().zip(&held).flat_map(|(&s, &c)| (0..frames).map(move |f| if f < c { 0.0 } else { s })).collect();
    let sigma = Tensor::from_vec(frame_sigmas.clone(), (r.batch, 1, frames, 1, 1), device)?;
    let noisy = (x0.broadcast_mul(&(1.0 - &sigma)?)? + eps.broadcast_mul(&sigma)?)?;
    let target = (eps - x0)?;
    let timesteps = if r.context.is_some() {
        Tensor::from_vec(frame_sigmas.iter().map(|s| s * 1000.0).collect::<Vec<_>>(), (r.batch, frames), device)?
    } else {
        Tensor::from_vec(sigmas.iter().map(|s| s * 1000.0).collect::<Vec<_>>(), r.batch, device)?
    };
    let weight = match &data.weights {
        Some(w) => Some(cut(w.index_select(&picked, 0)?)?),
        None => None,
    };
    // Context frames are given, not drawn: the loss leaves them out.
    let weight = if held.iter().any(|&c| c > 0) {
        let mask: Vec<f32> =
            held.iter().flat_map(|&c| (0..frames).map(move |f| if f < c { 0.0 } else { 1.0 })).collect();
        let mask = Tensor::from_vec(mask, (r.batch, 1, frames, 1, 1), device)?;
        Some(match weight {
            Some(w) => w.broadcast_mul(&mask)?,
            None => mask,
        })
    } else {
        weight
    };
    let first_frames = if r.pixel_loss > 0.0 { Some(first_frames(recipe, &picked.to_vec1()?, device)?) } else { None };
    let swapped = if r.binding_loss > 0.0 {
        let swaps = captions.iter().enumerate().map(|(i, c)| swap_object_colours(c).map(|s| (i as u32, s)));
        swaps.flatten().collect()
    } else {
        Vec::new()
    };
    Ok(Batch { noisy, timesteps, target, captions, weight, first_frames, swapped })
}

/// The first frames of the dataset's clips `clips` as rendered, with `dit.object_weight` on their objects'
/// pixels.
fn first_frames(recipe: &Recipe, clips: &[u32], device: &Device) -> Result<vae::Batch> {
    let sampler = recipe.dataset_sampler();
    let heavy = recipe.dit.object_weight as f32;
    let (mut frames, mut weight) = (Vec::with_capacity(clips.len()), Vec::new());
    for &i in clips {
        let scene = sampler.sample(data::seed_for(recipe.seed, Stream::DatasetClips, 0, i as u64));
        let frame = scene.render(1);
        let background = Scene { objects: Vec::new(), ..scene }.render(1);
        weight.extend(frame.data.chunks_exact(3).zip(background.data.chunks_exact(3)).map(|(p, q)| {
            if p == q {
                1.0
            } else {
                heavy
            }
        }));
        frames.push(frame);
    }
    let weight = Tensor::from_vec(weight, (clips.len(), 1, 1, recipe.height, recipe.width), device)?;
    Ok(vae::Batch { x: data::video_batch(&frames, device)?, weight, colour_threes: 0, shape_threes: 0 })
}

/// The mean squared error of the predicted velocity, weighted by the batch's weights (normalised by
/// their mean, so that the loss keeps the unweighted loss's scale), plus, with `pixel`, its weight times
/// the pixel loss of the first frames ([`super::recipe::DitRecipe::pixel_loss`]), plus `binding` times
/// the binding term of the batch's swapped captions ([`super::recipe::DitRecipe::binding_loss`]).
pub fn loss(
    dit: &WanTransformer,
    text: &TextEncoder,
    text_len: usize,
    batch: &Batch,
    pixel: Option<&PixelLoss>,
    binding: f64,
) -> Result<(Tensor, f64)> {
    let prompts: Vec<&str> = batch.captions.iter().map(String::as_str).collect();
    let context = text.encode_prompts(&prompts, text_len).map_err(candle_core::Error::wrap)?;
    let pred = dit.forward(&batch.noisy, &batch.timesteps, &context).map_err(candle_core::Error::wrap)?;
    let sq = (&pred - &batch.target)?.sqr()?;
    let mut loss = match &batch.weight {
        Some(w) => sq.broadcast_mul(w)?.mean_all()?.broadcast_div(&w.mean_all()?)?,
        None => sq.mean_all()?,
    };
    if let (Some(pixel), Some(first)) = (pixel, &batch.first_frames) {
        // x₀ = x_σ − σ·v, its first latent frame (the clip's first frame alone), raw, decoded.
        let sigma = (batch.timesteps.clone() / 1000.0)?.reshape((pred.dim(0)?, 1, 1, 1, 1))?;
        let x0 = (&batch.noisy - pred.broadcast_mul(&sigma)?)?.narrow(2, 0, 1)?;
        let wrap = candle_core::Error::wrap;
        let frames = pixel.vae.decode(&pixel.vae.denormalize(&x0).map_err(wrap)?).map_err(wrap)?;
        loss = (loss + (vae::reconstruction_error(&frames, first)? * pixel.weight)?)?;
    }
    if binding > 0.0 && !batch.swapped.is_empty() {
        loss = (loss + (super::binding::term(dit, text, text_len, batch, &pred)? * binding)?)?;
    }
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((loss, value))
}

#[cfg(test)]
mod tests;
