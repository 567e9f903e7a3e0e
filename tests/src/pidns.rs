//! Running a test body inside a new PID namespace with its own `/proc`, the way a kind/k3d
//! node, a node that is a container or Docker-in-Docker CI runs the agent: as
//! `unshare --pid --fork --mount-proc` does, without needing util-linux (the VM guests have
//! only busybox).
//!
//! [`run_in_new_pid_namespace`] re-runs the test binary with `--exact <inner> --ignored`.
//! Between fork and exec the child calls `unshare(CLONE_NEWPID | CLONE_NEWNS)` and forks once
//! more (a process that unshared its PID namespace cannot start threads, and the test harness
//! needs them, so it only waits): the grandchild is PID 1 of the new namespace and runs the
//! test, and [`mount_own_proc`] gives it a `/proc` of that namespace in its private mount
//! namespace.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Set in the environment of the test that runs inside the new namespace.
const STAGE_ENV: &str = "ATTESTOR_PIDNS_STAGE";

/// Which side of the namespace boundary this process is on, from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Started by `cargo test`: the caller starts the inner test.
    Outer,
    /// PID 1 of the new namespace.
    Inner,
}

pub fn stage() -> Stage {
    match std::env::var_os(STAGE_ENV) {
        None => Stage::Outer,
        Some(_) => Stage::Inner,
    }
}

/// Runs the (ignored) test `inner` of this test binary as PID 1 of a new PID namespace, with
/// a private mount namespace. `env`: extra variables for it. Panics if it fails.
pub fn run_in_new_pid_namespace(inner: &str, env: &[(&str, String)]) {
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = Command::new(exe);
    cmd.args([
        inner,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.env(STAGE_ENV, "inner");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: only async-signal-safe calls (unshare, fork, waitpid, _exit) between fork and
    // exec; they touch no memory but the local status word.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                // PID 1 of the new namespace: go on to exec the test.
                0 => Ok(()),
                child => {
                    // Still in our namespace: pass PID 1's status on, as `unshare --fork`.
                    let mut status = 0;
                    loop {
                        let r = libc::waitpid(child, &mut status, 0);
                        if r == child {
                            break;
                        }
                        if r < 0 && *libc::__errno_location() != libc::EINTR {
                            libc::_exit(127);
                        }
                    }
                    if libc::WIFEXITED(status) {
                        libc::_exit(libc::WEXITSTATUS(status));
                    }
                    libc::_exit(128 + libc::WTERMSIG(status));
                }
            }
        });
    }
    let status = cmd.status().expect("start the test in a new PID namespace");
    assert!(
        status.success(),
        "{inner} failed inside the PID namespace: {status}"
    );
}

/// Mounts a procfs of our (new) PID namespace on `/proc`, in our private mount namespace, so
/// `/proc/<n>` is the process this namespace calls `n` (`unshare --mount-proc`).
pub fn mount_own_proc() {
    let root = c"/";
    let proc_dir = c"/proc";
    let proc_fs = c"proc";
    // SAFETY: plain mount(2) calls with NUL-terminated strings that outlive them.
    unsafe {
        // Keep the new /proc out of the parent's mount namespace.
        let r = libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        assert_eq!(r, 0, "make / private: {}", std::io::Error::last_os_error());
        let r = libc::mount(
            proc_fs.as_ptr(),
            proc_dir.as_ptr(),
            proc_fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        );
        assert_eq!(r, 0, "mount proc: {}", std::io::Error::last_os_error());
    }
}

/// Our PID as this process's `/proc` shows it (differs from `getpid()` when `/proc` belongs
/// to another PID namespace).
pub fn proc_self() -> Option<String> {
    std::fs::read_link("/proc/self")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}
