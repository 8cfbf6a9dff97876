//! Real processes on loopback ports: a coordinator and workers started from the `patchwork` binary, and a
//! gRPC client to drive them. Every wait has a deadline, and every process is killed when its handle drops.

#![allow(dead_code)]

pub mod etcd;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use patchwork_shared::pb::{self, render_service_client::RenderServiceClient};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_patchwork");

/// A child process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub address: String,
    /// The lines it printed after the first.
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it prints on stdout (after the first, which gave its address).
    pub fn next_line(&self) -> String {
        self.lines.recv_timeout(Duration::from_secs(60)).expect("patchwork printed no further line")
    }

    /// The address an HTTP listener reports on its own line (`... on http://ADDR`).
    pub fn http_address(&self) -> String {
        let line = self.next_line();
        let address = line.rsplit(' ').next().unwrap_or_default();
        assert!(address.starts_with("http://"), "not an HTTP address line: {line:?}");
        address.trim_start_matches("http://").to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `patchwork ARGS` and waits for the "... listening on ADDR" line it prints first.
pub fn spawn_listening(args: &[&str]) -> Proc {
    spawn_logged(args, None)
}

/// Like [`spawn_listening`], with the log (stderr, at `info`) written to `log` when given.
pub fn spawn_logged(args: &[&str], log: Option<&Path>) -> Proc {
    let (stderr, level) = match log {
        Some(path) => (Stdio::from(std::fs::File::create(path).expect("creating the log file")), "info"),
        None => (Stdio::inherit(), "warn"),
    };
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", level)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting patchwork");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Every line is passed on (nobody may read them); draining keeps the child from blocking on a
        // full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("patchwork {args:?} did not report its address");
    });
    let address = line.rsplit(' ').next().unwrap_or_default().to_string();
    Proc { child, address: format!("http://{address}"), lines: rx }
}

/// A coordinator with quick heartbeats and its data in `data_dir`; `extra` flags are appended.
pub fn coordinator(data_dir: &Path, extra: &[&str]) -> Proc {
    let data = data_dir.to_str().expect("utf-8 path");
    let mut args = vec!["coordinator", "--listen", "127.0.0.1:0", "--data-dir", data, "--heartbeat", "300ms"];
    args.extend_from_slice(extra);
    spawn_listening(&args)
}

/// A worker with the embedded tiny model, registered with `coordinator`.
pub fn worker(coordinator: &Proc, extra: &[&str]) -> Proc {
    let mut args = vec!["worker", "--coordinator", coordinator.address.as_str(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    spawn_listening(&args)
}

pub async fn client(coordinator: &Proc) -> RenderServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match RenderServiceClient::connect(coordinator.address.clone()).await {
            Ok(client) => return client.max_decoding_message_size(64 << 20),
            Err(e) if Instant::now() > deadline => panic!("cannot reach the coordinator: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until the cluster has exactly `n` workers, all idle.
pub async fn wait_for_workers(client: &mut RenderServiceClient<Channel>, n: usize) -> pb::ClusterState {
    wait_until(Duration::from_secs(60), "workers to register", || {
        let mut client = client.clone();
        async move {
            let state = client.get_cluster_state(pb::GetClusterStateRequest {}).await.ok()?.into_inner();
            let idle = state.workers.iter().all(|w| w.status == pb::WorkerStatus::Idle as i32);
            (state.workers.len() == n && idle).then_some(state)
        }
    })
    .await
}

/// Polls `check` every 50 ms until it returns something, or panics after `limit`.
pub async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn submit(client: &mut RenderServiceClient<Channel>, spec: pb::JobSpec) -> pb::Job {
    client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec), request_id: String::new() })
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("a job")
}

/// Follows a job until it ends; calls `on_update` with every snapshot.
pub async fn follow(
    client: &mut RenderServiceClient<Channel>,
    job_id: &str,
    limit: Duration,
    mut on_update: impl FnMut(&pb::Job),
) -> pb::Job {
    let watch = async {
        let mut stream =
            client.watch_job(pb::WatchJobRequest { job_id: job_id.into() }).await.expect("watch").into_inner();
        let mut last = None;
        while let Some(job) = stream.message().await.expect("watch stream") {
            on_update(&job);
            last = Some(job);
        }
        last.expect("at least one state")
    };
    tokio::time::timeout(limit, watch).await.unwrap_or_else(|_| panic!("job {job_id} did not end within {limit:?}"))
}

pub async fn fetch(client: &mut RenderServiceClient<Channel>, job_id: &str) -> Vec<u8> {
    let mut stream =
        client.fetch_video(pb::FetchVideoRequest { job_id: job_id.into() }).await.expect("fetch").into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.expect("fetch stream") {
        assert_eq!(chunk.offset as usize, bytes.len());
        bytes.extend_from_slice(&chunk.data);
    }
    bytes
}

/// A job of several windows for the tiny model: 33 frames (9 latent) in windows of 13 (4 latent) with 4
/// shared (1 latent), at 128x64 (three tiles across), so 3 x 1 x 3 = 9 windows.
pub fn several_windows(steps: u32) -> pb::JobSpec {
    pb::JobSpec {
        prompt: "a red circle moving right".into(),
        frames: Some(33),
        width: Some(128),
        height: Some(64),
        fps: Some(12),
        steps: Some(steps),
        seed: Some(1234),
        window_frames: Some(13),
        overlap_frames: Some(4),
        ..Default::default()
    }
}

/// The grpc.health.v1 status of `service` at `address` (1 SERVING, 2 NOT_SERVING), or the error.
pub async fn health(address: &str, service: &str) -> Result<i32, String> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(address.to_string())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let request = HealthCheckRequest { service: service.into() };
    let answer = HealthClient::new(channel).check(request).await.map_err(|e| e.to_string())?;
    Ok(answer.into_inner().status)
}
