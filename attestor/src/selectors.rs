//! Pod + workload container status → SPIRE `k8s` selector values (study §2), without the
//! `k8s:` prefix, sorted bytewise and deduplicated.
//!
//! SPIRE emits them in map order (random for images and labels); sorting makes our output
//! comparable and diffable and does not change the set.
//!
//! Also here: `ns-label:` values (`enable_namespace_labels`, [`namespace_labels`]) and the
//! Broker API's vocabulary for objects other than pods ([`object`]). Out of scope: sigstore
//! selectors (`sigstore` is refused by `config`).

use std::collections::{BTreeMap, BTreeSet};

use crate::apiserver::{ObjectMeta, ResourceType};
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

/// `ns-label:<key>:<value>` for each label of the workload's namespace (spiffe/spire v1.15.3
/// `k8s.go`, `getSelectorValuesFromNamespaceLabels`), sorted.
pub fn namespace_labels(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels
        .iter()
        .map(|(key, value)| format!("ns-label:{key}:{value}"))
        .collect()
}

/// Adds `more` to sorted, deduplicated selector values, keeping them so.
pub fn merge(values: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    values.extend(more);
    values.sort_unstable();
    values.dedup();
}

/// The value of the one `<prefix>…` selector in `values` (`ns:`, `pod-name:`): pod
/// selectors carry each exactly once ([`build`]).
pub fn value_of<'v>(values: &'v [String], prefix: &str) -> Option<&'v str> {
    values.iter().find_map(|v| v.strip_prefix(prefix))
}

/// The Broker API's selector values for a Kubernetes object that is not a pod (spiffe/spire
/// v1.15.3 `k8s.go`, `getSelectorValuesFromObjectMeta`): `plural`/`group` as the reference
/// spelled them (`core` for the core group), version and kind from discovery, then the
/// object's name, namespace, labels and owner references. Sorted and deduplicated.
pub fn object(
    plural: &str,
    group: &str,
    resource: &ResourceType,
    meta: &ObjectMeta,
) -> Vec<String> {
    let api_version = if resource.group.is_empty() {
        resource.version.clone()
    } else {
        format!("{}/{}", resource.group, resource.version)
    };
    let mut out = BTreeSet::from([
        format!("uid:{}", meta.uid),
        format!("resource:{plural}.{group}"),
        format!("plural:{plural}"),
        format!("group:{group}"),
        format!("version:{}", resource.version),
        format!("apiVersion:{api_version}"),
        format!("kind:{}", resource.kind),
        format!("name:{}", meta.name),
    ]);
    let key = if meta.namespace.is_empty() {
        meta.name.clone()
    } else {
        out.insert(format!("namespace:{}", meta.namespace));
        format!("{}/{}", meta.namespace, meta.name)
    };
    out.insert(format!("key:{key}"));
    for (k, v) in &meta.labels {
        out.insert(format!("label:{k}:{v}"));
    }
    for owner in &meta.owner_references {
        // apimachinery's schema.ParseGroupVersion: "v1" is the core group, "g/v" a group,
        // anything with more slashes an error SPIRE ignores (zero value: the core group).
        // The version is left out on purpose: it is not part of the owner's identity.
        let group = match owner.api_version.split('/').collect::<Vec<_>>().as_slice() {
            [group, _version] if !group.is_empty() => (*group).to_string(),
            _ => "core".to_string(),
        };
        let kind = format!("{group}/{}", owner.kind);
        let by_key = format!("{kind}/{}", owner.name);
        let by_uid = format!("{kind}/{}", owner.uid);
        if owner.controller == Some(true) {
            out.insert(format!("controller-key:{by_key}"));
            out.insert(format!("controller-uid:{by_uid}"));
        }
        out.insert(format!("owner-key:{by_key}"));
        out.insert(format!("owner-uid:{by_uid}"));
    }
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

    /// spiffe/spire v1.15.3 `k8s_test.go` `TestGetSelectorValuesFromObjectMeta`, both cases.
    #[test]
    fn object_vocabulary_as_spire_builds_it() {
        use crate::apiserver::OwnerReference;
        let deployments = ResourceType {
            group: "apps".into(),
            version: "v1".into(),
            plural: "deployments".into(),
            kind: "Deployment".into(),
            namespaced: true,
        };
        let meta = ObjectMeta {
            name: "checkout".into(),
            namespace: "shop".into(),
            uid: "a1b2c3".into(),
            labels: BTreeMap::from([("app".into(), "checkout".into())]),
            owner_references: vec![
                OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: "checkout-rs".into(),
                    uid: "owner-uid-1".into(),
                    controller: Some(true),
                },
                OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: "checkout-cm".into(),
                    uid: "owner-uid-2".into(),
                    controller: Some(false),
                },
            ],
        };
        let mut want = vec![
            "uid:a1b2c3",
            "resource:deployments.apps",
            "plural:deployments",
            "group:apps",
            "version:v1",
            "apiVersion:apps/v1",
            "kind:Deployment",
            "name:checkout",
            "namespace:shop",
            "key:shop/checkout",
            "label:app:checkout",
            "owner-key:apps/ReplicaSet/checkout-rs",
            "owner-uid:apps/ReplicaSet/owner-uid-1",
            "controller-key:apps/ReplicaSet/checkout-rs",
            "controller-uid:apps/ReplicaSet/owner-uid-1",
            "owner-key:core/ConfigMap/checkout-cm",
            "owner-uid:core/ConfigMap/owner-uid-2",
        ];
        want.sort_unstable();
        assert_eq!(object("deployments", "apps", &deployments, &meta), want);

        let nodes = ResourceType {
            group: String::new(),
            version: "v1".into(),
            plural: "nodes".into(),
            kind: "Node".into(),
            namespaced: false,
        };
        let node = ObjectMeta {
            name: "ip-10-0-1-42.ec2.internal".into(),
            uid: "node-uid".into(),
            ..ObjectMeta::default()
        };
        let mut want = vec![
            "uid:node-uid",
            "resource:nodes.core",
            "plural:nodes",
            "group:core",
            "version:v1",
            "apiVersion:v1",
            "kind:Node",
            "name:ip-10-0-1-42.ec2.internal",
            "key:ip-10-0-1-42.ec2.internal",
        ];
        want.sort_unstable();
        assert_eq!(object("nodes", "core", &nodes, &node), want);
    }

    #[test]
    fn namespace_labels_and_merge() {
        let labels = BTreeMap::from([
            ("team".to_string(), "backend".to_string()),
            ("environment".to_string(), "production".to_string()),
        ]);
        let mut values = vec!["ns:default".to_string(), "sa:default".to_string()];
        merge(&mut values, namespace_labels(&labels));
        assert_eq!(
            values,
            [
                "ns-label:environment:production",
                "ns-label:team:backend",
                "ns:default",
                "sa:default"
            ]
        );
        assert_eq!(value_of(&values, "ns:"), Some("default"));
        assert_eq!(value_of(&values, "pod-name:"), None);
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
