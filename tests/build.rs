//! Generates the CRI client (`runtime.v1`) from `proto/cri.proto`. Needs `protoc`
//! (Debian `protobuf-compiler`, installed by `cargo xtask setup`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let have_protoc = std::env::var_os("PROTOC").is_some()
        || std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("protoc").is_file()));
    if !have_protoc {
        return Err(
            "protoc not found: the CRI client in tests/ is generated from \
                    proto/cri.proto. Install Debian's protobuf-compiler (`cargo xtask setup` \
                    does) or set PROTOC"
                .into(),
        );
    }
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/cri.proto"], &["proto"])?;
    Ok(())
}
