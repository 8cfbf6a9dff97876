//! The API's messages as JSON, for scripts (`patchwork status --json`) and the coordinator's web page: one
//! spelling of every state and field, so that both show the same thing.

use serde_json::{json, Value};

use crate::pb;

/// A job state as a person reads it ("encoding prompts").
pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Queued => "queued",
        pb::JobState::EncodingPrompts => "encoding prompts",
        pb::JobState::Denoising => "denoising",
        pb::JobState::Decoding => "decoding",
        pb::JobState::Done => "done",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

pub fn worker_status(status: i32) -> &'static str {
    match pb::WorkerStatus::try_from(status).unwrap_or(pb::WorkerStatus::Unspecified) {
        pb::WorkerStatus::Idle => "idle",
        pb::WorkerStatus::Busy => "busy",
        pb::WorkerStatus::Unhealthy => "unhealthy",
        pb::WorkerStatus::Unspecified => "unknown",
    }
}

/// The cluster: the coordinator's role, job counts, models, and every worker with its shard groups.
pub fn cluster_json(state: &pb::ClusterState) -> Value {
    let workers: Vec<Value> = state
        .workers
        .iter()
        .map(|w| {
            let groups: Vec<Value> = w
                .groups
                .iter()
                .map(|g| {
                    json!({
                        "index": g.index,
                        "devices": g.devices,
                        "healthy": g.healthy,
                        "failures": g.failures,
                        "last_error": g.last_error,
                    })
                })
                .collect();
            json!({
                "id": w.id,
                "address": w.address,
                "model": w.model,
                "status": worker_status(w.status),
                "in_flight": w.in_flight,
                "capacity": w.capacity,
                "evaluations": w.evaluations,
                "failures": w.failures,
                "last_seen_ms": w.last_seen_ms,
                "devices": w.devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
                "activity": w.activity,
                "groups": groups,
            })
        })
        .collect();
    let role = if state.role.is_empty() { "single" } else { state.role.as_str() };
    json!({
        "role": role,
        "leader": state.leader,
        "term": state.term,
        "queued_jobs": state.queued_jobs,
        "running_jobs": state.running_jobs,
        "models": state.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        "workers": workers,
    })
}

/// A job: what it renders, where it stands, and each window's progress (latent units).
pub fn job_json(job: &pb::Job) -> Value {
    let spec = job.spec.clone().unwrap_or_default();
    let progress = job.progress.clone().unwrap_or_default();
    let prompts: Vec<Value> = if spec.schedule.is_empty() {
        vec![json!({ "start_frame": 0, "prompt": spec.prompt })]
    } else {
        spec.schedule.iter().map(|s| json!({ "start_frame": s.start_frame, "prompt": s.prompt })).collect()
    };
    let windows: Vec<Value> = progress
        .windows
        .iter()
        .map(|w| {
            json!({
                "index": w.index,
                "frames": [w.frame_start, w.frame_end],
                "rows": [w.row_start, w.row_end],
                "cols": [w.col_start, w.col_end],
                "steps_done": w.steps_done,
                "retries": w.retries,
                "worker": w.worker,
                "segment": w.segment,
            })
        })
        .collect();
    json!({
        "id": job.id,
        "state": state_name(job.state),
        "error": job.error,
        "prompts": prompts,
        "model": spec.model,
        "frames": spec.frames,
        "width": spec.width,
        "height": spec.height,
        "fps": spec.fps,
        "seed": spec.seed,
        "priority": spec.priority,
        "step": progress.step,
        "steps": progress.steps,
        "decoded_chunks": progress.decoded_chunks,
        "decode_chunks": progress.decode_chunks,
        "windows": windows,
        "created_ms": job.created_ms,
        "started_ms": job.started_ms,
        "finished_ms": job.finished_ms,
        "video_bytes": job.video_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_show_their_prompts_states_and_windows() {
        let job = pb::Job {
            id: "j1".into(),
            state: pb::JobState::Denoising as i32,
            spec: Some(pb::JobSpec {
                schedule: vec![
                    pb::PromptSegment { start_frame: 0, prompt: "a red circle".into() },
                    pb::PromptSegment { start_frame: 40, prompt: "a blue square".into() },
                ],
                frames: Some(77),
                ..Default::default()
            }),
            progress: Some(pb::Progress {
                step: 3,
                steps: 8,
                windows: vec![pb::WindowProgress {
                    index: 1,
                    frame_start: 4,
                    frame_end: 9,
                    steps_done: 3,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = job_json(&job);
        assert_eq!(v["state"], "denoising");
        assert_eq!(v["prompts"][1]["prompt"], "a blue square");
        assert_eq!(v["prompts"][1]["start_frame"], 40);
        assert_eq!(v["frames"], 77);
        assert_eq!(v["windows"][0]["frames"], json!([4, 9]));
        assert_eq!(v["windows"][0]["steps_done"], 3);
        let single = job_json(&pb::Job {
            spec: Some(pb::JobSpec { prompt: "x".into(), ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(single["prompts"], json!([{ "start_frame": 0, "prompt": "x" }]));
        assert_eq!(single["state"], "unknown");
    }
}
