//! `cargo xtask test`: the whole suite, as CI runs it (root: real eBPF, real cgroups).

use anyhow::{Result, bail};

use crate::util::{self, cargo, exec};
use crate::{build_ebpf, deny, setup, vm};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Skip the VM tests (qemu boots of other kernels).
    #[arg(long)]
    pub no_vm: bool,
    /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    if !util::is_root() {
        bail!("the tests load eBPF programs and create cgroups: run them as root");
    }
    setup::run()?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    // Lints are part of the suite: a warning fails CI.
    exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
    exec(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Supply chain: licenses, duplicate crates, sources (offline; see xtask/src/deny.rs).
    deny::run(&deny::Options::default())?;
    // Includes tests/tests/fuzz_corpus.rs, the corpus replay (`cargo xtask fuzz-replay`).
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--"]).args(&opts.args);
    exec(&mut cmd)?;
    if opts.no_vm {
        eprintln!("xtask: VM tests skipped (--no-vm)");
        return Ok(());
    }
    vm::run(&vm::Options {
        kernels: Vec::new(),
        timeout: 600,
    })
}
