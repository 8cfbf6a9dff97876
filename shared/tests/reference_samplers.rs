//! The samplers against diffusers: schedules and whole trajectories recorded from the reference
//! implementation by `tools/reference/make_fixtures.py` (see `fixtures/reference/README.md`).
//!
//! The fixtures are part of the repository, so a missing manifest is a failure, not a skip: a skip would let
//! the samplers drift from the reference unnoticed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use patchwork_shared::sampler::{FlowSampler, Sampler, SamplerKind};
use serde::Deserialize;

/// The largest relative error ‖a − b‖ / ‖b‖ allowed between a value here and the reference.
const TOLERANCE: f64 = 1e-5;

#[derive(Deserialize)]
struct Manifest {
    schedules: Vec<Entry>,
    trajectories: Vec<Entry>,
}

/// One schedule or trajectory: the sampler's parameters and the safetensors file holding what diffusers did.
#[derive(Deserialize)]
struct Entry {
    sampler: String,
    steps: usize,
    shift: f64,
    file: String,
}

impl Entry {
    fn sampler(&self) -> FlowSampler {
        let kind: SamplerKind = self.sampler.parse().unwrap_or_else(|e| panic!("{}: {e}", self.file));
        FlowSampler::new(kind, self.steps, self.shift).unwrap_or_else(|e| panic!("{}: {e}", self.file))
    }

    fn label(&self) -> String {
        format!("{} steps={} shift={}", self.sampler, self.steps, self.shift)
    }
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/reference")
}

fn manifest() -> Manifest {
    let path = reference_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (generate it with tools/reference/make_fixtures.sh)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(entry: &Entry) -> HashMap<String, Tensor> {
    let path = reference_dir().join(&entry.file);
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tensor<'a>(tensors: &'a HashMap<String, Tensor>, entry: &Entry, name: &str) -> &'a Tensor {
    tensors.get(name).unwrap_or_else(|| panic!("{}: no tensor {name:?}", entry.file))
}

fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).expect("to f64")
}

/// ‖a − b‖₂ / ‖b‖₂, computed in f64.
fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

fn check(what: &str, got: &[f64], expected: &[f64], worst: &mut f64) {
    let err = relative_error(got, expected);
    *worst = worst.max(err);
    assert!(err <= TOLERANCE, "{what}: relative error {err:e} > {TOLERANCE:e}\n got {got:?}\n expected {expected:?}");
}

#[test]
fn schedules_match_diffusers() {
    let manifest = manifest();
    for kind in ["euler", "unipc"] {
        assert!(manifest.schedules.iter().any(|e| e.sampler == kind), "manifest has no {kind} schedule");
    }
    let (mut worst_t, mut worst_s) = (0.0f64, 0.0f64);
    for entry in &manifest.schedules {
        let tensors = load(entry);
        let sampler = entry.sampler();
        let label = entry.label();
        let expected_t = to_f64_vec(tensor(&tensors, entry, "timesteps"));
        let expected_s = to_f64_vec(tensor(&tensors, entry, "sigmas"));
        check(&format!("{label}: timesteps"), sampler.timesteps(), &expected_t, &mut worst_t);
        check(&format!("{label}: sigmas"), sampler.sigmas(), &expected_s, &mut worst_s);
    }
    println!("{} schedules: worst relative error timesteps {worst_t:e}, sigmas {worst_s:e}", manifest.schedules.len());
}

#[test]
fn trajectories_match_diffusers() {
    let manifest = manifest();
    for kind in ["euler", "unipc"] {
        assert!(manifest.trajectories.iter().any(|e| e.sampler == kind), "manifest has no {kind} trajectory");
    }
    for entry in &manifest.trajectories {
        let tensors = load(entry);
        let mut sampler = entry.sampler();
        let label = entry.label();
        let mut worst = 0.0f64;
        check(
            &format!("{label}: timesteps"),
            sampler.timesteps(),
            &to_f64_vec(tensor(&tensors, entry, "timesteps")),
            &mut 0.0,
        );
        let mut sample = tensor(&tensors, entry, "sample").clone();
        let model_outputs = tensor(&tensors, entry, "model_outputs");
        let samples = tensor(&tensors, entry, "samples");
        assert_eq!(model_outputs.dim(0).expect("model_outputs"), entry.steps, "{label}: model_outputs steps");
        assert_eq!(samples.dim(0).expect("samples"), entry.steps, "{label}: samples steps");
        for k in 0..entry.steps {
            let model_output = model_outputs.get(k).expect("model_outputs[k]");
            sample = sampler.step(&model_output, &sample).unwrap_or_else(|e| panic!("{label}: step {k}: {e}"));
            let expected = to_f64_vec(&samples.get(k).expect("samples[k]"));
            check(&format!("{label}: sample after step {k}"), &to_f64_vec(&sample), &expected, &mut worst);
        }
        assert!(sampler.is_finished(), "{label}: sampler not finished after {} steps", entry.steps);
        println!("{label}: worst relative error over the trajectory {worst:e}");
    }
}
