//! Generates a CRI (`runtime.v1`) *server* from the product's vendored `api.proto`, for the
//! fake runtimes of the fast-path tests (`src/cri/fake.rs`); the client the tests drive
//! containerd with is the product's own (`attestor::runtime::api`). Needs `protoc`
//! (Debian `protobuf-compiler`, installed by `cargo xtask setup`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../attestor/proto/cri-api";
    let file = "../attestor/proto/cri-api/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={file}");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let have_protoc = std::env::var_os("PROTOC").is_some()
        || std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("protoc").is_file()));
    if !have_protoc {
        return Err(
            "protoc not found: the fake CRI server in tests/ is generated from \
             attestor/proto/cri-api. Install Debian's protobuf-compiler (`cargo xtask setup` \
             does) or set PROTOC"
                .into(),
        );
    }
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Every RPC the fake does not answer is `Unimplemented`.
        .generate_default_stubs(true)
        .compile_protos(&[file], &[dir])?;
    Ok(())
}
