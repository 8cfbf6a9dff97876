//! The `patchwork` command line: thin clap front-ends over the library crates.

mod cli;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use patchwork_shared::pb;

use cli::client::{
    connect, connect_leader, fetch_to, follow, jobs_table, print_out, state_name, status_error, ClientArgs,
};
use cli::render::RenderArgs;
use cli::serve::{CoordinatorArgs, WorkerArgs};
use cli::spec::SpecArgs;
use patchwork_worker::group::{DeviceList, DeviceName};
use patchwork_worker::model::forward::{parse_dtype, run_component, run_transformer_sharded, Component};

#[derive(Debug, Parser)]
#[command(name = "patchwork", version, about = "A render farm for text-to-video diffusion transformers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render one video on this machine: an in-process coordinator and worker, the same code as a cluster.
    Render(Box<RenderArgs>),
    /// Run a coordinator: the client API, the job queue and the worker registry.
    Coordinator(CoordinatorArgs),
    /// Run a worker: load a model and evaluate windows for a coordinator.
    Worker(Box<WorkerArgs>),
    /// Submit a job and print its id.
    Submit(SubmitArgs),
    /// Follow a job with a progress bar until it ends.
    Watch(JobArgs),
    /// Cancel a job (a running one stops at its next step boundary).
    Cancel(JobArgs),
    /// List jobs.
    Jobs(JobsArgs),
    /// Show the cluster: workers, their models, slots and what they are doing (--watch, --json).
    Status(cli::client::StatusArgs),
    /// Download a finished job's MP4.
    Fetch(FetchArgs),
    /// Measure a video against its prompt: colour, shape, direction, consistency (JSON).
    Eval(Box<cli::eval::EvalArgs>),
    /// Train the tiny model on procedural videos and write it as a diffusers pipeline folder.
    Train(Box<cli::train::TrainArgs>),
    /// Work with a model directly, outside the farm.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Debug, Args)]
struct SubmitArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// A model the cluster serves [default: the coordinator's default].
    #[arg(long, default_value = "")]
    model: String,
    /// Makes the submission idempotent: the same id returns the same job.
    #[arg(long, default_value = "")]
    request_id: String,
    /// Follow the job with a progress bar until it ends.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
struct JobArgs {
    #[command(flatten)]
    client: ClientArgs,
    job_id: String,
}

#[derive(Debug, Args)]
struct JobsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only jobs in this state (queued, encoding-prompts, denoising, decoding, done, failed, cancelled).
    #[arg(long)]
    state: Vec<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(Debug, Args)]
struct FetchArgs {
    #[command(flatten)]
    client: ClientArgs,
    job_id: String,
    /// Where to write the MP4.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Run one component on the tensors of a safetensors file and write its outputs to another.
    Forward(ForwardArgs),
}

#[derive(Debug, Args)]
struct ForwardArgs {
    /// transformer | vae-decode | vae-encode | text-encoder
    #[arg(long)]
    component: String,
    /// The component's own folder (the one holding its config.json).
    #[arg(long)]
    model_dir: PathBuf,
    /// Input tensors named as the reference's arguments (hidden_states, timestep, encoder_hidden_states;
    /// latents; sample; input_ids and attention_mask).
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write the outputs (sample, mean or last_hidden_state).
    #[arg(long)]
    output: PathBuf,
    /// f32 | bf16 | f16
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Shard the transformer over this many ranks (tensor parallel) [default: 1, or the device count].
    #[arg(long)]
    tp: Option<usize>,
    /// The ranks' devices (`cpu:N`, `cuda:0,1`) [default: `cpu:TP`].
    #[arg(long)]
    devices: Option<DeviceList>,
}

fn main() -> std::process::ExitCode {
    let command = Cli::parse().command;
    // Servers log what they do; one-shot commands only what goes wrong, so that a progress bar stays readable.
    let default_filter = match command {
        Command::Coordinator(_) | Command::Worker(_) => "info,h2=warn,tower=warn,hyper=warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs collected from files and pods stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(command)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The cause chain on one line; no backtrace dump for a user's mistake.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Render(args) => cli::render::render(*args).await,
        Command::Coordinator(args) => cli::serve::coordinator(args).await,
        Command::Worker(args) => cli::serve::worker(*args).await,
        Command::Submit(args) => submit(args).await,
        Command::Watch(args) => {
            let mut client = connect(&args.client.coordinator, args.client.api_token.as_deref()).await?;
            let job = follow(&mut client, &args.job_id, true).await?;
            print_out(&format!("{} {}{}\n", job.id, state_name(job.state), failure(&job)))?;
            Ok(())
        }
        Command::Cancel(args) => {
            let mut client = connect_leader(&args.client.coordinator, args.client.api_token.as_deref()).await?;
            let job = client
                .cancel_job(pb::CancelJobRequest { job_id: args.job_id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_out(&format!("{} {}\n", job.id, state_name(job.state)))?;
            Ok(())
        }
        Command::Jobs(args) => {
            let states = args.state.iter().map(|s| parse_state(s)).collect::<anyhow::Result<Vec<i32>>>()?;
            let mut client = connect(&args.client.coordinator, args.client.api_token.as_deref()).await?;
            let jobs = client
                .list_jobs(pb::ListJobsRequest { states, page_size: args.limit, page_token: String::new() })
                .await
                .map_err(status_error)?
                .into_inner();
            print_out(&jobs_table(&jobs.jobs))?;
            Ok(())
        }
        Command::Status(args) => cli::client::status(&args).await,
        Command::Fetch(args) => {
            let mut client = connect(&args.client.coordinator, args.client.api_token.as_deref()).await?;
            let bytes = fetch_to(&mut client, &args.job_id, &args.output).await?;
            eprintln!("wrote {} ({bytes} bytes)", args.output.display());
            Ok(())
        }
        Command::Eval(args) => tokio::task::spawn_blocking(move || cli::eval::eval(*args)).await?,
        Command::Train(args) => tokio::task::spawn_blocking(move || cli::train::train(*args)).await?,
        Command::Model(ModelCommand::Forward(args)) => tokio::task::spawn_blocking(move || model_forward(args)).await?,
    }
}

fn failure(job: &pb::Job) -> String {
    if job.error.is_empty() {
        String::new()
    } else {
        format!(": {}", job.error)
    }
}

fn parse_state(name: &str) -> anyhow::Result<i32> {
    let wanted = name.trim().to_ascii_uppercase().replace('-', "_");
    pb::JobState::from_str_name(&format!("JOB_STATE_{wanted}"))
        .filter(|s| *s != pb::JobState::Unspecified)
        .map(|s| s as i32)
        .ok_or_else(|| anyhow::anyhow!("--state {name:?}: not a job state"))
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let mut client = connect_leader(&args.client.coordinator, args.client.api_token.as_deref()).await?;
    let spec = args.spec.to_spec(&args.model)?;
    let response = client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec), request_id: args.request_id })
        .await
        .map_err(status_error)?
        .into_inner();
    let job = response.job.context("the coordinator returned no job")?;
    print_out(&format!("{}\n", job.id))?;
    if args.wait {
        let last = follow(&mut client, &job.id, true).await?;
        eprintln!("{} {}{}", last.id, state_name(last.state), failure(&last));
        if last.state != pb::JobState::Done as i32 {
            anyhow::bail!("job {} ended {}", last.id, state_name(last.state));
        }
    }
    Ok(())
}

fn model_forward(args: ForwardArgs) -> anyhow::Result<()> {
    let component: Component = args.component.parse()?;
    let dtype = parse_dtype(&args.dtype)?;
    let device = candle_core::Device::Cpu;
    let inputs: HashMap<String, candle_core::Tensor> = candle_core::safetensors::load(&args.inputs, &device)
        .with_context(|| format!("reading inputs {}", args.inputs.display()))?;
    let sharded = args.tp.is_some() || args.devices.is_some();
    let outputs = if sharded {
        if component != Component::Transformer {
            anyhow::bail!("--tp and --devices: only the transformer is sharded, not the {}", component.name());
        }
        let devices = match &args.devices {
            Some(list) => list.0.clone(),
            None => (0..args.tp.unwrap_or(1)).map(DeviceName::Cpu).collect(),
        };
        let tp = args.tp.unwrap_or(devices.len());
        if tp != devices.len() {
            anyhow::bail!("--tp {tp} with {} devices: one rank per device", devices.len());
        }
        run_transformer_sharded(&args.model_dir, &inputs, dtype, &devices)?
    } else {
        run_component(component, &args.model_dir, &inputs, dtype, &device)?
    };
    candle_core::safetensors::save(&outputs, &args.output)
        .with_context(|| format!("writing output {}", args.output.display()))?;
    Ok(())
}
