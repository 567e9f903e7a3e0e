//! New processes: `tp_btf/task_newtask`.
//!
//! Kernel prototype (include/trace/events/task.h, stable since 3.x; BTF tracepoints need 5.5):
//! `TRACE_EVENT(task_newtask, TP_PROTO(struct task_struct *task, u64 clone_flags), …)`
//! (`unsigned long clone_flags` before 6.17; 8 bytes on x86-64 either way).
//!
//! It fires in the parent at the end of `copy_process`, after `cgroup_post_fork`, before the
//! child first runs. We read the child's own cgroup (`task->cgroups->dfl_cgrp->kn->id`) rather
//! than the parent's `bpf_get_current_cgroup_id()`: the two differ for
//! `clone3(CLONE_INTO_CGROUP)` and when the parent is migrated right after `cgroup_post_fork`.
//! Offsets come from vmlinux BTF through load-time globals (Rust eBPF has no CO-RE).
//! Threads (`CLONE_THREAD`) are skipped: the map is keyed by tgid.

use attestor_common::{flags, origin, stat};
use aya_ebpf::{
    Global, helpers::bpf_probe_read_kernel, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::maps;

#[unsafe(no_mangle)]
static OFF_TASK_FLAGS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_TGID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_CGROUPS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_CSS_SET_DFL_CGRP: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_KERNFS_NODE_ID: Global<u32> = Global::new(0);

const CLONE_THREAD: u64 = 0x0001_0000;
/// include/linux/sched.h; stable since 2.6.
const PF_KTHREAD: u32 = 0x0020_0000;

#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask(ctx: BtfTracePointContext) -> i32 {
    try_task_newtask(&ctx);
    0
}

#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-safe path; a bad pointer
    // yields an error, never a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
}

/// `task->cgroups->dfl_cgrp->kn->id`.
#[inline(always)]
fn cgroup_id_of(task: *const u8) -> Result<u64, i32> {
    let css_set: *const u8 = read(task, OFF_TASK_CGROUPS.load())?;
    let cgrp: *const u8 = read(css_set, OFF_CSS_SET_DFL_CGRP.load())?;
    let kn: *const u8 = read(cgrp, OFF_CGROUP_KN.load())?;
    read(kn, OFF_KERNFS_NODE_ID.load())
}

fn try_task_newtask(ctx: &BtfTracePointContext) {
    let task: *const u8 = ctx.arg(0);
    let clone_flags: u64 = ctx.arg(1);
    if clone_flags & CLONE_THREAD != 0 {
        return;
    }
    let Ok(tgid) = read::<i32>(task, OFF_TASK_TGID.load()) else {
        maps::count(stat::READ_FAILED);
        return;
    };
    let tgid = tgid as u32;
    let Ok(cgroup_id) = cgroup_id_of(task) else {
        // No value rather than a guessed one; also drop anything a seed may have left.
        maps::forget(tgid);
        maps::count(stat::READ_FAILED);
        return;
    };
    // Kernel threads are marked so userspace refuses them without reading /proc.
    let task_flags = read::<u32>(task, OFF_TASK_FLAGS.load()).unwrap_or(0);
    let entry_flags = if task_flags & PF_KTHREAD != 0 {
        flags::KTHREAD
    } else {
        0
    };
    if !maps::record(tgid, cgroup_id, origin::FORK, entry_flags) {
        return;
    }
    // Second read: see the crate doc for why this closes the migration race.
    match cgroup_id_of(task) {
        Ok(again) if again == cgroup_id => {}
        _ => {
            maps::mark_unknown(tgid, cgroup_id, origin::FORK);
            aya_log_ebpf::debug!(ctx, "fork: tgid {} changed cgroup during tracking", tgid);
        }
    }
}
