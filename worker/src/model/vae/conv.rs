//! Convolutions over video tensors `[batch, channels, time, height, width]`: the reference's causal 3D
//! convolution (`WanCausalConv3d`) and its per-frame 2D convolutions, which are the same thing with a
//! temporal kernel of 1.
//!
//! candle has no conv3d. Three implementations share one interface:
//! - kernel 1×1×1 (shortcuts, quant convs, attention projections): a plain matrix product over channels;
//! - f32 on the CPU: [`super::cpu_conv`], one GEMM per kernel tap over a padded row band, no im2col;
//! - anything else (CUDA, bf16): per output frame, the `kt` input frames it reads are concatenated along
//!   channels and convolved by one `conv2d` with the kernel folded to `[cout, kt*cin, kh, kw]`, which is
//!   the same sum over taps done by a single library call.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::cpu_conv::{self, ConvGeometry, Frame, TapWeights};

/// A convolution whose time axis is causal: `causal_pad` frames before the input (zeros, or frames
/// carried over from the previous chunk) and none after.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    geom: ConvGeometry,
    causal_pad: usize,
    kernel: Kernel,
    /// Output pixels per band of the CPU kernel (fixed outside tests).
    tile_pixels: usize,
}

#[derive(Debug, Clone)]
enum Kernel {
    /// `w [cout, cin]`, `b [cout, 1]`.
    Pointwise {
        w: Tensor,
        b: Tensor,
    },
    Cpu(TapWeights),
    /// `w [cout, kt*cin, kh, kw]` (taps folded into input channels, tap-major), `b [1, cout, 1, 1]`.
    Folded {
        w: Tensor,
        b: Tensor,
    },
    /// Weights being trained: `w [cout, cin, kt, kh, kw]` and `b [cout]` are the variables themselves,
    /// read at every call (the other kernels copy them once), and the convolution is a differentiable
    /// op ([`super::train_conv`]).
    Trainable {
        w: Tensor,
        b: Tensor,
    },
}

/// Which implementation to prefer; tests use `Generic` to cross-check the CPU kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvImpl {
    Auto,
    #[cfg_attr(not(test), allow(dead_code))]
    Generic,
}

impl Conv {
    /// `WanCausalConv3d(cin, cout, kernel, stride=(stride_t, 1, 1), padding)`: weight
    /// `[cout, cin, kt, kh, kw]`; time is padded by `2 * padding.0` frames in the past only, height and
    /// width symmetrically.
    pub fn causal3d(
        vb: &VarBuilder,
        (cin, cout): (usize, usize),
        (kt, kh, kw): (usize, usize, usize),
        stride_t: usize,
        (pt, ph, pw): (usize, usize, usize),
    ) -> Result<Self> {
        let geom = ConvGeometry { cin, cout, kt, kh, kw, stride_t, stride_s: 1, pad: [ph, ph, pw, pw] };
        let w = vb.get((cout, cin, kt, kh, kw), "weight")?;
        let b = vb.get(cout, "bias")?;
        Self::build(geom, 2 * pt, w, b, ConvImpl::Auto)
    }

    /// `nn.Conv2d(cin, cout, k, stride)` applied to every frame, after zero padding `[top, bottom, left,
    /// right]` (the reference's downsampling pads only bottom and right).
    pub fn per_frame2d(
        vb: &VarBuilder,
        (cin, cout): (usize, usize),
        k: usize,
        stride: usize,
        pad: [usize; 4],
    ) -> Result<Self> {
        let geom = ConvGeometry { cin, cout, kt: 1, kh: k, kw: k, stride_t: 1, stride_s: stride, pad };
        let w = vb.get((cout, cin, k, k), "weight")?.reshape((cout, cin, 1, k, k))?;
        let b = vb.get(cout, "bias")?;
        Self::build(geom, 0, w, b, ConvImpl::Auto)
    }

    /// `w` is `[cout, cin, kt, kh, kw]`.
    fn build(geom: ConvGeometry, causal_pad: usize, w: Tensor, b: Tensor, imp: ConvImpl) -> Result<Self> {
        let g = &geom;
        let pointwise = g.kt == 1 && g.kh == 1 && g.kw == 1 && g.stride_s == 1 && g.stride_t == 1 && g.pad == [0; 4];
        let kernel = if pointwise {
            // Views of the weights: also right for training.
            Kernel::Pointwise { w: w.reshape((g.cout, g.cin))?, b: b.reshape((g.cout, 1))? }
        } else if w.track_op() || b.track_op() {
            Kernel::Trainable { w, b }
        } else if imp == ConvImpl::Auto && w.device().is_cpu() && matches!(w.dtype(), DType::F32 | DType::BF16) {
            // bf16 on CPU runs the f32 kernel on widened values: candle's CPU conv2d has no bf16 GEMM.
            let flat = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            Kernel::Cpu(TapWeights::new(g, &flat, b.to_dtype(DType::F32)?.to_vec1::<f32>()?))
        } else {
            // [cout, cin, kt, kh, kw] -> [cout, kt, cin, kh, kw] -> [cout, kt*cin, kh, kw]
            let w = w.permute((0, 2, 1, 3, 4))?.reshape((g.cout, g.kt * g.cin, g.kh, g.kw))?.contiguous()?;
            Kernel::Folded { w, b: b.reshape((1, g.cout, 1, 1))? }
        };
        Ok(Conv { geom, causal_pad, kernel, tile_pixels: cpu_conv::DEFAULT_TILE_PIXELS })
    }

    #[cfg(test)]
    pub fn from_weights(geom: ConvGeometry, causal_pad: usize, w: Tensor, b: Tensor, imp: ConvImpl) -> Result<Self> {
        Self::build(geom, causal_pad, w, b, imp)
    }

    /// Overrides the CPU kernel's band size (for tests and benchmarks).
    #[cfg(test)]
    pub fn with_tile_pixels(mut self, tile_pixels: usize) -> Self {
        self.tile_pixels = tile_pixels;
        self
    }

    /// Frames of context this convolution wants before its input (what a chunk must carry over).
    pub fn causal_pad(&self) -> usize {
        self.causal_pad
    }

    /// Convolves `x [B, cin, T, H, W]` preceded in time by `past [B, cin, P, H, W]` (the last frames of
    /// the previous chunk, `P <= causal_pad`) and then by `causal_pad - P` frames of zeros.
    pub fn forward(&self, past: Option<&Tensor>, x: &Tensor) -> Result<Tensor> {
        self.forward_add(past, x, None)
    }

    /// [`forward`](Self::forward) plus `residual` (of the output's shape), added by the CPU kernel as it
    /// writes its output instead of as another full-size tensor.
    pub fn forward_add(&self, past: Option<&Tensor>, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let g = &self.geom;
        let (b, c, t, h, w) = x.dims5()?;
        if c != g.cin {
            candle_core::bail!("conv: input has {c} channels, the weights expect {}", g.cin)
        }
        let past = if self.causal_pad == 0 { None } else { past };
        let p = past.map(|p| p.dim(2)).transpose()?.unwrap_or(0);
        if p > self.causal_pad {
            candle_core::bail!("conv: {p} frames of context, at most {} expected", self.causal_pad)
        }
        let zeros = self.causal_pad - p;
        let tout = g.out_frames(zeros + p + t);
        if tout == 0 {
            candle_core::bail!("conv: {} input frames for a temporal kernel of {}", zeros + p + t, g.kt)
        }
        match &self.kernel {
            Kernel::Pointwise { w: wm, b: bias } => {
                // [B, cin, T, H, W] -> [B, cin, T*H*W]; [cout, cin] x that -> [B, cout, T*H*W]
                let y = wm.broadcast_matmul(&x.reshape((b, c, t * h * w))?)?.broadcast_add(bias)?;
                add(y.reshape((b, g.cout, t, h, w))?, residual)
            }
            Kernel::Cpu(taps) if x.dtype() == DType::F32 => self.forward_cpu(taps, zeros, past, x, 1, residual),
            Kernel::Cpu(taps) => {
                let f32 = |t: &Tensor| t.to_dtype(DType::F32);
                let past = past.map(f32).transpose()?;
                let residual = residual.map(f32).transpose()?;
                let y = self.forward_cpu(taps, zeros, past.as_ref(), &f32(x)?, 1, residual.as_ref())?;
                y.to_dtype(x.dtype())
            }
            Kernel::Trainable { w: wt, b: bias } => {
                let seq = self.padded_sequence(zeros, past, x)?;
                add(self.trainable(&seq, wt, bias)?, residual)
            }
            Kernel::Folded { w: wf, b: bias } => {
                let seq = self.padded_sequence(zeros, past, x)?;
                let mut frames = Vec::with_capacity(tout);
                for to in 0..tout {
                    // kt frames [B, cin, 1, H, W] -> [B, kt*cin, H, W] (tap-major, as the folded kernel)
                    let taps = (0..g.kt)
                        .map(|i| seq.narrow(2, to * g.stride_t + i, 1)?.squeeze(2))
                        .collect::<Result<Vec<_>>>()?;
                    let inp = Tensor::cat(&taps, 1)?
                        .pad_with_zeros(2, g.pad[0], g.pad[1])?
                        .pad_with_zeros(3, g.pad[2], g.pad[3])?;
                    let y = inp.conv2d(wf, 0, g.stride_s, 1, 1)?.broadcast_add(bias)?;
                    frames.push(y.unsqueeze(2)?);
                }
                add(Tensor::cat(&frames, 2)?, residual)
            }
        }
    }

    /// The input with its causal past in front: zeros, then the carried frames, then `x`.
    fn padded_sequence(&self, zeros: usize, past: Option<&Tensor>, x: &Tensor) -> Result<Tensor> {
        let (b, c, _, h, w) = x.dims5()?;
        let mut parts = Vec::with_capacity(3);
        if zeros > 0 {
            parts.push(Tensor::zeros((b, c, zeros, h, w), x.dtype(), x.device())?);
        }
        if let Some(p) = past {
            parts.push(p.clone());
        }
        parts.push(x.clone());
        Tensor::cat(&parts, 2)
    }

    /// The convolution for weights being trained: one differentiable op (im2col and GEMMs, bias and
    /// spatial padding included). `seq [B, cin, T', H, W]` is already padded in time; `w [cout, cin, kt,
    /// kh, kw]`, `bias [cout]`.
    fn trainable(&self, seq: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let op = super::train_conv::CausalConvOp { geom: self.geom };
        seq.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, op)
    }

    /// Nearest-neighbour ×2 upsampling of every frame of `x [B, cin, T, H, W]`, then this (per-frame)
    /// convolution. The CPU kernel reads the small frames directly, so the 4× larger upsampled video is
    /// never stored (1.2 GB at the decoder's last upsampling for 480×832).
    pub fn forward_upsampled(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        match &self.kernel {
            Kernel::Cpu(taps) if self.causal_pad == 0 && c == self.geom.cin => {
                let y = self.forward_cpu(taps, 0, None, &x.to_dtype(DType::F32)?, 2, None)?;
                y.to_dtype(x.dtype())
            }
            _ => {
                // [B, C, T, H, W] -> [B, C*T, H, W]: every (channel, frame) plane is upsampled on its own.
                let up = x.reshape((b, c * t, h, w))?.upsample_nearest2d(2 * h, 2 * w)?;
                self.forward(None, &up.reshape((b, c, t, 2 * h, 2 * w))?)
            }
        }
    }

    /// The CPU kernel over `x` (and `past`), whose frames are read upsampled by `up` (1 or 2).
    fn forward_cpu(
        &self,
        taps: &TapWeights,
        zeros: usize,
        past: Option<&Tensor>,
        x: &Tensor,
        up: usize,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let g = &self.geom;
        // Source dims; the convolution sees frames of (up*h, up*w).
        let (b, c, t, h, w) = x.dims5()?;
        let x = x.contiguous()?;
        let past = past.map(|p| p.contiguous()).transpose()?;
        let p = past.as_ref().map(|p| p.dim(2)).transpose()?.unwrap_or(0);
        let (hout, wout) = g.out_hw(up * h, up * w)?;
        let tout = g.out_frames(zeros + p + t);
        let per_item = g.cout * tout * hout * wout;
        let mut out = vec![0f32; b * per_item];

        let x_guard = x.storage_and_layout();
        let x_data = cpu_f32(&x_guard.0, x_guard.1)?;
        let past_guard = past.as_ref().map(|p| p.storage_and_layout());
        let past_data = past_guard.as_ref().map(|(s, l)| cpu_f32(s, l)).transpose()?;
        let residual = residual.map(|r| r.contiguous()).transpose()?;
        if let Some(r) = &residual {
            if r.dims() != [b, g.cout, tout, hout, wout] {
                candle_core::bail!("conv: residual {:?} for an output of {:?}", r.dims(), (b, g.cout, tout, hout, wout))
            }
        }
        let res_guard = residual.as_ref().map(|r| r.storage_and_layout());
        let res_data = res_guard.as_ref().map(|(s, l)| cpu_f32(s, l)).transpose()?;
        for bi in 0..b {
            let mut frames: Vec<Option<Frame<'_>>> = vec![None; zeros];
            if let Some(pd) = past_data {
                let item = &pd[bi * c * p * h * w..(bi + 1) * c * p * h * w];
                frames.extend((0..p).map(|ti| Some(Frame { data: &item[ti * h * w..], c_stride: p * h * w, up })));
            }
            let item = &x_data[bi * c * t * h * w..(bi + 1) * c * t * h * w];
            frames.extend((0..t).map(|ti| Some(Frame { data: &item[ti * h * w..], c_stride: t * h * w, up })));
            let out_item = &mut out[bi * per_item..(bi + 1) * per_item];
            let res_item = res_data.map(|r| &r[bi * per_item..(bi + 1) * per_item]);
            cpu_conv::conv3d(g, taps, &frames, (up * h, up * w), out_item, res_item, self.tile_pixels)?;
        }
        Tensor::from_vec(out, (b, g.cout, tout, hout, wout), &Device::Cpu)
    }
}

fn add(y: Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// The f32 elements of a contiguous CPU tensor.
fn cpu_f32<'a>(storage: &'a candle_core::Storage, layout: &candle_core::Layout) -> Result<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(s) => {
            let all = s.as_slice::<f32>()?;
            let start = layout.start_offset();
            Ok(&all[start..start + layout.shape().elem_count()])
        }
        _ => candle_core::bail!("the CPU convolution kernel got a tensor that is not on the CPU"),
    }
}
