//! Training data: procedural clips as tensors, and the seeded draws a step makes. Every draw is a pure
//! function of the run's seed, the phase and the step, so a resumed run sees exactly the batches the
//! uninterrupted one would have.

use candle_core::{Device, Result, Tensor};
use patchwork_scenes::{SceneSampler, Video};

/// Distinct streams of one run's randomness.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    VaeClips = 1,
    DatasetClips = 3,
    DitBatch = 4,
    DitNoise = 5,
    DecoderClips = 6,
    /// The shares of a widened decoder's split weights.
    Widen = 7,
    /// The noise a caption's denoising error is measured with ([`super::binding`]).
    Binding = 8,
}

/// A seed for draw `index` of `stream` at `step` (SplitMix64 finalisation of the mixed inputs).
pub fn seed_for(run: u64, stream: Stream, step: u64, index: u64) -> u64 {
    let mut z = run
        .wrapping_add((stream as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(step.wrapping_mul(0xd1b5_4a32_d192_ed03))
        .wrapping_add(index.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform values in [0, 1) from a seed.
pub fn uniforms(seed: u64, n: usize) -> Vec<f64> {
    (0..n as u64).map(|i| (seed_for(seed, Stream::DitBatch, 0, i) >> 11) as f64 / (1u64 << 53) as f64).collect()
}

/// Standard normal noise of `shape` from a seed (the job noise's generator).
pub fn normal(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_vec(patchwork_shared::noise::gaussian_noise(seed, n), shape, device)
}

/// Videos as the VAE's input: `[B, 3, frames, H, W]` with values in [-1, 1].
pub fn video_batch(videos: &[Video], device: &Device) -> Result<Tensor> {
    let Some(first) = videos.first() else { candle_core::bail!("an empty batch of videos") };
    let (f, h, w) = (first.frames, first.height, first.width);
    let mut data = Vec::with_capacity(videos.len() * f * h * w * 3);
    for v in videos {
        if (v.frames, v.height, v.width) != (f, h, w) {
            candle_core::bail!("videos of different sizes in one batch");
        }
        data.extend(v.data.iter().map(|&b| b as f32 / 127.5 - 1.0));
    }
    // [B, F, H, W, 3] -> [B, 3, F, H, W]
    Tensor::from_vec(data, (videos.len(), f, h, w, 3), device)?.permute((0, 4, 1, 2, 3))?.contiguous()
}

/// `count` clips of `frames` frames with their captions, scene `i` drawn from
/// `seed_for(run, stream, step, i)`.
pub fn clips(
    sampler: &SceneSampler,
    run: u64,
    stream: Stream,
    step: u64,
    count: usize,
    frames: usize,
) -> (Vec<Video>, Vec<String>) {
    (0..count as u64)
        .map(|i| {
            let scene = sampler.sample(seed_for(run, stream, step, i));
            (scene.render(frames), scene.caption())
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_channel_first_in_unit_range() -> Result<()> {
        let sampler = SceneSampler::new(32, 32);
        let (videos, captions) = clips(&sampler, 7, Stream::VaeClips, 3, 2, 5);
        assert_eq!(captions.len(), 2);
        let t = video_batch(&videos, &Device::Cpu)?;
        assert_eq!(t.dims(), &[2, 3, 5, 32, 32]);
        let px = videos[1].pixel(4, 10, 20);
        let got: Vec<f32> =
            (0..3).map(|c| t.get(1)?.get(c)?.get(4)?.get(10)?.get(20)?.to_scalar()).collect::<Result<_>>()?;
        for c in 0..3 {
            assert!((got[c] - (px[c] as f32 / 127.5 - 1.0)).abs() < 1e-6);
        }
        // Same inputs, same clips; another step, other clips.
        assert_eq!(clips(&sampler, 7, Stream::VaeClips, 3, 2, 5).1, captions);
        assert_ne!(clips(&sampler, 7, Stream::VaeClips, 4, 2, 5).0[0].data, videos[0].data);
        Ok(())
    }
}
