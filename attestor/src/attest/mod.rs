//! Live attestation: PID → cgroup (tracker) → pod UID + container ID (locator) → pod from the
//! kubelet's `/pods` (fetcher, polled as SPIRE does) → selector values.
//!
//! This module only composes the steps and maps their errors to SPIRE's status codes; each
//! step lives in its own module. [`Attestor::attest_traced`] also records what every step
//! saw, for `attestor explain`.
//!
//! [`K8s`] is the SPIRE plugin's attestor around it (Configure swaps whole pipelines);
//! [`replay`] runs the same steps on recorded inputs. Error → status mapping for the
//! tracker's errors ([`resolve_status`], [`start_status`]) is here, once, for every surface.
//!
//! Outcomes, as SPIRE's k8s attestor (study §2–§4), plus our own for bad PIDs:
//! * not in a pod (kernel thread; no container ID in the v2 cgroup path nor in any line of
//!   `/proc/<pid>/cgroup`) ⇒ success with zero selectors, and the kubelet is not called;
//! * the container comes from the tracker's v2 cgroup path; when that path names none (the
//!   root cgroup, a system slice), from every line of `/proc/<pid>/cgroup` with SPIRE's
//!   locator rules, read under the same pidfd: nodes whose pods live in cgroup v1
//!   hierarchies (legacy or hybrid mode, cgroupfs driver) are decided per process;
//! * container found ⇒ its selectors, but only if the same process is still alive then
//!   (the pidfd taken at resolution), so a PID recycled during the kubelet round trip never
//!   gets the old process's identity;
//! * container never in the list ⇒ `DeadlineExceeded` "no selectors found after max poll
//!   attempts"; kubelet failing at the last attempt ⇒ `Unavailable` with its error;
//! * PID 0 / negative ⇒ `InvalidArgument`; no such process, exited, zombie ⇒ `NotFound`.
//!
//! Beyond SPIRE, with `container_runtime_endpoint` set: a list that does not hold the
//! container (its status is not published yet) also starts a question to the container
//! runtime, racing SPIRE's polling. The runtime's state, checked against the cgroup and
//! the pod list, gives the selectors SPIRE would give once the kubelet publishes that state
//! ([`crate::runtime`]); any failed check or runtime trouble leaves SPIRE's polling to
//! answer, exactly as without the key. Whichever answers first wins; both give one answer.
//! A give-up after SPIRE's last list waits for the runtime's answer about that list (its
//! deadline bounds the wait); cancellation is watched around both.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{Config, KubeletAuth, KubeletPort};
use crate::kubelet::{
    Auth, DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_TIMEOUT, Endpoint, FetchPods, KubeletClient,
    KubeletSettings, PodList, PodListFetcher,
};
use crate::locator::{self, ContainerRef};
use crate::pods::{PodIndex, SearchOptions};
use crate::runtime::{self, ContainerRuntime, RuntimeClient};
use crate::selectors;
use crate::status::{Code, Status};
use crate::tracker::{Memberships, Resolution, ResolveError, StartError, Tracker, TrackerOptions};

mod k8s;
mod reference;
mod replay;

pub use k8s::{K8s, StartTracker};
pub use reference::{ApiAccess, IMPERSONATION_VERB, Pipeline};
pub use replay::replay;

/// The tracker a configuration asks for (`tracker`, `tracker_max_processes`).
pub fn tracker_options(config: &Config) -> TrackerOptions {
    TrackerOptions {
        mode: config.tracker(),
        max_processes: config.tracker_max_processes(),
        ..TrackerOptions::default()
    }
}

/// The kubelet client settings a validated configuration asks for. `env` looks up
/// environment variables (`node_name_env`).
pub fn kubelet_settings(
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<KubeletSettings, Status> {
    let endpoint = match config.kubelet_port() {
        KubeletPort::ReadOnly(port) => Endpoint::ReadOnly { port },
        KubeletPort::Secure(port) => {
            let name = config.node_name(env);
            Endpoint::Secure {
                port,
                host: (!name.is_empty()).then_some(name),
            }
        }
    };
    let auth = match config.kubelet_auth()? {
        KubeletAuth::Anonymous => Auth::Anonymous,
        KubeletAuth::ClientCertificate { cert, key } => Auth::ClientCert {
            cert_path: cert,
            key_path: key,
        },
        KubeletAuth::Token(path) => Auth::Token { path },
    };
    Ok(KubeletSettings {
        endpoint,
        ca_path: config.kubelet_ca_path().to_path_buf(),
        skip_verification: config.skip_kubelet_verification(),
        auth,
        reload_interval: config.reload_interval(),
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
    })
}

/// One configured attestation pipeline. Cheap to share (`Arc`); concurrent attestations
/// share kubelet requests through the fetcher. `F` is where pod lists come from: the
/// kubelet client in the binary, anything [`FetchPods`] for a library user or a test.
pub struct Attestor<F: FetchPods = KubeletClient> {
    config: Config,
    tracker: Arc<Tracker>,
    fetcher: PodListFetcher<F>,
    /// The CRI fast path (`container_runtime_endpoint`), if configured.
    runtime: Option<Arc<dyn ContainerRuntime>>,
    /// The API server, for `enable_namespace_labels`.
    api: Option<Arc<ApiAccess>>,
    memo: Mutex<Memo>,
}

/// What the newest pod list version gave: a list never changes, so it is indexed once
/// (`index`: where each pod and container is, built by the first attestation that searches
/// the version and shared by all others), and the answer for a container is computed once
/// (`results`). A container not asked before then costs a hash lookup and the decode of its
/// pod; one asked before, a map lookup. Bounded: cleared when a newer list arrives, at
/// most `MEMO_CAP` containers per version, and the index's own bounds
/// ([`crate::pods::MAX_ENTRIES`]).
#[derive(Default)]
struct Memo {
    version: u64,
    index: Arc<OnceLock<PodIndex>>,
    results: HashMap<ContainerRef, Option<Vec<String>>>,
    /// Fast-path answers for containers this version does not list (from the runtime).
    fast: HashMap<ContainerRef, Vec<String>>,
}

const MEMO_CAP: usize = 4096;

impl<F: FetchPods> std::fmt::Debug for Attestor<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("tracker", &self.tracker)
            .field("kubelet_requests", &self.fetcher.requests_started())
            .finish()
    }
}

/// What each step of one attestation saw (for `attestor explain` and logs).
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub pid: i64,
    pub resolution: Option<Resolution>,
    /// The whole `/proc/<pid>/cgroup`, read when the v2 cgroup path named no container.
    pub memberships: Option<Memberships>,
    pub container: Option<ContainerRef>,
    /// Pod lists searched, the newest list version seen, and kubelet requests started by
    /// anyone during this attestation.
    pub lists_searched: u32,
    pub list_version: Option<u64>,
    /// Lists this attestation indexed itself (the first to search a list version does; the
    /// others reuse its index), and the time that took.
    pub lists_indexed: u32,
    pub index_elapsed: Duration,
    pub kubelet_requests: u64,
    pub kubelet_elapsed: Option<Duration>,
    /// Time spent getting the namespace's labels (`enable_namespace_labels`).
    pub namespace_labels_elapsed: Option<Duration>,
    /// Where the container's status came from, when the attestation found it.
    pub source: Option<Source>,
    /// What the runtime fast path did (`None`: not configured, or never needed).
    pub runtime: Option<RuntimeTrace>,
    pub total: Duration,
}

/// Where the workload's container status came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The kubelet's `/pods` listed it (SPIRE's path).
    KubeletStatus,
    /// The container runtime (CRI), before the kubelet published it.
    Runtime,
}

impl Source {
    /// As `explain` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::KubeletStatus => "kubelet status",
            Source::Runtime => "runtime (CRI)",
        }
    }
}

/// The runtime fast path during one attestation.
#[derive(Debug, Clone, Default)]
pub struct RuntimeTrace {
    /// `unix://<socket>`.
    pub endpoint: String,
    /// Runtime questions asked (one per pod list that lacked the container, at most).
    pub attempts: u32,
    /// Why the last attempt gave no answer (a runtime error or a failed cross-check).
    pub fallback: Option<String>,
    /// Time spent in runtime questions.
    pub elapsed: Duration,
}

impl Attestor {
    /// Builds the kubelet client from `config` (its files are read now: a missing CA, token,
    /// certificate or key is an `InvalidArgument`, as in SPIRE's Configure).
    pub fn new(
        config: Config,
        tracker: Arc<Tracker>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Status> {
        let settings = kubelet_settings(&config, env)?;
        Self::with_kubelet_settings(config, tracker, settings)
    }

    /// [`Attestor::new`] with explicit kubelet client settings (normally
    /// [`kubelet_settings`] of `config`): tests and benchmarks use it to shorten
    /// `request_timeout` or lower `max_body_bytes`, which `plugin_data` does not expose.
    pub fn with_kubelet_settings(
        config: Config,
        tracker: Arc<Tracker>,
        settings: KubeletSettings,
    ) -> Result<Self, Status> {
        let client = KubeletClient::new(settings)
            .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
        let runtime = config
            .container_runtime_endpoint()
            .map(|socket| Arc::new(RuntimeClient::new(socket)) as Arc<dyn ContainerRuntime>);
        Ok(Attestor::with_fetcher(config, tracker, client).with_runtime(runtime))
    }

    /// The kubelet URL this attestor polls.
    pub fn kubelet_url(&self) -> &str {
        self.fetcher.fetcher().url()
    }
}

impl<F: FetchPods> Attestor<F> {
    /// A pipeline whose pod lists come from `fetch` (polled as SPIRE polls the kubelet:
    /// `max_poll_attempts`, `poll_retry_interval` from `config`).
    pub fn with_fetcher(config: Config, tracker: Arc<Tracker>, fetch: F) -> Self {
        let fetcher = PodListFetcher::new(fetch, config.poll_retry_interval());
        // Reached from the process environment on first use, as SPIRE does.
        let api = config.enable_namespace_labels().then(|| {
            Arc::new(ApiAccess::from_environment(
                config.experimental_api_server_cache(),
            ))
        });
        Attestor {
            config,
            tracker,
            fetcher,
            runtime: None,
            api,
            memo: Mutex::new(Memo::default()),
        }
    }

    /// Where `ns-label:` selectors come from when `enable_namespace_labels` is set, instead
    /// of the process environment ([`Pipeline`] shares its own with its references).
    pub fn with_api(mut self, api: Arc<ApiAccess>) -> Self {
        self.api = Some(api);
        self
    }

    /// Uses `runtime` for containers the kubelet's status does not list yet (`None`: SPIRE's
    /// behaviour). [`Attestor::new`] makes one from `container_runtime_endpoint`.
    pub fn with_runtime(mut self, runtime: Option<Arc<dyn ContainerRuntime>>) -> Self {
        self.runtime = runtime;
        self
    }

    /// The runtime of the fast path, if configured.
    pub fn runtime(&self) -> Option<&dyn ContainerRuntime> {
        self.runtime.as_deref()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// Kubelet requests started so far (all attestations).
    pub fn kubelet_requests(&self) -> u64 {
        self.fetcher.requests_started()
    }

    /// Selector values (without the `k8s:` prefix, sorted) for the process `pid`.
    pub async fn attest(
        &self,
        pid: i64,
        cancel: impl Future<Output = ()>,
    ) -> Result<Vec<String>, Status> {
        self.attest_traced(pid, cancel).await.0
    }

    /// [`Attestor::attest`], also returning what each step saw.
    pub async fn attest_traced(
        &self,
        pid: i64,
        cancel: impl Future<Output = ()>,
    ) -> (Result<Vec<String>, Status>, Trace) {
        let started = Instant::now();
        let mut trace = Trace {
            pid,
            ..Trace::default()
        };
        let result = self.run(pid, cancel, &mut trace).await;
        trace.total = started.elapsed();
        (result, trace)
    }

    async fn run(
        &self,
        pid: i64,
        cancel: impl Future<Output = ()>,
        trace: &mut Trace,
    ) -> Result<Vec<String>, Status> {
        tokio::pin!(cancel);
        let resolution = match self.tracker.resolve(pid) {
            Ok(r) => Some(r),
            // The v2 root: on a cgroup v1 node the v1 hierarchies may still name a container.
            Err(ResolveError::RootCgroup(_)) => None,
            // Not in any container: SPIRE's "not in a pod", success with no selectors.
            Err(ResolveError::KernelThread(_)) => return Ok(Vec::new()),
            Err(e) => return Err(resolve_status(e)),
        };
        trace.resolution = resolution.clone();
        let in_v2 = match &resolution {
            Some(r) => {
                // A cgroup tree made up below the workload's own cgroup must not name another pod.
                locator::check_not_nested(&r.cgroup_path).map_err(Status::from)?;
                locator::locate_path(&r.cgroup_path)
            }
            None => None,
        };
        let container = match in_v2 {
            Some(c) => c,
            None => {
                // SPIRE reads every line of /proc/<pid>/cgroup; the replay does the same.
                let memberships = self
                    .tracker
                    .memberships(pid, resolution.as_ref())
                    .map_err(resolve_status)?;
                trace.memberships = Some(memberships.clone());
                match locator::locate_cgroup_file(&memberships.text)? {
                    Some(c) => c,
                    None => return Ok(Vec::new()),
                }
            }
        };
        trace.container = Some(container.clone());

        let opts = SearchOptions::from_config(&self.config);
        let requests_before = self.fetcher.requests_started();
        let kubelet_started = Instant::now();
        let mut lists = 0u32;
        let mut version = None;
        let (mut indexed, mut index_elapsed) = (0u32, Duration::ZERO);
        // SPIRE retries a list that does not parse and reports the last such error as
        // `Unavailable` if that was the final attempt.
        let mut last_parse_error: Option<String> = None;
        let max_attempts = u32::try_from(self.config.max_poll_attempts()).unwrap_or(u32::MAX);
        // Lists that do not hold the container go to the runtime fast path (if configured).
        let (missed_tx, missed_rx) = watch::channel(None);
        let missed = |list: &PodList| {
            // Without a runtime nobody listens: no clone on SPIRE's path.
            if self.runtime.is_some() {
                missed_tx.send_replace(Some(list.clone()));
            }
        };
        let polled = self.fetcher.poll(
            max_attempts,
            |list| {
                lists += 1;
                version = Some(list.version());
                if let Some(known) = self.memoized(list.version(), &container) {
                    last_parse_error = None;
                    if known.is_none() {
                        missed(list);
                    }
                    return Ok(known);
                }
                let searched = self.with_index(list, |index, built| {
                    if let Some(took) = built {
                        indexed += 1;
                        index_elapsed += took;
                    }
                    selectors::search_in(index, &container, &opts)
                });
                match searched {
                    Ok(found) => {
                        last_parse_error = None;
                        self.memoize(list.version(), &container, &found);
                        if found.is_none() {
                            missed(list);
                        }
                        Ok(found)
                    }
                    Err(e) if e.is_retryable() => {
                        last_parse_error = Some(e.to_string());
                        Ok(None)
                    }
                    Err(e) => Err(e.into()),
                }
            },
            // Cancellation is watched below, around both paths.
            std::future::pending(),
        );
        let mut runtime_trace = self.runtime.as_ref().map(|r| RuntimeTrace {
            endpoint: r.endpoint().to_string(),
            ..RuntimeTrace::default()
        });
        let polled = {
            let fast = self.fast_path(&container, missed_rx, &opts, runtime_trace.as_mut());
            tokio::pin!(fast);
            let first = tokio::select! {
                biased;
                () = &mut cancel => Err(crate::status::cancelled()),
                // SPIRE's answer wins a tie: it is the reference.
                polled = polled => polled.map(|s| (s, Source::KubeletStatus)),
                Some(selectors) = &mut fast => Ok((selectors, Source::Runtime)),
            };
            match first {
                // SPIRE gave up at once after its last list; a runtime question about that
                // list (or one still running) may still answer, within the runtime's deadline.
                Err(gave_up) if gave_up.is_gave_up() && self.runtime.is_some() => {
                    // No more lists: the fast path ends after the ones it has, and all of
                    // that within one runtime deadline after SPIRE's give-up.
                    drop(missed_tx);
                    let bound = self
                        .runtime
                        .as_ref()
                        .map_or(Duration::ZERO, |r| r.deadline());
                    tokio::select! {
                        biased;
                        () = &mut cancel => Err(crate::status::cancelled()),
                        last = tokio::time::timeout(bound, &mut fast) => match last {
                            Ok(Some(selectors)) => Ok((selectors, Source::Runtime)),
                            Ok(None) | Err(_) => Err(gave_up),
                        },
                    }
                }
                other => other,
            }
        };
        trace.runtime = runtime_trace.filter(|t| t.attempts > 0 || t.fallback.is_some());
        trace.lists_searched = lists;
        trace.list_version = version;
        trace.lists_indexed = indexed;
        trace.index_elapsed = index_elapsed;
        trace.kubelet_requests = self.fetcher.requests_started() - requests_before;
        trace.kubelet_elapsed = Some(kubelet_started.elapsed());
        let (mut selectors, source) = match (polled, last_parse_error) {
            (Err(s), Some(parse)) if s.is_gave_up() => {
                return Err(Status::new(Code::Unavailable, parse));
            }
            (result, _) => result?,
        };
        trace.source = Some(source);
        if let Some(api) = self
            .api
            .as_ref()
            .filter(|_| self.config.enable_namespace_labels())
            && !selectors.is_empty()
        {
            // `k8s.go` `attestByPIDReference`: the labels of the pod's namespace, fetched
            // after the pod is found; failing to get them fails the attestation.
            let namespace = selectors::value_of(&selectors, "ns:")
                .unwrap_or_default()
                .to_string();
            let started = Instant::now();
            let labels = tokio::select! {
                biased;
                () = &mut cancel => Err(crate::status::cancelled()),
                labels = api.namespace_selectors(&namespace) => labels,
            };
            trace.namespace_labels_elapsed = Some(started.elapsed());
            selectors::merge(&mut selectors, labels?);
        }
        // The identity is handed out only if the resolved process is still the one alive
        // (both answers, if there are two, were read under the same pidfd).
        let alive = match (&trace.memberships, &resolution) {
            (Some(m), _) => m.is_alive(),
            (None, Some(r)) => r.is_alive(),
            (None, None) => false,
        };
        if !alive {
            return Err(Status::new(
                Code::NotFound,
                format!(
                    "pid {pid} exited during attestation; its number may belong to another process now"
                ),
            ));
        }
        Ok(selectors)
    }
}

impl<F: FetchPods> Attestor<F> {
    /// The runtime fast path: for each pod list the poll loop found without the container
    /// (sent on `missed`), ask the runtime once and answer if every cross-check passes.
    /// Returns `None` only when the poll loop is over (then its answer counts); a runtime
    /// that fails or disagrees just waits for the next list.
    async fn fast_path(
        &self,
        container: &ContainerRef,
        mut missed: watch::Receiver<Option<PodList>>,
        opts: &SearchOptions,
        mut trace: Option<&mut RuntimeTrace>,
    ) -> Option<Vec<String>> {
        let runtime = self.runtime.as_ref()?;
        loop {
            missed.changed().await.ok()?;
            let Some(list) = missed.borrow_and_update().clone() else {
                continue;
            };
            if let Some(known) = self.memoized_fast(list.version(), container) {
                return Some(known);
            }
            let started = Instant::now();
            let answer = match runtime.snapshot(&container.container_id).await {
                Ok(snapshot) => self
                    .with_index(&list, |index, _| {
                        runtime::published(
                            index,
                            container,
                            &snapshot,
                            !opts.disable_container_selectors,
                        )
                    })
                    .map_err(|refusal| {
                        if matches!(
                            refusal,
                            runtime::Refusal::PodUidDiffers { .. }
                                | runtime::Refusal::PodDiffers { .. }
                                | runtime::Refusal::OtherContainer { .. }
                        ) {
                            // The runtime contradicts the cgroup or the kubelet: worth a look.
                            log::warn!(
                                container_id = container.container_id.as_str(), reason:% = refusal;
                                "container runtime's answer not used"
                            );
                        }
                        refusal.to_string()
                    }),
                Err(e) => Err(e.to_string()),
            };
            if let Some(t) = trace.as_deref_mut() {
                t.attempts += 1;
                t.elapsed += started.elapsed();
            }
            match answer {
                Ok(found) => {
                    let selectors = selectors::build(&found.pod, found.workload());
                    self.memoize_fast(list.version(), container, &selectors);
                    if let Some(t) = trace.as_deref_mut() {
                        t.fallback = None;
                    }
                    return Some(selectors);
                }
                Err(why) => {
                    log::debug!(container_id = container.container_id.as_str(), reason = why.as_str(); "no fast answer from the container runtime");
                    if let Some(t) = trace.as_deref_mut() {
                        t.fallback = Some(why);
                    }
                }
            }
        }
    }

    fn memoized_fast(&self, version: u64, container: &ContainerRef) -> Option<Vec<String>> {
        self.memo_read(version, |m| m.fast.get(container).cloned())
    }

    fn memoize_fast(&self, version: u64, container: &ContainerRef, selectors: &[String]) {
        self.memo_write(version, |m| {
            if m.fast.len() < MEMO_CAP {
                m.fast.insert(container.clone(), selectors.to_vec());
            }
        });
    }

    fn memoized(&self, version: u64, container: &ContainerRef) -> Option<Option<Vec<String>>> {
        self.memo_read(version, |m| m.results.get(container).cloned())
    }

    fn memoize(&self, version: u64, container: &ContainerRef, found: &Option<Vec<String>>) {
        self.memo_write(version, |m| {
            if m.results.len() < MEMO_CAP {
                m.results.insert(container.clone(), found.clone());
            }
        });
    }

    /// `f` on the index of the current pod list (a fresh one if the cached list is older
    /// than `poll_retry_interval`), for lookups by pod rather than by container: SPIRE's
    /// `fetchNext(ctx, 0)` for Broker API pod references.
    pub async fn with_current_index<T>(
        &self,
        f: impl FnOnce(&PodIndex) -> T,
    ) -> Result<T, crate::kubelet::FetchFailure> {
        let list = self.fetcher.newer_than(None).await?;
        Ok(self.with_index(&list, |index, _| f(index)))
    }

    /// `f` on the index of `list`: built once per list version, by the first attestation
    /// that needs it (concurrent ones wait for it rather than scan the list too), and
    /// dropped with the memo when a newer version arrives. A list older than the memo's (an
    /// attestation that fell behind) is indexed for this call alone. `f` also learns how
    /// long building took if this call built it.
    fn with_index<T>(&self, list: &PodList, f: impl FnOnce(&PodIndex, Option<Duration>) -> T) -> T {
        let build = || {
            let started = Instant::now();
            let index = PodIndex::new(list.body().clone());
            (index, started.elapsed())
        };
        let cell = {
            let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
            if list.version() > memo.version {
                *memo = Memo {
                    version: list.version(),
                    ..Memo::default()
                };
            }
            (list.version() == memo.version).then(|| memo.index.clone())
        };
        match cell {
            // Built outside the memo's lock: other versions' lookups do not wait for it.
            Some(cell) => {
                let mut built = None;
                let index = cell.get_or_init(|| {
                    let (index, took) = build();
                    built = Some(took);
                    index
                });
                f(index, built)
            }
            None => {
                let (index, took) = build();
                f(&index, Some(took))
            }
        }
    }

    /// `read` on the memo if it holds list `version`.
    fn memo_read<T>(&self, version: u64, read: impl FnOnce(&Memo) -> Option<T>) -> Option<T> {
        let memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        (memo.version == version).then(|| read(&memo)).flatten()
    }

    /// `write` on the memo of list `version`; a newer version replaces the memo, an older
    /// one is not kept.
    fn memo_write(&self, version: u64, write: impl FnOnce(&mut Memo)) {
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if version > memo.version {
            *memo = Memo {
                version,
                ..Memo::default()
            };
        }
        if version == memo.version {
            write(&mut memo);
        }
    }
}

/// A PID that could not be resolved, as every surface reports it: a bad PID is the caller's
/// `InvalidArgument`, a process that is gone `NotFound`, a process caught moving
/// `Unavailable` (retry), anything else `Internal`.
pub fn resolve_status(e: ResolveError) -> Status {
    let code = match &e {
        ResolveError::ZeroPid
        | ResolveError::NegativePid(_)
        | ResolveError::PidOutOfRange(_)
        | ResolveError::NotALeader(_) => Code::InvalidArgument,
        ResolveError::NoSuchProcess(_) | ResolveError::Exited(_) | ResolveError::Zombie(_) => {
            Code::NotFound
        }
        ResolveError::CgroupChanged(_) => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A tracker that cannot start, as every surface reports it: the node is not in the state
/// the configuration needs (`FailedPrecondition`: eBPF required but unusable, a /proc of
/// another PID namespace, no usable cgroup filesystem); a map size out of range is the
/// configuration's fault (`InvalidArgument`; `Config::parse` already refuses it).
pub fn start_status(e: StartError) -> Status {
    let code = match &e {
        StartError::MapSize { .. } => Code::InvalidArgument,
        _ => Code::FailedPrecondition,
    };
    Status::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    //! The pipeline's outcomes without root, eBPF or a kubelet: a scripted process world
    //! (`tracker::fake`) and pod lists from a closure, polled by the real fetcher.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::kubelet::FetchFn;
    use crate::tracker::fake::{Event, Fake};

    const UID: &str = "7e1c2a9b-3d4f-4a5b-8c6d-9e0f1a2b3c4d";
    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const OTHER_UID: &str = "5f0c7e6a-0b1d-4c3e-9f2a-7d6b5c4a3b2c";
    const OTHER_CID: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    /// A kubelet-style (systemd driver, containerd) cgroup path of a container.
    fn container_path(uid: &str, cid: &str) -> String {
        format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        )
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn pod(uid: &str, name: &str, cid: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"shop","uid":"{uid}","labels":{{"app":"{name}"}}}},
            "spec":{{"serviceAccountName":"{name}-sa","nodeName":"node-1"}},
            "status":{{"containerStatuses":[{{"name":"app","image":"img:{name}","imageID":"img@sha256:{name}","containerID":"containerd://{cid}"}}]}}}}"#
        )
    }

    fn list(pods: &[String]) -> Bytes {
        Bytes::from(format!(
            r#"{{"kind":"PodList","items":[{}]}}"#,
            pods.join(",")
        ))
    }

    /// `max_poll_attempts = 3`, a 1 ms retry interval: give-ups happen at once.
    fn config() -> Config {
        Config::parse("max_poll_attempts = 3\npoll_retry_interval = \"1ms\"\n").unwrap()
    }

    type Fetch = FetchFn<Box<dyn Fn() -> std::future::Ready<Result<Bytes, String>> + Send + Sync>>;

    /// A pipeline over `fake`'s world whose every kubelet request answers `answer()`.
    fn pipeline(
        fake: &Fake,
        calls: &Arc<AtomicUsize>,
        answer: impl Fn() -> Result<Bytes, String> + Send + Sync + 'static,
    ) -> Attestor<Fetch> {
        let calls = calls.clone();
        let fetch: Fetch = FetchFn(Box::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer())
        }));
        Attestor::with_fetcher(config(), Arc::new(fake.tracker(true, false)), fetch)
    }

    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn a_workload_gets_its_pods_selectors() {
        let fake = Fake::new();
        fake.process(40, &container_path(UID, CID));
        let body = list(&[pod(UID, "cart", CID), pod(OTHER_UID, "web", OTHER_CID)]);
        let calls = Arc::new(AtomicUsize::new(0));
        let a = pipeline(&fake, &calls, {
            let body = body.clone();
            move || Ok(body.clone())
        });
        let got = a.attest(40, never()).await.unwrap();
        assert!(got.contains(&"pod-name:cart".to_string()), "{got:?}");
        assert!(
            got.contains(&"container-image:img:cart".to_string()),
            "{got:?}"
        );
        assert!(
            !got.iter().any(|s| s.contains("web")),
            "another pod's values: {got:?}"
        );
        // The same answer the replay gives for the same inputs.
        let cgroup = format!("0::{}\n", container_path(UID, CID));
        let replayed = replay(&cgroup, || Ok(body.to_vec()), &config()).unwrap();
        assert_eq!(got, replayed);
        // A second attestation of the same container on the same list is memoized.
        assert_eq!(a.attest(40, never()).await.unwrap(), got);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one kubelet request for both"
        );
    }

    /// A burst of distinct containers on one list version: one of them indexes the list,
    /// every other one reuses that index (and each still gets its own pod's values).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn each_list_version_is_indexed_once_for_a_burst_of_containers() {
        let fake = Fake::new();
        let pods: Vec<(String, String)> = (0..16u32)
            .map(|i| {
                (
                    format!("{i:08x}-0000-4000-8000-000000000000"),
                    format!("{i:064x}"),
                )
            })
            .collect();
        for (i, (uid, cid)) in pods.iter().enumerate() {
            fake.process(100 + i as i32, leak(container_path(uid, cid)));
        }
        let body = list(
            &pods
                .iter()
                .enumerate()
                .map(|(i, (uid, cid))| pod(uid, &format!("p{i}"), cid))
                .collect::<Vec<_>>(),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        // One list for the whole burst.
        let config = Config::parse("poll_retry_interval = \"1h\"\n").unwrap();
        let fetch: Fetch = FetchFn(Box::new({
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Ok(body.clone()))
            }
        }));
        let a = Arc::new(Attestor::with_fetcher(
            config,
            Arc::new(fake.tracker(true, false)),
            fetch,
        ));
        let burst = |a: &Arc<Attestor<Fetch>>| {
            (0..16)
                .map(|i| {
                    let a = a.clone();
                    tokio::spawn(async move { a.attest_traced(100 + i, never()).await })
                })
                .collect::<Vec<_>>()
        };
        let mut indexed = 0;
        for (i, task) in burst(&a).into_iter().enumerate() {
            let (result, trace) = task.await.unwrap();
            let values = result.unwrap();
            assert!(values.contains(&format!("pod-name:p{i}")), "{values:?}");
            assert_eq!(trace.lists_searched, 1);
            indexed += trace.lists_indexed;
        }
        assert_eq!(indexed, 1, "one index for the list version");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn not_in_a_pod_is_success_with_no_selectors_and_no_kubelet_call() {
        let fake = Fake::new();
        fake.process(41, "/system.slice/sshd.service");
        fake.kernel_thread(2);
        let calls = Arc::new(AtomicUsize::new(0));
        let a = pipeline(&fake, &calls, || Err("unreachable".into()));
        assert_eq!(a.attest(41, never()).await, Ok(Vec::new()));
        assert_eq!(a.attest(2, never()).await, Ok(Vec::new()));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn bad_pids_are_the_callers_error_and_gone_ones_not_found() {
        let fake = Fake::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let a = pipeline(&fake, &calls, || Err("unreachable".into()));
        for (pid, code) in [
            (0, Code::InvalidArgument),
            (-4, Code::InvalidArgument),
            (i64::from(i32::MAX) + 1, Code::InvalidArgument),
            (77, Code::NotFound),
        ] {
            let e = a.attest(pid, never()).await.unwrap_err();
            assert_eq!(e.code, code, "pid {pid}: {e}");
        }
    }

    #[tokio::test]
    async fn a_container_never_listed_gives_spires_give_up_after_every_attempt() {
        let fake = Fake::new();
        fake.process(42, &container_path(UID, CID));
        let calls = Arc::new(AtomicUsize::new(0));
        let a = pipeline(&fake, &calls, || {
            Ok(list(&[pod(OTHER_UID, "web", OTHER_CID)]))
        });
        let e = a.attest(42, never()).await.unwrap_err();
        assert!(e.is_gave_up(), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "max_poll_attempts lists");
    }

    #[tokio::test]
    async fn kubelet_failures_and_bad_lists_at_the_last_attempt_are_unavailable() {
        let fake = Fake::new();
        fake.process(43, &container_path(UID, CID));
        let calls = Arc::new(AtomicUsize::new(0));
        let down = pipeline(&fake, &calls, || Err("connection refused".into()));
        let e = down.attest(43, never()).await.unwrap_err();
        assert_eq!(e.code, Code::Unavailable, "{e}");
        assert!(e.message.contains("connection refused"), "{e}");

        let garbled = pipeline(&fake, &calls, || Ok(Bytes::from_static(b"{\"items\": [")));
        let e = garbled.attest(43, never()).await.unwrap_err();
        assert_eq!(e.code, Code::Unavailable, "{e}");
        assert!(
            e.message.starts_with("unable to parse kubelet response"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn one_container_in_two_pods_is_refused() {
        let fake = Fake::new();
        // No pod UID in the path: every pod is searched.
        fake.process(44, leak(format!("/docker/{CID}")));
        let calls = Arc::new(AtomicUsize::new(0));
        let a = pipeline(&fake, &calls, || {
            Ok(list(&[pod(UID, "cart", CID), pod(OTHER_UID, "web", CID)]))
        });
        let e = a.attest(44, never()).await.unwrap_err();
        assert_eq!(e.code, Code::Internal, "{e}");
        assert_eq!(e.message, "two pods found with same container Id");
    }

    #[tokio::test]
    async fn a_workload_that_exits_during_the_kubelet_round_trip_gets_nothing() {
        let fake = Fake::new();
        fake.process(45, &container_path(UID, CID));
        let calls = Arc::new(AtomicUsize::new(0));
        let world = fake.clone();
        let a = pipeline(&fake, &calls, move || {
            // While the kubelet answers, the workload exits and its number goes to a process
            // of another pod, which is listed too.
            world.now(Event::Reuse(45, leak(container_path(OTHER_UID, OTHER_CID))));
            Ok(list(&[
                pod(UID, "cart", CID),
                pod(OTHER_UID, "web", OTHER_CID),
            ]))
        });
        let e = a.attest(45, never()).await.unwrap_err();
        assert_eq!(e.code, Code::NotFound, "{e}");
        assert!(e.message.contains("exited during attestation"), "{e}");
    }

    #[tokio::test]
    async fn a_cancelled_attestation_says_so() {
        let fake = Fake::new();
        fake.process(46, &container_path(UID, CID));
        let calls = Arc::new(AtomicUsize::new(0));
        let a = pipeline(&fake, &calls, || Ok(list(&[])));
        let e = a.attest(46, std::future::ready(())).await.unwrap_err();
        assert_eq!(e.code, Code::Cancelled, "{e}");
    }

    // --- The runtime fast path (a scripted runtime; the CRI client is tested against a real
    // containerd in tests/tests/cri_fast_path.rs) -------------------------------------------

    use crate::runtime::{
        PodSnapshot, RuntimeContainer, RuntimeError, SnapshotFuture, SnapshotResult,
    };

    struct Scripted {
        answer: Box<dyn Fn(&str) -> SnapshotResult + Send + Sync>,
        calls: AtomicUsize,
    }

    impl ContainerRuntime for Scripted {
        fn endpoint(&self) -> &str {
            "unix:///scripted.sock"
        }
        fn deadline(&self) -> Duration {
            Duration::from_millis(500)
        }
        fn snapshot<'a>(&'a self, id: &'a str) -> SnapshotFuture<'a> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::ready((self.answer)(id)))
        }
    }

    fn scripted(answer: impl Fn(&str) -> SnapshotResult + Send + Sync + 'static) -> Arc<Scripted> {
        Arc::new(Scripted {
            answer: Box::new(answer),
            calls: AtomicUsize::new(0),
        })
    }

    /// `pod(uid, name, cid)` as the kubelet lists it before publishing any status: the spec's
    /// container `app` with the spec image `img:<name>-spec`.
    fn unpublished(uid: &str, name: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"shop","uid":"{uid}","labels":{{"app":"{name}"}}}},
            "spec":{{"serviceAccountName":"{name}-sa","nodeName":"node-1","containers":[{{"name":"app","image":"img:{name}-spec"}}]}}}}"#
        )
    }

    /// `pod(uid, name, cid)` with the spec `unpublished` has: what the kubelet publishes
    /// from [`runtime_state`].
    fn published_pod(uid: &str, name: &str, cid: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"shop","uid":"{uid}","labels":{{"app":"{name}"}}}},
            "spec":{{"serviceAccountName":"{name}-sa","nodeName":"node-1","containers":[{{"name":"app","image":"img:{name}-spec"}}]}},
            "status":{{"containerStatuses":[{{"name":"app","image":"img:{name}","imageID":"img@sha256:{name}","containerID":"containerd://{cid}"}}]}}}}"#
        )
    }

    /// The runtime's view of a one-container pod (labels as the kubelet sets them).
    fn runtime_state(uid: &str, name: &str, cid: &str) -> Arc<PodSnapshot> {
        let c = RuntimeContainer {
            id: cid.into(),
            name: Some("app".into()),
            pod_uid: Some(uid.into()),
            pod_namespace: Some("shop".into()),
            pod_name: Some(name.into()),
            image: Some(format!("img:{name}")),
            image_ref: format!("img@sha256:{name}"),
            created_at: 1,
        };
        Arc::new(PodSnapshot {
            workload: c.clone(),
            containers: vec![c],
        })
    }

    fn with_runtime(
        fake: &Fake,
        calls: &Arc<AtomicUsize>,
        body: Bytes,
        runtime: &Arc<Scripted>,
    ) -> Attestor<Fetch> {
        pipeline(fake, calls, move || Ok(body.clone()))
            .with_runtime(Some(runtime.clone() as Arc<dyn ContainerRuntime>))
    }

    #[tokio::test]
    async fn the_runtime_answers_what_spire_gives_once_the_status_is_published() {
        let fake = Fake::new();
        fake.process(50, &container_path(UID, CID));
        let calls = Arc::new(AtomicUsize::new(0));
        let runtime = scripted(|_| Ok(runtime_state(UID, "cart", CID)));
        let fast = with_runtime(
            &fake,
            &calls,
            list(&[unpublished(UID, "cart"), pod(OTHER_UID, "web", OTHER_CID)]),
            &runtime,
        );
        let (got, trace) = fast.attest_traced(50, never()).await;
        let got = got.unwrap();
        assert_eq!(trace.source, Some(Source::Runtime));
        assert_eq!((trace.lists_searched, calls.load(Ordering::SeqCst)), (1, 1));
        let rt = trace.runtime.expect("the runtime was asked");
        assert_eq!((rt.attempts, rt.fallback), (1, None));

        // SPIRE, once the kubelet published that state: the same set.
        let published = list(&[
            published_pod(UID, "cart", CID),
            pod(OTHER_UID, "web", OTHER_CID),
        ]);
        let spire = pipeline(&fake, &calls, move || Ok(published.clone()));
        let (want, trace) = spire.attest_traced(50, never()).await;
        assert_eq!(trace.source, Some(Source::KubeletStatus));
        assert_eq!(got, want.unwrap());
        assert!(
            got.contains(&"container-image:img:cart".to_string()),
            "{got:?}"
        );
        assert!(!got.iter().any(|s| s.contains("-spec")), "{got:?}");

        // Published: the runtime is not asked.
        let published = list(&[published_pod(UID, "cart", CID)]);
        let asked = runtime.calls.load(Ordering::SeqCst);
        let both = with_runtime(&fake, &calls, published, &runtime);
        let (again, trace) = both.attest_traced(50, never()).await;
        assert_eq!(again.unwrap(), got);
        assert_eq!(trace.source, Some(Source::KubeletStatus));
        assert!(trace.runtime.is_none());
        assert_eq!(runtime.calls.load(Ordering::SeqCst), asked);
    }

    #[tokio::test]
    async fn a_runtime_that_fails_or_disagrees_leaves_spires_give_up() {
        let fake = Fake::new();
        fake.process(51, &container_path(UID, CID));
        let body = list(&[unpublished(UID, "cart"), pod(OTHER_UID, "web", OTHER_CID)]);
        let down = || RuntimeError::Unreachable {
            endpoint: "unix:///scripted.sock".into(),
            detail: "Connection refused".into(),
        };
        let cases: Vec<(Arc<Scripted>, &str)> = vec![
            (scripted(move |_| Err(down())), "Connection refused"),
            // Labels naming the other (listed) pod: never its selectors.
            (
                scripted(|_| {
                    let mut s = (*runtime_state(OTHER_UID, "web", CID)).clone();
                    s.workload.pod_uid = Some(OTHER_UID.into());
                    Ok(Arc::new(s))
                }),
                "differs from the cgroup's pod UID",
            ),
            // The listed pod's name differs from the runtime's.
            (
                scripted(|_| Ok(runtime_state(UID, "cart-2", CID))),
                "runtime pod name",
            ),
        ];
        for (runtime, why) in cases {
            let calls = Arc::new(AtomicUsize::new(0));
            let a = with_runtime(&fake, &calls, body.clone(), &runtime);
            let (result, trace) = a.attest_traced(51, never()).await;
            let e = result.unwrap_err();
            assert!(e.is_gave_up(), "{why}: {e}");
            let rt = trace.runtime.expect("asked");
            // One question per list that lacked the container.
            assert_eq!(rt.attempts, 3, "{why}");
            assert!(rt.fallback.as_deref().unwrap().contains(why), "{rt:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 3, "SPIRE's polling unchanged");
        }
    }

    #[tokio::test]
    async fn a_question_about_spires_last_list_still_answers() {
        // One attempt: SPIRE gives up as soon as its only list lacks the container; the
        // runtime's answer about that list is still awaited (within its deadline).
        let fake = Fake::new();
        fake.process(54, &container_path(UID, CID));
        let body = list(&[unpublished(UID, "cart")]);
        let fetch: Fetch = FetchFn(Box::new(move || std::future::ready(Ok(body.clone()))));
        let config =
            Config::parse("max_poll_attempts = 1\npoll_retry_interval = \"1ms\"\n").unwrap();
        let runtime = scripted(|_| Ok(runtime_state(UID, "cart", CID)));
        let a = Attestor::with_fetcher(config, Arc::new(fake.tracker(true, false)), fetch)
            .with_runtime(Some(runtime.clone() as Arc<dyn ContainerRuntime>));
        let (got, trace) = a.attest_traced(54, never()).await;
        assert!(got.unwrap().contains(&"container-name:app".to_string()));
        assert_eq!(trace.source, Some(Source::Runtime));
        // Cancelled while waiting for it: cancelled, as SPIRE reports it.
        let e = a.attest(54, std::future::ready(())).await.unwrap_err();
        assert_eq!(e.code, Code::Cancelled, "{e}");
    }

    #[tokio::test]
    async fn the_runtime_is_not_asked_about_processes_outside_pods_or_bad_lists() {
        let fake = Fake::new();
        fake.process(52, "/system.slice/sshd.service");
        fake.process(53, &container_path(UID, CID));
        let runtime = scripted(|_| Ok(runtime_state(UID, "cart", CID)));
        let calls = Arc::new(AtomicUsize::new(0));
        let a = with_runtime(
            &fake,
            &calls,
            Bytes::from_static(b"{\"items\": ["),
            &runtime,
        );
        assert_eq!(a.attest(52, never()).await, Ok(Vec::new()));
        // A list that does not parse is not a list without the container.
        let e = a.attest(53, never()).await.unwrap_err();
        assert_eq!(e.code, Code::Unavailable, "{e}");
        assert_eq!(runtime.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn explain_sees_every_step() {
        let fake = Fake::new();
        fake.process(47, &container_path(UID, CID));
        let calls = Arc::new(AtomicUsize::new(0));
        let a = pipeline(&fake, &calls, || Ok(list(&[pod(UID, "cart", CID)])));
        let (result, trace) = a.attest_traced(47, never()).await;
        assert!(result.is_ok());
        let r = trace.resolution.expect("resolved");
        assert_eq!(&*r.cgroup_path, container_path(UID, CID));
        let c = trace.container.expect("located");
        assert_eq!(
            (c.pod_uid.as_deref(), c.container_id.as_str()),
            (Some(UID), CID)
        );
        assert_eq!((trace.lists_searched, trace.kubelet_requests), (1, 1));
        assert!(
            trace.memberships.is_none(),
            "the v2 path named the container"
        );
    }
}
