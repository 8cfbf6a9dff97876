//! Draws random scenes from a seed.
//!
//! Every choice comes from one ChaCha8 stream seeded by the caller, in a fixed order, so a seed
//! names the same scene on every machine and in every release of `rand_chacha`.

use super::{scale_of, Background, Direction, Scene, SceneObject, Shape, Speed};
use crate::palette::{BackgroundColour, Colour};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The clip length the training set uses unless told otherwise ([`SceneSampler::planned_frames`]).
const PLANNED_FRAMES: usize = 17;
/// How often an object gets room for only [`MIN_RUN`] frames ahead, so that some clips show a bounce.
const ANYWHERE: f64 = 0.15;
/// Frames an object moves in its captioned direction before any bounce, so the caption's direction
/// is what the clip visibly starts with.
const MIN_RUN: f64 = 4.0;
/// Object sizes at [`super::REFERENCE_SIZE`], in pixels across.
const SIZE_RANGE: (f64, f64) = (14.0, 22.0);
/// Attempts at placing a second object whose path stays clear of the first one's.
const PLACEMENT_TRIES: usize = 200;
/// Clearance between two objects' bounding boxes along their planned paths, at reference size.
const CLEARANCE: f64 = 2.0;

/// Chooses scenes for a frame size; the probabilities are public so a training run can skew them.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneSampler {
    pub width: usize,
    pub height: usize,
    /// Probability that a scene holds two objects rather than one.
    pub two_objects: f64,
    /// Probability that the background is two-tone rather than plain.
    pub two_tone: f64,
    /// The clip length scenes are planned for: most objects start with room to move this long without
    /// reaching an edge (where the frame is too small for that, they start at the wall they move away
    /// from, for the longest run it has), and two objects' paths keep clear of each other this long.
    pub planned_frames: usize,
}

impl SceneSampler {
    pub fn new(width: usize, height: usize) -> Self {
        SceneSampler { width, height, two_objects: 0.2, two_tone: 0.3, planned_frames: PLANNED_FRAMES }
    }

    /// The scene for `seed`: the same seed always gives the same scene.
    pub fn sample(&self, seed: u64) -> Scene {
        let mut draw = Draw(ChaCha8Rng::seed_from_u64(seed));
        let background = if draw.chance(self.two_tone) {
            let first = draw.pick(&BackgroundColour::ALL);
            let others: Vec<BackgroundColour> = BackgroundColour::ALL.into_iter().filter(|&c| c != first).collect();
            let second = draw.pick(&others);
            if draw.chance(0.5) {
                Background::TopBottom(first, second)
            } else {
                Background::LeftRight(first, second)
            }
        } else {
            Background::Plain(draw.pick(&BackgroundColour::ALL))
        };
        let count = if draw.chance(self.two_objects) { 2 } else { 1 };
        let mut scene =
            Scene { width: self.width, height: self.height, background, objects: Vec::with_capacity(count) };
        for _ in 0..count {
            // Two objects never share a colour, so a caption (and the evaluator) can tell them apart.
            let colours: Vec<Colour> = Colour::ALL
                .into_iter()
                .filter(|&c| background.colours().iter().all(|&bg| c.stands_out_on(bg)))
                .filter(|&c| scene.objects.iter().all(|o| o.colour != c))
                .collect();
            let colour = draw.pick(&colours);
            let shape = draw.pick(&Shape::ALL);
            let mut object = self.place(&mut draw, colour, shape);
            for _ in 1..PLACEMENT_TRIES {
                if scene.objects.iter().all(|other| stays_clear(&scene, other, &object, self.planned_frames)) {
                    break;
                }
                object = self.place(&mut draw, colour, shape);
            }
            scene.objects.push(object);
        }
        scene
    }

    /// Size, motion and a start with room ahead to move for [`Self::planned_frames`] (usually).
    fn place(&self, draw: &mut Draw, colour: Colour, shape: Shape) -> SceneObject {
        let scale = scale_of(self.width, self.height);
        let size = scale * draw.range(SIZE_RANGE.0, SIZE_RANGE.1);
        let direction = draw.pick(&Direction::ALL);
        let speed = draw.pick(&Speed::ALL);
        let step = speed.reference_step() * scale;
        let planned = self.planned_frames.max(1) as f64 - 1.0;
        let travel = step * if draw.chance(ANYWHERE) { MIN_RUN.min(planned) } else { planned };
        let extents = [self.width as f64, self.height as f64];
        let unit = direction.unit();
        let start = [0, 1].map(|axis| {
            let (low, high) = (size / 2.0, extents[axis] - size / 2.0);
            let (mut from, mut to) = (low, high);
            if unit[axis] > 0.0 {
                to = high - travel;
            } else if unit[axis] < 0.0 {
                from = low + travel;
            }
            if from > to {
                // No room for the whole run: start where the run is longest.
                (from, to) = match unit[axis] {
                    u if u > 0.0 => (low, low),
                    u if u < 0.0 => (high, high),
                    _ => (low, high),
                };
            }
            draw.range(from, to)
        });
        SceneObject { shape, colour, size, start, direction, speed }
    }
}

/// Whether two objects' bounding boxes keep apart over the planned clip, so that neither hides
/// the other: occlusion is hard for a tiny model to learn and blurs what the evaluator measures.
fn stays_clear(scene: &Scene, a: &SceneObject, b: &SceneObject, frames: usize) -> bool {
    let reach = (a.size + b.size) / 2.0 + CLEARANCE * scene.scale();
    (0..frames).all(|frame| {
        let (ca, cb) = (scene.centre(a, frame as f64), scene.centre(b, frame as f64));
        (ca[0] - cb[0]).abs() >= reach || (ca[1] - cb[1]).abs() >= reach
    })
}

/// The few kinds of random choice a scene needs, on top of ChaCha8's raw 64-bit words.
struct Draw(ChaCha8Rng);

impl Draw {
    /// Uniform in `[0, 1)`, from the top 53 bits of one word.
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let index = (self.unit() * items.len() as f64) as usize;
        items[index.min(items.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_scene_and_seeds_differ() {
        let sampler = SceneSampler::new(64, 64);
        assert_eq!(sampler.sample(7), sampler.sample(7));
        let captions: std::collections::HashSet<String> = (0..50).map(|s| sampler.sample(s).caption()).collect();
        assert!(captions.len() > 45, "only {} distinct captions in 50 seeds", captions.len());
    }

    #[test]
    fn mixture_follows_the_probabilities() {
        let sampler = SceneSampler::new(64, 64);
        let scenes: Vec<Scene> = (0..2000).map(|s| sampler.sample(s)).collect();
        let two = scenes.iter().filter(|s| s.objects.len() == 2).count() as f64 / 2000.0;
        let split = scenes.iter().filter(|s| !matches!(s.background, Background::Plain(_))).count() as f64 / 2000.0;
        assert!((two - 0.2).abs() < 0.04, "{two}");
        assert!((split - 0.3).abs() < 0.04, "{split}");
    }

    #[test]
    fn objects_fit_stand_out_and_mostly_keep_off_the_edges() {
        let sampler = SceneSampler::new(64, 64);
        let mut bounced = 0;
        let scenes: Vec<Scene> = (0..1000).map(|s| sampler.sample(s)).collect();
        for scene in &scenes {
            for object in &scene.objects {
                assert!((14.0..=22.0).contains(&object.size), "{object:?}");
                for c in scene.background.colours() {
                    assert!(object.colour.stands_out_on(c), "{object:?} on {c:?}");
                }
                // Moving freely for 16 frames covers 16 steps; a bounce shortens the net travel.
                let step = object.speed.reference_step();
                let [x0, y0] = scene.centre(object, 0.0);
                let [x1, y1] = scene.centre(object, 16.0);
                if ((x1 - x0).abs() + (y1 - y0).abs() - 16.0 * step).abs() > 1e-9 {
                    bounced += 1;
                }
            }
            if let [a, b] = scene.objects[..] {
                assert_ne!(a.colour, b.colour);
            }
        }
        assert!(bounced > 10 && bounced < 150, "{bounced} objects bounce within 17 frames");
    }

    #[test]
    fn longer_planned_clips_give_room_for_the_whole_clip() {
        let sampler = SceneSampler { planned_frames: 33, ..SceneSampler::new(64, 64) };
        let (mut objects, mut bounced, mut cramped, mut long_runs, mut pairs, mut clear) = (0, 0, 0, 0, 0, 0);
        for seed in 0..1000 {
            let scene = sampler.sample(seed);
            for object in &scene.objects {
                objects += 1;
                let run = (0..32).take_while(|&f| scene.heading(object, f as f64) == object.direction).count();
                bounced += (run < 32) as usize;
                // Where the frame has no room for 32 steps, the object starts at the wall behind it and
                // crosses the whole frame before it turns (unless it drew one of the short runs).
                let (room, step) = (64.0 - object.size, object.speed.reference_step());
                if step * 32.0 > room {
                    cramped += 1;
                    long_runs += (run as f64 >= room / step - 1.0) as usize;
                }
            }
            if let [a, b] = scene.objects[..] {
                pairs += 1;
                clear += stays_clear(&scene, &a, &b, 33) as usize;
            }
        }
        // The short runs (0.15 of objects) and the quick objects the frame has no room for turn.
        assert!(bounced > 150 && bounced < 600, "{bounced} of {objects} objects turn within 33 frames");
        assert!(cramped > 100 && long_runs as f64 > 0.75 * cramped as f64, "{long_runs} of {cramped}");
        assert!(pairs > 100 && clear as f64 > 0.9 * pairs as f64, "{clear} of {pairs} pairs keep clear");
    }

    #[test]
    fn sizes_and_speeds_scale_with_the_frame() {
        let scene = SceneSampler::new(128, 96).sample(3);
        for object in &scene.objects {
            assert!((21.0..=33.0).contains(&object.size), "{object:?}");
        }
        assert_eq!(scene.scale(), 1.5);
    }
}
