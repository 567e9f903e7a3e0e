//! The maps (names shared with userspace through `attestor_common::{PROCS_MAP, STATS_MAP}`)
//! and the one place that writes PROCS.

use attestor_common::{DEFAULT_MAX_PROCESSES, ProcEntry, flags, stat};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};

/// tgid → ProcEntry. Userspace resizes it at load (`tracker_max_processes`).
/// The static's name must equal `attestor_common::PROCS_MAP`.
#[map]
pub static PROCS: HashMap<u32, ProcEntry> = HashMap::with_max_entries(DEFAULT_MAX_PROCESSES, 0);

/// Counters, see `attestor_common::stat`. Per-CPU so no atomics are needed.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

const BPF_ANY: u64 = 0;
const BPF_EXIST: u64 = 2;

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, this program is the only writer on this CPU right now.
        unsafe { *p += 1 };
    }
}

/// Stores `cgroup_id` for `tgid`. If the map refuses (full), removes any old value so the
/// answer for this tgid becomes "unknown" rather than stale.
#[inline(always)]
pub fn record(tgid: u32, cgroup_id: u64, origin: u32, entry_flags: u32) -> bool {
    let entry = ProcEntry {
        cgroup_id,
        origin,
        flags: entry_flags,
    };
    if PROCS.insert(tgid, entry, BPF_ANY).is_ok() {
        return true;
    }
    let _ = PROCS.remove(tgid);
    count(stat::INSERT_FAILED);
    false
}

/// Overwrites an existing entry (only if one exists): used for migrations, where the moved
/// pid may be a thread we do not track.
#[inline(always)]
pub fn update_existing(tgid: u32, cgroup_id: u64, origin: u32) {
    let entry = ProcEntry {
        cgroup_id,
        origin,
        flags: 0,
    };
    // -ENOENT (not tracked) is the common, harmless outcome.
    let _ = PROCS.insert(tgid, entry, BPF_EXIST);
}

/// The cgroup changed while we wrote: flag the entry so userspace does not trust it.
#[inline(always)]
pub fn mark_unknown(tgid: u32, cgroup_id: u64, origin: u32) {
    let entry = ProcEntry {
        cgroup_id,
        origin,
        flags: flags::UNKNOWN,
    };
    if PROCS.insert(tgid, entry, BPF_EXIST).is_err() {
        let _ = PROCS.remove(tgid);
    }
    count(stat::MARKED_UNKNOWN);
}

pub fn forget(tgid: u32) {
    let _ = PROCS.remove(tgid);
}
