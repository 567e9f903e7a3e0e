//! `cargo xtask deny`: `cargo deny check` for licenses, bans (duplicate crates, wildcards)
//! and sources, from `deny.toml`, installing cargo-deny first if it is missing.
//!
//! Advisories are not checked in CI: cargo-deny has no bundled advisory database, it clones
//! RustSec's from GitHub, and the CI machines cannot reach GitHub (SECURITY.md, "Supply
//! chain"). `--advisories` adds the check for machines that can.
//!
//! `--offline` only means "do not update the advisory database": cargo-deny still reads the
//! metadata of every package in Cargo.lock, for every platform, from the local cargo cache.
//! A build only downloads the crates of the platform it builds for, so a cold cache (a fresh
//! machine) lacks e.g. `windows-sys`, and the offline check failed with "failed to download
//! … --offline was specified". Nothing that runs offline may depend on what an earlier build
//! happened to download: [`fetch_all_platforms`] runs first, every time.

use anyhow::Result;

use crate::util::{cargo, exec, output};

/// `cargo fetch --locked` without `--target`: downloads the crates of every platform in
/// Cargo.lock (a no-op when they are all in the cache), exactly what an offline
/// `cargo metadata` (cargo-deny) needs.
pub fn fetch_all_platforms() -> Result<()> {
    exec(cargo().args(fetch_args()))
}

pub fn fetch_args() -> Vec<&'static str> {
    vec!["fetch", "--locked"]
}

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
        fetch_all_platforms()?;
        cmd.arg("--offline");
    }
    cmd.args(["check", "licenses", "bans", "sources"]);
    if opts.advisories {
        cmd.arg("advisories");
    }
    exec(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetch_covers_every_platform() {
        let args = fetch_args();
        assert_eq!(args[0], "fetch");
        assert!(args.contains(&"--locked"));
        assert!(
            !args.iter().any(|a| a.starts_with("--target")),
            "a --target fetch leaves other platforms' crates out of the cache"
        );
    }

    /// Every `--offline` in xtask comes after the fetch it needs: the only one is here.
    #[test]
    fn offline_is_used_only_after_the_fetch() {
        let dir = crate::util::workspace_root().join("xtask/src");
        for entry in std::fs::read_dir(&dir).expect("xtask/src") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("source");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let uses =
                code.matches("\"--offline\"").count() + code.matches("CARGO_NET_OFFLINE").count();
            if path.file_name().is_some_and(|n| n == "deny.rs") {
                assert_eq!(uses, 1, "{}", path.display());
                let offline = code.find("\"--offline\"").expect("--offline");
                let fetch = code.rfind("fetch_all_platforms()?").expect("fetch");
                assert!(
                    fetch < offline,
                    "the fetch must run before the offline check"
                );
            } else {
                assert_eq!(uses, 0, "{}: offline without a fetch", path.display());
            }
        }
    }
}
