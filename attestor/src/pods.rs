//! Kubelet `/pods` body + [`ContainerRef`] → the workload's pod and container status.
//!
//! [`PodIndex`] scans one pod-list version once; its [`PodIndex::find`] answers each
//! container. The live poll loop keeps one index per list version (`attest`), the replay
//! CLI and the fuzz targets build one per body, and [`find`] is both in one call. It follows
//! SPIRE's `k8s.go`/`podlistfetcher.go`:
//! * the body must be a JSON object with an `items` array (`null` means no pods); a body
//!   that is not is refused with SPIRE's code and words (see [`PodsError`]);
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
//! once per version reading only `metadata.uid` and the status entries' `containerID`, and
//! the index keeps where each pod and container ID is; only the matched pod is decoded in
//! full (`serde_json`); [`crate::selectors`] turns it into selector values. A refused list
//! is re-read with a port of SPIRE's parser (`fastjson`) only to word the error as SPIRE
//! does. Known difference: the scanner checks only strings and brackets in the subtrees it
//! skips, so a body whose syntax error lies there (a stray character inside a pod's
//! `spec`, say) is searched, where SPIRE refuses the whole list.
//!
//! Out of scope: fetching the list, retry timing (the poll loop), and selector formats
//! (`selectors`).

mod fastjson;
mod index;
mod scan;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::Config;
use crate::locator::ContainerRef;
use crate::status::{Code, Status};

pub use index::{BASE_BYTES, ENTRY_BYTES, MAX_ENTRIES, MAX_PODS, POD_BYTES, PodIndex};

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

    /// What a validated configuration asks for.
    pub fn from_config(config: &Config) -> Self {
        Self::new(config.disable_container_selectors())
    }
}

/// Why a pod list could not be searched.
///
/// The first four are bodies that are not a kubelet pod list. SPIRE v1.15.3 refuses those in
/// `podlistfetcher.go` (`podListFetcher.parsePodList`) as a failed fetch, retries them like
/// any kubelet error, and if the last attempt still fails `k8s.go`
/// (`Plugin.attestByPIDReference`) answers `Unavailable` with the error's text. Each message
/// here starts with SPIRE's text, word for word; our detail, if any, follows after "; ".
/// The fix is on the kubelet side (or `kubelet_port` names something that is not a
/// kubelet), so the poll loop keeps polling on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PodsError {
    /// Not JSON, or truncated: SPIRE's prefix, then fastjson's own error text (e.g.
    /// `cannot parse JSON: cannot parse array: unexpected end of array; unparsed tail: ""`).
    #[error("unable to parse kubelet response: {0}")]
    Unparsable(String),
    /// Valid JSON, but not an object (an array, a string…); the detail names what it is.
    #[error("invalid kubelet response: expected an object; got {0}")]
    NotAnObject(&'static str),
    /// An object without `items`, or whose `items` is neither an array nor `null`.
    #[error("invalid kubelet response: expected an items array; {0}")]
    NoItemsArray(String),
    /// A body SPIRE's parser accepts but ours refuses (it checks strings, numbers and nesting
    /// more strictly, and wants objects where pods and their statuses are). SPIRE's words for
    /// a list it cannot parse, then what ours found.
    #[error(
        "unable to parse kubelet response: {0} (expected a JSON object with an \"items\" array of pods)"
    )]
    Rejected(String),
    /// The matched pod does not decode as a pod.
    #[error("unable to decode pod info from kubelet response: {0}")]
    InvalidPod(String),
    /// The container ID appears in two pods: refuse rather than guess.
    #[error("two pods found with same container Id")]
    TwoPods,
    /// Beyond what one list is indexed for ([`MAX_PODS`], [`MAX_ENTRIES`]): a kubelet runs a
    /// few hundred pods at most, so this is not a node's pod list. Ours alone (SPIRE would
    /// parse it whole); retried like the others.
    #[error("pod list too large to search: {0}")]
    TooLarge(String),
}

impl PodsError {
    /// Whether a later pod list may succeed (the poll loop keeps polling on these).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PodsError::Unparsable(_)
                | PodsError::NotAnObject(_)
                | PodsError::NoItemsArray(_)
                | PodsError::Rejected(_)
                | PodsError::TooLarge(_)
        )
    }

    /// Names a refused body the way SPIRE would: it parses the whole body with fastjson
    /// first (so a syntax error anywhere wins over a wrong shape), then checks for an object,
    /// then for its first `items` being an array or `null`. `ours` is the scanner's reason,
    /// kept when SPIRE would have accepted the body.
    fn refused_list(body: &[u8], ours: String) -> PodsError {
        use fastjson::Kind;
        match fastjson::parse(body) {
            Err(text) => PodsError::Unparsable(text),
            Ok(top) if top.kind != Kind::Object => PodsError::NotAnObject(top.kind.described()),
            Ok(top) => match top.items {
                None => PodsError::NoItemsArray("the object has no \"items\" field".into()),
                Some(Kind::Array | Kind::Null) => PodsError::Rejected(ours),
                Some(kind) => PodsError::NoItemsArray(format!("\"items\" is {}", kind.described())),
            },
        }
    }
}

impl From<PodsError> for Status {
    fn from(e: PodsError) -> Self {
        let code = match e {
            PodsError::TwoPods => Code::Internal,
            _ => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

/// The workload's pod from one list: decoded in full, with the status entry of the
/// workload's container (none when found by pod UID alone, or with container selectors off).
#[derive(Debug)]
pub struct Found {
    pub pod: Pod,
    matched: Option<(StatusList, usize)>,
}

impl Found {
    /// A pod with the status entry (list, index) of the workload's container, if any: the
    /// runtime fast path builds one from the statuses the kubelet would publish.
    pub(crate) fn new(pod: Pod, matched: Option<(StatusList, usize)>) -> Found {
        Found { pod, matched }
    }

    /// The workload container's status entry, if the search matched one.
    pub fn workload(&self) -> Option<&ContainerStatus> {
        let (list, index) = self.matched?;
        self.pod.status.list(list).get(index)
    }
}

/// Searches one pod list for the target container: [`PodIndex::new`] then
/// [`PodIndex::find`] (copies `body`; a caller that searches a list more than once keeps
/// the index instead).
///
/// `Ok(Some(found))`: the one pod that holds it ([`crate::selectors`] makes its values).
/// `Ok(None)`: not in this list, poll again.
pub fn find(
    body: &[u8],
    target: &ContainerRef,
    opts: &SearchOptions,
) -> Result<Option<Found>, PodsError> {
    PodIndex::new(bytes::Bytes::copy_from_slice(body)).find(target, opts)
}

/// Which status list an entry came from, in search order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatusList {
    Containers,
    InitContainers,
    EphemeralContainers,
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
    /// The spec's containers: the runtime fast path needs their names and images (a
    /// container the runtime has not created yet is published with the spec's image).
    pub containers: Option<Vec<Container>>,
    pub init_containers: Option<Vec<Container>>,
    pub ephemeral_containers: Option<Vec<Container>>,
}

impl PodSpec {
    pub(crate) fn list(&self, which: StatusList) -> &[Container] {
        let list = match which {
            StatusList::Containers => &self.containers,
            StatusList::InitContainers => &self.init_containers,
            StatusList::EphemeralContainers => &self.ephemeral_containers,
        };
        list.as_deref().unwrap_or_default()
    }
}

/// A container of the pod spec, reduced to what the published status copies from it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Container {
    pub name: Option<String>,
    pub image: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
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

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: Option<String>,
    pub image: Option<String>,
    #[serde(rename = "imageID")]
    pub image_id: Option<String>,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    /// Only whether it is `terminated` matters (the kubelet keeps such a status when the
    /// runtime no longer has the container); the rest is skipped.
    pub state: Option<ContainerState>,
}

/// A status's `state`, reduced to which of its members is set.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ContainerState {
    pub terminated: Option<serde::de::IgnoredAny>,
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
        // The values, as callers see them (`selectors::search`).
        crate::selectors::search(body, &target(uid), &SearchOptions::new(disable))
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

    /// Asserts that `body` is refused as retryable, `Unavailable`, with exactly `message`.
    fn assert_refused(body: &[u8], message: &str) {
        let err = run(body, None, false).unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        let status = Status::from(err);
        assert_eq!(status.code, Code::Unavailable, "{status}");
        assert_eq!(
            status.message,
            message,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }

    // The five kinds of unusable pod list. The SPIRE part of each message (up to "; " where
    // our detail starts) is what SPIRE v1.15.3 `podListFetcher.parsePodList` returns for the
    // same body; the fastjson texts were produced by fastjson itself.

    #[test]
    fn body_that_is_not_json() {
        assert_refused(
            b"<!DOCTYPE html>",
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse number: unexpected char: "<"; unparsed tail: "<!DOCTYPE html>""#,
        );
        assert_refused(
            b"",
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse empty string; unparsed tail: """#,
        );
        assert_refused(
            br#"{"items":[]} x"#,
            r#"unable to parse kubelet response: unexpected tail: "x""#,
        );
    }

    #[test]
    fn truncated_body() {
        assert_refused(
            br#"{"kind":"PodList","items":[{"metadata":{"uid":""#,
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse object: cannot parse object value: cannot parse array: cannot parse array value: cannot parse object: cannot parse object value: cannot parse object: cannot parse object value: cannot parse string: missing closing '"'; unparsed tail: """#,
        );
        assert_refused(
            br#"{"items":[{"metadata":"#,
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse object: cannot parse object value: cannot parse array: cannot parse array value: cannot parse object: cannot parse object value: cannot parse empty string; unparsed tail: """#,
        );
        // A syntax error anywhere wins over a wrong shape, as SPIRE parses before it looks.
        assert_refused(
            b"[1,",
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse array: cannot parse array value: cannot parse empty string; unparsed tail: """#,
        );
        assert_refused(
            br#"{"items":5,"#,
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse object: cannot find opening '"" for object key; unparsed tail: """#,
        );
    }

    #[test]
    fn array_instead_of_an_object() {
        assert_refused(
            br#"[{"metadata":{"uid":"x"}}]"#,
            "invalid kubelet response: expected an object; got an array",
        );
        assert_refused(
            br#""items""#,
            "invalid kubelet response: expected an object; got a string",
        );
    }

    #[test]
    fn object_without_items() {
        assert_refused(
            br#"{"kind":"PodList","apiVersion":"v1","metadata":{}}"#,
            r#"invalid kubelet response: expected an items array; the object has no "items" field"#,
        );
    }

    #[test]
    fn items_that_are_not_an_array() {
        for (body, kind) in [
            (
                &br#"{"kind":"PodList","items":{"metadata":{}}}"#[..],
                "an object",
            ),
            (br#"{"items":"x"}"#, "a string"),
            (br#"{"items":5}"#, "a number"),
            (br#"{"items":false}"#, "a boolean"),
            // Only the first `items` counts.
            (br#"{"items":5,"items":[]}"#, "a number"),
        ] {
            assert_refused(
                body,
                &format!(r#"invalid kubelet response: expected an items array; "items" is {kind}"#),
            );
        }
        // `null` is no pods, and a later `items` is ignored.
        assert_eq!(run(br#"{"items":null,"items":5}"#, None, false), Ok(None));
    }

    #[test]
    fn bodies_only_our_parser_refuses() {
        // SPIRE's parser accepts these; ours wants the pods and their UIDs to be what a
        // kubelet sends. SPIRE's prefix for an unparsable list, then our reason.
        for (body, detail) in [
            (&b"{\"items\":[1]}"[..], "expected an object at byte 10"),
            (
                b"{\"items\":[{\"metadata\":{\"uid\":5}}]}",
                "expected a string at byte 29",
            ),
            (b"{\"items\":[\"\x01\"]}", "expected an object at byte 10"),
        ] {
            assert_refused(
                body,
                &format!(
                    "unable to parse kubelet response: {detail} (expected a JSON object with an \"items\" array of pods)"
                ),
            );
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
