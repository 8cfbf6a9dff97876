//! A worker's Prometheus metrics: the evaluations it ran and refused, how long they took, the bytes of
//! latents and frames it received and sent, its slots and shard groups, and its devices' memory.

use std::sync::Arc;
use std::time::Duration;

use patchwork_shared::metrics::{duration_family, process_memory, HistogramFamily, Label, Labels2, PREFIX};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use crate::engine::Evaluator;

/// Device names are the worker's own (`cpu`, `cuda:0`, ...).
type DeviceLabel = [(&'static str, String); 1];

pub struct WorkerMetrics {
    registry: Registry,
    evaluations: Family<Labels2, Counter>,
    duration: HistogramFamily<Label>,
    bytes: Family<Labels2, Counter>,
    in_flight: Gauge,
    capacity: Gauge,
    shard_groups: Family<Label, Gauge>,
    memory_used: Family<DeviceLabel, Gauge>,
    memory_total: Family<DeviceLabel, Gauge>,
    // What the gauges are read from at scrape time.
    evaluator: Arc<dyn Evaluator>,
    slots: Arc<Semaphore>,
    slots_total: usize,
    devices: Vec<String>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").field("devices", &self.devices).finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    pub fn new(evaluator: Arc<dyn Evaluator>, slots: Arc<Semaphore>, slots_total: usize, devices: Vec<String>) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = WorkerMetrics {
            registry: Registry::default(),
            evaluations: Family::default(),
            duration: duration_family(),
            bytes: Family::default(),
            in_flight: Gauge::default(),
            capacity: Gauge::default(),
            shard_groups: Family::default(),
            memory_used: Family::default(),
            memory_total: Family::default(),
            evaluator,
            slots,
            slots_total,
            devices,
        };
        let r = &mut registry;
        r.register(
            "worker_evaluations",
            "Evaluation requests this worker answered, by kind (denoise, decode) and outcome (ok, refused when \
             full, invalid, fenced when from a superseded term or after its membership lapsed, failed)",
            m.evaluations.clone(),
        );
        r.register_with_unit(
            "worker_evaluation_duration",
            "One successful evaluation on this worker, from request to answer, by kind",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register_with_unit(
            "worker_transfer",
            "Bytes of evaluation requests received and answers sent (message sizes), by direction and kind",
            Unit::Bytes,
            m.bytes.clone(),
        );
        r.register("worker_evaluations_in_flight", "Evaluations running now", m.in_flight.clone());
        r.register("worker_capacity", "Evaluations this worker takes at once (its shard groups)", m.capacity.clone());
        r.register("worker_shard_groups", "This worker's shard groups, by health", m.shard_groups.clone());
        r.register_with_unit(
            "device_memory_used",
            "Memory in use on each device (for CPU devices, this process's resident memory)",
            Unit::Bytes,
            m.memory_used.clone(),
        );
        r.register_with_unit(
            "device_memory_total",
            "Memory of each device (for CPU devices, the machine's)",
            Unit::Bytes,
            m.memory_total.clone(),
        );
        // Series that exist from the start, at zero, so that rates and dashboards have them before the
        // first request.
        for kind in ["denoise", "decode"] {
            for outcome in ["ok", "refused", "invalid", "fenced", "failed"] {
                m.evaluations.get_or_create_owned(&[("kind", kind), ("outcome", outcome)]);
            }
            m.duration.get_or_create_owned(&[("kind", kind)]);
            for direction in ["received", "sent"] {
                m.bytes.get_or_create_owned(&[("direction", direction), ("kind", kind)]);
            }
        }
        WorkerMetrics { registry, ..m }
    }

    /// An evaluation request was answered: `received` bytes came in, and `answer` went out after `took`.
    pub fn answered<T: prost::Message>(
        &self,
        kind: &'static str,
        received: usize,
        answer: &Result<T, Status>,
        took: Duration,
    ) {
        let outcome = match answer {
            Ok(_) => "ok",
            Err(s) => match s.code() {
                Code::ResourceExhausted => "refused",
                Code::InvalidArgument => "invalid",
                Code::FailedPrecondition | Code::Aborted => "fenced",
                _ => "failed",
            },
        };
        self.evaluations.get_or_create(&[("kind", kind), ("outcome", outcome)]).inc();
        self.bytes.get_or_create(&[("direction", "received"), ("kind", kind)]).inc_by(received as u64);
        if let Ok(answer) = answer {
            self.duration.get_or_create(&[("kind", kind)]).observe(took.as_secs_f64());
            self.bytes.get_or_create(&[("direction", "sent"), ("kind", kind)]).inc_by(answer.encoded_len() as u64);
        }
    }

    /// The metrics as OpenMetrics text, the gauges read now. Blocks briefly (device queries).
    pub fn scrape(&self) -> String {
        self.capacity.set(self.slots_total as i64);
        self.in_flight.set(self.slots_total.saturating_sub(self.slots.available_permits()) as i64);
        let groups = self.evaluator.shard_groups().unwrap_or_default();
        let healthy = groups.iter().filter(|g| g.healthy).count();
        // A worker without shard groups (one evaluator, several slots) is one healthy group per slot.
        let (healthy, total) =
            if groups.is_empty() { (self.slots_total, self.slots_total) } else { (healthy, groups.len()) };
        self.shard_groups.get_or_create(&[("health", "healthy")]).set(healthy as i64);
        self.shard_groups.get_or_create(&[("health", "unhealthy")]).set((total - healthy) as i64);
        for (device, used, total) in device_memory(&self.devices) {
            self.memory_used.get_or_create(&[("device", device.clone())]).set(used as i64);
            self.memory_total.get_or_create(&[("device", device)]).set(total as i64);
        }
        patchwork_shared::metrics::encode(&self.registry)
    }
}

/// `/metrics` for a worker.
pub fn router(metrics: Arc<WorkerMetrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                let text = tokio::task::spawn_blocking(move || metrics.scrape()).await.unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, patchwork_shared::metrics::CONTENT_TYPE)], text)
            }
        }),
    )
}

/// Used and total bytes of each device: CPU ranks share this process's memory (one entry, `cpu`); each
/// CUDA device is asked.
fn device_memory(devices: &[String]) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    if devices.iter().any(|d| d.starts_with("cpu")) {
        if let Some((used, total)) = process_memory() {
            out.push(("cpu".to_string(), used, total));
        }
    }
    for device in devices {
        if let Some(ordinal) = device.strip_prefix("cuda:").and_then(|o| o.parse().ok()) {
            if let Some((used, total)) = cuda_memory(ordinal) {
                out.push((device.clone(), used, total));
            }
        }
    }
    out
}

#[cfg(feature = "cuda")]
fn cuda_memory(ordinal: usize) -> Option<(u64, u64)> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    // The device's primary context, which candle's device uses too.
    let (free, total) = CudaContext::new(ordinal).ok()?.mem_get_info().ok()?;
    Some(((total - free) as u64, total as u64))
}

#[cfg(not(feature = "cuda"))]
fn cuda_memory(_ordinal: usize) -> Option<(u64, u64)> {
    None
}
