//! How far apart the VAE's latent puts object colours (and shapes): the part of an object's latent signal
//! that tells two colours apart, in the normalised latent the transformer learns on. Colours that lie
//! close cost the transformer's loss little to confuse; see `patchwork_worker::train::separation`.
//!
//!   latent [--model DIR] [--scenes 16] [--frames 17]
//!
//! `--model` is a pipeline folder (default: the shipped `models/tiny`). Prints markdown tables.
//! `tools/bench/latent.sh` builds and runs it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use patchwork_worker::model::vae::WanVae;
use patchwork_worker::model::PipelineDir;
use patchwork_worker::train::separation::latent_separation;

fn main() -> anyhow::Result<()> {
    let (mut model, mut scenes, mut frames) = (PathBuf::from("models/tiny"), 16usize, 17usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = value()?.into(),
            "--scenes" => scenes = value()?.parse().context("--scenes")?,
            "--frames" => frames = value()?.parse().context("--frames")?,
            _ => bail!("unknown argument {flag:?} (known: --model DIR, --scenes N, --frames N)"),
        }
    }
    if scenes == 0 || frames % 4 != 1 {
        bail!("--scenes must be at least 1 and --frames 1 + 4k");
    }
    let pipeline = PipelineDir::open(&model)?;
    let vae = WanVae::load(&pipeline.component("vae")?, DType::F32, &Device::Cpu)?;
    let started = Instant::now();
    let s = latent_separation(&vae, 64, 64, frames, scenes)?;
    let (a, b, d) = s.closest();
    println!("{}", s.table());
    println!("{}", s.directions_table());
    println!(
        "closest colours: {} and {} ({d:.2}); {} scenes of {frames} frames, 64×64, {} in {:.0} s",
        a.name(),
        b.name(),
        s.scenes,
        model.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
