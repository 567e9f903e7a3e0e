//! One HTTP exchange with the API server: TLS (re-read when the files change), the bearer
//! token (cached one minute, re-read at once on a 401), client-go's retry rules, timeouts
//! and bounded bodies. Knows nothing of namespaces or caches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::time::Instant;

use super::error::{self, ApiError, Target};
use super::settings::{self, ApiSettings, Material, TokenSource, Trust};
use crate::boundedfile;
use crate::kubelet::tls::{SkipVerification, pem_certificates};

/// Bound on TCP connect (client-go's dialer: 30 s; ours is shorter, a local API server
/// that does not accept in 10 s is down).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one attempt of a request: connect, TLS, headers and the whole body.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The token file is read at most once a minute (client-go `NewCachedFileTokenSource`),
/// and the TLS files are re-read at least once a minute (and whenever their mtime or size
/// changes).
pub(super) const CREDENTIAL_RELOAD: Duration = Duration::from_secs(60);
/// client-go's `maxRetries` for answers carrying `Retry-After`.
pub(super) const MAX_RETRIES: u32 = 10;
/// Longest single wait on a `Retry-After` (a server asking for minutes must not hold an
/// attestation that long; the caller's poll loop takes over after the retries).
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// How much of an error answer is read (a `Status` is well under 1 KiB).
const ERROR_PREVIEW: usize = 64 << 10;
/// Where the system trust bundle is when a kubeconfig names no CA (Debian/Ubuntu/Alpine,
/// RHEL/Fedora, others).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A bound on an answer's size, and what it is called in the error.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limit {
    pub bytes: usize,
    pub what: &'static str,
}

/// A single object (a namespace's metadata, a pod, a review): the API server's own
/// request limit is 3 MiB, so no object is larger.
pub(super) const OBJECT_LIMIT: Limit = Limit {
    bytes: 4 << 20,
    what: "a single object",
};
/// One page of a list (`limit=500`): 500 objects' metadata is well under 1 MiB, 500 full
/// pods a few MiB.
pub(super) const PAGE_LIMIT: Limit = Limit {
    bytes: 32 << 20,
    what: "a list page",
};
/// One watch event line: one object.
pub(super) const WATCH_LINE_LIMIT: Limit = Limit {
    bytes: 4 << 20,
    what: "a watch event",
};
/// Discovery documents (`/apis`, `/apis/{g}/{v}`): tens of KiB in big clusters.
pub(super) const DISCOVERY_LIMIT: Limit = Limit {
    bytes: 4 << 20,
    what: "a discovery document",
};

type Body = Full<Bytes>;
type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// One request to make (retries are [`Transport::call`]'s business).
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub method: Method,
    /// Path and query, e.g. `/api/v1/namespaces/x`.
    pub path: String,
    pub accept: &'static str,
    pub body: Option<Bytes>,
    pub limit: Limit,
    /// For client-go's generic error texts.
    pub target: Target,
}

impl Call {
    pub fn get(path: String, accept: &'static str, limit: Limit, target: Target) -> Call {
        Call {
            method: Method::GET,
            path,
            accept,
            body: None,
            limit,
            target,
        }
    }
}

/// `(mtime, size)` of a file, to see that it changed without reading it.
type Stamp = Option<(Option<SystemTime>, u64)>;

struct TlsState {
    client: HttpClient,
    /// The CA, certificate and key bytes the client was built from. Holds key bytes: never
    /// logged.
    fingerprint: Vec<u8>,
    stamps: Vec<Stamp>,
    checked_at: Instant,
}

/// The API server's HTTP client. Shared (`Arc`) by every request and informer.
pub(super) struct Transport {
    settings: ApiSettings,
    tls: Mutex<TlsState>,
    /// The token file's contents and when they were read.
    token: Mutex<Option<(String, Instant)>>,
}

/// A poisoned lock only means another request panicked mid-update of plain data: go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How one attempt ended.
enum Attempt {
    Ok(Bytes),
    /// An error answer, to be retried or turned into an [`ApiError`].
    Answer {
        code: u16,
        body: Bytes,
        retry_after: Option<u64>,
    },
    /// No (complete) answer. `reset`: the connection was reset or closed early, which
    /// client-go retries once for GET.
    Unreachable {
        cause: String,
        reset: bool,
    },
    Failed(ApiError),
}

impl Transport {
    /// Reads the TLS material now, so a missing CA or key is a configuration error.
    pub fn new(settings: ApiSettings) -> Result<Transport, ApiError> {
        let files = tls_files(&settings);
        let stamps = files.iter().map(|p| stamp(p)).collect();
        let (client, fingerprint) = build_client(&settings)?;
        Ok(Transport {
            settings,
            tls: Mutex::new(TlsState {
                client,
                fingerprint,
                stamps,
                checked_at: Instant::now(),
            }),
            token: Mutex::new(None),
        })
    }

    pub fn server(&self) -> &str {
        &self.settings.server
    }

    /// The client to use now: rebuilt when a TLS file changed (mtime or size) or once a
    /// minute has passed and the bytes differ. A file that cannot be read fails the request
    /// (naming it) rather than going on with material the operator has replaced.
    fn client(&self) -> Result<HttpClient, ApiError> {
        let files = tls_files(&self.settings);
        let mut state = lock(&self.tls);
        let stamps: Vec<Stamp> = files.iter().map(|p| stamp(p)).collect();
        if stamps != state.stamps || state.checked_at.elapsed() >= CREDENTIAL_RELOAD {
            let fingerprint = read_tls_material(&self.settings)?.fingerprint();
            if fingerprint != state.fingerprint {
                let (client, fingerprint) = build_client(&self.settings)?;
                log::info!(
                    "API server TLS material changed ({}); new connections use it",
                    self.settings.origin
                );
                state.client = client;
                state.fingerprint = fingerprint;
            }
            state.stamps = stamps;
            state.checked_at = Instant::now();
        }
        Ok(state.client.clone())
    }

    /// The bearer token: inline, or the file's contents cached [`CREDENTIAL_RELOAD`];
    /// `fresh` re-reads the file now (after a 401). A re-read that fails while a token is
    /// cached keeps the cached one, as client-go's cached token source does.
    fn token(&self, fresh: bool) -> Result<Option<String>, ApiError> {
        let path = match &self.settings.token {
            None => return Ok(None),
            Some(TokenSource::Inline(t)) => return Ok(Some(t.clone())),
            Some(TokenSource::File(p)) => p,
        };
        let mut cached = lock(&self.token);
        if let Some((token, at)) = cached.as_ref()
            && !fresh
            && at.elapsed() < CREDENTIAL_RELOAD
        {
            return Ok(Some(token.clone()));
        }
        match settings::read_token(path) {
            Ok(token) => {
                *cached = Some((token.clone(), Instant::now()));
                Ok(Some(token))
            }
            Err(e) => match cached.as_ref() {
                Some((token, _)) => {
                    log::warn!("unable to re-read the API server token, using the last one: {e}");
                    Ok(Some(token.clone()))
                }
                None => Err(e),
            },
        }
    }

    fn token_from_file(&self) -> bool {
        matches!(self.settings.token, Some(TokenSource::File(_)))
    }

    /// Makes the request with client-go's retries: 429/5xx answers that carry
    /// `Retry-After` are retried after that many seconds (at most [`MAX_RETRY_AFTER`]),
    /// up to [`MAX_RETRIES`] times; a GET whose connection was reset is retried once; a 401
    /// re-reads a token file and retries once. Each attempt is bounded by
    /// [`REQUEST_TIMEOUT`]; dropping the future cancels it.
    pub async fn call(&self, call: &Call) -> Result<Bytes, ApiError> {
        let url = format!("{}{}", self.settings.server, call.path);
        let method = go_method(&call.method);
        let (mut retries, mut reset_retried, mut auth_retried, mut fresh_token) =
            (0, false, false, false);
        loop {
            let client = self.client()?;
            let token = self.token(fresh_token)?;
            fresh_token = false;
            let attempt = tokio::time::timeout(
                REQUEST_TIMEOUT,
                attempt(&client, call, &url, token.as_deref()),
            )
            .await
            .unwrap_or_else(|_| Attempt::Unreachable {
                cause: error::timeout_cause(REQUEST_TIMEOUT),
                reset: false,
            });
            match attempt {
                Attempt::Ok(body) => return Ok(body),
                Attempt::Failed(e) => return Err(e),
                Attempt::Unreachable { cause, reset } => {
                    if reset && call.method == Method::GET && !reset_retried {
                        reset_retried = true;
                        log::debug!("{method} {url:?}: {cause}; retrying once");
                        continue;
                    }
                    return Err(ApiError::Transport { method, url, cause });
                }
                Attempt::Answer {
                    code,
                    body,
                    retry_after,
                } => {
                    if code == 401 && self.token_from_file() && !auth_retried {
                        // The token may have been rotated within the cache minute.
                        auth_retried = true;
                        fresh_token = true;
                        continue;
                    }
                    if let Some(seconds) = retry_after
                        && (code == 429 || code >= 500)
                        && retries < MAX_RETRIES
                    {
                        retries += 1;
                        let wait = Duration::from_secs(seconds).min(MAX_RETRY_AFTER);
                        log::debug!(
                            "{method} {url:?}: {code}, Retry-After {seconds}s; retry {retries}/{MAX_RETRIES} in {wait:?}"
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(error::from_response(code, &body, &call.target));
                }
            }
        }
    }

    /// Opens a streaming GET (a watch): the response headers within [`REQUEST_TIMEOUT`], a
    /// 401 retried once with a re-read token, no other retries (the informer backs off).
    pub async fn open_stream(
        &self,
        path: &str,
        accept: &'static str,
        target: &Target,
    ) -> Result<Incoming, ApiError> {
        let url = format!("{}{}", self.settings.server, path);
        let mut fresh_token = false;
        loop {
            let client = self.client()?;
            let token = self.token(fresh_token)?;
            let call = Call::get(path.to_owned(), accept, WATCH_LINE_LIMIT, target.clone());
            let sent = tokio::time::timeout(
                REQUEST_TIMEOUT,
                send(&client, &call, &url, token.as_deref()),
            )
            .await;
            let response = match sent {
                Err(_) => {
                    return Err(ApiError::Transport {
                        method: "Get",
                        url,
                        cause: error::timeout_cause(REQUEST_TIMEOUT),
                    });
                }
                Ok(Err(SendError { cause, .. })) => {
                    return Err(ApiError::Transport {
                        method: "Get",
                        url,
                        cause,
                    });
                }
                Ok(Ok(r)) => r,
            };
            let code = response.status().as_u16();
            if response.status().is_success() {
                return Ok(response.into_body());
            }
            if code == 401 && self.token_from_file() && !fresh_token {
                fresh_token = true;
                continue;
            }
            let body = read_body(response.into_body(), ERROR_PREVIEW, false)
                .await
                .unwrap_or_default();
            return Err(error::from_response(code, &body, target));
        }
    }

    /// The URL of a path, for error texts.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.settings.server, path)
    }
}

/// Why no answer came: the cause as text, and whether the connection was reset.
struct SendError {
    cause: String,
    reset: bool,
}

async fn send(
    client: &HttpClient,
    call: &Call,
    url: &str,
    token: Option<&str>,
) -> Result<Response<Incoming>, SendError> {
    let mut builder = Request::builder()
        .method(call.method.clone())
        .uri(url)
        .header(ACCEPT, call.accept)
        // Lets API server audit logs tell the attestor apart.
        .header(USER_AGENT, concat!("attestor/", env!("CARGO_PKG_VERSION")));
    if call.body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    if let Some(token) = token
        && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        // Keeps the value out of hyper's header Debug output.
        value.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, value);
    }
    let request = builder
        .body(Full::new(call.body.clone().unwrap_or_default()))
        .map_err(|e| SendError {
            cause: e.to_string(),
            reset: false,
        })?;
    client.request(request).await.map_err(|e| SendError {
        reset: is_reset(&e),
        cause: error_chain(&e),
    })
}

async fn attempt(client: &HttpClient, call: &Call, url: &str, token: Option<&str>) -> Attempt {
    let response = match send(client, call, url, token).await {
        Ok(r) => r,
        Err(SendError { cause, reset }) => return Attempt::Unreachable { cause, reset },
    };
    let status = response.status();
    if !status.is_success() {
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map(|s| s.max(0).unsigned_abs());
        let body = read_body(response.into_body(), ERROR_PREVIEW, false)
            .await
            .unwrap_or_default();
        return Attempt::Answer {
            code: status.as_u16(),
            body,
            retry_after,
        };
    }
    let too_large = || {
        Attempt::Failed(ApiError::TooLarge {
            method: go_method(&call.method),
            url: url.to_owned(),
            what: call.limit.what,
            limit_mib: call.limit.bytes >> 20,
        })
    };
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > call.limit.bytes as u64) {
        return too_large();
    }
    match read_body(response.into_body(), call.limit.bytes, true).await {
        Ok(body) => Attempt::Ok(body),
        Err(BodyError::TooLarge) => too_large(),
        Err(BodyError::Read { cause, reset }) => Attempt::Unreachable { cause, reset },
    }
}

pub(super) enum BodyError {
    TooLarge,
    Read { cause: String, reset: bool },
}

/// Reads at most `limit` bytes. `strict`: more is [`BodyError::TooLarge`]; otherwise the
/// body is cut there (error previews). The buffer grows with what arrives, never past
/// `limit`.
async fn read_body(mut body: Incoming, limit: usize, strict: bool) -> Result<Bytes, BodyError> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read {
            reset: is_reset(&e),
            cause: error_chain(&e),
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limit {
            if strict {
                return Err(BodyError::TooLarge);
            }
            let room = limit - buf.len();
            buf.extend_from_slice(&data[..room]);
            break;
        }
        buf.extend_from_slice(&data);
    }
    Ok(Bytes::from(buf))
}

/// Reads the next chunk of a streaming body (a watch), as data or end of stream.
pub(super) async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>, String> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| error_chain(&e))?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// Go's `*url.Error` op: `Get`, `Post`.
fn go_method(m: &Method) -> &'static str {
    match *m {
        Method::POST => "Post",
        Method::PUT => "Put",
        Method::DELETE => "Delete",
        _ => "Get",
    }
}

/// Connection reset or closed before the answer was complete (client-go's
/// `net.IsConnectionReset || net.IsProbableEOF`).
fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_closed())
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// An error and its sources, `: `-separated, each text once (hyper's top-level messages
/// such as "client error (Connect)" say little on their own).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = err.source();
    }
    out
}

/// The files whose change rebuilds the TLS client.
fn tls_files(settings: &ApiSettings) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Trust::Ca(Material::File(p)) = &settings.trust {
        files.push(p.clone());
    }
    if let Some((cert, key)) = &settings.client_cert {
        for m in [cert, key] {
            if let Material::File(p) = m {
                files.push(p.clone());
            }
        }
    }
    files
}

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// CA, certificate and key bytes, read from their files or taken inline. Holds key bytes:
/// no `Debug`.
struct TlsMaterial {
    ca: Option<(String, Vec<u8>)>,
    cert: Option<(String, Vec<u8>)>,
    key: Option<(String, Vec<u8>)>,
}

impl TlsMaterial {
    fn fingerprint(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [&self.ca, &self.cert, &self.key] {
            let bytes = part.as_ref().map_or(&[][..], |(_, b)| b.as_slice());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }
}

fn read_material(what: &'static str, m: &Material) -> Result<(String, Vec<u8>), ApiError> {
    match m {
        Material::Inline(b) => Ok((format!("inline {what}"), b.clone())),
        Material::File(p) => boundedfile::read(p, boundedfile::CREDENTIAL)
            .map(|b| (p.display().to_string(), b))
            .map_err(|e| ApiError::read_file(what, p, e)),
    }
}

fn read_tls_material(settings: &ApiSettings) -> Result<TlsMaterial, ApiError> {
    let ca = match &settings.trust {
        Trust::Ca(m) => Some(read_material("certificate authority", m)?),
        Trust::Insecure => None,
        Trust::System => {
            let found = SYSTEM_CA_BUNDLES.iter().map(Path::new).find(|p| p.exists());
            let Some(path) = found else {
                return Err(ApiError::Tls {
                    reason: format!(
                        "{} names no certificate-authority and no system CA bundle was found (looked for {}); set certificate-authority",
                        settings.origin,
                        SYSTEM_CA_BUNDLES.join(", ")
                    ),
                });
            };
            Some(read_material(
                "system CA bundle",
                &Material::File(path.to_owned()),
            )?)
        }
    };
    let (cert, key) = match &settings.client_cert {
        Some((c, k)) => (
            Some(read_material("client certificate", c)?),
            Some(read_material("client key", k)?),
        ),
        None => (None, None),
    };
    Ok(TlsMaterial { ca, cert, key })
}

/// Reads the TLS material and builds a pooled client over it.
fn build_client(settings: &ApiSettings) -> Result<(HttpClient, Vec<u8>), ApiError> {
    let material = read_tls_material(settings)?;
    let tls_error = |what: &str, source: &str, reason: String| ApiError::Tls {
        reason: format!("{what} {source}: {reason}"),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls {
            reason: e.to_string(),
        })?;
    let builder = match &material.ca {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerification(provider.clone()))),
        Some((source, pem)) => {
            let mut roots = RootCertStore::empty();
            let certs = pem_certificates(pem)
                .map_err(|r| tls_error("unable to parse certificate authority", source, r))?;
            let system = matches!(settings.trust, Trust::System);
            if system {
                // A system bundle may hold certificates webpki cannot use; skip those.
                roots.add_parsable_certificates(certs);
            } else {
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        tls_error("unable to use certificate authority", source, e.to_string())
                    })?;
                }
            }
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| {
                        tls_error("unable to use certificate authority", source, e.to_string())
                    })?;
            builder.with_webpki_verifier(verifier)
        }
    };
    let config = match (&material.cert, &material.key) {
        (Some((cert_source, cert_pem)), Some((key_source, key_pem))) => {
            let chain = pem_certificates(cert_pem)
                .map_err(|r| tls_error("unable to parse client certificate", cert_source, r))?;
            // The pem error names the section kind, never key bytes.
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| tls_error("unable to parse client key", key_source, e.to_string()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                tls_error(
                    "client key does not match the certificate",
                    cert_source,
                    e.to_string(),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // A silently dead peer is noticed by keepalive probes, not only by request timeouts.
    http.set_keepalive(Some(Duration::from_secs(30)));
    let mut builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    if let Some(name) = &settings.tls_server_name {
        let name = ServerName::try_from(name.clone()).map_err(|e| ApiError::Tls {
            reason: format!("tls-server-name {name:?}: {e}"),
        })?;
        builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
    }
    let connector = builder.enable_http1().wrap_connector(http);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    Ok((client, material.fingerprint()))
}
