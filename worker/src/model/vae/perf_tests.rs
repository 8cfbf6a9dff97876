//! Timings, not checks: `cargo test --release -p patchwork-worker --lib model::vae::perf -- --ignored
//! --nocapture`. They size the VAE's convolutions at the 480×832 benchmark resolution.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::conv::{Conv, ConvImpl};
use super::cpu_conv::{ConvGeometry, Fold};

fn time<T>(f: impl Fn() -> T) -> f64 {
    f(); // warm up (allocations, page faults)
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// One output frame of each 3×3×3 convolution shape of the decoder at 480×832.
#[test]
#[ignore]
fn conv_throughput_at_480p() {
    let levels = [(384, 60, 104), (384, 120, 208), (192, 240, 416), (96, 480, 832)];
    for (c, h, w) in levels {
        let g = ConvGeometry { cin: c, cout: c, kt: 3, kh: 3, kw: 3, stride_t: 1, stride_s: 1, pad: [1; 4] };
        let wt = (Tensor::randn(0f32, 1.0, (c, c, 3, 3, 3), &Device::Cpu).unwrap() * 0.02).unwrap();
        let b = Tensor::zeros(c, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, c, 1, h, w), &Device::Cpu).unwrap();
        let past = Tensor::randn(0f32, 1.0, (1, c, 2, h, w), &Device::Cpu).unwrap();
        let flops = 2.0 * 27.0 * (c * c * h * w) as f64;
        let generic = Conv::from_weights(g, 2, wt.clone(), b.clone(), ConvImpl::Generic).unwrap();
        let s = time(|| generic.forward(Some(&past), &x).unwrap());
        println!("{c:>4}ch {h:>3}x{w:<3} candle conv2d: {s:.3} s, {:.1} GFLOP/s", flops / s / 1e9);
        // The same FLOPs as plain matmuls, the ceiling for any im2col scheme; then the kernel's
        // variants, interleaved and repeated (the best of 3 runs) since the machine is shared.
        let (lhs, rhs) =
            (wt.reshape((c, 27 * c)).unwrap(), Tensor::zeros((27 * c, 4096), DType::F32, &Device::Cpu).unwrap());
        let reps = (h * w).div_ceil(4096);
        let variants =
            [(Fold::None, 2048), (Fold::Width, 2048), (Fold::All, 512), (Fold::All, 1024), (Fold::All, 2048)];
        let mut best = vec![f64::INFINITY; variants.len() + 1];
        for _ in 0..3 {
            best[0] = best[0].min(time(|| (0..reps).for_each(|_| drop(lhs.matmul(&rhs).unwrap()))));
            for (i, &(fold, tile)) in variants.iter().enumerate() {
                let conv = Conv::from_weights(g, 2, wt.clone(), b.clone(), ConvImpl::Auto)
                    .unwrap()
                    .with_cpu_kernel(fold, tile);
                best[i + 1] = best[i + 1].min(time(|| conv.forward(Some(&past), &x).unwrap()));
            }
        }
        println!("{c:>4}ch {h:>3}x{w:<3} matmul ceiling: {:.3} s, {:.1} GFLOP/s", best[0], flops / best[0] / 1e9);
        for (i, (fold, tile)) in variants.iter().enumerate() {
            let s = best[i + 1];
            println!("{c:>4}ch {h:>3}x{w:<3} {fold:?}/{tile}: {s:.3} s, {:.1} GFLOP/s", flops / s / 1e9);
        }
    }
}
