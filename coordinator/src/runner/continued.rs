//! The "continue" way of joining windows: windows drawn one after another along time. Each window holds
//! the latent frames it shares with the windows before it clean, at timestep 0, beside its own frames,
//! which it draws from their noise with a sampler of its own; nothing is fused. A transformer trained to
//! continue a video (`dit.context` in a training recipe) reads the held frames as what came before.
//!
//! Such a job writes no checkpoints: a job taken over by another coordinator starts over, which gives the
//! same video, only later.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use patchwork_shared::model::ModelGeometry;
use patchwork_shared::pb;
use patchwork_shared::sampler::{FlowSampler, Sampler};
use patchwork_shared::spec::JobSpec;
use patchwork_shared::windows::{extract, insert, LatentShape, Span, WindowBox, WindowPlan};

use super::{blocking, decode_and_store, denoise_window, JobContext, Outcome, WindowCall};
use crate::store::Claimed;

/// Windows drawn one after another: each window's latent frames that earlier windows have drawn are held
/// clean (timestep 0) beside its own frames, which it draws from their noise with a sampler of its own.
pub(super) async fn render(
    ctx: &JobContext,
    job: &Claimed,
    spec: &Arc<JobSpec>,
    plan: &WindowPlan,
    segments: &[usize],
    mut latent: Vec<f32>,
    g: &ModelGeometry,
) -> Result<Outcome, String> {
    let shape = plan.shape;
    let mut order: Vec<_> = plan.windows.iter().collect();
    order.sort_by_key(|w| w.bbox.frames.start);
    let mut drawn = vec![false; shape.frames];
    let total = order.len() * spec.steps;
    for (done_windows, window) in order.into_iter().enumerate() {
        let bbox = window.bbox;
        let held = (bbox.frames.start..bbox.frames.end).take_while(|&f| drawn[f]).count();
        let dims = bbox.latent_shape(shape.channels).dims();
        let own = WindowBox { frames: Span { start: bbox.frames.start + held, end: bbox.frames.end }, ..bbox };
        if own.frames.is_empty() {
            // Every frame already drawn by the windows before: nothing of its own to draw.
            ctx.store.update(&job.id, |j| {
                if let Some(w) = j.progress.as_mut().and_then(|p| p.windows.get_mut(window.index)) {
                    w.steps_done = spec.steps as u32;
                }
            });
            continue;
        }
        let mut sampler = FlowSampler::new(spec.sampler, spec.steps, spec.shift).map_err(|e| e.to_string())?;
        for step in 0..spec.steps {
            if job.cancel.is_cancelled() {
                return Ok(Outcome::Cancelled);
            }
            let started = std::time::Instant::now();
            let timestep = sampler.current_timestep().ok_or("sampler finished early")? as f32;
            let call = WindowCall {
                step,
                index: window.index,
                dims,
                timestep,
                frame_timesteps: (0..dims[1]).map(|i| if i < held { 0.0 } else { timestep }).collect(),
                prompt: spec.segments[segments[window.index]].prompt.clone(),
            };
            let values;
            (latent, values) = blocking(move || {
                let values = extract(&latent, shape, &bbox);
                Ok((latent, values))
            })
            .await?;
            let output = tokio::select! {
                output = denoise_window(ctx, job, spec, call, values) => output?,
                _ = job.cancel.cancelled() => return Ok(Outcome::Cancelled),
            };
            (latent, sampler) = blocking(move || advance(latent, sampler, shape, &bbox, held, &output)).await?;
            ctx.dispatcher.metrics.step_done(&spec.model, started.elapsed());
            // The job's step counts the whole video's progress: all windows' steps, in step units.
            let progress = ((done_windows * spec.steps + step + 1) * spec.steps / total) as u32;
            ctx.store.update(&job.id, |j| {
                j.state = pb::JobState::Denoising as i32;
                if let Some(p) = j.progress.as_mut() {
                    p.step = progress;
                }
            });
        }
        drawn[own.frames.start..own.frames.end].fill(true);
    }
    decode_and_store(ctx, job, spec, g, shape, latent).await
}

/// One sampler step of the own frames of the window at `bbox` (those after its `held` ones), given the
/// window's `output`; the result is written back into `latent`.
fn advance(
    mut latent: Vec<f32>,
    mut sampler: FlowSampler,
    shape: LatentShape,
    bbox: &WindowBox,
    held: usize,
    output: &[f32],
) -> Result<(Vec<f32>, FlowSampler), String> {
    let own = WindowBox { frames: Span { start: bbox.frames.start + held, end: bbox.frames.end }, ..*bbox };
    let [c, f, h, w] = bbox.latent_shape(shape.channels).dims();
    let v = Tensor::from_slice(output, (c, f, h, w), &Device::Cpu)
        .and_then(|v| v.narrow(1, held, f - held))
        .map_err(|e| e.to_string())?;
    let own_dims = [c, f - held, h, w];
    let x = Tensor::from_vec(extract(&latent, shape, &own), own_dims.as_slice(), &Device::Cpu)
        .map_err(|e| e.to_string())?;
    let next = sampler.step(&v, &x).map_err(|e| e.to_string())?;
    let next = next.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())?;
    insert(&mut latent, shape, &own, &next);
    Ok((latent, sampler))
}

#[cfg(test)]
mod tests {
    use patchwork_shared::sampler::SamplerKind;

    use super::*;

    /// A step moves only the window's own frames, as the sampler moves them; the held frames and the
    /// rest of the latent stay as they were.
    #[test]
    fn a_step_moves_only_the_windows_own_frames() {
        let shape = LatentShape { channels: 2, frames: 6, height: 2, width: 3 };
        let latent: Vec<f32> = (0..shape.len()).map(|i| i as f32 * 0.1).collect();
        let bbox = WindowBox {
            frames: Span { start: 1, end: 5 },
            rows: Span { start: 0, end: 2 },
            cols: Span { start: 0, end: 3 },
        };
        let held = 2;
        let own = WindowBox { frames: Span { start: 3, end: 5 }, ..bbox };
        let dims = bbox.latent_shape(2).dims();
        let values = extract(&latent, shape, &bbox);
        let output: Vec<f32> = (0..values.len()).map(|i| 1.0 + i as f32).collect();
        let sampler = FlowSampler::new(SamplerKind::Euler, 4, 3.0).unwrap();
        let (next, _) = advance(latent.clone(), sampler.clone(), shape, &bbox, held, &output).unwrap();
        let plane = shape.frames * shape.height * shape.width;
        let frame = shape.height * shape.width;
        for (i, (&a, &b)) in latent.iter().zip(&next).enumerate() {
            let f = (i % plane) / frame;
            assert_eq!(a == b, !(3..5).contains(&f), "position {i}, frame {f}");
        }
        // The own frames moved as the sampler moves them alone.
        let cut = |v: &[f32]| Tensor::from_slice(v, dims.as_slice(), &Device::Cpu).unwrap().narrow(1, held, 2).unwrap();
        let mut alone = sampler;
        let expected: Vec<f32> =
            alone.step(&cut(&output), &cut(&values)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(extract(&next, shape, &own), expected);
    }
}
