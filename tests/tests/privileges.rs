//! Least privilege, measured: the CLI run with only the capabilities README documents.
//! (`setpriv` from util-linux drops everything else from the bounding set.)

use std::process::Command;

use attestor::cgroupfs::CgroupFs;
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::{attestor_bin, require_root};

fn resolve_with_caps(caps: &str, pid: i32, tracker: &str) -> (bool, serde_json::Value) {
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--ambient-caps=-all"])
        .arg(format!("--bounding-set=-all{caps}"))
        .arg(attestor_bin())
        .args([
            "resolve",
            "--pid",
            &pid.to_string(),
            "--tracker",
            tracker,
            "--output",
            "json",
        ])
        .output()
        .expect("run setpriv (util-linux)");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "caps {caps}: stdout is not JSON ({e}): {} / stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), json)
}

#[test]
fn ebpf_tracking_needs_only_bpf_and_perfmon() {
    if !require_root() {
        return;
    }
    let cgfs = CgroupFs::discover().expect("cgroup2 mount");
    let sandbox = Sandbox::new(&cgfs, "caps").expect("sandbox");
    let dir = sandbox
        .container(
            Layout::SystemdContainerd,
            "4d3c2b1a-0f9e-4d8c-b7a6-5f4e3d2c1b0a",
            &"ab".repeat(32),
        )
        .expect("cgroup");
    let pid = spawn_into_cgroup(&dir, Some(&["/bin/sleep", "30"]), None).expect("spawn");
    let want = sandbox.hierarchy_path(&dir);

    // CAP_BPF + CAP_PERFMON (+ CAP_DAC_READ_SEARCH for the id → path file handle).
    for caps in [",+bpf,+perfmon,+dac_read_search", ",+bpf,+perfmon"] {
        let (ok, json) = resolve_with_caps(caps, pid, "ebpf");
        assert!(ok, "caps {caps}: {json}");
        assert_eq!(json["cgroup_path"], want.as_str(), "caps {caps}");
        assert!(
            json["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("ebpf-map")),
            "caps {caps}: {json}"
        );
    }
    // Without CAP_PERFMON the programs cannot load: with tracker = ebpf that is an error…
    let (ok, json) = resolve_with_caps(",+bpf,+dac_read_search", pid, "ebpf");
    assert!(!ok, "loading without CAP_PERFMON must fail: {json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("eBPF tracker is required"))
    );
    // …and the fallback needs no capability at all.
    let (ok, json) = resolve_with_caps("", pid, "procfs");
    assert!(ok, "procfs fallback without capabilities: {json}");
    assert_eq!(json["cgroup_path"], want.as_str());
}
