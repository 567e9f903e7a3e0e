//! The kernel's process map (`PROCS`: tgid → [`ProcEntry`]) as the tracker uses it.
//!
//! [`ProcMap`] is the seam: the operations the tracker's decisions make on the map, with the
//! BPF update flags they need. [`AyaProcMap`] is the real map; `fake.rs` has a std `HashMap`
//! one for unit tests (as aya keeps its map logic testable without a kernel).
//!
//! **Lookups take no lock.** aya's `HashMap::insert`/`remove` need `&mut` (its types encode
//! "a writer"), and so the map used to sit in one `Mutex` that every lookup of every
//! concurrent attestation took as well. Nothing in userspace needs that exclusion: each
//! operation is one `bpf(2)` syscall on the map's fd, and the kernel serialises concurrent
//! updates, deletes and lookups of a hash map itself (per-bucket locks, RCU for readers) — the
//! kernel map is the synchronisation point, shared with the kernel programs that write it
//! concurrently anyway. So lookups go through a second aya handle over a duplicate of the
//! map's fd (`HashMap::get(&self)`), shared by all threads, and only the writers (the
//! start-up seed, test placeholders) take a `Mutex`, among themselves.

use std::sync::Mutex;

use attestor_common::ProcEntry;
use aya::maps::{HashMap, Map, MapData, MapError};

/// `BPF_NOEXIST`: create only (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only.
const BPF_EXIST: u64 = 2;

/// The map operations the tracker makes. Every method is a whole kernel operation: the
/// kernel programs may write between any two calls.
pub(crate) trait ProcMap: Send + Sync {
    /// The entry for `tgid`, if there is one.
    fn get(&self, tgid: u32) -> Option<ProcEntry>;
    /// Creates an entry; false if one exists (`BPF_NOEXIST`: never overwrites) or the map is
    /// full.
    fn insert_new(&self, tgid: u32, entry: ProcEntry) -> bool;
    /// Overwrites an existing entry; false if there is none (`BPF_EXIST`).
    fn replace(&self, tgid: u32, entry: ProcEntry) -> bool;
    fn remove(&self, tgid: u32);
    /// Removes `tgid`'s entry if it is exactly `expected`. Not atomic against the kernel
    /// programs (two syscalls): a kernel write landing in between is removed too, which loses
    /// the entry (the fallback answers for it), never makes one wrong.
    fn remove_if(&self, tgid: u32, expected: &ProcEntry);
    /// Number of entries (walks the map: diagnostics, not the attest path).
    fn len(&self) -> usize;
    /// Kernel memory charged for the map (`memlock:` of its fdinfo); `None` if unknown.
    fn memory_bytes(&self) -> Option<u64>;
}

/// The real `PROCS` map.
pub(crate) struct AyaProcMap {
    /// Lookups, from any thread, without a lock (see the module doc).
    reader: HashMap<MapData, u32, ProcEntry>,
    /// Writers serialise among themselves only because aya's writing methods take `&mut`.
    writer: Mutex<HashMap<MapData, u32, ProcEntry>>,
}

impl AyaProcMap {
    /// Takes the map out of the loaded object and opens the read handle on a duplicate fd.
    pub(crate) fn new(map: Map) -> Result<Self, MapError> {
        let writer: HashMap<MapData, u32, ProcEntry> = HashMap::try_from(map)?;
        let fd = {
            use std::os::fd::AsFd;
            let data: &MapData = aya::maps::IterableMap::map(&writer);
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|io_error| aya::sys::SyscallError {
                    call: "fcntl(F_DUPFD_CLOEXEC)",
                    io_error,
                })?
        };
        let reader = HashMap::try_from(Map::from_map_data(MapData::from_fd(fd)?)?)?;
        Ok(AyaProcMap {
            reader,
            writer: Mutex::new(writer),
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, HashMap<MapData, u32, ProcEntry>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ProcMap for AyaProcMap {
    fn get(&self, tgid: u32) -> Option<ProcEntry> {
        self.reader.get(&tgid, 0).ok()
    }

    fn insert_new(&self, tgid: u32, entry: ProcEntry) -> bool {
        self.writer().insert(tgid, entry, BPF_NOEXIST).is_ok()
    }

    fn replace(&self, tgid: u32, entry: ProcEntry) -> bool {
        self.writer().insert(tgid, entry, BPF_EXIST).is_ok()
    }

    fn remove(&self, tgid: u32) {
        let _ = self.writer().remove(&tgid);
    }

    fn remove_if(&self, tgid: u32, expected: &ProcEntry) {
        let mut writer = self.writer();
        if writer.get(&tgid, 0).ok().as_ref() == Some(expected) {
            let _ = writer.remove(&tgid);
        }
    }

    fn len(&self) -> usize {
        self.reader.keys().filter(|k| k.is_ok()).count()
    }

    fn memory_bytes(&self) -> Option<u64> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        // Both handles name one map: its fdinfo is the same through either fd.
        let fd = self.reader.map().fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Fills every free slot with keys above pid_max (never a real tgid), so the next insert
/// fails as on a node with more processes than `tracker_max_processes`. Returns how many
/// were added. For tests on the real kernel (feature `test-support`) and unit tests.
#[cfg(any(test, feature = "test-support"))]
pub(crate) fn fill_with_placeholders(map: &dyn ProcMap, max_entries: u32) -> usize {
    let placeholder = ProcEntry {
        cgroup_id: 0,
        origin: 0,
        flags: attestor_common::flags::UNKNOWN,
    };
    let mut added = 0;
    // PID_MAX_LIMIT is 4194304; keys above it are never looked up.
    for key in (4_194_305u32..).take(max_entries as usize + 1) {
        if !map.insert_new(key, placeholder) {
            break;
        }
        added += 1;
    }
    added
}

/// The map behind one `Mutex` for every operation, lookups included: how the tracker used it
/// before the read handle. Only the benchmark's baseline uses it (feature `test-support`).
#[cfg(feature = "test-support")]
pub(crate) struct Serialised(pub(crate) Mutex<Box<dyn ProcMap>>);

#[cfg(feature = "test-support")]
impl Serialised {
    fn map(&self) -> std::sync::MutexGuard<'_, Box<dyn ProcMap>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(feature = "test-support")]
impl ProcMap for Serialised {
    fn get(&self, tgid: u32) -> Option<ProcEntry> {
        self.map().get(tgid)
    }
    fn insert_new(&self, tgid: u32, entry: ProcEntry) -> bool {
        self.map().insert_new(tgid, entry)
    }
    fn replace(&self, tgid: u32, entry: ProcEntry) -> bool {
        self.map().replace(tgid, entry)
    }
    fn remove(&self, tgid: u32) {
        self.map().remove(tgid);
    }
    fn remove_if(&self, tgid: u32, expected: &ProcEntry) {
        self.map().remove_if(tgid, expected);
    }
    fn len(&self) -> usize {
        self.map().len()
    }
    fn memory_bytes(&self) -> Option<u64> {
        self.map().memory_bytes()
    }
}
