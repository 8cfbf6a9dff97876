//! The coordinator's Prometheus metrics. Counters and histograms are recorded where things happen (the
//! dispatcher, the step loop, the end of a job); the gauges of the cluster's state (the queue, jobs,
//! workers, shard groups) are read from the API's own view when Prometheus scrapes, so they can never
//! drift from what `patchwork status` shows.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use patchwork_shared::metrics::{duration_family, HistogramFamily, Label, Labels2, PREFIX};
use patchwork_shared::pb;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// What a dispatched piece of work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// One denoising step of one window.
    Denoise,
    /// One chunk of the final latent through the VAE decoder.
    Decode,
}

impl WorkKind {
    pub fn label(self) -> &'static str {
        match self {
            WorkKind::Denoise => "denoise",
            WorkKind::Decode => "decode",
        }
    }
}

/// Job states as metric labels, in the API's order.
const JOB_STATES: [(pb::JobState, &str); 7] = [
    (pb::JobState::Queued, "queued"),
    (pb::JobState::EncodingPrompts, "encoding_prompts"),
    (pb::JobState::Denoising, "denoising"),
    (pb::JobState::Decoding, "decoding"),
    (pb::JobState::Done, "done"),
    (pb::JobState::Failed, "failed"),
    (pb::JobState::Cancelled, "cancelled"),
];

const WORKER_STATES: [(pb::WorkerStatus, &str); 3] =
    [(pb::WorkerStatus::Idle, "idle"), (pb::WorkerStatus::Busy, "busy"), (pb::WorkerStatus::Unhealthy, "unhealthy")];

/// Model names come from the workers that serve them: few, and not known in advance.
type ModelLabel = [(&'static str, String); 1];

pub fn job_state_label(state: i32) -> &'static str {
    JOB_STATES.iter().find(|(s, _)| *s as i32 == state).map_or("unknown", |(_, l)| l)
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    queue_depth: Gauge,
    jobs: Family<Label, Gauge>,
    jobs_finished: Family<Label, Counter>,
    job_duration: HistogramFamily<Label>,
    queue_wait: HistogramFamily<ModelLabel>,
    step_duration: HistogramFamily<ModelLabel>,
    evaluations: Family<Labels2, Counter>,
    evaluation_duration: HistogramFamily<Label>,
    retries: Family<Label, Counter>,
    workers: Family<Label, Gauge>,
    worker_slots: Family<Label, Gauge>,
    shard_groups: Family<Label, Gauge>,
    devices: Gauge,
    bytes: Family<Labels2, Counter>,
    leader: Gauge,
    term: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Metrics {
            queue_depth: Gauge::default(),
            jobs: Family::default(),
            jobs_finished: Family::default(),
            job_duration: duration_family(),
            queue_wait: duration_family(),
            step_duration: duration_family(),
            evaluations: Family::default(),
            evaluation_duration: duration_family(),
            retries: Family::default(),
            workers: Family::default(),
            worker_slots: Family::default(),
            shard_groups: Family::default(),
            devices: Gauge::default(),
            bytes: Family::default(),
            leader: Gauge::default(),
            term: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("queue_depth", "Jobs waiting in the queue for a running slot or a worker", m.queue_depth.clone());
        r.register("jobs", "Jobs the coordinator knows, by state", m.jobs.clone());
        r.register(
            "jobs_finished",
            "Jobs this coordinator ran to an end, by how they ended (done, failed, cancelled)",
            m.jobs_finished.clone(),
        );
        r.register_with_unit(
            "job_duration",
            "From a job's start to its end, by how it ended",
            Unit::Seconds,
            m.job_duration.clone(),
        );
        r.register_with_unit(
            "job_queue_wait",
            "From a job's submission to its start, by model",
            Unit::Seconds,
            m.queue_wait.clone(),
        );
        r.register_with_unit(
            "step_duration",
            "One denoising step of a job: every window evaluated and fused, by model",
            Unit::Seconds,
            m.step_duration.clone(),
        );
        r.register(
            "window_evaluations",
            "Attempts at window denoise steps and decode chunks, by kind and outcome (ok, failed)",
            m.evaluations.clone(),
        );
        r.register_with_unit(
            "window_evaluation_duration",
            "One successful evaluation as the coordinator waits for it (worker time and transfers), by kind",
            Unit::Seconds,
            m.evaluation_duration.clone(),
        );
        r.register(
            "window_evaluation_retries",
            "Evaluations sent again after a failure, a timeout or a worker leaving, by kind",
            m.retries.clone(),
        );
        r.register("workers", "Registered workers, by status (idle, busy, unhealthy)", m.workers.clone());
        r.register(
            "worker_slots",
            "Evaluation slots of the registered workers: capacity, and in_flight (in use)",
            m.worker_slots.clone(),
        );
        r.register("shard_groups", "Shard groups of the registered workers, by health", m.shard_groups.clone());
        r.register("devices", "Devices of the registered workers", m.devices.clone());
        r.register_with_unit(
            "transfer",
            "Bytes of latents and frames moved to and from workers (message sizes), by direction and kind",
            Unit::Bytes,
            m.bytes.clone(),
        );
        r.register(
            "leader",
            "1 while this coordinator runs jobs (the leader, or a single coordinator)",
            m.leader.clone(),
        );
        r.register("leader_term", "The leadership term this coordinator holds or last saw (0 single)", m.term.clone());
        // Series that exist from the start, at zero, so that rates and dashboards have them before the
        // first event.
        for kind in [WorkKind::Denoise, WorkKind::Decode].map(WorkKind::label) {
            for outcome in ["ok", "failed"] {
                m.evaluations.get_or_create_owned(&[("kind", kind), ("outcome", outcome)]);
            }
            m.retries.get_or_create_owned(&[("kind", kind)]);
            m.evaluation_duration.get_or_create_owned(&[("kind", kind)]);
            for direction in ["sent", "received"] {
                m.bytes.get_or_create_owned(&[("direction", direction), ("kind", kind)]);
            }
        }
        for state in ["done", "failed", "cancelled"] {
            m.jobs_finished.get_or_create_owned(&[("state", state)]);
            m.job_duration.get_or_create_owned(&[("state", state)]);
        }
        Metrics { registry, ..m }
    }

    /// A job ended; `ran` is from its start, `state` how it ended.
    pub fn job_finished(&self, state: pb::JobState, ran: Duration) {
        let label = [("state", job_state_label(state as i32))];
        self.jobs_finished.get_or_create(&label).inc();
        self.job_duration.get_or_create(&label).observe(ran.as_secs_f64());
    }

    pub fn job_started(&self, model: &str, waited: Duration) {
        self.queue_wait.get_or_create(&[("model", model.to_string())]).observe(waited.as_secs_f64());
    }

    pub fn step_done(&self, model: &str, took: Duration) {
        self.step_duration.get_or_create(&[("model", model.to_string())]).observe(took.as_secs_f64());
    }

    /// An attempt at a piece of work ended: `Ok(took)` or a failure.
    pub fn evaluation(&self, kind: WorkKind, outcome: Result<Duration, ()>) {
        let k = kind.label();
        match outcome {
            Ok(took) => {
                self.evaluations.get_or_create(&[("kind", k), ("outcome", "ok")]).inc();
                self.evaluation_duration.get_or_create(&[("kind", k)]).observe(took.as_secs_f64());
            }
            Err(()) => {
                self.evaluations.get_or_create(&[("kind", k), ("outcome", "failed")]).inc();
            }
        }
    }

    /// A failed piece of work is sent again.
    pub fn retried(&self, kind: WorkKind) {
        self.retries.get_or_create(&[("kind", kind.label())]).inc();
    }

    /// Bytes of a request sent or an answer received (`direction`).
    pub fn moved(&self, kind: WorkKind, direction: &'static str, bytes: usize) {
        self.bytes.get_or_create(&[("direction", direction), ("kind", kind.label())]).inc_by(bytes as u64);
    }

    /// Sets the gauges from the cluster as the API shows it and the jobs it knows (`None`: could not be
    /// read; the job gauges keep their values).
    pub fn observe_cluster(&self, cluster: &pb::ClusterState, jobs: Option<&[pb::Job]>) {
        self.queue_depth.set(i64::from(cluster.queued_jobs));
        for (state, label) in JOB_STATES.iter().filter(|_| jobs.is_some()) {
            let n = jobs.unwrap_or_default().iter().filter(|j| j.state == *state as i32).count();
            self.jobs.get_or_create(&[("state", label)]).set(n as i64);
        }
        for (status, label) in WORKER_STATES {
            let n = cluster.workers.iter().filter(|w| w.status == status as i32).count();
            self.workers.get_or_create(&[("status", label)]).set(n as i64);
        }
        let slots = |f: fn(&pb::Worker) -> u32| cluster.workers.iter().map(|w| i64::from(f(w))).sum::<i64>();
        self.worker_slots.get_or_create(&[("slots", "capacity")]).set(slots(|w| w.capacity));
        self.worker_slots.get_or_create(&[("slots", "in_flight")]).set(slots(|w| w.in_flight));
        let groups = cluster.workers.iter().flat_map(|w| &w.groups);
        let healthy = groups.clone().filter(|g| g.healthy).count();
        self.shard_groups.get_or_create(&[("health", "healthy")]).set(healthy as i64);
        self.shard_groups.get_or_create(&[("health", "unhealthy")]).set((groups.count() - healthy) as i64);
        self.devices.set(cluster.workers.iter().map(|w| w.devices.len() as i64).sum());
        self.leader.set(i64::from(cluster.role != "follower"));
        self.term.set(cluster.term);
    }
}
