//! Cluster mode end to end: a real etcd, coordinators and workers as separate processes. Whatever dies or
//! stalls mid-job (a worker, the leader, etcd itself), the finished MP4 has the same bytes as an undisturbed
//! run.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::etcd::Etcd;
use common::*;
use futures::StreamExt;
use patchwork_shared::pb::{self, render_service_client::RenderServiceClient};
use tonic::transport::Channel;

const JOB_LIMIT: Duration = Duration::from_secs(300);
/// Membership and leadership lease TTL in these tests.
const TTL: &str = "3s";

fn cluster_coordinator(data: &Path, etcd: &Etcd, log: Option<&Path>, extra: &[&str]) -> Proc {
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec!["coordinator", "--listen", "127.0.0.1:0", "--data-dir", data];
    args.extend_from_slice(&["--etcd", &etcd.endpoint, "--lease-ttl", TTL, "--checkpoint-every", "1"]);
    args.extend_from_slice(extra);
    spawn_logged(&args, log)
}

fn cluster_worker(etcd: &Etcd, log: Option<&Path>) -> Proc {
    spawn_logged(&["worker", "--etcd", &etcd.endpoint, "--lease-ttl", TTL, "--listen", "127.0.0.1:0"], log)
}

/// The worker's etcd name, as it defaults: its host and port.
fn member_name(worker: &Proc) -> String {
    worker.address.trim_start_matches("http://").replace(':', "-")
}

/// The video of `spec` rendered by a single coordinator without etcd and one worker, undisturbed.
async fn reference(spec: pb::JobSpec) -> Vec<u8> {
    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &[]);
    let _worker = worker(&coord, &[]);
    let mut client = client(&coord).await;
    wait_for_workers(&mut client, 1).await;
    let job = submit(&mut client, spec).await;
    let last = follow(&mut client, &job.id, JOB_LIMIT, |_| {}).await;
    assert_eq!(last.state, pb::JobState::Done as i32, "reference job ended with {last:?}");
    fetch(&mut client, &job.id).await
}

async fn state(client: &mut RenderServiceClient<Channel>) -> Option<pb::ClusterState> {
    Some(client.get_cluster_state(pb::GetClusterStateRequest {}).await.ok()?.into_inner())
}

async fn wait_leader(client: &mut RenderServiceClient<Channel>) -> pb::ClusterState {
    wait_until(Duration::from_secs(60), "this coordinator to lead", || {
        let mut client = client.clone();
        async move { state(&mut client).await.filter(|s| s.role == "leader") }
    })
    .await
}

async fn wait_members(client: &mut RenderServiceClient<Channel>, n: usize) -> pb::ClusterState {
    wait_until(Duration::from_secs(60), "the workers in etcd", || {
        let mut client = client.clone();
        async move { state(&mut client).await.filter(|s| s.workers.len() == n) }
    })
    .await
}

async fn get(client: &mut RenderServiceClient<Channel>, id: &str) -> Option<pb::Job> {
    Some(client.get_job(pb::GetJobRequest { job_id: id.into() }).await.ok()?.into_inner())
}

/// Waits until the job has done `step` steps; the coordinator may be between leaders meanwhile.
async fn wait_step(client: &mut RenderServiceClient<Channel>, id: &str, step: u32) {
    wait_until(JOB_LIMIT, "the job's steps", || {
        let mut client = client.clone();
        async move { get(&mut client, id).await.filter(|j| j.progress.as_ref().is_some_and(|p| p.step >= step)) }
    })
    .await;
}

/// Polls the job (a watch would end with a failover) until it ends; it must be done.
async fn wait_done(client: &mut RenderServiceClient<Channel>, id: &str) -> pb::Job {
    let job = wait_until(JOB_LIMIT, "the job to end", || {
        let mut client = client.clone();
        async move { get(&mut client, id).await.filter(|j| j.finished_ms > 0) }
    })
    .await;
    assert_eq!(job.state, pb::JobState::Done as i32, "job ended with {job:?}");
    job
}

fn signal(proc: &Proc, name: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &proc.pid().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_replaced_and_the_video_is_unchanged() {
    let spec = several_windows(10);
    let expected = reference(spec.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let coord = cluster_coordinator(&dir.path().join("data"), &etcd, None, &[]);
    let mut victim = cluster_worker(&etcd, None);
    let _steady = cluster_worker(&etcd, None);
    let mut client = client(&coord).await;
    wait_leader(&mut client).await;
    wait_members(&mut client, 2).await;

    let job = submit(&mut client, spec).await;
    wait_step(&mut client, &job.id, 2).await;
    victim.kill();
    // Its registration vanishes with its lease.
    let gone = member_name(&victim);
    wait_until(Duration::from_secs(30), "the killed worker to leave", || {
        let mut client = client.clone();
        let gone = gone.clone();
        async move { state(&mut client).await.filter(|s| s.workers.iter().all(|w| !w.id.starts_with(&gone))) }
    })
    .await;
    let _newcomer = cluster_worker(&etcd, None);
    wait_members(&mut client, 2).await;
    wait_done(&mut client, &job.id).await;
    assert!(fetch(&mut client, &job.id).await == expected, "the video changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_job_the_follower_finishes_it() {
    let spec = several_windows(12);
    let expected = reference(spec.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let etcd = Etcd::start(dir.path());
    let mut first = cluster_coordinator(&data, &etcd, None, &[]);
    let mut to_first = client(&first).await;
    let term_one = wait_leader(&mut to_first).await.term;
    let second = cluster_coordinator(&data, &etcd, None, &[]);
    let mut to_second = client(&second).await;
    let _worker = cluster_worker(&etcd, None);
    wait_members(&mut to_first, 1).await;
    let follower = wait_until(Duration::from_secs(30), "the follower to know the leader", || {
        let mut client = to_second.clone();
        let leader = first.address.clone();
        async move { state(&mut client).await.filter(|s| s.role == "follower" && s.leader == leader) }
    })
    .await;
    assert_eq!(follower.term, term_one);
    // Readiness is leadership: only the leader's "patchwork.leader" health is SERVING.
    wait_until(Duration::from_secs(10), "the leader to report itself ready", || {
        let address = first.address.clone();
        async move { (health(&address, "patchwork.leader").await == Ok(1)).then_some(()) }
    })
    .await;
    assert_eq!(health(&second.address, "patchwork.leader").await, Ok(2));
    assert_eq!(health(&second.address, "").await, Ok(1));

    // A follower refuses writes and names the leader.
    let request = |id: &str| pb::SubmitJobRequest { spec: Some(spec.clone()), request_id: id.into() };
    let refused = to_second.submit_job(request("failover")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(refused.metadata().get("patchwork-leader").and_then(|v| v.to_str().ok()), Some(first.address.as_str()));

    let job = to_first.submit_job(request("failover")).await.unwrap().into_inner().job.unwrap();
    wait_step(&mut to_first, &job.id, 3).await;
    first.kill();
    let took_over = wait_leader(&mut to_second).await;
    assert!(took_over.term > term_one, "terms must grow: {} then {}", term_one, took_over.term);
    wait_until(Duration::from_secs(10), "the new leader to report itself ready", || {
        let address = second.address.clone();
        async move { (health(&address, "patchwork.leader").await == Ok(1)).then_some(()) }
    })
    .await;
    wait_done(&mut to_second, &job.id).await;
    assert!(fetch(&mut to_second, &job.id).await == expected, "the video changed across the failover");

    // The same request id names the same job on the new leader.
    let again = to_second.submit_job(request("failover")).await.unwrap().into_inner();
    assert!(!again.created);
    assert_eq!(again.job.unwrap().id, job.id);
    let listed = to_second.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.jobs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_and_restarted_mid_job_changes_nothing() {
    let spec = several_windows(12);
    let expected = reference(spec.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    let coord = cluster_coordinator(&dir.path().join("data"), &etcd, None, &[]);
    let _worker = cluster_worker(&etcd, None);
    let mut client = client(&coord).await;
    wait_leader(&mut client).await;
    wait_members(&mut client, 1).await;
    let job = submit(&mut client, spec).await;
    wait_step(&mut client, &job.id, 3).await;

    etcd.stop();
    // Longer than the TTL: the leader cannot renew and steps down, the worker stops taking work.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = state(&mut client).await.expect("the coordinator answers without etcd");
    assert_ne!(during.role, "leader", "a coordinator that cannot renew its lease must not lead");
    etcd.restart();

    wait_leader(&mut client).await;
    wait_done(&mut client, &job.id).await;
    assert!(fetch(&mut client, &job.id).await == expected, "the video changed across the etcd restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stalled_past_its_lease_has_its_late_work_rejected() {
    let spec = several_windows(10);
    let expected = reference(spec.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let coord = cluster_coordinator(&dir.path().join("data"), &etcd, None, &[]);
    let log = dir.path().join("stalled.log");
    let stalled = cluster_worker(&etcd, Some(&log));
    let _steady = cluster_worker(&etcd, None);
    let mut client = client(&coord).await;
    wait_leader(&mut client).await;
    wait_members(&mut client, 2).await;
    let name = member_name(&stalled);

    let job = submit(&mut client, spec).await;
    wait_step(&mut client, &job.id, 1).await;
    // Stop it while it evaluates, for longer than its lease.
    wait_until(Duration::from_secs(60), "the worker to be busy", || {
        let mut client = client.clone();
        let name = name.clone();
        async move {
            state(&mut client).await.filter(|s| s.workers.iter().any(|w| w.id.starts_with(&name) && w.in_flight > 0))
        }
    })
    .await;
    signal(&stalled, "STOP");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let meanwhile = state(&mut client).await.unwrap();
    assert!(meanwhile.workers.iter().all(|w| !w.id.starts_with(&name)), "a worker past its lease must leave");
    signal(&stalled, "CONT");

    wait_done(&mut client, &job.id).await;
    assert!(fetch(&mut client, &job.id).await == expected, "late results must not change the video");
    // It comes back under a new generation.
    wait_until(Duration::from_secs(30), "the stalled worker to register again", || {
        let mut client = client.clone();
        let name = name.clone();
        async move {
            state(&mut client).await.filter(|s| s.workers.iter().any(|w| w.id.starts_with(&name) && w.generation == 2))
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("membership lease lapsed"), "{text}");
}

/// The worker's side of the same, without a coordinator in between: a request that was being computed
/// when the lease lapsed, and one that arrives afterwards, both fail, whatever the timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_lapsed_drops_its_result_and_refuses_late_work() {
    use patchwork_shared::pb::worker_service_client::WorkerServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let log = dir.path().join("worker.log");
    let worker = cluster_worker(&etcd, Some(&log));
    let mut worker_client =
        WorkerServiceClient::connect(worker.address.clone()).await.unwrap().max_decoding_message_size(64 << 20);
    wait_until(Duration::from_secs(30), "the worker to register", || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).ok().filter(|t| t.contains("registered in etcd")) }
    })
    .await;
    // A window large enough that its evaluation is still running when the worker is stopped.
    let shape = [16usize, 5, 48, 48];
    let request = |window: u32| pb::DenoiseRequest {
        fence: Some(pb::Fence { term: 7, job_id: "j".into(), step: 0, window, attempt: 0 }),
        latent: Some(patchwork_shared::wire::f32_tensor(&shape, &vec![0.1; shape.iter().product()])),
        timestep: 500.0,
        prompt: "a red circle".into(),
        guidance_scale: 5.0,
        ..Default::default()
    };
    let mut busy = worker_client.clone();
    let first = request(0);
    let computing = tokio::spawn(async move { busy.denoise(first).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&worker, "STOP");
    let mut late = worker_client.clone();
    let second = request(1);
    let arriving = tokio::spawn(async move { late.denoise(second).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(&worker, "CONT");
    for (what, answer) in [("computing", computing.await.unwrap()), ("arriving", arriving.await.unwrap())] {
        let status = answer.expect_err(what);
        eprintln!("{what}: {:?} {}", status.code(), status.message());
        // The late request waits in the socket while the worker is stopped. On waking, the worker may
        // register again (a new generation) before it reads the request; then the request is refused
        // because the dropped evaluation still holds the only slot. Either way it is not done.
        let refused_when_full = what == "arriving" && status.code() == tonic::Code::ResourceExhausted;
        assert!(
            matches!(status.code(), tonic::Code::Aborted | tonic::Code::Unavailable) || refused_when_full,
            "{what}: {status:?}"
        );
    }
    // Registered again under the next generation, it takes work.
    wait_until(Duration::from_secs(30), "the worker to register again", || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).ok().filter(|t| t.contains("generation=2")) }
    })
    .await;
    assert!(worker_client.denoise(request(2)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_jobs_survive_a_coordinator_restart_once_each() {
    const JOBS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let etcd = Etcd::start(dir.path());
    let mut first = cluster_coordinator(&data, &etcd, None, &["--max-running-jobs", "8"]);
    let _worker = spawn_logged(
        &["worker", "--etcd", &etcd.endpoint, "--lease-ttl", TTL, "--listen", "127.0.0.1:0", "--capacity", "2"],
        None,
    );
    let mut to_first = client(&first).await;
    wait_leader(&mut to_first).await;
    wait_members(&mut to_first, 1).await;
    let spec = |i: usize| pb::JobSpec {
        prompt: format!("a shape number {i}"),
        frames: Some(1),
        width: Some(64),
        height: Some(64),
        steps: Some(1),
        seed: Some(i as u64),
        ..Default::default()
    };
    let submit_all = |client: RenderServiceClient<Channel>| {
        futures::stream::iter(0..JOBS)
            .map(move |i| {
                let mut client = client.clone();
                async move {
                    let request = pb::SubmitJobRequest { spec: Some(spec(i)), request_id: format!("request-{i}") };
                    let answer = client.submit_job(request).await.expect("submit").into_inner();
                    (i, answer.job.expect("a job").id, answer.created)
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
    };
    let mut ids = vec![String::new(); JOBS];
    for (i, id, created) in submit_all(to_first.clone()).await {
        assert!(created);
        ids[i] = id;
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), JOBS);
    first.kill();

    let second = cluster_coordinator(&data, &etcd, None, &["--max-running-jobs", "8"]);
    let mut to_second = client(&second).await;
    wait_leader(&mut to_second).await;
    let list = |client: RenderServiceClient<Channel>, states: Vec<i32>| async move {
        let mut client = client;
        let request = pb::ListJobsRequest { states, page_size: 1000, page_token: String::new() };
        client.list_jobs(request).await.expect("list").into_inner().jobs
    };
    let listed = list(to_second.clone(), vec![]).await;
    assert_eq!(listed.len(), JOBS, "every job present, none duplicated");
    let listed_ids: HashSet<&String> = listed.iter().map(|j| &j.id).collect();
    assert_eq!(listed_ids, ids.iter().collect::<HashSet<_>>());
    let requests: HashSet<&String> = listed.iter().map(|j| &j.request_id).collect();
    assert_eq!(requests.len(), JOBS);

    // Clients retrying after the failover get their jobs, not new ones.
    for (i, id, created) in submit_all(to_second.clone()).await {
        assert!(!created, "request-{i} made a second job");
        assert_eq!(id, ids[i]);
    }
    let done = wait_until(JOB_LIMIT, "every job to finish", || {
        let client = to_second.clone();
        async move {
            let done = list(client, vec![pb::JobState::Done as i32]).await;
            (done.len() == JOBS).then_some(done)
        }
    })
    .await;
    assert_eq!(done.iter().map(|j| &j.id).collect::<HashSet<_>>().len(), JOBS);
    assert_eq!(list(to_second.clone(), vec![]).await.len(), JOBS);
    let videos = std::fs::read_dir(data.join("videos"))
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "mp4")));
    assert_eq!(videos.count(), JOBS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_a_clear_error_at_start() {
    for args in [
        vec!["coordinator", "--listen", "127.0.0.1:0", "--etcd", "http://127.0.0.1:1"],
        vec!["worker", "--listen", "127.0.0.1:0", "--etcd", "http://127.0.0.1:1"],
    ] {
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let run = tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN).args(&owned).env("RUST_LOG", "warn").output()
        });
        let output = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("it must give up, not hang")
            .unwrap()
            .unwrap();
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("etcd at http://127.0.0.1:1 is unreachable"), "{args:?}: {stderr}");
    }
    let output = std::process::Command::new(BIN).args(["coordinator", "--etcd", "127.0.0.1:2379"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("--etcd"), "a bad endpoint names the flag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_with_authentication_is_reached_with_its_user_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    // etcd's own way to turn authentication on: a root user with the root role, then `auth enable`.
    let mut admin = etcd_client::Client::connect([etcd.endpoint.as_str()], None).await.unwrap();
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    // Without a user, or with a wrong password, both kinds of process stop at start and say why.
    for creds in [vec![], vec!["--etcd-username", "root", "--etcd-password", "guess"]] {
        for role in ["coordinator", "worker"] {
            let mut args = vec![role, "--listen", "127.0.0.1:0", "--etcd", etcd.endpoint.as_str()];
            args.extend_from_slice(&creds);
            let output = std::process::Command::new(BIN)
                .args(&args)
                .env("RUST_LOG", "warn")
                .env_remove("PATCHWORK_ETCD_USERNAME")
                .env_remove("PATCHWORK_ETCD_PASSWORD")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{args:?} must fail");
            assert!(stderr.contains("refused access") && stderr.contains("etcdserver:"), "{args:?}: {stderr}");
        }
    }
    let output = std::process::Command::new(BIN)
        .args(["coordinator", "--etcd", etcd.endpoint.as_str(), "--etcd-username", "root"])
        .env_remove("PATCHWORK_ETCD_PASSWORD")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("--etcd-password is not"), "a half user is named");

    // With the user, a coordinator leads and a worker joins: the whole cluster runs through the auth.
    let user = ["--etcd-username", "root", "--etcd-password", "rootpw"];
    let data = dir.path().join("data");
    let coord = cluster_coordinator(&data, &etcd, None, &user);
    let mut args = vec!["worker", "--etcd", etcd.endpoint.as_str(), "--lease-ttl", TTL, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(&user);
    let _worker = spawn_listening(&args);
    let mut client = client(&coord).await;
    wait_leader(&mut client).await;
    wait_members(&mut client, 1).await;
    let job = submit(&mut client, several_windows(1)).await;
    assert_eq!(wait_done(&mut client, &job.id).await.state, pb::JobState::Done as i32);
}
