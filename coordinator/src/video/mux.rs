//! Wraps an H.264 stream in an MP4 container with the `mp4` crate.

use super::encode::H264Stream;
use super::probe::child;
use super::VideoError;
use mp4::{AvcConfig, Bytes, FourCC, MediaConfig, Mp4Config, Mp4Sample, Mp4Writer, TrackConfig, TrackType};
use std::io::Cursor;

/// Ticks per frame. With `timescale = fps * TICKS_PER_FRAME`, every integer frame rate has an exact
/// integer frame duration, so players show exactly `fps` and the duration never drifts.
const TICKS_PER_FRAME: u32 = 1000;

/// Muxes with the movie and the track on the same timescale: `mp4` converts each sample's duration
/// to the movie timescale with truncating integer division, which would otherwise shorten the
/// movie header's duration (e.g. 1000/7000 s per frame becomes 142 ms at 1000 ticks per second).
pub(super) fn write_mp4(stream: H264Stream, width: u32, height: u32, fps: u32) -> Result<Vec<u8>, VideoError> {
    let mux_err = |e: mp4::Error| VideoError::Mux(e.to_string());
    let timescale = fps * TICKS_PER_FRAME;
    let brand = |s: &[u8; 4]| FourCC { value: *s };
    let config = Mp4Config {
        major_brand: brand(b"isom"),
        minor_version: 512,
        compatible_brands: vec![brand(b"isom"), brand(b"iso2"), brand(b"avc1"), brand(b"mp41")],
        timescale,
    };
    let mut writer = Mp4Writer::write_start(Cursor::new(Vec::new()), &config).map_err(mux_err)?;
    let too_big = || VideoError::Mux(format!("frame size {width}x{height} does not fit an MP4 sample entry"));
    let track = TrackConfig {
        track_type: TrackType::Video,
        timescale,
        language: "und".into(),
        media_conf: MediaConfig::AvcConfig(AvcConfig {
            width: u16::try_from(width).map_err(|_| too_big())?,
            height: u16::try_from(height).map_err(|_| too_big())?,
            seq_param_set: stream.sps,
            pic_param_set: stream.pps,
        }),
    };
    writer.add_track(&track).map_err(mux_err)?;
    // Each sample moves into the writer and is dropped once written, so the compressed stream is
    // not held twice over while the file is assembled.
    for (index, sample) in stream.samples.into_iter().enumerate() {
        let mp4_sample = Mp4Sample {
            start_time: index as u64 * u64::from(TICKS_PER_FRAME),
            duration: TICKS_PER_FRAME,
            // Baseline profile has no B-frames: decode order is display order.
            rendering_offset: 0,
            is_sync: sample.is_sync,
            bytes: Bytes::from(sample.data),
        };
        writer.write_sample(1, &mp4_sample).map_err(mux_err)?;
    }
    writer.write_end().map_err(mux_err)?;
    let mut bytes = writer.into_writer().into_inner();
    fix_next_track_id(&mut bytes)?;
    Ok(bytes)
}

/// `mp4` 0.14 leaves `mvhd.next_track_id` at 1 although track 1 exists; ISO 14496-12 wants it
/// above every track id, and strict tools (and any later remux adding a track) rely on that.
/// The field is the last 4 bytes of `mvhd`, whatever its version.
fn fix_next_track_id(bytes: &mut [u8]) -> Result<(), VideoError> {
    let end = {
        let mvhd = child(child(bytes, b"moov")?, b"mvhd")?;
        // Both slices borrow `bytes`, so the offset of mvhd's end is a pointer difference.
        mvhd.as_ptr() as usize - bytes.as_ptr() as usize + mvhd.len()
    };
    let field = end.checked_sub(4).and_then(|start| bytes.get_mut(start..end));
    field.ok_or_else(|| VideoError::Mux("written mvhd is truncated".into()))?.copy_from_slice(&2u32.to_be_bytes());
    Ok(())
}
