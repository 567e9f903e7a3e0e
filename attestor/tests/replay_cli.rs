//! The replay CLI on SPIRE's own fixtures (`../shared/conformance/spire-testdata`), run as the
//! real binary. Expected selectors are written out from the fixture JSON and the SPIRE
//! semantics in `../shared/reference/spire-k8s-attestor-study.md` §2–§4, not from our output.
//!
//! Outside CI a missing fixture folder skips the test with a message; with `CI` set it fails.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use attestor::locator::{ContainerRef, locate_cgroup_file};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/spire-testdata"
);

/// The fixture folder, or `None` (test skipped) when it is missing outside CI.
fn fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(FIXTURES);
    if dir.is_dir() {
        return Some(dir);
    }
    let msg = format!(
        "conformance fixtures not found in {} (expected ../shared/conformance/spire-testdata next to the project)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

fn attestor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attestor"))
        .args(args)
        .output()
        .expect("run the attestor binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Runs `attest` on two fixture files (plus extra args) in text mode.
fn attest(dir: &Path, cgroup: &str, pods: &str, extra: &[&str]) -> Output {
    let cgroup = dir.join(cgroup);
    let pods = dir.join(pods);
    let mut args = vec![
        "attest",
        "--cgroup-file",
        cgroup.to_str().unwrap(),
        "--pods-file",
        pods.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    attestor(&args)
}

/// Asserts success with exactly these selectors (given in any order; output must be sorted).
fn assert_selectors(o: &Output, expected: &[&str]) {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    let mut want: Vec<String> = expected.iter().map(|s| format!("{s}\n")).collect();
    want.sort();
    assert_eq!(stdout(o), want.concat());
    assert_eq!(stderr(o), "");
}

fn assert_error(o: &Output, line: &str) {
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(o), "");
    assert_eq!(stderr(o), format!("{line}\n"));
}

/// A scratch file under cargo's per-test-target temp dir.
fn scratch(name: &str, contents: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("replay_cli-{name}"));
    std::fs::write(&path, contents).unwrap();
    path
}

// --- pod_list.json: docker node, cgroup v1 --------------------------------------------------

/// The `blog` pod's selectors (pod_list.json item 4): two containers, no init containers,
/// labels k8s-app=blog and version=v0, owned by ReplicationController "blog".
const BLOG_POD: &[&str] = &[
    "k8s:sa:default",
    "k8s:ns:default",
    "k8s:node-name:k8s-node-1",
    "k8s:pod-uid:2c48913c-b29f-11e7-9350-020968147796",
    "k8s:pod-name:blog-24ck7",
    "k8s:pod-image-count:2",
    "k8s:pod-init-image-count:0",
    "k8s:pod-image:localhost/spiffe/blog:latest",
    "k8s:pod-image:docker-pullable://localhost/spiffe/blog@sha256:0cfdaced91cb46dd7af48309799a3c351e4ca2d5e1ee9737ca0cbd932cb79898",
    "k8s:pod-image:localhost/spiffe/ghostunnel:latest",
    "k8s:pod-image:docker-pullable://localhost/spiffe/ghostunnel@sha256:b2fc20676c92a433b9a91f3f4535faddec0c2c3613849ac12f02c1d5cfcd4c3a",
    "k8s:pod-label:k8s-app:blog",
    "k8s:pod-label:version:v0",
    "k8s:pod-owner:ReplicationController:blog",
    "k8s:pod-owner-uid:ReplicationController:2c401175-b29f-11e7-9350-020968147796",
];

const BLOG_CONTAINER: &[&str] = &[
    "k8s:container-name:blog",
    "k8s:container-image:localhost/spiffe/blog:latest",
    "k8s:container-image:docker-pullable://localhost/spiffe/blog@sha256:0cfdaced91cb46dd7af48309799a3c351e4ca2d5e1ee9737ca0cbd932cb79898",
];

fn blog_with_container() -> Vec<&'static str> {
    [BLOG_POD, BLOG_CONTAINER].concat()
}

#[test]
fn pid_in_pod_cgroupfs() {
    let Some(dir) = fixtures() else { return };
    let o = attest(&dir, "cgroups_pid_in_pod.txt", "pod_list.json", &[]);
    assert_selectors(&o, &blog_with_container());
}

#[test]
fn pid_in_pod_systemd_docker() {
    let Some(dir) = fixtures() else { return };
    let o = attest(&dir, "systemd_cgroups_pid_in_pod.txt", "pod_list.json", &[]);
    assert_selectors(&o, &blog_with_container());
}

#[test]
fn init_container() {
    // kube-flannel-ds-gp1g9: the process is in init container install-cni. Both the main and
    // the init container use the same flannel image (tag and digest).
    let Some(dir) = fixtures() else { return };
    let tag = "quay.io/coreos/flannel:v0.9.0-amd64";
    let digest = "docker-pullable://quay.io/coreos/flannel@sha256:1b401bf0c30bada9a539389c3be652b58fe38463361edf488e6543c8761d4970";
    let o = attest(&dir, "cgroups_init_pid_in_pod.txt", "pod_list.json", &[]);
    assert_selectors(
        &o,
        &[
            "k8s:sa:flannel",
            "k8s:ns:kube-system",
            "k8s:node-name:k8s-node-1",
            "k8s:pod-uid:d488cae9-b2a0-11e7-9350-020968147796",
            "k8s:pod-name:kube-flannel-ds-gp1g9",
            "k8s:pod-image-count:1",
            "k8s:pod-init-image-count:1",
            &format!("k8s:pod-image:{tag}"),
            &format!("k8s:pod-image:{digest}"),
            &format!("k8s:pod-init-image:{tag}"),
            &format!("k8s:pod-init-image:{digest}"),
            "k8s:pod-label:app:flannel",
            "k8s:pod-label:controller-revision-hash:1846323910",
            "k8s:pod-label:pod-template-generation:1",
            "k8s:pod-label:tier:node",
            "k8s:pod-owner:DaemonSet:kube-flannel-ds",
            "k8s:pod-owner-uid:DaemonSet:2f0350fc-b29d-11e7-9350-020968147796",
            "k8s:container-name:install-cni",
            &format!("k8s:container-image:{tag}"),
            &format!("k8s:container-image:{digest}"),
        ],
    );
}

#[test]
fn disable_container_selectors_gives_pod_selectors_only() {
    let Some(dir) = fixtures() else { return };
    let config = scratch("disable.hcl", "disable_container_selectors = true\n");
    let o = attest(
        &dir,
        "cgroups_pid_in_pod.txt",
        "pod_list.json",
        &["--config", config.to_str().unwrap()],
    );
    assert_selectors(&o, BLOG_POD);
}

#[test]
fn container_not_running_gives_up() {
    // pod_list_not_running.json: the blog container has no containerID yet. SPIRE polls 60
    // times, then gives up; the replayed list never changes, so the answer comes at once.
    let Some(dir) = fixtures() else { return };
    let o = attest(
        &dir,
        "cgroups_pid_in_pod.txt",
        "pod_list_not_running.json",
        &[],
    );
    assert_error(
        &o,
        "error: DeadlineExceeded: no selectors found after max poll attempts",
    );
}

#[test]
fn container_not_running_with_disable_container_selectors() {
    // The cgroup names the pod, which is known, so its pod selectors are enough.
    let Some(dir) = fixtures() else { return };
    let config = scratch(
        "disable-json.json",
        r#"{"disable_container_selectors": true}"#,
    );
    let o = attest(
        &dir,
        "cgroups_pid_in_pod.txt",
        "pod_list_not_running.json",
        &["--config", config.to_str().unwrap()],
    );
    assert_selectors(&o, BLOG_POD);
}

#[test]
fn not_in_pod_is_success_with_no_selectors() {
    let Some(dir) = fixtures() else { return };
    let o = attest(&dir, "cgroups_pid_not_in_pod.txt", "pod_list.json", &[]);
    assert_selectors(&o, &[]);
    let o = attest(
        &dir,
        "cgroups_pid_not_in_pod.txt",
        "pod_list.json",
        &["--output", "json"],
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "{\"selectors\":[]}\n");
}

// --- kind and CRI-O -------------------------------------------------------------------------

/// sample-workload-6658cb9566-5n4b4, the same pod in kind_pod_list.json and
/// crio_pod_list.json except for namespace and node name.
fn sample_workload(ns: &str, node: &str) -> Vec<String> {
    [
        "k8s:sa:default".to_string(),
        format!("k8s:ns:{ns}"),
        format!("k8s:node-name:{node}"),
        "k8s:pod-uid:a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80".into(),
        "k8s:pod-name:sample-workload-6658cb9566-5n4b4".into(),
        "k8s:pod-image-count:1".into(),
        "k8s:pod-init-image-count:0".into(),
        "k8s:pod-image:gcr.io/spiffe-io/spire-agent:0.8.1".into(),
        "k8s:pod-image:gcr.io/spiffe-io/spire-agent@sha256:1e4c481d76e9ecbd3d8684891e0e46aa021a30920ca04936e1fdcc552747d941".into(),
        "k8s:pod-label:app:sample-workload".into(),
        "k8s:pod-label:pod-template-hash:6658cb9566".into(),
        "k8s:pod-owner:ReplicaSet:sample-workload-6658cb9566".into(),
        "k8s:pod-owner-uid:ReplicaSet:349d135e-3781-43e3-bc25-c900aedf1d0c".into(),
        "k8s:container-name:workload-api-client".into(),
        "k8s:container-image:gcr.io/spiffe-io/spire-agent:0.8.1".into(),
        "k8s:container-image:gcr.io/spiffe-io/spire-agent@sha256:1e4c481d76e9ecbd3d8684891e0e46aa021a30920ca04936e1fdcc552747d941".into(),
    ]
    .to_vec()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn kind_pod() {
    // Nested docker path; the last line (0::/docker/<host>/system.slice/containerd.service)
    // names only kind's node container and is ignored once the pod UID is known.
    let Some(dir) = fixtures() else { return };
    let o = attest(
        &dir,
        "cgroups_pid_in_kind_pod.txt",
        "kind_pod_list.json",
        &[],
    );
    assert_selectors(&o, &refs(&sample_workload("default", "kind-control-plane")));
}

#[test]
fn crio_pod_without_pod_uid_scans_all_pods() {
    let Some(dir) = fixtures() else { return };
    let o = attest(
        &dir,
        "cgroups_pid_in_crio_pod.txt",
        "crio_pod_list.json",
        &[],
    );
    let node = "a37b7d23-d32a-4932-8f33-40950ac16ee9";
    assert_selectors(&o, &refs(&sample_workload("sfh-199", node)));
}

#[test]
fn systemd_crio_pod() {
    let Some(dir) = fixtures() else { return };
    let o = attest(
        &dir,
        "systemd_crio_cgroups_pid_in_pod.txt",
        "crio_pod_list.json",
        &[],
    );
    let node = "a37b7d23-d32a-4932-8f33-40950ac16ee9";
    assert_selectors(&o, &refs(&sample_workload("sfh-199", node)));
}

#[test]
fn crio_duplicate_container_id() {
    let Some(dir) = fixtures() else { return };
    let o = attest(
        &dir,
        "cgroups_pid_in_crio_pod.txt",
        "crio_pod_list_duplicate_containerId.json",
        &[],
    );
    assert_error(&o, "error: Internal: two pods found with same container Id");
    let o = attest(
        &dir,
        "cgroups_pid_in_crio_pod.txt",
        "crio_pod_list_duplicate_containerId.json",
        &["--output", "json"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "{\"error\":{\"code\":\"Internal\",\"message\":\"two pods found with same container Id\"}}\n"
    );
    assert_eq!(stderr(&o), "");
}

#[test]
fn wrong_pod_list_gives_up() {
    // The blog container is not on the kind node.
    let Some(dir) = fixtures() else { return };
    let o = attest(&dir, "cgroups_pid_in_pod.txt", "kind_pod_list.json", &[]);
    assert_error(
        &o,
        "error: DeadlineExceeded: no selectors found after max poll attempts",
    );
}

#[test]
fn json_output_of_success() {
    let Some(dir) = fixtures() else { return };
    let o = attest(
        &dir,
        "cgroups_pid_in_kind_pod.txt",
        "kind_pod_list.json",
        &["--output", "json"],
    );
    assert_eq!(o.status.code(), Some(0));
    let mut want = sample_workload("default", "kind-control-plane");
    want.sort();
    let body: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(body, serde_json::json!({ "selectors": want }));
}

// --- containerinfo: cgroup files through the locator -----------------------------------------

const CID_0123: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn locate_fixture(dir: &Path, case: &str) -> Option<ContainerRef> {
    let text = std::fs::read_to_string(
        dir.join("containerinfo/other")
            .join(case)
            .join("proc/123/cgroup"),
    )
    .unwrap();
    locate_cgroup_file(&text).unwrap()
}

#[test]
fn containerinfo_cgroup_primary() {
    let Some(dir) = fixtures() else { return };
    assert_eq!(
        locate_fixture(&dir, "cgroup-primary"),
        Some(ContainerRef {
            pod_uid: None,
            container_id: CID_0123.into()
        })
    );
}

#[test]
fn containerinfo_mountinfo_fallback_is_not_taken() {
    // cgroup says `0::/` (private cgroup namespace). SPIRE v1.9.6–v1.15.3 would then read
    // mountinfo; we never do (SPIRE #7288), so the process is "not in a pod".
    let Some(dir) = fixtures() else { return };
    assert_eq!(locate_fixture(&dir, "mountinfo-fallback"), None);
    let cgroup = dir.join("containerinfo/other/mountinfo-fallback/proc/123/cgroup");
    let pods = dir.join("pod_list.json");
    let o = attestor(&[
        "attest",
        "--cgroup-file",
        cgroup.to_str().unwrap(),
        "--pods-file",
        pods.to_str().unwrap(),
    ]);
    assert_selectors(&o, &[]);
}

#[test]
fn containerinfo_mountinfo_impersonation_is_ignored() {
    // The mountinfo next to this cgroup file bind-mounts another pod's cgroup
    // (pod ffffffff-…, container deadbeef…). The cgroup file, which the kernel writes,
    // names container 0123… without a pod UID. Getting exactly that — no pod UID
    // ffffffff-ffff-ffff-ffff-ffffffffffff, no deadbeef… — shows mountinfo is never read.
    let Some(dir) = fixtures() else { return };
    let mountinfo = std::fs::read_to_string(
        dir.join("containerinfo/other/mountinfo-impersonation/proc/123/mountinfo"),
    )
    .unwrap();
    assert!(mountinfo.contains("podffffffff_ffff_ffff_ffff_ffffffffffff"));
    assert!(mountinfo.contains(&"deadbeef".repeat(8)));
    assert_eq!(
        locate_fixture(&dir, "mountinfo-impersonation"),
        Some(ContainerRef {
            pod_uid: None,
            container_id: CID_0123.into()
        })
    );
}

#[test]
fn containerinfo_cgroup_files_are_all_covered() {
    // Every containerinfo case that has a cgroup file is tested above; the others hold only
    // mountinfo, which this attestor never reads.
    let Some(dir) = fixtures() else { return };
    let mut with_cgroup = Vec::new();
    for runtime in ["docker", "k8s", "other"] {
        for case in std::fs::read_dir(dir.join("containerinfo").join(runtime)).unwrap() {
            let case = case.unwrap().path();
            if case.join("proc/123/cgroup").is_file() {
                with_cgroup.push(format!(
                    "{runtime}/{}",
                    case.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    with_cgroup.sort();
    assert_eq!(
        with_cgroup,
        [
            "other/cgroup-primary",
            "other/mountinfo-fallback",
            "other/mountinfo-impersonation"
        ]
    );
}

// --- Bad input -------------------------------------------------------------------------------

#[test]
fn malformed_cgroup_file() {
    let Some(dir) = fixtures() else { return };
    let cgroup = scratch("bad.cgroup", "1:cpu:/\nnot a cgroup line\n");
    let pods = dir.join("pod_list.json");
    let o = attestor(&[
        "attest",
        "--cgroup-file",
        cgroup.to_str().unwrap(),
        "--pods-file",
        pods.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).starts_with(
            "error: Internal: invalid cgroup entry, contains 1 colon separated fields but expected at least 3: \"not a cgroup line\" (line 2;"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn conflicting_cgroup_entries() {
    let cid = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    let cgroup = scratch(
        "conflict.cgroup",
        &format!(
            "2:cpu:/kubepods/pod2c48913c-b29f-11e7-9350-020968147796/{cid}\n1:mem:/kubepods/podd488cae9-b2a0-11e7-9350-020968147796/{cid}\n"
        ),
    );
    let pods = scratch("conflict.pods", "{\"items\":[]}");
    let o = attestor(&[
        "attest",
        "--cgroup-file",
        cgroup.to_str().unwrap(),
        "--pods-file",
        pods.to_str().unwrap(),
    ]);
    assert_error(
        &o,
        "error: FailedPrecondition: multiple pod UIDs found (\"2c48913c-b29f-11e7-9350-020968147796\", \"d488cae9-b2a0-11e7-9350-020968147796\")",
    );
}

#[test]
fn pods_file_that_is_not_a_pod_list() {
    let Some(dir) = fixtures() else { return };
    let cgroup = dir.join("cgroups_pid_in_pod.txt");
    // SPIRE v1.15.3's texts (`podListFetcher.parsePodList`), then our detail after "; ".
    for (name, body, message) in [
        (
            "array.pods",
            "[]",
            "invalid kubelet response: expected an object; got an array",
        ),
        (
            "noitems.pods",
            "{\"kind\":\"PodList\"}",
            "invalid kubelet response: expected an items array; the object has no \"items\" field",
        ),
        (
            "truncated.pods",
            "{\"items\":[{\"metadata\":",
            "unable to parse kubelet response: cannot parse JSON: cannot parse object: cannot \
             parse object value: cannot parse array: cannot parse array value: cannot parse \
             object: cannot parse object value: cannot parse empty string; unparsed tail: \"\"",
        ),
    ] {
        let pods = scratch(name, body);
        let o = attestor(&[
            "attest",
            "--cgroup-file",
            cgroup.to_str().unwrap(),
            "--pods-file",
            pods.to_str().unwrap(),
        ]);
        assert_error(&o, &format!("error: Unavailable: {message}"));
    }
}

#[test]
fn missing_input_file() {
    let o = attestor(&[
        "attest",
        "--cgroup-file",
        "/nonexistent/cgroup",
        "--pods-file",
        "/nonexistent/pods",
    ]);
    assert_error(
        &o,
        "error: InvalidArgument: --cgroup-file /nonexistent/cgroup: cannot open: No such file or directory (os error 2); give a copy of the workload's /proc/<pid>/cgroup",
    );
}

#[test]
fn bad_config_fails_before_anything_else() {
    let Some(dir) = fixtures() else { return };
    let config = scratch(
        "both-ports.hcl",
        "kubelet_read_only_port = 1\nkubelet_secure_port = 2\n",
    );
    let o = attest(
        &dir,
        "cgroups_pid_in_pod.txt",
        "pod_list.json",
        &["--config", config.to_str().unwrap(), "--output", "json"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "{\"error\":{\"code\":\"InvalidArgument\",\"message\":\"cannot use both the read-only and secure port\"}}\n"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["attest"][..],
        &["attest", "--cgroup-file", "x"],
        &["attest", "--pods-file", "x"],
        &[
            "attest",
            "--cgroup-file",
            "x",
            "--pods-file",
            "y",
            "--output",
            "yaml",
        ],
        &["no-such-command"],
        &["check-config"],
    ] {
        let o = attestor(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert_eq!(stdout(&o), "", "{args:?}");
    }
}

// --- check-config ----------------------------------------------------------------------------

#[test]
fn check_config_ok() {
    for (name, text) in [
        (
            "ok.hcl",
            "kubelet_read_only_port = 10255\n\"node_name_env\" = \"N\"\nexperimental {\n  api_server = {\n    cache { enabled = true }\n  }\n}\n",
        ),
        (
            "ok.json",
            "{\"kubelet_secure_port\": 10250, \"poll_retry_interval\": \"1.5s\"}",
        ),
        ("empty.hcl", ""),
    ] {
        let file = scratch(name, text);
        let o = attestor(&["check-config", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        assert_eq!(stdout(&o), "ok\n");
    }
}

#[test]
fn check_config_reports_every_problem_first_as_spire() {
    let file = scratch(
        "bad.hcl",
        "zeta = 1\nalpha = 2\nkubelet_read_only_port = 10255\nkubelet_secure_port = 10250\nreload_interval = \"1.5\"\n",
    );
    let o = attestor(&["check-config", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o),
        "error: InvalidArgument: unknown configurations detected: alpha,zeta\n\
         error: InvalidArgument: unable to parse reload interval: time: missing unit in duration \"1.5\"\n\
         error: InvalidArgument: cannot use both the read-only and secure port\n"
    );
}

#[test]
fn check_config_refuses_unsupported_keys() {
    let file = scratch(
        "sigstore.hcl",
        "sigstore {\n  skipped_images = [\"x\"]\n}\n",
    );
    let o = attestor(&["check-config", file.to_str().unwrap()]);
    assert_error(
        &o,
        "error: InvalidArgument: sigstore is not supported yet: image signature verification is not implemented; remove the sigstore block",
    );
}
