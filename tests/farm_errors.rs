//! Bad input at the API: every invalid request is refused with the right code and a message naming the
//! field, and the coordinator keeps serving. A worker that answers with malformed tensors is treated as
//! failed; the job still finishes on a sound worker.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use patchwork_shared::model::ModelGeometry;
use patchwork_shared::pb::{self, worker_service_server};
use patchwork_shared::wire;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

fn base() -> pb::JobSpec {
    pb::JobSpec { prompt: "a blue square moving left".into(), steps: Some(2), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_refused_naming_its_field() {
    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &["--queue-limit", "3"]);
    let mut client = client(&coord).await;
    type Mutate = Box<dyn Fn(&mut pb::JobSpec)>;
    let cases: Vec<(&str, Mutate)> = vec![
        ("prompt", Box::new(|s| s.prompt = String::new())),
        ("prompt", Box::new(|s| s.prompt = "  \n ".into())),
        ("frames", Box::new(|s| s.frames = Some(0))),
        ("frames", Box::new(|s| s.frames = Some(10_000_001))),
        ("frames", Box::new(|s| s.frames = Some(20))),
        ("width", Box::new(|s| s.width = Some(0))),
        ("width", Box::new(|s| s.width = Some(1_000_000))),
        ("width", Box::new(|s| s.width = Some(100))),
        ("height", Box::new(|s| s.height = Some(8))),
        ("model", Box::new(|s| s.model = "no-such-model".into())),
        ("sampler", Box::new(|s| s.sampler = "ddim".into())),
        ("overlap_frames", Box::new(|s| (s.frames, s.window_frames, s.overlap_frames) = (Some(33), Some(9), Some(12)))),
        ("overlap_frames", Box::new(|s| (s.frames, s.window_frames, s.overlap_frames) = (Some(33), Some(9), Some(9)))),
        ("steps", Box::new(|s| s.steps = Some(0))),
        ("steps", Box::new(|s| s.steps = Some(100_000))),
        (
            "schedule[2].start_frame",
            Box::new(|s| {
                s.prompt.clear();
                s.schedule = vec![
                    pb::PromptSegment { start_frame: 0, prompt: "a".into() },
                    pb::PromptSegment { start_frame: 8, prompt: "b".into() },
                    pb::PromptSegment { start_frame: 4, prompt: "c".into() },
                ];
            }),
        ),
        (
            "schedule",
            Box::new(|s| {
                s.prompt.clear();
                s.schedule = vec![
                    pb::PromptSegment { start_frame: 0, prompt: "a".into() },
                    pb::PromptSegment { start_frame: 400, prompt: "b".into() },
                ];
            }),
        ),
        ("request", Box::new(|s| s.prompt = "x".repeat(2 << 20))),
        (
            "frames",
            Box::new(|s| (s.frames, s.width, s.height, s.window_frames) = (Some(33), Some(3840), Some(2160), Some(5))),
        ),
        ("height", Box::new(|s| (s.width, s.height) = (Some(2176), Some(2176)))),
    ];
    for (field, mutate) in &cases {
        let mut spec = base();
        mutate(&mut spec);
        let status = client
            .submit_job(pb::SubmitJobRequest { spec: Some(spec), request_id: String::new() })
            .await
            .expect_err(&format!("a bad {field} was accepted"));
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(&format!("{field}:")), "{field}: {}", status.message());
    }
    let missing = client.submit_job(pb::SubmitJobRequest::default()).await.unwrap_err();
    assert_eq!((missing.code(), missing.message()), (Code::InvalidArgument, "spec: missing"));

    // Unknown jobs, bad pages and unfinished videos.
    let unknown = client.get_job(pb::GetJobRequest { job_id: "nope".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        client.cancel_job(pb::CancelJobRequest { job_id: "nope".into() }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client.watch_job(pb::WatchJobRequest { job_id: "nope".into() }).await.unwrap_err().code(),
        Code::NotFound
    );
    let empty = client.get_job(pb::GetJobRequest::default()).await.unwrap_err();
    assert_eq!((empty.code(), empty.message()), (Code::InvalidArgument, "job_id: must not be empty"));
    let page = client.list_jobs(pb::ListJobsRequest { page_token: "zz".into(), ..Default::default() }).await;
    assert_eq!(page.unwrap_err().code(), Code::InvalidArgument);
    let far = pb::ListJobsRequest { page_token: u64::MAX.to_string(), ..Default::default() };
    assert!(client.list_jobs(far).await.unwrap().into_inner().jobs.is_empty());

    // No workers: jobs wait in the queue, which is bounded, and submission is idempotent.
    let first = client
        .submit_job(pb::SubmitJobRequest { spec: Some(base()), request_id: "req-1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let again = client
        .submit_job(pb::SubmitJobRequest { spec: Some(base()), request_id: "req-1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.job.as_ref().unwrap().id, first.job.as_ref().unwrap().id);
    let queued = first.job.unwrap();
    let video = client.fetch_video(pb::FetchVideoRequest { job_id: queued.id.clone() }).await.unwrap_err();
    assert_eq!(video.code(), Code::FailedPrecondition);
    submit(&mut client, base()).await;
    submit(&mut client, base()).await;
    let full = client.submit_job(pb::SubmitJobRequest { spec: Some(base()), request_id: String::new() }).await;
    assert_eq!(full.unwrap_err().code(), Code::ResourceExhausted);

    // Still serving.
    let jobs = client.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner();
    assert_eq!(jobs.jobs.len(), 3);
    let page = client.list_jobs(pb::ListJobsRequest { page_size: 2, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((page.jobs.len(), page.next_page_token.as_str()), (2, "2"));
    let state = client.get_cluster_state(pb::GetClusterStateRequest {}).await.unwrap().into_inner();
    assert_eq!(state.queued_jobs, 3);
    assert!(state.models.iter().any(|m| m.name == "tiny"));
}

/// A worker that answers every denoise request with a tensor of the wrong shape, or with NaN.
struct Liar {
    geometry: ModelGeometry,
}

#[tonic::async_trait]
impl worker_service_server::WorkerService for Liar {
    async fn describe(&self, _: Request<pb::DescribeRequest>) -> Result<Response<pb::WorkerDescription>, Status> {
        Err(Status::unimplemented("liar"))
    }

    async fn denoise(&self, request: Request<pb::DenoiseRequest>) -> Result<Response<pb::DenoiseResponse>, Status> {
        let req = request.into_inner();
        let output = if req.fence.as_ref().is_some_and(|f| f.window % 2 == 0) {
            wire::f32_tensor(&[1, 2], &[0.0, 1.0])
        } else {
            let shape: Vec<usize> =
                req.latent.as_ref().map(|t| t.shape.iter().map(|&d| d as usize).collect()).unwrap_or_default();
            let n = shape.iter().product();
            let mut t = wire::f32_tensor(&shape, &vec![0.0; n]);
            t.data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
            t
        };
        Ok(Response::new(pb::DenoiseResponse { fence: req.fence, output: Some(output) }))
    }

    async fn decode(&self, request: Request<pb::DecodeRequest>) -> Result<Response<pb::DecodeResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(pb::DecodeResponse { fence: req.fence, frames: Some(wire::u8_tensor(&[3], vec![1, 2, 3])) }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_count_as_failures_and_the_job_still_finishes() {
    let data = tempfile::tempdir().unwrap();
    let coord = coordinator(data.path(), &[]);
    let mut client = client(&coord).await;

    // The liar registers first, so it is offered work before the real worker exists.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar_address: SocketAddr = listener.local_addr().unwrap();
    let liar = Liar { geometry: ModelGeometry::tiny() };
    let description = pb::WorkerDescription {
        model: Some(pb::ModelInfo::from(&liar.geometry)),
        capacity: 4,
        devices: vec![pb::Device { name: "cpu".into() }],
        groups: vec![],
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(worker_service_server::WorkerServiceServer::new(liar))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut registry = pb::worker_registry_client::WorkerRegistryClient::connect(coord.address.clone()).await.unwrap();
    let registered = registry
        .register(pb::RegisterRequest {
            address: format!("http://{liar_address}"),
            description: Some(description.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let beats = tokio::spawn(async move {
        loop {
            let _ = registry
                .heartbeat(pb::HeartbeatRequest { worker_id: registered.worker_id.clone(), groups: vec![] })
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let job = submit(&mut client, several_windows(2)).await;
    // Give the liar time to fail some evaluations before an honest worker joins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _honest = worker(&coord, &[]);
    let last = follow(&mut client, &job.id, Duration::from_secs(240), |_| {}).await;
    beats.abort();
    assert_eq!(last.state, pb::JobState::Done as i32, "job ended with {last:?}");
    let state = client.get_cluster_state(pb::GetClusterStateRequest {}).await.unwrap().into_inner();
    let liar_state = state.workers.iter().find(|w| w.address == format!("http://{liar_address}")).expect("the liar");
    assert!(liar_state.failures > 0 && liar_state.evaluations == 0, "{liar_state:?}");

    // A registration with a broken description is refused, naming the field.
    let mut registry = pb::worker_registry_client::WorkerRegistryClient::connect(coord.address.clone()).await.unwrap();
    let mut bad = description;
    bad.model.as_mut().unwrap().native_frames = 0;
    let err =
        registry.register(pb::RegisterRequest { address: "http://127.0.0.1:1".into(), description: Some(bad) }).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("model.native_frames"), "{}", err.message());
    let unknown =
        registry.heartbeat(pb::HeartbeatRequest { worker_id: "w999".into(), groups: vec![] }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}
