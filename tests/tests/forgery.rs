//! A workload lying about where it runs, through the live pipeline (eBPF tracker, locator,
//! kubelet simulator): its own view of its cgroup and mounts must not matter, and a cgroup
//! tree it makes up below its own must not earn it another pod's identity.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use attestor::attest::Attestor;
use attestor::config::Config;
use attestor::status::Code;
use attestor::tracker::{Tracker, TrackerMode, TrackerOptions};
use attestor_tests::kubelet_sim::{KubeletSim, PodBuilder, Runtime, generate_pods, hex64};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{kill_and_reap, require_root, wait_for};

const TOKEN: &str = "forgery-token";
const POD_A: &str = "aaaaaaaa-1111-4222-8333-444444444444";
const POD_B: &str = "bbbbbbbb-1111-4222-8333-444444444444";

fn hex_a() -> String {
    hex64(5150)
}

fn hex_b() -> String {
    hex64(5151)
}

async fn setup() -> (Arc<Tracker>, Sandbox, KubeletSim, Attestor, TempDir) {
    let tracker = Arc::new(
        Tracker::start(&TrackerOptions {
            mode: TrackerMode::Ebpf,
            ..TrackerOptions::default()
        })
        .expect("eBPF tracker"),
    );
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "forgery").expect("sandbox");
    let mut pods = generate_pods(5, "node-1", 51);
    for (name, uid, hex) in [("victim", POD_B, hex_b()), ("attacker", POD_A, hex_a())] {
        pods.push(
            PodBuilder::new(name)
                .uid(uid)
                .service_account(name)
                .container(
                    "app",
                    "registry.example.com/app:1",
                    Some(&Runtime::Containerd.container_id(&hex)),
                )
                .build(),
        );
    }
    let sim = KubeletSim::builder()
        .token(TOKEN)
        .pods(pods)
        .start()
        .await
        .expect("simulator");
    let dir = TempDir::new("forgery");
    let ca = dir.write("ca.pem", sim.ca_pem());
    let token = dir.write("token", TOKEN);
    let text = format!(
        "kubelet_secure_port = {}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\n\
         poll_retry_interval = \"20ms\"\nmax_poll_attempts = 3\n",
        sim.port(),
        ca.display(),
        token.display()
    );
    let config = Config::parse(&text).expect("config");
    let attestor = Attestor::new(config, tracker.clone(), |_| None).expect("attestor");
    (tracker, sandbox, sim, attestor, dir)
}

#[tokio::test]
async fn own_cgroup_namespace_and_a_forged_proc_cgroup_do_not_change_the_answer() {
    if !require_root() {
        return;
    }
    let (_tracker, sandbox, _sim, attestor, files) = setup().await;
    let view = files.path().join("view");
    let dir = sandbox
        .container(Layout::SystemdContainerd, POD_A, &hex_a())
        .expect("cgroup");
    // The workload enters its own cgroup and mount namespaces and bind-mounts a file
    // naming pod B's container over its /proc/<pid>/cgroup (and a fake cgroupfs with that tree).
    let forged = format!("0::/kubepods/burstable/pod{POD_B}/{}\n", hex_b());
    let script = format!(
        "mount -t tmpfs forged /mnt && printf '{forged}' > /mnt/cgroup && \
         mount --bind /mnt/cgroup /proc/$$/cgroup && \
         mount -t tmpfs fakecg /sys/fs/cgroup && \
         mkdir -p /sys/fs/cgroup/kubepods/burstable/pod{POD_B}/{hb} && \
         cat /proc/$$/cgroup > {view} && exec sleep 600",
        hb = hex_b(),
        view = view.display()
    );
    let argv = [
        "/usr/bin/unshare",
        "--cgroup",
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        &script,
    ];
    let pid = spawn_into_cgroup(&dir, Some(&argv), None).expect("spawn");
    wait_for(Duration::from_secs(10), || {
        (attestor_tests::comm(pid).as_deref() == Some("sleep")).then_some(())
    })
    .expect("the forging workload is ready");
    // The forgery is in place from the workload's point of view...
    assert_eq!(std::fs::read_to_string(&view).expect("view"), forged);
    // ...and changes nothing: the tracker reads the kernel's answer, not the workload's view.
    let got = attestor
        .attest(i64::from(pid), std::future::pending())
        .await
        .expect("attest");
    assert!(got.contains(&format!("pod-uid:{POD_A}")), "{got:?}");
    assert!(got.contains(&"sa:attacker".to_string()), "{got:?}");
    assert!(!got.iter().any(|s| s.contains(POD_B)), "{got:?}");
    kill_and_reap(pid);
}

#[tokio::test]
async fn a_pod_cgroup_made_up_below_the_workloads_own_is_refused() {
    if !require_root() {
        return;
    }
    let (_tracker, sandbox, _sim, attestor, _dir) = setup().await;
    let own = sandbox
        .container(Layout::Cgroupfs, POD_A, &hex_a())
        .expect("cgroup");
    let pid = spawn_into_cgroup(&own, Some(&["/bin/sleep", "600"]), None).expect("spawn");
    wait_for(Duration::from_secs(5), || {
        (attestor_tests::comm(pid).as_deref() == Some("sleep")).then_some(())
    })
    .expect("exec");
    let before = attestor
        .attest(i64::from(pid), std::future::pending())
        .await
        .expect("attest in its own pod");
    assert!(before.contains(&format!("pod-uid:{POD_A}")), "{before:?}");

    // With write access to its cgroup (delegation, a writable cgroupfs), the workload builds
    // pod B's layout below its own container cgroup and moves itself there.
    for fake in [
        format!("kubepods/burstable/pod{POD_B}/{}", hex_b()),
        hex_b(),
    ] {
        let nested = own.join(&fake);
        std::fs::create_dir_all(&nested).expect("nested cgroup");
        Sandbox::move_process(&nested, pid).expect("move");
        let e = attestor
            .attest(i64::from(pid), std::future::pending())
            .await
            .expect_err("a made-up cgroup gets no identity");
        assert_eq!(e.code, Code::FailedPrecondition, "{e}");
        assert!(
            e.message
                .contains("is nested below another pod or container cgroup"),
            "{e}"
        );
        Sandbox::move_process(&own, pid).expect("move back");
        remove_tree(&own.join(fake.split('/').next().unwrap_or_default()));
    }
    kill_and_reap(pid);
}

fn remove_tree(dir: &Path) {
    let mut dirs = Vec::new();
    collect(dir, &mut dirs);
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&e.path(), out);
            }
        }
    }
}
