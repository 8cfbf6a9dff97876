//! Sending one piece of work (a window's denoise step, a chunk's decode) to a worker, and trying again on
//! another when it fails, times out or answers with something malformed. A result is used only if it
//! carries the fence it was sent with.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchwork_shared::pb::{self, worker_service_client::WorkerServiceClient};
use tonic::transport::Channel;
use tonic::Code;

use crate::metrics::{Metrics, WorkKind};
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
    pub metrics: Arc<Metrics>,
}

/// One piece of work, as the dispatcher accounts for it.
#[derive(Debug, Clone, Copy)]
pub struct Work<'a> {
    pub kind: WorkKind,
    /// The model it needs.
    pub model: &'a str,
    /// For logs and errors ("job 3f2a step 4/20 window 1").
    pub what: &'a str,
    /// The request's size, sent again with each attempt.
    pub request_bytes: usize,
}

impl Dispatcher {
    /// Runs `call` on a worker serving `work.model` until it succeeds and `check` accepts the answer.
    /// `check` decodes and validates tensors, so it runs on the blocking pool, not the async runtime.
    /// `on_start(worker, attempt)` is told where each attempt runs.
    pub async fn run<T, R, F, Fut, C>(
        &self,
        work: Work<'_>,
        mut fence: pb::Fence,
        on_start: impl Fn(&str, u32),
        call: F,
        check: C,
    ) -> Result<R, DispatchError>
    where
        F: Fn(WorkerServiceClient<Channel>, pb::Fence) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
        C: Fn(&pb::Fence, T) -> Result<R, String> + Send + Sync + 'static,
        T: prost::Message + Send + 'static,
        R: Send + 'static,
    {
        let Work { kind, model, what, request_bytes } = work;
        let check = Arc::new(check);
        let mut failed_on: Vec<String> = Vec::new();
        let mut last = String::new();
        let mut attempts = 0;
        let mut refused_since: Option<Instant> = None;
        while attempts < self.max_attempts {
            let lease = self.pool.acquire(model, &failed_on, what).await;
            fence.attempt = attempts;
            on_start(&lease.worker_id, attempts);
            let started = Instant::now();
            self.metrics.moved(kind, "sent", request_bytes);
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
                self.failed_attempt(kind, attempts);
                continue;
            };
            let (error, worker_at_fault) = match outcome {
                Ok(Ok(response)) => {
                    let answer = response.into_inner();
                    self.metrics.moved(kind, "received", answer.encoded_len());
                    match checked(&check, &fence, answer).await {
                        Ok(result) => {
                            self.metrics.evaluation(kind, Ok(started.elapsed()));
                            self.pool.succeeded(&lease.worker_id);
                            return Ok(result);
                        }
                        Err(malformed) => (format!("malformed answer: {malformed}"), true),
                    }
                }
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
            self.failed_attempt(kind, attempts);
        }
        Err(DispatchError::Exhausted { what: what.to_string(), attempts, last })
    }

    /// Accounts for a failed attempt and for the retry that follows it, if any is left.
    fn failed_attempt(&self, kind: WorkKind, attempts: u32) {
        self.metrics.evaluation(kind, Err(()));
        if attempts < self.max_attempts {
            self.metrics.retried(kind);
        }
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
