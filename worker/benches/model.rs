//! Model benchmarks: one JSON line per run on stdout, for `tools/bench/model.sh` to tabulate.
//!
//! Each case runs in its own process so that its peak memory (VmHWM) is its own. Threads: set
//! `RAYON_NUM_THREADS`; the line reports what candle used.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::{Parser, Subcommand};
use patchwork_worker::group::{DeviceName, ShardGroup, ShardLoader};
use patchwork_worker::model::attention::AttentionTiling;
use patchwork_worker::model::dit::parallel::split_rule;
use patchwork_worker::model::dit::{WanTransformer, WanTransformerConfig};
use patchwork_worker::model::random::RandomWeights;
use patchwork_worker::model::sharded::{ShardedWeights, WeightSource};
use patchwork_worker::model::vae::{VaeConfig, WanVae};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    case: Case,
    /// Untimed runs before the timed ones.
    #[arg(long, default_value_t = 1, global = true)]
    warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 3, global = true)]
    iters: usize,
    // `cargo bench` passes `--bench`; accept and ignore it.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Debug, Subcommand)]
enum Case {
    /// DiT forward of a given shape with random weights.
    Dit {
        #[arg(long, default_value_t = 4)]
        heads: usize,
        #[arg(long, default_value_t = 128)]
        head_dim: usize,
        /// Blocks to run: 8 by default, all of the preset's with `--preset-1-3b`.
        #[arg(long)]
        layers: Option<usize>,
        #[arg(long, default_value_t = 2048)]
        ffn: usize,
        #[arg(long, default_value_t = 512)]
        text_dim: usize,
        /// Latent frames × height × width (16 channels).
        #[arg(long, default_value = "9x30x52")]
        latent: String,
        #[arg(long, default_value_t = 64)]
        text_len: usize,
        /// Use the published 1.3B configuration (overrides every shape flag but `--layers`).
        #[arg(long)]
        preset_1_3b: bool,
        /// Attention query tile (default: the model's).
        #[arg(long)]
        q_tile: Option<usize>,
        /// Attention key tile (default: the model's).
        #[arg(long)]
        k_tile: Option<usize>,
    },
    /// One denoising evaluation (a batch of two, as guidance runs it) on CPU shard groups of degree 1 and
    /// `--tp`, alternated in one process: time per evaluation and bytes all-reduced per evaluation.
    DitTp {
        #[arg(long, default_value_t = 2)]
        tp: usize,
        /// Heads (× 128 wide): 12 as the 1.3B model.
        #[arg(long, default_value_t = 12)]
        heads: usize,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 8960)]
        ffn: usize,
        /// Latent frames × height × width (16 channels).
        #[arg(long, default_value = "3x16x24")]
        latent: String,
        #[arg(long, default_value_t = 64)]
        text_len: usize,
    },
    /// Streaming VAE decode with the Wan2.1 config and random weights; frames are dropped as they come.
    VaeDecode {
        /// Latent frames × height × width.
        #[arg(long, default_value = "21x60x104")]
        latent: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let device = Device::Cpu;
    match cli.case {
        Case::Dit { heads, head_dim, layers, ffn, text_dim, latent, text_len, preset_1_3b, q_tile, k_tile } => {
            let cfg = if preset_1_3b {
                let preset = WanTransformerConfig::t2v_1_3b();
                WanTransformerConfig { num_layers: layers.unwrap_or(preset.num_layers), ..preset }
            } else {
                WanTransformerConfig {
                    num_attention_heads: heads,
                    attention_head_dim: head_dim,
                    num_layers: layers.unwrap_or(8),
                    ffn_dim: ffn,
                    text_dim,
                    ..WanTransformerConfig::t2v_1_3b()
                }
            };
            let [f, h, w] = parse_grid(&latent)?;
            let mut model = WanTransformer::new(&cfg, RandomWeights::var_builder(0, DType::F32, &device))?;
            let default = AttentionTiling::default();
            model.set_attention_tiling(AttentionTiling {
                q_tile: q_tile.unwrap_or(default.q_tile),
                k_tile: k_tile.unwrap_or(default.k_tile),
            });
            let x = Tensor::randn(0f32, 1.0, (1, 16, f, h, w), &device)?;
            let t = Tensor::new(&[500f32], &device)?;
            let ctx = Tensor::randn(0f32, 1.0, (1, text_len, cfg.text_dim), &device)?;
            let tokens = f * (h / 2) * (w / 2);
            let times = time(cli.warmup, cli.iters, || {
                model.forward(&x, &t, &ctx)?;
                Ok(())
            })?;
            report("dit", &format!("dim{} L{} tokens{}", cfg.dim(), cfg.num_layers, tokens), &times);
        }
        Case::DitTp { tp, heads, layers, ffn, latent, text_len } => {
            let cfg = WanTransformerConfig {
                num_attention_heads: heads,
                num_layers: layers,
                ffn_dim: ffn,
                ..WanTransformerConfig::t2v_1_3b()
            };
            let [f, h, w] = parse_grid(&latent)?;
            let x = Tensor::randn(0f32, 1.0, (2, 16, f, h, w), &device)?;
            let t = Tensor::new(&[500f32, 500.0], &device)?;
            let ctx = Tensor::randn(0f32, 1.0, (2, text_len, cfg.text_dim), &device)?;
            let tokens = f * (h / 2) * (w / 2);
            let groups = [1, tp]
                .map(|degree| ShardGroup::start(0, (0..degree).map(DeviceName::Cpu).collect(), random_shards(&cfg)));
            let [one, many] = groups;
            let (one, many) = (one?, many?);
            for _ in 0..cli.warmup {
                one.forward(&x, &t, &ctx)?;
                many.forward(&x, &t, &ctx)?;
            }
            let (bytes_before, mut times_one, mut times_many) = (many.bytes_all_reduced(), vec![], vec![]);
            for _ in 0..cli.iters.max(1) {
                times_one.extend(time(0, 1, || one.forward(&x, &t, &ctx).map(drop).map_err(Into::into))?);
                times_many.extend(time(0, 1, || many.forward(&x, &t, &ctx).map(drop).map_err(Into::into))?);
            }
            let per_eval = (many.bytes_all_reduced() - bytes_before) / cli.iters.max(1) as u64;
            let shape = format!("dim{} heads{heads} L{layers} ffn{ffn} tokens{tokens} batch2", cfg.dim());
            report("dit-tp1", &shape, &times_one);
            report(&format!("dit-tp{tp} all-reduced {per_eval} bytes/eval"), &shape, &times_many);
        }
        Case::VaeDecode { latent } => {
            let [f, h, w] = parse_grid(&latent)?;
            let cfg = VaeConfig::wan2_1();
            let vae = WanVae::new(cfg.clone(), RandomWeights::var_builder(0, DType::F32, &device))?;
            let frames: Vec<Tensor> =
                (0..f).map(|_| Tensor::randn(0f32, 1.0, (1, cfg.z_dim, 1, h, w), &device)).collect::<Result<_, _>>()?;
            let times = time(cli.warmup, cli.iters, || {
                let mut stream = vae.decode_stream();
                for frame in &frames {
                    drop(stream.push(frame)?);
                }
                Ok(())
            })?;
            report("vae-decode", &format!("{} frames {}x{}", cfg.decoded_frames(f), 8 * h, 8 * w), &times);
        }
    }
    Ok(())
}

/// Each rank's shard of a model with seeded random weights.
fn random_shards(cfg: &WanTransformerConfig) -> ShardLoader {
    let cfg = cfg.clone();
    std::sync::Arc::new(move |device, comm| {
        let source = WeightSource::Whole(Box::new(RandomWeights::new(0)));
        let vb = ShardedWeights::var_builder(source, comm.rank(), comm.world(), split_rule(&cfg), DType::F32, device);
        WanTransformer::new_shard(&cfg, vb, comm)
    })
}

fn parse_grid(s: &str) -> anyhow::Result<[usize; 3]> {
    let parts: Vec<usize> = s.split('x').map(str::parse).collect::<Result<_, _>>()?;
    parts.try_into().map_err(|_| anyhow::anyhow!("--latent: expected FxHxW, got {s}"))
}

fn time(warmup: usize, iters: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn report(case: &str, shape: &str, times: &[f64]) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{{\"impl\":\"candle\",\"case\":\"{case}\",\"shape\":\"{shape}\",\"median_s\":{median:.4},\"min_s\":{:.4},\"threads\":{},\"peak_rss_mib\":{:.0}}}",
        sorted[0],
        candle_core::utils::get_num_threads(),
        peak_rss_mib()
    );
}
