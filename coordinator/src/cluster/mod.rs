//! Cluster mode (`coordinator --etcd`): worker membership, leader election and durable jobs in etcd.
//!
//! Every coordinator follows membership and campaigns. The leader schedules and runs jobs from an in-memory
//! store whose durable changes it journals to etcd; followers answer reads from etcd and refuse writes with
//! UNAVAILABLE, naming the leader in the message and in the `patchwork-leader` response header (the CLI
//! asks any coordinator where the leader is and sends writes there).

pub mod jobs;
mod journal;
mod leader;
mod membership;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use patchwork_shared::cluster::{self, ELECTION};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use jobs::Leadership;
pub use journal::EtcdJournal;

use crate::metrics::Metrics;
use crate::pool::WorkerPool;
use crate::server::CoordinatorConfig;
use crate::store::JobStore;

/// This coordinator's term while it leads.
#[derive(Debug)]
pub struct Term {
    pub store: Arc<JobStore>,
    pub journal: Arc<EtcdJournal>,
    pub lead: Leadership,
}

/// Who leads, as this coordinator knows it.
#[derive(Debug, Clone, Default)]
pub struct RoleView {
    /// The leader's client address; empty while none is known.
    pub leader: String,
    pub term: u64,
    /// Set while this coordinator leads (and has loaded the jobs).
    pub lead: Option<Arc<Term>>,
}

pub struct Cluster {
    pub client: Client,
    pub pool: Arc<WorkerPool>,
    pub config: CoordinatorConfig,
    /// Lease TTL of the leadership.
    pub ttl: Duration,
    /// This coordinator's client address, as followers pass it on.
    pub advertise: String,
    pub role: watch::Sender<RoleView>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("advertise", &self.advertise).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(
        client: Client,
        pool: Arc<WorkerPool>,
        config: CoordinatorConfig,
        ttl: Duration,
        advertise: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self { client, pool, config, ttl, advertise, role: watch::channel(RoleView::default()).0, metrics })
    }

    /// Starts following membership, watching who leads, and campaigning.
    pub fn start(self: &Arc<Self>, shutdown: &CancellationToken) {
        tokio::spawn(membership::follow_members(self.client.clone(), self.pool.clone(), shutdown.clone()));
        tokio::spawn(observe_leader(self.clone(), shutdown.clone()));
        tokio::spawn(leader::campaign(self.clone(), shutdown.clone()));
    }

    pub fn view(&self) -> RoleView {
        self.role.borrow().clone()
    }
}

/// Keeps the leader's address and term current on followers (the leader sets its own).
async fn observe_leader(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    loop {
        let mut election = cluster.client.election_client();
        let known = match cluster::timed(election.leader(ELECTION)).await {
            Ok(answer) => {
                answer.kv().map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.create_revision() as u64))
            }
            // "election: no leader", or etcd unreachable: nobody is known to lead.
            Err(_) => None,
        };
        cluster.role.send_if_modified(|r| {
            if r.lead.is_some() {
                return false;
            }
            let (leader, term) = known.clone().unwrap_or_default();
            let changed = r.leader != leader || r.term != term;
            r.leader = leader;
            r.term = term;
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
