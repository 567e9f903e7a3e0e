//! `cargo xtask build-ebpf`: build `attestor-ebpf` for `bpfel-unknown-none`.
//!
//! Uses the same flags as aya-build 0.2.0, in a separate target dir (`target/ebpf`) so the
//! nightly and stable builds never invalidate each other's fingerprints.
//!
//! Reproducibility: the object's debug info (BTF line info, DWARF) names source files. The
//! workspace, `CARGO_HOME` and the nightly toolchain's rust-src (core is built from it with
//! `-Z build-std`) are remapped to `/attestor`, `/cargo` and `/rust-src`, so a clone in
//! another directory, with another `CARGO_HOME` or `RUSTUP_HOME`, builds the same bytes (the
//! release binaries embed this object: `cargo xtask dist`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::setup;
use crate::util::{exec, output, workspace_root};

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
    build(opts, &workspace_root().join("target/ebpf"))?;
    eprintln!("xtask: eBPF object: {}", object_path().display());
    Ok(())
}

/// `CARGO_HOME` as cargo resolves it (the same rule as `cross`).
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// The rustc flags of the eBPF build: aya-build's, then the path remapping (module comment).
/// `rust_src` is the toolchain's `lib/rustlib/src/rust`, when known.
fn rustflags(root: &Path, cargo_home: &Path, rust_src: Option<&Path>) -> String {
    let mut flags: Vec<String> = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .map(String::from)
    .to_vec();
    flags.push(format!("--remap-path-prefix={}=/attestor", root.display()));
    flags.push(format!(
        "--remap-path-prefix={}=/cargo",
        cargo_home.display()
    ));
    if let Some(src) = rust_src {
        flags.push(format!("--remap-path-prefix={}=/rust-src", src.display()));
    }
    flags.join("\x1f")
}

/// Builds the object into `target_dir` (`<target_dir>/bpfel-unknown-none/release/attestor-ebpf`);
/// `dist --check-reproducible` builds a second one from scratch elsewhere.
pub fn build(opts: &Options, target_dir: &Path) -> Result<PathBuf> {
    let toolchain = opts
        .toolchain
        .clone()
        .unwrap_or_else(setup::nightly_toolchain);
    setup::ensure_nightly(&toolchain)?;
    let linker = setup::ensure_bpf_linker()?;
    let root = workspace_root();
    let rust_src =
        output(Command::new("rustup").args(["run", &toolchain, "rustc", "--print", "sysroot"]))
            .map(|s| PathBuf::from(s.trim()).join("lib/rustlib/src/rust"));
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
        .arg(target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            rustflags(&root, &cargo_home(), rust_src.as_deref()),
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
    Ok(target_dir.join("bpfel-unknown-none/release/attestor-ebpf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_remapped_after_aya_builds_flags() {
        let flags = rustflags(
            Path::new("/src/attestor"),
            Path::new("/home/u/.cargo"),
            Some(Path::new(
                "/home/u/.rustup/toolchains/nightly/lib/rustlib/src/rust",
            )),
        );
        let parts: Vec<&str> = flags.split('\x1f').collect();
        assert_eq!(
            parts[..3],
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf"
            ]
        );
        assert_eq!(parts[3], "--remap-path-prefix=/src/attestor=/attestor");
        assert_eq!(parts[4], "--remap-path-prefix=/home/u/.cargo=/cargo");
        assert_eq!(
            parts[5],
            "--remap-path-prefix=/home/u/.rustup/toolchains/nightly/lib/rustlib/src/rust=/rust-src"
        );
    }
}
