//! The 3D rotary position embedding of Wan: the head dimension is split into three parts that rotate
//! with the token's frame, row and column index respectively (theta 10⁴, interleaved pairs).

use candle_core::{DType, Device, Result, Tensor};

/// Per-token rotation tables for one latent grid: `cos` and `sin`, each `[tokens, head_dim / 2]` in f32,
/// tokens in (frame, row, column) order, as the patch embedding flattens them.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Builds the tables for a grid of `frames × rows × cols` patches. Angles are computed in f64 and rounded
/// to f32 once, as the reference does.
pub fn rope_tables(split: [usize; 3], grid: [usize; 3], theta: f64, device: &Device) -> Result<RopeTables> {
    let half: usize = split.iter().map(|d| d / 2).sum();
    let [frames, rows, cols] = grid;
    // Frequencies of each axis part: theta^(-2i/d) for i < d/2.
    let freqs: Vec<Vec<f64>> =
        split.iter().map(|&d| (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64)).collect()).collect();
    let tokens = frames * rows * cols;
    let mut cos = Vec::with_capacity(tokens * half);
    let mut sin = Vec::with_capacity(tokens * half);
    for f in 0..frames {
        for r in 0..rows {
            for c in 0..cols {
                for (axis_freqs, pos) in freqs.iter().zip([f, r, c]) {
                    for freq in axis_freqs {
                        let angle = pos as f64 * freq;
                        cos.push(angle.cos() as f32);
                        sin.push(angle.sin() as f32);
                    }
                }
            }
        }
    }
    Ok(RopeTables {
        cos: Tensor::from_vec(cos, (tokens, half), device)?,
        sin: Tensor::from_vec(sin, (tokens, half), device)?,
    })
}

/// Rotates interleaved pairs of `x` (`[batch, heads, tokens, head_dim]`) by the tables, in f32, and
/// returns `x`'s dtype.
pub fn apply_rope(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    // The fused kernel has no backward pass; training takes the composition of ops.
    if x32.track_op() {
        candle_nn::rotary_emb::rope_i_slow(&x32, &tables.cos, &tables.sin)?.to_dtype(dtype)
    } else {
        candle_nn::rotary_emb::rope_i(&x32, &tables.cos, &tables.sin)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_rotate_each_axis_by_its_own_index() {
        let tables = rope_tables([4, 2, 2], [2, 3, 2], 10_000.0, &Device::Cpu).unwrap();
        assert_eq!(tables.cos.dims(), &[12, 4]);
        let cos: Vec<Vec<f32>> = tables.cos.to_vec2().unwrap();
        // Token (f=1, r=2, c=1) is index 1·6 + 2·2 + 1 = 11; its parts are t (2 pairs), h (1), w (1).
        let t = &cos[11];
        assert!((t[0] - 1f32.cos()).abs() < 1e-7);
        assert!((t[1] - (1.0f64 / 100.0).cos() as f32).abs() < 1e-7);
        assert!((t[2] - 2f32.cos()).abs() < 1e-7);
        assert!((t[3] - 1f32.cos()).abs() < 1e-7);
        // Token 0 is not rotated at all.
        assert!(cos[0].iter().all(|&v| v == 1.0));
    }

    #[test]
    fn rotation_preserves_norms() {
        let tables = rope_tables([8, 4, 4], [2, 2, 3], 10_000.0, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 2, 12, 16), &Device::Cpu).unwrap();
        let y = apply_rope(&x, &tables).unwrap();
        let nx = x.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let ny = y.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((nx - ny).abs() / nx < 1e-5);
    }
}
