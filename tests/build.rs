//! Generates the CRI client (`runtime.v1`) from `proto/cri.proto`. Needs `protoc`
//! (Debian `protobuf-compiler`, installed by `cargo xtask setup`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/cri.proto"], &["proto"])?;
    Ok(())
}
