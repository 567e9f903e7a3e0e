//! A scripted process world for the tracker's unit tests: a fake [`Host`] (pidfds, `/proc`,
//! cgroup2) and a fake [`ProcMap`] (the kernel map, a std `HashMap`) over one shared state.
//!
//! Every host and map call is logged as an [`Op`]; [`Fake::after`] makes an [`Event`]
//! (exit, reap, PID reuse, migration, a kernel program's write) happen right after the n-th
//! time a given call completes, which is how the races between the tracker's steps are
//! staged. A pidfd names a process *instance*, not a number: after [`Event::Reuse`] the number
//! shows the new process in `/proc` while the old pidfd reports its own process exited, as
//! the kernel does.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use attestor_common::ProcEntry;

use super::Tracker;
use super::host::{Host, Pidfd, ProcFile};
use super::procmap::ProcMap;
use crate::cgroupfs::{CgroupFs, CgroupFsError, ROOT_CGROUP_ID};

/// One call the tracker made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    PidfdOpen(i32),
    /// `poll` on a pidfd of the process that had this number.
    PidfdExited(i32),
    /// `PIDFD_GET_INFO` on a pidfd of the process that had this number.
    PidfdInfo(i32),
    Read(i32, ProcFile),
    ProcExists(i32),
    ListProc,
    IdOf(String),
    PathOf(u64),
    MapGet(u32),
    MapInsertNew(u32),
    MapReplace(u32),
    MapRemove(u32),
}

/// Something that happens in the world between two of the tracker's calls.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// The process exits and stays a zombie (not reaped).
    Exit(i32),
    /// The process exits and is reaped: the number is free.
    Reap(i32),
    /// The process is reaped and a new process gets its number, in cgroup `path`.
    Reuse(i32, &'static str),
    /// The process moves to cgroup `path` (only `/proc` changes; add a `KernelWrite` for the
    /// attach program's update).
    Move(i32, &'static str),
    /// A kernel program writes this entry (fork, exec, attach).
    KernelWrite(u32, ProcEntry),
}

/// What `PIDFD_GET_INFO` does on this "kernel".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PidfdInfo {
    /// Before 6.13: `ENOTTY`.
    Absent,
    /// 6.13+: the cgroup id, or `ESRCH` once the process is reaped.
    Present,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Running,
    Zombie,
    Reaped,
}

#[derive(Debug)]
struct Proc {
    pid: i32,
    cgroup: String,
    life: Life,
    kthread: bool,
}

#[derive(Debug)]
struct World {
    /// Every process instance ever; a pidfd holds its index.
    procs: Vec<Proc>,
    /// Thread id → its leader's pid.
    threads: HashMap<i32, i32>,
    cgroups: HashMap<String, u64>,
    next_cgroup_id: u64,
    map: HashMap<u32, ProcEntry>,
    map_capacity: usize,
    pidfd_info: PidfdInfo,
    /// `open_by_handle_at` refused (no `CAP_DAC_READ_SEARCH`).
    path_of_eperm: bool,
    /// A cgroup2 filesystem is mounted (false: a legacy cgroup v1 node).
    cgroup2: bool,
    ops: Vec<Op>,
    events: Vec<(Op, usize, Event)>,
}

impl World {
    /// The instance that has `pid` now (running or zombie).
    fn occupant(&self, pid: i32) -> Option<usize> {
        self.procs
            .iter()
            .rposition(|p| p.pid == pid && p.life != Life::Reaped)
    }

    fn register(&mut self, path: &str) -> u64 {
        if let Some(&id) = self.cgroups.get(path) {
            return id;
        }
        let id = self.next_cgroup_id;
        self.next_cgroup_id += 1;
        self.cgroups.insert(path.to_string(), id);
        id
    }

    fn set_life(&mut self, pid: i32, life: Life) {
        if let Some(i) = self.occupant(pid) {
            self.procs[i].life = life;
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Exit(pid) => self.set_life(pid, Life::Zombie),
            Event::Reap(pid) => self.set_life(pid, Life::Reaped),
            Event::Reuse(pid, path) => {
                self.set_life(pid, Life::Reaped);
                self.register(path);
                self.procs.push(Proc {
                    pid,
                    cgroup: path.into(),
                    life: Life::Running,
                    kthread: false,
                });
            }
            Event::Move(pid, path) => {
                self.register(path);
                if let Some(i) = self.occupant(pid) {
                    self.procs[i].cgroup = path.into();
                }
            }
            Event::KernelWrite(tgid, entry) => {
                self.map.insert(tgid, entry);
            }
        }
    }

    /// Logs `op` and runs the events scripted for this occurrence of it.
    fn record(&mut self, op: Op) {
        self.ops.push(op.clone());
        let n = self.ops.iter().filter(|o| **o == op).count();
        let due: Vec<Event> = self
            .events
            .iter()
            .filter(|(o, nth, _)| *o == op && *nth == n)
            .map(|(_, _, e)| e.clone())
            .collect();
        for e in due {
            self.apply(e);
        }
    }
}

/// Handle on the scripted world; clones share it.
#[derive(Clone)]
pub(crate) struct Fake(Arc<Mutex<World>>);

fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fake {
    /// A cgroup2 node with only the root cgroup, no processes, an empty map of 1024 entries,
    /// no `PIDFD_GET_INFO`, `open_by_handle_at` allowed.
    pub(crate) fn new() -> Fake {
        let mut cgroups = HashMap::new();
        cgroups.insert("/".to_string(), ROOT_CGROUP_ID);
        Fake(Arc::new(Mutex::new(World {
            procs: Vec::new(),
            threads: HashMap::new(),
            cgroups,
            next_cgroup_id: 1000,
            map: HashMap::new(),
            map_capacity: 1024,
            pidfd_info: PidfdInfo::Absent,
            path_of_eperm: false,
            cgroup2: true,
            ops: Vec::new(),
            events: Vec::new(),
        })))
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.0)
    }

    /// The id of cgroup `path` (created if new).
    pub(crate) fn cgroup(&self, path: &str) -> u64 {
        self.world().register(path)
    }

    /// Removes a cgroup directory (its id stops resolving, its path stops existing).
    pub(crate) fn remove_cgroup(&self, path: &str) {
        self.world().cgroups.remove(path);
    }

    /// A running process `pid` in cgroup `path`.
    pub(crate) fn process(&self, pid: i32, path: &str) -> &Self {
        let mut w = self.world();
        w.register(path);
        w.procs.push(Proc {
            pid,
            cgroup: path.into(),
            life: Life::Running,
            kthread: false,
        });
        drop(w);
        self
    }

    /// A kernel thread (root cgroup, `PF_KTHREAD`).
    pub(crate) fn kernel_thread(&self, pid: i32) -> &Self {
        self.world().procs.push(Proc {
            pid,
            cgroup: "/".into(),
            life: Life::Running,
            kthread: true,
        });
        self
    }

    /// A thread `tid` of process `leader`.
    pub(crate) fn thread(&self, tid: i32, leader: i32) -> &Self {
        self.world().threads.insert(tid, leader);
        self
    }

    /// A map entry, as the kernel programs would have written it.
    pub(crate) fn entry(&self, tgid: u32, entry: ProcEntry) -> &Self {
        self.world().map.insert(tgid, entry);
        self
    }

    pub(crate) fn map_entry(&self, tgid: u32) -> Option<ProcEntry> {
        self.world().map.get(&tgid).copied()
    }

    pub(crate) fn map_len(&self) -> usize {
        self.world().map.len()
    }

    pub(crate) fn map_capacity(&self, n: usize) -> &Self {
        self.world().map_capacity = n;
        self
    }

    pub(crate) fn pidfd_info(&self, v: PidfdInfo) -> &Self {
        self.world().pidfd_info = v;
        self
    }

    /// `open_by_handle_at` fails with EPERM (no `CAP_DAC_READ_SEARCH`).
    pub(crate) fn path_of_eperm(&self) -> &Self {
        self.world().path_of_eperm = true;
        self
    }

    /// No cgroup2 filesystem (a legacy cgroup v1 node).
    pub(crate) fn no_cgroup2(&self) -> &Self {
        self.world().cgroup2 = false;
        self
    }

    /// `event` happens right after the `nth` (1-based) completed `op`.
    pub(crate) fn after(&self, op: Op, nth: usize, event: Event) -> &Self {
        self.world().events.push((op, nth, event));
        self
    }

    /// `event` happens now.
    pub(crate) fn now(&self, event: Event) {
        self.world().apply(event);
    }

    pub(crate) fn ops(&self) -> Vec<Op> {
        self.world().ops.clone()
    }

    pub(crate) fn count(&self, op: &Op) -> usize {
        self.world().ops.iter().filter(|o| *o == op).count()
    }

    /// A tracker over this world; `ebpf`: with the fake map; `pidfd_info`: as if the start-up
    /// probe had found `PIDFD_GET_INFO`.
    pub(crate) fn tracker(&self, ebpf: bool, pidfd_info: bool) -> Tracker {
        let procs = ebpf.then(|| Box::new(FakeMap(self.0.clone())) as Box<dyn ProcMap>);
        Tracker::with_parts(Box::new(FakeHost(self.0.clone())), procs, pidfd_info)
    }

    /// The fake map alone.
    pub(crate) fn procmap(&self) -> FakeMap {
        FakeMap(self.0.clone())
    }
}

/// A pidfd on one process instance of the fake world.
pub(crate) struct FakePidfd {
    world: Arc<Mutex<World>>,
    instance: usize,
    pid: i32,
}

impl std::fmt::Debug for FakePidfd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FakePidfd({}#{})", self.pid, self.instance)
    }
}

impl FakePidfd {
    pub(crate) fn exited(&self) -> io::Result<bool> {
        let mut w = lock(&self.world);
        w.record(Op::PidfdExited(self.pid));
        Ok(w.procs[self.instance].life != Life::Running)
    }

    pub(crate) fn cgroup_id(&self) -> io::Result<Option<u64>> {
        let mut w = lock(&self.world);
        w.record(Op::PidfdInfo(self.pid));
        if w.pidfd_info == PidfdInfo::Absent {
            return Err(io::Error::from_raw_os_error(libc::ENOTTY));
        }
        let p = &w.procs[self.instance];
        if p.life == Life::Reaped {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(w.cgroups.get(&p.cgroup).copied())
    }
}

struct FakeHost(Arc<Mutex<World>>);

impl Host for FakeHost {
    fn pidfd_open(&self, pid: i32) -> io::Result<Pidfd> {
        let mut w = lock(&self.0);
        let found = w.occupant(pid);
        let is_thread = w.threads.contains_key(&pid);
        w.record(Op::PidfdOpen(pid));
        match found {
            Some(instance) => Ok(Pidfd::Fake(FakePidfd {
                world: self.0.clone(),
                instance,
                pid,
            })),
            None if is_thread => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            None => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    fn read_proc(&self, pid: i32, file: ProcFile) -> io::Result<String> {
        let mut w = lock(&self.0);
        // The answer is read before the events this read triggers, as a read that completed.
        let text = w.occupant(pid).map(|i| {
            let p = &w.procs[i];
            match file {
                ProcFile::Cgroup => format!("12:memory:/fake\n0::{}\n", p.cgroup),
                ProcFile::Stat => {
                    let state = if p.life == Life::Zombie { 'Z' } else { 'S' };
                    // PF_KTHREAD = 0x00200000; otherwise the flags of a user process.
                    let flags = if p.kthread { 0x0020_8040 } else { 0x0040_0100 };
                    format!("{pid} (fake proc) {state} 1 {pid} {pid} 0 -1 {flags} 0 0 0 0\n")
                }
            }
        });
        w.record(Op::Read(pid, file));
        text.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn proc_exists(&self, pid: i32) -> bool {
        let mut w = lock(&self.0);
        w.record(Op::ProcExists(pid));
        w.occupant(pid).is_some() || w.threads.contains_key(&pid)
    }

    fn pids(&self) -> io::Result<Box<dyn Iterator<Item = i32> + '_>> {
        let mut w = lock(&self.0);
        w.record(Op::ListProc);
        let mut pids: Vec<i32> = w
            .procs
            .iter()
            .filter(|p| p.life != Life::Reaped)
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        Ok(Box::new(pids.into_iter()))
    }

    fn cgroup_id_of(&self, path: &str) -> Result<u64, CgroupFsError> {
        let mut w = lock(&self.0);
        w.record(Op::IdOf(path.into()));
        if !w.cgroup2 {
            return Err(CgroupFsError::NoCgroup2Mount);
        }
        if path.split('/').any(|c| c == "..") {
            return Err(CgroupFsError::OutsideMount {
                path: path.into(),
                mount: "/sys/fs/cgroup".into(),
            });
        }
        w.cgroups
            .get(path)
            .copied()
            .ok_or_else(|| CgroupFsError::Stat {
                path: format!("/sys/fs/cgroup{path}").into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
    }

    fn cgroup_path_of(&self, id: u64) -> Result<Arc<str>, CgroupFsError> {
        let mut w = lock(&self.0);
        w.record(Op::PathOf(id));
        if !w.cgroup2 {
            return Err(CgroupFsError::NoCgroup2Mount);
        }
        if w.path_of_eperm {
            return Err(CgroupFsError::Resolve {
                id,
                source: io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        w.cgroups
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(p, _)| p.as_str().into())
            .ok_or(CgroupFsError::Gone { id })
    }

    fn cgroupfs(&self) -> Option<&CgroupFs> {
        None
    }
}

/// The kernel map as a std `HashMap` of the fake world, with the BPF flags' semantics and
/// a capacity (a full map refuses new keys).
pub(crate) struct FakeMap(Arc<Mutex<World>>);

impl ProcMap for FakeMap {
    fn get(&self, tgid: u32) -> Option<ProcEntry> {
        let mut w = lock(&self.0);
        let e = w.map.get(&tgid).copied();
        w.record(Op::MapGet(tgid));
        e
    }

    fn insert_new(&self, tgid: u32, entry: ProcEntry) -> bool {
        let mut w = lock(&self.0);
        let ok = !w.map.contains_key(&tgid) && w.map.len() < w.map_capacity;
        if ok {
            w.map.insert(tgid, entry);
        }
        w.record(Op::MapInsertNew(tgid));
        ok
    }

    fn replace(&self, tgid: u32, entry: ProcEntry) -> bool {
        let mut w = lock(&self.0);
        let ok = w.map.contains_key(&tgid);
        if ok {
            w.map.insert(tgid, entry);
        }
        w.record(Op::MapReplace(tgid));
        ok
    }

    fn remove(&self, tgid: u32) {
        let mut w = lock(&self.0);
        w.map.remove(&tgid);
        w.record(Op::MapRemove(tgid));
    }

    fn remove_if(&self, tgid: u32, expected: &ProcEntry) {
        // Two calls, as on the real map: a kernel write may land in between.
        if self.get(tgid).as_ref() == Some(expected) {
            self.remove(tgid);
        }
    }

    fn len(&self) -> usize {
        lock(&self.0).map.len()
    }

    fn memory_bytes(&self) -> Option<u64> {
        None
    }
}
