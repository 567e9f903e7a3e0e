//! `cargo xtask test`: the whole suite, as CI runs it (root: real eBPF, real cgroups).

use anyhow::{Result, bail};

use crate::util::{self, cargo, exec};
use crate::{build_ebpf, deny, dist, setup, vm};

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
    // Wall time per phase, printed at the end (also when a phase fails): what the cold-machine
    // check (.ci/cold-check) reports.
    let mut phases = Phases::default();
    let result = run_phases(opts, &mut phases);
    phases.print();
    result
}

fn run_phases(opts: &Options, phases: &mut Phases) -> Result<()> {
    phases.time("install", setup::run)?;
    phases.time("build-ebpf", || {
        build_ebpf::run(&build_ebpf::Options::default())
    })?;
    phases.time("lint", || {
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
        deny::run(&deny::Options::default())
    })?;
    phases.time("build", || {
        exec(cargo().args(["test", "--workspace", "--no-run"]))
    })?;
    phases.time("dist", || {
        // The release artifacts: tests/tests/deploy_image.rs runs the image's init container
        // through CRI and loads what it installs. Shares the musl builds with the VM phase.
        dist::run(&dist::Options {
            out: None,
            image_repo: "attestor".into(),
            tag: None,
            check_reproducible: false,
        })
    })?;
    phases.time("host tests", || {
        // Includes tests/tests/fuzz_corpus.rs, the corpus replay (`cargo xtask fuzz-replay`).
        let mut cmd = cargo();
        cmd.args(["test", "--workspace", "--"]).args(&opts.args);
        exec(&mut cmd)
    })?;
    if opts.no_vm {
        eprintln!("xtask: VM tests skipped (--no-vm)");
        return Ok(());
    }
    phases.time("VM tests", || {
        vm::run(&vm::Options {
            kernels: Vec::new(),
            timeout: 600,
            // Every amd64 kernel and the arm64 ones of vm::CI_ARM64_KERNELS (time budget).
            ci: true,
            ..Default::default()
        })
    })
}

/// Named phases and how long each took.
#[derive(Default)]
struct Phases(Vec<(&'static str, std::time::Duration, bool)>);

impl Phases {
    fn time(&mut self, name: &'static str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let start = std::time::Instant::now();
        let r = f();
        self.0.push((name, start.elapsed(), r.is_ok()));
        r
    }

    fn print(&self) {
        for (name, took, ok) in &self.0 {
            let s = took.as_secs();
            let status = if *ok { "ok" } else { "FAILED" };
            eprintln!(
                "xtask: phase {name:<11} {:>3}m{:02}s {status}",
                s / 60,
                s % 60
            );
        }
    }
}
