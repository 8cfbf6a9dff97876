//! Every component case of the reference fixtures, run through the same entry point as
//! `patchwork model forward`, must match the reference to a relative error of 1e-4 in f32.

mod common;

use candle_core::{DType, Device};
use patchwork_worker::model::forward::{run_component, Component};

fn check(component: Component) {
    let manifest = common::manifest();
    let cases: Vec<_> = manifest.cases.iter().filter(|c| c.component == component.name()).collect();
    assert!(!cases.is_empty(), "no {} cases in the manifest", component.name());
    for case in cases {
        let inputs = common::load(&case.inputs);
        let expected = common::load(&case.expected);
        let model_dir = common::fixtures_dir().join(&case.model_dir);
        let outputs = run_component(component, &model_dir, &inputs, DType::F32, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for (name, want) in &expected {
            let got = outputs.get(name).unwrap_or_else(|| panic!("{}: no output `{name}`", case.name));
            let err = common::rel_err(got, want);
            println!("{}: {name} relative error {err:.3e}", case.name);
            assert!(err <= 1e-4, "{}: {name} relative error {err:.3e} > 1e-4", case.name);
        }
    }
}

#[test]
fn transformer_matches_reference() {
    check(Component::Transformer);
}

#[test]
fn vae_decode_matches_reference() {
    check(Component::VaeDecode);
}

#[test]
fn vae_encode_matches_reference() {
    check(Component::VaeEncode);
}

#[test]
fn text_encoder_matches_reference() {
    check(Component::TextEncoder);
}
