//! SPIRE v1.15.3's API-server features through the real plugin, loaded by go-plugin as the
//! agent loads it, against the kubelet simulator and the API-server simulator (HTTPS,
//! bearer tokens, RBAC, SubjectAccessReviews): `enable_namespace_labels`, the Broker API's
//! `AttestReference` (`experimental.broker`) and `disable_kubelet_client`.
//!
//! Each test is one of spiffe/spire v1.15.3
//! `pkg/agent/plugin/workloadattestor/k8s/k8s_test.go`'s cases (named in its doc), with
//! SPIRE's fixture (`../shared/conformance/spire-testdata/pod_list.json`, the `blog` pod),
//! SPIRE's configuration text and SPIRE's expected codes, messages and selectors; or ours,
//! said so. The PID cases attest a real process in a cgroup named as SPIRE's
//! `cgroups_pid_in_pod.txt` names the blog container.
//!
//! Needs the binary: `cargo build -p attestor --bin attestor` first (as the other
//! plugin tests).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use attestor_tests::apiserver_sim::{ApiServerSim, Fault as ApiFault, Gate};
use attestor_tests::go_host::{GoHost, Reference};
use attestor_tests::kubelet_sim::{Fault as KubeletFault, KubeletSim};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{attestor_bin, comm, kill_and_reap, require_root, wait_for};
use serde_json::{Value, json};

const BROKER: &str = "spiffe://example.org/broker";
const AGENT_USER: &str = "system:serviceaccount:spire:spire-agent";
const API_TOKEN: &str = "agent-sa-token";
/// SPIRE's `testPodUID` and the blog container of `cgroups_pid_in_pod.txt`.
const BLOG_UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
const BLOG_CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
const VERB: &str = "impersonate-via-spire";

/// SPIRE's `testPodSelectors` (values).
const POD_SELECTORS: &[&str] = &[
    "node-name:k8s-node-1",
    "ns:default",
    "pod-image-count:2",
    "pod-image:docker-pullable://localhost/spiffe/blog@sha256:0cfdaced91cb46dd7af48309799a3c351e4ca2d5e1ee9737ca0cbd932cb79898",
    "pod-image:docker-pullable://localhost/spiffe/ghostunnel@sha256:b2fc20676c92a433b9a91f3f4535faddec0c2c3613849ac12f02c1d5cfcd4c3a",
    "pod-image:localhost/spiffe/blog:latest",
    "pod-image:localhost/spiffe/ghostunnel:latest",
    "pod-init-image-count:0",
    "pod-label:k8s-app:blog",
    "pod-label:version:v0",
    "pod-name:blog-24ck7",
    "pod-owner-uid:ReplicationController:2c401175-b29f-11e7-9350-020968147796",
    "pod-owner:ReplicationController:blog",
    "pod-uid:2c48913c-b29f-11e7-9350-020968147796",
    "sa:default",
];
/// SPIRE's `testContainerSelectors` (values).
const CONTAINER_SELECTORS: &[&str] = &[
    "container-image:docker-pullable://localhost/spiffe/blog@sha256:0cfdaced91cb46dd7af48309799a3c351e4ca2d5e1ee9737ca0cbd932cb79898",
    "container-image:localhost/spiffe/blog:latest",
    "container-name:blog",
];
const NS_LABEL_SELECTORS: &[&str] = &["ns-label:environment:production", "ns-label:team:backend"];

fn set(parts: &[&[&str]]) -> BTreeSet<String> {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|s| s.to_string())
        .collect()
}

fn got(r: Result<Vec<String>, (String, String)>) -> BTreeSet<String> {
    match r {
        Ok(v) => v.into_iter().collect(),
        Err(e) => panic!("expected selectors, got {e:?}"),
    }
}

/// `RequireGRPCStatusContains`: the code, and a message containing `text`.
#[track_caller]
fn assert_status(r: Result<Vec<String>, (String, String)>, code: &str, text: &str) {
    match r {
        Err((c, m)) => {
            assert_eq!(c, code, "message: {m}");
            assert!(m.contains(text), "{m:?} lacks {text:?}");
        }
        Ok(v) => panic!("expected {code} {text:?}, got selectors {v:?}"),
    }
}

fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

fn spire_testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/spire-testdata")
        .join(name)
}

/// The blog pod of SPIRE's `pod_list.json`, as an API server would hold it.
fn blog_pod() -> Value {
    let list: Value =
        serde_json::from_slice(&std::fs::read(spire_testdata("pod_list.json")).expect("fixture"))
            .expect("fixture JSON");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["metadata"]["uid"] == BLOG_UID)
        .expect("blog pod")
        .clone()
}

/// What the kubelet simulator serves.
enum Kubelet {
    /// SPIRE's `pod_list.json`.
    Fixture,
    /// `{"items":[]}` (SPIRE's `emptyPodList`).
    Empty,
    /// 500 on every request ("Do not configure a pod list response").
    Failing,
}

/// Both simulators on their own runtime (the tests are synchronous, as the host is).
struct World {
    rt: tokio::runtime::Runtime,
    kubelet: KubeletSim,
    api: ApiServerSim,
    dir: TempDir,
    kubeconfig: PathBuf,
}

impl World {
    fn new(kubelet: Kubelet) -> World {
        Self::with_api(kubelet, |b| b)
    }

    fn with_api(
        kubelet: Kubelet,
        api: impl FnOnce(
            attestor_tests::apiserver_sim::ApiServerSimBuilder,
        ) -> attestor_tests::apiserver_sim::ApiServerSimBuilder,
    ) -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let builder = KubeletSim::builder().tls(false);
        let builder = match kubelet {
            Kubelet::Fixture => builder
                .fixture(&spire_testdata("pod_list.json"))
                .expect("fixture"),
            Kubelet::Empty | Kubelet::Failing => builder.body(r#"{"items":[]}"#),
        };
        let kubelet_sim = rt.block_on(builder.start()).expect("kubelet simulator");
        if let Kubelet::Failing = kubelet {
            kubelet_sim.set_fault(Some(KubeletFault::Status(
                500,
                "kubelet is down".to_string(),
            )));
        }
        let builder = ApiServerSim::builder()
            .token(API_TOKEN, AGENT_USER)
            .allow_all(AGENT_USER)
            // SPIRE's fake clients hold exactly these objects: no default namespaces, no
            // admission-added label.
            .default_namespaces(false)
            .namespace_name_label(false)
            .namespace(
                "default",
                &[("team", "backend"), ("environment", "production")],
            )
            .namespace("flux-system", &[("team", "platform")])
            .pod(blog_pod())
            .resource(
                "kustomize.toolkit.fluxcd.io",
                "v1",
                "Kustomization",
                "kustomizations",
                true,
            )
            .object(
                "kustomize.toolkit.fluxcd.io",
                "kustomizations",
                json!({
                    "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                    "kind": "Kustomization",
                    "metadata": {"name": "tenant-a", "namespace": "flux-system", "uid": "kustomization-uid"},
                }),
            );
        let api_sim = rt
            .block_on(api(builder).start())
            .expect("API-server simulator");
        let dir = TempDir::new("apiserver");
        let kubeconfig = api_sim
            .write_kubeconfig(dir.path(), API_TOKEN)
            .expect("kubeconfig");
        World {
            rt,
            kubelet: kubelet_sim,
            api: api_sim,
            dir,
            kubeconfig,
        }
    }

    /// SPIRE's `kubelet_read_only_port = %d / max_poll_attempts = 5 / poll_retry_interval`
    /// (ours 50 ms rather than 1 s: the same rules, quicker tests), then `extra`.
    fn plugin_data(&self, extra: &str) -> String {
        format!(
            "kubelet_read_only_port = {}\nmax_poll_attempts = 5\npoll_retry_interval = \"50ms\"\n{extra}\n",
            self.kubelet.port()
        )
    }

    /// The real binary loaded by the Go host with this world's KUBECONFIG, configured.
    fn host(&self, plugin_data: &str) -> GoHost {
        let mut cmd = Command::new(GoHost::binary(tmp()));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        let mut host = GoHost::start(cmd, &attestor_bin(), tmp());
        host.load();
        assert_eq!(
            host.configure(plugin_data),
            ("OK".into(), String::new()),
            "configure {plugin_data}"
        );
        host
    }

    /// Requests the API server saw for paths starting with `prefix`.
    fn api_requests(&self, prefix: &str) -> usize {
        self.api.request_count(prefix)
    }
}

/// SPIRE's `testBrokerConfigWithAccessPolicy(scope, accessPolicy)`.
fn broker_config(scope: &str, access_policy: &str) -> String {
    let scope = if scope.is_empty() {
        String::new()
    } else {
        format!("\n\t\t\t\t\t\tpod_reference_scope = {scope:?}")
    };
    format!(
        "\n\t\texperimental {{\n\t\t\tbroker {{\n\t\t\t\taccess_policy = {access_policy:?}\n\t\t\t\tbrokers = [\n\t\t\t\t\t{{\n\t\t\t\t\t\tid = {BROKER:?}{scope}\n\t\t\t\t\t}}\n\t\t\t\t]\n\t\t\t}}\n\t\t}}\n"
    )
}

fn permissive() -> String {
    broker_config("", "permissive")
}

fn enforced() -> String {
    broker_config("", "enforced")
}

fn cluster_scope() -> String {
    broker_config("cluster", "permissive")
}

fn pod_uid(uid: &str) -> Reference {
    Reference::object("pods", "core", "", "", uid)
}

fn blog_by_uid() -> Reference {
    pod_uid(BLOG_UID)
}

fn blog_by_name() -> Reference {
    Reference::pod("default", "blog-24ck7")
}

/// A process in the blog container's cgroup (cgroupfs layout, as `cgroups_pid_in_pod.txt`).
struct Blog {
    _sandbox: Sandbox,
    pid: i32,
}

impl Blog {
    fn start() -> Blog {
        let cgfs = attestor::cgroupfs::CgroupFs::discover().expect("cgroup2 mount");
        let sandbox = Sandbox::new(&cgfs, "apiserver").expect("sandbox");
        let dir = sandbox
            .container(Layout::Cgroupfs, BLOG_UID, BLOG_CID)
            .expect("cgroup");
        let pid = spawn_into_cgroup(&dir, Some(&["/bin/sleep", "120"]), None).expect("clone3");
        wait_for(Duration::from_secs(5), || {
            (comm(pid).as_deref() == Some("sleep")).then_some(())
        })
        .expect("child exec'd sleep");
        Blog {
            _sandbox: sandbox,
            pid,
        }
    }
}

impl Drop for Blog {
    fn drop(&mut self) {
        kill_and_reap(self.pid);
    }
}

/// One SubjectAccessReview as SPIRE's tests check it.
#[track_caller]
fn assert_review(review: &Value, group: &str, resource: &str, namespace: &str, name: &str) {
    let spec = &review["spec"];
    assert_eq!(spec["user"], BROKER, "{review}");
    assert!(
        spec["groups"].as_array().is_none_or(|g| g.is_empty()),
        "no groups: {review}"
    );
    let attrs = &spec["resourceAttributes"];
    assert_eq!(attrs["group"].as_str().unwrap_or(""), group, "{review}");
    assert_eq!(attrs["resource"], resource, "{review}");
    assert_eq!(attrs["namespace"], namespace, "{review}");
    assert_eq!(attrs["name"], name, "{review}");
    assert_eq!(attrs["verb"], VERB, "{review}");
}

// --- PID attestation: Attest, and AttestReference with a WorkloadPIDReference ------------

/// `TestAttestWithPidDoesNotRunBrokerRBAC`, `TestAttestWithBrokerCallerDoesNotRunBrokerRBACWhenPermissive`,
/// `TestAttestReferenceWithPIDSkipsBrokerRBACWhenPermissive`: a permissive broker (and a
/// review that would deny) never asks for a review.
#[test]
fn pid_attestation_under_a_permissive_broker_asks_no_review() {
    if !require_root() {
        return;
    }
    let w = World::with_api(Kubelet::Fixture, |b| b.review_default(false));
    let blog = Blog::start();
    let mut host = w.host(&w.plugin_data(&permissive()));
    let want = set(&[POD_SELECTORS, CONTAINER_SELECTORS]);
    assert_eq!(got(host.attest_result(blog.pid)), want, "Attest");
    // Attest with the broker's caller ID (SPIRE's Attest goes through AttestReference).
    assert_eq!(
        got(host.attest_reference(&Reference::Pid(blog.pid), &[BROKER])),
        want,
        "AttestReference(pid) as the broker"
    );
    assert_eq!(
        got(host.agent_attest_reference(&Reference::Pid(blog.pid), &[BROKER])),
        want,
        "through the agent's wrapper"
    );
    assert!(w.api.reviews().is_empty(), "{:?}", w.api.reviews());
}

/// `TestAttestWithBrokerCallerRunsBrokerRBACWhenEnforced`,
/// `TestAttestReferenceWithPIDBrokerRBACAllowedWhenEnforced`,
/// `TestAttestReferenceWithPIDBrokerRBACDenied`.
#[test]
fn pid_attestation_under_an_enforced_broker_is_reviewed() {
    if !require_root() {
        return;
    }
    let w = World::with_api(Kubelet::Fixture, |b| {
        b.review_rule(BROKER, VERB, "", "pods", "default", "blog-24ck7", true)
    });
    let blog = Blog::start();
    let mut host = w.host(&w.plugin_data(&enforced()));
    let want = set(&[POD_SELECTORS, CONTAINER_SELECTORS]);
    assert_eq!(
        got(host.attest_reference(&Reference::Pid(blog.pid), &[BROKER])),
        want
    );
    let reviews = w.api.reviews();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_review(&reviews[0], "", "pods", "default", "blog-24ck7");

    // Attest (not AttestReference) without a caller: the Workload API path, no review.
    assert_eq!(got(host.attest_result(blog.pid)), want);
    assert_eq!(w.api.reviews().len(), 1);

    // The authorizer says no.
    w.api.set_review_default(false);
    let denied = World::with_api(Kubelet::Fixture, |b| b.review_default(false));
    let mut host = denied.host(&denied.plugin_data(&enforced()));
    assert_status(
        host.attest_reference(&Reference::Pid(blog.pid), &[BROKER]),
        "PermissionDenied",
        "Kubernetes authorizer does not allow the broker to use impersonate-via-spire for the referenced object",
    );
}

/// `TestAttestWithNamespaceLabels`, `TestAttestWithNamespaceLabelsDisabled`,
/// `TestAttestWithNamespaceLabelsErrorFailsAttestation`.
#[test]
fn namespace_labels_on_pid_attestation() {
    if !require_root() {
        return;
    }
    let w = World::new(Kubelet::Fixture);
    let blog = Blog::start();
    let mut host = w.host(&w.plugin_data("enable_namespace_labels = true"));
    assert_eq!(
        got(host.attest_result(blog.pid)),
        set(&[POD_SELECTORS, CONTAINER_SELECTORS, NS_LABEL_SELECTORS])
    );
    let mut off = w.host(&w.plugin_data(""));
    assert_eq!(
        got(off.attest_result(blog.pid)),
        set(&[POD_SELECTORS, CONTAINER_SELECTORS])
    );

    // No such namespace: the attestation fails (SPIRE's code and text).
    assert!(w.api.delete_namespace("default"));
    assert_status(
        host.attest_result(blog.pid),
        "Internal",
        r#"unable to get namespace labels for "default": unable to get namespace "default": namespaces "default" not found"#,
    );
}

/// `TestAttestReferenceWithPID_FailsWhenKubeletClientDisabled`, and `Attest` the same way.
#[test]
fn pid_attestation_without_a_kubelet_client_fails_precondition() {
    let w = World::new(Kubelet::Fixture);
    let mut host = w.host("disable_kubelet_client = true");
    assert_status(
        host.attest_reference(&Reference::Pid(123), &[]),
        "FailedPrecondition",
        "kubelet client is disabled",
    );
    assert_status(
        host.attest_result(123),
        "FailedPrecondition",
        "kubelet client is disabled",
    );
    assert_eq!(w.kubelet.request_count(), 0, "no kubelet request");
}

// --- Pod references -------------------------------------------------------------------

/// `TestAttestReferenceWithPodUID_FoundInKubelet`,
/// `TestAttestReferenceWithoutBrokerCallerDoesNotRequireBrokerConfig`,
/// `TestAttestReferenceWithoutBrokerCallerDoesNotRunBrokerRBAC`: the kubelet's list
/// answers, no API-server request, no review.
#[test]
fn pod_reference_found_in_the_kubelet_list() {
    let w = World::with_api(Kubelet::Fixture, |b| b.review_default(false));
    let want = set(&[POD_SELECTORS]);
    let mut host = w.host(&w.plugin_data(&permissive()));
    assert_eq!(got(host.attest_reference(&blog_by_uid(), &[BROKER])), want);
    assert_eq!(got(host.attest_reference(&blog_by_name(), &[BROKER])), want);
    // No caller: the Workload API's own call, no broker configuration needed.
    let mut plain = w.host(&w.plugin_data(""));
    assert_eq!(got(plain.attest_reference(&blog_by_uid(), &[])), want);
    let mut enforced_host = w.host(&w.plugin_data(&enforced()));
    assert_eq!(
        got(enforced_host.attest_reference(&blog_by_uid(), &[])),
        want
    );
    assert_eq!(w.api_requests("/"), 0, "{:?}", w.api.requests());
}

/// `TestAttestReferenceWithPodUID_NamespaceLabels`.
#[test]
fn pod_reference_with_namespace_labels() {
    let w = World::new(Kubelet::Fixture);
    let mut host =
        w.host(&w.plugin_data(&format!("enable_namespace_labels = true\n{}", permissive())));
    assert_eq!(
        got(host.attest_reference(&blog_by_uid(), &[BROKER])),
        set(&[POD_SELECTORS, NS_LABEL_SELECTORS])
    );
}

/// `TestAttestReferenceWithPodUID_DefaultScopeDoesNotCallAPIServer`,
/// `TestAttestReferenceWithPodName_DefaultScopeDoesNotCallAPIServer`,
/// `TestAttestReferenceWithPodUID_NotFound`.
#[test]
fn agent_node_scope_never_asks_the_api_server() {
    let w = World::with_api(Kubelet::Empty, |b| b.review_default(true));
    let mut host = w.host(&w.plugin_data(&permissive()));
    assert_status(
        host.attest_reference(&blog_by_uid(), &[BROKER]),
        "NotFound",
        "pod with UID 2c48913c-b29f-11e7-9350-020968147796 not found on agent node",
    );
    assert_status(
        host.attest_reference(&blog_by_name(), &[BROKER]),
        "NotFound",
        "pod default/blog-24ck7 not found on agent node",
    );
    assert_status(
        host.attest_reference(&pod_uid("nonexistent-uid"), &[BROKER]),
        "NotFound",
        "not found",
    );
    assert_eq!(w.api_requests("/"), 0, "{:?}", w.api.requests());
    assert!(w.api.reviews().is_empty());
}

/// `TestAttestReferenceWithPodUID_FallbackToAPIServerWithClusterScope`,
/// `TestAttestReferenceWithPodName_FallbackToAPIServerWithClusterScope`.
#[test]
fn cluster_scope_falls_back_to_the_api_server() {
    let w = World::new(Kubelet::Empty);
    let mut host = w.host(&w.plugin_data(&cluster_scope()));
    let want = set(&[POD_SELECTORS]);
    assert_eq!(got(host.attest_reference(&blog_by_uid(), &[BROKER])), want);
    assert_eq!(got(host.attest_reference(&blog_by_name(), &[BROKER])), want);
    assert!(w.api_requests("/api/v1/namespaces/default/pods/blog-24ck7") >= 2);
    // Ours: a pod the API server does not have either.
    assert_status(
        host.attest_reference(&pod_uid("nonexistent-uid"), &[BROKER]),
        "NotFound",
        "Pod with UID nonexistent-uid not found",
    );
    assert_status(
        host.attest_reference(&Reference::pod("default", "gone"), &[BROKER]),
        "NotFound",
        "pod default/gone not found",
    );
    // Ours: a name whose pod has another UID than the reference says.
    assert_status(
        host.attest_reference(
            &Reference::object("pods", "core", "default", "blog-24ck7", "other-uid"),
            &[BROKER],
        ),
        "NotFound",
        "pod default/blog-24ck7 has UID 2c48913c-b29f-11e7-9350-020968147796, expected other-uid",
    );
}

/// `TestAttestReferenceWithPodUID_FallsBackToAPIServerWhenKubeletFails`,
/// `TestAttestReferenceWithPodName_FallsBackToAPIServerWhenKubeletFails`; under
/// `agent_node` the kubelet's error is the answer (`Unavailable`).
#[test]
fn cluster_scope_falls_back_when_the_kubelet_fails() {
    let w = World::new(Kubelet::Failing);
    let mut host = w.host(&w.plugin_data(&cluster_scope()));
    let want = set(&[POD_SELECTORS]);
    assert_eq!(got(host.attest_reference(&blog_by_uid(), &[BROKER])), want);
    assert_eq!(got(host.attest_reference(&blog_by_name(), &[BROKER])), want);
    let mut node = w.host(&w.plugin_data(&permissive()));
    assert_status(
        node.attest_reference(&blog_by_uid(), &[BROKER]),
        "Unavailable",
        "500",
    );
}

/// `TestAttestReferenceWithPodUID_FallsBackToAPIServerWhenKubeletClientDisabled`,
/// `TestAttestReferenceWithPodName_FallsBackToAPIServerWhenKubeletClientDisabled`,
/// `TestFindPodBy{UID,Name}_FallsBackToAPIServerWithKubeletClientDisabled`,
/// `TestAttestReferenceWithPodUID_DefaultScopeFailsWhenKubeletClientDisabled`,
/// `TestFindPodBy{UID,Name}_AgentNodeScopeRequiresEnabledKubeletClient`.
#[test]
fn broker_only_agent_resolves_pods_through_the_api_server() {
    let w = World::new(Kubelet::Fixture);
    let mut host = w.host(&format!(
        "disable_kubelet_client = true\n{}",
        cluster_scope()
    ));
    let want = set(&[POD_SELECTORS]);
    assert_eq!(got(host.attest_reference(&blog_by_uid(), &[BROKER])), want);
    assert_eq!(got(host.attest_reference(&blog_by_name(), &[BROKER])), want);
    // Without a broker caller the scope is agent_node, which needs the kubelet.
    for r in [blog_by_uid(), blog_by_name()] {
        assert_status(
            host.attest_reference(&r, &[]),
            "FailedPrecondition",
            "kubelet client is disabled",
        );
    }
    assert_eq!(w.kubelet.request_count(), 0);
}

// --- Validation, broker identity ------------------------------------------------------

/// `TestAttestReferenceUnsupportedType`, `TestAttestReferenceKubernetesObjectValidation`
/// (its six cases), `TestAttestReferenceRequiresBrokerConfig`; ours: no reference, a
/// caller that is not configured, an invalid caller ID, two caller IDs, a malformed value.
#[test]
fn references_are_validated_as_spire_validates_them() {
    let w = World::new(Kubelet::Fixture);
    let mut host = w.host(&w.plugin_data(&permissive()));
    assert_status(
        host.attest_reference(
            &Reference::Raw {
                type_url: "type.googleapis.com/unsupported.Type".into(),
                value: Vec::new(),
            },
            &[BROKER],
        ),
        "InvalidArgument",
        "unsupported reference type",
    );
    let cases: [(Reference, &str); 6] = [
        (
            Reference::object_parts(None, None, BLOG_UID),
            "object reference is missing type",
        ),
        (
            Reference::object_parts(Some(("", "core")), None, BLOG_UID),
            "object reference type is missing plural",
        ),
        (
            Reference::object_parts(Some(("pods", "")), None, BLOG_UID),
            "object reference type is missing group",
        ),
        (
            Reference::object_parts(Some(("pods", "core")), None, ""),
            "object reference is missing key and UID",
        ),
        (
            Reference::object_parts(Some(("pods", "core")), Some(("shop", "")), ""),
            "object reference key is missing name",
        ),
        (
            Reference::object_parts(Some(("pods", "core")), Some(("", "checkout")), ""),
            "namespace is required when name is set for a namespaced resource",
        ),
    ];
    for (r, message) in cases {
        assert_status(
            host.attest_reference(&r, &[BROKER]),
            "InvalidArgument",
            message,
        );
    }
    assert_status(
        host.attest_reference(&Reference::Missing, &[]),
        "InvalidArgument",
        "workload reference must be provided",
    );
    assert_status(
        host.attest_reference(&blog_by_uid(), &["spiffe://example.org/other"]),
        "PermissionDenied",
        r#"broker "spiffe://example.org/other" is not configured"#,
    );
    assert_status(
        host.attest_reference(&blog_by_uid(), &["not-a-spiffe-id"]),
        "Internal",
        "unable to determine broker caller identity: invalid broker caller SPIFFE ID: scheme is missing or invalid",
    );
    assert_status(
        host.attest_reference(&blog_by_uid(), &[BROKER, BROKER]),
        "Internal",
        "unable to determine broker caller identity: multiple broker caller SPIFFE IDs provided",
    );
    assert_status(
        host.attest_reference(
            &Reference::Raw {
                type_url: "type.googleapis.com/spiffe.broker.KubernetesObjectReference".into(),
                value: vec![0x0a, 0x05, 0x01],
            },
            &[BROKER],
        ),
        "InvalidArgument",
        "unable to unmarshal object reference",
    );

    let mut unconfigured = w.host(&w.plugin_data(""));
    assert_status(
        unconfigured.attest_reference(&blog_by_uid(), &[BROKER]),
        "Internal",
        "broker configuration missing",
    );
}

// --- Access reviews on references ----------------------------------------------------

/// `TestAttestReferenceBrokerRBACDenied`, `TestAttestReferenceBrokerRBACUsesResolvedObject`.
#[test]
fn enforced_broker_review_is_about_the_resolved_pod() {
    let w = World::with_api(Kubelet::Fixture, |b| {
        b.review_rule(BROKER, VERB, "", "pods", "default", "blog-24ck7", true)
    });
    let mut host = w.host(&w.plugin_data(&enforced()));
    assert_eq!(
        got(host.attest_reference(&blog_by_uid(), &[BROKER])),
        set(&[POD_SELECTORS])
    );
    let reviews = w.api.reviews();
    assert_eq!(reviews.len(), 1);
    assert_review(&reviews[0], "", "pods", "default", "blog-24ck7");

    w.api.set_review_default(false);
    let denied = World::with_api(Kubelet::Fixture, |b| b.review_default(false));
    let mut host = denied.host(&denied.plugin_data(&enforced()));
    assert_status(
        host.attest_reference(&blog_by_uid(), &[BROKER]),
        "PermissionDenied",
        "Kubernetes authorizer does not allow the broker to use impersonate-via-spire for the referenced object",
    );
}

// --- Other resources ------------------------------------------------------------------

fn kustomization() -> Reference {
    Reference::object(
        "kustomizations",
        "kustomize.toolkit.fluxcd.io",
        "",
        "",
        "kustomization-uid",
    )
}

/// `TestAttestReferenceGenericObject_NamespaceLabels` (and the whole vocabulary, ours).
#[test]
fn generic_object_with_namespace_labels() {
    let w = World::new(Kubelet::Fixture);
    let mut host =
        w.host(&w.plugin_data(&format!("enable_namespace_labels = true\n{}", permissive())));
    let values = got(host.attest_reference(&kustomization(), &[BROKER]));
    let want = set(&[&[
        "uid:kustomization-uid",
        "resource:kustomizations.kustomize.toolkit.fluxcd.io",
        "plural:kustomizations",
        "group:kustomize.toolkit.fluxcd.io",
        "version:v1",
        "apiVersion:kustomize.toolkit.fluxcd.io/v1",
        "kind:Kustomization",
        "name:tenant-a",
        "namespace:flux-system",
        "key:flux-system/tenant-a",
        "ns-label:team:platform",
    ]]);
    assert_eq!(values, want);
    // By name, and the errors around it (ours).
    assert_eq!(
        got(host.attest_reference(
            &Reference::object(
                "kustomizations",
                "kustomize.toolkit.fluxcd.io",
                "flux-system",
                "tenant-a",
                ""
            ),
            &[BROKER]
        )),
        want
    );
    assert_status(
        host.attest_reference(
            &Reference::object("widgets", "example.com", "", "", "u"),
            &[BROKER],
        ),
        "InvalidArgument",
        "unknown Kubernetes resource widgets.example.com",
    );
    assert_status(
        host.attest_reference(
            &Reference::object(
                "kustomizations",
                "kustomize.toolkit.fluxcd.io",
                "flux-system",
                "missing",
                "",
            ),
            &[BROKER],
        ),
        "NotFound",
        "Kustomization flux-system/missing not found",
    );
}

/// `TestAttestReferenceBrokerRBACUsesResolvedGenericObject`.
#[test]
fn enforced_broker_review_is_about_the_resolved_object() {
    let w = World::with_api(Kubelet::Fixture, |b| b.review_default(true));
    let mut host = w.host(&w.plugin_data(&enforced()));
    let values = got(host.attest_reference(&kustomization(), &[BROKER]));
    for v in [
        "uid:kustomization-uid",
        "namespace:flux-system",
        "name:tenant-a",
    ] {
        assert!(values.contains(v), "{v} in {values:?}");
    }
    let reviews = w.api.reviews();
    assert_eq!(reviews.len(), 1);
    assert_review(
        &reviews[0],
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        "flux-system",
        "tenant-a",
    );
}

// --- Better than SPIRE, never different -----------------------------------------------

/// A burst of 1,000 attestations in one namespace with namespace labels: every answer is
/// SPIRE's, and at no time is more than one namespace request in flight.
#[test]
fn a_burst_in_one_namespace_makes_one_request_at_a_time() {
    let w = World::new(Kubelet::Fixture);
    let mut host =
        w.host(&w.plugin_data(&format!("enable_namespace_labels = true\n{}", permissive())));
    // Slow namespace answers, so the burst overlaps them.
    w.api.set_fault(
        "/api/v1/namespaces/default",
        Some(ApiFault::Delay(Duration::from_millis(30))),
    );
    let (results, _) = host.attest_reference_many(&blog_by_uid(), &[BROKER], 1000, false);
    let want = set(&[POD_SELECTORS, NS_LABEL_SELECTORS]);
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(got(r), want, "call {i}");
    }
    let path = "/api/v1/namespaces/default";
    let requests = w
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .count();
    eprintln!(
        "burst: 1000 attestations, {requests} namespace requests, at most {} in flight",
        w.api.max_in_flight(path)
    );
    assert!(requests >= 1, "the labels were asked for");
    assert!(requests < 1000, "requests were shared: {requests}");
    assert_eq!(w.api.max_in_flight(path), 1, "{requests} requests");
}

/// Cancellation: a caller that gives up while the namespace request is held gets its
/// answer at once; the request it shared finishes for the others.
#[test]
fn a_cancelled_caller_does_not_fail_the_others() {
    let w = World::new(Kubelet::Fixture);
    let mut host =
        w.host(&w.plugin_data(&format!("enable_namespace_labels = true\n{}", permissive())));
    let gate = Gate::new();
    w.api.set_fault(
        "/api/v1/namespaces/default",
        Some(ApiFault::Gate(gate.clone())),
    );
    host.attest_reference_async("waits", &blog_by_uid(), &[BROKER], false);
    wait_for(Duration::from_secs(10), || {
        (w.api.in_flight("/api/v1/namespaces/default") == 1).then_some(())
    })
    .expect("the namespace request is held");
    let mut call = Reference::to_json(&blog_by_uid());
    call["op"] = "attest_reference".into();
    call["caller_ids"] = json!([BROKER]);
    call["timeout_ms"] = 200.into();
    let r = host.call(call);
    let code = r["code"].as_str().unwrap_or_default().to_string();
    assert!(
        code == "DeadlineExceeded" || code == "Canceled",
        "the impatient caller: {r}"
    );
    gate.open();
    assert_eq!(
        got(host.await_call("waits")),
        set(&[POD_SELECTORS, NS_LABEL_SELECTORS])
    );
    assert_eq!(w.api.max_in_flight("/api/v1/namespaces/default"), 1);
}

/// `experimental.api_server.cache.enabled`: the labels come from the watched cache, and a
/// change reaches attestations through the watch.
#[test]
fn cached_namespace_labels_follow_the_watch() {
    let w = World::new(Kubelet::Fixture);
    let mut host = w.host(&w.plugin_data(&format!(
        "enable_namespace_labels = true\nexperimental {{\n  api_server {{\n    cache {{\n      enabled = true\n    }}\n  }}\n  broker {{\n    access_policy = \"permissive\"\n    brokers = [{{ id = {BROKER:?} }}]\n  }}\n}}\n"
    )));
    let before = w.api.requests().len();
    let want = set(&[POD_SELECTORS, NS_LABEL_SELECTORS]);
    for _ in 0..20 {
        assert_eq!(got(host.attest_reference(&blog_by_uid(), &[BROKER])), want);
    }
    let gets = w
        .api
        .requests()
        .into_iter()
        .skip(before)
        .filter(|r| r.path == "/api/v1/namespaces/default")
        .count();
    assert_eq!(gets, 0, "answered from the cache");
    w.api.set_namespace("default", &[("team", "frontend")]);
    let changed = set(&[POD_SELECTORS, &["ns-label:team:frontend"]]);
    wait_for(Duration::from_secs(10), || {
        (got(host.attest_reference(&blog_by_uid(), &[BROKER])) == changed).then_some(())
    })
    .expect("the label change reached the cache");
}

/// RBAC the agent lacks: SPIRE's text with the API server's own message in it (a namespace
/// GET is authorized "in the namespace" it names: apiserver `RequestInfoFactory`).
#[test]
fn missing_rbac_is_reported_with_the_api_servers_words() {
    let w = World::with_api(Kubelet::Fixture, |b| {
        b.token("limited-token", "system:serviceaccount:spire:limited")
    });
    let limited = w.dir.path().join("limited");
    std::fs::create_dir_all(&limited).expect("dir");
    let kubeconfig = w
        .api
        .write_kubeconfig(&limited, "limited-token")
        .expect("kubeconfig");
    let mut cmd = Command::new(GoHost::binary(tmp()));
    cmd.env("KUBECONFIG", &kubeconfig);
    let mut host = GoHost::start(cmd, &attestor_bin(), tmp());
    host.load();
    let data = w.plugin_data(&format!("enable_namespace_labels = true\n{}", permissive()));
    assert_eq!(host.configure(&data), ("OK".into(), String::new()));
    assert_status(
        host.attest_reference(&blog_by_uid(), &[BROKER]),
        "Internal",
        r#"unable to get namespace labels for "default": unable to get namespace "default": namespaces "default" is forbidden: User "system:serviceaccount:spire:limited" cannot get resource "namespaces" in API group "" in the namespace "default""#,
    );
}

/// The CLI gives the plugin's answers: `attestor attest --object … --broker …`.
#[test]
fn the_cli_attests_references() {
    let w = World::new(Kubelet::Fixture);
    let config = w.dir.write(
        "plugin_data.hcl",
        w.plugin_data(&format!(
            "enable_namespace_labels = true\n{}",
            cluster_scope()
        )),
    );
    let run = |args: &[&str]| {
        let out = Command::new(attestor_bin())
            .env("KUBECONFIG", &w.kubeconfig)
            .arg("attest")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run attestor");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&[
        "--object",
        "pods.core",
        "--uid",
        BLOG_UID,
        "--broker",
        BROKER,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let values: BTreeSet<String> = stdout
        .lines()
        .map(|l| l.strip_prefix("k8s:").expect("k8s: prefix").to_string())
        .collect();
    assert_eq!(values, set(&[POD_SELECTORS, NS_LABEL_SELECTORS]));
    let (code, _, stderr) = run(&[
        "--object",
        "pods.core",
        "--uid",
        BLOG_UID,
        "--broker",
        "spiffe://example.org/stranger",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(r#"broker "spiffe://example.org/stranger" is not configured"#),
        "{stderr}"
    );
    let _ = &w.rt;
}

/// `TestConfigureBroker`'s 13 cases through the agent's Configure: SPIRE's code and first
/// message (the rules themselves are unit-tested in `attestor::config`).
#[test]
fn broker_configurations_as_spire_configures_them() {
    let w = World::new(Kubelet::Fixture);
    let mut host = w.host(&w.plugin_data(""));
    let port = format!("kubelet_read_only_port = {}\n", w.kubelet.port());
    let block = |body: &str| format!("{port}experimental {{\n  broker {{\n{body}\n  }}\n}}\n");
    let ok = |hcl: String| (hcl, "");
    let cases: Vec<(String, &str)> = vec![
        ok(format!("{port}{}", permissive())),
        ok(format!(
            "disable_kubelet_client = true\n{}",
            cluster_scope()
        )),
        (
            format!("disable_kubelet_client = true\n{}", permissive()),
            r#"experimental.broker.brokers[spiffe://example.org/broker].pod_reference_scope must be "cluster" when disable_kubelet_client is true"#,
        ),
        (
            format!(
                "{port}broker {{\n  access_policy = \"permissive\"\n  brokers = [\n    {{ id = \"{BROKER}\" }}\n  ]\n}}\n"
            ),
            "unknown configurations detected: broker",
        ),
        ok(block(&format!(
            "access_policy = \"permissive\"\nbrokers = [\n{{\nid = \"{BROKER}\"\npod_reference_scope = \"cluster\"\n}}\n]"
        ))),
        ok(block(&format!(
            "access_policy = \"enforced\"\nbrokers = [\n{{\nid = \"{BROKER}\"\n}}\n]"
        ))),
        (
            block(&format!("brokers = [\n{{ id = \"{BROKER}\" }}\n]")),
            "experimental.broker.access_policy: must be specified as one of [permissive, enforced]",
        ),
        (
            block(&format!(
                "access_policy = \"disabled\"\nbrokers = [\n{{ id = \"{BROKER}\" }}\n]"
            )),
            r#"experimental.broker.access_policy: unsupported value "disabled"; must be one of [permissive, enforced]"#,
        ),
        (
            block("access_policy = \"permissive\"\nbrokers = []"),
            "experimental.broker.brokers: at least one broker is required",
        ),
        (
            block("access_policy = \"permissive\"\nbrokers = [\n{}\n]"),
            "experimental.broker.brokers[0].id: must be specified",
        ),
        (
            block(&format!(
                "access_policy = \"permissive\"\nbrokers = [\n{{ id = \"{BROKER}\" }},\n{{ id = \"{BROKER}\" }},\n]"
            )),
            "experimental.broker.brokers[spiffe://example.org/broker].id: duplicate broker id",
        ),
        (
            block("access_policy = \"permissive\"\nbrokers = [\n{ id = \"not-a-spiffe-id\" }\n]"),
            "experimental.broker.brokers[not-a-spiffe-id].id",
        ),
        (
            block(&format!(
                "access_policy = \"permissive\"\nbrokers = [\n{{\nid = \"{BROKER}\"\npod_reference_scope = \"Cluster\"\n}}\n]"
            )),
            r#"experimental.broker.brokers[spiffe://example.org/broker].pod_reference_scope: unsupported value "Cluster"; must be one of [agent_node, cluster]"#,
        ),
    ];
    assert_eq!(cases.len(), 13);
    for (hcl, want) in cases {
        let (code, message) = host.configure(&hcl);
        if want.is_empty() {
            assert_eq!((code.as_str(), message.as_str()), ("OK", ""), "{hcl}");
        } else {
            assert_eq!(code, "InvalidArgument", "{hcl}: {message}");
            assert!(message.contains(want), "{hcl}: {message:?} lacks {want:?}");
        }
    }
}

/// A plugin without `AttestReference` (the test plugin answers `Unimplemented`): the agent's
/// wrapper falls back to `Attest` for a PID reference, and only for one
/// (spiffe/spire v1.15.3 `pkg/agent/plugin/workloadattestor/v1.go`, `V1.AttestReference`).
/// Ours implements it: the same call answers without the fallback.
#[test]
fn the_agent_falls_back_to_attest_only_for_plugins_without_attest_reference() {
    let w = World::new(Kubelet::Fixture);
    let me = i32::try_from(std::process::id()).expect("pid fits");
    let mut old = GoHost::start(
        Command::new(GoHost::binary(tmp())),
        Path::new(env!("CARGO_BIN_EXE_attestor-test-plugin")),
        tmp(),
    );
    old.load();
    assert_eq!(old.configure(""), ("OK".into(), String::new()));
    let r = old.reference_call("agent_attest_reference", &Reference::Pid(me), &[]);
    assert_eq!(r["calls"], json!(["AttestReference", "Attest"]), "{r}");
    assert_eq!(r["code"], "OK", "{r}");
    let r = old.reference_call("agent_attest_reference", &blog_by_uid(), &[]);
    assert_eq!(r["calls"], json!(["AttestReference"]), "{r}");
    assert_eq!(r["code"], "Unimplemented", "{r}");

    let mut ours = w.host(&w.plugin_data(""));
    let r = ours.reference_call("agent_attest_reference", &Reference::Pid(me), &[]);
    assert_eq!(r["calls"], json!(["AttestReference"]), "{r}");
    assert_eq!(r["code"], "OK", "this test is not in a pod: {r}");
    assert_eq!(r["selectors"], json!([]), "{r}");
}
