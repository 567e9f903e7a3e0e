//! Expected outcomes of the container tests (`containers.rs`, `cri_fast_path.rs`): the
//! `k8s` selector values SPIRE's attestor gives for a pod's container (no `k8s:` prefix,
//! sorted, as `attestor::attest::Attestor` returns them) and SPIRE's give-up.

use attestor::status::{Code, Status};

use crate::containerd::{Containerd, WORKLOAD_IMAGE};

/// Pod-level selectors: `sa`, `ns`, `node-name` (`node-1`), `pod-uid`, `pod-name`, then
/// `extra` (image counts, `pod-image`, `pod-label`, `pod-owner` …).
pub fn pod_level(sa: &str, ns: &str, uid: &str, name: &str, extra: &[String]) -> Vec<String> {
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

/// `pod_level` plus the workload container's name and both image identifiers (`tag` and
/// `digest`), sorted.
pub fn with_container(pod_level: &[String], name: &str, tag: &str, digest: &str) -> Vec<String> {
    let mut v: Vec<String> = pod_level.to_vec();
    v.push(format!("container-name:{name}"));
    v.push(format!("container-image:{tag}"));
    v.push(format!("container-image:{digest}"));
    v.sort();
    v.dedup();
    v
}

/// Selectors of the running `app` container of the pod
/// [`PodSpec::one_app`](crate::containerd::pod::PodSpec::one_app)`(name, uid, …)`.
pub fn one_app_selectors(cd: &Containerd, name: &str, uid: &str) -> Vec<String> {
    let wl = cd.repo_digest(WORKLOAD_IMAGE);
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

/// SPIRE's outcome when `max_poll_attempts` lists did not name the container.
pub fn give_up() -> Result<Vec<String>, Status> {
    Err(Status::new(
        Code::DeadlineExceeded,
        "no selectors found after max poll attempts",
    ))
}
