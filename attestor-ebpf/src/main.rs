//! Kernel programs that keep `tgid → cgroup v2 id` for every process on the node.
//!
//! | hook | file | what it writes |
//! |---|---|---|
//! | `tp_btf/task_newtask` | `fork.rs` | the new process's own cgroup, read from its `task_struct` |
//! | `tracepoint/sched/sched_process_exec` | `exec.rs` | the exec'ing task's current cgroup |
//! | `tracepoint/cgroup/cgroup_attach_task` | `attach.rs` | the destination of a `cgroup.procs` move |
//! | `tracepoint/sched/sched_process_exit` | `exit.rs` | removes the entry when the leader exits |
//!
//! No kernel struct or tracepoint field offset is compiled in: they are load-time globals that
//! userspace fills in from `/sys/kernel/btf/vmlinux` and the tracefs `format` files.
//!
//! Correctness rule: an entry is either right or absent/flagged. Every writer that reads a
//! cgroup and then stores it reads the cgroup again after the store; if it changed meanwhile
//! the entry is flagged `UNKNOWN` and userspace asks a fallback source. A migration always
//! runs `cgroup_attach_task` *after* the task's css_set changed, so a change that lands after
//! the second read is followed by an attach event that overwrites our value (see `attach.rs`).
#![no_std]
#![no_main]

mod attach;
mod exec;
mod exit;
mod fork;
mod maps;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this only satisfies the linker.
    loop {}
}

/// GPL is required for `bpf_probe_read_kernel` and tracing programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
