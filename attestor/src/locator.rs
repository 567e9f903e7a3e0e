//! cgroup membership → (pod UID, container ID), with SPIRE's *new* container locator semantics
//! (`pkg/common/containerinfo/extract.go`, the default since SPIRE v1.11.0).
//!
//! Input is either the text of a `/proc/<pid>/cgroup` file (cgroup v2 `0::/path`, or the
//! multi-line v1 `N:controllers:path` form, used for replay) or one cgroup v2 path as the
//! tracker reports it for a live process ([`locate_path`]).
//!
//! Per path, the segments are walked **backwards** to the first one holding a 64-hex-digit
//! word (the container ID); the walk then continues backwards — first through the part of
//! that same segment left of the ID (`…slice:cri-containerd:<id>`), then through earlier
//! segments — for `pod<uid>` (dashes or systemd's underscores; underscores become dashes).
//! So every layout in the study's table works without knowing the cgroup driver or runtime:
//! cgroupfs and systemd, docker, containerd (`cri-containerd-<id>.scope` and the colon form),
//! CRI-O (`crio-<id>.scope`, sometimes without a pod UID), kind nesting, cgroup-namespace
//! relative paths (`/../../pod<uid>/<id>`) and sub-cgroups below the container.
//!
//! Deliberate differences from SPIRE (the project's rule wins, see the tests):
//! * a static pod's kubelet UID, `pod<32 hex digits>` without dashes, is taken as the pod UID
//!   (SPIRE only finds the container ID and then scans every pod);
//! * an entry with a container ID but no pod UID followed by an entry without any container
//!   ID (`11:hugetlb:/`, CRI-O conmon, `0::/system.slice/crio.service`) is not an error:
//!   entries without a container ID carry no information and are skipped (SPIRE reports
//!   `multiple container IDs found ("<id>", "")`);
//! * blank lines are skipped instead of being rejected as malformed entries.
//!
//! * beyond SPIRE, [`check_not_nested`] refuses a path naming two different pods, or a
//!   container cgroup below another container's one under the pod: a workload allowed to
//!   create cgroups below its own (a delegated or writable cgroupfs) could otherwise create
//!   `…/pod<uid-A>/<id-A>/pod<uid-B>/<id-B>`, move itself there and be located as a
//!   container of pod B (SECURITY.md, "Forged cgroup paths").
//!
//! `/proc/<pid>/mountinfo` is never read: a workload can bind-mount another pod's cgroup and
//! forge it (SPIRE PR #7288 removed that source for the same reason).
//!
//! Out of scope here: reading files, finding the process's cgroup (the tracker's job) and the
//! legacy regex locator (`use_new_container_locator = false` is refused by `config`).

use crate::goquote::go_quote;
use crate::status::{Code, Status};

/// What a cgroup says about its container: the container ID and, when the path carries it,
/// the pod UID (dashed form, as the kubelet reports `metadata.uid`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// `None` when the path has no pod UID (CRI-O without UID, cgroup namespaces that hide the
    /// pod level): the pod list must then be searched in full.
    pub pod_uid: Option<String>,
    /// 64 hex digits, exactly as in the cgroup path (case kept: the kubelet comparison is exact).
    pub container_id: String,
}

/// Why a cgroup file could not be turned into a [`ContainerRef`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocatorError {
    /// A line without the `hierarchy:controllers:path` shape.
    #[error(
        "invalid cgroup entry, contains {fields} colon separated fields but expected at least 3: {} (line {line_no}; expected `hierarchy-ID:controller-list:cgroup-path` as in /proc/<pid>/cgroup)",
        go_quote(.line)
    )]
    InvalidEntry {
        line_no: usize,
        fields: usize,
        line: String,
    },
    /// Two entries name different pods: the file is not one process's cgroup membership.
    #[error("multiple pod UIDs found ({}, {})", go_quote(.0), go_quote(.1))]
    MultiplePodUids(String, String),
    /// Two entries name different containers.
    #[error("multiple container IDs found ({}, {})", go_quote(.0), go_quote(.1))]
    MultipleContainerIds(String, String),
    /// One path names two pods, or a container below another container of its pod: a
    /// cgroup tree made up below a workload's own cgroup, never one the kubelet creates.
    #[error(
        "cgroup path {} is nested below another pod or container cgroup ({reason}); refusing to attest a made-up cgroup",
        go_quote(.path)
    )]
    Nested { path: String, reason: String },
}

impl From<LocatorError> for Status {
    fn from(e: LocatorError) -> Self {
        let code = match e {
            // SPIRE fails reading the cgroups before any attestation logic runs.
            LocatorError::InvalidEntry { .. } => Code::Internal,
            LocatorError::MultiplePodUids(..)
            | LocatorError::MultipleContainerIds(..)
            | LocatorError::Nested { .. } => Code::FailedPrecondition,
        };
        Status::new(code, e.to_string())
    }
}

/// Locates the container of a process from the text of its `/proc/<pid>/cgroup` file.
///
/// `Ok(None)`: no entry names a container, i.e. the process is not in a pod (SPIRE then
/// succeeds with zero selectors and never calls the kubelet).
pub fn locate_cgroup_file(text: &str) -> Result<Option<ContainerRef>, LocatorError> {
    let mut held: Option<ContainerRef> = None;
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(_hierarchy), Some(_controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(LocatorError::InvalidEntry {
                line_no: idx + 1,
                fields: line.split(':').count().min(2),
                line: line.to_string(),
            });
        };
        check_not_nested(path)?;
        let Some(entry) = locate_path(path) else {
            // Beyond SPIRE: an entry without a container ID tells nothing (see module doc).
            continue;
        };
        held = Some(match held {
            None => entry,
            Some(prev) => combine(prev, entry)?,
        });
    }
    Ok(held)
}

/// Merges one more entry into what earlier entries said (SPIRE's rules).
fn combine(prev: ContainerRef, entry: ContainerRef) -> Result<ContainerRef, LocatorError> {
    match (&prev.pod_uid, &entry.pod_uid) {
        // An entry that knows the pod replaces one that does not.
        (None, Some(_)) => Ok(entry),
        // Once the pod is known, pod-less entries (e.g. kind's host container in
        // `0::/docker/<host-id>/system.slice/containerd.service`) are ignored.
        (Some(_), None) => Ok(prev),
        (Some(a), Some(b)) if a != b => Err(LocatorError::MultiplePodUids(a.clone(), b.clone())),
        _ if prev.container_id != entry.container_id => Err(LocatorError::MultipleContainerIds(
            prev.container_id,
            entry.container_id,
        )),
        _ => Ok(prev),
    }
}

/// Locates the container in one cgroup path (`/kubepods/…/pod<uid>/<id>`, or relative to a
/// cgroup namespace, `/../<id>`). `None` if the path names no container.
pub fn locate_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').collect();
    let (idx, start, end) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, seg)| find_container_id(seg).map(|(s, e)| (i, s, e)))?;
    let segment = segments[idx];
    let container_id = segment[start..end].to_string();
    // The pod UID sits left of the container ID: first in the same segment, then earlier ones.
    let pod_uid = std::iter::once(&segment[..start])
        .chain(segments[..idx].iter().rev().copied())
        .find_map(find_pod_uid);
    Some(ContainerRef {
        pod_uid,
        container_id,
    })
}

/// Refuses a cgroup path that no kubelet creates but a workload able to create cgroups below
/// its own could: two different pod UIDs, or more than one container ID from the (last) pod
/// segment on. Container IDs *before* the pod (kind's node container, `/docker/<id>/kubepods/…`)
/// and sub-cgroups without an ID below the container stay allowed.
pub fn check_not_nested(path: &str) -> Result<(), LocatorError> {
    let nested = |reason: String| {
        Err(LocatorError::Nested {
            path: path.to_string(),
            reason,
        })
    };
    let segments: Vec<&str> = path.split('/').collect();
    let mut pod: Option<(usize, String)> = None;
    for (i, seg) in segments.iter().enumerate() {
        if let Some(uid) = find_pod_uid(seg) {
            if let Some((_, first)) = &pod
                && *first != uid
            {
                return nested(format!("pods {first} and {uid}"));
            }
            pod = Some((i, uid));
        }
    }
    let Some((pod_idx, _)) = pod else {
        return Ok(());
    };
    let ids: Vec<&str> = segments[pod_idx..]
        .iter()
        .filter_map(|seg| find_container_id(seg).map(|(s, e)| &seg[s..e]))
        .collect();
    if let [first, .., last] = ids.as_slice() {
        return nested(format!("container {last} below container {first}"));
    }
    Ok(())
}

/// Go regexp `\w`: ASCII letters, digits and underscore.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Leftmost match of `\b[[:xdigit:]]{64}\b`, as byte range. Because hex digits are word
/// characters, a match is exactly a maximal run of word characters that is 64 hex digits long
/// (so a 65-digit run never matches, nor does `x<64 hex>`).
fn find_container_id(segment: &str) -> Option<(usize, usize)> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !is_word(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_word(bytes[i]) {
            i += 1;
        }
        if i - start == 64 && bytes[start..i].iter().all(u8::is_ascii_hexdigit) {
            return Some((start, i));
        }
    }
    None
}

/// Leftmost match of SPIRE's `\bpod(8-4-4-4-12 hex, separators '-' or '_')\b`, with
/// underscores turned into dashes; beyond SPIRE also `\bpod(32 hex)\b` (static pods, whose
/// kubelet UID is a hash without dashes).
fn find_pod_uid(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(off) = text[from..].find("pod") {
        let at = from + off;
        from = at + 1;
        if at > 0 && is_word(bytes[at - 1]) {
            continue;
        }
        let rest = &bytes[at + 3..];
        for len in [36, 32] {
            let Some(candidate) = rest.get(..len) else {
                continue;
            };
            let boundary_after = rest.get(len).is_none_or(|&b| !is_word(b));
            if boundary_after && uid_shape(candidate) {
                // The candidate is ASCII (hex digits and separators), so this cannot fail.
                let uid = std::str::from_utf8(candidate).ok()?;
                return Some(uid.replace('_', "-"));
            }
        }
    }
    None
}

fn uid_shape(candidate: &[u8]) -> bool {
    match candidate.len() {
        32 => candidate.iter().all(u8::is_ascii_hexdigit),
        36 => candidate.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-' || b == b'_',
            _ => b.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_: &str = "2c48913c_b29f_11e7_9350_020968147796";

    fn both(uid: &str, cid: &str) -> Option<ContainerRef> {
        Some(ContainerRef {
            pod_uid: Some(uid.to_string()),
            container_id: cid.to_string(),
        })
    }

    fn cid_only(cid: &str) -> Option<ContainerRef> {
        Some(ContainerRef {
            pod_uid: None,
            container_id: cid.to_string(),
        })
    }

    #[test]
    fn cgroupfs_docker_burstable() {
        let p = format!("/kubepods/burstable/pod{UID}/{CID}");
        assert_eq!(locate_path(&p), both(UID, CID));
    }

    #[test]
    fn guaranteed_qos() {
        assert_eq!(
            locate_path(&format!("/kubepods/pod{UID}/{CID}")),
            both(UID, CID)
        );
    }

    #[test]
    fn systemd_docker() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope"
        );
        assert_eq!(locate_path(&p), both(UID, CID));
    }

    #[test]
    fn systemd_containerd() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(locate_path(&p), both(UID, CID));
    }

    #[test]
    fn containerd_colon_form() {
        let p = format!("/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}");
        assert_eq!(locate_path(&p), both(UID, CID));
    }

    #[test]
    fn systemd_crio() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope"
        );
        assert_eq!(locate_path(&p), both(UID, CID));
    }

    #[test]
    fn crio_without_pod_uid() {
        assert_eq!(locate_path(&format!("/../crio-{CID}.scope")), cid_only(CID));
    }

    #[test]
    fn kind_nesting_takes_the_innermost_container() {
        let host = "93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26";
        let p = format!("/docker/{host}/kubepods/besteffort/pod{UID}/{CID}");
        assert_eq!(locate_path(&p), both(UID, CID));
    }

    #[test]
    fn kind_systemd() {
        let p = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(locate_path(&p), both(UID, CID));
    }

    #[test]
    fn cgroup_namespace_relative_paths() {
        assert_eq!(
            locate_path(&format!("/../../../burstable/pod{UID}/{CID}")),
            both(UID, CID)
        );
        assert_eq!(locate_path(&format!("/../{CID}")), cid_only(CID));
        assert_eq!(locate_path("/"), None);
        assert_eq!(locate_path(""), None);
    }

    #[test]
    fn sub_cgroup_below_the_container() {
        let p = format!("/kubepods/pod{UID}/{CID}/sub/deeper");
        assert_eq!(locate_path(&p), both(UID, CID));
    }

    #[test]
    fn static_pod_uid_is_recognised_beyond_spire() {
        // SPIRE's new locator needs dashes and would return the container ID only.
        let uid = "2732ca68f6358eba7703fb6f82a25c94";
        assert_eq!(
            locate_path(&format!("/kubepods/pod{uid}/{CID}")),
            both(uid, CID)
        );
        let systemd = format!("/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{CID}.scope");
        assert_eq!(locate_path(&systemd), both(uid, CID));
    }

    #[test]
    fn hex_runs_of_other_lengths_are_not_container_ids() {
        let c65 = format!("{CID}a");
        assert_eq!(locate_path(&format!("/kubepods/pod{UID}/{c65}")), None);
        assert_eq!(locate_path(&format!("/kubepods/pod{UID}/x{CID}")), None);
        assert_eq!(
            locate_path(&format!("/kubepods/pod{UID}/{}", &CID[1..])),
            None
        );
    }

    #[test]
    fn pod_uid_needs_word_boundaries() {
        // `xpod…` and a UID followed by a word character are not pod UIDs.
        assert_eq!(
            locate_path(&format!("/kubepods/xpod{UID}/{CID}")),
            cid_only(CID)
        );
        assert_eq!(
            locate_path(&format!("/kubepods/pod{UID}a/{CID}")),
            cid_only(CID)
        );
        // Only the path left of the container ID counts.
        assert_eq!(
            locate_path(&format!("/kubepods/{CID}/pod{UID}")),
            cid_only(CID)
        );
    }

    #[test]
    fn container_id_case_is_kept() {
        let upper = CID.to_uppercase();
        assert_eq!(
            locate_path(&format!("/kubepods/pod{UID}/{upper}")),
            both(UID, &upper)
        );
    }

    #[test]
    fn v1_file_with_identical_entries() {
        let text =
            format!("2:blkio:/kubepods/pod{UID}/{CID}\n1:name=systemd:/kubepods/pod{UID}/{CID}\n");
        assert_eq!(locate_cgroup_file(&text), Ok(both(UID, CID)));
    }

    #[test]
    fn not_in_pod() {
        let text = "11:hugetlb:/\n10:devices:/user.slice\n0::/user.slice/user-1000.slice/session-2.scope\n";
        assert_eq!(locate_cgroup_file(text), Ok(None));
        assert_eq!(locate_cgroup_file(""), Ok(None));
    }

    #[test]
    fn entry_with_pod_uid_replaces_one_without() {
        let text = format!("0::/../{CID}\n1:cpu:/kubepods/pod{UID}/{CID}\n");
        assert_eq!(locate_cgroup_file(&text), Ok(both(UID, CID)));
    }

    #[test]
    fn pod_less_entries_are_ignored_once_the_pod_is_known() {
        let other = "93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26";
        let text = format!(
            "1:cpu:/docker/{other}/kubepods/pod{UID}/{CID}\n0::/docker/{other}/system.slice/containerd.service\n"
        );
        assert_eq!(locate_cgroup_file(&text), Ok(both(UID, CID)));
    }

    #[test]
    fn conflicting_pod_uids() {
        let other = "d488cae9-b2a0-11e7-9350-020968147796";
        let text = format!("2:cpu:/kubepods/pod{UID}/{CID}\n1:mem:/kubepods/pod{other}/{CID}\n");
        let err = locate_cgroup_file(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("multiple pod UIDs found (\"{UID}\", \"{other}\")")
        );
        assert_eq!(Status::from(err).code, Code::FailedPrecondition);
    }

    #[test]
    fn conflicting_container_ids() {
        let other = "34a2062fd26c805aa8cf814cdfe479322b791f80afb9ea4db02d50375df14b41";
        let text = format!("2:cpu:/kubepods/pod{UID}/{CID}\n1:mem:/kubepods/pod{UID}/{other}\n");
        let err = locate_cgroup_file(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("multiple container IDs found (\"{CID}\", \"{other}\")")
        );
        assert_eq!(Status::from(err).code, Code::FailedPrecondition);
        // Without pod UIDs too.
        let text = format!("0::/../{CID}\n1:mem:/../crio-{other}.scope\n");
        assert_eq!(
            locate_cgroup_file(&text),
            Err(LocatorError::MultipleContainerIds(CID.into(), other.into()))
        );
    }

    #[test]
    fn container_without_pod_then_root_entry_is_not_an_error_beyond_spire() {
        // CRI-O conmon on cgroup v1 (SPIRE issue #4088): SPIRE fails with
        // `multiple container IDs found ("<id>", "")`; the root entry says nothing, so we
        // keep the container ID.
        let text = format!("12:pids:/system.slice/crio-conmon-{CID}.scope\n11:hugetlb:/\n");
        assert_eq!(locate_cgroup_file(&text), Ok(cid_only(CID)));
    }

    #[test]
    fn malformed_lines_are_rejected() {
        let err = locate_cgroup_file("1:cpu:/\ngarbage\n").unwrap_err();
        assert_eq!(
            err,
            LocatorError::InvalidEntry {
                line_no: 2,
                fields: 1,
                line: "garbage".into()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "invalid cgroup entry, contains 1 colon separated fields but expected at least 3: \"garbage\" (line 2;"
            ),
            "{msg}"
        );
        assert_eq!(Status::from(err).code, Code::Internal);
        let err = locate_cgroup_file("1:cpu").unwrap_err();
        assert!(
            err.to_string()
                .contains("contains 2 colon separated fields"),
            "{err}"
        );
    }

    #[test]
    fn paths_may_contain_colons() {
        let text = format!("0::/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}\n");
        assert_eq!(locate_cgroup_file(&text), Ok(both(UID, CID)));
    }

    #[test]
    fn nested_pod_or_container_paths_are_refused() {
        let a = "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        let b = "11111111-2222-4333-8444-555555555555";
        let (ia, ib) = ("a".repeat(64), "b".repeat(64));
        let ua = a.replace('-', "_");
        let ub = b.replace('-', "_");
        for (path, reason) in [
            (
                format!("/kubepods/burstable/pod{a}/{ia}/kubepods/burstable/pod{b}/{ib}"),
                format!("pods {a} and {b}"),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-pod{ua}.slice/cri-containerd-{ia}.scope/kubepods-pod{ub}.slice/cri-containerd-{ib}.scope"
                ),
                format!("pods {a} and {b}"),
            ),
            (
                format!("/kubepods/burstable/pod{a}/{ia}/{ib}"),
                format!("container {ib} below container {ia}"),
            ),
        ] {
            let e = check_not_nested(&path).unwrap_err();
            assert_eq!(
                e,
                LocatorError::Nested {
                    path: path.clone(),
                    reason
                }
            );
            assert_eq!(Status::from(e).code, Code::FailedPrecondition);
            let file = format!("0::{path}\n");
            assert!(matches!(
                locate_cgroup_file(&file),
                Err(LocatorError::Nested { .. })
            ));
        }
        // What kubelets and runtimes do create stays allowed.
        for path in [
            format!("/kubepods/burstable/pod{a}/{ia}"),
            format!("/kubepods/burstable/pod{a}/{ia}/init.scope"),
            format!("/docker/{ib}/kubepods/burstable/pod{a}/{ia}"),
            format!("/kubepods.slice/kubepods-pod{ua}.slice/cri-containerd-{ia}.scope"),
            format!("/kubepods/pod{a}/pod{a}/{ia}"),
            format!("/machine.slice/crio-{ia}.scope"),
            "/".to_string(),
        ] {
            assert_eq!(check_not_nested(&path), Ok(()), "{path}");
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn check(input: &str, found: &ContainerRef) {
            assert!(
                input.contains(&found.container_id),
                "{found:?} not in {input:?}"
            );
            assert_eq!(found.container_id.len(), 64);
            if let Some(uid) = &found.pod_uid {
                // UIDs are reported with dashes; systemd paths spell them with underscores.
                assert!(
                    input.replace('_', "-").contains(uid.as_str()),
                    "{uid} not in {input:?}"
                );
            }
        }

        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("kubepods".to_string()),
                Just("..".to_string()),
                Just("pod2c48913c-b29f-11e7-9350-020968147796".to_string()),
                Just("kubepods-pod2c48913c_b29f_11e7_9350_020968147796.slice".to_string()),
                Just("pod2732ca68f6358eba7703fb6f82a25c94".to_string()),
                "[0-9a-f]{64}",
                "[0-9a-fA-F]{60,68}",
                "(cri-containerd-|crio-|docker-)?[0-9a-f]{64}(\\.scope)?",
                "[a-z0-9_:.-]{0,12}",
                ".{0,20}",
            ]
        }

        proptest! {
            #[test]
            fn never_panics_on_arbitrary_text(text in ".{0,400}") {
                if let Ok(Some(found)) = locate_cgroup_file(&text) {
                    check(&text, &found);
                }
                if let Some(found) = locate_path(&text) {
                    check(&text, &found);
                }
            }

            #[test]
            fn results_come_from_the_input(segs in proptest::collection::vec(segment(), 0..8)) {
                let path = format!("/{}", segs.join("/"));
                if let Some(found) = locate_path(&path) {
                    check(&path, &found);
                }
                let file = format!("1:cpu:{path}\n0::{path}\n");
                if let Ok(Some(found)) = locate_cgroup_file(&file) {
                    check(&file, &found);
                }
            }
        }
    }
}
