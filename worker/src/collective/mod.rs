//! Collective operations among the ranks of one shard group: the devices that evaluate one window together.
//!
//! One interface, two backends: [`cpu`] passes tensors between threads of this process (every sharding path
//! runs and is tested without a GPU), and `nccl` (with the `cuda` feature) drives NCCL on CUDA devices. Each
//! rank runs on its own thread and calls every operation in the same order as its peers; an operation
//! returns once every rank has joined it.
//!
//! A rank that fails calls [`Collective::abort`]: its peers' pending and later operations fail instead of
//! waiting for it forever, and the group is re-formed with new communicators.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod nccl;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, Tensor};

pub use cpu::CpuCollective;

/// The operations tensor-parallel model code needs. Every rank passes tensors of the same shape and
/// dtype, except where an operation says otherwise.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This rank, `0..world`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world(&self) -> usize;
    /// The element-wise sum of every rank's `x`; every rank gets the same tensor.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor>;
    /// Every rank's `x` concatenated along `dim` in rank order.
    fn all_gather(&self, x: &Tensor, dim: usize) -> Result<Tensor>;
    /// Each rank cuts its `x` into `world` equal parts along `split_dim` and sends part `r` to rank `r`,
    /// which concatenates what it receives along `concat_dim` in rank order.
    fn all_to_all(&self, x: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor>;
    /// `root`'s `x` on every rank; the others' `x` only gives the shape and dtype.
    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor>;
    /// Fails every pending and later operation of the whole group with `reason`.
    fn abort(&self, reason: &str);
    /// What this rank has moved so far.
    fn stats(&self) -> &CollectiveStats;
}

/// Counters of one rank's collective traffic.
#[derive(Debug, Default)]
pub struct CollectiveStats {
    all_reduces: AtomicU64,
    bytes_all_reduced: AtomicU64,
}

impl CollectiveStats {
    pub(crate) fn count_all_reduce(&self, x: &Tensor) {
        self.all_reduces.fetch_add(1, Ordering::Relaxed);
        self.bytes_all_reduced.fetch_add((x.elem_count() * x.dtype().size_in_bytes()) as u64, Ordering::Relaxed);
    }

    /// All-reduce calls so far.
    pub fn all_reduces(&self) -> u64 {
        self.all_reduces.load(Ordering::Relaxed)
    }

    /// Bytes this rank contributed to all-reduces so far (the tensor size, not the wire traffic, which
    /// depends on the algorithm: a ring moves about 2·(world−1)/world of it per rank).
    pub fn bytes_all_reduced(&self) -> u64 {
        self.bytes_all_reduced.load(Ordering::Relaxed)
    }
}

/// The size of each of the `world` parts an all-to-all cuts `x` into along `dim`.
pub(crate) fn all_to_all_chunk(x: &Tensor, dim: usize, world: usize) -> Result<usize> {
    let size = x.dim(dim)?;
    if !size.is_multiple_of(world) {
        candle_core::bail!("all-to-all: dimension {dim} of {:?} does not split into {world}", x.dims());
    }
    Ok(size / world)
}

/// What `rank` receives in an all-to-all, given every rank's whole tensor in rank order.
pub(crate) fn all_to_all_share(
    parts: &[Tensor],
    rank: usize,
    chunk: usize,
    split_dim: usize,
    concat_dim: usize,
) -> Result<Tensor> {
    let mine: Vec<Tensor> = parts.iter().map(|t| t.narrow(split_dim, rank * chunk, chunk)).collect::<Result<_>>()?;
    Tensor::cat(&mine, concat_dim)
}

pub(crate) fn check_root(root: usize, world: usize) -> Result<()> {
    if root >= world {
        candle_core::bail!("broadcast from rank {root} in a group of {world}");
    }
    Ok(())
}

/// The part of `0..total` that `rank` of `world` holds: contiguous, in rank order, sizes differing by at
/// most one (the first `total % world` ranks hold one more).
pub fn partition(total: usize, world: usize, rank: usize) -> Range<usize> {
    let world = world.max(1);
    let (base, extra) = (total / world, total % world);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_the_range_in_order() {
        for total in [0, 1, 5, 12, 8960] {
            for world in 1..=7 {
                let parts: Vec<_> = (0..world).map(|r| partition(total, world, r)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[world - 1].end, total);
                for pair in parts.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                    assert!(pair[0].len().abs_diff(pair[1].len()) <= 1);
                }
            }
        }
        assert_eq!(partition(12, 4, 3), 9..12);
        assert_eq!(partition(10, 3, 0), 0..4);
    }
}
