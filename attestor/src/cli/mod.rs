//! Command-line surface. `main` maps every outcome to an exit code here, in one place:
//! 0 success, 1 the operation failed (the error says why), 2 usage error.
//!
//! Each subcommand lives in its own file; this file only parses and dispatches.

mod demo;
mod logger;
mod resolve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "attestor",
    version,
    about = "eBPF-assisted Kubernetes workload attestor (a SPIRE k8s WorkloadAttestor plugin)",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve a PID to its cgroup and show which source answered.
    Resolve(resolve::ResolveArgs),
    /// Demo without a cluster (needs root): tracker + workloads in kubelet-style cgroups.
    Demo,
}

/// Output format shared by the subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Parses the command line, runs the subcommand and returns the process exit code.
pub fn main() -> i32 {
    logger::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match cli.command {
        Some(Command::Resolve(args)) => resolve::run(&args),
        Some(Command::Demo) => demo::run(),
        None => {
            print_plugin_help();
            0
        }
    }
}

fn print_plugin_help() {
    println!(
        "attestor is a SPIRE agent WorkloadAttestor plugin (\"k8s\") and an operator CLI.\n\
         Run `attestor --help` for the subcommands."
    );
}
