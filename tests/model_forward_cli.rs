//! `patchwork model forward` as a user runs it: on every reference case, and on broken model folders,
//! which must fail with a message naming what is wrong, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference")
}

fn run_forward(component: &str, model_dir: &Path, inputs: &Path, output: &Path, dtype: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(["model", "forward", "--component", component, "--model-dir"])
        .arg(model_dir)
        .arg("--inputs")
        .arg(inputs)
        .arg("--output")
        .arg(output)
        .args(["--dtype", dtype])
        .output()
        .expect("run patchwork");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "patchwork panicked: {stderr}");
    (out.status.success(), stderr)
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    (diff / b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()).sqrt()
}

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

#[test]
fn forward_reproduces_every_reference_case() {
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for case in &manifest.cases {
        let output = tmp.path().join(format!("{}.safetensors", case.name));
        let (ok, stderr) = run_forward(
            &case.component,
            &fixtures().join(&case.model_dir),
            &fixtures().join(&case.inputs),
            &output,
            "f32",
        );
        assert!(ok, "{}: {stderr}", case.name);
        let got = candle_core::safetensors::load(&output, &Device::Cpu).unwrap();
        let want = candle_core::safetensors::load(fixtures().join(&case.expected), &Device::Cpu).unwrap();
        for (name, w) in &want {
            let err = rel_err(&got[name], w);
            assert!(err <= 1e-4, "{}: {name} relative error {err:e}", case.name);
        }
    }
}

#[test]
fn reduced_precision_stays_close_to_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("transformer", "pipeline/transformer", "transformer-2h-f5-h6w4", "sample"),
        ("vae-decode", "pipeline/vae", "vae-decode-f5", "sample"),
        ("vae-encode", "pipeline/vae", "vae-encode-f5", "mean"),
        ("text-encoder", "pipeline/text_encoder", "text-encoder-b2", "last_hidden_state"),
    ];
    for (component, model_dir, case, output_name) in cases {
        let inputs = fixtures().join(format!("cases/{case}.in.safetensors"));
        let expected = fixtures().join(format!("cases/{case}.out.safetensors"));
        let want = candle_core::safetensors::load(expected, &Device::Cpu).unwrap().remove(output_name).unwrap();
        for (dtype, tolerance) in [("bf16", 5e-2), ("f16", 1e-2)] {
            let output = tmp.path().join(format!("{case}-{dtype}.safetensors"));
            let (ok, stderr) = run_forward(component, &fixtures().join(model_dir), &inputs, &output, dtype);
            assert!(ok, "{case} {dtype}: {stderr}");
            let got = candle_core::safetensors::load(&output, &Device::Cpu).unwrap().remove(output_name).unwrap();
            let err = rel_err(&got, &want);
            assert!(err <= tolerance, "{case} {dtype}: relative error {err:e} > {tolerance:e}");
        }
    }
}

/// Copies a component folder so that a test can break it.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Runs the transformer on a broken copy of the fixture model and returns the error text.
fn broken(break_it: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("transformer");
    copy_dir(&fixtures().join("pipeline/transformer"), &dir);
    break_it(&dir);
    let inputs = fixtures().join("cases/transformer-2h-f1-h4w6.in.safetensors");
    let (ok, stderr) = run_forward("transformer", &dir, &inputs, &tmp.path().join("out.safetensors"), "f32");
    assert!(!ok, "a broken model directory was accepted");
    stderr
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &file).unwrap();
}

#[test]
fn broken_model_directories_name_what_is_wrong() {
    let err = broken(|dir| std::fs::remove_file(dir.join("config.json")).unwrap());
    assert!(err.contains("config.json") && err.contains("missing"), "{err}");

    let err = broken(|dir| std::fs::write(dir.join("config.json"), "{\"num_attention_heads\": 2").unwrap());
    assert!(err.contains("config.json") && err.contains("invalid JSON"), "{err}");

    let err = broken(|dir| std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap());
    assert!(err.contains("safetensors") && err.contains("missing"), "{err}");

    let err = broken(|dir| {
        let file = dir.join("diffusion_pytorch_model.safetensors");
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("truncated"), "{err}");

    let missing = "blocks.1.attn2.norm_k.weight";
    let err = broken(|dir| rewrite_weights(dir, |t| drop(t.remove(missing))));
    assert!(err.contains(missing), "{err}");

    let reshaped = "blocks.0.ffn.net.0.proj.weight";
    let err = broken(|dir| {
        rewrite_weights(dir, |t| {
            t.insert(reshaped.into(), Tensor::zeros((95, 48), DType::F32, &Device::Cpu).unwrap());
        })
    });
    assert!(err.contains(reshaped) && err.contains("shape"), "{err}");
}

#[test]
fn a_missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("transformer-3h");
    copy_dir(&fixtures().join("transformer-3h"), &dir);
    let shard = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".safetensors"))
        .unwrap();
    std::fs::remove_file(dir.join(&shard)).unwrap();
    let inputs = fixtures().join("cases/transformer-3h-f5-h4w2.in.safetensors");
    let (ok, err) = run_forward("transformer", &dir, &inputs, &tmp.path().join("o.safetensors"), "f32");
    assert!(!ok);
    assert!(err.contains(&shard) && err.contains("missing"), "{err}");
}

#[test]
fn bad_arguments_and_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("pipeline/transformer");
    let inputs = fixtures().join("cases/transformer-2h-f1-h4w6.in.safetensors");
    let out = tmp.path().join("o.safetensors");
    let (ok, err) = run_forward("unet", &model, &inputs, &out, "f32");
    assert!(!ok && err.contains("component"), "{err}");
    let (ok, err) = run_forward("transformer", &model, &inputs, &out, "f64");
    assert!(!ok && err.contains("dtype"), "{err}");
    // VAE inputs given to the transformer: the missing input is named.
    let vae_inputs = fixtures().join("cases/vae-decode-f1.in.safetensors");
    let (ok, err) = run_forward("transformer", &model, &vae_inputs, &out, "f32");
    assert!(!ok && err.contains("hidden_states"), "{err}");
    // Inputs of the wrong shape: the transformer-3h case has text_dim 24, this model takes 40.
    let other = fixtures().join("cases/transformer-3h-f1-h2w2.in.safetensors");
    let (ok, err) = run_forward("transformer", &model, &other, &out, "f32");
    assert!(!ok && err.contains("encoder_hidden_states"), "{err}");
    let (ok, err) = run_forward("transformer", &model, &tmp.path().join("nope.safetensors"), &out, "f32");
    assert!(!ok && err.contains("nope.safetensors"), "{err}");
    // A frame too small for the VAE's downsampling is refused by name, not wrapped around.
    let tiny = tmp.path().join("tiny.safetensors");
    let sample = Tensor::zeros((1, 3, 1, 4, 16), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("sample".to_string(), sample)]), &tiny).unwrap();
    let (ok, err) = run_forward("vae-encode", &fixtures().join("pipeline/vae"), &tiny, &out, "f32");
    assert!(!ok && err.contains("sample") && err.contains("multiples of 8"), "{err}");
}

fn run_forward_args(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patchwork")).args(["model", "forward"]).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "patchwork panicked: {stderr}");
    (out.status.success(), stderr)
}

#[test]
fn forward_sharded_over_cpu_ranks_matches_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("transformer-3h");
    let inputs = fixtures().join("cases/transformer-3h-f5-h4w2.in.safetensors");
    let expected = fixtures().join("cases/transformer-3h-f5-h4w2.out.safetensors");
    let want = candle_core::safetensors::load(expected, &Device::Cpu).unwrap().remove("sample").unwrap();
    let out = tmp.path().join("o.safetensors");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let base = [
        "--component".to_string(),
        "transformer".into(),
        "--model-dir".into(),
        path(&model),
        "--inputs".into(),
        path(&inputs),
        "--output".into(),
        path(&out),
    ];
    let args =
        |extra: &[&str]| -> Vec<String> { base.iter().cloned().chain(extra.iter().map(|s| s.to_string())).collect() };
    for extra in [&["--tp", "3"][..], &["--devices", "cpu:3"][..]] {
        let a = args(extra);
        let (ok, err) = run_forward_args(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{extra:?}: {err}");
        let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap().remove("sample").unwrap();
        let e = rel_err(&got, &want);
        assert!(e <= 1e-4, "{extra:?}: relative error {e:e}");
    }
    // Three heads do not split in two; only the transformer is sharded; no CUDA in this build.
    let refused: [(&[&str], &str); 3] = [
        (&["--tp", "2"], "degree 2 does not divide the model's 3 attention heads"),
        (&["--tp", "2", "--devices", "cpu:3"], "--tp 2 with 3 devices"),
        (&["--devices", "cuda:0"], "cuda:0"),
    ];
    for (extra, expected) in refused {
        let a = args(extra);
        let (ok, err) = run_forward_args(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!ok && err.contains(expected), "{extra:?}: {err}");
    }
    let vae = fixtures().join("pipeline/vae");
    let vae_in = fixtures().join("cases/vae-decode-f1.in.safetensors");
    let (ok, err) = run_forward_args(&[
        "--component",
        "vae-decode",
        "--model-dir",
        &path(&vae),
        "--inputs",
        &path(&vae_in),
        "--output",
        &path(&out),
        "--tp",
        "2",
    ]);
    assert!(!ok && err.contains("only the transformer is sharded"), "{err}");
}
