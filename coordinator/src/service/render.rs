//! The client API (`patchwork.v1.RenderService`): requests are validated here, once, into domain types;
//! the store, pool and runners behind it trust what they get.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use patchwork_shared::pb::{self, render_service_server::RenderService};
use patchwork_shared::spec::{requested_model, FieldError, JobSpec};
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

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

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Debug)]
pub struct RenderApi {
    pub store: Arc<JobStore>,
    pub pool: Arc<WorkerPool>,
    pub next_id: AtomicU64,
}

impl RenderApi {
    pub fn new(store: Arc<JobStore>, pool: Arc<WorkerPool>) -> Self {
        Self { store, pool, next_id: AtomicU64::new(0) }
    }

    /// A job id unique across coordinator restarts: the start time and a counter.
    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("{:012x}{:04x}", (nanos / 1000) as u64 & 0xffff_ffff_ffff, n & 0xffff)
    }

    fn job(&self, id: &str) -> Result<pb::Job, Status> {
        if id.is_empty() {
            return Err(FieldError::new("job_id", "must not be empty").into());
        }
        self.store.get(id).ok_or_else(|| Status::not_found(format!("job_id: no job {id:?}")))
    }

    pub fn cluster_state(&self) -> pb::ClusterState {
        let (workers, models) = self.pool.snapshot();
        let (queued, running) = self.store.counts();
        pb::ClusterState { workers, models, queued_jobs: queued as u32, running_jobs: running as u32 }
    }
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
        let (job, created) = self.store.submit(id, spec, &req.request_id).map_err(|e| match e {
            SubmitError::QueueFull(_) => Status::resource_exhausted(e.to_string()),
        })?;
        if created {
            tracing::info!(job = %job.id, "job queued");
        }
        Ok(Response::new(pb::SubmitJobResponse { job: Some(job), created }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.job(&request.into_inner().job_id)?))
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
        let jobs = self.store.list(&req.states);
        let offset = offset.min(jobs.len());
        let end = offset.saturating_add(page).min(jobs.len());
        let next_page_token = if end < jobs.len() { end.to_string() } else { String::new() };
        let jobs = jobs.get(offset.min(end)..end).map(<[pb::Job]>::to_vec).unwrap_or_default();
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token }))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        self.job(&id)?;
        let job = self.store.cancel(&id).ok_or_else(|| Status::not_found(format!("job_id: no job {id:?}")))?;
        tracing::info!(job = %id, "cancel requested");
        Ok(Response::new(job))
    }

    type WatchJobStream = BoxStream<pb::Job>;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = request.into_inner().job_id;
        self.job(&id)?;
        let mut updates =
            self.store.subscribe(&id).ok_or_else(|| Status::not_found(format!("job_id: no job {id:?}")))?;
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
                    changed = updates.changed() => if changed.is_err() { return },
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
        self.job(&id)?;
        let path = self.store.video(&id)?;
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
        Ok(Response::new(self.cluster_state()))
    }

    type WatchClusterStream = BoxStream<pb::ClusterState>;

    async fn watch_cluster(
        &self,
        _: Request<pb::WatchClusterRequest>,
    ) -> Result<Response<Self::WatchClusterStream>, Status> {
        let mut pool_changes = self.pool.changes.subscribe();
        let mut store_changes = self.store.changes.subscribe();
        let (store, pool) = (self.store.clone(), self.pool.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let api = RenderApi::new(store, pool);
            loop {
                if tx.send(Ok(api.cluster_state())).await.is_err() {
                    return;
                }
                // At most five updates a second, however busy the cluster is.
                tokio::time::sleep(Duration::from_millis(200)).await;
                tokio::select! {
                    r = pool_changes.changed() => if r.is_err() { return },
                    r = store_changes.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(stream_of(rx)))
    }
}
