//! Generates the gRPC code of `proto/patchwork/v1/*.proto`, and the descriptor set that server reflection
//! serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = ["patchwork/v1/render.proto", "patchwork/v1/worker.proto", "patchwork/v1/store.proto"]
        .map(|f| proto_root.join(f));
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("patchwork_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_protos(&files, std::slice::from_ref(&proto_root))?;
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    Ok(())
}
