//! Cluster mode's common ground for coordinators and workers: the etcd key layout, connecting to etcd with
//! a clear error, and a lease kept alive with a deadline.
//!
//! The etcd-client crate does not renew leases or reconnect streams on its own. [`KeptLease`] renews every
//! third of the TTL and gives up at the first renewal that fails or misses its deadline: whoever holds the
//! lease (a worker's membership, a coordinator's leadership) must stop at once and start over with a new
//! lease, rather than hope that a lease it could not renew is still alive.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tokio_util::sync::CancellationToken;

/// Worker membership records (`WorkerRecord`), one per worker name, each under its worker's lease.
pub const WORKERS: &str = "/patchwork/workers/";
/// Jobs (`StoredJob`) by id.
pub const JOBS: &str = "/patchwork/jobs/";
/// Client request ids, each holding the id of the job it created.
pub const REQUESTS: &str = "/patchwork/requests/";
/// Cancellation requests by job id, written before a running job has stopped.
pub const CANCELS: &str = "/patchwork/cancel/";
/// The coordinators' election (etcd's election API keys live under this prefix).
pub const ELECTION: &str = "/patchwork/leader";

/// Longest a single etcd request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--etcd: {0}")]
    Endpoints(String),
    #[error("etcd credentials: {0}")]
    Credentials(String),
    #[error("etcd at {endpoints} is unreachable: {why}")]
    Unreachable { endpoints: String, why: String },
    #[error("etcd at {endpoints} refused access (check --etcd-username and --etcd-password): {why}")]
    Refused { endpoints: String, why: String },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd: no answer within {0:?}")]
    Timeout(Duration),
    #[error("lease: {0}")]
    Lease(String),
    #[error("watch: {0}")]
    Watch(String),
}

/// Parses `http://host:port[,http://host:port...]`.
/// An etcd user, for an etcd with authentication on.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUser").field("name", &self.name).finish_non_exhaustive()
    }
}

impl EtcdUser {
    /// A user from a name and a password given together; both empty (or absent) means none.
    pub fn from_parts(name: Option<&str>, password: Option<&str>) -> Result<Option<Self>, ClusterError> {
        match (name.unwrap_or_default(), password.unwrap_or_default()) {
            ("", "") => Ok(None),
            ("", _) => Err(ClusterError::Credentials("--etcd-password is set but --etcd-username is not".into())),
            (_, "") => Err(ClusterError::Credentials("--etcd-username is set but --etcd-password is not".into())),
            (name, password) => Ok(Some(Self { name: name.into(), password: password.into() })),
        }
    }
}

pub fn parse_endpoints(list: &str) -> Result<Vec<String>, ClusterError> {
    let endpoints: Vec<String> = list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect();
    if endpoints.is_empty() {
        return Err(ClusterError::Endpoints("no endpoint given".into()));
    }
    for e in &endpoints {
        let rest = e.strip_prefix("http://").ok_or_else(|| {
            ClusterError::Endpoints(format!("{e:?} is not an http:// URL (TLS to etcd is not supported yet)"))
        })?;
        if rest.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
            return Err(ClusterError::Endpoints(format!("{e:?} has no host:port")));
        }
    }
    Ok(endpoints)
}

/// Connects and checks that etcd answers and lets this user read patchwork's keys, so that a wrong address
/// or wrong credentials fail at start with a clear error.
pub async fn connect(endpoints: &[String], user: Option<&EtcdUser>) -> Result<Client, ClusterError> {
    let joined = endpoints.join(",");
    // etcd's own refusals (authentication, permissions) say "etcdserver: ..."; anything else is the network.
    let failed = |e: etcd_client::Error| match e {
        etcd_client::Error::GRpcStatus(s) if s.message().starts_with("etcdserver:") => {
            ClusterError::Refused { endpoints: joined.clone(), why: s.message().to_string() }
        }
        other => ClusterError::Unreachable { endpoints: joined.clone(), why: other.to_string() },
    };
    let unreachable = |why: String| ClusterError::Unreachable { endpoints: joined.clone(), why };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT);
    if let Some(user) = user {
        // The token etcd hands out expires (5 minutes by default); the client asks for a new one.
        options = options.with_user(&user.name, &user.password).with_auto_token_refresh(true);
    }
    let mut client = Client::connect(endpoints, Some(options)).await.map_err(failed)?;
    let probe = async {
        client.status().await?;
        client.get(JOBS, Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(unreachable(format!("no answer within {REQUEST_TIMEOUT:?}"))),
    }
}

/// Runs one etcd request with [`REQUEST_TIMEOUT`].
pub async fn timed<T>(
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| ClusterError::Timeout(REQUEST_TIMEOUT))?
        .map_err(Into::into)
}

/// Whether a lease still holds, as its keeper knows it.
#[derive(Debug, Clone)]
pub struct LeaseHealth {
    lapsed: CancellationToken,
    valid_until: Arc<Mutex<Instant>>,
}

impl LeaseHealth {
    /// A health renewed by hand: valid until `until`, or until the returned token is cancelled.
    pub fn manual(until: Instant) -> (Self, CancellationToken) {
        let lapsed = CancellationToken::new();
        (Self { lapsed: lapsed.clone(), valid_until: Arc::new(Mutex::new(until)) }, lapsed)
    }

    /// True while the last renewal has not run out and no renewal has failed.
    pub fn is_valid(&self) -> bool {
        !self.lapsed.is_cancelled() && Instant::now() < *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the lease is given up.
    pub async fn lapsed(&self) {
        self.lapsed.cancelled().await
    }

    fn lapse(&self) {
        self.lapsed.cancel();
    }
}

/// A lease renewed every third of its TTL by a background task until a renewal fails, misses its deadline
/// or finds the lease gone; then [`LeaseHealth::lapsed`] resolves, and the lease is never renewed again.
#[derive(Debug)]
pub struct KeptLease {
    pub id: i64,
    pub ttl: Duration,
    health: LeaseHealth,
    keeper: tokio::task::JoinHandle<()>,
}

impl KeptLease {
    /// Grants a lease of `ttl` (whole seconds, at least one) and starts renewing it.
    pub async fn grant(client: &Client, ttl: Duration) -> Result<Self, ClusterError> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let ttl = Duration::from_secs(seconds as u64);
        let mut leases = client.lease_client();
        let requested = Instant::now();
        let granted = timed(leases.grant(seconds, None)).await?;
        let id = granted.id();
        let health = LeaseHealth {
            lapsed: CancellationToken::new(),
            valid_until: Arc::new(Mutex::new(requested + Duration::from_secs(granted.ttl().max(0) as u64))),
        };
        let keeper = tokio::spawn(keep_alive(client.clone(), id, ttl, health.clone()));
        Ok(Self { id, ttl, health, keeper })
    }

    pub fn health(&self) -> LeaseHealth {
        self.health.clone()
    }

    /// Stops renewing and revokes the lease, so that its keys vanish now rather than after the TTL. Best
    /// effort: an unreachable etcd lets the lease run out by itself.
    pub async fn revoke(self, client: &Client) {
        self.keeper.abort();
        self.health.lapse();
        let _ = timed(client.lease_client().revoke(self.id)).await;
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.keeper.abort();
        self.health.lapse();
    }
}

async fn keep_alive(client: Client, id: i64, ttl: Duration, health: LeaseHealth) {
    let period = ttl / 3;
    let renewed = async {
        let (mut keeper, mut answers) = timed(client.lease_client().keep_alive(id)).await?;
        loop {
            tokio::time::sleep(period).await;
            let sent = Instant::now();
            // Past its local deadline the lease has already been treated as lapsed (results dropped, work
            // refused), even if etcd has not revoked it yet, as when this process was paused: it stays
            // lapsed rather than coming back to life.
            if sent >= *health.valid_until.lock().unwrap_or_else(|p| p.into_inner()) {
                return Err(ClusterError::Lease(format!("{id:x} ran out before it could be renewed")));
            }
            let answer = tokio::time::timeout(period, async {
                keeper.keep_alive().await?;
                answers.message().await
            })
            .await
            .map_err(|_| ClusterError::Timeout(period))??;
            match answer {
                Some(a) if a.ttl() > 0 => {
                    *health.valid_until.lock().unwrap_or_else(|p| p.into_inner()) =
                        sent + Duration::from_secs(a.ttl() as u64);
                }
                Some(_) => return Err::<(), _>(ClusterError::Lease(format!("{id:x} has expired"))),
                None => return Err(ClusterError::Lease("the keep-alive stream ended".into())),
            }
        }
    };
    if let Err(error) = renewed.await {
        tracing::warn!(lease = format!("{id:x}"), %error, "lease renewal failed; giving the lease up");
    }
    health.lapse();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(parse_endpoints("http://a:1, http://b:2").unwrap(), ["http://a:1", "http://b:2"]);
        for bad in ["", "a:1", "https://a:1", "http://a", "http://:1", "http://a:x"] {
            assert!(parse_endpoints(bad).unwrap_err().to_string().starts_with("--etcd"), "{bad}");
        }
    }
}
