//! What a procedural video shows: a plain or two-tone background and one or two moving shapes.
//!
//! A scene is pure data (serialisable, so a training set can store its ground truth next to the
//! frames); where its objects are at any frame follows from a closed form, so a clip of any length
//! renders without stepping through time, and the same scene always gives the same frames.

mod caption;
mod render;
mod sampler;

pub use caption::{swap_object_colours, vocabulary, CaptionParts};
pub use sampler::SceneSampler;

use crate::palette::{BackgroundColour, Colour};
use serde::{Deserialize, Serialize};

/// Frame sizes are given relative to this width: sizes and speeds scale with the frame.
pub(crate) const REFERENCE_SIZE: f64 = 64.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    /// Upright and isosceles: its base spans the bounding box's bottom edge, its apex the top's middle.
    Triangle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Left,
    Right,
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speed {
    Slowly,
    Quickly,
}

/// The background: one colour, or the frame halved (at the middle row or column) into two colours,
/// the first on top (or left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Background {
    Plain(BackgroundColour),
    TopBottom(BackgroundColour, BackgroundColour),
    LeftRight(BackgroundColour, BackgroundColour),
}

/// One moving shape, as the caption describes it plus where it starts and how big it is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    pub shape: Shape,
    pub colour: Colour,
    /// Width and height of the shape's bounding box, in pixels.
    pub size: f64,
    /// Centre of the bounding box at frame 0, `[x, y]` in pixels from the top-left corner.
    pub start: [f64; 2],
    /// The direction at frame 0; it reverses whenever the shape reaches a frame edge.
    pub direction: Direction,
    pub speed: Speed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub width: usize,
    pub height: usize,
    pub background: Background,
    /// Drawn in order: a later object covers an earlier one where they overlap.
    pub objects: Vec<SceneObject>,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// Whether a point at `(dx, dy)` from the bounding box's centre lies inside a shape of `size`.
    pub(crate) fn covers(self, dx: f64, dy: f64, size: f64) -> bool {
        let half = size / 2.0;
        match self {
            Shape::Circle => dx * dx + dy * dy <= half * half,
            Shape::Square => dx.abs() <= half && dy.abs() <= half,
            // The half-width grows linearly from 0 at the apex (dy = -half) to `half` at the base.
            Shape::Triangle => dy.abs() <= half && dx.abs() <= (dy + half) / 2.0,
        }
    }
}

impl Direction {
    pub const ALL: [Direction; 4] = [Direction::Left, Direction::Right, Direction::Up, Direction::Down];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Left => "left",
            Direction::Right => "right",
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }

    /// Unit step `[dx, dy]` in image coordinates (y grows downwards).
    pub fn unit(self) -> [f64; 2] {
        match self {
            Direction::Left => [-1.0, 0.0],
            Direction::Right => [1.0, 0.0],
            Direction::Up => [0.0, -1.0],
            Direction::Down => [0.0, 1.0],
        }
    }

    pub fn opposite(self) -> Direction {
        match self {
            Direction::Left => Direction::Right,
            Direction::Right => Direction::Left,
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
        }
    }
}

impl Speed {
    pub const ALL: [Speed; 2] = [Speed::Slowly, Speed::Quickly];

    pub fn name(self) -> &'static str {
        match self {
            Speed::Slowly => "slowly",
            Speed::Quickly => "quickly",
        }
    }

    /// Pixels per frame in a frame whose shorter side is [`REFERENCE_SIZE`]: slow enough that a
    /// 17-frame clip rarely reaches an edge, and twice apart so the two are easy to tell.
    pub(crate) fn reference_step(self) -> f64 {
        match self {
            Speed::Slowly => 0.75,
            Speed::Quickly => 1.5,
        }
    }
}

impl Background {
    pub fn colours(&self) -> Vec<BackgroundColour> {
        match *self {
            Background::Plain(c) => vec![c],
            Background::TopBottom(a, b) | Background::LeftRight(a, b) => vec![a, b],
        }
    }

    /// The colour at a point in a `width` × `height` frame.
    pub(crate) fn colour_at(&self, x: f64, y: f64, width: usize, height: usize) -> BackgroundColour {
        match *self {
            Background::Plain(c) => c,
            Background::TopBottom(a, b) => pick_half(y, height, a, b),
            Background::LeftRight(a, b) => pick_half(x, width, a, b),
        }
    }
}

fn pick_half(at: f64, extent: usize, first: BackgroundColour, second: BackgroundColour) -> BackgroundColour {
    if at < extent as f64 / 2.0 {
        first
    } else {
        second
    }
}

impl Scene {
    /// How much larger than [`REFERENCE_SIZE`] the frame is: sizes and speeds are multiplied by it.
    pub fn scale(&self) -> f64 {
        scale_of(self.width, self.height)
    }

    /// Centre `[x, y]` of an object's bounding box at `frame`, after any bounces off the edges.
    pub fn centre(&self, object: &SceneObject, frame: f64) -> [f64; 2] {
        let step = object.speed.reference_step() * self.scale();
        let unit = object.direction.unit();
        let extents = [self.width as f64, self.height as f64];
        let half = object.size / 2.0;
        [0, 1].map(|axis| bounce(object.start[axis] + unit[axis] * step * frame, half, extents[axis] - half))
    }

    /// The way an object moves just after `frame`: its start direction, or the opposite after an odd
    /// number of bounces (at a wall, the way it leaves the wall).
    pub fn heading(&self, object: &SceneObject, frame: f64) -> Direction {
        let step = object.speed.reference_step() * self.scale();
        let unit = object.direction.unit();
        let axis = if unit[0] != 0.0 { 0 } else { 1 };
        let (low, high) = (object.size / 2.0, [self.width as f64, self.height as f64][axis] - object.size / 2.0);
        let span = high - low;
        if span <= 0.0 {
            return object.direction;
        }
        // Along the triangle wave of `bounce`, the first half of each period runs forwards.
        let phase = (object.start[axis] + unit[axis] * step * frame - low).rem_euclid(2.0 * span);
        let forwards = if unit[axis] > 0.0 { phase < span } else { phase > 0.0 && phase <= span };
        if forwards {
            object.direction
        } else {
            object.direction.opposite()
        }
    }

    /// The way an object moves over most of the steps from frame `from` to frame `to` (the one it
    /// moves at `from` where the two ways take equally many): what a caption of those frames names.
    pub fn heading_over(&self, object: &SceneObject, from: usize, to: usize) -> Direction {
        let first = self.heading(object, from as f64);
        let same = (from..to).filter(|&f| self.heading(object, f as f64) == first).count();
        if 2 * same >= to.saturating_sub(from) {
            first
        } else {
            first.opposite()
        }
    }

    /// The scene as it stands at `frame`: each object where it is then and heading the way it moves
    /// then. Its frame `j` shows this scene's frame `frame + j`, and its caption names the directions
    /// of a clip cut from here.
    pub fn at(&self, frame: usize) -> Scene {
        let t = frame as f64;
        let objects = self
            .objects
            .iter()
            .map(|o| SceneObject { start: self.centre(o, t), direction: self.heading(o, t), ..*o })
            .collect();
        Scene { objects, ..self.clone() }
    }
}

pub(crate) fn scale_of(width: usize, height: usize) -> f64 {
    width.min(height) as f64 / REFERENCE_SIZE
}

/// Folds an unbounded position into `[low, high]` as a ball bouncing between two walls would be:
/// a triangle wave, so the position at any time needs no history.
fn bounce(position: f64, low: f64, high: f64) -> f64 {
    let span = high - low;
    if span <= 0.0 {
        return (low + high) / 2.0;
    }
    let phase = (position - low).rem_euclid(2.0 * span);
    low + if phase <= span { phase } else { 2.0 * span - phase }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bouncing_reverses_at_both_walls() {
        assert_eq!(bounce(5.0, 2.0, 10.0), 5.0);
        assert_eq!(bounce(12.0, 2.0, 10.0), 8.0);
        assert_eq!(bounce(0.0, 2.0, 10.0), 4.0);
        assert_eq!(bounce(20.0, 2.0, 10.0), 4.0);
        assert_eq!(bounce(7.0, 5.0, 5.0), 5.0);
    }

    #[test]
    fn a_scene_at_a_frame_continues_the_scene() {
        let sampler = SceneSampler::new(64, 64);
        let mut turned = 0;
        for seed in 0..200 {
            let scene = sampler.sample(seed);
            for k in [0usize, 1, 9, 13, 29, 57] {
                let later = scene.at(k);
                assert_eq!(scene.at(0).caption(), scene.caption());
                for (o, p) in scene.objects.iter().zip(&later.objects) {
                    turned += (p.direction != o.direction) as usize;
                    for j in 0..40 {
                        let (a, b) = (scene.centre(o, (k + j) as f64), later.centre(p, j as f64));
                        assert!((a[0] - b[0]).abs() < 1e-9 && (a[1] - b[1]).abs() < 1e-9, "seed {seed} k {k} j {j}");
                    }
                    // Just after `k` it moves the way it is said to head.
                    let (a, b) = (later.centre(p, 0.0), later.centre(p, 1e-6));
                    let moved = [b[0] - a[0], b[1] - a[1]];
                    let unit = p.direction.unit();
                    assert!(moved[0] * unit[0] + moved[1] * unit[1] > 0.0, "seed {seed} k {k}: {moved:?}");
                }
            }
        }
        // Long enough clips do bounce.
        assert!(turned > 100, "{turned}");
        // At a wall, the way it leaves it.
        let wall = SceneObject {
            shape: Shape::Square,
            colour: Colour::Red,
            size: 16.0,
            start: [8.0, 32.0],
            direction: Direction::Left,
            speed: Speed::Slowly,
        };
        let scene = Scene {
            width: 64,
            height: 64,
            background: Background::Plain(BackgroundColour::Black),
            objects: vec![wall],
        };
        assert_eq!(scene.heading(&wall, 0.0), Direction::Right);
        let right = SceneObject { start: [56.0, 32.0], direction: Direction::Right, ..wall };
        assert_eq!(scene.heading(&right, 0.0), Direction::Left);
        assert_eq!(scene.heading(&right, 10.0), Direction::Left);

        // Over a stretch, the way it moves for most of it: a slow square 6 pixels (8 steps) short of the
        // right wall moves right for 8 steps and then left.
        let near = SceneObject { start: [50.0, 32.0], direction: Direction::Right, ..wall };
        assert_eq!(scene.heading_over(&near, 0, 16), Direction::Right);
        assert_eq!(scene.heading_over(&near, 0, 17), Direction::Left);
        assert_eq!(scene.heading_over(&near, 4, 12), Direction::Right);
        assert_eq!(scene.heading_over(&near, 8, 9), Direction::Left);
        assert_eq!(scene.heading_over(&near, 3, 3), Direction::Right);
    }

    #[test]
    fn triangle_is_upright_and_fills_half_its_box() {
        let size = 20.0;
        assert!(Shape::Triangle.covers(0.0, -9.9, size));
        assert!(!Shape::Triangle.covers(5.0, -9.0, size));
        assert!(Shape::Triangle.covers(9.9, 9.9, size));
        let n = 400;
        let inside = (0..n * n)
            .filter(|i| {
                let (x, y) = ((i % n) as f64 + 0.5, (i / n) as f64 + 0.5);
                Shape::Triangle.covers(x / n as f64 * size - 10.0, y / n as f64 * size - 10.0, size)
            })
            .count();
        let fill = inside as f64 / (n * n) as f64;
        assert!((fill - 0.5).abs() < 0.01, "{fill}");
    }

    #[test]
    fn objects_move_at_their_speed_and_bounce_back() {
        let object = SceneObject {
            shape: Shape::Square,
            colour: Colour::Red,
            size: 16.0,
            start: [50.0, 30.0],
            direction: Direction::Right,
            speed: Speed::Quickly,
        };
        let scene =
            Scene { width: 64, height: 64, background: Background::Plain(BackgroundColour::Black), objects: vec![] };
        assert_eq!(scene.centre(&object, 2.0), [53.0, 30.0]);
        // The right wall for the centre is at 56: 6 px out and 6 px back after 8 frames.
        assert_eq!(scene.centre(&object, 8.0), [50.0, 30.0]);
    }
}
