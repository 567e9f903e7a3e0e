//! Wire helpers: `Status` bodies as the API server writes them, query and `Accept` parsing,
//! and the small encodings the simulator needs (base64 for kubeconfig data and continue
//! tokens).

use serde_json::{Map, Value, json};

/// A `Status` object (`kind: Status`, `status: Failure`) as the API server sends with errors.
pub fn status_json(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), json!("Status"));
    m.insert("apiVersion".into(), json!("v1"));
    m.insert("metadata".into(), json!({}));
    m.insert("status".into(), json!("Failure"));
    m.insert("message".into(), json!(message));
    m.insert("reason".into(), json!(reason));
    if let Some(d) = details {
        m.insert("details".into(), d);
    }
    m.insert("code".into(), json!(code));
    Value::Object(m)
}

/// `401` body: `{"kind":"Status",...,"message":"Unauthorized","reason":"Unauthorized","code":401}`.
pub fn unauthorized() -> Value {
    status_json(401, "Unauthorized", "Unauthorized", None)
}

/// `404` for a path nothing serves.
pub fn not_found_path() -> Value {
    status_json(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

/// `plural` or `plural.group` (the API server's `GroupResource.String()`).
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

/// Go's `%q` for the names that occur here (JSON string escaping is the same for them).
pub fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn details(group: &str, plural: &str, name: Option<&str>) -> Value {
    let mut d = Map::new();
    if let Some(n) = name {
        d.insert("name".into(), json!(n));
    }
    if !group.is_empty() {
        d.insert("group".into(), json!(group));
    }
    d.insert("kind".into(), json!(plural));
    Value::Object(d)
}

/// `404` for a missing object: `pods "x" not found`.
pub fn not_found(group: &str, plural: &str, name: &str) -> Value {
    status_json(
        404,
        "NotFound",
        &format!("{} {} not found", qualified(group, plural), go_quote(name)),
        Some(details(group, plural, Some(name))),
    )
}

/// `403` as RBAC denies a resource request: `pods "x" is forbidden: User "u" cannot get
/// resource "pods" in API group "" in the namespace "default"` (or `at the cluster scope`;
/// no name for list/watch/create).
pub fn forbidden(
    user: &str,
    verb: &str,
    group: &str,
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Value {
    let q = qualified(group, plural);
    let subject = match name {
        Some(n) if !n.is_empty() => format!("{q} {}", go_quote(n)),
        _ => q,
    };
    let scope = match namespace {
        Some(ns) if !ns.is_empty() => format!("in the namespace {}", go_quote(ns)),
        _ => "at the cluster scope".to_owned(),
    };
    status_json(
        403,
        "Forbidden",
        &format!(
            "{subject} is forbidden: User {} cannot {verb} resource {} in API group {} {scope}",
            go_quote(user),
            go_quote(plural),
            go_quote(group)
        ),
        Some(details(group, plural, name.filter(|n| !n.is_empty()))),
    )
}

/// `403` for a non-resource URL: `forbidden: User "u" cannot get path "/x"`.
pub fn forbidden_path(user: &str, verb: &str, path: &str) -> Value {
    status_json(
        403,
        "Forbidden",
        &format!(
            "forbidden: User {} cannot {verb} path {}",
            go_quote(user),
            go_quote(path)
        ),
        Some(json!({})),
    )
}

/// `410 Expired` as the watch cache sends for a compacted resourceVersion.
pub fn too_old(requested: u64, oldest_minus_one: u64) -> Value {
    status_json(
        410,
        "Expired",
        &format!("too old resource version: {requested} ({oldest_minus_one})"),
        None,
    )
}

/// `410 Expired` for a list continue token older than the compaction point.
pub fn continue_expired() -> Value {
    status_json(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue value from the response to this error to continue with an inconsistent list.",
        None,
    )
}

pub fn bad_request(message: &str) -> Value {
    status_json(400, "BadRequest", message, None)
}

/// `429` with `details.retryAfterSeconds`.
pub fn too_many_requests(retry_after_secs: u64) -> Value {
    status_json(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
        Some(json!({"retryAfterSeconds": retry_after_secs})),
    )
}

pub fn method_not_allowed() -> Value {
    status_json(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Some(json!({})),
    )
}

pub fn not_acceptable() -> Value {
    status_json(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
        None,
    )
}

pub fn entity_too_large(limit: usize) -> Value {
    status_json(
        413,
        "RequestEntityTooLarge",
        &format!("Request entity too large: limit is {limit}"),
        None,
    )
}

/// `application/x-www-form-urlencoded` decoding of one query component (`+` is a space);
/// invalid escapes are kept verbatim, invalid UTF-8 replaced.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Query pairs, decoded, in order.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// What the `Accept` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The full object (or list).
    Full,
    /// `as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`.
    Metadata,
    /// Nothing acceptable (406).
    NotAcceptable,
}

/// Negotiates the representation like the API server: media ranges in order; a range with
/// `as=` is acceptable only for `PartialObjectMetadata` (`expected_as`) in `meta.k8s.io/v1`;
/// protobuf/YAML ranges are skipped (this simulator speaks JSON only).
pub fn negotiate(accept: Option<&str>, expected_as: Option<&str>) -> Representation {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Representation::Full;
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let mut as_ = None;
        let mut g = None;
        let mut v = None;
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                let val = val.trim().trim_matches('"');
                match k.trim() {
                    "as" => as_ = Some(val),
                    "g" => g = Some(val),
                    "v" => v = Some(val),
                    _ => {}
                }
            }
        }
        match as_ {
            None => return Representation::Full,
            Some(a) => {
                if Some(a) == expected_as && g == Some("meta.k8s.io") && v == Some("v1") {
                    return Representation::Metadata;
                }
            }
        }
    }
    Representation::NotAcceptable
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= n {
                out.push(B64[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard or URL-safe base64, padded or not; `None` if malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

/// Top-level field order of API server JSON (`kind`, `apiVersion`, `metadata` first, a
/// Status's fields in Go struct order, a watch event's `type` before `object`).
const ORDER: &[&str] = &[
    "type",
    "object",
    "kind",
    "apiVersion",
    "groupVersion",
    "metadata",
    "spec",
    "status",
    "message",
    "reason",
    "details",
    "code",
    "items",
];

/// Serializes like the API server orders fields: top level (and a watch event's object)
/// in [`ORDER`], the rest alphabetically.
pub fn to_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_ordered(v, &mut out, true);
    out
}

fn write_ordered(v: &Value, out: &mut Vec<u8>, top: bool) {
    let Some(m) = v.as_object().filter(|_| top) else {
        out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
        return;
    };
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by_key(|k| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&serde_json::to_vec(k).unwrap_or_default());
        out.push(b':');
        write_ordered(&m[k], out, k == "object");
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "abcd", "hello world!"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).as_deref(), Some(s.as_bytes()), "{e}");
        }
        assert_eq!(base64_encode(b"ab"), "YWI=");
    }

    #[test]
    fn accept() {
        let m = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
        assert_eq!(
            negotiate(Some(m), Some("PartialObjectMetadata")),
            Representation::Metadata
        );
        assert_eq!(
            negotiate(Some(m), Some("PartialObjectMetadataList")),
            Representation::NotAcceptable
        );
        assert_eq!(
            negotiate(Some("application/json, */*"), None),
            Representation::Full
        );
        assert_eq!(percent_decode("spec.nodeName%3Dn+1%"), "spec.nodeName=n 1%");
    }
}
