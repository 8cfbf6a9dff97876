//! Sending one piece of work (a window's denoise step, a chunk's decode) to a worker, and trying again on
//! another when it fails, times out or answers with something malformed. A result is used only if it
//! carries the fence it was sent with.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// `check` decodes and validates tensors, so it runs on the blocking pool, not the async runtime.
    /// `on_start(worker, attempt)` is told where each attempt runs.
    pub async fn run<T, R, F, Fut, C>(
        &self,
        model: &str,
        what: &str,
        mut fence: pb::Fence,
        on_start: impl Fn(&str, u32),
        call: F,
        check: C,
    ) -> Result<R, DispatchError>
    where
        F: Fn(WorkerServiceClient<Channel>, pb::Fence) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
        C: Fn(&pb::Fence, T) -> Result<R, String> + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
    {
        let check = Arc::new(check);
        let mut failed_on: Vec<String> = Vec::new();
        let mut last = String::new();
        let mut attempts = 0;
        let mut refused_since: Option<Instant> = None;
        while attempts < self.max_attempts {
            let lease = self.pool.acquire(model, &failed_on, what).await;
            fence.attempt = attempts;
            on_start(&lease.worker_id, attempts);
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(self.timeout, call(lease.client.clone(), fence.clone())) => Some(outcome),
                // Its lease ran out (cluster mode) or it was reaped: whatever it answers now comes too late.
                _ = lease.departed.cancelled() => None,
            };
            let Some(outcome) = outcome else {
                tracing::warn!(worker = %lease.worker_id, %what, attempt = attempts, "worker left the cluster mid-evaluation; retrying elsewhere");
                failed_on.push(lease.worker_id.clone());
                last = format!("worker {}: left the cluster", lease.worker_id);
                attempts += 1;
                continue;
            };
            let (error, worker_at_fault) = match outcome {
                Ok(Ok(response)) => match checked(&check, &fence, response.into_inner()).await {
                    Ok(result) => {
                        self.pool.succeeded(&lease.worker_id);
                        return Ok(result);
                    }
                    Err(malformed) => (format!("malformed answer: {malformed}"), true),
                },
                Ok(Err(status)) if status.code() == Code::ResourceExhausted => {
                    // The worker is full (busy with work someone else gave it, or still finishing an
                    // abandoned request): not a failure, until it has refused for longer than an
                    // evaluation may take.
                    let since = *refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < self.timeout {
                        self.pool.rest(&lease.worker_id, Duration::from_millis(50));
                        drop(lease);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    (format!("refused work for {:?}: {}", since.elapsed(), status.message()), true)
                }
                // The worker says the request itself is wrong: try elsewhere, but do not blame the worker.
                Ok(Err(status)) if status.code() == Code::InvalidArgument => {
                    (format!("{}: {}", status.code(), status.message()), false)
                }
                Ok(Err(status)) => (format!("{}: {}", status.code(), status.message()), true),
                Err(_) => (format!("no answer within {:?}", self.timeout), true),
            };
            refused_since = None;
            tracing::warn!(worker = %lease.worker_id, %what, attempt = attempts, %error, "evaluation failed; retrying elsewhere");
            if worker_at_fault {
                self.pool.failed(&lease.worker_id);
            }
            failed_on.push(lease.worker_id.clone());
            last = format!("worker {}: {error}", lease.worker_id);
            attempts += 1;
        }
        Err(DispatchError::Exhausted { what: what.to_string(), attempts, last })
    }
}

/// Runs `check` on the blocking pool.
async fn checked<T, R, C>(check: &Arc<C>, fence: &pb::Fence, answer: T) -> Result<R, String>
where
    C: Fn(&pb::Fence, T) -> Result<R, String> + Send + Sync + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    let (check, fence) = (check.clone(), fence.clone());
    tokio::task::spawn_blocking(move || check(&fence, answer))
        .await
        .unwrap_or_else(|e| Err(format!("checking the answer failed: {e}")))
}

/// Checks that an answer carries the fence its request did.
pub fn check_fence(sent: &pb::Fence, got: Option<&pb::Fence>) -> Result<(), String> {
    match got {
        Some(f) if f == sent => Ok(()),
        Some(f) => Err(format!("fence {f:?} does not match the request's {sent:?}")),
        None => Err("no fence".into()),
    }
}
