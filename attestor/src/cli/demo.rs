//! `attestor demo`: the tracker at work without a cluster.
//!
//! Starts the tracker, creates kubelet-style cgroups in a private sandbox, starts workload
//! processes in them the ways runtimes do (clone3 into the cgroup; moved by writing
//! `cgroup.procs`; forked inside the container), and shows how each PID was resolved.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::sandbox::{Layout, Sandbox};
use crate::tracker::{Tracker, TrackerOptions, spawn_into_cgroup};

pub fn run() -> i32 {
    match demo() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let tracker = Tracker::start(&TrackerOptions::default())?;
    match tracker.fallback_reason() {
        None => println!(
            "tracker: eBPF programs loaded and attached (cgroup2 at {})",
            tracker.cgroupfs().mount_point().display()
        ),
        Some(why) => println!("tracker: eBPF not in use ({why}); using the fallback"),
    }
    let sandbox = Sandbox::new(tracker.cgroupfs(), "demo")?;
    let pod = "5b7f3c2a-1d2e-4f60-8a9b-0c1d2e3f4a5b";
    let app = sandbox.container(Layout::SystemdContainerd, pod, &"a1".repeat(32))?;
    let sidecar = sandbox.container(Layout::SystemdContainerd, pod, &"b2".repeat(32))?;
    let legacy = sandbox.container(
        Layout::Cgroupfs,
        "0e4c9a55-7f1b-4c3d-9e2a-6b5d4c3b2a19",
        &"c3".repeat(32),
    )?;

    // 1. Started directly in its container cgroup, as runc does with clone3(CLONE_INTO_CGROUP).
    let p1 = spawn_into_cgroup(&app, Some(&["/bin/sleep", "30"]), None)?;
    // 2. Started elsewhere, then moved by writing cgroup.procs (older runtimes).
    let mut c2 = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()?;
    let p2 = c2.id() as i32;
    Sandbox::move_process(&sidecar, p2)?;
    // 3. A shell in the container that forks a child (the child is never exec'd from outside).
    let p3 = spawn_into_cgroup(&legacy, Some(&["/bin/sh", "-c", "sleep 30 & wait"]), None)?;
    std::thread::sleep(Duration::from_millis(100));
    let p3_child = std::fs::read_to_string(format!("/proc/{p3}/task/{p3}/children"))
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<i32>().ok())
        });

    let mut rows = vec![
        ("clone3 into the container", p1),
        ("moved via cgroup.procs", p2),
        ("shell in a cgroupfs-driver pod", p3),
    ];
    if let Some(c) = p3_child {
        rows.push(("its forked child", c));
    }
    println!();
    for (what, pid) in rows {
        match tracker.resolve(pid as i64) {
            Ok(r) => println!(
                "pid {pid:>7}  {what}\n    cgroup id {}  path {}\n    source: {}  ({:?})",
                r.cgroup_id, r.cgroup_path, r.source, r.elapsed
            ),
            Err(e) => println!("pid {pid:>7}  {what}\n    error: {e}"),
        }
    }
    println!("\nbad input is refused with a reason:");
    for pid in [0i64, -5, 2, 999_999_999] {
        if let Err(e) = tracker.resolve(pid) {
            println!("    resolve({pid}): {e}");
        }
    }
    let _ = c2.kill();
    let _ = c2.wait();
    drop(sandbox);
    Ok(())
}
