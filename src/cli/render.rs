//! `patchwork render`: one command, one video. It starts a coordinator and a worker in this process on
//! loopback ports and drives them through the same gRPC API and the same code as a cluster; there is no
//! second sampling loop.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use patchwork_coordinator::CoordinatorConfig;
use patchwork_shared::pb;
use patchwork_worker::engine::Evaluator;
use patchwork_worker::run::WorkerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::client::{connect, fetch_to, follow, state_name, status_error};
use super::serve::{stop_on_signals, ModelArgs};
use super::spec::SpecArgs;

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where to write the MP4.
    #[arg(short, long, default_value = "out.mp4")]
    pub output: PathBuf,
}

pub async fn render(args: RenderArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    stop_on_signals(shutdown.clone());
    let data = tempfile::tempdir().context("creating a temporary data directory")?;
    let config = CoordinatorConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    let coordinator_listener = TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
    let address = format!("http://{}", coordinator_listener.local_addr()?);
    let coordinator = tokio::spawn(patchwork_coordinator::run(config, coordinator_listener, shutdown.clone()));

    let model = args.model.clone();
    eprintln!(
        "loading the model ({})",
        args.model.model.as_ref().map_or("embedded tiny".into(), |p| p.display().to_string())
    );
    let engine = Arc::new(tokio::task::spawn_blocking(move || model.load()).await??);
    let model_name = engine.geometry().name.clone();
    let worker_listener = TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
    let worker_config = WorkerConfig {
        coordinator: address.clone(),
        etcd: None,
        advertise: None,
        capacity: 1,
        devices: vec!["cpu".into()],
        api_token: Default::default(),
    };
    let worker = tokio::spawn(patchwork_worker::run::run(worker_config, engine, worker_listener, shutdown.clone()));

    let result = submit_and_fetch(&address, &args, &model_name).await;
    shutdown.cancel();
    let _ = coordinator.await;
    let _ = worker.await;
    result
}

async fn submit_and_fetch(address: &str, args: &RenderArgs, model_name: &str) -> anyhow::Result<()> {
    let mut client = connect(address, None).await?;
    // The worker registers in the background; a job for its model is refused until it has.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let state = client.get_cluster_state(pb::GetClusterStateRequest {}).await.map_err(status_error)?.into_inner();
        if state.workers.iter().any(|w| w.model == model_name) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the in-process worker did not register within 60 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let spec = args.spec.to_spec(model_name)?;
    let submitted = client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec), request_id: String::new() })
        .await
        .map_err(status_error)?
        .into_inner();
    let job = submitted.job.context("the coordinator returned no job")?;
    let resolved = job.spec.clone().unwrap_or_default();
    eprintln!(
        "job {}: {} frames {}x{} at {} fps, {} steps ({}), seed {}",
        job.id,
        resolved.frames.unwrap_or(0),
        resolved.width.unwrap_or(0),
        resolved.height.unwrap_or(0),
        resolved.fps.unwrap_or(0),
        resolved.steps.unwrap_or(0),
        resolved.sampler,
        resolved.seed.unwrap_or(0)
    );
    let last = follow(&mut client, &job.id, true).await?;
    match pb::JobState::try_from(last.state) {
        Ok(pb::JobState::Done) => {
            let bytes = fetch_to(&mut client, &job.id, &args.output).await?;
            eprintln!("wrote {} ({bytes} bytes)", args.output.display());
            Ok(())
        }
        Ok(pb::JobState::Failed) => anyhow::bail!("job {} failed: {}", job.id, last.error),
        _ => anyhow::bail!("job {} ended {}", job.id, state_name(last.state)),
    }
}
