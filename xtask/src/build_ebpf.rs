//! `cargo xtask build-ebpf`: build `attestor-ebpf` for `bpfel-unknown-none`.
//!
//! Uses the same flags as aya-build 0.2.0, in a separate target dir (`target/ebpf`) so the
//! nightly and stable builds never invalidate each other's fingerprints.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::setup;
use crate::util::{exec, workspace_root};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Nightly toolchain to use (its LLVM must match bpf-linker's; default: `nightly` or
    /// $ATTESTOR_EBPF_TOOLCHAIN).
    #[arg(long)]
    pub toolchain: Option<String>,
}

/// Where the object ends up; `attestor/build.rs` embeds it from here.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/ebpf/bpfel-unknown-none/release/attestor-ebpf")
}

pub fn run(opts: &Options) -> Result<()> {
    let toolchain = opts
        .toolchain
        .clone()
        .unwrap_or_else(setup::nightly_toolchain);
    setup::ensure_nightly(&toolchain)?;
    let linker = setup::ensure_bpf_linker()?;
    let root = workspace_root();
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args([
            "run",
            &toolchain,
            "cargo",
            "build",
            "--package",
            "attestor-ebpf",
            "--bins",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root.join("target/ebpf"))
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        );
    // The linker must be found even when ~/.cargo/bin is not on PATH (fresh root shells).
    if let Some(dir) = linker.parent() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
        paths.insert(0, dir.to_path_buf());
        cmd.env("PATH", std::env::join_paths(paths)?);
    }
    for var in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    exec(&mut cmd)?;
    eprintln!("xtask: eBPF object: {}", object_path().display());
    Ok(())
}
