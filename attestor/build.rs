//! Embeds the kernel object built by `cargo xtask build-ebpf`, and generates the gRPC code of
//! the SPIRE plugin surface from `proto/*.proto` (needs `protoc`: `cargo xtask setup`
//! installs Debian's protobuf-compiler).
//!
//! The eBPF crate needs nightly + rust-src + bpf-linker, so it is built by xtask in its own
//! target dir (`target/ebpf`) and never by this host build. This script only copies the
//! finished object into OUT_DIR and tells the user what to do when it is missing or stale.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        };
        newest = newest.max(t);
    }
    newest
}

/// The plugin's gRPC services and messages (see `src/plugin/proto.rs`).
fn compile_protos(manifest: &Path) {
    let dir = manifest.join("proto");
    let files = [
        "plugin.proto",
        "init.proto",
        "config.proto",
        "workloadattestor.proto",
        "metrics.proto",
        "broker.proto",
    ]
    .map(|f| dir.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    if let Err(e) = tonic_prost_build::configure()
        .build_server(true)
        // Clients: the metrics host service, and the unit tests of the services.
        .build_client(true)
        .compile_protos(&files, &[dir])
    {
        panic!(
            "\n\ncannot generate the gRPC code from attestor/proto: {e}\n\
             protoc (Debian: protobuf-compiler) is needed: run `cargo xtask setup`, or set PROTOC.\n"
        );
    }
}

/// The container runtime's CRI (`runtime.v1`, Kubernetes' own `api.proto`, vendored in
/// `proto/cri-api/`): a client only (see `src/runtime/client.rs`).
fn compile_cri(manifest: &Path) {
    let dir = manifest.join("proto/cri-api");
    let file = dir.join("runtime/v1/api.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    if let Err(e) = tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(&[file], &[dir])
    {
        panic!(
            "\n\ncannot generate the CRI client from attestor/proto/cri-api: {e}\n\
             protoc (Debian: protobuf-compiler) is needed: run `cargo xtask setup`, or set PROTOC.\n"
        );
    }
}

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    compile_protos(&manifest);
    compile_cri(&manifest);
    let workspace = manifest
        .parent()
        .expect("attestor/ lives inside the workspace")
        .to_path_buf();
    let out =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("attestor-ebpf.o");

    println!("cargo:rerun-if-env-changed=ATTESTOR_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=ATTESTOR_SKIP_EBPF");
    let object = env::var_os("ATTESTOR_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/ebpf/bpfel-unknown-none/release/attestor-ebpf"));
    println!("cargo:rerun-if-changed={}", object.display());
    for src in ["attestor-ebpf/src", "attestor-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(src).display());
    }

    if object.is_file() {
        let built = fs::metadata(&object).and_then(|m| m.modified()).ok();
        let sources = ["attestor-ebpf/src", "attestor-common/src"]
            .iter()
            .filter_map(|d| newest_mtime(&workspace.join(d)))
            .max();
        if let (Some(built), Some(sources)) = (built, sources)
            && sources > built
        {
            println!(
                "cargo:warning=the eBPF object {} is older than attestor-ebpf/ or attestor-common/ sources: run `cargo xtask build-ebpf`",
                object.display()
            );
        }
        fs::copy(&object, &out).expect("copy the eBPF object into OUT_DIR");
        println!("cargo:rustc-env=ATTESTOR_EBPF_EMBEDDED=1");
    } else if env::var_os("ATTESTOR_SKIP_EBPF").is_some() {
        // For clippy/docs on machines without the eBPF toolchain. The tracker then reports
        // "built without the eBPF object" and falls back (or fails if eBPF is required).
        println!(
            "cargo:warning=ATTESTOR_SKIP_EBPF is set: building without the eBPF object; the tracker will use its /proc fallback"
        );
        fs::write(&out, b"").expect("write an empty placeholder object");
        println!("cargo:rustc-env=ATTESTOR_EBPF_EMBEDDED=0");
    } else {
        panic!(
            "\n\nthe eBPF object {} is missing.\n\
             Build it first with:\n\n    cargo xtask build-ebpf\n\n\
             (it installs rust-src, LLVM 22 and bpf-linker if they are missing), or set\n\
             ATTESTOR_SKIP_EBPF=1 to build a binary that always uses the /proc fallback.\n",
            object.display()
        );
    }
    println!("cargo:rustc-check-cfg=cfg(attestor_ebpf)");
}
