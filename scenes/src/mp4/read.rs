//! Decodes an MP4's H.264 track to RGB frames with OpenH264.

use super::track::{first_avc_track, AvcTrack};
use crate::error::Error;
use crate::video::Video;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use openh264::OpenH264API;
use std::path::Path;

/// Reads and decodes every frame of the file's first video track; errors name the file.
pub fn read_video(path: impl AsRef<Path>) -> Result<Video, Error> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::from(e).in_file(path))?;
    decode_mp4(&bytes).map_err(|e| e.in_file(path))
}

/// Decodes every frame of the first video track of an MP4 held in memory, in presentation order.
pub fn decode_mp4(bytes: &[u8]) -> Result<Video, Error> {
    let track = first_avc_track(bytes)?;
    if track.samples.is_empty() {
        return Err(Error::Unsupported("the video track has no frames".into()));
    }
    // Flushing after every packet (the crate's default) fails on the first B-frame; without it the
    // decoder keeps its reorder buffer and returns pictures in display order, the rest on flush.
    let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
    let mut decoder =
        Decoder::with_api_config(OpenH264API::from_source(), config).map_err(|e| decode_error(&track, 0, e))?;
    let mut pictures: Vec<Picture> = Vec::with_capacity(track.samples.len());
    let mut packet = Vec::new();
    // MP4 keeps SPS and PPS in avcC; the decoder wants them in band, ahead of the first picture.
    for set in &track.parameter_sets {
        push_annex_b(&mut packet, set);
    }
    for (index, range) in track.samples.iter().enumerate() {
        let mut sample = &bytes[range.clone()];
        while !sample.is_empty() {
            let Some((prefix, rest)) = sample.split_at_checked(track.length_size) else {
                return Err(Error::Container(format!("sample {index} ends inside a NAL length")));
            };
            let len = prefix.iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
            let Some((nal, rest)) = rest.split_at_checked(len) else {
                return Err(Error::Container(format!("sample {index} ends inside a NAL unit")));
            };
            push_annex_b(&mut packet, nal);
            sample = rest;
        }
        let decoded = decoder.decode(&packet).map_err(|e| decode_error(&track, index, e))?;
        pictures.extend(decoded.map(|yuv| Picture::from(&yuv)));
        packet.clear();
    }
    let rest = decoder.flush_remaining().map_err(|e| decode_error(&track, track.samples.len(), e))?;
    pictures.extend(rest.iter().map(Picture::from));
    if pictures.len() != track.samples.len() {
        let reason = format!("{} samples gave {} pictures", track.samples.len(), pictures.len());
        return Err(decode_error(&track, track.samples.len(), reason));
    }
    assemble(pictures)
}

/// One decoded picture, converted to RGB at once: the decoder reuses its buffers.
struct Picture {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl From<&DecodedYUV<'_>> for Picture {
    fn from(yuv: &DecodedYUV<'_>) -> Self {
        let (width, height) = yuv.dimensions();
        let mut rgb = vec![0u8; width * height * 3];
        yuv.write_rgb8(&mut rgb);
        Picture { width, height, rgb }
    }
}

fn assemble(pictures: Vec<Picture>) -> Result<Video, Error> {
    let (width, height) = pictures.first().map_or((0, 0), |p| (p.width, p.height));
    let mut video =
        Video { frames: pictures.len(), height, width, data: Vec::with_capacity(pictures.len() * width * height * 3) };
    for (index, picture) in pictures.into_iter().enumerate() {
        if (picture.width, picture.height) != (width, height) {
            let (w, h) = (picture.width, picture.height);
            return Err(Error::Unsupported(format!("frame {index} is {w}x{h}, frame 0 {width}x{height}")));
        }
        video.data.extend_from_slice(&picture.rgb);
    }
    Ok(video)
}

fn push_annex_b(packet: &mut Vec<u8>, nal: &[u8]) {
    packet.extend_from_slice(&[0, 0, 0, 1]);
    packet.extend_from_slice(nal);
}

/// A decoder failure, with the stream's profile: OpenH264 is a Constrained Baseline decoder first,
/// so the profile is the likeliest explanation for a file it cannot read.
fn decode_error(track: &AvcTrack<'_>, sample: usize, reason: impl std::fmt::Display) -> Error {
    let profile = match track.profile {
        66 => "Baseline".to_string(),
        77 => "Main".to_string(),
        88 => "Extended".to_string(),
        100 => "High".to_string(),
        other => format!("profile_idc {other}"),
    };
    Error::Decode { sample, reason: format!("{reason} (stream profile: {profile})") }
}
