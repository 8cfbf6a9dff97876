//! The little CPU parallelism the VAE kernels need: split a range of independent work items over
//! candle's thread count, each thread writing its own disjoint part of one output buffer.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A raw pointer to an output buffer that threads write disjoint parts of.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);

// SAFETY: users guarantee that concurrent writers touch disjoint elements and that the buffer outlives
// the scoped threads (every use is inside `std::thread::scope`, which joins before returning).
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

/// Runs `job(i, scratch)` for every `i < jobs` on up to `threads` threads, handing out items one at a
/// time (items may differ in cost). Each thread gets its own `S::default()` scratch space.
pub(crate) fn run_jobs<S: Default>(jobs: usize, threads: usize, job: impl Fn(usize, &mut S) + Sync) {
    let next = AtomicUsize::new(0);
    let work = || {
        let mut scratch = S::default();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= jobs {
                break;
            }
            job(i, &mut scratch);
        }
    };
    let threads = threads.clamp(1, jobs.max(1));
    if threads == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(work);
            }
        });
    }
}

/// Splits `0..n` into `parts` contiguous ranges of nearly equal length.
pub(crate) fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|i| (i * n / parts)..((i + 1) * n / parts)).collect()
}
