//! `patchwork coordinator` and `patchwork worker`: long-running processes, stopped by Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use patchwork_coordinator::server::EtcdSettings;
use patchwork_coordinator::CoordinatorConfig;
use patchwork_shared::model::ModelGeometry;
use patchwork_worker::engine::InjectedFault;
use patchwork_worker::engine::{Engine, Evaluator, LoadTest, ModelSource};
use patchwork_worker::group::{shard_groups, DeviceList, DeviceName};
use patchwork_worker::membership::EtcdMembership;
use patchwork_worker::model::forward::parse_dtype;
use patchwork_worker::run::WorkerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::client::print_out;

#[derive(Debug, Clone, Args)]
pub struct CoordinatorArgs {
    /// Address to serve the client API and the worker registry on.
    #[arg(long, env = "PATCHWORK_LISTEN", default_value = "0.0.0.0:7600")]
    pub listen: SocketAddr,
    /// Where finished videos are kept.
    #[arg(long, env = "PATCHWORK_DATA_DIR", default_value = "patchwork-data")]
    pub data_dir: PathBuf,
    /// Most jobs waiting in the queue.
    #[arg(long, env = "PATCHWORK_QUEUE_LIMIT", default_value_t = 1000)]
    pub queue_limit: usize,
    /// Jobs sampled at the same time.
    #[arg(long, env = "PATCHWORK_MAX_RUNNING_JOBS", default_value_t = 4)]
    pub max_running_jobs: usize,
    /// How often workers heartbeat; three missed beats drop a worker.
    #[arg(long, env = "PATCHWORK_HEARTBEAT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Longest one evaluation may take before it is retried on another worker.
    #[arg(long, env = "PATCHWORK_EVAL_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub eval_timeout: Duration,
    /// Attempts per window step or decode chunk before the job fails.
    #[arg(long, env = "PATCHWORK_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Latent frames per decode chunk (each 4 video frames).
    #[arg(long, env = "PATCHWORK_DECODE_CHUNK", default_value_t = 8)]
    pub decode_chunk: usize,
    /// Latent frames of causal context decoded (and thrown away) before each chunk: the VAE's caches reach
    /// far back, and a chunk's first frames converge to the whole decode as this grows.
    #[arg(long, env = "PATCHWORK_DECODE_CONTEXT", default_value_t = 8)]
    pub decode_context: usize,
    /// Write each running job's latent and sampler state every this many steps (0: never) to
    /// DATA_DIR/checkpoints; removed when the job ends. Resuming from them arrives with cluster mode.
    #[arg(long, env = "PATCHWORK_CHECKPOINT_EVERY", default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Also checkpoint when this long has passed since the last one.
    #[arg(long, env = "PATCHWORK_CHECKPOINT_INTERVAL", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Option<std::time::Duration>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The address clients reach this coordinator at (followers tell clients the leader's)
    /// [default: the listener's, with 127.0.0.1 for a wildcard].
    #[arg(long, env = "PATCHWORK_ADVERTISE")]
    pub advertise: Option<String>,
    /// Serve the web page (cluster, queue, running jobs, finished videos) and Prometheus `/metrics` over
    /// HTTP on this address [default: off].
    #[arg(long, env = "PATCHWORK_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// A token that clients, workers registering and the web page must send (`authorization: Bearer
    /// TOKEN`; in a browser, the password) [default: none, everyone is let in]. Health checks, reflection
    /// and /metrics stay open.
    #[arg(long, env = "PATCHWORK_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

/// Cluster mode: membership, leadership and jobs in etcd.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// etcd endpoints, `http://HOST:PORT[,...]`: turns cluster mode on. Without it a coordinator keeps jobs
    /// in memory (one machine) and workers register with `--coordinator`.
    #[arg(long, env = "PATCHWORK_ETCD")]
    pub etcd: Option<String>,
    /// TTL of the etcd leases behind worker membership and coordinator leadership (renewed every third of
    /// it; a follower takes over within two TTLs of the leader's death).
    #[arg(long, env = "PATCHWORK_LEASE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// The etcd user, where etcd has authentication on (with --etcd-password) [default: none].
    #[arg(long, env = "PATCHWORK_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    #[arg(long, env = "PATCHWORK_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
}

impl ClusterArgs {
    pub fn user(&self) -> anyhow::Result<Option<patchwork_shared::cluster::EtcdUser>> {
        Ok(patchwork_shared::cluster::EtcdUser::from_parts(
            self.etcd_username.as_deref(),
            self.etcd_password.as_deref(),
        )?)
    }

    pub fn endpoints(&self) -> anyhow::Result<Option<Vec<String>>> {
        Ok(match &self.etcd {
            Some(list) => Some(patchwork_shared::cluster::parse_endpoints(list)?),
            None => None,
        })
    }
}

impl CoordinatorArgs {
    pub fn config(&self) -> anyhow::Result<CoordinatorConfig> {
        let user = self.cluster.user()?;
        let etcd =
            self.cluster.endpoints()?.map(|endpoints| EtcdSettings { endpoints, user, ttl: self.cluster.lease_ttl });
        Ok(CoordinatorConfig {
            data_dir: self.data_dir.clone(),
            queue_limit: self.queue_limit,
            max_running_jobs: self.max_running_jobs,
            heartbeat: self.heartbeat,
            eval_timeout: self.eval_timeout,
            max_attempts: self.max_attempts,
            decode_chunk: self.decode_chunk,
            decode_context: self.decode_context,
            checkpoint_every: self.checkpoint_every,
            checkpoint_interval: self.checkpoint_interval,
            etcd,
            advertise: self.advertise.clone(),
            api_token: patchwork_shared::auth::RequireToken::new(self.api_token.as_deref()),
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A diffusers WanPipeline directory [default: the embedded tiny model].
    #[arg(long, env = "PATCHWORK_MODEL")]
    pub model: Option<PathBuf>,
    /// The name the model is served under [default: the directory's name, or "tiny"].
    #[arg(long, env = "PATCHWORK_MODEL_NAME")]
    pub model_name: Option<String>,
    /// f32 | bf16 | f16
    #[arg(long, env = "PATCHWORK_DTYPE", default_value = "f32")]
    pub dtype: String,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        match &self.model {
            None => ModelSource::Tiny,
            Some(path) => ModelSource::Dir { path: path.clone(), name: self.model_name.clone() },
        }
    }

    /// Loads the model on the CPU.
    pub fn load(&self) -> anyhow::Result<Engine> {
        self.load_groups(&[vec![DeviceName::Cpu(0)]])
    }

    /// Loads the model with one shard group per entry of `groups`.
    pub fn load_groups(&self, groups: &[Vec<DeviceName>]) -> anyhow::Result<Engine> {
        let dtype = parse_dtype(&self.dtype)?;
        let source = self.source();
        Engine::load_groups(&source, dtype, groups).with_context(|| match &source {
            ModelSource::Tiny => "loading the embedded tiny model".to_string(),
            ModelSource::Dir { path, .. } => format!("loading the model in {}", path.display()),
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// This worker's name in cluster mode (its etcd key) [default: its advertised host and port].
    #[arg(long, env = "PATCHWORK_WORKER_NAME")]
    pub name: Option<String>,
    /// The coordinator to register with (without `--etcd`).
    #[arg(long, env = "PATCHWORK_COORDINATOR", default_value = "http://127.0.0.1:7600")]
    pub coordinator: String,
    /// Address to serve evaluations on.
    #[arg(long, env = "PATCHWORK_WORKER_LISTEN", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// The address the coordinator should use to reach this worker [default: the listener's].
    #[arg(long, env = "PATCHWORK_ADVERTISE")]
    pub advertise: Option<String>,
    /// Serve Prometheus `/metrics` over HTTP on this address [default: off].
    #[arg(long, env = "PATCHWORK_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The coordinator's API token, sent when registering (single-coordinator mode; with etcd, workers
    /// register there).
    #[arg(long, env = "PATCHWORK_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// The devices this worker owns: `cpu`, `cpu:N` (N CPU ranks) or `cuda:0,1,2,3`.
    #[arg(long, env = "PATCHWORK_DEVICES", default_value = "cpu")]
    pub devices: DeviceList,
    /// Tensor-parallel degree: the devices form shard groups of this many, each evaluating one window at
    /// a time (8 devices: --tp 8, 4, 2 or 1). It must divide the model's attention heads.
    #[arg(long, env = "PATCHWORK_TP", default_value_t = 1)]
    pub tp: usize,
    /// Evaluations at once with `--devices cpu`: that many CPU shard groups [default: 1]. With other
    /// devices the groups set it.
    #[arg(long, env = "PATCHWORK_CAPACITY")]
    pub capacity: Option<usize>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// TESTING ONLY: make rank RANK of shard group GROUP fail at that group's evaluation N (GROUP:RANK:N),
    /// as a lost device would.
    #[arg(long, hide = true)]
    pub inject_rank_fault: Option<InjectedFault>,
    /// LOAD TEST ONLY: evaluate nothing, wait this long per request and answer zeros. For measuring the
    /// control plane; never produces a real video.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub load_test_delay: Option<Duration>,
}

impl WorkerArgs {
    /// The shard groups from `--devices`, `--tp` and `--capacity`.
    fn shard_groups(&self) -> anyhow::Result<Vec<Vec<DeviceName>>> {
        let mut devices = self.devices.0.clone();
        if devices == [DeviceName::Cpu(0)] {
            // Plain `cpu`: as many CPU ranks as the groups need.
            let ranks = self.capacity.unwrap_or(1).max(1) * self.tp.max(1);
            devices = (0..ranks).map(DeviceName::Cpu).collect();
        }
        let groups = shard_groups(&devices, self.tp)?;
        if let Some(capacity) = self.capacity {
            if capacity != groups.len() {
                anyhow::bail!(
                    "--capacity {capacity}: {} devices at --tp {} form {} shard groups, one evaluation each",
                    devices.len(),
                    self.tp,
                    groups.len()
                );
            }
        }
        Ok(groups)
    }
}

/// Cancels the token on Ctrl-C or SIGTERM.
pub fn stop_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stopping");
        token.cancel();
    });
}

pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    config.validate()?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    // The first line on stdout, for scripts and tests that bind port 0.
    print_out(&format!("coordinator listening on {}\n", listener.local_addr()?))?;
    let http = bind_http(args.http_listen, "web page and metrics").await?;
    let shutdown = CancellationToken::new();
    stop_on_signals(shutdown.clone());
    patchwork_coordinator::run_with_http(config, listener, http, shutdown).await?;
    Ok(())
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let evaluator: Arc<dyn Evaluator> = match args.load_test_delay {
        Some(delay) => {
            let mut geometry = ModelGeometry::tiny();
            if let Some(name) = &args.model.model_name {
                geometry.name = name.clone();
            }
            tracing::warn!(?delay, "LOAD TEST mode: no model is evaluated and every answer is zeros");
            Arc::new(LoadTest::new(geometry, delay))
        }
        None => {
            let model = args.model.clone();
            let groups = args.shard_groups()?;
            tracing::info!(groups = ?groups.iter().map(|g| g.iter().map(|d| d.to_string()).collect::<Vec<_>>()).collect::<Vec<_>>(), "loading the model");
            let engine = tokio::task::spawn_blocking(move || model.load_groups(&groups)).await??;
            if let Some(fault) = args.inject_rank_fault {
                engine.inject_fault(fault)?;
            }
            Arc::new(engine)
        }
    };
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    print_out(&format!("worker listening on {}\n", listener.local_addr()?))?;
    let metrics = bind_http(args.metrics_listen, "metrics").await?;
    let shutdown = CancellationToken::new();
    stop_on_signals(shutdown.clone());
    let local = listener.local_addr()?;
    let user = args.cluster.user()?;
    let etcd = args.cluster.endpoints()?.map(|endpoints| EtcdMembership {
        endpoints,
        user,
        name: args.name.clone().unwrap_or_else(|| {
            let advertised = args.advertise.clone().unwrap_or_else(|| local.to_string());
            let bare = advertised.trim_start_matches("http://").trim_start_matches("https://");
            bare.replace(['/', ':'], "-")
        }),
        ttl: args.cluster.lease_ttl,
    });
    let config = WorkerConfig {
        coordinator: args.coordinator.clone(),
        etcd,
        advertise: args.advertise.clone(),
        capacity: args.capacity.unwrap_or(1),
        devices: vec!["cpu".into()],
        api_token: patchwork_shared::auth::SendToken::new(args.api_token.as_deref()).map_err(anyhow::Error::msg)?,
    };
    patchwork_worker::run::run_with_metrics(config, evaluator, listener, metrics, shutdown).await?;
    Ok(())
}

/// Binds an optional HTTP listener and says where, on the line after the gRPC listener's (`what on
/// http://ADDR`), for scripts and tests that bind port 0.
async fn bind_http(address: Option<SocketAddr>, what: &str) -> anyhow::Result<Option<TcpListener>> {
    let Some(address) = address else { return Ok(None) };
    let listener =
        TcpListener::bind(address).await.with_context(|| format!("listening on {address} for the {what}"))?;
    print_out(&format!("{what} on http://{}\n", listener.local_addr()?))?;
    Ok(Some(listener))
}
