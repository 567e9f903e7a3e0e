//! `cargo xtask demo`: builds everything and runs the demo binary (`tests/src/bin/demo.rs`,
//! needs root): tracker + kubelet simulator + workloads in kubelet-style cgroups, attested live.

use anyhow::{Result, bail};

use crate::util::{self, cargo, exec};
use crate::{build_ebpf, setup};

pub fn run() -> Result<()> {
    if !util::is_root() {
        bail!("the demo loads eBPF programs and creates cgroups: run it as root");
    }
    setup::run()?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    exec(cargo().args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "attestor",
        "--",
        "demo",
    ]))
}
