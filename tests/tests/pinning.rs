//! The tracker pins nothing: its maps and programs live exactly as long as the agent's file
//! descriptors, so no other process can open them through bpffs (SECURITY.md, "Tampering
//! with eBPF maps"). Measured by running the CLI with a bpffs mounted at `/sys/fs/bpf` in a
//! private mount namespace and listing it afterwards.

use std::process::Command;

use attestor::cgroupfs::CgroupFs;
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::{attestor_bin, require_root};

#[test]
fn the_ebpf_tracker_pins_no_map_or_program() {
    if !require_root() {
        return;
    }
    let cgfs = CgroupFs::discover().expect("cgroup2 mount");
    let sandbox = Sandbox::new(&cgfs, "pinning").expect("sandbox");
    let dir = sandbox
        .container(
            Layout::Cgroupfs,
            "5e4d3c2b-1a0f-4e9d-8c7b-6a5f4e3d2c1b",
            &"cd".repeat(32),
        )
        .expect("cgroup");
    let pid = spawn_into_cgroup(&dir, Some(&["/bin/sleep", "30"]), None).expect("spawn");
    // A fresh bpffs lists the kernel's own iterators (maps.debug, progs.debug) only.
    let script = format!(
        "mount -t bpf bpf /sys/fs/bpf && echo BEFORE: && find /sys/fs/bpf -mindepth 1 \
         && echo RESOLVE: && {bin} resolve --pid {pid} --tracker ebpf --output json \
         && echo AFTER: && find /sys/fs/bpf -mindepth 1",
        bin = attestor_bin().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rest = stdout.strip_prefix("BEFORE:\n").expect("BEFORE");
    let (before, rest) = rest.split_once("RESOLVE:\n").expect("RESOLVE");
    let (json, after) = rest.split_once("AFTER:\n").expect("AFTER");
    let json: serde_json::Value = serde_json::from_str(json).expect("resolve JSON");
    assert!(
        json["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("ebpf-map")),
        "the eBPF tracker answered: {json}"
    );
    assert_eq!(after, before, "bpffs entries left behind");
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}
