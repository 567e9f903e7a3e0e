//! `attestor resolve --pid <PID>`: PID → cgroup, and which source answered (operator tool).

use super::{Failure, OutputFormat};
use crate::attest;
use crate::config::TrackerMode;
use crate::tracker::{Resolution, Tracker, TrackerOptions};

#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// Process to resolve (as the node sees it: host PID namespace).
    #[arg(long, allow_negative_numbers = true)]
    pub pid: i64,
    /// Process tracking: auto (eBPF, else fallback), ebpf (required) or procfs.
    #[arg(long, value_enum, default_value_t = TrackerMode::Auto)]
    pub tracker: TrackerMode,
    /// Forward the kernel programs' debug records (aya-log) to stderr (set ATTESTOR_LOG=debug).
    #[arg(long)]
    pub ebpf_log: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `--tracker` takes the `tracker` key's spellings ([`TrackerMode::as_str`]).
impl clap::ValueEnum for TrackerMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[TrackerMode::Auto, TrackerMode::Ebpf, TrackerMode::Procfs]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

pub fn json_of(r: &Resolution) -> serde_json::Value {
    serde_json::json!({
        "pid": r.pid,
        "cgroup_id": r.cgroup_id,
        "cgroup_path": &*r.cgroup_path,
        "source": r.source.to_string(),
        "elapsed_us": r.elapsed.as_micros() as u64,
    })
}

pub(super) fn run(args: &ResolveArgs) -> Result<(), Failure> {
    let fail = |status| Failure {
        status,
        format: args.output,
        notes: Vec::new(),
    };
    let opts = TrackerOptions {
        mode: args.tracker,
        ebpf_log_level: if args.ebpf_log { 4 } else { 0 },
        ..TrackerOptions::default()
    };
    let tracker = Tracker::start(&opts)
        .map_err(attest::start_status)
        .map_err(fail)?;
    let r = tracker
        .resolve(args.pid)
        .map_err(attest::resolve_status)
        .map_err(fail)?;
    match args.output {
        OutputFormat::Text => {
            println!("pid:         {}", r.pid);
            println!("cgroup id:   {}", r.cgroup_id);
            println!("cgroup path: {}", r.cgroup_path);
            println!("source:      {}", r.source);
            println!("elapsed:     {:?}", r.elapsed);
        }
        OutputFormat::Json => println!("{}", json_of(&r)),
    }
    Ok(())
}
