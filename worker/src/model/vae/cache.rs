//! The causal cache that lets the VAE run a video a chunk at a time with the same result as running it
//! whole: every temporal convolution keeps the last frames of its input, and the next chunk's call sees
//! them as its past. This is the reference's `feat_cache` / `feat_idx` list, with the string sentinel
//! `"Rep"` replaced by an explicit state.
//!
//! Slots are handed out in call order: the network visits its temporal layers in the same order on
//! every chunk, so the n-th request of a chunk is always the same layer. Its size depends on the frame
//! size and the network, never on the video's length.

use candle_core::{Result, Tensor};

use super::conv::Conv;

/// What one temporal layer remembers between chunks.
#[derive(Debug, Default)]
pub(crate) enum Slot {
    /// No chunk has passed through the layer yet.
    #[default]
    Fresh,
    /// A chunk has passed but left no frames to carry (the temporal upsampler's first chunk, which it
    /// passes through without its time convolution: the reference's `"Rep"`).
    Started,
    /// The last input frames of the previous chunks, `[B, C, <=2, H, W]`.
    Frames(Tensor),
}

/// One slot per temporal layer, in visiting order, and a cursor rewound at each chunk.
#[derive(Debug, Default)]
pub(crate) struct CausalCache {
    slots: Vec<Slot>,
    pos: usize,
}

impl CausalCache {
    /// Starts a new chunk: the next `next()` is the first layer's slot again.
    pub fn rewind(&mut self) {
        self.pos = 0;
    }

    /// The slot of the next temporal layer of this chunk.
    pub fn next(&mut self) -> &mut Slot {
        if self.pos == self.slots.len() {
            self.slots.push(Slot::Fresh);
        }
        self.pos += 1;
        &mut self.slots[self.pos - 1]
    }

    /// Runs a causal convolution on this chunk's `x` with the frames the previous chunks left, and
    /// keeps the last `conv.causal_pad()` frames of the (carried ++ x) sequence for the next chunk.
    pub fn conv(&mut self, conv: &Conv, x: &Tensor) -> Result<Tensor> {
        self.conv_add(conv, x, None)
    }

    /// [`conv`](Self::conv) with `residual` added to the output.
    pub fn conv_add(&mut self, conv: &Conv, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let slot = self.next();
        let past = match slot {
            Slot::Frames(t) => Some(&*t),
            Slot::Fresh | Slot::Started => None,
        };
        let y = conv.forward_add(past, x, residual)?;
        *slot = Slot::Frames(tail(past, x, conv.causal_pad())?);
        Ok(y)
    }

    /// Bytes held by the carried frames (for memory accounting in benchmarks).
    pub fn bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Frames(t) => t.elem_count() * t.dtype().size_in_bytes(),
                _ => 0,
            })
            .sum()
    }
}

/// The last `n` frames (dim 2) of `past ++ x`, or all of them if there are fewer, as a fresh tensor that
/// does not keep `x`'s storage alive.
pub(crate) fn tail(past: Option<&Tensor>, x: &Tensor, n: usize) -> Result<Tensor> {
    let t = x.dim(2)?;
    if t >= n || past.is_none() {
        let k = n.min(t);
        return x.narrow(2, t - k, k)?.force_contiguous();
    }
    let mut parts = Vec::with_capacity(2);
    if let Some(p) = past {
        let need = (n - t).min(p.dim(2)?);
        parts.push(p.narrow(2, p.dim(2)? - need, need)?);
    }
    parts.push(x.clone());
    Tensor::cat(&parts, 2)?.force_contiguous()
}
