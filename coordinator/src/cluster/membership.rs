//! Following worker membership in etcd: read every registration, then watch for changes from the next
//! revision. A broken watch (etcd restarted, connection lost, revision compacted) starts over with a full
//! read, so the pool never misses a worker that came or went while nobody watched.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use patchwork_shared::cluster::{self, ClusterError, WORKERS};
use patchwork_shared::pb;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::pool::WorkerPool;

/// Keeps `pool`'s etcd members in step with etcd until `shutdown`.
pub async fn follow_members(client: Client, pool: Arc<WorkerPool>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match sync_then_watch(&client, &pool, &shutdown).await {
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, "watching worker membership failed; reading it again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn add(pool: &WorkerPool, value: &[u8]) -> Option<String> {
    let record = match pb::WorkerRecord::decode(value) {
        Ok(record) => record,
        Err(error) => {
            tracing::warn!(%error, "a worker registration in etcd is not a WorkerRecord; ignored");
            return None;
        }
    };
    let name = record.name.clone();
    if let Err(error) = pool.register_member(record) {
        tracing::warn!(worker = %name, %error, "worker registration refused");
        return None;
    }
    Some(name)
}

async fn sync_then_watch(client: &Client, pool: &WorkerPool, shutdown: &CancellationToken) -> Result<(), ClusterError> {
    let mut kv = client.kv_client();
    let all = cluster::timed(kv.get(WORKERS, Some(GetOptions::new().with_prefix()))).await?;
    let revision = all.header().map_or(0, |h| h.revision());
    let names: Vec<String> = all.kvs().iter().filter_map(|kv| add(pool, kv.value())).collect();
    pool.retain_members(&names);
    let mut watcher = client.watch_client();
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = cluster::timed(watcher.watch(WORKERS, Some(options))).await?;
    loop {
        let message = tokio::select! {
            m = stream.message() => m?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(answer) = message else {
            return Err(ClusterError::Watch("the membership watch ended".into()));
        };
        if answer.canceled() {
            return Err(ClusterError::Watch(format!(
                "the membership watch was cancelled (compacted at revision {}): {}",
                answer.compact_revision(),
                answer.cancel_reason()
            )));
        }
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    add(pool, kv.value());
                }
                EventType::Delete => {
                    if let Some(name) = kv.key_str().ok().and_then(|k| k.strip_prefix(WORKERS)) {
                        pool.remove_member(name);
                    }
                }
            }
        }
    }
}
