//! Kubelet `/pods` body + [`ContainerRef`] → the workload's pod and container status.
//!
//! [`search`] is one pure function per pod-list version: the live poll loop calls it each
//! time it gets a newer list, the replay CLI calls it once. It follows SPIRE's
//! `k8s.go`/`podlistfetcher.go`:
//! * the body must be a JSON object with an `items` array (`null` means no pods);
//! * pods without `metadata.uid` are skipped; when the cgroup gave a pod UID only that pod is
//!   examined, otherwise every pod;
//! * the kubelet's `containerID` (`<runtime>://<id>`) is URL-parsed and its host compared
//!   **exactly** with the cgroup's container ID, over `containerStatuses`, then
//!   `initContainerStatuses`, then — beyond SPIRE — `ephemeralContainerStatuses`
//!   (`kubectl debug` containers; SPIRE never finds them and gives up after 30 s);
//! * two pods holding the container ⇒ `Internal` "two pods found with same container Id";
//! * with `disable_container_selectors`, a pod found by UID whose status does not list the
//!   container (yet) still yields its pod-level selectors.
//!
//! Parsing is lazy (SPIRE does the same with fastjson since v1.7.0): a scanner walks the list
//! reading only `metadata.uid` and the status entries' `containerID`; only the matched pod
//! is decoded in full (`serde_json`) and turned into selectors by [`crate::selectors`].
//!
//! Out of scope: fetching the list, retry timing (the poll loop), and selector formats
//! (`selectors`).

#![forbid(unsafe_code)]

mod scan;

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;

use crate::locator::ContainerRef;
use crate::status::{Code, Status};
use scan::{ScanResult, Scanner};

/// How to search (from the validated `Config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SearchOptions {
    /// Emit pod-level selectors only (SPIRE `disable_container_selectors`).
    pub disable_container_selectors: bool,
}

impl SearchOptions {
    pub fn new(disable_container_selectors: bool) -> Self {
        SearchOptions {
            disable_container_selectors,
        }
    }
}

/// Why a pod list could not be searched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PodsError {
    /// The body is not a kubelet pod list. Retry with the next list (SPIRE retries fetch and
    /// parse errors and reports the last one as `Unavailable` when it gives up).
    #[error("unable to parse kubelet pod list: {0}")]
    InvalidList(String),
    /// The matched pod does not decode as a pod.
    #[error("unable to decode pod info from kubelet response: {0}")]
    InvalidPod(String),
    /// The container ID appears in two pods: refuse rather than guess.
    #[error("two pods found with same container Id")]
    TwoPods,
}

impl PodsError {
    /// Whether a later pod list may succeed (the poll loop keeps polling on these).
    pub fn is_retryable(&self) -> bool {
        matches!(self, PodsError::InvalidList(_))
    }
}

impl From<PodsError> for Status {
    fn from(e: PodsError) -> Self {
        let code = match e {
            PodsError::InvalidList(_) | PodsError::InvalidPod(_) => Code::Unavailable,
            PodsError::TwoPods => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// Searches one pod list for the target container.
///
/// `Ok(Some(values))`: the selector values without the `k8s:` prefix, sorted bytewise and
/// deduplicated. `Ok(None)`: not in this list, poll again.
pub fn search(
    body: &[u8],
    target: &ContainerRef,
    opts: &SearchOptions,
) -> Result<Option<Vec<String>>, PodsError> {
    let candidates = find_candidates(body, target, opts).map_err(|e| {
        PodsError::InvalidList(format!(
            "{e} (expected a JSON object with an \"items\" array of pods)"
        ))
    })?;
    let mut found: Option<Vec<String>> = None;
    for candidate in candidates {
        if found.is_some() {
            return Err(PodsError::TwoPods);
        }
        let pod: Pod = serde_json::from_slice(&body[candidate.range.clone()])
            .map_err(|e| PodsError::InvalidPod(e.to_string()))?;
        let workload = match candidate.matched {
            Some((list, index)) if !opts.disable_container_selectors => {
                pod.status.list(list).get(index)
            }
            _ => None,
        };
        found = Some(crate::selectors::build(&pod, workload));
    }
    Ok(found)
}

/// Which status list an entry came from, in search order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StatusList {
    Containers,
    InitContainers,
    EphemeralContainers,
}

/// A pod that yields selectors: its byte range and, unless found by UID alone, the
/// first matching status entry.
struct Candidate {
    range: Range<usize>,
    matched: Option<(StatusList, usize)>,
}

fn find_candidates(
    body: &[u8],
    target: &ContainerRef,
    opts: &SearchOptions,
) -> Result<Vec<Candidate>, String> {
    let mut sc = Scanner::new(body);
    let mut items_seen = false;
    let mut candidates = Vec::new();
    sc.object(|key, sc| {
        if key != "items" {
            return sc.skip();
        }
        items_seen = true;
        if sc.null()? {
            return Ok(());
        }
        sc.array(|_, sc| {
            let start = sc.pos();
            let probe = probe_pod(sc, &target.container_id)?;
            let range = start..sc.pos();
            let Some(uid) = probe.uid else {
                // SPIRE keys pods by UID and skips those without one.
                return Ok(());
            };
            if uid.is_empty() {
                return Ok(());
            }
            let pod_known = match &target.pod_uid {
                Some(want) if *want != uid => return Ok(()),
                Some(_) => true,
                None => false,
            };
            if probe.matched.is_some() || (pod_known && opts.disable_container_selectors) {
                candidates.push(Candidate {
                    range,
                    matched: probe.matched,
                });
            }
            Ok(())
        })
    })
    .and_then(|()| sc.end())
    .map_err(|e| e.to_string())?;
    if !items_seen {
        return Err("no \"items\" field in the pod list".to_string());
    }
    Ok(candidates)
}

struct PodProbe {
    uid: Option<String>,
    matched: Option<(StatusList, usize)>,
}

/// Reads `metadata.uid` and finds the first status entry whose `containerID` names the
/// container, skipping everything else.
fn probe_pod(sc: &mut Scanner<'_>, container_id: &str) -> ScanResult<PodProbe> {
    let mut probe = PodProbe {
        uid: None,
        matched: None,
    };
    sc.object(|key, sc| match key {
        "metadata" => {
            if sc.null()? {
                return Ok(());
            }
            sc.object(|key, sc| {
                if key != "uid" {
                    return sc.skip();
                }
                if !sc.null()? {
                    probe.uid = Some(sc.string()?.into_owned());
                }
                Ok(())
            })
        }
        "status" => {
            if sc.null()? {
                return Ok(());
            }
            sc.object(|key, sc| {
                let list = match key {
                    "containerStatuses" => StatusList::Containers,
                    "initContainerStatuses" => StatusList::InitContainers,
                    "ephemeralContainerStatuses" => StatusList::EphemeralContainers,
                    _ => return sc.skip(),
                };
                if sc.null()? {
                    return Ok(());
                }
                sc.array(|index, sc| {
                    let mut hit = false;
                    if !sc.null()? {
                        sc.object(|key, sc| {
                            if key != "containerID" {
                                return sc.skip();
                            }
                            if !sc.null()? {
                                hit = container_id_host(&sc.string()?) == Some(container_id);
                            }
                            Ok(())
                        })?;
                    }
                    // Search order is list order, not the order of keys in the JSON.
                    if hit && probe.matched.is_none_or(|(l, _)| list < l) {
                        probe.matched = Some((list, index));
                    }
                    Ok(())
                })
            })
        }
        _ => sc.skip(),
    })?;
    Ok(probe)
}

/// The host part of a kubelet container ID URL (`containerd://<id>` → `<id>`), as Go's
/// `url.Parse(...).Host` gives it; `None` when there is no `scheme://` authority (Go's
/// parser then yields an empty host, which never matches a 64-hex container ID).
fn container_id_host(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    Some(
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host),
    )
}

// --- The matched pod, decoded in full -------------------------------------------------------
//
// Only the fields selectors use. `Option` everywhere because Go decodes a missing or `null`
// field as its zero value; a field of the wrong type is a decode error, as in Go.

/// A kubelet pod, reduced to what selectors need.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OwnerReference {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub service_account_name: Option<String>,
    pub node_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    pub container_statuses: Option<Vec<ContainerStatus>>,
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
    pub ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

impl PodStatus {
    pub(crate) fn list(&self, which: StatusList) -> &[ContainerStatus] {
        let list = match which {
            StatusList::Containers => &self.container_statuses,
            StatusList::InitContainers => &self.init_container_statuses,
            StatusList::EphemeralContainers => &self.ephemeral_container_statuses,
        };
        list.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: Option<String>,
    pub image: Option<String>,
    #[serde(rename = "imageID")]
    pub image_id: Option<String>,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const UID: &str = "4f1e2d3c-5b6a-4789-9abc-def012345678";

    fn target(uid: Option<&str>) -> ContainerRef {
        ContainerRef {
            pod_uid: uid.map(str::to_string),
            container_id: CID.to_string(),
        }
    }

    fn pod(uid: &str, lists: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"p-{uid}","namespace":"ns","uid":"{uid}"}},"spec":{{"serviceAccountName":"sa","nodeName":"n"}},"status":{{{lists}}}}}"#
        )
    }

    fn status(name: &str, cid: &str) -> String {
        format!(
            r#"{{"name":"{name}","image":"img:{name}","imageID":"id-{name}","containerID":"{cid}"}}"#
        )
    }

    fn list(pods: &[String]) -> Vec<u8> {
        format!(r#"{{"kind":"PodList","items":[{}]}}"#, pods.join(",")).into_bytes()
    }

    fn run(
        body: &[u8],
        uid: Option<&str>,
        disable: bool,
    ) -> Result<Option<Vec<String>>, PodsError> {
        search(body, &target(uid), &SearchOptions::new(disable))
    }

    #[test]
    fn container_id_host_parsing() {
        assert_eq!(container_id_host(&format!("docker://{CID}")), Some(CID));
        assert_eq!(container_id_host(&format!("cri-o://{CID}/x")), Some(CID));
        assert_eq!(container_id_host(CID), None);
        assert_eq!(container_id_host(&format!("1x://{CID}")), None);
        assert_eq!(container_id_host("docker://"), Some(""));
    }

    #[test]
    fn finds_container_and_builds_selectors() {
        let body = list(&[pod(
            UID,
            &format!(
                r#""containerStatuses":[{}]"#,
                status("c", &format!("containerd://{CID}"))
            ),
        )]);
        let got = run(&body, Some(UID), false).unwrap().unwrap();
        assert!(got.contains(&"container-name:c".to_string()), "{got:?}");
        assert!(got.contains(&format!("pod-uid:{UID}")), "{got:?}");
    }

    #[test]
    fn container_id_compare_is_exact() {
        let upper = CID.to_uppercase();
        let body = list(&[pod(
            UID,
            &format!(
                r#""containerStatuses":[{}]"#,
                status("c", &format!("docker://{upper}"))
            ),
        )]);
        assert_eq!(run(&body, None, false), Ok(None));
    }

    #[test]
    fn status_list_order_beats_json_key_order() {
        let lists = format!(
            r#""initContainerStatuses":[{}],"containerStatuses":[{}]"#,
            status("init", &format!("docker://{CID}")),
            status("main", &format!("docker://{CID}")),
        );
        let got = run(&list(&[pod(UID, &lists)]), None, false)
            .unwrap()
            .unwrap();
        assert!(got.contains(&"container-name:main".to_string()), "{got:?}");
    }

    #[test]
    fn ephemeral_containers_are_found_beyond_spire() {
        let lists = format!(
            r#""ephemeralContainerStatuses":[{}]"#,
            status("debugger", &format!("containerd://{CID}"))
        );
        let got = run(&list(&[pod(UID, &lists)]), Some(UID), false)
            .unwrap()
            .unwrap();
        assert!(
            got.contains(&"container-name:debugger".to_string()),
            "{got:?}"
        );
        // Ephemeral containers do not count as pod images.
        assert!(got.contains(&"pod-image-count:0".to_string()), "{got:?}");
    }

    #[test]
    fn pod_uid_restricts_the_search() {
        let lists = format!(
            r#""containerStatuses":[{}]"#,
            status("c", &format!("docker://{CID}"))
        );
        let body = list(&[pod(UID, &lists)]);
        assert_eq!(
            run(&body, Some("d488cae9-b2a0-11e7-9350-020968147796"), false),
            Ok(None)
        );
    }

    #[test]
    fn pods_without_uid_are_skipped() {
        let lists = format!(
            r#""containerStatuses":[{}]"#,
            status("c", &format!("docker://{CID}"))
        );
        let body = list(&[pod("", &lists)]);
        assert_eq!(run(&body, None, false), Ok(None));
    }

    #[test]
    fn two_pods_with_the_container() {
        let lists = format!(
            r#""containerStatuses":[{}]"#,
            status("c", &format!("docker://{CID}"))
        );
        let other = "72631393-dd79-49e5-8450-f68d930b93b4";
        let body = list(&[pod(UID, &lists), pod(other, &lists)]);
        let err = run(&body, None, false).unwrap_err();
        assert_eq!(err, PodsError::TwoPods);
        let status = Status::from(err);
        assert_eq!(status.code, Code::Internal);
        assert_eq!(status.message, "two pods found with same container Id");
        // With the pod UID only one pod is examined.
        assert!(run(&body, Some(other), false).unwrap().is_some());
    }

    #[test]
    fn disable_container_selectors() {
        let lists = format!(
            r#""containerStatuses":[{}]"#,
            status("c", &format!("docker://{CID}"))
        );
        let got = run(&list(&[pod(UID, &lists)]), Some(UID), true)
            .unwrap()
            .unwrap();
        assert!(got.iter().all(|s| !s.starts_with("container-")), "{got:?}");
        // Pod known by UID, container not (yet) in its status: pod selectors.
        let not_yet = list(&[pod(UID, r#""containerStatuses":[]"#)]);
        let got = run(&not_yet, Some(UID), true).unwrap().unwrap();
        assert!(got.contains(&format!("pod-uid:{UID}")), "{got:?}");
        // …but only when the pod is known by UID, and only with the option.
        assert_eq!(run(&not_yet, None, true), Ok(None));
        assert_eq!(run(&not_yet, Some(UID), false), Ok(None));
    }

    #[test]
    fn null_and_missing_lists() {
        assert_eq!(run(br#"{"items":null}"#, None, false), Ok(None));
        assert_eq!(run(br#"{"items":[]}"#, None, false), Ok(None));
        let body = list(&[pod(
            UID,
            r#""containerStatuses":null,"initContainerStatuses":[null]"#,
        )]);
        assert_eq!(run(&body, None, false), Ok(None));
        let body = br#"{"items":[{"metadata":null,"status":null},{}]}"#;
        assert_eq!(run(body, None, false), Ok(None));
    }

    #[test]
    fn bad_bodies_are_clear_errors() {
        for (body, needle) in [
            (&b"[]"[..], "expected an object at byte 0"),
            (b"{}", "no \"items\" field"),
            (b"{\"items\":{}}", "expected an array"),
            (b"{\"items\":[1]}", "expected an object"),
            (b"{\"items\":[]} x", "trailing characters"),
            (b"", "unexpected end of input at byte 0"),
            (
                b"{\"items\":[{\"metadata\":{\"uid\":5}}]}",
                "expected a string",
            ),
        ] {
            let err = run(body, None, false).unwrap_err();
            assert!(err.is_retryable());
            let status = Status::from(err);
            assert_eq!(status.code, Code::Unavailable);
            assert!(
                status
                    .message
                    .starts_with("unable to parse kubelet pod list: "),
                "{status}"
            );
            assert!(status.message.contains(needle), "{status} lacks {needle}");
        }
    }

    #[test]
    fn bad_candidate_pod_is_a_decode_error() {
        let lists = format!(
            r#""containerStatuses":[{}]"#,
            status("c", &format!("docker://{CID}"))
        );
        let body = format!(
            r#"{{"items":[{{"metadata":{{"uid":"{UID}","labels":"oops"}},"status":{{{lists}}}}}]}}"#
        );
        let err = run(body.as_bytes(), None, false).unwrap_err();
        assert!(!err.is_retryable());
        let status = Status::from(err);
        assert_eq!(status.code, Code::Unavailable);
        assert!(
            status
                .message
                .starts_with("unable to decode pod info from kubelet response: "),
            "{status}"
        );
    }

    #[test]
    fn last_state_container_ids_do_not_match() {
        let lists = format!(
            r#""containerStatuses":[{{"name":"c","lastState":{{"terminated":{{"containerID":"docker://{CID}"}}}},"containerID":"docker://other"}}]"#
        );
        assert_eq!(run(&list(&[pod(UID, &lists)]), None, false), Ok(None));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = run(&body, None, false);
            let _ = run(&body, Some(UID), true);
        }
    }
}
