//! `cargo xtask pid-reuse`: the long PID-reuse stress run (SECURITY.md §3). CI runs the same
//! test with 2,000 attestations as part of `cargo test --workspace`.

use anyhow::Result;

use crate::util::{cargo, exec};

#[derive(clap::Args)]
pub struct Options {
    /// Attestations to run.
    #[arg(long, default_value_t = 100_000)]
    pub attestations: u64,
}

pub fn run(opts: &Options) -> Result<()> {
    let mut cmd = cargo();
    cmd.env(
        "ATTESTOR_PID_REUSE_ATTESTATIONS",
        opts.attestations.to_string(),
    )
    .args([
        "test",
        "-p",
        "attestor-tests",
        "--test",
        "pid_reuse",
        "--",
        "--nocapture",
    ]);
    exec(&mut cmd)
}
