//! The coordinator's web page in a real browser (headless Chromium), and `/metrics` on the coordinator and
//! a worker, against real processes: the page is loaded while a job of nine windows runs and again when
//! it has finished, and the metrics are read at both times.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it); the test fails without it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use patchwork_shared::pb;

/// Steps of the test job: with a worker that takes 250 ms per evaluation and two at once, its 9 windows
/// take about 1.25 s a step, so the job runs for over ten seconds: time to load the page while it runs.
const STEPS: u32 = 10;

fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
        let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (!path.is_empty()).then(|| PathBuf::from(path))
    });
    found.expect("no chromium on PATH: install Debian's `chromium` package (.ci/run does)")
}

/// The page's DOM after its scripts have run for `budget_ms` of virtual time.
fn dump_dom(browser: &Path, profile: &Path, url: &str, budget_ms: u32) -> String {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--mute-audio",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = stdout.read_to_string(&mut dom);
        dom
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("chromium status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish loading {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dom = reader.join().expect("reader");
    assert!(dom.contains("</html>"), "chromium printed no page for {url}: {dom:?}");
    dom
}

/// A plain HTTP/1.1 GET: status, headers (lower-case names) and body.
fn get(address: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(address).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("reading the answer");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = unchunk(&body);
    }
    (status, headers, body)
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").expect("a chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

fn text(address: &str, path: &str) -> String {
    let (status, _, body) = get(address, path, &[]);
    assert_eq!(status, 200, "GET {path}");
    String::from_utf8(body).unwrap()
}

/// The value of the sample `name{labels}` (exactly as written) in an exposition.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// How many times `needle` occurs in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_cluster_the_running_job_and_its_video_and_metrics_answer() {
    let browser = chromium();
    let dir = tempfile::tempdir().unwrap();
    let coord = coordinator(&dir.path().join("data"), &["--http-listen", "127.0.0.1:0"]);
    let web = coord.http_address();
    let worker = worker(
        &coord,
        &["--load-test-delay", "250ms", "--capacity", "2", "--metrics-listen", "127.0.0.1:0", "--name", "w1"],
    );
    let worker_metrics = worker.http_address();
    let mut client = client(&coord).await;
    let cluster = wait_for_workers(&mut client, 1).await;
    let worker_id = cluster.workers[0].id.clone();

    // Before any job: an empty farm on the page's data and in the metrics.
    let metrics = text(&web, "/metrics");
    assert_eq!(sample(&metrics, "patchwork_queue_depth"), 0.0);
    assert_eq!(sample(&metrics, r#"patchwork_workers{status="idle"}"#), 1.0);
    assert_eq!(sample(&metrics, "patchwork_devices"), 1.0);

    let job = submit(&mut client, several_windows(STEPS)).await;
    wait_until(Duration::from_secs(60), "the job to be past its first step", || {
        let mut client = client.clone();
        let id = job.id.clone();
        async move {
            let job = client.get_job(pb::GetJobRequest { job_id: id }).await.ok()?.into_inner();
            (job.progress?.step >= 1).then_some(())
        }
    })
    .await;

    // While it runs: the page shows the worker, the job and a map of its nine windows.
    let profile = dir.path().join("chromium");
    let url = format!("http://{web}/");
    let running = dump_dom(&browser, &profile, &url, 3000);
    assert!(running.contains(r#"data-loaded="true""#), "the page never drew its data:\n{running}");
    assert!(running.contains("single coordinator"), "{running}");
    assert!(running.contains(&format!(r#"data-worker="{worker_id}""#)), "no row for the worker:\n{running}");
    assert!(running.contains(r#"class="group" data-healthy="true""#), "no healthy shard group:\n{running}");
    let job_div = format!(r#"<div class="job" data-job="{}" data-state="denoising">"#, job.id);
    assert!(running.contains(&job_div), "the job is not shown running:\n{running}");
    assert!(running.contains("a red circle moving right"), "{running}");
    assert!(running.contains(r#"data-windows="9""#), "{running}");
    assert_eq!(count(&running, r#"class="window""#), 9, "{running}");
    // Past its first step, every window has at least one step fused.
    assert!(!running.contains(r#"data-steps-done="0""#), "a window shows no progress:\n{running}");
    assert!(running.contains(&format!(r#"data-steps="{STEPS}""#)), "{running}");
    let metrics = text(&web, "/metrics");
    assert_eq!(sample(&metrics, r#"patchwork_jobs{state="denoising"}"#), 1.0, "{metrics}");

    let done = follow(&mut client, &job.id, Duration::from_secs(120), |_| {}).await;
    assert_eq!(done.state, pb::JobState::Done as i32, "{done:?}");

    // Finished: the video is in the page and the browser reads it as a 128x64 video.
    let finished = dump_dom(&browser, &profile, &url, 4000);
    let figure = format!(r#"<figure data-job="{}">"#, job.id);
    assert!(finished.contains(&figure), "no player for the finished job:\n{finished}");
    assert!(
        finished.contains(r#"data-video-width="128" data-video-height="64""#),
        "the browser did not load the video's metadata:\n{finished}"
    );
    assert!(finished.contains("Nothing waiting.") && finished.contains("No job is running."), "{finished}");

    // The video answers whole and in ranges, as players ask for it; unknown jobs are 404.
    let (status, headers, body) = get(&web, &format!("/videos/{}.mp4", job.id), &[]);
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-type".into(), "video/mp4".into())), "{headers:?}");
    assert_eq!(body.len() as u64, done.video_bytes);
    let (status, headers, part) = get(&web, &format!("/videos/{}.mp4", job.id), &[("Range", "bytes=4-11")]);
    assert_eq!(status, 206);
    assert_eq!(part, body[4..12].to_vec());
    let range = format!("bytes 4-11/{}", body.len());
    assert!(headers.contains(&("content-range".into(), range)), "{headers:?}");
    assert_eq!(&part[..4], b"ftyp");
    assert_eq!(get(&web, "/videos/nope.mp4", &[]).0, 404);
    assert_eq!(get(&web, "/api/jobs/nope", &[]).0, 404);
    let api = text(&web, &format!("/api/jobs/{}", job.id));
    assert!(api.contains(r#""state":"done""#), "{api}");

    // The coordinator's metrics account for every window step, the decode and the job.
    let metrics = text(&web, "/metrics");
    let windows_steps = 9.0 * f64::from(STEPS);
    assert_eq!(sample(&metrics, r#"patchwork_window_evaluations_total{kind="denoise",outcome="ok"}"#), windows_steps);
    assert!(sample(&metrics, r#"patchwork_window_evaluations_total{kind="decode",outcome="ok"}"#) >= 1.0);
    assert_eq!(
        sample(&metrics, r#"patchwork_window_evaluation_duration_seconds_count{kind="denoise"}"#),
        windows_steps
    );
    assert_eq!(sample(&metrics, r#"patchwork_step_duration_seconds_count{model="tiny"}"#), f64::from(STEPS));
    assert_eq!(sample(&metrics, r#"patchwork_jobs_finished_total{state="done"}"#), 1.0);
    assert_eq!(sample(&metrics, r#"patchwork_job_duration_seconds_count{state="done"}"#), 1.0);
    assert_eq!(sample(&metrics, r#"patchwork_job_queue_wait_seconds_count{model="tiny"}"#), 1.0);
    assert_eq!(sample(&metrics, r#"patchwork_jobs{state="done"}"#), 1.0);
    assert_eq!(sample(&metrics, r#"patchwork_jobs{state="denoising"}"#), 0.0);
    assert_eq!(sample(&metrics, r#"patchwork_shard_groups{health="healthy"}"#), 2.0);
    assert_eq!(sample(&metrics, r#"patchwork_worker_slots{slots="capacity"}"#), 2.0);
    assert_eq!(sample(&metrics, "patchwork_leader"), 1.0);
    // Each window's latent is 16 channels x 4 frames x 8 x 8 floats each way, plus the request's fields.
    let latent_bytes = 16.0 * 4.0 * 8.0 * 8.0 * 4.0 * windows_steps;
    let sent = sample(&metrics, r#"patchwork_transfer_bytes_total{direction="sent",kind="denoise"}"#);
    let received = sample(&metrics, r#"patchwork_transfer_bytes_total{direction="received",kind="denoise"}"#);
    assert!(sent > latent_bytes && sent < 1.2 * latent_bytes, "sent {sent}, latents {latent_bytes}");
    assert!(received > latent_bytes && received < 1.2 * latent_bytes, "received {received}");
    assert!(metrics.contains("# TYPE patchwork_step_duration_seconds histogram"), "{metrics}");

    // The worker's own view of the same work.
    let metrics = text(&worker_metrics, "/metrics");
    assert_eq!(sample(&metrics, r#"patchwork_worker_evaluations_total{kind="denoise",outcome="ok"}"#), windows_steps);
    assert_eq!(
        sample(&metrics, r#"patchwork_worker_evaluation_duration_seconds_count{kind="denoise"}"#),
        windows_steps
    );
    assert_eq!(sample(&metrics, "patchwork_worker_capacity"), 2.0);
    assert_eq!(sample(&metrics, "patchwork_worker_evaluations_in_flight"), 0.0);
    assert_eq!(sample(&metrics, r#"patchwork_worker_shard_groups{health="healthy"}"#), 2.0);
    let worker_received =
        sample(&metrics, r#"patchwork_worker_transfer_bytes_total{direction="received",kind="denoise"}"#);
    // The same messages counted at both ends (the coordinator adds up the parts of each request).
    let gap = (worker_received - sent).abs() / sent;
    assert!(gap < 0.01, "the worker received {worker_received} bytes, the coordinator sent {sent}");
    let used = sample(&metrics, r#"patchwork_device_memory_used_bytes{device="cpu"}"#);
    let total = sample(&metrics, r#"patchwork_device_memory_total_bytes{device="cpu"}"#);
    assert!(used > 0.0 && used < total, "used {used} of {total}");

    // Every metric the Grafana dashboard queries is one of these.
    let coordinator_metrics = text(&web, "/metrics");
    dashboard_queries_exported_metrics(&[&coordinator_metrics, &metrics]);
    drop(worker);
}

/// Checks that each `patchwork_*` series in the dashboard's queries is declared by one of `expositions`.
fn dashboard_queries_exported_metrics(expositions: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/grafana/patchwork-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("patchwork_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                queried.push(name);
            }
        }
    }
    assert!(queried.len() > 20, "the dashboard queries only {queried:?}");
    for name in queried {
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name)
            .to_string();
        let declared = format!("# TYPE {family} ");
        assert!(
            expositions.iter().any(|e| e.contains(&declared)),
            "the dashboard queries {name}, which neither the coordinator nor the worker exports"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_guards_the_api_worker_registration_and_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret";
    let coord = coordinator(&dir.path().join("data"), &["--http-listen", "127.0.0.1:0", "--api-token", token]);
    let web = coord.http_address();
    let _worker = worker(&coord, &["--load-test-delay", "10ms", "--api-token", token]);
    let _intruder = worker(&coord, &["--load-test-delay", "10ms", "--api-token", "guess"]);
    let status = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["status", "--json", "--coordinator", &coord.address]).env_remove("PATCHWORK_API_TOKEN");
        if let Some(token) = token {
            command.args(["--api-token", token]);
        }
        let out = command.output().expect("running patchwork status");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Without the token, or with another, the client API answers UNAUTHENTICATED.
    let (ok, _, stderr) = status(None);
    assert!(!ok && stderr.contains("Unauthenticated") && stderr.contains("needs an API token"), "{stderr}");
    let (ok, _, stderr) = status(Some("guess"));
    assert!(!ok && stderr.contains("the API token is wrong"), "{stderr}");

    // With it, the cluster shows the worker that sent it, and never the one that guessed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, stdout, stderr) = status(Some(token));
        assert!(ok, "{stderr}");
        let cluster: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        if cluster["workers"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker with the token did not register: {stdout}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (_, stdout, _) = status(Some(token));
    let cluster: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(cluster["workers"].as_array().unwrap().len(), 1, "a worker registered without the token: {stdout}");

    // The page asks a browser for the token as a password; Bearer works too. /metrics and health stay open.
    let (code, headers, _) = get(&web, "/", &[]);
    assert_eq!(code, 401);
    assert!(headers.iter().any(|(n, v)| n == "www-authenticate" && v.starts_with("Basic")), "{headers:?}");
    assert_eq!(get(&web, "/api/cluster", &[("Authorization", "Bearer guess")]).0, 401);
    assert_eq!(get(&web, "/api/cluster", &[("Authorization", "Bearer s3cret")]).0, 200);
    // "anyone:s3cret"
    assert_eq!(get(&web, "/", &[("Authorization", "Basic YW55b25lOnMzY3JldA==")]).0, 200);
    assert_eq!(get(&web, "/videos/x.mp4", &[]).0, 401);
    assert_eq!(get(&web, "/metrics", &[]).0, 200);
    assert_eq!(health(&coord.address, "").await, Ok(1));
}
