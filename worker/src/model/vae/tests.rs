//! Unit tests of the VAE that need no reference fixtures: the CPU convolution kernel against candle's
//! own `conv2d`, streaming against one-shot decoding, and error reporting for broken model folders.
//! Agreement with diffusers is checked by `tests/reference_components.rs`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::conv::{Conv, ConvImpl};
use super::cpu_conv::{self, ConvGeometry, Frame, TapWeights};
use super::{VaeConfig, WanVae};
use crate::model::load::ComponentDir;
use crate::model::random::RandomWeights;

/// A small VAE with the Wan2.1 layout (4 levels, 2 temporal upsamplings) but 8 base channels.
fn tiny_config() -> VaeConfig {
    VaeConfig { base_dim: 8, ..VaeConfig::wan2_1() }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // candle's CPU RNG cannot be seeded: use splitmix64, uniform in [-1, 1).
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| next()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Every geometry the VAE uses: 3×3×3 causal with context, 3×1×1 temporal (stride 1 and 2), 3×3 per
/// frame with stride 2 and one-sided padding, 3×3 per frame after ×2 upsampling, on sizes that do not
/// divide evenly.
#[test]
fn cpu_conv_kernel_matches_candle_conv2d() {
    let cases: [(ConvGeometry, usize, usize, bool); 5] = [
        (
            ConvGeometry { cin: 5, cout: 7, kt: 3, kh: 3, kw: 3, stride_t: 1, stride_s: 1, pad: [1, 1, 1, 1] },
            2,
            3,
            true,
        ),
        (ConvGeometry { cin: 6, cout: 12, kt: 3, kh: 1, kw: 1, stride_t: 1, stride_s: 1, pad: [0; 4] }, 2, 2, false),
        (ConvGeometry { cin: 4, cout: 4, kt: 3, kh: 1, kw: 1, stride_t: 2, stride_s: 1, pad: [0; 4] }, 0, 5, false),
        (
            ConvGeometry { cin: 3, cout: 5, kt: 1, kh: 3, kw: 3, stride_t: 1, stride_s: 2, pad: [0, 1, 0, 1] },
            0,
            3,
            false,
        ),
        (ConvGeometry { cin: 6, cout: 3, kt: 1, kh: 3, kw: 3, stride_t: 1, stride_s: 1, pad: [1; 4] }, 0, 2, false),
    ];
    for (i, (g, causal_pad, t, with_past)) in cases.into_iter().enumerate() {
        let w = randn(&[g.cout, g.cin, g.kt, g.kh, g.kw], i as u64);
        let b = randn(&[g.cout], 10 + i as u64);
        let x = randn(&[2, g.cin, t, 11, 13], 20 + i as u64);
        let past = with_past.then(|| randn(&[2, g.cin, 1, 11, 13], 30));
        let slow = Conv::from_weights(g, causal_pad, w.clone(), b.clone(), ConvImpl::Generic).unwrap();
        let ys = slow.forward(past.as_ref(), &x).unwrap();
        for tile in [40, 1 << 20] {
            let fast = Conv::from_weights(g, causal_pad, w.clone(), b.clone(), ConvImpl::Auto).unwrap();
            let yf = fast.with_tile_pixels(tile).forward(past.as_ref(), &x).unwrap();
            assert!(max_abs_diff(&yf, &ys) < 1e-4, "case {i}, tile {tile}: {}", max_abs_diff(&yf, &ys));
        }
        if g.kt == 1 && g.stride_s == 1 {
            let fast = Conv::from_weights(g, causal_pad, w.clone(), b.clone(), ConvImpl::Auto).unwrap();
            let (yf, ys) = (fast.forward_upsampled(&x).unwrap(), slow.forward_upsampled(&x).unwrap());
            assert!(max_abs_diff(&yf, &ys) < 1e-4, "case {i} upsampled: {}", max_abs_diff(&yf, &ys));
        }
    }
}

/// Bands of a few rows, run on several threads, give the same result as one band on one thread; a
/// fused residual is added exactly.
#[test]
fn cpu_conv_bands_and_threads_do_not_change_the_result() {
    let g = ConvGeometry { cin: 4, cout: 6, kt: 3, kh: 3, kw: 3, stride_t: 1, stride_s: 1, pad: [1, 1, 1, 1] };
    let (h, w, t) = (17, 9, 3);
    let weight = randn(&[g.cout, g.cin, 3, 3, 3], 1).flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let taps = TapWeights::new(&g, &weight, vec![0.5; g.cout]);
    let x = randn(&[g.cin, t, h, w], 2).flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut frames = vec![None, None];
    frames.extend((0..t).map(|ti| Some(Frame { data: &x[ti * h * w..], c_stride: t * h * w, up: 1 })));
    let residual: Vec<f32> = (0..g.cout * t * h * w).map(|i| (i % 7) as f32).collect();
    let run = |threads, tile, residual| {
        let mut out = vec![0f32; g.cout * t * h * w];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| cpu_conv::conv3d(&g, &taps, &frames, (h, w), &mut out, residual, tile)).unwrap();
        out
    };
    let whole = run(1, 1 << 20, None);
    for (threads, tile) in [(1, 11), (3, 11), (2, 40)] {
        let banded = run(threads, tile, None);
        let diff = whole.iter().zip(&banded).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "threads {threads}, tile {tile}: {diff}");
    }
    // A residual is added as the output is written.
    let with_residual = run(2, 11, Some(residual.as_slice()));
    let diff =
        whole.iter().zip(&residual).zip(&with_residual).map(|((a, r), b)| (a + r - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "residual: {diff}");
}

#[test]
fn streaming_decode_gives_the_frames_of_one_shot_decode() {
    let vae = random_vae(tiny_config(), DType::F32, &Device::Cpu, 7).unwrap();
    let latents = randn(&[1, 16, 3, 2, 3], 3);
    let whole = vae.decode(&latents).unwrap();
    assert_eq!(whole.dims(), &[1, 3, 9, 16, 24]);

    let mut stream = vae.decode_stream();
    let mut pieces = Vec::new();
    for f in 0..3 {
        // Frames may come as [B, C, h, w] too.
        let piece = stream.push(&latents.narrow(2, f, 1).unwrap().squeeze(2).unwrap()).unwrap();
        assert_eq!(piece.dim(2).unwrap(), if f == 0 { 1 } else { 4 });
        pieces.push(piece);
    }
    let streamed = Tensor::cat(&pieces, 2).unwrap();
    assert_eq!(max_abs_diff(&whole, &streamed), 0.0);
    // The cache holds two frames per causal conv at most, whatever the number of frames pushed.
    let cache = stream.cache_bytes();
    stream.push(&latents.narrow(2, 0, 1).unwrap()).unwrap();
    assert_eq!(stream.cache_bytes(), cache);
}

#[test]
fn stream_rejects_a_frame_of_another_size() {
    let vae = random_vae(tiny_config(), DType::F32, &Device::Cpu, 7).unwrap();
    let mut stream = vae.decode_stream();
    stream.push(&randn(&[1, 16, 1, 2, 3], 1)).unwrap();
    let err = stream.push(&randn(&[1, 16, 1, 2, 4], 1)).unwrap_err().to_string();
    assert!(err.contains("latent_frame"), "{err}");
}

/// The generic (non-f32-CPU) code path, which GPU and half-precision runs take, stays close to the f32
/// one (f16: candle has no bf16 matmul on the CPU).
#[test]
fn half_precision_decode_is_close_to_f32() {
    let latents = randn(&[1, 16, 2, 2, 3], 5);
    let f32_out = random_vae(tiny_config(), DType::F32, &Device::Cpu, 9).unwrap().decode(&latents).unwrap();
    let half_vae = random_vae(tiny_config(), DType::F16, &Device::Cpu, 9).unwrap();
    let half_out = half_vae.decode(&latents).unwrap().to_dtype(DType::F32).unwrap();
    let rel = ((&f32_out - &half_out).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        / f32_out.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
    .sqrt();
    assert!(rel < 0.05, "f16 vs f32 relative error {rel}");
}

#[test]
fn normalize_and_denormalize_are_inverse_and_follow_the_pipeline() {
    let vae = random_vae(tiny_config(), DType::F32, &Device::Cpu, 1).unwrap();
    let raw = randn(&[1, 16, 2, 2, 3], 4);
    let norm = vae.normalize(&raw).unwrap();
    let cfg = vae.config();
    // Channel 3, any position: (raw - mean) / std.
    let r = raw.get(0).unwrap().get(3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let n = norm.get(0).unwrap().get(3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let expect = (r[0] as f64 - cfg.latents_mean[3]) / cfg.latents_std[3];
    assert!((n[0] as f64 - expect).abs() < 1e-5);
    let back = vae.denormalize(&norm).unwrap();
    assert!(max_abs_diff(&raw, &back) < 1e-5);
}

/// Writes a VAE folder with every tensor but `skip`, then loads it.
fn load_with_missing_tensor(skip: &str) -> String {
    let cfg = tiny_config();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    WanVae::new(cfg.clone(), vb).unwrap();
    let dir = std::env::temp_dir().join(format!("patchwork-vae-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.as_str() != skip)
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    assert_eq!(tensors.len() + 1, varmap.all_vars().len(), "{skip} is a tensor of the VAE");
    candle_core::safetensors::save(&tensors, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let config = serde_json::json!({
        "_class_name": "AutoencoderKLWan", "base_dim": cfg.base_dim, "z_dim": cfg.z_dim,
        "dim_mult": cfg.dim_mult, "num_res_blocks": cfg.num_res_blocks, "attn_scales": [],
        "temperal_downsample": cfg.temperal_downsample, "dropout": 0.0,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let result = WanVae::load(&ComponentDir::open(&dir).unwrap(), DType::F32, &Device::Cpu);
    std::fs::remove_dir_all(&dir).unwrap();
    result.expect_err("a VAE without all its tensors must not load").to_string()
}

#[test]
fn a_missing_tensor_is_named_in_the_error() {
    let name = "decoder.up_blocks.1.resnets.0.conv1.weight";
    let err = load_with_missing_tensor(name);
    assert!(err.contains(name), "error does not name the tensor: {err}");
    assert!(err.contains("patchwork-vae-missing"), "error does not name the folder: {err}");
}

/// A VAE of `cfg`'s architecture with seeded random weights.
fn random_vae(cfg: VaeConfig, dtype: DType, device: &Device, seed: u64) -> crate::model::Result<WanVae> {
    WanVae::new(cfg, RandomWeights::var_builder(seed, dtype, device))
}
