//! Seeded random weights for any model whose variables come from a `VarBuilder`: benchmarks of the
//! published shapes need no checkpoint, and a seed names a model exactly.
//!
//! Each tensor is drawn from its own stream, seeded by the model seed and the tensor's name, so the
//! weights do not depend on the order in which the model asks for them.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// Normal weights scaled by 1/√fan_in (the last dimension for matrices, the product of the trailing
/// dimensions for convolutions); vectors (norm scales, biases) are 1 + small noise for scales (named
/// `weight` or `gamma`) and small noise otherwise, so that norms keep their inputs' scale and no
/// activation decays into denormals (which would time differently from a real model).
pub struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        RandomWeights { seed }
    }

    pub fn var_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights { seed }), dtype, device.clone())
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, shape: Shape, name: &str, _hint: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let dims = shape.dims();
        let n = shape.elem_count();
        let mut rng = SplitMix64::new(self.seed ^ fnv1a(name));
        let is_vector = dims.iter().filter(|&&d| d > 1).count() <= 1;
        let (offset, scale) = if is_vector {
            (if name.ends_with("weight") || name.ends_with("gamma") { 1.0 } else { 0.0 }, 0.02)
        } else {
            let fan_in: usize = dims[1..].iter().product();
            (0.0, 1.0 / (fan_in.max(1) as f64).sqrt())
        };
        let values: Vec<f32> = (0..n).map(|_| (offset + scale * rng.normal()) as f32).collect();
        Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// 64-bit FNV-1a: a stable hash of a tensor name.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// SplitMix64 with Box–Muller normals: small, fast and the same on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_name_give_same_tensor_whatever_the_order() {
        let dev = Device::Cpu;
        let a = RandomWeights::var_builder(7, DType::F32, &dev);
        let b = RandomWeights::var_builder(7, DType::F32, &dev);
        let a1 = a.get((4, 8), "x.weight").unwrap();
        let _ = b.get((3,), "y.bias").unwrap();
        let b1 = b.get((4, 8), "x.weight").unwrap();
        assert_eq!(a1.to_vec2::<f32>().unwrap(), b1.to_vec2::<f32>().unwrap());
        let other = RandomWeights::var_builder(8, DType::F32, &dev).get((4, 8), "x.weight").unwrap();
        assert_ne!(a1.to_vec2::<f32>().unwrap(), other.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn matrices_are_scaled_by_fan_in() {
        let w = RandomWeights::var_builder(1, DType::F32, &Device::Cpu).get((64, 400), "w.weight").unwrap();
        let var = w.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((var - 1.0 / 400.0).abs() < 0.2 / 400.0, "variance {var}");
    }
}
