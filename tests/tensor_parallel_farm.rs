//! Workers with shard groups, end to end: a job rendered by `--tp 2` workers has the frames of `--tp 1`;
//! `--devices cpu:4 --tp 2` is two groups the coordinator schedules; a rank that fails mid-job fails its
//! group's evaluation, which is redone elsewhere (same bytes), and the worker re-forms the group and
//! reports its failure; a degree that does not divide the heads stops the worker at start.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use patchwork_coordinator::video::decode_mp4;
use patchwork_shared::pb;

const JOB_LIMIT: Duration = Duration::from_secs(240);

/// Renders `spec` on a fresh coordinator with one worker per entry of `workers` (its extra flags).
async fn render_on(workers: &[&[&str]], spec: pb::JobSpec) -> (Vec<u8>, pb::ClusterState) {
    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &[]);
    let _workers: Vec<Proc> = workers.iter().map(|extra| worker(&coord, extra)).collect();
    let mut client = client(&coord).await;
    wait_for_workers(&mut client, workers.len()).await;
    let job = submit(&mut client, spec).await;
    let last = follow(&mut client, &job.id, JOB_LIMIT, |_| {}).await;
    assert_eq!(last.state, pb::JobState::Done as i32, "job ended with {last:?}");
    let video = fetch(&mut client, &job.id).await;
    // The workers' heartbeats carry their groups' health; give the last ones time to arrive.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let state = client.get_cluster_state(pb::GetClusterStateRequest {}).await.unwrap().into_inner();
    (video, state)
}

/// Peak signal-to-noise ratio of two decoded videos, in dB.
fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let fa = decode_mp4(a).expect("first video decodes");
    let fb = decode_mp4(b).expect("second video decodes");
    assert_eq!(fa.len(), fb.len());
    let (mut sum, mut n) = (0f64, 0usize);
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!((x.width, x.height), (y.width, y.height));
        for (p, q) in x.data.iter().zip(&y.data) {
            let d = *p as f64 - *q as f64;
            sum += d * d;
        }
        n += x.data.len();
    }
    let mse = sum / n as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tp2_workers_render_the_frames_of_tp1() {
    let (tp1, _) = render_on(&[&[]], several_windows(3)).await;
    let (tp2, state) = render_on(&[&["--tp", "2"]], several_windows(3)).await;
    let quality = psnr(&tp2, &tp1);
    println!("--tp 2 against --tp 1: PSNR {quality:.1} dB");
    assert!(quality >= 40.0, "--tp 2 frames differ from --tp 1: PSNR {quality:.1} dB");
    let groups = &state.workers[0].groups;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].devices, vec!["cpu:0", "cpu:1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rank_fails_its_group_and_the_work_is_redone_elsewhere() {
    let (undisturbed, _) = render_on(&[&["--tp", "2"]], several_windows(4)).await;
    // Two workers of two groups each; rank 1 of the first worker's group 0 fails at that group's third
    // evaluation.
    let faulty: &[&str] = &["--devices", "cpu:4", "--tp", "2", "--inject-rank-fault", "0:1:3"];
    let healthy: &[&str] = &["--devices", "cpu:4", "--tp", "2"];
    let (disturbed, state) = render_on(&[faulty, healthy], several_windows(4)).await;
    assert!(disturbed == undisturbed, "a failed rank changed the video");
    let groups: Vec<&pb::ShardGroup> = state.workers.iter().flat_map(|w| &w.groups).collect();
    assert_eq!(groups.len(), 4, "{state:?}");
    assert!(state.workers.iter().all(|w| w.capacity == 2), "{state:?}");
    let failed: Vec<_> = groups.iter().filter(|g| g.failures > 0).collect();
    assert_eq!(failed.len(), 1, "{groups:?}");
    assert_eq!(failed[0].failures, 1);
    assert!(failed[0].last_error.contains("rank 1") && failed[0].last_error.contains("injected fault"), "{failed:?}");
    assert!(groups.iter().all(|g| g.healthy), "the failed group was not re-formed: {groups:?}");
}

#[test]
fn a_degree_that_does_not_divide_the_heads_stops_the_worker() {
    let out = Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(["worker", "--coordinator", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--tp", "4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("degree 4 does not divide the model's 6 attention heads"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(["worker", "--listen", "127.0.0.1:0", "--devices", "cpu:4", "--tp", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("degree 3 does not divide the worker's 4 devices"), "{stderr}");
}
