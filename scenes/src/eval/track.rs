//! Links each frame's detections into tracks: one track per object over the clip.
//!
//! Scenes hold one or two objects of different colours that keep apart, so greedy matching on
//! position and colour is enough. There is deliberately no distance gate: when a generated video
//! jumps (say at a window seam), the object should stay one track whose jump the consistency
//! measures see, not turn into two tracks that each look smooth.

use super::measure::Detection;
use super::stats::distance;

/// Colour counts this much against position when matching: 1 RGB unit weighs as 0.25 px, so an
/// object of another colour is never preferred over a nearby one of the same colour by accident.
const COLOUR_WEIGHT: f64 = 0.25;

/// For each frame, the index of the track's detection in that frame, if it was seen.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Track {
    pub members: Vec<Option<usize>>,
    /// Sum of the detections' areas: large and persistent tracks come first.
    pub weight: f64,
}

/// Tracks ordered by weight, heaviest first.
pub(super) fn link(frames: &[Vec<Detection>]) -> Vec<Track> {
    let mut tracks: Vec<Track> = Vec::new();
    // The latest detection of each track, the thing a new detection is compared with.
    let mut last: Vec<Detection> = Vec::new();
    for (f, detections) in frames.iter().enumerate() {
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (t, previous) in last.iter().enumerate() {
            for (d, detection) in detections.iter().enumerate() {
                let moved =
                    (previous.centroid[0] - detection.centroid[0]).hypot(previous.centroid[1] - detection.centroid[1]);
                let cost = moved + COLOUR_WEIGHT * distance(previous.mean_rgb, detection.mean_rgb);
                pairs.push((cost, t, d));
            }
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut track_taken, mut detection_taken) = (vec![false; tracks.len()], vec![false; detections.len()]);
        for (_, t, d) in pairs {
            if track_taken[t] || detection_taken[d] {
                continue;
            }
            (track_taken[t], detection_taken[d]) = (true, true);
            tracks[t].members[f] = Some(d);
            last[t] = detections[d].clone();
        }
        for (d, detection) in detections.iter().enumerate().filter(|(d, _)| !detection_taken[*d]) {
            let mut members = vec![None; frames.len()];
            members[f] = Some(d);
            tracks.push(Track { members, weight: 0.0 });
            last.push(detection.clone());
        }
    }
    for track in &mut tracks {
        track.weight = track.members.iter().enumerate().filter_map(|(f, m)| m.map(|d| frames[f][d].area)).sum();
    }
    tracks.sort_by(|a, b| b.weight.total_cmp(&a.weight));
    tracks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f64, rgb: [f64; 3]) -> Detection {
        Detection {
            centroid: [x, 10.0],
            area: 100.0,
            mean_rgb: rgb,
            bbox: [0, 0, 1, 1],
            fill: 1.0,
            skew: 0.0,
            touches_edge: false,
        }
    }

    #[test]
    fn crossing_colours_keep_their_tracks_and_gaps_are_bridged() {
        let (red, blue) = ([220.0, 40.0, 40.0], [30.0, 110.0, 235.0]);
        let frames = vec![
            vec![at(10.0, red), at(30.0, blue)],
            vec![at(31.0, blue), at(12.0, red)],
            vec![at(32.0, blue)],
            vec![at(16.0, red), at(33.0, blue)],
        ];
        let tracks = link(&frames);
        assert_eq!(tracks.len(), 2);
        let red_track = tracks.iter().find(|t| t.members[0] == Some(0)).expect("red");
        assert_eq!(red_track.members, [Some(0), Some(1), None, Some(0)]);
        assert_eq!(tracks[0].members, [Some(1), Some(0), Some(0), Some(1)]);
    }
}
