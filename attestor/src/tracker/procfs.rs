//! Pure parsers for the `/proc/<pid>` files the tracker reads (I/O stays in the caller).

/// What `/proc/<pid>/stat` tells us about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatInfo {
    pub state: char,
    pub kernel_thread: bool,
}

/// `PF_KTHREAD` in `task_struct.flags` (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces and `)`, so the
/// fields are counted after the *last* `)`.
pub fn parse_stat(text: &str) -> Option<StatInfo> {
    let after = &text[text.rfind(')')? + 1..];
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    // fields 4..8 (ppid pgrp session tty_nr tpgid), then field 9 = flags
    let flags: u64 = it.nth(5)?.parse().ok()?;
    Some(StatInfo {
        state,
        kernel_thread: flags & PF_KTHREAD != 0,
    })
}

/// Inode number of the kernel's initial PID namespace (`PROC_PID_INIT_INO` in
/// include/linux/proc_ns.h, fixed since 3.8): `/proc/self/ns/pid` has it exactly when we run in
/// that namespace.
pub const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

/// Which PID numbers this process sees, from the inode of its `/proc/self/ns/pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidView {
    /// The kernel's initial PID namespace: our numbers are the tgids kernel programs see.
    Initial,
    /// A nested PID namespace (kind/k3d nodes, nodes that are containers, Docker-in-Docker):
    /// our numbers differ from the initial-namespace tgids the kernel programs see.
    Nested { ns_inode: u64 },
}

pub fn pid_view(ns_inode: u64) -> PidView {
    if ns_inode == INIT_PID_NS_INODE {
        PidView::Initial
    } else {
        PidView::Nested { ns_inode }
    }
}

/// Whether `/proc` is a procfs of our own PID namespace, i.e. `/proc/<n>` is the process that
/// has number `n` for us (and for the agent, whose numbers we are given). `proc_self` is what
/// the `/proc/self` link points to (`None` if it does not resolve: a procfs of a namespace we
/// are not visible in). A procfs of an ancestor namespace names us by another number.
pub fn proc_is_ours(proc_self: Option<&str>, own_pid: u32) -> bool {
    proc_self.and_then(|s| s.parse::<u32>().ok()) == Some(own_pid)
}

/// The cgroup v2 path from `/proc/<pid>/cgroup` (the `0::` line).
pub fn v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_tricky_comm() {
        let s = "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0";
        assert_eq!(
            parse_stat(s),
            Some(StatInfo {
                state: 'S',
                kernel_thread: false
            })
        );
        let k = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0";
        assert_eq!(
            parse_stat(k),
            Some(StatInfo {
                state: 'S',
                kernel_thread: true
            })
        );
        let z = "77 (defunct) Z 1 77 77 0 -1 4227084 0 0";
        assert_eq!(parse_stat(z).map(|s| s.state), Some('Z'));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn pid_namespace_views() {
        assert_eq!(pid_view(4_026_531_836), PidView::Initial);
        assert_eq!(
            pid_view(4_026_532_301),
            PidView::Nested {
                ns_inode: 4_026_532_301
            }
        );
    }

    #[test]
    fn proc_of_our_namespace() {
        assert!(proc_is_ours(Some("4242"), 4242));
        // An ancestor's procfs names us by its number for us.
        assert!(!proc_is_ours(Some("91230"), 7));
        // A procfs of a namespace we are not in: /proc/self does not resolve.
        assert!(!proc_is_ours(None, 7));
        assert!(!proc_is_ours(Some("self"), 7));
    }

    #[test]
    fn cgroup_v2_line() {
        assert_eq!(
            v2_path("12:cpu:/x\n0::/kubepods/pod1/abc\n"),
            Some("/kubepods/pod1/abc")
        );
        assert_eq!(v2_path("12:cpu:/x\n"), None);
    }
}
