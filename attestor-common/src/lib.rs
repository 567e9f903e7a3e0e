//! Types and names shared by the kernel programs (`attestor-ebpf`) and userspace (`attestor`).
//!
//! Everything the two sides must agree on is declared here once: the map value layout, the
//! map and global names, and the meaning of each flag. The `user` feature adds `aya::Pod`.
#![no_std]
// The one `unsafe` here is the `aya::Pod` promise below; the compiler refuses any other.
#![deny(unsafe_code)]

/// Name of the `HashMap<u32 tgid, ProcEntry>` that holds one entry per live process.
/// (The eBPF side must name its static exactly this; a userspace test checks the object.)
pub const PROCS_MAP: &str = "PROCS";
/// Name of the `PerCpuArray<u64>` of counters indexed by the `STAT_*` constants.
pub const STATS_MAP: &str = "STATS";
/// Default and bounds for the PROCS map size (entries).
pub const DEFAULT_MAX_PROCESSES: u32 = 65_536;
/// The largest PROCS map userspace asks for: the kernel's `PID_MAX_LIMIT` (4M processes,
/// ≈64 MiB of map), so a full map is always a configuration choice.
pub const MAX_PROCESSES_LIMIT: u32 = 4_194_304;

/// How an entry was written.
pub mod origin {
    /// `task_newtask`: the child's own cgroup read from its `task_struct` at fork/clone.
    pub const FORK: u32 = 1;
    /// `sched_process_exec`: the exec'ing task's current cgroup.
    pub const EXEC: u32 = 2;
    /// `cgroup_attach_task`: the process was moved (write to `cgroup.procs`).
    pub const ATTACH: u32 = 3;
    /// Written by userspace at start for processes that already existed.
    pub const SEED: u32 = 4;
}

/// `ProcEntry::flags` bits.
pub mod flags {
    /// The writer saw the cgroup change while it wrote the entry, so the value may be stale:
    /// userspace must not trust it and asks a fallback source instead.
    pub const UNKNOWN: u32 = 1;
    /// The process is a kernel thread (`PF_KTHREAD`): never a workload.
    pub const KTHREAD: u32 = 2;
}

/// Indexes into the STATS per-CPU array.
pub mod stat {
    /// An insert into PROCS failed (map full): that process has no entry ("unknown").
    pub const INSERT_FAILED: u32 = 0;
    /// An entry was marked `flags::UNKNOWN` because its cgroup changed during the write.
    pub const MARKED_UNKNOWN: u32 = 1;
    /// A kernel memory read failed (the child's cgroup could not be read at fork).
    pub const READ_FAILED: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// Names of the load-time globals (`aya_ebpf::Global`) that userspace fills in from BTF and
/// tracefs, so no kernel struct or tracepoint offset is compiled in.
pub mod global {
    /// `offsetof(struct task_struct, flags)` (u32 `PF_*` bits).
    pub const OFF_TASK_FLAGS: &str = "OFF_TASK_FLAGS";
    /// `offsetof(struct task_struct, tgid)`.
    pub const OFF_TASK_TGID: &str = "OFF_TASK_TGID";
    /// `offsetof(struct task_struct, cgroups)` (a `struct css_set *`).
    pub const OFF_TASK_CGROUPS: &str = "OFF_TASK_CGROUPS";
    /// `offsetof(struct css_set, dfl_cgrp)` (the cgroup v2 cgroup).
    pub const OFF_CSS_SET_DFL_CGRP: &str = "OFF_CSS_SET_DFL_CGRP";
    /// `offsetof(struct cgroup, kn)`.
    pub const OFF_CGROUP_KN: &str = "OFF_CGROUP_KN";
    /// `offsetof(struct kernfs_node, id)` (a u64 since 5.5: the cgroup id).
    pub const OFF_KERNFS_NODE_ID: &str = "OFF_KERNFS_NODE_ID";
    /// Field offsets in the `cgroup:cgroup_attach_task` record, from its tracefs `format` file.
    pub const OFF_ATTACH_DST_ROOT: &str = "OFF_ATTACH_DST_ROOT";
    pub const OFF_ATTACH_DST_ID: &str = "OFF_ATTACH_DST_ID";
    pub const OFF_ATTACH_PID: &str = "OFF_ATTACH_PID";
}

/// The value stored per process (key: tgid in the initial PID namespace).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEntry {
    /// cgroup v2 id (the kernfs node id = the cgroup directory's inode number).
    pub cgroup_id: u64,
    /// One of the `origin::*` constants.
    pub origin: u32,
    /// `flags::*` bits.
    pub flags: u32,
}

// The kernel and userspace must see the same layout.
const _: () = assert!(core::mem::size_of::<ProcEntry>() == 16);
const _: () = assert!(core::mem::align_of::<ProcEntry>() == 8);

#[cfg(feature = "user")]
#[allow(unsafe_code)]
// SAFETY: ProcEntry is #[repr(C)], Copy, has no padding (u64 + u32 + u32) and any bit pattern is valid.
unsafe impl aya::Pod for ProcEntry {}
