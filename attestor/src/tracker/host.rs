//! The tracker's view of the host: pidfds, `/proc` and the cgroup2 filesystem.
//!
//! Every decision of [`super::Tracker`] (which source answers, is this a kernel thread, did
//! the process exit meanwhile) reads the host through [`Host`], so unit tests can script a
//! process world (`fake.rs`: processes that exit, move or are replaced by another process with
//! the same number at a chosen step) without root. [`OsHost`] is the production one: a thin
//! funnel to `sys`, `std::fs` and [`CgroupFs`] that decides nothing and maps no error, so the
//! tracker's errors and messages are the same whichever host answers. The fake is compiled
//! only for this crate's unit tests.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::cgroupfs::{CgroupFs, CgroupFsError};
use crate::sys;

/// The `/proc/<pid>/…` files the tracker reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcFile {
    /// `/proc/<pid>/cgroup`
    Cgroup,
    /// `/proc/<pid>/stat`
    Stat,
}

/// A handle on one process (not on a number): it stays that process's even after the number
/// is reused, which is what makes a resolution PID-reuse safe.
pub(crate) enum Pidfd {
    Os(OwnedFd),
    #[cfg(test)]
    Fake(super::fake::FakePidfd),
}

impl std::fmt::Debug for Pidfd {
    // As the `OwnedFd` it wraps, so `Resolution`'s Debug output is what it was before the seam.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pidfd::Os(fd) => fd.fmt(f),
            #[cfg(test)]
            Pidfd::Fake(p) => p.fmt(f),
        }
    }
}

impl Pidfd {
    /// True once the process has exited (zombie or reaped), see [`sys::pidfd_exited`].
    pub(crate) fn exited(&self) -> io::Result<bool> {
        match self {
            Pidfd::Os(fd) => sys::pidfd_exited(fd.as_fd()),
            #[cfg(test)]
            Pidfd::Fake(p) => p.exited(),
        }
    }

    /// `PIDFD_GET_INFO`'s cgroup id, see [`sys::pidfd_cgroup_id`].
    pub(crate) fn cgroup_id(&self) -> io::Result<Option<u64>> {
        match self {
            Pidfd::Os(fd) => sys::pidfd_cgroup_id(fd.as_fd()),
            #[cfg(test)]
            Pidfd::Fake(p) => p.cgroup_id(),
        }
    }
}

/// What the tracker asks the host. Errors are the raw ones (errno, `CgroupFsError`): the
/// tracker maps them to `ResolveError`s itself.
pub(crate) trait Host: Send + Sync {
    /// `pidfd_open(2)` of whatever process has `pid` now.
    fn pidfd_open(&self, pid: i32) -> io::Result<Pidfd>;
    /// The whole file `/proc/<pid>/<file>`.
    fn read_proc(&self, pid: i32, file: ProcFile) -> io::Result<String>;
    /// Whether `/proc/<pid>` exists (a thread id has one too, though `/proc` does not list it).
    fn proc_exists(&self, pid: i32) -> bool;
    /// The numbers `/proc` lists (processes; no threads), read lazily as `/proc` is walked.
    fn pids(&self) -> io::Result<Box<dyn Iterator<Item = i32> + '_>>;
    /// cgroup2 path → id ([`CgroupFs::id_of`]); `NoCgroup2Mount` on a legacy v1 node.
    fn cgroup_id_of(&self, path: &str) -> Result<u64, CgroupFsError>;
    /// cgroup id → path ([`CgroupFs::path_of`]); `NoCgroup2Mount` on a legacy v1 node.
    fn cgroup_path_of(&self, id: u64) -> Result<Arc<str>, CgroupFsError>;
    /// The cgroup2 hierarchy, for [`super::Tracker::cgroupfs`] (callers outside the tracker).
    fn cgroupfs(&self) -> Option<&CgroupFs>;
}

/// The real host.
#[derive(Debug)]
pub(crate) struct OsHost {
    /// `None` on a legacy cgroup v1 node (no cgroup2 filesystem mounted).
    pub(crate) cgroupfs: Option<CgroupFs>,
}

impl OsHost {
    fn cgroup2(&self) -> Result<&CgroupFs, CgroupFsError> {
        self.cgroupfs.as_ref().ok_or(CgroupFsError::NoCgroup2Mount)
    }
}

impl Host for OsHost {
    fn pidfd_open(&self, pid: i32) -> io::Result<Pidfd> {
        sys::pidfd_open(pid).map(Pidfd::Os)
    }

    fn read_proc(&self, pid: i32, file: ProcFile) -> io::Result<String> {
        let name = match file {
            ProcFile::Cgroup => "cgroup",
            ProcFile::Stat => "stat",
        };
        std::fs::read_to_string(format!("/proc/{pid}/{name}"))
    }

    fn proc_exists(&self, pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    fn pids(&self) -> io::Result<Box<dyn Iterator<Item = i32> + '_>> {
        let dir = std::fs::read_dir("/proc")?;
        Ok(Box::new(dir.flatten().filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
        })))
    }

    fn cgroup_id_of(&self, path: &str) -> Result<u64, CgroupFsError> {
        self.cgroup2()?.id_of(path)
    }

    fn cgroup_path_of(&self, id: u64) -> Result<Arc<str>, CgroupFsError> {
        self.cgroup2()?.path_of(id)
    }

    fn cgroupfs(&self) -> Option<&CgroupFs> {
        self.cgroupfs.as_ref()
    }
}
