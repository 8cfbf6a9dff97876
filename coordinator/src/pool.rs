//! The workers the coordinator knows: their registrations, heartbeats, free slots and health. Work is
//! handed out as [`Lease`]s: a slot on one worker, given back when the lease is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use patchwork_shared::model::ModelGeometry;
use patchwork_shared::pb::{self, worker_service_client::WorkerServiceClient};
use patchwork_shared::spec::FieldError;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::store::now_ms;

/// Largest message between coordinator and worker.
pub const MAX_WORKER_MESSAGE_BYTES: usize = 512 << 20;

#[derive(Debug)]
struct Entry {
    /// The worker's stable name (its address when it registers over gRPC) and registration generation.
    name: String,
    generation: u64,
    /// Registered through etcd: its lease, not heartbeats here, says whether it is alive.
    in_etcd: bool,
    address: String,
    client: WorkerServiceClient<Channel>,
    description: pb::WorkerDescription,
    model: String,
    capacity: usize,
    in_flight: usize,
    activity: HashMap<u64, String>,
    last_seen: Instant,
    last_seen_ms: u64,
    unhealthy_until: Option<Instant>,
    evaluations: u64,
    failures: u64,
    /// Cancelled when the worker leaves the pool: work in flight there is abandoned and redone elsewhere.
    departed: CancellationToken,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.departed.cancel();
    }
}

#[derive(Debug, Default)]
struct Inner {
    workers: HashMap<String, Entry>,
    /// Models every coordinator knows plus those workers reported.
    models: HashMap<String, ModelGeometry>,
    next_id: u64,
    next_lease: u64,
}

#[derive(Debug)]
pub struct WorkerPool {
    inner: Mutex<Inner>,
    freed: Notify,
    heartbeat: Duration,
    /// Bumped on every change the cluster view shows.
    pub changes: watch::Sender<u64>,
}

/// One slot on one worker, held while a request runs there.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<WorkerPool>,
    pub worker_id: String,
    pub client: WorkerServiceClient<Channel>,
    /// Cancelled when the worker leaves the pool (its lease ran out, it was reaped or registered anew).
    pub departed: CancellationToken,
    key: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(&self.worker_id, self.key);
    }
}

impl WorkerPool {
    pub fn new(heartbeat: Duration) -> Arc<Self> {
        let models = ModelGeometry::presets().into_iter().map(|g| (g.name.clone(), g)).collect();
        Arc::new(Self {
            inner: Mutex::new(Inner { models, ..Default::default() }),
            freed: Notify::new(),
            heartbeat,
            changes: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// Adds a worker that registered over gRPC, replacing an earlier registration at the same address.
    /// Returns its new id.
    pub fn register(&self, address: &str, description: pb::WorkerDescription) -> Result<String, FieldError> {
        let mut id = String::new();
        self.add(address, 1, address, description, false, |inner| {
            inner.next_id += 1;
            id = format!("w{}", inner.next_id);
            id.clone()
        })?;
        Ok(id)
    }

    /// Adds or replaces a worker registered in etcd (cluster mode). Its id is `name#generation`, the same on
    /// every coordinator.
    pub fn register_member(&self, record: pb::WorkerRecord) -> Result<String, FieldError> {
        if record.name.is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        let id = format!("{}#{}", record.name, record.generation);
        let description = record.description.unwrap_or_default();
        let mut inner = self.lock();
        let known = match inner.workers.get_mut(&id) {
            Some(entry) if entry.address == record.address => {
                // The same registration again: its shard groups' health may have changed.
                entry.description.groups = description.groups.clone();
                true
            }
            _ => false,
        };
        drop(inner);
        if !known {
            self.add(&record.name, record.generation, &record.address, description, true, |_| id.clone())?;
        }
        Ok(id)
    }

    /// Drops the etcd member `name` (its key was deleted or its lease ran out).
    pub fn remove_member(&self, name: &str) {
        let mut inner = self.lock();
        let before = inner.workers.len();
        inner.workers.retain(|_, e| !(e.in_etcd && e.name == name));
        let changed = inner.workers.len() != before;
        drop(inner);
        if changed {
            tracing::info!(worker = %name, "worker left the cluster");
            self.changed();
        }
    }

    /// Keeps only the etcd members in `names` (after a resync, for members deleted while not watching).
    pub fn retain_members(&self, names: &[String]) {
        let mut inner = self.lock();
        let before = inner.workers.len();
        inner.workers.retain(|_, e| !e.in_etcd || names.contains(&e.name));
        let changed = inner.workers.len() != before;
        drop(inner);
        if changed {
            self.changed();
        }
    }

    fn add(
        &self,
        name: &str,
        generation: u64,
        address: &str,
        description: pb::WorkerDescription,
        in_etcd: bool,
        make_id: impl FnOnce(&mut Inner) -> String,
    ) -> Result<(), FieldError> {
        let geometry = ModelGeometry::try_from(
            description.model.as_ref().ok_or_else(|| FieldError::new("description.model", "missing"))?,
        )?;
        if description.capacity == 0 {
            return Err(FieldError::new("description.capacity", "must be positive"));
        }
        let endpoint = Endpoint::from_shared(address.to_string())
            .map_err(|e| FieldError::new("address", format!("{address:?} is not a URI: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let client = WorkerServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_WORKER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_WORKER_MESSAGE_BYTES);
        let mut inner = self.lock();
        if let Some(known) = inner.models.get(&geometry.name) {
            if *known != geometry {
                // Jobs were validated and planned against the known geometry; a second one under the same
                // name would change their windows.
                return Err(FieldError::new(
                    "description.model",
                    format!("model {:?} is known with another geometry: {known:?}", geometry.name),
                ));
            }
        }
        inner.workers.retain(|_, e| e.address != address && e.name != name);
        let id = make_id(&mut inner);
        inner.models.insert(geometry.name.clone(), geometry.clone());
        let entry = Entry {
            name: name.to_string(),
            generation,
            in_etcd,
            address: address.to_string(),
            client,
            model: geometry.name,
            capacity: description.capacity as usize,
            description,
            in_flight: 0,
            activity: HashMap::new(),
            last_seen: Instant::now(),
            last_seen_ms: now_ms(),
            unhealthy_until: None,
            evaluations: 0,
            failures: 0,
            departed: CancellationToken::new(),
        };
        inner.workers.insert(id.clone(), entry);
        drop(inner);
        tracing::info!(worker = %id, %address, generation, "worker registered");
        self.freed.notify_waiters();
        self.changed();
        Ok(())
    }

    /// Makes a model's geometry known (a stored job's model, before any worker for it registers).
    pub fn know_model(&self, geometry: ModelGeometry) {
        self.lock().models.entry(geometry.name.clone()).or_insert(geometry);
    }

    /// Records a heartbeat and the shard groups' health it reports (when it does); false for an id the
    /// pool does not know (the worker must register again).
    pub fn heartbeat(&self, id: &str, groups: Vec<pb::ShardGroup>) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.workers.get_mut(id) else { return false };
        entry.last_seen = Instant::now();
        entry.last_seen_ms = now_ms();
        if !groups.is_empty() {
            entry.description.groups = groups;
        }
        true
    }

    /// Drops workers silent for three heartbeat intervals (etcd members live and die by their leases).
    pub fn reap(&self) {
        let limit = self.heartbeat * 3;
        let mut inner = self.lock();
        let before = inner.workers.len();
        inner.workers.retain(|id, e| {
            let alive = e.in_etcd || e.last_seen.elapsed() <= limit;
            if !alive {
                tracing::warn!(worker = %id, address = %e.address, "worker missed its heartbeats; dropped");
            }
            alive
        });
        let changed = inner.workers.len() != before;
        drop(inner);
        if changed {
            self.changed();
        }
    }

    /// Workers registered now.
    pub fn worker_count(&self) -> usize {
        self.lock().workers.len()
    }

    /// Whether some registered worker serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.lock().workers.values().any(|e| e.model == model)
    }

    /// The geometry of a model the cluster knows.
    pub fn model(&self, name: &str) -> Option<ModelGeometry> {
        self.lock().models.get(name).cloned()
    }

    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().models.keys().cloned().collect();
        names.sort();
        names
    }

    /// A free slot on a healthy worker serving `model`, waiting for one. Workers in `avoid` (those that
    /// failed this piece of work) are used only when no other worker serves the model.
    pub async fn acquire(self: &Arc<Self>, model: &str, avoid: &[String], activity: &str) -> Lease {
        loop {
            let notified = self.freed.notified();
            if let Some(lease) = self.try_acquire(model, avoid, activity) {
                return lease;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn try_acquire(self: &Arc<Self>, model: &str, avoid: &[String], activity: &str) -> Option<Lease> {
        let mut inner = self.lock();
        let now = Instant::now();
        let serving: Vec<&String> = inner.workers.iter().filter(|(_, e)| e.model == model).map(|(id, _)| id).collect();
        let others_exist = serving.iter().any(|id| !avoid.contains(id));
        let best = inner
            .workers
            .iter()
            .filter(|(id, e)| {
                e.model == model
                    && e.in_flight < e.capacity
                    && e.unhealthy_until.is_none_or(|t| t <= now)
                    && !(others_exist && avoid.contains(id))
            })
            // Least loaded first; the id breaks ties so that the choice does not depend on hashing.
            .min_by(|(a_id, a), (b_id, b)| {
                (a.in_flight * b.capacity).cmp(&(b.in_flight * a.capacity)).then_with(|| a_id.cmp(b_id))
            })
            .map(|(id, _)| id.clone())?;
        inner.next_lease += 1;
        let key = inner.next_lease;
        let entry = inner.workers.get_mut(&best)?;
        entry.in_flight += 1;
        entry.activity.insert(key, activity.to_string());
        let client = entry.client.clone();
        let departed = entry.departed.clone();
        drop(inner);
        self.changed();
        Some(Lease { pool: self.clone(), worker_id: best, client, departed, key })
    }

    fn release(&self, id: &str, key: u64) {
        if let Some(entry) = self.lock().workers.get_mut(id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.activity.remove(&key);
        }
        self.freed.notify_waiters();
        self.changed();
    }

    /// Counts a finished evaluation.
    pub fn succeeded(&self, id: &str) {
        if let Some(entry) = self.lock().workers.get_mut(id) {
            entry.evaluations += 1;
            entry.unhealthy_until = None;
        }
    }

    /// Leaves a worker that refused work (at capacity) out of the next choices for `pause`.
    pub fn rest(&self, id: &str, pause: Duration) {
        if let Some(entry) = self.lock().workers.get_mut(id) {
            entry.unhealthy_until = Some(Instant::now() + pause);
        }
    }

    /// Counts a failed evaluation and rests the worker for two heartbeat intervals.
    pub fn failed(&self, id: &str) {
        if let Some(entry) = self.lock().workers.get_mut(id) {
            entry.failures += 1;
            entry.unhealthy_until = Some(Instant::now() + self.heartbeat * 2);
        }
        self.changed();
    }

    /// The cluster's workers and models as the API shows them.
    pub fn snapshot(&self) -> (Vec<pb::Worker>, Vec<pb::Model>) {
        let inner = self.lock();
        let now = Instant::now();
        let mut workers: Vec<pb::Worker> = inner
            .workers
            .iter()
            .map(|(id, e)| {
                let status = if e.unhealthy_until.is_some_and(|t| t > now) {
                    pb::WorkerStatus::Unhealthy
                } else if e.in_flight > 0 {
                    pb::WorkerStatus::Busy
                } else {
                    pb::WorkerStatus::Idle
                };
                let mut activity: Vec<(u64, String)> = e.activity.iter().map(|(k, v)| (*k, v.clone())).collect();
                activity.sort();
                pb::Worker {
                    id: id.clone(),
                    address: e.address.clone(),
                    model: e.model.clone(),
                    devices: e.description.devices.clone(),
                    groups: e.description.groups.clone(),
                    status: status as i32,
                    capacity: e.capacity as u32,
                    in_flight: e.in_flight as u32,
                    activity: activity.into_iter().map(|(_, a)| a).collect(),
                    last_seen_ms: e.last_seen_ms,
                    evaluations: e.evaluations,
                    failures: e.failures,
                    generation: e.generation,
                }
            })
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut models: Vec<pb::Model> = inner
            .models
            .values()
            .map(|g| pb::Model {
                name: g.name.clone(),
                native_frames: g.native_frames as u32,
                native_width: g.native_width as u32,
                native_height: g.native_height as u32,
            })
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        (workers, models)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(geometry: &ModelGeometry) -> pb::WorkerDescription {
        pb::WorkerDescription { model: Some(pb::ModelInfo::from(geometry)), capacity: 1, ..Default::default() }
    }

    #[tokio::test]
    async fn a_known_model_name_with_another_geometry_is_refused() {
        let pool = WorkerPool::new(Duration::from_secs(1));
        let mut impostor = ModelGeometry::tiny();
        impostor.name = "wan2.1-t2v-1.3b".into();
        let err = pool.register("http://127.0.0.1:1", description(&impostor)).unwrap_err();
        assert_eq!(err.field, "description.model");
        assert_eq!(pool.model("wan2.1-t2v-1.3b"), Some(ModelGeometry::wan2_1_t2v_1_3b()));
        let id = pool.register("http://127.0.0.1:1", description(&ModelGeometry::tiny())).unwrap();
        assert!(pool.serves("tiny") && !pool.serves("wan2.1-t2v-1.3b"));
        // Registering the same address again replaces the earlier registration.
        let again = pool.register("http://127.0.0.1:1", description(&ModelGeometry::tiny())).unwrap();
        assert_ne!(id, again);
        assert_eq!(pool.worker_count(), 1);
        assert!(!pool.heartbeat(&id, vec![]) && pool.heartbeat(&again, vec![]));
    }
}
