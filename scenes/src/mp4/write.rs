//! Encodes a [`Video`] as H.264 (OpenH264, Baseline) inside an MP4 (the `mp4` crate).
//!
//! This exists so tests and experiments can put rendered scenes through the same kind of lossy
//! round trip the farm's videos go through; the farm's own muxer lives in the coordinator.

use crate::error::Error;
use crate::video::Video;
use mp4::{AvcConfig, Bytes, FourCC, MediaConfig, Mp4Config, Mp4Sample, Mp4Writer, TrackConfig, TrackType};
use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, Profile, RateControlMode, SpsPpsStrategy};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use openh264::{OpenH264API, Timestamp};
use std::io::Cursor;
use std::path::Path;

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
/// Track ticks per frame, so every integer frame rate has an exact frame duration.
const TICKS_PER_FRAME: u32 = 1000;

/// Encodes and writes `video` at `fps` frames per second; errors name the file.
pub fn write_video(path: impl AsRef<Path>, video: &Video, fps: u32) -> Result<(), Error> {
    let path = path.as_ref();
    let bytes = encode_mp4(video, fps).map_err(|e| e.in_file(path))?;
    std::fs::write(path, bytes).map_err(|e| Error::from(e).in_file(path))
}

/// Encodes `video` into MP4 bytes in memory.
pub fn encode_mp4(video: &Video, fps: u32) -> Result<Vec<u8>, Error> {
    let (w, h) = (video.width, video.height);
    // 4:2:0 chroma needs even sizes; the sample entry stores 16-bit sizes.
    if video.frames == 0 || w == 0 || h == 0 || !w.is_multiple_of(2) || !h.is_multiple_of(2) || w > 4096 || h > 4096 {
        return Err(Error::Encode(format!("{} frames of {w}x{h}: need frames, even sizes up to 4096", video.frames)));
    }
    if fps == 0 || fps > 1000 {
        return Err(Error::Encode(format!("frame rate {fps} is outside 1..=1000")));
    }
    if video.data.len() != video.frames * video.frame_len() {
        return Err(Error::Encode(format!(
            "{} bytes do not make {} frames of {w}x{h} RGB",
            video.data.len(),
            video.frames
        )));
    }
    let stream = encode_h264(video, fps)?;
    mux(stream, w as u16, h as u16, fps)
}

/// An H.264 stream split the way MP4 stores it: parameter sets apart, one sample per picture.
struct Stream {
    sps: Vec<u8>,
    pps: Vec<u8>,
    /// Length-prefixed NAL units of each picture, and whether it is an IDR picture.
    samples: Vec<(Vec<u8>, bool)>,
}

fn encode_h264(video: &Video, fps: u32) -> Result<Stream, Error> {
    let encode_err = |e: openh264::Error| Error::Encode(e.to_string());
    let pixels_per_second = (video.width * video.height) as u64 * u64::from(fps);
    let config = EncoderConfig::new()
        .num_threads(1)
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .bitrate(BitRate::from_bps(pixels_per_second.clamp(1_000_000, 200_000_000) as u32))
        // No rate control: OpenH264's fixed default quantiser (QP 26), a realistic amount of codec
        // noise, and no "bitrate can't be controlled" warning on stderr for every video.
        .rate_control_mode(RateControlMode::Off)
        .skip_frames(false)
        // Background detection lets slowly moving objects freeze for a frame or two (their
        // macroblocks get skipped), which would read as motion that is not in the video.
        .background_detection(false)
        .profile(Profile::Baseline)
        .sps_pps_strategy(SpsPpsStrategy::ConstantId);
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config).map_err(encode_err)?;
    let mut stream = Stream { sps: Vec::new(), pps: Vec::new(), samples: Vec::with_capacity(video.frames) };
    for f in 0..video.frames {
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(video.frame(f), (video.width, video.height)));
        let millis = f as u64 * 1000 / u64::from(fps);
        let bitstream = encoder.encode_at(&yuv, Timestamp::from_millis(millis)).map_err(encode_err)?;
        let (mut sample, mut idr) = (Vec::new(), false);
        for layer in (0..bitstream.num_layers()).filter_map(|i| bitstream.layer(i)) {
            for nal in (0..layer.nal_count()).filter_map(|i| layer.nal_unit(i)) {
                let nal = nal.strip_prefix(&[0, 0, 0, 1]).or_else(|| nal.strip_prefix(&[0, 0, 1])).unwrap_or(nal);
                let Some(&header) = nal.first() else { continue };
                match header & 0x1f {
                    // MP4 keeps one copy of each parameter set in avcC; the encoder repeats them per IDR.
                    NAL_SPS => stream.sps = nal.to_vec(),
                    NAL_PPS => stream.pps = nal.to_vec(),
                    kind => {
                        idr |= kind == NAL_IDR;
                        sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        sample.extend_from_slice(nal);
                    }
                }
            }
        }
        if sample.is_empty() {
            return Err(Error::Encode(format!("frame {f}: the encoder produced no picture")));
        }
        stream.samples.push((sample, idr));
    }
    if stream.sps.len() < 4 || stream.pps.is_empty() {
        return Err(Error::Encode("the encoder emitted no SPS/PPS".into()));
    }
    Ok(stream)
}

fn mux(stream: Stream, width: u16, height: u16, fps: u32) -> Result<Vec<u8>, Error> {
    let mux_err = |e: mp4::Error| Error::Encode(format!("muxing: {e}"));
    let brand = |s: &[u8; 4]| FourCC { value: *s };
    let timescale = fps * TICKS_PER_FRAME;
    let config = Mp4Config {
        major_brand: brand(b"isom"),
        minor_version: 512,
        compatible_brands: vec![brand(b"isom"), brand(b"iso2"), brand(b"avc1"), brand(b"mp41")],
        timescale,
    };
    let mut writer = Mp4Writer::write_start(Cursor::new(Vec::new()), &config).map_err(mux_err)?;
    writer
        .add_track(&TrackConfig {
            track_type: TrackType::Video,
            timescale,
            language: "und".into(),
            media_conf: MediaConfig::AvcConfig(AvcConfig {
                width,
                height,
                seq_param_set: stream.sps,
                pic_param_set: stream.pps,
            }),
        })
        .map_err(mux_err)?;
    for (index, (data, is_sync)) in stream.samples.into_iter().enumerate() {
        let sample = Mp4Sample {
            start_time: index as u64 * u64::from(TICKS_PER_FRAME),
            duration: TICKS_PER_FRAME,
            // Baseline has no B-frames: display order is decode order.
            rendering_offset: 0,
            is_sync,
            bytes: Bytes::from(data),
        };
        writer.write_sample(1, &sample).map_err(mux_err)?;
    }
    writer.write_end().map_err(mux_err)?;
    Ok(writer.into_writer().into_inner())
}
