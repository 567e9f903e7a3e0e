//! Migration: `tracepoint/cgroup/cgroup_attach_task`.
//!
//! Kernel prototype (include/trace/events/cgroup.h, u64 `dst_id` since 5.5):
//! `DEFINE_EVENT(cgroup_migrate, cgroup_attach_task, TP_PROTO(struct cgroup *dst_cgrp,
//! const char *path, struct task_struct *task, bool threadgroup), …)`
//!
//! Runs in the *writer* of `cgroup.procs`, once per migration, for the leader of the moved
//! thread group (`pid` = tgid), after the css_set pointers changed and while the migration
//! locks are still held, so attach events arrive in migration order. `dst_root` is the
//! hierarchy id: 0 is the cgroup v2 (default) hierarchy; v1 hierarchies on hybrid nodes are
//! ignored. Field offsets come from the tracefs `format` file via load-time globals.

use attestor_common::origin;
use aya_ebpf::{Global, macros::tracepoint, programs::TracePointContext};

use crate::maps;

#[unsafe(no_mangle)]
static OFF_ATTACH_DST_ROOT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_ATTACH_DST_ID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_ATTACH_PID: Global<u32> = Global::new(0);

#[tracepoint(category = "cgroup", name = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    let _ = try_attach(&ctx);
    0
}

fn try_attach(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets come from this kernel's format file for this very tracepoint;
    // read_at goes through bpf_probe_read.
    let dst_root: i32 = unsafe { ctx.read_at(OFF_ATTACH_DST_ROOT.load() as usize)? };
    if dst_root != 0 {
        return Ok(());
    }
    // SAFETY: as above.
    let dst_id: u64 = unsafe { ctx.read_at(OFF_ATTACH_DST_ID.load() as usize)? };
    // SAFETY: as above.
    let pid: i32 = unsafe { ctx.read_at(OFF_ATTACH_PID.load() as usize)? };
    maps::update_existing(pid as u32, dst_id, origin::ATTACH);
    aya_log_ebpf::debug!(ctx, "attach: pid {} moved to cgroup {}", pid, dst_id);
    Ok(())
}
