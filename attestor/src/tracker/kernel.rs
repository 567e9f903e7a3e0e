//! Loading, attaching and reading the kernel programs (`attestor-ebpf`).
//!
//! Kernel compatibility table (one place; see README "Kernel support"):
//!
//! | program | type | minimum kernel | needs |
//! |---|---|---|---|
//! | `task_newtask` | tp_btf | 5.5 | vmlinux BTF (offsets of task_struct → kernfs_node.id) |
//! | `sched_process_exec` | tracepoint | 4.18 (`bpf_get_current_cgroup_id`) | tracefs |
//! | `sched_process_exit` | tracepoint | 4.7 | tracefs |
//! | `cgroup_attach_task` | tracepoint | 5.5 (u64 `dst_id`) | tracefs `format` |
//!
//! None of them is fentry/fexit/LSM, which some kernels refuse (EPERM on the development host).

use attestor_common::{PROCS_MAP, STATS_MAP, global, stat};
use aya::maps::{MapData, PerCpuArray};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};
use std::io;
use std::path::{Path, PathBuf};

use super::btf;
use super::offsets::{self, AttachOffsets, OffsetError, TaskOffsets, VMLINUX_BTF};
use super::procmap::AyaProcMap;
use crate::sys;

/// The BTF type a `tp_btf/task_newtask` program attaches by.
const NEWTASK_TYPEDEF: &str = "btf_trace_task_newtask";

/// The object built by `cargo xtask build-ebpf` (see attestor/build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/attestor-ebpf.o"));

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    #[error(
        "this binary was built without the eBPF object (ATTESTOR_SKIP_EBPF); rebuild after `cargo xtask build-ebpf`"
    )]
    NotEmbedded,
    #[error(
        "kernel BTF is not available ({VMLINUX_BTF} missing): the kernel needs CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf,
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0} \
         (mount it yourself: mount -t tracefs tracefs /sys/kernel/tracing)"
    )]
    Tracefs(io::Error),
    #[error("loading the eBPF object failed: {0} (needs root or CAP_BPF + CAP_PERFMON)")]
    Load(#[source] aya::EbpfError),
    #[error("program `{name}` {step} failed: {source}")]
    Program {
        name: &'static str,
        step: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map `{name}` missing or of the wrong type: {message}")]
    Map { name: &'static str, message: String },
    /// The object embedded at build time lacks a program this binary attaches: the two were
    /// built from different sources.
    #[error(
        "program `{name}` is not in the embedded eBPF object: the object is from another \
         version of attestor-ebpf than this binary; rebuild it with `cargo xtask build-ebpf`, \
         then rebuild attestor"
    )]
    MissingProgram { name: &'static str },
    #[error("building the BTF for the tp_btf attach failed: {0}")]
    Btf(#[source] aya::BtfError),
    /// The kernel programs key processes by their tgid in the initial PID namespace; the
    /// agent hands us numbers of its own namespace. Mixing the two would answer one process's
    /// number with another process's cgroup, so the map is not used at all.
    #[error(
        "attestor runs in a nested PID namespace (pid:[{ns_inode}], not the kernel's initial \
         one: a kind/k3d node, a node that is a container, Docker-in-Docker); kernel programs see \
         initial-namespace PIDs, not the PIDs the agent sends"
    )]
    NestedPidNamespace { ns_inode: u64 },
}

/// Where tracefs lives (mounted by us if absent).
fn tracefs_root() -> Result<PathBuf, KernelError> {
    for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(root).join("events").is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    sys::mount_tracefs("/sys/kernel/tracing").map_err(KernelError::Tracefs)?;
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// The loaded and attached programs plus the counters userspace reads. The process map is
/// handed out by [`KernelTracker::load`] as an [`AyaProcMap`] (the tracker's map seam).
pub struct KernelTracker {
    // Dropping `Ebpf` detaches the programs and frees the maps.
    ebpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    pub max_entries: u32,
    pub task_offsets: TaskOffsets,
    pub attach_offsets: AttachOffsets,
}

impl std::fmt::Debug for KernelTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelTracker")
            .field("max_entries", &self.max_entries)
            .field("task_offsets", &self.task_offsets)
            .field("attach_offsets", &self.attach_offsets)
            .finish()
    }
}

/// Counters from the STATS map, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub insert_failed: u64,
    pub marked_unknown: u64,
    pub read_failed: u64,
}

impl KernelTracker {
    /// Loads and attaches everything; returns the programs and the process map.
    /// `log_level`: aya-log level for kernel debug records (0 = off; the programs then pay
    /// one global load per log site, nothing more).
    pub(crate) fn load(max_entries: u32, log_level: u8) -> Result<(Self, AyaProcMap), KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NotEmbedded);
        }
        let btf_path = Path::new(VMLINUX_BTF);
        if !btf_path.exists() {
            return Err(KernelError::NoBtf);
        }
        let started = std::time::Instant::now();
        // The one parse of the kernel BTF that is ours to choose: our reader answers both the
        // struct offsets and the id `task_newtask` attaches by (see the loader below).
        let kernel_btf = offsets::read_btf(btf_path)?;
        let task_offsets = TaskOffsets::from_btf(&kernel_btf)?;
        let newtask_id = kernel_btf.typedef_id(NEWTASK_TYPEDEF);
        drop(kernel_btf);
        let offsets_done = started.elapsed();
        let tracefs = tracefs_root()?;
        let attach_offsets = AttachOffsets::from_format_file(
            &tracefs.join("events/cgroup/cgroup_attach_task/format"),
        )?;
        // Only matters before 5.11 (memcg accounting replaced the rlimit); harmless after.
        let _ = sys::raise_memlock_rlimit();

        // aya 0.14's `EbpfLoader::new()` always parses /sys/kernel/btf/vmlinux itself (for CO-RE
        // relocations) and keeps it private: that parse cannot be skipped or shared. So it is
        // the only aya parse: the loader keeps its own (no `.btf(..)`), and the tp_btf attach,
        // which needs nothing from the kernel BTF but one typedef's id, gets a stub BTF built
        // from the id our reader found above (`btf::attach_only_blob`). Before, a second full
        // aya parse (`Btf::from_sys_fs()`) served the attach: ~3 parses, now ~1 + ours.
        let attach_btf = Btf::parse(
            &btf::attach_only_blob(newtask_id, NEWTASK_TYPEDEF),
            Endianness::default(),
        )
        .map_err(KernelError::Btf)?;
        let btf_done = started.elapsed();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(PROCS_MAP, max_entries)
            .override_global(global::OFF_TASK_FLAGS, &task_offsets.task_flags, true)
            .override_global(global::OFF_TASK_TGID, &task_offsets.task_tgid, true)
            .override_global(global::OFF_TASK_CGROUPS, &task_offsets.task_cgroups, true)
            .override_global(
                global::OFF_CSS_SET_DFL_CGRP,
                &task_offsets.css_set_dfl_cgrp,
                true,
            )
            .override_global(global::OFF_CGROUP_KN, &task_offsets.cgroup_kn, true)
            .override_global(
                global::OFF_KERNFS_NODE_ID,
                &task_offsets.kernfs_node_id,
                true,
            )
            .override_global(global::OFF_ATTACH_DST_ROOT, &attach_offsets.dst_root, true)
            .override_global(global::OFF_ATTACH_DST_ID, &attach_offsets.dst_id, true)
            .override_global(global::OFF_ATTACH_PID, &attach_offsets.pid, true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(OBJECT)
            .map_err(KernelError::Load)?;

        let load_done = started.elapsed();
        if log_level > 0 {
            start_log_pump(&mut ebpf);
        }

        // Exit and attach first: from the moment any entry can be written, removals and
        // migrations must already be seen.
        attach_tracepoint(&mut ebpf, "sched_process_exit", "sched")?;
        attach_tracepoint(&mut ebpf, "cgroup_attach_task", "cgroup")?;
        attach_tracepoint(&mut ebpf, "sched_process_exec", "sched")?;
        let prog: &mut BtfTracePoint = program(&mut ebpf, "task_newtask")?;
        prog.load("task_newtask", &attach_btf)
            .map_err(|source| KernelError::Program {
                name: "task_newtask",
                step: "load",
                source,
            })?;
        prog.attach().map_err(|source| KernelError::Program {
            name: "task_newtask",
            step: "attach",
            source,
        })?;

        log::debug!(
            "eBPF start-up: BTF offsets {offsets_done:?}, attach BTF built at {btf_done:?}, \
             object loaded (aya parses the kernel BTF) at {load_done:?}, programs attached at {:?}",
            started.elapsed()
        );
        let procs = ebpf.take_map(PROCS_MAP).ok_or(KernelError::Map {
            name: PROCS_MAP,
            message: "not in the object".into(),
        })?;
        let procs = AyaProcMap::new(procs).map_err(|e| KernelError::Map {
            name: PROCS_MAP,
            message: e.to_string(),
        })?;
        let stats = ebpf.take_map(STATS_MAP).ok_or(KernelError::Map {
            name: STATS_MAP,
            message: "not in the object".into(),
        })?;
        let stats: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(stats).map_err(|e| KernelError::Map {
                name: STATS_MAP,
                message: e.to_string(),
            })?;
        let kernel = KernelTracker {
            ebpf,
            stats,
            max_entries,
            task_offsets,
            attach_offsets,
        };
        Ok((kernel, procs))
    }

    /// `(program, run count, total run time)` for each attached program; the kernel only
    /// counts while `aya::sys::enable_stats(Stats::RunTime)` is held (benchmarks).
    pub fn program_run_stats(&self) -> Vec<(String, u64, std::time::Duration)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_string(), info.run_count(), info.run_time()))
            })
            .collect()
    }

    pub fn stats(&self) -> KernelStats {
        let sum = |i: u32| -> u64 {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().copied().sum())
                .unwrap_or(0)
        };
        KernelStats {
            insert_failed: sum(stat::INSERT_FAILED),
            marked_unknown: sum(stat::MARKED_UNKNOWN),
            read_failed: sum(stat::READ_FAILED),
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingProgram { name })?;
    prog.try_into().map_err(|source| KernelError::Program {
        name,
        step: "type check",
        source,
    })
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &'static str,
) -> Result<(), KernelError> {
    let prog: &mut TracePoint = program(ebpf, name)?;
    prog.load().map_err(|source| KernelError::Program {
        name,
        step: "load",
        source,
    })?;
    prog.attach(category, name)
        .map_err(|source| KernelError::Program {
            name,
            step: "attach",
            source,
        })?;
    Ok(())
}

/// Forwards kernel aya-log records to the `log` crate from a background thread.
fn start_log_pump(ebpf: &mut Ebpf) {
    let mut logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("kernel debug logs unavailable: {e}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("ebpf-log".into())
        .spawn(move || {
            use std::os::fd::AsRawFd;
            let fd = logger.as_raw_fd();
            loop {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // A timeout, not an infinite wait, so the thread notices when the fd is closed.
                if crate::sys::poll_readable(&mut pfd, 1000).is_err() {
                    return;
                }
                logger.flush();
            }
        });
    if let Err(e) = spawned {
        log::warn!("kernel debug logs unavailable: cannot start thread: {e}");
    }
}
