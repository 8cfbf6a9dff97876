//! A job's spec as the coordinator runs it: the client's `pb::JobSpec`, checked field by field once at the
//! edge, with the model's defaults filled in. Inside the system a `JobSpec` is trusted.

use std::fmt;

use crate::model::{ModelGeometry, DEFAULT_MODEL};
use crate::noise::NoiseMode;
use crate::pb;
use crate::sampler::{SamplerKind, MAX_STEPS};
use crate::windows::FusionMode;

/// Longest prompt accepted, in bytes (the text encoder truncates far earlier; this bounds memory).
pub const MAX_PROMPT_BYTES: usize = 4096;
/// Most segments in a prompt schedule.
pub const MAX_SEGMENTS: usize = 256;
/// Longest video, in frames (about 4 minutes at 16 fps).
pub const MAX_FRAMES: usize = 4001;
/// Largest frame sides, in pixels (H.264 level 5.1: 3840x2160 either way round).
pub const MAX_LONG_SIDE: usize = 3840;
pub const MAX_SHORT_SIDE: usize = 2160;
/// Largest latent a job may have, in values: the coordinator holds a few copies of it in f32.
pub const MAX_LATENT_VALUES: usize = 1 << 27;
/// Highest frame rate.
pub const MAX_FPS: usize = 120;
/// Largest classifier-free guidance scale.
pub const MAX_GUIDANCE: f64 = 100.0;
/// Largest time shift.
pub const MAX_SHIFT: f64 = 100.0;

/// A request field that is wrong, and why: INVALID_ARGUMENT at the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl From<FieldError> for tonic::Status {
    fn from(err: FieldError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

/// A prompt that conditions the windows from `start_frame` (a video frame) on.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start_frame: usize,
    pub prompt: String,
}

/// A validated job spec. `segments` always has at least one entry starting at frame 0.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub segments: Vec<Segment>,
    pub negative_prompt: String,
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    pub fps: usize,
    pub steps: usize,
    pub guidance_scale: f64,
    pub shift: f64,
    pub sampler: SamplerKind,
    pub seed: u64,
    pub window_frames: usize,
    pub overlap_frames: usize,
    pub model: String,
    pub priority: i32,
    pub fusion: FusionMode,
    pub noise: NoiseMode,
}

impl JobSpec {
    /// Checks `spec` against `model` (the geometry of the model it names, found by the caller with
    /// [`requested_model`]) and fills in defaults. `seed` is used when the client left the seed unset.
    pub fn validate(spec: &pb::JobSpec, model: &ModelGeometry, seed: u64) -> Result<Self, FieldError> {
        let segments = segments(spec)?;
        check_prompt("negative_prompt", &spec.negative_prompt, true)?;
        let frames = opt(spec.frames, model.native_frames);
        if frames == 0 || frames > MAX_FRAMES {
            return Err(FieldError::new("frames", format!("{frames} is out of range 1..={MAX_FRAMES}")));
        }
        let tf = model.temporal_factor;
        if !(frames - 1).is_multiple_of(tf) {
            return Err(FieldError::new(
                "frames",
                format!("{frames} is not 1 + a multiple of {tf} (the VAE packs {tf} frames in one latent frame)"),
            ));
        }
        let width = side("width", opt(spec.width, model.native_width), model.width_multiple(), model)?;
        let height = side("height", opt(spec.height, model.native_height), model.height_multiple(), model)?;
        if width.min(height) > MAX_SHORT_SIDE {
            return Err(FieldError::new(
                "height",
                format!("{width}x{height} is larger than the video encoder takes ({MAX_LONG_SIDE}x{MAX_SHORT_SIDE} either way)"),
            ));
        }
        let latent_values = model.latent_channels
            * model.latent_frames(frames)
            * (width / model.spatial_factor)
            * (height / model.spatial_factor);
        if latent_values > MAX_LATENT_VALUES {
            return Err(FieldError::new(
                "frames",
                format!(
                    "{frames} frames of {width}x{height} make a latent of {latent_values} values, more than the \
                     limit of {MAX_LATENT_VALUES}: render fewer frames or smaller ones"
                ),
            ));
        }
        let fps = opt(spec.fps, model.default_fps);
        if fps == 0 || fps > MAX_FPS {
            return Err(FieldError::new("fps", format!("{fps} is out of range 1..={MAX_FPS}")));
        }
        let steps = opt(spec.steps, model.default_steps);
        if steps == 0 || steps > MAX_STEPS {
            return Err(FieldError::new("steps", format!("{steps} is out of range 1..={MAX_STEPS}")));
        }
        let guidance_scale = spec.guidance_scale.map_or(model.default_guidance_scale, f64::from);
        if !guidance_scale.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&guidance_scale) {
            return Err(FieldError::new(
                "guidance_scale",
                format!("{guidance_scale} is out of range 0..={MAX_GUIDANCE}"),
            ));
        }
        let shift = spec.shift.map_or(model.default_shift, f64::from);
        if !shift.is_finite() || shift <= 0.0 || shift > MAX_SHIFT {
            return Err(FieldError::new("shift", format!("{shift} is out of range (0, {MAX_SHIFT}]")));
        }
        let sampler = if spec.sampler.is_empty() {
            SamplerKind::UniPc
        } else {
            spec.sampler.parse().map_err(|_| {
                FieldError::new("sampler", format!("unknown sampler {:?} (known: unipc, euler)", spec.sampler))
            })?
        };
        let (window_frames, overlap_frames) = window(spec, model, frames)?;
        let fusion = if spec.fusion.is_empty() {
            FusionMode::Smooth
        } else {
            spec.fusion.parse().map_err(|e: String| FieldError::new("fusion", e))?
        };
        let noise = if spec.noise.is_empty() {
            NoiseMode::Independent
        } else {
            spec.noise.parse().map_err(|e: String| FieldError::new("noise", e))?
        };
        for segment in &segments {
            if segment.start_frame >= frames {
                return Err(FieldError::new(
                    "schedule",
                    format!("a segment starts at frame {} but the video has {frames} frames", segment.start_frame),
                ));
            }
        }
        Ok(Self {
            segments,
            negative_prompt: spec.negative_prompt.clone(),
            frames,
            width,
            height,
            fps,
            steps,
            guidance_scale,
            shift,
            sampler,
            seed: spec.seed.unwrap_or(seed),
            window_frames,
            overlap_frames,
            model: model.name.clone(),
            priority: spec.priority,
            fusion,
            noise,
        })
    }

    /// The prompt of the segment that covers video frame `frame`.
    pub fn segment_at(&self, frame: usize) -> usize {
        self.segments.iter().rposition(|s| s.start_frame <= frame).unwrap_or(0)
    }
}

/// The model a spec asks for ("" means the default).
pub fn requested_model(spec: &pb::JobSpec) -> &str {
    if spec.model.is_empty() {
        DEFAULT_MODEL
    } else {
        &spec.model
    }
}

fn opt(value: Option<u32>, default: usize) -> usize {
    value.map_or(default, |v| v as usize)
}

fn check_prompt(field: &str, prompt: &str, may_be_empty: bool) -> Result<(), FieldError> {
    if !may_be_empty && prompt.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(FieldError::new(field, format!("is {} bytes, more than {MAX_PROMPT_BYTES}", prompt.len())));
    }
    if prompt.contains('\0') {
        return Err(FieldError::new(field, "contains a NUL character"));
    }
    Ok(())
}

fn segments(spec: &pb::JobSpec) -> Result<Vec<Segment>, FieldError> {
    match (spec.prompt.is_empty(), spec.schedule.is_empty()) {
        (false, false) => Err(FieldError::new("prompt", "give either a prompt or a schedule, not both")),
        (true, true) => Err(FieldError::new("prompt", "must not be empty (or give a schedule)")),
        (false, true) => {
            check_prompt("prompt", &spec.prompt, false)?;
            Ok(vec![Segment { start_frame: 0, prompt: spec.prompt.clone() }])
        }
        (true, false) => {
            if spec.schedule.len() > MAX_SEGMENTS {
                return Err(FieldError::new("schedule", format!("has more than {MAX_SEGMENTS} segments")));
            }
            let mut out: Vec<Segment> = Vec::with_capacity(spec.schedule.len());
            for (i, s) in spec.schedule.iter().enumerate() {
                check_prompt(&format!("schedule[{i}].prompt"), &s.prompt, false)?;
                let start = s.start_frame as usize;
                match out.last() {
                    None if start != 0 => {
                        return Err(FieldError::new(
                            "schedule[0].start_frame",
                            "the first segment must start at frame 0",
                        ))
                    }
                    Some(prev) if start <= prev.start_frame => {
                        return Err(FieldError::new(
                            format!("schedule[{i}].start_frame"),
                            format!("{start} is not after the previous segment's {}", prev.start_frame),
                        ))
                    }
                    _ => {}
                }
                out.push(Segment { start_frame: start, prompt: s.prompt.clone() });
            }
            Ok(out)
        }
    }
}

fn side(field: &str, value: usize, multiple: usize, model: &ModelGeometry) -> Result<usize, FieldError> {
    if value < multiple || value > MAX_LONG_SIDE {
        return Err(FieldError::new(field, format!("{value} is out of range {multiple}..={MAX_LONG_SIDE}")));
    }
    if !value.is_multiple_of(multiple) {
        return Err(FieldError::new(
            field,
            format!("{value} is not a multiple of {multiple} (the VAE's {}x and the patch)", model.spatial_factor),
        ));
    }
    Ok(value)
}

fn window(spec: &pb::JobSpec, model: &ModelGeometry, frames: usize) -> Result<(usize, usize), FieldError> {
    let tf = model.temporal_factor;
    let limit = 4 * model.native_frames;
    let window = opt(spec.window_frames, model.native_frames.min(frames));
    if window == 0 || window > limit || !(window - 1).is_multiple_of(tf) {
        return Err(FieldError::new(
            "window_frames",
            format!("{window} must be 1 + a multiple of {tf}, at most {limit} (4x the model's native length)"),
        ));
    }
    // A window longer than the video is the video.
    let window = window.min(frames);
    // Default: a quarter of the window to the nearest whole latent frame, at least one, less than the window.
    let default_overlap = (((window / 4 + tf / 2) / tf).max(1) * tf).min((window - 1) / tf * tf);
    let overlap = opt(spec.overlap_frames, default_overlap);
    if !overlap.is_multiple_of(tf) {
        return Err(FieldError::new("overlap_frames", format!("{overlap} is not a multiple of {tf}")));
    }
    if overlap >= window {
        return Err(FieldError::new(
            "overlap_frames",
            format!("{overlap} must be smaller than the window ({window} frames)"),
        ));
    }
    Ok((window, overlap))
}

impl From<&JobSpec> for pb::JobSpec {
    /// The resolved spec as the API shows it: every field set.
    fn from(s: &JobSpec) -> Self {
        let single = s.segments.len() == 1;
        Self {
            prompt: if single { s.segments[0].prompt.clone() } else { String::new() },
            schedule: if single {
                Vec::new()
            } else {
                s.segments
                    .iter()
                    .map(|seg| pb::PromptSegment { start_frame: seg.start_frame as u32, prompt: seg.prompt.clone() })
                    .collect()
            },
            negative_prompt: s.negative_prompt.clone(),
            frames: Some(s.frames as u32),
            width: Some(s.width as u32),
            height: Some(s.height as u32),
            fps: Some(s.fps as u32),
            steps: Some(s.steps as u32),
            guidance_scale: Some(s.guidance_scale as f32),
            shift: Some(s.shift as f32),
            sampler: s.sampler.to_string(),
            seed: Some(s.seed),
            window_frames: Some(s.window_frames as u32),
            overlap_frames: Some(s.overlap_frames as u32),
            model: s.model.clone(),
            priority: s.priority,
            fusion: s.fusion.to_string(),
            noise: s.noise.to_string(),
        }
    }
}

impl fmt::Display for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames {}x{} @{} fps, {} {} steps, seed {}",
            self.frames, self.width, self.height, self.fps, self.sampler, self.steps, self.seed
        )
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
