//! The JSON the API server sends (metadata, lists, watch events, discovery) and the URL
//! paths it serves. Pure: no I/O, so every decoding rule is unit-tested here.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::{ApiError, StatusBody};
use super::{ObjectMeta, OwnerReference, ResourceType};

/// `Accept` for one object's metadata (controller-runtime's metadata client).
pub(super) const ACCEPT_METADATA: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
/// `Accept` for a list of metadata.
pub(super) const ACCEPT_METADATA_LIST: &str =
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
pub(super) const ACCEPT_JSON: &str = "application/json";

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct WireMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: BTreeMap<String, String>,
    pub owner_references: Vec<WireOwner>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct WireOwner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub controller: Option<bool>,
}

impl From<WireMeta> for ObjectMeta {
    fn from(m: WireMeta) -> ObjectMeta {
        ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            labels: m.labels,
            owner_references: m
                .owner_references
                .into_iter()
                .map(|o| OwnerReference {
                    api_version: o.api_version,
                    kind: o.kind,
                    name: o.name,
                    uid: o.uid,
                    controller: o.controller,
                })
                .collect(),
        }
    }
}

/// Any object (full or `PartialObjectMetadata`): only its metadata is kept.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct WireObject {
    pub metadata: WireMeta,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ListMeta {
    pub resource_version: String,
    #[serde(rename = "continue")]
    pub continue_token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct WireList {
    pub metadata: ListMeta,
    pub items: Vec<WireObject>,
}

/// One line of a watch stream, decoded.
#[derive(Debug)]
pub(super) enum WatchEvent {
    Added(WireMeta),
    Modified(WireMeta),
    Deleted(WireMeta),
    /// Only a resource version: the server has sent everything up to it.
    Bookmark(String),
    /// A `Status`; 410 (`Expired`/`Gone`) means: list again.
    Error(ApiError),
}

#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// Decodes one watch line (`{"type":…,"object":{…}}`).
pub(super) fn decode_watch_line(line: &[u8]) -> Result<WatchEvent, String> {
    let event: WireEvent = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let meta = |v: serde_json::Value| {
        serde_json::from_value::<WireObject>(v)
            .map(|o| o.metadata)
            .map_err(|e| e.to_string())
    };
    Ok(match event.kind.as_str() {
        "ADDED" => WatchEvent::Added(meta(event.object)?),
        "MODIFIED" => WatchEvent::Modified(meta(event.object)?),
        "DELETED" => WatchEvent::Deleted(meta(event.object)?),
        "BOOKMARK" => WatchEvent::Bookmark(meta(event.object)?.resource_version),
        "ERROR" => {
            let status: StatusBody =
                serde_json::from_value(event.object).map_err(|e| e.to_string())?;
            WatchEvent::Error(ApiError::Status {
                code: status.code,
                reason: status.reason,
                message: status.message,
            })
        }
        other => return Err(format!("unknown watch event type {other:?}")),
    })
}

/// Splits a byte stream into lines, each at most `max` bytes (without its `\n`).
pub(super) struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends `data`; returns the complete non-blank lines, or an error once the line
    /// being collected is longer than the bound (checked before it is complete, so a
    /// stream with no newline cannot grow the buffer without end).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, usize> {
        let mut lines = Vec::new();
        let mut rest = data;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            if self.buf.len() + at > self.max {
                return Err(self.max);
            }
            self.buf.extend_from_slice(&rest[..at]);
            let line = std::mem::take(&mut self.buf);
            if !line.iter().all(u8::is_ascii_whitespace) {
                lines.push(line);
            }
            rest = &rest[at + 1..];
        }
        if self.buf.len() + rest.len() > self.max {
            return Err(self.max);
        }
        self.buf.extend_from_slice(rest);
        Ok(lines)
    }

    /// What is left when the stream ends (the server may omit the last newline).
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.buf.iter().all(u8::is_ascii_whitespace)).then_some(self.buf)
    }
}

/// `GET /api/v1` / `GET /apis/{g}/{v}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ResourceList {
    pub group_version: String,
    pub resources: Vec<WireResource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct WireResource {
    pub name: String,
    pub kind: String,
    pub namespaced: bool,
}

/// `GET /apis`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct GroupList {
    pub groups: Vec<WireGroup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct WireGroup {
    pub name: String,
    pub versions: Vec<WireVersion>,
    pub preferred_version: Option<WireVersion>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct WireVersion {
    pub version: String,
}

impl WireGroup {
    /// Versions in discovery order: the preferred one, then the others as listed.
    pub fn ordered_versions(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .preferred_version
            .iter()
            .map(|v| v.version.clone())
            .collect();
        for v in &self.versions {
            if !out.contains(&v.version) {
                out.push(v.version.clone());
            }
        }
        out
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Refuses what cannot be a namespace or object name in a URL path (`..`, `/`, empty).
pub(super) fn check_name(what: &'static str, value: &str) -> Result<(), ApiError> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value == "." || value == ".." {
        "may not be '.' or '..'"
    } else if value.contains('/') || value.contains('%') {
        "may not contain '/' or '%'"
    } else {
        return Ok(());
    };
    Err(ApiError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    })
}

/// `/api/v1` or `/apis/{group}/{version}`.
fn group_version_path(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        format!("/api/{}", rt.version)
    } else {
        format!("/apis/{}/{}", rt.group, rt.version)
    }
}

/// The cluster-wide collection: `/api/v1/pods`, `/apis/apps/v1/replicasets`.
pub(super) fn collection_path(rt: &ResourceType) -> String {
    format!("{}/{}", group_version_path(rt), rt.plural)
}

/// One object: namespaced `/…/namespaces/{ns}/{plural}/{name}`, else `/…/{plural}/{name}`.
pub(super) fn object_path(rt: &ResourceType, namespace: &str, name: &str) -> String {
    if rt.namespaced {
        format!(
            "{}/namespaces/{}/{}/{}",
            group_version_path(rt),
            escape(namespace),
            rt.plural,
            escape(name)
        )
    } else {
        format!("{}/{}/{}", group_version_path(rt), rt.plural, escape(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(group: &str, plural: &str, namespaced: bool) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            kind: String::new(),
            namespaced,
        }
    }

    #[test]
    fn watch_lines_decode_to_events() {
        let added = br#"{"type":"ADDED","object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"web","namespace":"default","uid":"u1","resourceVersion":"7","labels":{"app":"web"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-1","uid":"u0","controller":true}]}}}"#;
        let WatchEvent::Added(m) = decode_watch_line(added).unwrap() else {
            panic!("not ADDED")
        };
        assert_eq!(m.resource_version, "7");
        let meta = ObjectMeta::from(m);
        assert_eq!(meta.labels["app"], "web");
        assert_eq!(meta.owner_references[0].kind, "ReplicaSet");
        assert_eq!(meta.owner_references[0].controller, Some(true));

        let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"PartialObjectMetadata","metadata":{"resourceVersion":"42"}}}"#;
        assert!(
            matches!(decode_watch_line(bookmark).unwrap(), WatchEvent::Bookmark(rv) if rv == "42")
        );

        let gone = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}}"#;
        let WatchEvent::Error(e) = decode_watch_line(gone).unwrap() else {
            panic!("not ERROR")
        };
        assert_eq!(e.http_status(), Some(410));
        assert_eq!(e.to_string(), "too old resource version: 1 (5)");

        assert!(decode_watch_line(br#"{"type":"SURPRISE","object":{}}"#).is_err());
        assert!(decode_watch_line(b"not json").is_err());
    }

    #[test]
    fn lines_are_split_across_chunks_and_bounded() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.push(b"ab").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            s.push(b"c\n\nde\nf").unwrap(),
            vec![b"abc".to_vec(), b"de".to_vec()]
        );
        assert_eq!(s.push(b"12345\n").unwrap(), vec![b"f12345".to_vec()]);
        assert_eq!(s.finish(), None);

        let mut s = LineSplitter::new(8);
        assert_eq!(
            s.push(b"12345678\n").unwrap().len(),
            1,
            "exactly the bound is fine"
        );
        assert_eq!(
            s.push(b"123456789"),
            Err(8),
            "refused before the newline arrives"
        );
        let mut s = LineSplitter::new(8);
        s.push(b"tail").unwrap();
        assert_eq!(s.finish(), Some(b"tail".to_vec()));
    }

    #[test]
    fn paths_follow_the_api_layout() {
        assert_eq!(
            object_path(&rt("", "namespaces", false), "", "kube-system"),
            "/api/v1/namespaces/kube-system"
        );
        assert_eq!(
            object_path(&rt("", "pods", true), "default", "web-1"),
            "/api/v1/namespaces/default/pods/web-1"
        );
        assert_eq!(
            object_path(&rt("apps", "replicasets", true), "ns", "r"),
            "/apis/apps/v1/namespaces/ns/replicasets/r"
        );
        assert_eq!(
            object_path(
                &rt("rbac.authorization.k8s.io", "clusterroles", false),
                "",
                "system:x"
            ),
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Ax"
        );
        assert_eq!(collection_path(&rt("", "pods", true)), "/api/v1/pods");
        assert_eq!(escape("a=b/c+d"), "a%3Db%2Fc%2Bd");
        assert!(check_name("namespace", "..").is_err());
        assert!(check_name("name", "a/b").is_err());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", "web-1.x").is_ok());
    }

    #[test]
    fn preferred_version_comes_first() {
        let g: GroupList = serde_json::from_str(
            r#"{"kind":"APIGroupList","groups":[{"name":"autoscaling","versions":[{"groupVersion":"autoscaling/v1","version":"v1"},{"groupVersion":"autoscaling/v2","version":"v2"}],"preferredVersion":{"groupVersion":"autoscaling/v2","version":"v2"}}]}"#,
        )
        .unwrap();
        assert_eq!(g.groups[0].ordered_versions(), vec!["v2", "v1"]);
    }
}
