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

mod bytes;
mod overhead;
mod scaling;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use patchwork_coordinator::runner::plan;
use patchwork_coordinator::CoordinatorConfig;
use patchwork_shared::model::ModelGeometry;
use patchwork_shared::pb::{self, render_service_client::RenderServiceClient};
use patchwork_shared::spec::JobSpec;
use patchwork_shared::windows::WindowPlan;
use patchwork_worker::engine::{Evaluator, LoadTest};
use patchwork_worker::run::WorkerConfig;
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
                "overhead" => overhead::run(&o).await?,
                "bytes" => bytes::run().await?,
                _ => scaling::run(&o).await?,
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
            let config = WorkerConfig {
                coordinator: address.clone(),
                etcd: None,
                advertise,
                capacity: 1,
                devices: vec!["cpu".into()],
                api_token: Default::default(),
            };
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
