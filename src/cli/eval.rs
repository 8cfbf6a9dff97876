//! `patchwork eval`: measures a video against its prompt (colour, shape, direction of each object, and
//! how smoothly it changes, also across the farm's window seams) and prints the report as JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use patchwork_shared::model::ModelGeometry;
use patchwork_shared::windows::{continued_seams, temporal_seams};

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// An H.264 MP4 (the farm's own or any other).
    pub video: PathBuf,
    /// The prompt the video was made from.
    #[arg(long)]
    pub prompt: String,
    /// The job's temporal window in frames: with --overlap, the seams are where the farm's windows
    /// hand over (the tiny model's geometry: 4 frames per latent frame).
    #[arg(long, requires = "overlap", conflicts_with = "seams")]
    pub window: Option<usize>,
    /// The job's overlap in frames (a multiple of 4).
    #[arg(long, requires = "window")]
    pub overlap: Option<usize>,
    /// The windows were continued one after another (`--fusion continue`): the seams are only where
    /// each window's own frames begin.
    #[arg(long, requires = "window")]
    pub continued: bool,
    /// Seams given directly: frame indices s, each between frames s − 1 and s.
    #[arg(long, value_delimiter = ',')]
    pub seams: Vec<usize>,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let video = patchwork_scenes::mp4::read_video(&args.video)?;
    let seams = match (args.window, args.overlap) {
        (Some(window), Some(overlap)) => {
            let g = ModelGeometry::tiny();
            check_frames("--window", window, &g)?;
            check_frames("frames of the video", video.frames, &g)?;
            if !overlap.is_multiple_of(g.temporal_factor) || overlap >= window {
                anyhow::bail!("--overlap {overlap}: must be a multiple of 4 and smaller than the window");
            }
            let seams_of = if args.continued { continued_seams } else { temporal_seams };
            Some(seams_of(&g, video.frames, window.min(video.frames), overlap).context("planning the windows")?)
        }
        _ if !args.seams.is_empty() => {
            if let Some(bad) = args.seams.iter().find(|&&s| s == 0 || s >= video.frames) {
                anyhow::bail!("--seams: {bad} is not between two of the video's {} frames", video.frames);
            }
            Some(args.seams.clone())
        }
        _ => None,
    };
    let report = patchwork_scenes::eval::evaluate(&video, &args.prompt, seams.as_deref());
    let text = serde_json::to_string_pretty(&report)?;
    super::client::print_out(&format!("{text}\n"))?;
    Ok(())
}

fn check_frames(what: &str, frames: usize, g: &ModelGeometry) -> anyhow::Result<()> {
    if frames == 0 || !(frames - 1).is_multiple_of(g.temporal_factor) {
        anyhow::bail!("{what}: {frames} is not 1 + a multiple of {}", g.temporal_factor);
    }
    Ok(())
}
