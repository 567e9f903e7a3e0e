//! One `GET /pods` against the kubelet, with credential reloading.
//!
//! The client owns a hyper connection pool. Credentials follow SPIRE's semantics: they
//! are re-read lazily, at the start of a fetch, once `reload_interval` has passed since
//! the last successful load. If only the token changed the pool is kept (a bearer token
//! is a per-request header); a changed CA bundle, certificate or key builds a new TLS
//! configuration and so a new pool.
//!
//! A reload that fails (file gone, unreadable, not PEM, key not matching the
//! certificate) fails that fetch with an error naming the file, and **drops** the
//! previously loaded credentials and pool: nothing keeps talking to the kubelet with
//! material the operator has removed or broken. The next fetch tries to load again
//! straight away (no waiting for another `reload_interval`), so a fixed file is picked
//! up at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HeaderValue, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::tls::{self, ClientCertFiles, TlsMaterial, Verification};
use crate::boundedfile;
use crate::config::{
    DEFAULT_KUBELET_CA_PATH, DEFAULT_KUBELET_SECURE_PORT, DEFAULT_RELOAD_INTERVAL,
    DEFAULT_TOKEN_PATH,
};
use crate::status::{Code, Status};

/// Per-request timeout (SPIRE's `kubeletRequestTimeout`), not tied to the caller.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `/pods` answer accepted by default: [`boundedfile::POD_LIST`]'s cap (64 MiB; the
/// reasoning is there), so the replay CLI accepts exactly what the agent would.
pub const DEFAULT_MAX_BODY_BYTES: usize = boundedfile::POD_LIST.max_bytes as usize;

/// How much of a non-200 body goes into the error message.
const ERROR_BODY_PREVIEW: usize = 1024;

/// Which kubelet port to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `kubelet_read_only_port`: plain HTTP to `http://127.0.0.1:<port>/pods`; no TLS and
    /// no credentials (CA, auth and node name are ignored).
    ReadOnly { port: u16 },
    /// `kubelet_secure_port`: `https://<host>:<port>/pods`, where `host` is the node name,
    /// or `127.0.0.1` when `None` or empty. IPv6 literals are accepted with or without
    /// brackets.
    Secure { port: u16, host: Option<String> },
}

/// How the client authenticates to the secure port (SPIRE precedence: anonymous, then
/// certificate + key, then token; the config module picks one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `use_anonymous_authentication`: no credentials.
    Anonymous,
    /// `token_path`: `Authorization: Bearer <file contents, whitespace-trimmed>`.
    Token { path: PathBuf },
    /// `certificate_path` + `private_key_path`: TLS client certificate (PEM chain, PEM key).
    ClientCert {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
}

/// Everything the client needs, filled from the validated plugin configuration.
/// Holds paths only, never secrets, so `Debug` is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletSettings {
    pub endpoint: Endpoint,
    /// `kubelet_ca_path`: PEM bundle used to verify the kubelet (unused when
    /// `skip_verification` or with the read-only port).
    pub ca_path: PathBuf,
    /// `skip_kubelet_verification`: accept any server certificate. Dangerous: anyone able
    /// to answer on the kubelet's address can then choose the attested selectors.
    pub skip_verification: bool,
    pub auth: Auth,
    /// How often CA, token, certificate and key are re-read (lazily, at a fetch).
    pub reload_interval: Duration,
    /// Bound on one whole request: connect, TLS, headers and body.
    pub request_timeout: Duration,
    /// Bound on the body size; see [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
}

impl KubeletSettings {
    /// Read-only port on `127.0.0.1`, other fields at their defaults.
    pub fn read_only(port: u16) -> Self {
        KubeletSettings {
            endpoint: Endpoint::ReadOnly { port },
            ..Self::secure(DEFAULT_KUBELET_SECURE_PORT, None)
        }
    }

    /// Secure port with SPIRE's defaults: verify against [`DEFAULT_KUBELET_CA_PATH`],
    /// authenticate with [`DEFAULT_TOKEN_PATH`].
    pub fn secure(port: u16, node_name: Option<String>) -> Self {
        KubeletSettings {
            endpoint: Endpoint::Secure {
                port,
                host: node_name,
            },
            ca_path: PathBuf::from(DEFAULT_KUBELET_CA_PATH),
            skip_verification: false,
            auth: Auth::Token {
                path: PathBuf::from(DEFAULT_TOKEN_PATH),
            },
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Errors of [`KubeletClient`]. Messages name the file or URL involved and never contain
/// token or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    #[error("invalid kubelet URL {url:?}: {reason}; check the node name and port")]
    InvalidUrl { url: String, reason: String },
    #[error("unable to load kubelet CA from {path}: {source}; check kubelet_ca_path")]
    LoadCa {
        path: PathBuf,
        source: boundedfile::ReadError,
    },
    #[error(
        "unable to parse kubelet CA from {path}: {reason}; the file must hold PEM certificates"
    )]
    ParseCa { path: PathBuf, reason: String },
    #[error("unable to load token from {path}: {source}; check token_path")]
    LoadToken {
        path: PathBuf,
        source: boundedfile::ReadError,
    },
    #[error("token file {path} {problem}; check token_path")]
    InvalidToken {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("unable to load certificate from {path}: {source}; check certificate_path")]
    LoadCertificate {
        path: PathBuf,
        source: boundedfile::ReadError,
    },
    #[error(
        "unable to parse certificate from {path}: {reason}; the file must hold a PEM certificate chain"
    )]
    ParseCertificate { path: PathBuf, reason: String },
    #[error("unable to load private key from {path}: {source}; check private_key_path")]
    LoadKey {
        path: PathBuf,
        source: boundedfile::ReadError,
    },
    #[error(
        "unable to parse private key from {path}: {reason}; the file must hold one PEM private key"
    )]
    ParseKey { path: PathBuf, reason: String },
    #[error(
        "unable to load keypair ({cert_path}, {key_path}): {reason}; the key must belong to the certificate"
    )]
    KeyPair {
        cert_path: PathBuf,
        key_path: PathBuf,
        reason: String,
    },
    #[error("unable to build the kubelet TLS configuration: {reason}")]
    Tls { reason: String },
    #[error("kubelet request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("kubelet request to {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("reading the kubelet response from {url} failed: {reason}")]
    Body { url: String, reason: String },
    #[error("kubelet response exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unexpected status code on pods response: {code} {body}")]
    Status { code: u16, body: String },
}

impl KubeletError {
    /// The HTTP status of a non-200 answer, if that is what this is.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            KubeletError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<KubeletError> for Status {
    /// A failed fetch is `Unavailable` (SPIRE reports the last kubelet error that way).
    /// Errors from [`KubeletClient::new`] are configuration errors: report those as
    /// `InvalidArgument` yourself, as SPIRE's `Configure` does.
    fn from(e: KubeletError) -> Status {
        Status::new(Code::Unavailable, e.to_string())
    }
}

/// A bearer token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

type Body = Empty<Bytes>;

#[derive(Clone)]
enum Transport {
    Plain(Client<HttpConnector, Body>),
    Tls(Client<HttpsConnector<HttpConnector>, Body>),
}

/// The credentials and pool of one load.
struct Loaded {
    at: Instant,
    /// Raw CA/cert/key bytes, to tell whether the TLS configuration must be rebuilt.
    /// Not `Debug` (holds the private key).
    tls_fingerprint: Vec<u8>,
    token: Option<Token>,
    transport: Transport,
}

/// Client for the kubelet `/pods` endpoint. Cheap to share behind an `Arc`; concurrent
/// fetches are allowed (they share the pool), though [`super::PodListFetcher`] makes one
/// at a time.
pub struct KubeletClient {
    settings: KubeletSettings,
    uri: Uri,
    url: String,
    loaded: tokio::sync::Mutex<Option<Loaded>>,
}

impl fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Settings hold paths only; the loaded token and key bytes are left out.
        f.debug_struct("KubeletClient")
            .field("url", &self.url)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// Build the client and load its credentials now, so configuration mistakes
    /// (missing CA, unreadable key, ...) are reported at configure time.
    pub fn new(settings: KubeletSettings) -> Result<Self, KubeletError> {
        let url = pods_url(&settings.endpoint);
        let uri: Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| KubeletError::InvalidUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        let first = load(&settings, None)?;
        Ok(KubeletClient {
            settings,
            uri,
            url,
            loaded: tokio::sync::Mutex::new(Some(first)),
        })
    }

    /// The URL fetched, e.g. `https://127.0.0.1:10250/pods`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn settings(&self) -> &KubeletSettings {
        &self.settings
    }

    /// `GET /pods`: the raw body of a 200 answer.
    pub async fn fetch_pods(&self) -> Result<Bytes, KubeletError> {
        let (transport, token) = self.current().await?;
        let timeout = self.settings.request_timeout;
        match tokio::time::timeout(timeout, self.request(transport, token)).await {
            Ok(result) => result,
            Err(_) => Err(KubeletError::Timeout {
                url: self.url.clone(),
                timeout,
            }),
        }
    }

    /// The transport and token to use now, reloading them first if due.
    async fn current(&self) -> Result<(Transport, Option<Token>), KubeletError> {
        let mut guard = self.loaded.lock().await;
        let due = match guard.as_ref() {
            None => true,
            Some(l) => {
                // Read-only port: nothing on disk to reload.
                !matches!(self.settings.endpoint, Endpoint::ReadOnly { .. })
                    && l.at.elapsed() >= self.settings.reload_interval
            }
        };
        if due {
            // Take the old load out first: if the reload fails, nothing stale remains.
            let previous = guard.take();
            *guard = Some(load(&self.settings, previous)?);
        }
        match guard.as_ref() {
            Some(l) => Ok((l.transport.clone(), l.token.clone())),
            None => Err(KubeletError::Tls {
                reason: "kubelet credentials are not loaded".into(),
            }),
        }
    }

    async fn request(
        &self,
        transport: Transport,
        token: Option<Token>,
    ) -> Result<Bytes, KubeletError> {
        let mut builder = Request::get(self.uri.clone())
            .header(ACCEPT, "application/json")
            // Lets kubelet operators tell the attestor's polling apart in their logs.
            .header(USER_AGENT, concat!("attestor/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = token {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.0)).map_err(|_| {
                    KubeletError::InvalidToken {
                        path: self.token_path().to_owned(),
                        problem: "holds characters not allowed in an HTTP header",
                    }
                })?;
            // Keeps the value out of hyper's header Debug output and HPACK tables.
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        let request = builder
            .body(Empty::new())
            .map_err(|e| KubeletError::Request {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let response = match transport {
            Transport::Plain(c) => c.request(request).await,
            Transport::Tls(c) => c.request(request).await,
        }
        .map_err(|e| KubeletError::Request {
            url: self.url.clone(),
            reason: error_chain(&e),
        })?;

        let status = response.status();
        if status != StatusCode::OK {
            let preview = read_body(
                &self.url,
                response.into_body(),
                ERROR_BODY_PREVIEW,
                None,
                false,
            )
            .await
            .unwrap_or_default();
            return Err(KubeletError::Status {
                code: status.as_u16(),
                body: String::from_utf8_lossy(&preview).trim().to_owned(),
            });
        }

        let limit = self.settings.max_body_bytes;
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(KubeletError::TooLarge { limit });
        }
        read_body(&self.url, response.into_body(), limit, declared, true).await
    }

    fn token_path(&self) -> &Path {
        match &self.settings.auth {
            Auth::Token { path } => path,
            _ => Path::new(""),
        }
    }
}

/// Read at most `limit` bytes. With `strict`, more than `limit` is [`KubeletError::TooLarge`];
/// without, the body is cut at `limit` (error previews).
///
/// Memory: with a declared length (≤ `limit`) the buffer is allocated once at that size.
/// Without one (chunked answers) it grows geometrically but never beyond `limit`, so the
/// most held at once is one buffer of at most `limit` bytes plus, during a growth step, the
/// previous one (at most `limit` again): a hostile answer costs at most 2 × `limit`.
async fn read_body(
    url: &str,
    mut body: hyper::body::Incoming,
    limit: usize,
    declared: Option<u64>,
    strict: bool,
) -> Result<Bytes, KubeletError> {
    let initial = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
    let mut buf: Vec<u8> = Vec::with_capacity(initial);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| KubeletError::Body {
            url: url.to_owned(),
            reason: error_chain(&e),
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limit {
            if strict {
                return Err(KubeletError::TooLarge { limit });
            }
            let room = limit - buf.len();
            buf.extend_from_slice(&data[..room]);
            break;
        }
        let needed = buf.len() + data.len();
        if needed > buf.capacity() {
            // Double, but never past the limit (Vec's own growth could overshoot it).
            let target = needed.max(buf.capacity().saturating_mul(2)).min(limit);
            buf.reserve_exact(target - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok(Bytes::from(buf))
}

/// `Display` of an error and all its sources, `: `-separated (hyper's top-level messages
/// such as "client error (Connect)" say little on their own).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = describe(err);
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

/// One error's text. rustls prints a custom certificate error with `Debug`
/// (`Other(OtherError(..))`); ours carry a sentence meant for the user, so show that.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    // Look through io::Error wrappers (tokio-rustls and hyper-rustls each add one).
    let mut cur: &(dyn std::error::Error + 'static) = err;
    for _ in 0..4 {
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            cur.downcast_ref::<rustls::Error>()
        {
            return format!("invalid peer certificate: {}", other.0);
        }
        match cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => cur = inner,
            None => break,
        }
    }
    err.to_string()
}

/// The `/pods` URL for an endpoint (`net.JoinHostPort` semantics for IPv6).
fn pods_url(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::ReadOnly { port } => format!("http://127.0.0.1:{port}/pods"),
        Endpoint::Secure { port, host } => {
            let host = host
                .as_deref()
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .unwrap_or("127.0.0.1");
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if bare.contains(':') {
                format!("https://[{bare}]:{port}/pods")
            } else {
                format!("https://{host}:{port}/pods")
            }
        }
    }
}

fn read_file<E>(
    path: &Path,
    wrap: impl FnOnce(PathBuf, boundedfile::ReadError) -> E,
) -> Result<Vec<u8>, E> {
    // Small files read once a reload interval: a blocking read is cheaper than a
    // round trip to the blocking pool. Bounded: `token_path = "/dev/zero"` or a FIFO named
    // by mistake is refused instead of eating all memory or blocking Configure forever.
    boundedfile::read(path, boundedfile::CREDENTIAL).map_err(|e| wrap(path.to_owned(), e))
}

/// Load credentials. `previous` is reused (its pool kept) when the TLS material is
/// byte-for-byte the same.
fn load(settings: &KubeletSettings, previous: Option<Loaded>) -> Result<Loaded, KubeletError> {
    let host_given = match &settings.endpoint {
        Endpoint::ReadOnly { .. } => {
            let mut connector = HttpConnector::new();
            connector.enforce_http(true);
            return Ok(Loaded {
                at: Instant::now(),
                tls_fingerprint: Vec::new(),
                token: None,
                transport: Transport::Plain(Client::builder(TokioExecutor::new()).build(connector)),
            });
        }
        Endpoint::Secure { host, .. } => host.as_deref().is_some_and(|h| !h.trim().is_empty()),
    };

    let token = match &settings.auth {
        Auth::Token { path } => {
            let raw = read_file(path, |path, source| KubeletError::LoadToken {
                path,
                source,
            })?;
            let text = String::from_utf8(raw).map_err(|_| KubeletError::InvalidToken {
                path: path.clone(),
                problem: "is not UTF-8",
            })?;
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err(KubeletError::InvalidToken {
                    path: path.clone(),
                    problem: "is empty",
                });
            }
            Some(Token(trimmed.to_owned()))
        }
        Auth::Anonymous | Auth::ClientCert { .. } => None,
    };

    let ca = if settings.skip_verification {
        None
    } else {
        let pem = read_file(&settings.ca_path, |path, source| KubeletError::LoadCa {
            path,
            source,
        })?;
        Some((settings.ca_path.clone(), pem))
    };
    let client_cert = match &settings.auth {
        Auth::ClientCert {
            cert_path,
            key_path,
        } => Some(ClientCertFiles {
            cert_path: cert_path.clone(),
            cert_pem: read_file(cert_path, |path, source| KubeletError::LoadCertificate {
                path,
                source,
            })?,
            key_path: key_path.clone(),
            key_pem: read_file(key_path, |path, source| KubeletError::LoadKey {
                path,
                source,
            })?,
        }),
        _ => None,
    };
    let material = TlsMaterial { ca, client_cert };
    let fingerprint = fingerprint(&material);

    if let Some(prev) = previous
        && prev.tls_fingerprint == fingerprint
    {
        return Ok(Loaded {
            at: Instant::now(),
            tls_fingerprint: fingerprint,
            token,
            transport: prev.transport,
        });
    }

    let verification = if settings.skip_verification {
        Verification::Skip
    } else if host_given {
        Verification::NodeName
    } else {
        Verification::Loopback {
            hostname: tls::local_hostname(),
        }
    };
    let config = tls::client_config(&material, verification)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Ok(Loaded {
        at: Instant::now(),
        tls_fingerprint: fingerprint,
        token,
        transport: Transport::Tls(Client::builder(TokioExecutor::new()).build(connector)),
    })
}

/// Length-prefixed concatenation of the TLS files (exact comparison, no hashing needed).
fn fingerprint(m: &TlsMaterial) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match &m.ca {
        Some((_, pem)) => push(pem),
        None => push(b"<skip>"),
    }
    if let Some(c) = &m.client_cert {
        push(&c.cert_pem);
        push(&c.key_pem);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_join_host_port() {
        assert_eq!(
            pods_url(&Endpoint::ReadOnly { port: 10255 }),
            "http://127.0.0.1:10255/pods"
        );
        assert_eq!(
            pods_url(&Endpoint::Secure {
                port: 10250,
                host: None
            }),
            "https://127.0.0.1:10250/pods"
        );
        assert_eq!(
            pods_url(&Endpoint::Secure {
                port: 10250,
                host: Some(String::new())
            }),
            "https://127.0.0.1:10250/pods"
        );
        assert_eq!(
            pods_url(&Endpoint::Secure {
                port: 1,
                host: Some("node-a".into())
            }),
            "https://node-a:1/pods"
        );
        assert_eq!(
            pods_url(&Endpoint::Secure {
                port: 1,
                host: Some("::1".into())
            }),
            "https://[::1]:1/pods"
        );
        assert_eq!(
            pods_url(&Endpoint::Secure {
                port: 1,
                host: Some("[fe80::1]".into())
            }),
            "https://[fe80::1]:1/pods"
        );
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token("s3cr3t".into());
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn missing_token_file_is_named() {
        let mut s = KubeletSettings::secure(1, None);
        s.skip_verification = true;
        s.auth = Auth::Token {
            path: "/nonexistent/attestor-token".into(),
        };
        let err = KubeletClient::new(s).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("/nonexistent/attestor-token"), "{err}");
        assert!(err.contains("check token_path"), "{err}");
    }

    fn token_error(path: &Path) -> String {
        let mut s = KubeletSettings::secure(1, None);
        s.skip_verification = true;
        s.auth = Auth::Token { path: path.into() };
        KubeletClient::new(s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// Found while writing the plugin fuzz target: `token_path = "/dev/zero"` read forever
    /// (all memory), a FIFO blocked Configure forever. Both are refused now.
    #[test]
    fn credential_files_must_be_small_regular_files() {
        let err = token_error(Path::new("/dev/zero"));
        assert_eq!(
            err,
            "unable to load token from /dev/zero: not a regular file (a character device); check token_path"
        );

        let dir = std::env::temp_dir().join(format!("attestor-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = token_error(&fifo);
        assert!(err.contains("not a regular file (a FIFO)"), "{err}");

        let err = token_error(&dir);
        assert!(err.contains("not a regular file (a directory)"), "{err}");

        let big = dir.join("big");
        let cap = boundedfile::CREDENTIAL.max_bytes as usize;
        std::fs::write(&big, vec![b'a'; cap + 1]).unwrap();
        let err = token_error(&big);
        assert!(
            err.contains("is 4194305 bytes, more than the 4 MiB limit for a credential file; check token_path"),
            "{err}"
        );
        std::fs::write(&big, vec![b'a'; cap]).unwrap();
        assert_eq!(token_error(&big), "", "a 4 MiB token is accepted");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
