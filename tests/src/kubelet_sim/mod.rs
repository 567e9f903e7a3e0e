//! A kubelet simulator: a real HTTP or HTTPS server on loopback answering `GET /pods`
//! the way a kubelet does, with kubelet-style authentication, run-time certificates,
//! fault injection and state that changes while it runs.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use attestor_tests::kubelet_sim::{KubeletSim, PodBuilder};
//! let sim = KubeletSim::builder()
//!     .token("secret")
//!     .pods(vec![PodBuilder::new("web").container("app", "nginx:1", None).build()])
//!     .start()
//!     .await?;
//! println!("{} (CA: {})", sim.url(), sim.ca_pem());
//! # Ok(()) }
//! ```
//!
//! Authentication (secure mode) follows the kubelet: a verified client certificate or an
//! accepted bearer token authenticates; a wrong token gets `401 Unauthorized`; no
//! credentials get the anonymous answer ([`AnonymousMode`], by default the `403` a
//! kubelet gives when its authorizer denies `system:anonymous`). A client certificate
//! not signed by the configured client CA fails the TLS handshake. The plain HTTP mode
//! is the read-only port: no authentication.

pub mod certs;
pub mod pods;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use certs::{CertKey, TestCa, Validity};
pub use pods::{ContainerKind, PodBuilder, Runtime, generate_pods, hex64, pod_list_json, uuid};

/// The body a kubelet sends with 401.
pub const UNAUTHORIZED_BODY: &str = "Unauthorized";
/// The body a kubelet sends when its authorizer denies anonymous `GET /pods`.
pub const ANONYMOUS_FORBIDDEN_BODY: &str =
    "Forbidden (user=system:anonymous, verb=get, resource=nodes, subresource=proxy)";

/// What a request without credentials gets (secure mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnonymousMode {
    /// `--anonymous-auth=true` with an authorizer that denies it: 403 (the kubelet default).
    #[default]
    Forbidden,
    /// `--anonymous-auth=false`: 401.
    Unauthorized,
    /// Anonymous access allowed: the pod list.
    Allowed,
}

/// A fault injected into an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer with this status code and body.
    Status(u16, String),
    /// 200 with the JSON cut in half (Content-Length matches what is sent).
    Truncated,
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with a valid JSON body of at least this many bytes; `chunked` leaves out
    /// Content-Length so the client only learns the size by reading.
    Oversized { bytes: usize, chunked: bool },
    /// Headers announcing the full body, half of it, then the connection is aborted
    /// (RST: sockets are set to zero linger).
    ResetMidBody,
    /// Read the request, then send nothing at all (no status line) until the client
    /// gives up and closes the connection.
    Hang,
    /// Answer normally once the gate is opened ([`Gate::open`]): keeps a request in flight
    /// until the test has done something (e.g. let the attested process exit).
    Hold(Gate),
    /// 200 and Content-Length, then the body `chunk` bytes at a time, one chunk per `every`.
    SlowDrip { chunk: usize, every: Duration },
    /// 200 with a JSON object of exactly `bytes` bytes, generated while it is sent: the
    /// simulator holds one 64 KiB chunk, never the body, so a 1 GiB answer costs it no
    /// memory. `declare_length` sends Content-Length; without it the body is chunked and the
    /// client learns the size only by reading.
    Huge { bytes: u64, declare_length: bool },
}

/// A latch for [`Fault::Hold`] (and the API-server simulator's `Fault::Gate`): closed when
/// created, opened once for good.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(tokio::sync::watch::Sender::new(false)))
    }

    /// Lets every held request (and any later one) answer.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    /// Until [`Gate::open`] (the API-server simulator holds requests on it too).
    pub(crate) async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Gate) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Gate {}

/// A change applied once the simulator has answered a number of requests.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Append a container status to the pod with this UID (creating the list if needed).
    AddContainerStatus {
        pod_uid: String,
        kind: ContainerKind,
        status: Value,
    },
    /// Remove the pod with this UID.
    DeletePod { pod_uid: String },
    /// Replace the whole list.
    ReplacePods(Vec<Value>),
}

enum Source {
    Pods(Vec<Value>),
    Raw(Bytes),
}

struct State {
    source: Source,
    rendered: Option<Bytes>,
    scheduled: Vec<(u64, Mutation)>,
    tokens: Vec<String>,
    anonymous: AnonymousMode,
    forbid_authenticated: bool,
    fault: Option<Fault>,
    next_faults: VecDeque<Fault>,
    handling: Vec<Duration>,
    serving: Vec<Duration>,
    client_certs: Vec<Vec<u8>>,
}

impl State {
    fn body(&mut self) -> Bytes {
        if let Some(b) = &self.rendered {
            return b.clone();
        }
        let b = match &self.source {
            Source::Pods(p) => Bytes::from(pod_list_json(p)),
            Source::Raw(b) => b.clone(),
        };
        self.rendered = Some(b.clone());
        b
    }

    fn pods_mut(&mut self) -> &mut Vec<Value> {
        self.rendered = None;
        if let Source::Raw(raw) = &self.source {
            // Mutating a raw fixture: parse it once into pods (non-JSON ⇒ empty list).
            let items = serde_json::from_slice::<Value>(raw)
                .ok()
                .and_then(|v| v.get("items").and_then(Value::as_array).cloned())
                .unwrap_or_default();
            self.source = Source::Pods(items);
        }
        match &mut self.source {
            Source::Pods(p) => p,
            Source::Raw(_) => unreachable!("converted above"),
        }
    }

    fn apply(&mut self, m: Mutation) {
        match m {
            Mutation::AddContainerStatus {
                pod_uid,
                kind,
                status,
            } => {
                let pods = self.pods_mut();
                if let Some(pod) = pods
                    .iter_mut()
                    .find(|p| p["metadata"]["uid"].as_str() == Some(pod_uid.as_str()))
                {
                    let list = &mut pod["status"][kind.status_field()];
                    match list.as_array_mut() {
                        Some(a) => a.push(status),
                        None => *list = Value::Array(vec![status]),
                    }
                }
            }
            Mutation::DeletePod { pod_uid } => {
                self.pods_mut()
                    .retain(|p| p["metadata"]["uid"].as_str() != Some(pod_uid.as_str()));
            }
            Mutation::ReplacePods(p) => {
                self.source = Source::Pods(p);
                self.rendered = None;
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Swapped by [`KubeletSim::rotate_server_cert`]; `None` in plain HTTP mode.
    acceptor: Mutex<Option<tokio_rustls::TlsAcceptor>>,
    ca: Mutex<Arc<TestCa>>,
    client_ca_pem: Option<String>,
    requests: AtomicU64,
    connections: AtomicU64,
    handshake_failures: AtomicU64,
    tls: bool,
    /// Answer new connections with plaintext instead of a TLS handshake.
    break_tls: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Configures a [`KubeletSim`].
#[derive(Debug)]
pub struct KubeletSimBuilder {
    tls: bool,
    bind: IpAddr,
    port: u16,
    server_sans: Vec<String>,
    validity: Validity,
    server_ca: Option<Arc<TestCa>>,
    client_ca_pem: Option<String>,
    tokens: Vec<String>,
    anonymous: AnonymousMode,
    forbid_authenticated: bool,
    body: Option<Bytes>,
    pods: Vec<Value>,
}

impl Default for KubeletSimBuilder {
    fn default() -> Self {
        KubeletSimBuilder {
            tls: true,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            server_sans: vec!["127.0.0.1".into(), "localhost".into()],
            validity: Validity::Valid,
            server_ca: None,
            client_ca_pem: None,
            tokens: Vec::new(),
            anonymous: AnonymousMode::default(),
            forbid_authenticated: false,
            body: None,
            pods: Vec::new(),
        }
    }
}

impl KubeletSimBuilder {
    /// HTTPS (secure port, default) or plain HTTP (read-only port).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
    /// Listen on this loopback address (default `127.0.0.1`; e.g. `::1` for IPv6 tests).
    pub fn bind(mut self, addr: IpAddr) -> Self {
        self.bind = addr;
        self
    }
    /// Listen on this loopback port (default 0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Names in the serving certificate (default `127.0.0.1`, `localhost`).
    pub fn server_sans<S: Into<String>>(mut self, sans: impl IntoIterator<Item = S>) -> Self {
        self.server_sans = sans.into_iter().map(Into::into).collect();
        self
    }
    pub fn server_validity(mut self, v: Validity) -> Self {
        self.validity = v;
        self
    }
    /// Issue the serving certificate from this CA (default: a fresh one).
    pub fn server_ca(mut self, ca: Arc<TestCa>) -> Self {
        self.server_ca = Some(ca);
        self
    }
    /// Accept client certificates signed by this CA (PEM).
    pub fn client_ca(mut self, ca_pem: &str) -> Self {
        self.client_ca_pem = Some(ca_pem.to_owned());
        self
    }
    /// Accept this bearer token (may be called several times).
    pub fn token(mut self, t: &str) -> Self {
        self.tokens.push(t.to_owned());
        self
    }
    pub fn anonymous(mut self, m: AnonymousMode) -> Self {
        self.anonymous = m;
        self
    }
    /// Authenticated users get 403 too (authorizer denies `nodes/proxy`).
    pub fn forbid_authenticated(mut self, on: bool) -> Self {
        self.forbid_authenticated = on;
        self
    }
    pub fn pods(mut self, pods: Vec<Value>) -> Self {
        self.pods = pods;
        self
    }
    /// Serve these bytes verbatim (e.g. a fixture file's contents).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }
    /// Serve the contents of a fixture file.
    pub fn fixture(self, path: &Path) -> io::Result<Self> {
        Ok(self.body(std::fs::read(path)?))
    }

    /// Bind and start serving. Requires a tokio runtime.
    pub async fn start(self) -> io::Result<KubeletSim> {
        let ca = self
            .server_ca
            .clone()
            .unwrap_or_else(|| Arc::new(TestCa::new("kubelet-sim-ca")));
        let acceptor = if self.tls {
            let sans: Vec<&str> = self.server_sans.iter().map(String::as_str).collect();
            Some(tls_acceptor(
                &ca,
                &sans,
                self.validity,
                self.client_ca_pem.as_deref(),
            )?)
        } else {
            None
        };
        if !self.bind.is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the kubelet simulator only listens on loopback addresses",
            ));
        }
        let listener = TcpListener::bind((self.bind, self.port)).await?;
        let addr = listener.local_addr()?;
        let source = match self.body {
            Some(b) => Source::Raw(b),
            None => Source::Pods(self.pods),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                source,
                rendered: None,
                scheduled: Vec::new(),
                tokens: self.tokens,
                anonymous: self.anonymous,
                forbid_authenticated: self.forbid_authenticated,
                fault: None,
                next_faults: VecDeque::new(),
                handling: Vec::new(),
                serving: Vec::new(),
                client_certs: Vec::new(),
            }),
            acceptor: Mutex::new(acceptor),
            ca: Mutex::new(ca),
            client_ca_pem: self.client_ca_pem,
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            tls: self.tls,
            break_tls: std::sync::atomic::AtomicBool::new(false),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(KubeletSim { addr, shared, task })
    }
}

fn tls_acceptor(
    ca: &TestCa,
    sans: &[&str],
    validity: Validity,
    client_ca_pem: Option<&str>,
) -> io::Result<tokio_rustls::TlsAcceptor> {
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
    let leaf = ca.server_cert(sans, validity);
    let chain =
        vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).map_err(|e| invalid(&e))?];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).map_err(|e| invalid(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(c.map_err(|e| invalid(&e))?)
                    .map_err(|e| invalid(&e))?;
            }
            // Like the kubelet (Go's VerifyClientCertIfGiven): a certificate is optional,
            // but one that is sent must verify.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping the JoinSet (when this task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let break_tls = shared.tls && shared.break_tls.load(Ordering::SeqCst);
                if !break_tls {
                    // Abort (RST) rather than FIN when a connection is dropped mid-answer.
                    let _ = stream.set_zero_linger();
                }
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                let acceptor = shared
                    .acceptor
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                conns.spawn(async move {
                    if break_tls {
                        // Read the client hello, answer in plaintext (not a server hello) and
                        // close gracefully: the client's handshake fails on what it reads.
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        // Counted before the client can see the failure.
                        shared.handshake_failures.fetch_add(1, Ordering::SeqCst);
                        let mut stream = stream;
                        let mut hello = [0u8; 4096];
                        let _ = stream.read(&mut hello).await;
                        let _ = stream
                            .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                            .await;
                        let _ = stream.shutdown().await;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            stream.read(&mut hello),
                        )
                        .await;
                        return;
                    }
                    match acceptor {
                        None => serve(TokioIo::new(stream), shared, false).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => {
                                let peer = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| c.to_vec());
                                let has_cert = peer.is_some();
                                if let Some(der) = peer {
                                    shared.lock().client_certs.push(der);
                                }
                                serve(TokioIo::new(tls), shared, has_cert).await;
                            }
                            Err(_) => {
                                shared.handshake_failures.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve<IO>(io: IO, shared: Arc<Shared>, has_client_cert: bool)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(req, shared.clone(), has_client_cert));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

fn text(code: u16, body: &str) -> Response<SimBody> {
    let mut r = Response::new(SimBody::full(Bytes::from(body.to_owned())));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    has_client_cert: bool,
) -> Result<Response<SimBody>, Infallible> {
    let start = Instant::now();
    let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if req.method() != http::Method::GET || req.uri().path() != "/pods" {
        return Ok(text(404, "404 page not found"));
    }
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);

    let (fault, body) = {
        let mut st = shared.lock();
        // Mutations scheduled "after k requests" are visible from request k+1 on.
        let due: Vec<Mutation> = {
            let (ready, later): (Vec<_>, Vec<_>) =
                st.scheduled.drain(..).partition(|(after, _)| n > *after);
            st.scheduled = later;
            ready.into_iter().map(|(_, m)| m).collect()
        };
        for m in due {
            st.apply(m);
        }
        if shared.tls {
            let user = if has_client_cert {
                Some("client-certificate-user")
            } else if let Some(t) = &bearer {
                if !st.tokens.iter().any(|ok| ok == t) {
                    return Ok(text(401, UNAUTHORIZED_BODY));
                }
                Some("token-user")
            } else {
                None
            };
            match (user, st.anonymous) {
                (None, AnonymousMode::Forbidden) => {
                    return Ok(text(403, ANONYMOUS_FORBIDDEN_BODY));
                }
                (None, AnonymousMode::Unauthorized) => {
                    return Ok(text(401, UNAUTHORIZED_BODY));
                }
                (Some(u), _) if st.forbid_authenticated => {
                    return Ok(text(
                        403,
                        &format!(
                            "Forbidden (user={u}, verb=get, resource=nodes, subresource=proxy)"
                        ),
                    ));
                }
                _ => {}
            }
        }
        let fault = st.next_faults.pop_front().or_else(|| st.fault.clone());
        (fault, st.body())
    };

    let mut delay = None;
    let body = match fault {
        None => SimBody::full(body),
        Some(Fault::Delay(d)) => {
            delay = Some(d);
            SimBody::full(body)
        }
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::Hold(gate)) => {
            gate.wait().await;
            SimBody::full(body)
        }
        Some(Fault::SlowDrip { chunk, every }) => {
            let mut b = SimBody::chunked(body.clone(), chunk.max(1));
            b.exact = Some(body.len() as u64);
            b.drip = Some(every);
            b
        }
        Some(Fault::Huge {
            bytes,
            declare_length,
        }) => SimBody::huge(bytes, declare_length),
        Some(Fault::Status(code, text_body)) => return Ok(text(code, &text_body)),
        Some(Fault::Truncated) => SimBody::full(body.slice(..body.len() / 2)),
        Some(Fault::Malformed) => {
            SimBody::full(Bytes::from_static(b"{\"items\": [ this is <html> not json"))
        }
        Some(Fault::Oversized { bytes, chunked }) => {
            let mut v = b"{\"kind\":\"PodList\",\"items\":[],\"padding\":\"".to_vec();
            v.resize(v.len() + bytes, b'x');
            v.extend_from_slice(b"\"}");
            let b = Bytes::from(v);
            if chunked {
                SimBody::chunked(b, 64 * 1024)
            } else {
                SimBody::full(b)
            }
        }
        Some(Fault::ResetMidBody) => SimBody::reset_mid_body(body),
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    shared.lock().handling.push(start.elapsed());
    let mut body = body;
    body.done = Some((start, shared.clone()));
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Response body with the shapes the faults need.
pub struct SimBody {
    chunks: VecDeque<Bytes>,
    exact: Option<u64>,
    abort: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Request start, to record the serve time once the last chunk is handed over.
    done: Option<(Instant, Arc<Shared>)>,
    /// Wait this long before each chunk ([`Fault::SlowDrip`]).
    drip: Option<Duration>,
    /// Bytes still to generate from `filler`, then `tail` ([`Fault::Huge`]).
    generate: u64,
    filler: Bytes,
    tail: Option<Bytes>,
}

/// Bodies go out in pieces of this size, so that hyper asks for the last piece only
/// after writing most of the body (which makes the recorded serve time meaningful).
const CHUNK: usize = 64 * 1024;

impl SimBody {
    fn full(b: Bytes) -> SimBody {
        let mut body = SimBody::chunked(b.clone(), CHUNK);
        body.exact = Some(b.len() as u64);
        body
    }

    fn chunked(b: Bytes, size: usize) -> SimBody {
        let mut chunks = VecDeque::new();
        let mut off = 0;
        while off < b.len() {
            let end = (off + size).min(b.len());
            chunks.push_back(b.slice(off..end));
            off = end;
        }
        SimBody {
            chunks,
            exact: None,
            abort: false,
            pause: None,
            done: None,
            drip: None,
            generate: 0,
            filler: Bytes::new(),
            tail: None,
        }
    }

    /// `{"kind":"PodList","items":[],"padding":"xxx…"}` of exactly `bytes` bytes (at least
    /// the JSON around the padding).
    fn huge(bytes: u64, declare_length: bool) -> SimBody {
        let head = Bytes::from_static(b"{\"kind\":\"PodList\",\"items\":[],\"padding\":\"");
        let tail = Bytes::from_static(b"\"}");
        let fixed = (head.len() + tail.len()) as u64;
        let mut body = SimBody::chunked(head, CHUNK);
        body.generate = bytes.saturating_sub(fixed);
        body.filler = Bytes::from(vec![b'x'; CHUNK]);
        body.tail = Some(tail);
        body.exact = declare_length.then_some(bytes.max(fixed));
        body
    }

    fn reset_mid_body(b: Bytes) -> SimBody {
        SimBody {
            exact: Some(b.len() as u64),
            chunks: VecDeque::from([b.slice(..b.len() / 2)]),
            abort: true,
            // Give the half body time to reach the client before the RST discards
            // anything still queued.
            pause: Some(Box::pin(tokio::time::sleep(Duration::from_millis(50)))),
            done: None,
            drip: None,
            generate: 0,
            filler: Bytes::new(),
            tail: None,
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.chunks.is_empty() && self.generate > 0 {
            let n = self.generate.min(self.filler.len() as u64) as usize;
            self.generate -= n as u64;
            let c = self.filler.slice(..n);
            self.chunks.push_back(c);
        }
        if self.chunks.is_empty()
            && let Some(t) = self.tail.take()
        {
            self.chunks.push_back(t);
        }
        if let Some(every) = self.drip
            && !self.chunks.is_empty()
        {
            let p = self
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        if let Some(c) = self.chunks.pop_front() {
            // hyper stops polling once Content-Length bytes were handed over, so the
            // serve time is taken when the last chunk leaves.
            if self.chunks.is_empty()
                && !self.abort
                && self.generate == 0
                && self.tail.is_none()
                && let Some((start, shared)) = self.done.take()
            {
                shared.lock().serving.push(start.elapsed());
            }
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        if !self.abort {
            return Poll::Ready(None);
        }
        if let Some(p) = self.pause.as_mut() {
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "kubelet-sim: injected reset mid-body",
        ))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && !self.abort && self.generate == 0 && self.tail.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A running simulator. Stops (and drops every connection) when dropped.
pub struct KubeletSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeletSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for KubeletSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletSim")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl KubeletSim {
    pub fn builder() -> KubeletSimBuilder {
        KubeletSimBuilder::default()
    }

    /// Stop listening and drop every connection, and wait until that is done (dropping
    /// the handle does the same without waiting).
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://127.0.0.1:<port>/pods` (or `http://` in read-only mode; `[::1]` when
    /// bound to IPv6).
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls { "https" } else { "http" };
        format!("{scheme}://{}/pods", self.addr)
    }

    /// The CA that issued the current serving certificate.
    pub fn ca(&self) -> Arc<TestCa> {
        self.shared
            .ca
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// PEM of [`Self::ca`].
    pub fn ca_pem(&self) -> String {
        self.ca().cert_pem().to_owned()
    }

    /// Serve a new certificate from `ca` to connections accepted from now on
    /// (established connections keep theirs), as when a kubelet's serving certificate
    /// and its CA are replaced.
    pub fn rotate_server_cert(
        &self,
        ca: Arc<TestCa>,
        sans: &[&str],
        validity: Validity,
    ) -> io::Result<()> {
        if !self.shared.tls {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "plain HTTP simulator has no certificate",
            ));
        }
        let acceptor = tls_acceptor(&ca, sans, validity, self.shared.client_ca_pem.as_deref())?;
        *self
            .shared
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(acceptor);
        *self.shared.ca.lock().unwrap_or_else(|e| e.into_inner()) = ca;
        Ok(())
    }

    /// Write the CA to `<dir>/kubelet-ca.pem` and return its path.
    pub fn write_ca(&self, dir: &Path) -> io::Result<PathBuf> {
        let path = dir.join("kubelet-ca.pem");
        std::fs::write(&path, self.ca_pem())?;
        Ok(path)
    }

    /// `/pods` (and other) requests received, including rejected ones.
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connection_count(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (e.g. the client rejected the certificate).
    pub fn handshake_failures(&self) -> u64 {
        self.shared.handshake_failures.load(Ordering::SeqCst)
    }

    /// Server-side time from a `/pods` request's arrival until the last body chunk
    /// (≤ 64 KiB) was handed to hyper: everything the server does, including TLS
    /// encryption and socket writes of all but that last chunk.
    pub fn serve_times(&self) -> Vec<Duration> {
        self.shared.lock().serving.clone()
    }

    /// Server-side handling time of each answered `/pods` request (auth, state, body
    /// rendering, injected delay; not the transfer).
    pub fn handling_times(&self) -> Vec<Duration> {
        self.shared.lock().handling.clone()
    }

    /// DER of the client certificate of each TLS connection that presented one, in order.
    pub fn client_certs_seen(&self) -> Vec<Vec<u8>> {
        self.shared.lock().client_certs.clone()
    }

    /// The body currently served.
    pub fn current_body(&self) -> Bytes {
        self.shared.lock().body()
    }

    pub fn set_pods(&self, pods: Vec<Value>) {
        self.shared.lock().apply(Mutation::ReplacePods(pods));
    }

    pub fn set_body(&self, body: impl Into<Bytes>) {
        let mut st = self.shared.lock();
        st.source = Source::Raw(body.into());
        st.rendered = None;
    }

    pub fn delete_pod(&self, pod_uid: &str) {
        self.shared.lock().apply(Mutation::DeletePod {
            pod_uid: pod_uid.to_owned(),
        });
    }

    /// Apply `m` from request `after_requests + 1` on (counting all requests so far,
    /// i.e. relative to [`Self::request_count`] at the time of the call).
    pub fn schedule(&self, after_requests: u64, m: Mutation) {
        let base = self.request_count();
        self.shared
            .lock()
            .scheduled
            .push((base + after_requests, m));
    }

    /// A container with this ID appears in the pod's status after `after_requests`
    /// more requests (the kubelet's status lags container start).
    pub fn add_container_status_after(
        &self,
        after_requests: u64,
        pod_uid: &str,
        kind: ContainerKind,
        name: &str,
        image: &str,
        container_id: &str,
    ) {
        let status = serde_json::json!({
            "name": name, "image": image, "imageID": late_status_image_id(image),
            "containerID": container_id, "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": "2026-11-27T10:00:04Z"}}
        });
        self.schedule(
            after_requests,
            Mutation::AddContainerStatus {
                pod_uid: pod_uid.to_owned(),
                kind,
                status,
            },
        );
    }

    /// A fault for every answer from now on (`None` clears it).
    pub fn set_fault(&self, f: Option<Fault>) {
        self.shared.lock().fault = f;
    }

    /// A fault for the next answer only (queued, before any persistent fault).
    pub fn fault_next(&self, f: Fault) {
        self.shared.lock().next_faults.push_back(f);
    }

    /// Replace the accepted bearer tokens.
    pub fn set_tokens(&self, tokens: &[&str]) {
        self.shared.lock().tokens = tokens.iter().map(|t| (*t).to_owned()).collect();
    }

    pub fn set_anonymous(&self, m: AnonymousMode) {
        self.shared.lock().anonymous = m;
    }

    pub fn set_forbid_authenticated(&self, on: bool) {
        self.shared.lock().forbid_authenticated = on;
    }

    /// Answer connections accepted from now on with plaintext HTTP instead of a TLS server
    /// hello, so every TLS handshake fails (counted in [`Self::handshake_failures`]).
    pub fn set_break_tls(&self, on: bool) {
        self.shared.break_tls.store(on, Ordering::SeqCst);
    }
}

/// The `imageID` of a status added by [`KubeletSim::add_container_status_after`].
pub fn late_status_image_id(image: &str) -> String {
    format!("{image}@sha256:{}", hex64(7))
}
