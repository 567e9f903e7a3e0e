//! Project tasks: `cargo xtask <command>`. One file per command.
//!
//! xtask never depends on the `attestor` crate: it must build (and build the eBPF object)
//! on a machine where `attestor` cannot compile yet.

mod bench;
mod build_ebpf;
mod cross;
mod demo;
mod deny;
mod dist;
mod fuzz;
mod pid_reuse;
mod setup;
mod soak;
mod test;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "attestor build, test, demo and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and tests need (apt packages, rust-src, bpf-linker), idempotently.
    Setup,
    /// Build the kernel programs (attestor-ebpf) for bpfel-unknown-none into target/ebpf.
    BuildEbpf(build_ebpf::Options),
    /// Run the whole test suite (needs root: real eBPF, real cgroups).
    Test(test::Options),
    /// Demo without a cluster: start the tracker, spawn workloads in kubelet-style cgroups,
    /// resolve them.
    Demo,
    /// Run the benchmarks and print the figures recorded in BENCHMARKS.md.
    Bench(bench::Options),
    /// Replay the committed fuzz corpus (stable test; --libfuzzer for the real fuzz binaries).
    FuzzReplay(fuzz::Options),
    /// The long PID-reuse stress run (100,000 attestations by default).
    PidReuse(pid_reuse::Options),
    /// cargo deny: licenses, duplicate crates, sources (deny.toml); installs cargo-deny.
    Deny(deny::Options),
    /// 1,000 concurrent attestations through the plugin for 10 minutes (CI runs 30 s).
    Soak(soak::Options),
    /// Kernel-facing tests in qemu (TCG) on Debian's kernels: amd64 5.10, 6.1 (+ BPF LSM off),
    /// 6.12; arm64 5.10, 6.1, 6.12 (--arch, --kernels, --ci).
    VmTest(vm::Options),
    /// Release artifacts in target/dist: static musl binaries (amd64, arm64), SHA256SUMS, a
    /// multi-arch OCI image (layout tar) and deploy/ rendered with its digest, reproducibly.
    Dist(dist::Options),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf(opts) => build_ebpf::run(&opts),
        Command::Test(opts) => test::run(&opts),
        Command::Demo => demo::run(),
        Command::Bench(opts) => bench::run(&opts),
        Command::VmTest(opts) => vm::run(&opts),
        Command::Soak(opts) => soak::run(&opts),
        Command::FuzzReplay(opts) => fuzz::run(&opts),
        Command::Deny(opts) => deny::run(&opts),
        Command::PidReuse(opts) => pid_reuse::run(&opts),
        Command::Dist(opts) => dist::run(&opts),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
