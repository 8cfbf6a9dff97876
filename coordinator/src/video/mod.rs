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
/// fast instead of after minutes of encoding.
pub fn encode_mp4(frames: &[RgbFrame], fps: u32) -> Result<Vec<u8>, VideoError> {
    let (width, height) = validate(frames, fps)?;
    let stream = encode::encode_h264(frames, width, height, fps)?;
    mux::write_mp4(&stream, width, height, fps)
}

/// Returns the common frame size once every rule the encoder and the container rely on holds.
fn validate(frames: &[RgbFrame], fps: u32) -> Result<(u32, u32), VideoError> {
    if fps == 0 || fps > MAX_FPS {
        return Err(VideoError::InvalidFps(fps));
    }
    let first = frames.first().ok_or(VideoError::NoFrames)?;
    let (width, height) = (first.width, first.height);
    if width == 0 || height == 0 || width % 2 != 0 || height % 2 != 0 {
        return Err(VideoError::InvalidSize { width, height });
    }
    if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
        return Err(VideoError::TooLarge { width, height });
    }
    // The size limits above keep this product far inside usize, even on 32-bit targets.
    let expected = width as usize * height as usize * 3;
    for (index, frame) in frames.iter().enumerate() {
        if (frame.width, frame.height) != (width, height) {
            return Err(VideoError::SizeMismatch {
                index,
                width: frame.width,
                height: frame.height,
                first_width: width,
                first_height: height,
            });
        }
        if frame.data.len() != expected {
            return Err(VideoError::DataLength { index, width, height, expected, actual: frame.data.len() });
        }
    }
    Ok((width, height))
}
