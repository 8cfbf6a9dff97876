//! What the transformer tells apart in a caption, measured apart from sampling: for procedural scenes
//! (the quality bench's), the true caption's denoising error against captions that change one object's
//! colour or shape, or swap two objects' colours or shapes; see `patchwork_worker::train::binding`.
//!
//!   binding [--model DIR] [--prompts 100] [--noises 2]
//!
//! `--model` is a pipeline folder (default: the shipped `models/tiny`). Prints a markdown table.
//! `tools/bench/binding.sh` builds and runs it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use patchwork_scenes::SceneSampler;
use patchwork_worker::model::dit::WanTransformer;
use patchwork_worker::model::t5::TextEncoder;
use patchwork_worker::model::vae::WanVae;
use patchwork_worker::model::PipelineDir;
use patchwork_worker::train::binding::{attention_sharpness, binding, colour_word_context, SIGMAS};

/// The quality bench's scene seeds (`benches/quality`), so that the two measure the same prompts.
const PROMPT_SEED: u64 = 0x5155_414c_4954_5900;
const WINDOW: usize = 17;

fn main() -> anyhow::Result<()> {
    let (mut model, mut prompts, mut noises) = (PathBuf::from("models/tiny"), 100usize, 2usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = value()?.into(),
            "--prompts" => prompts = value()?.parse().context("--prompts")?,
            "--noises" => noises = value()?.parse().context("--noises")?,
            "--bench" => {}
            _ => bail!("unknown argument {flag:?} (known: --model DIR, --prompts N, --noises N)"),
        }
    }
    if prompts == 0 || noises == 0 {
        bail!("--prompts and --noises must be at least 1");
    }
    let device = Device::Cpu;
    let pipeline = PipelineDir::open(&model)?;
    let vae = WanVae::load(&pipeline.component("vae")?, DType::F32, &device)?;
    let dit = WanTransformer::load(&pipeline.component("transformer")?, DType::F32, &device)?;
    let text = TextEncoder::load(&pipeline, DType::F32, &device)?;
    let text_len = text.tokenizer().max_length().unwrap_or(512).min(512);
    let sampler = SceneSampler::new(64, 64);
    let scenes: Vec<_> = (0..prompts as u64).map(|i| sampler.sample(PROMPT_SEED + i)).collect();
    let started = Instant::now();
    let b = binding(&dit, &text, text_len, &vae, &scenes, WINDOW, noises)?;
    println!("{}", b.table());
    let c = colour_word_context(&text, text_len, &scenes)?;
    println!(
        "text encoder: a colour word's output moves by {:.3}% of its norm when the caption's two colours are \
         swapped, {:.2}% when its object's shape changes ({} objects of pairs)",
        100.0 * c.swapped,
        100.0 * c.shape_changed,
        c.objects
    );
    let captions: Vec<String> = scenes.iter().map(|s| s.caption()).collect();
    println!("\n| text encoder layer | content score spread | position bias spread | attention entropy (uniform) |");
    println!("| --- | --- | --- | --- |");
    for (i, l) in attention_sharpness(&text, text_len, &captions)?.iter().enumerate() {
        println!(
            "| {i} | {:.2} | {:.2} | {:.2} nats ({:.2}) |",
            l.content_spread, l.position_spread, l.entropy, l.uniform_entropy
        );
    }
    println!(
        "{prompts} scenes of {WINDOW} frames, 64×64, {noises} noise draws at each σ of {SIGMAS:?}; {} in {:.0} s",
        model.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
