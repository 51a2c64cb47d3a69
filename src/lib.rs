//! The `farm.v1` gRPC API: message types, clients and servers generated from
//! `proto/farm/v1/*.proto`, and the encoded file descriptor set that server
//! reflection serves. This crate holds no logic.

/// Generated `farm.v1` types, clients (`*_client`) and servers (`*_server`).
pub mod v1 {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    tonic::include_proto!("farm.v1");
}

/// The encoded `FileDescriptorSet` of `farm.v1` and its imports, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("farm_descriptor");
