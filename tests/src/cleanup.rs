//! Leave-no-trace helpers for the container harnesses: cgroup trees in every hierarchy,
//! mounts under a directory, stray runtime processes. Best effort: each step logs what it
//! could not undo and carries on, so one failure does not hide the others.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Mount points of every cgroup hierarchy (v1 controllers, `name=systemd`, and cgroup2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            left.split_whitespace().nth(4).map(unescape_mount_path)
        })
        .collect()
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Removes the cgroup `rel` (a hierarchy path like `/kubepods/besteffort/pod<uid>`) and
/// everything below it in every hierarchy, deepest first, then each ancestor that is left
/// empty (kubelet would own `kubepods/<qos>`; here nobody else does). A cgroup that still
/// has processes cannot be removed; that is reported.
pub fn remove_cgroup(rel: &str) {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    for mount in cgroup_mounts() {
        let top = mount.join(rel);
        if top.is_dir() {
            remove_tree_deepest_first(&top);
        }
        let mut parent = Path::new(rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            // Fails harmlessly when not empty (another pod, or not ours).
            let _ = fs::remove_dir(mount.join(p));
            parent = p.parent();
        }
    }
}

fn remove_tree_deepest_first(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree_deepest_first(&e.path());
            }
        }
    }
    // A cgroup whose last process just exited may be busy for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("cleanup: cannot remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Mount points at or below `dir` (deepest first), from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(unescape_mount_path))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    found.dedup();
    found
}

/// Lazily unmounts everything at or below `dir`; returns what could not be unmounted.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let mut failed = Vec::new();
    // Stacked mounts on one point need one umount each; bound the rounds.
    for _ in 0..8 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return failed;
        }
        failed.clear();
        for m in mounts {
            let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                failed.push(m);
            }
        }
    }
    failed
}

/// PIDs whose command line contains `needle` (e.g. a private socket path in a shim's
/// `-address` argument). This process is never included.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let text = String::from_utf8_lossy(&c).replace('\0', " ");
                text.contains(needle)
            })
        })
        .collect()
}

/// Sends `signal` to `pid` (no error if it is gone).
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) };
}

/// Whether `pid` still exists and is not a zombie.
pub fn is_running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}
