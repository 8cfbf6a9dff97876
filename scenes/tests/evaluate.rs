//! The evaluator against ground truth: rendered scenes, the same after H.264, degraded renders,
//! spliced videos, and a file from a foreign encoder.

mod common;

use common::{degrade, Tally};
use patchwork_scenes::eval::{evaluate, Layout};
use patchwork_scenes::{mp4, BackgroundColour, Colour, Direction, Scene, SceneSampler, Shape, Speed, Video};

const FRAMES: usize = 17;

fn scenes(seeds: std::ops::Range<u64>) -> impl Iterator<Item = Scene> {
    let sampler = SceneSampler::new(64, 64);
    seeds.map(move |seed| sampler.sample(seed))
}

#[test]
fn clean_renders_agree_with_ground_truth() {
    let mut single = Tally::default();
    for scene in scenes(0..150).filter(|s| s.objects.len() == 1) {
        single.add(&scene, &scene.render(FRAMES));
    }
    assert!(single.objects >= 100, "only {} single-object scenes", single.objects);
    single.require(0.98);
}

#[test]
fn two_object_scenes_agree_with_ground_truth() {
    let mut sampler = SceneSampler::new(64, 64);
    sampler.two_objects = 1.0;
    let mut tally = Tally::default();
    for seed in 0..60 {
        let scene = sampler.sample(seed);
        tally.add(&scene, &scene.render(FRAMES));
    }
    tally.require(0.97);
}

#[test]
fn h264_round_trip_agrees_with_ground_truth() {
    let mut tally = Tally::default();
    for scene in scenes(1000..1100) {
        let mp4 = mp4::encode_mp4(&scene.render(FRAMES), 8).expect("encode");
        tally.add(&scene, &mp4::decode_mp4(&mp4).expect("decode"));
    }
    tally.require(0.95);
}

#[test]
fn blurred_noisy_renders_agree_with_ground_truth() {
    let mut tally = Tally::default();
    for (seed, scene) in (2000..2060).zip(scenes(2000..2060)) {
        tally.add(&scene, &degrade(&scene.render(FRAMES), seed));
    }
    tally.require(0.95);
}

#[test]
fn backgrounds_plain_and_two_tone_are_recognised() {
    let mut sampler = SceneSampler::new(64, 64);
    sampler.two_tone = 0.5;
    for scene in (0..80).map(|seed| sampler.sample(seed)) {
        let report = evaluate(&scene.render(FRAMES), &scene.caption(), None);
        assert_eq!(report.background.colours, scene.background.colours(), "{}", scene.caption());
        assert_eq!(report.background.colours_ok, Some(true));
        let layout = match scene.background {
            patchwork_scenes::Background::Plain(_) => Layout::Plain,
            patchwork_scenes::Background::TopBottom(..) => Layout::TopBottom { at: 32 },
            patchwork_scenes::Background::LeftRight(..) => Layout::LeftRight { at: 32 },
        };
        assert_eq!(report.background.layout, layout, "{}", scene.caption());
        assert!(report.all_ok, "{}: {report:?}", scene.caption());
    }
}

#[test]
fn detections_and_tracks_follow_the_object() {
    let scene = scenes(3..4).next().expect("scene");
    let report = evaluate(&scene.render(FRAMES), &scene.caption(), None);
    let truth = &scene.objects[0];
    let track = &report.objects[0].track;
    assert_eq!(track.len(), FRAMES);
    for (f, detection) in track.iter().enumerate() {
        let detection = detection.as_ref().expect("seen in every frame");
        let [x, y] = scene.centre(truth, f as f64);
        // A triangle's centroid sits a sixth of its height below its box's centre.
        let offset = if truth.shape == Shape::Triangle { truth.size / 6.0 } else { 0.0 };
        assert!(
            (detection.centroid[0] - x).abs() < 0.2 && (detection.centroid[1] - y - offset).abs() < 0.2,
            "frame {f}"
        );
        let area = match truth.shape {
            Shape::Square => truth.size * truth.size,
            Shape::Circle => std::f64::consts::PI * truth.size * truth.size / 4.0,
            Shape::Triangle => truth.size * truth.size / 2.0,
        };
        assert!((detection.area / area - 1.0).abs() < 0.05, "frame {f}: area {} vs {area}", detection.area);
        assert!(report.detections[f].contains(detection));
    }
}

#[test]
fn a_wrong_prompt_is_caught() {
    let scene = scenes(5..6).next().expect("scene");
    let truth = scene.objects[0];
    let other_colour = Colour::ALL.into_iter().find(|&c| c != truth.colour).expect("colour");
    let other_shape = Shape::ALL.into_iter().find(|&s| s != truth.shape).expect("shape");
    let opposite = match truth.direction {
        Direction::Left => Direction::Right,
        Direction::Right => Direction::Left,
        Direction::Up => Direction::Down,
        Direction::Down => Direction::Up,
    };
    let prompt = format!("a {} {} moving {}", other_colour.name(), other_shape.name(), opposite.name());
    let report = evaluate(&scene.render(FRAMES), &prompt, None);
    let object = &report.objects[0];
    assert_eq!((object.colour_ok, object.shape_ok, object.direction_ok), (Some(false), Some(false), Some(false)));
    assert_eq!((object.speed_ok, report.background.colours_ok), (None, None));
    assert!(!report.all_ok);
}

#[test]
fn a_still_object_and_an_empty_video_are_reported_as_such() {
    let mut scene = scenes(7..8).next().expect("scene");
    let mut video = scene.render(1);
    let frame = video.frame(0).to_vec();
    video = Video { frames: 9, height: 64, width: 64, data: frame.repeat(9) };
    let report = evaluate(&video, &scene.caption(), None);
    let observed = report.objects[0].observed.as_ref().expect("object");
    assert_eq!((observed.direction, observed.speed), (None, None));
    assert_eq!(report.objects[0].direction_ok, Some(false));
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["objects"][0]["observed"]["direction"], "still");

    scene.objects.clear();
    let report = evaluate(&scene.render(5), "a red circle moving left", Some(&[2]));
    assert!(report.objects[0].observed.is_none() && report.detections.iter().all(Vec::is_empty));
    assert_eq!(report.objects[0].colour_ok, Some(false));
    assert!(!report.all_ok);
}

/// Frames `0..at` of `a` followed by frames `at..` of `b`.
fn splice(a: &Video, b: &Video, at: usize) -> Video {
    let cut = at * a.frame_len();
    let mut data = a.data[..cut].to_vec();
    data.extend_from_slice(&b.data[cut..]);
    Video { data, ..a.clone() }
}

#[test]
fn seams_show_when_spliced_and_not_otherwise() {
    let sampler = SceneSampler::new(64, 64);
    for seed in 0..20 {
        let (a, b) = (sampler.sample(seed), sampler.sample(seed + 500));
        let (va, vb) = (a.render(FRAMES), b.render(FRAMES));
        let clean = evaluate(&va, &a.caption(), Some(&[9])).seams.expect("seams");
        let combined = clean.combined_ratio.expect("combined");
        assert!((0.7..1.4).contains(&combined), "seed {seed}: unspliced ratio {combined}: {clean:?}");
        let position = clean.position_px.expect("position").ratio;
        assert!((0.7..1.4).contains(&position), "seed {seed}: unspliced position ratio {position}");

        let spliced = evaluate(&splice(&va, &vb, 9), &a.caption(), Some(&[9])).seams.expect("seams");
        let combined = spliced.combined_ratio.expect("combined");
        assert!(combined > 3.0, "seed {seed}: spliced ratio {combined}: {spliced:?}");
    }
}

#[test]
fn seams_outside_the_clip_are_ignored() {
    let scene = scenes(9..10).next().expect("scene");
    let report = evaluate(&scene.render(FRAMES), &scene.caption(), Some(&[0, 17, 40, 9, 9]));
    let seams = report.seams.expect("seams");
    assert_eq!(seams.seams, [9]);
    let none = evaluate(&scene.render(FRAMES), &scene.caption(), Some(&[])).seams.expect("seams");
    assert_eq!((none.position_px, none.combined_ratio), (None, None));
}

#[test]
fn foreign_high_profile_file_is_evaluated() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/x264_high.mp4");
    let video = mp4::read_video(path).expect("decode");
    let report = evaluate(&video, "a red square moving quickly right on a black background", None);
    let observed = report.objects[0].observed.as_ref().expect("object");
    assert!(report.all_ok, "{report:?}");
    assert_eq!((observed.colour, observed.shape, observed.speed), (Colour::Red, Shape::Square, Some(Speed::Quickly)));
    assert!((observed.speed_px_per_frame - 2.0).abs() < 0.1, "{}", observed.speed_px_per_frame);
    assert_eq!(report.background.colours, [BackgroundColour::Black]);
}

#[test]
fn degenerate_videos_give_a_report_not_a_panic() {
    for (frames, height, width) in [(0, 64, 64), (1, 64, 64), (3, 2, 2), (2, 1, 7), (4, 0, 0)] {
        let report = evaluate(&Video::new(frames, height, width), "a red circle moving left", Some(&[1]));
        assert!(report.objects[0].observed.is_none(), "{frames}x{height}x{width}");
        assert_eq!(report.objects[0].colour_ok, Some(false));
    }
}
