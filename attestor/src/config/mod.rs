//! `plugin_data` → validated [`Config`], with SPIRE's keys, defaults and error texts
//! (study §1), plus this project's own `tracker` keys (documented in `CONFIG.md`).
//!
//! Two stages, as "parse, don't validate" asks:
//! 1. [`hcl`] turns the text (HCL v1 as the agent re-prints it, or JSON) into a raw value tree;
//! 2. [`Config::parse`] decodes the keys it knows into typed options, then validates them,
//!    collecting every problem. The first one becomes the `InvalidArgument` status, as in
//!    SPIRE (which keeps the rest as `Validate` notes; [`ConfigErrors`] keeps them too).
//!    SPIRE's checks come first, in the order of SPIRE v1.15.3's `buildConfig` (`k8s.go`):
//!    unknown keys per struct level (top, `experimental`, `api_server`, `cache`, `broker`,
//!    each broker entry; `pluginconf.ReportUnusedKeys`), the broker block
//!    (`buildBrokerConfig`), `disable_kubelet_client` (`validateDisableKubeletClientConfig`),
//!    the intervals, both ports; this project's own checks follow.
//!
//! The API-server features are accepted with SPIRE's rules: `enable_namespace_labels`,
//! `disable_kubelet_client`, `experimental.broker` (IDs read as go-spiffe reads them,
//! [`spiffe_id`]) and `experimental.api_server.cache.enabled`.
//! Keys SPIRE has but we do not implement are refused, never silently ignored:
//! `sigstore` and `use_new_container_locator = false`.
//!
//! Out of scope: reading the CA, token and key files (the kubelet client does that at
//! configure time and on reload; SPIRE's `Validate` does not read them either).

mod duration;
pub mod hcl;
pub mod spiffe_id;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::parse_go_duration;
use hcl::Value;
use spiffe_id::{SpiffeId, SpiffeIdError};

use crate::goquote::go_quote;
use crate::status::{Code, Status};

// SPIRE's defaults, the one table of them (study §1; `k8s.go` `defaultKubeletPort`,
// `defaultTokenPath`, `defaultNodeNameEnv`, `defaultMaxPollAttempts`,
// `defaultPollRetryInterval`, `defaultReloadInterval`; the CA path is the service account's).
// The kubelet client takes its defaults from here.
pub const DEFAULT_KUBELET_SECURE_PORT: u16 = 10250;
pub const DEFAULT_KUBELET_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const DEFAULT_NODE_NAME_ENV: &str = "MY_NODE_NAME";
pub const DEFAULT_MAX_POLL_ATTEMPTS: u64 = 60;
pub const DEFAULT_POLL_RETRY_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(60);
// Ours (CONFIG.md): the map size the kernel programs are built with, and what a
// configuration may ask for (the top is the kernel's PID_MAX_LIMIT).
pub const DEFAULT_TRACKER_MAX_PROCESSES: u32 = attestor_common::DEFAULT_MAX_PROCESSES;
pub const TRACKER_MAX_PROCESSES_RANGE: std::ops::RangeInclusive<i64> =
    1024..=attestor_common::MAX_PROCESSES_LIMIT as i64;

/// One configuration problem. Texts match SPIRE's where SPIRE has the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not HCL/JSON, or a key has a value of the wrong type.
    #[error("unable to decode configuration: {0}")]
    Decode(String),
    #[error("unknown configurations detected: {}", .0.join(","))]
    UnknownKeys(Vec<String>),
    /// A SPIRE key whose feature this attestor does not have yet.
    #[error("{key} is not supported yet: {hint}")]
    NotSupported {
        key: &'static str,
        hint: &'static str,
    },
    #[error("cannot use both the read-only and secure port")]
    BothPorts,
    #[error("disable_kubelet_client cannot be used with {0}")]
    DisableKubeletClientWith(&'static str),
    /// A broker whose `pod_reference_scope` is not `cluster` while `disable_kubelet_client`.
    #[error(
        "experimental.broker.brokers[{0}].pod_reference_scope must be \"cluster\" when disable_kubelet_client is true"
    )]
    DisableKubeletClientScope(String),
    #[error(
        "experimental.broker.access_policy: must be specified as one of [permissive, enforced]"
    )]
    BrokerAccessPolicyMissing,
    #[error("experimental.broker.access_policy: unsupported value {}; must be one of [permissive, enforced]", go_quote(.0))]
    BrokerAccessPolicyUnsupported(String),
    #[error("experimental.broker.brokers: at least one broker is required")]
    NoBrokers,
    /// Entry `{0}` (0-based, across all list and block forms) has no `id`.
    #[error("experimental.broker.brokers[{0}].id: must be specified")]
    BrokerIdMissing(usize),
    #[error("experimental.broker.brokers[{0}].id: duplicate broker id")]
    BrokerIdDuplicate(String),
    #[error("experimental.broker.brokers[{id}].id: {reason}")]
    BrokerIdInvalid { id: String, reason: SpiffeIdError },
    #[error("experimental.broker.brokers[{id}].pod_reference_scope: unsupported value {}; must be one of [agent_node, cluster]", go_quote(.value))]
    PodReferenceScopeUnsupported { id: String, value: String },
    #[error("unable to parse poll retry interval: {0}")]
    PollRetryInterval(String),
    #[error("unable to parse reload interval: {0}")]
    ReloadInterval(String),
    /// A value outside what the key allows (our keys, and port numbers).
    #[error("{key} {reason}")]
    InvalidValue { key: &'static str, reason: String },
}

/// Every problem found, in check order; the first is the one SPIRE would report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.first() {
            Some(first) => write!(f, "{first}"),
            None => write!(f, "invalid configuration"),
        }
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigErrors> for Status {
    fn from(e: ConfigErrors) -> Self {
        Status::new(Code::InvalidArgument, e.to_string())
    }
}

/// Which kubelet endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeletPort {
    /// Plain HTTP to `127.0.0.1:<port>` (node name ignored).
    ReadOnly(u16),
    /// HTTPS to `<node name or 127.0.0.1>:<port>`.
    Secure(u16),
}

/// How to authenticate to the kubelet's secure port (SPIRE's precedence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeletAuth {
    /// `use_anonymous_authentication`: wins over everything else.
    Anonymous,
    /// `certificate_path` + `private_key_path`: wins over the token.
    ClientCertificate { cert: PathBuf, key: PathBuf },
    /// Bearer token read (and whitespace-trimmed) from this file.
    Token(PathBuf),
}

/// How processes are mapped to cgroups: our key `tracker`, the tracker's start mode and the
/// CLI's `--tracker` (one vocabulary; [`TrackerMode::from_str`] reads all three spellings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrackerMode {
    /// eBPF if it can be loaded, else the fallbacks (PIDFD_GET_INFO, /proc) with one warning
    /// saying why.
    #[default]
    Auto,
    /// eBPF or fail at start.
    Ebpf,
    /// Never load eBPF (pidfd + /proc only).
    Procfs,
}

impl TrackerMode {
    /// The spelling `plugin_data` and `--tracker` use.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackerMode::Auto => "auto",
            TrackerMode::Ebpf => "ebpf",
            TrackerMode::Procfs => "procfs",
        }
    }
}

impl std::str::FromStr for TrackerMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TrackerMode::Auto),
            "ebpf" => Ok(TrackerMode::Ebpf),
            "procfs" => Ok(TrackerMode::Procfs),
            other => Err(format!(
                "must be \"auto\", \"ebpf\" or \"procfs\", got {}",
                go_quote(other)
            )),
        }
    }
}

/// `experimental.broker.access_policy` (SPIRE's `brokerAccessPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessPolicy {
    /// No SubjectAccessReview: a configured broker may reference any object it can name
    /// (within its pod reference scope).
    Permissive,
    /// A SubjectAccessReview (verb `impersonate-via-spire`, user = the broker's SPIFFE ID)
    /// must allow the broker for the resolved object.
    Enforced,
}

impl AccessPolicy {
    /// The spelling `plugin_data` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessPolicy::Permissive => "permissive",
            AccessPolicy::Enforced => "enforced",
        }
    }
}

/// `experimental.broker.brokers[].pod_reference_scope` (SPIRE's `podReferenceScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodReferenceScope {
    /// Pod references resolve only to pods of this agent's node (the kubelet's pod list).
    /// The default, also for `""`.
    #[default]
    AgentNode,
    /// Pod references resolve to any pod in the cluster: the kubelet's list first when
    /// there is a kubelet client, else (or when it lacks the pod) the API server.
    Cluster,
}

impl PodReferenceScope {
    /// The spelling `plugin_data` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PodReferenceScope::AgentNode => "agent_node",
            PodReferenceScope::Cluster => "cluster",
        }
    }
}

/// One accepted broker (SPIRE's `k8sBrokerEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEntry {
    /// A valid SPIFFE ID ([`spiffe_id::SpiffeId::parse`]), as written.
    pub id: String,
    pub pod_reference_scope: PodReferenceScope,
}

/// `experimental.broker` (SPIRE's `k8sBrokerConfig`). Only built when every rule holds, so
/// `brokers` is never empty and its IDs are unique and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub access_policy: AccessPolicy,
    /// In configuration order (SPIRE keeps a map keyed by ID).
    pub brokers: Vec<BrokerEntry>,
}

impl BrokerConfig {
    /// The entry for a caller's SPIFFE ID, compared as strings (as SPIRE's map lookup by
    /// `ID.String()` does).
    pub fn entry(&self, id: &str) -> Option<&BrokerEntry> {
        self.brokers.iter().find(|b| b.id == id)
    }
}

/// Validated plugin configuration. Construct with [`Config::parse`] or `Config::default()`
/// (SPIRE's defaults, as an empty `plugin_data` gives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    kubelet_port: KubeletPort,
    kubelet_ca_path: PathBuf,
    skip_kubelet_verification: bool,
    token_path: PathBuf,
    certificate_path: Option<PathBuf>,
    private_key_path: Option<PathBuf>,
    use_anonymous_authentication: bool,
    node_name_env: String,
    node_name: Option<String>,
    max_poll_attempts: u64,
    poll_retry_interval: Duration,
    reload_interval: Duration,
    disable_container_selectors: bool,
    verbose_container_locator_logs: bool,
    api_server_cache: bool,
    enable_namespace_labels: bool,
    disable_kubelet_client: bool,
    broker: Option<BrokerConfig>,
    tracker: TrackerMode,
    tracker_max_processes: u32,
    container_runtime_endpoint: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kubelet_port: KubeletPort::Secure(DEFAULT_KUBELET_SECURE_PORT),
            kubelet_ca_path: PathBuf::from(DEFAULT_KUBELET_CA_PATH),
            skip_kubelet_verification: false,
            token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            certificate_path: None,
            private_key_path: None,
            use_anonymous_authentication: false,
            node_name_env: DEFAULT_NODE_NAME_ENV.to_string(),
            node_name: None,
            max_poll_attempts: DEFAULT_MAX_POLL_ATTEMPTS,
            poll_retry_interval: DEFAULT_POLL_RETRY_INTERVAL,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            disable_container_selectors: false,
            verbose_container_locator_logs: false,
            api_server_cache: false,
            enable_namespace_labels: false,
            disable_kubelet_client: false,
            broker: None,
            tracker: TrackerMode::Auto,
            tracker_max_processes: DEFAULT_TRACKER_MAX_PROCESSES,
            container_runtime_endpoint: None,
        }
    }
}

impl Config {
    /// Parses `plugin_data`: JSON if the text is a JSON object, HCL v1 otherwise.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let items = match hcl::parse_json_object(text) {
            Some(items) => items,
            None => hcl::parse(text)
                .map_err(|e| ConfigErrors(vec![ConfigError::Decode(e.to_string())]))?,
        };
        let raw = Raw::decode(&items).map_err(|e| ConfigErrors(vec![ConfigError::Decode(e)]))?;
        raw.validate()
    }

    pub fn kubelet_port(&self) -> KubeletPort {
        self.kubelet_port
    }

    /// CA bundle for the kubelet's certificate (unused with `skip_kubelet_verification`).
    pub fn kubelet_ca_path(&self) -> &Path {
        &self.kubelet_ca_path
    }

    pub fn skip_kubelet_verification(&self) -> bool {
        self.skip_kubelet_verification
    }

    pub fn token_path(&self) -> &Path {
        &self.token_path
    }

    pub fn certificate_path(&self) -> Option<&Path> {
        self.certificate_path.as_deref()
    }

    pub fn private_key_path(&self) -> Option<&Path> {
        self.private_key_path.as_deref()
    }

    pub fn use_anonymous_authentication(&self) -> bool {
        self.use_anonymous_authentication
    }

    /// The credentials to present, with SPIRE's precedence: anonymous, then client
    /// certificate, then token. A certificate without key (or the reverse) is the
    /// `InvalidArgument` SPIRE reports when it builds the kubelet client.
    pub fn kubelet_auth(&self) -> Result<KubeletAuth, Status> {
        if self.use_anonymous_authentication {
            return Ok(KubeletAuth::Anonymous);
        }
        match (&self.certificate_path, &self.private_key_path) {
            (Some(cert), Some(key)) => Ok(KubeletAuth::ClientCertificate {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (Some(_), None) => Err(Status::new(
                Code::InvalidArgument,
                "the private key path is required with the certificate path",
            )),
            (None, Some(_)) => Err(Status::new(
                Code::InvalidArgument,
                "the certificate path is required with the private key path",
            )),
            (None, None) => Ok(KubeletAuth::Token(self.token_path.clone())),
        }
    }

    /// The node name: `node_name` if set, else the value of the variable named by
    /// `node_name_env` (default `MY_NODE_NAME`), even if empty; "" if unset.
    /// `env` looks a variable up (`|k| std::env::var(k).ok()` in production).
    pub fn node_name(&self, env: impl Fn(&str) -> Option<String>) -> String {
        match &self.node_name {
            Some(name) => name.clone(),
            None => env(&self.node_name_env).unwrap_or_default(),
        }
    }

    /// The host to contact: `127.0.0.1` for the read-only port or when the node name is
    /// empty, else the node name (also the TLS server name then).
    pub fn kubelet_host(&self, env: impl Fn(&str) -> Option<String>) -> String {
        let name = match self.kubelet_port {
            KubeletPort::ReadOnly(_) => String::new(),
            KubeletPort::Secure(_) => self.node_name(env),
        };
        if name.is_empty() {
            "127.0.0.1".to_string()
        } else {
            name
        }
    }

    pub fn max_poll_attempts(&self) -> u64 {
        self.max_poll_attempts
    }

    pub fn poll_retry_interval(&self) -> Duration {
        self.poll_retry_interval
    }

    /// How often CA, certificate, key and token are re-read.
    pub fn reload_interval(&self) -> Duration {
        self.reload_interval
    }

    pub fn disable_container_selectors(&self) -> bool {
        self.disable_container_selectors
    }

    /// Always true: the legacy locator is refused at parse time.
    pub fn use_new_container_locator(&self) -> bool {
        true
    }

    pub fn verbose_container_locator_logs(&self) -> bool {
        self.verbose_container_locator_logs
    }

    /// `experimental.api_server.cache.enabled`: in SPIRE, namespace labels and the Broker
    /// API's metadata lookups are served from a watched cache instead of live GETs (pods and
    /// SubjectAccessReviews are always live).
    pub fn experimental_api_server_cache(&self) -> bool {
        self.api_server_cache
    }

    /// `enable_namespace_labels`: `ns-label:<key>:<value>` selectors from the workload
    /// namespace's labels, read from the API server.
    pub fn enable_namespace_labels(&self) -> bool {
        self.enable_namespace_labels
    }

    /// `disable_kubelet_client`: no kubelet client; `Attest` by PID and `agent_node` pod
    /// references fail (every broker is `cluster`-scoped then).
    pub fn disable_kubelet_client(&self) -> bool {
        self.disable_kubelet_client
    }

    /// `experimental.broker`: the brokers allowed to call `AttestReference`.
    pub fn broker(&self) -> Option<&BrokerConfig> {
        self.broker.as_ref()
    }

    pub fn tracker(&self) -> TrackerMode {
        self.tracker
    }

    pub fn tracker_max_processes(&self) -> u32 {
        self.tracker_max_processes
    }

    /// Ours: the CRI socket to ask when the kubelet's status does not list a container yet
    /// (`container_runtime_endpoint`, the kubelet's flag); `None`: SPIRE's behaviour.
    pub fn container_runtime_endpoint(&self) -> Option<&Path> {
        self.container_runtime_endpoint.as_deref()
    }
}

/// `container_runtime_endpoint` → the socket path, as the kubelet reads its own
/// `--container-runtime-endpoint` (k8s.io/cri-client `pkg/util/util_unix.go`,
/// `parseEndpointWithFallbackProtocol`): `unix:///abs/path`, or a bare absolute path (the
/// kubelet still accepts it, with a deprecation note). Stricter than the kubelet where its
/// reading surprises: `unix://run/x.sock` (Go takes `run` as a host and dials `/x.sock`)
/// and relative paths are refused, as is every scheme but `unix` (the kubelet refuses
/// those too: "only support unix socket endpoint").
pub fn parse_runtime_endpoint(text: &str) -> Result<PathBuf, String> {
    let path = match text.split_once("://") {
        Some(("unix", rest)) => {
            if !rest.starts_with('/') {
                return Err(format!(
                    "must be unix:///<absolute path> (three slashes), got {}",
                    go_quote(text)
                ));
            }
            rest
        }
        Some((scheme, _)) => {
            return Err(format!(
                "must be a unix socket (unix:///run/containerd/containerd.sock), got the {} scheme in {}",
                go_quote(scheme),
                go_quote(text)
            ));
        }
        None if text.starts_with('/') => text,
        None => {
            return Err(format!(
                "must be unix:///<absolute path> or an absolute path, got {}",
                go_quote(text)
            ));
        }
    };
    if path.contains(['?', '#']) || path.chars().any(char::is_control) {
        return Err(format!(
            "must be a plain socket path without query, fragment or control characters, got {}",
            go_quote(text)
        ));
    }
    // sockaddr_un's sun_path holds 107 bytes and a NUL.
    if path.len() > 107 {
        return Err(format!(
            "names a socket path of {} bytes; unix sockets allow at most 107",
            path.len()
        ));
    }
    Ok(PathBuf::from(path))
}

// --- Stage 2a: raw keys → typed options ---------------------------------------------------

/// The keys as written, typed but not yet checked. `None` = absent (or JSON null).
/// Unknown keys are kept per struct level, as SPIRE's HCL structs keep `UnusedKeyPositions`.
#[derive(Debug, Default)]
struct Raw {
    kubelet_read_only_port: Option<i64>,
    kubelet_secure_port: Option<i64>,
    kubelet_ca_path: Option<String>,
    skip_kubelet_verification: Option<bool>,
    token_path: Option<String>,
    certificate_path: Option<String>,
    private_key_path: Option<String>,
    use_anonymous_authentication: Option<bool>,
    node_name_env: Option<String>,
    node_name: Option<String>,
    max_poll_attempts: Option<i64>,
    poll_retry_interval: Option<String>,
    reload_interval: Option<String>,
    disable_container_selectors: Option<bool>,
    use_new_container_locator: Option<bool>,
    verbose_container_locator_logs: Option<bool>,
    enable_namespace_labels: Option<bool>,
    disable_kubelet_client: Option<bool>,
    sigstore: bool,
    broker: Option<RawBroker>,
    api_server_cache: Option<bool>,
    tracker: Option<String>,
    tracker_max_processes: Option<i64>,
    container_runtime_endpoint: Option<String>,
    unknown: Vec<String>,
    unknown_experimental: Vec<String>,
    unknown_api_server: Vec<String>,
    unknown_cache: Vec<String>,
}

/// `experimental.broker` as written (SPIRE's `k8sBrokerHCLConfig`).
#[derive(Debug, Default)]
struct RawBroker {
    access_policy: Option<String>,
    brokers: Vec<RawBrokerEntry>,
    unknown: Vec<String>,
}

/// One `brokers` entry as written (SPIRE's `k8sBrokerHCLEntry`).
#[derive(Debug, Default)]
struct RawBrokerEntry {
    id: Option<String>,
    pod_reference_scope: Option<String>,
    unknown: Vec<String>,
}

impl Raw {
    fn decode(items: &[(String, Value)]) -> Result<Raw, String> {
        let mut raw = Raw::default();
        for (key, value) in items {
            // HCL v1 matches struct fields case-insensitively; so do we.
            match key.to_ascii_lowercase().as_str() {
                "kubelet_read_only_port" => raw.kubelet_read_only_port = int(key, value)?,
                "kubelet_secure_port" => raw.kubelet_secure_port = int(key, value)?,
                "kubelet_ca_path" => raw.kubelet_ca_path = string(key, value)?,
                "skip_kubelet_verification" => raw.skip_kubelet_verification = boolean(key, value)?,
                "token_path" => raw.token_path = string(key, value)?,
                "certificate_path" => raw.certificate_path = string(key, value)?,
                "private_key_path" => raw.private_key_path = string(key, value)?,
                "use_anonymous_authentication" => {
                    raw.use_anonymous_authentication = boolean(key, value)?
                }
                "node_name_env" => raw.node_name_env = string(key, value)?,
                "node_name" => raw.node_name = string(key, value)?,
                "max_poll_attempts" => raw.max_poll_attempts = int(key, value)?,
                "poll_retry_interval" => raw.poll_retry_interval = string(key, value)?,
                "reload_interval" => raw.reload_interval = string(key, value)?,
                "disable_container_selectors" => {
                    raw.disable_container_selectors = boolean(key, value)?
                }
                "use_new_container_locator" => raw.use_new_container_locator = boolean(key, value)?,
                "verbose_container_locator_logs" => {
                    raw.verbose_container_locator_logs = boolean(key, value)?
                }
                "enable_namespace_labels" => raw.enable_namespace_labels = boolean(key, value)?,
                "disable_kubelet_client" => raw.disable_kubelet_client = boolean(key, value)?,
                // Refused whatever it holds, so its sub-keys are not decoded.
                "sigstore" => raw.sigstore |= !matches!(value, Value::Null),
                "experimental" => {
                    for (key, value) in object(key, value)? {
                        match key.to_ascii_lowercase().as_str() {
                            "broker" => raw.decode_broker(key, value)?,
                            "api_server" => raw.decode_api_server(key, value)?,
                            _ => raw.unknown_experimental.push(key.clone()),
                        }
                    }
                }
                "tracker" => raw.tracker = string(key, value)?,
                "tracker_max_processes" => raw.tracker_max_processes = int(key, value)?,
                "container_runtime_endpoint" => {
                    raw.container_runtime_endpoint = string(key, value)?
                }
                _ => raw.unknown.push(key.clone()),
            }
        }
        Ok(raw)
    }

    fn decode_api_server(&mut self, key: &str, value: &Value) -> Result<(), String> {
        for (key, value) in object(key, value)? {
            if !key.eq_ignore_ascii_case("cache") {
                self.unknown_api_server.push(key.clone());
                continue;
            }
            for (key, value) in object(key, value)? {
                if key.eq_ignore_ascii_case("enabled") {
                    self.api_server_cache = boolean(key, value)?;
                } else {
                    self.unknown_cache.push(key.clone());
                }
            }
        }
        Ok(())
    }

    /// `broker { … }` / `broker = { … }` (repeated blocks merge); JSON null = absent.
    fn decode_broker(&mut self, key: &str, value: &Value) -> Result<(), String> {
        if matches!(value, Value::Null) {
            return Ok(());
        }
        let items = object(key, value)?;
        let broker = self.broker.get_or_insert_with(RawBroker::default);
        for (key, value) in items {
            match key.to_ascii_lowercase().as_str() {
                "access_policy" => broker.access_policy = string(key, value)?,
                "brokers" => {
                    // `brokers = [{…}, …]`, repeated `brokers { … }` blocks, or both: one list.
                    let entries: &[Value] = match value {
                        Value::List(list) => list,
                        Value::Null => &[],
                        single => std::slice::from_ref(single),
                    };
                    for entry in entries {
                        let Value::Object(fields) = entry else {
                            return Err(format!(
                                "{key}: expected an object, got {}",
                                describe(entry)
                            ));
                        };
                        let mut raw_entry = RawBrokerEntry::default();
                        for (key, value) in fields {
                            match key.to_ascii_lowercase().as_str() {
                                "id" => raw_entry.id = string(key, value)?,
                                "pod_reference_scope" => {
                                    raw_entry.pod_reference_scope = string(key, value)?
                                }
                                _ => raw_entry.unknown.push(key.clone()),
                            }
                        }
                        broker.brokers.push(raw_entry);
                    }
                }
                _ => broker.unknown.push(key.clone()),
            }
        }
        Ok(())
    }

    // --- Stage 2b: typed options → Config, every rule checked --------------------------

    fn validate(self) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut config = Config::default();

        // SPIRE's checks, in `buildConfig`'s order, so the first error is SPIRE's.
        for unknown in [
            &self.unknown,
            &self.unknown_experimental,
            &self.unknown_api_server,
            &self.unknown_cache,
        ] {
            report_unknown(&mut errors, unknown);
        }
        let broker = self
            .broker
            .as_ref()
            .map(|b| validate_broker(b, &mut errors));
        if self.disable_kubelet_client == Some(true) {
            self.validate_disable_kubelet_client(broker.as_ref(), &mut errors);
        }
        let poll_retry_interval = self
            .poll_retry_interval
            .as_deref()
            .filter(|s| !s.is_empty());
        if let Some(interval) = poll_retry_interval {
            match parse_go_duration(interval) {
                Ok(ns) if ns > 0 => config.poll_retry_interval = nanos(ns),
                Ok(_) => {}
                Err(e) => errors.push(ConfigError::PollRetryInterval(e)),
            }
        }
        if let Some(interval) = self.reload_interval.as_deref().filter(|s| !s.is_empty()) {
            match parse_go_duration(interval) {
                Ok(ns) if ns > 0 => config.reload_interval = nanos(ns),
                Ok(_) => {}
                Err(e) => errors.push(ConfigError::ReloadInterval(e)),
            }
        }
        // Values ≤ 0 mean "unset".
        let read_only = self.kubelet_read_only_port.filter(|&p| p > 0);
        let secure = self.kubelet_secure_port.filter(|&p| p > 0);
        if read_only.is_some() && secure.is_some() {
            errors.push(ConfigError::BothPorts);
        }

        // Ours: features refused, then our limits and keys.
        if self.sigstore {
            errors.push(ConfigError::NotSupported {
                key: "sigstore",
                hint: "image signature verification is not implemented; remove the sigstore block",
            });
        }
        if self.use_new_container_locator == Some(false) {
            errors.push(ConfigError::NotSupported {
                key: "use_new_container_locator = false",
                hint: "the legacy container locator is not implemented (SPIRE deprecates it); remove the key or set it to true",
            });
        }
        match (read_only, secure) {
            (Some(p), None) => match port("kubelet_read_only_port", p) {
                Ok(p) => config.kubelet_port = KubeletPort::ReadOnly(p),
                Err(e) => errors.push(e),
            },
            (None, Some(p)) => match port("kubelet_secure_port", p) {
                Ok(p) => config.kubelet_port = KubeletPort::Secure(p),
                Err(e) => errors.push(e),
            },
            _ => {}
        }

        match self.tracker.as_deref().map(str::parse::<TrackerMode>) {
            None => config.tracker = TrackerMode::Auto,
            Some(Ok(mode)) => config.tracker = mode,
            Some(Err(reason)) => errors.push(ConfigError::InvalidValue {
                key: "tracker",
                reason,
            }),
        }
        if let Some(n) = self.tracker_max_processes {
            match u32::try_from(n) {
                Ok(v) if TRACKER_MAX_PROCESSES_RANGE.contains(&n) => {
                    config.tracker_max_processes = v
                }
                _ => errors.push(ConfigError::InvalidValue {
                    key: "tracker_max_processes",
                    reason: format!(
                        "must be between {} and {}, got {n}",
                        TRACKER_MAX_PROCESSES_RANGE.start(),
                        TRACKER_MAX_PROCESSES_RANGE.end()
                    ),
                }),
            }
        }

        if let Some(text) = self.container_runtime_endpoint.filter(|s| !s.is_empty()) {
            match parse_runtime_endpoint(&text) {
                Ok(path) => config.container_runtime_endpoint = Some(path),
                Err(reason) => errors.push(ConfigError::InvalidValue {
                    key: "container_runtime_endpoint",
                    reason,
                }),
            }
        }

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }

        if let Some(path) = self.kubelet_ca_path.filter(|s| !s.is_empty()) {
            config.kubelet_ca_path = PathBuf::from(path);
        }
        if let Some(path) = self.token_path.filter(|s| !s.is_empty()) {
            config.token_path = PathBuf::from(path);
        }
        config.skip_kubelet_verification = self.skip_kubelet_verification.unwrap_or(false);
        config.certificate_path = self
            .certificate_path
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        config.private_key_path = self
            .private_key_path
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        config.use_anonymous_authentication = self.use_anonymous_authentication.unwrap_or(false);
        if let Some(env) = self.node_name_env.filter(|s| !s.is_empty()) {
            config.node_name_env = env;
        }
        config.node_name = self.node_name.filter(|s| !s.is_empty());
        if let Some(n) = self.max_poll_attempts.filter(|&n| n > 0) {
            // n > 0, so it fits.
            config.max_poll_attempts = n.unsigned_abs();
        }
        config.disable_container_selectors = self.disable_container_selectors.unwrap_or(false);
        config.verbose_container_locator_logs =
            self.verbose_container_locator_logs.unwrap_or(false);
        config.api_server_cache = self.api_server_cache.unwrap_or(false);
        config.enable_namespace_labels = self.enable_namespace_labels.unwrap_or(false);
        config.disable_kubelet_client = self.disable_kubelet_client.unwrap_or(false);
        // No errors, so a broker block has a policy (and at least one valid entry).
        config.broker = broker.and_then(|(policy, brokers)| {
            policy.map(|access_policy| BrokerConfig {
                access_policy,
                brokers,
            })
        });
        Ok(config)
    }

    /// SPIRE's `validateDisableKubeletClientConfig` (called only when the key is true):
    /// the kubelet keys it conflicts with, then every accepted broker must be `cluster`.
    /// SPIRE walks its broker map in Go's random order; we go in configuration order.
    fn validate_disable_kubelet_client(
        &self,
        broker: Option<&(Option<AccessPolicy>, Vec<BrokerEntry>)>,
        errors: &mut Vec<ConfigError>,
    ) {
        let conflicts: [(&'static str, bool); 11] = [
            (
                "kubelet_read_only_port",
                self.kubelet_read_only_port.is_some_and(|p| p > 0),
            ),
            (
                "kubelet_secure_port",
                self.kubelet_secure_port.is_some_and(|p| p > 0),
            ),
            ("kubelet_ca_path", non_empty(&self.kubelet_ca_path)),
            (
                "skip_kubelet_verification",
                self.skip_kubelet_verification == Some(true),
            ),
            ("token_path", non_empty(&self.token_path)),
            ("certificate_path", non_empty(&self.certificate_path)),
            ("private_key_path", non_empty(&self.private_key_path)),
            (
                "use_anonymous_authentication",
                self.use_anonymous_authentication == Some(true),
            ),
            ("node_name_env", non_empty(&self.node_name_env)),
            ("node_name", non_empty(&self.node_name)),
            ("reload_interval", non_empty(&self.reload_interval)),
        ];
        for (key, is_set) in conflicts {
            if is_set {
                errors.push(ConfigError::DisableKubeletClientWith(key));
            }
        }
        for entry in broker.map_or(&[][..], |(_, entries)| entries) {
            if entry.pod_reference_scope != PodReferenceScope::Cluster {
                errors.push(ConfigError::DisableKubeletClientScope(entry.id.clone()));
            }
        }
    }
}

/// SPIRE's `pluginconf.ReportUnusedKeys` for one struct level: one error, keys sorted.
fn report_unknown(errors: &mut Vec<ConfigError>, unknown: &[String]) {
    if unknown.is_empty() {
        return;
    }
    let mut keys = unknown.to_vec();
    keys.sort();
    keys.dedup();
    errors.push(ConfigError::UnknownKeys(keys));
}

/// SPIRE's `buildBrokerConfig` (with `buildBrokerAccessPolicy`, `buildPodReferenceScope`):
/// the policy (`None` if invalid) and the entries that passed, in order.
fn validate_broker(
    raw: &RawBroker,
    errors: &mut Vec<ConfigError>,
) -> (Option<AccessPolicy>, Vec<BrokerEntry>) {
    report_unknown(errors, &raw.unknown);
    let policy = match raw.access_policy.as_deref().unwrap_or("") {
        "permissive" => Some(AccessPolicy::Permissive),
        "enforced" => Some(AccessPolicy::Enforced),
        "" => {
            errors.push(ConfigError::BrokerAccessPolicyMissing);
            None
        }
        other => {
            errors.push(ConfigError::BrokerAccessPolicyUnsupported(
                other.to_string(),
            ));
            None
        }
    };
    if raw.brokers.is_empty() {
        errors.push(ConfigError::NoBrokers);
        return (policy, Vec::new());
    }
    let mut entries: Vec<BrokerEntry> = Vec::with_capacity(raw.brokers.len());
    let mut seen: Vec<&str> = Vec::with_capacity(raw.brokers.len());
    for (i, b) in raw.brokers.iter().enumerate() {
        report_unknown(errors, &b.unknown);
        let id = b.id.as_deref().unwrap_or("");
        if id.is_empty() {
            errors.push(ConfigError::BrokerIdMissing(i));
            continue;
        }
        // Checked before the ID is parsed, as SPIRE does.
        if seen.contains(&id) {
            errors.push(ConfigError::BrokerIdDuplicate(id.to_string()));
            continue;
        }
        seen.push(id);
        if let Err(reason) = SpiffeId::parse(id) {
            errors.push(ConfigError::BrokerIdInvalid {
                id: id.to_string(),
                reason,
            });
            continue;
        }
        let pod_reference_scope = match b.pod_reference_scope.as_deref().unwrap_or("") {
            "agent_node" | "" => PodReferenceScope::AgentNode,
            "cluster" => PodReferenceScope::Cluster,
            other => {
                errors.push(ConfigError::PodReferenceScopeUnsupported {
                    id: id.to_string(),
                    value: other.to_string(),
                });
                continue;
            }
        };
        entries.push(BrokerEntry {
            id: id.to_string(),
            pod_reference_scope,
        });
    }
    (policy, entries)
}

fn non_empty(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.is_empty())
}

fn nanos(ns: i64) -> Duration {
    Duration::from_nanos(ns.unsigned_abs())
}

/// Beyond SPIRE (which would fail only when connecting): a port must fit in 16 bits.
fn port(key: &'static str, p: i64) -> Result<u16, ConfigError> {
    u16::try_from(p).map_err(|_| ConfigError::InvalidValue {
        key,
        reason: format!("must be a TCP port (1-65535), got {p}"),
    })
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {}", go_quote(s)),
        Value::Number(n) => format!("number {n}"),
        Value::Bool(b) => format!("bool {b}"),
        other => other.kind().to_string(),
    }
}

/// An integer as HCL v1 decodes one: a number literal or a string holding one.
fn int(key: &str, value: &Value) -> Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(text) | Value::String(text) => hcl::parse_go_int(text)
            .map(Some)
            .ok_or_else(|| format!("{key}: expected an integer, got {}", describe(value))),
        other => Err(format!(
            "{key}: expected an integer, got {}",
            describe(other)
        )),
    }
}

fn boolean(key: &str, value: &Value) -> Result<Option<bool>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(format!(
            "{key}: expected true or false, got {}",
            describe(other)
        )),
    }
}

/// A string as HCL v1 decodes one: numbers and bools are taken as their text.
fn string(key: &str, value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) | Value::Number(s) => Ok(Some(s.clone())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(format!("{key}: expected a string, got {}", describe(other))),
    }
}

/// An object, a list of objects (repeated blocks; JSON's block form) or null, flattened.
fn object<'v>(key: &str, value: &'v Value) -> Result<Vec<&'v (String, Value)>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Object(items) => Ok(items.iter().collect()),
        Value::List(list) => {
            let mut out = Vec::new();
            for v in list {
                match v {
                    Value::Object(items) => out.extend(items.iter()),
                    other => {
                        return Err(format!(
                            "{key}: expected an object, got {}",
                            describe(other)
                        ));
                    }
                }
            }
            Ok(out)
        }
        other => Err(format!(
            "{key}: expected an object, got {}",
            describe(other)
        )),
    }
}

#[cfg(test)]
mod tests;
