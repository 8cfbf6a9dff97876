//! A worker process: serve the model on a listener and stay a member of the cluster: registered with one
//! coordinator by heartbeats, or (cluster mode) in etcd under a lease that every coordinator watches.

use std::sync::Arc;
use std::time::Duration;

use patchwork_shared::auth::SendToken;
use patchwork_shared::pb::worker_registry_client::WorkerRegistryClient;
use patchwork_shared::pb::{self, worker_service_server::WorkerServiceServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};

use crate::engine::Evaluator;
use crate::membership::{keep_member, EtcdMembership, Gate, GroupReport};
use crate::service::WorkerService;

/// Largest message between coordinator and worker: a window's latent or a chunk's frames.
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// How a worker runs, from its flags.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's address, "http://host:port" (without etcd).
    pub coordinator: String,
    /// Cluster mode: register in etcd instead of with one coordinator.
    pub etcd: Option<EtcdMembership>,
    /// The address the coordinator should use for this worker; default the listener's own.
    pub advertise: Option<String>,
    /// Evaluations at once.
    pub capacity: usize,
    /// Device names to report.
    pub devices: Vec<String>,
    /// Sent with registrations and heartbeats to a coordinator that requires a token.
    pub api_token: SendToken,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("coordinator address {address:?}: {source}")]
    Coordinator { address: String, source: tonic::transport::Error },
    #[error(transparent)]
    Cluster(#[from] patchwork_shared::cluster::ClusterError),
}

/// Serves `evaluator` on `listener` and registers with the coordinator until `shutdown` is cancelled.
pub async fn run(
    config: WorkerConfig,
    evaluator: Arc<dyn Evaluator>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    run_with_metrics(config, evaluator, listener, None, shutdown).await
}

/// [`run`], and Prometheus metrics on `metrics` (`/metrics`).
pub async fn run_with_metrics(
    config: WorkerConfig,
    evaluator: Arc<dyn Evaluator>,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let local = listener.local_addr()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        // A wildcard listener is reached through loopback unless told otherwise (`--advertise`).
        let host = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
        format!("http://{host}:{}", local.port())
    });
    let service = WorkerService::new(evaluator.clone(), config.capacity.max(1), config.devices.clone());
    let description = service.description().clone();
    let metrics_server = match metrics {
        Some(metrics) => {
            tracing::info!(address = %metrics.local_addr()?, "metrics listening");
            let router = crate::metrics::router(service.metrics());
            Some(tokio::spawn(patchwork_shared::metrics::serve_http(metrics, router, shutdown.clone())))
        }
        None => None,
    };
    let groups: GroupReport = {
        let evaluator = evaluator.clone();
        Arc::new(move || evaluator.shard_groups().unwrap_or_default())
    };
    let (service, membership) = match &config.etcd {
        Some(settings) => {
            let client = patchwork_shared::cluster::connect(&settings.endpoints, settings.user.as_ref()).await?;
            let gate = Gate::closed();
            let record = pb::WorkerRecord {
                name: settings.name.clone(),
                address: advertise.clone(),
                description: Some(description),
                generation: 0,
            };
            tracing::info!(%advertise, etcd = %settings.endpoints.join(","), name = %settings.name, "worker listening (cluster mode)");
            let task =
                tokio::spawn(keep_member(client, settings.clone(), record, gate.clone(), groups, shutdown.clone()));
            (service.with_gate(gate), task)
        }
        None => {
            let endpoint = Endpoint::from_shared(config.coordinator.clone())
                .map_err(|source| WorkerError::Coordinator { address: config.coordinator.clone(), source })?
                .connect_timeout(Duration::from_secs(5));
            let register = pb::RegisterRequest { address: advertise.clone(), description: Some(description) };
            tracing::info!(%advertise, coordinator = %config.coordinator, "worker listening");
            let client = WorkerRegistryClient::with_interceptor(endpoint.connect_lazy(), config.api_token.clone());
            (service, tokio::spawn(keep_registered(client, register, groups, shutdown.clone())))
        }
    };
    let server = WorkerServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Liveness for probes (grpc.health.v1, service ""): SERVING while the process serves.
    let (_health, health_service) = tonic_health::server::health_reporter();
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(server)
        .serve_with_incoming_shutdown(no_delay(listener), shutdown.cancelled())
        .await;
    shutdown.cancel();
    // Leaving etcd deletes the registration at once, rather than after the lease's TTL.
    let _ = tokio::time::timeout(Duration::from_secs(5), membership).await;
    if let Some(server) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    Ok(result?)
}

/// Registers, then heartbeats at the interval the coordinator asks for; registers again whenever the
/// coordinator has forgotten this worker or cannot be reached.
async fn keep_registered(
    mut client: WorkerRegistryClient<InterceptedService<Channel, SendToken>>,
    request: pb::RegisterRequest,
    groups: GroupReport,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let registered = match client.register(request.clone()).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::warn!(%status, "registering with the coordinator failed; retrying");
                sleep_or_stop(backoff, &shutdown).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        tracing::info!(worker_id = %registered.worker_id, "registered");
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.clamp(50, 60_000));
        loop {
            if sleep_or_stop(interval, &shutdown).await {
                return;
            }
            let beat = pb::HeartbeatRequest { worker_id: registered.worker_id.clone(), groups: groups() };
            if let Err(status) = client.heartbeat(beat).await {
                tracing::warn!(%status, "heartbeat failed; registering again");
                break;
            }
        }
    }
}

/// Sleeps; true when shutdown came first.
async fn sleep_or_stop(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// Accepted connections with Nagle's algorithm off: every request and answer is one small write that must
/// go out at once, or each waits ~40 ms for the peer's delayed acknowledgement.
fn no_delay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
