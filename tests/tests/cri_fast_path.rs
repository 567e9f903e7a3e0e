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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attestor::attest::{Attestor, Source, Trace};
use attestor::runtime::{LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};
use attestor::status::Status;
use attestor::tracker::Tracker;
use attestor_tests::attest::{
    runtime_endpoint_line, sim_config, sim_config_with_runtime, sim_plugin_data,
};
use attestor_tests::containerd::pod::{Kind, Pod, PodSpec, Qos, Started};
use attestor_tests::containerd::{Containerd, TOOLS_IMAGE, WORKLOAD_IMAGE};
use attestor_tests::cri::fake::{Behaviour, FakeRuntime, kubelet_container};
use attestor_tests::expect::{give_up, one_app_selectors, pod_level, with_container};
use attestor_tests::go_host::{self, GoHost};
use attestor_tests::kubelet_sim::KubeletSim;
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{
    attestor_bin, comm, ebpf_tracker, kill_and_reap, ok, require_root, run_attestor, wait_for,
};
use serde_json::{Value, json};

// ------------------------------------------------------------------ harness

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

/// This test's node: the private containerd (the kubelet's runtime; the fast path asks it
/// on [`Containerd::socket`]) and, for the tests that attest in this process, the eBPF
/// tracker, started before any pod as an agent's is.
struct Node {
    cd: Containerd,
    tracker: Option<Arc<Tracker>>,
}

impl Node {
    /// The node with its tracker, or `None`: the test is skipped
    /// ([`Containerd::start_or_skip`]).
    async fn start() -> Option<Node> {
        let cd = Containerd::start_or_skip().await?;
        Some(Node {
            cd,
            tracker: Some(Arc::new(ebpf_tracker())),
        })
    }

    /// The node without a tracker, for tests whose attestor is another process (the CLI,
    /// the plugin).
    async fn start_untracked() -> Option<Node> {
        let cd = Containerd::start_or_skip().await?;
        Some(Node { cd, tracker: None })
    }

    fn tracker(&self) -> &Arc<Tracker> {
        self.tracker
            .as_ref()
            .expect("a node started with Node::start")
    }

    /// RunPodSandbox for `spec`.
    async fn run(&self, spec: PodSpec) -> Pod {
        ok("RunPodSandbox", Pod::run(&self.cd, spec).await)
    }

    /// Creates and starts `pod`'s container `name`.
    async fn start_container(&self, pod: &mut Pod, name: &str) -> Started {
        ok(&format!("start {name}"), pod.start(&self.cd, name).await)
    }

    /// A [`PodSpec::one_app`] pod and its `app` container, started.
    async fn one_app(&self, name: &str, uid: &str) -> (Pod, Started) {
        let mut pod = self.run(PodSpec::one_app(name, uid, &[])).await;
        let app = self.start_container(&mut pod, "app").await;
        (pod, app)
    }

    /// `pod`'s `/pods` entry as the kubelet would publish it now (from CRI).
    async fn entry(&self, pod: &Pod) -> Value {
        ok("pod from CRI", pod.kubelet_json(&self.cd).await)
    }

    async fn shutdown(self) {
        self.cd.shutdown().await;
    }
}

/// The differential set-up on a [`Node`]: the kubelet simulator (quick polls), and two
/// pipelines on the node's tracker pointed at it: SPIRE's, and the fast path's asking the
/// node's containerd.
struct Differential<'a> {
    node: &'a Node,
    k: Kubelet,
    fast: Attestor,
    spire: Attestor,
}

impl<'a> Differential<'a> {
    /// The simulator serving `pods` (what the kubelet lists before publication).
    async fn start(node: &'a Node, pods: Vec<Value>) -> Differential<'a> {
        let k = Kubelet::start(pods, QUICK).await;
        let fast = k.fast(node.tracker(), node.cd.socket());
        let spire = k.spire(node.tracker());
        Differential {
            node,
            k,
            fast,
            spire,
        }
    }

    /// [`assert_fast`] with the fast pipeline: `want`, answered by the node's containerd.
    async fn assert_fast(&self, pid: i32, want: &[String], what: &str) {
        assert_fast(&self.fast, pid, want, self.node.cd.socket(), what).await;
    }

    /// Publishes the current entries of `pods` (see [`Kubelet::publish`]).
    async fn publish(&self, pods: &[&Pod]) {
        let mut entries = Vec::new();
        for pod in pods {
            entries.push(self.node.entry(pod).await);
        }
        self.k.publish(entries).await;
    }

    /// The differential check of `pid`, whose status the served list lacks: the fast path
    /// answers `want` while SPIRE's path gives up on that list; once the kubelet publishes
    /// `pod`'s status, SPIRE answers `want` too.
    async fn assert_fast_then_spire_after_publication(
        &self,
        pod: &Pod,
        pid: i32,
        want: &[String],
        what: &str,
    ) {
        self.assert_fast(pid, want, what).await;
        assert_gives_up(&self.spire, pid, &format!("SPIRE, {what} not listed")).await;
        self.publish(&[pod]).await;
        assert_kubelet(&self.spire, pid, want, &format!("SPIRE, {what} published")).await;
    }

    async fn shutdown(self) {
        self.k.sim.shutdown().await;
    }
}

async fn attest(a: &Attestor, pid: i32) -> (Result<Vec<String>, Status>, Trace) {
    a.attest_traced(i64::from(pid), std::future::pending())
        .await
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

// ------------------------------------------------------------------ fast path on: real pods

const SINGLE_UID: &str = "0b1c2d3e-4f5a-4b6c-8d7e-8f9a0b1c2d3e";
const SINGLE_OWNER_UID: &str = "1c2d3e4f-5a6b-4c7d-9e8f-9a0b1c2d3e4f";

/// The kubelet lists the pod without any container status: the runtime answers at once,
/// and its answer is exactly SPIRE's once the status is published.
#[tokio::test]
async fn single_container_fast_answer_equals_spires_after_publication() {
    let Some(node) = Node::start().await else {
        return;
    };
    let spec = PodSpec::new("web-0", SINGLE_UID)
        .namespace("shop")
        .service_account("web")
        .qos(Qos::Burstable)
        .label("app", "web")
        .owner("StatefulSet", "web", SINGLE_OWNER_UID)
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[]);
    let mut pod = node.run(spec).await;
    let app = node.start_container(&mut pod, "app").await;
    let published = node.entry(&pod).await;
    let d = Differential::start(&node, vec![without_container_statuses(&published)]).await;
    let wl = node.cd.repo_digest(WORKLOAD_IMAGE);
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
    d.assert_fast(app.pid, &want, "status not listed").await;
    // SPIRE's path on the same list has nothing to go on.
    assert_eq!(
        assert_gives_up(&d.spire, app.pid, "SPIRE, status not listed").await,
        None
    );

    // The kubelet publishes: SPIRE's answer is the same set.
    d.k.publish(vec![published]).await;
    assert_kubelet(&d.spire, app.pid, &want, "SPIRE, published").await;
    // With the fast path on, a listed status is used as SPIRE uses it; no runtime question.
    assert_kubelet(&d.fast, app.pid, &want, "fast path on, published").await;
    d.shutdown().await;
    node.shutdown().await;
}

const MULTI_UID: &str = "2d3e4f5a-6b7c-4d8e-8f9a-0b1c2d3e4f5a";

/// Two app containers; the kubelet has published the first one's status, not the second's.
#[tokio::test]
async fn multi_container_pod_with_one_status_missing() {
    let Some(node) = Node::start().await else {
        return;
    };
    let spec = PodSpec::new("web-1", MULTI_UID)
        .namespace("shop")
        .service_account("web")
        .label("app", "web")
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[])
        .container(Kind::App, "metrics", TOOLS_IMAGE, &[]);
    let mut pod = node.run(spec).await;
    let app = node.start_container(&mut pod, "app").await;
    // What the kubelet shows: app running, metrics still waiting (ContainerCreating).
    let stale = node.entry(&pod).await;
    let metrics = node.start_container(&mut pod, "metrics").await;
    let d = Differential::start(&node, vec![stale]).await;
    let wl = node.cd.repo_digest(WORKLOAD_IMAGE);
    let tools = node.cd.repo_digest(TOOLS_IMAGE);
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
    d.assert_fast(metrics.pid, &want_metrics, "metrics").await;
    assert_gives_up(&d.spire, metrics.pid, "SPIRE, metrics not listed").await;
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
        &d.fast,
        app.pid,
        &with_container(&metrics_waiting, "app", WORKLOAD_IMAGE, &wl),
        "app, listed",
    )
    .await;

    // The same from a list whose metrics entry is missing altogether.
    let published = node.entry(&pod).await;
    d.k.publish(vec![unpublished(&published, &["metrics"])])
        .await;
    d.assert_fast(metrics.pid, &want_metrics, "no entry").await;

    d.k.publish(vec![published]).await;
    assert_kubelet(
        &d.spire,
        metrics.pid,
        &want_metrics,
        "SPIRE, metrics published",
    )
    .await;
    assert_kubelet(
        &d.spire,
        app.pid,
        &with_container(&both_running, "app", WORKLOAD_IMAGE, &wl),
        "SPIRE, app published",
    )
    .await;
    d.shutdown().await;
    node.shutdown().await;
}

const INIT_UID: &str = "3e4f5a6b-7c8d-4e9f-9a0b-1c2d3e4f5a6b";

/// An init container attested while it runs; the kubelet's list was taken before it
/// started (both containers waiting).
#[tokio::test]
async fn init_container_while_it_runs() {
    let Some(node) = Node::start().await else {
        return;
    };
    let spec = PodSpec::new("migrate-0", INIT_UID)
        .namespace("db")
        .qos(Qos::Burstable)
        .container(Kind::Init, "wait-for-db", TOOLS_IMAGE, &[])
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[]);
    let mut pod = node.run(spec).await;
    let before = node.entry(&pod).await;
    let init = node.start_container(&mut pod, "wait-for-db").await;
    let d = Differential::start(&node, vec![before]).await;
    let tools = node.cd.repo_digest(TOOLS_IMAGE);
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
    d.assert_fast_then_spire_after_publication(&pod, init.pid, &want, "init")
        .await;
    d.shutdown().await;
    node.shutdown().await;
}

const SIDECAR_UID: &str = "4f5a6b7c-8d9e-4fa0-8b1c-2d3e4f5a6b7c";

/// A native sidecar (init container with `restartPolicy: Always`) attested before the
/// kubelet published it; the app is not created until the sidecar has started (its
/// `postStart` hook included), so it is waiting in both answers.
#[tokio::test]
async fn native_sidecar_before_its_status_is_published() {
    let Some(node) = Node::start().await else {
        return;
    };
    let spec = PodSpec::new("api-7d9f", SIDECAR_UID)
        .namespace("shop")
        .service_account("api")
        .label("app", "api")
        .container(Kind::Init, "setup", WORKLOAD_IMAGE, &["/bin/true"])
        .container(Kind::Sidecar, "log-shipper", TOOLS_IMAGE, &[])
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[]);
    let mut pod = node.run(spec).await;
    let setup = node.start_container(&mut pod, "setup").await;
    assert_eq!(
        ok("setup exits", pod.wait_exited(&node.cd, &setup.id).await),
        0
    );
    // The kubelet has published setup's completion, nothing about the sidecar yet.
    let before = node.entry(&pod).await;
    assert_eq!(
        before["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        json!("Completed")
    );
    let sidecar = node.start_container(&mut pod, "log-shipper").await;
    let d = Differential::start(&node, vec![before]).await;
    let wl = node.cd.repo_digest(WORKLOAD_IMAGE);
    let tools = node.cd.repo_digest(TOOLS_IMAGE);
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
    d.assert_fast_then_spire_after_publication(&pod, sidecar.pid, &want, "sidecar")
        .await;
    d.shutdown().await;
    node.shutdown().await;
}

const DEBUG_UID: &str = "5a6b7c8d-9eaf-4b0c-9c2d-3e4f5a6b7c8d";

/// `kubectl debug` adds an ephemeral container to a running pod: the API server's spec
/// names it at once, its status comes later.
#[tokio::test]
async fn ephemeral_container_added_to_a_running_pod() {
    let Some(node) = Node::start().await else {
        return;
    };
    let (mut pod, app) = node.one_app("app-1", DEBUG_UID).await;
    let d = Differential::start(&node, vec![node.entry(&pod).await]).await;
    let app_selectors = one_app_selectors(&node.cd, "app-1", DEBUG_UID);
    assert_kubelet(&d.fast, app.pid, &app_selectors, "app").await;

    pod.add_ephemeral("debugger-x7k2", TOOLS_IMAGE, &[], Some("app"));
    let spec_only = node.entry(&pod).await;
    let debug = node.start_container(&mut pod, "debugger-x7k2").await;
    d.k.publish(vec![spec_only]).await;
    let wl = node.cd.repo_digest(WORKLOAD_IMAGE);
    let tools = node.cd.repo_digest(TOOLS_IMAGE);
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
    d.assert_fast_then_spire_after_publication(&pod, debug.pid, &want, "debugger")
        .await;
    assert_kubelet(&d.spire, app.pid, &app_selectors, "SPIRE, app").await;
    d.shutdown().await;
    node.shutdown().await;
}

const RESTART_UID: &str = "6b7c8d9e-afb0-4c1d-8d3e-4f5a6b7c8d9e";

/// A restarted container: the kubelet still lists the old instance's ID as running. The
/// new instance gets the same answer from the runtime as from SPIRE after publication.
#[tokio::test]
async fn restarted_container_while_the_list_names_the_old_instance() {
    let Some(node) = Node::start().await else {
        return;
    };
    let (mut pod, first) = node.one_app("worker-0", RESTART_UID).await;
    let stale = node.entry(&pod).await;
    let d = Differential::start(&node, vec![stale.clone()]).await;
    let want = one_app_selectors(&node.cd, "worker-0", RESTART_UID);
    assert_kubelet(&d.fast, first.pid, &want, "first instance").await;

    let second = ok("restart app", pod.restart(&node.cd, "app").await);
    assert_ne!(second.id, first.id);
    assert_eq!(
        stale["status"]["containerStatuses"][0]["containerID"],
        json!(format!("containerd://{}", first.id)),
        "the list served names the old instance"
    );
    assert!(!lists(&d.k.sim, &second.id));
    d.assert_fast_then_spire_after_publication(&pod, second.pid, &want, "second instance")
        .await;
    d.shutdown().await;
    node.shutdown().await;
}

// ------------------------------------------------------------------ other surfaces

const CLI_UID: &str = "7c8d9eaf-b0c1-4d2e-9e4f-5a6b7c8d9eaf";

fn cli(args: Vec<String>) -> tokio::task::JoinHandle<(Option<i32>, String, String)> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_attestor(&args)
    })
}

/// `attestor explain --pid <pid> --config <config> --output json`: the exit code, the JSON
/// it printed, and its stderr.
async fn explain(pid: i32, config: &Path) -> (Option<i32>, Value, String) {
    let args = vec![
        "explain".into(),
        "--pid".into(),
        pid.to_string(),
        "--config".into(),
        config.display().to_string(),
        "--output".into(),
        "json".into(),
    ];
    let (code, out, err) = ok("join", cli(args).await);
    let v = ok(
        &format!("explain JSON (exit code {code:?}, stderr {err:?})"),
        serde_json::from_str(&out),
    );
    (code, v, err)
}

fn prefixed(selectors: &[String]) -> Vec<String> {
    selectors.iter().map(|s| format!("k8s:{s}")).collect()
}

/// `attestor attest --pid` and `attestor explain --pid --output json` with the fast path
/// on, before the status is published; explain in SPIRE mode for contrast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_attest_and_explain_answer_from_the_runtime() {
    let Some(node) = Node::start_untracked().await else {
        return;
    };
    let (pod, app) = node.one_app("cli-0", CLI_UID).await;
    let published = node.entry(&pod).await;
    let k = Kubelet::start(vec![without_container_statuses(&published)], QUICK).await;
    let with_runtime = k
        .dir
        .write("fast.hcl", k.plugin_data(Some(node.cd.socket())));
    let without = k.dir.write("spire.hcl", k.plugin_data(None));
    let want = one_app_selectors(&node.cd, "cli-0", CLI_UID);

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

    let (code, v, err) = explain(app.pid, &with_runtime).await;
    assert_eq!(code, Some(0), "explain: {err}");
    assert_eq!(v["source"], json!("runtime"), "{v}");
    assert_eq!(
        v["runtime"]["endpoint"],
        json!(format!("unix://{}", node.cd.socket().display())),
        "{v}"
    );
    assert_eq!(v["runtime"]["fallback"], Value::Null, "{v}");
    assert!(v["runtime"]["attempts"].as_u64() >= Some(1), "{v}");
    assert_eq!(v["outcome"], json!({"selectors": prefixed(&want)}), "{v}");

    // SPIRE mode on the same list: no runtime, SPIRE's give-up.
    let (code, v, _) = explain(app.pid, &without).await;
    assert_eq!(code, Some(1));
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
    let (code, v, err) = explain(app.pid, &without).await;
    assert_eq!(code, Some(0), "explain: {err}");
    assert_eq!(v["source"], json!("kubelet"), "{v}");
    assert_eq!(v["outcome"], json!({"selectors": prefixed(&want)}), "{v}");
    k.sim.shutdown().await;
    node.shutdown().await;
}

const PLUGIN_UID: &str = "8d9eafb0-c1d2-4e3f-8f5a-6b7c8d9eafb0";

/// The plugin binary, loaded by go-plugin and configured with the fast path: `Attest`
/// answers before the status is published; reconfigured without it, SPIRE's give-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_plugin_attest_answers_from_the_runtime() {
    let Some(node) = Node::start_untracked().await else {
        return;
    };
    let (pod, app) = node.one_app("plugin-0", PLUGIN_UID).await;
    let published = node.entry(&pod).await;
    let k = Kubelet::start(vec![without_container_statuses(&published)], QUICK).await;
    let want = one_app_selectors(&node.cd, "plugin-0", PLUGIN_UID);
    // The Go host of `plugin.rs`, driving the real binary as the SPIRE agent does; each
    // call blocks this worker thread (the simulator runs on the other).
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut host = GoHost::start(Command::new(GoHost::binary(tmp)), &attestor_bin(), tmp);
    let r = host.call(json!({"op": "load"}));
    assert_eq!(r["ok"], true, "load: {r}");
    let configured = ("OK".to_string(), String::new());

    let fast = k.plugin_data(Some(node.cd.socket()));
    assert_eq!(host.configure(&fast), configured, "configure, fast path on");
    assert_eq!(
        host.attest_result(app.pid),
        Ok(want.clone()),
        "fast path on"
    );
    assert_eq!(
        host.configure(&k.plugin_data(None)),
        configured,
        "configure, SPIRE mode"
    );
    assert_eq!(
        host.attest_result(app.pid),
        Err((
            "DeadlineExceeded".into(),
            "no selectors found after max poll attempts".into()
        )),
        "SPIRE mode, status not listed"
    );
    k.publish(vec![published]).await;
    assert_eq!(
        host.attest_result(app.pid),
        Ok(want.clone()),
        "SPIRE mode, published"
    );
    assert_eq!(host.configure(&fast), configured, "configure, fast path on");
    assert_eq!(
        host.attest_result(app.pid),
        Ok(want),
        "fast path on, published"
    );

    let r = host.call(json!({"op": "deinit"}));
    assert_eq!(go_host::code(&r), configured, "deinit: {r}");
    let r = host.call(json!({"op": "kill"}));
    assert_eq!(r["graceful"], true, "kill: {r}");
    drop(host);
    k.sim.shutdown().await;
    node.shutdown().await;
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
    let Some(node) = Node::start().await else {
        return;
    };
    let mut pod = node.run(PodSpec::one_app("hooked-0", HOOK_UID, &[])).await;
    let before = node.entry(&pod).await;
    let app = node.start_container(&mut pod, "app").await;
    let published = node.entry(&pod).await;
    let d = Differential::start(&node, vec![before]).await;
    let want = one_app_selectors(&node.cd, "hooked-0", HOOK_UID);

    let (result, trace, was_published) =
        attest_behind_a_post_start_hook(&d.k, &d.spire, app.pid, &published).await;
    assert_eq!(result, give_up(), "SPIRE: deadlock until max poll attempts");
    assert!(trace.runtime.is_none());
    assert!(!was_published);
    assert!(!lists(&d.k.sim, &app.id), "status still withheld");

    let (result, trace, was_published) =
        attest_behind_a_post_start_hook(&d.k, &d.fast, app.pid, &published).await;
    assert_eq!(result.as_deref(), Ok(&want[..]), "fast path attests");
    assert_eq!(trace.source, Some(Source::Runtime));
    assert!(was_published, "the hook returned and the kubelet published");
    assert!(lists(&d.k.sim, &app.id));
    tokio::time::sleep(d.k.poll.every * 2).await;
    assert_kubelet(&d.spire, app.pid, &want, "SPIRE, after the hook").await;
    d.shutdown().await;
    node.shutdown().await;
}

// ------------------------------------------------------------------ fast path off

const OFF_UID: &str = "afb0c1d2-e3f4-4a5b-8c7d-8e9fa0b1c2d3";

/// Without the key nothing changes, even with a healthy runtime next door: give-up while
/// the status is missing, found once published; the runtime is never asked.
#[tokio::test]
async fn fast_path_off_is_spires_behaviour() {
    let Some(node) = Node::start().await else {
        return;
    };
    let mut pod = node.run(PodSpec::one_app("plain-0", OFF_UID, &[])).await;
    let before = node.entry(&pod).await;
    let app = node.start_container(&mut pod, "app").await;
    let k = Kubelet::start(vec![before.clone()], QUICK).await;
    let spire = k.spire(node.tracker());
    assert_eq!(
        assert_gives_up(&spire, app.pid, "waiting status").await,
        None
    );
    k.publish(vec![without_container_statuses(&before)]).await;
    assert_eq!(assert_gives_up(&spire, app.pid, "no statuses").await, None);
    k.publish(vec![node.entry(&pod).await]).await;
    assert_kubelet(
        &spire,
        app.pid,
        &one_app_selectors(&node.cd, "plain-0", OFF_UID),
        "published",
    )
    .await;
    k.sim.shutdown().await;
    node.shutdown().await;
}

// ------------------------------------------------------------------ fallbacks: real runtime

const MISSING_UID: &str = "b0c1d2e3-f4a5-4b6c-9d8e-9fa0b1c2d3e4";

/// `container_runtime_endpoint` names a socket that does not exist: SPIRE's outcome, and
/// `explain` says which socket was unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_runtime_socket_gives_spires_outcome() {
    let Some(node) = Node::start().await else {
        return;
    };
    let (pod, app) = node.one_app("nosock-0", MISSING_UID).await;
    let published = node.entry(&pod).await;
    let k = Kubelet::start(vec![without_container_statuses(&published)], QUICK).await;
    let missing = k.dir.path().join("no-such-runtime.sock");
    let fast = k.fast(node.tracker(), &missing);
    let why = assert_gives_up(&fast, app.pid, "socket missing")
        .await
        .expect("a fallback reason");
    assert!(
        why.contains(&format!("unix://{} unreachable", missing.display())),
        "{why}"
    );
    assert!(why.contains("No such file or directory"), "{why}");

    let config = k.dir.write("missing.hcl", k.plugin_data(Some(&missing)));
    let (code, v, _) = explain(app.pid, &config).await;
    assert_eq!(code, Some(1));
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
        &one_app_selectors(&node.cd, "nosock-0", MISSING_UID),
        "published",
    )
    .await;
    k.sim.shutdown().await;
    node.shutdown().await;
}

const PAUSE_UID: &str = "c1d2e3f4-a5b6-4c7d-8e9f-a0b1c2d3e4f5";

/// The sandbox's pause process sits at a kubepods path named by the sandbox ID, which is
/// no container to CRI: SPIRE's give-up, whatever the kubelet publishes.
#[tokio::test]
async fn pause_process_is_a_container_the_runtime_does_not_know() {
    let Some(node) = Node::start().await else {
        return;
    };
    let (pod, app) = node.one_app("paused-0", PAUSE_UID).await;
    let pause = ok("sandbox pid", pod.sandbox_pid(&node.cd).await);
    let k = Kubelet::start(vec![node.entry(&pod).await], QUICK).await;
    let fast = k.fast(node.tracker(), node.cd.socket());
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
        &one_app_selectors(&node.cd, "paused-0", PAUSE_UID),
        "app",
    )
    .await;
    k.sim.shutdown().await;
    node.shutdown().await;
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
    let Some(node) = Node::start().await else {
        return;
    };
    let mut a = node
        .run(PodSpec::one_app("frontend-0", IMPOSTOR_UID, &[]))
        .await;
    let b = node
        .run(
            PodSpec::new("vault-0", VICTIM_UID)
                .namespace("payments")
                .service_account("vault")
                .container(Kind::App, "app", TOOLS_IMAGE, &[]),
        )
        .await;
    let a_app = node.start_container(&mut a, "app").await;
    let b_before = node.entry(&b).await;
    let claims = [
        (LABEL_POD_UID, VICTIM_UID),
        (LABEL_POD_NAMESPACE, "payments"),
        (LABEL_POD_NAME, "vault-0"),
    ];
    let impostor = ok(
        "start the impostor",
        a.start_labelled(&node.cd, "app", &claims).await,
    );
    let a_json = node.entry(&a).await;
    assert!(
        !a_json.to_string().contains(&impostor.id),
        "A's status does not list it"
    );
    let d = Differential::start(&node, vec![a_json.clone(), b_before]).await;
    let why = assert_gives_up(&d.fast, impostor.pid, "impostor")
        .await
        .expect("a fallback reason");
    assert_eq!(
        why,
        format!("runtime pod UID {VICTIM_UID} differs from the cgroup's pod UID {IMPOSTOR_UID}")
    );
    let a_selectors = one_app_selectors(&node.cd, "frontend-0", IMPOSTOR_UID);
    assert_kubelet(&d.fast, a_app.pid, &a_selectors, "A's own app").await;

    // The kubelet publishes what it reads by label: B's `app` status is the impostor's.
    let b_after = node.entry(&b).await;
    assert_eq!(
        b_after["status"]["containerStatuses"][0]["containerID"],
        json!(format!("containerd://{}", impostor.id))
    );
    d.k.publish(vec![a_json, b_after]).await;
    assert_gives_up(&d.spire, impostor.pid, "SPIRE, published").await;
    assert_gives_up(&d.fast, impostor.pid, "fast path on, published").await;
    assert_kubelet(&d.spire, a_app.pid, &a_selectors, "SPIRE, A's app").await;
    d.shutdown().await;
    node.shutdown().await;
}

const NS_UID: &str = "f4a5b6c7-d8e9-4fa0-9b1c-d3e4f5a6b7c8";
const NAME_UID: &str = "a5b6c7d8-e9fa-4b0c-8d2e-e4f5a6b7c8d9";

/// Containers whose UID label matches the cgroup but whose namespace or pod-name label
/// disagrees with `/pods`: refused (the check is named). Once published (the kubelet lists
/// by UID and container name), SPIRE's answer is the listed pod's.
#[tokio::test]
async fn labels_disagreeing_with_the_pod_list_are_refused() {
    let Some(node) = Node::start().await else {
        return;
    };
    let mut ns_pod = node.run(PodSpec::one_app("ns-probe-0", NS_UID, &[])).await;
    let mut name_pod = node
        .run(PodSpec::one_app("name-probe-0", NAME_UID, &[]))
        .await;
    let ns_before = node.entry(&ns_pod).await;
    let name_before = node.entry(&name_pod).await;
    let ns_liar = ok(
        "start",
        ns_pod
            .start_labelled(&node.cd, "app", &[(LABEL_POD_NAMESPACE, "kube-system")])
            .await,
    );
    let name_liar = ok(
        "start",
        name_pod
            .start_labelled(&node.cd, "app", &[(LABEL_POD_NAME, "kube-proxy-x7k2")])
            .await,
    );
    let d = Differential::start(&node, vec![ns_before, name_before]).await;
    for (pid, field, claim, listed) in [
        (ns_liar.pid, "namespace", "kube-system", "default"),
        (name_liar.pid, "name", "kube-proxy-x7k2", "name-probe-0"),
    ] {
        let why = assert_gives_up(&d.fast, pid, field)
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
    d.publish(&[&ns_pod, &name_pod]).await;
    assert_kubelet(
        &d.spire,
        ns_liar.pid,
        &one_app_selectors(&node.cd, "ns-probe-0", NS_UID),
        "SPIRE, namespace liar published",
    )
    .await;
    assert_kubelet(
        &d.spire,
        name_liar.pid,
        &one_app_selectors(&node.cd, "name-probe-0", NAME_UID),
        "SPIRE, name liar published",
    )
    .await;
    d.shutdown().await;
    node.shutdown().await;
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
    let tracker = Arc::new(ebpf_tracker());
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
    let tracker = Arc::new(ebpf_tracker());
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
