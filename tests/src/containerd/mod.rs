//! A private containerd with its CRI plugin, for tests that need real pods.
//!
//! [`Containerd::start`] runs Debian's `containerd` (1.6) with everything in a fresh temp
//! directory: root, state, gRPC socket, runc root, CNI dirs, container logs. Pods use the
//! host network (no CNI) and the cgroupfs driver (`SystemdCgroup = false`; there is no
//! systemd here), so CRI puts containers at `/kubepods/<qos>/pod<uid>/<id>` in every
//! hierarchy. Images are built locally from `busybox-static` ([`image`]) and imported
//! with `ctr`. [`pod`] creates pods the way kubelet does and builds the kubelet's `/pods`
//! entry from what CRI reports.
//!
//! Facts this relies on (checked on this machine kind, see
//! `../shared/reference/containerd-cri-notes.md`):
//! * `restrict_oom_score_adj = true` is required: without CAP_SYS_RESOURCE the pause
//!   container's `oom_score_adj=-998` makes every RunPodSandbox fail;
//! * shim sockets always go to `/run/containerd/s/` (compile-time constant), so
//!   `/run/containerd` is removed afterwards if it did not exist before;
//! * runc removes only leaf cgroups: the pod and QoS parents are removed here.
//!
//! Teardown ([`Containerd::shutdown`], or `Drop` after a panic) leaves no processes, mounts
//! or cgroups behind. One daemon runs at a time on the machine, because the
//! `/run/containerd` bookkeeping (shim sockets, the directory itself) is machine-wide: an
//! async lock within a test process, and an exclusive `flock` on [`MACHINE_LOCK`] between
//! processes (a benchmark and a test suite, or two checkouts, would otherwise remove each
//! other's shim sockets at teardown).

pub mod image;
pub mod pod;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cleanup;
use crate::cri::CriClient;
use crate::tempdir::TempDir;
use image::BuiltImage;

/// The sandbox ("pause") image: sleeps forever, as `registry.k8s.io/pause` does.
pub const PAUSE_IMAGE: &str = "local.test/pause:1";
/// The workload image: a shell that exits on TERM (busybox `sleep` as PID 1 would ignore it).
pub const WORKLOAD_IMAGE: &str = "local.test/workload:1";
/// A second workload image, so selectors can tell containers' images apart.
pub const TOOLS_IMAGE: &str = "local.test/tools:2";

/// Tools the harness runs; all from Debian packages that `cargo xtask setup` installs.
pub const REQUIRED_TOOLS: &[&str] = &[
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "ctr",
    "tar",
    "sha256sum",
];

/// Serializes daemons within this test process (see the module doc).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serializes daemons between processes (see the module doc); released when the holder
/// exits, however it exits.
pub const MACHINE_LOCK: &str = "/run/lock/attestor-test-containerd.lock";

/// Waits for [`MACHINE_LOCK`].
async fn machine_turn() -> Result<std::fs::File, StartError> {
    tokio::task::spawn_blocking(|| {
        let dir = Path::new(MACHINE_LOCK)
            .parent()
            .unwrap_or(Path::new("/run"));
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(MACHINE_LOCK)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| StartError::Failed(format!("waiting for {MACHINE_LOCK}: {e}")))?
    .map_err(|e| StartError::Failed(format!("locking {MACHINE_LOCK}: {e}")))
}

/// Why the daemon could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A tool or file is not installed: the environment lacks the packages
    /// (`cargo xtask setup` installs them).
    #[error("{0} is not installed (cargo xtask setup installs containerd, runc, busybox-static)")]
    Missing(String),
    /// Installed, but it did not come up; the message carries the daemon log's tail.
    #[error("{0}")]
    Failed(String),
}

/// Whether `tool` is on `PATH` (or an existing absolute path).
fn have(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
}

/// A running private containerd.
pub struct Containerd {
    dir: TempDir,
    socket: PathBuf,
    child: Option<Child>,
    cri: CriClient,
    /// Whether `/run/containerd` existed before we started (then we leave it alone).
    run_dir_existed: bool,
    /// Entries of `/run/containerd/s` (shim sockets) before we started.
    shim_sockets_before: Vec<PathBuf>,
    /// Pod cgroup parents created through this daemon, removed at teardown.
    cgroup_parents: Mutex<Vec<String>>,
    images: Vec<BuiltImage>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
    /// Holds [`MACHINE_LOCK`]; dropped (unlocked) after the teardown in `Drop`.
    _machine_turn: std::fs::File,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Containerd {
    /// Starts the daemon, waits for CRI to report `RuntimeReady`, builds and imports the
    /// pause, workload and tools images.
    pub async fn start() -> Result<Containerd, StartError> {
        for tool in REQUIRED_TOOLS.iter().chain([&image::BUSYBOX]) {
            if !have(tool) {
                return Err(StartError::Missing((*tool).to_owned()));
            }
        }
        let turn = ONE_AT_A_TIME.lock().await;
        let machine_turn = machine_turn().await?;
        let dir = TempDir::new("containerd");
        let d = dir.path().to_owned();
        let socket = d.join("containerd.sock");
        for sub in [
            "root",
            "state",
            "opt",
            "runc-root",
            "cni/bin",
            "cni/net.d",
            "logs",
        ] {
            std::fs::create_dir_all(d.join(sub))
                .map_err(|e| StartError::Failed(format!("creating {sub}: {e}")))?;
        }
        let config = d.join("config.toml");
        std::fs::write(&config, config_toml(&d))
            .map_err(|e| StartError::Failed(format!("writing {}: {e}", config.display())))?;
        let run_dir_existed = Path::new("/run/containerd").exists();
        let shim_sockets_before = shim_sockets();
        let log = std::fs::File::create(d.join("containerd.log"))
            .map_err(|e| StartError::Failed(format!("creating the log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| StartError::Failed(format!("log: {e}")))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: a terminal's ^C goes to the test, not the daemon.
            .process_group(0)
            .spawn()
            .map_err(|e| StartError::Failed(format!("spawning containerd: {e}")))?;
        let mut child = child;
        let cri = match wait_for_cri(&socket, &mut child).await {
            Ok(c) => c,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail = log_tail(&d.join("containerd.log"));
                remove_new_shim_sockets(&shim_sockets_before);
                cleanup_run_dir(run_dir_existed);
                return Err(StartError::Failed(format!(
                    "{e}; containerd log ends:\n{tail}"
                )));
            }
        };
        let mut cd = Containerd {
            dir,
            socket,
            child: Some(child),
            cri,
            run_dir_existed,
            shim_sockets_before,
            cgroup_parents: Mutex::new(Vec::new()),
            images: Vec::new(),
            _turn: turn,
            _machine_turn: machine_turn,
        };
        // On error `cd` is dropped here, which tears the daemon down.
        cd.images = cd.build_and_import_images()?;
        Ok(cd)
    }

    fn build_and_import_images(&self) -> Result<Vec<BuiltImage>, StartError> {
        let work = self.dir.path().join("images");
        let specs: [(&str, &[&str]); 3] = [
            (PAUSE_IMAGE, &["/bin/sleep", "2147483647"]),
            (
                WORKLOAD_IMAGE,
                &[
                    "/bin/sh",
                    "-c",
                    "trap 'exit 0' TERM; while :; do sleep 1; done",
                ],
            ),
            (
                TOOLS_IMAGE,
                &[
                    "/bin/sh",
                    "-c",
                    "trap 'exit 0' TERM; while :; do sleep 1; done",
                ],
            ),
        ];
        let mut built = Vec::new();
        for (name, entrypoint) in specs {
            let img = image::build(&work, name, entrypoint)
                .map_err(|e| StartError::Failed(format!("building image {name}: {e}")))?;
            image::import(&self.socket, &img)
                .map_err(|e| StartError::Failed(format!("importing image {name}: {e}")))?;
            built.push(img);
        }
        Ok(built)
    }

    /// The private daemon for a test, or `None` (the test is skipped, with a message) when
    /// not root or when the packages are missing outside CI (`CI` set: a failure). Any
    /// other start failure panics.
    pub async fn start_or_skip() -> Option<Containerd> {
        if !crate::require_root() {
            return None;
        }
        match Containerd::start().await {
            Ok(cd) => Some(cd),
            Err(StartError::Missing(what)) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: {what} is not installed; run `cargo xtask setup`");
                None
            }
            Err(e) => panic!("private containerd did not start: {e}"),
        }
    }

    /// The CRI client (RuntimeService + ImageService on the private socket).
    pub fn cri(&self) -> &CriClient {
        &self.cri
    }

    /// The daemon's gRPC (CRI) socket: what `container_runtime_endpoint` names.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The private directory (root, state, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether `/run/containerd` existed when this daemon started (teardown then keeps it).
    pub fn run_dir_existed(&self) -> bool {
        self.run_dir_existed
    }

    /// Directory for pod log directories (kubelet's `/var/log/pods`).
    pub fn log_root(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// An image this harness built, by name.
    pub fn image(&self, name: &str) -> Option<&BuiltImage> {
        self.images.iter().find(|i| i.name == name)
    }

    /// The repo digest (`<name>@sha256:…`) of the image this harness built as `name`, as
    /// the kubelet reports it in `imageID`; panics if there is no such image.
    pub fn repo_digest(&self, name: &str) -> String {
        match self.image(name) {
            Some(i) => i.repo_digest(),
            None => panic!("harness has no image {name}"),
        }
    }

    /// Records a pod cgroup parent so teardown removes it.
    pub(crate) fn track_cgroup_parent(&self, parent: &str) {
        let mut list = self
            .cgroup_parents
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !list.iter().any(|p| p == parent) {
            list.push(parent.to_owned());
        }
    }

    /// Stops and removes every sandbox through CRI (which stops and removes their
    /// containers and unmounts their rootfs, shm and netns), then tears the daemon down.
    pub async fn shutdown(self) {
        match self.cri.list_pod_sandboxes().await {
            Ok(sandboxes) => {
                for sb in sandboxes {
                    if let Err(e) = self.cri.stop_pod_sandbox(&sb.id).await {
                        eprintln!("containerd teardown: {e}");
                    }
                    if let Err(e) = self.cri.remove_pod_sandbox(&sb.id).await {
                        eprintln!("containerd teardown: {e}");
                    }
                }
            }
            Err(e) => eprintln!("containerd teardown: {e}"),
        }
        drop(self);
    }

    /// Kills whatever CRI did not remove: runc containers under our runc root, and shims
    /// serving our socket.
    fn kill_leftovers(&self) {
        let runc_root = self.dir.path().join("runc-root/k8s.io");
        let runc = |args: &[&str]| {
            Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .output()
        };
        if runc_root.is_dir()
            && let Ok(out) = runc(&["list", "-q"])
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = runc(&["kill", id, "KILL"]);
                let _ = runc(&["delete", "--force", id]);
            }
        }
        let needle = self.socket.to_string_lossy().into_owned();
        let shims: Vec<i32> = cleanup::pids_with_cmdline(&needle)
            .into_iter()
            .filter(|p| Some(*p as u32) != self.child.as_ref().map(Child::id))
            .collect();
        for pid in &shims {
            cleanup::signal(*pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while shims.iter().any(|p| cleanup::is_running(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill_leftovers();
        if let Some(mut child) = self.child.take() {
            cleanup::signal(child.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        // Shims exit on their own once their containers are gone; catch any that did not.
        self.kill_leftovers();
        let stuck = cleanup::unmount_under(self.dir.path());
        if !stuck.is_empty() {
            eprintln!("containerd teardown: cannot unmount {stuck:?}");
        }
        let parents = std::mem::take(
            &mut *self
                .cgroup_parents
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for parent in parents {
            cleanup::remove_cgroup(&parent);
        }
        remove_new_shim_sockets(&self.shim_sockets_before);
        cleanup_run_dir(self.run_dir_existed);
        // `self.dir` (a TempDir) removes the directory after this.
    }
}

const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

fn shim_sockets() -> Vec<PathBuf> {
    std::fs::read_dir(SHIM_SOCKET_DIR)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// A shim killed after a panic leaves its socket; remove the sockets that appeared while
/// our daemon ran (one daemon at a time in this process).
fn remove_new_shim_sockets(before: &[PathBuf]) {
    for path in shim_sockets() {
        if !before.contains(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Removes `/run/containerd` if we created it (shim sockets are always put there), only
/// while it holds nothing but empty directories.
fn cleanup_run_dir(existed: bool) {
    if existed {
        return;
    }
    fn remove_empty(dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return !dir.exists();
        };
        let mut empty = true;
        for e in entries.flatten() {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || !remove_empty(&e.path()) {
                empty = false;
            }
        }
        empty && std::fs::remove_dir(dir).is_ok()
    }
    let run = Path::new("/run/containerd");
    if run.exists() && !remove_empty(run) {
        eprintln!("containerd teardown: /run/containerd is not empty; left in place");
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits until the socket answers and CRI reports `RuntimeReady`.
async fn wait_for_cri(socket: &Path, child: &mut Child) -> Result<CriClient, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("socket not created");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("containerd exited at start ({status})"));
        }
        if socket.exists() {
            match CriClient::connect(socket).await {
                Ok(cri) => match cri.conditions().await {
                    Ok(c) if c.get("RuntimeReady") == Some(&true) => return Ok(cri),
                    Ok(c) => last = format!("runtime conditions {c:?}"),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("CRI not ready after 30 s: {last}"))
}

/// The daemon configuration: everything under `d`, CRI with runc (cgroupfs driver).
fn config_toml(d: &Path) -> String {
    let d = d.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
oom_score = 0

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Required here: no CAP_SYS_RESOURCE, so the pause container's -998 would be refused.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc-root"
"#
    )
}
