//! One job from start to finish: plan the windows, draw the noise, run every denoising step over all
//! windows (dispatch, fuse, sampler step), decode the latent in chunks, mux the MP4 and store it.
//! The coordinator owns the latent and the sampler; workers only evaluate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use futures::future::try_join_all;
use futures::StreamExt;
use patchwork_shared::model::ModelGeometry;
use patchwork_shared::pb;
use patchwork_shared::sampler::{FlowSampler, Sampler};
use patchwork_shared::spec::JobSpec;
use patchwork_shared::windows::{
    extract, plan_windows, Fusion, FusionMode, LatentShape, PlanRequest, Span, WindowBox, WindowPlan,
};
use patchwork_shared::wire;

use prost::Message;

use crate::checkpoint::{self, Checkpoint};
use crate::cluster::EtcdJournal;
use crate::decode::{plan_chunks, Chunk};
use crate::dispatch::{check_fence, Dispatcher, Work};
use crate::metrics::WorkKind;
use crate::store::{Claimed, JobStore};
use crate::video::{Mp4Writer, RgbFrame};

mod continued;

/// What every job runner shares.
#[derive(Debug)]
pub struct JobContext {
    pub store: Arc<JobStore>,
    pub dispatcher: Dispatcher,
    pub data_dir: PathBuf,
    /// Latent frames each decode chunk produces, and the latent frames of causal context before it.
    pub decode_chunk: usize,
    pub decode_context: usize,
    /// Write the latent and sampler state every this many steps (0: never) or when this long has passed
    /// since the last checkpoint, whichever comes first.
    pub checkpoint_every: usize,
    pub checkpoint_interval: Option<Duration>,
    /// The leadership term every fence carries (0 with a single coordinator).
    pub term: u64,
    /// Cancelled when this coordinator stops running jobs (shutdown, or the end of its leadership term):
    /// runners then abandon their jobs where they stand, without recording an end.
    pub stop: tokio_util::sync::CancellationToken,
    /// Cluster mode: where the end of a job must be durable before its checkpoint is removed.
    pub journal: Option<Arc<EtcdJournal>>,
}

impl JobContext {
    fn checkpoint_path(&self, job: &str) -> PathBuf {
        self.data_dir.join("checkpoints").join(format!("{job}.ckpt"))
    }
}

/// Largest decoded chunk, in bytes of RGB frames: well inside the worker message limit.
const MAX_DECODE_REPLY_BYTES: usize = 256 << 20;

enum Outcome {
    Done(PathBuf, u64),
    Cancelled,
}

/// Runs a claimed job to its end and records how it ended. If the coordinator stops running jobs first,
/// the job is left as it stands: its checkpoint is where the next leader resumes it.
pub async fn run_job(ctx: Arc<JobContext>, job: Claimed) {
    tracing::info!(job = %job.id, spec = %job.spec, "job started");
    let started = Instant::now();
    if let Some(created) = ctx.store.get(&job.id).map(|j| j.created_ms) {
        let waited = Duration::from_millis(crate::store::now_ms().saturating_sub(created));
        ctx.dispatcher.metrics.job_started(&job.spec.model, waited);
    }
    let result = tokio::select! {
        result = render(&ctx, &job) => result,
        _ = ctx.stop.cancelled() => {
            tracing::info!(job = %job.id, "job abandoned: this coordinator stopped running jobs");
            return;
        }
    };
    let checkpoint = ctx.checkpoint_path(&job.id);
    let state = record_end(&ctx, &job, result);
    ctx.dispatcher.metrics.job_finished(state, started.elapsed());
    // A finished job needs no checkpoint, once its end is durable; until then a new leader may need it.
    let durable = match &ctx.journal {
        Some(journal) => journal.flush().await,
        None => true,
    };
    if durable {
        let _ = tokio::fs::remove_file(checkpoint).await;
    }
}

/// Records how a job ended, and returns that state.
fn record_end(ctx: &JobContext, job: &Claimed, result: Result<Outcome, String>) -> pb::JobState {
    match result {
        Ok(Outcome::Done(path, bytes)) => {
            tracing::info!(job = %job.id, path = %path.display(), bytes, "job done");
            ctx.store.finish(&job.id, pb::JobState::Done, None, Some((path, bytes)));
            pb::JobState::Done
        }
        Ok(Outcome::Cancelled) => {
            tracing::info!(job = %job.id, "job cancelled");
            // Outputs of a step cut short were never fused: the job stands at its last step boundary. (A
            // continued job applies every output it receives, and its step counts all windows' steps.)
            let fused = job.spec.fusion != FusionMode::Continue;
            ctx.store.update(&job.id, |j| {
                if let Some(p) = j.progress.as_mut().filter(|_| fused) {
                    let step = p.step;
                    for w in &mut p.windows {
                        w.steps_done = w.steps_done.min(step);
                    }
                }
            });
            ctx.store.finish(&job.id, pb::JobState::Cancelled, None, None);
            pb::JobState::Cancelled
        }
        Err(error) => {
            tracing::error!(job = %job.id, %error, "job failed");
            ctx.store.finish(&job.id, pb::JobState::Failed, Some(error), None);
            pb::JobState::Failed
        }
    }
}

/// The latent grid of a spec and the windows over it.
pub fn plan(spec: &JobSpec, g: &ModelGeometry) -> Result<WindowPlan, String> {
    let shape = LatentShape {
        channels: g.latent_channels,
        frames: g.latent_frames(spec.frames),
        height: spec.height / g.spatial_factor,
        width: spec.width / g.spatial_factor,
    };
    let native = [g.native_height / g.spatial_factor, g.native_width / g.spatial_factor];
    // Spatial tiles share a quarter of the native tile, in whole patches.
    let tile_overlap = |n: usize, patch: usize| (n / 4) / patch * patch;
    let request = PlanRequest {
        shape,
        window: [g.latent_frames(spec.window_frames), native[0], native[1]],
        overlap: [
            spec.overlap_frames / g.temporal_factor,
            tile_overlap(native[0], g.patch[1]),
            tile_overlap(native[1], g.patch[2]),
        ],
        align: g.patch,
    };
    plan_windows(&request).map_err(|e| format!("planning windows: {e}"))
}

/// The prompt segment of a window: the one covering its middle frame.
fn segment_of(spec: &JobSpec, g: &ModelGeometry, frames: Span) -> usize {
    let middle = (frames.start + frames.end - 1) / 2;
    spec.segment_at(middle * g.temporal_factor)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("internal task failed: {e}"))?
}

async fn render(ctx: &JobContext, job: &Claimed) -> Result<Outcome, String> {
    let spec = job.spec.clone();
    let g =
        ctx.dispatcher.pool.model(&spec.model).ok_or_else(|| format!("model {:?} is no longer known", spec.model))?;
    let plan = Arc::new(plan(&spec, &g)?);
    let shape = plan.shape;
    let segments: Vec<usize> = plan.windows.iter().map(|w| segment_of(&spec, &g, w.bbox.frames)).collect();
    ctx.store.update(&job.id, |j| {
        let progress = j.progress.get_or_insert_with(Default::default);
        progress.windows = plan
            .windows
            .iter()
            .map(|w| pb::WindowProgress {
                index: w.index as u32,
                frame_start: w.bbox.frames.start as u32,
                frame_end: w.bbox.frames.end as u32,
                row_start: w.bbox.rows.start as u32,
                row_end: w.bbox.rows.end as u32,
                col_start: w.bbox.cols.start as u32,
                col_end: w.bbox.cols.end as u32,
                segment: segments[w.index] as u32,
                ..Default::default()
            })
            .collect();
    });
    let (fusion, mut latent) = {
        let plan = plan.clone();
        let (seed, fusion, noise) = (spec.seed, spec.fusion, spec.noise);
        blocking(move || {
            let spans: Vec<(usize, usize)> =
                plan.windows.iter().map(|w| (w.bbox.frames.start, w.bbox.frames.end)).collect();
            Ok((Arc::new(Fusion::with_mode(&plan, fusion)), noise.draw(seed, shape.dims(), &spans)))
        })
        .await?
    };
    if spec.fusion == FusionMode::Continue {
        return continued::render(ctx, job, &spec, &plan, &segments, latent, &g).await;
    }
    let mut sampler = FlowSampler::new(spec.sampler, spec.steps, spec.shift).map_err(|e| e.to_string())?;
    let mut first_step = 0;
    if let Some(resumed) = resume(ctx, &job.id, &spec, shape).await {
        tracing::info!(job = %job.id, step = resumed.step, term = ctx.term, "job resumed from its checkpoint");
        first_step = resumed.step;
        latent = resumed.latent;
        sampler = resumed.sampler;
        ctx.store.update(&job.id, |j| {
            if let Some(p) = j.progress.as_mut() {
                p.step = first_step as u32;
                for w in &mut p.windows {
                    w.steps_done = first_step as u32;
                }
            }
        });
    }
    let mut last_checkpoint = Instant::now();
    for step in first_step..spec.steps {
        if job.cancel.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
        let step_started = Instant::now();
        let timestep = sampler.current_timestep().ok_or("sampler finished early")? as f32;
        let latent_now = Arc::new(latent);
        let evaluations = plan.windows.iter().map(|window| {
            let latent_now = latent_now.clone();
            let bbox = window.bbox;
            let call = WindowCall {
                step,
                index: window.index,
                dims: bbox.latent_shape(shape.channels).dims(),
                timestep,
                frame_timesteps: Vec::new(),
                prompt: spec.segments[segments[window.index]].prompt.clone(),
            };
            let spec = &spec;
            async move {
                let values = blocking(move || Ok(extract(&latent_now, shape, &bbox))).await?;
                denoise_window(ctx, job, spec, call, values).await
            }
        });
        let outputs = tokio::select! {
            outputs = try_join_all(evaluations) => outputs?,
            _ = job.cancel.cancelled() => return Ok(Outcome::Cancelled),
        };
        let fusion = fusion.clone();
        let latent_prev = latent_now.clone();
        let due = (ctx.checkpoint_every > 0 && (step + 1) % ctx.checkpoint_every == 0)
            || ctx.checkpoint_interval.is_some_and(|every| last_checkpoint.elapsed() >= every);
        let checkpoint_to = due.then(|| (ctx.checkpoint_path(&job.id), job.id.clone()));
        let (next, sampler_after) = blocking(move || {
            let refs: Vec<&[f32]> = outputs.iter().map(Vec::as_slice).collect();
            let velocity = fusion.fuse(&refs).map_err(|e| e.to_string())?;
            let dims = shape.dims();
            let v = Tensor::from_vec(velocity, dims.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?;
            let x =
                Tensor::from_slice(latent_prev.as_slice(), dims.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?;
            let next = sampler.step(&v, &x).map_err(|e| e.to_string())?;
            let values = next.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())?;
            if let Some((path, job_id)) = checkpoint_to {
                let checkpoint = Checkpoint { job_id, step: step + 1, dims, latent: values, sampler };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                checkpoint::write(&path, &checkpoint).map_err(|e| format!("checkpoint: {e}"))?;
                return Ok((checkpoint.latent, checkpoint.sampler));
            }
            Ok((values, sampler))
        })
        .await?;
        if due {
            last_checkpoint = Instant::now();
        }
        latent = next;
        sampler = sampler_after;
        ctx.dispatcher.metrics.step_done(&spec.model, step_started.elapsed());
        if step == first_step && first_step > 0 {
            tracing::info!(job = %job.id, step = step + 1, term = ctx.term, "first step after resuming done");
        }
        ctx.store.update(&job.id, |j| {
            j.state = pb::JobState::Denoising as i32;
            if let Some(p) = j.progress.as_mut() {
                p.step = step as u32 + 1;
            }
        });
    }
    if job.cancel.is_cancelled() {
        return Ok(Outcome::Cancelled);
    }
    decode_and_store(ctx, job, &spec, &g, shape, latent).await
}

/// One window's evaluation at one step.
struct WindowCall {
    step: usize,
    index: usize,
    /// The window's latent shape `[C, f, h, w]`.
    dims: [usize; 4],
    timestep: f32,
    /// Empty, or one per latent frame.
    frame_timesteps: Vec<f32>,
    prompt: String,
}

/// Dispatches `call` with the window's latent `values` to a worker (retried elsewhere on failure, as the
/// dispatcher does) and returns the guided velocity; keeps the job's window progress.
async fn denoise_window(
    ctx: &JobContext,
    job: &Claimed,
    spec: &JobSpec,
    call: WindowCall,
    values: Vec<f32>,
) -> Result<Vec<f32>, String> {
    let WindowCall { step, index, dims, timestep, frame_timesteps, prompt } = call;
    let tensor = blocking(move || Ok(wire::f32_tensor(&dims, &values))).await?;
    let request = pb::DenoiseRequest {
        fence: None,
        latent: Some(tensor),
        timestep,
        prompt,
        negative_prompt: spec.negative_prompt.clone(),
        guidance_scale: spec.guidance_scale as f32,
        frame_timesteps,
    };
    let fence =
        pb::Fence { term: ctx.term, job_id: job.id.clone(), step: step as u32, window: index as u32, attempt: 0 };
    let what = format!("job {} step {}/{} window {index}", job.id, step + 1, spec.steps);
    let work = Work {
        kind: WorkKind::Denoise,
        model: &spec.model,
        what: &what,
        request_bytes: request.encoded_len() + fence.encoded_len(),
    };
    let output = ctx
        .dispatcher
        .run(
            work,
            fence,
            |worker, attempt| {
                ctx.store.update(&job.id, |j| {
                    if let Some(w) = j.progress.as_mut().and_then(|p| p.windows.get_mut(index)) {
                        w.worker = worker.to_string();
                        w.retries = attempt;
                    }
                })
            },
            |mut client, fence| {
                let mut request = request.clone();
                request.fence = Some(fence);
                async move { client.denoise(request).await }
            },
            move |fence, response: pb::DenoiseResponse| {
                check_fence(fence, response.fence.as_ref())?;
                let (_, values) =
                    wire::read_f32("output", response.output.as_ref(), Some(&dims)).map_err(|e| e.to_string())?;
                Ok(values)
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    ctx.store.update(&job.id, |j| {
        if let Some(w) = j.progress.as_mut().and_then(|p| p.windows.get_mut(index)) {
            w.steps_done = step as u32 + 1;
            w.worker.clear();
        }
    });
    Ok(output)
}

/// The job's checkpoint, if it has a usable one: damaged or mismatched ones are reported and ignored (the
/// job then starts over, which gives the same video, only later).
async fn resume(ctx: &JobContext, id: &str, spec: &JobSpec, shape: LatentShape) -> Option<Checkpoint> {
    let path = ctx.checkpoint_path(id);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return None;
    }
    let job_id = id.to_string();
    let read = blocking(move || checkpoint::read(&path, &job_id).map_err(|e| e.to_string())).await;
    let checkpoint = match read {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(job = %id, %error, "checkpoint unusable; starting the job over");
            return None;
        }
    };
    let fits = checkpoint.dims == shape.dims()
        && checkpoint.sampler.kind() == spec.sampler
        && checkpoint.sampler.num_steps() == spec.steps
        && checkpoint.step <= spec.steps;
    if !fits {
        tracing::warn!(job = %id, "checkpoint does not match the job's spec; starting the job over");
        return None;
    }
    Some(checkpoint)
}

async fn decode_and_store(
    ctx: &JobContext,
    job: &Claimed,
    spec: &Arc<JobSpec>,
    g: &ModelGeometry,
    shape: LatentShape,
    latent: Vec<f32>,
) -> Result<Outcome, String> {
    // Chunks small enough that their frames fit one message: at most `decode_chunk` latent frames and about
    // 256 MiB of RGB.
    let frame_bytes = spec.width * spec.height * 3 * g.temporal_factor;
    let chunk = ctx.decode_chunk.min((MAX_DECODE_REPLY_BYTES / frame_bytes).max(1));
    let chunks = plan_chunks(shape.frames, chunk, ctx.decode_context);
    ctx.store.update(&job.id, |j| {
        j.state = pb::JobState::Decoding as i32;
        if let Some(p) = j.progress.as_mut() {
            p.decode_chunks = chunks.len() as u32;
        }
    });
    let latent = Arc::new(latent);
    let (width, height) = (spec.width, spec.height);
    let chunk_count = chunks.len();
    let decodes = chunks.into_iter().enumerate().map(|(index, chunk): (usize, Chunk)| {
        let latent = latent.clone();
        async move {
            let bbox = WindowBox {
                frames: Span::new(chunk.start - chunk.context, chunk.end),
                rows: Span::new(0, shape.height),
                cols: Span::new(0, shape.width),
            };
            let dims = bbox.latent_shape(shape.channels).dims();
            let tensor = blocking(move || Ok(wire::f32_tensor(&dims, &extract(&latent, shape, &bbox)))).await?;
            let frames_out = if chunk.start == 0 {
                g.video_frames(chunk.end)
            } else {
                (chunk.end - chunk.start) * g.temporal_factor
            };
            let expected = [frames_out, height, width, 3];
            let request = pb::DecodeRequest { fence: None, latent: Some(tensor), context_frames: chunk.context as u32 };
            let fence = pb::Fence {
                term: ctx.term,
                job_id: job.id.clone(),
                step: spec.steps as u32,
                window: index as u32,
                attempt: 0,
            };
            let what = format!("job {} decode chunk {}/{}", job.id, index + 1, chunk_count);
            let work = Work {
                kind: WorkKind::Decode,
                model: &spec.model,
                what: &what,
                request_bytes: request.encoded_len() + fence.encoded_len(),
            };
            let frames = ctx
                .dispatcher
                .run(
                    work,
                    fence,
                    |_, _| {},
                    |mut client, fence| {
                        let mut request = request.clone();
                        request.fence = Some(fence);
                        async move { client.decode(request).await }
                    },
                    move |fence, response: pb::DecodeResponse| {
                        check_fence(fence, response.fence.as_ref())?;
                        let (_, data) =
                            wire::read_u8("frames", response.frames, Some(&expected)).map_err(|e| e.to_string())?;
                        Ok(data)
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            ctx.store.update(&job.id, |j| {
                if let Some(p) = j.progress.as_mut() {
                    p.decoded_chunks += 1;
                }
            });
            Ok::<_, String>(frames)
        }
    });
    // Chunks come back in order, at most a few in flight, and go straight into the encoder: only the
    // compressed video grows with the length, not the raw frames.
    let in_flight = ctx.dispatcher.pool.worker_count().clamp(1, 8);
    let mut chunk_frames = futures::stream::iter(decodes).buffered(in_flight);
    let mut writer = Some(Mp4Writer::new(width as u32, height as u32, spec.fps as u32).map_err(|e| e.to_string())?);
    loop {
        let next = tokio::select! {
            next = chunk_frames.next() => next,
            _ = job.cancel.cancelled() => return Ok(Outcome::Cancelled),
        };
        let Some(frames) = next else { break };
        let frames = frames?;
        let mut w = writer.take().ok_or("the MP4 writer was lost")?;
        writer = Some(
            blocking(move || {
                for data in frames.chunks_exact(width * height * 3) {
                    let frame = RgbFrame { width: width as u32, height: height as u32, data: data.to_vec() };
                    w.push(&frame).map_err(|e| format!("encoding the video: {e}"))?;
                }
                Ok(w)
            })
            .await?,
        );
    }
    let writer = writer.ok_or("the MP4 writer was lost")?;
    let mp4 = blocking(move || writer.finish().map_err(|e| format!("writing the MP4: {e}"))).await?;
    let dir = ctx.data_dir.join("videos");
    let path = dir.join(format!("{}.mp4", job.id));
    let bytes = mp4.len() as u64;
    write_atomically(dir, path.clone(), mp4).await?;
    Ok(Outcome::Done(path, bytes))
}

/// Writes to a temporary file, syncs it and renames it into place, so a reader never sees half a video.
async fn write_atomically(dir: PathBuf, path: PathBuf, data: Vec<u8>) -> Result<(), String> {
    blocking(move || {
        use std::io::Write;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = path.with_extension("mp4.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        file.write_all(&data).and_then(|_| file.sync_all()).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
    })
    .await
}
