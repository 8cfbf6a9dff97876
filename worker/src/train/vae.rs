//! Phase 1: the VAE learns to reconstruct procedural clips. The loss is the reconstruction error (L1 plus
//! squared, which keeps flat colours exact and edges sharp) of the encoder's mean, plus a small L2
//! penalty on that mean which keeps the latent's scale bounded. The recipe can weigh the pixels an object
//! covers more than the background's (`object_weight`); objects are a few percent of a frame.
//!
//! The latent is not sampled from the encoder's distribution as a VAE's usually is: in a first run that did
//! (KL weight 1e-4), the sampling noise was still a third of the signal after 1,200 steps and the decoder
//! learned to paint blurs (16 dB PSNR; the evaluator recognised 30% of the objects' colours). The pipeline
//! only ever uses the mean (the distribution's mode), so training it as an autoencoder costs nothing
//! downstream; the log-variance half of the encoder's output is left untrained.
//!
//! The convolutions see only a frame's neighbourhood, so the VAE trains on random crops of the frames:
//! a quarter of the pixels at 32×32 of 64×64, and four times the steps for the same time. The recipe can
//! alternate crops with smaller ones of longer clips: the decoder and encoder carry a causal cache from
//! chunk to chunk, and a VAE trained on 9-frame clips alone reconstructs frames 0–8 at 24–26 dB but
//! drifts to 17 dB by frame 16, past what it was trained on.

use candle_core::{DType, Device, Result, Tensor, D};
use patchwork_scenes::{Colour, Scene, SceneSampler, Shape};

use super::data::{self, Stream};
use super::recipe::{ClipShape, Contrast, Recipe};
use crate::model::vae::WanVae;

/// What one step reports.
#[derive(Debug, Clone, Copy)]
pub struct VaeLoss {
    pub total: f64,
    pub reconstruction: f64,
    /// Half the mean square of the latent.
    pub penalty: f64,
    /// The colour and shape contrast terms, unweighted (0 when off or when the step has no such three).
    pub colour_contrast: f64,
    pub shape_contrast: f64,
}

/// One VAE step's clips and the loss weight of each of their pixels.
pub struct Batch {
    /// `[batch, 3, frames, crop, crop]` in [-1, 1].
    pub x: Tensor,
    /// `[batch, 1, frames, crop, crop]`: the recipe's `object_weight` where an object covers the pixel
    /// (wholly or at its anti-aliased edge), 1 on the background.
    pub weight: Tensor,
    /// The clips come in threes for the contrast terms (see [`Contrast`]): this many recolouring threes
    /// first, then this many reshaping ones; both 0 for a plain batch.
    pub colour_threes: usize,
    pub shape_threes: usize,
}

/// Which clips a step draws, and how much their objects weigh: the VAE phase's or the decoder phase's.
#[derive(Debug, Clone, Copy)]
pub struct Draw<'a> {
    pub stream: Stream,
    pub object_weight: f64,
    /// The clip shapes, cycled step by step.
    pub clips: &'a [ClipShape],
    /// Clips in threes for the contrast terms (see [`Contrast`]): a scene, the scene with its first object
    /// recoloured or reshaped, the scene without that object.
    pub threes: bool,
}

impl<'a> Draw<'a> {
    pub fn vae(recipe: &'a Recipe) -> Self {
        Draw {
            stream: Stream::VaeClips,
            object_weight: recipe.vae.object_weight,
            clips: &recipe.vae.clips,
            threes: !(recipe.vae.colour_contrast.is_off() && recipe.vae.shape_contrast.is_off()),
        }
    }

    pub fn decoder(recipe: &'a Recipe) -> Self {
        let d = &recipe.vae.decoder;
        let clips = if d.clips.is_empty() { &recipe.vae.clips } else { &d.clips };
        Draw { stream: Stream::DecoderClips, object_weight: d.object_weight, clips, threes: false }
    }
}

/// The object colours nearest `colour` (the first object's) in RGB, nearest first, that stand out on
/// `scene`'s background and differ from the colours of its objects after the first.
fn neighbours(scene: &Scene, colour: Colour) -> Vec<Colour> {
    let mut others: Vec<Colour> = Colour::ALL
        .into_iter()
        .filter(|&c| c != colour)
        .filter(|&c| scene.background.colours().iter().all(|&bg| c.stands_out_on(bg)))
        .filter(|&c| scene.objects.iter().skip(1).all(|o| o.colour != c))
        .collect();
    others.sort_by_key(|&c| colour.squared_distance_to(c));
    others
}

/// The shapes `scene`'s first object could take instead of its own without matching another object.
fn other_shapes(scene: &Scene) -> Vec<Shape> {
    let first = &scene.objects[0];
    Shape::ALL
        .into_iter()
        .filter(|&s| s != first.shape)
        .filter(|&s| scene.objects.iter().skip(1).all(|o| (o.shape, o.colour) != (s, first.colour)))
        .collect()
}

/// How many of a step's `groups` threes recolour (the rest reshape): all of them or none when one term
/// is on; with both, half each, the odd one alternating from step to step.
fn colour_threes(recipe: &Recipe, step: usize, groups: usize) -> usize {
    match (recipe.vae.colour_contrast.is_off(), recipe.vae.shape_contrast.is_off()) {
        (false, true) => groups,
        (true, false) => 0,
        _ => (groups + step.is_multiple_of(2) as usize) / 2,
    }
}

/// The scenes of a step's clips: one scene per clip, or in threes for the contrast terms (the
/// recolouring threes first).
fn scenes(recipe: &Recipe, draw: Draw<'_>, step: usize) -> Vec<Scene> {
    let sampler = SceneSampler::new(recipe.width, recipe.height);
    let scene = |i: usize| sampler.sample(data::seed_for(recipe.seed, draw.stream, step as u64, i as u64));
    if !draw.threes {
        return (0..recipe.vae.batch).map(scene).collect();
    }
    let groups = recipe.vae.batch / 3;
    let picks = data::uniforms(data::seed_for(recipe.seed, draw.stream, step as u64, u64::MAX - 2), groups);
    let recolour = colour_threes(recipe, step, groups);
    (0..groups)
        .flat_map(|g| {
            let scene = scene(g);
            let mut altered = scene.clone();
            let mut without = scene.clone();
            if let Some(first) = scene.objects.first() {
                let pick = |n: usize| (picks[g] * n as f64) as usize;
                if g < recolour {
                    let near = neighbours(&scene, first.colour);
                    let near = &near[..near.len().min(3)];
                    if !near.is_empty() {
                        altered.objects[0].colour = near[pick(near.len())];
                    }
                } else {
                    let shapes = other_shapes(&scene);
                    if !shapes.is_empty() {
                        altered.objects[0].shape = shapes[pick(shapes.len())];
                    }
                }
                without.objects.remove(0);
            }
            [scene, altered, without]
        })
        .collect()
}

/// The clips of step `step` of `draw`, shaped by the recipe's clip shape for that step. The clips of a
/// three share their crop.
pub fn batch(recipe: &Recipe, draw: Draw<'_>, step: usize, device: &Device) -> Result<Batch> {
    let v = &recipe.vae;
    let object_weight = draw.object_weight;
    let shape = draw.clips[step % draw.clips.len().max(1)];
    let (f, h, w) = (shape.frames, recipe.height, recipe.width);
    let group = if draw.threes { 3 } else { 1 };
    let (colour_threes, shape_threes) = match draw.threes {
        true => {
            let c = colour_threes(recipe, step, v.batch / 3);
            (c, v.batch / 3 - c)
        }
        false => (0, 0),
    };
    let scenes = scenes(recipe, draw, step);
    let mut videos = Vec::with_capacity(v.batch);
    let mut weight = Vec::with_capacity(v.batch * f * h * w);
    // Where each group's first object is at the middle frame, for crops placed around it.
    let centres: Vec<Option<[f64; 2]>> = scenes
        .iter()
        .step_by(group)
        .map(|scene| scene.objects.first().map(|o| scene.centre(o, (f - 1) as f64 / 2.0)))
        .collect();
    for scene in scenes {
        let video = scene.render(f);
        if object_weight == 1.0 {
            weight.resize(weight.len() + f * h * w, 1f32);
        } else {
            // The same scene without its objects: the background alone, so the objects' pixels are
            // exactly those that differ from it.
            let background = Scene { objects: Vec::new(), ..scene }.render(f);
            weight.extend(video.data.chunks_exact(3).zip(background.data.chunks_exact(3)).map(|(p, q)| {
                if p == q {
                    1f32
                } else {
                    object_weight as f32
                }
            }));
        }
        videos.push(video);
    }
    let x = data::video_batch(&videos, device)?;
    let weight = Tensor::from_vec(weight, (v.batch, 1, f, h, w), device)?;
    let crop = shape.crop.min(w).min(h);
    if crop == w && crop == h {
        return Ok(Batch { x, weight, colour_threes, shape_threes });
    }
    // One crop position per clip, on the latent grid (multiples of 8) so that crops line up with the
    // encoder's downsampling as whole frames do.
    let grid = |len: usize| (len - crop) / 8 + 1;
    let groups = centres.len();
    let picks = data::uniforms(data::seed_for(recipe.seed, draw.stream, step as u64, u64::MAX), 2 * groups);
    let mut corners: Vec<[usize; 2]> = (0..groups)
        .map(|i| [(picks[2 * i] * grid(h) as f64) as usize * 8, (picks[2 * i + 1] * grid(w) as f64) as usize * 8])
        .collect();
    if v.object_crops > 0.0 {
        let around = data::uniforms(data::seed_for(recipe.seed, draw.stream, step as u64, u64::MAX - 1), 3 * groups);
        for (i, corner) in corners.iter_mut().enumerate() {
            let Some([cx, cy]) = centres[i] else { continue };
            if around[3 * i] >= v.object_crops {
                continue;
            }
            // The crop's corner that centres the object, moved by up to a quarter crop either way and
            // snapped to the latent grid inside the frame.
            let place = |centre: f64, u: f64, len: usize| {
                let corner = centre - crop as f64 / 2.0 + (u - 0.5) * crop as f64 / 2.0;
                ((corner / 8.0).round().max(0.0) as usize).min(grid(len) - 1) * 8
            };
            *corner = [place(cy, around[3 * i + 1], h), place(cx, around[3 * i + 2], w)];
        }
    }
    let cut = |t: &Tensor| -> Result<Tensor> {
        let crops = (0..v.batch)
            .map(|i| {
                let [y, x0] = corners[i / group];
                t.narrow(0, i, 1)?.narrow(3, y, crop)?.narrow(4, x0, crop)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&crops, 0)
    };
    Ok(Batch { x: cut(&x)?, weight: cut(&weight)?, colour_threes, shape_threes })
}

/// The loss of `vae` on a batch: the weighted reconstruction error of the encoder's mean (below), the
/// latent penalty and, when they are on, the contrast terms over the batch's threes of each kind.
pub fn loss(
    vae: &WanVae,
    batch: &Batch,
    latent_penalty: f64,
    [colour, shape]: [&Contrast; 2],
) -> Result<(Tensor, VaeLoss)> {
    let moments = vae.encode_moments(&batch.x).map_err(candle_core::Error::wrap)?;
    let mean = moments.narrow(1, 0, moments.dim(1)? / 2)?;
    let y = vae.decode(&mean).map_err(candle_core::Error::wrap)?;
    let reconstruction = reconstruction_error(&y, batch)?;
    let penalty = (mean.sqr()?.mean_all()? * 0.5)?;
    let mut total = (&reconstruction + (&penalty * latent_penalty)?)?;
    let mut values = [0.0; 2];
    let kinds = [(colour, 0, batch.colour_threes), (shape, batch.colour_threes, batch.shape_threes)];
    for (value, (contrast, first, threes)) in values.iter_mut().zip(kinds) {
        if contrast.is_off() || threes == 0 {
            continue;
        }
        let pick = |t: &Tensor| t.narrow(0, 3 * first, 3 * threes);
        if let Some(term) = contrast_term(&pick(&mean)?, &pick(&batch.x)?, contrast.margin)? {
            *value = scalar(&term)?;
            total = (total + (term * contrast.weight)?)?;
        }
    }
    let report = VaeLoss {
        total: scalar(&total)?,
        reconstruction: scalar(&reconstruction)?,
        penalty: scalar(&penalty)?,
        colour_contrast: values[0],
        shape_contrast: values[1],
    };
    Ok((total, report))
}

/// A three whose object's signal in pixels (`‖x − x∅‖`, on [-1, 1] values) is below this shows too
/// little of the object for the contrast term (a crop that missed it).
const MIN_OBJECT_SIGNAL: f32 = 2.0;

/// A contrast term of a batch in threes (see [`Contrast`]) from the encoder's mean
/// `[B, z, F, h, w]` and the clips `[B, 3, F, H, W]`: the mean over the threes that show their object
/// of `max(0, margin · pixel ratio − latent ratio)²`; none if no three does.
pub fn contrast_term(mean: &Tensor, x: &Tensor, margin: f64) -> Result<Option<Tensor>> {
    let groups = mean.dim(0)? / 3;
    // The three distances within each three, [groups] each: (clip, recoloured), (clip, without),
    // (recoloured, without).
    let distances = |t: &Tensor| -> Result<[Tensor; 3]> {
        let t = t.contiguous()?.reshape((groups, 3, ()))?;
        let d = |i: usize, j: usize| -> Result<Tensor> {
            ((t.narrow(1, i, 1)? - t.narrow(1, j, 1)?)?.sqr()?.sum(2)?.squeeze(1)? + 1e-12)?.sqrt()
        };
        Ok([d(0, 1)?, d(0, 2)?, d(1, 2)?])
    };
    // The object's signal only scales the ratio: the term moves the two colours apart rather than
    // shrinking the object, and a small signal early in training cannot send it off.
    let ratio = |[apart, a, b]: [Tensor; 3]| -> Result<Tensor> { apart / ((a + b)? * 0.5)?.detach() };
    let pixels = distances(x)?;
    let signal: Vec<f32> = pixels[1].to_vec1()?;
    let pixel_ratio = ratio(pixels)?.detach();
    let shown: Vec<f32> = signal.iter().map(|&s| (s >= MIN_OBJECT_SIGNAL) as u8 as f32).collect();
    let count: f32 = shown.iter().sum();
    if count == 0.0 {
        return Ok(None);
    }
    let shown = Tensor::from_vec(shown, groups, mean.device())?;
    let shortfall = ((pixel_ratio * margin)? - ratio(distances(mean)?)?)?.relu()?;
    Ok(Some(((shortfall.sqr()? * shown)?.sum_all()? / count as f64)?))
}

/// The decoder phase's loss: the weighted reconstruction error of `trained`'s decoder from `frozen`'s
/// encoding of the batch, so that no gradient reaches an encoder. With `latent_noise` σ > 0 the latent is
/// first moved by σ·N(0, 1) of each channel's standard deviation (`frozen`'s latent statistics), drawn
/// from `seed`.
pub fn decoder_loss(
    frozen: &WanVae,
    trained: &WanVae,
    batch: &Batch,
    latent_noise: f64,
    seed: u64,
) -> Result<(Tensor, f64)> {
    let wrap = candle_core::Error::wrap;
    let mut latent = frozen.encode(&batch.x).map_err(wrap)?;
    if latent_noise > 0.0 {
        let noise = (data::normal(seed, latent.dims(), latent.device())? * latent_noise)?;
        latent = frozen.denormalize(&(frozen.normalize(&latent).map_err(wrap)? + noise)?).map_err(wrap)?;
    }
    let y = trained.decode(&latent).map_err(wrap)?;
    let loss = reconstruction_error(&y, batch)?;
    let value = scalar(&loss)?;
    Ok((loss, value))
}

/// The weighted mean over pixels of L1 plus squared error, summed over the colour channels and divided
/// by 3.
pub(super) fn reconstruction_error(y: &Tensor, batch: &Batch) -> Result<Tensor> {
    let diff = (y - &batch.x)?;
    let per_pixel = (diff.abs()? + diff.sqr()?)?.sum_keepdim(1)?;
    (per_pixel * &batch.weight)?.sum_all()? / (batch.weight.sum_all()?.to_scalar::<f32>()? as f64 * 3.0)
}

fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Per-channel mean and standard deviation of raw latents `[N, z, F, h, w]`, what the VAE's config
/// records as `latents_mean` / `latents_std` so that the transformer sees unit-scale latents.
pub fn latent_stats(raw: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let z = raw.dim(1)?;
    // [N, z, F, h, w] -> [z, N*F*h*w]
    let per_channel = raw.transpose(0, 1)?.contiguous()?.reshape((z, ()))?.to_dtype(DType::F64)?;
    let mean = per_channel.mean_keepdim(D::Minus1)?;
    let var = per_channel.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    let mean: Vec<f64> = mean.flatten_all()?.to_vec1()?;
    let std: Vec<f64> = var.flatten_all()?.to_vec1::<f64>()?.into_iter().map(|v| v.sqrt().max(1e-6)).collect();
    Ok((mean, std))
}

/// How well the VAE reconstructs clips: PSNR over the [-1, 1] video, and the share of the captions'
/// objects whose colour, shape and direction the evaluator reads correctly in the reconstructions (the
/// ceiling of what the transformer can be measured at).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReconstructionCheck {
    pub clips: usize,
    pub psnr: f64,
    /// PSNR of each frame position over the clips: a VAE that drifts along a long clip shows it here.
    #[serde(default)]
    pub psnr_by_frame: Vec<f64>,
    pub colour: f64,
    pub shape: f64,
    pub direction: f64,
}

/// Decodes `latents` (the encoding of `x`, `[B, 3, F, H, W]`) and measures the reconstructions.
pub fn reconstruction_check(
    vae: &WanVae,
    x: &Tensor,
    latents: &Tensor,
    captions: &[String],
) -> crate::model::Result<ReconstructionCheck> {
    let y = vae.decode(latents)?;
    let sq = (&y - x)?.sqr()?.to_dtype(DType::F64)?;
    let mse = sq.mean_all()?.to_scalar::<f64>()?;
    let psnr = |mse: f64| 10.0 * (4.0 / mse.max(1e-12)).log10();
    // [B, 3, F, H, W] -> per frame: mean over everything else
    let by_frame: Vec<f64> = sq.transpose(0, 2)?.flatten_from(1)?.mean(1)?.to_vec1()?;
    let (b, _, f, h, w) = y.dims5()?;
    // [B, 3, F, H, W] in [-1, 1] -> bytes [B][F][H][W][3]
    let bytes: Vec<u8> = ((y.permute((0, 2, 3, 4, 1))? + 1.0)? * 127.5)?
        .round()?
        .clamp(0f32, 255f32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let (mut objects, mut right) = (0usize, [0usize; 3]);
    for (i, caption) in captions.iter().enumerate().take(b) {
        let data = bytes[i * f * h * w * 3..(i + 1) * f * h * w * 3].to_vec();
        let video = patchwork_scenes::Video { frames: f, height: h, width: w, data };
        for o in patchwork_scenes::eval::evaluate(&video, caption, None).objects {
            objects += 1;
            for (k, ok) in [o.colour_ok, o.shape_ok, o.direction_ok].into_iter().enumerate() {
                right[k] += (ok == Some(true)) as usize;
            }
        }
    }
    let share = |k: usize| right[k] as f64 / objects.max(1) as f64;
    Ok(ReconstructionCheck {
        clips: b.min(captions.len()),
        psnr: psnr(mse),
        psnr_by_frame: by_frame.into_iter().map(psnr).collect(),
        colour: share(0),
        shape: share(1),
        direction: share(2),
    })
}

#[cfg(test)]
mod tests;
