//! Decodes an MP4's H.264 track back to RGB with OpenH264, for tests and quality checks.

use super::probe::{child, first_video_track, sample_ranges, Fields};
use super::{RgbFrame, VideoError};
use openh264::decoder::{DecodedYUV, Decoder};
use openh264::formats::YUVSource;

/// Decodes every frame of the first H.264 video track back to RGB (openh264's decoder), for tests
/// and quality checks.
pub fn decode_mp4(bytes: &[u8]) -> Result<Vec<RgbFrame>, VideoError> {
    let track = first_video_track(bytes)?;
    if &track.codec != b"avc1" {
        let codec = track.codec.escape_ascii();
        return Err(VideoError::Unsupported(format!("the video track is '{codec}', not H.264 (avc1)")));
    }
    // avc1 is a visual sample entry: 78 bytes of fixed fields, then boxes, among them avcC.
    let boxes = track.entry.get(78..).ok_or_else(|| VideoError::Parse("'avc1' is truncated".into()))?;
    let mut avcc = Fields::new(child(boxes, b"avcC")?, "avcC");
    avcc.skip(4)?;
    let length_size = usize::from(avcc.u8()? & 3) + 1;

    // Parameter sets travel in avcC; the decoder wants them in-band, before the first picture.
    let mut packet = Vec::new();
    for mask in [0x1f, 0xff] {
        for _ in 0..avcc.u8()? & mask {
            let len = usize::from(avcc.u16()?);
            push_annex_b(&mut packet, avcc.take(len)?);
        }
    }
    let ranges = sample_ranges(&track, bytes.len())?;
    let mut decoder = Decoder::new().map_err(|e| VideoError::Decoder(format!("cannot create decoder: {e}")))?;
    let mut frames = Vec::with_capacity(ranges.len());
    for (index, range) in ranges.iter().enumerate() {
        let mut sample = Fields::new(&bytes[range.clone()], "sample");
        while !sample.rest.is_empty() {
            let prefix = sample.take(length_size)?;
            let len = prefix.iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
            push_annex_b(&mut packet, sample.take(len)?);
        }
        let decoded = decoder.decode(&packet).map_err(|e| VideoError::Decoder(format!("sample {index}: {e}")))?;
        if let Some(yuv) = decoded {
            frames.push(to_rgb(&yuv));
        }
        packet.clear();
    }
    let rest = decoder.flush_remaining().map_err(|e| VideoError::Decoder(format!("flushing: {e}")))?;
    frames.extend(rest.iter().map(to_rgb));
    if frames.len() != ranges.len() {
        return Err(VideoError::Decoder(format!("{} samples gave {} pictures", ranges.len(), frames.len())));
    }
    Ok(frames)
}

fn push_annex_b(packet: &mut Vec<u8>, nal: &[u8]) {
    packet.extend_from_slice(&[0, 0, 0, 1]);
    packet.extend_from_slice(nal);
}

/// Uses OpenH264's BT.601 limited-range conversion, the inverse of `rgb_to_i420`.
fn to_rgb(yuv: &DecodedYUV<'_>) -> RgbFrame {
    let (width, height) = yuv.dimensions();
    let mut data = vec![0u8; width * height * 3];
    yuv.write_rgb8(&mut data);
    RgbFrame { width: width as u32, height: height as u32, data }
}
