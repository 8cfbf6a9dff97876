//! Reads what a prompt asks for, so the evaluator knows what to check.
//!
//! Prompts come from people as well as from [`crate::Scene::caption`], so the reader is lenient: it
//! ignores case, punctuation and words it does not know, and whatever the prompt leaves out stays
//! `None` (unchecked) rather than failing.

use crate::palette::{BackgroundColour, Colour};
use crate::scene::{Direction, Shape, Speed};
use serde::Serialize;

/// What a prompt asks to see.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Expectation {
    /// In the order the prompt names them.
    pub objects: Vec<ObjectExpectation>,
    /// One colour for a plain background, two for a two-tone one; `None` when the prompt names none.
    pub background: Option<Vec<BackgroundColour>>,
}

/// One object the prompt names; a part it does not mention is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ObjectExpectation {
    pub colour: Option<Colour>,
    pub shape: Option<Shape>,
    pub direction: Option<Direction>,
    pub speed: Option<Speed>,
}

impl ObjectExpectation {
    fn is_empty(&self) -> bool {
        *self == ObjectExpectation::default()
    }
}

/// Words that introduce the background when the prompt does not end in "background".
const BACKGROUND_LEADS: [&str; 3] = ["on", "over", "against"];
/// Words that may sit inside a background phrase without ending it ("on a plain black background").
const BACKGROUND_FILLERS: [&str; 6] = ["a", "an", "the", "and", "plain", "dark"];

/// Parses a prompt in (or near) the caption grammar; see the module docs for what it tolerates.
pub fn parse_prompt(prompt: &str) -> Expectation {
    let lower = prompt.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty()).collect();
    let (object_words, background_words) = split_background(&words);
    let background = background_colours(background_words);
    Expectation { objects: objects(object_words), background: (!background.is_empty()).then_some(background) }
}

/// Separates the background phrase: the colour words just before "background", or else whatever
/// follows the last "on" / "over" / "against".
fn split_background<'a, 'w>(words: &'a [&'w str]) -> (&'a [&'w str], &'a [&'w str]) {
    if let Some(end) = words.iter().position(|&w| w == "background") {
        let mut start = end;
        while start > 0 && (BACKGROUND_FILLERS.contains(&words[start - 1]) || colour_word(words[start - 1])) {
            start -= 1;
        }
        let mut objects = &words[..start];
        if let Some((last, rest)) = objects.split_last() {
            if BACKGROUND_LEADS.contains(last) {
                objects = rest;
            }
        }
        return (objects, &words[start..end]);
    }
    match words.iter().rposition(|w| BACKGROUND_LEADS.contains(w)) {
        Some(at) => (&words[..at], &words[at + 1..]),
        None => (words, &[]),
    }
}

fn colour_word(word: &str) -> bool {
    object_colour(word).is_some() || background_colour(word, false).is_some()
}

/// Background colours in order; "dark" makes the next "blue" or "green" its dark variant.
fn background_colours(words: &[&str]) -> Vec<BackgroundColour> {
    let mut colours = Vec::new();
    let mut dark = false;
    for &word in words {
        if word == "dark" {
            dark = true;
            continue;
        }
        if let Some(colour) = background_colour(word, dark) {
            colours.push(colour);
        }
        dark = false;
    }
    colours
}

fn background_colour(word: &str, dark: bool) -> Option<BackgroundColour> {
    match (word, dark) {
        ("black", _) => Some(BackgroundColour::Black),
        ("gray" | "grey", _) => Some(BackgroundColour::Gray),
        ("brown", _) => Some(BackgroundColour::Brown),
        ("blue" | "navy", true) | ("navy", false) => Some(BackgroundColour::DarkBlue),
        ("green", true) => Some(BackgroundColour::DarkGreen),
        _ => None,
    }
}

/// Objects in order: a colour or shape word starts a new object once the current one has its shape
/// (the noun ends a noun phrase); motion words belong to the object being described.
fn objects(words: &[&str]) -> Vec<ObjectExpectation> {
    let mut done = Vec::new();
    let mut current = ObjectExpectation::default();
    for &word in words {
        let colour = object_colour(word);
        let shape = shape(word);
        if (colour.is_some() || shape.is_some()) && current.shape.is_some() {
            done.push(std::mem::take(&mut current));
        }
        if let Some(colour) = colour {
            current.colour.get_or_insert(colour);
        } else if let Some(shape) = shape {
            current.shape = Some(shape);
        } else if let Some(direction) = direction(word) {
            current.direction.get_or_insert(direction);
        } else if let Some(speed) = speed(word) {
            current.speed.get_or_insert(speed);
        }
    }
    if !current.is_empty() {
        done.push(current);
    }
    done
}

fn object_colour(word: &str) -> Option<Colour> {
    let word = if word == "violet" { "purple" } else { word };
    Colour::ALL.into_iter().find(|c| c.name() == word)
}

fn shape(word: &str) -> Option<Shape> {
    match word {
        "circle" | "disc" | "disk" | "ball" | "dot" => Some(Shape::Circle),
        "square" | "box" => Some(Shape::Square),
        "triangle" => Some(Shape::Triangle),
        _ => None,
    }
}

fn direction(word: &str) -> Option<Direction> {
    match word {
        "left" | "leftwards" | "leftward" => Some(Direction::Left),
        "right" | "rightwards" | "rightward" => Some(Direction::Right),
        "up" | "upwards" | "upward" => Some(Direction::Up),
        "down" | "downwards" | "downward" => Some(Direction::Down),
        _ => None,
    }
}

fn speed(word: &str) -> Option<Speed> {
    match word {
        "slowly" | "slow" => Some(Speed::Slowly),
        "quickly" | "quick" | "fast" => Some(Speed::Quickly),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::{CaptionParts, SceneSampler};

    fn object(colour: Colour, shape: Shape, direction: Direction) -> ObjectExpectation {
        ObjectExpectation { colour: Some(colour), shape: Some(shape), direction: Some(direction), speed: None }
    }

    #[test]
    fn captions_round_trip() {
        let sampler = SceneSampler::new(64, 64);
        for seed in 0..500 {
            let scene = sampler.sample(seed);
            let caption = scene.caption();
            let parsed = parse_prompt(&caption);
            assert_eq!(parsed.objects.len(), scene.objects.len(), "{caption}");
            for (want, got) in scene.objects.iter().zip(&parsed.objects) {
                let expected = ObjectExpectation {
                    colour: Some(want.colour),
                    shape: Some(want.shape),
                    direction: Some(want.direction),
                    speed: Some(want.speed),
                };
                assert_eq!(*got, expected, "{caption}");
            }
            assert_eq!(parsed.background, Some(scene.background.colours()), "{caption}");
            // A caption without the optional parts reads as one that does not say them.
            let short = scene.caption_with(CaptionParts { speed: false, background: false });
            let parsed = parse_prompt(&short);
            for (want, got) in scene.objects.iter().zip(&parsed.objects) {
                let expected = ObjectExpectation {
                    colour: Some(want.colour),
                    shape: Some(want.shape),
                    direction: Some(want.direction),
                    speed: None,
                };
                assert_eq!(*got, expected, "{short}");
            }
            assert_eq!(parsed.objects.len(), scene.objects.len(), "{short}");
            assert_eq!(parsed.background, None, "{short}");
        }
    }

    #[test]
    fn partial_and_messy_prompts() {
        let parsed = parse_prompt("A green square, moving LEFT!");
        assert_eq!(parsed.objects, [object(Colour::Green, Shape::Square, Direction::Left)]);
        assert_eq!(parsed.background, None);

        let parsed = parse_prompt("a blue circle moving quickly up on a dark green background.");
        let want =
            ObjectExpectation { speed: Some(Speed::Quickly), ..object(Colour::Blue, Shape::Circle, Direction::Up) };
        assert_eq!(parsed.objects, [want]);
        assert_eq!(parsed.background, Some(vec![BackgroundColour::DarkGreen]));

        let parsed = parse_prompt("a triangle going down over black");
        let want =
            ObjectExpectation { shape: Some(Shape::Triangle), direction: Some(Direction::Down), ..Default::default() };
        assert_eq!(parsed.objects, [want]);
        assert_eq!(parsed.background, Some(vec![BackgroundColour::Black]));

        let parsed =
            parse_prompt("a red circle moving left and a yellow triangle moving right, grey and dark blue background");
        let want = [
            object(Colour::Red, Shape::Circle, Direction::Left),
            object(Colour::Yellow, Shape::Triangle, Direction::Right),
        ];
        assert_eq!(parsed.objects, want);
        assert_eq!(parsed.background, Some(vec![BackgroundColour::Gray, BackgroundColour::DarkBlue]));
    }

    #[test]
    fn nothing_recognisable_gives_an_empty_expectation() {
        assert_eq!(parse_prompt(""), Expectation::default());
        assert_eq!(parse_prompt("a cat playing the piano"), Expectation::default());
    }
}
