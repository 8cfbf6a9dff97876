//! Sending one piece of work (a window's denoise step, a chunk's decode) to a worker, and trying again on
//! another when it fails, times out or answers with something malformed. A result is used only if it
//! carries the fence it was sent with.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use patchwork_shared::pb::{self, worker_service_client::WorkerServiceClient};
use tonic::transport::Channel;
use tonic::Code;

use crate::pool::WorkerPool;

/// Why a piece of work could not be done.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{what} failed {attempts} times; last: {last}")]
    Exhausted { what: String, attempts: u32, last: String },
}

#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub pool: Arc<WorkerPool>,
    /// Longest a single evaluation may take before it is retried elsewhere.
    pub timeout: Duration,
    /// Attempts per piece of work before its job fails.
    pub max_attempts: u32,
}

impl Dispatcher {
    /// Runs `call` on a worker serving `model` until it succeeds and `check` accepts the answer.
    /// `on_start(worker, attempt)` is told where each attempt runs.
    pub async fn run<T, R, F, Fut>(
        &self,
        model: &str,
        what: &str,
        mut fence: pb::Fence,
        on_start: impl Fn(&str, u32),
        call: F,
        check: impl Fn(&pb::Fence, T) -> Result<R, String>,
    ) -> Result<R, DispatchError>
    where
        F: Fn(WorkerServiceClient<Channel>, pb::Fence) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut failed_on: Vec<String> = Vec::new();
        let mut last = String::new();
        let mut attempts = 0;
        while attempts < self.max_attempts {
            let lease = self.pool.acquire(model, &failed_on, what).await;
            fence.attempt = attempts;
            on_start(&lease.worker_id, attempts);
            let outcome = tokio::time::timeout(self.timeout, call(lease.client.clone(), fence.clone())).await;
            let error = match outcome {
                Ok(Ok(response)) => match check(&fence, response.into_inner()) {
                    Ok(result) => {
                        self.pool.succeeded(&lease.worker_id);
                        return Ok(result);
                    }
                    Err(malformed) => format!("malformed answer: {malformed}"),
                },
                Ok(Err(status)) if status.code() == Code::ResourceExhausted => {
                    // The worker is full (its slots are shared with someone else): not its fault; wait a
                    // moment and ask again without counting an attempt.
                    drop(lease);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok(Err(status)) => format!("{}: {}", status.code(), status.message()),
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            tracing::warn!(worker = %lease.worker_id, %what, attempt = attempts, %error, "evaluation failed; retrying elsewhere");
            self.pool.failed(&lease.worker_id);
            failed_on.push(lease.worker_id.clone());
            last = format!("worker {}: {error}", lease.worker_id);
            attempts += 1;
        }
        Err(DispatchError::Exhausted { what: what.to_string(), attempts, last })
    }
}

/// Checks that an answer carries the fence its request did.
pub fn check_fence(sent: &pb::Fence, got: Option<&pb::Fence>) -> Result<(), String> {
    match got {
        Some(f) if f == sent => Ok(()),
        Some(f) => Err(format!("fence {f:?} does not match the request's {sent:?}")),
        None => Err("no fence".into()),
    }
}
