//! The little CPU parallelism the VAE kernels need: independent work items on rayon's pool (the one
//! candle uses), each thread writing its own disjoint part of one output buffer.

use std::ops::Range;

use rayon::prelude::*;

/// A raw pointer to an output buffer that threads write disjoint parts of.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);

// SAFETY: users guarantee that concurrent writers touch disjoint elements and that the buffer outlives
// the parallel loop (every use is inside `run_jobs`, which returns only when all jobs are done).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// # Safety
    /// `off + len` must lie inside the buffer and no other thread may access those elements meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, off: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// Runs `job(i, scratch)` for every `i < jobs` on rayon's pool (load-balanced by work stealing).
/// Scratch space is created once per piece rayon splits the range into and reused across its items.
pub(crate) fn run_jobs<S: Default>(jobs: usize, job: impl Fn(usize, &mut S) + Sync + Send) {
    (0..jobs).into_par_iter().for_each_init(S::default, |scratch, i| job(i, scratch));
}

/// Splits `0..n` into `parts` contiguous ranges of nearly equal length.
pub(crate) fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|i| (i * n / parts)..((i + 1) * n / parts)).collect()
}
