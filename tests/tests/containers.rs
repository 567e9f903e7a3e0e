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
use std::time::Duration;

use attestor::locator::ContainerRef;
use attestor::tracker::Tracker;
use attestor_tests::attest::{Pipeline, sim_config};
use attestor_tests::containerd::pod::{Kind, Pod, PodSpec, Qos};
use attestor_tests::containerd::{Containerd, TOOLS_IMAGE, WORKLOAD_IMAGE};
use attestor_tests::expect::{give_up, one_app_selectors, pod_level, with_container};
use attestor_tests::kubelet_sim::KubeletSim;
use attestor_tests::runc::RuncContainer;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{children, comm, ebpf_tracker, ok, require_root, wait_for};
use serde_json::json;

/// A kubelet simulator serving `pods`, and a pipeline pointed at it.
struct Kubelet {
    sim: KubeletSim,
    pipeline: Pipeline,
    _dir: TempDir,
}

/// The pipeline's `poll_retry_interval`.
const POLL_RETRY: Duration = Duration::from_millis(50);

impl Kubelet {
    /// Serves `pods` from now on. The shared fetcher hands a list fetched less than
    /// `poll_retry_interval` ago to a new attestation, so wait that out: the next
    /// attestation then starts from a list fetched after the change.
    async fn set_pods(&self, pods: Vec<serde_json::Value>) {
        self.sim.set_pods(pods);
        tokio::time::sleep(POLL_RETRY * 2).await;
    }

    /// Drops the pod from the list, as the kubelet does once the API server deleted it.
    async fn delete_pod(&self, uid: &str) {
        self.sim.delete_pod(uid);
        tokio::time::sleep(POLL_RETRY * 2).await;
    }
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
    let config = sim_config(
        sim.port(),
        &ca,
        &token,
        max_poll_attempts,
        POLL_RETRY.as_millis() as u64,
    );
    let pipeline = ok("pipeline", Pipeline::new(tracker, &config));
    Kubelet {
        sim,
        pipeline,
        _dir: dir,
    }
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

const TOKEN: &str = "cri-test-service-account-token";
/// Every test's pods are in the first list the pipeline fetches; a few more lists are
/// allowed so a give-up is a give-up and not a fluke.
const MAX_POLL_ATTEMPTS: u32 = 3;

// ------------------------------------------------------------------ containerd + CRI

const WEB_UID: &str = "6f1d2c3b-4a59-4e7d-8c1b-0a9e8d7c6b51";
const WEB_OWNER_UID: &str = "0e2b7a44-1c3d-4f5e-9a8b-7c6d5e4f3a21";

#[tokio::test]
async fn app_containers_get_their_own_selectors() {
    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let spec = PodSpec::new("web-0", WEB_UID)
        .namespace("shop")
        .service_account("web")
        .qos(Qos::BestEffort)
        .label("app", "web")
        .label("tier", "frontend")
        .owner("StatefulSet", "web", WEB_OWNER_UID)
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[])
        .container(Kind::App, "metrics", TOOLS_IMAGE, &[]);
    let mut pod = ok("RunPodSandbox", Pod::run(&cd, spec).await);
    let app = ok("start app", pod.start(&cd, "app").await);
    let metrics = ok("start metrics", pod.start(&cd, "metrics").await);
    assert_ne!(app.id, metrics.id);
    // Real CRI placement, cgroupfs driver.
    assert_eq!(
        proc_v2_path(app.pid),
        format!("/kubepods/besteffort/pod{WEB_UID}/{}", app.id)
    );
    let json = ok("pod from CRI", pod.kubelet_json(&cd).await);
    assert_eq!(
        json["status"]["containerStatuses"][0]["containerID"],
        json!(format!("containerd://{}", app.id))
    );
    let k = kubelet(tracker, vec![json], MAX_POLL_ATTEMPTS).await;

    let wl = cd.repo_digest(WORKLOAD_IMAGE);
    let tools = cd.repo_digest(TOOLS_IMAGE);
    // What kubelet's image manager sees: the locally built image under its tag and repo
    // digest, with the config digest as its ID.
    let image = ok("ImageStatus", cd.cri().image_status(WORKLOAD_IMAGE).await)
        .expect("CRI knows the imported workload image");
    let built = cd.image(WORKLOAD_IMAGE).expect("workload image");
    assert_eq!(image.id, built.config_digest);
    assert_eq!(image.repo_tags, vec![WORKLOAD_IMAGE.to_owned()]);
    assert_eq!(image.repo_digests, vec![wl.clone()]);
    let pod = pod_level(
        "web",
        "shop",
        WEB_UID,
        "web-0",
        &[
            "pod-image-count:2".into(),
            "pod-init-image-count:0".into(),
            format!("pod-image:{WORKLOAD_IMAGE}"),
            format!("pod-image:{wl}"),
            format!("pod-image:{TOOLS_IMAGE}"),
            format!("pod-image:{tools}"),
            "pod-label:app:web".into(),
            "pod-label:tier:frontend".into(),
            "pod-owner:StatefulSet:web".into(),
            format!("pod-owner-uid:StatefulSet:{WEB_OWNER_UID}"),
        ],
    );
    assert_eq!(
        k.pipeline.attest(app.pid).await,
        Ok(with_container(&pod, "app", WORKLOAD_IMAGE, &wl))
    );
    assert_eq!(
        k.pipeline.attest(metrics.pid).await,
        Ok(with_container(&pod, "metrics", TOOLS_IMAGE, &tools))
    );
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const INIT_UID: &str = "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c81";

#[tokio::test]
async fn init_container_while_it_runs_then_the_app() {
    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let spec = PodSpec::new("migrate-0", INIT_UID)
        .namespace("db")
        .qos(Qos::Burstable)
        .container(Kind::Init, "wait-for-db", TOOLS_IMAGE, &[])
        .container(Kind::App, "app", WORKLOAD_IMAGE, &[]);
    let mut pod = ok("RunPodSandbox", Pod::run(&cd, spec).await);
    let init = ok("start init", pod.start(&cd, "wait-for-db").await);
    assert_eq!(
        proc_v2_path(init.pid),
        format!("/kubepods/burstable/pod{INIT_UID}/{}", init.id)
    );
    let json = ok("pod from CRI", pod.kubelet_json(&cd).await);
    assert_eq!(json["status"]["phase"], json!("Pending"));
    let k = kubelet(tracker, vec![json], MAX_POLL_ATTEMPTS).await;
    let wl = cd.repo_digest(WORKLOAD_IMAGE);
    let tools = cd.repo_digest(TOOLS_IMAGE);
    // The app container is still waiting: its status has the spec's image and an empty
    // imageID, which SPIRE turns into an empty `pod-image:` selector.
    let pending = pod_level(
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
    );
    assert_eq!(
        k.pipeline.attest(init.pid).await,
        Ok(with_container(&pending, "wait-for-db", TOOLS_IMAGE, &tools))
    );

    // The init container finishes; kubelet starts the app.
    ok("stop init", pod.stop(&cd, &init.id).await);
    ok("init exited", pod.wait_exited(&cd, &init.id).await);
    let app = ok("start app", pod.start(&cd, "app").await);
    k.set_pods(vec![ok("pod from CRI", pod.kubelet_json(&cd).await)])
        .await;
    let running = pod_level(
        "default",
        "db",
        INIT_UID,
        "migrate-0",
        &[
            "pod-image-count:1".into(),
            "pod-init-image-count:1".into(),
            format!("pod-image:{WORKLOAD_IMAGE}"),
            format!("pod-image:{wl}"),
            format!("pod-init-image:{TOOLS_IMAGE}"),
            format!("pod-init-image:{tools}"),
        ],
    );
    assert_eq!(
        k.pipeline.attest(app.pid).await,
        Ok(with_container(&running, "app", WORKLOAD_IMAGE, &wl))
    );
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const SIDECAR_UID: &str = "2b3c4d5e-6f7a-4b2c-9d3e-4f5a6b7c8d92";

#[tokio::test]
async fn native_sidecar_runs_beside_the_app() {
    let Some(cd) = Containerd::start_or_skip().await else {
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
    let sidecar = ok("start sidecar", pod.start(&cd, "log-shipper").await);
    let app = ok("start app", pod.start(&cd, "app").await);
    let json = ok("pod from CRI", pod.kubelet_json(&cd).await);
    assert_eq!(json["status"]["phase"], json!("Running"));
    assert_eq!(
        json["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        json!("Completed")
    );
    let k = kubelet(tracker, vec![json], MAX_POLL_ATTEMPTS).await;
    let wl = cd.repo_digest(WORKLOAD_IMAGE);
    let tools = cd.repo_digest(TOOLS_IMAGE);
    let pod = pod_level(
        "api",
        "shop",
        SIDECAR_UID,
        "api-7d9f",
        &[
            "pod-image-count:1".into(),
            "pod-init-image-count:2".into(),
            format!("pod-image:{WORKLOAD_IMAGE}"),
            format!("pod-image:{wl}"),
            format!("pod-init-image:{WORKLOAD_IMAGE}"),
            format!("pod-init-image:{wl}"),
            format!("pod-init-image:{TOOLS_IMAGE}"),
            format!("pod-init-image:{tools}"),
            "pod-label:app:api".into(),
        ],
    );
    assert_eq!(
        k.pipeline.attest(sidecar.pid).await,
        Ok(with_container(&pod, "log-shipper", TOOLS_IMAGE, &tools))
    );
    assert_eq!(
        k.pipeline.attest(app.pid).await,
        Ok(with_container(&pod, "app", WORKLOAD_IMAGE, &wl))
    );
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const DEBUG_UID: &str = "3c4d5e6f-7a8b-4c3d-8e4f-5a6b7c8d9ea3";

#[tokio::test]
async fn ephemeral_debug_container_added_to_a_running_pod() {
    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, PodSpec::one_app("app-1", DEBUG_UID, &[])).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let k = kubelet(
        tracker,
        vec![ok("pod from CRI", pod.kubelet_json(&cd).await)],
        MAX_POLL_ATTEMPTS,
    )
    .await;
    let app_selectors = one_app_selectors(&cd, "app-1", DEBUG_UID);
    assert_eq!(k.pipeline.attest(app.pid).await, Ok(app_selectors.clone()));

    // `kubectl debug -it app-1 --image=local.test/tools:2 --target=app`
    pod.add_ephemeral("debugger-x7k2", TOOLS_IMAGE, &[], Some("app"));
    let debug = ok(
        "start debug container",
        pod.start(&cd, "debugger-x7k2").await,
    );
    assert_eq!(
        proc_v2_path(debug.pid),
        format!("/kubepods/besteffort/pod{DEBUG_UID}/{}", debug.id)
    );
    let json = ok("pod from CRI", pod.kubelet_json(&cd).await);
    assert_eq!(
        json["status"]["ephemeralContainerStatuses"][0]["containerID"],
        json!(format!("containerd://{}", debug.id))
    );
    k.set_pods(vec![json]).await;
    let wl = cd.repo_digest(WORKLOAD_IMAGE);
    let tools = cd.repo_digest(TOOLS_IMAGE);
    // Ephemeral containers count in no image selector; attestor searches their statuses
    // (SPIRE does not and gives up after 30 s).
    let pod_sel = pod_level(
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
    );
    assert_eq!(
        k.pipeline.attest(debug.pid).await,
        Ok(with_container(
            &pod_sel,
            "debugger-x7k2",
            TOOLS_IMAGE,
            &tools
        ))
    );
    assert_eq!(k.pipeline.attest(app.pid).await, Ok(app_selectors));
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const RESTART_UID: &str = "4d5e6f7a-8b9c-4d4e-9f5a-6b7c8d9eafb4";

#[tokio::test]
async fn restarted_container_new_id_same_pod() {
    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, PodSpec::one_app("worker-0", RESTART_UID, &[])).await,
    );
    let first = ok("start app", pod.start(&cd, "app").await);
    let k = kubelet(
        tracker,
        vec![ok("pod from CRI", pod.kubelet_json(&cd).await)],
        MAX_POLL_ATTEMPTS,
    )
    .await;
    let selectors = one_app_selectors(&cd, "worker-0", RESTART_UID);
    assert_eq!(k.pipeline.attest(first.pid).await, Ok(selectors.clone()));

    let second = ok("restart app", pod.restart(&cd, "app").await);
    assert_ne!(second.id, first.id);
    assert_ne!(second.pid, first.pid);
    let old_dir = k
        .pipeline
        .tracker()
        .cgroupfs()
        .expect("cgroup2 mount")
        .mount_point()
        .join(format!("kubepods/besteffort/pod{RESTART_UID}/{}", first.id));
    assert!(!old_dir.exists(), "runc removed the old container's cgroup");
    let json = ok("pod from CRI", pod.kubelet_json(&cd).await);
    let status = &json["status"]["containerStatuses"][0];
    assert_eq!(status["restartCount"], json!(1));
    assert_eq!(
        status["lastState"]["terminated"]["containerID"],
        json!(format!("containerd://{}", first.id))
    );
    k.set_pods(vec![json]).await;
    assert_eq!(k.pipeline.attest(second.pid).await, Ok(selectors));
    // The old ID is only in `lastState`, which is never matched.
    let old = ContainerRef {
        pod_uid: Some(RESTART_UID.to_owned()),
        container_id: first.id.clone(),
    };
    let list = k.sim.current_body();
    let found = attestor::selectors::search(&list, &old, &attestor::pods::SearchOptions::default());
    assert_eq!(
        found.map_err(|e| e.to_string()),
        Ok(None),
        "the old ID matches nothing"
    );
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const DELETED_UID: &str = "5e6f7a8b-9cad-4e5f-8a6b-7c8d9eafb0c5";

#[tokio::test]
async fn pod_deleted_from_the_kubelet_list_while_its_process_runs() {
    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, PodSpec::one_app("gone-0", DELETED_UID, &[])).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let k = kubelet(
        tracker,
        vec![ok("pod from CRI", pod.kubelet_json(&cd).await)],
        MAX_POLL_ATTEMPTS,
    )
    .await;
    assert_eq!(
        k.pipeline.attest(app.pid).await,
        Ok(one_app_selectors(&cd, "gone-0", DELETED_UID))
    );
    k.delete_pod(DELETED_UID).await;
    assert!(
        attestor_tests::cleanup::is_running(app.pid),
        "still running"
    );
    assert_eq!(k.pipeline.attest(app.pid).await, give_up());
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const FORK_UID: &str = "6f7a8b9c-adbe-4f6a-9b7c-8d9eafb0c1d6";

#[tokio::test]
async fn processes_forked_and_execd_inside_the_container() {
    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    let tracker = ebpf_tracker();
    // The shell forks a child that execs `sleep`, and a subshell that never execs.
    let command = [
        "/bin/sh",
        "-c",
        "sleep 2147483647 & ( while :; do sleep 5; done ) & wait",
    ];
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, PodSpec::one_app("forker-0", FORK_UID, &command)).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let (sleeper, subshell) = ok(
        "children of the container's shell",
        wait_for(Duration::from_secs(10), || {
            let kids = children(app.pid);
            let sleeper = kids.iter().copied().find(|c| {
                std::fs::read(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|c| c == b"sleep\x002147483647\x00")
            })?;
            let subshell = kids
                .iter()
                .copied()
                .find(|c| comm(*c).as_deref() == Some("sh"))?;
            Some((sleeper, subshell))
        })
        .ok_or("no exec'd sleep and forked subshell under the container's shell"),
    );
    let k = kubelet(
        tracker,
        vec![ok("pod from CRI", pod.kubelet_json(&cd).await)],
        MAX_POLL_ATTEMPTS,
    )
    .await;
    let selectors = one_app_selectors(&cd, "forker-0", FORK_UID);
    for pid in [app.pid, sleeper, subshell] {
        assert_eq!(
            k.pipeline.attest(pid).await,
            Ok(selectors.clone()),
            "pid {pid}"
        );
    }
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const PAUSE_UID: &str = "7a8b9cad-becf-4a7b-8c8d-9eafb0c1d2e7";

#[tokio::test]
async fn pause_container_never_gets_a_containers_selectors() {
    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, PodSpec::one_app("paused-0", PAUSE_UID, &[])).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let pause = ok("sandbox pid", pod.sandbox_pid(&cd).await);
    // The pause process sits in its own container cgroup, named by the sandbox ID, in the
    // same pod cgroup; the sandbox is in no status list.
    assert_eq!(
        proc_v2_path(pause),
        format!("/kubepods/besteffort/pod{PAUSE_UID}/{}", pod.sandbox_id())
    );
    let k = kubelet(
        tracker,
        vec![ok("pod from CRI", pod.kubelet_json(&cd).await)],
        MAX_POLL_ATTEMPTS,
    )
    .await;
    assert_eq!(
        k.pipeline.attest(app.pid).await,
        Ok(one_app_selectors(&cd, "paused-0", PAUSE_UID))
    );
    assert_eq!(k.pipeline.attest(pause).await, give_up());
    k.sim.shutdown().await;
    cd.shutdown().await;
}

const COLON_UID: &str = "8b9cadbe-cfd0-4e1f-9a2b-3c4d5e6f7a8b";

/// kubelet on the systemd driver, containerd on cgroupfs (a common misconfiguration):
/// containerd turns any `….slice` parent into runc's `slice:prefix:name` form, which
/// runc's cgroupfs driver takes as one directory,
/// `kubepods-besteffort-pod<uid_>.slice:cri-containerd:<id>`, relative to its own cgroup.
#[tokio::test]
async fn systemd_cgroup_parent_on_cgroupfs_gives_the_colon_form() {
    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    let tracker = ebpf_tracker();
    let spec = PodSpec::one_app("colon-0", COLON_UID, &[]).systemd_cgroup_parent();
    let mut pod = ok("RunPodSandbox", Pod::run(&cd, spec).await);
    let app = ok("start app", pod.start(&cd, "app").await);
    let pause = ok("sandbox pid", pod.sandbox_pid(&cd).await);
    let uid_ = COLON_UID.replace('-', "_");
    let path = proc_v2_path(app.pid);
    assert!(
        path.ends_with(&format!(
            "/kubepods-besteffort-pod{uid_}.slice:cri-containerd:{}",
            app.id
        )),
        "{path}"
    );
    let k = kubelet(
        tracker,
        vec![ok("pod from CRI", pod.kubelet_json(&cd).await)],
        MAX_POLL_ATTEMPTS,
    )
    .await;
    assert_eq!(
        k.pipeline.attest(app.pid).await,
        Ok(one_app_selectors(&cd, "colon-0", COLON_UID))
    );
    assert_eq!(k.pipeline.attest(pause).await, give_up());
    k.sim.shutdown().await;
    cd.shutdown().await;
}

// ------------------------------------------------------------------ runc, systemd layouts

/// Container IDs for the runc containers (64 hex, as containerd makes them).
const RUNC_IDS: [&str; 3] = [
    "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
    "b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1",
    "c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2",
];
const SD_UIDS: [&str; 3] = [
    "8b9cadbe-cfd0-4b8c-9d9e-afb0c1d2e3f8",
    "9cadbecf-d0e1-4c9d-8eaf-b0c1d2e3f4a9",
    "adbecfd0-e1f2-4dae-9fb0-c1d2e3f4a5ba",
];
const SD_IMAGE: &str = "registry.example.com/team/svc:3.1";
const SD_IMAGE_ID: &str = "registry.example.com/team/svc@sha256:5d41402abc4b2a76b9719d911017c592ae1c1f0d8e3c5b2a76b9719d911017c5";

/// The systemd driver's cgroup for a container of `uid` in `qos` (`""` for Guaranteed).
fn systemd_path(qos: &str, uid: &str, id: &str) -> String {
    let uid_ = uid.replace('-', "_");
    if qos.is_empty() {
        format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{id}.scope")
    } else {
        format!(
            "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice/cri-containerd-{id}.scope"
        )
    }
}

fn systemd_pod(name: &str, uid: &str, id: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "namespace": "svc", "uid": uid, "labels": {"app": name}},
        "spec": {"nodeName": "node-1", "serviceAccountName": "svc",
                 "containers": [{"name": "main", "image": SD_IMAGE}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "main", "image": SD_IMAGE, "imageID": SD_IMAGE_ID,
            "containerID": format!("containerd://{id}"), "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-27T17:00:00Z"}}}]},
    })
}

#[tokio::test]
async fn systemd_driver_layouts_with_runc() {
    if !require_root() {
        return;
    }
    let have_runc = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("runc").is_file()));
    if !have_runc && std::env::var_os("CI").is_none() {
        eprintln!("skipped: runc is not installed; run `cargo xtask setup`");
        return;
    }
    let tracker = ebpf_tracker();
    let layouts = [
        ("burstable", SD_UIDS[0], RUNC_IDS[0], "svc-burstable"),
        ("besteffort", SD_UIDS[1], RUNC_IDS[1], "svc-besteffort"),
        ("", SD_UIDS[2], RUNC_IDS[2], "svc-guaranteed"),
    ];
    let mut containers = Vec::new();
    let mut pods = Vec::new();
    for (qos, uid, id, name) in layouts {
        let path = systemd_path(qos, uid, id);
        let c = ok(
            "runc run",
            RuncContainer::run(
                &format!("attestor-{}", &id[..12]),
                &path,
                &[
                    "/bin/sh",
                    "-c",
                    "trap 'exit 0' TERM; while :; do sleep 1; done",
                ],
            ),
        );
        assert_eq!(proc_v2_path(c.pid()), path);
        containers.push((c, uid, name));
        pods.push(systemd_pod(name, uid, id));
    }
    let k = kubelet(tracker, pods, MAX_POLL_ATTEMPTS).await;
    for (c, uid, name) in &mut containers {
        let expected = with_container(
            &pod_level(
                "svc",
                "svc",
                uid,
                name,
                &[
                    "pod-image-count:1".into(),
                    "pod-init-image-count:0".into(),
                    format!("pod-image:{SD_IMAGE}"),
                    format!("pod-image:{SD_IMAGE_ID}"),
                    format!("pod-label:app:{name}"),
                ],
            ),
            "main",
            SD_IMAGE,
            SD_IMAGE_ID,
        );
        assert_eq!(
            k.pipeline.attest(c.pid()).await,
            Ok(expected.clone()),
            "{name} init"
        );
        // `kubectl exec` lands in the same cgroup.
        let exec = ok("runc exec", c.exec(&["/bin/sleep", "300"]));
        assert_eq!(proc_v2_path(exec), c.cgroups_path());
        assert_eq!(k.pipeline.attest(exec).await, Ok(expected), "{name} exec");
    }
    // A container of a pod the kubelet does not list (deleted): give up.
    k.delete_pod(SD_UIDS[0]).await;
    assert_eq!(k.pipeline.attest(containers[0].0.pid()).await, give_up());
    k.sim.shutdown().await;
    drop(containers);
}

// ------------------------------------------------------------------ the harness itself

const TEARDOWN_UIDS: [&str; 2] = [
    "becfd0e1-f2a3-4ebf-8a0b-1c2d3e4f5a6b",
    "cfd0e1f2-a3b4-4fc0-9b1c-2d3e4f5a6b7c",
];

/// Creates a pod with a running app and tears the daemon down, gracefully (CRI removal
/// first, as a passing test does) or not (plain drop, as after a panic). Either way no
/// process, mount, cgroup, shim socket or directory may be left.
async fn teardown_leaves_nothing(graceful: bool, uid: &str) {
    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    // Read under the harness's lock: another test's daemon may have made it before.
    let run_dir_existed = cd.run_dir_existed();
    let dir = cd.dir().to_owned();
    let mut pod = ok(
        "RunPodSandbox",
        Pod::run(&cd, PodSpec::one_app("teardown-0", uid, &[])).await,
    );
    let app = ok("start app", pod.start(&cd, "app").await);
    let pause = ok("sandbox pid", pod.sandbox_pid(&cd).await);
    assert!(!attestor_tests::cleanup::mounts_under(&dir).is_empty());
    if graceful {
        cd.shutdown().await;
    } else {
        drop(cd);
    }
    for pid in [app.pid, pause] {
        assert!(
            !attestor_tests::cleanup::is_running(pid),
            "pid {pid} left running"
        );
    }
    let needle = dir.to_string_lossy().into_owned();
    assert_eq!(
        attestor_tests::cleanup::pids_with_cmdline(&needle),
        Vec::<i32>::new(),
        "containerd or shims left running"
    );
    assert_eq!(
        attestor_tests::cleanup::mounts_under(&dir),
        Vec::<std::path::PathBuf>::new()
    );
    for mount in attestor_tests::cleanup::cgroup_mounts() {
        let pod_dir = mount.join(format!("kubepods/besteffort/pod{uid}"));
        assert!(!pod_dir.exists(), "{} left behind", pod_dir.display());
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(Path::new("/run/containerd").exists(), run_dir_existed);
}

#[tokio::test]
async fn teardown_after_a_passing_test_leaves_nothing() {
    teardown_leaves_nothing(true, TEARDOWN_UIDS[0]).await;
}

#[tokio::test]
async fn teardown_after_a_panic_leaves_nothing() {
    teardown_leaves_nothing(false, TEARDOWN_UIDS[1]).await;
}
