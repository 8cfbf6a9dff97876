//! Loading one rank's part of a model: a variable source that answers each tensor the model code asks for
//! with this rank's slice of it, reading only that slice from the safetensors files.
//!
//! The model code asks for the shapes it holds (a quarter of `to_q`'s rows at degree 4); a [`SplitRule`]
//! says, by tensor name, which dimension is split and how large it is whole. Tensors without a rule are
//! loaded whole (every rank holds them).

use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::collective::partition;

/// How one tensor is split across the ranks: along `dim`, whose whole size is `total`, in the contiguous
/// parts [`partition`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub dim: usize,
    pub total: usize,
}

/// The split of a tensor by its full name (`blocks.0.attn1.to_q.weight`), or `None` to load it whole.
pub type SplitRule = Arc<dyn Fn(&str) -> Option<Split> + Send + Sync>;

/// Where the whole tensors live.
pub enum WeightSource {
    /// Memory-mapped safetensors files: a slice is copied out without touching the rest.
    Safetensors(MmapedSafetensors),
    /// Any other variable source (seeded random weights): the whole tensor is made, then cut.
    Whole(Box<dyn SimpleBackend>),
}

/// Rank `rank` of `world`'s view of a [`WeightSource`].
pub struct ShardedWeights {
    source: WeightSource,
    rank: usize,
    world: usize,
    rule: SplitRule,
}

impl ShardedWeights {
    pub fn var_builder(
        source: WeightSource,
        rank: usize,
        world: usize,
        rule: SplitRule,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(ShardedWeights { source, rank, world, rule }), dtype, device.clone())
    }

    fn load_whole(&self, shape: &Shape, name: &str, hint: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        match &self.source {
            WeightSource::Whole(backend) => backend.get(shape.clone(), name, hint, dtype, dev),
            WeightSource::Safetensors(files) => {
                let tensor = files.load(name, dev)?;
                if tensor.dims() != shape.dims() {
                    candle_core::bail!(
                        "shape mismatch for {name}: expected {:?}, found {:?}",
                        shape.dims(),
                        tensor.dims()
                    );
                }
                tensor.to_dtype(dtype)
            }
        }
    }

    fn load_slice(
        &self,
        local: &Shape,
        name: &str,
        hint: Init,
        dtype: DType,
        dev: &Device,
        split: Split,
    ) -> Result<Tensor> {
        let range = partition(split.total, self.world, self.rank);
        let mut full = local.dims().to_vec();
        if full.get(split.dim) != Some(&range.len()) {
            candle_core::bail!(
                "{name}: rank {} of {} holds {} of {} along dimension {}, but {:?} was asked for",
                self.rank,
                self.world,
                range.len(),
                split.total,
                split.dim,
                local.dims()
            );
        }
        full[split.dim] = split.total;
        match &self.source {
            WeightSource::Whole(backend) => backend
                .get(Shape::from(full), name, hint, dtype, dev)?
                .narrow(split.dim, range.start, range.len())?
                .contiguous(),
            WeightSource::Safetensors(files) => {
                let view = files.get(name)?;
                if view.shape() != full.as_slice() {
                    candle_core::bail!("shape mismatch for {name}: expected {full:?}, found {:?}", view.shape());
                }
                let stored = DType::try_from(view.dtype())?;
                let elem = stored.size_in_bytes();
                // Row-major: `outer` blocks of `total` slabs of `inner` bytes; this rank's slabs of each block.
                let outer: usize = full[..split.dim].iter().product();
                let inner: usize = full[split.dim + 1..].iter().product::<usize>() * elem;
                let data = view.data();
                let mut bytes = Vec::with_capacity(outer * range.len() * inner);
                for block in 0..outer {
                    let start = (block * split.total + range.start) * inner;
                    bytes.extend_from_slice(&data[start..start + range.len() * inner]);
                }
                Tensor::from_raw_buffer(&bytes, stored, local.dims(), dev)?.to_dtype(dtype)
            }
        }
    }
}

impl SimpleBackend for ShardedWeights {
    fn get(&self, shape: Shape, name: &str, hint: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        match (self.rule)(name) {
            Some(split) if self.world > 1 => self.load_slice(&shape, name, hint, dtype, dev, split),
            _ => self.load_whole(&shape, name, hint, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match &self.source {
            WeightSource::Whole(backend) => backend.get_unchecked(name, dtype, dev),
            WeightSource::Safetensors(files) => files.load(name, dev)?.to_dtype(dtype),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match &self.source {
            WeightSource::Whole(backend) => backend.contains_tensor(name),
            WeightSource::Safetensors(files) => files.get(name).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn slices_read_from_safetensors_match_cuts_of_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 60., &dev).unwrap().reshape((3, 5, 4)).unwrap();
        let b = Tensor::arange(0f32, 7., &dev).unwrap().to_dtype(DType::BF16).unwrap();
        candle_core::safetensors::save(&HashMap::from([("a", a.clone()), ("b", b.clone())]), &path).unwrap();
        let rule: SplitRule = Arc::new(|name| match name {
            "a" => Some(Split { dim: 1, total: 5 }),
            "b" => Some(Split { dim: 0, total: 7 }),
            _ => None,
        });
        for world in 1..=5 {
            for rank in 0..world {
                // SAFETY: the file was just written and is not modified.
                let files = unsafe { MmapedSafetensors::new(&path) }.unwrap();
                let vb = ShardedWeights::var_builder(
                    WeightSource::Safetensors(files),
                    rank,
                    world,
                    rule.clone(),
                    DType::F32,
                    &dev,
                );
                let ra = partition(5, world, rank);
                let rb = partition(7, world, rank);
                let got_a = vb.get((3, ra.len(), 4), "a").unwrap();
                let got_b = vb.get(rb.len(), "b").unwrap();
                let want_a = a.narrow(1, ra.start, ra.len()).unwrap();
                let want_b = b.narrow(0, rb.start, rb.len()).unwrap().to_dtype(DType::F32).unwrap();
                assert_eq!(got_a.to_vec3::<f32>().unwrap(), want_a.to_vec3::<f32>().unwrap());
                assert_eq!(got_b.to_vec1::<f32>().unwrap(), want_b.to_vec1::<f32>().unwrap());
                if world > 1 {
                    let wrong = vb.get((3, 5, 4), "a").unwrap_err().to_string();
                    assert!(wrong.contains("along dimension 1"), "{wrong}");
                }
            }
        }
    }
}
