//! The shipped recipes, how each relates to the one it was derived from, and the errors bad ones get.

use super::*;

#[test]
fn the_shipped_recipes_are_valid_and_share_the_vae() {
    let default = Recipe::default();
    default.validate().unwrap();
    let cpu: Recipe = serde_json::from_str(include_str!("../../../../models/recipes/cpu-hour.json")).unwrap();
    cpu.validate().unwrap();
    // The same VAE phase; the decoder's own phase is shorter, to fit the hour.
    assert_eq!(VaeRecipe { decoder: default.vae.decoder.clone(), ..cpu.vae.clone() }, default.vae);
    assert!(cpu.vae.decoder.steps > 0 && cpu.vae.decoder.steps < default.vae.decoder.steps);
    assert!(cpu.dit.steps * cpu.dit.batch < default.dit.steps * default.dit.batch);

    // The fine-tune keeps the shipped model's sizes and data and trains its transformer further.
    let tune: Recipe = serde_json::from_str(include_str!("../../../../models/recipes/finetune-captions.json")).unwrap();
    tune.validate().unwrap();
    assert_eq!(tune.start_from.as_deref(), Some(std::path::Path::new("models/tiny")));
    assert_eq!((tune.vae.steps, tune.vae.decoder.steps), (0, 0));
    assert!(tune.dit.caption_part_dropout > 0.0);
    let same = Recipe {
        start_from: None,
        vae: VaeRecipe { steps: default.vae.steps, decoder: default.vae.decoder.clone(), ..tune.vae.clone() },
        dit: DitRecipe {
            steps: default.dit.steps,
            batch: default.dit.batch,
            lr: default.dit.lr,
            caption_part_dropout: default.dit.caption_part_dropout,
            ..tune.dit.clone()
        },
        ..tune.clone()
    };
    assert_eq!(same, default);

    // The decoder's fine-tune keeps everything but the decoder, which it trains on long clips.
    let long: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-long-decoder.json")).unwrap();
    long.validate().unwrap();
    assert_eq!(long.start_from.as_deref(), Some(std::path::Path::new("models/tiny")));
    assert_eq!((long.vae.steps, long.dit.steps), (0, 0));
    assert!(long.vae.decoder.steps > 0 && long.vae.decoder.clips.iter().any(|c| c.frames > 4 * long.frames));
    let same = Recipe {
        start_from: None,
        vae: VaeRecipe {
            steps: default.vae.steps,
            decoder: DecoderRecipe {
                steps: default.vae.decoder.steps,
                lr: default.vae.decoder.lr,
                clips: Vec::new(),
                ..long.vae.decoder.clone()
            },
            ..long.vae.clone()
        },
        // The transformer's fields are the caption fine-tune's, and idle: it takes no steps.
        dit: DitRecipe {
            steps: default.dit.steps,
            batch: default.dit.batch,
            lr: default.dit.lr,
            caption_part_dropout: default.dit.caption_part_dropout,
            ..long.dit.clone()
        },
        ..long.clone()
    };
    assert_eq!(same, default);

    // The wide decoder's fine-tune is the long-clip decoder's with a decoder twice as wide, widened
    // from the start model's, and only the check clips encoded (the start model's statistics are kept).
    let wide: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-wide-decoder.json")).unwrap();
    wide.validate().unwrap();
    assert_eq!(wide.vae_config().decoder_base_dim, Some(2 * wide.vae.base_dim));
    let same = Recipe {
        vae: VaeRecipe {
            decoder: DecoderRecipe { steps: long.vae.decoder.steps, base_dim: None, ..wide.vae.decoder.clone() },
            ..wide.vae.clone()
        },
        dit: DitRecipe { clips: long.dit.clips, ..wide.dit.clone() },
        ..wide.clone()
    };
    assert_eq!(same, long);
    assert_eq!(Recipe::default().vae_config().decoder_base_dim, None);

    // The windows' fine-tune trains the transformer further on windows cut from longer clips, and
    // keeps the rest of the caption fine-tune's recipe.
    let windows: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-windows.json")).unwrap();
    windows.validate().unwrap();
    assert!(windows.clip_frames() > windows.frames && windows.dit.steps > 0);
    let same = Recipe {
        dit: DitRecipe { clips: tune.dit.clips, clip_frames: None, ..windows.dit.clone() },
        ..windows.clone()
    };
    assert_eq!(same, tune);

    // The continuation fine-tune is the windows' with half the draws holding one or two latent frames
    // clean, half the draws taking a clip's first window, and fewer clips and steps.
    let continued: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-continue.json")).unwrap();
    continued.validate().unwrap();
    assert_eq!(continued.dit.context, Some(ContextFrames { chance: 0.5, max_frames: 2, later_windows: false }));
    let same = Recipe {
        dit: DitRecipe {
            clips: windows.dit.clips,
            steps: windows.dit.steps,
            context: None,
            first_window: None,
            ..continued.dit.clone()
        },
        ..continued.clone()
    };
    assert_eq!(same, windows);
    // Its twin on the clips' own starts is the caption fine-tune holding frames so, on fewer clips and steps.
    let starts: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-continue-starts.json")).unwrap();
    starts.validate().unwrap();
    assert_eq!(starts.dit.context, continued.dit.context);
    let same = Recipe {
        dit: DitRecipe { clips: tune.dit.clips, steps: tune.dit.steps, context: None, ..starts.dit.clone() },
        ..starts.clone()
    };
    assert_eq!(same, tune);
    // And the twin whose draws with context take later windows of 33-frame clips, the rest mostly starts.
    let later: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-continue-later.json")).unwrap();
    later.validate().unwrap();
    assert_eq!(later.dit.context, Some(ContextFrames { later_windows: true, ..starts.dit.context.clone().unwrap() }));
    assert_eq!((later.clip_frames(), later.dit.first_window), (33, Some(0.9)));
    let same = Recipe {
        dit: DitRecipe {
            clip_frames: None,
            first_window: None,
            context: starts.dit.context.clone(),
            ..later.dit.clone()
        },
        ..later.clone()
    };
    assert_eq!(same, starts);

    // The long windows' fine-tune is the windows' with scenes planned for the whole clip and half the
    // draws taking a clip's first window.
    let long_windows: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-long-windows.json")).unwrap();
    long_windows.validate().unwrap();
    assert_eq!(long_windows.dataset_sampler().planned_frames, long_windows.clip_frames());
    assert_eq!(long_windows.dit.first_window, Some(0.5));
    let same = Recipe {
        dit: DitRecipe { first_window: None, planned_frames: None, ..long_windows.dit.clone() },
        ..long_windows.clone()
    };
    assert_eq!(same, windows);

    // The pairs' fine-tune trains the transformer further on a dataset where half the scenes hold two
    // objects, and keeps the rest of the caption fine-tune's recipe.
    let pairs: Recipe = serde_json::from_str(include_str!("../../../../models/recipes/finetune-pairs.json")).unwrap();
    pairs.validate().unwrap();
    assert_eq!(pairs.dataset_sampler().two_objects, 0.5);
    assert!(pairs.dit.steps > 0);
    let same = Recipe {
        dit: DitRecipe { clips: tune.dit.clips, steps: tune.dit.steps, two_objects: None, ..pairs.dit.clone() },
        ..pairs.clone()
    };
    assert_eq!(same, tune);
    assert_eq!(tune.dataset_sampler(), SceneSampler::new(tune.width, tune.height));

    // The binding fine-tune is the pairs' fine-tune with the contrastive term for two-object captions.
    let binding: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-binding.json")).unwrap();
    binding.validate().unwrap();
    assert!(binding.dit.binding_loss > 0.0);
    let same =
        Recipe { dit: DitRecipe { binding_loss: pairs.dit.binding_loss, ..binding.dit.clone() }, ..binding.clone() };
    assert_eq!(same, pairs);

    // The soft attention's fine-tune is the binding fine-tune with the text encoder's queries scaled
    // down at its start and its position biases learning faster.
    let soft: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-soft-attention.json")).unwrap();
    soft.validate().unwrap();
    assert!(soft.text.query_scale < 1.0 && soft.text.position_lr > 1.0);
    let same = Recipe { text: TextRecipe { query_scale: 1.0, position_lr: 1.0, ..soft.text.clone() }, ..soft };
    assert_eq!(same, binding);

    // The pixel loss's fine-tune adds the decoded-frame term to the caption fine-tune's recipe, on a
    // dataset of its own seed and half the clips (its steps cost 1.7 times as much).
    let pixel: Recipe = serde_json::from_str(include_str!("../../../../models/recipes/finetune-pixel.json")).unwrap();
    pixel.validate().unwrap();
    assert!(pixel.dit.pixel_loss > 0.0 && pixel.dit.steps > 0 && pixel.seed != tune.seed);
    let same = Recipe {
        seed: tune.seed,
        dit: DitRecipe { clips: tune.dit.clips, pixel_loss: tune.dit.pixel_loss, ..pixel.dit.clone() },
        ..pixel
    };
    assert_eq!(same, tune);

    for p in [-0.1, 1.5, f64::NAN] {
        let mut bad = default.clone();
        bad.dit.two_objects = Some(p);
        let err = bad.validate().unwrap_err();
        assert!(err.contains("dit.two_objects"), "{err}");
    }
    for (chance, max_frames, field) in
        [(1.5, 2, "chance"), (f64::NAN, 2, "chance"), (0.5, 0, "max_frames"), (0.5, 5, "max_frames")]
    {
        let mut bad = default.clone();
        bad.dit.context = Some(ContextFrames { chance, max_frames, later_windows: false });
        let err = bad.validate().unwrap_err();
        assert!(err.contains(&format!("dit.context.{field}")), "{err}");
    }
    let mut context = default.clone();
    context.dit.context = Some(ContextFrames { chance: 0.5, max_frames: 4, later_windows: false });
    context.validate().unwrap();
    // Later windows need clips longer than the window.
    let mut later = context.clone();
    later.dit.context = Some(ContextFrames { chance: 0.5, max_frames: 4, later_windows: true });
    let err = later.validate().unwrap_err();
    assert!(err.contains("dit.context.later_windows") && err.contains("dit.clip_frames"), "{err}");
    later.dit.clip_frames = Some(33);
    later.validate().unwrap();
    context.dit.pixel_loss = 0.5;
    let err = context.validate().unwrap_err();
    assert!(err.contains("dit.context") && err.contains("dit.pixel_loss"), "{err}");
    let mut bad = default.clone();
    bad.dit.clip_frames = Some(31);
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.clip_frames") && err.contains("31"), "{err}");
    bad.dit.clip_frames = Some(13);
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.clip_frames") && err.contains("13"), "{err}");
    let mut bad = default.clone();
    bad.dit.first_window = Some(0.5);
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.first_window") && err.contains("clip_frames"), "{err}");
    bad.dit.clip_frames = Some(33);
    bad.validate().unwrap();
    bad.dit.first_window = Some(1.0);
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.first_window") && err.contains('1'), "{err}");
    bad.dit.first_window = None;
    bad.dit.planned_frames = Some(0);
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.planned_frames"), "{err}");
    let mut bad = default.clone();
    bad.dit.caption_part_dropout = 1.0;
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.caption_part_dropout"), "{err}");
    let mut bad = default.clone();
    bad.dit.stored_dtype = "f8".into();
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.stored_dtype") && err.contains("f8"), "{err}");
    let mut bad = default;
    bad.vae.decoder =
        DecoderRecipe { steps: 10, lr: 1e-3, object_weight: 0.5, latent_noise: 0.0, clips: vec![], base_dim: None };
    let err = bad.validate().unwrap_err();
    assert!(err.contains("vae.decoder.object_weight") && err.contains("0.5"), "{err}");
    let mut bad = Recipe::default();
    bad.dit.pixel_loss = -1.0;
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.pixel_loss") && err.contains("-1"), "{err}");
    bad.dit.pixel_loss = 1.0;
    bad.validate().unwrap();
    bad.dit.clip_frames = Some(33);
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.pixel_loss") && err.contains("clip_frames"), "{err}");
    let mut bad = Recipe::default();
    bad.dit.binding_loss = f64::NAN;
    let err = bad.validate().unwrap_err();
    assert!(err.contains("dit.binding_loss"), "{err}");
    for (v, field) in [(0.0, "text.query_scale"), (f64::INFINITY, "text.query_scale"), (-2.0, "text.position_lr")] {
        let mut bad = Recipe::default();
        if field == "text.query_scale" {
            bad.text.query_scale = v;
        } else {
            bad.text.position_lr = v;
        }
        let err = bad.validate().unwrap_err();
        assert!(err.contains(field), "{err}");
    }
    // Both default to 1 and stay out of a recipe's JSON there, so the shipped recipes read as before.
    let json = serde_json::to_string(&Recipe::default()).unwrap();
    assert!(!json.contains("query_scale") && !json.contains("position_lr"), "{json}");
    let mut bad = Recipe::default();
    bad.vae.decoder.base_dim = Some(0);
    let err = bad.validate().unwrap_err();
    assert!(err.contains("vae.decoder.base_dim"), "{err}");
    let mut bad = Recipe::default();
    bad.vae.decoder.clips = vec![ClipShape { frames: 77, crop: 16 }, ClipShape { frames: 76, crop: 16 }];
    let err = bad.validate().unwrap_err();
    assert!(err.contains("vae.decoder.clips[1].frames") && err.contains("76"), "{err}");
    bad.vae.decoder.clips[1] = ClipShape { frames: 41, crop: 12 };
    let err = bad.validate().unwrap_err();
    assert!(err.contains("vae.decoder.clips[1].crop") && err.contains("12"), "{err}");
}

#[test]
fn the_colour_contrast_fine_tune_is_the_caption_fine_tune_with_a_vae_phase_and_checks_its_fields() {
    let tune: Recipe = serde_json::from_str(include_str!("../../../../models/recipes/finetune-captions.json")).unwrap();
    let contrast: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-colour-contrast.json")).unwrap();
    contrast.validate().unwrap();
    let c = &contrast.vae.colour_contrast;
    assert!(c.weight > 0.0 && c.margin > 0.0);
    // The shipped model's VAE trained on with the term, then its transformer on the new latents.
    assert!(contrast.vae.steps > 0 && contrast.vae.lr < tune.vae.lr && contrast.vae.decoder.steps == 0);
    let same = Recipe {
        vae: VaeRecipe { steps: 0, lr: tune.vae.lr, colour_contrast: Contrast::default(), ..contrast.vae.clone() },
        dit: DitRecipe { lr: tune.dit.lr, clips: tune.dit.clips, ..contrast.dit.clone() },
        ..contrast.clone()
    };
    assert_eq!(same, tune);
    // Off, the term stays out of a recipe's JSON, so the other recipes read as before.
    assert!(!serde_json::to_string(&tune).unwrap().contains("colour_contrast"));

    let mut bad = contrast.clone();
    bad.vae.batch = 4;
    let err = bad.validate().unwrap_err();
    assert!(err.contains("vae.batch") && err.contains("colour_contrast") && err.contains('4'), "{err}");
    assert_contrast_fields_checked(&contrast, "colour_contrast", |v| &mut v.colour_contrast);
}

/// A term's margin must be positive and finite and its weight not negative; the errors name the field.
fn assert_contrast_fields_checked(recipe: &Recipe, name: &str, term: fn(&mut VaeRecipe) -> &mut Contrast) {
    for margin in [0.0, f64::NAN] {
        let mut bad = recipe.clone();
        term(&mut bad.vae).margin = margin;
        let err = bad.validate().unwrap_err();
        assert!(err.contains(&format!("vae.{name}.margin")), "{err}");
    }
    let mut bad = recipe.clone();
    term(&mut bad.vae).weight = -1.0;
    let err = bad.validate().unwrap_err();
    assert!(err.contains(&format!("vae.{name}.weight")) && err.contains("-1"), "{err}");
}

#[test]
fn the_contrast_fine_tune_adds_the_shape_term_to_the_colour_one_and_checks_its_fields() {
    let colour: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-colour-contrast.json")).unwrap();
    let both: Recipe = serde_json::from_str(include_str!("../../../../models/recipes/finetune-contrast.json")).unwrap();
    both.validate().unwrap();
    let s = &both.vae.shape_contrast;
    assert!(s.weight > 0.0 && s.margin > 0.0);
    // A step sees one three of each, so the same clips' time buys fewer steps; and the decoder gets
    // back a phase of its own as the shipped model's had (objects weighted, latents moved by noise).
    assert_eq!((both.vae.batch, both.vae.steps), (6, 600));
    let d = &both.vae.decoder;
    assert!(d.steps > 0 && d.object_weight > 1.0 && d.latent_noise > 0.0, "{d:?}");
    let same = Recipe { vae: VaeRecipe { shape_contrast: Contrast::default(), ..both.vae.clone() }, ..both.clone() };
    let decoder = DecoderRecipe { steps: d.steps, ..colour.vae.decoder.clone() };
    let vae = VaeRecipe { batch: 6, steps: 600, decoder, ..colour.vae.clone() };
    assert_eq!(same, Recipe { vae, ..colour.clone() });
    assert!(!serde_json::to_string(&colour).unwrap().contains("shape_contrast"));

    let mut bad = both.clone();
    bad.vae.colour_contrast = Contrast::default();
    bad.vae.batch = 5;
    let err = bad.validate().unwrap_err();
    assert!(err.contains("vae.batch") && err.contains("shape_contrast") && err.contains('5'), "{err}");
    assert_contrast_fields_checked(&both, "shape_contrast", |v| &mut v.shape_contrast);
}

#[test]
fn the_vae_fine_tune_is_the_contrast_fine_tune_without_its_terms() {
    let both: Recipe = serde_json::from_str(include_str!("../../../../models/recipes/finetune-contrast.json")).unwrap();
    let plain: Recipe = serde_json::from_str(include_str!("../../../../models/recipes/finetune-vae.json")).unwrap();
    plain.validate().unwrap();
    assert!(plain.vae.colour_contrast.is_off() && plain.vae.shape_contrast.is_off());
    let off = Contrast::default();
    let vae = VaeRecipe { colour_contrast: off.clone(), shape_contrast: off, ..both.vae.clone() };
    assert_eq!(plain, Recipe { vae, ..both });
}

#[test]
fn the_vae_continuation_is_the_vae_fine_tune_with_the_later_windows_transformer_phase() {
    // The transformer phase is the later-windows continuation's, as long and as fast as the VAE fine-tune's own.
    let plain: Recipe = serde_json::from_str(include_str!("../../../../models/recipes/finetune-vae.json")).unwrap();
    let later: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-continue-later.json")).unwrap();
    let continued: Recipe =
        serde_json::from_str(include_str!("../../../../models/recipes/finetune-vae-continue.json")).unwrap();
    continued.validate().unwrap();
    let dit = DitRecipe { steps: plain.dit.steps, lr: plain.dit.lr, ..later.dit.clone() };
    assert_eq!(continued, Recipe { dit, ..plain });
}
