//! The in-memory job store: every job's spec, state and progress, the priority queue of jobs waiting to
//! run, and a watch channel per job that `WatchJob` streams from. One mutex, never held across an await.
//!
//! In cluster mode the leader's store has a journal: every change that matters after a failover (state,
//! step, decode progress) is handed to it, and it writes the job to etcd.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use patchwork_shared::pb;
use patchwork_shared::spec::JobSpec;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Why a submission was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full ({0} jobs waiting); try again later")]
    QueueFull(usize),
}

/// A job as the store keeps it.
#[derive(Debug)]
struct Record {
    spec: Arc<JobSpec>,
    job: pb::Job,
    seq: u64,
    cancel: CancellationToken,
    video: Option<PathBuf>,
    updates: watch::Sender<pb::Job>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<String, Record>,
    by_request: HashMap<String, String>,
    /// Queued jobs: highest priority first, then oldest first.
    queue: BinaryHeap<(i32, Reverse<u64>, String)>,
    next_seq: u64,
    running: usize,
    /// Jobs in state QUEUED (the heap may still hold cancelled ones until they are popped).
    queued: usize,
}

/// What a job runner gets when the scheduler hands it a job.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub spec: Arc<JobSpec>,
    pub cancel: CancellationToken,
}

/// Takes durable changes of jobs (cluster mode: written to etcd by the leader).
pub trait Journal: Send + Sync + std::fmt::Debug {
    fn record(&self, job: &pb::Job);
}

/// What of a job survives a failover: its state and step, not its per-window progress.
fn durable_view(job: &pb::Job) -> (i32, u32, u32, u32) {
    let p = job.progress.as_ref();
    (job.state, p.map_or(0, |p| p.step), p.map_or(0, |p| p.decoded_chunks), p.map_or(0, |p| p.decode_chunks))
}

#[derive(Debug)]
pub struct JobStore {
    inner: Mutex<Inner>,
    journal: Option<Arc<dyn Journal>>,
    queue_limit: usize,
    /// Woken when a job is queued.
    pub queued: Notify,
    /// Bumped on every change that the cluster view shows (queue length, running count).
    pub changes: watch::Sender<u64>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl JobStore {
    pub fn new(queue_limit: usize) -> Arc<Self> {
        Self::with_journal(queue_limit, None)
    }

    pub fn with_journal(queue_limit: usize, journal: Option<Arc<dyn Journal>>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            journal,
            queue_limit,
            queued: Notify::new(),
            changes: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn journal(&self, job: &pb::Job) {
        if let Some(journal) = &self.journal {
            journal.record(job);
        }
    }

    /// A new job record for a validated spec, not yet in the store.
    pub fn new_job(id: String, spec: &JobSpec, request_id: &str) -> pb::Job {
        pb::Job {
            id,
            spec: Some(pb::JobSpec::from(spec)),
            state: pb::JobState::Queued as i32,
            progress: Some(pb::Progress { steps: spec.steps as u32, ..Default::default() }),
            request_id: request_id.to_string(),
            created_ms: now_ms(),
            ..Default::default()
        }
    }

    /// The job an earlier submission with this request id made.
    pub fn by_request(&self, request_id: &str) -> Option<pb::Job> {
        let inner = self.lock();
        inner.by_request.get(request_id).and_then(|id| inner.jobs.get(id)).map(|r| r.job.clone())
    }

    /// Refuses a submission when the queue is full.
    pub fn check_room(&self) -> Result<(), SubmitError> {
        let queued = self.lock().queued;
        if queued >= self.queue_limit {
            return Err(SubmitError::QueueFull(queued));
        }
        Ok(())
    }

    /// Queues a validated job, or returns the job an earlier submission with the same request id made
    /// (`false`).
    pub fn submit(&self, id: String, spec: JobSpec, request_id: &str) -> Result<(pb::Job, bool), SubmitError> {
        if !request_id.is_empty() {
            if let Some(existing) = self.by_request(request_id) {
                return Ok((existing, false));
            }
        }
        self.check_room()?;
        let job = Self::new_job(id, &spec, request_id);
        self.insert(job.clone(), spec, None);
        Ok((job, true))
    }

    /// Puts a job into the store as it is: a queued one joins the queue (a job that was running when its
    /// leader died is queued again, to resume from its checkpoint), a finished one is kept for reading.
    pub fn insert(&self, mut job: pb::Job, spec: JobSpec, video: Option<PathBuf>) {
        let mut inner = self.lock();
        if inner.jobs.contains_key(&job.id) {
            return;
        }
        let terminal = is_terminal(job.state);
        if !terminal {
            job.state = pb::JobState::Queued as i32;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let id = job.id.clone();
        if !terminal {
            inner.queue.push((spec.priority, Reverse(seq), id.clone()));
            inner.queued += 1;
        }
        if !job.request_id.is_empty() {
            inner.by_request.insert(job.request_id.clone(), id.clone());
        }
        let record = Record {
            spec: Arc::new(spec),
            job: job.clone(),
            seq,
            cancel: CancellationToken::new(),
            video,
            updates: watch::channel(job).0,
        };
        inner.jobs.insert(id, record);
        drop(inner);
        if !terminal {
            self.queued.notify_one();
        }
        self.changes.send_modify(|v| *v += 1);
    }

    /// Takes the highest-priority queued job that `runnable` accepts (a job for a model no worker serves
    /// waits, in the queue, without blocking the others) and marks it running.
    pub fn claim_next(&self, runnable: impl Fn(&JobSpec) -> bool) -> Option<Claimed> {
        let mut inner = self.lock();
        let mut skipped = Vec::new();
        let mut claimed = None;
        while let Some(entry) = inner.queue.pop() {
            let Some(record) = inner.jobs.get_mut(&entry.2) else { continue };
            if record.job.state != pb::JobState::Queued as i32 {
                continue;
            }
            if !runnable(&record.spec) {
                skipped.push(entry);
                continue;
            }
            record.job.state = pb::JobState::EncodingPrompts as i32;
            record.job.started_ms = now_ms();
            record.updates.send_replace(record.job.clone());
            if let Some(journal) = &self.journal {
                journal.record(&record.job);
            }
            claimed = Some(Claimed { id: entry.2, spec: record.spec.clone(), cancel: record.cancel.clone() });
            inner.running += 1;
            inner.queued -= 1;
            break;
        }
        inner.queue.extend(skipped);
        drop(inner);
        if claimed.is_some() {
            self.changes.send_modify(|v| *v += 1);
        }
        claimed
    }

    pub fn get(&self, id: &str) -> Option<pb::Job> {
        self.lock().jobs.get(id).map(|r| r.job.clone())
    }

    /// Follows a job's changes.
    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<pb::Job>> {
        self.lock().jobs.get(id).map(|r| r.updates.subscribe())
    }

    /// Jobs in the given states (all when empty), newest first.
    pub fn list(&self, states: &[i32]) -> Vec<pb::Job> {
        let inner = self.lock();
        let mut records: Vec<&Record> =
            inner.jobs.values().filter(|r| states.is_empty() || states.contains(&r.job.state)).collect();
        records.sort_by_key(|r| Reverse(r.seq));
        records.into_iter().map(|r| r.job.clone()).collect()
    }

    /// Cancels a job: a queued one at once, a running one through its token (the runner stops at the next
    /// step boundary and reports [`finish`](Self::finish)). Finished jobs are left as they are.
    pub fn cancel(&self, id: &str) -> Option<pb::Job> {
        let mut inner = self.lock();
        let record = inner.jobs.get_mut(id)?;
        record.cancel.cancel();
        let was_queued = record.job.state == pb::JobState::Queued as i32;
        if was_queued {
            record.job.state = pb::JobState::Cancelled as i32;
            record.job.finished_ms = now_ms();
            record.updates.send_replace(record.job.clone());
            self.journal(&record.job);
        }
        let job = record.job.clone();
        if was_queued {
            inner.queued -= 1;
        }
        drop(inner);
        self.changes.send_modify(|v| *v += 1);
        Some(job)
    }

    /// Applies a change to a running job and tells its watchers.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut pb::Job)) {
        let mut inner = self.lock();
        if let Some(record) = inner.jobs.get_mut(id) {
            let before = durable_view(&record.job);
            change(&mut record.job);
            record.updates.send_replace(record.job.clone());
            if durable_view(&record.job) != before {
                self.journal(&record.job);
            }
        }
    }

    /// Ends a running job in `state` (DONE, FAILED or CANCELLED).
    pub fn finish(&self, id: &str, state: pb::JobState, error: Option<String>, video: Option<(PathBuf, u64)>) {
        let mut inner = self.lock();
        if let Some(record) = inner.jobs.get_mut(id) {
            record.job.state = state as i32;
            record.job.error = error.unwrap_or_default();
            record.job.finished_ms = now_ms();
            if let Some((path, bytes)) = video {
                record.job.video_bytes = bytes;
                record.video = Some(path);
            }
            for window in record.job.progress.iter_mut().flat_map(|p| p.windows.iter_mut()) {
                window.worker.clear();
            }
            record.updates.send_replace(record.job.clone());
            self.journal(&record.job);
            inner.running = inner.running.saturating_sub(1);
        }
        drop(inner);
        self.changes.send_modify(|v| *v += 1);
    }

    /// The finished video's path, or why there is none.
    pub fn video(&self, id: &str) -> Result<PathBuf, tonic::Status> {
        let inner = self.lock();
        let record = inner.jobs.get(id).ok_or_else(|| tonic::Status::not_found(format!("job_id: no job {id:?}")))?;
        record.video.clone().ok_or_else(|| {
            let state = pb::JobState::try_from(record.job.state).map_or("unknown", |s| s.as_str_name());
            tonic::Status::failed_precondition(format!("job {id} has no video (state {state})"))
        })
    }

    /// (queued, running) job counts.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.queued, inner.running)
    }
}

/// Whether a job in `state` will change no more.
pub fn is_terminal(state: i32) -> bool {
    [pb::JobState::Done, pb::JobState::Failed, pb::JobState::Cancelled].iter().any(|s| *s as i32 == state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchwork_shared::model::ModelGeometry;

    fn spec(priority: i32) -> JobSpec {
        let wire = pb::JobSpec { prompt: "p".into(), priority, ..Default::default() };
        JobSpec::validate(&wire, &ModelGeometry::tiny(), 1).unwrap()
    }

    #[test]
    fn higher_priority_first_then_oldest() {
        let store = JobStore::new(10);
        store.submit("a".into(), spec(0), "").unwrap();
        store.submit("b".into(), spec(5), "").unwrap();
        store.submit("c".into(), spec(0), "").unwrap();
        let order: Vec<String> = std::iter::from_fn(|| store.claim_next(|_| true).map(|c| c.id)).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn jobs_nobody_can_run_wait_without_blocking_the_rest() {
        let store = JobStore::new(10);
        store.submit("a".into(), spec(9), "").unwrap();
        store.submit("b".into(), spec(0), "").unwrap();
        assert_eq!(store.claim_next(|s| s.priority == 0).map(|c| c.id).as_deref(), Some("b"));
        assert!(store.claim_next(|s| s.priority == 0).is_none());
        assert_eq!(store.get("a").unwrap().state, pb::JobState::Queued as i32);
        assert_eq!(store.claim_next(|_| true).map(|c| c.id).as_deref(), Some("a"));
    }

    #[test]
    fn request_ids_make_submission_idempotent_and_the_queue_is_bounded() {
        let store = JobStore::new(2);
        let (first, created) = store.submit("a".into(), spec(0), "req-1").unwrap();
        assert!(created);
        let (again, created) = store.submit("b".into(), spec(0), "req-1").unwrap();
        assert!(!created);
        assert_eq!(again.id, first.id);
        store.submit("c".into(), spec(0), "").unwrap();
        assert!(matches!(store.submit("d".into(), spec(0), ""), Err(SubmitError::QueueFull(2))));
        assert_eq!(store.list(&[]).len(), 2);
    }

    #[test]
    fn cancelled_queued_jobs_are_never_claimed() {
        let store = JobStore::new(10);
        store.submit("a".into(), spec(0), "").unwrap();
        let job = store.cancel("a").unwrap();
        assert_eq!(job.state, pb::JobState::Cancelled as i32);
        assert!(store.claim_next(|_| true).is_none());
        assert!(store.video("a").unwrap_err().message().contains("CANCELLED"));
        // Cancelled jobs do not count against the queue's bound.
        let small = JobStore::new(1);
        small.submit("x".into(), spec(0), "").unwrap();
        small.cancel("x");
        small.submit("y".into(), spec(0), "").unwrap();
        assert_eq!(small.counts(), (1, 0));
        assert_eq!(store.video("zz").unwrap_err().code(), tonic::Code::NotFound);
    }
}
