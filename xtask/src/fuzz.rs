//! `cargo xtask fuzz-replay`: replay the committed fuzz corpus.
//!
//! Default (what CI runs, also as part of `cargo test --workspace`): the stable test
//! `tests/tests/fuzz_corpus.rs`, which feeds every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` to the very checks the fuzz targets run. No nightly, no
//! cargo-fuzz, no sanitizers: seconds.
//!
//! `--libfuzzer`: replay through the real libFuzzer binaries (`cargo +nightly fuzz run
//! <target> <corpus> -- -runs=0`), installing cargo-fuzz first if it is missing. Slower (an
//! ASan build of the attestor crate), for fuzzing work rather than CI.

use std::process::Command;

use anyhow::Result;

use crate::setup::nightly_toolchain;
use crate::util::{cargo, exec, output, workspace_root};

pub const TARGETS: &[&str] = &["config", "locator", "pods", "plugin"];

#[derive(clap::Args, Default)]
pub struct Options {
    /// Replay through the libFuzzer binaries (nightly + cargo-fuzz) instead of the stable test.
    #[arg(long)]
    pub libfuzzer: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if !opts.libfuzzer {
        return exec(cargo().args(["test", "-p", "attestor-tests", "--test", "fuzz_corpus"]));
    }
    // `cargo +toolchain` needs rustup's cargo proxy, not the cargo running xtask.
    let toolchain = format!("+{}", nightly_toolchain());
    if output(Command::new("cargo").args([toolchain.as_str(), "fuzz", "--version"])).is_none() {
        eprintln!("xtask: cargo-fuzz is missing; installing it");
        exec(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz_dir = workspace_root().join("fuzz");
    for target in TARGETS {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            .args([toolchain.as_str(), "fuzz", "run", "-O", target])
            .arg(format!("corpus/{target}"));
        if fuzz_dir.join("regressions").join(target).is_dir() {
            cmd.arg(format!("regressions/{target}"));
        }
        cmd.args(["--", "-runs=0"]);
        exec(&mut cmd)?;
    }
    Ok(())
}
