//! Loading a whole diffusers pipeline folder (`model_index.json` and its component folders), and the
//! errors for folders that are not one.

mod common;

use candle_core::{DType, Device};
use patchwork_worker::model::dit::WanTransformer;
use patchwork_worker::model::t5::TextEncoder;
use patchwork_worker::model::vae::WanVae;
use patchwork_worker::model::PipelineDir;

#[test]
fn every_component_of_the_fixture_pipeline_loads() {
    let pipeline = PipelineDir::open(common::fixtures_dir().join("pipeline")).unwrap();
    assert_eq!(pipeline.class_name(), Some("WanPipeline"));
    let dev = Device::Cpu;
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let dit = WanTransformer::load(&pipeline.component("transformer").unwrap(), dtype, &dev).unwrap();
        assert_eq!(dit.config().num_attention_heads, 2);
        WanVae::load(&pipeline.component("vae").unwrap(), dtype, &dev).unwrap();
        let text = TextEncoder::load(&pipeline, dtype, &dev).unwrap();
        let embeds = text.encode_prompts(&["a red ball", "a blue square moving left"], 16).unwrap();
        assert_eq!(embeds.dims(), &[2, 16, 32]);
    }
    // Listed as `[null, null]` by diffusers: not part of this pipeline.
    let err = pipeline.component("transformer_2").unwrap_err().to_string();
    assert!(err.contains("transformer_2") && err.contains("model_index.json"), "{err}");
}

#[test]
fn broken_pipeline_folders_name_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let err = PipelineDir::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("model_index.json") && err.contains("missing"), "{err}");

    std::fs::copy(common::fixtures_dir().join("pipeline/model_index.json"), tmp.path().join("model_index.json"))
        .unwrap();
    let pipeline = PipelineDir::open(tmp.path()).unwrap();
    let err = pipeline.component("vae").unwrap_err().to_string();
    assert!(err.contains("vae") && err.contains("missing"), "{err}");
    let err = TextEncoder::load(&pipeline, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("tokenizer"), "{err}");
    let err = pipeline.component("unet").unwrap_err().to_string();
    assert!(err.contains("unet"), "{err}");
}
