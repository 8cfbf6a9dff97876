//! The transformer's inputs: patches of the latent become tokens, the timestep becomes the modulation
//! vectors, and the text encoder's states are projected to the model width.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::WanTransformerConfig;
use super::layers::Linear;

/// The Conv3d patch embedding with kernel = stride = patch size, computed as one matmul: the latent is
/// cut into non-overlapping patches, each flattened in the conv weight's (channel, t, h, w) order.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    proj: Linear,
    patch: [usize; 3],
}

impl PatchEmbed {
    pub fn load(vb: VarBuilder, cfg: &WanTransformerConfig) -> Result<Self> {
        let [pt, ph, pw] = cfg.patch_size;
        let patch_len = cfg.in_channels * pt * ph * pw;
        let weight = vb.get((cfg.dim(), cfg.in_channels, pt, ph, pw), "weight")?.reshape((cfg.dim(), patch_len))?;
        let bias = vb.get(cfg.dim(), "bias")?;
        Ok(PatchEmbed { proj: Linear::from_parts(weight, Some(bias)), patch: cfg.patch_size })
    }

    /// `[B, C, F, H, W]` → tokens `[B, F/pt · H/ph · W/pw, dim]` in (frame, row, column) order.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, f, h, w) = x.dims5()?;
        let [pt, ph, pw] = self.patch;
        let (gf, gh, gw) = (f / pt, h / ph, w / pw);
        // [B, C, gf, pt, gh, ph, gw, pw] → [B, gf, gh, gw, C, pt, ph, pw]
        let patches = x
            .reshape(vec![b, c, gf, pt, gh, ph, gw, pw])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .reshape((b, gf * gh * gw, c * pt * ph * pw))?;
        self.proj.forward(&patches)
    }
}

/// Timestep and text conditioning: the sinusoidal embedding, the time MLP (kept in f32 as the reference
/// keeps `time_embedder`), the shared projection to six modulation vectors, and the text projection.
#[derive(Debug, Clone)]
pub struct ConditionEmbedder {
    freq_dim: usize,
    time_linear_1: Linear,
    time_linear_2: Linear,
    time_proj: Linear,
    text_linear_1: Linear,
    text_linear_2: Linear,
}

/// What the conditioning gives the blocks. `T` is 1 for a timestep per sample, or the number of tokens
/// when each latent frame has its own.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The time embedding `[B, T, dim]`, in the model dtype (used by the output head).
    pub temb: Tensor,
    /// The six per-block modulation vectors `[B, T, 6, dim]`, in f32.
    pub modulation: Tensor,
    /// The projected text `[B, L, dim]`, in the model dtype.
    pub context: Tensor,
}

impl ConditionEmbedder {
    pub fn load(vb: VarBuilder, cfg: &WanTransformerConfig) -> Result<Self> {
        let dim = cfg.dim();
        let time = vb.pp("time_embedder").set_dtype(DType::F32);
        let text = vb.pp("text_embedder");
        Ok(ConditionEmbedder {
            freq_dim: cfg.freq_dim,
            time_linear_1: Linear::load(time.pp("linear_1"), cfg.freq_dim, dim)?,
            time_linear_2: Linear::load(time.pp("linear_2"), dim, dim)?,
            time_proj: Linear::load(vb.pp("time_proj"), dim, 6 * dim)?,
            text_linear_1: Linear::load(text.pp("linear_1"), cfg.text_dim, dim)?,
            text_linear_2: Linear::load(text.pp("linear_2"), dim, dim)?,
        })
    }

    /// `timestep` `[B]`, or `[B, F]` with one per patch frame (any numeric dtype); `text` `[B, L,
    /// text_dim]`; `tokens_per_frame` the patch grid's rows × columns. A timestep per frame is embedded
    /// once per frame and repeated over the frame's tokens, as diffusers' Wan does with a timestep per
    /// token (`expand_timesteps`).
    pub fn forward(&self, timestep: &Tensor, text: &Tensor, tokens_per_frame: usize) -> Result<Conditioning> {
        let dtype = text.dtype();
        let sinusoid = timestep_embedding(timestep, self.freq_dim)?;
        let temb = self.time_linear_2.forward(&self.time_linear_1.forward(&sinusoid)?.silu()?)?.to_dtype(dtype)?;
        let dim = temb.dim(1)?;
        let modulation = self.time_proj.forward(&temb.silu()?)?.to_dtype(DType::F32)?;
        let (temb, modulation) = match timestep.dims() {
            &[b, f] => {
                let per_token = |t: &Tensor, width: usize| -> candle_core::Result<Tensor> {
                    t.reshape((b, f, 1, width))?.broadcast_as((b, f, tokens_per_frame, width))?.reshape((
                        b,
                        f * tokens_per_frame,
                        width,
                    ))
                };
                let n = f * tokens_per_frame;
                (per_token(&temb, dim)?, per_token(&modulation, 6 * dim)?.reshape((b, n, 6, dim))?)
            }
            _ => {
                let b = temb.dim(0)?;
                (temb.unsqueeze(1)?, modulation.reshape((b, 1, 6, dim))?)
            }
        };
        let context = self.text_linear_2.forward(&self.text_linear_1.forward(text)?.gelu()?)?;
        Ok(Conditioning { temb, modulation, context })
    }
}

/// The sinusoidal timestep embedding `[cos(t·ωᵢ), sin(t·ωᵢ)]` with ωᵢ = 10000^(−i/half), in f32 with the
/// reference's order of operations so that large timesteps round the same way.
pub fn timestep_embedding(timestep: &Tensor, dim: usize) -> Result<Tensor> {
    let device: &Device = timestep.device();
    let t: Vec<f32> = timestep.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let half = dim / 2;
    let log_period = -(10_000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|i| ((log_period * i as f32) / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in &t {
        let args: Vec<f32> = freqs.iter().map(|&f| ti * f).collect();
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(args.iter().map(|a| a.sin()));
    }
    Tensor::from_vec(out, (t.len(), dim), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_embedding_is_cos_then_sin() {
        let t = Tensor::new(&[0f32, 2.0], &Device::Cpu).unwrap();
        let emb: Vec<Vec<f32>> = timestep_embedding(&t, 8).unwrap().to_vec2().unwrap();
        assert_eq!(emb[0], vec![1., 1., 1., 1., 0., 0., 0., 0.]);
        assert!((emb[1][0] - 2f32.cos()).abs() < 1e-6);
        assert!((emb[1][4] - 2f32.sin()).abs() < 1e-6);
        // ω₁ = 10000^(-1/4) = 0.1
        assert!((emb[1][1] - 0.2f32.cos()).abs() < 1e-6);
    }
}
