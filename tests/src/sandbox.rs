//! Private kubelet-style cgroup trees for the demo and the tests.
//!
//! A [`Sandbox`] is a directory `<cgroup2 mount>/attestor-<tag>-<pid>-<n>` under which pod and
//! container cgroups are created with the names kubelet and the runtimes use. Dropping it
//! kills every process inside and removes the whole tree, also when a test panics.
//!
//! It lives here, not in the `attestor` crate: a type whose `Drop` SIGKILLs every process of
//! a cgroup tree has no place in the shipped binary's public API.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use attestor::cgroupfs::CgroupFs;

/// How kubelet names pod and container cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// systemd driver + containerd:
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`
    SystemdContainerd,
    /// cgroupfs driver: `kubepods/burstable/pod<uid>/<id>`
    Cgroupfs,
}

#[derive(Debug)]
pub struct Sandbox {
    root: PathBuf,
    mount: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Sandbox {
    pub fn new(cgroupfs: &CgroupFs, tag: &str) -> io::Result<Sandbox> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mount = cgroupfs.mount_point().to_path_buf();
        let root = mount.join(format!("attestor-{tag}-{}-{n}", std::process::id()));
        fs::create_dir(&root)?;
        Ok(Sandbox { root, mount })
    }

    /// The sandbox's own directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates (if needed) and returns the directory of a container cgroup.
    pub fn container(
        &self,
        layout: Layout,
        pod_uid: &str,
        container_id: &str,
    ) -> io::Result<PathBuf> {
        let rel = match layout {
            Layout::SystemdContainerd => {
                let uid = pod_uid.replace('-', "_");
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{container_id}.scope"
                )
            }
            Layout::Cgroupfs => format!("kubepods/burstable/pod{pod_uid}/{container_id}"),
        };
        self.dir(&rel)
    }

    /// Creates (if needed) and returns `<root>/<rel>`.
    pub fn dir(&self, rel: &str) -> io::Result<PathBuf> {
        let dir = self.root.join(rel);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The path of a directory inside the sandbox as the cgroup hierarchy names it
    /// (what `/proc/<pid>/cgroup` shows after `0::`).
    pub fn hierarchy_path(&self, dir: &Path) -> String {
        let rel = dir.strip_prefix(&self.mount).unwrap_or(dir);
        format!("/{}", rel.display())
    }

    /// Moves `pid` (a whole process) into `dir` by writing `cgroup.procs`.
    pub fn move_process(dir: &Path, pid: i32) -> io::Result<()> {
        fs::write(dir.join("cgroup.procs"), pid.to_string())
    }

    fn dirs_bottom_up(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    Self::dirs_bottom_up(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }

    fn pids_in(dir: &Path) -> Vec<i32> {
        fs::read_to_string(dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let mut dirs = Vec::new();
        Self::dirs_bottom_up(&self.root, &mut dirs);
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &dirs {
            loop {
                for pid in Self::pids_in(dir) {
                    crate::cleanup::signal(pid, libc::SIGKILL);
                    // Reap our own children so they do not linger as zombies in the cgroup.
                    reap_if_child(pid);
                }
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => {
                        eprintln!("warning: cannot remove test cgroup {}: {e}", dir.display());
                        break;
                    }
                }
            }
        }
    }
}

/// Non-blocking `waitpid`: reaps `pid` if it is an exited child of ours; no-op for other
/// processes (not our child, still running), so it is safe on every PID of the tree.
fn reap_if_child(pid: i32) {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for the call; WNOHANG never blocks.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}
