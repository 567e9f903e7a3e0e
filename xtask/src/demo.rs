//! `cargo xtask demo`: builds everything and runs the demo binary (`tests/src/bin/demo.rs`,
//! needs root): tracker + kubelet simulator + workloads in kubelet-style cgroups, attested live.
//!
//! The demo is part of the suite: `tests/tests/demo.rs` runs the same binary
//! (`CARGO_BIN_EXE_demo`, the dev-profile build `cargo test` makes) with the same arguments
//! ([`ARGS`]: none) and checks what it prints. This command runs exactly that entry point,
//! `cargo run -p attestor-tests --bin demo --`, in the same profile, so there is one demo
//! and the one CI checks is the one a human sees. The unit tests below keep the names in
//! step with the test and the binary.

use anyhow::{Result, bail};

use crate::util::{self, cargo, exec};
use crate::{build_ebpf, setup};

/// The package and binary `cargo xtask demo` runs, and the arguments it passes.
pub const PACKAGE: &str = "attestor-tests";
pub const BIN: &str = "demo";
pub const ARGS: &[&str] = &[];

/// `cargo run` for the demo entry point.
pub fn cargo_args() -> Vec<&'static str> {
    let mut args = vec!["run", "--quiet", "--package", PACKAGE, "--bin", BIN, "--"];
    args.extend_from_slice(ARGS);
    args
}

pub fn run() -> Result<()> {
    if !util::is_root() {
        bail!("the demo loads eBPF programs and creates cgroups: run it as root");
    }
    setup::run()?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    exec(cargo().args(cargo_args()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::workspace_root;

    #[test]
    fn the_demo_test_runs_the_binary_xtask_runs() {
        let root = workspace_root();
        let manifest = std::fs::read_to_string(root.join("tests/Cargo.toml")).expect("manifest");
        assert!(
            manifest.contains(&format!("name = \"{PACKAGE}\"")),
            "tests/Cargo.toml is not package {PACKAGE}"
        );
        assert!(
            root.join(format!("tests/src/bin/{BIN}.rs")).is_file(),
            "no binary {BIN} in {PACKAGE}"
        );
        let test = std::fs::read_to_string(root.join("tests/tests/demo.rs")).expect("demo test");
        assert!(
            test.contains(&format!("env!(\"CARGO_BIN_EXE_{BIN}\")")),
            "tests/tests/demo.rs must run the binary xtask runs ({BIN})"
        );
        // The test passes no arguments (`Command::new(..).output()`); neither does xtask.
        assert!(ARGS.is_empty() && !test.contains(".arg("));
        assert_eq!(cargo_args().last(), Some(&"--"));
        // Same profile as `cargo test` (the test's binary): no --release.
        assert!(!cargo_args().contains(&"--release"));
    }
}
