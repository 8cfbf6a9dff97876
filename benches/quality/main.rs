//! Quality benchmark of the embedded tiny model: does the farm's video show what the prompt says, and do
//! long videos stay consistent where the windows join?
//!
//!   quality [--prompts 50] [--frames 77] [--steps N] [--guidance G] [--shift S] [--sampler euler|unipc]
//!           [--window 17] [--overlap 8] [--modes 0,1,2,3] [--keep DIR]
//!           [--model DIR] [--short] [--noise shuffled] [--negative swapped]
//!
//! `--keep` writes each video and its prompt (`MODE-INDEX.mp4`, `.txt`); `--model` measures a pipeline
//! folder instead of the embedded model; `--noise` is the jobs' noise layout (`independent` by default);
//! `--negative swapped` gives every two-object prompt its colours swapped as the negative prompt, so that
//! guidance pushes from the wrong binding rather than from no caption.
//!
//! Prompts are captions of procedural scenes (the kind the model was trained on, drawn with seeds it
//! never saw), one to two objects, plain or two-tone backgrounds; `--short` leaves out their speeds and
//! backgrounds ("a green square moving left"), as people write prompts. Every prompt is rendered through an
//! in-process farm (coordinator and one worker on loopback, the embedded model, as `patchwork render`
//! does) four ways:
//! - one native window (17 frames): the model alone;
//! - `--frames` long with windows of `--window` frames (17) overlapping by `--overlap` (8), joined by the smooth
//!   (sin²) weights;
//! - the same joined by a plain average over each overlap;
//! - the same with no overlap at all (windows side by side);
//! - continued: the same windows drawn one after another, each holding the frames it shares with the
//!   one before clean while it draws its own (for a model trained to continue a video).
//!
//! Each MP4 is decoded and measured by `patchwork eval`'s evaluator: colour and shape of every object the
//! prompt names over the whole video, direction over the first 17 frames (captions name the starting
//! direction; objects bounce off the edges later), and the main object's frame-to-frame movement at the
//! seams (where a window begins or ends; for continued windows, where a window's own frames begin)
//! against its median movement elsewhere; and, to see where a long video loses its colours, the colour
//! of every object in each whole 17-frame piece of the video on its own, and whether each piece's
//! background has the prompt's colours. Prints markdown tables.
//! `tools/bench/quality.sh` builds and runs it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use patchwork_coordinator::CoordinatorConfig;
use patchwork_scenes::eval::{evaluate, Report};
use patchwork_scenes::{swap_object_colours, CaptionParts, SceneSampler, Video};
use patchwork_shared::model::ModelGeometry;
use patchwork_shared::pb::{self, render_service_client::RenderServiceClient};
use patchwork_shared::windows::{continued_seams, temporal_seams};
use patchwork_worker::engine::{Engine, Evaluator, ModelSource};
use patchwork_worker::run::WorkerConfig;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Scene seeds of the prompts: far from the training run's streams, which hash the run seed.
const PROMPT_SEED: u64 = 0x5155_414c_4954_5900;
const WINDOW: u32 = 17;

struct Options {
    prompts: usize,
    frames: u32,
    steps: Option<u32>,
    guidance: Option<f32>,
    shift: Option<f32>,
    /// Window length of the long modes (the one-window mode always has the native 17).
    window: u32,
    /// Frames shared by neighbouring windows in the overlapping modes.
    overlap: u32,
    /// `euler` or `unipc` (empty: the model's default).
    sampler: String,
    /// Which of the four ways to render (indices into the table's rows).
    modes: Vec<usize>,
    keep: Option<PathBuf>,
    /// A pipeline folder to measure instead of the embedded model.
    model: Option<PathBuf>,
    /// Prompts without speeds and backgrounds.
    short: bool,
    /// The jobs' `noise` (empty: the default).
    noise: String,
    /// Two-object prompts get their colours swapped as the negative prompt.
    negative_swapped: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        prompts: 50,
        frames: 77,
        steps: None,
        guidance: None,
        shift: None,
        window: WINDOW,
        overlap: 8,
        sampler: String::new(),
        modes: vec![0, 1, 2, 3],
        keep: None,
        model: None,
        short: false,
        noise: String::new(),
        negative_swapped: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--prompts" => o.prompts = value()?.parse()?,
            "--frames" => o.frames = value()?.parse()?,
            "--steps" => o.steps = Some(value()?.parse()?),
            "--guidance" => o.guidance = Some(value()?.parse()?),
            "--shift" => o.shift = Some(value()?.parse()?),
            "--window" => o.window = value()?.parse()?,
            "--overlap" => o.overlap = value()?.parse()?,
            "--sampler" => o.sampler = value()?,
            "--modes" => {
                o.modes = value()?.split(',').map(|m| m.trim().parse()).collect::<Result<_, _>>()?;
                if o.modes.iter().any(|&m| m > 4) {
                    bail!(
                        "--modes: indices are 0 (one window), 1 (smooth), 2 (average), 3 (no overlap), 4 (continued)"
                    );
                }
            }
            "--keep" => o.keep = Some(PathBuf::from(value()?)),
            "--model" => o.model = Some(PathBuf::from(value()?)),
            "--short" => o.short = true,
            "--noise" => o.noise = value()?,
            "--negative" => match value()?.as_str() {
                "swapped" => o.negative_swapped = true,
                other => bail!("--negative: only `swapped` is known, not {other:?}"),
            },
            // cargo bench passes --bench to every harness-less target.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

/// One way of rendering a prompt.
struct Mode {
    name: &'static str,
    frames: u32,
    window: u32,
    overlap: u32,
    fusion: &'static str,
}

/// What one video scored.
#[derive(Default)]
struct Score {
    objects: usize,
    colour: usize,
    shape: usize,
    direction: usize,
    seam_ratio: Option<f64>,
    /// Objects with the right colour in each whole 17-frame piece of the video, from its start.
    piece_colours: Vec<usize>,
    /// Whether the background's colours are right in each whole 17-frame piece.
    piece_backgrounds: Vec<bool>,
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(o))
}

async fn run(o: Options) -> anyhow::Result<()> {
    let modes = [
        Mode { name: "one window (17 frames)", frames: WINDOW, window: WINDOW, overlap: 0, fusion: "smooth" },
        Mode { name: "smooth fusion", frames: o.frames, window: o.window, overlap: o.overlap, fusion: "smooth" },
        Mode { name: "plain average", frames: o.frames, window: o.window, overlap: o.overlap, fusion: "average" },
        Mode { name: "no overlap", frames: o.frames, window: o.window, overlap: 0, fusion: "smooth" },
        Mode { name: "continued", frames: o.frames, window: o.window, overlap: o.overlap, fusion: "continue" },
    ];
    let sampler = SceneSampler::new(64, 64);
    let parts = if o.short { CaptionParts { speed: false, background: false } } else { CaptionParts::ALL };
    let prompts: Vec<String> =
        (0..o.prompts as u64).map(|i| sampler.sample(PROMPT_SEED + i).caption_with(parts)).collect();
    if let Some(dir) = &o.keep {
        std::fs::create_dir_all(dir)?;
    }
    let (mut client, shutdown, tasks, _data) = start_farm(o.model.clone()).await?;
    let g = ModelGeometry::tiny();
    let started = Instant::now();
    let mut table = Vec::new();
    for (m, mode) in modes.iter().enumerate().filter(|(m, _)| o.modes.contains(m)) {
        let seams_of = if mode.fusion == "continue" { continued_seams } else { temporal_seams };
        let seams = seams_of(&g, mode.frames as usize, mode.window.min(mode.frames) as usize, mode.overlap as usize)?;
        let mut scores = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let spec = pb::JobSpec {
                prompt: prompt.clone(),
                negative_prompt: if o.negative_swapped {
                    swap_object_colours(prompt).unwrap_or_default()
                } else {
                    String::new()
                },
                frames: Some(mode.frames),
                window_frames: Some(mode.window),
                overlap_frames: Some(mode.overlap),
                fusion: mode.fusion.into(),
                noise: o.noise.clone(),
                steps: o.steps,
                guidance_scale: o.guidance,
                shift: o.shift,
                sampler: o.sampler.clone(),
                seed: Some(i as u64),
                ..Default::default()
            };
            let bytes = render(&mut client, spec).await.with_context(|| format!("{}: {prompt:?}", mode.name))?;
            if let Some(dir) = &o.keep {
                std::fs::write(dir.join(format!("{m}-{i:02}.mp4")), &bytes)?;
                std::fs::write(dir.join(format!("{m}-{i:02}.txt")), prompt)?;
            }
            let video = patchwork_scenes::mp4::decode_mp4(&bytes)?;
            let whole = evaluate(&video, prompt, (!seams.is_empty()).then_some(seams.as_slice()));
            // A video shorter than a piece is one piece.
            let pieces: Vec<Report> = (0..(video.frames / WINDOW as usize).max(1))
                .map(|k| evaluate(&frames(&video, k * WINDOW as usize, WINDOW as usize), prompt, None))
                .collect();
            scores.push(score(&whole, &pieces));
        }
        eprintln!("{}: {} videos in {:.0} s", mode.name, scores.len(), started.elapsed().as_secs_f64());
        table.push((mode, seams.len(), scores));
    }
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }

    println!("| joining | frames | seams | colour right | shape right | direction right | seam / median movement (median) | videos with seam ≤ 1.5× median |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (mode, seams, scores) in &table {
        let objects: usize = scores.iter().map(|s| s.objects).sum();
        let pct = |n: usize| format!("{:.0}%", 100.0 * n as f64 / objects.max(1) as f64);
        let mut ratios: Vec<f64> = scores.iter().filter_map(|s| s.seam_ratio).collect();
        ratios.sort_by(f64::total_cmp);
        let (median, within) = if ratios.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let ok = ratios.iter().filter(|&&r| r <= 1.5).count();
            (format!("{:.2}", ratios[ratios.len() / 2]), format!("{ok}/{}", ratios.len()))
        };
        println!(
            "| {} | {} | {seams} | {} | {} | {} | {median} | {within} |",
            mode.name,
            mode.frames,
            pct(scores.iter().map(|s| s.colour).sum()),
            pct(scores.iter().map(|s| s.shape).sum()),
            pct(scores.iter().map(|s| s.direction).sum()),
        );
    }
    println!("\n| joining | lone objects: colour / shape / direction | objects of pairs: colour / shape / direction |");
    println!("| --- | --- | --- |");
    for (mode, _, scores) in &table {
        let part = |pairs: bool| {
            let group: Vec<&Score> = scores.iter().filter(|s| (s.objects > 1) == pairs).collect();
            let objects: usize = group.iter().map(|s| s.objects).sum();
            let pct = |f: fn(&Score) -> usize| {
                format!("{:.0}%", 100.0 * group.iter().map(|s| f(s)).sum::<usize>() as f64 / objects.max(1) as f64)
            };
            format!("{} / {} / {} ({objects})", pct(|s| s.colour), pct(|s| s.shape), pct(|s| s.direction))
        };
        println!("| {} | {} | {} |", mode.name, part(false), part(true));
    }
    println!(
        "\n| joining | objects with the right colour in each 17-frame piece, from the video's start | videos with the right background in each piece |"
    );
    println!("| --- | --- | --- |");
    for (mode, _, scores) in &table {
        let pieces = scores.iter().map(|s| s.piece_colours.len()).min().unwrap_or(0);
        let counts: Vec<String> =
            (0..pieces).map(|k| scores.iter().map(|s| s.piece_colours[k]).sum::<usize>().to_string()).collect();
        let backgrounds: Vec<String> =
            (0..pieces).map(|k| scores.iter().filter(|s| s.piece_backgrounds[k]).count().to_string()).collect();
        println!("| {} | {} | {} |", mode.name, counts.join(", "), backgrounds.join(", "));
    }
    println!(
        "\n{} {}prompts ({objects} objects), {:.0} s in all",
        o.prompts,
        if o.short { "short " } else { "" },
        started.elapsed().as_secs_f64(),
        objects = table[0].2.iter().map(|s| s.objects).sum::<usize>()
    );
    Ok(())
}

/// A video's score: colour and shape over the whole video, direction over its first piece.
fn score(whole: &Report, pieces: &[Report]) -> Score {
    let count = |r: &Report, f: fn(&patchwork_scenes::eval::ObjectReport) -> Option<bool>| {
        r.objects.iter().filter(|o| f(o) == Some(true)).count()
    };
    Score {
        objects: whole.objects.len(),
        colour: count(whole, |o| o.colour_ok),
        shape: count(whole, |o| o.shape_ok),
        direction: pieces.first().map_or(0, |start| count(start, |o| o.direction_ok)),
        seam_ratio: whole.seams.as_ref().and_then(|s| s.position_px.as_ref()).map(|c| c.ratio),
        piece_colours: pieces.iter().map(|p| count(p, |o| o.colour_ok)).collect(),
        piece_backgrounds: pieces.iter().map(|p| p.background.colours_ok == Some(true)).collect(),
    }
}

/// Frames `start..start + n` of a video (as many of them as it has).
fn frames(video: &Video, start: usize, n: usize) -> Video {
    let start = start.min(video.frames);
    let n = n.min(video.frames - start);
    let bytes = start * video.frame_len()..(start + n) * video.frame_len();
    Video { frames: n, height: video.height, width: video.width, data: video.data[bytes].to_vec() }
}

type Farm = (RenderServiceClient<Channel>, CancellationToken, Vec<tokio::task::JoinHandle<()>>, tempfile::TempDir);

/// A coordinator and one worker with the embedded model (or the pipeline folder `model`), on loopback;
/// returns once the worker has registered.
async fn start_farm(model: Option<PathBuf>) -> anyhow::Result<Farm> {
    let shutdown = CancellationToken::new();
    let data = tempfile::tempdir()?;
    let config = CoordinatorConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let mut tasks = Vec::new();
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = patchwork_coordinator::run(config, listener, stop).await {
            eprintln!("coordinator: {e}");
        }
    }));
    let engine: Arc<dyn Evaluator> = Arc::new(
        tokio::task::spawn_blocking(move || {
            let source = match model {
                Some(path) => ModelSource::Dir { path, name: Some("tiny".into()) },
                None => ModelSource::Tiny,
            };
            Engine::load(&source, candle_core::DType::F32, &candle_core::Device::Cpu)
        })
        .await??,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = WorkerConfig {
        coordinator: address.clone(),
        etcd: None,
        advertise: None,
        capacity: 1,
        devices: vec!["cpu".into()],
        api_token: Default::default(),
    };
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = patchwork_worker::run::run(config, engine, listener, stop).await {
            eprintln!("worker: {e}");
        }
    }));
    let channel = tonic::transport::Endpoint::from_shared(address)?.connect().await?;
    let mut client = RenderServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get_cluster_state(pb::GetClusterStateRequest {}).await?.into_inner().workers.is_empty() {
        if Instant::now() > deadline {
            bail!("the worker did not register in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((client, shutdown, tasks, data))
}

/// Submits a job, waits for it and returns its MP4.
async fn render(client: &mut RenderServiceClient<Channel>, spec: pb::JobSpec) -> anyhow::Result<Vec<u8>> {
    let job = client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec), request_id: String::new() })
        .await?
        .into_inner()
        .job
        .context("no job")?;
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: job.id.clone() }).await?.into_inner();
    while let Some(snapshot) = stream.message().await? {
        match pb::JobState::try_from(snapshot.state) {
            Ok(pb::JobState::Done) => break,
            Ok(pb::JobState::Failed | pb::JobState::Cancelled) => bail!("job {} ended: {}", job.id, snapshot.error),
            _ => {}
        }
    }
    let mut chunks = client.fetch_video(pb::FetchVideoRequest { job_id: job.id }).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}
