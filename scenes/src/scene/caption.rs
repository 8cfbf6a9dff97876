//! Captions: one small regular grammar, lowercase words and spaces only, because the tiny model's
//! tokenizer is word-level over [`vocabulary`] and learns faster when every caption has the same shape.
//!
//! ```text
//! caption    = object [ "and" object ] "on a" background "background"
//! object     = "a" colour shape "moving" speed direction
//! speed      = "slowly" | "quickly"
//! background = bgcolour [ "and" bgcolour ]        (two-tone: top or left half first)
//! ```

use super::{Background, Direction, Scene, SceneObject, Shape, Speed};
use crate::palette::{BackgroundColour, Colour};

/// Words the grammar itself contributes, besides the names of colours, shapes, speeds and directions.
const GRAMMAR_WORDS: [&str; 5] = ["a", "and", "on", "moving", "background"];

impl Scene {
    /// The scene in words, e.g. "a red circle moving slowly right on a dark blue background".
    pub fn caption(&self) -> String {
        let objects: Vec<String> = self.objects.iter().map(describe).collect();
        format!("{} on a {} background", objects.join(" and "), self.background)
    }
}

fn describe(object: &SceneObject) -> String {
    format!(
        "a {} {} moving {} {}",
        object.colour.name(),
        object.shape.name(),
        object.speed.name(),
        object.direction.name()
    )
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
    fn vocabulary_is_sorted_and_unique() {
        let words = vocabulary();
        assert!(words.windows(2).all(|w| w[0] < w[1]), "{words:?}");
        assert!(words.contains(&"dark") && words.contains(&"triangle") && words.contains(&"background"));
    }
}
