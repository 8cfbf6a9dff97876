use super::*;

fn tiny() -> ModelGeometry {
    ModelGeometry::tiny()
}

fn base() -> pb::JobSpec {
    pb::JobSpec { prompt: "a red circle moving right".into(), ..Default::default() }
}

fn field_of(spec: pb::JobSpec) -> String {
    JobSpec::validate(&spec, &tiny(), 7).unwrap_err().field
}

#[test]
fn defaults_come_from_the_model() {
    let spec = JobSpec::validate(&base(), &tiny(), 7).unwrap();
    assert_eq!((spec.frames, spec.width, spec.height, spec.fps), (17, 64, 64, 8));
    assert_eq!((spec.steps, spec.sampler, spec.seed), (20, SamplerKind::UniPc, 7));
    assert_eq!((spec.window_frames, spec.overlap_frames), (17, 4));
    assert_eq!(spec.model, "tiny");
    assert_eq!(spec.segments, vec![Segment { start_frame: 0, prompt: "a red circle moving right".into() }]);
}

#[test]
fn fusion_defaults_to_smooth_and_an_unknown_one_names_the_field() {
    assert_eq!(JobSpec::validate(&base(), &tiny(), 7).unwrap().fusion, FusionMode::Smooth);
    let average = JobSpec::validate(&pb::JobSpec { fusion: "average".into(), ..base() }, &tiny(), 7).unwrap();
    assert_eq!(average.fusion, FusionMode::Average);
    assert_eq!(pb::JobSpec::from(&average).fusion, "average");
    assert_eq!(field_of(pb::JobSpec { fusion: "hard".into(), ..base() }), "fusion");
}

#[test]
fn noise_defaults_to_independent_and_an_unknown_one_names_the_field() {
    assert_eq!(JobSpec::validate(&base(), &tiny(), 7).unwrap().noise, NoiseMode::Independent);
    let shuffled = JobSpec::validate(&pb::JobSpec { noise: " Shuffled".into(), ..base() }, &tiny(), 7).unwrap();
    assert_eq!(shuffled.noise, NoiseMode::Shuffled);
    assert_eq!(pb::JobSpec::from(&shuffled).noise, "shuffled");
    assert_eq!(field_of(pb::JobSpec { noise: "pink".into(), ..base() }), "noise");
}

#[test]
fn default_overlap_is_a_quarter_of_the_window_in_whole_latent_frames() {
    for (window, overlap) in [(1, 0), (5, 4), (13, 4), (17, 4), (25, 8), (81, 20)] {
        let wire = pb::JobSpec { frames: Some(161), window_frames: Some(window), ..base() };
        let spec = JobSpec::validate(&wire, &ModelGeometry::wan2_1_t2v_1_3b(), 1).unwrap();
        assert_eq!(spec.overlap_frames, overlap, "window {window}");
    }
}

#[test]
fn resolved_spec_validates_to_itself() {
    let mut wire = base();
    wire.frames = Some(49);
    wire.window_frames = Some(17);
    wire.overlap_frames = Some(8);
    wire.seed = Some(3);
    let spec = JobSpec::validate(&wire, &tiny(), 7).unwrap();
    let again = JobSpec::validate(&pb::JobSpec::from(&spec), &tiny(), 99).unwrap();
    assert_eq!(spec, again);
}

#[test]
fn every_bad_field_is_named() {
    type Mutate = Box<dyn Fn(&mut pb::JobSpec)>;
    let cases: Vec<(&str, Mutate)> = vec![
        ("prompt", Box::new(|s| s.prompt = "   ".into())),
        ("prompt", Box::new(|s| s.prompt = "x".repeat(MAX_PROMPT_BYTES + 1))),
        ("negative_prompt", Box::new(|s| s.negative_prompt = "y".repeat(MAX_PROMPT_BYTES + 1))),
        ("frames", Box::new(|s| s.frames = Some(0))),
        ("frames", Box::new(|s| s.frames = Some(18))),
        ("frames", Box::new(|s| s.frames = Some(1_000_001))),
        ("frames", Box::new(|s| (s.frames, s.width, s.height) = (Some(4001), Some(3840), Some(2160)))),
        ("width", Box::new(|s| s.width = Some(4096))),
        ("height", Box::new(|s| (s.width, s.height) = (Some(2176), Some(2176)))),
        ("width", Box::new(|s| s.width = Some(0))),
        ("width", Box::new(|s| s.width = Some(72))),
        ("height", Box::new(|s| s.height = Some(100_000))),
        ("fps", Box::new(|s| s.fps = Some(0))),
        ("steps", Box::new(|s| s.steps = Some(0))),
        ("steps", Box::new(|s| s.steps = Some(1001))),
        ("guidance_scale", Box::new(|s| s.guidance_scale = Some(f32::NAN))),
        ("shift", Box::new(|s| s.shift = Some(0.0))),
        ("sampler", Box::new(|s| s.sampler = "ddim".into())),
        ("window_frames", Box::new(|s| s.window_frames = Some(16))),
        ("window_frames", Box::new(|s| s.window_frames = Some(0))),
        ("overlap_frames", Box::new(|s| (s.frames, s.window_frames, s.overlap_frames) = (Some(33), Some(9), Some(3)))),
        ("overlap_frames", Box::new(|s| (s.frames, s.window_frames, s.overlap_frames) = (Some(33), Some(9), Some(12)))),
    ];
    for (field, mutate) in cases {
        let mut spec = base();
        mutate(&mut spec);
        assert_eq!(field_of(spec.clone()), field, "{spec:?}");
    }
}

#[test]
fn schedules_are_checked() {
    let seg = |start, prompt: &str| pb::PromptSegment { start_frame: start, prompt: prompt.into() };
    let with = |schedule: Vec<pb::PromptSegment>| pb::JobSpec { schedule, frames: Some(33), ..Default::default() };
    let good = JobSpec::validate(&with(vec![seg(0, "a"), seg(16, "b")]), &tiny(), 1).unwrap();
    assert_eq!((good.segment_at(0), good.segment_at(15), good.segment_at(16), good.segment_at(32)), (0, 0, 1, 1));
    assert_eq!(field_of(with(vec![seg(4, "a")])), "schedule[0].start_frame");
    assert_eq!(field_of(with(vec![seg(0, "a"), seg(0, "b")])), "schedule[1].start_frame");
    assert_eq!(field_of(with(vec![seg(0, "a"), seg(40, "b")])), "schedule");
    assert_eq!(field_of(with(vec![seg(0, "a"), seg(8, "")])), "schedule[1].prompt");
    let mut both = with(vec![seg(0, "a")]);
    both.prompt = "b".into();
    assert_eq!(field_of(both), "prompt");
    assert_eq!(field_of(pb::JobSpec::default()), "prompt");
}

#[test]
fn field_errors_become_invalid_argument() {
    let status = tonic::Status::from(FieldError::new("frames", "bad"));
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "frames: bad");
}
