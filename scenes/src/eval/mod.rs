//! Checks a video against its prompt: does it show the asked-for colour, shape and direction, and
//! is it temporally consistent, also across the seams between the farm's spacetime windows?
//!
//! The pipeline, per video: estimate the background ([`background`]); per frame, threshold, clean up
//! and group the foreground into blobs ([`segment`]) and measure each ([`measure`]); link blobs into
//! tracks ([`track`]); name each track's colour, shape and motion ([`judge`]); match tracks to the
//! objects the prompt names; measure frame-to-frame changes of the main object ([`consistency`]).

mod background;
mod consistency;
mod judge;
mod measure;
mod segment;
mod stats;
mod track;

pub use background::Layout;
pub use consistency::{Change, Consistency, SeamChange, SeamReport};
pub use judge::Observed;
pub use measure::Detection;

use crate::palette::BackgroundColour;
use crate::prompt::{parse_prompt, Expectation, ObjectExpectation};
use crate::video::Video;
use background::BackgroundModel;
use serde::Serialize;
use track::Track;

/// Tracks seen in fewer than this share of the frames are not candidates for a prompt's objects.
const MIN_PRESENCE: f64 = 0.5;
/// Nor are tracks lighter than this share of the heaviest track (total area over frames); the
/// smallest object (a 14 px triangle) has a fifth of the area of the largest (a 22 px square).
const MIN_WEIGHT: f64 = 0.1;

/// Everything the evaluator found and concluded; serialised as JSON by the CLI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub prompt: String,
    pub expectation: Expectation,
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    pub background: BackgroundReport,
    /// The RGB distance from the background above which a pixel counted as an object's.
    pub threshold: f64,
    /// Every object found, per frame.
    pub detections: Vec<Vec<Detection>>,
    /// One per object the prompt names, in its order (or one for the main track if it names none).
    /// The first is the main object.
    pub objects: Vec<ObjectReport>,
    /// Frame-to-frame changes of the main object (and of the whole frame).
    pub consistency: Consistency,
    /// Present when seams were given.
    pub seams: Option<SeamReport>,
    /// Every check the prompt allows came out true.
    pub all_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackgroundReport {
    pub layout: Layout,
    /// Nearest named colour of each region (top or left first), from its median over frames.
    pub colours: Vec<BackgroundColour>,
    pub rgb: Vec<[f64; 3]>,
    /// Whether the colours are the prompt's, in order; `None` when the prompt names none.
    pub colours_ok: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectReport {
    pub expected: ObjectExpectation,
    /// `None` when no track was left for this object.
    pub observed: Option<Observed>,
    /// The object's detection in each frame.
    pub track: Vec<Option<Detection>>,
    /// `None` where the prompt does not say; `Some(false)` when it does and the object is missing.
    pub colour_ok: Option<bool>,
    pub shape_ok: Option<bool>,
    pub direction_ok: Option<bool>,
    pub speed_ok: Option<bool>,
}

/// Evaluates `video` against `prompt`. `seams` lists frame indices `s` whose seam lies between
/// frames `s - 1` and `s`.
pub fn evaluate(video: &Video, prompt: &str, seams: Option<&[usize]>) -> Report {
    let expectation = parse_prompt(prompt);
    let model = BackgroundModel::estimate(video);
    let threshold = segment::threshold(video, &model);
    let detections: Vec<Vec<Detection>> = (0..video.frames)
        .map(|f| {
            let seg = segment::segment(video, f, &model, threshold);
            (0..seg.blobs.len()).map(|blob| measure::measure(video, f, &model, &seg, blob)).collect()
        })
        .collect();
    let tracks = track::link(&detections);
    let observed: Vec<Option<Observed>> =
        tracks.iter().map(|t| judge::observe(t, &detections, video.width, video.height)).collect();

    let wanted =
        if expectation.objects.is_empty() { vec![ObjectExpectation::default()] } else { expectation.objects.clone() };
    let assignment = assign(&wanted, &tracks, &observed, video.frames);
    let objects: Vec<ObjectReport> = wanted
        .iter()
        .zip(&assignment)
        .map(|(expected, &chosen)| object_report(*expected, chosen.map(|t| (&tracks[t], &observed[t])), &detections))
        .collect();

    let main: Vec<Option<&Detection>> = match assignment.first().copied().flatten() {
        Some(t) => tracks[t].members.iter().enumerate().map(|(f, m)| m.map(|d| &detections[f][d])).collect(),
        None => vec![None; video.frames],
    };
    let changes = consistency::Changes::measure(video, &main);
    let background = background_report(&model, video.frames, expectation.background.as_deref());
    let checks = objects.iter().flat_map(|o| [o.colour_ok, o.shape_ok, o.direction_ok, o.speed_ok]);
    let all_ok = checks.chain([background.colours_ok]).all(|ok| ok != Some(false));
    Report {
        prompt: prompt.to_string(),
        expectation,
        frames: video.frames,
        width: video.width,
        height: video.height,
        background,
        threshold,
        detections,
        objects,
        consistency: changes.summary(),
        seams: seams.map(|s| changes.seams(s)),
        all_ok,
    }
}

/// Matches the prompt's objects to substantial tracks, trying every assignment (at most a few
/// objects and tracks) for the one that agrees with the prompt most, heavier tracks breaking ties.
fn assign(
    wanted: &[ObjectExpectation],
    tracks: &[Track],
    observed: &[Option<Observed>],
    frames: usize,
) -> Vec<Option<usize>> {
    let heaviest = tracks.first().map_or(0.0, |t| t.weight);
    let candidates: Vec<usize> = (0..tracks.len())
        .filter(|&t| {
            let seen = tracks[t].members.iter().flatten().count() as f64;
            seen >= MIN_PRESENCE * frames as f64 && tracks[t].weight >= MIN_WEIGHT * heaviest
        })
        .take(wanted.len() + 1)
        .collect();
    let mut best: (Vec<Option<usize>>, f64) = (vec![None; wanted.len()], f64::NEG_INFINITY);
    let mut current = Vec::with_capacity(wanted.len());
    search(wanted, &candidates, tracks, observed, &mut current, &mut best);
    best.0
}

fn search(
    wanted: &[ObjectExpectation],
    candidates: &[usize],
    tracks: &[Track],
    observed: &[Option<Observed>],
    current: &mut Vec<Option<usize>>,
    best: &mut (Vec<Option<usize>>, f64),
) {
    if current.len() == wanted.len() {
        let heaviest = tracks.first().map_or(1.0, |t| t.weight.max(1e-9));
        let score: f64 = current
            .iter()
            .zip(wanted)
            .map(|(chosen, expected)| match chosen {
                // A matched object is worth more than any agreement, then agreement, then weight.
                Some(t) => 10.0 + agreement(expected, observed[*t].as_ref()) + tracks[*t].weight / heaviest * 0.1,
                None => 0.0,
            })
            .sum();
        if score > best.1 {
            *best = (current.clone(), score);
        }
        return;
    }
    let mut options: Vec<Option<usize>> = candidates.iter().map(|&t| Some(t)).collect();
    options.push(None);
    for option in options {
        if option.is_some() && current.contains(&option) {
            continue;
        }
        current.push(option);
        search(wanted, candidates, tracks, observed, current, best);
        current.pop();
    }
}

fn agreement(expected: &ObjectExpectation, observed: Option<&Observed>) -> f64 {
    let Some(o) = observed else { return 0.0 };
    let hits = [
        expected.colour == Some(o.colour),
        expected.shape == Some(o.shape),
        expected.direction.is_some() && expected.direction == o.direction,
    ];
    hits.iter().filter(|&&hit| hit).count() as f64
}

fn object_report(
    expected: ObjectExpectation,
    chosen: Option<(&Track, &Option<Observed>)>,
    detections: &[Vec<Detection>],
) -> ObjectReport {
    let observed = chosen.and_then(|(_, o)| o.clone());
    let track = match chosen {
        Some((t, _)) => t.members.iter().enumerate().map(|(f, m)| m.map(|d| detections[f][d].clone())).collect(),
        None => vec![None; detections.len()],
    };
    let seen = observed.as_ref();
    ObjectReport {
        colour_ok: expected.colour.map(|c| seen.is_some_and(|o| o.colour == c)),
        shape_ok: expected.shape.map(|s| seen.is_some_and(|o| o.shape == s)),
        direction_ok: expected.direction.map(|d| seen.is_some_and(|o| o.direction == Some(d))),
        speed_ok: expected.speed.map(|s| seen.is_some_and(|o| o.speed == Some(s))),
        expected,
        observed,
        track,
    }
}

fn background_report(
    model: &BackgroundModel,
    frames: usize,
    expected: Option<&[BackgroundColour]>,
) -> BackgroundReport {
    let regions = if model.layout == Layout::Plain { 1 } else { 2 };
    let rgb: Vec<[f64; 3]> = (0..regions)
        .map(|r| [0, 1, 2].map(|c| stats::median_of((0..frames).map(|f| model.colours(f)[r][c])).unwrap_or(0.0)))
        .collect();
    let colours: Vec<BackgroundColour> = rgb.iter().map(|&c| BackgroundColour::nearest(c)).collect();
    let colours_ok = expected.map(|want| want == colours.as_slice());
    BackgroundReport { layout: model.layout, colours, rgb, colours_ok }
}
