//! Raw RGB video in memory: what scenes render to, what the evaluator reads, what MP4s decode to.

/// Frames of packed RGB bytes, laid out `[frames][height][width][3]`. `data` must hold exactly
/// `frames * height * width * 3` bytes: the accessors slice by that layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl Video {
    /// A black video.
    pub fn new(frames: usize, height: usize, width: usize) -> Self {
        Video { frames, height, width, data: vec![0; frames * height * width * 3] }
    }

    /// Bytes in one frame.
    pub fn frame_len(&self) -> usize {
        self.height * self.width * 3
    }

    pub fn frame(&self, f: usize) -> &[u8] {
        let len = self.frame_len();
        &self.data[f * len..(f + 1) * len]
    }

    pub fn frame_mut(&mut self, f: usize) -> &mut [u8] {
        let len = self.frame_len();
        &mut self.data[f * len..(f + 1) * len]
    }

    pub fn pixel(&self, f: usize, y: usize, x: usize) -> [u8; 3] {
        let at = ((f * self.height + y) * self.width + x) * 3;
        [self.data[at], self.data[at + 1], self.data[at + 2]]
    }
}
