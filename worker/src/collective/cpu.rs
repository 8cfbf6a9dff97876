//! The in-process backend: the ranks are threads of this process and exchange tensors through shared
//! memory. Each operation is one round in which every rank deposits its tensor; the last to arrive
//! publishes the set, and each rank computes its own result from it (in rank order, so every rank's
//! all-reduce gives the same bits).
//!
//! CPU tensors are reference counted, so a round moves no data: ranks read each other's tensors.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use candle_core::{Result, Tensor};

use super::{all_to_all_chunk, all_to_all_share, check_root, Collective, CollectiveStats};

/// One rank's handle on an in-process group.
#[derive(Debug)]
pub struct CpuCollective {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
    stats: CollectiveStats,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<Round>,
    published: Condvar,
}

#[derive(Debug)]
struct Round {
    /// Completed rounds.
    number: u64,
    deposited: Vec<Option<Tensor>>,
    count: usize,
    /// The last completed round's tensors, by rank.
    published: Arc<Vec<Tensor>>,
    aborted: Option<String>,
}

impl CpuCollective {
    /// The handles of a new group of `world` ranks, rank `r` at index `r`.
    pub fn group(world: usize) -> Vec<CpuCollective> {
        let world = world.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(Round {
                number: 0,
                deposited: vec![None; world],
                count: 0,
                published: Arc::new(Vec::new()),
                aborted: None,
            }),
            published: Condvar::new(),
        });
        (0..world)
            .map(|rank| CpuCollective { rank, world, shared: shared.clone(), stats: CollectiveStats::default() })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        // Every update of the round is a few assignments that cannot panic halfway.
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deposits `x` and waits for every rank's tensor of this round.
    fn exchange(&self, x: &Tensor) -> Result<Arc<Vec<Tensor>>> {
        let mut round = self.lock();
        if let Some(reason) = &round.aborted {
            candle_core::bail!("collective aborted: {reason}");
        }
        let number = round.number;
        round.deposited[self.rank] = Some(x.clone());
        round.count += 1;
        if round.count == self.world {
            let tensors: Vec<Tensor> = round.deposited.iter_mut().filter_map(Option::take).collect();
            round.published = Arc::new(tensors);
            round.count = 0;
            round.number += 1;
            self.shared.published.notify_all();
            return Ok(round.published.clone());
        }
        // The next round cannot complete without this rank, so the published set is still this round's
        // when it wakes.
        loop {
            if round.number != number {
                return Ok(round.published.clone());
            }
            if let Some(reason) = &round.aborted {
                candle_core::bail!("collective aborted: {reason}");
            }
            round = self.shared.published.wait(round).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn same_shapes(&self, op: &str, parts: &[Tensor]) -> Result<()> {
        let first = &parts[0];
        if let Some((rank, other)) =
            parts.iter().enumerate().find(|(_, t)| t.dims() != first.dims() || t.dtype() != first.dtype())
        {
            candle_core::bail!(
                "{op}: rank {rank} gave {:?} {:?}, rank 0 gave {:?} {:?}",
                other.dims(),
                other.dtype(),
                first.dims(),
                first.dtype()
            );
        }
        Ok(())
    }
}

impl Collective for CpuCollective {
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
        let parts = self.exchange(x)?;
        self.same_shapes("all-reduce", &parts)?;
        let mut sum = parts[0].clone();
        for part in &parts[1..] {
            sum = (sum + part)?;
        }
        Ok(sum)
    }

    fn all_gather(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        if self.world == 1 {
            return Ok(x.clone());
        }
        let parts = self.exchange(x)?;
        Tensor::cat(&parts, dim)
    }

    fn all_to_all(&self, x: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor> {
        let chunk = all_to_all_chunk(x, split_dim, self.world)?;
        if self.world == 1 {
            return Ok(x.clone());
        }
        let parts = self.exchange(x)?;
        self.same_shapes("all-to-all", &parts)?;
        all_to_all_share(&parts, self.rank, chunk, split_dim, concat_dim)
    }

    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, self.world)?;
        if self.world == 1 {
            return Ok(x.clone());
        }
        let parts = self.exchange(x)?;
        self.same_shapes("broadcast", &parts)?;
        Ok(parts[root].clone())
    }

    fn abort(&self, reason: &str) {
        let mut round = self.lock();
        if round.aborted.is_none() {
            round.aborted = Some(format!("rank {}: {reason}", self.rank));
        }
        self.shared.published.notify_all();
    }

    fn stats(&self) -> &CollectiveStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Runs `f` on every rank of a new group, one thread each; results by rank.
    fn on_ranks<T: Send>(world: usize, f: impl Fn(&CpuCollective) -> T + Sync) -> Vec<T> {
        let comms = CpuCollective::group(world);
        std::thread::scope(|s| {
            let handles: Vec<_> = comms.iter().map(|c| s.spawn(|| f(c))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn ranked(rank: usize, shape: (usize, usize)) -> Tensor {
        let n = shape.0 * shape.1;
        let values: Vec<f32> = (0..n).map(|i| (rank * 100 + i) as f32).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn all_reduce_sums_over_ranks_many_times() {
        for world in 1..=6 {
            let results = on_ranks(world, |c| {
                (0..50)
                    .map(|round| c.all_reduce_sum(&(ranked(c.rank(), (2, 3)) * round as f64).unwrap()).unwrap())
                    .last()
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap()
            });
            let expected: Vec<Vec<f32>> = (0..2)
                .map(|r| (0..3).map(|c| 49.0 * (0..world).map(|k| (k * 100 + r * 3 + c) as f32).sum::<f32>()).collect())
                .collect();
            for got in results {
                assert_eq!(got, expected, "world {world}");
            }
        }
    }

    #[test]
    fn gather_scatter_and_broadcast() {
        let results = on_ranks(3, |c| {
            let x = ranked(c.rank(), (3, 2));
            let gathered = c.all_gather(&x, 1).unwrap();
            let swapped = c.all_to_all(&x, 0, 1).unwrap();
            let from_two = c.broadcast(&x, 2).unwrap();
            (gathered, swapped, from_two)
        });
        for (rank, (gathered, swapped, from_two)) in results.into_iter().enumerate() {
            let all: Vec<Tensor> = (0..3).map(|r| ranked(r, (3, 2))).collect();
            let expected = Tensor::cat(&all, 1).unwrap();
            assert_eq!(gathered.to_vec2::<f32>().unwrap(), expected.to_vec2::<f32>().unwrap());
            // Row `rank` of every rank's tensor, side by side.
            let rows: Vec<Tensor> = all.iter().map(|t| t.narrow(0, rank, 1).unwrap()).collect();
            assert_eq!(swapped.to_vec2::<f32>().unwrap(), Tensor::cat(&rows, 1).unwrap().to_vec2::<f32>().unwrap());
            assert_eq!(from_two.to_vec2::<f32>().unwrap(), all[2].to_vec2::<f32>().unwrap());
        }
    }

    #[test]
    fn abort_wakes_waiting_ranks_and_fails_later_calls() {
        let results = on_ranks(3, |c| {
            let x = ranked(c.rank(), (1, 1));
            if c.rank() == 1 {
                std::thread::sleep(std::time::Duration::from_millis(50));
                c.abort("out of memory");
                return Err("aborted itself".to_string());
            }
            c.all_reduce_sum(&x).map_err(|e| e.to_string())
        });
        for (rank, result) in results.iter().enumerate() {
            let err = result.as_ref().unwrap_err();
            if rank != 1 {
                assert!(err.contains("rank 1: out of memory"), "{err}");
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error_not_a_wrong_sum() {
        let results = on_ranks(2, |c| c.all_reduce_sum(&ranked(c.rank(), (1, c.rank() + 1))).map(|_| ()));
        assert!(results.iter().all(|r| r.as_ref().unwrap_err().to_string().contains("rank 1 gave [1, 2]")));
    }

    #[test]
    fn stats_count_bytes() {
        let results = on_ranks(2, |c| {
            c.all_reduce_sum(&ranked(c.rank(), (4, 8))).unwrap();
            (c.stats().all_reduces(), c.stats().bytes_all_reduced())
        });
        assert_eq!(results, vec![(1, 128), (1, 128)]);
    }
}
