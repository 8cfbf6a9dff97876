use super::encode::rgb_to_i420;
use super::probe::{child, first_video_track, sample_ranges};
use super::*;
use mp4::Mp4Reader;
use std::io::Cursor;

const SQUARE: [u8; 3] = [230, 40, 200];
const SIDE: usize = 12;

/// A square moving across a gradient: smooth areas, hard edges and motion, all at once.
fn moving_square(count: usize, width: u32, height: u32) -> Vec<RgbFrame> {
    let (w, h) = (width as usize, height as usize);
    (0..count)
        .map(|i| {
            let mut data = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                for x in 0..w {
                    let inside = (x.wrapping_sub(2 + 4 * i)) < SIDE && (y.wrapping_sub(4 + 2 * i)) < SIDE;
                    if inside {
                        data.extend_from_slice(&SQUARE);
                    } else {
                        data.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 90]);
                    }
                }
            }
            RgbFrame { width, height, data }
        })
        .collect()
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    let total: u64 = a.iter().zip(b).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
    total as f64 / a.len() as f64
}

#[test]
fn round_trip_keeps_size_rate_count_and_colours() {
    let frames = moving_square(9, 64, 48);
    let mp4 = encode_mp4(&frames, 8).expect("encode");
    let info = probe_mp4(&mp4).expect("probe");
    assert_eq!(info, Mp4Info { width: 64, height: 48, frames: 9, fps: 8.0, codec: "avc1".into() });

    let decoded = decode_mp4(&mp4).expect("decode");
    assert_eq!(decoded.len(), 9);
    for (i, (original, back)) in frames.iter().zip(&decoded).enumerate() {
        assert_eq!((back.width, back.height), (64, 48));
        let mad = mean_abs_diff(&original.data, &back.data);
        assert!(mad < 8.0, "frame {i}: mean absolute difference {mad}");
        // The square's inside, away from its edges where chroma subsampling blurs, keeps its colour.
        let (x0, y0) = (2 + 4 * i + 2, 4 + 2 * i + 2);
        for (channel, &want) in SQUARE.iter().enumerate() {
            let mut sum = 0u32;
            for y in y0..y0 + SIDE - 4 {
                for x in x0..x0 + SIDE - 4 {
                    sum += u32::from(back.data[(y * 64 + x) * 3 + channel]);
                }
            }
            let mean = sum as f64 / ((SIDE - 4) * (SIDE - 4)) as f64;
            let want = f64::from(want);
            assert!((mean - want).abs() < 12.0, "frame {i} channel {channel}: {mean} vs {want}");
        }
    }
}

#[test]
fn same_frames_give_same_bytes() {
    let frames = moving_square(9, 64, 48);
    let first = encode_mp4(&frames, 8).expect("encode");
    assert_eq!(first, encode_mp4(&frames, 8).expect("encode again"));
    // A fresh thread rules out state that an encoder leaves behind in the first one.
    let other = std::thread::spawn(move || encode_mp4(&frames, 8).expect("encode in thread")).join();
    assert_eq!(first, other.expect("thread"));
}

#[test]
fn container_is_plain_and_timeless() {
    let mp4 = encode_mp4(&moving_square(9, 64, 48), 8).expect("encode");
    let reader = Mp4Reader::read_header(Cursor::new(&mp4[..]), mp4.len() as u64).expect("parse");
    let brands: Vec<String> = reader.compatible_brands().iter().map(ToString::to_string).collect();
    assert_eq!(reader.major_brand().to_string(), "isom");
    assert_eq!(brands, ["isom", "iso2", "avc1", "mp41"]);
    let mvhd = &reader.moov.mvhd;
    assert_eq!((mvhd.creation_time, mvhd.modification_time, mvhd.next_track_id), (0, 0, 2));
    assert_eq!((mvhd.timescale, mvhd.duration), (8000, 9000));
    let trak = &reader.moov.traks[0];
    assert_eq!((trak.tkhd.creation_time, trak.tkhd.modification_time, trak.tkhd.duration), (0, 0, 9000));
    let mdhd = &trak.mdia.mdhd;
    assert_eq!((mdhd.creation_time, mdhd.modification_time, mdhd.timescale, mdhd.duration), (0, 0, 8000, 9000));
    let stbl = &trak.mdia.minf.stbl;
    let stts: Vec<(u32, u32)> = stbl.stts.entries.iter().map(|e| (e.sample_count, e.sample_delta)).collect();
    assert_eq!(stts, [(9, 1000)]);
    assert_eq!(stbl.stss.as_ref().expect("stss").entries, [1]);
    assert!(stbl.stco.is_some() && stbl.ctts.is_none());
    let avcc = &stbl.stsd.avc1.as_ref().expect("avc1").avcc;
    assert_eq!((avcc.avc_profile_indication, avcc.length_size_minus_one & 3), (66, 3));
    assert_eq!(avcc.sequence_parameter_sets[0].bytes[0] & 0x1f, 7);
    assert_eq!(avcc.picture_parameter_sets[0].bytes[0] & 0x1f, 8);

    // Samples hold only length-prefixed slices: no start codes, no parameter sets, IDR first.
    let track = first_video_track(&mp4).expect("video track");
    let ranges = sample_ranges(&track, mp4.len()).expect("ranges");
    for (i, range) in ranges.into_iter().enumerate() {
        let mut sample = &mp4[range];
        let mut kinds = Vec::new();
        while !sample.is_empty() {
            let len = u32::from_be_bytes(sample[..4].try_into().unwrap()) as usize;
            kinds.push(sample[4] & 0x1f);
            sample = &sample[4 + len..];
        }
        assert_eq!(kinds, [if i == 0 { 5 } else { 1 }], "sample {i}");
    }
}

#[test]
fn periodic_keyframes_are_sync_samples_without_parameter_sets() {
    // At 4 fps a keyframe comes every 8 frames, so 20 frames hold IDRs at samples 1, 9 and 17.
    let mp4 = encode_mp4(&moving_square(20, 64, 48), 4).expect("encode");
    let reader = Mp4Reader::read_header(Cursor::new(&mp4[..]), mp4.len() as u64).expect("parse");
    let stss = reader.moov.traks[0].mdia.minf.stbl.stss.as_ref().expect("stss");
    assert_eq!(stss.entries, [1, 9, 17]);
    let track = first_video_track(&mp4).expect("video track");
    for (i, range) in sample_ranges(&track, mp4.len()).expect("ranges").into_iter().enumerate() {
        let idr = i % 8 == 0;
        assert_eq!(mp4[range.start + 4] & 0x1f, if idr { 5 } else { 1 }, "sample {i}");
    }
    assert_eq!(decode_mp4(&mp4).expect("decode").len(), 20);
}

#[test]
fn every_common_frame_rate_is_exact() {
    let frames = moving_square(3, 16, 16);
    for fps in 1..=120 {
        let info = probe_mp4(&encode_mp4(&frames, fps).expect("encode")).expect("probe");
        assert_eq!((info.frames, info.fps), (3, f64::from(fps)), "fps {fps}");
    }
}

#[test]
fn single_frame_video_works() {
    let frames = moving_square(1, 32, 32);
    let mp4 = encode_mp4(&frames, 24).expect("encode");
    let info = probe_mp4(&mp4).expect("probe");
    assert_eq!((info.frames, info.fps, info.width, info.height), (1, 24.0, 32, 32));
    let decoded = decode_mp4(&mp4).expect("decode");
    assert_eq!(decoded.len(), 1);
    assert!(mean_abs_diff(&frames[0].data, &decoded[0].data) < 8.0);
}

#[test]
fn bad_inputs_are_refused_with_the_reason() {
    let good = moving_square(2, 16, 16);
    assert!(matches!(encode_mp4(&[], 8), Err(VideoError::NoFrames)));
    assert!(matches!(encode_mp4(&good, 0), Err(VideoError::InvalidFps(0))));
    assert!(matches!(encode_mp4(&good, MAX_FPS + 1), Err(VideoError::InvalidFps(_))));
    for (width, height) in [(1, 16), (16, 15), (0, 0), (0, 16)] {
        let frame = RgbFrame { width, height, data: vec![0; (width * height * 3) as usize] };
        let err = encode_mp4(&[frame], 8).expect_err("odd or empty size");
        assert!(matches!(err, VideoError::InvalidSize { .. }), "{width}x{height}: {err}");
        assert!(err.to_string().contains("even"), "{err}");
    }
    let wide = RgbFrame { width: 4000, height: 2, data: vec![0; 4000 * 2 * 3] };
    assert!(matches!(encode_mp4(&[wide], 8), Err(VideoError::TooLarge { .. })));

    let mut mixed = good.clone();
    mixed.push(moving_square(1, 32, 16).remove(0));
    let err = encode_mp4(&mixed, 8).expect_err("mixed sizes");
    assert!(matches!(err, VideoError::SizeMismatch { index: 2, width: 32, .. }), "{err}");

    let mut short = good;
    short[1].data.pop();
    let err = encode_mp4(&short, 8).expect_err("short data");
    assert!(matches!(err, VideoError::DataLength { index: 1, expected: 768, actual: 767, .. }), "{err}");
}

#[test]
fn writer_gives_the_same_bytes_as_encode_mp4() {
    for (count, width, height, fps) in [(9, 64, 48, 8), (20, 64, 48, 4), (1, 32, 32, 24)] {
        let frames = moving_square(count, width, height);
        let whole = encode_mp4(&frames, fps).expect("encode");
        let mut writer = Mp4Writer::new(width, height, fps).expect("writer");
        for (i, frame) in frames.iter().enumerate() {
            writer.push(frame).expect("push");
            assert_eq!(writer.frames(), i + 1);
        }
        assert_eq!(writer.finish().expect("finish"), whole, "{count} frames {width}x{height} at {fps} fps");
    }
}

#[test]
fn writer_can_move_between_threads_mid_stream() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Mp4Writer>();
    let frames = moving_square(12, 64, 48);
    let whole = encode_mp4(&frames, 8).expect("encode");
    let mut writer = Mp4Writer::new(64, 48, 8).expect("writer");
    let mut frames = frames.into_iter();
    for frame in frames.by_ref().take(5) {
        writer.push(&frame).expect("push");
    }
    let bytes = std::thread::spawn(move || {
        for frame in frames {
            writer.push(&frame).expect("push in thread");
        }
        writer.finish().expect("finish in thread")
    })
    .join()
    .expect("thread");
    assert_eq!(bytes, whole);
}

#[test]
fn writer_refuses_bad_input_like_encode_mp4() {
    assert!(matches!(Mp4Writer::new(16, 16, 0), Err(VideoError::InvalidFps(0))));
    assert!(matches!(Mp4Writer::new(16, 16, MAX_FPS + 1), Err(VideoError::InvalidFps(_))));
    assert!(matches!(Mp4Writer::new(16, 15, 8), Err(VideoError::InvalidSize { width: 16, height: 15 })));
    assert!(matches!(Mp4Writer::new(0, 16, 8), Err(VideoError::InvalidSize { .. })));
    assert!(matches!(Mp4Writer::new(4000, 2, 8), Err(VideoError::TooLarge { width: 4000, height: 2 })));
    let empty = Mp4Writer::new(16, 16, 8).expect("writer");
    assert_eq!(empty.frames(), 0);
    assert!(matches!(empty.finish(), Err(VideoError::NoFrames)));

    // A refused frame changes nothing: the writer goes on, and its video is the good frames' video.
    let good = moving_square(4, 16, 16);
    let mut writer = Mp4Writer::new(16, 16, 8).expect("writer");
    for frame in &good[..3] {
        writer.push(frame).expect("push");
    }
    let wrong = moving_square(1, 32, 16).remove(0);
    let err = writer.push(&wrong).expect_err("wrong size");
    assert!(
        matches!(err, VideoError::SizeMismatch { index: 3, width: 32, height: 16, first_width: 16, first_height: 16 }),
        "{err}"
    );
    let mut short = good[3].clone();
    short.data.pop();
    let err = writer.push(&short).expect_err("short data");
    assert!(matches!(err, VideoError::DataLength { index: 3, expected: 768, actual: 767, .. }), "{err}");
    assert_eq!(writer.frames(), 3);
    writer.push(&good[3]).expect("push after refusals");
    assert_eq!(writer.finish().expect("finish"), encode_mp4(&good, 8).expect("encode"));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(matches!(probe_mp4(&[]), Err(VideoError::Parse(_))));
    assert!(probe_mp4(b"definitely not an mp4 file").is_err());
    assert!(decode_mp4(b"\0\0\0\x08ftyp").is_err());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for len in [1, 7, 8, 64, 4096] {
        let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        assert!(probe_mp4(&noise).is_err() && decode_mp4(&noise).is_err());
    }
    // Damaged real files: every truncation, and single-byte corruptions across the header boxes.
    let mp4 = encode_mp4(&moving_square(3, 16, 16), 8).expect("encode");
    for len in 0..mp4.len() {
        let _ = probe_mp4(&mp4[..len]);
        let _ = decode_mp4(&mp4[..len]);
    }
    let moov = child(&mp4, b"moov").expect("moov");
    let moov_start = moov.as_ptr() as usize - mp4.as_ptr() as usize - 8;
    for _ in 0..3000 {
        let mut damaged = mp4.clone();
        let at = moov_start + (next() as usize) % (moov.len() + 8);
        damaged[at] = next() as u8;
        let _ = probe_mp4(&damaged);
        let _ = decode_mp4(&damaged);
    }
}

#[test]
fn colour_conversion_matches_bt601_limited_range() {
    let mut out = [0u8; 6];
    for (rgb, yuv) in [([0, 0, 0], [16, 128, 128]), ([255; 3], [235, 128, 128]), ([255, 0, 0], [82, 90, 240])] {
        let block: Vec<u8> = rgb.iter().copied().cycle().take(12).collect();
        rgb_to_i420(&block, 2, 2, &mut out);
        assert_eq!(out, [yuv[0], yuv[0], yuv[0], yuv[0], yuv[1], yuv[2]], "{rgb:?}");
    }
}
