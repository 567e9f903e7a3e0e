//! `cargo xtask bench`: builds the eBPF object and runs the benchmark binaries.

use anyhow::{Result, bail};

use crate::util::{self, cargo, exec};
use crate::{build_ebpf, setup};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Which benchmark: `tracker` (resolve, spawn overhead, map memory), `lookup` (1/8/64
    /// concurrent lookups, lock-free vs one Mutex; eBPF start-up), `attest` (warm, cold, burst
    /// live attestation), `plugin` (Attest round trip through go-plugin, start → handshake),
    /// `cri` (container start → first attestation with and without the CRI fast path, on a
    /// private containerd; `RuntimeClient::snapshot` latency), `podlist` (the pod-list index
    /// against a SPIRE-style Go baseline: first attestation on a new list, further ones on a
    /// cached list, a 250-container burst, index memory; needs no root itself) or `all`.
    #[arg(default_value = "all")]
    pub which: String,
}

pub fn run(opts: &Options) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmarks load eBPF programs: run them as root");
    }
    setup::run()?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    let which = opts.which.as_str();
    let bins: &[&str] = match which {
        "tracker" => &["tracker-bench"],
        "lookup" => &["lookup-bench"],
        "attest" => &["attest-bench"],
        "plugin" => &[],
        "cri" => &["cri-bench"],
        "podlist" => &["podlist-bench"],
        "all" => &[
            "tracker-bench",
            "lookup-bench",
            "attest-bench",
            "cri-bench",
            "podlist-bench",
        ],
        other => {
            bail!(
                "unknown benchmark `{other}` (expected: tracker, lookup, attest, plugin, cri, podlist, all)"
            )
        }
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
    if matches!(which, "plugin" | "all") {
        // BENCHMARKS.md (plugin): the start → handshake figure of the bare binary needs it built.
        exec(cargo().args(["build", "--quiet", "--release", "--package", "attestor"]))?;
        exec(cargo().args([
            "test",
            "--quiet",
            "--release",
            "--package",
            "attestor-tests",
            "--test",
            "plugin",
            "--",
            "--ignored",
            "--nocapture",
            "bench",
        ]))?;
    }
    Ok(())
}
