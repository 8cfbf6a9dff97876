//! The `patchwork` command line: thin clap front-ends over the library crates.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use patchwork_worker::model::forward::{parse_dtype, run_component, Component};

#[derive(Debug, Parser)]
#[command(name = "patchwork", version, about = "A render farm for text-to-video diffusion transformers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with a model directly, outside the farm.
    #[command(subcommand)]
    Model(ModelCommand),
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
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Model(ModelCommand::Forward(args)) => model_forward(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The cause chain on one line; no backtrace dump for a user's mistake.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn model_forward(args: ForwardArgs) -> anyhow::Result<()> {
    let component: Component = args.component.parse()?;
    let dtype = parse_dtype(&args.dtype)?;
    let device = candle_core::Device::Cpu;
    let inputs: HashMap<String, candle_core::Tensor> = candle_core::safetensors::load(&args.inputs, &device)
        .with_context(|| format!("reading inputs {}", args.inputs.display()))?;
    let outputs = run_component(component, &args.model_dir, &inputs, dtype, &device)?;
    candle_core::safetensors::save(&outputs, &args.output)
        .with_context(|| format!("writing output {}", args.output.display()))?;
    Ok(())
}
