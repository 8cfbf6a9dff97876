//! Client commands against a running coordinator: submit, watch, cancel, jobs, status, fetch.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use patchwork_shared::auth::SendToken;
use patchwork_shared::pb::{self, render_service_client::RenderServiceClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The coordinator's address; in cluster mode a comma-separated list of coordinators may be given
    /// (reads go to the first that answers, writes to the leader).
    #[arg(long, env = "PATCHWORK_COORDINATOR", default_value = "http://127.0.0.1:7600")]
    pub coordinator: String,
    /// The coordinator's API token, if it was started with one.
    #[arg(long, env = "PATCHWORK_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

/// A client of the render API that sends the API token, if any.
pub type Client = RenderServiceClient<InterceptedService<Channel, SendToken>>;

async fn connect_one(address: &str, token: &SendToken) -> anyhow::Result<Client> {
    let channel = tonic::transport::Endpoint::from_shared(address.to_string())
        .with_context(|| format!("coordinator address {address:?}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to the coordinator at {address}"))?;
    Ok(RenderServiceClient::with_interceptor(channel, token.clone()).max_decoding_message_size(64 << 20))
}

/// The first coordinator of a comma-separated list that accepts a connection.
pub async fn connect(addresses: &str, token: Option<&str>) -> anyhow::Result<Client> {
    let token = SendToken::new(token).map_err(anyhow::Error::msg)?;
    let mut last = None;
    for address in addresses.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match connect_one(address, &token).await {
            Ok(client) => return Ok(client),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("--coordinator: no address given")))
}

/// The leading coordinator, for writes: any coordinator says who leads (a follower refuses writes). Waits
/// up to 30 s while an election is under way.
pub async fn connect_leader(addresses: &str, token: Option<&str>) -> anyhow::Result<Client> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut client = connect(addresses, token).await?;
        let state = client.get_cluster_state(pb::GetClusterStateRequest {}).await.map_err(status_error)?.into_inner();
        match state.role.as_str() {
            "follower" if !state.leader.is_empty() => {
                return connect_one(&state.leader, &SendToken::new(token).map_err(anyhow::Error::msg)?).await
            }
            "follower" if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            "follower" => anyhow::bail!("no coordinator leads the cluster (no leader elected within 30 s)"),
            _ => return Ok(client),
        }
    }
}

/// A gRPC error as one line: the code and the server's message.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

pub use patchwork_shared::json::{cluster_json, state_name, worker_status};

/// Follows a job to its end with a progress bar (or plain lines when `quiet_bar`), and returns its last
/// state.
pub async fn follow(client: &mut Client, job_id: &str, show_bar: bool) -> anyhow::Result<pb::Job> {
    let mut stream =
        client.watch_job(pb::WatchJobRequest { job_id: job_id.to_string() }).await.map_err(status_error)?.into_inner();
    let bar = if show_bar { ProgressBar::new(1) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last = None;
    while let Some(job) = stream.message().await.map_err(status_error)? {
        let progress = job.progress.clone().unwrap_or_default();
        bar.set_length((progress.steps + progress.decode_chunks.max(1)) as u64);
        bar.set_position((progress.step + progress.decoded_chunks) as u64);
        let busy = progress.windows.iter().filter(|w| !w.worker.is_empty()).count();
        bar.set_message(format!(
            "{} | step {}/{} | {} windows, {busy} in flight | decoded {}/{}",
            state_name(job.state),
            progress.step,
            progress.steps,
            progress.windows.len(),
            progress.decoded_chunks,
            progress.decode_chunks
        ));
        last = Some(job);
    }
    bar.finish_and_clear();
    last.ok_or_else(|| anyhow::anyhow!("the coordinator ended the watch of job {job_id} without a state"))
}

/// Streams a finished job's video into `path` (through a temporary file beside it).
pub async fn fetch_to(client: &mut Client, job_id: &str, path: &Path) -> anyhow::Result<u64> {
    let mut stream = client
        .fetch_video(pb::FetchVideoRequest { job_id: job_id.to_string() })
        .await
        .map_err(status_error)?
        .into_inner();
    let tmp = path.with_extension("part");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut written = 0u64;
    let mut total = None;
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        if chunk.offset != written {
            anyhow::bail!("video stream skipped from byte {written} to {}", chunk.offset);
        }
        file.write_all(&chunk.data).with_context(|| format!("writing {}", tmp.display()))?;
        written += chunk.data.len() as u64;
        total = Some(chunk.total_bytes);
    }
    if total.is_some_and(|t| t != written) {
        anyhow::bail!("video stream ended after {written} of {} bytes", total.unwrap_or(0));
    }
    file.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(written)
}

/// Writes `text` to standard output. A reader that has gone away (`| head`) is not an error of the
/// command: the answer is then `false`, so that a command that follows something can stop.
pub fn print_out(text: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

/// `patchwork jobs`'s table.
pub fn jobs_table(jobs: &[pb::Job]) -> String {
    let mut out = format!("{:<18} {:<17} {:>9} {:>7} {:>9}  PROMPT\n", "ID", "STATE", "STEP", "FRAMES", "SIZE");
    for job in jobs {
        let spec = job.spec.clone().unwrap_or_default();
        let progress = job.progress.clone().unwrap_or_default();
        let prompt = if spec.prompt.is_empty() {
            spec.schedule
                .first()
                .map(|s| format!("{} (+{} more)", s.prompt, spec.schedule.len() - 1))
                .unwrap_or_default()
        } else {
            spec.prompt.clone()
        };
        let prompt: String = prompt.chars().take(60).collect();
        out += &format!(
            "{:<18} {:<17} {:>9} {:>7} {:>9}  {prompt}\n",
            job.id,
            state_name(job.state),
            format!("{}/{}", progress.step, progress.steps),
            spec.frames.unwrap_or(0),
            format!("{}x{}", spec.width.unwrap_or(0), spec.height.unwrap_or(0)),
        );
    }
    out
}

/// `patchwork status`: the cluster once, or (`--watch`) at every change; as a table or JSON.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the cluster as JSON (with `--watch`: one JSON object per line, at every change).
    #[arg(long)]
    pub json: bool,
    /// Keep following the cluster and show it again at every change, until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// Runs `patchwork status`.
pub async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client.coordinator, args.client.api_token.as_deref()).await?;
    let show = |state: &pb::ClusterState, redraw: bool| {
        let text = if args.json {
            format!("{}\n", cluster_json(state))
        } else if redraw {
            // Clear the terminal and go home, so the table is redrawn in place.
            format!("\x1b[2J\x1b[H{}", cluster_table(state))
        } else {
            cluster_table(state)
        };
        print_out(&text)
    };
    if !args.watch {
        let state = client.get_cluster_state(pb::GetClusterStateRequest {}).await.map_err(status_error)?;
        show(&state.into_inner(), false)?;
        return Ok(());
    }
    let mut stream = client.watch_cluster(pb::WatchClusterRequest {}).await.map_err(status_error)?.into_inner();
    while let Some(state) = stream.message().await.map_err(status_error)? {
        if !show(&state, true)? {
            break;
        }
    }
    Ok(())
}

/// `patchwork status`'s table.
pub fn cluster_table(state: &pb::ClusterState) -> String {
    let mut out = String::new();
    match state.role.as_str() {
        "single" | "" => out += "coordinator: single (jobs in memory)\n",
        role if state.leader.is_empty() => out += &format!("coordinator: {role}; no leader elected\n"),
        role => out += &format!("coordinator: {role}; leader {} (term {})\n", state.leader, state.term),
    }
    out += &format!("jobs: {} queued, {} running\n", state.queued_jobs, state.running_jobs);
    out += &format!("models: {}\n", state.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "));
    out += &format!(
        "{:<12} {:<24} {:<16} {:<10} {:>6} {:>8} {:>6}  {:<12} NOW\n",
        "ID", "ADDRESS", "MODEL", "STATUS", "SLOTS", "EVALS", "FAILS", "DEVICES"
    );
    for w in &state.workers {
        let status = worker_status(w.status);
        let devices: Vec<&str> = w.devices.iter().map(|d| d.name.as_str()).collect();
        out += &format!(
            "{:<12} {:<24} {:<16} {:<10} {:>6} {:>8} {:>6}  {:<12} {}\n",
            w.id,
            w.address,
            w.model,
            status,
            format!("{}/{}", w.in_flight, w.capacity),
            w.evaluations,
            w.failures,
            devices.join(","),
            w.activity.join("; ")
        );
        if w.groups.len() > 1 || w.groups.iter().any(|g| g.devices.len() > 1 || !g.healthy || g.failures > 0) {
            for g in &w.groups {
                let health = if g.healthy { "healthy" } else { "re-forming" };
                let failures = match g.failures {
                    0 => String::new(),
                    n => format!(", {n} failures (last: {})", g.last_error),
                };
                out += &format!("    group {} [{}]: {health}{failures}\n", g.index, g.devices.join(","));
            }
        }
    }
    out
}
