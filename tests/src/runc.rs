//! Plain runc containers at any cgroup path, for layouts a private containerd cannot
//! produce here: the systemd driver's `…kubepods.slice/…-pod<uid_>.slice/cri-containerd-<id>.scope`
//! needs systemd, which this machine kind does not run. runc's cgroupfs driver takes such a
//! path literally and, on a hybrid host, creates it in every v1 hierarchy and in the v2 tree
//! (see `../shared/reference/runc-notes.md`).
//!
//! Each [`RuncContainer`] has its own bundle and runc state dir in a temp dir; dropping it
//! kills and deletes the container, reaps processes started with [`RuncContainer::exec`],
//! and removes the cgroup tree given at creation.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cleanup;
use crate::containerd::image::BUSYBOX;
use crate::tempdir::TempDir;

/// A running runc container.
#[derive(Debug)]
pub struct RuncContainer {
    dir: TempDir,
    id: String,
    pid: i32,
    cgroups_path: String,
    execs: Vec<Child>,
}

fn runc(state: &Path) -> Command {
    let mut c = Command::new("runc");
    c.arg("--root").arg(state);
    c
}

fn check(what: &str, out: std::io::Result<std::process::Output>) -> Result<String, String> {
    match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{what}: {} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

impl RuncContainer {
    /// Runs `args` in a busybox rootfs as container `id` at `cgroups_path` (a cgroupfs
    /// path, taken literally).
    pub fn run(id: &str, cgroups_path: &str, args: &[&str]) -> Result<RuncContainer, String> {
        let dir = TempDir::new("runc");
        let bundle = dir.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).map_err(|e| format!("rootfs: {e}"))?;
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).map_err(|e| format!("busybox: {e}"))?;
        for applet in ["sh", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .map_err(|e| format!("applet link: {e}"))?;
        }
        check(
            "runc spec",
            Command::new("runc")
                .arg("spec")
                .current_dir(&bundle)
                .stdin(Stdio::null())
                .output(),
        )?;
        let config_path = bundle.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| format!("config.json: {e}"))?;
        let mut spec: Value =
            serde_json::from_str(&text).map_err(|e| format!("config.json: {e}"))?;
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(args);
        spec["root"] = json!({"path": rootfs, "readonly": false});
        spec["linux"]["cgroupsPath"] = json!(cgroups_path);
        std::fs::write(&config_path, spec.to_string()).map_err(|e| format!("config.json: {e}"))?;

        let state = dir.path().join("state");
        // `run -d` hands runc's stdio to the container, so a pipe would never reach EOF:
        // stdout to /dev/null, stderr to a file read on failure.
        let err_path = dir.path().join("runc-run.err");
        let err_file = std::fs::File::create(&err_path).map_err(|e| format!("runc log: {e}"))?;
        let run = runc(&state)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .status();
        match run {
            Ok(st) if st.success() => {}
            other => {
                cleanup::remove_cgroup(cgroups_path);
                let err = std::fs::read_to_string(&err_path).unwrap_or_default();
                return Err(format!("runc run: {other:?}: {}", err.trim()));
            }
        }
        let mut c = RuncContainer {
            dir,
            id: id.to_owned(),
            pid: 0,
            cgroups_path: cgroups_path.to_owned(),
            execs: Vec::new(),
        };
        let st = check("runc state", runc(&c.state()).arg("state").arg(id).output())?;
        let v: Value = serde_json::from_str(&st).map_err(|e| format!("runc state: {e}"))?;
        c.pid = v["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("runc state has no pid: {st}"))?;
        Ok(c)
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's init process (host PID).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn cgroups_path(&self) -> &str {
        &self.cgroups_path
    }

    /// `runc exec` of `args` in the foreground as our child (not `exec -d`: its orphan
    /// would delay the container's teardown). Returns the exec'd process's host PID once
    /// it runs `args[0]`'s program.
    pub fn exec(&mut self, args: &[&str]) -> Result<i32, String> {
        let child = runc(&self.state())
            .arg("exec")
            .arg(&self.id)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("runc exec: {e}"))?;
        let runc_pid = child.id() as i32;
        self.execs.push(child);
        let want = args
            .first()
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or_default()
            .to_owned();
        // The exec'd process is a child of `runc exec` once it has exec'd the program.
        crate::wait_for(Duration::from_secs(10), || {
            children_of_any_thread(runc_pid)
                .into_iter()
                .find(|c| crate::comm(*c).as_deref() == Some(want.as_str()))
        })
        .ok_or_else(|| format!("runc exec {args:?}: process did not appear"))
    }
}

/// Children of every thread of `pid` (runc is a Go program: the thread that forked owns
/// the child in `/proc/<pid>/task/<tid>/children`).
fn children_of_any_thread(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let state = self.state();
        let _ = runc(&state)
            .args(["kill", &self.id, "KILL"])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while cleanup::is_running(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for mut child in self.execs.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = runc(&state)
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        // The leaf and every ancestor left empty (others' containers keep theirs).
        cleanup::remove_cgroup(&self.cgroups_path);
    }
}
