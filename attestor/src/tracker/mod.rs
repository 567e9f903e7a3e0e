//! PID → cgroup: which cgroup v2 cgroup is this process in, answered without racing on PIDs.
//!
//! Sources, in order:
//! 1. **eBPF map** (`kernel.rs`): tgid → cgroup id kept by kernel programs through fork, exec,
//!    exit and migration, seeded from `/proc` at start. An entry the kernel flagged as
//!    possibly stale, or no entry (map full, leader exited early), means "unknown" → 2/3.
//! 2. **`PIDFD_GET_INFO`** (Linux 6.13+): the cgroup id straight from a pidfd.
//! 3. **`/proc/<pid>/cgroup`**, read while holding a pidfd.
//!
//! PID-reuse safety: `resolve` opens a pidfd first and checks after the lookup that the same
//! process is still alive. While it lives its number cannot be reused, so the value read in
//! between belonged to it. A process that exits during resolution gives
//! [`ResolveError::Exited`], never another process's cgroup.
//!
//! This module stops at the cgroup; the container locator takes it from there.
//!
//! Two seams keep the decisions here testable without root or a kernel (`tests.rs`):
//! `host.rs` (pidfds, `/proc`, the cgroup2 filesystem) and `procmap.rs` (the kernel's process
//! map). Their fakes (`fake.rs`) exist only in this crate's unit tests.

mod btf;
#[cfg(test)]
// The scripted process world, also for `attest`'s unit tests.
pub(crate) mod fake;
mod host;
mod kernel;
pub mod offsets;
pub mod procfs;
mod procmap;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attestor_common::{ProcEntry, flags, origin};

use host::{Host, OsHost, Pidfd, ProcFile};
use kernel::KernelTracker;
pub use kernel::{KernelError, KernelStats};
use procmap::ProcMap;

use crate::cgroupfs::{CgroupFs, CgroupFsError, ROOT_CGROUP_ID};
use crate::sys;

pub use crate::config::TrackerMode;

#[derive(Debug, Clone)]
pub struct TrackerOptions {
    pub mode: TrackerMode,
    /// Size of the kernel map (processes); when full, new processes are answered by the fallback.
    pub max_processes: u32,
    /// aya-log level for kernel debug records (0 = off).
    pub ebpf_log_level: u8,
    /// Use `PIDFD_GET_INFO` when the kernel has it (6.13+). Off: the `/proc` fallback answers
    /// instead (tests use this to exercise that path on new kernels).
    pub pidfd_info: bool,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            mode: TrackerMode::Auto,
            max_processes: attestor_common::DEFAULT_MAX_PROCESSES,
            ebpf_log_level: 0,
            pidfd_info: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("the eBPF tracker is required (tracker = \"ebpf\") but cannot be used: {0}")]
    EbpfRequired(#[source] KernelError),
    #[error(transparent)]
    CgroupFs(#[from] CgroupFsError),
    #[error("tracker_max_processes must be between 1 and {max}, got {got}")]
    MapSize { got: u32, max: u32 },
    /// `/proc/<n>` would not be the process the agent calls `n`: every `/proc` read (the
    /// fallback, seeding, zombie checks) would look at other processes.
    #[error(
        "/proc is not a procfs of attestor's PID namespace (/proc/self is {shows}, our pid is {own}): \
         /proc/<pid> would name other processes than the PIDs the agent sends; mount a procfs \
         of this namespace on /proc (a container gets one; with `unshare --pid` use --mount-proc)"
    )]
    ForeignProc { shows: String, own: u32 },
}

/// Which source answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The kernel map; the entry was written at fork, exec, migration or by the start-up seed.
    Ebpf(EntryOrigin),
    /// `ioctl(PIDFD_GET_INFO)` (Linux 6.13+).
    PidfdInfo,
    /// `/proc/<pid>/cgroup` read under a pidfd.
    ProcCgroup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryOrigin {
    Fork,
    Exec,
    Attach,
    Seed,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ebpf(o) => write!(
                f,
                "ebpf-map ({})",
                match o {
                    EntryOrigin::Fork => "written at fork",
                    EntryOrigin::Exec => "written at exec",
                    EntryOrigin::Attach => "written at cgroup migration",
                    EntryOrigin::Seed => "seeded from /proc at start",
                }
            ),
            Source::PidfdInfo => f.write_str("pidfd-info (PIDFD_GET_INFO)"),
            Source::ProcCgroup => f.write_str("procfs (/proc/<pid>/cgroup under a pidfd)"),
        }
    }
}

/// The answer for one PID.
///
/// It keeps the pidfd it was resolved under, so whoever acts on the answer later (after a
/// kubelet round trip, say) can check with [`Resolution::is_alive`] that the same process is
/// still there before handing out its identity.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub pid: i32,
    pub cgroup_id: u64,
    /// Path in the cgroup v2 hierarchy, e.g. `/kubepods.slice/…/cri-containerd-<id>.scope`.
    pub cgroup_path: Arc<str>,
    pub source: Source,
    pub elapsed: Duration,
    pidfd: Arc<Pidfd>,
}

impl Resolution {
    /// True while the process that was resolved has not exited. Once it has, its PID may
    /// belong to another process: an identity computed for this resolution must not be used.
    pub fn is_alive(&self) -> bool {
        matches!(self.pidfd.exited(), Ok(false))
    }
}

/// A process's whole `/proc/<pid>/cgroup` (see [`Tracker::memberships`]), with the pidfd it
/// was read under.
#[derive(Debug, Clone)]
pub struct Memberships {
    pub pid: i32,
    /// The file as the kernel wrote it: `hierarchy-ID:controllers:path` lines.
    pub text: Arc<str>,
    pub elapsed: Duration,
    pidfd: Arc<Pidfd>,
}

impl Memberships {
    /// As [`Resolution::is_alive`].
    pub fn is_alive(&self) -> bool {
        matches!(self.pidfd.exited(), Ok(false))
    }
}

/// Where the memberships come from, for `explain`.
pub const MEMBERSHIPS_SOURCE: &str = "procfs (/proc/<pid>/cgroup, every hierarchy, under a pidfd)";

/// Why a PID could not be resolved. Each case is distinct so callers (and operators) can act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    #[error(
        "pid 0 is not a process (the caller is not visible in this PID namespace; run with hostPID)"
    )]
    ZeroPid,
    #[error("pid {0} is negative: not a process id")]
    NegativePid(i64),
    #[error("pid {0} is too large to be a process id")]
    PidOutOfRange(i64),
    #[error("no process with pid {0}")]
    NoSuchProcess(i32),
    #[error("pid {0} is a thread, not a process (thread-group leader)")]
    NotALeader(i32),
    #[error("pid {0} is a kernel thread: kernel threads are not workloads")]
    KernelThread(i32),
    #[error("pid {0} is a zombie (exited, not yet reaped): nothing to attest")]
    Zombie(i32),
    #[error("pid {0} is in the root cgroup: it is not in any container")]
    RootCgroup(i32),
    #[error(
        "pid {0} exited while it was being resolved; its number may belong to another process now"
    )]
    Exited(i32),
    #[error("pid {0} changed cgroup while it was being resolved; retry")]
    CgroupChanged(i32),
    #[error("pid {pid}: {source}")]
    Cgroup { pid: i32, source: CgroupFsError },
    #[error("pid {pid}: {op} failed: {source}")]
    Io {
        pid: i32,
        op: &'static str,
        source: io::Error,
    },
    #[error("pid {pid}: {path} has no cgroup v2 (0::) line")]
    NoV2Line { pid: i32, path: String },
    #[error(
        "pid {pid}: /proc reports cgroup path {path:?} outside our cgroup namespace; run attestor in \
         the host cgroup namespace"
    )]
    OutsideNamespace { pid: i32, path: String },
}

/// The PID tracker.
pub struct Tracker {
    /// The kernel's process map, when eBPF is in use: the only part of the kernel side the
    /// decisions read. Lookups through it take no lock (see `procmap.rs`).
    procs: Option<Box<dyn ProcMap>>,
    /// The loaded programs (keeps them attached; counters). Set exactly when `procs` comes
    /// from them, i.e. always with `procs` outside unit tests.
    kernel: Option<KernelTracker>,
    /// Pidfds, `/proc` and the cgroup2 filesystem (whose absence, on a legacy cgroup v1 node,
    /// puts every process in the v2 root: its container is read from the v1 hierarchies).
    host: Box<dyn Host>,
    /// Why eBPF is not used, if it is not.
    fallback_reason: Option<String>,
    /// Whether PIDFD_GET_INFO works here (probed once at start).
    pidfd_info: bool,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("ebpf", &self.procs.is_some())
            .field("fallback_reason", &self.fallback_reason)
            .field(
                "cgroup2_mount",
                &self.host.cgroupfs().map(CgroupFs::mount_point),
            )
            .field("pidfd_info", &self.pidfd_info)
            .finish()
    }
}

pub use attestor_common::MAX_PROCESSES_LIMIT;

impl Tracker {
    /// Loads and attaches the kernel programs (unless `mode` is `Procfs`), then seeds the map
    /// from `/proc`.
    pub fn start(opts: &TrackerOptions) -> Result<Tracker, StartError> {
        if opts.max_processes == 0 || opts.max_processes > MAX_PROCESSES_LIMIT {
            return Err(StartError::MapSize {
                got: opts.max_processes,
                max: MAX_PROCESSES_LIMIT,
            });
        }
        let own = std::process::id();
        let proc_self = std::fs::read_link("/proc/self")
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        if !procfs::proc_is_ours(proc_self.as_deref(), own) {
            return Err(StartError::ForeignProc {
                shows: proc_self.unwrap_or_else(|| "unresolvable".into()),
                own,
            });
        }
        let cgroupfs = match CgroupFs::discover() {
            Ok(fs) => Some(fs),
            // Legacy cgroup v1 node: pods live in v1 hierarchies only (`memberships`).
            Err(CgroupFsError::NoCgroup2Mount) => None,
            Err(e) => return Err(e.into()),
        };
        let pidfd_info = opts.pidfd_info && probe_pidfd_info();
        // Each resolution in flight holds a pidfd until its attestation ends.
        match sys::raise_nofile_limit() {
            Ok(n) if n < 4096 => log::warn!(
                "open-file limit is {n}: concurrent attestations beyond that fail with EMFILE; raise RLIMIT_NOFILE"
            ),
            Ok(_) => {}
            Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
        }
        let (loaded, fallback_reason) = match opts.mode {
            // Without the v2 hierarchy every process is in its root: nothing to track.
            _ if cgroupfs.is_none() => (
                None,
                Some(
                    "no cgroup2 filesystem is mounted (legacy cgroup v1 node): containers are \
                     read from the v1 hierarchies in /proc/<pid>/cgroup"
                        .to_string(),
                ),
            ),
            TrackerMode::Procfs => (
                None,
                Some("tracker = \"procfs\" in the configuration".to_string()),
            ),
            TrackerMode::Auto | TrackerMode::Ebpf => {
                let loaded = match pid_view() {
                    // Map keys, seeded or kernel-written, are initial-namespace tgids: only
                    // there are they the numbers the agent sends.
                    procfs::PidView::Initial => {
                        KernelTracker::load(opts.max_processes, opts.ebpf_log_level)
                    }
                    procfs::PidView::Nested { ns_inode } => {
                        Err(KernelError::NestedPidNamespace { ns_inode })
                    }
                };
                match loaded {
                    Ok(loaded) => (Some(loaded), None),
                    Err(e) if opts.mode == TrackerMode::Ebpf => {
                        return Err(StartError::EbpfRequired(e));
                    }
                    Err(e) => {
                        let fallback = if pidfd_info {
                            "PIDFD_GET_INFO"
                        } else {
                            "/proc/<pid>/cgroup under a pidfd"
                        };
                        log::warn!(
                            "eBPF process tracking is unavailable, using {fallback} instead: {e}"
                        );
                        (None, Some(e.to_string()))
                    }
                }
            }
        };
        let (kernel, procs) = match loaded {
            Some((kernel, procs)) => (Some(kernel), Some(Box::new(procs) as Box<dyn ProcMap>)),
            None => (None, None),
        };
        let tracker = Tracker {
            procs,
            kernel,
            host: Box::new(OsHost { cgroupfs }),
            fallback_reason,
            pidfd_info,
        };
        if tracker.procs.is_some() {
            let seeding = Instant::now();
            tracker.seed();
            log::debug!("seeding from /proc took {:?}", seeding.elapsed());
        }
        Ok(tracker)
    }

    /// A tracker over a scripted host and map (`fake.rs`), for the unit tests.
    #[cfg(test)]
    fn with_parts(
        host: Box<dyn Host>,
        procs: Option<Box<dyn ProcMap>>,
        pidfd_info: bool,
    ) -> Tracker {
        Tracker {
            procs,
            kernel: None,
            host,
            fallback_reason: None,
            pidfd_info,
        }
    }

    /// True when the kernel programs are loaded.
    pub fn uses_ebpf(&self) -> bool {
        self.procs.is_some()
    }

    /// Why eBPF is not in use (None when it is).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The cgroup2 hierarchy (`None` on a legacy cgroup v1 node).
    pub fn cgroupfs(&self) -> Option<&CgroupFs> {
        self.host.cgroupfs()
    }

    /// cgroup2 path → id; the root needs no mount (all a legacy v1 node's processes are there).
    fn id_of(&self, path: &str) -> Result<u64, CgroupFsError> {
        match self.host.cgroup_id_of(path) {
            Err(CgroupFsError::NoCgroup2Mount) if path == "/" => Ok(ROOT_CGROUP_ID),
            r => r,
        }
    }

    /// Kernel map entries and counters, when eBPF is in use.
    pub fn kernel_stats(&self) -> Option<(usize, u32, KernelStats)> {
        let (kernel, procs) = (self.kernel.as_ref()?, self.procs.as_ref()?);
        Some((procs.len(), kernel.max_entries, kernel.stats()))
    }

    /// Kernel memory of the process map in bytes (eBPF only).
    pub fn map_memory_bytes(&self) -> Option<u64> {
        self.procs.as_ref()?.memory_bytes()
    }

    /// Raw map entry for diagnostics and tests (`None`: not tracked or eBPF off).
    pub fn map_entry(&self, pid: u32) -> Option<ProcEntry> {
        self.procs.as_ref()?.get(pid)
    }

    /// Fills the kernel map to capacity with placeholder keys (never real pids), to test the
    /// "map full" path on the real kernel. Returns how many were added.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn fill_map_for_test(&self) -> usize {
        match (&self.procs, &self.kernel) {
            (Some(procs), Some(kernel)) => {
                procmap::fill_with_placeholders(procs.as_ref(), kernel.max_entries)
            }
            _ => 0,
        }
    }

    /// Puts every map operation, lookups included, behind one `Mutex`, as the tracker did
    /// before lookups got their own handle: the baseline of the concurrency benchmark.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn serialise_map_for_bench(&mut self) {
        if let Some(procs) = self.procs.take() {
            self.procs = Some(Box::new(procmap::Serialised(std::sync::Mutex::new(procs))));
        }
    }

    /// Resolves a PID to its cgroup. See the module doc for the guarantees.
    pub fn resolve(&self, pid: i64) -> Result<Resolution, ResolveError> {
        let started = Instant::now();
        let pid = checked_pid(pid)?;
        let pidfd = self.open_pidfd(pid)?;
        let looked_up = self.lookup(pid, &pidfd);
        // The process behind the pidfd is still alive ⇒ whatever was read above was its own
        // (see the module doc). A pidfd becomes readable once its process exited: then it is
        // a zombie, or gone and its number possibly reused.
        if self.exited(pid, &pidfd)? {
            return Err(self.exited_or_zombie(pid));
        }
        let (cgroup_id, source, cgroup_path) = looked_up?;
        if cgroup_id == ROOT_CGROUP_ID || &*cgroup_path == "/" {
            // Kernel threads live in the root cgroup too; tell them apart (rare path).
            self.check_process(pid)?;
            return Err(ResolveError::RootCgroup(pid));
        }
        Ok(Resolution {
            pid,
            cgroup_id,
            cgroup_path,
            source,
            elapsed: started.elapsed(),
            pidfd: Arc::new(pidfd),
        })
    }

    /// Every cgroup membership of a process: all of `/proc/<pid>/cgroup`, the cgroup v1
    /// hierarchies' lines as well as the v2 one, read under a pidfd and checked against it as
    /// [`Tracker::resolve`] does. For nodes whose pods live in v1 hierarchies (legacy or
    /// hybrid mode with the cgroupfs driver), where the v2 cgroup names no container.
    /// `resolved`: an earlier resolution of the same PID, whose pidfd is reused so both
    /// answers are about one process.
    pub fn memberships(
        &self,
        pid: i64,
        resolved: Option<&Resolution>,
    ) -> Result<Memberships, ResolveError> {
        let started = Instant::now();
        let (pid, pidfd) = match resolved {
            Some(r) => (r.pid, r.pidfd.clone()),
            None => {
                let pid = checked_pid(pid)?;
                (pid, Arc::new(self.open_pidfd(pid)?))
            }
        };
        let text = self.read_cgroup_file(pid);
        if self.exited(pid, &pidfd)? {
            return Err(self.exited_or_zombie(pid));
        }
        Ok(Memberships {
            pid,
            text: text?.into(),
            elapsed: started.elapsed(),
            pidfd,
        })
    }

    fn exited(&self, pid: i32, pidfd: &Pidfd) -> Result<bool, ResolveError> {
        pidfd.exited().map_err(|source| ResolveError::Io {
            pid,
            op: "poll(pidfd)",
            source,
        })
    }

    /// `(program, run count, total run time)` of the kernel programs (benchmarks; counts only
    /// while BPF run-time stats are enabled).
    pub fn program_run_stats(&self) -> Vec<(String, u64, Duration)> {
        self.kernel
            .as_ref()
            .map(|k| k.program_run_stats())
            .unwrap_or_default()
    }

    /// Everything that depends on the process, done before the one liveness check.
    fn lookup(&self, pid: i32, pidfd: &Pidfd) -> Result<(u64, Source, Arc<str>), ResolveError> {
        let (id, source, path) = match self.procs.as_ref().and_then(|m| m.get(pid as u32)) {
            Some(e) if e.flags & flags::KTHREAD != 0 => {
                return Err(ResolveError::KernelThread(pid));
            }
            Some(e) if e.flags & flags::UNKNOWN == 0 => {
                (e.cgroup_id, Source::Ebpf(origin_of(e.origin)), None)
            }
            _ => self.fallback(pid, pidfd)?,
        };
        if id == ROOT_CGROUP_ID {
            return Ok((id, source, "/".into()));
        }
        let path = match path {
            Some(p) => p,
            None => self.path_of(pid, id)?,
        };
        Ok((id, source, path))
    }

    /// cgroup id → path by file handle; without CAP_DAC_READ_SEARCH, from `/proc/<pid>/cgroup`
    /// checked against the id.
    fn path_of(&self, pid: i32, id: u64) -> Result<Arc<str>, ResolveError> {
        match self.host.cgroup_path_of(id) {
            Ok(p) => Ok(p),
            Err(CgroupFsError::Resolve { source, .. })
                if source.raw_os_error() == Some(libc::EPERM) =>
            {
                let path = self.read_v2_path(pid)?;
                match self.host.cgroup_id_of(&path) {
                    Ok(same) if same == id => Ok(path.into()),
                    // Moved meanwhile: the id we hold is no longer its cgroup.
                    Ok(_) | Err(_) => Err(ResolveError::CgroupChanged(pid)),
                }
            }
            Err(source) => Err(ResolveError::Cgroup { pid, source }),
        }
    }

    fn fallback(
        &self,
        pid: i32,
        pidfd: &Pidfd,
    ) -> Result<(u64, Source, Option<Arc<str>>), ResolveError> {
        if self.pidfd_info {
            match pidfd.cgroup_id() {
                Ok(Some(id)) => return Ok((id, Source::PidfdInfo, None)),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    return Err(ResolveError::Exited(pid));
                }
                // No cgroup id or an unexpected error: /proc can still answer.
                Ok(None) | Err(_) => {}
            }
        }
        let path = self.read_v2_path(pid)?;
        let id = self.id_of(&path).map_err(|source| match source {
            CgroupFsError::OutsideMount { .. } if path.starts_with("/..") => {
                ResolveError::OutsideNamespace {
                    pid,
                    path: path.clone(),
                }
            }
            // The cgroup was removed between the read and the stat: the process moved or died.
            CgroupFsError::Stat { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ResolveError::Exited(pid)
            }
            source => ResolveError::Cgroup { pid, source },
        })?;
        Ok((id, Source::ProcCgroup, Some(path.into())))
    }

    /// Writes entries for processes that existed before the programs were attached.
    /// Keys are the numbers `/proc` lists: `start` checked that this procfs is of our PID
    /// namespace and loads the programs only in the initial one, so every seeded key is a
    /// tgid the kernel programs maintain (and delete when that process exits).
    /// Each seed is read under a pidfd, never overwrites a kernel-written entry, is flagged
    /// unknown if the process's cgroup changed during the seed, and is withdrawn if the
    /// process exited meanwhile (so its number cannot inherit it).
    fn seed(&self) {
        let Some(procs) = &self.procs else { return };
        let Ok(pids) = self.host.pids() else {
            log::warn!(
                "cannot list /proc: processes started before attestor are answered by the fallback"
            );
            return;
        };
        let (mut seeded, mut skipped) = (0usize, 0usize);
        for pid in pids {
            let Ok(pidfd) = self.host.pidfd_open(pid) else {
                continue;
            };
            if self.check_process(pid).is_err() {
                continue; // kernel threads, zombies: never attested
            }
            let Ok(path) = self.read_v2_path(pid) else {
                continue;
            };
            let Ok(id) = self.id_of(&path) else {
                continue;
            };
            let ours = ProcEntry {
                cgroup_id: id,
                origin: origin::SEED,
                flags: 0,
            };
            if !procs.insert_new(pid as u32, ours) {
                skipped += 1; // the kernel already wrote one (or the map is full)
                continue;
            }
            seeded += 1;
            if self.read_v2_path(pid).ok().as_deref() != Some(path.as_str()) {
                // Moved during the seed: the id we stored may be stale. Flag it, or drop it
                // if it is gone already (the kernel's exit program removed it).
                let unknown = ProcEntry {
                    flags: flags::UNKNOWN,
                    ..ours
                };
                if !procs.replace(pid as u32, unknown) {
                    procs.remove(pid as u32);
                }
            }
            if pidfd.exited().unwrap_or(true) {
                procs.remove_if(pid as u32, &ours);
            }
        }
        log::debug!(
            "seeded {seeded} processes from /proc ({skipped} already tracked by the kernel)"
        );
    }

    fn open_pidfd(&self, pid: i32) -> Result<Pidfd, ResolveError> {
        self.host
            .pidfd_open(pid)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ESRCH) => ResolveError::NoSuchProcess(pid),
                // pidfd_open refuses non-leader threads with EINVAL (ENOENT on some kernels).
                Some(libc::EINVAL) | Some(libc::ENOENT) => {
                    if self.host.proc_exists(pid) {
                        ResolveError::NotALeader(pid)
                    } else {
                        ResolveError::NoSuchProcess(pid)
                    }
                }
                _ => ResolveError::Io {
                    pid,
                    op: "pidfd_open",
                    source,
                },
            })
    }

    /// The process behind a pidfd has exited: still a zombie (nothing to attest), or already
    /// reaped (it exited while we were resolving it).
    fn exited_or_zombie(&self, pid: i32) -> ResolveError {
        match self
            .host
            .read_proc(pid, ProcFile::Stat)
            .ok()
            .as_deref()
            .and_then(procfs::parse_stat)
        {
            Some(info) if info.state == 'Z' || info.state == 'X' => ResolveError::Zombie(pid),
            _ => ResolveError::Exited(pid),
        }
    }

    /// Kernel threads and zombies are refused with their own errors.
    fn check_process(&self, pid: i32) -> Result<(), ResolveError> {
        let text = self.read_proc(pid, ProcFile::Stat, "read /proc/<pid>/stat")?;
        let info = procfs::parse_stat(&text).ok_or_else(|| ResolveError::Io {
            pid,
            op: "parse /proc/<pid>/stat",
            source: io::Error::new(io::ErrorKind::InvalidData, "unexpected format"),
        })?;
        if info.kernel_thread {
            return Err(ResolveError::KernelThread(pid));
        }
        if info.state == 'Z' || info.state == 'X' {
            return Err(ResolveError::Zombie(pid));
        }
        Ok(())
    }

    /// `/proc/<pid>/cgroup` (kernel-generated: one short line per hierarchy).
    fn read_cgroup_file(&self, pid: i32) -> Result<String, ResolveError> {
        self.read_proc(pid, ProcFile::Cgroup, "read /proc/<pid>/cgroup")
    }

    /// A `/proc/<pid>` file; gone means the process exited (its directory went with it).
    fn read_proc(
        &self,
        pid: i32,
        file: ProcFile,
        op: &'static str,
    ) -> Result<String, ResolveError> {
        self.host
            .read_proc(pid, file)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => ResolveError::Exited(pid),
                _ => ResolveError::Io { pid, op, source },
            })
    }

    fn read_v2_path(&self, pid: i32) -> Result<String, ResolveError> {
        let text = self.read_cgroup_file(pid)?;
        procfs::v2_path(&text)
            .map(str::to_string)
            .ok_or_else(|| ResolveError::NoV2Line {
                pid,
                path: format!("/proc/{pid}/cgroup"),
            })
    }
}

/// Our PID namespace; one that cannot be read counts as nested (the safe answer: no map).
fn pid_view() -> procfs::PidView {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(m) => procfs::pid_view(m.ino()),
        Err(_) => procfs::PidView::Nested { ns_inode: 0 },
    }
}

fn origin_of(o: u32) -> EntryOrigin {
    match o {
        origin::FORK => EntryOrigin::Fork,
        origin::EXEC => EntryOrigin::Exec,
        origin::ATTACH => EntryOrigin::Attach,
        _ => EntryOrigin::Seed,
    }
}

fn checked_pid(pid: i64) -> Result<i32, ResolveError> {
    match pid {
        0 => Err(ResolveError::ZeroPid),
        p if p < 0 => Err(ResolveError::NegativePid(p)),
        p => i32::try_from(p).map_err(|_| ResolveError::PidOutOfRange(p)),
    }
}

/// Whether `PIDFD_GET_INFO` answers with a cgroup id on this kernel (6.13+).
fn probe_pidfd_info() -> bool {
    let Ok(fd) = sys::pidfd_open(std::process::id() as i32) else {
        return false;
    };
    matches!(sys::pidfd_cgroup_id(fd.as_fd()), Ok(Some(_)))
}
