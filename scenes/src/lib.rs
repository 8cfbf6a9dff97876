//! Procedural captioned videos for training the tiny text-to-video model, and an evaluator that
//! measures how well a generated video follows its prompt.
//!
//! The videos are deliberately simple (a shape or two gliding over a plain or two-tone background)
//! so that a model small enough to train on one machine can learn them, and so that a few lines of
//! image analysis can check the result: the right colour, shape and direction, and no jumps at the
//! seams between the windows the farm renders separately.

pub mod error;
pub mod eval;
pub mod mp4;
pub mod palette;
pub mod prompt;
pub mod scene;
pub mod video;

pub use error::Error;
pub use palette::{BackgroundColour, Colour};
pub use prompt::{parse_prompt, Expectation, ObjectExpectation};
pub use scene::{
    swap_object_colours, vocabulary, Background, CaptionParts, Direction, Scene, SceneObject, SceneSampler, Shape,
    Speed,
};
pub use video::Video;
