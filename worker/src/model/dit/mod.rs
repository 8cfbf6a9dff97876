//! The Wan2.1 diffusion transformer (`WanTransformer3DModel` in diffusers).
//!
//! Data path: latent `[B, 16, F, H, W]` → patch tokens `[B, N, dim]` → blocks (modulated self-attention
//! with 3D RoPE, cross-attention to the projected text, modulated feed-forward) → modulated output norm →
//! linear head → unpatchify back to `[B, 16, F, H, W]`.

mod block;
mod config;
mod embed;
mod layers;
pub mod parallel;
mod rope;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

pub use self::block::WanBlock;
pub use self::config::WanTransformerConfig;
pub use self::embed::timestep_embedding;
pub use self::layers::Linear;
pub use self::rope::{rope_tables, RopeTables};

use self::block::modulate;
use self::embed::{ConditionEmbedder, PatchEmbed};
use self::layers::F32LayerNorm;
use crate::model::attention::AttentionTiling;
use crate::model::error::{ModelError, Result};
use crate::model::load::ComponentDir;
use crate::model::sharded::{ShardedWeights, WeightSource};

use self::parallel::Comm;

/// RoPE's base: fixed by the checkpoint's training.
const ROPE_THETA: f64 = 10_000.0;

#[derive(Debug, Clone)]
pub struct WanTransformer {
    cfg: WanTransformerConfig,
    patch_embedding: PatchEmbed,
    condition_embedder: ConditionEmbedder,
    blocks: Vec<WanBlock>,
    norm_out: F32LayerNorm,
    proj_out: Linear,
    /// Offsets of the output head's shift and scale `[1, 2, dim]`, in f32.
    scale_shift_table: Tensor,
    tiling: AttentionTiling,
    device: Device,
    dtype: DType,
    /// The shard group this model is a part of (a group of one when unsharded).
    comm: Comm,
}

impl WanTransformer {
    /// Loads a diffusers `transformer/` folder in `dtype`.
    pub fn load(dir: &ComponentDir, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: WanTransformerConfig = dir.config()?;
        cfg.validate()?;
        let vb = dir.var_builder(dtype, device)?;
        Self::new(&cfg, vb).map_err(|e| dir.weights_error(e))
    }

    /// Loads this rank's shard of a diffusers `transformer/` folder for the group `comm`, reading only the
    /// rank's slices of the split weights.
    pub fn load_shard(dir: &ComponentDir, dtype: DType, device: &Device, comm: Comm) -> Result<Self> {
        let cfg: WanTransformerConfig = dir.config()?;
        cfg.validate()?;
        parallel::check_degree(&cfg, comm.world())?;
        let vb = ShardedWeights::var_builder(
            WeightSource::Safetensors(dir.mapped()?),
            comm.rank(),
            comm.world(),
            parallel::split_rule(&cfg),
            dtype,
            device,
        );
        Self::new_shard(&cfg, vb, comm).map_err(|e| dir.weights_error(e))
    }

    /// Builds the model from any variable source whose paths are the diffusers keys.
    pub fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        Self::new_shard(cfg, vb, parallel::solo())
    }

    /// Builds this rank's shard of the model for the group `comm`; `vb` gives the rank's slices of the
    /// split tensors (see [`ShardedWeights`] and [`parallel::split_rule`]).
    pub fn new_shard(cfg: &WanTransformerConfig, vb: VarBuilder, comm: Comm) -> Result<Self> {
        cfg.validate()?;
        parallel::check_degree(cfg, comm.world())?;
        let dim = cfg.dim();
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let blocks = (0..cfg.num_layers)
            .map(|i| WanBlock::load(vb.pp(format!("blocks.{i}")), cfg, &comm))
            .collect::<Result<_, _>>()?;
        let [pt, ph, pw] = cfg.patch_size;
        Ok(WanTransformer {
            patch_embedding: PatchEmbed::load(vb.pp("patch_embedding"), cfg)?,
            condition_embedder: ConditionEmbedder::load(vb.pp("condition_embedder"), cfg)?,
            blocks,
            norm_out: F32LayerNorm::plain(dim, cfg.eps, &device)?,
            proj_out: Linear::load(vb.pp("proj_out"), dim, cfg.out_channels() * pt * ph * pw)?,
            scale_shift_table: vb.set_dtype(DType::F32).get((1, 2, dim), "scale_shift_table")?,
            tiling: AttentionTiling::default(),
            dtype,
            device,
            cfg: cfg.clone(),
            comm,
        })
    }

    /// The shard group this model runs in.
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    pub fn config(&self) -> &WanTransformerConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Changes the attention tile sizes (memory against speed); results do not depend on them beyond
    /// floating-point rounding.
    pub fn set_attention_tiling(&mut self, tiling: AttentionTiling) {
        self.tiling = tiling;
    }

    /// The model's prediction (the flow velocity) for `hidden_states` `[B, C, F, H, W]` at `timestep`
    /// `[B]` (or `[B, F / patch frames]`, a timestep per latent frame: frames held clean beside frames
    /// being drawn, as video continuation wants), conditioned on `encoder_hidden_states` `[B, L,
    /// text_dim]`. Returns `[B, out_channels, F, H, W]` in the model dtype.
    pub fn forward(&self, hidden_states: &Tensor, timestep: &Tensor, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        let grid = self.check_inputs(hidden_states, timestep, encoder_hidden_states)?;
        let (b, _, _, _, _) = hidden_states.dims5()?;
        let x = hidden_states.to_dtype(self.dtype)?;
        let text = encoder_hidden_states.to_dtype(self.dtype)?;
        let rope = rope_tables(self.cfg.rope_split(), grid, ROPE_THETA, &self.device)?;

        let mut x = self.patch_embedding.forward(&x)?;
        let cond = self.condition_embedder.forward(timestep, &text, grid[1] * grid[2])?;
        for block in &self.blocks {
            x = block.forward(&x, &cond.context, &cond.modulation, &rope, self.tiling)?;
        }

        // Output head: shift and scale from the time embedding plus the learned table.
        let m = self.scale_shift_table.unsqueeze(0)?.broadcast_add(&cond.temb.to_dtype(DType::F32)?.unsqueeze(2)?)?;
        let (shift, scale) = (m.narrow(2, 0, 1)?.squeeze(2)?, m.narrow(2, 1, 1)?.squeeze(2)?);
        let x = modulate(&self.norm_out.forward(&x)?, &shift, &scale)?.to_dtype(self.dtype)?;
        let x = self.proj_out.forward(&x)?;
        Ok(self.unpatchify(&x, b, grid)?)
    }

    /// Tokens `[B, N, C·pt·ph·pw]` → `[B, C, F, H, W]`.
    fn unpatchify(&self, x: &Tensor, b: usize, grid: [usize; 3]) -> candle_core::Result<Tensor> {
        let [gf, gh, gw] = grid;
        let [pt, ph, pw] = self.cfg.patch_size;
        let c = self.cfg.out_channels();
        // [B, gf, gh, gw, pt, ph, pw, C] → [B, C, gf, pt, gh, ph, gw, pw]
        x.reshape(vec![b, gf, gh, gw, pt, ph, pw, c])?.permute(vec![0, 7, 1, 4, 2, 5, 3, 6])?.reshape((
            b,
            c,
            gf * pt,
            gh * ph,
            gw * pw,
        ))
    }

    /// Validates the inputs' shapes against the config; returns the patch grid (frames, rows, columns).
    fn check_inputs(&self, hidden: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<[usize; 3]> {
        let cfg = &self.cfg;
        let (b, c, f, h, w) = hidden.dims5().map_err(|_| {
            ModelError::input("hidden_states", format!("expected [B, C, F, H, W], got {:?}", hidden.dims()))
        })?;
        if c != cfg.in_channels {
            return Err(ModelError::input(
                "hidden_states",
                format!("{c} channels, the model takes {}", cfg.in_channels),
            ));
        }
        let [pt, ph, pw] = cfg.patch_size;
        if f % pt != 0 || h % ph != 0 || w % pw != 0 || f == 0 || h == 0 || w == 0 {
            return Err(ModelError::input(
                "hidden_states",
                format!("frames × height × width {f}×{h}×{w} must be positive multiples of the patch {pt}×{ph}×{pw}"),
            ));
        }
        let grid = [f / pt, h / ph, w / pw];
        if grid.iter().any(|&g| g > cfg.rope_max_seq_len) {
            return Err(ModelError::input(
                "hidden_states",
                format!("patch grid {grid:?} exceeds rope_max_seq_len {}", cfg.rope_max_seq_len),
            ));
        }
        if timestep.dims() != [b] && timestep.dims() != [b, f / pt] {
            return Err(ModelError::input(
                "timestep",
                format!("expected shape [{b}] or [{b}, {}], got {:?}", f / pt, timestep.dims()),
            ));
        }
        match text.dims() {
            &[tb, l, td] if tb == b && td == cfg.text_dim && l > 0 => {}
            other => {
                return Err(ModelError::input(
                    "encoder_hidden_states",
                    format!("expected [{b}, L, {}], got {other:?}", cfg.text_dim),
                ))
            }
        }
        if !hidden.dtype().is_float() {
            return Err(ModelError::input("hidden_states", format!("dtype {:?} is not a float", hidden.dtype())));
        }
        Ok(grid)
    }
}
