//! Tensor parallelism on CPU ranks: a transformer sharded over 2, 3, 4 or 6 ranks gives the output of the
//! unsharded model (relative error ≤ 1e-5 in f32), on a 12-head config and on the reference fixtures;
//! a degree that does not divide the heads is refused; a failed rank fails its group without hanging and
//! the re-formed group computes the same output again.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use patchwork_worker::group::{DeviceName, ShardGroup, ShardLoader};
use patchwork_worker::model::dit::{WanTransformer, WanTransformerConfig};
use patchwork_worker::model::forward::{run_component, run_transformer_sharded, Component};
use patchwork_worker::model::random::RandomWeights;
use patchwork_worker::model::ComponentDir;

/// Wan's architecture with 12 heads (as the 1.3B model), small widths, and a feed-forward width that
/// degrees 3, 4 and 6 split unevenly.
fn twelve_head_config() -> WanTransformerConfig {
    WanTransformerConfig {
        patch_size: [1, 2, 2],
        num_attention_heads: 12,
        attention_head_dim: 8,
        in_channels: 16,
        out_channels: Some(16),
        text_dim: 24,
        freq_dim: 16,
        ffn_dim: 202,
        num_layers: 2,
        cross_attn_norm: true,
        qk_norm: Some("rms_norm_across_heads".into()),
        eps: 1e-6,
        image_dim: None,
        added_kv_proj_dim: None,
        rope_max_seq_len: 1024,
    }
}

/// Seeded random weights that remember every tensor handed out, to be saved as a checkpoint.
struct Recording {
    inner: RandomWeights,
    seen: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl SimpleBackend for Recording {
    fn get(&self, shape: Shape, name: &str, hint: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get(shape, name, hint, dtype, dev)?;
        self.seen.lock().unwrap().insert(name.to_string(), t.clone());
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Writes a diffusers-style `transformer/` folder for `cfg` with seeded weights.
fn write_component(cfg: &WanTransformerConfig, dir: &Path) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let backend = Recording { inner: RandomWeights::new(17), seen: seen.clone() };
    WanTransformer::new(cfg, VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu)).unwrap();
    let tensors = seen.lock().unwrap().clone();
    candle_core::safetensors::save(&tensors, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut config = serde_json::to_value(cfg).unwrap();
    config["_class_name"] = "WanTransformer3DModel".into();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn inputs(cfg: &WanTransformerConfig) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    // A batch of two, as classifier-free guidance evaluates it: 3 frames of 4×6 latent pixels.
    HashMap::from([
        ("hidden_states".to_string(), Tensor::randn(0f32, 1.0, (2, 16, 3, 4, 6), &dev).unwrap()),
        ("timestep".to_string(), Tensor::new(&[700f32, 250.0], &dev).unwrap()),
        ("encoder_hidden_states".to_string(), Tensor::randn(0f32, 1.0, (2, 7, cfg.text_dim), &dev).unwrap()),
    ])
}

fn cpu_ranks(n: usize) -> Vec<DeviceName> {
    (0..n).map(DeviceName::Cpu).collect()
}

fn sample(outputs: &HashMap<String, Tensor>) -> &Tensor {
    outputs.get("sample").expect("a sample output")
}

#[test]
fn sharded_transformer_matches_unsharded_on_twelve_heads() {
    let cfg = twelve_head_config();
    let dir = tempfile::tempdir().unwrap();
    write_component(&cfg, dir.path());
    let inputs = inputs(&cfg);
    let single = run_component(Component::Transformer, dir.path(), &inputs, DType::F32, &Device::Cpu).unwrap();
    for tp in [1, 2, 3, 4, 6] {
        let sharded = run_transformer_sharded(dir.path(), &inputs, DType::F32, &cpu_ranks(tp)).unwrap();
        let err = common::rel_err(sample(&sharded), sample(&single));
        println!("TP={tp}: relative error {err:.3e}");
        assert!(err <= 1e-5, "TP={tp}: relative error {err:.3e} > 1e-5");
    }
}

#[test]
fn sharded_transformer_matches_the_reference_fixtures() {
    let manifest = common::manifest();
    let cases: Vec<_> = manifest.cases.iter().filter(|c| c.component == "transformer").collect();
    assert!(!cases.is_empty());
    for case in cases {
        let model_dir = common::fixtures_dir().join(&case.model_dir);
        let heads =
            ComponentDir::open(&model_dir).unwrap().config::<WanTransformerConfig>().unwrap().num_attention_heads;
        let inputs = common::load(&case.inputs);
        let expected = common::load(&case.expected);
        let single = run_component(Component::Transformer, &model_dir, &inputs, DType::F32, &Device::Cpu).unwrap();
        // Every degree the fixture's heads allow (2 heads: 2; 3 heads: 3).
        for tp in (2..=heads).filter(|tp| heads.is_multiple_of(*tp)) {
            let sharded = run_transformer_sharded(&model_dir, &inputs, DType::F32, &cpu_ranks(tp)).unwrap();
            let vs_single = common::rel_err(sample(&sharded), sample(&single));
            let vs_reference = common::rel_err(sample(&sharded), sample(&expected));
            println!("{} TP={tp}: {vs_single:.3e} against TP=1, {vs_reference:.3e} against the reference", case.name);
            assert!(vs_single <= 1e-5, "{} TP={tp}: {vs_single:.3e} against TP=1", case.name);
            assert!(vs_reference <= 1e-4, "{} TP={tp}: {vs_reference:.3e} against the reference", case.name);
        }
    }
}

#[test]
fn a_degree_that_does_not_divide_the_heads_is_refused() {
    let cfg = twelve_head_config();
    let dir = tempfile::tempdir().unwrap();
    write_component(&cfg, dir.path());
    for tp in [5, 7, 8] {
        let err =
            run_transformer_sharded(dir.path(), &inputs(&cfg), DType::F32, &cpu_ranks(tp)).unwrap_err().to_string();
        assert!(err.contains(&format!("degree {tp} does not divide the model's 12 attention heads")), "{err}");
    }
}

#[test]
fn a_failed_rank_fails_its_group_and_the_reformed_group_works() {
    let cfg = twelve_head_config();
    let loader: ShardLoader = {
        let cfg = cfg.clone();
        Arc::new(move |device, comm| {
            let vb = patchwork_worker::model::sharded::ShardedWeights::var_builder(
                patchwork_worker::model::sharded::WeightSource::Whole(Box::new(RandomWeights::new(3))),
                comm.rank(),
                comm.world(),
                patchwork_worker::model::dit::parallel::split_rule(&cfg),
                DType::F32,
                device,
            );
            WanTransformer::new_shard(&cfg, vb, comm)
        })
    };
    let mut group = ShardGroup::start(0, cpu_ranks(3), loader).unwrap();
    let i = inputs(&cfg);
    let (x, t, text) = (&i["hidden_states"], &i["timestep"], &i["encoder_hidden_states"]);
    let before = group.forward(x, t, text).unwrap();
    for rank in [2, 0] {
        group.inject_fault(rank);
        let failure = group.forward(x, t, text).unwrap_err();
        assert_eq!(failure.rank, rank, "{failure}");
        assert!(failure.to_string().contains("injected fault"), "{failure}");
        // Its communicator is aborted: the group stays failed until it is re-formed.
        assert!(group.forward(x, t, text).is_err());
        group.reform().unwrap();
        let after = group.forward(x, t, text).unwrap();
        assert_eq!(common::rel_err(&after, &before), 0.0);
    }
    assert!(group.bytes_all_reduced() > 0);
}

#[test]
fn a_truncated_weights_file_is_named_when_sharded() {
    let cfg = twelve_head_config();
    let dir = tempfile::tempdir().unwrap();
    write_component(&cfg, dir.path());
    let file = dir.path().join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = run_transformer_sharded(dir.path(), &inputs(&cfg), DType::F32, &cpu_ranks(2)).unwrap_err().to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("truncated"), "{err}");
}
