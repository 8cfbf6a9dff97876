//! The procedural videos as the trainer uses them: deterministic, captioned in a closed vocabulary.

use patchwork_scenes::{parse_prompt, vocabulary, SceneSampler};
use std::collections::BTreeSet;

#[test]
fn same_seed_gives_identical_bytes() {
    let (a, b) = (SceneSampler::new(64, 64), SceneSampler::new(64, 64));
    for seed in [0, 1, 42, u64::MAX] {
        let (first, second) = (a.sample(seed), b.sample(seed));
        assert_eq!(first, second);
        assert_eq!(first.caption(), second.caption());
        assert_eq!(first.render(17), second.render(17), "seed {seed}");
    }
    // Rendering is pure: a longer clip starts with the shorter one's frames.
    let scene = a.sample(5);
    let (short, long) = (scene.render(9), scene.render(33));
    assert_eq!(short.data[..], long.data[..short.data.len()]);
}

#[test]
fn vocabulary_covers_every_caption_word() {
    let words: BTreeSet<&str> = vocabulary().into_iter().collect();
    let sampler = SceneSampler::new(64, 64);
    let mut used = BTreeSet::new();
    for seed in 0..1000 {
        let caption = sampler.sample(seed).caption();
        assert!(caption.chars().all(|c| c.is_ascii_lowercase() || c == ' '), "{caption}");
        for word in caption.split(' ') {
            assert!(words.contains(word), "'{word}' of '{caption}' is not in the vocabulary");
            used.insert(word.to_string());
        }
    }
    // Nor does the vocabulary hold words no caption uses.
    assert_eq!(
        used.len(),
        words.len(),
        "unused: {:?}",
        words.iter().filter(|w| !used.contains(**w)).collect::<Vec<_>>()
    );
}

#[test]
fn parsing_a_caption_recovers_every_object() {
    let mut sampler = SceneSampler::new(64, 64);
    sampler.two_objects = 0.5;
    for seed in 0..1000 {
        let scene = sampler.sample(seed);
        let expectation = parse_prompt(&scene.caption());
        assert_eq!(expectation.objects.len(), scene.objects.len());
        for (want, got) in scene.objects.iter().zip(&expectation.objects) {
            assert_eq!(
                (got.colour, got.shape, got.direction),
                (Some(want.colour), Some(want.shape), Some(want.direction))
            );
        }
    }
}

#[test]
fn frames_hold_the_named_colours() {
    let sampler = SceneSampler::new(64, 64);
    for seed in 0..50 {
        let scene = sampler.sample(seed);
        let video = scene.render(3);
        for object in &scene.objects {
            let [x, y] = scene.centre(object, 0.0);
            // A triangle's box centre is inside it too (its middle row is half as wide as its base).
            assert_eq!(video.pixel(0, y as usize, x as usize), object.colour.rgb(), "{}", scene.caption());
        }
        let corner = video.pixel(0, 0, 0);
        assert!(scene.background.colours().iter().any(|c| c.rgb() == corner) || !scene.objects.is_empty());
    }
}
