//! The coordinator's HTTP side: a web page of the cluster and its jobs, the JSON it is drawn from, the
//! finished videos, and the Prometheus metrics.
//!
//! | path | what |
//! | --- | --- |
//! | `/` | the page: workers, shard groups and devices; the queue; running jobs with a map of their windows; finished videos, playable |
//! | `/api/cluster` | the cluster as `patchwork status --json` prints it |
//! | `/api/jobs?limit=N` | the newest jobs (default 50), each with its windows' progress |
//! | `/api/jobs/{id}` | one job |
//! | `/videos/{id}.mp4` | a finished job's video (byte ranges, so that the page can seek) |
//! | `/metrics` | Prometheus metrics |
//!
//! Everything here reads what the gRPC API reads, through the same [`RenderApi`]: a follower shows the
//! jobs from etcd as it answers ListJobs.

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use patchwork_shared::auth::RequireToken;
use patchwork_shared::json::{cluster_json, job_json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::Code;

use crate::metrics::Metrics;
use crate::service::RenderApi;

const PAGE: &str = include_str!("page.html");
const DEFAULT_JOBS: usize = 50;
const MAX_JOBS: usize = 1000;
/// Most bytes one ranged video answer carries; the browser asks again for the rest.
const MAX_RANGE_BYTES: u64 = 8 << 20;

#[derive(Clone)]
struct Web {
    api: RenderApi,
    metrics: Arc<Metrics>,
}

/// The routes above, over `api`. With a token, everything but `/metrics` asks for it: `Authorization:
/// Bearer TOKEN`, or HTTP Basic with the token as the password, which a browser asks its user for.
pub fn router(api: RenderApi, metrics: Arc<Metrics>, token: RequireToken) -> Router {
    let guarded = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/cluster", get(cluster))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/videos/{file}", get(video))
        .route_layer(axum::middleware::from_fn_with_state(token, require_token));
    guarded.route("/metrics", get(metrics_text)).with_state(Web { api, metrics })
}

async fn require_token(
    State(token): State<RequireToken>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if token.accepts(header, true) {
        return next.run(request).await;
    }
    let challenge = [(header::WWW_AUTHENTICATE, r#"Basic realm="patchwork", charset="UTF-8""#)];
    (StatusCode::UNAUTHORIZED, challenge, "this coordinator needs its API token (as the password)\n").into_response()
}

fn json(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// A gRPC status as an HTTP error with its message.
fn error(status: tonic::Status) -> Response {
    let code = match status.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, format!("{}\n", status.message())).into_response()
}

async fn cluster(State(web): State<Web>) -> Response {
    json(cluster_json(&web.api.cluster_state().await))
}

#[derive(serde::Deserialize)]
struct JobsQuery {
    limit: Option<usize>,
}

async fn jobs(State(web): State<Web>, Query(query): Query<JobsQuery>) -> Response {
    let limit = query.limit.unwrap_or(DEFAULT_JOBS).clamp(1, MAX_JOBS);
    match web.api.jobs(&[]).await {
        Ok(jobs) => json(serde_json::json!({ "jobs": jobs.iter().take(limit).map(job_json).collect::<Vec<_>>() })),
        Err(status) => error(status),
    }
}

async fn job(State(web): State<Web>, Path(id): Path<String>) -> Response {
    match web.api.job(&id).await {
        Ok(job) => json(job_json(&job)),
        Err(status) => error(status),
    }
}

async fn metrics_text(State(web): State<Web>) -> Response {
    let cluster = web.api.cluster_state().await;
    // Without the jobs (a follower that cannot reach etcd), the job gauges keep their last values.
    let jobs = web.api.jobs(&[]).await.ok();
    web.metrics.observe_cluster(&cluster, jobs.as_deref());
    patchwork_shared::metrics::response(&web.metrics.registry)
}

/// `/videos/{id}.mp4`: the whole file, or the byte range asked for.
async fn video(State(web): State<Web>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(id) = file.strip_suffix(".mp4") else {
        return (StatusCode::NOT_FOUND, "videos are named <job id>.mp4\n").into_response();
    };
    let path = match web.api.video_path(id).await {
        Ok(path) => path,
        Err(status) => return error(status),
    };
    let failed = |e: std::io::Error| error(tonic::Status::internal(format!("job {id}: reading its video: {e}")));
    let mut f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    let total = match f.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return failed(e),
    };
    let mp4 = [
        (header::CONTENT_TYPE, HeaderValue::from_static("video/mp4")),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
    ];
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let Some((start, end)) = range.and_then(|r| parse_range(r, total)) else {
        if range.is_some() {
            let unsatisfiable = [(header::CONTENT_RANGE, format!("bytes */{total}"))];
            return (StatusCode::RANGE_NOT_SATISFIABLE, unsatisfiable).into_response();
        }
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
        return (mp4, [(header::CONTENT_LENGTH, total.to_string())], body).into_response();
    };
    let end = end.min(start + MAX_RANGE_BYTES - 1);
    let mut data = vec![0u8; (end - start + 1) as usize];
    if let Err(e) = async {
        f.seek(SeekFrom::Start(start)).await?;
        f.read_exact(&mut data).await
    }
    .await
    {
        return failed(e);
    }
    let content_range = [(header::CONTENT_RANGE, format!("bytes {start}-{end}/{total}"))];
    (StatusCode::PARTIAL_CONTENT, mp4, content_range, data).into_response()
}

/// A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range of a file of `total` bytes, as inclusive offsets;
/// `None` for a range that is malformed, lists several, or lies outside the file.
fn parse_range(header: &str, total: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || total == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (false, true) => (a.parse().ok()?, total - 1),
        (false, false) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(total - 1)),
        (true, false) => {
            let n: u64 = b.parse().ok()?;
            (total.checked_sub(n.min(total))?, total - 1)
        }
        (true, true) => return None,
    };
    (start <= end && start < total).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn byte_ranges_are_read_as_browsers_send_them() {
        assert_eq!(parse_range("bytes=0-", 100), Some((0, 99)));
        assert_eq!(parse_range("bytes=10-19", 100), Some((10, 19)));
        assert_eq!(parse_range("bytes=90-200", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-500", 100), Some((0, 99)));
        for bad in ["bytes=100-", "bytes=20-10", "bytes=0-1,5-6", "items=0-1", "bytes=-", "bytes=a-b"] {
            assert_eq!(parse_range(bad, 100), None, "{bad}");
        }
        assert_eq!(parse_range("bytes=0-", 0), None);
    }
}
