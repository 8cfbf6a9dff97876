//! Whether this worker may take work now, and its membership in etcd (cluster mode).
//!
//! With a single coordinator the [`Gate`] is always open. In cluster mode it is open only while the worker's
//! membership lease holds: the moment a renewal fails the gate closes (new work is refused with
//! UNAVAILABLE, and results of work begun under the lapsed registration are dropped), and the worker
//! registers again under a new lease with the next generation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use patchwork_shared::cluster::{self, KeptLease, LeaseHealth};
use patchwork_shared::pb;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::Status;

#[derive(Debug, Default)]
struct GateState {
    generation: u64,
    /// None: always open (single coordinator). Some: open while the lease is valid.
    lease: Option<LeaseHealth>,
    open: bool,
}

/// Admits work while this worker's registration holds.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
}

/// The registration a piece of work was admitted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl Gate {
    /// A gate that never closes: the single-coordinator case, with heartbeats instead of leases.
    pub fn always_open() -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(GateState { generation: 1, lease: None, open: true }) })
    }

    /// A gate closed until [`open`](Self::open) is called.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_open(state: &GateState) -> bool {
        state.open && state.lease.as_ref().is_none_or(LeaseHealth::is_valid)
    }

    pub fn open(&self, generation: u64, lease: LeaseHealth) {
        *self.lock() = GateState { generation, lease: Some(lease), open: true };
    }

    pub fn close(&self) {
        self.lock().open = false;
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Admits a piece of work, or refuses it with UNAVAILABLE while the worker is not registered.
    pub fn admit(&self) -> Result<Ticket, Status> {
        let state = self.lock();
        if Self::is_open(&state) {
            Ok(Ticket(state.generation))
        } else {
            tracing::warn!("work refused: this worker's membership lease has lapsed");
            Err(Status::unavailable(
                "this worker's membership lease has lapsed; it takes no work until registered again",
            ))
        }
    }

    /// Whether a result computed under `ticket` may still be returned: not if the registration it was
    /// admitted under lapsed meanwhile (the coordinator has given the work to someone else by now).
    pub fn still_valid(&self, ticket: Ticket) -> Result<(), Status> {
        let state = self.lock();
        if Self::is_open(&state) && state.generation == ticket.0 {
            Ok(())
        } else {
            tracing::warn!(generation = ticket.0, "membership lapsed during an evaluation; its result is dropped");
            Err(Status::aborted("this worker's membership lease lapsed during the evaluation; the result is dropped"))
        }
    }
}

/// The shard groups' current health, as the worker reports it to the coordinators.
pub type GroupReport = Arc<dyn Fn() -> Vec<pb::ShardGroup> + Send + Sync>;

/// How this worker registers in etcd.
#[derive(Debug, Clone)]
pub struct EtcdMembership {
    pub endpoints: Vec<String>,
    /// For an etcd with authentication on.
    pub user: Option<patchwork_shared::cluster::EtcdUser>,
    /// The worker's key is `/patchwork/workers/<name>`.
    pub name: String,
    pub ttl: Duration,
}

/// Registers `record` under a lease, renews it, and registers again with the next generation whenever the
/// lease lapses, until `shutdown`; then deletes the registration.
pub async fn keep_member(
    client: Client,
    settings: EtcdMembership,
    mut record: pb::WorkerRecord,
    gate: Arc<Gate>,
    groups: GroupReport,
    shutdown: CancellationToken,
) {
    let key = format!("{}{}", cluster::WORKERS, settings.name);
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let registered = async {
            let lease = KeptLease::grant(&client, settings.ttl).await?;
            record.generation += 1;
            let mut kv = client.kv_client();
            let put = kv.put(key.clone(), record.encode_to_vec(), Some(PutOptions::new().with_lease(lease.id)));
            if let Err(e) = cluster::timed(put).await {
                lease.revoke(&client).await;
                return Err(e);
            }
            Ok(lease)
        };
        let lease = match registered.await {
            Ok(lease) => lease,
            Err(error) => {
                tracing::warn!(%error, "registering in etcd failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        gate.open(record.generation, lease.health());
        tracing::info!(name = %settings.name, generation = record.generation, lease = format!("{:x}", lease.id), "registered in etcd");
        let health = lease.health();
        // The shard groups' health changes when a rank fails and its group is re-formed: the record says so.
        let mut reported = groups();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = health.lapsed() => {
                    gate.close();
                    tracing::warn!(generation = record.generation, "membership lease lapsed; taking no work until registered again");
                    drop(lease);
                    break;
                }
                _ = shutdown.cancelled() => {
                    gate.close();
                    let mut kv = client.kv_client();
                    let _ = cluster::timed(kv.delete(key.clone(), None)).await;
                    lease.revoke(&client).await;
                    tracing::info!("left the cluster");
                    return;
                }
                _ = tick.tick() => {
                    let now = groups();
                    if now != reported {
                        if let Some(description) = record.description.as_mut() {
                            description.groups = now.clone();
                        }
                        let mut kv = client.kv_client();
                        let put = kv.put(key.clone(), record.encode_to_vec(), Some(PutOptions::new().with_lease(lease.id)));
                        if cluster::timed(put).await.is_ok() {
                            reported = now;
                        }
                    }
                }
            }
        }
    }
    gate.close();
}
