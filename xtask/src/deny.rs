//! `cargo xtask deny`: `cargo deny check` for licenses, bans (duplicate crates, wildcards)
//! and sources, from `deny.toml`, installing cargo-deny first if it is missing.
//!
//! Advisories are not checked in CI: cargo-deny has no bundled advisory database, it clones
//! RustSec's from GitHub, and the CI machines cannot reach GitHub (SECURITY.md, "Supply
//! chain"). `--advisories` adds the check for machines that can.

use anyhow::Result;

use crate::util::{cargo, exec, output};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Also check RustSec advisories (fetches the advisory database from GitHub).
    #[arg(long)]
    pub advisories: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if output(cargo().args(["deny", "--version"])).is_none() {
        eprintln!(
            "xtask: cargo-deny is missing; installing it (cargo install cargo-deny --locked)"
        );
        exec(cargo().args(["install", "cargo-deny", "--locked"]))?;
    }
    let mut cmd = cargo();
    cmd.args(["deny", "--all-features", "--locked"]);
    if !opts.advisories {
        cmd.arg("--offline");
    }
    cmd.args(["check", "licenses", "bans", "sources"]);
    if opts.advisories {
        cmd.arg("advisories");
    }
    exec(&mut cmd)
}
