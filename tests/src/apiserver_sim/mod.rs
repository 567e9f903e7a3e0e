//! A kube-apiserver simulator: a real HTTPS server on loopback answering the requests the
//! attestor's API-server client makes (namespaces, pods, generic resources with
//! discovery, metadata-only `PartialObjectMetadata` answers, list pagination, watches,
//! SubjectAccessReviews), with bearer-token authentication, RBAC-style authorization,
//! `Status` error bodies as the API server writes them, fault injection and counters.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use attestor_tests::apiserver_sim::ApiServerSim;
//! use attestor_tests::kubelet_sim::PodBuilder;
//! let sim = ApiServerSim::builder()
//!     .token("tok", "system:serviceaccount:spire:spire-agent")
//!     .grant("system:serviceaccount:spire:spire-agent", "get", "namespaces")
//!     .namespace("web", &[("team", "blue")])
//!     .pod(PodBuilder::new("web-1").namespace("web").build())
//!     .start()
//!     .await?;
//! let dir = std::env::temp_dir();
//! let kubeconfig = sim.write_kubeconfig(&dir, "tok")?;
//! # let _ = kubeconfig; Ok(()) }
//! ```
//!
//! Behaviour follows a real API server where the client can tell: authentication before
//! authorization before routing (a denied request for an unknown resource is 403, an
//! allowed one 404); namespaces get the `kubernetes.io/metadata.name` label the
//! NamespaceDefaultLabelName admission plugin adds (see
//! [`ApiServerSimBuilder::namespace_name_label`]); `default`, `kube-system`, `kube-public`
//! and `kube-node-lease` exist (see [`ApiServerSimBuilder::default_namespaces`]); list
//! items carry no kind/apiVersion; a watch from a compacted resourceVersion gets a `200`
//! whose only event is an `ERROR` with a `410 Expired` Status (what the watch cache does).
//! Simplifications: pagination serves the current state (not a snapshot at the continue
//! token's resourceVersion); deleting a namespace does not delete its contents; no label
//! selectors; JSON only.

mod server;
mod store;
pub mod wire;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use crate::kubelet_sim::{CertKey, Gate, TestCa, Validity};
pub use store::ResourceDef;

/// A fault injected into answers for paths starting with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Hold the request until the gate is opened, then answer normally (from the state at
    /// that time). For burst and concurrency tests with [`ApiServerSim::max_in_flight`].
    Gate(Gate),
    /// Answer with this status code and this body verbatim (`application/json`).
    Status(u16, String),
    /// `429` with `Retry-After` and a `TooManyRequests` Status.
    TooManyRequests { retry_after_secs: u64 },
    /// Close the connection without sending a response.
    Cut,
    /// `200` with a valid JSON body of (at least) this many bytes.
    Oversized(usize),
    /// `200` with the normal body cut in half (Content-Length matches what is sent).
    Truncated,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string (`""` if none).
    pub query: String,
    pub accept: Option<String>,
    /// The authenticated user, if the token was accepted.
    pub user: Option<String>,
    /// The status sent; `0` while undecided or when the connection was cut.
    pub status: u16,
}

#[derive(Debug, Clone)]
struct Grant {
    user: String,
    verb: String,
    resource: String,
    namespace: Option<String>,
}

#[derive(Debug, Clone)]
struct ReviewRule {
    key: [String; 6],
    allowed: bool,
}

#[derive(Debug, Clone)]
struct FaultRule {
    prefix: String,
    /// `None`: persistent.
    remaining: Option<usize>,
    fault: Fault,
}

#[derive(Debug, Clone)]
struct Span {
    path: String,
    start: u64,
    end: Option<u64>,
}

struct State {
    store: store::Store,
    tokens: HashMap<String, String>,
    grants: Vec<Grant>,
    review_rules: Vec<ReviewRule>,
    review_default: bool,
    reviews: Vec<Value>,
    faults: Vec<FaultRule>,
    requests: Vec<RequestRecord>,
    /// Index of `requests[0]` among all requests ever received.
    requests_base: usize,
    /// Never shrinks (guards hold indexes); spans that ended before `span_floor` are
    /// forgotten by [`ApiServerSim::clear_requests`].
    spans: Vec<Span>,
    span_floor: u64,
    clock: u64,
}

impl State {
    fn take_fault(&mut self, path: &str) -> Option<Fault> {
        if let Some(i) = self
            .faults
            .iter()
            .position(|f| f.remaining.is_some() && path.starts_with(&f.prefix))
        {
            let rule = &mut self.faults[i];
            let fault = rule.fault.clone();
            if let Some(n) = rule.remaining.as_mut() {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.faults.remove(i);
                }
            }
            return Some(fault);
        }
        self.faults
            .iter()
            .filter(|f| f.remaining.is_none() && path.starts_with(&f.prefix))
            .max_by_key(|f| f.prefix.len())
            .map(|f| f.fault.clone())
    }

    /// RBAC: does `user` have `verb` on `group`/`plural` (in `namespace`)?
    fn authorized(
        &self,
        user: &str,
        verb: &str,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> bool {
        let q = wire::qualified(group, plural);
        self.grants.iter().any(|g| {
            g.user == user
                && (g.verb == "*" || g.verb == verb)
                && (g.resource == "*"
                    || g.resource == q
                    || (group == "authorization.k8s.io" && g.resource == plural))
                && g.namespace.as_deref().is_none_or(|n| Some(n) == namespace)
        })
    }

    fn allows_everything(&self, user: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.user == user && g.verb == "*" && g.resource == "*" && g.namespace.is_none())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    end: u64,
    abort: u64,
    bookmark: u64,
}

struct Shared {
    state: Mutex<State>,
    /// The current resourceVersion, to wake watches.
    changes: tokio::sync::watch::Sender<u64>,
    control: tokio::sync::watch::Sender<Control>,
    addr: SocketAddr,
    bookmark_interval: Duration,
    expired_as_response: bool,
    keep_managed_fields: bool,
    open_watches: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a store mutation and wakes watches.
    fn mutate<T>(&self, f: impl FnOnce(&mut store::Store) -> T) -> T {
        let (r, rv) = {
            let mut st = self.lock();
            let r = f(&mut st.store);
            (r, st.store.rv)
        };
        self.changes.send_replace(rv);
        r
    }
}

/// Configures an [`ApiServerSim`].
#[derive(Debug)]
pub struct ApiServerSimBuilder {
    bind: IpAddr,
    port: u16,
    extra_sans: Vec<String>,
    ca: Option<Arc<TestCa>>,
    tokens: Vec<(String, String)>,
    grants: Vec<Grant>,
    namespaces: Vec<(String, Vec<(String, String)>)>,
    pods: Vec<Value>,
    resources: Vec<ResourceDef>,
    objects: Vec<(String, String, Value)>,
    review_rules: Vec<ReviewRule>,
    review_default: bool,
    bookmark_interval: Duration,
    expired_as_response: bool,
    namespace_name_label: bool,
    default_namespaces: bool,
    keep_managed_fields: bool,
}

impl Default for ApiServerSimBuilder {
    fn default() -> Self {
        ApiServerSimBuilder {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            extra_sans: Vec::new(),
            ca: None,
            tokens: Vec::new(),
            grants: Vec::new(),
            namespaces: Vec::new(),
            pods: Vec::new(),
            resources: Vec::new(),
            objects: Vec::new(),
            review_rules: Vec::new(),
            review_default: false,
            bookmark_interval: Duration::from_secs(60),
            expired_as_response: false,
            namespace_name_label: true,
            default_namespaces: true,
            keep_managed_fields: false,
        }
    }
}

fn labels_vec(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn namespace_json(name: &str, labels: &[(String, String)]) -> Value {
    let l: serde_json::Map<String, Value> =
        labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({"metadata": {"name": name, "labels": l}})
}

impl ApiServerSimBuilder {
    /// Listen on this loopback address (default `127.0.0.1`).
    pub fn bind(mut self, addr: IpAddr) -> Self {
        self.bind = addr;
        self
    }
    /// Listen on this port (default 0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Another name in the serving certificate (besides `127.0.0.1`, `::1`, `localhost`).
    pub fn server_san(mut self, san: &str) -> Self {
        self.extra_sans.push(san.to_owned());
        self
    }
    /// Issue the serving certificate from this CA (default: a fresh one).
    pub fn ca(mut self, ca: Arc<TestCa>) -> Self {
        self.ca = Some(ca);
        self
    }
    /// Accept bearer token `token` as `user`.
    pub fn token(mut self, token: &str, user: &str) -> Self {
        self.tokens.push((token.to_owned(), user.to_owned()));
        self
    }
    /// RBAC grant, cluster-wide: `verb` (`get`, `list`, `watch`, `create`, `*`) on
    /// `resource` (`namespaces`, `pods`, `subjectaccessreviews`, `<plural>.<group>`, `*`).
    pub fn grant(mut self, user: &str, verb: &str, resource: &str) -> Self {
        self.grants.push(grant(user, verb, resource, None));
        self
    }
    /// RBAC grant in one namespace (a RoleBinding).
    pub fn grant_in_namespace(
        mut self,
        user: &str,
        verb: &str,
        resource: &str,
        namespace: &str,
    ) -> Self {
        self.grants
            .push(grant(user, verb, resource, Some(namespace)));
        self
    }
    /// Everything (`cluster-admin`).
    pub fn allow_all(self, user: &str) -> Self {
        self.grant(user, "*", "*")
    }
    pub fn namespace(mut self, name: &str, labels: &[(&str, &str)]) -> Self {
        self.namespaces.push((name.to_owned(), labels_vec(labels)));
        self
    }
    /// A pod (full pod JSON with metadata.namespace and name, e.g. from
    /// [`crate::kubelet_sim::PodBuilder`]); its namespace is created if missing.
    pub fn pod(mut self, pod: Value) -> Self {
        self.pods.push(pod);
        self
    }
    /// Register a resource for discovery, get, list and watch (`group` `""` is core v1).
    pub fn resource(
        mut self,
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
    ) -> Self {
        self.resources
            .push(ResourceDef::new(group, version, kind, plural, namespaced));
        self
    }
    /// Register `apps/v1` deployments, replicasets, statefulsets, daemonsets and `batch/v1`
    /// jobs, cronjobs.
    pub fn workload_resources(mut self) -> Self {
        self.resources.extend(store::workload_resources());
        self
    }
    /// An object of a registered resource (JSON with metadata: name, namespace if
    /// namespaced, labels, ownerReferences…).
    pub fn object(mut self, group: &str, plural: &str, obj: Value) -> Self {
        self.objects
            .push((group.to_owned(), plural.to_owned(), obj));
        self
    }
    /// SubjectAccessReview answer for exactly these attributes.
    #[allow(clippy::too_many_arguments)]
    pub fn review_rule(
        mut self,
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
        allowed: bool,
    ) -> Self {
        self.review_rules.push(review_rule(
            user, verb, group, resource, namespace, name, allowed,
        ));
        self
    }
    /// SubjectAccessReview answer when no rule matches (default false).
    pub fn review_default(mut self, allowed: bool) -> Self {
        self.review_default = allowed;
        self
    }
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 60 s,
    /// like the API server; see also [`ApiServerSim::send_bookmark`]).
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }
    /// A watch from a compacted resourceVersion gets a `410` response instead of a `200`
    /// with an `ERROR` event.
    pub fn watch_expired_as_response(mut self, on: bool) -> Self {
        self.expired_as_response = on;
        self
    }
    /// Add the `kubernetes.io/metadata.name=<name>` label to every namespace (default on,
    /// as every API server since Kubernetes 1.21 does).
    pub fn namespace_name_label(mut self, on: bool) -> Self {
        self.namespace_name_label = on;
        self
    }
    /// Create `default`, `kube-system`, `kube-public`, `kube-node-lease` (default on).
    pub fn default_namespaces(mut self, on: bool) -> Self {
        self.default_namespaces = on;
        self
    }
    /// Keep `metadata.managedFields` in metadata-only answers (a real API server does;
    /// default off: stripped).
    pub fn keep_managed_fields(mut self, on: bool) -> Self {
        self.keep_managed_fields = on;
        self
    }

    /// Bind and start serving. Requires a tokio runtime.
    pub async fn start(self) -> io::Result<ApiServerSim> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        if !self.bind.is_loopback() {
            return Err(invalid(
                "the API server simulator only listens on loopback addresses".into(),
            ));
        }
        let ca = self
            .ca
            .clone()
            .unwrap_or_else(|| Arc::new(TestCa::new("apiserver-sim-ca")));
        let mut sans: Vec<String> = vec!["127.0.0.1".into(), "::1".into(), "localhost".into()];
        sans.extend(self.extra_sans.iter().cloned());
        let acceptor = server::tls_acceptor(&ca, &sans)?;

        let mut resources = store::core_resources();
        let mut st = store::Store::new(Vec::new(), self.namespace_name_label);
        resources.extend(self.resources.iter().cloned());
        for r in resources {
            st.register(r);
        }
        if self.default_namespaces {
            for ns in ["default", "kube-node-lease", "kube-public", "kube-system"] {
                st.put("", "namespaces", namespace_json(ns, &[]))
                    .map_err(invalid)?;
            }
        }
        for (name, labels) in &self.namespaces {
            st.put("", "namespaces", namespace_json(name, labels))
                .map_err(invalid)?;
        }
        for p in self.pods {
            st.put("", "pods", p).map_err(invalid)?;
        }
        for (g, plural, o) in self.objects {
            st.put(&g, &plural, o).map_err(invalid)?;
        }
        let rv = st.rv;
        let listener = TcpListener::bind((self.bind, self.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                store: st,
                tokens: self.tokens.into_iter().collect(),
                grants: self.grants,
                review_rules: self.review_rules,
                review_default: self.review_default,
                reviews: Vec::new(),
                faults: Vec::new(),
                requests: Vec::new(),
                requests_base: 0,
                spans: Vec::new(),
                span_floor: 0,
                clock: 0,
            }),
            changes: tokio::sync::watch::Sender::new(rv),
            control: tokio::sync::watch::Sender::new(Control::default()),
            addr,
            bookmark_interval: self.bookmark_interval,
            expired_as_response: self.expired_as_response,
            keep_managed_fields: self.keep_managed_fields,
            open_watches: AtomicUsize::new(0),
        });
        let task = tokio::spawn(server::accept_loop(listener, acceptor, shared.clone()));
        Ok(ApiServerSim {
            addr,
            shared,
            ca,
            task,
        })
    }
}

fn grant(user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> Grant {
    Grant {
        user: user.to_owned(),
        verb: verb.to_owned(),
        resource: resource.to_owned(),
        namespace: namespace.map(str::to_owned),
    }
}

fn review_rule(
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
    name: &str,
    allowed: bool,
) -> ReviewRule {
    ReviewRule {
        key: [user, verb, group, resource, namespace, name].map(str::to_owned),
        allowed,
    }
}

/// A running simulator. Stops (and drops every connection) when dropped.
pub struct ApiServerSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    ca: Arc<TestCa>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServerSim {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.control.send_modify(|c| c.abort += 1);
    }
}

impl std::fmt::Debug for ApiServerSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerSim")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl ApiServerSim {
    pub fn builder() -> ApiServerSimBuilder {
        ApiServerSimBuilder::default()
    }

    /// Stop listening, drop every connection and wait until that is done.
    pub async fn shutdown(mut self) {
        self.task.abort();
        self.shared.control.send_modify(|c| c.abort += 1);
        let _ = (&mut self.task).await;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://127.0.0.1:<port>` (`https://[::1]:<port>` on IPv6), no trailing slash.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca(&self) -> Arc<TestCa> {
        self.ca.clone()
    }

    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem().to_owned()
    }

    /// Writes the CA to `<dir>/apiserver-ca.crt`.
    pub fn write_ca(&self, dir: &Path) -> io::Result<PathBuf> {
        let p = dir.join("apiserver-ca.crt");
        std::fs::write(&p, self.ca_pem())?;
        Ok(p)
    }

    fn kubeconfig(&self, cluster: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\n{cluster}users:\n- name: sim-user\n  user:\n{user}contexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim-user\n    namespace: default\ncurrent-context: sim\npreferences: {{}}\n",
            wire::go_quote(&self.url())
        )
    }

    fn write_kubeconfig_text(&self, dir: &Path, text: &str) -> io::Result<PathBuf> {
        let p = dir.join("kubeconfig");
        std::fs::write(&p, text)?;
        Ok(p)
    }

    /// `<dir>/kubeconfig` with `certificate-authority: <dir>/apiserver-ca.crt` and
    /// `token: <token>`; returns its path.
    pub fn write_kubeconfig(&self, dir: &Path, token: &str) -> io::Result<PathBuf> {
        let ca = self.write_ca(dir)?;
        let text = self.kubeconfig(
            &format!(
                "    certificate-authority: {}\n",
                wire::go_quote(&ca.to_string_lossy())
            ),
            &format!("    token: {}\n", wire::go_quote(token)),
        );
        self.write_kubeconfig_text(dir, &text)
    }

    /// Like [`Self::write_kubeconfig`] with `tokenFile: <token_path>` instead of a token.
    pub fn write_kubeconfig_token_file(
        &self,
        dir: &Path,
        token_path: &Path,
    ) -> io::Result<PathBuf> {
        let ca = self.write_ca(dir)?;
        let text = self.kubeconfig(
            &format!(
                "    certificate-authority: {}\n",
                wire::go_quote(&ca.to_string_lossy())
            ),
            &format!(
                "    tokenFile: {}\n",
                wire::go_quote(&token_path.to_string_lossy())
            ),
        );
        self.write_kubeconfig_text(dir, &text)
    }

    /// Like [`Self::write_kubeconfig`] with the CA inline (`certificate-authority-data`,
    /// base64 of the PEM), as kind and most managed clusters write it.
    pub fn write_kubeconfig_inline_ca(&self, dir: &Path, token: &str) -> io::Result<PathBuf> {
        let text = self.kubeconfig(
            &format!(
                "    certificate-authority-data: {}\n",
                wire::base64_encode(self.ca_pem().as_bytes())
            ),
            &format!("    token: {}\n", wire::go_quote(token)),
        );
        self.write_kubeconfig_text(dir, &text)
    }

    /// `<dir>/serviceaccount/{token,ca.crt,namespace}` (namespace `spire`), as mounted at
    /// `/var/run/secrets/kubernetes.io/serviceaccount`; returns that directory.
    pub fn write_serviceaccount_dir(&self, dir: &Path, token: &str) -> io::Result<PathBuf> {
        let sa = dir.join("serviceaccount");
        std::fs::create_dir_all(&sa)?;
        std::fs::write(sa.join("token"), token)?;
        std::fs::write(sa.join("ca.crt"), self.ca_pem())?;
        std::fs::write(sa.join("namespace"), "spire")?;
        Ok(sa)
    }

    /// `KUBERNETES_SERVICE_HOST` (`127.0.0.1` or `::1`) and `KUBERNETES_SERVICE_PORT`.
    pub fn in_cluster_env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), self.addr.ip().to_string()),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.addr.port().to_string(),
            ),
        ]
    }

    // ---- authentication and authorization ----

    /// Replace the accepted tokens (`(token, user)`), e.g. to test token rotation.
    pub fn set_tokens(&self, tokens: &[(&str, &str)]) {
        self.shared.lock().tokens = tokens
            .iter()
            .map(|(t, u)| ((*t).to_owned(), (*u).to_owned()))
            .collect();
    }

    /// Add an RBAC grant at run time (see [`ApiServerSimBuilder::grant`]).
    pub fn grant(&self, user: &str, verb: &str, resource: &str) {
        self.shared
            .lock()
            .grants
            .push(grant(user, verb, resource, None));
    }

    pub fn allow_all(&self, user: &str) {
        self.grant(user, "*", "*");
    }

    /// Remove every grant of `user`.
    pub fn revoke(&self, user: &str) {
        self.shared.lock().grants.retain(|g| g.user != user);
    }

    // ---- state ----

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.rv
    }

    /// Create or replace a namespace's labels (keeps its uid). Returns the new RV.
    pub fn set_namespace(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let obj = namespace_json(name, &labels_vec(labels));
        self.shared
            .mutate(|s| s.put("", "namespaces", obj))
            .unwrap_or_default()
    }

    /// Delete a namespace (not its contents). False if it did not exist.
    pub fn delete_namespace(&self, name: &str) -> bool {
        self.shared
            .mutate(|s| s.delete("", "namespaces", "", name))
            .is_some()
    }

    /// Create or replace a pod (full JSON). Returns the new RV.
    pub fn set_pod(&self, pod: Value) -> io::Result<u64> {
        self.shared
            .mutate(|s| s.put("", "pods", pod))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.shared
            .mutate(|s| s.delete("", "pods", namespace, name))
            .is_some()
    }

    /// Register a resource at run time (see [`ApiServerSimBuilder::resource`]).
    pub fn register_resource(
        &self,
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
    ) {
        self.shared
            .lock()
            .store
            .register(ResourceDef::new(group, version, kind, plural, namespaced));
    }

    /// Create or replace an object of a registered resource. Returns the new RV.
    pub fn set_object(&self, group: &str, plural: &str, obj: Value) -> io::Result<u64> {
        self.shared
            .mutate(|s| s.put(group, plural, obj))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// Delete an object (`namespace` `""` for cluster-scoped).
    pub fn delete_object(&self, group: &str, plural: &str, namespace: &str, name: &str) -> bool {
        self.shared
            .mutate(|s| s.delete(group, plural, namespace, name))
            .is_some()
    }

    /// The stored object (as a get would return it), if any.
    pub fn object(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (group.to_owned(), plural.to_owned());
        self.shared.lock().store.get(&key, namespace, name).cloned()
    }

    // ---- watches ----

    /// Compaction: watches and continue tokens from a resourceVersion before the current
    /// one get `410 Expired`.
    pub fn expire_history(&self) {
        self.shared.lock().store.expire_history();
    }

    /// End every open watch cleanly (the stream ends, as after timeoutSeconds).
    pub fn end_watches(&self) {
        self.shared.control.send_modify(|c| c.end += 1);
    }

    /// Abort every open watch mid-stream (the connection is reset).
    pub fn abort_watches(&self) {
        self.shared.control.send_modify(|c| c.abort += 1);
    }

    /// Send a BOOKMARK now to every open watch that allows bookmarks.
    pub fn send_bookmark(&self) {
        self.shared.control.send_modify(|c| c.bookmark += 1);
    }

    /// Watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    // ---- SubjectAccessReviews ----

    #[allow(clippy::too_many_arguments)]
    pub fn add_review_rule(
        &self,
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
        allowed: bool,
    ) {
        self.shared.lock().review_rules.push(review_rule(
            user, verb, group, resource, namespace, name, allowed,
        ));
    }

    pub fn set_review_default(&self, allowed: bool) {
        self.shared.lock().review_default = allowed;
    }

    /// Every valid SubjectAccessReview received (the request bodies), in order.
    pub fn reviews(&self) -> Vec<Value> {
        self.shared.lock().reviews.clone()
    }

    // ---- faults ----

    /// A fault for the next `n` requests whose path starts with `path_prefix` (queued
    /// before persistent faults; counted per rule).
    pub fn fault_next(&self, path_prefix: &str, n: usize, fault: Fault) {
        if n == 0 {
            return;
        }
        self.shared.lock().faults.push(FaultRule {
            prefix: path_prefix.to_owned(),
            remaining: Some(n),
            fault,
        });
    }

    /// A fault for every request under `path_prefix` from now on (`None` clears the
    /// persistent fault of that prefix). The longest matching prefix wins.
    pub fn set_fault(&self, path_prefix: &str, fault: Option<Fault>) {
        let mut st = self.shared.lock();
        st.faults
            .retain(|f| !(f.remaining.is_none() && f.prefix == path_prefix));
        if let Some(fault) = fault {
            st.faults.push(FaultRule {
                prefix: path_prefix.to_owned(),
                remaining: None,
                fault,
            });
        }
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    // ---- observability ----

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Requests whose path starts with `path_prefix`.
    pub fn request_count(&self, path_prefix: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .count()
    }

    /// Requests under `path_prefix` open right now (arrived, body not fully sent).
    pub fn in_flight(&self, path_prefix: &str) -> usize {
        self.shared
            .lock()
            .spans
            .iter()
            .filter(|s| s.end.is_none() && s.path.starts_with(path_prefix))
            .count()
    }

    /// The highest number of requests under `path_prefix` that were open at the same
    /// time, measured server-side (arrival until the body was sent or dropped).
    pub fn max_in_flight(&self, path_prefix: &str) -> usize {
        let st = self.shared.lock();
        let mut points: Vec<(u64, i64)> = Vec::new();
        let floor = st.span_floor;
        for s in st
            .spans
            .iter()
            .filter(|s| s.path.starts_with(path_prefix) && s.end.is_none_or(|e| e > floor))
        {
            points.push((s.start, 1));
            if let Some(e) = s.end {
                points.push((e, -1));
            }
        }
        points.sort_unstable();
        let (mut cur, mut max) = (0i64, 0i64);
        for (_, d) in points {
            cur += d;
            max = max.max(cur);
        }
        usize::try_from(max).unwrap_or(0)
    }

    /// Forget recorded requests and in-flight history (requests open now still count).
    pub fn clear_requests(&self) {
        let mut st = self.shared.lock();
        st.requests_base += st.requests.len();
        st.requests.clear();
        st.span_floor = st.clock;
    }
}
