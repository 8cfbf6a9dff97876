//! Farm benchmarks: what the coordinator costs per step, the bytes a step moves, and how the control plane
//! scales with workers. A coordinator and its workers run in this process on loopback ports and are driven
//! through the client API, the way `patchwork render` does; no coordinator code is changed or hooked.
//!
//!   farm [overhead] [bytes] [scaling] [--steps N] [--delay-ms N] [--workers 1,4,16,64]
//!
//! No part named runs all three; each prints a markdown table. `tools/bench/farm.sh` builds and runs it.
//!
//! - overhead: one job (33 frames of 128x128, windows of 17 frames overlapping by 4: 18 windows) on one
//!   worker with the real tiny model, then on zero-delay load-test workers (one, and one per window). A step
//!   on zero-delay workers is the coordinator's cost plus gRPC; it is reported as a share of the real step.
//!   A second table times the coordinator's own per-step CPU work (what `runner.rs` does between
//!   dispatches) directly with the same library calls, for that job and for the 1.3B shape.
//! - bytes: per window and step, the f32 payload each way, the protobuf message size (computed with
//!   prost's `encoded_len` on a request built like the runner's) and, for the tiny job, the bytes measured
//!   on the wire through a counting TCP proxy in front of the worker: (bytes of a 3-step job - bytes of a
//!   1-step job) / 2 steps / windows, so connection set-up and decoding cancel out.
//! - scaling: 1, 4, 16, 64 load-test workers (capacity 1, fixed delay) on a 64-window job. Step times come
//!   from `WatchJob` progress; the first step (connection set-up) is left out and the job is cancelled
//!   once denoising ends. Efficiency = ideal / measured, ideal = steps x ceil(windows / workers) x delay.
//!   The workers' evaluator records when each evaluation starts and ends, which splits the overhead into
//!   the idle time between steps and the time until every worker is busy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use patchwork_coordinator::runner::plan;
use patchwork_coordinator::store::JobStore;
use patchwork_coordinator::CoordinatorConfig;
use patchwork_shared::model::ModelGeometry;
use patchwork_shared::noise::gaussian_noise;
use patchwork_shared::pb::{self, render_service_client::RenderServiceClient};
use patchwork_shared::sampler::{FlowSampler, Sampler};
use patchwork_shared::spec::JobSpec;
use patchwork_shared::windows::{extract, Fusion, WindowPlan};
use patchwork_shared::wire;
use patchwork_worker::engine::{DecodeInput, DenoiseInput, Engine, Evaluator, Frames, LoadTest, ModelSource};
use patchwork_worker::model::ModelError;
use patchwork_worker::run::WorkerConfig;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const PROMPT: &str = "a lighthouse on a rocky cliff at dusk, waves breaking below, slow aerial pan";

struct Options {
    parts: Vec<String>,
    steps: usize,
    delay: Duration,
    workers: Vec<usize>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { parts: Vec::new(), steps: 6, delay: Duration::from_millis(50), workers: vec![1, 4, 16, 64] };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--steps" => o.steps = value("--steps")?.parse()?,
            "--delay-ms" => o.delay = Duration::from_millis(value("--delay-ms")?.parse()?),
            "--workers" => {
                o.workers = value("--workers")?.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            // `cargo bench` passes --bench to harness-less benches.
            "--bench" => {}
            "overhead" | "bytes" | "scaling" => o.parts.push(arg),
            other => bail!(
                "unknown argument {other:?} (parts: overhead, bytes, scaling; flags: --steps, --delay-ms, --workers)"
            ),
        }
    }
    if o.parts.is_empty() {
        o.parts = vec!["overhead".into(), "bytes".into(), "scaling".into()];
    }
    if o.steps < 2 {
        bail!("--steps must be at least 2 (the first step is timed apart)");
    }
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        for part in &o.parts {
            match part.as_str() {
                "overhead" => overhead(&o).await?,
                "bytes" => bytes().await?,
                _ => scaling(&o).await?,
            }
        }
        anyhow::Ok(())
    })?;
    println!("\n{cores} cores; one process (coordinator, workers and client share them)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Jobs

/// A job spec on the tiny model: `frames` of `side`x`side`, windows of 17 frames overlapping by 4.
fn tiny_spec(frames: u32, side: u32, steps: usize) -> pb::JobSpec {
    pb::JobSpec {
        prompt: PROMPT.into(),
        frames: Some(frames),
        width: Some(side),
        height: Some(side),
        steps: Some(steps as u32),
        window_frames: Some(17),
        overlap_frames: Some(4),
        seed: Some(7),
        model: "tiny".into(),
        ..Default::default()
    }
}

/// The coordinator's plan for a spec (the same function the runner calls).
fn planned(spec: &pb::JobSpec, g: &ModelGeometry) -> anyhow::Result<(JobSpec, WindowPlan)> {
    let spec = JobSpec::validate(spec, g, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = plan(&spec, g).map_err(|e| anyhow::anyhow!(e))?;
    Ok((spec, plan))
}

/// When a job's denoising steps were seen to end.
struct Timing {
    /// When the windows were planned (the runner's first progress update, just before step 1).
    planned: Instant,
    /// When each step was seen done.
    steps: Vec<Instant>,
}

impl Timing {
    fn first_step(&self) -> Duration {
        self.steps[0] - self.planned
    }

    /// Mean time of steps 2..=S.
    fn steady_step(&self) -> Duration {
        (self.steps[self.steps.len() - 1] - self.steps[0]) / (self.steps.len() as u32 - 1)
    }
}

/// Submits `spec` and follows it; cancels it once denoising ends when `stop_after_denoising`, else waits
/// for it to finish (DONE).
async fn run_job(
    client: &mut RenderServiceClient<Channel>,
    spec: pb::JobSpec,
    stop_after_denoising: bool,
) -> anyhow::Result<Timing> {
    let steps = spec.steps.unwrap_or(0) as usize;
    let job = client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec), request_id: String::new() })
        .await?
        .into_inner()
        .job
        .context("no job")?;
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: job.id.clone() }).await?.into_inner();
    let (mut planned, mut done, mut cancelled) = (None, Vec::new(), false);
    while let Some(snapshot) = stream.message().await? {
        let now = Instant::now();
        let progress = snapshot.progress.unwrap_or_default();
        if planned.is_none() && !progress.windows.is_empty() {
            planned = Some(now);
        }
        while done.len() < progress.step as usize {
            done.push(now);
        }
        if stop_after_denoising && done.len() == steps && !cancelled {
            client.cancel_job(pb::CancelJobRequest { job_id: job.id.clone() }).await?;
            cancelled = true;
        }
        match pb::JobState::try_from(snapshot.state) {
            Ok(pb::JobState::Failed) => bail!("job {} failed: {}", job.id, snapshot.error),
            Ok(pb::JobState::Done | pb::JobState::Cancelled) => break,
            _ => {}
        }
    }
    if done.len() != steps {
        bail!("job {} ended after {} of {steps} steps", job.id, done.len());
    }
    Ok(Timing { planned: planned.context("no plan seen")?, steps: done })
}

// ---------------------------------------------------------------------------------------------------------
// An in-process farm

/// Bytes through a proxy, each way.
#[derive(Default)]
struct Traffic {
    to_worker: AtomicU64,
    from_worker: AtomicU64,
}

struct Farm {
    client: RenderServiceClient<Channel>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl Farm {
    /// A coordinator and one worker (capacity 1) per evaluator; with `traffic`, the coordinator reaches every
    /// worker through a counting proxy. Returns once every worker has registered.
    async fn start(evaluators: Vec<Arc<dyn Evaluator>>, traffic: Option<Arc<Traffic>>) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let data = tempfile::tempdir()?;
        let config = CoordinatorConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
        let listener = bind()?;
        let address = format!("http://{}", listener.local_addr()?);
        let mut tasks = Vec::new();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = patchwork_coordinator::run(config, listener, stop).await {
                eprintln!("coordinator: {e}");
            }
        }));
        let count = evaluators.len();
        for evaluator in evaluators {
            let listener = bind()?;
            let advertise = match &traffic {
                Some(traffic) => {
                    let front = TcpListener::bind("127.0.0.1:0").await?;
                    let front_address = format!("http://{}", front.local_addr()?);
                    tasks.push(tokio::spawn(proxy(front, listener.local_addr()?, traffic.clone(), shutdown.clone())));
                    Some(front_address)
                }
                None => None,
            };
            let config =
                WorkerConfig { coordinator: address.clone(), advertise, capacity: 1, devices: vec!["cpu".into()] };
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = patchwork_worker::run::run(config, evaluator, listener, stop).await {
                    eprintln!("worker: {e}");
                }
            }));
        }
        let channel = tonic::transport::Endpoint::from_shared(address)?.connect().await?;
        let mut client = RenderServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = client.get_cluster_state(pb::GetClusterStateRequest {}).await?.into_inner();
            if state.workers.len() == count {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} of {count} workers registered in 30 s", state.workers.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { client, shutdown, tasks, _data: data })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A loopback listener on a free port.
fn bind() -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(1024)
}

/// Forwards connections from `front` to `target`, counting the bytes each way.
async fn proxy(front: TcpListener, target: SocketAddr, traffic: Arc<Traffic>, shutdown: CancellationToken) {
    loop {
        let inbound = tokio::select! {
            accepted = front.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let traffic = traffic.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
            let (mut in_read, mut in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            let up = pump(&mut in_read, &mut out_write, &traffic.to_worker);
            let down = pump(&mut out_read, &mut in_write, &traffic.from_worker);
            let _ = tokio::join!(up, down);
        });
    }
}

async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    count: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn load_test(workers: usize, delay: Duration) -> Vec<Arc<dyn Evaluator>> {
    (0..workers).map(|_| Arc::new(LoadTest::new(ModelGeometry::tiny(), delay)) as Arc<dyn Evaluator>).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Part 1: coordinator overhead per step

async fn overhead(o: &Options) -> anyhow::Result<()> {
    let spec = tiny_spec(33, 128, o.steps);
    let g = ModelGeometry::tiny();
    let windows = planned(&spec, &g)?.1.len();
    eprintln!("overhead: loading the tiny model");
    let engine: Arc<dyn Evaluator> =
        Arc::new(tokio::task::spawn_blocking(|| Engine::load(&ModelSource::Tiny, DType::F32, &Device::Cpu)).await??);
    let mut rows = Vec::new();
    let runs: Vec<(String, Vec<Arc<dyn Evaluator>>)> = vec![
        ("tiny model (real)".into(), vec![engine.clone()]),
        ("load test, 0 ms".into(), load_test(1, Duration::ZERO)),
        ("load test, 0 ms".into(), load_test(windows, Duration::ZERO)),
    ];
    let mut real = None;
    for (name, evaluators) in runs {
        let workers = evaluators.len();
        eprintln!("overhead: {name}, {workers} workers");
        let mut farm = Farm::start(evaluators, None).await?;
        let timing = run_job(&mut farm.client, spec.clone(), true).await;
        farm.stop().await;
        let timing = timing?;
        let step = timing.steady_step();
        let real_step = *real.get_or_insert(step);
        rows.push(vec![
            name,
            workers.to_string(),
            ms(timing.first_step()),
            ms(step),
            format!("{:.1}%", 100.0 * step.as_secs_f64() / real_step.as_secs_f64()),
        ]);
    }
    println!("\n### Coordinator overhead per step (tiny job 33x128x128, {windows} windows, {} steps)\n", o.steps);
    table(&["evaluator", "workers", "step 1 (ms)", "steps 2.. mean (ms)", "share of the real step"], &rows);

    let mut rows = Vec::new();
    let jobs = [
        ("tiny 33x128x128", tiny_spec(33, 128, o.steps), ModelGeometry::tiny()),
        ("tiny 65x208x208 (scaling job)", tiny_spec(65, 208, o.steps), ModelGeometry::tiny()),
        ("1.3B 81x480x832", wan_spec(81), ModelGeometry::wan2_1_t2v_1_3b()),
        ("1.3B 161x480x832", wan_spec(161), ModelGeometry::wan2_1_t2v_1_3b()),
    ];
    for (name, spec, g) in jobs {
        eprintln!("overhead: coordinator work for {name}");
        let (spec, plan) = planned(&spec, &g)?;
        let work = tokio::task::spawn_blocking(move || coordinator_work(&spec, &plan)).await??;
        let total: Duration = work.parts.iter().sum();
        let mut row = vec![name.to_string(), work.windows.to_string(), work.values.to_string()];
        row.extend(work.parts.iter().map(|&d| ms(d)));
        row.push(ms(total));
        rows.push(row);
    }
    println!("\n### Coordinator CPU work per step, timed in-process (median of repeats; no gRPC)\n");
    table(
        &[
            "job",
            "windows",
            "latent values",
            "extract + encode + clone (ms)",
            "decode answers (ms)",
            "fuse (ms)",
            "sampler (ms)",
            "store updates (ms)",
            "total (ms)",
        ],
        &rows,
    );
    Ok(())
}

fn wan_spec(frames: u32) -> pb::JobSpec {
    pb::JobSpec {
        prompt: PROMPT.into(),
        frames: Some(frames),
        width: Some(832),
        height: Some(480),
        steps: Some(50),
        window_frames: Some(81),
        seed: Some(7),
        model: "wan2.1-t2v-1.3b".into(),
        ..Default::default()
    }
}

struct Work {
    windows: usize,
    values: usize,
    /// Extract + encode + clone, decode, fuse, sampler, store updates.
    parts: [Duration; 5],
}

/// The coordinator's work in one step, done as `runner.rs` does it, timed piece by piece: each window's
/// slice is extracted and encoded into a request (which the dispatch closure clones), each answer is
/// decoded and checked, the outputs are fused, the sampler steps on candle tensors, and the job store is
/// updated twice per window (dispatch, done) and once per step, each update cloning the job for watchers.
fn coordinator_work(spec: &JobSpec, plan: &WindowPlan) -> anyhow::Result<Work> {
    let shape = plan.shape;
    let latent = gaussian_noise(spec.seed, shape.len());
    let fusion = Fusion::new(plan);
    // What workers answer, encoded outside the timing (workers do that).
    let answers: Vec<pb::DenoiseResponse> = plan
        .windows
        .iter()
        .map(|w| {
            let dims = w.bbox.latent_shape(shape.channels).dims();
            pb::DenoiseResponse {
                fence: None,
                output: Some(wire::f32_tensor(&dims, &extract(&latent, shape, &w.bbox))),
            }
        })
        .collect();
    let store = JobStore::new(10);
    let id = "0123456789abcdef".to_string();
    store.submit(id.clone(), spec.clone(), "").map_err(|e| anyhow::anyhow!("{e}"))?;
    store.update(&id, |j| {
        j.progress.get_or_insert_with(Default::default).windows =
            (0..plan.len()).map(|i| pb::WindowProgress { index: i as u32, ..Default::default() }).collect();
    });
    let mut sampler = FlowSampler::new(spec.sampler, 50, spec.shift)?;
    let mut samples: Vec<[Duration; 5]> = Vec::new();
    let budget = Instant::now();
    while samples.len() < 3 || (samples.len() < 15 && budget.elapsed() < Duration::from_secs(3)) {
        let mut parts = [Duration::ZERO; 5];
        let t = Instant::now();
        let mut sent = 0;
        for w in &plan.windows {
            let slice = extract(&latent, shape, &w.bbox);
            let dims = w.bbox.latent_shape(shape.channels).dims();
            let request = pb::DenoiseRequest {
                fence: None,
                latent: Some(wire::f32_tensor(&dims, &slice)),
                timestep: 999.0,
                prompt: PROMPT.into(),
                negative_prompt: String::new(),
                guidance_scale: 5.0,
            };
            let copy = request.clone();
            sent += copy.latent.map_or(0, |l| l.data.len());
        }
        parts[0] = t.elapsed();
        let t = Instant::now();
        let mut outputs = Vec::with_capacity(answers.len());
        for (w, answer) in plan.windows.iter().zip(&answers) {
            let dims = w.bbox.latent_shape(shape.channels).dims();
            outputs.push(wire::read_f32("output", answer.output.as_ref(), Some(&dims))?.1);
        }
        parts[1] = t.elapsed();
        let t = Instant::now();
        let refs: Vec<&[f32]> = outputs.iter().map(Vec::as_slice).collect();
        let velocity = fusion.fuse(&refs)?;
        parts[2] = t.elapsed();
        let t = Instant::now();
        let dims = shape.dims();
        let v = Tensor::from_vec(velocity, dims.as_slice(), &Device::Cpu)?;
        let x = Tensor::from_slice(latent.as_slice(), dims.as_slice(), &Device::Cpu)?;
        let next = sampler.step(&v, &x)?.flatten_all()?.to_vec1::<f32>()?;
        parts[3] = t.elapsed();
        let t = Instant::now();
        for index in 0..plan.len() {
            for worker in ["w1", ""] {
                store.update(&id, |j| {
                    if let Some(w) = j.progress.as_mut().and_then(|p| p.windows.get_mut(index)) {
                        w.worker = worker.to_string();
                    }
                });
            }
        }
        store.update(&id, |j| j.progress.get_or_insert_with(Default::default).step += 1);
        parts[4] = t.elapsed();
        anyhow::ensure!(next.len() == latent.len() && sent > 0, "lost values");
        samples.push(parts);
    }
    let median = |i: usize| {
        let mut v: Vec<Duration> = samples.iter().map(|s| s[i]).collect();
        v.sort();
        v[v.len() / 2]
    };
    Ok(Work { windows: plan.len(), values: shape.len(), parts: [0, 1, 2, 3, 4].map(median) })
}

// ---------------------------------------------------------------------------------------------------------
// Part 2: bytes per step per window

async fn bytes() -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let jobs = [
        ("tiny 33x128x128", tiny_spec(33, 128, 3), ModelGeometry::tiny()),
        ("tiny 65x208x208 (scaling job)", tiny_spec(65, 208, 3), ModelGeometry::tiny()),
        ("1.3B 81x480x832", wan_spec(81), ModelGeometry::wan2_1_t2v_1_3b()),
        ("1.3B 161x480x832", wan_spec(161), ModelGeometry::wan2_1_t2v_1_3b()),
    ];
    for (index, (name, spec, g)) in jobs.into_iter().enumerate() {
        let (valid, plan) = planned(&spec, &g)?;
        let shape = plan.shape;
        let windows = plan.len();
        let (mut payload, mut request, mut response) = (0, 0, 0);
        let mut dims_seen = Vec::new();
        for w in &plan.windows {
            let dims = w.bbox.latent_shape(shape.channels).dims();
            let values = vec![0.5f32; dims.iter().product()];
            let fence = pb::Fence {
                term: 0,
                job_id: "0123456789abcdef".into(),
                step: valid.steps as u32 - 1,
                window: w.index as u32,
                attempt: 0,
            };
            let tensor = wire::f32_tensor(&dims, &values);
            payload += tensor.data.len();
            request += pb::DenoiseRequest {
                fence: Some(fence.clone()),
                latent: Some(tensor.clone()),
                timestep: 999.0,
                prompt: valid.segments[0].prompt.clone(),
                negative_prompt: valid.negative_prompt.clone(),
                guidance_scale: valid.guidance_scale as f32,
            }
            .encoded_len();
            response += pb::DenoiseResponse { fence: Some(fence), output: Some(tensor) }.encoded_len();
            let text = format!("{}x{}x{}x{}", dims[0], dims[1], dims[2], dims[3]);
            if !dims_seen.contains(&text) {
                dims_seen.push(text);
            }
        }
        // Measured on the tiny job only: the other shapes would need that model's worker.
        let measured = if index == 0 {
            eprintln!("bytes: measuring {name} through a proxy");
            let one = traffic_of(tiny_spec(33, 128, 1)).await?;
            let three = traffic_of(tiny_spec(33, 128, 3)).await?;
            let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 2.0 / windows as f64;
            format!("{:.0} / {:.0}", per(one.0, three.0), per(one.1, three.1))
        } else {
            "-".to_string()
        };
        let avg = |n: usize| format!("{:.0}", n as f64 / windows as f64);
        rows.push(vec![
            name.to_string(),
            windows.to_string(),
            dims_seen.join(", "),
            avg(payload),
            avg(request),
            avg(response),
            measured,
            mib(request + response),
        ]);
    }
    println!("\n### Bytes per denoising step (per window, averaged over the plan's windows)\n");
    table(
        &[
            "job",
            "windows",
            "window latent",
            "f32 payload each way (B)",
            "request, computed (B)",
            "response, computed (B)",
            "measured on the wire, to / from worker (B)",
            "whole step, computed (MiB)",
        ],
        &rows,
    );
    Ok(())
}

/// Bytes each way between coordinator and a zero-delay worker for a whole job.
async fn traffic_of(spec: pb::JobSpec) -> anyhow::Result<(u64, u64)> {
    let traffic = Arc::new(Traffic::default());
    let mut farm = Farm::start(load_test(1, Duration::ZERO), Some(traffic.clone())).await?;
    let result = run_job(&mut farm.client, spec, false).await;
    let counted = (traffic.to_worker.load(Ordering::Relaxed), traffic.from_worker.load(Ordering::Relaxed));
    farm.stop().await;
    result?;
    Ok(counted)
}

// ---------------------------------------------------------------------------------------------------------
// Part 3: control-plane scaling

async fn scaling(o: &Options) -> anyhow::Result<()> {
    let spec = tiny_spec(65, 208, o.steps);
    let windows = planned(&spec, &ModelGeometry::tiny())?.1.len();
    let mut rows = Vec::new();
    for &workers in &o.workers {
        eprintln!("scaling: {workers} workers");
        let log = Arc::new(Mutex::new(Vec::new()));
        let evaluators = (0..workers)
            .map(|_| {
                let inner = LoadTest::new(ModelGeometry::tiny(), o.delay);
                Arc::new(Recorded { inner, log: log.clone() }) as Arc<dyn Evaluator>
            })
            .collect();
        let mut farm = Farm::start(evaluators, None).await?;
        let timing = run_job(&mut farm.client, spec.clone(), true).await;
        farm.stop().await;
        let timing = timing?;
        let timed = o.steps - 1;
        let measured = timing.steady_step() * timed as u32;
        let ideal = o.delay * (timed * windows.div_ceil(workers)) as u32;
        let (gap, fill) = breakdown(&log.lock().unwrap_or_else(|p| p.into_inner()), windows, workers);
        rows.push(vec![
            workers.to_string(),
            ms(timing.first_step()),
            format!("{timed} x {}", ms(timing.steady_step())),
            ms(ideal),
            ms(measured),
            format!("{:.3}", ideal.as_secs_f64() / measured.as_secs_f64()),
            ms(measured.saturating_sub(ideal) / timed as u32),
            ms(gap),
            ms(fill),
        ]);
    }
    println!(
        "\n### Control-plane scaling (load-test workers, capacity 1, {} ms per evaluation; job 65x208x208, \
         {windows} windows, {} steps, step 1 not counted)\n",
        o.delay.as_millis(),
        o.steps
    );
    table(
        &[
            "workers",
            "step 1 (ms)",
            "steps timed x mean (ms)",
            "ideal (ms)",
            "measured (ms)",
            "efficiency",
            "overhead per step (ms)",
            "idle between steps (ms)",
            "until all workers busy (ms)",
        ],
        &rows,
    );
    Ok(())
}

/// A load-test evaluator that records when each denoise evaluation starts and ends, as the workers see it.
struct Recorded {
    inner: LoadTest,
    log: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

impl Evaluator for Recorded {
    fn geometry(&self) -> &ModelGeometry {
        self.inner.geometry()
    }

    fn denoise(&self, input: &DenoiseInput) -> Result<Vec<f32>, ModelError> {
        let start = Instant::now();
        let output = self.inner.denoise(input);
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((start, Instant::now()));
        output
    }

    fn decode(&self, input: &DecodeInput) -> Result<Frames, ModelError> {
        self.inner.decode(input)
    }
}

/// From the evaluations' (start, end) times, means over steps 2.. of: the time no worker evaluates between
/// the last evaluation of a step and the first of the next (answers travel back, fusion, sampler, the next
/// requests travel out), and the time from a step's first evaluation until `workers` of them have started.
fn breakdown(log: &[(Instant, Instant)], windows: usize, workers: usize) -> (Duration, Duration) {
    let mut log = log.to_vec();
    log.sort();
    let steps: Vec<&[(Instant, Instant)]> = log.chunks_exact(windows).collect();
    let (mut gap, mut fill) = (Duration::ZERO, Duration::ZERO);
    for pair in steps.windows(2) {
        let last_end = pair[0].iter().map(|e| e.1).max().unwrap_or(pair[0][0].1);
        gap += pair[1][0].0.saturating_duration_since(last_end);
        fill += pair[1][workers.min(windows) - 1].0 - pair[1][0].0;
    }
    let n = (steps.len().max(2) - 1) as u32;
    (gap / n, fill / n)
}

// ---------------------------------------------------------------------------------------------------------
// Printing

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn mib(bytes: usize) -> String {
    format!("{:.2}", bytes as f64 / (1u64 << 20) as f64)
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", headers.join(" | "));
    println!("|{}", " --- |".repeat(headers.len()));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}
