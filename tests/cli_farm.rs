//! The command line against real processes: `render` in one process gives the same bytes as a
//! coordinator and a worker in two; the client commands print what they should; the servers answer the
//! standard health and reflection services.

mod common;

use std::process::Command;

use common::*;
use patchwork_coordinator::video::probe_mp4;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const SPEC: [&str; 8] = ["--frames", "25", "--steps", "2", "--seed", "7", "--window", "13"];

fn patchwork(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).env("RUST_LOG", "warn").output().expect("running patchwork");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_matches_the_cluster_and_the_client_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("render.mp4");
    let mut args = vec!["render", "a red circle moving right", "-o", rendered.to_str().unwrap()];
    args.extend_from_slice(&SPEC);
    let (ok, _, stderr) = patchwork(&args);
    assert!(ok, "render failed: {stderr}");
    let rendered = std::fs::read(&rendered).unwrap();
    let info = probe_mp4(&rendered).unwrap();
    assert_eq!((info.frames, info.width, info.height, info.fps), (25, 64, 64, 8.0));

    let coord = coordinator(&dir.path().join("data"), &[]);
    let _worker = worker(&coord, &[]);
    let mut client = client(&coord).await;
    wait_for_workers(&mut client, 1).await;
    let address = coord.address.as_str();
    let mut args = vec!["submit", "--coordinator", address, "a red circle moving right", "--wait"];
    args.extend_from_slice(&SPEC);
    let (ok, stdout, stderr) = patchwork(&args);
    assert!(ok, "submit failed: {stderr}");
    let id = stdout.trim().to_string();
    assert_eq!(id.len(), 16, "{stdout:?}");

    let fetched = dir.path().join("fetched.mp4");
    let (ok, _, stderr) = patchwork(&["fetch", "--coordinator", address, &id, "-o", fetched.to_str().unwrap()]);
    assert!(ok, "fetch failed: {stderr}");
    assert!(std::fs::read(&fetched).unwrap() == rendered, "render and the cluster made different videos");

    let (ok, stdout, _) = patchwork(&["jobs", "--coordinator", address]);
    assert!(ok && stdout.contains(&id) && stdout.contains("done"), "{stdout}");
    let (ok, stdout, _) = patchwork(&["jobs", "--coordinator", address, "--state", "queued"]);
    assert!(ok && !stdout.contains(&id), "{stdout}");
    let (ok, stdout, _) = patchwork(&["status", "--coordinator", address]);
    assert!(ok && stdout.contains("w1") && stdout.contains("tiny") && stdout.contains("idle"), "{stdout}");
    let mut cluster = client.watch_cluster(patchwork_shared::pb::WatchClusterRequest {}).await.unwrap().into_inner();
    let first = cluster.message().await.unwrap().unwrap();
    assert_eq!((first.workers.len(), first.queued_jobs, first.running_jobs), (1, 0, 0));
    // Two windows (7 latent frames in windows of 4 sharing 1) for 2 steps, and one decode chunk.
    assert_eq!(first.workers[0].evaluations, 2 * 2 + 1, "{first:?}");
    // The same for scripts, once and then at every change.
    let (ok, stdout, _) = patchwork(&["status", "--coordinator", address, "--json"]);
    assert!(ok, "{stdout}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status --json prints JSON");
    assert_eq!(status["role"], "single");
    assert_eq!(status["workers"].as_array().map(Vec::len), Some(1), "{status}");
    let w = &status["workers"][0];
    assert_eq!(
        (w["model"].as_str(), w["status"].as_str(), w["evaluations"].as_u64()),
        (Some("tiny"), Some("idle"), Some(5))
    );
    let mut watching = Command::new(BIN)
        .args(["status", "--coordinator", address, "--json", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting status --watch");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(watching.stdout.take().unwrap()), &mut first).unwrap();
    let _ = watching.kill();
    let _ = watching.wait();
    let watched: serde_json::Value = serde_json::from_str(&first).expect("one JSON object per line");
    assert_eq!(watched["workers"][0]["evaluations"], 5, "{first}");
    // A reader that stops early (`| head`) is the reader's choice: no panic, and a watch ends.
    let follow = ["status", "--coordinator", address, "--json", "--watch"];
    for args in [&["jobs", "--coordinator", address][..], &["status", "--coordinator", address], &follow] {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting patchwork");
        drop(child.stdout.take());
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                panic!("{args:?} with its reader gone did not end");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let (ok, stdout, _) = patchwork(&["watch", "--coordinator", address, &id]);
    assert!(ok && stdout.trim() == format!("{id} done"), "{stdout}");
    let (ok, stdout, _) = patchwork(&["cancel", "--coordinator", address, &id]);
    assert!(ok && stdout.trim() == format!("{id} done"), "{stdout}");

    // Bad input: one line naming the field, exit status 1.
    let (ok, _, stderr) = patchwork(&["submit", "--coordinator", address, "p", "--frames", "0"]);
    assert!(!ok);
    assert!(stderr.trim() == "error: InvalidArgument: frames: 0 is out of range 1..=4001", "{stderr}");
    let (ok, _, stderr) = patchwork(&["fetch", "--coordinator", address, "nope", "-o", "/dev/null"]);
    assert!(!ok && stderr.contains("NotFound"), "{stderr}");

    // Standard services for grpcurl and generated clients.
    let channel = tonic::transport::Endpoint::from_shared(coord.address.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let serving = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    let named = HealthCheckRequest { service: "patchwork.v1.RenderService".into() };
    assert_eq!(health.check(named).await.unwrap().into_inner().status, 1);
    // Without etcd the one coordinator leads; a readiness probe asks for this.
    assert_eq!(common::health(&coord.address, "patchwork.leader").await, Ok(1));
    // Workers answer liveness probes too.
    assert_eq!(common::health(&_worker.address, "").await, Ok(1));
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("{response:?}") };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"patchwork.v1.RenderService") && names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[test]
fn a_model_directory_that_cannot_serve_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let out = out.to_str().unwrap();
    // The reference fixtures' pipeline pairs a text encoder 32 wide with a transformer expecting 40.
    let pipeline = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/reference/pipeline");
    let (ok, _, stderr) = patchwork(&["render", "p", "--model", pipeline, "-o", out]);
    assert!(!ok);
    assert!(stderr.contains("text_encoder") && stderr.contains("40"), "{stderr}");
    let (ok, _, stderr) = patchwork(&["render", "p", "--model", "/no/such/dir", "-o", out]);
    assert!(!ok && stderr.contains("/no/such/dir"), "{stderr}");
    assert!(!std::path::Path::new(out).exists());
}
