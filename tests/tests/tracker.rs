//! The PID tracker on the real kernel: real eBPF programs, real cgroups, real processes.
//! Every test builds its own kubelet-style cgroup sandbox, removed on drop (also on panic).

use std::path::Path;
use std::time::Duration;

use attestor::tracker::{EntryOrigin, ResolveError, Source, Tracker, TrackerMode, TrackerOptions};
use attestor_common::{flags, origin};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::{
    cgroup_id, children, comm, ebpf_tracker, kill_and_reap, reap, require_root, wait_for,
};

const POD: &str = "0b6f8a2c-93d1-4e77-b2f5-1c9d0e8a7f61";
const CID_A: &str = "3f2a9c1b7d5e4f608a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5";
const CID_B: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d";

/// Asserts that `pid` resolves to exactly `dir` (id and hierarchy path).
fn assert_resolves_to(tracker: &Tracker, sandbox: &Sandbox, pid: i32, dir: &Path) -> Source {
    let r = tracker
        .resolve(pid as i64)
        .unwrap_or_else(|e| panic!("resolve({pid}): {e}"));
    assert_eq!(r.cgroup_id, cgroup_id(dir), "cgroup id of pid {pid}");
    assert_eq!(
        &*r.cgroup_path,
        sandbox.hierarchy_path(dir),
        "cgroup path of pid {pid}"
    );
    assert_eq!(r.pid, pid);
    r.source
}

fn sleeper(dir: &Path) -> i32 {
    spawn_into_cgroup(dir, Some(&["/bin/sleep", "60"]), None).expect("clone3 into cgroup")
}

#[test]
fn process_started_before_the_tracker_is_seeded() {
    if !require_root() {
        return;
    }
    let cgfs = attestor::cgroupfs::CgroupFs::discover().expect("cgroup2 mount");
    let sandbox = Sandbox::new(&cgfs, "seed").expect("sandbox");
    let dir = sandbox
        .container(Layout::SystemdContainerd, POD, CID_A)
        .expect("container cgroup");
    let pid = sleeper(&dir);
    let tracker = ebpf_tracker();
    let source = assert_resolves_to(&tracker, &sandbox, pid, &dir);
    assert_eq!(source, Source::Ebpf(EntryOrigin::Seed));
    kill_and_reap(pid);
}

#[test]
fn process_started_after_the_tracker_is_recorded_at_exec() {
    if !require_root() {
        return;
    }
    let tracker = ebpf_tracker();
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "exec").expect("sandbox");
    let dir = sandbox
        .container(Layout::SystemdContainerd, POD, CID_A)
        .expect("container cgroup");
    let pid = sleeper(&dir);
    // /proc shows the new comm a moment before sched_process_exec fires (the comm is set in
    // begin_new_exec, the tracepoint after the binary loaded): wait for the exec entry.
    let entry = wait_for(Duration::from_secs(5), || {
        tracker
            .map_entry(pid as u32)
            .filter(|e| e.origin == origin::EXEC)
    })
    .expect("the exec tracepoint wrote the entry");
    assert_eq!(entry.cgroup_id, cgroup_id(&dir));
    let source = assert_resolves_to(&tracker, &sandbox, pid, &dir);
    assert_eq!(source, Source::Ebpf(EntryOrigin::Exec));
    kill_and_reap(pid);
}

#[test]
fn clone3_into_another_cgroup_records_the_childs_cgroup_at_fork() {
    if !require_root() {
        return;
    }
    let tracker = ebpf_tracker();
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "clone3").expect("sandbox");
    let dir = sandbox
        .container(Layout::Cgroupfs, POD, CID_A)
        .expect("container cgroup");
    // The child never execs: only the fork program saw it. Its parent (this test) is in
    // another cgroup, so a tracker that recorded the parent's cgroup would be wrong here.
    let pid = spawn_into_cgroup(&dir, None, None).expect("clone3 into cgroup");
    let entry = tracker.map_entry(pid as u32).expect("fork wrote an entry");
    assert_eq!(entry.origin, origin::FORK);
    assert_eq!(entry.flags, 0);
    assert_eq!(entry.cgroup_id, cgroup_id(&dir));
    let source = assert_resolves_to(&tracker, &sandbox, pid, &dir);
    assert_eq!(source, Source::Ebpf(EntryOrigin::Fork));
    kill_and_reap(pid);
}

#[test]
fn forked_child_without_exec_inherits_the_container() {
    if !require_root() {
        return;
    }
    let tracker = ebpf_tracker();
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "fork").expect("sandbox");
    let dir = sandbox
        .container(Layout::SystemdContainerd, POD, CID_A)
        .expect("container cgroup");
    // `( … ) &` makes the shell fork a subshell that does not exec.
    let sh = spawn_into_cgroup(
        &dir,
        Some(&["/bin/sh", "-c", "( while :; do sleep 1; done ) & wait"]),
        None,
    )
    .expect("spawn shell");
    let subshell = wait_for(Duration::from_secs(5), || {
        children(sh)
            .into_iter()
            .find(|c| comm(*c).as_deref() == Some("sh"))
    })
    .expect("subshell forked");
    // A child shows in /proc a moment before `task_newtask` (the end of copy_process) runs;
    // until then resolve() would answer from the fallback.
    let entry = wait_for(Duration::from_secs(5), || {
        tracker.map_entry(subshell as u32)
    })
    .expect("entry for the subshell");
    assert_eq!(entry.origin, origin::FORK, "the subshell never exec'd");
    assert_eq!(
        assert_resolves_to(&tracker, &sandbox, subshell, &dir),
        Source::Ebpf(EntryOrigin::Fork)
    );
    assert_resolves_to(&tracker, &sandbox, sh, &dir);
    kill_and_reap(subshell);
    kill_and_reap(sh);
}

#[test]
fn threads_are_not_processes() {
    if !require_root() {
        return;
    }
    let tracker = ebpf_tracker();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        tx.send(tid).expect("send tid");
        let _ = done_rx.recv();
    });
    let tid = rx.recv().expect("thread id");
    let me = std::process::id() as i32;
    assert_ne!(tid, me);
    assert!(
        tracker.map_entry(tid as u32).is_none(),
        "threads get no map entry"
    );
    match tracker.resolve(tid as i64) {
        Err(ResolveError::NotALeader(t)) => assert_eq!(t, tid),
        other => panic!("resolve(thread id) = {other:?}, want NotALeader"),
    }
    // The process itself still resolves, to the cgroup /proc reports for it.
    let proc_path = std::fs::read_to_string("/proc/self/cgroup").expect("read own cgroup");
    let v2 = proc_path
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("0:: line");
    match tracker.resolve(me as i64) {
        Ok(mine) => assert_eq!(&*mine.cgroup_path, v2),
        Err(ResolveError::RootCgroup(p)) => assert_eq!((p, v2), (me, "/")),
        Err(e) => panic!("resolve(self): {e}"),
    }
    done_tx.send(()).expect("release thread");
    handle.join().expect("thread ends");
}

#[test]
fn moved_process_follows_its_cgroup() {
    if !require_root() {
        return;
    }
    let tracker = ebpf_tracker();
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "move").expect("sandbox");
    let a = sandbox
        .container(Layout::SystemdContainerd, POD, CID_A)
        .expect("cgroup a");
    let b = sandbox
        .container(Layout::SystemdContainerd, POD, CID_B)
        .expect("cgroup b");
    let pid = sleeper(&a);
    wait_for(Duration::from_secs(5), || {
        (comm(pid).as_deref() == Some("sleep")).then_some(())
    })
    .expect("exec");
    assert_resolves_to(&tracker, &sandbox, pid, &a);
    Sandbox::move_process(&b, pid).expect("move to b");
    assert_eq!(
        assert_resolves_to(&tracker, &sandbox, pid, &b),
        Source::Ebpf(EntryOrigin::Attach)
    );
    Sandbox::move_process(&a, pid).expect("move back to a");
    assert_resolves_to(&tracker, &sandbox, pid, &a);
    kill_and_reap(pid);
}

#[test]
fn exit_removes_the_entry() {
    if !require_root() {
        return;
    }
    let tracker = ebpf_tracker();
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "exit").expect("sandbox");
    let dir = sandbox
        .container(Layout::Cgroupfs, POD, CID_A)
        .expect("cgroup");
    let pid = spawn_into_cgroup(&dir, Some(&["/bin/true"]), None).expect("spawn true");
    reap(pid);
    assert!(
        tracker.map_entry(pid as u32).is_none(),
        "entry gone after exit"
    );
    match tracker.resolve(pid as i64) {
        Err(ResolveError::NoSuchProcess(p)) => assert_eq!(p, pid),
        other => panic!("resolve(exited pid) = {other:?}"),
    }
}

/// Forced PID reuse: clone3's `set_tid` gives a new process exactly the number of one that
/// just exited, in another pod. The answer must be the new process's pod, never the old one.
#[test]
fn reused_pid_resolves_to_the_new_process() {
    if !require_root() {
        return;
    }
    let tracker = ebpf_tracker();
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "reuse").expect("sandbox");
    let old_dir = sandbox
        .container(Layout::SystemdContainerd, POD, CID_A)
        .expect("old pod");
    let new_dir = sandbox
        .container(
            Layout::SystemdContainerd,
            "77777777-8888-4999-aaaa-bbbbbbbbbbbb",
            CID_B,
        )
        .expect("new pod");
    for (i, exec) in [true, false].into_iter().enumerate() {
        let pid = sleeper(&old_dir);
        wait_for(Duration::from_secs(5), || {
            (comm(pid).as_deref() == Some("sleep")).then_some(())
        })
        .expect("exec");
        assert_resolves_to(&tracker, &sandbox, pid, &old_dir);
        kill_and_reap(pid);
        let argv: &[&str] = &["/bin/sleep", "60"];
        let again = spawn_into_cgroup(&new_dir, exec.then_some(argv), Some(pid))
            .unwrap_or_else(|e| panic!("round {i}: clone3 set_tid={pid}: {e}"));
        assert_eq!(again, pid, "the kernel gave us the same number");
        if exec {
            wait_for(Duration::from_secs(5), || {
                (comm(pid).as_deref() == Some("sleep")).then_some(())
            })
            .expect("exec");
        }
        assert_resolves_to(&tracker, &sandbox, pid, &new_dir);
        kill_and_reap(pid);
    }
}

#[test]
fn fallback_paths_give_the_same_answers() {
    if !require_root() {
        return;
    }
    let cgfs = attestor::cgroupfs::CgroupFs::discover().expect("cgroup2 mount");
    let sandbox = Sandbox::new(&cgfs, "fallback").expect("sandbox");
    let dir = sandbox
        .container(Layout::SystemdContainerd, POD, CID_A)
        .expect("cgroup");
    let pid = sleeper(&dir);
    for pidfd_info in [true, false] {
        let tracker = Tracker::start(&TrackerOptions {
            mode: TrackerMode::Procfs,
            pidfd_info,
            ..TrackerOptions::default()
        })
        .expect("procfs tracker");
        assert!(!tracker.uses_ebpf());
        assert!(
            tracker
                .fallback_reason()
                .is_some_and(|r| r.contains("procfs"))
        );
        let source = assert_resolves_to(&tracker, &sandbox, pid, &dir);
        match (pidfd_info, source) {
            (false, Source::ProcCgroup) => {}
            // PIDFD_GET_INFO exists from 6.13: either answer is right, but it must be one of them.
            (true, Source::PidfdInfo | Source::ProcCgroup) => {}
            other => panic!("unexpected source {other:?}"),
        }
    }
    kill_and_reap(pid);
}

#[test]
fn full_map_answers_unknown_and_falls_back() {
    if !require_root() {
        return;
    }
    let tracker = Tracker::start(&TrackerOptions {
        mode: TrackerMode::Ebpf,
        max_processes: 1024,
        ..TrackerOptions::default()
    })
    .expect("tracker");
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "full").expect("sandbox");
    let dir = sandbox
        .container(Layout::Cgroupfs, POD, CID_A)
        .expect("cgroup");
    // Other processes on the machine exit and free slots at any time, so refill and retry
    // until a new process found no room.
    let mut untracked = None;
    for _ in 0..50 {
        tracker.fill_map_for_test();
        let pid = sleeper(&dir);
        wait_for(Duration::from_secs(5), || {
            (comm(pid).as_deref() == Some("sleep")).then_some(())
        })
        .expect("exec");
        if tracker.map_entry(pid as u32).is_none() {
            untracked = Some(pid);
            break;
        }
        kill_and_reap(pid);
    }
    let pid = untracked.expect("a process found the map full");
    let source = assert_resolves_to(&tracker, &sandbox, pid, &dir);
    assert!(
        matches!(source, Source::PidfdInfo | Source::ProcCgroup),
        "fallback answered: {source:?}"
    );
    let (entries, max, stats) = tracker.kernel_stats().expect("ebpf in use");
    assert!(entries <= max as usize);
    assert!(
        stats.insert_failed > 0,
        "the kernel counted the refused inserts"
    );
    kill_and_reap(pid);
}

#[test]
fn bad_pids_get_distinct_errors() {
    if !require_root() {
        return;
    }
    let tracker = ebpf_tracker();
    assert!(matches!(tracker.resolve(0), Err(ResolveError::ZeroPid)));
    assert!(matches!(
        tracker.resolve(-7),
        Err(ResolveError::NegativePid(-7))
    ));
    assert!(matches!(
        tracker.resolve(1 << 40),
        Err(ResolveError::PidOutOfRange(_))
    ));
    // pid_max is at most 4194304, so this number never exists.
    assert!(matches!(
        tracker.resolve(4_194_305),
        Err(ResolveError::NoSuchProcess(4_194_305))
    ));
    // kthreadd is pid 2 on every Linux.
    assert!(matches!(
        tracker.resolve(2),
        Err(ResolveError::KernelThread(2))
    ));

    let sandbox = Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "bad").expect("sandbox");
    let dir = sandbox
        .container(Layout::Cgroupfs, POD, CID_A)
        .expect("cgroup");
    // A zombie: exited, not reaped.
    let z = spawn_into_cgroup(&dir, Some(&["/bin/true"]), None).expect("spawn");
    wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{z}/stat"))
            .ok()
            .filter(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
    })
    .expect("child became a zombie");
    assert!(matches!(tracker.resolve(z as i64), Err(ResolveError::Zombie(p)) if p == z));
    reap(z);

    // A process in the root cgroup.
    let root_pid = sleeper(&dir);
    Sandbox::move_process(
        tracker.cgroupfs().expect("cgroup2 mount").mount_point(),
        root_pid,
    )
    .expect("move to root cgroup");
    assert!(
        matches!(tracker.resolve(root_pid as i64), Err(ResolveError::RootCgroup(p)) if p == root_pid)
    );
    let entry = tracker.map_entry(root_pid as u32).expect("entry");
    assert_eq!(entry.flags & flags::UNKNOWN, 0);
    kill_and_reap(root_pid);
}
