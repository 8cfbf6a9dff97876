//! Reading and writing H.264 MP4s: our own Baseline files and a foreign encoder's High profile file.

use patchwork_scenes::{mp4, Error, SceneSampler, Video};
use std::path::PathBuf;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/x264_high.mp4");

/// A path in the system's temporary directory, unique to this test process, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        TempPath(std::env::temp_dir().join(format!("patchwork-scenes-{}-{name}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn mean_abs_difference(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x.abs_diff(y))).sum::<f64>() / a.len() as f64
}

#[test]
fn x264_high_profile_with_b_frames_decodes_in_display_order() {
    let video = mp4::read_video(FIXTURE).expect("decode");
    assert_eq!((video.frames, video.width, video.height), (16, 64, 64));
    for f in 0..video.frames {
        // The 16×16 square's left edge is at 4 + 2f: look at the middle of its inside and just left of it.
        let (left, top) = (4 + 2 * f, 24);
        let inside = video.pixel(f, top + 8, left + 8);
        assert!(inside[0] > 200 && inside[1] < 60 && inside[2] < 60, "frame {f}: {inside:?}");
        let outside = video.pixel(f, top + 8, left - 3);
        assert!(outside.iter().all(|&c| c < 60), "frame {f}: {outside:?}");
    }
}

#[test]
fn write_then_read_keeps_frames_close() {
    let scene = SceneSampler::new(64, 48).sample(11);
    let video = scene.render(17);
    let path = TempPath::new("round-trip.mp4");
    mp4::write_video(&path.0, &video, 8).expect("write");
    let back = mp4::read_video(&path.0).expect("read");
    assert_eq!((back.frames, back.width, back.height), (17, 64, 48));
    for f in 0..video.frames {
        let mad = mean_abs_difference(video.frame(f), back.frame(f));
        assert!(mad < 4.0, "frame {f}: mean absolute difference {mad}");
    }
    assert_eq!(mp4::encode_mp4(&video, 8).expect("encode"), mp4::encode_mp4(&video, 8).expect("encode again"));
}

#[test]
fn errors_name_the_file() {
    let missing = TempPath::new("missing.mp4");
    let err = mp4::read_video(&missing.0).expect_err("missing file");
    assert!(err.to_string().contains("missing.mp4"), "{err}");

    let garbage = TempPath::new("garbage.mp4");
    std::fs::write(&garbage.0, b"this is not an mp4 file at all").expect("write");
    let err = mp4::read_video(&garbage.0).expect_err("garbage");
    assert!(err.to_string().contains("garbage.mp4"), "{err}");
    assert!(matches!(err, Error::File { .. }));

    let odd = Video::new(2, 15, 16);
    let bad = TempPath::new("odd.mp4");
    let err = mp4::write_video(&bad.0, &odd, 8).expect_err("odd height");
    assert!(err.to_string().contains("odd.mp4") && err.to_string().contains("even"), "{err}");
}

#[test]
fn damaged_files_are_errors_not_panics() {
    let bytes = std::fs::read(FIXTURE).expect("fixture");
    for len in (0..bytes.len()).step_by(7) {
        let _ = mp4::decode_mp4(&bytes[..len]);
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut damaged = bytes.clone();
        let at = (state as usize) % damaged.len();
        damaged[at] ^= (state >> 32) as u8 | 1;
        let _ = mp4::decode_mp4(&damaged);
    }
    assert!(mp4::decode_mp4(&[]).is_err());
}
