//! Pod + workload container status → SPIRE `k8s` selector values (study §2), without the
//! `k8s:` prefix, sorted bytewise and deduplicated.
//!
//! SPIRE emits them in map order (random for images and labels); sorting makes our output
//! comparable and diffable and does not change the set.
//!
//! Out of scope: `ns-label:` (needs the API server; `enable_namespace_labels` is refused by
//! `config`) and sigstore selectors (`sigstore` is refused too).

use std::collections::BTreeSet;

use crate::locator::ContainerRef;
use crate::pods::{self, ContainerStatus, Pod, PodIndex, PodsError, SearchOptions};

/// Searches one pod list ([`pods::find`]) and makes the found pod's selector values:
/// `Ok(Some(values))`, without the `k8s:` prefix, sorted bytewise and deduplicated;
/// `Ok(None)`: not in this list, poll again.
pub fn search(
    body: &[u8],
    target: &ContainerRef,
    opts: &SearchOptions,
) -> Result<Option<Vec<String>>, PodsError> {
    Ok(pods::find(body, target, opts)?.map(|found| build(&found.pod, found.workload())))
}

/// [`search`] on a list already indexed: what live attestations and the replay do.
pub fn search_in(
    index: &PodIndex,
    target: &ContainerRef,
    opts: &SearchOptions,
) -> Result<Option<Vec<String>>, PodsError> {
    Ok(index
        .find(target, opts)?
        .map(|found| build(&found.pod, found.workload())))
}

/// Selector values of a pod; with `workload`, also those of the workload's container.
///
/// Missing fields give empty values (`sa:`), as Go's zero values do in SPIRE.
pub fn build(pod: &Pod, workload: Option<&ContainerStatus>) -> Vec<String> {
    let meta = &pod.metadata;
    let s = |v: &Option<String>| v.as_deref().unwrap_or_default().to_string();
    let mut out = BTreeSet::new();
    out.insert(format!("sa:{}", s(&pod.spec.service_account_name)));
    out.insert(format!("ns:{}", s(&meta.namespace)));
    out.insert(format!("node-name:{}", s(&pod.spec.node_name)));
    out.insert(format!("pod-uid:{}", s(&meta.uid)));
    out.insert(format!("pod-name:{}", s(&meta.name)));

    let containers = pod.status.container_statuses.as_deref().unwrap_or_default();
    let inits = pod
        .status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    // Counts of status entries, not of distinct images (SPIRE's len(...)).
    out.insert(format!("pod-image-count:{}", containers.len()));
    out.insert(format!("pod-init-image-count:{}", inits.len()));
    for status in containers {
        for image in image_identifiers(status) {
            out.insert(format!("pod-image:{image}"));
        }
    }
    for status in inits {
        for image in image_identifiers(status) {
            out.insert(format!("pod-init-image:{image}"));
        }
    }
    for (key, value) in meta.labels.iter().flatten() {
        out.insert(format!("pod-label:{key}:{value}"));
    }
    for owner in meta.owner_references.iter().flatten() {
        out.insert(format!("pod-owner:{}:{}", s(&owner.kind), s(&owner.name)));
        out.insert(format!(
            "pod-owner-uid:{}:{}",
            s(&owner.kind),
            s(&owner.uid)
        ));
    }
    if let Some(status) = workload {
        out.insert(format!("container-name:{}", s(&status.name)));
        for image in image_identifiers(status) {
            out.insert(format!("container-image:{image}"));
        }
    }
    // BTreeSet<String> iterates in bytewise order.
    out.into_iter().collect()
}

/// Both the tag (`image`) and the digest (`imageID`, verbatim with its scheme); an empty one
/// still counts (SPIRE emits `pod-image:` for it).
fn image_identifiers(status: &ContainerStatus) -> [&str; 2] {
    [
        status.image.as_deref().unwrap_or_default(),
        status.image_id.as_deref().unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> Pod {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_selector_kind() {
        let p = pod(r#"{
            "metadata": {"name": "web-1", "namespace": "prod", "uid": "u-1",
                "labels": {"app": "web", "tier": ""},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web", "uid": "rs-1"}]},
            "spec": {"serviceAccountName": "web-sa", "nodeName": "node-a"},
            "status": {
                "containerStatuses": [
                    {"name": "app", "image": "web:1", "imageID": "docker-pullable://web@sha256:aa"},
                    {"name": "side", "image": "web:1", "imageID": ""}],
                "initContainerStatuses": [
                    {"name": "init", "image": "busybox", "imageID": "busybox@sha256:bb"}]}}"#);
        let workload = &p.status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            build(&p, Some(workload)),
            [
                "container-image:docker-pullable://web@sha256:aa",
                "container-image:web:1",
                "container-name:app",
                "node-name:node-a",
                "ns:prod",
                "pod-image-count:2",
                "pod-image:",
                "pod-image:docker-pullable://web@sha256:aa",
                "pod-image:web:1",
                "pod-init-image-count:1",
                "pod-init-image:busybox",
                "pod-init-image:busybox@sha256:bb",
                "pod-label:app:web",
                "pod-label:tier:",
                "pod-name:web-1",
                "pod-owner-uid:ReplicaSet:rs-1",
                "pod-owner:ReplicaSet:web",
                "pod-uid:u-1",
                "sa:web-sa",
            ]
        );
    }

    #[test]
    fn missing_fields_give_empty_values() {
        assert_eq!(
            build(&pod("{}"), None),
            [
                "node-name:",
                "ns:",
                "pod-image-count:0",
                "pod-init-image-count:0",
                "pod-name:",
                "pod-uid:",
                "sa:",
            ]
        );
    }
}
