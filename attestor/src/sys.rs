//! The one corner with `unsafe`: raw syscalls the standard library does not wrap.
//!
//! Every function returns `io::Result` with the kernel's errno; callers name the operation in
//! their own error types. Each `unsafe` block has a `SAFETY` note.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `pidfd_open(2)` (Linux 5.3): a handle on the process that has `pid` right now.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; on success the kernel returns a new fd
    // that we own exclusively.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: `fd` was just returned by the kernel and is not owned by anything else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// True once the process behind `pidfd` has exited (zombie or reaped): a pidfd becomes
/// readable then (poll(2) on pidfds, Linux 5.3).
pub fn pidfd_exited(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call; timeout 0 never blocks.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, 0) } as libc::c_long)?;
    Ok(n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0)
}

/// `struct pidfd_info` (include/uapi/linux/pidfd.h), first version (64 bytes, Linux 6.13).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}
const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);

const PIDFD_INFO_CGROUPID: u64 = 1 << 2;
/// `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)` with the 64-byte struct.
const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;

/// `ioctl(pidfd, PIDFD_GET_INFO)` asking for the cgroup v2 id (Linux 6.13).
/// `Ok(None)`: the kernel answered but has no cgroup id for the task.
/// `Err(ENOTTY/EINVAL)`: the kernel predates the ioctl. `Err(ESRCH)`: the process is gone.
pub fn pidfd_cgroup_id(pidfd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_CGROUPID,
        ..Default::default()
    };
    // SAFETY: `info` is a writable 64-byte struct matching the size encoded in the request.
    cvt(unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) } as libc::c_long)?;
    Ok((info.mask & PIDFD_INFO_CGROUPID != 0).then_some(info.cgroupid))
}

/// `open_by_handle_at(2)` with a kernfs file handle (`FILEID_KERNFS`, 8-byte node id):
/// opens the cgroup directory whose id is `cgroup_id`. Needs CAP_DAC_READ_SEARCH.
pub fn open_cgroup_by_id(mount: BorrowedFd<'_>, cgroup_id: u64) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: [u8; 8],
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id: cgroup_id.to_ne_bytes(),
    };
    // SAFETY: `handle` has the `struct file_handle` layout with 8 bytes of payload as
    // announced in handle_bytes; on success we own the returned fd.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut handle as *mut KernfsHandle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount -t tracefs tracefs <target>`.
pub fn mount_tracefs(target: &str) -> io::Result<()> {
    let src = CString::new("tracefs").map_err(io::Error::other)?;
    let tgt = CString::new(target).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call;
    // no data argument.
    cvt(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    } as libc::c_long)?;
    Ok(())
}

/// Raises RLIMIT_MEMLOCK to infinity: kernels before 5.11 charge BPF maps to it.
pub fn raise_memlock_rlimit() -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `limit` is a valid rlimit struct.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } as libc::c_long)?;
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as the Go runtime does for the SPIRE
/// agent): every attestation in flight holds a pidfd. Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit struct.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } as libc::c_long)?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above; raising the soft limit up to the hard limit needs no privilege.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } as libc::c_long)?;
    }
    Ok(limit.rlim_cur)
}

/// `poll(2)` on one fd with a timeout in milliseconds.
pub fn poll_readable(pfd: &mut libc::pollfd, timeout_ms: i32) -> io::Result<bool> {
    // SAFETY: `pfd` is a valid, exclusively borrowed pollfd.
    let n = cvt(unsafe { libc::poll(pfd, 1, timeout_ms) } as libc::c_long)?;
    if pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(n > 0)
}
