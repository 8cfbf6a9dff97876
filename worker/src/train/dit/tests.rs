use super::*;

/// The clean windows a batch was made from: `x₀ = x_σ − σ·(ε − x₀)`.
fn clean(b: &Batch) -> Result<Tensor> {
    let sigma = (b.timesteps.clone() / 1000.0)?.reshape((b.timesteps.dim(0)?, 1, 1, 1, 1))?;
    &b.noisy - b.target.broadcast_mul(&sigma)?
}

#[test]
fn part_dropout_leaves_out_speeds_and_backgrounds_apart() -> Result<()> {
    let mut recipe = Recipe::default();
    recipe.dit.batch = 64;
    let clips = 8;
    let captions = caption_forms(&recipe, clips);
    let data = Dataset {
        latents: Tensor::zeros((clips, 16, 5, 8, 8), DType::F32, &Device::Cpu)?,
        window: 5,
        captions,
        weights: None,
    };
    let full = |c: &str| data.captions.iter().any(|f| f[0][0] == c);
    let speed = |c: &str| c.contains("slowly") || c.contains("quickly");
    let (mut total, mut no_speed, mut no_background, mut neither) = (0, 0, 0, 0);
    for step in 0..8 {
        let plain = batch(&recipe, &data, step, &Device::Cpu)?;
        assert!(plain.captions.iter().all(|c| c.is_empty() || full(c)), "{:?}", plain.captions);
        recipe.dit.caption_part_dropout = 0.5;
        let parted = batch(&recipe, &data, step, &Device::Cpu)?;
        recipe.dit.caption_part_dropout = 0.0;
        // The same clips, noise levels and empty prompts; only the captions' forms differ.
        assert_eq!(plain.timesteps.to_vec1::<f32>()?, parted.timesteps.to_vec1::<f32>()?);
        for (a, b) in plain.captions.iter().zip(&parted.captions) {
            assert_eq!(a.is_empty(), b.is_empty());
            if a.is_empty() {
                continue;
            }
            let forms = data.captions.iter().map(|f| &f[0]).find(|f| &f[0] == a).expect("a full caption");
            assert!(forms.contains(b), "{b:?} is not a form of {a:?}");
            total += 1;
            no_speed += !speed(b) as usize;
            no_background += !b.contains("background") as usize;
            neither += (!speed(b) && !b.contains("background")) as usize;
        }
    }
    // About half of each, drawn apart (8 × 64 captions less the empty tenth).
    assert!(total > 400, "{total}");
    for (what, n, share) in [("speed", no_speed, 0.5), ("background", no_background, 0.5), ("both", neither, 0.25)] {
        let seen = n as f64 / total as f64;
        assert!((seen - share).abs() < 0.1, "{what} left out of {n} of {total}");
    }
    Ok(())
}

#[test]
fn two_objects_skews_the_dataset_scenes() {
    let mut recipe = Recipe::default();
    let pairs = |recipe: &Recipe| {
        let captions = caption_forms(recipe, 400);
        captions.iter().filter(|forms| forms[0][0].contains(" and a ")).count()
    };
    let default = pairs(&recipe);
    assert!((50..110).contains(&default), "{default} of 400 scenes hold two objects by default");
    recipe.dit.two_objects = Some(0.5);
    let skewed = pairs(&recipe);
    assert!((170..230).contains(&skewed), "{skewed} of 400");
    recipe.dit.two_objects = Some(0.0);
    assert_eq!(pairs(&recipe), 0);
    recipe.dit.two_objects = Some(1.0);
    assert_eq!(pairs(&recipe), 400);
}

#[test]
fn windows_are_cut_from_longer_clips_with_the_captions_of_their_start() -> Result<()> {
    let mut recipe = Recipe::default();
    recipe.dit.clip_frames = Some(33);
    recipe.dit.batch = 32;
    recipe.dit.caption_dropout = 0.0;
    let (clips, device) = (16, Device::Cpu);
    let mut captions = caption_forms(&recipe, 64);
    let sampler = recipe.dataset_sampler();
    let mut bounced = 0;
    for (i, forms) in captions.iter().enumerate() {
        let scene = sampler.sample(data::seed_for(recipe.seed, Stream::DatasetClips, 0, i as u64));
        // 33 frames are 9 latent frames: windows of 5 start at latent frames 0 to 4, that is at video
        // frames 0, 1, 5, 9 and 13.
        // The first window names the way the objects start moving; each later one the way they
        // move over most of its 17 frames.
        assert_eq!(forms.len(), 5);
        assert_eq!(forms[0][0], scene.caption());
        for (k, from) in [(1, 1), (2, 5), (3, 9), (4, 13)] {
            let to = 16 + 4 * k;
            let mut seen = scene.at(from);
            for (object, o) in seen.objects.iter_mut().zip(&scene.objects) {
                object.direction = scene.heading_over(o, from, to);
                let [a, b] = [from, to].map(|f| scene.centre(o, f as f64));
                let moved = [b[0] - a[0], b[1] - a[1]];
                let unit = object.direction.unit();
                // Net travel along the named way is never backwards by more than the step a bounce
                // splits (a tie names the way it starts).
                let slack = 1.5 * scene.scale();
                assert!(moved[0] * unit[0] + moved[1] * unit[1] >= -slack, "clip {i} window {k}: {o:?}");
            }
            assert_eq!(forms[k][0], seen.caption());
            bounced += (forms[k][0] != forms[0][0]) as usize;
        }
    }
    assert!(bounced > 0, "no window of 64 clips starts after a bounce");
    captions.truncate(clips);
    // Latent value 100·clip + latent frame, so that each window shows where it was cut.
    let values: Vec<f32> =
        (0..clips * 16 * 9 * 64).map(|n| (100 * (n / (16 * 9 * 64)) + (n / 64) % 9) as f32).collect();
    let weights = object_weights(&recipe, clips, &device)?;
    assert_eq!(weights.dims(), &[clips, 1, 9, 8, 8]);
    let data = Dataset {
        latents: Tensor::from_vec(values, (clips, 16, 9, 8, 8), &device)?,
        window: 5,
        captions,
        weights: Some(weights.clone()),
    };
    let mut starts = [0usize; 5];
    for step in 0..4 {
        let b = batch(&recipe, &data, step, &device)?;
        assert_eq!(b.noisy.dims(), &[32, 16, 5, 8, 8]);
        let x0 = clean(&b)?;
        for j in 0..32 {
            let frames: Vec<f32> = x0.get(j)?.get(0)?.mean((1, 2))?.to_vec1()?;
            let (clip, start) = (frames[0].round() as usize / 100, frames[0].round() as usize % 100);
            for (t, v) in frames.iter().enumerate() {
                assert!((v - (100 * clip + start + t) as f32).abs() < 1e-2, "{frames:?}");
            }
            assert_eq!(b.captions[j], data.captions[clip][start][0]);
            let want = weights.get(clip)?.narrow(1, start, 5)?;
            let got = b.weight.as_ref().expect("weights").get(j)?;
            assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, want.flatten_all()?.to_vec1::<f32>()?);
            starts[start] += 1;
        }
    }
    // Every start is drawn, about a fifth of the time each.
    assert!(starts.iter().all(|&n| (12..=40).contains(&n)), "{starts:?}");

    // With a first-window share, half the draws start their clips and the rest spread over the others.
    recipe.dit.first_window = Some(0.5);
    let mut starts = [0usize; 5];
    for step in 0..8 {
        let x0 = clean(&batch(&recipe, &data, step, &device)?)?;
        let first: Vec<f32> = x0.narrow(1, 0, 1)?.narrow(2, 0, 1)?.flatten_from(1)?.mean(1)?.to_vec1()?;
        for v in first {
            starts[v.round() as usize % 100] += 1;
        }
    }
    assert!((100..=156).contains(&starts[0]), "{starts:?}");
    assert!(starts[1..].iter().all(|&n| n > 0), "{starts:?}");
    Ok(())
}

#[test]
fn first_frames_are_the_clips_first_frames_with_their_objects_weighted() -> Result<()> {
    let mut recipe = Recipe::default();
    recipe.dit.object_weight = 4.0;
    let b = first_frames(&recipe, &[3, 0, 7], &Device::Cpu)?;
    assert_eq!(b.x.dims(), &[3, 3, 1, 64, 64]);
    assert_eq!(b.weight.dims(), &[3, 1, 1, 64, 64]);
    let sampler = recipe.dataset_sampler();
    for (j, i) in [3u64, 0, 7].into_iter().enumerate() {
        let scene = sampler.sample(data::seed_for(recipe.seed, Stream::DatasetClips, 0, i));
        let want = data::video_batch(&[scene.render(1)], &Device::Cpu)?;
        assert_eq!(b.x.get(j)?.flatten_all()?.to_vec1::<f32>()?, want.flatten_all()?.to_vec1::<f32>()?);
        let weights: Vec<f32> = b.weight.get(j)?.flatten_all()?.to_vec1()?;
        let heavy = weights.iter().filter(|&&w| w == 4.0).count();
        // One or two objects of 14–22 pixels across.
        assert!((100..1200).contains(&heavy), "clip {i}: {heavy} object pixels");
        assert!(weights.iter().all(|&w| w == 1.0 || w == 4.0));
        let [x, y] = scene.centre(&scene.objects[0], 0.0);
        assert_eq!(weights[y as usize * 64 + x as usize], 4.0, "clip {i}: the object's centre");
    }
    Ok(())
}

/// A recipe of 32×32 clips for models small enough to train in a test.
fn tiny_recipe() -> Recipe {
    let mut recipe = Recipe { width: 32, height: 32, ..Recipe::default() };
    (recipe.dit.heads, recipe.dit.head_dim, recipe.dit.layers, recipe.dit.ffn_dim) = (2, 8, 1, 16);
    (recipe.text.d_model, recipe.text.d_kv, recipe.text.d_ff, recipe.text.layers) = (16, 4, 16, 1);
    recipe.vae.base_dim = 4;
    recipe
}

struct Tiny {
    dit: WanTransformer,
    text: TextEncoder,
    dit_params: std::sync::Arc<super::super::params::Params>,
    text_params: std::sync::Arc<super::super::params::Params>,
    vae_params: std::sync::Arc<super::super::params::Params>,
}

/// `recipe`'s transformer and text encoder on random trainable weights, and random VAE weights.
fn tiny(recipe: &Recipe) -> Result<Tiny> {
    use super::super::params::{Params, Start};
    use crate::model::t5::UMT5Encoder;
    use crate::model::tokenizer::PromptTokenizer;
    use std::sync::Arc;

    let device = Device::Cpu;
    let words = patchwork_scenes::vocabulary();
    let tokenizer = serde_json::to_vec(&super::super::tokenizer::tokenizer_json(&words)).unwrap();
    let vocab = super::super::tokenizer::SPECIAL.len() + words.len();
    let random = |seed| Arc::new(Params::new(Start::Random { seed, zero: |_| false }));
    let (dit_params, text_params, vae_params) = (random(1), random(2), random(3));
    let dit = WanTransformer::new(&recipe.transformer_config(), dit_params.var_builder(&device))
        .map_err(candle_core::Error::wrap)?;
    let text = TextEncoder::new(
        PromptTokenizer::from_json(&tokenizer, "test").map_err(candle_core::Error::wrap)?,
        UMT5Encoder::new(&recipe.text_encoder_config(vocab), text_params.var_builder(&device))
            .map_err(candle_core::Error::wrap)?,
    );
    Ok(Tiny { dit, text, dit_params, text_params, vae_params })
}

/// The binding term: two-object captions get their colour-swapped twins, and the loss grows by the
/// weight times the hinge on the relative rise of each such clip's (weighted) error; its gradient
/// reaches the text encoder.
#[test]
fn the_binding_loss_contrasts_each_pair_caption_with_its_colours_swapped() -> Result<()> {
    let device = Device::Cpu;
    let mut recipe = tiny_recipe();
    (recipe.dit.batch, recipe.dit.binding_loss, recipe.dit.two_objects) = (4, 2.0, Some(0.5));
    let Tiny { dit, text, text_params, .. } = tiny(&recipe)?;
    let clips = 8;
    let data = Dataset {
        latents: Tensor::randn(0f32, 1.0, (clips, 16, 5, 4, 4), &device)?,
        window: 5,
        captions: caption_forms(&recipe, clips),
        weights: Some((Tensor::rand(0f32, 1.0, (clips, 1, 5, 4, 4), &device)? + 1.0)?),
    };
    // A step whose batch holds both lone and two-object captions.
    let b = (0..50)
        .map(|step| batch(&recipe, &data, step, &device))
        .find(|b| {
            b.as_ref().map_or(true, |b| {
                !b.swapped.is_empty() && b.swapped.len() < b.captions.iter().filter(|c| !c.is_empty()).count()
            })
        })
        .expect("a step with both kinds")?;
    for (i, caption) in b.captions.iter().enumerate() {
        let twin = b.swapped.iter().find(|(j, _)| *j == i as u32).map(|(_, s)| s.clone());
        assert_eq!(twin, swap_object_colours(caption), "{caption:?}");
    }
    let (plain, plain_value) = loss(&dit, &text, 24, &b, None, 0.0)?;
    let (with, with_value) = loss(&dit, &text, 24, &b, None, 2.0)?;
    // The same term, clip by clip.
    let errors = |captions: &[&str], picks: &[u32]| -> Result<Vec<f64>> {
        let idx = Tensor::from_vec(picks.to_vec(), picks.len(), &device)?;
        let context = text.encode_prompts(captions, 24).map_err(candle_core::Error::wrap)?;
        let noisy = b.noisy.index_select(&idx, 0)?;
        let pred =
            dit.forward(&noisy, &b.timesteps.index_select(&idx, 0)?, &context).map_err(candle_core::Error::wrap)?;
        let w = b.weight.as_ref().unwrap().index_select(&idx, 0)?;
        let sq = (pred - b.target.index_select(&idx, 0)?)?.sqr()?.broadcast_mul(&w)?;
        let (sq, w) = (sq.flatten_from(1)?.to_vec2::<f32>()?, w.flatten_from(1)?.to_vec2::<f32>()?);
        Ok(sq.iter().zip(&w).map(|(s, w)| s.iter().sum::<f32>() as f64 / 16.0 / w.iter().sum::<f32>() as f64).collect())
    };
    let picks: Vec<u32> = b.swapped.iter().map(|(i, _)| *i).collect();
    let own: Vec<&str> = picks.iter().map(|&i| b.captions[i as usize].as_str()).collect();
    let twins: Vec<&str> = b.swapped.iter().map(|(_, s)| s.as_str()).collect();
    let (e, e_swapped) = (errors(&own, &picks)?, errors(&twins, &picks)?);
    let term = e
        .iter()
        .zip(&e_swapped)
        .map(|(e, s)| (super::super::binding::BINDING_MARGIN - (s - e) / e).max(0.0))
        .sum::<f64>()
        / e.len() as f64;
    assert!(term > 0.0, "an untrained model barely tells the twins apart");
    assert!((with_value - plain_value - 2.0 * term).abs() < 1e-4 * with_value, "{with_value} {plain_value} {term}");
    // Its gradient reaches the text encoder: the two losses pull its weights differently.
    let (g_plain, g_with) = (plain.backward()?, with.backward()?);
    let mut diff = 0.0;
    for (_, var) in text_params.vars() {
        if let (Some(a), Some(b)) = (g_plain.get(var.as_tensor()), g_with.get(var.as_tensor())) {
            diff += (a - b)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        }
    }
    assert!(diff > 0.0);
    Ok(())
}

/// The pixel loss adds its weight times the first frames' error to the velocity loss, and its
/// gradient reaches the transformer through the frozen decoder.
#[test]
fn the_pixel_loss_adds_the_decoded_first_frames_error() -> Result<()> {
    let device = Device::Cpu;
    let mut recipe = tiny_recipe();
    (recipe.dit.batch, recipe.dit.pixel_loss) = (2, 0.5);
    let Tiny { dit, text, dit_params, vae_params, .. } = tiny(&recipe)?;
    let frozen = WanVae::new(recipe.vae_config(), vae_params.var_builder(&device)).map_err(candle_core::Error::wrap)?;
    let clips = 4;
    let data = Dataset {
        latents: Tensor::randn(0f32, 1.0, (clips, 16, 5, 4, 4), &device)?,
        window: 5,
        captions: caption_forms(&recipe, clips),
        weights: None,
    };
    let b = batch(&recipe, &data, 0, &device)?;
    let first = b.first_frames.as_ref().expect("first frames with a pixel loss");
    assert_eq!(first.x.dims(), &[2, 3, 1, 32, 32]);
    let pixel = PixelLoss { vae: &frozen, weight: recipe.dit.pixel_loss };
    let (plain, plain_value) = loss(&dit, &text, 12, &b, None, 0.0)?;
    let (with, with_value) = loss(&dit, &text, 12, &b, Some(&pixel), 0.0)?;
    // The difference is the weighted error of the decoded first frames.
    let sigma = (b.timesteps.clone() / 1000.0)?.reshape((2, 1, 1, 1, 1))?;
    let prompts: Vec<&str> = b.captions.iter().map(String::as_str).collect();
    let context = text.encode_prompts(&prompts, 12).map_err(candle_core::Error::wrap)?;
    let pred = dit.forward(&b.noisy, &b.timesteps, &context).map_err(candle_core::Error::wrap)?;
    let x0 = (&b.noisy - pred.broadcast_mul(&sigma)?)?.narrow(2, 0, 1)?;
    let frames =
        frozen.decode(&frozen.denormalize(&x0).map_err(candle_core::Error::wrap)?).map_err(candle_core::Error::wrap)?;
    let error = vae::reconstruction_error(&frames, first)?.to_scalar::<f32>()? as f64;
    assert!(error > 0.0);
    assert!((with_value - plain_value - 0.5 * error).abs() < 1e-4 * with_value, "{with_value} {plain_value} {error}");
    // Its gradient reaches the transformer's output layer: the two losses pull it differently.
    let out = dit_params.vars().into_iter().find(|(n, _)| n == "proj_out.weight").expect("proj_out").1;
    let (g_plain, g_with) = (plain.backward()?, with.backward()?);
    let grad = |g: &candle_core::backprop::GradStore| g.get(out.as_tensor()).expect("a gradient").clone();
    let diff = (grad(&g_with) - grad(&g_plain))?.abs()?.sum_all()?.to_scalar::<f32>()?;
    assert!(diff > 0.0);
    Ok(())
}

#[test]
fn object_weights_mark_the_latent_positions_objects_touch() -> Result<()> {
    let mut recipe = Recipe::default();
    recipe.dit.object_weight = 5.0;
    let weights = object_weights(&recipe, 4, &Device::Cpu)?;
    assert_eq!(weights.dims(), &[4, 1, 5, 8, 8]);
    let sampler = recipe.dataset_sampler();
    for i in 0..4 {
        let scene = sampler.sample(data::seed_for(recipe.seed, Stream::DatasetClips, 0, i as u64));
        let w = weights.get(i)?.get(0)?;
        // Latent frame 0 is pixel frame 0, latent frame 4 ends at pixel frame 16: each object's centre
        // there is marked.
        for (latent, frame) in [(0usize, 0.0), (4, 16.0)] {
            for o in &scene.objects {
                let [x, y] = scene.centre(o, frame);
                let at: f32 = w.get(latent)?.get(y as usize / 8)?.get(x as usize / 8)?.to_scalar()?;
                assert_eq!(at, 5.0, "clip {i}, latent frame {latent}, object at ({x:.1}, {y:.1})");
            }
        }
        // Objects of 14–22 pixels touch a few 8×8 blocks, not the whole frame.
        let heavy: Vec<f32> = w.get(0)?.flatten_all()?.to_vec1()?;
        let count = heavy.iter().filter(|&&v| v == 5.0).count();
        assert!((4..=32).contains(&count), "clip {i}: {count} of 64 positions marked");
        assert!(heavy.iter().all(|&v| v == 1.0 || v == 5.0));
    }
    Ok(())
}

/// `dit.context`: about half the draws hold one or two leading latent frames clean, at timestep 0 (a
/// timestep per frame), and weigh them 0 in the loss; the loss then trains through the per-frame
/// conditioning, and a context frame's prediction does not count.
#[test]
fn context_frames_are_held_clean_and_left_out_of_the_loss() -> Result<()> {
    let device = Device::Cpu;
    let mut recipe = tiny_recipe();
    recipe.dit.batch = 64;
    recipe.dit.context = Some(super::super::recipe::ContextFrames { chance: 0.5, max_frames: 2, later_windows: false });
    let clips = 8;
    // Each clip's latent is its index everywhere, so a clean frame is constant and noise shows.
    let index = Tensor::arange(0f32, clips as f32, &device)?.reshape((clips, 1, 1, 1, 1))?;
    let data = Dataset {
        latents: index.broadcast_as((clips, 16, 5, 4, 4))?.contiguous()?,
        window: 5,
        captions: caption_forms(&recipe, clips),
        weights: None,
    };
    let b = batch(&recipe, &data, 3, &device)?;
    let t: Vec<Vec<f32>> = b.timesteps.to_vec2()?;
    let weight: Vec<f32> = b.weight.as_ref().expect("context frames weigh 0").flatten_all()?.to_vec1()?;
    assert_eq!(weight.len(), 64 * 5);
    let mut held_counts = [0; 3];
    for (i, ts) in t.iter().enumerate() {
        let held = ts.iter().take_while(|&&x| x == 0.0).count();
        assert!(held <= 2, "{ts:?}");
        held_counts[held] += 1;
        assert!(ts[held..].iter().all(|&x| x == ts[held] && x > 0.0), "{ts:?}");
        for f in 0..5 {
            assert_eq!(weight[i * 5 + f], if f < held { 0.0 } else { 1.0 }, "draw {i} frame {f}");
            let frame: Vec<f32> = b.noisy.get(i)?.narrow(1, f, 1)?.flatten_all()?.to_vec1()?;
            let constant = frame.iter().all(|&v| v == frame[0]);
            assert_eq!(constant, f < held, "draw {i} frame {f}: clean exactly when held");
        }
    }
    assert!(held_counts[0] > 16 && held_counts[1] > 8 && held_counts[2] > 8, "{held_counts:?}");

    // The loss runs through the per-frame conditioning and ignores the held frames' predictions.
    recipe.dit.batch = 4;
    let Tiny { dit, text, dit_params, .. } = tiny(&recipe)?;
    let data = Dataset { latents: Tensor::randn(0f32, 1.0, (clips, 16, 5, 4, 4), &device)?, ..data };
    let b = (0..64).map(|step| batch(&recipe, &data, step, &device)).find(|b| {
        b.as_ref().map_or(true, |b| b.timesteps.to_vec2::<f32>().is_ok_and(|t| t.iter().any(|t| t[0] == 0.0)))
    });
    let b = b.expect("a batch with context")?;
    let (l, value) = loss(&dit, &text, 12, &b, None, 0.0)?;
    assert!(value.is_finite() && value > 0.0);
    let mut other = Batch { target: b.target.clone(), ..b };
    let mask = other.weight.clone().expect("a mask");
    // Change the targets only where the weight is 0: the loss must not move.
    other.target = (&other.target + (mask.ones_like()? - &mask)?.broadcast_as(other.target.shape())?)?;
    let (_, moved) = loss(&dit, &text, 12, &other, None, 0.0)?;
    assert!((moved - value).abs() < 1e-6 * value, "{moved} {value}");
    let proj = dit_params.vars().into_iter().find(|(n, _)| n == "proj_out.weight").expect("proj_out").1;
    assert!(l.backward()?.get(proj.as_tensor()).is_some());
    Ok(())
}

/// `dit.context.later_windows`: every draw holding context frames takes a later window of its clip, so
/// its clean frames are four frames long each, as the farm's held frames are; the other draws take
/// their windows as `dit.first_window` says (here mostly the first).
#[test]
fn context_draws_take_later_windows_when_asked() -> Result<()> {
    let device = Device::Cpu;
    let mut recipe = tiny_recipe();
    recipe.dit.batch = 64;
    recipe.dit.clip_frames = Some(33);
    recipe.dit.first_window = Some(0.9);
    recipe.dit.context = Some(super::super::recipe::ContextFrames { chance: 0.5, max_frames: 2, later_windows: true });
    // Clips of 9 latent frames whose every value is the latent frame's index: a draw's first frame,
    // held clean, tells where its window starts.
    let clips = 8;
    let index = Tensor::arange(0f32, 9.0, &device)?.reshape((1, 1, 9, 1, 1))?;
    let data = Dataset {
        latents: index.broadcast_as((clips, 16, 9, 4, 4))?.contiguous()?,
        window: 5,
        captions: caption_forms(&recipe, clips),
        weights: None,
    };
    let (mut held_starts, mut free) = (Vec::new(), 0);
    for step in 0..4 {
        let b = batch(&recipe, &data, step, &device)?;
        for (i, ts) in b.timesteps.to_vec2::<f32>()?.iter().enumerate() {
            if ts[0] == 0.0 {
                let first: f32 = b.noisy.get(i)?.get(0)?.get(0)?.get(0)?.get(0)?.to_scalar()?;
                held_starts.push(first as usize);
            } else {
                free += 1;
            }
        }
    }
    assert!(held_starts.iter().all(|&s| (1..=4).contains(&s)), "{held_starts:?}");
    for start in 1..=4 {
        assert!(held_starts.contains(&start), "no context draw starts at {start}: {held_starts:?}");
    }
    assert!(held_starts.len() > 64 && free > 64, "{} with context, {free} without", held_starts.len());
    Ok(())
}
