//! H.264 MP4 files in and out, through OpenH264 (compiled in by the `openh264` crate, so no
//! system codec is needed).
//!
//! Reading takes any encoder's H.264 track: Baseline, and Main and High with CABAC and B-frames
//! (checked against an x264 High profile file). Writing produces Baseline, for tests.

mod boxes;
mod read;
mod track;
mod write;

pub use read::{decode_mp4, read_video};
pub use write::{encode_mp4, write_video};
