//! The farm end to end, as separate processes on loopback: a coordinator, workers with the tiny model,
//! and a gRPC client. The video must not depend on how many workers there are or on one of them dying.

mod common;

use std::time::Duration;

use common::*;
use patchwork_coordinator::video::probe_mp4;
use patchwork_shared::pb;

const JOB_LIMIT: Duration = Duration::from_secs(240);

/// Renders `spec` on a fresh coordinator with `workers` workers; returns the MP4 and the final job.
async fn render_with(workers: usize, spec: pb::JobSpec) -> (Vec<u8>, pb::Job) {
    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &[]);
    let _workers: Vec<Proc> = (0..workers).map(|_| worker(&coord, &[])).collect();
    let mut client = client(&coord).await;
    wait_for_workers(&mut client, workers).await;
    let job = submit(&mut client, spec).await;
    let last = follow(&mut client, &job.id, JOB_LIMIT, |_| {}).await;
    assert_eq!(last.state, pb::JobState::Done as i32, "job ended with {last:?}");
    (fetch(&mut client, &job.id).await, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_video_is_what_was_asked_and_the_same_with_one_worker_or_three() {
    let (one, job) = render_with(1, several_windows(3)).await;
    let info = probe_mp4(&one).expect("a readable MP4");
    assert_eq!((info.frames, info.width, info.height, info.fps), (33, 128, 64, 12.0));
    assert_eq!(info.codec, "avc1");
    let progress = job.progress.unwrap();
    assert_eq!(progress.windows.len(), 9, "3 temporal windows x 3 tiles");
    assert!(progress.windows.iter().all(|w| w.steps_done == 3));
    assert_eq!((progress.step, progress.steps), (3, 3));
    assert_eq!(job.video_bytes as usize, one.len());

    let (three, _) = render_with(3, several_windows(3)).await;
    assert!(one == three, "1 worker and 3 workers made different videos");

    let mut other_seed = several_windows(3);
    other_seed.seed = Some(99);
    let (different, _) = render_with(1, other_seed).await;
    assert!(one != different, "the seed must change the video");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_changes_nothing() {
    let steps = 8;
    let (undisturbed, _) = render_with(1, several_windows(steps)).await;

    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &[]);
    let mut workers: Vec<Proc> = (0..3).map(|_| worker(&coord, &[])).collect();
    let mut client = client(&coord).await;
    wait_for_workers(&mut client, 3).await;
    let job = submit(&mut client, several_windows(steps)).await;
    let mut victim = Some(workers.remove(1));
    let mut watcher = client.clone();
    let last = follow(&mut watcher, &job.id, JOB_LIMIT, |j| {
        let step = j.progress.as_ref().map_or(0, |p| p.step);
        if step >= 2 {
            if let Some(mut proc) = victim.take() {
                proc.kill();
            }
        }
    })
    .await;
    assert!(victim.is_none(), "the job ended before the worker could be killed");
    assert_eq!(last.state, pb::JobState::Done as i32, "job ended with {last:?}");
    let disturbed = fetch(&mut client, &job.id).await;
    assert!(disturbed == undisturbed, "killing a worker changed the video");
    // The dead worker is dropped after its missed heartbeats; the other two stay.
    wait_for_workers(&mut client, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_at_a_step_boundary_and_frees_the_workers() {
    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &[]);
    let _workers: Vec<Proc> = (0..2).map(|_| worker(&coord, &[])).collect();
    let mut client = client(&coord).await;
    wait_for_workers(&mut client, 2).await;
    let job = submit(&mut client, several_windows(1000)).await;
    let mut canceller = client.clone();
    let mut sent = false;
    let mut steps_seen = Vec::new();
    let last = follow(&mut client.clone(), &job.id, JOB_LIMIT, |j| {
        let step = j.progress.as_ref().map_or(0, |p| p.step);
        steps_seen.push(step);
        if step >= 2 && !sent {
            sent = true;
            let mut c = canceller.clone();
            let id = j.id.clone();
            tokio::spawn(async move { c.cancel_job(pb::CancelJobRequest { job_id: id }).await });
        }
    })
    .await;
    assert_eq!(last.state, pb::JobState::Cancelled as i32, "job ended with {last:?}");
    let progress = last.progress.unwrap();
    assert!(progress.step >= 2 && progress.step < 1000, "stopped at step {}", progress.step);
    // At a step boundary: every window has done exactly the steps the job has.
    assert!(progress.windows.iter().all(|w| w.steps_done == progress.step), "{progress:?}");
    assert!(fetch_fails(&mut canceller, &job.id).await);
    // The workers are free again, and take the next job.
    wait_for_workers(&mut client, 2).await;
    let next = submit(&mut client, several_windows(2)).await;
    let done = follow(&mut client, &next.id, JOB_LIMIT, |_| {}).await;
    assert_eq!(done.state, pb::JobState::Done as i32);
    // Cancelling a finished job changes nothing.
    let again = client.cancel_job(pb::CancelJobRequest { job_id: next.id.clone() }).await.unwrap().into_inner();
    assert_eq!(again.state, pb::JobState::Done as i32);
}

async fn fetch_fails(
    client: &mut pb::render_service_client::RenderServiceClient<tonic::transport::Channel>,
    id: &str,
) -> bool {
    match client.fetch_video(pb::FetchVideoRequest { job_id: id.into() }).await {
        Err(status) => status.code() == tonic::Code::FailedPrecondition,
        Ok(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_schedule_conditions_each_window_by_its_segment() {
    let mut scheduled = several_windows(2);
    scheduled.prompt.clear();
    scheduled.schedule = vec![
        pb::PromptSegment { start_frame: 0, prompt: "a red circle moving right".into() },
        pb::PromptSegment { start_frame: 20, prompt: "a blue square moving left".into() },
    ];
    let (video, job) = render_with(1, scheduled).await;
    let segments: Vec<u32> = job.progress.unwrap().windows.iter().map(|w| w.segment).collect();
    // Three windows in time (latent frames 0-3, 3-6 or so, 5-8), three tiles each; the last window's
    // middle frame is past frame 20.
    assert_eq!(segments.first(), Some(&0));
    assert_eq!(segments.last(), Some(&1));
    let (single, _) = render_with(1, several_windows(2)).await;
    assert!(video != single, "the schedule's second prompt changed nothing");
}

/// `fusion: continue` draws the windows one after another; a frame that needs spatial tiles is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continued_windows_are_drawn_one_after_another() {
    let continued = pb::JobSpec { width: Some(64), fusion: "continue".into(), ..several_windows(3) };
    let (video, job) = render_with(1, continued.clone()).await;
    let info = probe_mp4(&video).expect("a readable MP4");
    assert_eq!((info.frames, info.width, info.height), (33, 64, 64));
    let progress = job.progress.unwrap();
    assert_eq!(progress.windows.len(), 3, "3 temporal windows, one tile");
    assert!(progress.windows.iter().all(|w| w.steps_done == 3));
    assert_eq!((progress.step, progress.steps), (3, 3));
    let (smooth, _) = render_with(1, pb::JobSpec { fusion: String::new(), ..continued }).await;
    assert!(video != smooth, "continuing changed nothing");

    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &[]);
    let mut client = client(&coord).await;
    let tiled = pb::JobSpec { fusion: "continue".into(), ..several_windows(3) };
    let err = client
        .submit_job(pb::SubmitJobRequest { spec: Some(tiled), request_id: String::new() })
        .await
        .expect_err("tiles cannot be continued");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("fusion"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_times_out_and_its_work_is_redone_elsewhere() {
    let steps = 6;
    let (undisturbed, _) = render_with(1, several_windows(steps)).await;

    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &["--eval-timeout", "2s"]);
    let mut workers: Vec<Proc> = (0..2).map(|_| worker(&coord, &[])).collect();
    let mut client = client(&coord).await;
    wait_for_workers(&mut client, 2).await;
    let job = submit(&mut client, several_windows(steps)).await;
    let stalled = workers[0].pid().to_string();
    let mut stopped = false;
    let last = follow(&mut client.clone(), &job.id, JOB_LIMIT, |j| {
        if !stopped && j.progress.as_ref().is_some_and(|p| p.step >= 1) {
            stopped = true;
            // SIGSTOP: the process neither answers nor dies, so only the timeout can tell.
            let status = std::process::Command::new("kill").args(["-STOP", &stalled]).status().unwrap();
            assert!(status.success());
        }
    })
    .await;
    assert!(stopped, "the job ended before the worker could be stopped");
    assert_eq!(last.state, pb::JobState::Done as i32, "job ended with {last:?}");
    assert!(fetch(&mut client, &job.id).await == undisturbed, "a stalled worker changed the video");
    workers[0].kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_written_while_a_job_runs_and_change_nothing() {
    let steps = 5;
    let (plain, _) = render_with(1, several_windows(steps)).await;

    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &["--checkpoint-every", "1"]);
    let _worker = worker(&coord, &[]);
    let mut client = client(&coord).await;
    wait_for_workers(&mut client, 1).await;
    let job = submit(&mut client, several_windows(steps)).await;
    let path = data.path().join("checkpoints").join(format!("{}.ckpt", job.id));
    let mut seen = Vec::new();
    let last = follow(&mut client.clone(), &job.id, JOB_LIMIT, |j| {
        let step = j.progress.as_ref().map_or(0, |p| p.step) as usize;
        if step >= 1 && j.state == pb::JobState::Denoising as i32 {
            if let Ok(checkpoint) = patchwork_coordinator::checkpoint::read(&path, &job.id) {
                assert_eq!(checkpoint.dims, [16, 9, 8, 16]);
                seen.push(checkpoint.step);
            }
        }
    })
    .await;
    assert_eq!(last.state, pb::JobState::Done as i32, "job ended with {last:?}");
    assert!(!seen.is_empty(), "no checkpoint was readable while the job ran");
    assert!(seen.iter().all(|&s| (1..=steps as usize).contains(&s)), "{seen:?}");
    // The job's end is made durable first and the checkpoint removed after it, so a client can see the
    // job done a moment before the file goes.
    wait_until(Duration::from_secs(10), "the checkpoint to be removed after its job", || {
        let gone = !path.exists();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(fetch(&mut client, &job.id).await == plain, "checkpointing changed the video");
}
