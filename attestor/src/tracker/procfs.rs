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
    fn cgroup_v2_line() {
        assert_eq!(
            v2_path("12:cpu:/x\n0::/kubepods/pod1/abc\n"),
            Some("/kubepods/pod1/abc")
        );
        assert_eq!(v2_path("12:cpu:/x\n"), None);
    }
}
