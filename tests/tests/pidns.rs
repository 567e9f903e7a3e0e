//! Nested PID namespaces (kind/k3d nodes, nodes that are containers, Docker-in-Docker): the
//! agent's PIDs are numbers of a namespace that is not the kernel's initial one, while kernel
//! programs see initial-namespace tgids. No reused or colliding number may ever get another
//! process's cgroup (SECURITY.md, "PID numbers of a nested namespace").
//!
//! The test runs as PID 1 of a new PID namespace with its own `/proc`
//! (`attestor_tests::pidns`), on the real kernel, and checks through the library, the CLI and
//! the plugin:
//! * the repro of issue 11: a workload in pod A exists when the tracker starts, exits, and a
//!   workload in pod B gets its number: the number answers pod B;
//! * the same for a workload started after the tracker (what kernel programs would write);
//! * a number that is, in the initial namespace, the tgid of a process in another pod;
//! * fork without exec, exec, migration and exit inside the namespace;
//! * `/proc` of another namespace is refused at start, `tracker = "ebpf"` is refused with the
//!   reason, `auto` falls back with the reason.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use attestor::cgroupfs::CgroupFs;
use attestor::tracker::{
    KernelError, ResolveError, StartError, Tracker, TrackerMode, TrackerOptions,
};
use attestor_tests::cart::{POD_UID, app_hex, cart_pod, expected_app_selectors};
use attestor_tests::kubelet_sim::{KubeletSim, generate_pods, hex64};
use attestor_tests::pidns::{self, Stage};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{
    comm, kill_and_reap, plugin_attest, require_root, run_attestor, start_configured_plugin,
    wait_for,
};

/// Pod A: the one whose process exits; not in the kubelet's list.
const POD_A: &str = "0a0a0a0a-1b1b-4c2c-8d3d-4e4e4e4e4e4e";
/// Pod C: gets a number that is another pod's tgid in the initial namespace.
const POD_C: &str = "0c0c0c0c-1d1d-4e2e-8f3f-404040404040";
/// Pod D: outside the namespace, in the initial one.
const POD_D: &str = "0d0d0d0d-1e1e-4f2f-8a3a-505050505050";
/// Numbers chosen in the new namespace (far above what its few threads take).
const SEEDED_NR: i32 = 600;
const KERNEL_NR: i32 = 700;
const TOKEN: &str = "pidns-token";
/// The initial-namespace tgid of the pod D process, handed to the inner test.
const COLLIDE_ENV: &str = "ATTESTOR_PIDNS_COLLIDE";

fn sleeper(dir: &Path, nr: Option<i32>) -> i32 {
    let pid = spawn_into_cgroup(dir, Some(&["/bin/sleep", "300"]), nr)
        .unwrap_or_else(|e| panic!("spawn into {}: {e}", dir.display()));
    wait_for(Duration::from_secs(10), || {
        (comm(pid).as_deref() == Some("sleep")).then_some(())
    })
    .expect("exec");
    pid
}

/// A pid number above 5,000 that no process has now, for clone3's set_tid.
fn free_number(from: i32) -> i32 {
    (from..from + 20_000)
        .find(|n| !Path::new(&format!("/proc/{n}")).exists())
        .expect("a free pid number")
}

#[test]
fn no_number_gets_another_process_cgroup_in_a_nested_pid_namespace() {
    if pidns::stage() != Stage::Outer || !require_root() {
        return;
    }
    // In the initial namespace: a process of pod D under a number the inner test will reuse.
    let cgfs = CgroupFs::discover().expect("cgroup2");
    let sandbox = Sandbox::new(&cgfs, "pidns-outer").expect("sandbox");
    let d = sandbox
        .container(Layout::Cgroupfs, POD_D, &hex64(0xd))
        .expect("pod D cgroup");
    let mut w = None;
    for _ in 0..50 {
        match spawn_into_cgroup(&d, Some(&["/bin/sleep", "300"]), Some(free_number(5_000))) {
            Ok(pid) => {
                w = Some(pid);
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => panic!("spawn pod D: {e}"),
        }
    }
    let w = w.expect("pod D process");
    // A tracker of the initial namespace sees pod D under that number (the kernel map would).
    let outer = Tracker::start(&TrackerOptions::default()).expect("tracker");
    let r = outer.resolve(i64::from(w)).expect("resolve pod D");
    assert_eq!(&*r.cgroup_path, sandbox.hierarchy_path(&d).as_str());
    pidns::run_in_new_pid_namespace("pidns_inner", &[(COLLIDE_ENV, w.to_string())]);
    kill_and_reap(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs as PID 1 of a new PID namespace, started by no_number_gets_another_process_cgroup_in_a_nested_pid_namespace"]
async fn pidns_inner() {
    if pidns::stage() != Stage::Inner {
        return;
    }
    assert_eq!(std::process::id(), 1, "PID 1 of the new namespace");
    let collide: i32 = std::env::var(COLLIDE_ENV)
        .expect("pod D's number")
        .parse()
        .expect("a number");

    // Still the parent namespace's /proc: refused, by the library and the CLI.
    assert_ne!(pidns::proc_self().as_deref(), Some("1"));
    match Tracker::start(&TrackerOptions::default()) {
        Err(StartError::ForeignProc { own, .. }) => assert_eq!(own, 1),
        other => panic!("a foreign /proc must be refused, got {other:?}"),
    }
    let (code, _, err) = run_attestor(&["resolve", "--pid", "1"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("/proc is not a procfs of attestor's PID namespace"),
        "{err}"
    );
    pidns::mount_own_proc();
    assert_eq!(pidns::proc_self().as_deref(), Some("1"));

    let cgfs = CgroupFs::discover().expect("cgroup2");
    let sandbox = Sandbox::new(&cgfs, "pidns").expect("sandbox");
    let pod_a = sandbox
        .container(Layout::Cgroupfs, POD_A, &hex64(0xa))
        .expect("pod A");
    let pod_b = sandbox
        .container(Layout::SystemdContainerd, POD_UID, &app_hex())
        .expect("pod B");
    let pod_c = sandbox
        .container(Layout::Cgroupfs, POD_C, &hex64(0xc))
        .expect("pod C");
    let path = |dir: &Path| sandbox.hierarchy_path(dir);

    // X (pod A) exists before the tracker starts.
    let x = sleeper(&pod_a, Some(SEEDED_NR));
    assert_eq!(x, SEEDED_NR);

    // eBPF is refused with the reason; auto falls back with the same reason.
    match Tracker::start(&TrackerOptions {
        mode: TrackerMode::Ebpf,
        ..TrackerOptions::default()
    }) {
        Err(StartError::EbpfRequired(KernelError::NestedPidNamespace { .. })) => {}
        other => panic!("tracker = ebpf must be refused here, got {other:?}"),
    }
    let tracker = Tracker::start(&TrackerOptions::default()).expect("auto tracker");
    assert!(!tracker.uses_ebpf());
    let why = tracker.fallback_reason().expect("a reason");
    assert!(why.contains("nested PID namespace"), "{why}");
    let resolved = |nr: i32| tracker.resolve(i64::from(nr));
    assert_eq!(&*resolved(x).expect("X").cgroup_path, path(&pod_a));

    // X exits; Y (pod B) gets its number.
    kill_and_reap(x);
    assert!(matches!(resolved(x), Err(ResolveError::NoSuchProcess(n)) if n == x));
    let y = sleeper(&pod_b, Some(SEEDED_NR));
    assert_eq!(&*resolved(y).expect("Y").cgroup_path, path(&pod_b));

    // The same with a process born after the tracker started.
    let x2 = sleeper(&pod_a, Some(KERNEL_NR));
    assert_eq!(&*resolved(x2).expect("X2").cgroup_path, path(&pod_a));
    kill_and_reap(x2);
    let y2 = sleeper(&pod_b, Some(KERNEL_NR));
    assert_eq!(&*resolved(y2).expect("Y2").cgroup_path, path(&pod_b));

    // Pod D's initial-namespace tgid: nobody here has it, then pod C's process does.
    assert!(matches!(
        resolved(collide),
        Err(ResolveError::NoSuchProcess(_))
    ));
    let z = sleeper(&pod_c, Some(collide));
    assert_eq!(z, collide);
    assert_eq!(&*resolved(z).expect("Z").cgroup_path, path(&pod_c));

    // Fork without exec, migration, exec, exit inside the namespace.
    let forked = spawn_into_cgroup(&pod_a, None, None).expect("fork");
    assert_eq!(&*resolved(forked).expect("fork").cgroup_path, path(&pod_a));
    Sandbox::move_process(&pod_c, forked).expect("migrate");
    assert_eq!(&*resolved(forked).expect("moved").cgroup_path, path(&pod_c));
    kill_and_reap(forked);
    assert!(resolved(forked).is_err());
    let execd = sleeper(&pod_a, None);
    assert_eq!(&*resolved(execd).expect("exec").cgroup_path, path(&pod_a));
    kill_and_reap(execd);

    // The CLI and the plugin, against the kubelet simulator listing pod B (`cart`).
    let mut pods = generate_pods(10, "node-1", 5);
    pods.push(cart_pod(true).build());
    let sim = KubeletSim::builder()
        .token(TOKEN)
        .pods(pods)
        .start()
        .await
        .expect("simulator");
    let dir = TempDir::new("pidns");
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
    let want: BTreeSet<String> = expected_app_selectors();
    let cli = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_attestor(&args)
        })
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    let (code, out, err) = cli(s(&["attest", "--pid", &y.to_string(), "--config", &cfg]))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{err}");
    let got: BTreeSet<String> = out
        .lines()
        .map(|l| l.strip_prefix("k8s:").expect("k8s: prefix").to_string())
        .collect();
    assert_eq!(got, want);
    let (code, out, err) = cli(s(&["resolve", "--pid", &z.to_string(), "--output", "json"]))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["cgroup_path"], path(&pod_c).as_str());
    let (code, _, err) = cli(s(&[
        "resolve",
        "--pid",
        &y.to_string(),
        "--tracker",
        "ebpf",
    ]))
    .await
    .expect("join");
    assert_eq!(code, Some(1));
    assert!(err.contains("nested PID namespace"), "{err}");

    let (mut plugin, channel) = start_configured_plugin(plugin_data).await;
    let got = plugin_attest(&channel, y).await.expect("Attest(Y)");
    assert_eq!(got, want.iter().cloned().collect::<Vec<_>>());
    // Z's pod is not listed: SPIRE's give-up, never pod D's or pod B's selectors.
    let status = plugin_attest(&channel, z)
        .await
        .expect_err("pod C is not listed");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    let _ = plugin.kill();
    let _ = plugin.wait();
    kill_and_reap(y);
    kill_and_reap(y2);
    kill_and_reap(z);
}
