//! The NCCL backend for ranks on CUDA devices (through cudarc, as candle's `nccl` feature builds it).
//!
//! The group's unique id is made once in this process and handed to each rank thread, which creates its
//! communicator on its device's stream (no files, no network rendezvous). Operations run on that stream,
//! in order with the rank's kernels.
//!
//! `abort` marks the group failed so that every later operation fails at once; the NCCL communicator
//! itself is aborted when the rank thread drops it (cudarc aborts on drop), which happens when the group
//! is re-formed. A rank that dies inside a collective can leave its peers' kernels waiting until then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use super::{all_to_all_chunk, all_to_all_share, check_root, Collective, CollectiveStats};
use crate::model::ModelError;

/// What a rank thread needs to join its group.
pub struct NcclSeed {
    id: Id,
    rank: usize,
    world: usize,
}

impl NcclSeed {
    /// One seed per rank of a new group of `world`.
    pub fn for_group(world: usize) -> std::result::Result<Vec<NcclSeed>, ModelError> {
        let id = Id::new().map_err(|e| ModelError::input("devices", format!("creating an NCCL id: {e:?}")))?;
        Ok((0..world).map(|rank| NcclSeed { id, rank, world }).collect())
    }

    /// Creates this rank's communicator on `device`'s stream; blocks until every rank has joined.
    pub fn open(self, device: &Device) -> std::result::Result<Arc<dyn Collective>, ModelError> {
        let Device::Cuda(cuda) = device else {
            return Err(ModelError::input("devices", "an NCCL rank needs a CUDA device"));
        };
        let comm = Comm::from_rank(cuda.cuda_stream(), self.rank, self.world, self.id)
            .map_err(|e| ModelError::input("devices", format!("rank {}: NCCL init failed: {e:?}", self.rank)))?;
        Ok(Arc::new(NcclCollective {
            comm: Arc::new(SharedComm(comm)),
            rank: self.rank,
            world: self.world,
            aborted: Arc::new(AtomicBool::new(false)),
            reason: Mutex::new(String::new()),
            stats: CollectiveStats::default(),
        }))
    }
}

/// The communicator, used only from its rank's thread (every operation is called there; the handle is
/// shared with the group only to read counters and to mark it aborted).
struct SharedComm(Comm);

// SAFETY: NCCL communicators may be used from any thread as long as calls on one communicator are not
// concurrent; every collective call on this one is made by its rank's thread.
unsafe impl Send for SharedComm {}
unsafe impl Sync for SharedComm {}

pub struct NcclCollective {
    comm: Arc<SharedComm>,
    rank: usize,
    world: usize,
    aborted: Arc<AtomicBool>,
    reason: Mutex<String>,
    stats: CollectiveStats,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

impl NcclCollective {
    fn check(&self) -> Result<()> {
        if self.aborted.load(Ordering::SeqCst) {
            let reason = self.reason.lock().map(|r| r.clone()).unwrap_or_default();
            candle_core::bail!("collective aborted: {reason}");
        }
        Ok(())
    }

    /// Every rank's `x`, in rank order.
    fn gather_parts(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut stacked = vec![self.world];
        stacked.extend_from_slice(x.dims());
        let stacked = self.run(x, Op::AllGather)?.reshape(stacked)?;
        (0..self.world).map(|r| stacked.get(r)).collect()
    }

    fn run(&self, x: &Tensor, op: Op) -> Result<Tensor> {
        self.check()?;
        x.contiguous()?.apply_op1_no_bwd(&NcclOp { comm: self.comm.clone(), op, world: self.world })
    }
}

#[derive(Clone, Copy)]
enum Op {
    AllReduceSum,
    /// Rank-major: the result is `[world · n]` for an input of `n` elements.
    AllGather,
    Broadcast(usize),
}

struct NcclOp {
    comm: Arc<SharedComm>,
    op: Op,
    world: usize,
}

fn nccl_err(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("NCCL: {e:?}"))
}

impl NcclOp {
    fn typed<T: CudaDType + cudarc_types::Nccl>(
        &self,
        s: &CudaStorage,
        start: usize,
        end: usize,
    ) -> Result<CudaStorage> {
        let dev = s.device().clone();
        let src = s.as_cuda_slice::<T>()?.slice(start..end);
        let n = end - start;
        let comm = &self.comm.0;
        let out_len = match self.op {
            Op::AllGather => n * self.world,
            _ => n,
        };
        // SAFETY: NCCL writes every element of the buffer before anything reads it.
        let mut dst = unsafe { dev.alloc::<T>(out_len) }?;
        match self.op {
            Op::AllReduceSum => comm.all_reduce(&src, &mut dst, &ReduceOp::Sum).map(drop).map_err(nccl_err)?,
            Op::AllGather => comm.all_gather(&src, &mut dst).map(drop).map_err(nccl_err)?,
            Op::Broadcast(root) => comm.broadcast(Some(&src), &mut dst, root as i32).map(drop).map_err(nccl_err)?,
        }
        Ok(CudaStorage::wrap_cuda_slice(dst, dev))
    }
}

/// The element types NCCL reduces that the model uses.
mod cudarc_types {
    pub trait Nccl:
        candle_core::cuda_backend::cudarc::nccl::safe::NcclType + candle_core::cuda_backend::cudarc::driver::DeviceRepr
    {
    }
    impl Nccl for f32 {}
    impl Nccl for half::bf16 {}
    impl Nccl for half::f16 {}
}

impl CustomOp1 for NcclOp {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL operations take CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL operations take contiguous tensors");
        };
        let out = match s.dtype() {
            DType::F32 => self.typed::<f32>(s, start, end)?,
            DType::BF16 => self.typed::<half::bf16>(s, start, end)?,
            DType::F16 => self.typed::<half::f16>(s, start, end)?,
            other => candle_core::bail!("NCCL operations on {other:?} are not supported"),
        };
        let shape = match self.op {
            Op::AllGather => Shape::from(vec![self.world * l.shape().elem_count()]),
            _ => l.shape().clone(),
        };
        Ok((out, shape))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        self.stats.count_all_reduce(x);
        if self.world == 1 {
            return Ok(x.clone());
        }
        self.run(x, Op::AllReduceSum)
    }

    fn all_gather(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        if self.world == 1 {
            return Ok(x.clone());
        }
        Tensor::cat(&self.gather_parts(x)?, dim)
    }

    /// Through an all-gather: correct, though it moves `world` times the data a true all-to-all would
    /// (the transformer does not use it).
    fn all_to_all(&self, x: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor> {
        let chunk = all_to_all_chunk(x, split_dim, self.world)?;
        if self.world == 1 {
            return Ok(x.clone());
        }
        all_to_all_share(&self.gather_parts(x)?, self.rank, chunk, split_dim, concat_dim)
    }

    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, self.world)?;
        if self.world == 1 {
            return Ok(x.clone());
        }
        self.run(x, Op::Broadcast(root))
    }

    fn abort(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            if r.is_empty() {
                *r = format!("rank {}: {reason}", self.rank);
            }
        }
        self.aborted.store(true, Ordering::SeqCst);
    }

    fn stats(&self) -> &CollectiveStats {
        &self.stats
    }
}
