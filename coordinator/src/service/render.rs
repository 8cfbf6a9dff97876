//! The client API (`patchwork.v1.RenderService`): requests are validated here, once, into domain types;
//! the store, pool and runners behind it trust what they get.
//!
//! Three views serve it: a single coordinator's in-memory store; a cluster leader's store, whose writes go
//! to etcd first; and a cluster follower, which reads jobs from etcd and refuses writes with UNAVAILABLE and
//! the leader's address (message and `patchwork-leader` header).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use patchwork_shared::pb::{self, render_service_server::RenderService};
use patchwork_shared::spec::{requested_model, FieldError, JobSpec};
use patchwork_shared::windows::FusionMode;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::cluster::{jobs, Cluster, Term};
use crate::pool::WorkerPool;
use crate::runner::plan;
use crate::store::{is_terminal, now_ms, JobStore, SubmitError};

/// Largest SubmitJob request; larger ones get INVALID_ARGUMENT naming `request`.
pub const MAX_SUBMIT_BYTES: usize = 1 << 20;
/// Most windows one job may have (each is a request per step and an entry in the job's progress).
pub const MAX_WINDOWS: usize = 4096;
/// Bytes per FetchVideo message.
const VIDEO_CHUNK_BYTES: usize = 1 << 20;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// The response header naming the leader's address, on writes refused by a follower.
pub const LEADER_HEADER: &str = "patchwork-leader";
/// How often a follower re-reads a watched job from etcd.
const FOLLOWER_POLL: Duration = Duration::from_millis(250);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Where jobs live for this coordinator.
#[derive(Debug, Clone)]
pub enum Backend {
    Single(Arc<JobStore>),
    Cluster(Arc<Cluster>),
}

/// Who answers a request now.
enum View {
    Local(Arc<JobStore>),
    Leader(Arc<Cluster>, Arc<Term>),
    Follower(Arc<Cluster>, String),
}

#[derive(Debug, Clone)]
pub struct RenderApi {
    pub backend: Backend,
    pub pool: Arc<WorkerPool>,
    next_id: Arc<AtomicU64>,
}

impl RenderApi {
    pub fn new(backend: Backend, pool: Arc<WorkerPool>) -> Self {
        Self { backend, pool, next_id: Arc::new(AtomicU64::new(0)) }
    }

    fn view(&self) -> View {
        match &self.backend {
            Backend::Single(store) => View::Local(store.clone()),
            Backend::Cluster(cluster) => {
                let role = cluster.view();
                match role.lead {
                    Some(term) => View::Leader(cluster.clone(), term),
                    None => View::Follower(cluster.clone(), role.leader),
                }
            }
        }
    }

    /// A job id unique across coordinator restarts: the start time and a counter.
    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("{:012x}{:04x}", (nanos / 1000) as u64 & 0xffff_ffff_ffff, n & 0xffff)
    }

    pub async fn job(&self, id: &str) -> Result<pb::Job, Status> {
        if id.is_empty() {
            return Err(FieldError::new("job_id", "must not be empty").into());
        }
        let found = match self.view() {
            View::Local(store) => store.get(id),
            View::Leader(_, term) => term.store.get(id),
            View::Follower(cluster, _) => jobs::get(&cluster.client, id).await?,
        };
        found.ok_or_else(|| Status::not_found(format!("job_id: no job {id:?}")))
    }

    /// Where a finished job's video is: NOT_FOUND for no such job, FAILED_PRECONDITION for one that has
    /// none (yet).
    pub async fn video_path(&self, id: &str) -> Result<std::path::PathBuf, Status> {
        let job = self.job(id).await?;
        Ok(match self.view() {
            View::Local(store) => store.video(id)?,
            View::Leader(_, term) => term.store.video(id)?,
            View::Follower(cluster, _) => {
                if job.state != pb::JobState::Done as i32 {
                    let state = pb::JobState::try_from(job.state).map_or("unknown", |s| s.as_str_name());
                    return Err(Status::failed_precondition(format!("job {id} has no video (state {state})")));
                }
                // Coordinators share the data directory (a ReadWriteMany volume): checkpoints and videos.
                cluster.config.data_dir.join("videos").join(format!("{id}.mp4"))
            }
        })
    }

    /// Every job in `states` (all when empty), newest first.
    pub async fn jobs(&self, states: &[i32]) -> Result<Vec<pb::Job>, Status> {
        match self.view() {
            View::Local(store) => Ok(store.list(states)),
            View::Leader(_, term) => Ok(term.store.list(states)),
            View::Follower(cluster, _) => {
                let (stored, _) = jobs::load(&cluster.client).await?;
                let mut jobs: Vec<pb::Job> = stored
                    .into_iter()
                    .map(|(job, _)| job)
                    .filter(|j| states.is_empty() || states.contains(&j.state))
                    .collect();
                jobs.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
                Ok(jobs)
            }
        }
    }

    pub async fn cluster_state(&self) -> pb::ClusterState {
        let (workers, models) = self.pool.snapshot();
        let (role, leader, term, counts) = match self.view() {
            View::Local(store) => ("single", String::new(), 0, store.counts()),
            View::Leader(cluster, t) => ("leader", cluster.advertise.clone(), t.lead.term, t.store.counts()),
            View::Follower(cluster, leader) => {
                let term = cluster.view().term;
                let counts = self.jobs(&[]).await.map_or((0, 0), |jobs| {
                    let queued = jobs.iter().filter(|j| j.state == pb::JobState::Queued as i32).count();
                    (queued, jobs.iter().filter(|j| !is_terminal(j.state)).count() - queued)
                });
                ("follower", leader, term, counts)
            }
        };
        pb::ClusterState {
            workers,
            models,
            queued_jobs: counts.0 as u32,
            running_jobs: counts.1 as u32,
            role: role.into(),
            leader,
            term,
        }
    }
}

/// A follower's answer to a write: UNAVAILABLE, naming the leader.
fn not_the_leader(cluster: &Cluster, leader: &str) -> Status {
    if leader.is_empty() || leader == cluster.advertise {
        return Status::unavailable("no coordinator leads yet (an election or a takeover is under way); try again");
    }
    let mut status =
        Status::unavailable(format!("this coordinator is a follower; send writes to the leader at {leader}"));
    if let Ok(value) = leader.parse() {
        status.metadata_mut().insert(LEADER_HEADER, value);
    }
    status
}

fn stream_of<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<Result<T, Status>>) -> BoxStream<T> {
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl RenderService for RenderApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let req = request.into_inner();
        let size = req.encoded_len();
        if size > MAX_SUBMIT_BYTES {
            return Err(FieldError::new(
                "request",
                format!("is {size} bytes, more than the limit of {MAX_SUBMIT_BYTES}"),
            )
            .into());
        }
        if req.request_id.len() > 256 {
            return Err(FieldError::new("request_id", "is longer than 256 bytes").into());
        }
        let spec = req.spec.ok_or_else(|| FieldError::new("spec", "missing"))?;
        let model_name = requested_model(&spec);
        let model = self.pool.model(model_name).ok_or_else(|| {
            FieldError::new(
                "model",
                format!("unknown model {model_name:?} (known: {})", self.pool.model_names().join(", ")),
            )
        })?;
        let fallback_seed = now_ms() ^ 0x9e37_79b9_7f4a_7c15;
        let spec = JobSpec::validate(&spec, &model, fallback_seed)?;
        // Plan now, so that a job the runner could not plan, or one of absurdly many windows, is refused here.
        let plan = plan(&spec, &model).map_err(|e| FieldError::new("window_frames", e))?;
        if spec.fusion == FusionMode::Continue
            && plan
                .windows
                .iter()
                .any(|w| w.bbox.rows != plan.windows[0].bbox.rows || w.bbox.cols != plan.windows[0].bbox.cols)
        {
            return Err(FieldError::new(
                "fusion",
                format!(
                    "\"continue\" draws windows one after another along time and needs frames that fit one window \
                     ({}x{} or smaller), got {}x{}",
                    model.native_width, model.native_height, spec.width, spec.height
                ),
            )
            .into());
        }
        if plan.windows.len() > MAX_WINDOWS {
            return Err(FieldError::new(
                "frames",
                format!(
                    "{} frames of {}x{} make {} windows, more than {MAX_WINDOWS}: use longer windows or a smaller video",
                    spec.frames,
                    spec.width,
                    spec.height,
                    plan.windows.len()
                ),
            )
            .into());
        }
        let id = self.new_id();
        let full = |e: SubmitError| match e {
            SubmitError::QueueFull(_) => Status::resource_exhausted(e.to_string()),
        };
        let (job, created) = match self.view() {
            View::Local(store) => store.submit(id, spec, &req.request_id).map_err(full)?,
            View::Follower(cluster, leader) => return Err(not_the_leader(&cluster, &leader)),
            View::Leader(cluster, term) => {
                let store = &term.store;
                if let Some(existing) =
                    (!req.request_id.is_empty()).then(|| store.by_request(&req.request_id)).flatten()
                {
                    (existing, false)
                } else {
                    store.check_room().map_err(full)?;
                    // etcd first: a job is accepted once it is durable, and the request id's owner is decided
                    // there, across leaders.
                    let job = JobStore::new_job(id, &spec, &req.request_id);
                    match jobs::create(&cluster.client, &term.lead, &job, &model).await? {
                        jobs::Created::New => {
                            store.insert(job.clone(), spec, None);
                            (job, true)
                        }
                        jobs::Created::Existing(id) => match store.get(&id) {
                            Some(job) => (job, false),
                            None => (
                                jobs::get(&cluster.client, &id).await?.ok_or_else(|| {
                                    Status::unavailable("the job of this request_id is being created; try again")
                                })?,
                                false,
                            ),
                        },
                    }
                }
            }
        };
        if created {
            tracing::info!(job = %job.id, "job queued");
        }
        Ok(Response::new(pb::SubmitJobResponse { job: Some(job), created }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.job(&request.into_inner().job_id).await?))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        for &state in &req.states {
            if pb::JobState::try_from(state).is_err() || state == 0 {
                return Err(FieldError::new("states", format!("{state} is not a job state")).into());
            }
        }
        let page = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(FieldError::new("page_size", format!("{n} is more than {MAX_PAGE}")).into())
            }
            n => n,
        };
        let offset: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| FieldError::new("page_token", "is not a token this server gave"))?
        };
        let jobs = self.jobs(&req.states).await?;
        let offset = offset.min(jobs.len());
        let end = offset.saturating_add(page).min(jobs.len());
        let next_page_token = if end < jobs.len() { end.to_string() } else { String::new() };
        let jobs = jobs.get(offset.min(end)..end).map(<[pb::Job]>::to_vec).unwrap_or_default();
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token }))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        let found = self.job(&id).await?;
        let not_found = || Status::not_found(format!("job_id: no job {id:?}"));
        let job = match self.view() {
            View::Local(store) => store.cancel(&id).ok_or_else(not_found)?,
            View::Follower(cluster, leader) => return Err(not_the_leader(&cluster, &leader)),
            View::Leader(cluster, term) => {
                if is_terminal(found.state) {
                    return Ok(Response::new(found));
                }
                // Durable first: a leader that dies before the job stops must not let the next one resume it.
                jobs::mark_cancelled(&cluster.client, &term.lead, &id).await?;
                let job = term.store.cancel(&id).ok_or_else(not_found)?;
                term.journal.flush().await;
                job
            }
        };
        tracing::info!(job = %id, "cancel requested");
        Ok(Response::new(job))
    }

    type WatchJobStream = BoxStream<pb::Job>;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = request.into_inner().job_id;
        let first = self.job(&id).await?;
        let store = match self.view() {
            View::Local(store) => store,
            View::Leader(_, term) => term.store.clone(),
            View::Follower(cluster, _) => return Ok(Response::new(follow_from_etcd(cluster, first))),
        };
        let mut updates = store.subscribe(&id).ok_or_else(|| Status::not_found(format!("job_id: no job {id:?}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let job = updates.borrow_and_update().clone();
                let done = is_terminal(job.state);
                if tx.send(Ok(job)).await.is_err() || done {
                    return;
                }
                // A client that leaves ends the task, even if the job never changes again.
                tokio::select! {
                    changed = updates.changed() => if changed.is_err() {
                        // The store went away: this coordinator's leadership term ended.
                        let _ = tx.send(Err(Status::unavailable("this coordinator stopped leading; watch the job again"))).await;
                        return;
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(stream_of(rx)))
    }

    type FetchVideoStream = BoxStream<pb::VideoChunk>;

    async fn fetch_video(
        &self,
        request: Request<pb::FetchVideoRequest>,
    ) -> Result<Response<Self::FetchVideoStream>, Status> {
        let id = request.into_inner().job_id;
        let path = self.video_path(&id).await?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::internal(format!("job {id}: reading its video: {e}")))?;
        let total = file.metadata().await.map_err(|e| Status::internal(e.to_string()))?.len();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut offset = 0u64;
            loop {
                let mut data = vec![0u8; VIDEO_CHUNK_BYTES];
                let n = match file.read(&mut data).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("reading the video: {e}")))).await;
                        return;
                    }
                };
                if n == 0 {
                    return;
                }
                data.truncate(n);
                if tx.send(Ok(pb::VideoChunk { data, offset, total_bytes: total })).await.is_err() {
                    return;
                }
                offset += n as u64;
            }
        });
        Ok(Response::new(stream_of(rx)))
    }

    async fn get_cluster_state(
        &self,
        _: Request<pb::GetClusterStateRequest>,
    ) -> Result<Response<pb::ClusterState>, Status> {
        Ok(Response::new(self.cluster_state().await))
    }

    type WatchClusterStream = BoxStream<pb::ClusterState>;

    async fn watch_cluster(
        &self,
        _: Request<pb::WatchClusterRequest>,
    ) -> Result<Response<Self::WatchClusterStream>, Status> {
        let mut pool_changes = self.pool.changes.subscribe();
        let api = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let mut store_changes = match api.view() {
                    View::Local(store) => Some(store.changes.subscribe()),
                    View::Leader(_, term) => Some(term.store.changes.subscribe()),
                    View::Follower(..) => None,
                };
                if tx.send(Ok(api.cluster_state().await)).await.is_err() {
                    return;
                }
                // At most five updates a second, however busy the cluster is; a follower, which sees no job
                // changes, and a leader that may lose its term look again every second.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let store_changed = async {
                    match store_changes.as_mut() {
                        Some(changes) => changes.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = pool_changes.changed() => if r.is_err() { return },
                    _ = store_changed => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(stream_of(rx)))
    }
}

/// A follower's WatchJob: the job as etcd has it, re-read until it ends (step-level progress; the
/// per-window view lives on the leader).
fn follow_from_etcd(cluster: Arc<Cluster>, first: pb::Job) -> BoxStream<pb::Job> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut last = first;
        if tx.send(Ok(last.clone())).await.is_err() {
            return;
        }
        while !is_terminal(last.state) {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOWER_POLL) => {}
                _ = tx.closed() => return,
            }
            let job = match jobs::get(&cluster.client, &last.id).await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    let _ = tx.send(Err(Status::not_found(format!("job {} was removed", last.id)))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            if job != last {
                if tx.send(Ok(job.clone())).await.is_err() {
                    return;
                }
                last = job;
            }
        }
    });
    stream_of(rx)
}
