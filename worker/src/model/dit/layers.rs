//! Small layers shared by the transformer's parts: a linear layer that runs as one 2-D matmul, and the
//! layer norms computed in f32 as the reference keeps them.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::cpu::linear::FusedLinear;
use crate::model::cpu::{add_rows, mul_rows, tracked};

/// `y = x·Wᵀ + b` over the last dimension. Leading dimensions are folded into one so that the product is
/// a single large matmul rather than a batch of small ones.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` `[out, in]` and `bias` `[out]` under `vb`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = Some(vb.get(out_dim, "bias")?);
        Ok(Linear { weight, bias })
    }

    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    pub fn out_dim(&self) -> Result<usize> {
        self.weight.dim(0)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims.last().copied().unwrap_or(0);
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let y = match &self.bias {
            Some(b)
                if x.device().is_cpu() && x.dtype() == DType::F32 && rows > 0 && !tracked(&[x, &self.weight, b]) =>
            {
                x2.contiguous()?.apply_op3_no_bwd(&self.weight.contiguous()?, &b.contiguous()?, &FusedLinear)?
            }
            Some(b) => add_rows(&x2.matmul(&self.weight.t()?)?, b)?,
            None => x2.matmul(&self.weight.t()?)?,
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.weight.dim(0)?;
        }
        y.reshape(out_dims)
    }
}

/// Layer norm over the last dimension computed in f32, with an optional affine part; returns f32.
#[derive(Debug, Clone)]
pub struct F32LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl F32LayerNorm {
    /// Without learned parameters (weight 1, bias 0).
    pub fn plain(dim: usize, eps: f64, device: &candle_core::Device) -> Result<Self> {
        Ok(F32LayerNorm {
            weight: Tensor::ones(dim, DType::F32, device)?,
            bias: Tensor::zeros(dim, DType::F32, device)?,
            eps: eps as f32,
        })
    }

    /// With `weight` and `bias` under `vb`, kept in f32.
    pub fn affine(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let vb = vb.set_dtype(DType::F32);
        Ok(F32LayerNorm { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps: eps as f32 })
    }
}

impl Module for F32LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        if tracked(&[&x, &self.weight, &self.bias]) {
            let d = x.dim(candle_core::D::Minus1)?;
            let centred = x.broadcast_sub(&(x.sum_keepdim(candle_core::D::Minus1)? / d as f64)?)?;
            let var = (centred.sqr()?.sum_keepdim(candle_core::D::Minus1)? / d as f64)?;
            let normed = centred.broadcast_div(&(var + self.eps as f64)?.sqrt()?)?;
            add_rows(&mul_rows(&normed, &self.weight)?, &self.bias)
        } else {
            candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn linear_folds_leading_dims() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 4, 3), &dev).unwrap();
        let got = Linear::from_parts(w.clone(), Some(b.clone())).forward(&x).unwrap();
        let expected = candle_nn::Linear::new(w, Some(b)).forward(&x).unwrap();
        assert_eq!(got.dims(), &[2, 4, 5]);
        let diff = (got - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5);
    }
}
