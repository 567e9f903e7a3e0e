//! Real containers, attested end to end: pods created by a private containerd through the
//! CRI API exactly as kubelet creates them, and plain runc containers at systemd-driver
//! cgroup paths. Each process goes through the eBPF tracker, the locator, the kubelet
//! simulator over HTTPS (serving the pod list built from what CRI reports) and the pod
//! search; every test asserts the exact selector set or the exact give-up outcome.
//!
//! Needs root. Skipped with a message when not root (or when containerd/runc are not
//! installed) unless `CI` is set, in which case that is a failure. `cargo xtask setup`
//! installs containerd, runc, containernetworking-plugins and busybox-static.

use std::path::Path;

use attestor::status::{Code, Status};
use attestor::tracker::{Tracker, TrackerMode, TrackerOptions};
use attestor_tests::attest::{Pipeline, sim_config};
use attestor_tests::containerd::pod::{Kind, Pod, PodSpec, Qos};
use attestor_tests::containerd::{Containerd, StartError, TOOLS_IMAGE, WORKLOAD_IMAGE};
use attestor_tests::kubelet_sim::KubeletSim;
use attestor_tests::require_root;
use attestor_tests::tempdir::TempDir;

fn ebpf_tracker() -> Tracker {
    Tracker::start(&TrackerOptions {
        mode: TrackerMode::Ebpf,
        ..TrackerOptions::default()
    })
    .expect("eBPF tracker starts on this kernel")
}

/// The private containerd, or `None` (test skipped) when not root or the packages are
/// missing outside CI.
async fn containerd() -> Option<Containerd> {
    if !require_root() {
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

fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A kubelet simulator serving `pods`, and a pipeline pointed at it.
struct Kubelet {
    sim: KubeletSim,
    pipeline: Pipeline,
    _dir: TempDir,
}

async fn kubelet(
    tracker: Tracker,
    pods: Vec<serde_json::Value>,
    max_poll_attempts: u32,
) -> Kubelet {
    let sim = ok(
        "kubelet simulator",
        KubeletSim::builder().token(TOKEN).pods(pods).start().await,
    );
    let dir = TempDir::new("cri-kubelet");
    let ca = ok("writing the CA", sim.write_ca(dir.path()));
    let token = dir.write("token", format!("{TOKEN}\n"));
    let config = sim_config(sim.port(), &ca, &token, max_poll_attempts, 50);
    let pipeline = ok("pipeline", Pipeline::new(tracker, &config));
    Kubelet {
        sim,
        pipeline,
        _dir: dir,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
    out.sort();
    out.dedup();
    out
}

/// The v2 cgroup path of `pid` as /proc reports it.
fn proc_v2_path(pid: i32) -> String {
    let text = ok(
        "reading /proc/<pid>/cgroup",
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")),
    );
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned()
}

fn give_up() -> Result<Vec<String>, Status> {
    Err(Status::new(
        Code::DeadlineExceeded,
        "no selectors found after max poll attempts",
    ))
}

const TOKEN: &str = "cri-test-service-account-token";
const WEB_UID: &str = "6f1d2c3b-4a59-4e7d-8c1b-0a9e8d7c6b51";
const WEB_OWNER_UID: &str = "0e2b7a44-1c3d-4f5e-9a8b-7c6d5e4f3a21";

#[tokio::test]
async fn app_containers_get_their_own_selectors() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let spec = PodSpec::new("web-0", WEB_UID)
        .namespace("shop")
        .service_account("web")
        .qos(Qos::BestEffort)
        .label("app", "web")
        .owner("StatefulSet", "web", WEB_OWNER_UID)
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[])
        .container(Kind::App, "metrics", TOOLS_IMAGE, &[]);
    let mut pod = ok("RunPodSandbox", Pod::run(&cd, spec).await);
    let app = ok("start app", pod.start(&cd, "app").await);
    let metrics = ok("start metrics", pod.start(&cd, "metrics").await);
    assert_ne!(app.id, metrics.id);
    assert_eq!(
        proc_v2_path(app.pid),
        format!("/kubepods/besteffort/pod{WEB_UID}/{}", app.id)
    );
    let json = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let k = kubelet(tracker, vec![json], 5).await;

    let wl = cd
        .image(WORKLOAD_IMAGE)
        .expect("workload image")
        .repo_digest();
    let tools = cd.image(TOOLS_IMAGE).expect("tools image").repo_digest();
    let pod_level = [
        "sa:web".to_owned(),
        "ns:shop".to_owned(),
        "node-name:node-1".to_owned(),
        format!("pod-uid:{WEB_UID}"),
        "pod-name:web-0".to_owned(),
        "pod-image-count:2".to_owned(),
        "pod-init-image-count:0".to_owned(),
        "pod-image:local.test/workload:1".to_owned(),
        format!("pod-image:{wl}"),
        "pod-image:local.test/tools:2".to_owned(),
        format!("pod-image:{tools}"),
        "pod-label:app:web".to_owned(),
        "pod-owner:StatefulSet:web".to_owned(),
        format!("pod-owner-uid:StatefulSet:{WEB_OWNER_UID}"),
    ];
    let with = |extra: &[String]| {
        let all: Vec<&str> = pod_level.iter().chain(extra).map(String::as_str).collect();
        strings(&all)
    };
    assert_eq!(
        k.pipeline.attest(app.pid).await,
        Ok(with(&[
            "container-name:app".into(),
            "container-image:local.test/workload:1".into(),
            format!("container-image:{wl}"),
        ]))
    );
    assert_eq!(
        k.pipeline.attest(metrics.pid).await,
        Ok(with(&[
            "container-name:metrics".into(),
            "container-image:local.test/tools:2".into(),
            format!("container-image:{tools}"),
        ]))
    );
    k.sim.shutdown().await;
    cd.shutdown().await;
    let _ = Path::new("/");
}
