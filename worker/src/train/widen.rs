//! Widening a trained VAE decoder without changing what it computes, so that a wider decoder can start its
//! training where the narrow one left off instead of from random weights.
//!
//! Every channel axis of the decoder grows by a whole factor `k`: channel `c` of the narrow decoder
//! becomes the `k` channels `c`, `C + c`, …, `(k − 1)·C + c` of the wide one. Every layer then outputs
//! `k` copies of each of its old outputs (its output rows and biases are tiled), and every layer that
//! reads a widened input splits each old input weight among the `k` copies it now reads, in random shares
//! that sum to one, so that the sum is the old one. The rest follows:
//! - RMS norms: `k` copies of a vector have `√k` times its L2 norm, and the norm's `√channels` scale grows
//!   by the same `√k` (the gains are tiled);
//! - the temporal upsampler's convolution makes `2C` channels that are two frames of `C`, and the
//!   attention's makes `3C` that are queries, keys and values: each part is tiled within itself;
//! - the attention's single head is `k` times wider, so its dot products are `k` times larger while its
//!   scale `1/√channels` is only `√k` smaller: the queries are scaled by `1/√k`.
//!
//! The random shares break the symmetry of the copies: two copies of a channel compute the same values,
//! but the layers after them weigh them differently, so their gradients differ and training moves them
//! apart.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor};

use super::data;
use crate::model::vae::VaeConfig;

/// The decoder weights of `weights` (a whole VAE's, by checkpoint name) widened from `from`'s decoder
/// width to `to`'s; every other tensor is returned as it is. The two configs must differ in the decoder's
/// width alone, by a whole factor. `seed` draws the shares of the split input weights.
pub fn widen_decoder(
    weights: &HashMap<String, Tensor>,
    from: &VaeConfig,
    to: &VaeConfig,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let (narrow, wide) = (decoder_width(from), decoder_width(to));
    let same_otherwise = VaeConfig { decoder_base_dim: to.decoder_base_dim, ..from.clone() } == *to;
    if !same_otherwise || wide < narrow || !wide.is_multiple_of(narrow) {
        candle_core::bail!(
            "a decoder of width {narrow} can only be widened by a whole factor, to a config that differs in \
             decoder_base_dim alone (asked for width {wide})"
        );
    }
    let k = wide / narrow;
    let mut out = HashMap::with_capacity(weights.len());
    for (index, (name, t)) in sorted(weights).into_iter().enumerate() {
        let widened = match name.strip_prefix("decoder.") {
            Some(rest) if k > 1 => {
                widen_tensor(rest, t, k, data::seed_for(seed, data::Stream::Widen, 0, index as u64))?
            }
            _ => t.clone(),
        };
        out.insert(name.clone(), widened);
    }
    Ok(out)
}

/// The decoder's base width: `decoder_base_dim`, or the encoder's `base_dim`.
pub fn decoder_width(cfg: &VaeConfig) -> usize {
    cfg.decoder_base_dim.unwrap_or(cfg.base_dim)
}

fn sorted(weights: &HashMap<String, Tensor>) -> Vec<(&String, &Tensor)> {
    let mut all: Vec<_> = weights.iter().collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    all
}

/// One decoder tensor (`name` without its `decoder.` prefix) widened `k` times.
fn widen_tensor(name: &str, t: &Tensor, k: usize, seed: u64) -> Result<Tensor> {
    // How many parts the output axis is made of, each tiled within itself.
    let parts = if name.contains("time_conv.") {
        2
    } else if name.contains("to_qkv.") {
        3
    } else {
        1
    };
    let widens_output = !name.starts_with("conv_out.");
    let widens_input = name.ends_with(".weight") && !name.starts_with("conv_in.");
    let mut t = t.to_dtype(DType::F32)?;
    if widens_output {
        t = tile(&t, 0, parts, k)?;
    }
    if widens_input {
        t = split_input(&t, k, seed)?;
    }
    if name.contains("to_qkv.") {
        // The queries, the first third of the (widened) output rows.
        let rows = t.dim(0)? / 3;
        let q = (t.narrow(0, 0, rows)? / (k as f64).sqrt())?;
        t = Tensor::cat(&[q, t.narrow(0, rows, 2 * rows)?], 0)?;
    }
    Ok(t)
}

/// `t` with axis `axis` (made of `parts` equal parts) repeated `k` times within each part: part `p`'s
/// channel `c` of `n` becomes channels `c`, `n + c`, … of the widened part.
fn tile(t: &Tensor, axis: usize, parts: usize, k: usize) -> Result<Tensor> {
    let n = t.dim(axis)? / parts;
    let pieces: Vec<Tensor> = (0..parts)
        .map(|p| {
            let part = t.narrow(axis, p * n, n)?;
            Tensor::cat(&vec![part; k], axis)
        })
        .collect::<Result<_>>()?;
    Tensor::cat(&pieces, axis)
}

/// A weight `[O, I, …]` reading `k` copies of each input: `[O, k·I, …]`, each old weight split among its
/// copies in random shares (0.25–0.75 of an even split apart, normalised to sum to one).
fn split_input(t: &Tensor, k: usize, seed: u64) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let (o, i) = (dims[0], dims[1]);
    let rest: usize = dims[2..].iter().product();
    let shares: Vec<f32> = data::uniforms(seed, o * k * i * rest).into_iter().map(|u| (0.5 + u) as f32).collect();
    // [O, k, I·rest], normalised over the copies.
    let shares = Tensor::from_vec(shares, (o, k, i * rest), t.device())?;
    let shares = shares.broadcast_div(&shares.sum_keepdim(1)?)?;
    let tiled = t.reshape((o, 1, i * rest))?.repeat((1, k, 1))?;
    let mut wide = dims.clone();
    wide[1] = k * i;
    (tiled * shares)?.reshape(wide)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vae::WanVae;
    use crate::model::ComponentDir;
    use candle_core::Device;
    use candle_nn::VarBuilder;
    use patchwork_scenes::SceneSampler;

    fn relative(a: &Tensor, b: &Tensor) -> f64 {
        let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let den = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        (num as f64 / den as f64).sqrt()
    }

    /// The shipped tiny VAE's decoder widened twice and three times decodes a clip's latent as the narrow
    /// one does, and the widened weights are those a wide config asks for.
    #[test]
    fn widened_decoder_decodes_as_the_narrow_one() {
        let dir = ComponentDir::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny/vae")).unwrap();
        let narrow = WanVae::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let cfg = narrow.config().clone();
        let weights = candle_core::safetensors::load(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny/vae/diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let scene = SceneSampler::new(64, 64).sample(11);
        let x = data::video_batch(&[scene.render(9)], &Device::Cpu).unwrap();
        let latent = narrow.encode(&x).unwrap();
        let want = narrow.decode(&latent).unwrap();
        for k in [2, 3] {
            let to = VaeConfig { decoder_base_dim: Some(k * cfg.base_dim), ..cfg.clone() };
            let wide_weights = widen_decoder(&weights, &cfg, &to, 7).unwrap();
            assert_eq!(wide_weights.len(), weights.len());
            // Untouched outside the decoder.
            for name in ["encoder.conv_in.weight", "post_quant_conv.weight", "decoder.conv_out.bias"] {
                assert_eq!(
                    wide_weights[name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    weights[name].to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
                );
            }
            assert_eq!(wide_weights["decoder.conv_out.weight"].dims(), &[3, k * cfg.base_dim, 3, 3, 3]);
            let vb = VarBuilder::from_tensors(wide_weights, DType::F32, &Device::Cpu);
            let wide = WanVae::new(to, vb).unwrap();
            let got = wide.decode(&latent).unwrap();
            let err = relative(&got, &want);
            assert!(err < 1e-5, "widened {k}×: relative error {err}");
        }
    }

    #[test]
    fn only_whole_factors_of_the_decoder_width() {
        let cfg = VaeConfig { base_dim: 8, ..VaeConfig::wan2_1() };
        let weights = HashMap::new();
        for (to, ok) in [(Some(8), true), (None, true), (Some(16), true), (Some(12), false), (Some(4), false)] {
            let wide = VaeConfig { decoder_base_dim: to, ..cfg.clone() };
            assert_eq!(widen_decoder(&weights, &cfg, &wide, 0).is_ok(), ok, "{to:?}");
        }
        let other = VaeConfig { z_dim: 8, decoder_base_dim: Some(16), ..cfg.clone() };
        let err = widen_decoder(&weights, &cfg, &other, 0).unwrap_err().to_string();
        assert!(err.contains("decoder_base_dim alone"), "{err}");
    }
}
