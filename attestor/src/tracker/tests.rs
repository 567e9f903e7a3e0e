//! The tracker's decisions on a scripted world (`fake.rs`): no root, no kernel programs.
//! Each test names the exact error variant or source it expects, and the races are staged
//! at the step between two of the tracker's calls where they would hurt.

use attestor_common::{ProcEntry, flags, origin};

use super::fake::{Event, Fake, Op, PidfdInfo};
use super::host::ProcFile;
use super::procmap::{ProcMap, fill_with_placeholders};
use super::{EntryOrigin, ResolveError, Source};
use crate::cgroupfs::ROOT_CGROUP_ID;

const POD_A: &str = "/kubepods.slice/pod-a/cri-containerd-aaaa.scope";
const POD_B: &str = "/kubepods.slice/pod-b/cri-containerd-bbbb.scope";

fn entry(cgroup_id: u64, origin: u32, flags: u32) -> ProcEntry {
    ProcEntry {
        cgroup_id,
        origin,
        flags,
    }
}

// ---- the map's answer ----

#[test]
fn map_entry_answers_without_reading_proc() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A).entry(100, entry(a, origin::EXEC, 0));
    let r = w.tracker(true, false).resolve(100).expect("resolved");
    assert_eq!(
        (r.cgroup_id, &*r.cgroup_path, r.source),
        (a, POD_A, Source::Ebpf(EntryOrigin::Exec))
    );
    assert_eq!(
        w.count(&Op::Read(100, ProcFile::Cgroup)),
        0,
        "{:?}",
        w.ops()
    );
    assert!(r.is_alive());
}

#[test]
fn kthread_flag_is_a_kernel_thread() {
    let w = Fake::new();
    w.kernel_thread(2)
        .entry(2, entry(ROOT_CGROUP_ID, origin::FORK, flags::KTHREAD));
    let err = w
        .tracker(true, false)
        .resolve(2)
        .expect_err("kernel thread");
    assert!(matches!(err, ResolveError::KernelThread(2)), "{err:?}");
    assert_eq!(w.count(&Op::Read(2, ProcFile::Cgroup)), 0, "{:?}", w.ops());
}

#[test]
fn unknown_flag_is_answered_by_the_fallback() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    let b = w.cgroup(POD_B);
    // The writer saw the cgroup change: the stored id (A) may be stale; /proc says B.
    w.process(100, POD_B)
        .entry(100, entry(a, origin::ATTACH, flags::UNKNOWN));
    let r = w.tracker(true, false).resolve(100).expect("resolved");
    assert_eq!((r.cgroup_id, &*r.cgroup_path), (b, POD_B));
    assert_eq!(r.source, Source::ProcCgroup);
}

#[test]
fn no_entry_is_answered_by_the_fallback() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A);
    let r = w.tracker(true, false).resolve(100).expect("resolved");
    assert_eq!((r.cgroup_id, r.source), (a, Source::ProcCgroup));
    assert_eq!(w.count(&Op::MapGet(100)), 1);
}

// ---- which fallback ----

#[test]
fn fallback_uses_pidfd_info_when_probed() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A).pidfd_info(PidfdInfo::Present);
    let r = w.tracker(false, true).resolve(100).expect("resolved");
    assert_eq!((r.cgroup_id, &*r.cgroup_path), (a, POD_A));
    assert_eq!(r.source, Source::PidfdInfo);
    assert_eq!(
        w.count(&Op::Read(100, ProcFile::Cgroup)),
        0,
        "{:?}",
        w.ops()
    );
}

#[test]
fn fallback_uses_proc_when_pidfd_info_not_probed() {
    let w = Fake::new();
    w.cgroup(POD_A);
    // The kernel has it, but the probe said no (or `pidfd_info = false`): /proc answers.
    w.process(100, POD_A).pidfd_info(PidfdInfo::Present);
    let r = w.tracker(false, false).resolve(100).expect("resolved");
    assert_eq!(r.source, Source::ProcCgroup);
    assert_eq!(w.count(&Op::PidfdInfo(100)), 0);
}

#[test]
fn fallback_uses_proc_when_pidfd_info_errors() {
    let w = Fake::new();
    w.cgroup(POD_A);
    w.process(100, POD_A).pidfd_info(PidfdInfo::Absent);
    let r = w.tracker(false, true).resolve(100).expect("resolved");
    assert_eq!(r.source, Source::ProcCgroup);
    assert_eq!(w.count(&Op::PidfdInfo(100)), 1);
}

#[test]
fn pidfd_info_esrch_is_exited_without_reading_proc() {
    let w = Fake::new();
    w.cgroup(POD_A);
    w.process(100, POD_A)
        .pidfd_info(PidfdInfo::Present)
        // Reaped between pidfd_open and the ioctl; the number goes to another process.
        .after(Op::PidfdOpen(100), 1, Event::Reuse(100, POD_B));
    let err = w.tracker(false, true).resolve(100).expect_err("exited");
    assert!(matches!(err, ResolveError::Exited(100)), "{err:?}");
    assert_eq!(
        w.count(&Op::Read(100, ProcFile::Cgroup)),
        0,
        "ESRCH must not fall through to /proc (the number is someone else's): {:?}",
        w.ops()
    );
}

#[test]
fn cgroup_removed_between_read_and_stat_is_exited() {
    let w = Fake::new();
    w.process(100, POD_A);
    w.remove_cgroup(POD_A);
    let err = w.tracker(false, false).resolve(100).expect_err("gone");
    assert!(matches!(err, ResolveError::Exited(100)), "{err:?}");
}

#[test]
fn path_outside_our_cgroup_namespace() {
    let w = Fake::new();
    w.process(100, "/../other-ns/x");
    let err = w.tracker(false, false).resolve(100).expect_err("outside");
    assert!(
        matches!(&err, ResolveError::OutsideNamespace { pid: 100, path } if path == "/../other-ns/x"),
        "{err:?}"
    );
}

// ---- id → path without CAP_DAC_READ_SEARCH ----

#[test]
fn eperm_path_of_reads_proc_and_checks_the_id() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A)
        .entry(100, entry(a, origin::FORK, 0))
        .path_of_eperm();
    let r = w.tracker(true, false).resolve(100).expect("resolved");
    assert_eq!((r.cgroup_id, &*r.cgroup_path), (a, POD_A));
    assert_eq!(r.source, Source::Ebpf(EntryOrigin::Fork));
    assert_eq!(w.count(&Op::Read(100, ProcFile::Cgroup)), 1);
    assert_eq!(w.count(&Op::IdOf(POD_A.into())), 1);
}

#[test]
fn eperm_path_of_mismatch_is_cgroup_changed() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A)
        .entry(100, entry(a, origin::FORK, 0))
        .path_of_eperm()
        // Moved after the map was read, before /proc was: /proc names another cgroup.
        .after(Op::MapGet(100), 1, Event::Move(100, POD_B));
    let err = w.tracker(true, false).resolve(100).expect_err("changed");
    assert!(matches!(err, ResolveError::CgroupChanged(100)), "{err:?}");
}

#[test]
fn gone_cgroup_id_is_a_cgroup_error() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A).entry(100, entry(a, origin::FORK, 0));
    w.remove_cgroup(POD_A);
    let err = w.tracker(true, false).resolve(100).expect_err("gone");
    assert!(
        matches!(
            err,
            ResolveError::Cgroup {
                pid: 100,
                source: crate::cgroupfs::CgroupFsError::Gone { id }
            } if id == a
        ),
        "{err:?}"
    );
}

// ---- the root cgroup ----

#[test]
fn root_cgroup_process_is_not_a_kernel_thread() {
    let w = Fake::new();
    w.process(100, "/")
        .entry(100, entry(ROOT_CGROUP_ID, origin::SEED, 0));
    let err = w.tracker(true, false).resolve(100).expect_err("root");
    assert!(matches!(err, ResolveError::RootCgroup(100)), "{err:?}");
    // The root answer is checked against /proc/<pid>/stat (kernel threads live there too).
    assert_eq!(w.count(&Op::Read(100, ProcFile::Stat)), 1);
}

#[test]
fn kernel_thread_without_entry_is_told_from_root_cgroup() {
    let w = Fake::new();
    w.kernel_thread(7);
    let err = w.tracker(true, false).resolve(7).expect_err("kthread");
    assert!(matches!(err, ResolveError::KernelThread(7)), "{err:?}");
}

#[test]
fn legacy_v1_node_root_needs_no_mount() {
    let w = Fake::new();
    w.process(100, "/").no_cgroup2();
    let err = w.tracker(false, false).resolve(100).expect_err("root");
    assert!(matches!(err, ResolveError::RootCgroup(100)), "{err:?}");
}

// ---- bad pids ----

#[test]
fn bad_pids_have_distinct_errors() {
    let w = Fake::new();
    w.process(100, POD_A).thread(101, 100);
    let t = w.tracker(true, false);
    assert!(matches!(t.resolve(0), Err(ResolveError::ZeroPid)));
    assert!(matches!(t.resolve(-3), Err(ResolveError::NegativePid(-3))));
    assert!(matches!(
        t.resolve(1 << 40),
        Err(ResolveError::PidOutOfRange(_))
    ));
    assert!(matches!(t.resolve(101), Err(ResolveError::NotALeader(101))));
    assert!(matches!(
        t.resolve(555),
        Err(ResolveError::NoSuchProcess(555))
    ));
}

#[test]
fn zombie_is_refused() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A).entry(100, entry(a, origin::FORK, 0));
    w.now(Event::Exit(100));
    let err = w.tracker(true, false).resolve(100).expect_err("zombie");
    assert!(matches!(err, ResolveError::Zombie(100)), "{err:?}");
}

// ---- exit during resolve: never another process's cgroup ----

#[test]
fn pid_reused_between_lookup_and_liveness_check_is_exited() {
    let w = Fake::new();
    w.cgroup(POD_A);
    // No map entry: /proc answers, and by then the number is another process's (in B).
    w.process(100, POD_A)
        .after(Op::PidfdOpen(100), 1, Event::Reuse(100, POD_B));
    let err = w.tracker(true, false).resolve(100).expect_err("reused");
    assert!(matches!(err, ResolveError::Exited(100)), "{err:?}");
}

#[test]
fn pid_reused_after_map_lookup_is_exited() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    let b = w.cgroup(POD_B);
    w.process(100, POD_A)
        .entry(100, entry(a, origin::FORK, 0))
        // Exit removes the entry, the new process's fork writes its own.
        .after(Op::MapGet(100), 1, Event::Reuse(100, POD_B))
        .after(
            Op::MapGet(100),
            1,
            Event::KernelWrite(100, entry(b, origin::FORK, 0)),
        );
    let t = w.tracker(true, false);
    let err = t.resolve(100).expect_err("reused");
    assert!(matches!(err, ResolveError::Exited(100)), "{err:?}");
    // The next resolution is about the new process, and says so.
    let r = t.resolve(100).expect("new process");
    assert_eq!((r.cgroup_id, &*r.cgroup_path), (b, POD_B));
}

#[test]
fn exit_during_resolve_leaving_a_zombie_is_zombie() {
    let w = Fake::new();
    w.cgroup(POD_A);
    w.process(100, POD_A)
        .after(Op::Read(100, ProcFile::Cgroup), 1, Event::Exit(100));
    let err = w.tracker(false, false).resolve(100).expect_err("zombie");
    assert!(matches!(err, ResolveError::Zombie(100)), "{err:?}");
}

#[test]
fn exit_and_reap_during_resolve_is_exited() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A)
        .entry(100, entry(a, origin::FORK, 0))
        .after(Op::MapGet(100), 1, Event::Reap(100));
    let err = w.tracker(true, false).resolve(100).expect_err("reaped");
    assert!(matches!(err, ResolveError::Exited(100)), "{err:?}");
}

#[test]
fn resolution_is_alive_until_the_process_exits() {
    let w = Fake::new();
    w.cgroup(POD_A);
    w.process(100, POD_A);
    let r = w.tracker(true, false).resolve(100).expect("resolved");
    assert!(r.is_alive());
    w.now(Event::Reuse(100, POD_B));
    assert!(
        !r.is_alive(),
        "the pidfd names the old process, not the number"
    );
}

// ---- memberships ----

#[test]
fn memberships_reuse_the_resolutions_pidfd() {
    let w = Fake::new();
    w.cgroup(POD_A);
    w.process(100, POD_A);
    let t = w.tracker(true, false);
    let r = t.resolve(100).expect("resolved");
    let m = t.memberships(100, Some(&r)).expect("memberships");
    assert_eq!(&*m.text, format!("12:memory:/fake\n0::{POD_A}\n"));
    assert_eq!(w.count(&Op::PidfdOpen(100)), 1, "{:?}", w.ops());
    // After the number is reused, the resolution's pidfd still names the old process: the
    // memberships are refused, never read from the new one.
    w.now(Event::Reuse(100, POD_B));
    let err = t.memberships(100, Some(&r)).expect_err("old process gone");
    assert!(matches!(err, ResolveError::Exited(100)), "{err:?}");
    let fresh = t.memberships(100, None).expect("new process");
    assert!(fresh.text.contains(POD_B));
    assert!(!m.is_alive());
}

// ---- seeding at start ----

#[test]
fn seed_writes_entries_for_existing_processes_only() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A).kernel_thread(2).process(300, "/");
    w.now(Event::Exit(300)); // a zombie
    w.tracker(true, false).seed();
    assert_eq!(w.map_entry(100), Some(entry(a, origin::SEED, 0)));
    assert_eq!(w.map_entry(2), None, "kernel threads are not seeded");
    assert_eq!(w.map_entry(300), None, "zombies are not seeded");
}

#[test]
fn seed_never_overwrites_a_kernel_entry() {
    let w = Fake::new();
    w.cgroup(POD_A);
    let b = w.cgroup(POD_B);
    let kernel = entry(b, origin::ATTACH, 0);
    // Moved after the seed read /proc; the attach program wrote the new cgroup.
    w.process(100, POD_A)
        .after(Op::Read(100, ProcFile::Cgroup), 1, Event::Move(100, POD_B))
        .after(
            Op::Read(100, ProcFile::Cgroup),
            1,
            Event::KernelWrite(100, kernel),
        );
    w.tracker(true, false).seed();
    assert_eq!(w.map_entry(100), Some(kernel));
}

#[test]
fn seed_marks_unknown_when_the_cgroup_changed_during_the_seed() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    let b = w.cgroup(POD_B);
    // Moved between the seed's two reads: the stored id may be stale.
    w.process(100, POD_A)
        .after(Op::MapInsertNew(100), 1, Event::Move(100, POD_B));
    let t = w.tracker(true, false);
    t.seed();
    assert_eq!(
        w.map_entry(100),
        Some(entry(a, origin::SEED, flags::UNKNOWN))
    );
    let r = t.resolve(100).expect("resolved");
    assert_eq!((r.cgroup_id, r.source), (b, Source::ProcCgroup));
}

#[test]
fn seed_is_withdrawn_when_the_process_exited_during_the_seed() {
    let w = Fake::new();
    w.cgroup(POD_A);
    // Exited (the kernel's exit program found nothing to remove yet) before our insert.
    w.process(100, POD_A)
        .after(Op::Read(100, ProcFile::Cgroup), 1, Event::Exit(100));
    w.tracker(true, false).seed();
    assert_eq!(w.map_entry(100), None, "{:?}", w.ops());
}

#[test]
fn seed_withdrawal_keeps_a_kernel_written_entry() {
    let w = Fake::new();
    w.cgroup(POD_A);
    let b = w.cgroup(POD_B);
    let kernel = entry(b, origin::FORK, 0);
    // After the seed's re-read, the process exits (the kernel removes our entry), its number
    // is reused and the new process's fork writes its entry: withdrawal must keep that one.
    w.process(100, POD_A)
        .after(Op::Read(100, ProcFile::Cgroup), 2, Event::Reuse(100, POD_B))
        .after(
            Op::Read(100, ProcFile::Cgroup),
            2,
            Event::KernelWrite(100, kernel),
        );
    w.tracker(true, false).seed();
    assert_eq!(w.map_entry(100), Some(kernel), "{:?}", w.ops());
}

#[test]
fn seed_skips_when_the_map_is_full_and_the_fallback_answers() {
    let w = Fake::new();
    let a = w.cgroup(POD_A);
    w.process(100, POD_A).process(200, POD_A).map_capacity(1);
    let t = w.tracker(true, false);
    t.seed();
    assert_eq!(w.map_entry(100), Some(entry(a, origin::SEED, 0)));
    assert_eq!(w.map_entry(200), None);
    assert_eq!(t.resolve(200).expect("resolved").source, Source::ProcCgroup);
    assert_eq!(
        t.resolve(100).expect("resolved").source,
        Source::Ebpf(EntryOrigin::Seed)
    );
}

#[test]
fn placeholders_fill_only_free_slots() {
    let w = Fake::new();
    w.map_capacity(10).entry(100, entry(5, origin::FORK, 0));
    let map = w.procmap();
    assert_eq!(fill_with_placeholders(&map, 10), 9);
    assert_eq!(w.map_len(), 10);
    assert_eq!(map.get(100), Some(entry(5, origin::FORK, 0)));
    assert!(
        !map.insert_new(101, entry(5, origin::SEED, 0)),
        "map is full"
    );
}
