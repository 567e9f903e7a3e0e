//! The node's cgroup v2 filesystem: where it is mounted, cgroup id ↔ path.
//!
//! The mount is found in *our own* `/proc/self/mountinfo`, never in a workload's (a workload
//! can forge its mount table; SPIRE #7060/#7288). A cgroup id is the kernfs node id of the
//! cgroup directory, which is also its inode number, and is never reused on 64-bit kernels;
//! so an id → path cache never goes stale (a removed cgroup just stops resolving).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::sys;

/// The root cgroup's id (kernfs ids start at 1 for the root).
pub const ROOT_CGROUP_ID: u64 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupFsError {
    #[error("cannot read {path}: {source}")]
    ReadMountinfo { path: String, source: io::Error },
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo): attestor needs the \
         node's cgroup v2 hierarchy; in a pod, mount the host's /sys/fs/cgroup"
    )]
    NoCgroup2Mount,
    #[error("cannot open the cgroup2 mount {path}: {source}")]
    OpenMount { path: PathBuf, source: io::Error },
    #[error("cgroup id {id} does not exist anymore (the cgroup was removed)")]
    Gone { id: u64 },
    #[error(
        "cannot resolve cgroup id {id} to a path: {source} (open_by_handle_at needs \
         CAP_DAC_READ_SEARCH)"
    )]
    Resolve { id: u64, source: io::Error },
    #[error("cgroup path {path:?} is outside the cgroup2 mount {mount}")]
    OutsideMount { path: String, mount: PathBuf },
    #[error("cannot stat cgroup {path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
}

/// A cgroup2 mount point from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted, e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`.
    pub mount_point: PathBuf,
    /// The cgroup this mount shows as its root (`/` unless mounted from inside a cgroup ns).
    pub root: String,
}

/// Decodes mountinfo's octal escapes (`\040` for space, etc.).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the cgroup2 mount in a mountinfo text. Prefers a mount of the hierarchy root (`/`),
/// since only that one can name every cgroup on the node.
pub fn find_cgroup2(mountinfo: &str) -> Option<MountEntry> {
    let mut found: Vec<MountEntry> = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional fields...] - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split_whitespace().next();
        if fstype != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        if fields.len() < 5 {
            continue;
        }
        found.push(MountEntry {
            root: unescape(fields[3]),
            mount_point: PathBuf::from(unescape(fields[4])),
        });
    }
    let pos = found.iter().position(|m| m.root == "/").unwrap_or(0);
    (!found.is_empty()).then(|| found.swap_remove(pos))
}

/// The cgroup2 hierarchy as this process sees it, with an id → path cache.
#[derive(Debug)]
pub struct CgroupFs {
    mount: MountEntry,
    dir: File,
    cache: Mutex<HashMap<u64, Arc<str>>>,
}

/// Entries kept in the id → path cache before it is cleared (a node has < 2,000 cgroups
/// even at 250 pods; see ../shared/reference/ebpf-design-notes.md §6).
const PATH_CACHE_CAP: usize = 16_384;

impl CgroupFs {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo`.
    pub fn discover() -> Result<Self, CgroupFsError> {
        let path = "/proc/self/mountinfo";
        let text =
            std::fs::read_to_string(path).map_err(|source| CgroupFsError::ReadMountinfo {
                path: path.into(),
                source,
            })?;
        let mount = find_cgroup2(&text).ok_or(CgroupFsError::NoCgroup2Mount)?;
        Self::at(mount)
    }

    pub fn at(mount: MountEntry) -> Result<Self, CgroupFsError> {
        let dir = File::open(&mount.mount_point).map_err(|source| CgroupFsError::OpenMount {
            path: mount.mount_point.clone(),
            source,
        })?;
        Ok(CgroupFs {
            mount,
            dir,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount.mount_point
    }

    /// The directory of a cgroup given by its hierarchy path (`/kubepods/...`).
    pub fn dir_of(&self, cgroup_path: &str) -> Result<PathBuf, CgroupFsError> {
        let rel = cgroup_path.trim_start_matches('/');
        let rel = if self.mount.root == "/" {
            rel.to_string()
        } else {
            let root = self.mount.root.trim_start_matches('/');
            match rel.strip_prefix(root) {
                Some(r) if r.is_empty() || r.starts_with('/') => {
                    r.trim_start_matches('/').to_string()
                }
                _ => {
                    return Err(CgroupFsError::OutsideMount {
                        path: cgroup_path.into(),
                        mount: self.mount.mount_point.clone(),
                    });
                }
            }
        };
        if rel.split('/').any(|c| c == "..") {
            return Err(CgroupFsError::OutsideMount {
                path: cgroup_path.into(),
                mount: self.mount.mount_point.clone(),
            });
        }
        Ok(self.mount.mount_point.join(rel))
    }

    /// cgroup path → id (the directory's inode number).
    pub fn id_of(&self, cgroup_path: &str) -> Result<u64, CgroupFsError> {
        let dir = self.dir_of(cgroup_path)?;
        std::fs::metadata(&dir)
            .map(|m| m.ino())
            .map_err(|source| CgroupFsError::Stat { path: dir, source })
    }

    /// cgroup id → hierarchy path (`/kubepods.slice/...`), via `open_by_handle_at`.
    pub fn path_of(&self, id: u64) -> Result<Arc<str>, CgroupFsError> {
        if let Some(p) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(p.clone());
        }
        let fd = sys::open_cgroup_by_id(self.dir.as_fd(), id).map_err(|source| {
            match source.raw_os_error() {
                Some(libc::ESTALE) | Some(libc::ENOENT) => CgroupFsError::Gone { id },
                _ => CgroupFsError::Resolve { id, source },
            }
        })?;
        let link = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .map_err(|source| CgroupFsError::Resolve { id, source })?;
        let link = link.to_string_lossy();
        // The link is the directory's path in our mount namespace.
        let mount = self.mount.mount_point.to_string_lossy();
        let rel = link
            .strip_prefix(mount.as_ref())
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or_else(|| CgroupFsError::OutsideMount {
                path: link.to_string(),
                mount: self.mount.mount_point.clone(),
            })?;
        let mut path = String::new();
        if self.mount.root != "/" {
            path.push_str(self.mount.root.trim_end_matches('/'));
        }
        path.push_str(rel);
        if path.is_empty() {
            path.push('/');
        }
        let path: Arc<str> = path.into();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= PATH_CACHE_CAP {
            cache.clear();
        }
        cache.insert(id, path.clone());
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_unified_mount() {
        let mi = "24 1 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755\n\
                  30 24 0:26 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n\
                  31 24 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        let m = find_cgroup2(mi).expect("cgroup2 mount");
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m.root, "/");
    }

    #[test]
    fn prefers_root_mount_and_unescapes() {
        let mi = "40 1 0:30 /kubepods /mnt/ns\\040view rw - cgroup2 cgroup2 rw\n\
                  41 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let m = find_cgroup2(mi).expect("cgroup2 mount");
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup"));
        let only_ns = "40 1 0:30 /kubepods /mnt/ns\\040view rw - cgroup2 cgroup2 rw\n";
        let m = find_cgroup2(only_ns).expect("cgroup2 mount");
        assert_eq!(m.mount_point, PathBuf::from("/mnt/ns view"));
        assert_eq!(m.root, "/kubepods");
    }

    #[test]
    fn no_cgroup2() {
        assert_eq!(
            find_cgroup2("31 24 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
        assert_eq!(find_cgroup2("garbage\n\n - \n"), None);
    }

    #[test]
    fn dir_of_refuses_escapes() {
        let fs = CgroupFs {
            mount: MountEntry {
                mount_point: "/sys/fs/cgroup".into(),
                root: "/".into(),
            },
            dir: File::open("/").expect("open /"),
            cache: Mutex::new(HashMap::new()),
        };
        assert_eq!(
            fs.dir_of("/a/b").expect("inside"),
            PathBuf::from("/sys/fs/cgroup/a/b")
        );
        assert!(matches!(
            fs.dir_of("/../etc"),
            Err(CgroupFsError::OutsideMount { .. })
        ));
    }
}
