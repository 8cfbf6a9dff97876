//! Prometheus exposition for the coordinator and the workers: the text encoding, the histogram shapes both
//! use, the process's memory, and the HTTP listener that serves them.
//!
//! Names follow Prometheus conventions: a `patchwork_` prefix, base units in the name (`_seconds`,
//! `_bytes`), `_total` on counters.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The exposition format `encode` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric's name starts with this (and an underscore).
pub const PREFIX: &str = "patchwork";

/// A label set of one label, and of two.
pub type Label = [(&'static str, &'static str); 1];
pub type Labels2 = [(&'static str, &'static str); 2];
/// Histograms by label, all with the same buckets.
pub type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Buckets for durations from 1 ms to about 9 minutes (×2.4 apart): a step of the tiny model on a CPU
/// takes milliseconds, a 14B window on a GPU seconds, a whole job minutes.
pub fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.4, 16))
}

/// A family of [`duration_histogram`]s.
pub fn duration_family<S: Clone + std::hash::Hash + Eq>() -> HistogramFamily<S> {
    Family::new_with_constructor(duration_histogram as fn() -> Histogram)
}

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// An HTTP answer of the registry's metrics.
pub fn response(registry: &Registry) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode(registry)).into_response()
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// This process's resident memory and the machine's memory, in bytes (Linux; `None` elsewhere): what a
/// CPU device has used and has.
pub fn process_memory() -> Option<(u64, u64)> {
    let kib = |text: &str, key: &str| -> Option<u64> {
        let value = text.lines().find_map(|l| l.strip_prefix(key))?;
        value.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
    };
    let used = kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS:")?;
    let total = kib(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")?;
    Some((used, total))
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn metrics_are_encoded_with_prefix_units_and_totals() {
        let mut registry = Registry::with_prefix(PREFIX);
        let evaluations: Family<Label, Counter> = Family::default();
        registry.register("evaluations", "Evaluations", evaluations.clone());
        let latency: HistogramFamily<Label> = duration_family();
        registry.register_with_unit(
            "step_duration",
            "Step latency",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        evaluations.get_or_create(&[("kind", "denoise")]).inc_by(3);
        latency.get_or_create(&[("kind", "denoise")]).observe(0.05);
        let text = encode(&registry);
        assert!(text.contains("patchwork_evaluations_total{kind=\"denoise\"} 3"), "{text}");
        assert!(text.contains("patchwork_step_duration_seconds_count{kind=\"denoise\"} 1"), "{text}");
        assert!(text.contains("# TYPE patchwork_step_duration_seconds histogram"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn process_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let (used, total) = process_memory().expect("/proc is readable");
            assert!(used > 1 << 20 && used < total, "used {used}, total {total}");
        }
    }
}
