//! The generated protobuf and gRPC code of package `patchwork.v1`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("patchwork.v1");

/// The encoded descriptor set of every patchwork proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("patchwork_descriptor");
