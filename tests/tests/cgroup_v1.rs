//! cgroup v1 and hybrid nodes, live, on the real kernel (issue 11): pods whose cgroups live
//! in v1 hierarchies (legacy or hybrid mode with the cgroupfs driver: `/proc/<pid>/cgroup`
//! has `4:memory:/kubepods/burstable/pod<uid>/<id>` while the v2 line is `0::/`) must get
//! exactly SPIRE's selectors, decided per process, with `explain` saying which source
//! answered.
//!
//! Every v1 controller of a test machine is busy with the host's own processes, so a named
//! v1 hierarchy (`mount -t cgroup -o none,name=…`, no controller) stages the same
//! `/proc/<pid>/cgroup` lines: SPIRE's locator (and ours) reads the path of every line and
//! does not care which controllers a hierarchy carries.
//!
//! Layouts, each through the CLI (`attest`, `explain --output json`), the plugin, and
//! cross-checked against the replay of the same `/proc/<pid>/cgroup`:
//! * v1 only: the v2 line is `0::/`, a v1 line names the container (cgroupfs names);
//! * v2 outside any pod (a system slice), a v1 line names the container;
//! * systemd hybrid: the same slices in the v1 hierarchy and in the unified tree;
//! * v2 only: the container in the v2 tree, the v1 hierarchy at its root;
//! * not in a pod: neither names a container ⇒ success with zero selectors.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attestor::cgroupfs::CgroupFs;
use attestor_tests::cart::{POD_UID, app_hex, cart_pod, expected_app_selectors};
use attestor_tests::kubelet_sim::{KubeletSim, generate_pods};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{
    comm, kill_and_reap, plugin_attest, require_root, run_attestor, start_configured_plugin,
    wait_for,
};

const TOKEN: &str = "cgroup-v1-token";

/// A named cgroup v1 hierarchy (no controllers) mounted on a private directory; unmounted,
/// and its cgroups removed, on drop.
struct V1Hierarchy {
    mount: PathBuf,
    name: String,
    _dir: TempDir,
}

impl V1Hierarchy {
    fn mount() -> V1Hierarchy {
        let dir = TempDir::new("cgroup-v1");
        let mount = dir.path().join("v1");
        std::fs::create_dir(&mount).expect("mount point");
        let name = format!("attestor-v1-{}", std::process::id());
        let target = CString::new(mount.as_os_str().as_bytes()).expect("path");
        let opts = CString::new(format!("none,name={name}")).expect("options");
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"cgroup".as_ptr(),
                target.as_ptr(),
                c"cgroup".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "mount a named cgroup v1 hierarchy: {}",
            std::io::Error::last_os_error()
        );
        V1Hierarchy {
            mount,
            name,
            _dir: dir,
        }
    }

    /// Creates `<hierarchy>/<rel>` and moves `pid` there.
    fn place(&self, rel: &str, pid: i32) {
        let dir = self.mount.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("v1 cgroup");
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move into v1 cgroup");
    }

    /// This hierarchy's line of `/proc/<pid>/cgroup`.
    fn line_of(&self, pid: i32) -> String {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup file");
        let tag = format!(":name={}:", self.name);
        text.lines()
            .find(|l| l.contains(&tag))
            .unwrap_or_else(|| panic!("no {tag} line in {text}"))
            .to_string()
    }
}

impl Drop for V1Hierarchy {
    fn drop(&mut self) {
        // Processes have been reaped by then; remove the cgroups bottom-up, then unmount
        // (a named hierarchy without cgroups disappears with its last mount).
        fn dirs(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs(&e.path(), out);
                    }
                }
            }
            out.push(dir.to_path_buf());
        }
        let mut all = Vec::new();
        dirs(&self.mount, &mut all);
        all.pop(); // the root
        for d in all {
            let _ = std::fs::remove_dir(d);
        }
        let target = CString::new(self.mount.as_os_str().as_bytes()).expect("path");
        // SAFETY: umount2(2) with a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn sleeper(v2_dir: &Path) -> i32 {
    let pid = spawn_into_cgroup(v2_dir, Some(&["/bin/sleep", "120"]), None)
        .unwrap_or_else(|e| panic!("spawn into {}: {e}", v2_dir.display()));
    wait_for(Duration::from_secs(10), || {
        (comm(pid).as_deref() == Some("sleep")).then_some(())
    })
    .expect("exec");
    pid
}

/// How a layout must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The tracker's v2 cgroup names the container.
    V2,
    /// No container in the v2 path; the v1 line does.
    V1Line,
    /// Nothing names a container: success, zero selectors.
    NotInPod,
}

struct Case {
    name: &'static str,
    pid: i32,
    answer: Answer,
    /// The line of `/proc/<pid>/cgroup` that must answer (`V1Line`).
    v1_line: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_hybrid_and_v2_workloads_get_spires_selectors_live() {
    if !require_root() {
        return;
    }
    let cgfs = CgroupFs::discover().expect("cgroup2");
    let sandbox = Sandbox::new(&cgfs, "cgroup-v1").expect("sandbox");
    let v1 = V1Hierarchy::mount();
    let hex = app_hex();
    let cgroupfs_rel = format!("/kubepods/burstable/pod{POD_UID}/{hex}");
    let uid_ = POD_UID.replace('-', "_");
    let systemd_rel = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{hex}.scope"
    );

    // v1 only: the v2 root, as on a legacy/hybrid node whose kubelet uses v1 controllers.
    let v1_only = sleeper(cgfs.mount_point());
    v1.place(&cgroupfs_rel, v1_only);
    // v2 in a system slice, v1 in the pod.
    let slice = sandbox.dir("system.slice/kubelet.service").expect("slice");
    let v2_slice = sleeper(&slice);
    v1.place(&cgroupfs_rel, v2_slice);
    // systemd hybrid: the same slices in both.
    let hybrid = sleeper(
        &sandbox
            .container(Layout::SystemdContainerd, POD_UID, &hex)
            .expect("systemd cgroup"),
    );
    v1.place(&systemd_rel, hybrid);
    // v2 only: the v1 hierarchy at its root.
    let v2_only_dir = sandbox
        .container(Layout::Cgroupfs, POD_UID, &hex)
        .expect("cgroupfs cgroup");
    let v2_only = sleeper(&v2_only_dir);
    // Not in a pod anywhere.
    let nowhere = sleeper(&slice);
    v1.place("/system.slice/ssh.service", nowhere);

    let cases = [
        Case {
            name: "v1 only",
            pid: v1_only,
            answer: Answer::V1Line,
            v1_line: Some(v1.line_of(v1_only)),
        },
        Case {
            name: "v2 system slice + v1 pod",
            pid: v2_slice,
            answer: Answer::V1Line,
            v1_line: Some(v1.line_of(v2_slice)),
        },
        Case {
            name: "systemd hybrid",
            pid: hybrid,
            answer: Answer::V2,
            v1_line: None,
        },
        Case {
            name: "v2 only",
            pid: v2_only,
            answer: Answer::V2,
            v1_line: None,
        },
        Case {
            name: "not in a pod",
            pid: nowhere,
            answer: Answer::NotInPod,
            v1_line: None,
        },
    ];
    // The staged lines are what a v1 node shows.
    assert!(v1.line_of(v1_only).ends_with(&format!(":{cgroupfs_rel}")));
    assert!(v1.line_of(hybrid).ends_with(&format!(":{systemd_rel}")));
    assert!(v1.line_of(v2_only).ends_with(":/"));

    let mut pods = generate_pods(10, "node-1", 7);
    pods.push(cart_pod(true).build());
    let dir = TempDir::new("cgroup-v1-cli");
    let pods_file = dir.write(
        "pods.json",
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "items": pods}).to_string(),
    );
    let sim = KubeletSim::builder()
        .token(TOKEN)
        .pods(pods)
        .start()
        .await
        .expect("simulator");
    let ca = dir.write("ca.pem", sim.ca_pem());
    let token = dir.write("token", TOKEN);
    let plugin_data = format!(
        "kubelet_secure_port = {}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\n\
         poll_retry_interval = \"20ms\"\nmax_poll_attempts = 3\n",
        sim.port(),
        ca.display(),
        token.display()
    );
    let config = dir.write("plugin_data.hcl", &plugin_data);
    let cfg = config.to_str().expect("utf-8").to_string();
    let pods_path = pods_file.to_str().expect("utf-8").to_string();
    let app: BTreeSet<String> = expected_app_selectors();
    let cli = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_attestor(&args)
        })
    };
    let (mut plugin, channel) = start_configured_plugin(plugin_data).await;

    for case in &cases {
        let pid = case.pid.to_string();
        let want: BTreeSet<String> = match case.answer {
            Answer::NotInPod => BTreeSet::new(),
            _ => app.clone(),
        };
        // CLI attest.
        let (code, out, err) = cli(vec![
            "attest".into(),
            "--pid".into(),
            pid.clone(),
            "--config".into(),
            cfg.clone(),
            "--output".into(),
            "json".into(),
        ])
        .await
        .expect("join");
        assert_eq!(code, Some(0), "{}: {err}", case.name);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let got: BTreeSet<String> = v["selectors"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: {out}", case.name))
            .iter()
            .map(|s| {
                let s = s.as_str().expect("string");
                s.strip_prefix("k8s:").unwrap_or(s).to_string()
            })
            .collect();
        assert_eq!(got, want, "{}: attest --pid", case.name);

        // The replay of the same /proc/<pid>/cgroup agrees.
        let cgroup_file = dir.write(
            &format!("cgroup-{}", case.pid),
            std::fs::read_to_string(format!("/proc/{}/cgroup", case.pid)).expect("cgroup"),
        );
        let (code, out, err) = cli(vec![
            "attest".into(),
            "--cgroup-file".into(),
            cgroup_file.to_str().expect("utf-8").into(),
            "--pods-file".into(),
            pods_path.clone(),
            "--output".into(),
            "json".into(),
        ])
        .await
        .expect("join");
        assert_eq!(code, Some(0), "{}: replay: {err}", case.name);
        let replay: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(
            replay["selectors"], v["selectors"],
            "{}: live vs replay",
            case.name
        );

        // explain says which source answered.
        let (code, out, err) = cli(vec![
            "explain".into(),
            "--pid".into(),
            pid.clone(),
            "--config".into(),
            cfg.clone(),
            "--output".into(),
            "json".into(),
        ])
        .await
        .expect("join");
        assert_eq!(code, Some(0), "{}: explain: {err}", case.name);
        let e: serde_json::Value = serde_json::from_str(&out).expect("json");
        match case.answer {
            Answer::V2 => {
                assert!(e["memberships"].is_null(), "{}: {out}", case.name);
                assert_eq!(
                    e["container"]["container_id"],
                    hex.as_str(),
                    "{}",
                    case.name
                );
            }
            Answer::V1Line => {
                assert_eq!(
                    e["memberships"]["source"],
                    attestor::tracker::MEMBERSHIPS_SOURCE,
                    "{}: {out}",
                    case.name
                );
                assert_eq!(
                    e["memberships"]["line"],
                    case.v1_line.as_deref().expect("line"),
                    "{}: {out}",
                    case.name
                );
                assert_eq!(e["container"]["pod_uid"], POD_UID, "{}", case.name);
                assert_eq!(
                    e["container"]["container_id"],
                    hex.as_str(),
                    "{}",
                    case.name
                );
            }
            Answer::NotInPod => {
                assert!(e["container"].is_null(), "{}: {out}", case.name);
                assert!(e["memberships"]["line"].is_null(), "{}: {out}", case.name);
            }
        }

        // The plugin, as the agent asks.
        let got: BTreeSet<String> = plugin_attest(&channel, case.pid)
            .await
            .unwrap_or_else(|s| panic!("{}: Attest: {s:?}", case.name))
            .into_iter()
            .collect();
        assert_eq!(got, want, "{}: plugin", case.name);
    }
    let _ = plugin.kill();
    let _ = plugin.wait();
    for case in &cases {
        kill_and_reap(case.pid);
    }
}
