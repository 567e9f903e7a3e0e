//! Starting test processes directly inside a cgroup: `clone3(CLONE_INTO_CGROUP)`.
//!
//! The tests and the demo need workloads that are born in a kubelet-style cgroup (as a
//! container runtime starts them), never seen in another one, and sometimes with a chosen PID
//! (to recycle a number on purpose). Only test code does that, so the raw `clone3` lives here
//! and not in the `attestor` crate's `sys` funnel.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

/// Starts a process directly inside the cgroup directory `dir` (Linux 5.7). `argv`: program
/// to exec, or `None` for a forked child that never execs (it waits in `pause()` until
/// killed). `pid`: ask for this exact PID (`set_tid`, Linux 5.5, needs CAP_SYS_ADMIN).
/// Returns the child's PID; the caller reaps it.
pub fn spawn_into_cgroup(dir: &Path, argv: Option<&[&str]>, pid: Option<i32>) -> io::Result<i32> {
    let d = std::fs::File::open(dir)?;
    clone3_into_cgroup(d.as_fd(), argv, pid)
}

/// `struct clone_args` (include/uapi/linux/sched.h) up to `cgroup` (CLONE_ARGS_SIZE_VER2,
/// 88 bytes, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}
const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone3_into_cgroup(
    cgroup_dir: BorrowedFd<'_>,
    argv: Option<&[&str]>,
    pid: Option<i32>,
) -> io::Result<i32> {
    // Everything the child touches is built before the clone: after it, the child may only
    // make async-signal-safe calls (the parent may have other threads holding locks).
    let cargs: Vec<CString> = argv
        .unwrap_or_default()
        .iter()
        .map(|a| CString::new(*a).map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
    let mut ptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let tid: [libc::pid_t; 1] = [pid.unwrap_or(0)];
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir.as_raw_fd() as u64,
        ..Default::default()
    };
    if pid.is_some() {
        args.set_tid = tid.as_ptr() as u64;
        args.set_tid_size = 1;
    }
    // SAFETY: clone3 without CLONE_VM gives the child a copy of our address space; the child
    // only calls execve/pause/_exit (async-signal-safe) on data prepared before the clone.
    // `args` is a valid clone_args of the size passed, and `tid` outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        0 => {
            // SAFETY: child side: exec, or pause until killed; nothing else. `ptrs` and
            // `envp` are NUL-terminated arrays of valid C strings (our copy of them).
            unsafe {
                if cargs.is_empty() {
                    loop {
                        libc::pause();
                    }
                }
                libc::execve(ptrs[0], ptrs.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        r if r < 0 => Err(io::Error::last_os_error()),
        child => Ok(child as i32),
    }
}
