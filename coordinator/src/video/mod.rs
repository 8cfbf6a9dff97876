//! Turns rendered RGB frames into a playable H.264 MP4, and reads such files back.
//!
//! Everything here is pure Rust plus the OpenH264 sources that the `openh264` crate compiles in, so
//! a worker needs no system ffmpeg. Output is deterministic: the same frames and frame rate give the
//! same bytes, because the encoder runs on one thread, is fed timestamps derived from the frame
//! index, and the container carries no wall-clock times.

mod decode;
mod encode;
mod mux;
mod probe;
#[cfg(test)]
mod tests;

pub use decode::decode_mp4;
pub use probe::probe_mp4;

/// The highest frame rate accepted; far above any model's output, it only guards the timescale
/// arithmetic (`fps * 1000` must fit in 32 bits with room to spare).
pub const MAX_FPS: u32 = 1000;

/// OpenH264 refuses pictures beyond level 5.2, i.e. larger than 3840×2160 in either orientation.
const MAX_LONG_SIDE: u32 = 3840;
const MAX_SHORT_SIDE: u32 = 2160;

/// One decoded frame: height × width × 3 bytes, RGB, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// What an MP4 holds, read back from its bytes (for tests and the CLI): its first video track.
#[derive(Debug, Clone, PartialEq)]
pub struct Mp4Info {
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub fps: f64,
    /// The sample entry's four-character code, e.g. "avc1".
    pub codec: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("no frames to encode: a video needs at least one frame")]
    NoFrames,
    #[error("invalid frame rate {0} fps: it must be between 1 and {MAX_FPS}")]
    InvalidFps(u32),
    #[error("invalid frame size {width}x{height}: H.264 4:2:0 needs a non-zero, even width and height")]
    InvalidSize { width: u32, height: u32 },
    #[error(
        "frame size {width}x{height} is too large: the encoder supports at most \
         {MAX_LONG_SIDE}x{MAX_SHORT_SIDE} (or {MAX_SHORT_SIDE}x{MAX_LONG_SIDE})"
    )]
    TooLarge { width: u32, height: u32 },
    #[error("frame {index} is {width}x{height}, but frame 0 is {first_width}x{first_height}: all frames must match")]
    SizeMismatch { index: usize, width: u32, height: u32, first_width: u32, first_height: u32 },
    #[error("frame {index} holds {actual} bytes, but {width}x{height} RGB needs {expected}")]
    DataLength { index: usize, width: u32, height: u32, expected: usize, actual: usize },
    #[error("H.264 encoder error: {0}")]
    Encoder(String),
    #[error("H.264 decoder error: {0}")]
    Decoder(String),
    #[error("MP4 muxing error: {0}")]
    Mux(String),
    #[error("cannot parse MP4: {0}")]
    Parse(String),
    #[error("unsupported video: {0}")]
    Unsupported(String),
}

/// Encodes frames as H.264 and muxes them into an MP4 with one video track at `fps` frames per second.
///
/// All inputs are checked before the encoder starts, so a bad frame late in a long render fails
/// fast instead of after minutes of encoding. Holding every frame costs memory in proportion to the
/// video's length; [`Mp4Writer`] takes frames one at a time and gives the same bytes.
pub fn encode_mp4(frames: &[RgbFrame], fps: u32) -> Result<Vec<u8>, VideoError> {
    let (width, height) = validate(frames, fps)?;
    let mut writer = Mp4Writer::new(width, height, fps)?;
    for frame in frames {
        writer.push(frame)?;
    }
    writer.finish()
}

/// Encodes frames one at a time; only the compressed stream is kept, so memory grows with the
/// video's compressed size, not with its raw frames. Output is byte-identical to [`encode_mp4`]
/// given the same frames.
///
/// The writer is `Send`, so it may be moved between threads between calls (e.g. into successive
/// `spawn_blocking` closures); the encoder runs on whichever thread calls [`Mp4Writer::push`].
pub struct Mp4Writer {
    encoder: encode::H264Encoder,
    width: u32,
    height: u32,
    fps: u32,
    /// Set when the encoder failed mid-frame: its state no longer matches the stream, so the
    /// writer refuses further work rather than produce a video with a frame missing.
    failed: bool,
}

impl Mp4Writer {
    /// Checks the frame size and rate as [`encode_mp4`] does (same errors) and starts the encoder.
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self, VideoError> {
        check_fps(fps)?;
        check_size(width, height)?;
        let encoder = encode::H264Encoder::new(width, height, fps)?;
        Ok(Self { encoder, width, height, fps, failed: false })
    }

    /// Encodes one frame. A frame of the wrong size or data length is refused as [`encode_mp4`]
    /// would refuse it (`index` = frames pushed so far) and leaves the writer usable; an encoder
    /// error leaves it failed, and every later call returns an error.
    pub fn push(&mut self, frame: &RgbFrame) -> Result<(), VideoError> {
        self.check_usable()?;
        check_frame(self.encoder.frames(), frame, self.width, self.height)?;
        let result = self.encoder.encode(&frame.data);
        self.failed = result.is_err();
        result
    }

    /// Frames pushed (and encoded) so far.
    pub fn frames(&self) -> usize {
        self.encoder.frames()
    }

    /// Muxes the MP4; [`VideoError::NoFrames`] when nothing was pushed.
    pub fn finish(self) -> Result<Vec<u8>, VideoError> {
        self.check_usable()?;
        if self.encoder.frames() == 0 {
            return Err(VideoError::NoFrames);
        }
        let stream = self.encoder.finish()?;
        mux::write_mp4(stream, self.width, self.height, self.fps)
    }

    fn check_usable(&self) -> Result<(), VideoError> {
        if self.failed {
            return Err(VideoError::Encoder(format!(
                "frame {} failed to encode earlier; the writer cannot continue",
                self.encoder.frames()
            )));
        }
        Ok(())
    }
}

/// Returns the common frame size once every rule the encoder and the container rely on holds.
fn validate(frames: &[RgbFrame], fps: u32) -> Result<(u32, u32), VideoError> {
    check_fps(fps)?;
    let first = frames.first().ok_or(VideoError::NoFrames)?;
    let (width, height) = (first.width, first.height);
    check_size(width, height)?;
    for (index, frame) in frames.iter().enumerate() {
        check_frame(index, frame, width, height)?;
    }
    Ok((width, height))
}

fn check_fps(fps: u32) -> Result<(), VideoError> {
    if fps == 0 || fps > MAX_FPS {
        return Err(VideoError::InvalidFps(fps));
    }
    Ok(())
}

fn check_size(width: u32, height: u32) -> Result<(), VideoError> {
    if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err(VideoError::InvalidSize { width, height });
    }
    if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
        return Err(VideoError::TooLarge { width, height });
    }
    Ok(())
}

/// Checks frame `index` against the size of the video, which `check_size` has accepted.
fn check_frame(index: usize, frame: &RgbFrame, width: u32, height: u32) -> Result<(), VideoError> {
    if (frame.width, frame.height) != (width, height) {
        return Err(VideoError::SizeMismatch {
            index,
            width: frame.width,
            height: frame.height,
            first_width: width,
            first_height: height,
        });
    }
    // The size limits keep this product far inside usize, even on 32-bit targets.
    let expected = width as usize * height as usize * 3;
    if frame.data.len() != expected {
        return Err(VideoError::DataLength { index, width, height, expected, actual: frame.data.len() });
    }
    Ok(())
}
