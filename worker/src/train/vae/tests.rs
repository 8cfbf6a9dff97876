use super::*;
use crate::model::random::RandomWeights;
use crate::train::recipe::VaeRecipe;

/// Object pixels at the middle frame of every crop of a step, counted through the loss weights.
fn object_pixels(recipe: &Recipe, step: usize) -> Vec<usize> {
    let b = batch(recipe, Draw::vae(recipe), step, &Device::Cpu).unwrap();
    let (n, _, f, _, _) = b.weight.dims5().unwrap();
    (0..n)
        .map(|i| {
            let middle = b.weight.get(i).unwrap().narrow(1, (f - 1) / 2, 1).unwrap();
            middle.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().filter(|&&w| w > 1.0).count()
        })
        .collect()
}

#[test]
fn crops_placed_around_objects_show_them() {
    let mut recipe = Recipe::default();
    recipe.vae.batch = 4;
    recipe.vae.object_weight = 2.0;
    recipe.vae.clips = vec![ClipShape { frames: 9, crop: 24 }];
    let random: Vec<usize> = (0..8).flat_map(|s| object_pixels(&recipe, s)).collect();
    recipe.vae.object_crops = 1.0;
    let around: Vec<usize> = (0..8).flat_map(|s| object_pixels(&recipe, s)).collect();
    // Every crop placed around an object holds a good part of one; random crops often miss.
    assert!(around.iter().all(|&p| p >= 40), "object pixels per crop: {around:?}");
    assert!(random.iter().filter(|&&p| p < 40).count() >= 4, "random crops: {random:?}");
    let shape = batch(&recipe, Draw::vae(&recipe), 0, &Device::Cpu).unwrap().x.dims5().unwrap();
    assert_eq!(shape, (4, 3, 9, 24, 24));
}

#[test]
fn the_decoder_phase_draws_its_own_clip_shapes_when_it_names_them() {
    let mut recipe = Recipe::default();
    recipe.vae.batch = 2;
    let dims = |r: &Recipe, decoder: bool, step| {
        let draw = if decoder { Draw::decoder(r) } else { Draw::vae(r) };
        let (_, _, f, h, w) = batch(r, draw, step, &Device::Cpu).unwrap().x.dims5().unwrap();
        (f, h, w)
    };
    // Without its own shapes, the decoder's steps cycle through the VAE's.
    for step in 0..4 {
        let c = recipe.vae.clips[step % recipe.vae.clips.len()];
        assert_eq!(dims(&recipe, true, step), (c.frames, c.crop, c.crop));
    }
    recipe.vae.decoder.clips = vec![ClipShape { frames: 25, crop: 16 }, ClipShape { frames: 41, crop: 8 }];
    assert_eq!(dims(&recipe, true, 0), (25, 16, 16));
    assert_eq!(dims(&recipe, true, 1), (41, 8, 8));
    assert_eq!(dims(&recipe, true, 2), (25, 16, 16));
    // The VAE phase keeps its own.
    let c = recipe.vae.clips[1];
    assert_eq!(dims(&recipe, false, 1), (c.frames, c.crop, c.crop));
}

/// A recipe whose VAE steps hold two threes of 9-frame crops placed around an object (no contrast
/// term on yet).
fn threes_recipe() -> Recipe {
    let mut recipe = Recipe::default();
    recipe.vae.batch = 6;
    recipe.vae.object_crops = 1.0;
    recipe.vae.clips = vec![ClipShape { frames: 9, crop: 24 }];
    recipe
}

#[test]
fn threes_show_a_scene_recoloured_and_without_its_object_at_one_crop() {
    let mut recipe = threes_recipe();
    recipe.vae.colour_contrast = Contrast { weight: 1.0, margin: 1.0 };
    for step in 0..6 {
        let b = batch(&recipe, Draw::vae(&recipe), step, &Device::Cpu).unwrap();
        assert_eq!(b.x.dims5().unwrap(), (6, 3, 9, 24, 24));
        // Per pixel of each three: whether the clip differs from its object-less copy (the object),
        // and whether it differs from the recoloured one (only ever on the object).
        let pixels = |i: usize| b.x.get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for g in 0..2 {
            let [clip, recoloured, without] = [pixels(3 * g), pixels(3 * g + 1), pixels(3 * g + 2)];
            let object: Vec<bool> = clip.iter().zip(&without).map(|(a, b)| a != b).collect();
            let moved: Vec<bool> = clip.iter().zip(&recoloured).map(|(a, b)| a != b).collect();
            assert!(object.iter().filter(|&&o| o).count() > 100, "step {step}: the crop shows the object");
            assert!(moved.iter().zip(&object).all(|(&m, &o)| !m || o), "only object pixels change colour");
            assert!(moved.iter().filter(|&&m| m).count() > 50, "the recoloured object has another colour");
        }
    }
    // The crops and scenes of the clips without threes are what they were: the first clip of a three
    // is the first clip of the plain batch.
    let plain =
        Recipe { vae: VaeRecipe { colour_contrast: Contrast::default(), ..recipe.vae.clone() }, ..recipe.clone() };
    let a = batch(&plain, Draw::vae(&plain), 3, &Device::Cpu).unwrap().x.get(0).unwrap();
    let b = batch(&recipe, Draw::vae(&recipe), 3, &Device::Cpu).unwrap().x.get(0).unwrap();
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

#[test]
fn shape_threes_redraw_the_object_as_another_shape_of_its_colour() {
    let mut recipe = threes_recipe();
    recipe.vae.shape_contrast = Contrast { weight: 1.0, margin: 1.0 };
    for step in 0..6 {
        let scenes = scenes(&recipe, Draw::vae(&recipe), step);
        for three in scenes.chunks(3) {
            let [clip, reshaped, without] = [&three[0], &three[1], &three[2]];
            let (a, b) = (&clip.objects[0], &reshaped.objects[0]);
            assert_ne!(a.shape, b.shape, "step {step}: another shape");
            assert_eq!((a.colour, a.size), (b.colour, b.size), "step {step}: the same colour and size");
            assert!(reshaped.objects[1..].iter().all(|o| (o.shape, o.colour) != (b.shape, b.colour)));
            assert_eq!(without.objects.len(), clip.objects.len() - 1);
        }
        let b = batch(&recipe, Draw::vae(&recipe), step, &Device::Cpu).unwrap();
        assert_eq!((b.colour_threes, b.shape_threes), (0, 2));
        // The pixels that change are those either shape covers.
        let pixels = |i: usize| b.x.get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for g in 0..2 {
            let [clip, reshaped, without] = [pixels(3 * g), pixels(3 * g + 1), pixels(3 * g + 2)];
            let shown = |c: &[f32], i: usize| c[i] != without[i];
            let moved: Vec<usize> = (0..clip.len()).filter(|&i| clip[i] != reshaped[i]).collect();
            assert!(moved.iter().all(|&i| shown(&clip, i) || shown(&reshaped, i)), "only the objects' pixels");
            assert!(moved.len() > 20, "step {step}: the shapes differ in the crop ({} pixels)", moved.len());
        }
    }
}

#[test]
fn with_both_terms_a_step_splits_its_threes_between_colour_and_shape() {
    let mut recipe = threes_recipe();
    recipe.vae.colour_contrast = Contrast { weight: 1.0, margin: 1.0 };
    recipe.vae.shape_contrast = Contrast { weight: 1.0, margin: 1.0 };
    // One three a step: colour and shape by turns; two: one of each; three: the odd one by turns.
    assert_eq!((0..4).map(|s| colour_threes(&recipe, s, 1)).collect::<Vec<_>>(), [1, 0, 1, 0]);
    assert_eq!((0..4).map(|s| colour_threes(&recipe, s, 2)).collect::<Vec<_>>(), [1, 1, 1, 1]);
    assert_eq!((0..4).map(|s| colour_threes(&recipe, s, 3)).collect::<Vec<_>>(), [2, 1, 2, 1]);
    let scenes = scenes(&recipe, Draw::vae(&recipe), 0);
    let (first, second) = (&scenes[0].objects[0], &scenes[1].objects[0]);
    assert!(first.colour != second.colour && first.shape == second.shape, "the first three recolours");
    let (first, second) = (&scenes[3].objects[0], &scenes[4].objects[0]);
    assert!(first.colour == second.colour && first.shape != second.shape, "the second reshapes");

    // Each term is taken over its own threes: with margins no latent meets, both cost, and the loss
    // is the sum of what each adds.
    recipe.vae.colour_contrast.margin = 100.0;
    recipe.vae.shape_contrast = Contrast { weight: 2.0, margin: 100.0 };
    let vae = WanVae::new(recipe.vae_config(), RandomWeights::var_builder(7, DType::F32, &Device::Cpu)).unwrap();
    let b = batch(&recipe, Draw::vae(&recipe), 0, &Device::Cpu).unwrap();
    let off = Contrast::default();
    let (c, s) = (&recipe.vae.colour_contrast, &recipe.vae.shape_contrast);
    let report = |contrasts| loss(&vae, &b, 1e-4, contrasts).unwrap().1;
    let (both, colour, none) = (report([c, s]), report([c, &off]), report([&off, &off]));
    assert!(both.colour_contrast > 0.0 && both.shape_contrast > 0.0, "{both:?}");
    assert_eq!((colour.colour_contrast, colour.shape_contrast), (both.colour_contrast, 0.0));
    assert!((both.total - colour.total - 2.0 * both.shape_contrast).abs() < 1e-4 * both.total, "{both:?}");
    assert!((colour.total - none.total - colour.colour_contrast).abs() < 1e-4 * both.total, "{colour:?}");
    let moments = vae.encode_moments(&b.x).unwrap();
    let mean = moments.narrow(1, 0, moments.dim(1).unwrap() / 2).unwrap();
    let shape_term = contrast_term(&mean.narrow(0, 3, 3).unwrap(), &b.x.narrow(0, 3, 3).unwrap(), 100.0);
    let expected = shape_term.unwrap().unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((both.shape_contrast - expected).abs() < 1e-4 * expected, "{} against {expected}", both.shape_contrast);
}

#[test]
fn a_recoloured_object_takes_one_of_the_three_nearest_colours() {
    let sampler = SceneSampler::new(64, 64);
    for seed in 0..20 {
        let scene = sampler.sample(seed);
        let colour = scene.objects[0].colour;
        let near = neighbours(&scene, colour);
        assert!(!near.contains(&colour) && near.len() >= 3, "{near:?}");
        let d = |c: Colour| c.rgb().iter().zip(colour.rgb()).map(|(&a, b)| (a as i32 - b as i32).pow(2)).sum::<i32>();
        assert!(near.windows(2).all(|w| d(w[0]) <= d(w[1])), "nearest first: {near:?}");
    }
    // Yellow's nearest are orange first; the farthest (blue) is not among its three.
    let mut scene = sampler.sample(1);
    scene.objects.truncate(1);
    scene.objects[0].colour = Colour::Yellow;
    let near = neighbours(&scene, Colour::Yellow);
    assert_eq!(near[0], Colour::Orange);
    assert!(!near[..3].contains(&Colour::Blue));
}

#[test]
fn the_contrast_term_costs_a_latent_that_holds_colours_closer_than_the_pixels_do() {
    let dev = Device::Cpu;
    // One three of 4-value "clips": the object differs from the background by 2 (clip) and 2
    // (recoloured); the colours by 1: a pixel ratio of 0.5.
    let x = Tensor::new(&[[2f32, 0., 0., 0.], [1.75, 0.968_246, 0., 0.], [0., 0., 0., 0.]], &dev).unwrap();
    let latent = |apart: f32| Tensor::new(&[[1f32, 0.], [1., apart], [0., 0.]], &dev).unwrap();
    let term = |apart: f32, margin: f64| {
        contrast_term(&latent(apart), &x, margin).unwrap().unwrap().to_scalar::<f32>().unwrap() as f64
    };
    // Latent ratio 0.2 / ~1.01 against a target of 0.5: a shortfall of about 0.3.
    let t = term(0.2, 1.0);
    assert!((t.sqrt() - (0.5 - 0.2 / 1.009_902)).abs() < 1e-3, "{t}");
    // Far enough apart, or a lower margin: no cost.
    assert_eq!(term(0.6, 1.0), 0.0);
    assert_eq!(term(0.2, 0.3), 0.0);
    // A three whose crop misses the object (clips alike) has no term.
    let flat = Tensor::zeros((3, 4), DType::F32, &dev).unwrap();
    assert!(contrast_term(&latent(0.2), &flat, 1.0).unwrap().is_none());
    // Its gradient pushes the two colours' latents apart.
    let var = candle_core::Var::from_tensor(&latent(0.2)).unwrap();
    let grads = contrast_term(var.as_tensor(), &x, 1.0).unwrap().unwrap().backward().unwrap();
    let g = grads.get(&var).unwrap().to_vec2::<f32>().unwrap();
    assert!(g[1][1] < 0.0, "descending raises the recoloured latent's distance: {g:?}");
}
