//! The CRI fast path (`container_runtime_endpoint`), end to end: real pods created by a
//! private containerd exactly as the kubelet creates them, attested while the kubelet
//! simulator's `/pods` does not hold their status yet (what the kubelet really shows
//! between container start and the status round trip, and during a `postStart` hook).
//!
//! The oracle is the kubelet's own mapping as the harness builds it independently from CRI
//! (`Pod::kubelet_json`): every fast answer must equal, as an exact set, what SPIRE's path
//! gives once the simulator publishes that status. Every runtime trouble or disagreement
//! (socket missing, stalled, not gRPC, unknown container, labels naming another pod, an
//! answer for another container) must give SPIRE's outcome unchanged, never selectors from
//! the mismatch; fake runtimes (`attestor_tests::cri::fake`) play what containerd never does.
//!
//! Surfaces: the library pipeline (`Attestor::attest_traced`, whose trace says where the
//! status came from), the CLI (`attestor attest` / `attestor explain --output json`) and the
//! plugin binary loaded by HashiCorp's go-plugin (`tests/go-host`, as in `plugin.rs`).
//!
//! Needs root. Skipped with a message when not root (or when containerd/runc are not
//! installed) unless `CI` is set, in which case that is a failure. One containerd per test
//! function (the harness serialises them).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use attestor::attest::{Attestor, Source, Trace};
use attestor::runtime::{LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};
use attestor::status::{Code, Status};
use attestor::tracker::{Tracker, TrackerMode, TrackerOptions};
use attestor_tests::attest::{
    runtime_endpoint_line, sim_config, sim_config_with_runtime, sim_plugin_data,
};
use attestor_tests::containerd::pod::{Kind, Pod, PodSpec, Qos};
use attestor_tests::containerd::{Containerd, StartError, TOOLS_IMAGE, WORKLOAD_IMAGE};
use attestor_tests::cri::fake::{Behaviour, FakeRuntime, kubelet_container};
use attestor_tests::kubelet_sim::KubeletSim;
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{attestor_bin, comm, kill_and_reap, require_root, run_attestor, wait_for};
use serde_json::{Value, json};

// ------------------------------------------------------------------ harness

fn ebpf_tracker() -> Arc<Tracker> {
    Arc::new(
        Tracker::start(&TrackerOptions {
            mode: TrackerMode::Ebpf,
            ..TrackerOptions::default()
        })
        .expect("eBPF tracker starts on this kernel"),
    )
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

/// The private containerd's CRI socket (what `container_runtime_endpoint` names).
fn socket(cd: &Containerd) -> PathBuf {
    cd.dir().join("containerd.sock")
}

fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// SPIRE's poll settings for a pipeline.
#[derive(Debug, Clone, Copy)]
struct Poll {
    attempts: u32,
    every: Duration,
}

/// Quick give-ups: 4 lists 100 ms apart (~300 ms), ample for a runtime that answers in
/// milliseconds.
const QUICK: Poll = Poll {
    attempts: 4,
    every: Duration::from_millis(100),
};

/// Outlasts the runtime client's 500 ms deadline (5 lists 200 ms apart, ~800 ms), so a
/// stalled runtime's timeout is seen before SPIRE's give-up.
const OUTLASTS_DEADLINE: Poll = Poll {
    attempts: 5,
    every: Duration::from_millis(200),
};

const TOKEN: &str = "cri-fast-path-token";

/// A kubelet simulator, and pipelines pointed at it (SPIRE's, or with the fast path).
struct Kubelet {
    sim: KubeletSim,
    dir: TempDir,
    ca: PathBuf,
    token: PathBuf,
    poll: Poll,
}

impl Kubelet {
    async fn start(pods: Vec<Value>, poll: Poll) -> Kubelet {
        let sim = ok(
            "kubelet simulator",
            KubeletSim::builder().token(TOKEN).pods(pods).start().await,
        );
        let dir = TempDir::new("cri-fast");
        let ca = ok("writing the CA", sim.write_ca(dir.path()));
        let token = dir.write("token", format!("{TOKEN}\n"));
        Kubelet {
            sim,
            dir,
            ca,
            token,
            poll,
        }
    }

    fn poll_ms(&self) -> u64 {
        self.poll.every.as_millis() as u64
    }

    /// SPIRE's behaviour: no `container_runtime_endpoint`.
    fn spire(&self, tracker: &Arc<Tracker>) -> Attestor {
        let config = sim_config(
            self.sim.port(),
            &self.ca,
            &self.token,
            self.poll.attempts,
            self.poll_ms(),
        );
        let a = ok("pipeline", Attestor::new(config, tracker.clone(), |_| None));
        assert!(a.runtime().is_none(), "no runtime without the key");
        a
    }

    /// The same pipeline with `container_runtime_endpoint = "unix://<socket>"`.
    fn fast(&self, tracker: &Arc<Tracker>, socket: &Path) -> Attestor {
        let config = sim_config_with_runtime(
            self.sim.port(),
            &self.ca,
            &self.token,
            self.poll.attempts,
            self.poll_ms(),
            socket,
        );
        ok("pipeline", Attestor::new(config, tracker.clone(), |_| None))
    }

    /// The `plugin_data` text of [`Kubelet::spire`] (with the fast path: `socket`).
    fn plugin_data(&self, socket: Option<&Path>) -> String {
        let mut text = sim_plugin_data(
            self.sim.port(),
            &self.ca,
            &self.token,
            self.poll.attempts,
            self.poll_ms(),
        );
        if let Some(s) = socket {
            text += &runtime_endpoint_line(s);
        }
        text
    }

    /// Serves `pods` from now on (the kubelet published the statuses). A pipeline's shared
    /// fetcher hands a list fetched less than `poll_retry_interval` ago to a new
    /// attestation: wait that out, so the next attestation starts from the new list.
    async fn publish(&self, pods: Vec<Value>) {
        self.sim.set_pods(pods);
        tokio::time::sleep(self.poll.every * 2).await;
    }
}

async fn attest(a: &Attestor, pid: i32) -> (Result<Vec<String>, Status>, Trace) {
    a.attest_traced(i64::from(pid), std::future::pending())
        .await
}

fn give_up() -> Result<Vec<String>, Status> {
    Err(Status::new(
        Code::DeadlineExceeded,
        "no selectors found after max poll attempts",
    ))
}

/// An attestation the runtime answered: `want`, from the runtime, in one clean question.
async fn assert_fast(a: &Attestor, pid: i32, want: &[String], socket: &Path, what: &str) {
    let (got, trace) = attest(a, pid).await;
    assert_eq!(got.as_deref(), Ok(want), "{what}: fast path answer");
    assert_eq!(trace.source, Some(Source::Runtime), "{what}: source");
    let rt = trace
        .runtime
        .unwrap_or_else(|| panic!("{what}: no runtime trace"));
    assert_eq!(
        rt.endpoint,
        format!("unix://{}", socket.display()),
        "{what}"
    );
    assert_eq!(rt.fallback, None, "{what}");
    assert!(rt.attempts >= 1, "{what}: {rt:?}");
}

/// An attestation SPIRE's path answered (the kubelet's status), without the runtime.
async fn assert_kubelet(a: &Attestor, pid: i32, want: &[String], what: &str) {
    let (got, trace) = attest(a, pid).await;
    assert_eq!(got.as_deref(), Ok(want), "{what}: kubelet status answer");
    assert_eq!(trace.source, Some(Source::KubeletStatus), "{what}: source");
    assert!(
        trace.runtime.is_none(),
        "{what}: runtime asked although the status was listed: {:?}",
        trace.runtime
    );
}

/// An attestation that ends in SPIRE's give-up; returns the runtime's fallback reason (if
/// the fast path is on and a question was answered before the give-up).
async fn assert_gives_up(a: &Attestor, pid: i32, what: &str) -> Option<String> {
    let (got, trace) = attest(a, pid).await;
    assert_eq!(got, give_up(), "{what}");
    assert_eq!(trace.source, None, "{what}");
    eprintln!(
        "{what}: gave up after {:?}; runtime: {:?}",
        trace.total, trace.runtime
    );
    trace.runtime.and_then(|rt| rt.fallback)
}

/// `pod` as `/pods` lists it before the kubelet published the statuses of the containers
/// `names`: their entries removed from every status list (the spec still names them).
fn unpublished(pod: &Value, names: &[&str]) -> Value {
    let mut pod = pod.clone();
    for field in [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ] {
        if let Some(list) = pod
            .get_mut("status")
            .and_then(|s| s.get_mut(field))
            .and_then(Value::as_array_mut)
        {
            list.retain(|s| !names.iter().any(|n| s["name"] == *n));
        }
    }
    pod
}

/// `pod` with no `containerStatuses` at all (a pod the kubelet has not reported on yet).
fn without_container_statuses(pod: &Value) -> Value {
    let mut pod = pod.clone();
    if let Some(status) = pod.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("containerStatuses");
    }
    pod
}

/// Whether `/pods` currently names container `id` anywhere.
fn lists(sim: &KubeletSim, id: &str) -> bool {
    String::from_utf8_lossy(&sim.current_body()).contains(id)
}

// ------------------------------------------------------------------ expected selectors

/// Pod-level selectors: `sa`, `ns`, `node-name`, `pod-uid`, `pod-name`, then `extra`.
fn pod_level(sa: &str, ns: &str, uid: &str, name: &str, extra: &[String]) -> Vec<String> {
    let mut v = vec![
        format!("sa:{sa}"),
        format!("ns:{ns}"),
        "node-name:node-1".to_owned(),
        format!("pod-uid:{uid}"),
        format!("pod-name:{name}"),
    ];
    v.extend_from_slice(extra);
    v
}

/// `pod_level` plus the workload container's name and both image identifiers, sorted.
fn with_container(pod_level: &[String], name: &str, tag: &str, digest: &str) -> Vec<String> {
    let mut v: Vec<String> = pod_level.to_vec();
    v.push(format!("container-name:{name}"));
    v.push(format!("container-image:{tag}"));
    v.push(format!("container-image:{digest}"));
    v.sort();
    v.dedup();
    v
}

fn digest(cd: &Containerd, image: &str) -> String {
    match cd.image(image) {
        Some(i) => i.repo_digest(),
        None => panic!("harness has no image {image}"),
    }
}

/// A BestEffort pod in `default` with one app container running the workload image.
fn one_app_pod(name: &str, uid: &str) -> PodSpec {
    PodSpec::new(name, uid).container(Kind::App, "app", WORKLOAD_IMAGE, &[])
}

/// Selectors of the `app` container of a [`one_app_pod`].
fn one_app_selectors(cd: &Containerd, name: &str, uid: &str) -> Vec<String> {
    let wl = digest(cd, WORKLOAD_IMAGE);
    let pod = pod_level(
        "default",
        "default",
        uid,
        name,
        &[
            "pod-image-count:1".into(),
            "pod-init-image-count:0".into(),
            format!("pod-image:{WORKLOAD_IMAGE}"),
            format!("pod-image:{wl}"),
        ],
    );
    with_container(&pod, "app", WORKLOAD_IMAGE, &wl)
}

// ------------------------------------------------------------------ fast path on: real pods

const SINGLE_UID: &str = "0b1c2d3e-4f5a-4b6c-8d7e-8f9a0b1c2d3e";
const SINGLE_OWNER_UID: &str = "1c2d3e4f-5a6b-4c7d-9e8f-9a0b1c2d3e4f";

/// The kubelet lists the pod without any container status: the runtime answers at once,
/// and its answer is exactly SPIRE's once the status is published.
#[tokio::test]
async fn single_container_fast_answer_equals_spires_after_publication() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let spec = PodSpec::new("web-0", SINGLE_UID)
        .namespace("shop")
        .service_account("web")
        .qos(Qos::Burstable)
        .label("app", "web")
        .owner("StatefulSet", "web", SINGLE_OWNER_UID)
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[]);
    let mut pod = ok("RunPodSandbox", Pod::run(&cd, spec).await);
    let app = ok("start app", pod.start(&cd, "app").await);
    let published = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let k = Kubelet::start(vec![without_container_statuses(&published)], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let spire = k.spire(&tracker);
    let wl = digest(&cd, WORKLOAD_IMAGE);
    let want = with_container(
        &pod_level(
            "web",
            "shop",
            SINGLE_UID,
            "web-0",
            &[
                "pod-image-count:1".into(),
                "pod-init-image-count:0".into(),
                format!("pod-image:{WORKLOAD_IMAGE}"),
                format!("pod-image:{wl}"),
                "pod-label:app:web".into(),
                "pod-owner:StatefulSet:web".into(),
                format!("pod-owner-uid:StatefulSet:{SINGLE_OWNER_UID}"),
            ],
        ),
        "app",
        WORKLOAD_IMAGE,
        &wl,
    );
    assert_fast(&fast, app.pid, &want, &socket(&cd), "status not listed").await;
    // SPIRE's path on the same list has nothing to go on.
    assert_eq!(
        assert_gives_up(&spire, app.pid, "SPIRE, status not listed").await,
        None
    );

    // The kubelet publishes: SPIRE's answer is the same set.
    k.publish(vec![published]).await;
    assert_kubelet(&spire, app.pid, &want, "SPIRE, published").await;
    // With the fast path on, a listed status is used as SPIRE uses it; no runtime question.
    assert_kubelet(&fast, app.pid, &want, "fast path on, published").await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const MULTI_UID: &str = "2d3e4f5a-6b7c-4d8e-8f9a-0b1c2d3e4f5a";

/// Two app containers; the kubelet has published the first one's status, not the second's.
#[tokio::test]
async fn multi_container_pod_with_one_status_missing() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let spec = PodSpec::new("web-1", MULTI_UID)
        .namespace("shop")
        .service_account("web")
        .label("app", "web")
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[])
        .container(Kind::App, "metrics", TOOLS_IMAGE, &[]);
    let mut pod = ok("RunPodSandbox", Pod::run(&cd, spec).await);
    let app = ok("start app", pod.start(&cd, "app").await);
    // What the kubelet shows: app running, metrics still waiting (ContainerCreating).
    let stale = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let metrics = ok("start metrics", pod.start(&cd, "metrics").await);
    let k = Kubelet::start(vec![stale], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let spire = k.spire(&tracker);
    let wl = digest(&cd, WORKLOAD_IMAGE);
    let tools = digest(&cd, TOOLS_IMAGE);
    let both_running = pod_level(
        "web",
        "shop",
        MULTI_UID,
        "web-1",
        &[
            "pod-image-count:2".into(),
            "pod-init-image-count:0".into(),
            format!("pod-image:{WORKLOAD_IMAGE}"),
            format!("pod-image:{wl}"),
            format!("pod-image:{TOOLS_IMAGE}"),
            format!("pod-image:{tools}"),
            "pod-label:app:web".into(),
        ],
    );
    let want_metrics = with_container(&both_running, "metrics", TOOLS_IMAGE, &tools);
    assert_fast(&fast, metrics.pid, &want_metrics, &socket(&cd), "metrics").await;
    assert_gives_up(&spire, metrics.pid, "SPIRE, metrics not listed").await;
    // app's status is listed: SPIRE's answer from the stale list (metrics still waiting:
    // the spec's image and an empty imageID), not the runtime's.
    let metrics_waiting = pod_level(
        "web",
        "shop",
        MULTI_UID,
        "web-1",
        &[
            "pod-image-count:2".into(),
            "pod-init-image-count:0".into(),
            format!("pod-image:{WORKLOAD_IMAGE}"),
            format!("pod-image:{wl}"),
            format!("pod-image:{TOOLS_IMAGE}"),
            "pod-image:".into(),
            "pod-label:app:web".into(),
        ],
    );
    assert_kubelet(
        &fast,
        app.pid,
        &with_container(&metrics_waiting, "app", WORKLOAD_IMAGE, &wl),
        "app, listed",
    )
    .await;

    // The same from a list whose metrics entry is missing altogether.
    let published = ok("pod from CRI", pod.kubelet_json(&cd).await);
    k.publish(vec![unpublished(&published, &["metrics"])]).await;
    assert_fast(&fast, metrics.pid, &want_metrics, &socket(&cd), "no entry").await;

    k.publish(vec![published]).await;
    assert_kubelet(
        &spire,
        metrics.pid,
        &want_metrics,
        "SPIRE, metrics published",
    )
    .await;
    assert_kubelet(
        &spire,
        app.pid,
        &with_container(&both_running, "app", WORKLOAD_IMAGE, &wl),
        "SPIRE, app published",
    )
    .await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const INIT_UID: &str = "3e4f5a6b-7c8d-4e9f-9a0b-1c2d3e4f5a6b";

/// An init container attested while it runs; the kubelet's list was taken before it
/// started (both containers waiting).
#[tokio::test]
async fn init_container_while_it_runs() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let spec = PodSpec::new("migrate-0", INIT_UID)
        .namespace("db")
        .qos(Qos::Burstable)
        .container(Kind::Init, "wait-for-db", TOOLS_IMAGE, &[])
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[]);
    let mut pod = ok("RunPodSandbox", Pod::run(&cd, spec).await);
    let before = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let init = ok("start init", pod.start(&cd, "wait-for-db").await);
    let k = Kubelet::start(vec![before], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let spire = k.spire(&tracker);
    let tools = digest(&cd, TOOLS_IMAGE);
    // The app container is not created yet: the spec's image, an empty imageID.
    let want = with_container(
        &pod_level(
            "default",
            "db",
            INIT_UID,
            "migrate-0",
            &[
                "pod-image-count:1".into(),
                "pod-init-image-count:1".into(),
                format!("pod-image:{WORKLOAD_IMAGE}"),
                "pod-image:".into(),
                format!("pod-init-image:{TOOLS_IMAGE}"),
                format!("pod-init-image:{tools}"),
            ],
        ),
        "wait-for-db",
        TOOLS_IMAGE,
        &tools,
    );
    assert_fast(&fast, init.pid, &want, &socket(&cd), "init").await;
    assert_gives_up(&spire, init.pid, "SPIRE, init not listed").await;
    k.publish(vec![ok("pod from CRI", pod.kubelet_json(&cd).await)])
        .await;
    assert_kubelet(&spire, init.pid, &want, "SPIRE, init published").await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const SIDECAR_UID: &str = "4f5a6b7c-8d9e-4fa0-8b1c-2d3e4f5a6b7c";

/// A native sidecar (init container with `restartPolicy: Always`) attested before the
/// kubelet published it; the app is not created until the sidecar has started (its
/// `postStart` hook included), so it is waiting in both answers.
#[tokio::test]
async fn native_sidecar_before_its_status_is_published() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let spec = PodSpec::new("api-7d9f", SIDECAR_UID)
        .namespace("shop")
        .service_account("api")
        .label("app", "api")
        .container(Kind::Init, "setup", WORKLOAD_IMAGE, &["/bin/true"])
        .container(Kind::Sidecar, "log-shipper", TOOLS_IMAGE, &[])
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[]);
    let mut pod = ok("RunPodSandbox", Pod::run(&cd, spec).await);
    let setup = ok("start setup", pod.start(&cd, "setup").await);
    assert_eq!(ok("setup exits", pod.wait_exited(&cd, &setup.id).await), 0);
    // The kubelet has published setup's completion, nothing about the sidecar yet.
    let before = ok("pod from CRI", pod.kubelet_json(&cd).await);
    assert_eq!(
        before["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        json!("Completed")
    );
    let sidecar = ok("start sidecar", pod.start(&cd, "log-shipper").await);
    let k = Kubelet::start(vec![before], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let spire = k.spire(&tracker);
    let wl = digest(&cd, WORKLOAD_IMAGE);
    let tools = digest(&cd, TOOLS_IMAGE);
    let want = with_container(
        &pod_level(
            "api",
            "shop",
            SIDECAR_UID,
            "api-7d9f",
            &[
                "pod-image-count:1".into(),
                "pod-init-image-count:2".into(),
                format!("pod-image:{WORKLOAD_IMAGE}"),
                "pod-image:".into(),
                format!("pod-init-image:{WORKLOAD_IMAGE}"),
                format!("pod-init-image:{wl}"),
                format!("pod-init-image:{TOOLS_IMAGE}"),
                format!("pod-init-image:{tools}"),
                "pod-label:app:api".into(),
            ],
        ),
        "log-shipper",
        TOOLS_IMAGE,
        &tools,
    );
    assert_fast(&fast, sidecar.pid, &want, &socket(&cd), "sidecar").await;
    assert_gives_up(&spire, sidecar.pid, "SPIRE, sidecar not listed").await;
    k.publish(vec![ok("pod from CRI", pod.kubelet_json(&cd).await)])
        .await;
    assert_kubelet(&spire, sidecar.pid, &want, "SPIRE, sidecar published").await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const DEBUG_UID: &str = "5a6b7c8d-9eaf-4b0c-9c2d-3e4f5a6b7c8d";

/// `kubectl debug` adds an ephemeral container to a running pod: the API server's spec
/// names it at once, its status comes later.
#[tokio::test]
async fn ephemeral_container_added_to_a_running_pod() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("app-1", DEBUG_UID)).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let k = Kubelet::start(vec![ok("pod from CRI", pod.kubelet_json(&cd).await)], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let spire = k.spire(&tracker);
    let app_selectors = one_app_selectors(&cd, "app-1", DEBUG_UID);
    assert_kubelet(&fast, app.pid, &app_selectors, "app").await;

    pod.add_ephemeral("debugger-x7k2", TOOLS_IMAGE, &[], Some("app"));
    let spec_only = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let debug = ok("start debugger", pod.start(&cd, "debugger-x7k2").await);
    k.publish(vec![spec_only]).await;
    let wl = digest(&cd, WORKLOAD_IMAGE);
    let tools = digest(&cd, TOOLS_IMAGE);
    // Ephemeral containers count in no image selector.
    let want = with_container(
        &pod_level(
            "default",
            "default",
            DEBUG_UID,
            "app-1",
            &[
                "pod-image-count:1".into(),
                "pod-init-image-count:0".into(),
                format!("pod-image:{WORKLOAD_IMAGE}"),
                format!("pod-image:{wl}"),
            ],
        ),
        "debugger-x7k2",
        TOOLS_IMAGE,
        &tools,
    );
    assert_fast(&fast, debug.pid, &want, &socket(&cd), "debugger").await;
    assert_gives_up(&spire, debug.pid, "SPIRE, debugger not listed").await;
    k.publish(vec![ok("pod from CRI", pod.kubelet_json(&cd).await)])
        .await;
    assert_kubelet(&spire, debug.pid, &want, "SPIRE, debugger published").await;
    assert_kubelet(&spire, app.pid, &app_selectors, "SPIRE, app").await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const RESTART_UID: &str = "6b7c8d9e-afb0-4c1d-8d3e-4f5a6b7c8d9e";

/// A restarted container: the kubelet still lists the old instance's ID as running. The
/// new instance gets the same answer from the runtime as from SPIRE after publication.
#[tokio::test]
async fn restarted_container_while_the_list_names_the_old_instance() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("worker-0", RESTART_UID)).await,
    );
    let first = ok("start app", pod.start(&cd, "app").await);
    let stale = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let k = Kubelet::start(vec![stale.clone()], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let spire = k.spire(&tracker);
    let want = one_app_selectors(&cd, "worker-0", RESTART_UID);
    assert_kubelet(&fast, first.pid, &want, "first instance").await;

    let second = ok("restart app", pod.restart(&cd, "app").await);
    assert_ne!(second.id, first.id);
    assert_eq!(
        stale["status"]["containerStatuses"][0]["containerID"],
        json!(format!("containerd://{}", first.id)),
        "the list served names the old instance"
    );
    assert!(!lists(&k.sim, &second.id));
    assert_fast(&fast, second.pid, &want, &socket(&cd), "second instance").await;
    assert_gives_up(&spire, second.pid, "SPIRE, second not listed").await;
    k.publish(vec![ok("pod from CRI", pod.kubelet_json(&cd).await)])
        .await;
    assert_kubelet(&spire, second.pid, &want, "SPIRE, second published").await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

// ------------------------------------------------------------------ other surfaces

const CLI_UID: &str = "7c8d9eaf-b0c1-4d2e-9e4f-5a6b7c8d9eaf";

fn cli(args: Vec<String>) -> tokio::task::JoinHandle<(Option<i32>, String, String)> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_attestor(&args)
    })
}

fn explain_args(pid: i32, config: &Path) -> Vec<String> {
    vec![
        "explain".into(),
        "--pid".into(),
        pid.to_string(),
        "--config".into(),
        config.display().to_string(),
        "--output".into(),
        "json".into(),
    ]
}

fn prefixed(selectors: &[String]) -> Vec<String> {
    selectors.iter().map(|s| format!("k8s:{s}")).collect()
}

/// `attestor attest --pid` and `attestor explain --pid --output json` with the fast path
/// on, before the status is published; explain in SPIRE mode for contrast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_attest_and_explain_answer_from_the_runtime() {
    let Some(cd) = containerd().await else {
        return;
    };
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("cli-0", CLI_UID)).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let published = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let k = Kubelet::start(vec![without_container_statuses(&published)], QUICK).await;
    let with_runtime = k.dir.write("fast.hcl", k.plugin_data(Some(&socket(&cd))));
    let without = k.dir.write("spire.hcl", k.plugin_data(None));
    let want = one_app_selectors(&cd, "cli-0", CLI_UID);

    let attest_args = vec![
        "attest".into(),
        "--pid".into(),
        app.pid.to_string(),
        "--config".into(),
        with_runtime.display().to_string(),
    ];
    let (code, out, err) = ok("join", cli(attest_args).await);
    assert_eq!(code, Some(0), "attest: {err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), prefixed(&want), "{err}");

    let (code, out, err) = ok("join", cli(explain_args(app.pid, &with_runtime)).await);
    assert_eq!(code, Some(0), "explain: {err}");
    let v: Value = ok("explain JSON", serde_json::from_str(&out));
    assert_eq!(v["source"], json!("runtime"), "{v}");
    assert_eq!(
        v["runtime"]["endpoint"],
        json!(format!("unix://{}", socket(&cd).display())),
        "{v}"
    );
    assert_eq!(v["runtime"]["fallback"], Value::Null, "{v}");
    assert!(v["runtime"]["attempts"].as_u64() >= Some(1), "{v}");
    assert_eq!(v["outcome"], json!({"selectors": prefixed(&want)}), "{v}");

    // SPIRE mode on the same list: no runtime, SPIRE's give-up.
    let (code, out, _) = ok("join", cli(explain_args(app.pid, &without)).await);
    assert_eq!(code, Some(1));
    let v: Value = ok("explain JSON", serde_json::from_str(&out));
    assert_eq!(v["runtime"], Value::Null, "{v}");
    assert_eq!(v["source"], Value::Null, "{v}");
    assert_eq!(
        v["outcome"],
        json!({"error": {"code": "DeadlineExceeded",
                         "message": "no selectors found after max poll attempts"}}),
        "{v}"
    );

    // Published: SPIRE mode answers the same set, from the kubelet.
    k.publish(vec![published]).await;
    let (code, out, err) = ok("join", cli(explain_args(app.pid, &without)).await);
    assert_eq!(code, Some(0), "explain: {err}");
    let v: Value = ok("explain JSON", serde_json::from_str(&out));
    assert_eq!(v["source"], json!("kubelet"), "{v}");
    assert_eq!(v["outcome"], json!({"selectors": prefixed(&want)}), "{v}");
    k.sim.shutdown().await;
    cd.shutdown().await;
}

/// Builds the Go host of `plugin.rs` once per test binary (GOPATH mode against
/// /usr/share/gocode), into its own file.
fn go_host() -> &'static Path {
    static HOST: OnceLock<PathBuf> = OnceLock::new();
    HOST.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go-host");
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-host");
        let bin = work.join("attestor-go-host-cri");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&src)
            .env("GO111MODULE", "off")
            .env(
                "GOPATH",
                format!("{}:/usr/share/gocode", work.join("gopath").display()),
            )
            .env("GOCACHE", work.join("cache"))
            .env("GOFLAGS", "")
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run `go` ({e}): run `cargo xtask setup` (installs golang-go and go-plugin)")
            });
        assert!(status.success(), "go build of tests/go-host failed");
        bin
    })
}

/// The Go host driving the real plugin binary as the SPIRE agent does (one JSON command
/// per line; see `plugin.rs`). Its log is printed if the test fails.
struct GoHost {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    log: PathBuf,
}

impl GoHost {
    fn start(log_dir: &Path) -> GoHost {
        let log = log_dir.join("go-host.log");
        let file = ok("host log file", std::fs::File::create(&log));
        let mut child = ok(
            "start the Go host",
            Command::new(go_host())
                .arg("-plugin")
                .arg(attestor_bin())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(file)
                .spawn(),
        );
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        GoHost {
            child,
            stdin: Some(stdin),
            stdout,
            log,
        }
    }

    /// One command; blocks this worker thread (the simulator runs on the other).
    fn call(&mut self, cmd: Value) -> Value {
        tokio::task::block_in_place(|| {
            let stdin = self.stdin.as_mut().expect("host stdin open");
            writeln!(stdin, "{cmd}").expect("write to the Go host");
            let mut line = String::new();
            self.stdout.read_line(&mut line).expect("read the Go host");
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{cmd}: bad reply {line:?}: {e}"))
        })
    }

    fn code(r: &Value) -> (String, String) {
        (
            r["code"].as_str().unwrap_or("?").to_string(),
            r["message"].as_str().unwrap_or("?").to_string(),
        )
    }

    fn configure(&mut self, hcl: &str) {
        let r = self.call(json!({"op": "configure", "hcl": hcl}));
        assert_eq!(
            Self::code(&r),
            ("OK".into(), String::new()),
            "configure: {r}"
        );
    }

    /// `Attest(pid)`: selector values, or the gRPC code and message.
    fn attest(&mut self, pid: i32) -> Result<Vec<String>, (String, String)> {
        let r = self.call(json!({"op": "attest", "pid": pid}));
        match Self::code(&r) {
            (c, _) if c == "OK" => {
                Ok(serde_json::from_value(r["selectors"].clone()).expect("selectors"))
            }
            other => Err(other),
        }
    }
}

impl Drop for GoHost {
    fn drop(&mut self) {
        // Closing stdin makes the host kill its plugin and exit; SIGKILL only if it does not.
        self.stdin = None;
        if wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- Go host log ({}), last 100 lines:", self.log.display());
            for l in &lines[lines.len().saturating_sub(100)..] {
                eprintln!("{l}");
            }
        }
    }
}

const PLUGIN_UID: &str = "8d9eafb0-c1d2-4e3f-8f5a-6b7c8d9eafb0";

/// The plugin binary, loaded by go-plugin and configured with the fast path: `Attest`
/// answers before the status is published; reconfigured without it, SPIRE's give-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_plugin_attest_answers_from_the_runtime() {
    let Some(cd) = containerd().await else {
        return;
    };
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("plugin-0", PLUGIN_UID)).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let published = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let k = Kubelet::start(vec![without_container_statuses(&published)], QUICK).await;
    let want = one_app_selectors(&cd, "plugin-0", PLUGIN_UID);
    let mut host = GoHost::start(k.dir.path());
    let r = host.call(json!({"op": "load"}));
    assert_eq!(r["ok"], true, "load: {r}");

    host.configure(&k.plugin_data(Some(&socket(&cd))));
    assert_eq!(host.attest(app.pid), Ok(want.clone()), "fast path on");
    host.configure(&k.plugin_data(None));
    assert_eq!(
        host.attest(app.pid),
        Err((
            "DeadlineExceeded".into(),
            "no selectors found after max poll attempts".into()
        )),
        "SPIRE mode, status not listed"
    );
    k.publish(vec![published]).await;
    assert_eq!(
        host.attest(app.pid),
        Ok(want.clone()),
        "SPIRE mode, published"
    );
    host.configure(&k.plugin_data(Some(&socket(&cd))));
    assert_eq!(host.attest(app.pid), Ok(want), "fast path on, published");

    let r = host.call(json!({"op": "deinit"}));
    assert_eq!(
        GoHost::code(&r),
        ("OK".into(), String::new()),
        "deinit: {r}"
    );
    let r = host.call(json!({"op": "kill"}));
    assert_eq!(r["graceful"], true, "kill: {r}");
    drop(host);
    k.sim.shutdown().await;
    cd.shutdown().await;
}

// ------------------------------------------------------------------ postStart

const HOOK_UID: &str = "9eafb0c1-d2e3-4f4a-9b6c-7d8e9fa0b1c2";

/// One attestation of `pid` while the kubelet withholds the container's status until the
/// workload has its identity (a `postStart` hook that fetches an SVID: the kubelet
/// publishes nothing about the container until the hook returns). Returns the outcome and
/// whether the status was published.
async fn attest_behind_a_post_start_hook(
    k: &Kubelet,
    a: &Attestor,
    pid: i32,
    published: &Value,
) -> (Result<Vec<String>, Status>, Trace, bool) {
    let (hook_done, mut hook) = tokio::sync::watch::channel(false);
    let workload = async {
        let (result, trace) = attest(a, pid).await;
        if result.is_ok() {
            hook_done.send_replace(true);
        }
        // A failed hook never completes: the sender goes away with nothing sent.
        drop(hook_done);
        (result, trace)
    };
    let kubelet = async {
        if hook.wait_for(|done| *done).await.is_ok() {
            k.sim.set_pods(vec![published.clone()]);
            true
        } else {
            false
        }
    };
    let ((result, trace), published) = tokio::join!(workload, kubelet);
    (result, trace, published)
}

/// SPIRE cannot attest a container whose status waits for its own attestation (give-up,
/// the hook fails); the fast path attests it, and its answer is SPIRE's once published.
#[tokio::test]
async fn post_start_hook_deadlock_is_broken_by_the_runtime() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("hooked-0", HOOK_UID)).await,
    );
    let before = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let app = ok("start app", pod.start(&cd, "app").await);
    let published = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let k = Kubelet::start(vec![before], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let spire = k.spire(&tracker);
    let want = one_app_selectors(&cd, "hooked-0", HOOK_UID);

    let (result, trace, was_published) =
        attest_behind_a_post_start_hook(&k, &spire, app.pid, &published).await;
    assert_eq!(result, give_up(), "SPIRE: deadlock until max poll attempts");
    assert!(trace.runtime.is_none());
    assert!(!was_published);
    assert!(!lists(&k.sim, &app.id), "status still withheld");

    let (result, trace, was_published) =
        attest_behind_a_post_start_hook(&k, &fast, app.pid, &published).await;
    assert_eq!(result.as_deref(), Ok(&want[..]), "fast path attests");
    assert_eq!(trace.source, Some(Source::Runtime));
    assert!(was_published, "the hook returned and the kubelet published");
    assert!(lists(&k.sim, &app.id));
    tokio::time::sleep(k.poll.every * 2).await;
    assert_kubelet(&spire, app.pid, &want, "SPIRE, after the hook").await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

// ------------------------------------------------------------------ fast path off

const OFF_UID: &str = "afb0c1d2-e3f4-4a5b-8c7d-8e9fa0b1c2d3";

/// Without the key nothing changes, even with a healthy runtime next door: give-up while
/// the status is missing, found once published; the runtime is never asked.
#[tokio::test]
async fn fast_path_off_is_spires_behaviour() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("plain-0", OFF_UID)).await,
    );
    let before = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let app = ok("start app", pod.start(&cd, "app").await);
    let k = Kubelet::start(vec![before.clone()], QUICK).await;
    let spire = k.spire(&tracker);
    assert_eq!(
        assert_gives_up(&spire, app.pid, "waiting status").await,
        None
    );
    k.publish(vec![without_container_statuses(&before)]).await;
    assert_eq!(assert_gives_up(&spire, app.pid, "no statuses").await, None);
    k.publish(vec![ok("pod from CRI", pod.kubelet_json(&cd).await)])
        .await;
    assert_kubelet(
        &spire,
        app.pid,
        &one_app_selectors(&cd, "plain-0", OFF_UID),
        "published",
    )
    .await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

// ------------------------------------------------------------------ fallbacks: real runtime

const MISSING_UID: &str = "b0c1d2e3-f4a5-4b6c-9d8e-9fa0b1c2d3e4";

/// `container_runtime_endpoint` names a socket that does not exist: SPIRE's outcome, and
/// `explain` says which socket was unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_runtime_socket_gives_spires_outcome() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("nosock-0", MISSING_UID)).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let published = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let k = Kubelet::start(vec![without_container_statuses(&published)], QUICK).await;
    let missing = k.dir.path().join("no-such-runtime.sock");
    let fast = k.fast(&tracker, &missing);
    let why = assert_gives_up(&fast, app.pid, "socket missing")
        .await
        .expect("a fallback reason");
    assert!(
        why.contains(&format!("unix://{} unreachable", missing.display())),
        "{why}"
    );
    assert!(why.contains("No such file or directory"), "{why}");

    let config = k.dir.write("missing.hcl", k.plugin_data(Some(&missing)));
    let (code, out, _) = ok("join", cli(explain_args(app.pid, &config)).await);
    assert_eq!(code, Some(1));
    let v: Value = ok("explain JSON", serde_json::from_str(&out));
    assert_eq!(
        v["outcome"]["error"]["code"],
        json!("DeadlineExceeded"),
        "{v}"
    );
    assert_eq!(v["source"], Value::Null, "{v}");
    let fallback = v["runtime"]["fallback"].as_str().unwrap_or_default();
    assert!(
        fallback.contains(&format!("unix://{} unreachable", missing.display())),
        "{v}"
    );

    k.publish(vec![published]).await;
    assert_kubelet(
        &fast,
        app.pid,
        &one_app_selectors(&cd, "nosock-0", MISSING_UID),
        "published",
    )
    .await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const PAUSE_UID: &str = "c1d2e3f4-a5b6-4c7d-8e9f-a0b1c2d3e4f5";

/// The sandbox's pause process sits at a kubepods path named by the sandbox ID, which is
/// no container to CRI: SPIRE's give-up, whatever the kubelet publishes.
#[tokio::test]
async fn pause_process_is_a_container_the_runtime_does_not_know() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("paused-0", PAUSE_UID)).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let pause = ok("sandbox pid", pod.sandbox_pid(&cd).await);
    let k = Kubelet::start(vec![ok("pod from CRI", pod.kubelet_json(&cd).await)], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let why = assert_gives_up(&fast, pause, "pause process")
        .await
        .expect("a fallback reason");
    assert_eq!(
        why,
        format!(
            "the container runtime does not know container {}",
            pod.sandbox_id()
        )
    );
    assert_kubelet(
        &fast,
        app.pid,
        &one_app_selectors(&cd, "paused-0", PAUSE_UID),
        "app",
    )
    .await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const VICTIM_UID: &str = "d2e3f4a5-b6c7-4d8e-9fa0-b1c2d3e4f5a6";
const IMPOSTOR_UID: &str = "e3f4a5b6-c7d8-4e9f-8a0b-c2d3e4f5a6b7";

/// A container created (through the real runtime) in pod A's sandbox and cgroup whose CRI
/// labels claim to be pod B's `app`: B's namespace, name and UID, the newest (only) `app`
/// instance of B. Everything but the cgroup agrees with B; the fast path refuses, and no
/// selector of B ever comes out. Once the kubelet publishes (it lists B's containers by
/// the label, so B's status even names this one), SPIRE gives up too: the cgroup's pod is A.
#[tokio::test]
async fn labels_claiming_another_pods_uid_are_refused() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut a = ok(
        "RunPodSandbox A",
        Pod::run(&cd, one_app_pod("frontend-0", IMPOSTOR_UID)).await,
    );
    let b = ok(
        "RunPodSandbox B",
        Pod::run(
            &cd,
            PodSpec::new("vault-0", VICTIM_UID)
                .namespace("payments")
                .service_account("vault")
                .container(Kind::App, "app", TOOLS_IMAGE, &[]),
        )
        .await,
    );
    let a_app = ok("start A's app", a.start(&cd, "app").await);
    let b_before = ok("B from CRI", b.kubelet_json(&cd).await);
    let claims = [
        (LABEL_POD_UID, VICTIM_UID),
        (LABEL_POD_NAMESPACE, "payments"),
        (LABEL_POD_NAME, "vault-0"),
    ];
    let impostor = ok(
        "start the impostor",
        a.start_labelled(&cd, "app", &claims).await,
    );
    let a_json = ok("A from CRI", a.kubelet_json(&cd).await);
    assert!(
        !a_json.to_string().contains(&impostor.id),
        "A's status does not list it"
    );
    let k = Kubelet::start(vec![a_json.clone(), b_before], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let spire = k.spire(&tracker);
    let why = assert_gives_up(&fast, impostor.pid, "impostor")
        .await
        .expect("a fallback reason");
    assert_eq!(
        why,
        format!("runtime pod UID {VICTIM_UID} differs from the cgroup's pod UID {IMPOSTOR_UID}")
    );
    let a_selectors = one_app_selectors(&cd, "frontend-0", IMPOSTOR_UID);
    assert_kubelet(&fast, a_app.pid, &a_selectors, "A's own app").await;

    // The kubelet publishes what it reads by label: B's `app` status is the impostor's.
    let b_after = ok("B from CRI", b.kubelet_json(&cd).await);
    assert_eq!(
        b_after["status"]["containerStatuses"][0]["containerID"],
        json!(format!("containerd://{}", impostor.id))
    );
    k.publish(vec![a_json, b_after]).await;
    assert_gives_up(&spire, impostor.pid, "SPIRE, published").await;
    assert_gives_up(&fast, impostor.pid, "fast path on, published").await;
    assert_kubelet(&spire, a_app.pid, &a_selectors, "SPIRE, A's app").await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const NS_UID: &str = "f4a5b6c7-d8e9-4fa0-9b1c-d3e4f5a6b7c8";
const NAME_UID: &str = "a5b6c7d8-e9fa-4b0c-8d2e-e4f5a6b7c8d9";

/// Containers whose UID label matches the cgroup but whose namespace or pod-name label
/// disagrees with `/pods`: refused (the check is named). Once published (the kubelet lists
/// by UID and container name), SPIRE's answer is the listed pod's.
#[tokio::test]
async fn labels_disagreeing_with_the_pod_list_are_refused() {
    let Some(cd) = containerd().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut ns_pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("ns-probe-0", NS_UID)).await,
    );
    let mut name_pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, one_app_pod("name-probe-0", NAME_UID)).await,
    );
    let ns_before = ok("pod from CRI", ns_pod.kubelet_json(&cd).await);
    let name_before = ok("pod from CRI", name_pod.kubelet_json(&cd).await);
    let ns_liar = ok(
        "start",
        ns_pod
            .start_labelled(&cd, "app", &[(LABEL_POD_NAMESPACE, "kube-system")])
            .await,
    );
    let name_liar = ok(
        "start",
        name_pod
            .start_labelled(&cd, "app", &[(LABEL_POD_NAME, "kube-proxy-x7k2")])
            .await,
    );
    let k = Kubelet::start(vec![ns_before, name_before], QUICK).await;
    let fast = k.fast(&tracker, &socket(&cd));
    let spire = k.spire(&tracker);
    for (pid, field, claim, listed) in [
        (ns_liar.pid, "namespace", "kube-system", "default"),
        (name_liar.pid, "name", "kube-proxy-x7k2", "name-probe-0"),
    ] {
        let why = assert_gives_up(&fast, pid, field)
            .await
            .expect("a fallback reason");
        assert!(
            why.starts_with(&format!("runtime pod {field} "))
                && why.contains(claim)
                && why.contains("differs from the pod list's")
                && why.contains(listed),
            "{why}"
        );
    }
    k.publish(vec![
        ok("pod from CRI", ns_pod.kubelet_json(&cd).await),
        ok("pod from CRI", name_pod.kubelet_json(&cd).await),
    ])
    .await;
    assert_kubelet(
        &spire,
        ns_liar.pid,
        &one_app_selectors(&cd, "ns-probe-0", NS_UID),
        "SPIRE, namespace liar published",
    )
    .await;
    assert_kubelet(
        &spire,
        name_liar.pid,
        &one_app_selectors(&cd, "name-probe-0", NAME_UID),
        "SPIRE, name liar published",
    )
    .await;
    k.sim.shutdown().await;
    cd.shutdown().await;
}

// ------------------------------------------------------------------ fallbacks: fake runtimes

const FAKE_UID: &str = "b6c7d8e9-fa0b-4c1d-9e3f-f5a6b7c8d9ea";
const FAKE_CID: &str = "e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4";
const OTHER_CID: &str = "f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5";
/// The spec's image; the runtime reports it resolved (`status.image.image`), as containerd
/// reports a short name's full reference, and the kubelet publishes the runtime's.
const SPEC_IMAGE: &str = "team/svc:3.1";
const CRI_IMAGE: &str = "registry.example.com/team/svc:3.1";
const CRI_IMAGE_REF: &str = "registry.example.com/team/svc@sha256:5d41402abc4b2a76b9719d911017c592ae1c1f0d8e3c5b2a76b9719d911017c5";

/// A process in a kubelet-style cgroup of pod [`FAKE_UID`], container [`FAKE_CID`] (no
/// containerd: the fake runtime speaks for it).
struct FakeWorld {
    _sandbox: Sandbox,
    pid: i32,
    dir: TempDir,
}

impl Drop for FakeWorld {
    fn drop(&mut self) {
        kill_and_reap(self.pid);
    }
}

fn fake_world() -> Option<FakeWorld> {
    if !require_root() {
        return None;
    }
    let cgfs = ok("cgroup2 mount", attestor::cgroupfs::CgroupFs::discover());
    let sandbox = ok("sandbox", Sandbox::new(&cgfs, "cri-fast"));
    let dir = ok(
        "cgroup",
        sandbox.container(Layout::Cgroupfs, FAKE_UID, FAKE_CID),
    );
    let pid = ok(
        "clone3",
        spawn_into_cgroup(&dir, Some(&["/bin/sleep", "300"]), None),
    );
    wait_for(Duration::from_secs(5), || {
        (comm(pid).as_deref() == Some("sleep")).then_some(())
    })
    .expect("child exec'd sleep");
    Some(FakeWorld {
        _sandbox: sandbox,
        pid,
        dir: TempDir::new("cri-fake"),
    })
}

impl FakeWorld {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("fake-cri.sock")
    }

    fn runtime(&self, behaviour: Behaviour) -> FakeRuntime {
        ok(
            "fake runtime",
            FakeRuntime::start(&self.socket(), behaviour),
        )
    }
}

/// The fake pod in `/pods`: waiting (`published` false: the spec's image, no ID) or with
/// the status the kubelet publishes from the runtime's answer.
fn fake_pod(published: bool) -> Value {
    let status = if published {
        json!({"name": "main", "image": CRI_IMAGE, "imageID": CRI_IMAGE_REF,
               "containerID": format!("containerd://{FAKE_CID}"), "ready": true,
               "restartCount": 0, "started": true,
               "state": {"running": {"startedAt": "2026-11-27T17:00:00Z"}}})
    } else {
        json!({"name": "main", "image": SPEC_IMAGE, "imageID": "", "ready": false,
               "restartCount": 0, "started": false,
               "state": {"waiting": {"reason": "ContainerCreating"}}})
    };
    json!({
        "metadata": {"name": "svc-0", "namespace": "svc", "uid": FAKE_UID,
                     "labels": {"app": "svc"}},
        "spec": {"nodeName": "node-1", "serviceAccountName": "svc",
                 "containers": [{"name": "main", "image": SPEC_IMAGE}]},
        "status": {"phase": if published { "Running" } else { "Pending" },
                   "containerStatuses": [status]},
    })
}

fn fake_selectors() -> Vec<String> {
    with_container(
        &pod_level(
            "svc",
            "svc",
            FAKE_UID,
            "svc-0",
            &[
                "pod-image-count:1".into(),
                "pod-init-image-count:0".into(),
                format!("pod-image:{CRI_IMAGE}"),
                format!("pod-image:{CRI_IMAGE_REF}"),
                "pod-label:app:svc".into(),
            ],
        ),
        "main",
        CRI_IMAGE,
        CRI_IMAGE_REF,
    )
}

/// The CRI status the kubelet would have made for the fake's container, with `pod`'s
/// (namespace, name, uid) labels.
fn fake_status(
    id: &str,
    pod: (&str, &str, &str),
) -> attestor_tests::cri::fake::server::ContainerStatus {
    kubelet_container(
        id,
        "main",
        pod,
        CRI_IMAGE,
        CRI_IMAGE_REF,
        1_795_798_800_000_000_000,
    )
}

const FAKE_POD: (&str, &str, &str) = ("svc", "svc-0", FAKE_UID);

/// A fallback case's outcome: the fast path's fallback reason, and how long the fast
/// pipeline and SPIRE's took to give up on the same list.
struct Fallback {
    why: Option<String>,
    fast_took: Duration,
    spire_took: Duration,
}

/// Runs one fallback case: with the fake runtime `behaviour`, the fast pipeline gives
/// SPIRE's give-up, as SPIRE's pipeline does; once the simulator publishes the status,
/// both give SPIRE's answer.
async fn fake_fallback(behaviour: Behaviour, poll: Poll) -> Option<Fallback> {
    let world = fake_world()?;
    let tracker = ebpf_tracker();
    let fake = world.runtime(behaviour);
    let k = Kubelet::start(vec![fake_pod(false)], poll).await;
    let fast = k.fast(&tracker, fake.socket());
    let spire = k.spire(&tracker);
    let started = Instant::now();
    let why = assert_gives_up(&fast, world.pid, "fast path on, not listed").await;
    let fast_took = started.elapsed();
    let started = Instant::now();
    assert_eq!(
        assert_gives_up(&spire, world.pid, "SPIRE, not listed").await,
        None
    );
    let spire_took = started.elapsed();
    k.publish(vec![fake_pod(true)]).await;
    assert_kubelet(
        &fast,
        world.pid,
        &fake_selectors(),
        "fast path on, published",
    )
    .await;
    assert_kubelet(&spire, world.pid, &fake_selectors(), "SPIRE, published").await;
    k.sim.shutdown().await;
    Some(Fallback {
        why,
        fast_took,
        spire_took,
    })
}

/// The positive control for the fake-runtime cases: a fake that answers what containerd
/// would gives the published selectors (the runtime's image, not the spec's), with the two
/// calls the kubelet makes.
#[tokio::test]
async fn fake_runtime_answering_like_containerd_gives_the_published_selectors() {
    let Some(world) = fake_world() else {
        return;
    };
    let tracker = ebpf_tracker();
    let fake = world.runtime(Behaviour::Answer {
        statuses: [(FAKE_CID.to_string(), fake_status(FAKE_CID, FAKE_POD))].into(),
        delay: Duration::ZERO,
    });
    let k = Kubelet::start(vec![fake_pod(false)], QUICK).await;
    let fast = k.fast(&tracker, fake.socket());
    let spire = k.spire(&tracker);
    assert_fast(&fast, world.pid, &fake_selectors(), fake.socket(), "fake").await;
    assert_eq!(
        fake.calls(),
        vec![
            format!("ContainerStatus {FAKE_CID}"),
            "ListContainers".into()
        ]
    );
    k.publish(vec![fake_pod(true)]).await;
    assert_kubelet(&spire, world.pid, &fake_selectors(), "SPIRE, published").await;
    k.sim.shutdown().await;
}

/// A runtime that accepts connections and never answers: its deadline (500 ms) passes
/// inside SPIRE's poll budget, the reason says so, and the give-up comes when SPIRE's does.
#[tokio::test]
async fn stalled_runtime_gives_spires_outcome_within_the_poll_budget() {
    let Some(f) = fake_fallback(Behaviour::Stall, OUTLASTS_DEADLINE).await else {
        return;
    };
    let why = f
        .why
        .expect("the runtime's timeout is seen before the give-up");
    assert!(why.contains("did not answer within 500ms"), "{why}");
    assert!(why.contains("fake-cri.sock"), "names the endpoint: {why}");
    // The poll loop decides when to give up; the runtime may delay it by its deadline
    // (~700 ms here: the question running at SPIRE's give-up, and one more for the last
    // list). A sanity bound, not a measurement.
    assert!(
        f.fast_took < f.spire_took + Duration::from_secs(1),
        "fast path on: {:?}, SPIRE: {:?}",
        f.fast_took,
        f.spire_took
    );
}

/// A socket that answers bytes that are not HTTP/2.
#[tokio::test]
async fn runtime_speaking_no_grpc_gives_spires_outcome() {
    let Some(f) = fake_fallback(Behaviour::Garbage, QUICK).await else {
        return;
    };
    let why = f.why.expect("a fallback reason");
    assert!(why.contains("fake-cri.sock"), "names the endpoint: {why}");
}

#[tokio::test]
async fn runtime_answering_no_status_gives_spires_outcome() {
    let Some(f) = fake_fallback(Behaviour::Empty, QUICK).await else {
        return;
    };
    assert_eq!(
        f.why.as_deref(),
        Some(
            format!("CRI ContainerStatus answered something unusable: no status for container {FAKE_CID}")
                .as_str()
        )
    );
}

#[tokio::test]
async fn container_the_runtime_does_not_know_gives_spires_outcome() {
    let empty = Behaviour::Answer {
        statuses: Default::default(),
        delay: Duration::ZERO,
    };
    let Some(f) = fake_fallback(empty, QUICK).await else {
        return;
    };
    assert_eq!(
        f.why,
        Some(format!(
            "the container runtime does not know container {FAKE_CID}"
        ))
    );
}

#[tokio::test]
async fn runtime_answering_for_another_container_is_refused() {
    // Another container of the same pod, every label right: only the ID differs.
    let other = fake_status(OTHER_CID, FAKE_POD);
    let Some(f) = fake_fallback(Behaviour::Always(other), QUICK).await else {
        return;
    };
    let why = f.why.expect("a fallback reason");
    assert!(
        why.contains(&format!("asked for container {FAKE_CID}")) && why.contains(OTHER_CID),
        "{why}"
    );
}

#[tokio::test]
async fn fake_labels_naming_another_namespace_are_refused() {
    let liar = fake_status(FAKE_CID, ("kube-system", "svc-0", FAKE_UID));
    let behaviour = Behaviour::Answer {
        statuses: [(FAKE_CID.to_string(), liar)].into(),
        delay: Duration::ZERO,
    };
    let Some(f) = fake_fallback(behaviour, QUICK).await else {
        return;
    };
    let why = f.why.expect("a fallback reason");
    assert!(
        why.starts_with("runtime pod namespace") && why.contains("kube-system"),
        "{why}"
    );
}
