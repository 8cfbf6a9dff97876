//! Which captions the transformer tells apart, whether or not its sampler draws them.
//!
//! A diffusion model's denoising error on a video under a caption measures how well the caption fits the
//! video: the lower, the better. Ranking captions by that error (a diffusion classifier) shows what the
//! model has learned about them, apart from what sampling makes of it. For each scene the true caption is
//! put against captions that change one object's colour or shape, and, in two-object scenes, against the
//! caption with the two objects' colours (or shapes) swapped. A swapped caption holds every word of the
//! true one; only which colour goes with which shape tells them apart, so a model that reads its caption
//! as a bag of words ranks the two alike.
//!
//! The error is the mean squared error of the predicted velocity over the whole latent, summed over a few
//! noise levels and draws that every caption of a scene shares, so that the captions differ only in what
//! the transformer makes of them.
//!
//! The same contrast, a caption against its colours swapped, is also a training term
//! (`dit.binding_loss`, [`term`]).

use candle_core::{Device, Tensor};
use patchwork_scenes::{swap_object_colours, Colour, Scene, Shape};

use super::data;
use super::dit::Batch;
use super::separation::encode;
use crate::model::dit::WanTransformer;
use crate::model::t5::TextEncoder;
use crate::model::vae::WanVae;
use crate::model::Result;

/// The relative rise of a clip's velocity error from its own caption to its colour-swapped caption that
/// the binding term asks for (`dit.binding_loss`): in the shipped model, changing one lone object's
/// colour in the caption raises the error by about 8%, one of a pair's objects' by about 2%, and
/// swapping a pair's colours by 0.005%.
pub const BINDING_MARGIN: f64 = 0.05;

/// The noise levels every caption is scored at (σ, timestep 1000·σ).
pub const SIGMAS: [f64; 4] = [0.25, 0.5, 0.75, 0.9];

/// How often the true caption won, of how many contests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub right: usize,
    pub total: usize,
    /// The sum over the contests of the error's relative rise from the true caption to the contender
    /// (for the colour and shape ranks, to the best contender): how much the change matters to the model.
    pub margin: f64,
}

impl Tally {
    fn add(&mut self, won: bool, margin: f64) {
        self.right += won as usize;
        self.total += 1;
        self.margin += margin;
    }

    pub fn share(&self) -> f64 {
        self.right as f64 / self.total.max(1) as f64
    }

    pub fn mean_margin(&self) -> f64 {
        self.margin / self.total.max(1) as f64
    }
}

/// What the transformer tells apart, over lone objects and the objects of two-object scenes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Binding {
    /// Objects whose true colour has the lowest error of the object colours their background allows (the
    /// rest of the caption kept).
    pub lone_colour: Tally,
    pub lone_shape: Tally,
    pub pair_colour: Tally,
    pub pair_shape: Tally,
    /// Two-object scenes whose true caption beats the one with the objects' colours swapped.
    pub colour_swap: Tally,
    /// The same for shapes, over the scenes whose two objects differ in shape.
    pub shape_swap: Tally,
}

impl Binding {
    /// A markdown table: how often the true caption wins, and the mean relative rise of the error.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| contest | true caption wins | mean rise of the error against the contender |\n| --- | --- | --- |",
        );
        let rows = [
            ("lone objects: colour among those the background allows", &self.lone_colour),
            ("lone objects: shape among all 3", &self.lone_shape),
            ("objects of pairs: colour among those the background allows", &self.pair_colour),
            ("objects of pairs: shape among all 3", &self.pair_shape),
            ("pairs: against the colours swapped", &self.colour_swap),
            ("pairs: against the shapes swapped", &self.shape_swap),
        ];
        for (name, t) in rows {
            out += &format!(
                "\n| {name} | {:.0}% ({}/{}) | {:+.3}% |",
                100.0 * t.share(),
                t.right,
                t.total,
                100.0 * t.mean_margin()
            );
        }
        out + "\n"
    }
}

/// The captions a scene is scored under: the true one first, then for each object the other colours and
/// shapes, then (with two objects) the colours and the shapes swapped.
struct Contenders {
    captions: Vec<String>,
    /// Per object: the indices of its colour variants (the true caption's index, 0, among them) and of
    /// its shape variants.
    colours: Vec<Vec<usize>>,
    shapes: Vec<Vec<usize>>,
    colour_swap: Option<usize>,
    shape_swap: Option<usize>,
}

fn contenders(scene: &Scene) -> Contenders {
    let mut captions = vec![scene.caption()];
    let mut push = |caption: String| {
        captions.push(caption);
        captions.len() - 1
    };
    let (mut colours, mut shapes) = (Vec::new(), Vec::new());
    for (i, object) in scene.objects.iter().enumerate() {
        let mut c = vec![0];
        // The colours the scene sampler could have drawn on this background.
        let allowed = |c: Colour| scene.background.colours().iter().all(|&bg| c.stands_out_on(bg));
        for colour in Colour::ALL.into_iter().filter(|&c| c != object.colour && allowed(c)) {
            let mut s = scene.clone();
            s.objects[i].colour = colour;
            c.push(push(s.caption()));
        }
        let mut k = vec![0];
        for shape in Shape::ALL.into_iter().filter(|&s| s != object.shape) {
            let mut s = scene.clone();
            s.objects[i].shape = shape;
            k.push(push(s.caption()));
        }
        colours.push(c);
        shapes.push(k);
    }
    let (mut colour_swap, mut shape_swap) = (None, None);
    if let [a, b] = scene.objects.as_slice() {
        colour_swap = swap_object_colours(&scene.caption()).map(&mut push);
        if a.shape != b.shape {
            let mut s = scene.clone();
            (s.objects[0].shape, s.objects[1].shape) = (b.shape, a.shape);
            shape_swap = Some(push(s.caption()));
        }
    }
    Contenders { captions, colours, shapes, colour_swap, shape_swap }
}

/// Scores `scenes` (one or two objects each, rendered at `frames`, the transformer's window) under their
/// contending captions, with `noises` noise draws at each of [`SIGMAS`]; `text_len` is the pipeline's
/// prompt length.
pub fn binding(
    dit: &WanTransformer,
    text: &TextEncoder,
    text_len: usize,
    vae: &WanVae,
    scenes: &[Scene],
    frames: usize,
    noises: usize,
) -> Result<Binding> {
    let mut out = Binding::default();
    let device = vae.device().clone();
    for (index, scene) in scenes.iter().enumerate() {
        let x0 = encode(vae, std::slice::from_ref(scene), frames)?.remove(0).unsqueeze(0)?;
        let c = contenders(scene);
        let errors = caption_errors(dit, text, text_len, &x0, &c.captions, index as u64, noises, &device)?;
        let rise = |i: usize| errors[i] / errors[0] - 1.0;
        let best_other = |variants: &[usize]| variants[1..].iter().map(|&i| rise(i)).fold(f64::INFINITY, f64::min);
        let pair = scene.objects.len() == 2;
        for (colours, shapes) in c.colours.iter().zip(&c.shapes) {
            let (colour, shape) = if pair {
                (&mut out.pair_colour, &mut out.pair_shape)
            } else {
                (&mut out.lone_colour, &mut out.lone_shape)
            };
            let m = best_other(colours);
            colour.add(m > 0.0, m);
            let m = best_other(shapes);
            shape.add(m > 0.0, m);
        }
        if let Some(i) = c.colour_swap {
            out.colour_swap.add(rise(i) > 0.0, rise(i));
        }
        if let Some(i) = c.shape_swap {
            out.shape_swap.add(rise(i) > 0.0, rise(i));
        }
    }
    Ok(out)
}

/// `mean(max(0, m − (e_swapped − e)/e))` over the batch's two-object clips (see [`BINDING_MARGIN`]), `e`
/// from `pred`, the prediction under the clips' own captions. `e` in the denominator carries no gradient:
/// it only sets the scale.
pub(super) fn term(
    dit: &WanTransformer,
    text: &TextEncoder,
    text_len: usize,
    batch: &Batch,
    pred: &Tensor,
) -> candle_core::Result<Tensor> {
    let wrap = candle_core::Error::wrap;
    let picks: Vec<u32> = batch.swapped.iter().map(|(i, _)| *i).collect();
    let picks = Tensor::from_vec(picks, batch.swapped.len(), pred.device())?;
    let prompts: Vec<&str> = batch.swapped.iter().map(|(_, c)| c.as_str()).collect();
    let context = text.encode_prompts(&prompts, text_len).map_err(wrap)?;
    let noisy = batch.noisy.index_select(&picks, 0)?;
    let swapped = dit.forward(&noisy, &batch.timesteps.index_select(&picks, 0)?, &context).map_err(wrap)?;
    let target = batch.target.index_select(&picks, 0)?;
    let weight = batch.weight.as_ref().map(|w| w.index_select(&picks, 0)).transpose()?;
    // Each clip's mean squared error, weighted as the velocity loss weighs it.
    let per_clip = |p: &Tensor| -> candle_core::Result<Tensor> {
        let sq = (p - &target)?.sqr()?;
        match &weight {
            Some(w) => sq.broadcast_mul(w)?.flatten_from(1)?.mean(1)?.div(&w.flatten_from(1)?.mean(1)?),
            None => sq.flatten_from(1)?.mean(1),
        }
    };
    let own = per_clip(&pred.index_select(&picks, 0)?)?;
    let rise = ((per_clip(&swapped)? - &own)? / own.detach())?;
    (BINDING_MARGIN - rise)?.relu()?.mean_all()
}

/// Multiplies every self-attention query weight of the text encoder whose variables `params` holds by
/// `scale` (`text.query_scale`), softening its attention scores by that factor.
pub(super) fn scale_text_queries(params: &super::params::Params, scale: f64) -> candle_core::Result<()> {
    if scale == 1.0 {
        return Ok(());
    }
    for (name, var) in params.vars() {
        if name.ends_with(".SelfAttention.q.weight") {
            var.set(&(var.as_tensor() * scale)?)?;
        }
    }
    Ok(())
}

/// Whether a variable of the transformer phase is one of the text encoder's relative position bias
/// tables (`text.position_lr`).
pub(super) fn is_position_bias(name: &str) -> bool {
    name.starts_with("text_encoder.") && name.ends_with(".SelfAttention.relative_attention_bias.weight")
}

/// Whether the text encoder's output for an object's colour word says which shape it stands by, over the
/// two-object scenes of `scenes`. `swapped`: the relative change ‖h − h′‖ / ‖h‖ between the word's output
/// in the caption and in the caption with the two colours swapped (the same word, now before the other
/// object's shape). `shape_changed`: the same between the caption and one with the object's own shape
/// changed to another (a yardstick: the caption's words then change). Both are averaged over the
/// objects. An encoder whose outputs depend on which words a caption holds but not where gives 0 for
/// `swapped`: a caption and its swap then reach the transformer as the same set of vectors, and it
/// cannot tell which colour goes with which shape.
pub fn colour_word_context(text: &TextEncoder, text_len: usize, scenes: &[Scene]) -> Result<WordContext> {
    let (mut swapped, mut shape_changed, mut objects) = (0.0, 0.0, 0usize);
    for scene in scenes.iter().filter(|s| s.objects.len() == 2) {
        let caption = scene.caption();
        let words: Vec<&str> = caption.split(' ').collect();
        // "a COLOUR SHAPE moving ... and a COLOUR SHAPE moving ...".
        let positions = match words.iter().position(|&w| w == "and") {
            Some(and)
                if words.get(1) == Some(&scene.objects[0].colour.name())
                    && words.get(and + 2) == Some(&scene.objects[1].colour.name()) =>
            {
                [1, and + 2]
            }
            _ => return Err(crate::model::ModelError::input("caption", format!("no colour words in {caption:?}"))),
        };
        let mut captions = vec![caption.clone()];
        let twin = swap_object_colours(&caption);
        captions.push(
            twin.ok_or_else(|| crate::model::ModelError::input("caption", format!("not two objects: {caption:?}")))?,
        );
        for i in 0..2 {
            for shape in Shape::ALL.into_iter().filter(|&s| s != scene.objects[i].shape) {
                let mut s = scene.clone();
                s.objects[i].shape = shape;
                captions.push(s.caption());
            }
        }
        let prompts: Vec<&str> = captions.iter().map(String::as_str).collect();
        let h = text.encode_prompts(&prompts, text_len)?.to_dtype(candle_core::DType::F64)?;
        let change = |a: &Tensor, b: &Tensor| -> Result<f64> {
            let norm = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
            Ok(norm(&(b - a)?)? / norm(a)?)
        };
        for (object, &p) in positions.iter().enumerate() {
            let own = h.get(0)?.get(p)?;
            // In the swap, this object's colour word stands where the other object's stood.
            swapped += change(&own, &h.get(1)?.get(positions[1 - object])?)?;
            for k in 0..2 {
                shape_changed += change(&own, &h.get(2 + 2 * object + k)?.get(p)?)? / 2.0;
            }
            objects += 1;
        }
    }
    let n = objects.max(1) as f64;
    Ok(WordContext { swapped: swapped / n, shape_changed: shape_changed / n, objects })
}

/// [`colour_word_context`]'s measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WordContext {
    /// The mean relative change of a colour word's output when the caption's two colours are swapped.
    pub swapped: f64,
    /// The same when its object's shape changes.
    pub shape_changed: f64,
    /// The objects measured.
    pub objects: usize,
}

/// How sharp one layer of the text encoder's self-attention is, averaged over the heads and the real
/// tokens (keys and queries) of a set of captions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSharpness {
    /// The standard deviation of a query's content scores (`q·k`) across its keys.
    pub content_spread: f64,
    /// The same for what the relative position bias adds.
    pub position_spread: f64,
    /// The entropy of a query's attention, in nats.
    pub entropy: f64,
    /// What the entropy would be if every query attended to every key alike (`ln` of the tokens).
    pub uniform_entropy: f64,
}

/// [`AttentionSharpness`] of each layer of `text`'s encoder over `captions`. Where the content scores
/// spread over tens of units and the position bias over a fraction of one, attention goes to a word for
/// what it is, wherever it stands, and the softmax is so sharp that little gradient reaches the bias.
pub fn attention_sharpness(
    text: &TextEncoder,
    text_len: usize,
    captions: &[String],
) -> Result<Vec<AttentionSharpness>> {
    let prompts: Vec<&str> = captions.iter().map(String::as_str).collect();
    let tokens = text.tokenizer().encode(&prompts, text_len)?;
    let lens = tokens.seq_lens();
    let (ids, mask) = tokens.to_tensors(text.encoder().device())?;
    let std = |v: &[f32]| -> f64 {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
    };
    let mut layers = Vec::new();
    for scores in text.encoder().attention_scores(&ids, &mask)? {
        let content = (0..lens.len())
            .map(|b| scores.content.get(b)?.to_vec3::<f32>())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let position = scores.position.get(0)?.to_vec3::<f32>()?;
        let (mut sums, mut rows) = ([0.0; 4], 0usize);
        for (b, &n) in lens.iter().enumerate() {
            for (head, pos) in position.iter().enumerate() {
                for q in 0..n {
                    let c = &content[b][head][q][..n];
                    let p = &pos[q][..n];
                    let total: Vec<f32> = c.iter().zip(p).map(|(a, b)| a + b).collect();
                    let top = total.iter().cloned().fold(f32::MIN, f32::max);
                    let e: Vec<f64> = total.iter().map(|&x| ((x - top) as f64).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let entropy = -e.iter().map(|&x| x / z).filter(|&x| x > 0.0).map(|x| x * x.ln()).sum::<f64>();
                    for (sum, v) in sums.iter_mut().zip([std(c), std(p), entropy, (n as f64).ln()]) {
                        *sum += v;
                    }
                    rows += 1;
                }
            }
        }
        let [content_spread, position_spread, entropy, uniform_entropy] = sums.map(|s| s / rows.max(1) as f64);
        layers.push(AttentionSharpness { content_spread, position_spread, entropy, uniform_entropy });
    }
    Ok(layers)
}

/// The velocity error of latent `x0` (`[1, z, f, h, w]`) under each caption, summed over the shared noise.
#[allow(clippy::too_many_arguments)]
fn caption_errors(
    dit: &WanTransformer,
    text: &TextEncoder,
    text_len: usize,
    x0: &Tensor,
    captions: &[String],
    scene: u64,
    noises: usize,
    device: &Device,
) -> Result<Vec<f64>> {
    const BATCH: usize = 32;
    let prompts: Vec<&str> = captions.iter().map(String::as_str).collect();
    let context = text.encode_prompts(&prompts, text_len)?.to_device(device)?;
    // Every (caption, σ, draw) is one item; the noise depends on the scene, σ and draw only.
    let levels: Vec<(f64, u64)> = SIGMAS.iter().flat_map(|&s| (0..noises as u64).map(move |n| (s, n))).collect();
    let items: Vec<(usize, usize)> = (0..captions.len()).flat_map(|c| (0..levels.len()).map(move |l| (c, l))).collect();
    let noise: Vec<Tensor> = levels
        .iter()
        .enumerate()
        .map(|(l, _)| data::normal(data::seed_for(scene, data::Stream::Binding, l as u64, 0), x0.dims(), device))
        .collect::<candle_core::Result<_>>()?;
    let mut errors = vec![0.0; captions.len()];
    for chunk in items.chunks(BATCH) {
        let mut noisy = Vec::with_capacity(chunk.len());
        let mut target = Vec::with_capacity(chunk.len());
        let mut timesteps = Vec::with_capacity(chunk.len());
        for &(_, l) in chunk {
            let sigma = levels[l].0;
            noisy.push(((x0 * (1.0 - sigma))? + (&noise[l] * sigma)?)?);
            target.push((&noise[l] - x0)?);
            timesteps.push((sigma * 1000.0) as f32);
        }
        let picks = Tensor::from_vec(chunk.iter().map(|&(c, _)| c as u32).collect::<Vec<_>>(), chunk.len(), device)?;
        let cond = context.index_select(&picks, 0)?;
        let noisy = Tensor::cat(&noisy, 0)?.to_dtype(dit.dtype())?;
        let timesteps = Tensor::from_vec(timesteps, chunk.len(), device)?;
        let pred = dit.forward(&noisy, &timesteps, &cond)?.to_dtype(candle_core::DType::F32)?;
        let sq = (pred - Tensor::cat(&target, 0)?)?.sqr()?.flatten_from(1)?.mean(1)?.to_vec1::<f32>()?;
        for (&(c, _), e) in chunk.iter().zip(sq) {
            errors[c] += e as f64;
        }
    }
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchwork_scenes::SceneSampler;

    /// The shipped model scored on one lone object and one pair: every contest is counted once per object
    /// or pair, the errors are finite, and the scores do not depend on anything but the inputs.
    #[test]
    fn the_shipped_model_is_scored_on_every_contest() {
        use crate::model::PipelineDir;
        use candle_core::DType;
        let pipeline = PipelineDir::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny")).unwrap();
        let device = Device::Cpu;
        let vae = WanVae::load(&pipeline.component("vae").unwrap(), DType::F32, &device).unwrap();
        let dit = WanTransformer::load(&pipeline.component("transformer").unwrap(), DType::F32, &device).unwrap();
        let text = TextEncoder::load(&pipeline, DType::F32, &device).unwrap();
        let sampler = SceneSampler::new(64, 64);
        let lone = (0..).map(|s| sampler.sample(s)).find(|s| s.objects.len() == 1).unwrap();
        let pair = SceneSampler { two_objects: 1.0, ..sampler }.sample(3);
        let scenes = [lone, pair.clone()];
        let b = binding(&dit, &text, 32, &vae, &scenes, 5, 1).unwrap();
        assert_eq!((b.lone_colour.total, b.lone_shape.total), (1, 1));
        assert_eq!((b.pair_colour.total, b.pair_shape.total), (2, 2));
        let shapes_differ = pair.objects[0].shape != pair.objects[1].shape;
        assert_eq!((b.colour_swap.total, b.shape_swap.total), (1, shapes_differ as usize));
        for t in [b.lone_colour, b.lone_shape, b.pair_colour, b.pair_shape, b.colour_swap, b.shape_swap] {
            assert!(t.margin.is_finite() && t.right <= t.total, "{t:?}");
        }
        assert_eq!(binding(&dit, &text, 32, &vae, &scenes, 5, 1).unwrap(), b);
        let table = b.table();
        assert!(table.contains("| pairs: against the colours swapped |"), "{table}");
        let c = colour_word_context(&text, 32, &scenes).unwrap();
        assert_eq!(c.objects, 2);
        assert!(c.swapped >= 0.0 && c.swapped.is_finite() && c.shape_changed.is_finite(), "{c:?}");
    }

    /// Scaling the text encoder's queries scales its first layer's content scores by the same factor and
    /// leaves the position bias as it was; the sharpness measures are those of real distributions.
    #[test]
    fn scaled_queries_soften_the_text_encoders_attention() {
        use super::super::params::{Params, Start};
        use super::super::recipe::Recipe;
        use crate::model::t5::UMT5Encoder;
        use crate::model::tokenizer::PromptTokenizer;
        use std::sync::Arc;

        let device = Device::Cpu;
        let words = patchwork_scenes::vocabulary();
        let json = serde_json::to_vec(&super::super::tokenizer::tokenizer_json(&words)).unwrap();
        let vocab = super::super::tokenizer::SPECIAL.len() + words.len();
        let params = Arc::new(Params::new(Start::Random { seed: 7, zero: |_| false }));
        let config = Recipe::default().text_encoder_config(vocab);
        let encoder = UMT5Encoder::new(&config, params.var_builder(&device)).unwrap();
        let text = TextEncoder::new(PromptTokenizer::from_json(&json, "test").unwrap(), encoder);
        let sampler = SceneSampler::new(64, 64);
        let captions: Vec<String> = (0..6).map(|s| sampler.sample(s).caption()).collect();
        let before = attention_sharpness(&text, 32, &captions).unwrap();
        assert_eq!(before.len(), config.num_layers);
        let (k_before, bias_before) = (weight(&params, ".0.SelfAttention.k.weight"), weight(&params, "bias.weight"));
        scale_text_queries(&params, 0.25).unwrap();
        let after = attention_sharpness(&text, 32, &captions).unwrap();
        let ratio = after[0].content_spread / before[0].content_spread;
        assert!((ratio - 0.25).abs() < 1e-4, "{ratio}");
        assert!((after[0].position_spread - before[0].position_spread).abs() < 1e-6);
        assert_eq!(weight(&params, ".0.SelfAttention.k.weight"), k_before);
        assert_eq!(weight(&params, "bias.weight"), bias_before);
        for l in before.iter().chain(&after) {
            assert!(l.content_spread > 0.0 && l.position_spread > 0.0, "{l:?}");
            assert!(l.entropy > 0.0 && l.entropy <= l.uniform_entropy + 1e-9, "{l:?}");
        }
        // Softer scores spread attention over more words.
        assert!(after[0].entropy > before[0].entropy, "{before:?} {after:?}");
        assert!(is_position_bias("text_encoder.encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"));
        assert!(!is_position_bias("text_encoder.encoder.block.1.layer.0.SelfAttention.q.weight"));
        assert!(!is_position_bias("transformer.blocks.0.attn1.relative_attention_bias.weight"));
    }

    /// The first layer's variable whose name ends with `suffix`, as numbers.
    fn weight(params: &super::super::params::Params, suffix: &str) -> Vec<f32> {
        let (_, var) = params.vars().into_iter().find(|(n, _)| n.contains("block.0.") && n.ends_with(suffix)).unwrap();
        var.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn contenders_change_one_thing_each() {
        let sampler = SceneSampler { two_objects: 1.0, ..SceneSampler::new(64, 64) };
        let scene = (0..).map(|s| sampler.sample(s)).find(|s| s.objects[0].shape != s.objects[1].shape).unwrap();
        let c = contenders(&scene);
        let (a, b) = (&scene.objects[0], &scene.objects[1]);
        assert_eq!(c.captions[0], scene.caption());
        // The other colours the background allows and 2 other shapes per object, and both swaps.
        let allowed = Colour::ALL.iter().filter(|c| scene.background.colours().iter().all(|&bg| c.stands_out_on(bg)));
        let allowed = allowed.count();
        assert!(allowed >= 5, "{scene:?}");
        assert_eq!(c.captions.len(), 1 + 2 * (allowed - 1 + 2) + 2);
        for object in 0..2 {
            assert_eq!((c.colours[object].len(), c.shapes[object].len()), (allowed, 3));
            assert_eq!((c.colours[object][0], c.shapes[object][0]), (0, 0));
        }
        // The swapped caption holds the true caption's words, in another order.
        let swapped = &c.captions[c.colour_swap.unwrap()];
        let sorted = |s: &str| {
            let mut w: Vec<&str> = s.split(' ').collect();
            w.sort();
            w.join(" ")
        };
        assert_ne!(swapped, &c.captions[0]);
        assert_eq!(sorted(swapped), sorted(&c.captions[0]));
        assert!(swapped.starts_with(&format!("a {} {}", b.colour.name(), a.shape.name())), "{swapped}");
        let swapped = &c.captions[c.shape_swap.unwrap()];
        assert!(swapped.starts_with(&format!("a {} {}", a.colour.name(), b.shape.name())), "{swapped}");
        let lone = Scene { objects: vec![*a], ..scene };
        let c = contenders(&lone);
        assert_eq!(c.captions.len(), allowed + 2);
        assert_eq!((c.colour_swap, c.shape_swap), (None, None));
        let distinct: std::collections::HashSet<&String> = c.captions.iter().collect();
        assert_eq!(distinct.len(), c.captions.len());
    }
}
