//! The text path against the reference fixtures beyond the encoder alone (which `reference_components`
//! checks): the tokenizer call (transformers' tokenizer as `WanPipeline` calls it), the whole
//! prompt-to-embeddings path (`WanPipeline.encode_prompt`), reduced precision, and broken folders.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use patchwork_worker::model::t5::{TextEncoder, UMT5Encoder};
use patchwork_worker::model::tokenizer::{prompt_clean, PromptTokenizer};
use patchwork_worker::model::{ComponentDir, PipelineDir};
use serde::Deserialize;

const TOLERANCE: f64 = 1e-4;

#[derive(Debug, Deserialize)]
struct TokenizerCases {
    text_len: usize,
    cases: Vec<TokenizerCase>,
}

#[derive(Debug, Deserialize)]
struct TokenizerCase {
    prompt: String,
    #[serde(default)]
    cleaned: Option<String>,
    input_ids: Vec<u32>,
    attention_mask: Vec<u32>,
}

fn input<'a>(inputs: &'a std::collections::HashMap<String, Tensor>, name: &str, case: &str) -> &'a Tensor {
    inputs.get(name).unwrap_or_else(|| panic!("{case}: no input `{name}`"))
}

#[test]
fn tokenizer_matches_reference() {
    let path = common::fixtures_dir().join("tokenizer/cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: TokenizerCases = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!cases.cases.is_empty(), "no tokenizer cases");
    let tokenizer = PromptTokenizer::load(common::fixtures_dir().join("pipeline/tokenizer")).expect("tokenizer");
    for case in &cases.cases {
        if let Some(cleaned) = &case.cleaned {
            assert_eq!(&prompt_clean(&case.prompt), cleaned, "cleaning {:?}", case.prompt);
        }
        let batch = tokenizer.encode(&[&case.prompt], cases.text_len).expect("encode");
        assert_eq!(batch.input_ids[0], case.input_ids, "ids of {:?}", case.prompt);
        assert_eq!(batch.attention_mask[0], case.attention_mask, "mask of {:?}", case.prompt);
    }
    // The whole batch at once gives the same rows.
    let prompts: Vec<&str> = cases.cases.iter().map(|c| c.prompt.as_str()).collect();
    let batch = tokenizer.encode(&prompts, cases.text_len).expect("encode batch");
    for (row, case) in batch.input_ids.iter().zip(&cases.cases) {
        assert_eq!(row, &case.input_ids, "batched ids of {:?}", case.prompt);
    }
}

#[test]
fn text_pipeline_matches_reference() {
    let manifest = common::manifest();
    let text = &manifest.text;
    let pipeline = PipelineDir::open(common::fixtures_dir().join("pipeline")).expect("pipeline folder");
    let encoder = TextEncoder::load(&pipeline, DType::F32, &Device::Cpu).expect("text encoder");
    let prompts: Vec<&str> = text.prompts.iter().map(String::as_str).collect();

    // The token ids and mask the pipeline made (`text.inputs`, which the shared manifest type skips).
    let inputs = common::load(&text_inputs_path());
    let batch = encoder.tokenizer().encode(&prompts, text.text_len).expect("tokenize");
    let (ids, mask) = batch.to_tensors(&Device::Cpu).expect("tensors");
    let want_ids = input(&inputs, "input_ids", "text").to_dtype(DType::U32).expect("ids");
    let want_mask = input(&inputs, "attention_mask", "text").to_dtype(DType::U32).expect("mask");
    assert_eq!(ids.to_vec2::<u32>().expect("ids"), want_ids.to_vec2::<u32>().expect("ids"));
    assert_eq!(mask.to_vec2::<u32>().expect("mask"), want_mask.to_vec2::<u32>().expect("mask"));

    let got = encoder.encode_prompts(&prompts, text.text_len).expect("encode_prompts");
    let expected = common::load(&text.expected);
    let want = expected.get("prompt_embeds").expect("prompt_embeds");
    let err = common::rel_err(&got, want);
    println!("text pipeline: prompt_embeds relative error {err:.3e}");
    assert!(err <= TOLERANCE, "prompt_embeds relative error {err:.3e} > {TOLERANCE:e}");
    // Past each prompt's real length the embeddings are exactly zero, as the pipeline makes them.
    let lens = encoder.tokenizer().encode(&prompts, text.text_len).expect("tokenize").seq_lens();
    let rows = got.to_vec3::<f32>().expect("embeds");
    for (row, len) in rows.iter().zip(lens) {
        assert!(row[len..].iter().flatten().all(|&v| v == 0.0), "nonzero padding after {len} tokens");
    }
}

fn text_inputs_path() -> String {
    let path = common::fixtures_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    manifest["text"]["inputs"].as_str().expect("manifest text.inputs").to_string()
}

#[test]
fn half_precision_stays_close_to_the_f32_reference() {
    // transformers itself, run in bf16 on these inputs, is 1.2e-2 away from its f32 output.
    let manifest = common::manifest();
    let case = manifest.cases.iter().find(|c| c.component == "text-encoder").expect("a text-encoder case");
    let dir = ComponentDir::open(common::fixtures_dir().join(&case.model_dir)).expect("text encoder folder");
    let inputs = common::load(&case.inputs);
    let expected = common::load(&case.expected);
    for (dtype, tolerance) in [(DType::BF16, 3e-2), (DType::F16, 5e-3)] {
        let encoder = UMT5Encoder::load(&dir, dtype, &Device::Cpu).expect("load");
        let got = encoder
            .forward(input(&inputs, "input_ids", &case.name), input(&inputs, "attention_mask", &case.name))
            .expect("forward");
        assert_eq!(got.dtype(), dtype);
        let err = common::rel_err(&got, &expected["last_hidden_state"]);
        println!("{} in {dtype:?}: relative error {err:.3e}", case.name);
        assert!(err <= tolerance, "{dtype:?}: relative error {err:.3e} > {tolerance:e}");
    }
}

/// Copies the fixture's text encoder into a scratch folder with one tensor left out of the weights.
fn text_encoder_without(tensor: &str, scratch: &Path) -> ComponentDir {
    let source = common::fixtures_dir().join("pipeline/text_encoder");
    std::fs::create_dir_all(scratch).expect("scratch folder");
    std::fs::copy(source.join("config.json"), scratch.join("config.json")).expect("copy config");
    let mut weights =
        candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).expect("fixture weights");
    assert!(weights.remove(tensor).is_some(), "the fixture has no {tensor}");
    candle_core::safetensors::save(&weights, scratch.join("model.safetensors")).expect("save weights");
    ComponentDir::open(scratch).expect("scratch component")
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("patchwork-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn missing_layer_relative_bias_is_an_error_naming_the_tensor() {
    let tensor = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";
    let scratch = scratch_dir("t5-missing-bias");
    let dir = text_encoder_without(tensor, &scratch);
    let err = UMT5Encoder::load(&dir, DType::F32, &Device::Cpu).expect_err("loading must fail");
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{err}");
    assert!(err.to_string().contains(tensor), "error does not name {tensor}: {err}");
}

#[test]
fn missing_tokenizer_json_is_an_error_naming_the_file() {
    let scratch = scratch_dir("tokenizer-missing");
    std::fs::create_dir_all(&scratch).expect("scratch folder");
    let source = common::fixtures_dir().join("pipeline/tokenizer/tokenizer_config.json");
    std::fs::copy(source, scratch.join("tokenizer_config.json")).expect("copy tokenizer_config.json");
    let err = PromptTokenizer::load(&scratch).expect_err("loading must fail");
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{err}");
    assert!(err.to_string().contains("tokenizer.json"), "error does not name tokenizer.json: {err}");
    assert!(!err.to_string().contains("tokenizer_config.json: "), "names the wrong file: {err}");
}

#[test]
fn corrupt_tokenizer_json_is_an_error_naming_the_file() {
    let scratch = scratch_dir("tokenizer-corrupt");
    std::fs::create_dir_all(&scratch).expect("scratch folder");
    std::fs::write(scratch.join("tokenizer.json"), b"{\"model\": 7}").expect("write");
    let err = PromptTokenizer::load(&scratch).expect_err("loading must fail");
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{err}");
    assert!(err.to_string().contains(&scratch.join("tokenizer.json").display().to_string()), "{err}");
}
