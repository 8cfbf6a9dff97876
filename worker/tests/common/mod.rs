//! Reading the reference fixtures written by `tools/reference/make_fixtures.py`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub cases: Vec<Case>,
    pub text: TextCase,
}

/// One component run: inputs and expected outputs, files relative to the manifest's folder.
#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub component: String,
    pub model_dir: String,
    pub inputs: String,
    pub expected: String,
}

#[derive(Debug, Deserialize)]
pub struct TextCase {
    pub prompts: Vec<String>,
    pub text_len: usize,
    pub expected: String,
}

/// The folder of the committed fixtures. A missing manifest fails the test: fixtures are committed.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/reference")
}

pub fn manifest() -> Manifest {
    let path = fixtures_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn load(rel: &str) -> HashMap<String, Tensor> {
    let path = fixtures_dir().join(rel);
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// ‖a − b‖ / ‖b‖, in f64.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    let norm = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    (diff / norm).sqrt()
}
