//! Live attestation end to end on the real kernel: real processes in kubelet-style cgroups,
//! the eBPF tracker, the container locator, the kubelet simulator over real TLS with real
//! credentials, SPIRE's poll loop, and the selectors. Expected selectors are written out from
//! the pods each test creates.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use attestor::attest::Attestor;
use attestor::config::Config;
use attestor::status::Code;
use attestor::tracker::{Tracker, TrackerMode, TrackerOptions};
use attestor_tests::cart::{
    APP_IMAGE, POD_UID, app_hex, cart_pod, expected_app_selectors, expected_app_selectors_in,
};
use attestor_tests::kubelet_sim::{
    ContainerKind, KubeletSim, PodBuilder, Runtime, TestCa, Validity, generate_pods,
};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{attestor_bin, comm, kill_and_reap, require_root, wait_for};

const TOKEN: &str = "live-test-token-5f0c";
fn tracker() -> Arc<Tracker> {
    Arc::new(
        Tracker::start(&TrackerOptions {
            mode: TrackerMode::Ebpf,
            ..TrackerOptions::default()
        })
        .expect("eBPF tracker"),
    )
}

/// plugin_data for the simulator on 127.0.0.1 with token auth and a fast poll.
fn config_text(sim: &KubeletSim, dir: &TempDir, extra: &str) -> String {
    let ca = dir.write("ca.pem", sim.ca_pem());
    let token = dir.write("token", format!("{TOKEN}\n"));
    format!(
        "kubelet_secure_port = {}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\n\
         poll_retry_interval = \"20ms\"\nmax_poll_attempts = 10\n{extra}",
        sim.port(),
        ca.display(),
        token.display()
    )
}

fn attestor(text: &str, tracker: Arc<Tracker>) -> Attestor {
    let config = Config::parse(text).unwrap_or_else(|e| panic!("config: {e:?}"));
    Attestor::new(config, tracker, |_| None).unwrap_or_else(|e| panic!("attestor: {e}"))
}

/// A `sleep` started directly in the container's cgroup, waited for until it has exec'd.
fn workload(sandbox: &Sandbox, layout: Layout, pod_uid: &str, hex: &str) -> i32 {
    let dir = sandbox.container(layout, pod_uid, hex).expect("cgroup");
    let pid = spawn_into_cgroup(&dir, Some(&["/bin/sleep", "120"]), None).expect("spawn");
    wait_for(Duration::from_secs(5), || {
        (comm(pid).as_deref() == Some("sleep")).then_some(())
    })
    .expect("exec");
    pid
}

fn set(v: Vec<String>) -> BTreeSet<String> {
    v.into_iter().collect()
}

async fn sim_with(pods: Vec<serde_json::Value>) -> KubeletSim {
    let mut all = generate_pods(20, "node-1", 11);
    all.extend(pods);
    KubeletSim::builder()
        .token(TOKEN)
        .pods(all)
        .start()
        .await
        .expect("simulator")
}

/// What most tests need: root, the tracker, a sandbox and a simulator serving `pod` among
/// generated ones (token auth). `None` when not root outside CI.
struct Live {
    tracker: Arc<Tracker>,
    sandbox: Sandbox,
    sim: KubeletSim,
}

impl Live {
    async fn start(pod: PodBuilder) -> Option<Live> {
        if !require_root() {
            return None;
        }
        let tracker = tracker();
        let sandbox =
            Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "live").expect("sandbox");
        let sim = sim_with(vec![pod.build()]).await;
        Some(Live {
            tracker,
            sandbox,
            sim,
        })
    }
}

#[tokio::test]
async fn attests_a_process_over_tls_with_a_token() {
    let Some(Live {
        tracker,
        sandbox,
        sim,
    }) = Live::start(cart_pod(true)).await
    else {
        return;
    };
    let dir = TempDir::new("live");
    let a = attestor(&config_text(&sim, &dir, ""), tracker);
    let pid = workload(&sandbox, Layout::SystemdContainerd, POD_UID, &app_hex());
    let got = a
        .attest(pid as i64, std::future::pending())
        .await
        .expect("attest");
    assert_eq!(set(got), expected_app_selectors());
    assert_eq!(sim.request_count(), 1);
    kill_and_reap(pid);
}

#[tokio::test]
async fn attests_with_a_client_certificate_and_cgroupfs_layout() {
    if !require_root() {
        return;
    }
    let tracker = tracker();
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "live").expect("sandbox");
    let client_ca = TestCa::new("kubelet-client-ca");
    let mut pods = generate_pods(20, "node-1", 12);
    pods.push(cart_pod(true).build());
    let sim = KubeletSim::builder()
        .client_ca(client_ca.cert_pem())
        .pods(pods)
        .start()
        .await
        .expect("simulator");
    let dir = TempDir::new("live");
    let ck = client_ca.client_cert("system:serviceaccount:spire:agent", Validity::Valid);
    let cert = dir.write("client.pem", &ck.cert_pem);
    let key = dir.write("client.key", &ck.key_pem);
    let text = config_text(
        &sim,
        &dir,
        &format!(
            "certificate_path = \"{}\"\nprivate_key_path = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let a = attestor(&text, tracker);
    let pid = workload(&sandbox, Layout::Cgroupfs, POD_UID, &app_hex());
    let got = a
        .attest(pid as i64, std::future::pending())
        .await
        .expect("attest");
    assert_eq!(set(got), expected_app_selectors());
    assert_eq!(
        sim.client_certs_seen().len(),
        1,
        "the client certificate was presented"
    );
    kill_and_reap(pid);
}

#[tokio::test]
async fn container_that_appears_after_a_few_polls_is_found() {
    let Some(Live {
        tracker,
        sandbox,
        sim,
    }) = Live::start(cart_pod(false)).await
    else {
        return;
    };
    let app = Runtime::Containerd.container_id(&app_hex());
    sim.add_container_status_after(3, POD_UID, ContainerKind::Regular, "app", APP_IMAGE, &app);
    let dir = TempDir::new("live");
    let a = attestor(&config_text(&sim, &dir, ""), tracker);
    let pid = workload(&sandbox, Layout::SystemdContainerd, POD_UID, &app_hex());
    let (got, trace) = a.attest_traced(pid as i64, std::future::pending()).await;
    let got = set(got.expect("found after the status appeared"));
    assert!(got.contains("container-name:app"), "{got:?}");
    assert!(got.contains(&format!("pod-uid:{POD_UID}")));
    assert_eq!(
        trace.lists_searched, 4,
        "three lists without the container, then the one with it"
    );
    // Each new list version was indexed once, by this attestation (the only one asking).
    assert_eq!(trace.lists_indexed, 4);
    assert_eq!(sim.request_count(), 4);
    kill_and_reap(pid);
}

#[tokio::test]
async fn gives_up_after_max_poll_attempts() {
    let Some(Live {
        tracker,
        sandbox,
        sim,
    }) = Live::start(cart_pod(false)).await
    else {
        return;
    };
    let dir = TempDir::new("live");
    let a = attestor(&config_text(&sim, &dir, "max_poll_attempts = 4\n"), tracker);
    let pid = workload(&sandbox, Layout::SystemdContainerd, POD_UID, &app_hex());
    let e = a
        .attest(pid as i64, std::future::pending())
        .await
        .expect_err("never in the list");
    assert_eq!(e.code, Code::DeadlineExceeded);
    assert_eq!(e.message, "no selectors found after max poll attempts");
    assert_eq!(sim.request_count(), 4);
    kill_and_reap(pid);
}

#[tokio::test]
async fn kubelet_failures_are_unavailable() {
    let Some(Live {
        tracker,
        sandbox,
        sim,
    }) = Live::start(cart_pod(true)).await
    else {
        return;
    };
    let pid = workload(&sandbox, Layout::SystemdContainerd, POD_UID, &app_hex());

    // A CA that did not sign the kubelet's certificate: never trusted.
    let dir = TempDir::new("live");
    let text = config_text(&sim, &dir, "max_poll_attempts = 2\n");
    dir.write("ca.pem", TestCa::new("impostor").cert_pem());
    let e = attestor(&text, tracker.clone())
        .attest(pid as i64, std::future::pending())
        .await
        .expect_err("wrong CA");
    assert_eq!(e.code, Code::Unavailable, "{e}");

    // A wrong token: 401 from the kubelet, reported with its status.
    let dir = TempDir::new("live");
    let text = config_text(&sim, &dir, "max_poll_attempts = 2\n");
    dir.write("token", "not-the-token");
    let e = attestor(&text, tracker)
        .attest(pid as i64, std::future::pending())
        .await
        .expect_err("wrong token");
    assert_eq!(e.code, Code::Unavailable);
    assert!(e.message.contains("401"), "{e}");
    assert!(
        !e.message.contains("not-the-token"),
        "tokens never appear in errors"
    );
    kill_and_reap(pid);
}

#[tokio::test]
async fn process_not_in_a_pod_gets_no_selectors_and_no_kubelet_call() {
    let Some(Live {
        tracker,
        sandbox,
        sim,
    }) = Live::start(cart_pod(true)).await
    else {
        return;
    };
    let dir = TempDir::new("live");
    let a = attestor(&config_text(&sim, &dir, ""), tracker);
    let host_dir = sandbox.dir("system.slice/sshd.service").expect("cgroup");
    let pid = spawn_into_cgroup(&host_dir, Some(&["/bin/sleep", "60"]), None).expect("spawn");
    let got = a
        .attest(pid as i64, std::future::pending())
        .await
        .expect("not in a pod is a success");
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(sim.request_count(), 0);
    // Bad PIDs are refused before anything else.
    let e = a
        .attest(0, std::future::pending())
        .await
        .expect_err("pid 0");
    assert_eq!(e.code, Code::InvalidArgument);
    let e = a
        .attest(4_194_305, std::future::pending())
        .await
        .expect_err("no such pid");
    assert_eq!(e.code, Code::NotFound);
    kill_and_reap(pid);
}

#[tokio::test]
async fn cancellation_is_honoured() {
    let Some(Live {
        tracker,
        sandbox,
        sim,
    }) = Live::start(cart_pod(false)).await
    else {
        return;
    };
    let dir = TempDir::new("live");
    let a = attestor(
        &config_text(&sim, &dir, "max_poll_attempts = 1000\n"),
        tracker,
    );
    let pid = workload(&sandbox, Layout::SystemdContainerd, POD_UID, &app_hex());
    let e = a
        .attest(pid as i64, tokio::time::sleep(Duration::from_millis(150)))
        .await
        .expect_err("canceled");
    assert_eq!(e.code, Code::Cancelled);
    assert!(sim.request_count() < 1000);
    kill_and_reap(pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_during_attestation_gets_no_identity() {
    let Some(Live {
        tracker,
        sandbox,
        sim,
    }) = Live::start(cart_pod(false)).await
    else {
        return;
    };
    let app = Runtime::Containerd.container_id(&app_hex());
    sim.add_container_status_after(5, POD_UID, ContainerKind::Regular, "app", APP_IMAGE, &app);
    let dir = TempDir::new("live");
    let a = Arc::new(attestor(&config_text(&sim, &dir, ""), tracker));
    let pid = workload(&sandbox, Layout::SystemdContainerd, POD_UID, &app_hex());
    let task = {
        let a = a.clone();
        tokio::spawn(async move { a.attest(pid as i64, std::future::pending()).await })
    };
    // Let the attestation resolve the PID and start polling, then end the process.
    wait_for(Duration::from_secs(5), || {
        (sim.request_count() >= 1).then_some(())
    })
    .expect("polling");
    kill_and_reap(pid);
    let e = task.await.expect("join").expect_err("the process is gone");
    assert_eq!(e.code, Code::NotFound, "{e}");
    assert!(e.message.contains("exited during attestation"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_attestations_share_kubelet_requests() {
    let Some(Live {
        tracker,
        sandbox,
        sim,
    }) = Live::start(cart_pod(false)).await
    else {
        return;
    };
    let app = Runtime::Containerd.container_id(&app_hex());
    sim.add_container_status_after(2, POD_UID, ContainerKind::Regular, "app", APP_IMAGE, &app);
    let dir = TempDir::new("live");
    let a = Arc::new(attestor(
        &config_text(&sim, &dir, "poll_retry_interval = \"1s\"\n"),
        tracker,
    ));
    let pid = workload(&sandbox, Layout::SystemdContainerd, POD_UID, &app_hex());
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.attest(pid as i64, std::future::pending()).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("join").expect("attest"));
    }
    // The app's status was added by the simulator: read its image ID from the final list.
    let body: serde_json::Value = serde_json::from_slice(&sim.current_body()).expect("pod list");
    let pod = body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["metadata"]["uid"] == POD_UID))
        .expect("cart pod");
    let want = expected_app_selectors_in(pod);
    for got in results {
        assert_eq!(set(got), want);
    }
    // Two lists without the container and one with it is the minimum: 3 requests in all
    // when every caller joins within the first interval (the usual case). On a loaded
    // machine a late caller may need one more list; the bound is SPIRE's contract of at most
    // one request start per interval (we allow 2 per interval, the target).
    let requests = sim.request_count();
    let intervals = started.elapsed().as_secs_f64().ceil() as u64;
    assert!(
        requests >= 3,
        "the container only appears in the third list"
    );
    assert!(
        requests <= 2 * intervals,
        "{requests} requests in {intervals} intervals"
    );
    assert_eq!(
        requests,
        a.kubelet_requests(),
        "no hidden retries below the fetcher"
    );
    kill_and_reap(pid);
}

#[tokio::test]
async fn cli_attest_and_explain_by_pid() {
    if !require_root() {
        return;
    }
    let cgfs = attestor::cgroupfs::CgroupFs::discover().expect("cgroup2");
    let sandbox = Sandbox::new(&cgfs, "cli").expect("sandbox");
    let sim = sim_with(vec![cart_pod(true).build()]).await;
    let dir = TempDir::new("live");
    let config = dir.write("plugin_data.hcl", config_text(&sim, &dir, ""));
    let pid = workload(&sandbox, Layout::SystemdContainerd, POD_UID, &app_hex());
    let bin = attestor_bin();
    let run = |args: &[&str]| {
        let bin = bin.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new(bin).args(args).output().expect("run attestor")
        })
    };
    let pid_s = pid.to_string();
    let cfg = config.to_str().expect("utf-8 path");

    let out = run(&["attest", "--pid", &pid_s, "--config", cfg])
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let want: BTreeSet<String> = expected_app_selectors()
        .iter()
        .map(|s| format!("k8s:{s}"))
        .collect();
    assert_eq!(lines, want);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let mut sorted: Vec<&str> = stdout.lines().collect();
    sorted.sort();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        sorted,
        "sorted bytewise"
    );

    let out = run(&[
        "explain", "--pid", &pid_s, "--config", cfg, "--output", "json",
    ])
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["pid"], pid);
    assert_eq!(v["tracker"], "ebpf");
    assert_eq!(
        v["resolution"]["cgroup_path"],
        sandbox
            .hierarchy_path(
                &sandbox
                    .container(Layout::SystemdContainerd, POD_UID, &app_hex())
                    .expect("dir")
            )
            .as_str()
    );
    assert_eq!(v["container"]["pod_uid"], POD_UID);
    assert_eq!(v["container"]["container_id"], app_hex().as_str());
    assert_eq!(v["kubelet"]["lists_searched"], 1);
    assert_eq!(v["kubelet"]["lists_indexed"], 1);
    assert_eq!(
        v["outcome"]["selectors"].as_array().map(Vec::len),
        Some(want.len())
    );

    // A failing live attestation: JSON error on stdout, exit 1.
    let out = run(&["attest", "--pid", "0", "--config", cfg, "--output", "json"])
        .await
        .expect("join");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["error"]["code"], "InvalidArgument");
    kill_and_reap(pid);
}
