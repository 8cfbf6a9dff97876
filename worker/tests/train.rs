//! Training runs the serving model code with gradients, resumes exactly, and writes a pipeline folder
//! that the serving loader reads.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use patchwork_worker::group::DeviceName;
use patchwork_worker::model::dit::{WanTransformer, WanTransformerConfig};
use patchwork_worker::model::t5::{UMT5Config, UMT5Encoder};
use patchwork_worker::model::vae::{VaeConfig, WanVae};
use patchwork_worker::train::params::{Params, Start};
use patchwork_worker::train::recipe::{ClipShape, DecoderRecipe};
use patchwork_worker::train::{self, Phase, Progress, Recipe, TrainConfig};

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    (num / den).unwrap().to_scalar::<f32>().unwrap()
}

/// The same weights as trainable variables (candle's differentiable ops) and as plain tensors (the
/// fast inference kernels) give the same outputs, and every variable receives a gradient.
#[test]
fn trainable_and_served_models_agree_and_every_parameter_learns() {
    let dev = Device::Cpu;
    let served = |p: &Params| VarBuilder::from_tensors(p.tensors(), DType::F32, &dev);

    let vae_cfg = VaeConfig { base_dim: 4, ..VaeConfig::wan2_1() };
    let params = Arc::new(Params::new(Start::Random { seed: 3, zero: |_| false }));
    let trainable = WanVae::new(vae_cfg.clone(), params.var_builder(&dev)).unwrap();
    let plain = WanVae::new(vae_cfg, served(&params)).unwrap();
    let x = Tensor::randn(0f32, 0.5, (1, 3, 5, 16, 16), &dev).unwrap();
    let (m1, m2) = (trainable.encode_moments(&x).unwrap(), plain.encode_moments(&x).unwrap());
    assert!(rel(&m1, &m2) < 1e-4, "encoder: {}", rel(&m1, &m2));
    let z = m2.narrow(1, 0, 16).unwrap();
    // Served output is clamped to [-1, 1]; while training it is not (a clamped pixel has no gradient).
    let (y1, y2) = (trainable.decode(&z).unwrap().clamp(-1f32, 1f32).unwrap(), plain.decode(&z).unwrap());
    assert!(rel(&y1, &y2) < 1e-4, "decoder: {}", rel(&y1, &y2));
    let loss =
        (trainable.decode(&m1.narrow(1, 0, 16).unwrap()).unwrap() - &x).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in params.vars() {
        // The log-variance half of quant_conv does not reach this loss.
        if name.starts_with("quant_conv") {
            continue;
        }
        assert!(grads.get(&var).is_some(), "no gradient for {name}");
    }

    let dit_cfg = WanTransformerConfig {
        num_attention_heads: 2,
        attention_head_dim: 8,
        text_dim: 16,
        freq_dim: 16,
        ffn_dim: 24,
        num_layers: 2,
        ..WanTransformerConfig::t2v_1_3b()
    };
    let params = Arc::new(Params::new(Start::Random { seed: 4, zero: |_| false }));
    let trainable = WanTransformer::new(&dit_cfg, params.var_builder(&dev)).unwrap();
    let plain = WanTransformer::new(&dit_cfg, served(&params)).unwrap();
    let hidden = Tensor::randn(0f32, 1.0, (2, 16, 2, 4, 4), &dev).unwrap();
    let t = Tensor::new(&[100f32, 900.0], &dev).unwrap();
    let text = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev).unwrap();
    let (a, b) = (trainable.forward(&hidden, &t, &text).unwrap(), plain.forward(&hidden, &t, &text).unwrap());
    assert!(rel(&a, &b) < 1e-4, "transformer: {}", rel(&a, &b));
    let grads = a.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    for (name, var) in params.vars() {
        assert!(grads.get(&var).is_some(), "no gradient for {name}");
    }

    let t5_cfg = UMT5Config {
        vocab_size: 20,
        d_model: 16,
        d_kv: 4,
        d_ff: 32,
        num_layers: 2,
        num_heads: 4,
        ..Default::default()
    };
    let params = Arc::new(Params::new(Start::Random { seed: 5, zero: |_| false }));
    let trainable = UMT5Encoder::new(&t5_cfg, params.var_builder(&dev)).unwrap();
    let plain = UMT5Encoder::new(&t5_cfg, served(&params)).unwrap();
    let ids = Tensor::new(&[[3u32, 7, 1, 0]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 0]], &dev).unwrap();
    let (a, b) = (trainable.forward(&ids, &mask).unwrap(), plain.forward(&ids, &mask).unwrap());
    assert!(rel(&a, &b) < 1e-4, "text encoder: {}", rel(&a, &b));
}

struct Quiet;

impl Progress for Quiet {
    fn phase(&mut self, _: Phase, _: usize, _: usize) {}
    fn advance(&mut self, _: usize, _: Option<f64>) {}
    fn note(&mut self, _: &str) {}
}

fn small_recipe() -> Recipe {
    let mut r = Recipe { width: 32, height: 32, frames: 5, ..Recipe::default() };
    r.vae.base_dim = 4;
    r.vae.steps = 3;
    r.vae.batch = 2;
    r.vae.clips = vec![ClipShape { frames: 9, crop: 16 }, ClipShape { frames: 13, crop: 8 }];
    r.vae.decoder = DecoderRecipe {
        steps: 3,
        lr: 1e-3,
        object_weight: 3.0,
        latent_noise: 0.1,
        clips: vec![ClipShape { frames: 9, crop: 16 }, ClipShape { frames: 17, crop: 8 }],
        base_dim: None,
    };
    r.dit.heads = 2;
    r.dit.head_dim = 8;
    r.dit.layers = 1;
    r.dit.ffn_dim = 16;
    r.dit.steps = 3;
    r.dit.batch = 4;
    r.dit.clips = 8;
    r.text.d_model = 16;
    r.text.d_kv = 4;
    r.text.d_ff = 16;
    r.text.layers = 1;
    r.text.text_len = 12;
    r
}

fn files(dir: &std::path::Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for component in std::fs::read_dir(dir).unwrap() {
        let component = component.unwrap().path();
        let entries: Vec<_> = if component.is_dir() {
            std::fs::read_dir(&component).unwrap().map(|e| e.unwrap().path()).collect()
        } else {
            vec![component]
        };
        for f in entries {
            out.insert(f.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&f).unwrap());
        }
    }
    out
}

/// A run interrupted three times (mid-VAE, mid-transformer and mid-decoder) and resumed writes the same
/// bytes as one run straight through; the decoder's phase leaves the encoder as the VAE phase made it;
/// the folder loads as a pipeline and renders through the engine.
#[test]
fn an_interrupted_run_resumes_to_the_same_model_and_the_model_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let config = |name: &str, stop_after: Option<usize>| TrainConfig {
        recipe: small_recipe(),
        work_dir: tmp.path().join(format!("{name}-work")),
        out_dir: tmp.path().join(format!("{name}-model")),
        checkpoint_every: 1,
        stop_after,
        device: DeviceName::Cpu(0),
    };
    let summary = train::train(&config("straight", None), &mut Quiet).unwrap();
    assert!(summary.final_transformer_loss.unwrap().is_finite());

    let err = train::train(&config("resumed", Some(2)), &mut Quiet).unwrap_err().to_string();
    assert!(err.contains("stopped as asked after Vae step 2"), "{err}");
    let err = train::train(&config("resumed", Some(3)), &mut Quiet).unwrap_err().to_string();
    assert!(err.contains("Transformer step 2"), "{err}");
    let err = train::train(&config("resumed", Some(2)), &mut Quiet).unwrap_err().to_string();
    assert!(err.contains("Decoder step 1"), "{err}");
    train::train(&config("resumed", None), &mut Quiet).unwrap();
    let (a, b) = (files(&tmp.path().join("straight-model")), files(&tmp.path().join("resumed-model")));
    assert_eq!(a.keys().collect::<std::collections::BTreeSet<_>>(), b.keys().collect());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs after resuming");
    }
    let before =
        candle_core::safetensors::load(tmp.path().join("straight-work/vae.safetensors"), &Device::Cpu).unwrap();
    let after = candle_core::safetensors::load(
        tmp.path().join("straight-model/vae/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (mut frozen, mut moved) = (0, 0);
    for (name, t) in &after {
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let same = values(t) == values(&before[name]);
        if name.starts_with("decoder.") || name.starts_with("post_quant_conv.") {
            moved += !same as usize;
        } else {
            assert!(same, "{name} changed in the decoder's phase");
            frozen += 1;
        }
    }
    assert!(frozen > 20 && moved > 20, "{frozen} frozen, {moved} moved");
    let check = summary.decoder_reconstruction.expect("a check after the decoder's phase");
    assert!(check.psnr.is_finite() && check.clips == 8, "{check:?}");
    // The decoder trained on clips longer than the transformer's, so it was measured on such clips too.
    let long = summary.long_reconstruction.expect("a check of long clips");
    assert_eq!(long.frames, 17);
    for check in [&long.before, &long.after] {
        assert!(check.clips == 16 && check.psnr_by_frame.len() == 17 && check.psnr.is_finite(), "{check:?}");
    }
    assert_ne!(long.before.psnr, long.after.psnr, "the decoder's phase changed nothing");

    // Another recipe in the same work folder is refused, by name.
    let mut other = config("straight", None);
    other.recipe.seed += 1;
    let err = train::train(&other, &mut Quiet).unwrap_err().to_string();
    assert!(err.contains("state.json") && err.contains("another recipe"), "{err}");

    // A device this build cannot open is refused before any work, by name.
    #[cfg(not(feature = "cuda"))]
    {
        let mut gpu = config("gpu", None);
        gpu.device = DeviceName::Cuda(0);
        let err = train::train(&gpu, &mut Quiet).unwrap_err().to_string();
        assert!(err.contains("cuda:0") && err.contains("--features cuda"), "{err}");
        assert!(!tmp.path().join("gpu-work").exists());
    }

    // The folder is a pipeline the engine serves, with the trained text length.
    use patchwork_worker::engine::{DenoiseInput, Engine, Evaluator, ModelSource};
    let source = ModelSource::Dir { path: tmp.path().join("straight-model"), name: None };
    let engine = Engine::load(&source, DType::F32, &Device::Cpu).unwrap();
    let out = engine
        .denoise(&DenoiseInput {
            shape: [16, 2, 4, 4],
            latent: vec![0.5; 16 * 2 * 4 * 4],
            timestep: 500.0,
            prompt: "a red circle moving left".into(),
            negative_prompt: String::new(),
            guidance_scale: 3.0,
            frame_timesteps: Vec::new(),
        })
        .unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}

/// A recipe naming a finished model starts from its weights: with no VAE steps the VAE is kept bit for
/// bit, the transformer and text encoder move a little from the model's (not from random ones), and the
/// run resumes as any run does. A model that does not fit the recipe is refused before any work, by file.
#[test]
fn a_run_starts_from_a_finished_model_and_fine_tunes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base-model");
    let config = |recipe: Recipe, name: &str, stop_after: Option<usize>| TrainConfig {
        recipe,
        work_dir: tmp.path().join(format!("{name}-work")),
        out_dir: tmp.path().join(format!("{name}-model")),
        checkpoint_every: 1,
        stop_after,
        device: DeviceName::Cpu(0),
    };
    let mut recipe = small_recipe();
    recipe.dit.stored_dtype = "f32".into();
    recipe.dit.layers = 2;
    train::train(&config(recipe.clone(), "base", None), &mut Quiet).unwrap();

    let mut tune = recipe.clone();
    tune.start_from = Some(base.clone());
    tune.vae.steps = 0;
    tune.vae.decoder.steps = 0;
    tune.dit.steps = 3;
    tune.dit.lr = 1e-4;
    tune.dit.caption_part_dropout = 0.5;
    train::train(&config(tune.clone(), "tuned", None), &mut Quiet).unwrap();
    let err = train::train(&config(tune.clone(), "resumed", Some(1)), &mut Quiet).unwrap_err().to_string();
    assert!(err.contains("Transformer step 1"), "{err}");
    train::train(&config(tune.clone(), "resumed", None), &mut Quiet).unwrap();
    let (a, b) = (files(&tmp.path().join("tuned-model")), files(&tmp.path().join("resumed-model")));
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs after resuming");
    }

    // Windows cut from clips longer than the native window, from other clips: the start model's latent
    // statistics, since its VAE is kept, and a transformer that learned something else.
    let mut windows = tune.clone();
    windows.dit.clip_frames = Some(13);
    windows.dit.two_objects = Some(0.9);
    train::train(&config(windows, "windows", None), &mut Quiet).unwrap();
    let vae_config = |model: &str| {
        let text = std::fs::read_to_string(tmp.path().join(model).join("vae/config.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let stats = |model: &str| ["latents_mean", "latents_std"].map(|k| vae_config(model)[k].clone());
    assert_eq!(stats("base-model"), stats("tuned-model"));
    assert_eq!(stats("base-model"), stats("windows-model"));
    let transformer = "transformer/diffusion_pytorch_model.safetensors";
    assert!(
        files(&tmp.path().join("tuned-model"))[transformer] != files(&tmp.path().join("windows-model"))[transformer]
    );

    let load = |model: &str, file: &str| {
        candle_core::safetensors::load(tmp.path().join(model).join(file), &Device::Cpu).unwrap()
    };
    let vae = "vae/diffusion_pytorch_model.safetensors";
    let (before, after) = (load("base-model", vae), load("tuned-model", vae));
    assert_eq!(before.len(), after.len());
    for (name, t) in &after {
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values(t) == values(&before[name]), "{name} changed with no VAE steps");
    }
    for file in ["transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"] {
        let (before, after) = (load("base-model", file), load("tuned-model", file));
        let (mut moved, mut total) = (0f32, 0f32);
        for (name, t) in &after {
            let (d, n) = (rel(t, &before[name]), before[name].sqr().unwrap().sum_all().unwrap());
            let n = n.to_scalar::<f32>().unwrap();
            // Three AdamW steps at 1e-4 move a weight by at most 3e-4 (zero tensors start where they are).
            if n > 0.0 {
                moved += d * d * n;
                total += n;
            }
        }
        let moved = (moved / total).sqrt();
        assert!(moved > 0.0 && moved < 0.02, "{file}: moved by {moved} from the start model");
    }

    // Soft attention: the text encoder's queries are scaled where the run starts, and its position bias
    // tables learn 1,000 times as fast as the rest (one AdamW step moves a weight by about its rate).
    let mut soft = tune.clone();
    (soft.dit.steps, soft.dit.clips) = (1, 4);
    (soft.text.query_scale, soft.text.position_lr) = (0.5, 1000.0);
    train::train(&config(soft, "soft", None), &mut Quiet).unwrap();
    let text = "text_encoder/model.safetensors";
    let (before, after) = (load("base-model", text), load("soft-model", text));
    let (mut queries, mut biases) = (0, 0);
    for (name, t) in &after {
        let step = (t - &before[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        if name.ends_with(".SelfAttention.q.weight") {
            queries += 1;
            let halved = (&before[name] * 0.5).unwrap();
            assert!(rel(t, &halved) < 0.01, "{name} is not half the start model's: {}", rel(t, &halved));
        } else if name.ends_with(".SelfAttention.relative_attention_bias.weight") {
            biases += 1;
            assert!(step > 0.05, "{name} moved by only {step} at 1,000 times the rate");
        } else {
            assert!(step < 2e-3, "{name} moved by {step} at the phase's rate");
        }
    }
    assert_eq!((queries, biases), (recipe.text.layers, recipe.text.layers));

    // A decoder twice as wide: widened from the start model's without changing what it decodes, then
    // trained on; the encoder and the latent statistics are the start model's.
    let mut wide = tune.clone();
    (wide.dit.steps, wide.dit.clips) = (0, 4);
    wide.vae.decoder.base_dim = Some(2 * recipe.vae.base_dim);
    train::train(&config(wide.clone(), "widened", None), &mut Quiet).unwrap();
    wide.vae.decoder.steps = 2;
    train::train(&config(wide, "wide", None), &mut Quiet).unwrap();
    assert_eq!(vae_config("widened-model")["decoder_base_dim"], 8);
    assert_eq!(stats("base-model"), stats("wide-model"));
    let serve = |model: &str| {
        let dir = patchwork_worker::model::ComponentDir::open(tmp.path().join(model).join("vae")).unwrap();
        WanVae::load(&dir, DType::F32, &Device::Cpu).unwrap()
    };
    let latent = Tensor::randn(0f32, 1.0, (1, 16, 3, 4, 4), &Device::Cpu).unwrap();
    let decode = |model: &str| serve(model).decode(&latent).unwrap();
    let base_video = decode("base-model");
    assert!(rel(&decode("widened-model"), &base_video) < 1e-5);
    assert!(rel(&decode("wide-model"), &base_video) > 1e-4, "two decoder steps changed nothing");
    let (before, after) = (load("base-model", vae), load("wide-model", vae));
    for (name, t) in &before {
        if !name.starts_with("decoder.") && !name.starts_with("post_quant_conv.") {
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values(t) == values(&after[name]), "{name} changed");
        }
    }

    // Misfits, each refused before any work with the file's name.
    let refused = |recipe: Recipe, name: &str| {
        let err = train::train(&config(recipe, name, None), &mut Quiet).unwrap_err().to_string();
        assert!(!tmp.path().join(format!("{name}-work/latents.safetensors")).exists(), "{name}: work was done");
        err
    };
    let mut odd = tune.clone();
    odd.vae.decoder.base_dim = Some(6);
    let err = refused(odd, "odd");
    assert!(err.contains("vae/diffusion_pytorch_model.safetensors") && err.contains("whole factor"), "{err}");
    let mut wider = tune.clone();
    wider.dit.ffn_dim *= 2;
    let err = refused(wider, "wider");
    assert!(err.contains("transformer/diffusion_pytorch_model.safetensors") && err.contains("does not fit"), "{err}");
    let mut shallower = tune.clone();
    shallower.dit.layers = 1;
    let err = refused(shallower, "shallower");
    assert!(err.contains("transformer/diffusion_pytorch_model.safetensors") && err.contains("does not have"), "{err}");
    let mut nowhere = tune.clone();
    nowhere.start_from = Some(tmp.path().join("no-such-model"));
    let err = refused(nowhere, "nowhere");
    assert!(err.contains("no-such-model") && err.contains("not a pipeline folder"), "{err}");
    let other_words = tmp.path().join("other-words");
    for (name, bytes) in files(&base) {
        let path = other_words.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = if name.ends_with("tokenizer.json") {
            String::from_utf8(bytes).unwrap().replacen("\"circle\"", "\"disc\"", 1).into_bytes()
        } else {
            bytes
        };
        std::fs::write(path, bytes).unwrap();
    }
    let mut words = tune.clone();
    words.start_from = Some(other_words);
    let err = refused(words, "words");
    assert!(err.contains("tokenizer.json") && err.contains("vocabulary"), "{err}");
    let mut untrained = tune;
    untrained.start_from = None;
    let err = refused(untrained, "untrained");
    assert!(err.contains("vae.steps") && err.contains("start_from"), "{err}");
}
