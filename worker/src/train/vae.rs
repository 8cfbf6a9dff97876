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
use patchwork_scenes::{Scene, SceneSampler};

use super::data::{self, Stream};
use super::recipe::{ClipShape, Recipe};
use crate::model::vae::WanVae;

/// What one step reports.
#[derive(Debug, Clone, Copy)]
pub struct VaeLoss {
    pub total: f64,
    pub reconstruction: f64,
    /// Half the mean square of the latent.
    pub penalty: f64,
}

/// One VAE step's clips and the loss weight of each of their pixels.
pub struct Batch {
    /// `[batch, 3, frames, crop, crop]` in [-1, 1].
    pub x: Tensor,
    /// `[batch, 1, frames, crop, crop]`: the recipe's `object_weight` where an object covers the pixel
    /// (wholly or at its anti-aliased edge), 1 on the background.
    pub weight: Tensor,
}

/// Which clips a step draws, and how much their objects weigh: the VAE phase's or the decoder phase's.
#[derive(Debug, Clone, Copy)]
pub struct Draw<'a> {
    pub stream: Stream,
    pub object_weight: f64,
    /// The clip shapes, cycled step by step.
    pub clips: &'a [ClipShape],
}

impl<'a> Draw<'a> {
    pub fn vae(recipe: &'a Recipe) -> Self {
        Draw { stream: Stream::VaeClips, object_weight: recipe.vae.object_weight, clips: &recipe.vae.clips }
    }

    pub fn decoder(recipe: &'a Recipe) -> Self {
        let d = &recipe.vae.decoder;
        let clips = if d.clips.is_empty() { &recipe.vae.clips } else { &d.clips };
        Draw { stream: Stream::DecoderClips, object_weight: d.object_weight, clips }
    }
}

/// The clips of step `step` of `draw`, shaped by the recipe's clip shape for that step.
pub fn batch(recipe: &Recipe, draw: Draw<'_>, step: usize, device: &Device) -> Result<Batch> {
    let sampler = SceneSampler::new(recipe.width, recipe.height);
    let v = &recipe.vae;
    let object_weight = draw.object_weight;
    let shape = draw.clips[step % draw.clips.len().max(1)];
    let (f, h, w) = (shape.frames, recipe.height, recipe.width);
    let mut videos = Vec::with_capacity(v.batch);
    let mut weight = Vec::with_capacity(v.batch * f * h * w);
    // Where each clip's first object is at the middle frame, for crops placed around it.
    let mut centres = Vec::with_capacity(v.batch);
    for i in 0..v.batch {
        let scene = sampler.sample(data::seed_for(recipe.seed, draw.stream, step as u64, i as u64));
        centres.push(scene.objects.first().map(|o| scene.centre(o, (f - 1) as f64 / 2.0)));
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
        return Ok(Batch { x, weight });
    }
    // One crop position per clip, on the latent grid (multiples of 8) so that crops line up with the
    // encoder's downsampling as whole frames do.
    let grid = |len: usize| (len - crop) / 8 + 1;
    let picks = data::uniforms(data::seed_for(recipe.seed, draw.stream, step as u64, u64::MAX), 2 * v.batch);
    let mut corners: Vec<[usize; 2]> = (0..v.batch)
        .map(|i| [(picks[2 * i] * grid(h) as f64) as usize * 8, (picks[2 * i + 1] * grid(w) as f64) as usize * 8])
        .collect();
    if v.object_crops > 0.0 {
        let around = data::uniforms(data::seed_for(recipe.seed, draw.stream, step as u64, u64::MAX - 1), 3 * v.batch);
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
                let [y, x0] = corners[i];
                t.narrow(0, i, 1)?.narrow(3, y, crop)?.narrow(4, x0, crop)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&crops, 0)
    };
    Ok(Batch { x: cut(&x)?, weight: cut(&weight)? })
}

/// The loss of `vae` on a batch: the weighted reconstruction error of the encoder's mean (below) plus the
/// latent penalty.
pub fn loss(vae: &WanVae, batch: &Batch, latent_penalty: f64) -> Result<(Tensor, VaeLoss)> {
    let moments = vae.encode_moments(&batch.x).map_err(candle_core::Error::wrap)?;
    let mean = moments.narrow(1, 0, moments.dim(1)? / 2)?;
    let y = vae.decode(&mean).map_err(candle_core::Error::wrap)?;
    let reconstruction = reconstruction_error(&y, batch)?;
    let penalty = (mean.sqr()?.mean_all()? * 0.5)?;
    let total = (&reconstruction + (&penalty * latent_penalty)?)?;
    let report =
        VaeLoss { total: scalar(&total)?, reconstruction: scalar(&reconstruction)?, penalty: scalar(&penalty)? };
    Ok((total, report))
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
mod tests {
    use super::*;

    /// Object pixels at the middle frame of every crop of a step, counted through the loss weights.
    fn object_pixels(recipe: &Recipe, step: usize) -> Vec<usize> {
        let b = batch(recipe, Draw::vae(recipe), step, &Device::Cpu).unwrap();
        let (n, _, f, _, _) = b.weight.dims5().unwrap();
        (0..n)
            .map(|i| {
                let middle = b.weight.get(i).unwrap().narrow(1, (f - 1) / 2, 1).unwrap();
                middle.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().filter(|&&w| w > 1.0).count()
            })
            .collect()
    }

    #[test]
    fn crops_placed_around_objects_show_them() {
        let mut recipe = Recipe::default();
        recipe.vae.batch = 4;
        recipe.vae.object_weight = 2.0;
        recipe.vae.clips = vec![ClipShape { frames: 9, crop: 24 }];
        let random: Vec<usize> = (0..8).flat_map(|s| object_pixels(&recipe, s)).collect();
        recipe.vae.object_crops = 1.0;
        let around: Vec<usize> = (0..8).flat_map(|s| object_pixels(&recipe, s)).collect();
        // Every crop placed around an object holds a good part of one; random crops often miss.
        assert!(around.iter().all(|&p| p >= 40), "object pixels per crop: {around:?}");
        assert!(random.iter().filter(|&&p| p < 40).count() >= 4, "random crops: {random:?}");
        let shape = batch(&recipe, Draw::vae(&recipe), 0, &Device::Cpu).unwrap().x.dims5().unwrap();
        assert_eq!(shape, (4, 3, 9, 24, 24));
    }

    #[test]
    fn the_decoder_phase_draws_its_own_clip_shapes_when_it_names_them() {
        let mut recipe = Recipe::default();
        recipe.vae.batch = 2;
        let dims = |r: &Recipe, decoder: bool, step| {
            let draw = if decoder { Draw::decoder(r) } else { Draw::vae(r) };
            let (_, _, f, h, w) = batch(r, draw, step, &Device::Cpu).unwrap().x.dims5().unwrap();
            (f, h, w)
        };
        // Without its own shapes, the decoder's steps cycle through the VAE's.
        for step in 0..4 {
            let c = recipe.vae.clips[step % recipe.vae.clips.len()];
            assert_eq!(dims(&recipe, true, step), (c.frames, c.crop, c.crop));
        }
        recipe.vae.decoder.clips = vec![ClipShape { frames: 25, crop: 16 }, ClipShape { frames: 41, crop: 8 }];
        assert_eq!(dims(&recipe, true, 0), (25, 16, 16));
        assert_eq!(dims(&recipe, true, 1), (41, 8, 8));
        assert_eq!(dims(&recipe, true, 2), (25, 16, 16));
        // The VAE phase keeps its own.
        let c = recipe.vae.clips[1];
        assert_eq!(dims(&recipe, false, 1), (c.frames, c.crop, c.crop));
    }
}
