//! Compiles `proto/farm/v1/*.proto` with protox (no system `protoc`) into
//! tonic clients and servers, and writes the encoded file descriptor set that
//! server reflection serves.
//!
//! Two passes, because tonic-prost-build gives clients and servers one
//! codec: the first writes the messages and the clients, which use
//! tonic-prost's own codec (a response that does not decode is the server's
//! fault: INTERNAL); the second writes only the servers, under `server/`,
//! with `farm_api::codec::ServerCodec` (a request that does not decode is
//! the caller's fault: INVALID_ARGUMENT) and the messages of the first pass.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = fs::read_dir(proto_dir.join("farm/v1"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile(&files, [&proto_dir])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("farm_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors.clone())?;

    let server_dir = out_dir.join("server");
    fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path("crate::codec::ServerCodec")
        .extern_path(".farm.v1", "crate::v1")
        .out_dir(&server_dir)
        .compile_fds(descriptors)?;
    Ok(())
}
