//! Exec: `tracepoint/sched/sched_process_exec`.
//!
//! Kernel prototype (include/trace/events/sched.h, since 3.4):
//! `TRACE_EVENT(sched_process_exec, TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm), …)`
//!
//! Runs in the exec'ing task after the point of no return (and after `de_thread`, so the
//! caller is the thread-group leader). No record field is read: the task's own tgid and cgroup
//! come from helpers (`bpf_get_current_cgroup_id`, 4.18). This refreshes the value written at
//! fork with the cgroup the new program actually starts in.

use attestor_common::origin;
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_cgroup_id},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps;

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: helper without arguments, valid in tracepoint programs since 4.18.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if maps::record(tgid, cgroup_id, origin::EXEC, 0) {
        // SAFETY: as above.
        let again = unsafe { bpf_get_current_cgroup_id() };
        if again != cgroup_id {
            maps::mark_unknown(tgid, cgroup_id, origin::EXEC);
            aya_log_ebpf::debug!(&ctx, "exec: tgid {} changed cgroup during tracking", tgid);
        }
    }
    0
}
