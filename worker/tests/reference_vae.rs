//! The Wan VAE against the reference implementation (diffusers' `AutoencoderKLWan`): every `vae-decode`
//! and `vae-encode` case of the fixture manifest, in f32 on the CPU, must agree to a relative error
//! ‖ours − reference‖ / ‖reference‖ of 1e-4.
//!
//! The fixtures are made by `tools/reference/`; the manifest lives in `fixtures/reference/` (or in the
//! folder named by `PATCHWORK_REFERENCE_FIXTURES`). A missing manifest is a failure, not a skip: a
//! model that is never compared is not known to be right.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use patchwork_worker::model::vae::WanVae;
use patchwork_worker::model::ComponentDir;

const TOLERANCE: f64 = 1e-4;

#[derive(serde::Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    component: String,
    model_dir: String,
    inputs: String,
    expected: String,
}

fn fixtures_dir() -> PathBuf {
    match std::env::var_os("PATCHWORK_REFERENCE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/reference"),
    }
}

fn load_tensor(path: &Path, name: &str) -> Tensor {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: cannot read: {e}", path.display()));
    let t = tensors.get(name).unwrap_or_else(|| panic!("{}: no tensor `{name}`", path.display()));
    t.to_dtype(DType::F32).expect("to f32")
}

fn relative_error(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "shapes differ");
    let ours = ours.to_dtype(DType::F64).expect("f64");
    let reference = reference.to_dtype(DType::F64).expect("f64");
    let diff = (&ours - &reference).expect("sub").sqr().expect("sqr").sum_all().expect("sum");
    let norm = reference.sqr().expect("sqr").sum_all().expect("sum");
    let (diff, norm) = (diff.to_scalar::<f64>().expect("scalar"), norm.to_scalar::<f64>().expect("scalar"));
    diff.sqrt() / norm.sqrt().max(f64::MIN_POSITIVE)
}

#[test]
fn vae_matches_reference_fixtures() {
    let root = fixtures_dir();
    let manifest_path = root.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap_or_else(|e| {
        panic!("{}: {e}; generate the reference fixtures with tools/reference first", manifest_path.display())
    });
    let manifest: Manifest = serde_json::from_str(&text).expect("manifest.json parses");
    let cases: Vec<&Case> =
        manifest.cases.iter().filter(|c| c.component == "vae-decode" || c.component == "vae-encode").collect();
    assert!(!cases.is_empty(), "{}: no vae-decode or vae-encode case", manifest_path.display());

    let mut models: BTreeMap<&str, WanVae> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in cases {
        if !models.contains_key(case.model_dir.as_str()) {
            let dir = ComponentDir::open(root.join(&case.model_dir)).expect("VAE folder opens");
            let vae = WanVae::load(&dir, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            models.insert(&case.model_dir, vae);
        }
        let vae = &models[case.model_dir.as_str()];
        let (ours, reference) = if case.component == "vae-decode" {
            let latents = load_tensor(&root.join(&case.inputs), "latents");
            (vae.decode(&latents).expect("decode"), load_tensor(&root.join(&case.expected), "sample"))
        } else {
            let sample = load_tensor(&root.join(&case.inputs), "sample");
            (vae.encode(&sample).expect("encode"), load_tensor(&root.join(&case.expected), "mean"))
        };
        let err = relative_error(&ours, &reference);
        println!("{}: shape {:?}, relative error {err:.3e}", case.name, reference.dims());
        if err.is_nan() || err > TOLERANCE {
            failures.push(format!("{}: relative error {err:.3e} > {TOLERANCE:e}", case.name));
        }
    }
    assert!(failures.is_empty(), "cases off the reference:\n{}", failures.join("\n"));
}
