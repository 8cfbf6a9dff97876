//! `patchwork eval` on procedural videos (whose truth is known) and on spliced ones, its errors, and the
//! `--fusion` and `--noise` choices of `render`.

mod common;

use std::process::Command;

use common::BIN;
use patchwork_scenes::{SceneSampler, Video};

fn patchwork(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).env("RUST_LOG", "warn").output().expect("running patchwork");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn eval_json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = patchwork(args);
    assert!(ok, "eval failed: {stderr}");
    serde_json::from_str(&stdout).expect("eval prints JSON")
}

#[test]
fn eval_reads_a_procedural_video_and_finds_spliced_seams() {
    let dir = tempfile::tempdir().unwrap();
    let sampler = SceneSampler::new(64, 64);
    // A single-object scene whose object has room for the whole clip.
    let (scene, other) =
        ((0..200u64).map(|s| sampler.sample(s)).filter(|s| s.objects.len() == 1)).fold((None, None), |(a, b), s| {
            if a.is_none() {
                (Some(s), b)
            } else if b.is_none() {
                (a, Some(s))
            } else {
                (a, b)
            }
        });
    let (scene, other) = (scene.unwrap(), other.unwrap());
    let whole = scene.render(33);
    let path = dir.path().join("scene.mp4");
    patchwork_scenes::mp4::write_video(&path, &whole, 8).unwrap();
    let caption = scene.caption();
    let file = path.to_str().unwrap();

    let report = eval_json(&["eval", file, "--prompt", &caption, "--window", "17", "--overlap", "8"]);
    let object = &report["objects"][0];
    for check in ["colour_ok", "shape_ok", "direction_ok"] {
        assert_eq!(object[check], true, "{check} for {caption:?}: {object}");
    }
    // 33 frames (9 latent) in windows of 17 (5 latent) overlapping by at least 8 (2 latent): windows
    // [0, 5), [2, 7) and [4, 9), which begin or end at latent frames 2, 4, 5 and 7, whose first video
    // frames are 5, 13, 17 and 25.
    assert_eq!(report["seams"]["seams"], serde_json::json!([5, 13, 17, 25]));
    let smooth = report["seams"]["position_px"]["ratio"].as_f64().unwrap();
    assert!(smooth < 1.5, "an unspliced video shows its seams: {smooth}");
    // Continued one after another, each window's own frames begin where the one before it ends.
    let continued = eval_json(&["eval", file, "--prompt", &caption, "--window", "17", "--overlap", "8", "--continued"]);
    assert_eq!(continued["seams"]["seams"], serde_json::json!([17, 25]));

    // A reader that stops before the report (`| head`) ends the command quietly, without a panic.
    let mut child = Command::new(BIN)
        .args(["eval", file, "--prompt", &caption])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", out.status);

    // The second half taken from another scene: the object jumps at frame 17.
    let second = other.render(33);
    let split = 17 * whole.frame_len();
    let mut data = whole.data[..split].to_vec();
    data.extend_from_slice(&second.data[split..]);
    let spliced = Video { data, ..whole };
    let path = dir.path().join("spliced.mp4");
    patchwork_scenes::mp4::write_video(&path, &spliced, 8).unwrap();
    let report = eval_json(&["eval", path.to_str().unwrap(), "--prompt", &caption, "--seams", "17"]);
    let jump = report["seams"]["frame_difference"]["ratio"].as_f64().unwrap();
    assert!(jump > 3.0, "a splice does not show at its seam: {jump}");

    // Errors name what is wrong.
    let (ok, _, stderr) = patchwork(&["eval", "/no/such.mp4", "--prompt", "x"]);
    assert!(!ok && stderr.contains("/no/such.mp4"), "{stderr}");
    let (ok, _, stderr) = patchwork(&["eval", file, "--prompt", "x", "--seams", "0"]);
    assert!(!ok && stderr.contains("--seams"), "{stderr}");
    let (ok, _, stderr) = patchwork(&["eval", file, "--prompt", "x", "--window", "17", "--overlap", "6"]);
    assert!(!ok && stderr.contains("--overlap"), "{stderr}");
}

#[test]
fn render_joins_windows_by_the_fusion_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ["--frames", "33", "--window", "17", "--overlap", "8", "--steps", "3", "--seed", "4"];
    let mut videos = Vec::new();
    for fusion in ["smooth", "average"] {
        let out = dir.path().join(format!("{fusion}.mp4"));
        let mut args = vec!["render", "a red circle moving right", "--fusion", fusion, "-o", out.to_str().unwrap()];
        args.extend(spec);
        let (ok, _, stderr) = patchwork(&args);
        assert!(ok, "render --fusion {fusion}: {stderr}");
        videos.push(std::fs::read(&out).unwrap());
    }
    assert_ne!(videos[0], videos[1], "the fusion changed nothing");
    let out = dir.path().join("bad.mp4");
    let (ok, _, stderr) = patchwork(&["render", "a red circle", "--fusion", "hard", "-o", out.to_str().unwrap()]);
    assert!(!ok && stderr.contains("fusion") && stderr.contains("hard"), "{stderr}");
}

#[test]
fn render_shuffles_the_noise_of_later_windows_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let render = |frames: &str, noise: &str| {
        let out = dir.path().join(format!("{frames}-{noise}.mp4"));
        let args = ["render", "a red circle moving right", "--frames", frames, "--window", "17", "--overlap", "8"];
        let mut args = args.to_vec();
        args.extend(["--steps", "3", "--seed", "4", "--noise", noise, "-o", out.to_str().unwrap()]);
        let (ok, _, stderr) = patchwork(&args);
        assert!(ok, "render --frames {frames} --noise {noise}: {stderr}");
        std::fs::read(&out).unwrap()
    };
    assert_ne!(render("33", "independent"), render("33", "shuffled"), "shuffling changed nothing");
    // One window is the first window: its noise is the same either way.
    assert_eq!(render("17", "independent"), render("17", "shuffled"));
    let out = dir.path().join("bad.mp4");
    let (ok, _, stderr) = patchwork(&["render", "a red circle", "--noise", "pink", "-o", out.to_str().unwrap()]);
    assert!(!ok && stderr.contains("noise") && stderr.contains("pink"), "{stderr}");
}
