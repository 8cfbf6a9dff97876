//! A coordinator process: the client API and the worker registry on one listener, the scheduler that
//! starts queued jobs, and the reaper that drops silent workers. With etcd (cluster mode) the scheduler
//! runs only while this coordinator leads; see [`crate::cluster`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use patchwork_shared::auth::RequireToken;
use patchwork_shared::pb::render_service_server::RenderServiceServer;
use patchwork_shared::pb::worker_registry_server::WorkerRegistryServer;
use patchwork_shared::pb::FILE_DESCRIPTOR_SET;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::cluster::Cluster;
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::pool::WorkerPool;
use crate::runner::{run_job, JobContext};
use crate::service::{Backend, RegistryService, RenderApi};
use crate::store::JobStore;

/// Largest client message the transport accepts; SubmitJob has its own, smaller limit that is answered
/// with INVALID_ARGUMENT.
const MAX_CLIENT_MESSAGE_BYTES: usize = 16 << 20;

/// The gRPC health service that is SERVING only on the coordinator that leads (always, without etcd):
/// what a readiness probe asks, so that a Service reaches the leader alone. The overall health (service
/// "") is SERVING on every coordinator that runs.
pub const LEADER_HEALTH: &str = "patchwork.leader";

/// How a coordinator runs, from its flags.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where finished videos are written (`videos/<job>.mp4`).
    pub data_dir: PathBuf,
    /// Most jobs waiting in the queue; more are refused with RESOURCE_EXHAUSTED.
    pub queue_limit: usize,
    /// Jobs sampled at the same time; the rest wait in the queue.
    pub max_running_jobs: usize,
    /// How often workers heartbeat; a worker silent for three intervals is dropped.
    pub heartbeat: Duration,
    /// Longest one evaluation may take before it is retried elsewhere.
    pub eval_timeout: Duration,
    /// Attempts per window step or decode chunk before the job fails.
    pub max_attempts: u32,
    /// Latent frames per decode chunk, and latent frames of causal context before each.
    pub decode_chunk: usize,
    pub decode_context: usize,
    /// Checkpoint every this many steps (0: never), or after this long, whichever comes first. Until
    /// jobs are durable (cluster mode) nothing resumes from them; they measure the cost.
    pub checkpoint_every: usize,
    pub checkpoint_interval: Option<Duration>,
    /// Cluster mode: etcd's endpoints and the leadership lease's TTL. None: one coordinator, jobs in memory.
    pub etcd: Option<EtcdSettings>,
    /// The address clients use to reach this coordinator (followers name the leader by it); default the
    /// listener's own.
    pub advertise: Option<String>,
    /// The token clients and workers must send (the client API, worker registration, the web page);
    /// health, reflection and `/metrics` stay open. None: everyone is let in.
    pub api_token: RequireToken,
}

#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// For an etcd with authentication on.
    pub user: Option<patchwork_shared::cluster::EtcdUser>,
    pub ttl: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("patchwork-data"),
            queue_limit: 1000,
            max_running_jobs: 4,
            heartbeat: Duration::from_secs(2),
            eval_timeout: Duration::from_secs(600),
            max_attempts: 5,
            decode_chunk: 8,
            decode_context: 8,
            checkpoint_every: 0,
            checkpoint_interval: None,
            etcd: None,
            advertise: None,
            api_token: RequireToken::default(),
        }
    }
}

impl CoordinatorConfig {
    /// Refuses settings the coordinator cannot run with, naming the setting.
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        let bad = |setting: &'static str, why: &'static str| Err(CoordinatorError::Config { setting, why });
        if self.heartbeat.is_zero() {
            return bad("heartbeat", "must be longer than zero");
        }
        if self.eval_timeout.is_zero() {
            return bad("eval_timeout", "must be longer than zero");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.queue_limit == 0 || self.max_running_jobs == 0 {
            return bad("queue_limit and max_running_jobs", "must be at least 1");
        }
        if self.decode_chunk == 0 {
            return bad("decode_chunk", "must be at least 1");
        }
        if self.decode_context == 0 {
            // Without context a chunk's first latent frame decodes as a video's first: 1 frame, not 4.
            return bad("decode_context", "must be at least 1");
        }
        if self.etcd.as_ref().is_some_and(|e| e.ttl < Duration::from_secs(1)) {
            return bad("lease_ttl", "must be at least 1s (etcd leases count whole seconds)");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("{setting}: {why}")]
    Config { setting: &'static str, why: &'static str },
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Cluster(#[from] patchwork_shared::cluster::ClusterError),
    #[error("listener: {0}")]
    Listener(std::io::Error),
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    run_with_http(config, listener, None, shutdown).await
}

/// [`run`], and the web page and metrics on `http` (see [`crate::web`]).
pub async fn run_with_http(
    config: CoordinatorConfig,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| CoordinatorError::DataDir { path: config.data_dir.clone(), source })?;
    let pool = WorkerPool::new(config.heartbeat);
    let backend = match &config.etcd {
        None => {
            tracing::info!(
                data_dir = %config.data_dir.display(),
                "coordinator starting with the in-memory job store (single machine; jobs do not survive a restart)"
            );
            let store = JobStore::new(config.queue_limit);
            let context = Arc::new(JobContext {
                store: store.clone(),
                dispatcher: Dispatcher {
                    pool: pool.clone(),
                    timeout: config.eval_timeout,
                    max_attempts: config.max_attempts,
                    metrics: metrics.clone(),
                },
                data_dir: config.data_dir.clone(),
                decode_chunk: config.decode_chunk,
                decode_context: config.decode_context,
                checkpoint_every: config.checkpoint_every,
                checkpoint_interval: config.checkpoint_interval,
                term: 0,
                stop: shutdown.clone(),
                journal: None,
            });
            tokio::spawn(schedule(context, config.max_running_jobs, shutdown.clone()));
            Backend::Single(store)
        }
        Some(etcd) => {
            let client = patchwork_shared::cluster::connect(&etcd.endpoints, etcd.user.as_ref()).await?;
            let local = listener.local_addr().map_err(CoordinatorError::Listener)?;
            let advertise = config.advertise.clone().unwrap_or_else(|| {
                let host = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
                format!("http://{host}:{}", local.port())
            });
            tracing::info!(
                etcd = %etcd.endpoints.join(","),
                %advertise,
                data_dir = %config.data_dir.display(),
                "coordinator starting in cluster mode (jobs in etcd; campaigning for leadership)"
            );
            let cluster = Cluster::new(client, pool.clone(), config.clone(), etcd.ttl, advertise, metrics.clone());
            cluster.start(&shutdown);
            Backend::Cluster(cluster)
        }
    };
    let reaper = tokio::spawn(reap(pool.clone(), shutdown.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RenderServiceServer<RenderApi>>().await;
    match &backend {
        Backend::Single(_) => health.set_service_status(LEADER_HEALTH, ServingStatus::Serving).await,
        Backend::Cluster(cluster) => {
            tokio::spawn(report_leadership(cluster.clone(), health.clone(), shutdown.clone()));
        }
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let api = RenderApi::new(backend, pool.clone());
    let web = match http {
        Some(http) => {
            let address = http.local_addr().map_err(CoordinatorError::Listener)?;
            tracing::info!(%address, "web page and metrics listening");
            let router = crate::web::router(api.clone(), metrics, config.api_token.clone());
            Some(tokio::spawn(patchwork_shared::metrics::serve_http(http, router, shutdown.clone())))
        }
        None => None,
    };
    if config.api_token.is_required() {
        tracing::info!("clients and workers must send the API token");
    }
    let render = InterceptedService::new(
        RenderServiceServer::new(api).max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
        config.api_token.clone(),
    );
    let registry =
        InterceptedService::new(WorkerRegistryServer::new(RegistryService { pool }), config.api_token.clone());
    tracing::info!(address = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "coordinator listening");
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(render)
        .add_service(registry)
        .serve_with_incoming_shutdown(no_delay(listener), shutdown.cancelled())
        .await;
    shutdown.cancel();
    reaper.abort();
    if let Some(web) = web {
        let _ = tokio::time::timeout(Duration::from_secs(2), web).await;
    }
    // Give the election key and the workers' connections a moment to be released cleanly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(result?)
}

/// Starts queued jobs, highest priority first, while fewer than `max_running` run.
pub(crate) async fn schedule(context: Arc<JobContext>, max_running: usize, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(max_running.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let job = loop {
            let queued = context.store.queued.notified();
            let pool = &context.dispatcher.pool;
            if let Some(job) = context.store.claim_next(|spec| pool.serves(&spec.model)) {
                break job;
            }
            tokio::select! {
                _ = queued => {}
                // Also wakes when a worker for a waiting job's model registers.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.cancelled() => return,
            }
        };
        let context = context.clone();
        tokio::spawn(async move {
            run_job(context, job).await;
            drop(slot);
        });
    }
}

/// Keeps [`LEADER_HEALTH`] in step with this coordinator's leadership.
async fn report_leadership(cluster: Arc<Cluster>, health: HealthReporter, shutdown: CancellationToken) {
    let mut role = cluster.role.subscribe();
    loop {
        let leads = role.borrow_and_update().lead.is_some();
        let status = if leads { ServingStatus::Serving } else { ServingStatus::NotServing };
        health.set_service_status(LEADER_HEALTH, status).await;
        tokio::select! {
            changed = role.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => {
                health.set_service_status(LEADER_HEALTH, ServingStatus::NotServing).await;
                return;
            }
        }
    }
}

async fn reap(pool: Arc<WorkerPool>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(pool.heartbeat_interval());
    loop {
        tokio::select! {
            _ = tick.tick() => pool.reap(),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Accepted connections with Nagle's algorithm off: every request and answer is one small write that must
/// go out at once, or each waits ~40 ms for the peer's delayed acknowledgement.
fn no_delay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_the_coordinator_cannot_run_with_are_named() {
        assert!(CoordinatorConfig::default().validate().is_ok());
        let zero_beat = CoordinatorConfig { heartbeat: Duration::ZERO, ..Default::default() };
        assert_eq!(zero_beat.validate().unwrap_err().to_string(), "heartbeat: must be longer than zero");
        let no_context = CoordinatorConfig { decode_context: 0, ..Default::default() };
        assert!(no_context.validate().unwrap_err().to_string().starts_with("decode_context"));
        let no_attempts = CoordinatorConfig { max_attempts: 0, ..Default::default() };
        assert!(no_attempts.validate().unwrap_err().to_string().starts_with("max_attempts"));
    }
}
