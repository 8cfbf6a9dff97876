//! The worker's gRPC service: checks each request, runs the model on the blocking pool, and refuses work
//! beyond its capacity (RESOURCE_EXHAUSTED) so that the coordinator, not a hidden queue here, decides
//! where work waits.
//!
//! Fencing: a request from a coordinator term older than the newest this worker has seen is refused
//! (FAILED_PRECONDITION), and a result is dropped (ABORTED) when a newer term has arrived meanwhile or this
//! worker's membership lapsed while it computed: that work has been given to someone else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use patchwork_shared::pb::{self, worker_service_server};
use patchwork_shared::wire;
use prost::Message;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::engine::{DecodeInput, DenoiseInput, Evaluator};
use crate::membership::{Gate, Ticket};
use crate::metrics::WorkerMetrics;
use crate::model::ModelError;

/// Serves one evaluator with `capacity` evaluations at a time.
pub struct WorkerService {
    evaluator: Arc<dyn Evaluator>,
    slots: Arc<Semaphore>,
    description: pb::WorkerDescription,
    evaluations: AtomicU64,
    gate: Arc<Gate>,
    /// The newest coordinator term seen in a fence.
    term: Arc<AtomicU64>,
    metrics: Arc<WorkerMetrics>,
}

/// What a request was admitted under, checked again before its result goes out.
struct Admission {
    ticket: Ticket,
    term: u64,
}

/// Whether the result of an admitted request may still go out.
fn release(gate: &Gate, newest_term: &AtomicU64, admission: &Admission) -> Result<(), Status> {
    gate.still_valid(admission.ticket)?;
    let newest = newest_term.load(Ordering::SeqCst);
    if admission.term < newest {
        tracing::warn!(term = admission.term, newest, "a newer leader took over during an evaluation; result dropped");
        return Err(Status::aborted(format!(
            "term {} was superseded by term {newest} during the evaluation; the result is dropped",
            admission.term
        )));
    }
    Ok(())
}

impl WorkerService {
    /// Serves `evaluator`: one evaluation at a time per shard group when it has groups, else `capacity`
    /// at once on `devices`.
    pub fn new(evaluator: Arc<dyn Evaluator>, capacity: usize, devices: Vec<String>) -> Self {
        let groups = evaluator.shard_groups().unwrap_or_else(|| {
            (0..capacity)
                .map(|index| pb::ShardGroup {
                    index: index as u32,
                    devices: devices.clone(),
                    healthy: true,
                    ..Default::default()
                })
                .collect()
        });
        let capacity = groups.len().max(1);
        let mut devices: Vec<String> = groups.iter().flat_map(|g| g.devices.iter().cloned()).collect();
        devices.dedup();
        let description = pb::WorkerDescription {
            model: Some(pb::ModelInfo::from(evaluator.geometry())),
            capacity: capacity as u32,
            devices: devices.iter().map(|name| pb::Device { name: name.clone() }).collect(),
            groups,
        };
        let slots = Arc::new(Semaphore::new(capacity));
        let metrics = Arc::new(WorkerMetrics::new(evaluator.clone(), slots.clone(), capacity, devices));
        Self {
            evaluator,
            slots,
            metrics,
            description,
            evaluations: AtomicU64::new(0),
            gate: Gate::always_open(),
            term: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Takes work only while `gate` is open (cluster mode).
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Self {
        self.gate = gate;
        self
    }

    /// Admits a request: the worker is registered and the fence's term is not older than the newest seen.
    fn admit(&self, fence: Option<&pb::Fence>) -> Result<Admission, Status> {
        let ticket = self.gate.admit()?;
        let term = fence.map_or(0, |f| f.term);
        let newest = self.term.fetch_max(term, Ordering::SeqCst).max(term);
        if term < newest {
            return Err(Status::failed_precondition(format!(
                "fence.term: {term} is older than term {newest}, which a newer coordinator leader has used"
            )));
        }
        Ok(Admission { ticket, term })
    }

    pub fn description(&self) -> &pb::WorkerDescription {
        &self.description
    }

    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        self.metrics.clone()
    }

    fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("worker at capacity ({} evaluations)", self.description.capacity))
        })
    }

    /// Reads a latent of the model's channel count whose sizes are whole patches.
    fn latent(&self, tensor: Option<&pb::Tensor>) -> Result<([usize; 4], Vec<f32>), Status> {
        let (shape, values) =
            wire::read_f32("latent", tensor, None).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let g = self.evaluator.geometry();
        let dims: [usize; 4] = shape
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument(format!("latent: shape {shape:?} is not [C, F, H, W]")))?;
        if dims[0] != g.latent_channels || dims[1] == 0 || dims[2] == 0 || dims[3] == 0 {
            return Err(Status::invalid_argument(format!(
                "latent: shape {dims:?} needs {} channels and nonzero sizes",
                g.latent_channels
            )));
        }
        if !dims[2].is_multiple_of(g.patch[1]) || !dims[3].is_multiple_of(g.patch[2]) {
            return Err(Status::invalid_argument(format!("latent: {}x{} is not whole patches", dims[2], dims[3])));
        }
        Ok((dims, values))
    }

    /// Runs `work` on the blocking pool. The slot travels with it: a request the coordinator abandons
    /// (cancel, timeout) keeps its slot until the computation really ends.
    ///
    /// When the work ends, the result is checked against the fence it was admitted under, in the blocking
    /// task itself: the handler may be gone by then (the coordinator gave up), but the drop is still logged.
    async fn run<T: Send + 'static>(
        &self,
        slot: tokio::sync::OwnedSemaphorePermit,
        admission: Admission,
        work: impl FnOnce(&dyn Evaluator) -> Result<T, ModelError> + Send + 'static,
    ) -> Result<T, Status> {
        let evaluator = self.evaluator.clone();
        let (gate, newest_term) = (self.gate.clone(), self.term.clone());
        let result = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let result = work(evaluator.as_ref());
            release(&gate, &newest_term, &admission).map(|()| result)
        })
        .await
        .map_err(|e| Status::internal(format!("evaluation panicked: {e}")))??;
        self.evaluations.fetch_add(1, Ordering::Relaxed);
        result.map_err(|e| match e {
            ModelError::InvalidInput { .. } => Status::invalid_argument(e.to_string()),
            ModelError::GroupFailed(_) => Status::unavailable(e.to_string()),
            ModelError::Busy(_) => Status::resource_exhausted(e.to_string()),
            other => {
                tracing::error!(error = %other, "evaluation failed");
                Status::internal(other.to_string())
            }
        })
    }
}

#[tonic::async_trait]
impl worker_service_server::WorkerService for WorkerService {
    async fn describe(&self, _: Request<pb::DescribeRequest>) -> Result<Response<pb::WorkerDescription>, Status> {
        let mut description = self.description.clone();
        if let Some(groups) = self.evaluator.shard_groups() {
            description.groups = groups;
        }
        Ok(Response::new(description))
    }

    async fn denoise(&self, request: Request<pb::DenoiseRequest>) -> Result<Response<pb::DenoiseResponse>, Status> {
        let (received, started) = (request.get_ref().encoded_len(), Instant::now());
        let answer = self.denoise_now(request.into_inner()).await;
        self.metrics.answered("denoise", received, &answer, started.elapsed());
        answer.map(Response::new)
    }

    async fn decode(&self, request: Request<pb::DecodeRequest>) -> Result<Response<pb::DecodeResponse>, Status> {
        let (received, started) = (request.get_ref().encoded_len(), Instant::now());
        let answer = self.decode_now(request.into_inner()).await;
        self.metrics.answered("decode", received, &answer, started.elapsed());
        answer.map(Response::new)
    }
}

impl WorkerService {
    async fn denoise_now(&self, req: pb::DenoiseRequest) -> Result<pb::DenoiseResponse, Status> {
        let admission = self.admit(req.fence.as_ref())?;
        let slot = self.slot()?;
        let (shape, latent) = self.latent(req.latent.as_ref())?;
        if !req.timestep.is_finite() || !req.guidance_scale.is_finite() {
            return Err(Status::invalid_argument("timestep and guidance_scale must be finite"));
        }
        if !req.frame_timesteps.is_empty() {
            if req.frame_timesteps.len() != shape[1] {
                return Err(Status::invalid_argument(format!(
                    "frame_timesteps: {} timesteps for a window of {} latent frames",
                    req.frame_timesteps.len(),
                    shape[1]
                )));
            }
            if req.frame_timesteps.iter().any(|t| !(0.0..=1000.0).contains(t)) {
                return Err(Status::invalid_argument("frame_timesteps: every timestep must lie in 0..=1000"));
            }
        }
        let input = DenoiseInput {
            shape,
            latent,
            timestep: req.timestep,
            frame_timesteps: req.frame_timesteps,
            prompt: req.prompt,
            negative_prompt: req.negative_prompt,
            guidance_scale: req.guidance_scale,
        };
        tracing::debug!(fence = ?req.fence, ?shape, "denoise");
        let output = self.run(slot, admission, move |e| e.denoise(&input)).await?;
        Ok(pb::DenoiseResponse { fence: req.fence, output: Some(wire::f32_tensor(&shape, &output)) })
    }

    async fn decode_now(&self, req: pb::DecodeRequest) -> Result<pb::DecodeResponse, Status> {
        let admission = self.admit(req.fence.as_ref())?;
        let slot = self.slot()?;
        let (shape, latent) = self.latent(req.latent.as_ref())?;
        let context_frames = req.context_frames as usize;
        if context_frames >= shape[1] {
            return Err(Status::invalid_argument(format!(
                "context_frames: {context_frames} leaves none of the chunk's {} frames",
                shape[1]
            )));
        }
        let input = DecodeInput { shape, latent, context_frames };
        tracing::debug!(fence = ?req.fence, ?shape, "decode");
        let frames = self.run(slot, admission, move |e| e.decode(&input)).await?;
        Ok(pb::DecodeResponse { fence: req.fence, frames: Some(wire::u8_tensor(&frames.shape, frames.data)) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use patchwork_shared::model::ModelGeometry;
    use tonic::Code;

    use super::worker_service_server::WorkerService as _;
    use super::*;
    use crate::engine::LoadTest;

    fn request(shape: &[usize]) -> pb::DenoiseRequest {
        let n = shape.iter().product();
        pb::DenoiseRequest {
            latent: Some(wire::f32_tensor(shape, &vec![0.5; n])),
            timestep: 500.0,
            prompt: "p".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_full_worker_pushes_back_instead_of_queueing() {
        let evaluator = Arc::new(LoadTest::new(ModelGeometry::tiny(), Duration::from_millis(300)));
        let service = Arc::new(WorkerService::new(evaluator, 1, vec!["cpu".into()]));
        let busy = {
            let service = service.clone();
            tokio::spawn(async move { service.denoise(Request::new(request(&[16, 1, 2, 2]))).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = service.denoise(Request::new(request(&[16, 1, 2, 2]))).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let answer = busy.await.unwrap().unwrap().into_inner();
        assert_eq!(answer.output.unwrap().shape, vec![16, 1, 2, 2]);
        // The slot is free again.
        assert!(service.denoise(Request::new(request(&[16, 1, 2, 2]))).await.is_ok());
    }

    #[tokio::test]
    async fn malformed_requests_are_invalid_arguments() {
        let evaluator = Arc::new(LoadTest::new(ModelGeometry::tiny(), Duration::ZERO));
        let service = WorkerService::new(evaluator, 2, vec!["cpu".into()]);
        for shape in [vec![15, 1, 2, 2], vec![16, 1, 3, 2], vec![16, 2, 2], vec![16, 0, 2, 2]] {
            let err = service.denoise(Request::new(request(&shape))).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{shape:?}");
            assert!(err.message().starts_with("latent"), "{}", err.message());
        }
        let mut nan = request(&[16, 1, 2, 2]);
        nan.timestep = f32::NAN;
        assert_eq!(service.denoise(Request::new(nan)).await.unwrap_err().code(), Code::InvalidArgument);
        for frame_timesteps in [vec![500.0], vec![500.0, 1200.0], vec![f32::NAN, 0.0]] {
            let mut r = request(&[16, 2, 2, 2]);
            r.frame_timesteps = frame_timesteps.clone();
            let err = service.denoise(Request::new(r)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{frame_timesteps:?}");
            assert!(err.message().starts_with("frame_timesteps"), "{}", err.message());
        }
        let mut held = request(&[16, 2, 2, 2]);
        held.frame_timesteps = vec![0.0, 500.0];
        assert!(service.denoise(Request::new(held)).await.is_ok());
        let decode =
            pb::DecodeRequest { latent: request(&[16, 2, 2, 2]).latent, context_frames: 2, ..Default::default() };
        let err = service.decode(Request::new(decode)).await.unwrap_err();
        assert!(err.message().starts_with("context_frames"), "{}", err.message());
    }

    #[tokio::test]
    async fn stale_terms_and_lapsed_membership_are_refused() {
        let evaluator = Arc::new(LoadTest::new(ModelGeometry::tiny(), Duration::ZERO));
        let gate = Gate::closed();
        let service = WorkerService::new(evaluator, 2, vec!["cpu".into()]).with_gate(gate.clone());
        let fenced = |term| {
            let mut r = request(&[16, 1, 2, 2]);
            r.fence = Some(pb::Fence { term, ..Default::default() });
            Request::new(r)
        };
        assert_eq!(service.denoise(fenced(5)).await.unwrap_err().code(), Code::Unavailable);
        let (health, lapsed) =
            patchwork_shared::cluster::LeaseHealth::manual(std::time::Instant::now() + Duration::from_secs(60));
        gate.open(1, health);
        assert!(service.denoise(fenced(5)).await.is_ok());
        let stale = service.denoise(fenced(4)).await.unwrap_err();
        assert_eq!(stale.code(), Code::FailedPrecondition);
        assert!(stale.message().starts_with("fence.term"), "{}", stale.message());
        assert!(service.denoise(fenced(6)).await.is_ok());
        lapsed.cancel();
        assert_eq!(service.denoise(fenced(6)).await.unwrap_err().code(), Code::Unavailable);
    }
}
