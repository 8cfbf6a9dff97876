//! The job flags `render` and `submit` share, mapped onto the API's `JobSpec`.

use clap::Args;
use patchwork_shared::pb;

#[derive(Debug, Clone, Args)]
pub struct SpecArgs {
    /// What the video shows. Leave out when giving --schedule.
    pub prompt: Option<String>,
    /// A prompt from a frame on: FRAME:PROMPT, repeated, the first at frame 0.
    #[arg(long = "schedule", value_name = "FRAME:PROMPT")]
    pub schedule: Vec<String>,
    /// What the video should not show.
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Video frames, 1 + 4k [default: the model's native length].
    #[arg(long)]
    pub frames: Option<u32>,
    /// Frame width in pixels, a multiple of 16 [default: the model's].
    #[arg(long)]
    pub width: Option<u32>,
    /// Frame height in pixels, a multiple of 16 [default: the model's].
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long)]
    pub fps: Option<u32>,
    /// Denoising steps [default: the model's].
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale; 1 or less turns guidance off.
    #[arg(long)]
    pub guidance_scale: Option<f32>,
    /// Flow-matching time shift.
    #[arg(long)]
    pub shift: Option<f32>,
    /// unipc | euler
    #[arg(long, default_value = "")]
    pub sampler: String,
    /// Noise seed [default: chosen by the coordinator and shown].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Temporal window in frames, 1 + 4k [default: the model's native length].
    #[arg(long)]
    pub window: Option<u32>,
    /// Frames shared by neighbouring windows, a multiple of 4 [default: a quarter of the window].
    #[arg(long)]
    pub overlap: Option<u32>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// How overlapping windows are joined: smooth (sin² weights) | average | continue (windows drawn one
    /// after another, each from the frames before it; for models trained to continue a video).
    #[arg(long, default_value = "")]
    pub fusion: String,
    /// The initial noise: independent | shuffled (later windows reuse the first window's noise frames,
    /// reordered).
    #[arg(long, default_value = "")]
    pub noise: String,
}

impl SpecArgs {
    /// The API spec for model `model` (empty: the coordinator's default).
    pub fn to_spec(&self, model: &str) -> anyhow::Result<pb::JobSpec> {
        let schedule = self
            .schedule
            .iter()
            .map(|entry| {
                let (frame, prompt) = entry
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("--schedule {entry:?}: expected FRAME:PROMPT"))?;
                let start_frame = frame
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--schedule {entry:?}: {frame:?} is not a frame"))?;
                Ok(pb::PromptSegment { start_frame, prompt: prompt.to_string() })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(pb::JobSpec {
            prompt: self.prompt.clone().unwrap_or_default(),
            schedule,
            negative_prompt: self.negative_prompt.clone(),
            frames: self.frames,
            width: self.width,
            height: self.height,
            fps: self.fps,
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            shift: self.shift,
            sampler: self.sampler.clone(),
            seed: self.seed,
            window_frames: self.window,
            overlap_frames: self.overlap,
            model: model.to_string(),
            priority: self.priority,
            fusion: self.fusion.clone(),
            noise: self.noise.clone(),
        })
    }
}
