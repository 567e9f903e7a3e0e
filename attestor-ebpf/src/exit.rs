//! Exit: `tracepoint/sched/sched_process_exit`.
//!
//! Kernel prototype (include/trace/events/sched.h, since 2.6.32):
//! `TRACE_EVENT(sched_process_exit, TP_PROTO(struct task_struct *p[, bool group_dead]), …)`
//!
//! Fires in every exiting thread. We drop the entry when the thread-group leader exits
//! (pid == tgid): after that the number may be reused. If a leader exits before its other
//! threads (`pthread_exit` in main) the process loses its entry early and is answered by the
//! fallback: "unknown", never stale. No record field is read (layouts differ across kernels).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};

use crate::maps;

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 == tgid {
        maps::forget(tgid);
    }
    0
}
