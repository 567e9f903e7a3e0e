//! `cargo xtask bench`: builds the eBPF object and runs the benchmark binaries.

use anyhow::{Result, bail};

use crate::util::{self, cargo, exec};
use crate::{build_ebpf, setup};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Which benchmark: `tracker` (resolve, spawn overhead, map memory), `attest` (warm,
    /// cold, burst live attestation) or `all`.
    #[arg(default_value = "all")]
    pub which: String,
}

pub fn run(opts: &Options) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmarks load eBPF programs: run them as root");
    }
    setup::run()?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    let bins: &[&str] = match opts.which.as_str() {
        "tracker" => &["tracker-bench"],
        "attest" => &["attest-bench"],
        "all" => &["tracker-bench", "attest-bench"],
        other => bail!("unknown benchmark `{other}` (expected: tracker, attest, all)"),
    };
    for bin in bins {
        exec(cargo().args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "attestor-tests",
            "--bin",
            bin,
        ]))?;
    }
    Ok(())
}
