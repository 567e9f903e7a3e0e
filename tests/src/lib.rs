//! Helpers shared by the integration tests (real kernel, real cgroups, real processes) and
//! the kubelet simulator.

pub mod apiserver_sim;
pub mod attest;
pub mod cart;
pub mod cleanup;
pub mod containerd;
pub mod cri;
pub mod demo;
pub mod expect;
pub mod go_host;
pub mod kubelet_sim;
pub mod manifests;
pub mod pidns;
pub mod podgen;
pub mod runc;
pub mod sandbox;
pub mod spawn;
pub mod tempdir;

pub mod plugin_attestor;

use std::path::Path;
use std::time::{Duration, Instant};

/// Kernel-facing tests need root. In CI (`CI` set) not being root is a failure; elsewhere the
/// test is skipped with a message.
pub fn require_root() -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    if uid == "0" {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root (real eBPF and cgroups); CI runs as root");
    }
    eprintln!("skipped: needs root");
    false
}

/// The value of `r`, or a panic that says what failed (`what`) and the error's text.
pub fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// The PID tracker in eBPF mode (no fallback); panics if it does not start on this kernel.
pub fn ebpf_tracker() -> attestor::tracker::Tracker {
    use attestor::tracker::{Tracker, TrackerMode, TrackerOptions};
    Tracker::start(&TrackerOptions {
        mode: TrackerMode::Ebpf,
        ..TrackerOptions::default()
    })
    .expect("eBPF tracker starts on this kernel")
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The inode (= cgroup id) of a cgroup directory.
pub fn cgroup_id(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).expect("stat cgroup dir").ino()
}

/// The process's `comm`.
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Children of `pid` (from /proc/<pid>/task/<pid>/children).
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills and reaps a child of this process.
pub fn kill_and_reap(pid: i32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        // A reaped child's /proc entry disappears; a zombie's stat shows Z.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                reap(pid);
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// waitpid(pid) through a tiny wrapper (std has no waitpid for non-Child pids).
pub fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// The `attestor` binary next to the running test's executable (`cargo test` builds it;
/// in the VM guests it is `/t/attestor` beside `/t/deps/<test>`).
pub fn attestor_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("attestor");
    assert!(
        bin.is_file(),
        "{} not built (cargo test builds it)",
        bin.display()
    );
    bin
}

/// The unix socket named by a go-plugin handshake line `1|1|unix|<path>|grpc|`.
pub fn handshake_socket(line: &str) -> String {
    line.strip_prefix("1|1|unix|")
        .and_then(|r| r.strip_suffix("|grpc|\n"))
        .unwrap_or_else(|| panic!("not a unix-socket handshake line: {line:?}"))
        .to_string()
}

/// A gRPC channel to a plugin's unix socket (h2c), as go-plugin dials it.
pub async fn plugin_channel(socket: String) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_static("http://plugin")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .expect("connect to the plugin's socket")
}

/// The real plugin binary, started as the agent starts it (go-plugin cookie) and configured
/// with `plugin_data`: the child (kill it at the end) and a channel for the plugin's services.
pub async fn start_configured_plugin(
    plugin_data: String,
) -> (std::process::Child, tonic::transport::Channel) {
    use attestor::plugin::proto::config::ConfigureRequest;
    use attestor::plugin::proto::config::config_client::ConfigClient;
    use std::io::BufRead;
    let mut plugin = std::process::Command::new(attestor_bin())
        .env("WorkloadAttestor", "WorkloadAttestor")
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the plugin");
    let mut line = String::new();
    std::io::BufReader::new(plugin.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("handshake");
    let channel = plugin_channel(handshake_socket(&line)).await;
    ConfigClient::new(channel.clone())
        .configure(ConfigureRequest {
            core_configuration: None,
            hcl_configuration: plugin_data,
        })
        .await
        .expect("Configure");
    (plugin, channel)
}

/// `Attest(pid)` through the plugin's gRPC service: selector values, or the gRPC status.
pub async fn plugin_attest(
    channel: &tonic::transport::Channel,
    pid: i32,
) -> Result<Vec<String>, tonic::Status> {
    use attestor::plugin::proto::workloadattestor::AttestRequest;
    use attestor::plugin::proto::workloadattestor::workload_attestor_client::WorkloadAttestorClient;
    WorkloadAttestorClient::new(channel.clone())
        .attest(AttestRequest { pid })
        .await
        .map(|r| r.into_inner().selector_values)
}

/// `attestor <args>`: (exit code, stdout, stderr).
pub fn run_attestor(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(attestor_bin())
        .args(args)
        .output()
        .expect("run attestor");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
