//! Rasterises a scene with antialiased edges.
//!
//! Each pixel is the mean of a 4×4 grid of point samples: edges get in-between colours as a camera
//! (or a VAE) would produce, so the model never learns jagged staircases, and a shape moving by a
//! fraction of a pixel still changes the frame. Integer averaging keeps the bytes machine-independent.

use super::{Scene, Shape};
use crate::video::Video;

/// Samples per pixel along each axis.
const GRID: usize = 4;

/// An object at one frame, ready to test sample points against.
struct Placed {
    shape: Shape,
    rgb: [u8; 3],
    centre: [f64; 2],
    size: f64,
}

impl Placed {
    /// Whether the pixel at `(x, y)` can touch the shape at all; most pixels cannot.
    fn near(&self, x: usize, y: usize) -> bool {
        let reach = self.size / 2.0 + 1.0;
        (x as f64 + 0.5 - self.centre[0]).abs() <= reach && (y as f64 + 0.5 - self.centre[1]).abs() <= reach
    }
}

impl Scene {
    /// Renders `frames` frames (any number) at the scene's size, starting from frame 0.
    pub fn render(&self, frames: usize) -> Video {
        let mut video = Video::new(frames, self.height, self.width);
        for f in 0..frames {
            self.render_frame(f, video.frame_mut(f));
        }
        video
    }

    fn render_frame(&self, frame: usize, out: &mut [u8]) {
        let placed: Vec<Placed> = self
            .objects
            .iter()
            .map(|o| Placed { shape: o.shape, rgb: o.colour.rgb(), centre: self.centre(o, frame as f64), size: o.size })
            .collect();
        let (first, last) = (0.5 / GRID as f64, 1.0 - 0.5 / GRID as f64);
        for y in 0..self.height {
            for x in 0..self.width {
                let (fx, fy) = (x as f64, y as f64);
                let corner = self.background.colour_at(fx + first, fy + first, self.width, self.height);
                let opposite = self.background.colour_at(fx + last, fy + last, self.width, self.height);
                // Only pixels on an edge (of a shape or between background halves) need the sample grid.
                let rgb = if corner == opposite && !placed.iter().any(|p| p.near(x, y)) {
                    corner.rgb()
                } else {
                    self.supersample(x, y, &placed)
                };
                let at = (y * self.width + x) * 3;
                out[at..at + 3].copy_from_slice(&rgb);
            }
        }
    }

    fn supersample(&self, x: usize, y: usize, placed: &[Placed]) -> [u8; 3] {
        let mut sum = [0u32; 3];
        for sy in 0..GRID {
            for sx in 0..GRID {
                let px = x as f64 + (sx as f64 + 0.5) / GRID as f64;
                let py = y as f64 + (sy as f64 + 0.5) / GRID as f64;
                let mut rgb = self.background.colour_at(px, py, self.width, self.height).rgb();
                for p in placed {
                    if p.shape.covers(px - p.centre[0], py - p.centre[1], p.size) {
                        rgb = p.rgb;
                    }
                }
                for (s, c) in sum.iter_mut().zip(rgb) {
                    *s += u32::from(c);
                }
            }
        }
        let count = (GRID * GRID) as u32;
        sum.map(|s| ((s + count / 2) / count) as u8)
    }
}

#[cfg(test)]
mod tests {
    use crate::palette::{BackgroundColour, Colour};
    use crate::scene::{Background, Direction, Scene, SceneObject, Shape, Speed};

    fn one_square(start: [f64; 2]) -> Scene {
        let square = SceneObject {
            shape: Shape::Square,
            colour: Colour::White,
            size: 10.0,
            start,
            direction: Direction::Down,
            speed: Speed::Slowly,
        };
        Scene {
            width: 32,
            height: 32,
            background: Background::LeftRight(BackgroundColour::Black, BackgroundColour::Gray),
            objects: vec![square],
        }
    }

    #[test]
    fn pixel_aligned_square_is_exact_and_halves_split_at_the_middle() {
        let video = one_square([10.0, 10.0]).render(1);
        assert_eq!(video.pixel(0, 5, 5), Colour::White.rgb());
        assert_eq!(video.pixel(0, 14, 14), Colour::White.rgb());
        assert_eq!(video.pixel(0, 15, 14), BackgroundColour::Black.rgb());
        assert_eq!(video.pixel(0, 4, 5), BackgroundColour::Black.rgb());
        assert_eq!(video.pixel(0, 30, 15), BackgroundColour::Black.rgb());
        assert_eq!(video.pixel(0, 30, 16), BackgroundColour::Gray.rgb());
    }

    #[test]
    fn half_covered_pixels_are_blended() {
        let video = one_square([10.5, 10.0]).render(1);
        // Column 5 is half inside the square: halfway between black and white.
        let [r, g, b] = video.pixel(0, 10, 5);
        assert_eq!([r, g, b], [129, 129, 129]);
    }

    #[test]
    fn frames_follow_the_motion() {
        let scene = one_square([10.0, 10.0]);
        let video = scene.render(5);
        assert_eq!(video.frames, 5);
        // Slowly at 32 px is 0.375 px per frame: after 4 frames the top edge is 1.5 px lower, at 6.5.
        assert_eq!(video.pixel(4, 7, 10), Colour::White.rgb());
        assert_eq!(video.pixel(4, 6, 10), [129, 129, 129]);
        assert_eq!(video.pixel(4, 5, 10), BackgroundColour::Black.rgb());
        assert_eq!(video.frame(0), scene.render(1).frame(0));
    }
}
