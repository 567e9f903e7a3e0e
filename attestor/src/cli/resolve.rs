//! `attestor resolve --pid <PID>`: PID → cgroup, and which source answered (operator tool).

use crate::tracker::{Resolution, Tracker, TrackerMode, TrackerOptions};

#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// Process to resolve (as the node sees it: host PID namespace).
    #[arg(long, allow_negative_numbers = true)]
    pub pid: i64,
    /// Process tracking: auto (eBPF, else fallback), ebpf (required) or procfs.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub tracker: ModeArg,
    /// Forward the kernel programs' debug records (aya-log) to stderr (set ATTESTOR_LOG=debug).
    #[arg(long)]
    pub ebpf_log: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = super::OutputFormat::Text)]
    pub output: super::OutputFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Auto,
    Ebpf,
    Procfs,
}

impl From<ModeArg> for TrackerMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Auto => TrackerMode::Auto,
            ModeArg::Ebpf => TrackerMode::Ebpf,
            ModeArg::Procfs => TrackerMode::Procfs,
        }
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

pub fn run(args: &ResolveArgs) -> i32 {
    let opts = TrackerOptions {
        mode: args.tracker.into(),
        ebpf_log_level: if args.ebpf_log { 4 } else { 0 },
        ..TrackerOptions::default()
    };
    let tracker = match Tracker::start(&opts) {
        Ok(t) => t,
        Err(e) => return fail(args.output, &e),
    };
    match (tracker.resolve(args.pid), args.output) {
        (Ok(r), super::OutputFormat::Text) => {
            println!("pid:         {}", r.pid);
            println!("cgroup id:   {}", r.cgroup_id);
            println!("cgroup path: {}", r.cgroup_path);
            println!("source:      {}", r.source);
            println!("elapsed:     {:?}", r.elapsed);
            0
        }
        (Ok(r), super::OutputFormat::Json) => {
            println!("{}", json_of(&r));
            0
        }
        (Err(e), output) => fail(output, &e),
    }
}

/// Errors go to stderr in text mode and to stdout as `{"error":{"message":…}}` in JSON mode.
fn fail(output: super::OutputFormat, e: &dyn std::fmt::Display) -> i32 {
    match output {
        super::OutputFormat::Text => eprintln!("error: {e}"),
        super::OutputFormat::Json => {
            println!(
                "{}",
                serde_json::json!({"error": {"message": e.to_string()}})
            )
        }
    }
    1
}
