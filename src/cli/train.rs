//! `patchwork train`: trains the tiny model on procedural videos and writes it as a pipeline folder.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use patchwork_worker::group::{DeviceList, DeviceName};
use patchwork_worker::train::{self, Phase, Progress, Recipe, TrainConfig};

use super::client::print_out;

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Where the trained pipeline folder is written.
    #[arg(short, long, default_value = "models/tiny", env = "PATCHWORK_TRAIN_OUT")]
    pub output: PathBuf,
    /// Checkpoints and state; a run found here with the same recipe is resumed.
    #[arg(long, default_value = "train-work", env = "PATCHWORK_TRAIN_WORK_DIR")]
    pub work_dir: PathBuf,
    /// The recipe as JSON [default: the shipped model's first run, printed by --print-recipe].
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Overrides the recipe's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the recipe as JSON and exit.
    #[arg(long)]
    pub print_recipe: bool,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Stop after this many training steps in this run (resume later).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// The device the transformer phase trains on: `cpu`, or `cuda:N` in a build with the `cuda` feature
    /// (tools/cuda/build.sh). The VAE phases always run on the CPU.
    #[arg(long, default_value = "cpu", value_parser = one_device)]
    pub device: DeviceName,
}

fn one_device(spec: &str) -> Result<DeviceName, String> {
    match spec.parse::<DeviceList>().map_err(|e| e.replacen("--devices", "--device", 1))?.0.as_slice() {
        [one] => Ok(*one),
        more => Err(format!("--device takes one device, got {}", more.len())),
    }
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    keep_freed_memory();
    let mut recipe = match &args.recipe {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--recipe {}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--recipe {}: {e}", path.display()))?
        }
        None => Recipe::default(),
    };
    if let Some(seed) = args.seed {
        recipe.seed = seed;
    }
    if args.print_recipe {
        print_out(&format!("{}\n", serde_json::to_string_pretty(&recipe)?))?;
        return Ok(());
    }
    let config = TrainConfig {
        recipe,
        work_dir: args.work_dir,
        out_dir: args.output,
        checkpoint_every: args.checkpoint_every,
        stop_after: args.stop_after,
        device: args.device,
    };
    let every = args.checkpoint_every.max(1);
    let mut bar = Bar { bar: None, losses: Vec::new(), phase: "", started: std::time::Instant::now(), every };
    let summary = train::train(&config, &mut bar)?;
    if let Some(b) = bar.bar.take() {
        b.finish();
    }
    eprintln!(
        "trained in {:.1} min: VAE {} parameters, transformer {}, text encoder {}; wrote {}",
        summary.seconds / 60.0,
        summary.vae_parameters,
        summary.transformer_parameters,
        summary.text_encoder_parameters,
        summary.out_dir.display()
    );
    print_out(&format!("{}\n", serde_json::to_string_pretty(&summary)?))?;
    Ok(())
}

/// One progress bar per phase, showing the running mean of the last losses; without a terminal (a log
/// file), a plain line every `every` steps instead.
struct Bar {
    bar: Option<ProgressBar>,
    losses: Vec<f64>,
    phase: &'static str,
    started: std::time::Instant,
    every: usize,
}

impl Bar {
    fn mean_loss(&self) -> Option<f64> {
        let recent = &self.losses[self.losses.len().saturating_sub(50)..];
        (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64)
    }
}

impl Progress for Bar {
    fn phase(&mut self, phase: Phase, done: usize, total: usize) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        let name = match phase {
            Phase::Vae => "vae",
            Phase::Latents => "encode",
            Phase::Transformer => "dit+text",
            Phase::Decoder => "decoder",
            Phase::Done => "done",
        };
        self.phase = name;
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("[{:>7.1} s] {name}: starting at {done} of {total}", self.started.elapsed().as_secs_f64());
            self.losses.clear();
            return;
        }
        let bar = ProgressBar::new(total as u64).with_position(done as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{elapsed_precise}] {bar:30} {pos}/{len} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(name);
        self.losses.clear();
        self.bar = Some(bar);
    }

    fn advance(&mut self, done: usize, loss: Option<f64>) {
        if let Some(loss) = loss {
            self.losses.push(loss);
        }
        let mean = self.mean_loss();
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                if let Some(mean) = mean {
                    bar.set_message(format!("loss {mean:.4}"));
                }
            }
            None if done.is_multiple_of(self.every) => {
                let loss = mean.map_or_else(String::new, |m| format!(", mean loss of the last 50 {m:.4}"));
                eprintln!("[{:>7.1} s] {}: {done}{loss}", self.started.elapsed().as_secs_f64(), self.phase);
            }
            None => {}
        }
    }

    fn note(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}

/// Training allocates and frees the same large activations every step. glibc returns blocks over its
/// mmap threshold to the kernel at once, so every step page-faults its activations back in (a quarter of
/// the step's time); raising the thresholds keeps them in the process for reuse.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is called before any training thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
