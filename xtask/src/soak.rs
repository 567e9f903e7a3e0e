//! `cargo xtask soak`: the load test of `tests/tests/soak.rs` for 10 minutes (release build).
//! CI runs the same test for 30 s as part of `cargo test`.

use anyhow::{Result, bail};

use crate::util::{self, cargo, exec};
use crate::{build_ebpf, setup};

#[derive(clap::Args, Default)]
pub struct Options {
    /// How long to keep 1,000 attestations in flight.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
}

pub fn run(opts: &Options) -> Result<()> {
    if !util::is_root() {
        bail!("the soak test loads eBPF programs and creates cgroups: run it as root");
    }
    setup::run()?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    exec(cargo().args(["build", "--release", "--package", "attestor"]))?;
    exec(
        cargo()
            .args([
                "test",
                "--release",
                "--package",
                "attestor-tests",
                "--test",
                "soak",
                "--",
                "--nocapture",
            ])
            .env("ATTESTOR_SOAK_SECS", opts.seconds.to_string()),
    )
}
