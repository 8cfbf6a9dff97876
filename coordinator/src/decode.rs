//! Cutting the finished latent into temporal chunks for decoding. The VAE is causal: a frame's pixels
//! depend on the latent frames before it through the decoder's caches. Each chunk after the first is
//! therefore decoded with a few latent frames of context in front, whose own output is thrown away, so
//! that the caches are warm where the chunk starts and no border shows between chunks.

/// Latent frames `[start, end)` to produce, decoded after `context` frames before `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub start: usize,
    pub end: usize,
    pub context: usize,
}

/// Chunks of `chunk` latent frames (the last may be shorter) covering `frames`, each with up to
/// `context` frames of context (as many as exist before it).
pub fn plan_chunks(frames: usize, chunk: usize, context: usize) -> Vec<Chunk> {
    let chunk = chunk.max(1);
    (0..frames)
        .step_by(chunk)
        .map(|start| Chunk { start, end: (start + chunk).min(frames), context: context.min(start) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_latent_with_context_where_there_is_some() {
        let chunks = plan_chunks(10, 4, 2);
        assert_eq!(
            chunks,
            vec![
                Chunk { start: 0, end: 4, context: 0 },
                Chunk { start: 4, end: 8, context: 2 },
                Chunk { start: 8, end: 10, context: 2 },
            ]
        );
        assert_eq!(plan_chunks(3, 8, 2), vec![Chunk { start: 0, end: 3, context: 0 }]);
        assert_eq!(plan_chunks(5, 1, 3)[1], Chunk { start: 1, end: 2, context: 1 });
    }
}
