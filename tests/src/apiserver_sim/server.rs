//! The HTTPS server: connections, authentication, authorization, routing, bodies and
//! watch streams.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::store::{EventType, FieldSelector, ResourceDef, list_item, partial_metadata};
use super::wire::{self, Representation};
use super::{Fault, RequestRecord, Shared, Span, State, TestCa, Validity};

/// Request bodies above this get `413`.
pub const MAX_BODY: usize = 1024 * 1024;

pub(super) fn tls_acceptor(ca: &TestCa, sans: &[String]) -> io::Result<tokio_rustls::TlsAcceptor> {
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
    let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
    let leaf = ca.server_cert(&sans, Validity::Valid);
    let chain =
        vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).map_err(|e| invalid(&e))?];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).map_err(|e| invalid(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    // Dropping the JoinSet (when this task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let svc = service_fn(move |req| handle(req, shared.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Marks a request's end (for in-flight counting) when dropped.
struct InFlight {
    shared: Arc<Shared>,
    span: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.clock += 1;
        let now = st.clock;
        if let Some(s) = st.spans.get_mut(self.span) {
            s.end = Some(now);
        }
    }
}

/// Response body: one buffer, or a stream of chunks (watch).
pub struct ApiBody {
    data: Option<Bytes>,
    stream: Option<mpsc::Receiver<Result<Bytes, io::Error>>>,
    guard: Option<InFlight>,
}

impl ApiBody {
    fn full(b: Bytes) -> ApiBody {
        ApiBody {
            data: Some(b),
            stream: None,
            guard: None,
        }
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(b) = self.data.take() {
            if self.stream.is_none() {
                self.guard = None;
            }
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let Some(rx) = self.stream.as_mut() {
            return match rx.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(Some(Err(e))) => {
                    self.stream = None;
                    self.guard = None;
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    self.stream = None;
                    self.guard = None;
                    Poll::Ready(None)
                }
            };
        }
        self.guard = None;
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.stream.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.stream) {
            (Some(b), None) => SizeHint::with_exact(b.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn response(code: u16, body: Bytes) -> Response<ApiBody> {
    let mut r = Response::new(ApiBody::full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn json_response(code: u16, v: &Value) -> Response<ApiBody> {
    response(code, Bytes::from(wire::to_json(v)))
}

/// A `Status` response with the code it carries.
fn status(v: Value) -> Response<ApiBody> {
    let code = v
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(500);
    json_response(code, &v)
}

fn text(code: u16, body: &'static str) -> Response<ApiBody> {
    let mut r = response(code, Bytes::from_static(body.as_bytes()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

enum Outcome {
    Answer(Response<ApiBody>),
    Cut,
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<ApiBody>, io::Error> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, tok) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| tok.trim().to_owned())
        })
        .filter(|t| !t.is_empty());
    let (record, guard, user) = {
        let mut st = shared.lock();
        st.clock += 1;
        let start = st.clock;
        st.spans.push(Span {
            path: path.clone(),
            start,
            end: None,
        });
        let span = st.spans.len() - 1;
        let user = bearer.as_ref().and_then(|t| st.tokens.get(t).cloned());
        st.requests.push(RequestRecord {
            method: req.method().to_string(),
            path: path.clone(),
            query: query.clone(),
            accept: accept.clone(),
            user: user.clone(),
            status: 0,
        });
        let record = st.requests_base + st.requests.len() - 1;
        (
            record,
            InFlight {
                shared: shared.clone(),
                span,
            },
            user,
        )
    };
    let outcome = answer(req, &shared, &path, &query, accept.as_deref(), user).await;
    let code = match &outcome {
        Outcome::Answer(r) => r.status().as_u16(),
        Outcome::Cut => 0,
    };
    {
        let mut st = shared.lock();
        if let Some(i) = record.checked_sub(st.requests_base)
            && let Some(r) = st.requests.get_mut(i)
        {
            r.status = code;
        }
    }
    match outcome {
        Outcome::Answer(mut r) => {
            r.body_mut().guard = Some(guard);
            Ok(r)
        }
        Outcome::Cut => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "apiserver-sim: injected cut",
        )),
    }
}

/// What a path means (the API server's RequestInfo).
enum Target<'a> {
    /// `/version`, `/healthz`… (no authentication needed).
    Public(&'a str),
    /// `/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`.
    Discovery(Vec<&'a str>),
    Resource {
        group: &'a str,
        version: &'a str,
        namespace: Option<&'a str>,
        plural: &'a str,
        name: Option<&'a str>,
        subresource: Option<&'a str>,
    },
    /// Anything else (non-resource URL).
    Other,
}

fn parse_target(path: &str) -> Target<'_> {
    if matches!(path, "/version" | "/healthz" | "/livez" | "/readyz") {
        return Target::Public(path);
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api"] | ["api", _] => return Target::Discovery(parts),
        ["apis"] | ["apis", _] | ["apis", _, _] => return Target::Discovery(parts),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Target::Other,
    };
    let mut rest = rest;
    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        namespace = Some(rest[1]);
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    match rest {
        [plural] => Target::Resource {
            group,
            version,
            namespace,
            plural,
            name: None,
            subresource: None,
        },
        [plural, name] => Target::Resource {
            group,
            version,
            namespace,
            plural,
            name: Some(name),
            subresource: None,
        },
        [plural, name, sub] => Target::Resource {
            group,
            version,
            namespace,
            plural,
            name: Some(name),
            subresource: Some(sub),
        },
        _ => Target::Other,
    }
}

/// Decoded query parameters; the last occurrence of a key wins.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

fn is_true(v: &str) -> bool {
    matches!(v, "1" | "true" | "True" | "TRUE")
}

async fn answer(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    path: &str,
    query: &str,
    accept: Option<&str>,
    user: Option<String>,
) -> Outcome {
    let target = parse_target(path);
    if let Target::Public(p) = target {
        return Outcome::Answer(match p {
            "/version" => json_response(
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-apiserver-sim",
                        "gitCommit": "0000000000000000000000000000000000000000",
                        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                        "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64"}),
            ),
            _ => text(200, "ok"),
        });
    }
    let Some(user) = user else {
        return Outcome::Answer(status(wire::unauthorized()));
    };

    let fault = shared.lock().take_fault(path);
    let mut truncate = false;
    match fault {
        None => {}
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Gate(g)) => g.wait().await,
        Some(Fault::Status(code, body)) => {
            return Outcome::Answer(response(code, Bytes::from(body)));
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let mut r = status(wire::too_many_requests(retry_after_secs));
            if let Ok(v) = http::HeaderValue::from_str(&retry_after_secs.to_string()) {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            return Outcome::Answer(r);
        }
        Some(Fault::Cut) => return Outcome::Cut,
        Some(Fault::Oversized(n)) => {
            let mut v = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"padding":""#.to_vec();
            let fixed = v.len() + 2;
            v.resize(v.len() + n.saturating_sub(fixed), b'x');
            v.extend_from_slice(b"\"}");
            return Outcome::Answer(response(200, Bytes::from(v)));
        }
        Some(Fault::Truncated) => truncate = true,
    }

    let params = Params(wire::parse_query(query));
    let param = |k: &str| params.get(k);
    let method = req.method().clone();
    let r = match target {
        Target::Public(_) => text(200, "ok"),
        Target::Discovery(parts) => {
            if method != Method::GET {
                status(wire::method_not_allowed())
            } else {
                discovery(shared, &parts)
            }
        }
        Target::Other => {
            let allowed = shared.lock().allows_everything(&user);
            if allowed {
                status(wire::not_found_path())
            } else {
                status(wire::forbidden_path(
                    &user,
                    &method.as_str().to_ascii_lowercase(),
                    path,
                ))
            }
        }
        Target::Resource {
            group,
            version,
            namespace,
            plural,
            name,
            subresource,
        } => {
            let watch = param("watch").is_some_and(is_true);
            let verb = match (&method, name, watch) {
                (&Method::GET, _, true) => "watch",
                (&Method::GET, Some(_), false) => "get",
                (&Method::GET, None, false) => "list",
                (&Method::POST, _, _) => "create",
                (&Method::PUT, _, _) => "update",
                (&Method::PATCH, _, _) => "patch",
                (&Method::DELETE, Some(_), _) => "delete",
                (&Method::DELETE, None, _) => "deletecollection",
                _ => "unknown",
            };
            let denied = {
                let st = shared.lock();
                (!st.authorized(&user, verb, group, plural, namespace)).then(|| {
                    wire::forbidden(
                        &user,
                        verb,
                        group,
                        plural,
                        namespace,
                        if verb == "watch" { None } else { name },
                    )
                })
            };
            if let Some(d) = denied {
                return Outcome::Answer(status(d));
            }
            let def = shared
                .lock()
                .store
                .resource(group, plural)
                .filter(|d| d.version == version)
                .cloned();
            let sar = group == "authorization.k8s.io"
                && version == "v1"
                && plural == "subjectaccessreviews"
                && namespace.is_none()
                && name.is_none();
            if sar {
                if method != Method::POST {
                    status(wire::method_not_allowed())
                } else {
                    match read_body(req).await {
                        Ok(b) => subject_access_review(shared, &b),
                        Err(r) => r,
                    }
                }
            } else {
                match def {
                    None => status(wire::not_found_path()),
                    // A namespaced path for a cluster-scoped resource (other than the
                    // namespace itself), a subresource, or a get without the namespace.
                    Some(def)
                        if subresource.is_some()
                            || (!def.namespaced
                                && namespace.is_some()
                                && plural != "namespaces")
                            || (def.namespaced && name.is_some() && namespace.is_none()) =>
                    {
                        let _ = def;
                        status(wire::not_found_path())
                    }
                    Some(_) if method != Method::GET => status(wire::method_not_allowed()),
                    Some(def) => {
                        // `/api/v1/namespaces/{name}`: RequestInfo's namespace is the name.
                        let ns = if def.namespaced { namespace } else { None };
                        let want = if watch || name.is_some() {
                            "PartialObjectMetadata"
                        } else {
                            "PartialObjectMetadataList"
                        };
                        let rep = wire::negotiate(accept, Some(want));
                        if rep == Representation::NotAcceptable {
                            status(wire::not_acceptable())
                        } else {
                            let meta = rep == Representation::Metadata;
                            if watch {
                                watch_start(shared, &def, ns, name, &params, meta)
                            } else if let Some(n) = name {
                                get(shared, &def, ns.unwrap_or(""), n, meta)
                            } else {
                                list(shared, &def, ns, &params, meta)
                            }
                        }
                    }
                }
            }
        }
    };
    if truncate && r.body().stream.is_none() {
        let (parts, mut body) = r.into_parts();
        if let Some(b) = body.data.take() {
            body.data = Some(b.slice(..b.len() / 2));
        }
        return Outcome::Answer(Response::from_parts(parts, body));
    }
    Outcome::Answer(r)
}

/// Reads a request body of at most [`MAX_BODY`] bytes; `413` above.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<ApiBody>> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(status(wire::entity_too_large(MAX_BODY)));
    }
    match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(status(wire::entity_too_large(MAX_BODY)))
        }
        Err(e) => Err(status(wire::bad_request(&format!(
            "reading the request body: {e}"
        )))),
    }
}

fn subject_access_review(shared: &Shared, body: &[u8]) -> Response<ApiBody> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return status(wire::bad_request(&format!(
                "couldn't get version/kind; json parse error: {e}"
            )));
        }
    };
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if kind != "SubjectAccessReview" || api_version != "authorization.k8s.io/v1" {
        return status(wire::bad_request(&format!(
            "the object provided is unrecognized (must be of type SubjectAccessReview): kind {kind:?}, apiVersion {api_version:?}"
        )));
    }
    let spec = v.get("spec").cloned().unwrap_or(Value::Null);
    let s = |o: Option<&Value>, k: &str| {
        o.and_then(|o| o.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let invalid = |field: &str, value: &str, detail: &str| {
        status(wire::status_json(
            422,
            "Invalid",
            &format!(
                "SubjectAccessReview.authorization.k8s.io \"\" is invalid: {field}: Invalid value: {}: {detail}",
                wire::go_quote(value)
            ),
            Some(
                json!({"group": "authorization.k8s.io", "kind": "SubjectAccessReview",
                        "causes": [{"reason": "FieldValueInvalid", "message": format!("Invalid value: {}: {detail}", wire::go_quote(value)), "field": field}]}),
            ),
        ))
    };
    let user = s(Some(&spec), "user");
    let has_groups = spec
        .get("groups")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty());
    if user.is_empty() && !has_groups {
        return invalid(
            "spec.user",
            "",
            "at least one of user or group must be specified",
        );
    }
    let ra = spec.get("resourceAttributes").filter(|r| r.is_object());
    let nra = spec.get("nonResourceAttributes").filter(|r| r.is_object());
    if ra.is_some() == nra.is_some() {
        return invalid(
            "spec.resourceAttributes",
            "",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        );
    }
    let key = [
        user,
        s(ra, "verb"),
        s(ra, "group"),
        s(ra, "resource"),
        s(ra, "namespace"),
        s(ra, "name"),
    ];
    let allowed = {
        let mut st = shared.lock();
        st.reviews.push(v.clone());
        if ra.is_none() {
            st.review_default
        } else {
            st.review_rules
                .iter()
                .rev()
                .find(|r| r.key == key)
                .map_or(st.review_default, |r| r.allowed)
        }
    };
    let mut out = v;
    if let Some(o) = out.as_object_mut() {
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("creationTimestamp".into(), Value::Null);
        }
        let st = if allowed {
            json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"apiserver-sim\""})
        } else {
            json!({"allowed": false})
        };
        o.insert("status".into(), st);
    }
    json_response(201, &out)
}

fn get(
    shared: &Shared,
    def: &ResourceDef,
    namespace: &str,
    name: &str,
    meta: bool,
) -> Response<ApiBody> {
    let st = shared.lock();
    match st.store.get(&def.key(), namespace, name) {
        None => status(wire::not_found(&def.group, &def.plural, name)),
        Some(o) if meta => json_response(200, &partial_metadata(o, shared.keep_managed_fields)),
        Some(o) => json_response(200, o),
    }
}

fn continue_token(rv: u64, last: &(String, String)) -> String {
    let t = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": [last.0, last.1]});
    wire::base64_encode(t.to_string().as_bytes())
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn parse_continue(token: &str) -> Result<(u64, (String, String)), String> {
    let raw = wire::base64_decode(token).ok_or("illegal base64 data")?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
    if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err("incorrect encoded key version".into());
    }
    let rv = v
        .get("rv")
        .and_then(Value::as_u64)
        .ok_or("no resource version")?;
    let start = v
        .get("start")
        .and_then(Value::as_array)
        .ok_or("no start key")?;
    let part = |i: usize| {
        start
            .get(i)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or("bad start key")
    };
    Ok((rv, (part(0)?, part(1)?)))
}

fn list(
    shared: &Shared,
    def: &ResourceDef,
    namespace: Option<&str>,
    params: &Params,
    meta: bool,
) -> Response<ApiBody> {
    let param = |k: &str| params.get(k);
    let sel = match FieldSelector::parse(param("fieldSelector").unwrap_or(""), def) {
        Ok(s) => s,
        Err(m) => return status(wire::bad_request(&m)),
    };
    let limit = match param("limit").filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Ok(_) => None,
            Err(_) => {
                return status(wire::bad_request(&format!(
                    "limit: Invalid value: {}: must be an integer",
                    wire::go_quote(l)
                )));
            }
        },
    };
    let st = shared.lock();
    let (list_rv, after) = match param("continue").filter(|c| !c.is_empty()) {
        None => (st.store.rv, None),
        Some(c) => match parse_continue(c) {
            Err(e) => {
                return status(wire::bad_request(&format!(
                    "continue key is not valid: {e}"
                )));
            }
            Ok((rv, _)) if rv < st.store.compacted => return status(wire::continue_expired()),
            Ok((rv, key)) => (rv, Some(key)),
        },
    };
    let key = def.key();
    let mut matching = st
        .store
        .list(&key, namespace)
        .into_iter()
        .filter(|o| sel.matches(o))
        .filter(|o| {
            after.as_ref().is_none_or(|a| {
                let m = &o["metadata"];
                let k = (
                    m["namespace"].as_str().unwrap_or("").to_owned(),
                    m["name"].as_str().unwrap_or("").to_owned(),
                );
                k > *a
            })
        })
        .peekable();
    let mut items = Vec::new();
    let mut last = None;
    for o in matching.by_ref() {
        let m = &o["metadata"];
        last = Some((
            m["namespace"].as_str().unwrap_or("").to_owned(),
            m["name"].as_str().unwrap_or("").to_owned(),
        ));
        items.push(if meta {
            partial_metadata(o, shared.keep_managed_fields)
        } else {
            list_item(o)
        });
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
    }
    let remaining = matching.count();
    let mut list_meta = serde_json::Map::new();
    list_meta.insert("resourceVersion".into(), json!(list_rv.to_string()));
    if remaining > 0
        && let Some(last) = &last
    {
        list_meta.insert("continue".into(), json!(continue_token(list_rv, last)));
        if sel.is_empty() {
            list_meta.insert("remainingItemCount".into(), json!(remaining));
        }
    }
    let (kind, api_version) = if meta {
        (
            "PartialObjectMetadataList".to_owned(),
            "meta.k8s.io/v1".to_owned(),
        )
    } else {
        (format!("{}List", def.kind), def.api_version())
    };
    json_response(
        200,
        &json!({"kind": kind, "apiVersion": api_version, "metadata": list_meta, "items": items}),
    )
}

// ---- discovery ----

fn singular(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

/// The short names a real API server lists for built-in resources.
fn short_names(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "namespaces") => &["ns"],
        ("", "pods") => &["po"],
        ("", "nodes") => &["no"],
        ("", "services") => &["svc"],
        ("", "configmaps") => &["cm"],
        ("", "serviceaccounts") => &["sa"],
        ("", "endpoints") => &["ep"],
        ("", "events") => &["ev"],
        ("", "replicationcontrollers") => &["rc"],
        ("", "persistentvolumeclaims") => &["pvc"],
        ("", "persistentvolumes") => &["pv"],
        ("apps", "deployments") => &["deploy"],
        ("apps", "replicasets") => &["rs"],
        ("apps", "statefulsets") => &["sts"],
        ("apps", "daemonsets") => &["ds"],
        ("batch", "cronjobs") => &["cj"],
        _ => &[],
    }
}

fn resource_entries(defs: &[&ResourceDef]) -> Vec<Value> {
    let mut out = Vec::new();
    for d in defs {
        let mut e = json!({
            "name": d.plural, "singularName": singular(&d.kind), "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        let short = short_names(&d.group, &d.plural);
        if !short.is_empty()
            && let Some(o) = e.as_object_mut()
        {
            o.insert("shortNames".into(), json!(short));
        }
        out.push(e);
        if d.group.is_empty()
            && !matches!(
                d.plural.as_str(),
                "pods" | "namespaces" | "nodes" | "services"
            )
        {
            continue;
        }
        out.push(json!({
            "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
            "kind": d.kind, "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

fn authorization_resources() -> Vec<Value> {
    vec![
        json!({"name": "localsubjectaccessreviews", "singularName": "localsubjectaccessreview", "namespaced": true, "kind": "LocalSubjectAccessReview", "verbs": ["create"]}),
        json!({"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview", "namespaced": false, "kind": "SelfSubjectAccessReview", "verbs": ["create"]}),
        json!({"name": "selfsubjectrulesreviews", "singularName": "selfsubjectrulesreview", "namespaced": false, "kind": "SelfSubjectRulesReview", "verbs": ["create"]}),
        json!({"name": "subjectaccessreviews", "singularName": "subjectaccessreview", "namespaced": false, "kind": "SubjectAccessReview", "verbs": ["create"]}),
    ]
}

fn discovery(shared: &Shared, parts: &[&str]) -> Response<ApiBody> {
    let st = shared.lock();
    let resources = &st.store.resources;
    // Groups in registration order, with their versions.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version.clone()),
            Some(_) => {}
            None => groups.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    if !groups.iter().any(|(g, _)| g == "authorization.k8s.io") {
        groups.push(("authorization.k8s.io".into(), vec!["v1".into()]));
    }
    let group_json = |g: &str, vs: &[String]| {
        let versions: Vec<Value> = vs
            .iter()
            .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
            .collect();
        json!({"name": g, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
    };
    match parts {
        ["api"] => json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]}),
        ),
        ["api", "v1"] => {
            let defs: Vec<&ResourceDef> = resources.iter().filter(|r| r.group.is_empty()).collect();
            json_response(
                200,
                &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": resource_entries(&defs)}),
            )
        }
        ["apis"] => {
            let gs: Vec<Value> = groups.iter().map(|(g, vs)| group_json(g, vs)).collect();
            json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}),
            )
        }
        ["apis", g] => match groups.iter().find(|(name, _)| name == g) {
            Some((name, vs)) => {
                let mut v = group_json(name, vs);
                if let Some(o) = v.as_object_mut() {
                    o.insert("kind".into(), json!("APIGroup"));
                    o.insert("apiVersion".into(), json!("v1"));
                }
                json_response(200, &v)
            }
            None => status(wire::not_found_path()),
        },
        ["apis", g, v] => {
            let known = groups
                .iter()
                .any(|(name, vs)| name == g && vs.iter().any(|x| x == v));
            if !known {
                return status(wire::not_found_path());
            }
            let defs: Vec<&ResourceDef> = resources
                .iter()
                .filter(|r| r.group == *g && r.version == *v)
                .collect();
            let mut entries = resource_entries(&defs);
            if *g == "authorization.k8s.io" && *v == "v1" {
                entries.extend(authorization_resources());
            }
            json_response(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{g}/{v}"), "resources": entries}),
            )
        }
        _ => status(wire::not_found_path()),
    }
}

// ---- watch ----

struct WatchSpec {
    def: ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    selector: FieldSelector,
    meta: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
}

impl WatchSpec {
    fn in_scope(&self, obj: &Value) -> bool {
        let m = &obj["metadata"];
        self.namespace
            .as_deref()
            .is_none_or(|n| m["namespace"].as_str() == Some(n))
            && self
                .name
                .as_deref()
                .is_none_or(|n| m["name"].as_str() == Some(n))
            && self.selector.matches(obj)
    }

    fn render(&self, etype: &str, obj: &Value, keep_managed: bool) -> Bytes {
        let o = if self.meta {
            partial_metadata(obj, keep_managed)
        } else {
            obj.clone()
        };
        let mut line = wire::to_json(&json!({"type": etype, "object": o}));
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64) -> Bytes {
        let (kind, av) = if self.meta {
            (
                "PartialObjectMetadata".to_owned(),
                "meta.k8s.io/v1".to_owned(),
            )
        } else {
            (self.def.kind.clone(), self.def.api_version())
        };
        let obj = json!({"kind": kind, "apiVersion": av, "metadata": {"resourceVersion": rv.to_string()}});
        let mut line = wire::to_json(&json!({"type": "BOOKMARK", "object": obj}));
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn error_line(status: &Value) -> Bytes {
    let mut line = wire::to_json(&json!({"type": "ERROR", "object": status}));
    line.push(b'\n');
    Bytes::from(line)
}

fn watch_start(
    shared: &Arc<Shared>,
    def: &ResourceDef,
    namespace: Option<&str>,
    name: Option<&str>,
    params: &Params,
    meta: bool,
) -> Response<ApiBody> {
    let param = |k: &str| params.get(k);
    let selector = match FieldSelector::parse(param("fieldSelector").unwrap_or(""), def) {
        Ok(s) => s,
        Err(m) => return status(wire::bad_request(&m)),
    };
    let rv_param = param("resourceVersion").unwrap_or("");
    let from = match rv_param {
        "" | "0" => None,
        s => match s.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return status(wire::bad_request(&format!(
                    "resourceVersion: Invalid value: {}: must be a non-negative integer",
                    wire::go_quote(s)
                )));
            }
        },
    };
    let timeout = match param("timeoutSeconds").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => match t.parse::<u64>() {
            Ok(n) => Some(Duration::from_secs(n)),
            Err(_) => {
                return status(wire::bad_request(&format!(
                    "timeoutSeconds: Invalid value: {}: must be an integer",
                    wire::go_quote(t)
                )));
            }
        },
    };
    let spec = WatchSpec {
        def: def.clone(),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        selector,
        meta,
        bookmarks: param("allowWatchBookmarks").is_some_and(is_true),
        timeout,
    };
    let (tx, rx) = mpsc::channel(256);
    {
        let st = shared.lock();
        let compacted = st.store.compacted;
        let mut initial = Vec::new();
        let cursor = match from {
            Some(rv) if rv < compacted => {
                let err = wire::too_old(rv, compacted);
                if shared.expired_as_response {
                    return status(err);
                }
                let _ = tx.try_send(Ok(error_line(&err)));
                drop(tx);
                return streaming(rx);
            }
            Some(rv) => rv,
            None => {
                for o in st.store.list(&spec.def.key(), spec.namespace.as_deref()) {
                    if spec.in_scope(o) {
                        initial.push(spec.render("ADDED", o, shared.keep_managed_fields));
                    }
                }
                st.store.rv
            }
        };
        let control = *shared.control.borrow();
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        let open = OpenWatch(shared.clone());
        tokio::spawn(run_watch(open, spec, tx, cursor, initial, control));
    }
    streaming(rx)
}

fn streaming(rx: mpsc::Receiver<Result<Bytes, io::Error>>) -> Response<ApiBody> {
    let mut r = Response::new(ApiBody {
        data: None,
        stream: Some(rx),
        guard: None,
    });
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Lines for events after `cursor`, and the new cursor; `Err` with an ERROR line when the
/// history the watch needs was compacted away.
fn pending_lines(
    st: &State,
    spec: &WatchSpec,
    cursor: u64,
    keep_managed: bool,
) -> Result<(Vec<Bytes>, u64), Bytes> {
    if cursor < st.store.compacted {
        return Err(error_line(&wire::too_old(cursor, st.store.compacted)));
    }
    let key = spec.def.key();
    let mut lines = Vec::new();
    for ev in st
        .store
        .history
        .iter()
        .filter(|e| e.rv > cursor && e.key == key)
    {
        let now = spec.in_scope(&ev.object);
        let etype = match ev.etype {
            EventType::Added | EventType::Deleted => now.then_some(ev.etype),
            EventType::Modified => {
                let before = ev.prev.as_ref().is_some_and(|p| spec.in_scope(p));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        };
        if let Some(t) = etype {
            lines.push(spec.render(t.as_str(), &ev.object, keep_managed));
        }
    }
    Ok((lines, st.store.rv))
}

async fn run_watch(
    open: OpenWatch,
    spec: WatchSpec,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    mut cursor: u64,
    initial: Vec<Bytes>,
    start: super::Control,
) {
    let shared = open.0.clone();
    let mut changes = shared.changes.subscribe();
    let mut control = shared.control.subscribe();
    let mut bookmark_gen = start.bookmark;
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut ticker = tokio::time::interval(shared.bookmark_interval.max(Duration::from_millis(10)));
    ticker.tick().await;
    for line in initial {
        if tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
    // A control change between the request and this task counts too.
    let mut pending_control = true;
    loop {
        changes.borrow_and_update();
        let mut bookmark = false;
        if pending_control {
            pending_control = false;
            let c = *control.borrow_and_update();
            if c.abort != start.abort {
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "apiserver-sim: watch aborted",
                    )))
                    .await;
                return;
            }
            if c.end != start.end {
                return;
            }
            if c.bookmark != bookmark_gen {
                bookmark_gen = c.bookmark;
                bookmark = true;
            }
        }
        if !bookmark {
            let pending = {
                let st = shared.lock();
                pending_lines(&st, &spec, cursor, shared.keep_managed_fields)
            };
            match pending {
                Err(line) => {
                    let _ = tx.send(Ok(line)).await;
                    return;
                }
                Ok((lines, next)) => {
                    cursor = next;
                    for line in lines {
                        if tx.send(Ok(line)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                r = control.changed() => {
                    if r.is_err() {
                        return;
                    }
                    pending_control = true;
                    continue;
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return,
                _ = ticker.tick() => bookmark = true,
                _ = tx.closed() => return,
            }
        }
        if bookmark && spec.bookmarks {
            // Deliver everything up to now first, so the bookmark's RV is accurate.
            let pending = {
                let st = shared.lock();
                pending_lines(&st, &spec, cursor, shared.keep_managed_fields)
            };
            match pending {
                Err(line) => {
                    let _ = tx.send(Ok(line)).await;
                    return;
                }
                Ok((lines, next)) => {
                    cursor = next;
                    for line in lines {
                        if tx.send(Ok(line)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if tx.send(Ok(spec.bookmark(cursor))).await.is_err() {
                return;
            }
        }
    }
}
