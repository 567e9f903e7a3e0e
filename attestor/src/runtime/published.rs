//! The container statuses the kubelet would publish for the workload's pod, from the
//! runtime's state ([`PodSnapshot`]) and the pod's spec in `/pods`; pure (no I/O).
//!
//! The kubelet's mapping, read from kubernetes (cited per step):
//! * `pkg/kubelet/kuberuntime/kuberuntime_container.go` `toKubeContainerStatus`: a CRI
//!   status becomes `Name` = label `io.kubernetes.container.name`, `Image` =
//!   `status.image.image`, `ImageRef` = `status.image_ref` (older kubelets stored it as
//!   `ImageID`), `CreatedAt` = `status.created_at`;
//! * `pkg/kubelet/kubelet_pods.go` `convertToAPIContainerStatuses`: one status per spec
//!   container, by default `{name, image: <spec image>}` (waiting), or the previous status
//!   if that one is terminated; then, newest runtime instance first
//!   (`SortContainerStatusesByCreationTime`, reversed), the newest instance of each spec
//!   name replaces it through `convertContainerStatus`: `image` = `Image`, **`imageID` =
//!   `ImageRef`** ("historically intentional"), `containerID` = `<runtime>://<id>`;
//!   runtime containers whose name is not in that spec list are ignored. Called for
//!   `spec.containers`, `spec.initContainers` and `spec.ephemeralContainers` separately.
//!
//! SPIRE's selectors read only `image`, `imageID`, `name` and the counts of the first two
//! lists, so those are what is rebuilt. Cross-checks before answering, each a [`Refusal`]:
//! the runtime answered for the cgroup's container; its pod-UID label equals the cgroup's
//! pod UID (when the path has one); exactly one pod with that UID is in `/pods`, with the
//! labels' namespace and name; the container's name is in that pod's spec, once; the
//! workload is the newest instance of its name (else the kubelet publishes another one and
//! SPIRE would never match it); every value is derivable (an image the runtime did not
//! report, or a spec container the runtime no longer has while `/pods` shows it ran, is not).

use std::collections::HashMap;

use super::{PodSnapshot, RuntimeContainer};
use crate::goquote::go_quote;
use crate::locator::ContainerRef;
use crate::pods::{ContainerStatus, Found, PodIndex, PodStatus, PodsError, StatusList};

/// Why the runtime's answer is not used (the attestation goes on as SPIRE's). The text
/// names the check that failed; `attestor explain` prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("the runtime answered for container {got}, not {want}")]
    OtherContainer { want: String, got: String },
    #[error("runtime pod UID {runtime} differs from the cgroup's pod UID {cgroup}")]
    PodUidDiffers { cgroup: String, runtime: String },
    #[error("no pod with UID {uid} in the kubelet's pod list yet")]
    PodNotListed { uid: String },
    #[error("{count} pods with UID {uid} in the kubelet's pod list")]
    PodListedTwice { uid: String, count: usize },
    #[error("the pod list does not parse: {0}")]
    PodList(PodsError),
    #[error(
        "runtime pod {field} {} differs from the pod list's {}",
        quoted(runtime),
        quoted(listed)
    )]
    PodDiffers {
        field: &'static str,
        runtime: Option<String>,
        listed: Option<String>,
    },
    #[error("container {id} has no container name label")]
    NoContainerName { id: String },
    #[error("container name {} is not in the pod's spec", go_quote(name))]
    NotInSpec { name: String },
    #[error(
        "container name {} appears {count} times in the pod's spec",
        go_quote(name)
    )]
    NameTwiceInSpec { name: String, count: usize },
    #[error(
        "container {id} is not the newest instance of {} ({newer} is as new or newer): the kubelet publishes that one",
        go_quote(name)
    )]
    NotNewest {
        id: String,
        name: String,
        newer: String,
    },
    #[error("the runtime reports no image for container {id}")]
    NoImage { id: String },
    #[error(
        "the status of container {} cannot be derived: the pod list shows an instance the runtime no longer has",
        go_quote(name)
    )]
    StatusUnknowable { name: String },
}

/// The workload's pod as SPIRE's search would find it once the kubelet published the
/// runtime's current state: the pod from the `list` (its spec and metadata as listed) with the
/// statuses rebuilt from `snapshot`, and the workload's entry among them.
///
/// `with_container`: whether the workload's status entry is wanted (SPIRE's
/// `disable_container_selectors` drops it).
pub fn published(
    list: &PodIndex,
    target: &ContainerRef,
    snapshot: &PodSnapshot,
    with_container: bool,
) -> Result<Found, Refusal> {
    let workload = &snapshot.workload;
    if workload.id != target.container_id {
        return Err(Refusal::OtherContainer {
            want: target.container_id.clone(),
            got: workload.id.clone(),
        });
    }
    // The client refuses a container without a pod UID label; an empty one is no UID.
    let uid = workload.pod_uid.clone().unwrap_or_default();
    if let Some(cgroup) = &target.pod_uid
        && *cgroup != uid
    {
        return Err(Refusal::PodUidDiffers {
            cgroup: cgroup.clone(),
            runtime: uid,
        });
    }
    let mut listed = list.pods_with_uid(&uid).map_err(Refusal::PodList)?;
    let mut pod = match listed.len() {
        0 => return Err(Refusal::PodNotListed { uid }),
        1 => listed.remove(0),
        count => return Err(Refusal::PodListedTwice { uid, count }),
    };
    for (field, runtime, listed) in [
        (
            "namespace",
            &workload.pod_namespace,
            &pod.metadata.namespace,
        ),
        ("name", &workload.pod_name, &pod.metadata.name),
    ] {
        if runtime != listed {
            return Err(Refusal::PodDiffers {
                field,
                runtime: runtime.clone(),
                listed: listed.clone(),
            });
        }
    }
    let name = workload
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Refusal::NoContainerName {
            id: workload.id.clone(),
        })?;
    let lists = [
        StatusList::Containers,
        StatusList::InitContainers,
        StatusList::EphemeralContainers,
    ];
    let in_spec: Vec<StatusList> = lists
        .iter()
        .flat_map(|&l| {
            pod.spec
                .list(l)
                .iter()
                .filter(|c| c.name.as_deref() == Some(name.as_str()))
                .map(move |_| l)
        })
        .collect();
    let workload_list = match in_spec.as_slice() {
        [] => return Err(Refusal::NotInSpec { name }),
        [one] => *one,
        more => {
            return Err(Refusal::NameTwiceInSpec {
                name,
                count: more.len(),
            });
        }
    };

    let newest = newest_by_name(&uid, &snapshot.containers);
    match newest.get(name.as_str()) {
        Some(Newest::One(c)) if c.id == workload.id => {}
        Some(Newest::One(c)) => {
            return Err(Refusal::NotNewest {
                id: workload.id.clone(),
                name,
                newer: c.id.clone(),
            });
        }
        Some(Newest::Tied(a, b)) => {
            let newer = if a.id == workload.id { &b.id } else { &a.id };
            return Err(Refusal::NotNewest {
                id: workload.id.clone(),
                name,
                newer: newer.clone(),
            });
        }
        // The workload itself carries this name and UID, so it is always there.
        None => {
            return Err(Refusal::NotNewest {
                id: workload.id.clone(),
                name,
                newer: "(none)".into(),
            });
        }
    }

    let mut status = PodStatus::default();
    let mut matched = None;
    for list in lists {
        let spec = pod.spec.list(list);
        if spec.is_empty() {
            continue;
        }
        let previous = pod.status.list(list);
        let mut statuses = Vec::with_capacity(spec.len());
        for container in spec {
            let spec_name = container.name.clone().unwrap_or_default();
            let entry = match newest.get(spec_name.as_str()) {
                Some(Newest::One(c)) => converted(c)?,
                // Two instances created in the same nanosecond: the kubelet's unstable sort
                // picks one, and we cannot know which.
                Some(Newest::Tied(a, _)) => {
                    return Err(Refusal::NotNewest {
                        id: a.id.clone(),
                        name: spec_name,
                        newer: "an instance created at the same time".into(),
                    });
                }
                None => {
                    // No runtime instance: the default waiting status with the spec's
                    // image, unless the kubelet holds an earlier status of one that ran
                    // (it keeps a terminated one as it is), which `/pods` may not show yet.
                    let ran = previous.iter().any(|p| {
                        p.name.as_deref() == Some(spec_name.as_str())
                            && (p.container_id.as_deref().is_some_and(|id| !id.is_empty())
                                || p.state.as_ref().is_some_and(|s| s.terminated.is_some()))
                    });
                    if ran {
                        return Err(Refusal::StatusUnknowable { name: spec_name });
                    }
                    ContainerStatus {
                        name: Some(spec_name.clone()),
                        image: Some(container.image.clone().unwrap_or_default()),
                        image_id: None,
                        container_id: None,
                        state: None,
                    }
                }
            };
            if list == workload_list && spec_name == name {
                matched = Some((list, statuses.len()));
            }
            statuses.push(entry);
        }
        match list {
            StatusList::Containers => status.container_statuses = Some(statuses),
            StatusList::InitContainers => status.init_container_statuses = Some(statuses),
            StatusList::EphemeralContainers => status.ephemeral_container_statuses = Some(statuses),
        }
    }
    pod.status = status;
    Ok(Found::new(pod, matched.filter(|_| with_container)))
}

/// A label or field as an operator reads it: Go-quoted, or `(none)`.
fn quoted(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "(none)".to_string(), go_quote)
}

enum Newest<'a> {
    One(&'a RuntimeContainer),
    /// Two instances with the newest creation time.
    Tied(&'a RuntimeContainer, &'a RuntimeContainer),
}

/// The newest runtime instance of each container name in pod `uid`.
fn newest_by_name<'a>(
    uid: &str,
    containers: &'a [RuntimeContainer],
) -> HashMap<&'a str, Newest<'a>> {
    let mut newest: HashMap<&str, Newest<'_>> = HashMap::new();
    for c in containers {
        // ListContainers filtered by the label; a runtime that ignored the filter must not
        // bring another pod's containers in.
        if c.pod_uid.as_deref() != Some(uid) {
            continue;
        }
        let Some(name) = c.name.as_deref() else {
            continue;
        };
        let entry = match newest.get(name) {
            None => Newest::One(c),
            Some(Newest::One(n) | Newest::Tied(n, _)) => {
                if c.created_at > n.created_at {
                    Newest::One(c)
                } else if c.created_at == n.created_at {
                    Newest::Tied(n, c)
                } else {
                    continue;
                }
            }
        };
        newest.insert(name, entry);
    }
    newest
}

/// `convertContainerStatus` of the kubelet, for the fields selectors read.
fn converted(c: &RuntimeContainer) -> Result<ContainerStatus, Refusal> {
    let image = c
        .image
        .clone()
        .ok_or_else(|| Refusal::NoImage { id: c.id.clone() })?;
    Ok(ContainerStatus {
        name: c.name.clone(),
        image: Some(image),
        image_id: Some(c.image_ref.clone()),
        // The runtime's name is not needed: SPIRE compares only the URL's host.
        container_id: Some(format!("cri://{}", c.id)),
        state: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selectors;

    const UID: &str = "6f1d2c3b-4a59-4e7d-8c1b-0a9e8d7c6b51";
    const APP: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SIDE: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const OLD_APP: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const INIT: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

    fn rc(id: &str, name: &str, image: &str, created_at: i64) -> RuntimeContainer {
        RuntimeContainer {
            id: id.into(),
            name: Some(name.into()),
            pod_uid: Some(UID.into()),
            pod_namespace: Some("shop".into()),
            pod_name: Some("web-0".into()),
            image: Some(format!("{image}:1")),
            image_ref: format!("{image}@sha256:{}", "1".repeat(64)),
            created_at,
        }
    }

    /// A pod with `app` + `side` containers and one init container, as `/pods` lists it
    /// before any status is published (`statuses` is the status object's JSON).
    fn body(statuses: &str) -> Vec<u8> {
        format!(
            r#"{{"items":[{{"metadata":{{"name":"web-0","namespace":"shop","uid":"{UID}","labels":{{"app":"web"}}}},
            "spec":{{"serviceAccountName":"web","nodeName":"node-1",
              "initContainers":[{{"name":"init","image":"busybox:spec"}}],
              "containers":[{{"name":"app","image":"web:spec"}},{{"name":"side","image":"side:spec"}}]}},
            "status":{statuses}}}]}}"#
        )
        .into_bytes()
    }

    fn target(uid: Option<&str>) -> ContainerRef {
        ContainerRef {
            pod_uid: uid.map(str::to_string),
            container_id: APP.into(),
        }
    }

    fn snapshot(containers: Vec<RuntimeContainer>) -> PodSnapshot {
        let workload = containers.iter().find(|c| c.id == APP).unwrap().clone();
        PodSnapshot {
            workload,
            containers,
        }
    }

    fn values(found: &Found) -> Vec<String> {
        selectors::build(&found.pod, found.workload())
    }

    #[test]
    fn waiting_containers_get_the_spec_image_and_the_workload_the_runtimes() {
        let snap = snapshot(vec![
            rc(INIT, "init", "busybox", 1),
            rc(APP, "app", "web", 2),
        ]);
        let found = published(&PodIndex::new(body("{}")), &target(Some(UID)), &snap, true).unwrap();
        let v = values(&found);
        let digest = format!("web@sha256:{}", "1".repeat(64));
        for want in [
            "container-name:app".to_string(),
            "container-image:web:1".into(),
            format!("container-image:{digest}"),
            "pod-image-count:2".into(),
            "pod-init-image-count:1".into(),
            "pod-image:web:1".into(),
            format!("pod-image:{digest}"),
            // `side` is not created yet: the spec's image and an empty imageID.
            "pod-image:side:spec".into(),
            "pod-image:".into(),
            "pod-init-image:busybox:1".into(),
            "pod-label:app:web".into(),
            "sa:web".into(),
        ] {
            assert!(v.contains(&want), "{want} missing from {v:?}");
        }
        assert!(!v.iter().any(|s| s.contains("web:spec")), "{v:?}");
        // Without container selectors: the same pod-level values, no container ones.
        let pod_only = values(
            &published(&PodIndex::new(body("{}")), &target(Some(UID)), &snap, false).unwrap(),
        );
        assert!(
            !pod_only.iter().any(|s| s.starts_with("container-")),
            "{pod_only:?}"
        );
        assert_eq!(pod_only.len(), v.len() - 3);
    }

    #[test]
    fn the_newest_instance_is_published_and_an_older_one_is_refused() {
        // A restart: the old instance is still there (the kubelet keeps the last dead one).
        let mut old = rc(OLD_APP, "app", "web-old", 1);
        old.image = Some("web-old:1".into());
        let snap = snapshot(vec![
            old.clone(),
            rc(APP, "app", "web", 5),
            rc(SIDE, "side", "side", 3),
        ]);
        let v = values(
            &published(&PodIndex::new(body("{}")), &target(Some(UID)), &snap, true).unwrap(),
        );
        assert!(v.contains(&"container-image:web:1".to_string()), "{v:?}");
        assert!(!v.iter().any(|s| s.contains("web-old")), "{v:?}");

        // The workload is the older instance: the kubelet publishes the other one.
        let mut stale = snap.clone();
        stale.workload = rc(APP, "app", "web", 5);
        stale.containers[0].created_at = 9;
        assert_eq!(
            published(&PodIndex::new(body("{}")), &target(Some(UID)), &stale, true).unwrap_err(),
            Refusal::NotNewest {
                id: APP.into(),
                name: "app".into(),
                newer: OLD_APP.into()
            }
        );
        // Same creation time: which one the kubelet picks is unknown.
        let mut tied = snap;
        tied.containers[0].created_at = 5;
        assert!(matches!(
            published(&PodIndex::new(body("{}")), &target(Some(UID)), &tied, true),
            Err(Refusal::NotNewest { .. })
        ));
    }

    #[test]
    fn every_cross_check_refuses() {
        let good = snapshot(vec![rc(APP, "app", "web", 2)]);
        let b = body("{}");
        // Another pod's UID in the cgroup.
        let other = "11111111-2222-4333-8444-555555555555";
        assert_eq!(
            published(&PodIndex::new(b.clone()), &target(Some(other)), &good, true).unwrap_err(),
            Refusal::PodUidDiffers {
                cgroup: other.into(),
                runtime: UID.into()
            }
        );
        // No pod UID in the path: the runtime's is used.
        assert!(published(&PodIndex::new(b.clone()), &target(None), &good, true).is_ok());
        // The runtime answered for another container.
        let mut wrong = good.clone();
        wrong.workload.id = SIDE.into();
        assert!(matches!(
            published(&PodIndex::new(b.clone()), &target(Some(UID)), &wrong, true),
            Err(Refusal::OtherContainer { .. })
        ));
        // Labels that disagree with the listed pod.
        for (field, edit) in [
            (
                "namespace",
                (|c: &mut RuntimeContainer| c.pod_namespace = Some("prod".into()))
                    as fn(&mut RuntimeContainer),
            ),
            ("name", |c| c.pod_name = Some("web-1".into())),
        ] {
            let mut s = good.clone();
            edit(&mut s.workload);
            let e = published(&PodIndex::new(b.clone()), &target(Some(UID)), &s, true).unwrap_err();
            assert!(
                matches!(e, Refusal::PodDiffers { field: f, .. } if f == field),
                "{e}"
            );
        }
        // A container name the spec does not have, or none.
        let mut s = snapshot(vec![rc(APP, "debugger", "web", 2)]);
        assert_eq!(
            published(&PodIndex::new(b.clone()), &target(Some(UID)), &s, true).unwrap_err(),
            Refusal::NotInSpec {
                name: "debugger".into()
            }
        );
        s.workload.name = None;
        assert!(matches!(
            published(&PodIndex::new(b.clone()), &target(Some(UID)), &s, true),
            Err(Refusal::NoContainerName { .. })
        ));
        // The pod is not listed (yet), or twice.
        let empty = br#"{"items":[]}"#;
        assert_eq!(
            published(&PodIndex::new(&empty[..]), &target(Some(UID)), &good, true).unwrap_err(),
            Refusal::PodNotListed { uid: UID.into() }
        );
        let one = String::from_utf8(body("{}")).unwrap();
        let item = &one[one.find('[').unwrap() + 1..one.rfind(']').unwrap()];
        let twice = format!(r#"{{"items":[{item},{item}]}}"#);
        assert!(matches!(
            published(
                &PodIndex::new(twice.clone()),
                &target(Some(UID)),
                &good,
                true
            ),
            Err(Refusal::PodListedTwice { count: 2, .. })
        ));
        // Not a pod list at all.
        assert!(matches!(
            published(&PodIndex::new(&b"[]"[..]), &target(Some(UID)), &good, true),
            Err(Refusal::PodList(_))
        ));
        // No image from the runtime.
        let mut s = good.clone();
        s.workload.image = None;
        s.containers[0].image = None;
        assert_eq!(
            published(&PodIndex::new(b.clone()), &target(Some(UID)), &s, true).unwrap_err(),
            Refusal::NoImage { id: APP.into() }
        );
    }

    #[test]
    fn a_listed_status_of_a_container_the_runtime_no_longer_has_is_not_guessed() {
        let snap = snapshot(vec![rc(APP, "app", "web", 2)]);
        // `side` ran (the list shows its container ID) but the runtime has no instance: the
        // kubelet may hold a terminated status with its old image.
        let listed = r#"{"containerStatuses":[{"name":"side","image":"side:1","imageID":"x","containerID":"containerd://ffff","state":{"running":{}}}]}"#;
        assert_eq!(
            published(
                &PodIndex::new(body(listed)),
                &target(Some(UID)),
                &snap,
                true
            )
            .unwrap_err(),
            Refusal::StatusUnknowable {
                name: "side".into()
            }
        );
        // A waiting status without an ID is what the kubelet publishes anyway.
        let waiting =
            r#"{"containerStatuses":[{"name":"side","image":"side:spec","state":{"waiting":{}}}]}"#;
        assert!(
            published(
                &PodIndex::new(body(waiting)),
                &target(Some(UID)),
                &snap,
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn ephemeral_and_init_workloads_match_their_own_list() {
        let b = format!(
            r#"{{"items":[{{"metadata":{{"name":"web-0","namespace":"shop","uid":"{UID}"}},
            "spec":{{"initContainers":[{{"name":"app","image":"i"}}],"containers":[{{"name":"main","image":"m"}}],
              "ephemeralContainers":[{{"name":"dbg","image":"d"}}]}}}}]}}"#
        );
        let snap = snapshot(vec![rc(APP, "app", "web", 2)]);
        let found = published(&PodIndex::new(b.clone()), &target(Some(UID)), &snap, true).unwrap();
        assert_eq!(
            found.workload().and_then(|s| s.name.as_deref()),
            Some("app")
        );
        let v = values(&found);
        assert!(v.contains(&"pod-init-image:web:1".to_string()), "{v:?}");
        assert!(v.contains(&"pod-image:m".to_string()), "{v:?}");

        let mut dbg = rc(APP, "dbg", "tools", 3);
        dbg.id = APP.into();
        let found = published(
            &PodIndex::new(b.clone()),
            &target(Some(UID)),
            &snapshot(vec![dbg]),
            true,
        )
        .unwrap();
        assert_eq!(
            found.workload().and_then(|s| s.name.as_deref()),
            Some("dbg")
        );
        let v = values(&found);
        assert!(v.contains(&"container-image:tools:1".to_string()), "{v:?}");
        // Ephemeral containers are not pod images (SPIRE counts only the two lists).
        assert!(v.contains(&"pod-image-count:1".to_string()), "{v:?}");
        assert!(!v.iter().any(|s| s.starts_with("pod-image:tools")), "{v:?}");
    }

    #[test]
    fn a_name_twice_in_the_spec_is_refused() {
        let b = format!(
            r#"{{"items":[{{"metadata":{{"name":"web-0","namespace":"shop","uid":"{UID}"}},
            "spec":{{"initContainers":[{{"name":"app","image":"i"}}],"containers":[{{"name":"app","image":"m"}}]}}}}]}}"#
        );
        let snap = snapshot(vec![rc(APP, "app", "web", 2)]);
        assert_eq!(
            published(&PodIndex::new(b.clone()), &target(Some(UID)), &snap, true).unwrap_err(),
            Refusal::NameTwiceInSpec {
                name: "app".into(),
                count: 2
            }
        );
    }
}
