//! What the demo (`tests/src/bin/demo.rs`, run by `cargo xtask demo`) sets up, and what it
//! must print for it: the pods on its simulated node, the workloads it starts (by the label
//! it prints for each), the bad PIDs it asks about, and the selectors SPIRE's k8s attestor
//! gives each workload, written out from the pods (study §2) as in [`crate::cart`].
//! `tests/tests/demo.rs` runs the demo binary and checks its output against these.

use std::collections::BTreeSet;

use crate::cart::image_id;
use crate::kubelet_sim::{PodBuilder, Runtime, hex64, late_status_image_id};

/// The bearer token the simulated kubelet accepts.
pub const TOKEN: &str = "demo-token";
/// Pods generated around the two the demo attests.
pub const GENERATED_PODS: usize = 40;

pub const WEB_UID: &str = "5b7f3c2a-1d2e-4f60-8a9b-0c1d2e3f4a5b";
pub const WEB_NAME: &str = "web-6c9f7-x2k4q";
pub const WEB_NS: &str = "shop";
pub const WEB_SA: &str = "web";
pub const WEB_OWNER: (&str, &str, &str) = (
    "ReplicaSet",
    "web-6c9f7",
    "a0a1a2a3-b0b1-4c0c-8d0d-e0e1e2e3e4e5",
);
pub const WEB_IMAGE: &str = "registry.example.com/shop/web:2.4";
pub const PROXY_IMAGE: &str = "registry.example.com/mesh/proxy:1.22";
/// The `kubectl debug` container, whose status the kubelet reports only after
/// [`DEBUGGER_AFTER_POLLS`] more requests.
pub const DEBUGGER_NAME: &str = "debugger-7x2";
pub const DEBUGGER_IMAGE: &str = "busybox:1.36";
pub const DEBUGGER_AFTER_POLLS: u64 = 2;

pub const BATCH_UID: &str = "0e4c9a55-7f1b-4c3d-9e2a-6b5d4c3b2a19";
pub const BATCH_NAME: &str = "report-29182";
pub const BATCH_NS: &str = "finance";
pub const BATCH_SA: &str = "reports";
pub const BATCH_OWNER: (&str, &str, &str) = (
    "Job",
    "report-29182",
    "c0c1c2c3-d0d1-4e0e-8f0f-a0a1a2a3a4a5",
);
pub const REPORT_IMAGE: &str = "registry.example.com/finance/report:9";

/// Container IDs (hex) of the demo's containers.
pub fn web_app_hex() -> String {
    hex64(1)
}
pub fn web_proxy_hex() -> String {
    hex64(2)
}
pub fn report_hex() -> String {
    hex64(3)
}
pub fn debugger_hex() -> String {
    hex64(4)
}

pub fn web_pod() -> PodBuilder {
    PodBuilder::new(WEB_NAME)
        .namespace(WEB_NS)
        .uid(WEB_UID)
        .service_account(WEB_SA)
        .label("app", "web")
        .owner(WEB_OWNER.0, WEB_OWNER.1, WEB_OWNER.2)
        .container(
            "app",
            WEB_IMAGE,
            Some(&Runtime::Containerd.container_id(&web_app_hex())),
        )
        .container(
            "proxy",
            PROXY_IMAGE,
            Some(&Runtime::Containerd.container_id(&web_proxy_hex())),
        )
        .realistic()
}

pub fn batch_pod() -> PodBuilder {
    PodBuilder::new(BATCH_NAME)
        .namespace(BATCH_NS)
        .uid(BATCH_UID)
        .service_account(BATCH_SA)
        .owner(BATCH_OWNER.0, BATCH_OWNER.1, BATCH_OWNER.2)
        .container(
            "report",
            REPORT_IMAGE,
            Some(&Runtime::Containerd.container_id(&report_hex())),
        )
        .realistic()
}

/// The label the demo prints after each workload's PID (`pid <n>  <label>`), in order.
pub const WEB_APP: &str = "web/app (systemd driver, clone3 into the cgroup)";
pub const WEB_PROXY: &str = "web/proxy (moved via cgroup.procs)";
pub const REPORT_SHELL: &str = "finance/report shell (cgroupfs driver)";
pub const REPORT_CHILD: &str = "finance/report: the shell's forked child";
pub const WEB_DEBUGGER: &str = "web/debugger (ephemeral, status appears late)";
pub const HOST_SERVICE: &str = "host service (not in a pod)";
pub const WORKLOADS: &[&str] = &[
    WEB_APP,
    WEB_PROXY,
    REPORT_SHELL,
    REPORT_CHILD,
    WEB_DEBUGGER,
    HOST_SERVICE,
];

/// PIDs that are not workloads, attested after them: `attest(<pid>) [<label>]: <outcome>`.
pub const BAD_PIDS: &[(i64, &str)] = &[
    (0, "pid 0"),
    (-5, "negative"),
    (2, "kthreadd, a kernel thread"),
    // PID_MAX_LIMIT is 4,194,304: no kernel has a process with this number.
    (4_194_305, "above pid_max"),
];

/// SPIRE's selectors (without the `k8s:` prefix) for each workload of [`WORKLOADS`], in
/// that order; the host service gets none.
pub fn expected_selectors() -> Vec<(&'static str, BTreeSet<String>)> {
    let web = web_pod().build();
    let batch = batch_pod().build();
    let web_pod_level =
        |container: &str, image: &str, container_image_id: &str| -> BTreeSet<String> {
            let (app_id, proxy_id) = (image_id(&web, "app"), image_id(&web, "proxy"));
            [
                format!("sa:{WEB_SA}"),
                format!("ns:{WEB_NS}"),
                "node-name:node-1".into(),
                format!("pod-uid:{WEB_UID}"),
                format!("pod-name:{WEB_NAME}"),
                format!("pod-image:{WEB_IMAGE}"),
                format!("pod-image:{app_id}"),
                format!("pod-image:{PROXY_IMAGE}"),
                format!("pod-image:{proxy_id}"),
                "pod-image-count:2".into(),
                "pod-init-image-count:0".into(),
                "pod-label:app:web".into(),
                format!("pod-owner:{}:{}", WEB_OWNER.0, WEB_OWNER.1),
                format!("pod-owner-uid:{}:{}", WEB_OWNER.0, WEB_OWNER.2),
                format!("container-name:{container}"),
                format!("container-image:{image}"),
                format!("container-image:{container_image_id}"),
            ]
            .into_iter()
            .collect()
        };
    let report_id = image_id(&batch, "report");
    let report: BTreeSet<String> = [
        format!("sa:{BATCH_SA}"),
        format!("ns:{BATCH_NS}"),
        "node-name:node-1".into(),
        format!("pod-uid:{BATCH_UID}"),
        format!("pod-name:{BATCH_NAME}"),
        format!("pod-image:{REPORT_IMAGE}"),
        format!("pod-image:{report_id}"),
        "pod-image-count:1".into(),
        "pod-init-image-count:0".into(),
        format!("pod-owner:{}:{}", BATCH_OWNER.0, BATCH_OWNER.1),
        format!("pod-owner-uid:{}:{}", BATCH_OWNER.0, BATCH_OWNER.2),
        "container-name:report".into(),
        format!("container-image:{REPORT_IMAGE}"),
        format!("container-image:{report_id}"),
    ]
    .into_iter()
    .collect();
    vec![
        (
            WEB_APP,
            web_pod_level("app", WEB_IMAGE, &image_id(&web, "app")),
        ),
        (
            WEB_PROXY,
            web_pod_level("proxy", PROXY_IMAGE, &image_id(&web, "proxy")),
        ),
        (REPORT_SHELL, report.clone()),
        (REPORT_CHILD, report),
        (
            WEB_DEBUGGER,
            web_pod_level(
                DEBUGGER_NAME,
                DEBUGGER_IMAGE,
                &late_status_image_id(DEBUGGER_IMAGE),
            ),
        ),
        (HOST_SERVICE, BTreeSet::new()),
    ]
}
