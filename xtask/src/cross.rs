//! Static musl builds for each node architecture we ship and test: the VM guests
//! (`vm-test`) and the release artifacts (`dist`) build through [`cargo`], so both share one
//! set of artifacts per target in `target/<triple>/release`.
//!
//! The C compiler is the one part that differs: ring (rustls) compiles C and assembly. For
//! amd64, Debian's `musl-tools` (`musl-gcc`, found by the `cc` crate on its own); for arm64,
//! Debian's `gcc-aarch64-linux-gnu` as compiler and linker. ring's C needs no libc headers
//! beyond the freestanding ones, and the Rust musl target links its own self-contained musl
//! CRT objects and libc, so the glibc cross toolchain produces a fully static musl binary
//! (checked with `file`: "statically linked").
//!
//! Reproducibility: the paths of the workspace and of `CARGO_HOME` end up in the binary
//! (panic locations of dependencies, debug info of std-less code); they are remapped to
//! `/attestor` and `/cargo`, so a clone elsewhere with another `CARGO_HOME` builds the same
//! bytes (`cargo xtask dist --check-reproducible` rebuilds from scratch and compares).

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::setup;
use crate::util::{cargo as host_cargo, exec, workspace_root};

/// One architecture: its Rust target and what Debian and OCI call it.
pub struct Target {
    /// Rust target triple.
    pub triple: &'static str,
    /// OCI `architecture` (also Kubernetes' `kubernetes.io/arch` label value).
    pub oci_arch: &'static str,
    /// Debian's architecture name (apt `-oAPT::Architecture=`).
    pub debian_arch: &'static str,
    /// Debian packages that provide the C compiler for ring.
    apt_packages: &'static [&'static str],
    /// `CC_<triple>` and `CARGO_TARGET_<TRIPLE>_LINKER`, when the default is not right.
    cc: Option<&'static str>,
}

pub const AMD64: Target = Target {
    triple: "x86_64-unknown-linux-musl",
    oci_arch: "amd64",
    debian_arch: "amd64",
    apt_packages: &["musl-tools"],
    cc: None,
};

pub const ARM64: Target = Target {
    triple: "aarch64-unknown-linux-musl",
    oci_arch: "arm64",
    debian_arch: "arm64",
    apt_packages: &["gcc-aarch64-linux-gnu"],
    cc: Some("aarch64-linux-gnu-gcc"),
};

/// Every architecture we ship, in the order artifacts list them.
pub const ALL: &[&Target] = &[&AMD64, &ARM64];

/// The target named `name` (`amd64`/`x86_64` or `arm64`/`aarch64`).
pub fn by_name(name: &str) -> Option<&'static Target> {
    match name {
        "amd64" | "x86_64" => Some(&AMD64),
        "arm64" | "aarch64" => Some(&ARM64),
        _ => None,
    }
}

/// Installs the Rust target and the C cross compiler (idempotent, says what it installs).
pub fn ensure(t: &Target) -> Result<()> {
    setup::ensure_apt_packages(t.apt_packages)?;
    exec(Command::new("rustup").args(["target", "add", t.triple]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// The rustc flags every cross build gets (see the module comment).
fn rustflags() -> String {
    [
        format!(
            "--remap-path-prefix={}=/attestor",
            workspace_root().display()
        ),
        format!("--remap-path-prefix={}=/cargo", cargo_home().display()),
    ]
    .join("\x1f")
}

/// `cargo` set up to build for `t` (pass `--target t.triple` yourself).
pub fn cargo(t: &Target) -> Command {
    let mut cmd = host_cargo();
    let upper = t.triple.to_uppercase().replace('-', "_");
    if let Some(cc) = t.cc {
        cmd.env(format!("CC_{}", t.triple.replace('-', "_")), cc);
        cmd.env(format!("CARGO_TARGET_{upper}_LINKER"), cc);
    }
    // With --target, cargo gives these to target artifacts only, not to build scripts and
    // proc macros, so host builds keep their own cache.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags());
    cmd.env_remove("RUSTFLAGS");
    cmd
}

/// Where `cargo build --release --target t.triple` puts binaries.
pub fn release_dir(t: &Target) -> PathBuf {
    workspace_root()
        .join("target")
        .join(t.triple)
        .join("release")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_their_targets() {
        assert_eq!(by_name("arm64").map(|t| t.triple), Some(ARM64.triple));
        assert_eq!(by_name("aarch64").map(|t| t.oci_arch), Some("arm64"));
        assert_eq!(by_name("x86_64").map(|t| t.oci_arch), Some("amd64"));
        assert!(by_name("riscv64").is_none());
    }

    #[test]
    fn remapped_paths_are_the_workspace_and_cargo_home() {
        let flags = rustflags();
        let parts: Vec<&str> = flags.split('\x1f').collect();
        assert_eq!(parts.len(), 2, "{flags:?}");
        assert!(parts[0].ends_with("=/attestor"), "{flags:?}");
        assert!(parts[1].ends_with("=/cargo"), "{flags:?}");
    }
}
