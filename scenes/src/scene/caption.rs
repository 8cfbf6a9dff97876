//! Captions: one small regular grammar, lowercase words and spaces only, because the tiny model's
//! tokenizer is word-level over [`vocabulary`] and learns faster when every caption has the same shape.
//!
//! ```text
//! caption    = object [ "and" object ] [ "on a" background "background" ]
//! object     = "a" colour shape "moving" [ speed ] direction
//! speed      = "slowly" | "quickly"
//! background = bgcolour [ "and" bgcolour ]        (two-tone: top or left half first)
//! ```
//!
//! A scene's full caption has every part; [`CaptionParts`] leaves out the optional ones, so that the model
//! also learns prompts that do not say everything ("a green square moving left").

use super::{Background, Direction, Scene, SceneObject, Shape, Speed};
use crate::palette::{BackgroundColour, Colour};

/// Words the grammar itself contributes, besides the names of colours, shapes, speeds and directions.
const GRAMMAR_WORDS: [&str; 5] = ["a", "and", "on", "moving", "background"];

impl Scene {
    /// The scene in words, e.g. "a red circle moving slowly right on a dark blue background".
    pub fn caption(&self) -> String {
        self.caption_with(CaptionParts::ALL)
    }

    /// The scene in words, with only the optional parts `parts` names, e.g. "a red circle moving right"
    /// with neither speed nor background.
    pub fn caption_with(&self, parts: CaptionParts) -> String {
        let objects: Vec<String> = self.objects.iter().map(|o| describe(o, parts.speed)).collect();
        let objects = objects.join(" and ");
        if parts.background {
            format!("{objects} on a {} background", self.background)
        } else {
            objects
        }
    }
}

/// Which optional parts of the grammar a caption has (the objects' colour, shape and direction it
/// always has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptionParts {
    /// Each object's speed word.
    pub speed: bool,
    /// "on a … background".
    pub background: bool,
}

impl CaptionParts {
    pub const ALL: CaptionParts = CaptionParts { speed: true, background: true };
}

/// The caption with its two objects' colours swapped, in any of its forms: "a red circle moving left and
/// a green square moving up" becomes "a green circle moving left and a red square moving up". Every word
/// stays; only which colour goes with which shape changes. `None` for a caption of fewer objects (or
/// one outside the grammar).
pub fn swap_object_colours(caption: &str) -> Option<String> {
    let mut words: Vec<&str> = caption.split(' ').collect();
    let objects_end = words.iter().position(|&w| w == "on").unwrap_or(words.len());
    let second = words[..objects_end].iter().position(|&w| w == "and")? + 2;
    let is_colour = |w: &str| Colour::ALL.iter().any(|c| c.name() == w);
    if second >= objects_end || words[0] != "a" || !is_colour(words[1]) || !is_colour(words[second]) {
        return None;
    }
    words.swap(1, second);
    Some(words.join(" "))
}

fn describe(object: &SceneObject, speed: bool) -> String {
    let (colour, shape, direction) = (object.colour.name(), object.shape.name(), object.direction.name());
    if speed {
        format!("a {colour} {shape} moving {} {direction}", object.speed.name())
    } else {
        format!("a {colour} {shape} moving {direction}")
    }
}

/// Every word any caption can contain, sorted and without duplicates ("blue" is both an object
/// colour and half of "dark blue", and appears once).
pub fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = GRAMMAR_WORDS.to_vec();
    words.extend(Colour::ALL.map(Colour::name));
    words.extend(Shape::ALL.map(Shape::name));
    words.extend(Speed::ALL.map(Speed::name));
    words.extend(Direction::ALL.map(Direction::name));
    words.extend(BackgroundColour::ALL.iter().flat_map(|c| c.words().iter().copied()));
    words.sort_unstable();
    words.dedup();
    words
}

/// The background's caption words, e.g. "black and gray".
impl std::fmt::Display for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.colours().iter().map(|c| c.words().join(" ")).collect();
        f.write_str(&names.join(" and "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(colour: Colour, shape: Shape, speed: Speed, direction: Direction) -> SceneObject {
        SceneObject { shape, colour, size: 16.0, start: [32.0, 32.0], direction, speed }
    }

    #[test]
    fn captions_follow_the_grammar() {
        let mut scene = Scene {
            width: 64,
            height: 64,
            background: Background::Plain(BackgroundColour::DarkBlue),
            objects: vec![object(Colour::Red, Shape::Circle, Speed::Slowly, Direction::Right)],
        };
        assert_eq!(scene.caption(), "a red circle moving slowly right on a dark blue background");
        scene.objects.push(object(Colour::Green, Shape::Triangle, Speed::Quickly, Direction::Down));
        scene.background = Background::TopBottom(BackgroundColour::Black, BackgroundColour::Gray);
        assert_eq!(
            scene.caption(),
            "a red circle moving slowly right and a green triangle moving quickly down on a black and gray background"
        );
    }

    #[test]
    fn captions_leave_out_the_parts_asked() {
        let scene = Scene {
            width: 64,
            height: 64,
            background: Background::LeftRight(BackgroundColour::DarkGreen, BackgroundColour::Gray),
            objects: vec![
                object(Colour::Green, Shape::Square, Speed::Quickly, Direction::Left),
                object(Colour::Blue, Shape::Triangle, Speed::Slowly, Direction::Up),
            ],
        };
        let with = |speed, background| scene.caption_with(CaptionParts { speed, background });
        assert_eq!(with(true, true), scene.caption());
        assert_eq!(
            with(false, true),
            "a green square moving left and a blue triangle moving up on a dark green and gray background"
        );
        assert_eq!(with(true, false), "a green square moving quickly left and a blue triangle moving slowly up");
        assert_eq!(with(false, false), "a green square moving left and a blue triangle moving up");
    }

    #[test]
    fn swapping_colours_gives_the_caption_of_the_swapped_scene() {
        let mut scene = Scene {
            width: 64,
            height: 64,
            background: Background::TopBottom(BackgroundColour::Black, BackgroundColour::DarkBlue),
            objects: vec![
                object(Colour::Blue, Shape::Square, Speed::Quickly, Direction::Left),
                object(Colour::Red, Shape::Triangle, Speed::Slowly, Direction::Up),
            ],
        };
        let mut swapped = scene.clone();
        (swapped.objects[0].colour, swapped.objects[1].colour) = (Colour::Red, Colour::Blue);
        for speed in [false, true] {
            for background in [false, true] {
                let parts = CaptionParts { speed, background };
                assert_eq!(swap_object_colours(&scene.caption_with(parts)), Some(swapped.caption_with(parts)));
            }
        }
        assert_eq!(
            swap_object_colours(&scene.caption()).unwrap(),
            "a red square moving quickly left and a blue triangle moving slowly up on a black and dark blue background"
        );
        scene.objects.truncate(1);
        assert_eq!(swap_object_colours(&scene.caption()), None, "one object, a two-tone background");
        assert_eq!(swap_object_colours(""), None);
        assert_eq!(swap_object_colours("a circle and a square"), None);
    }

    #[test]
    fn vocabulary_is_sorted_and_unique() {
        let words = vocabulary();
        assert!(words.windows(2).all(|w| w[0] < w[1]), "{words:?}");
        assert!(words.contains(&"dark") && words.contains(&"triangle") && words.contains(&"background"));
    }
}
