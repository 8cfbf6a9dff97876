//! The coordinator's side of worker membership: registrations and heartbeats.

use std::sync::Arc;

use patchwork_shared::pb::{self, worker_registry_server::WorkerRegistry};
use tonic::{Request, Response, Status};

use crate::pool::WorkerPool;

#[derive(Debug, Clone)]
pub struct RegistryService {
    pub pool: Arc<WorkerPool>,
}

#[tonic::async_trait]
impl WorkerRegistry for RegistryService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        let description = req.description.ok_or_else(|| Status::invalid_argument("description: missing"))?;
        let worker_id = self.pool.register(&req.address, description)?;
        Ok(Response::new(pb::RegisterResponse {
            worker_id,
            heartbeat_interval_ms: self.pool.heartbeat_interval().as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let pb::HeartbeatRequest { worker_id: id, groups } = request.into_inner();
        if self.pool.heartbeat(&id, groups) {
            Ok(Response::new(pb::HeartbeatResponse {}))
        } else {
            Err(Status::not_found(format!("worker_id: {id:?} is not registered; register again")))
        }
    }
}
