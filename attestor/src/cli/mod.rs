//! Command-line surface. `main` maps every outcome to an exit code here, in one place:
//! 0 success, 1 the operation failed (the error says why), 2 usage error.
//!
//! Each subcommand lives in its own file; this file only parses and dispatches.

mod demo;
mod logger;
mod plugin;
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
    // Started by a SPIRE agent (magic cookie in the environment): plugin mode, whatever the
    // arguments (`plugin_args`) are. It installs its own hclog logger.
    if crate::plugin::is_plugin_mode() {
        return plugin::run();
    }
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
            // As go-plugin's Serve does when the cookie is missing.
            1
        }
    }
}

fn print_plugin_help() {
    eprintln!(
        "This binary is a plugin: the SPIRE agent's WorkloadAttestor \"k8s\" (eBPF-assisted).\n\
         It is not meant to be run directly. Configure the agent with:\n\n\
         \x20   WorkloadAttestor \"k8s\" {{\n\
         \x20       plugin_cmd = \"/opt/spire/plugins/attestor\"\n\
         \x20       plugin_checksum = \"<sha256sum of the binary>\"\n\
         \x20       plugin_data {{ … the k8s attestor's settings … }}\n\
         \x20   }}\n\n\
         See deploy/README.md. Operator subcommands: `attestor --help`."
    );
}
