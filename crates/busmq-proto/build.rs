//! Generates Rust for every .proto under the workspace's `proto/` directory.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh machine has no protoc: use the vendored one unless told otherwise.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("PROTOC", protoc)
        };
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        root.join("busmq/v1/errors.proto"),
        root.join("busmq/v1/queues.proto"),
        root.join("busmq/v1/pubsub.proto"),
        root.join("busmq/v1/objects.proto"),
        root.join("busmq/v1/channels.proto"),
        root.join("busmq/storage/v1/storage.proto"),
    ];
    tonic_prost_build::configure()
        .bytes(".")
        .file_descriptor_set_path(out.join("busmq_descriptor.bin"))
        .compile_protos(&protos, std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
