//! CRI client over the runtime's unix socket: the two read-only calls the kubelet itself
//! makes to build a pod's status (`getPodContainerStatuses` in kubernetes
//! `pkg/kubelet/kuberuntime/kuberuntime_container.go`): `ListContainers` filtered by the
//! pod-UID label, `ContainerStatus` for each.
//!
//! Bounded in every direction, because it sits beside SPIRE's polling and must never make
//! an attestation slower or a burst heavier:
//! * one deadline ([`DEFAULT_DEADLINE`]) for the whole snapshot, connection included;
//! * answers above [`MAX_MESSAGE_BYTES`] are refused by the decoder;
//! * at most [`MAX_CONTAINERS_PER_POD`] containers read per pod;
//! * single-flight per container ID: concurrent attestations of one container share one
//!   query, which runs in its own task (a caller that goes away does not cancel it for the
//!   others); at most [`MAX_IN_FLIGHT`] distinct queries at once, beyond that the caller is
//!   told [`RuntimeError::Busy`] and goes on with SPIRE's polling;
//! * no retries: the next attempt comes with the next pod list, as SPIRE's polling paces it;
//! * an outage (socket missing, refused, stuck) is logged once when it starts and once when
//!   the runtime answers again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, watch};
use tonic::transport::{Channel, Endpoint, Uri};

use super::api::runtime_service_client::RuntimeServiceClient;
use super::api::{ContainerFilter, ContainerStatusRequest, ListContainersRequest};
use super::{LABEL_POD_UID, PodSnapshot, RuntimeContainer, RuntimeError, api};

/// The whole snapshot (connect + every call) must be done within this, or the attestation
/// goes on without it. A healthy runtime answers in about a millisecond (BENCHMARKS.md).
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(500);
/// Largest CRI answer decoded. One container's status is a few KiB (labels, annotations,
/// mounts); a pod's `ListContainers` a few KiB more.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Most containers read for one pod (the kubelet keeps the newest dead instance of each
/// container besides the running ones, so a pod holds at most about twice its spec's count).
pub const MAX_CONTAINERS_PER_POD: usize = 256;
/// Most distinct runtime queries in flight at once.
pub const MAX_IN_FLIGHT: usize = 32;

type Shared = Option<Result<Arc<PodSnapshot>, RuntimeError>>;

/// A CRI client for one runtime socket. Cheap to clone (shared state).
#[derive(Clone)]
pub struct RuntimeClient {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    /// `unix://<socket>`, for messages.
    endpoint: String,
    deadline: Duration,
    /// Built on first use (it needs the async runtime); reconnects by itself.
    channel: OnceLock<Channel>,
    in_flight: Mutex<HashMap<String, watch::Receiver<Shared>>>,
    permits: Semaphore,
    down: AtomicBool,
    queries: AtomicU64,
}

impl std::fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeClient")
            .field("endpoint", &self.inner.endpoint)
            .field("deadline", &self.inner.deadline)
            .finish_non_exhaustive()
    }
}

impl RuntimeClient {
    /// A client for the CRI socket at `socket` (nothing is dialled until the first query: a
    /// runtime that starts after the agent is fine).
    pub fn new(socket: &Path) -> RuntimeClient {
        Self::with_deadline(socket, DEFAULT_DEADLINE)
    }

    /// [`RuntimeClient::new`] with another deadline (tests and benchmarks).
    pub fn with_deadline(socket: &Path, deadline: Duration) -> RuntimeClient {
        RuntimeClient {
            inner: Arc::new(Inner {
                socket: socket.to_path_buf(),
                endpoint: format!("unix://{}", socket.display()),
                deadline,
                channel: OnceLock::new(),
                in_flight: Mutex::new(HashMap::new()),
                permits: Semaphore::new(MAX_IN_FLIGHT),
                down: AtomicBool::new(false),
                queries: AtomicU64::new(0),
            }),
        }
    }

    /// `unix://<socket>`.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// How long one snapshot may take at most.
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// Queries started so far (shared ones count once).
    pub fn queries_started(&self) -> u64 {
        self.inner.queries.load(Ordering::Relaxed)
    }

    /// The runtime's state of the pod holding container `id`. Concurrent calls for one ID
    /// share one query; dropping the future only stops waiting.
    pub async fn snapshot(&self, id: &str) -> Result<Arc<PodSnapshot>, RuntimeError> {
        let mut rx = self.join_or_start(id)?;
        let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
        match outcome {
            Ok(Some(result)) => result,
            // The query task ended without a result (it panicked).
            Ok(None) | Err(_) => Err(RuntimeError::Malformed {
                rpc: "ContainerStatus",
                detail: "the query ended without an answer".into(),
            }),
        }
    }

    fn join_or_start(&self, id: &str) -> Result<watch::Receiver<Shared>, RuntimeError> {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A query whose task ended without answering (it panicked) is not joined.
        if let Some(rx) = in_flight.get(id)
            && rx.has_changed().is_ok()
        {
            return Ok(rx.clone());
        }
        let permit = self
            .inner
            .permits
            .try_acquire()
            .map_err(|_| RuntimeError::Busy)?;
        // The permit is given back when the task ends (forgotten here, added back there),
        // because the task outlives this borrow of `inner`.
        permit.forget();
        let (tx, rx) = watch::channel(None);
        in_flight.insert(id.to_string(), rx.clone());
        drop(in_flight);
        self.inner.queries.fetch_add(1, Ordering::Relaxed);

        let inner = self.inner.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(inner.deadline, inner.query(&id)).await {
                Ok(result) => result,
                Err(_) => Err(RuntimeError::Timeout {
                    endpoint: inner.endpoint.clone(),
                    after: inner.deadline,
                }),
            };
            inner.note_health(&result);
            inner
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            inner.permits.add_permits(1);
            let _ = tx.send(Some(result.map(Arc::new)));
        });
        Ok(rx)
    }
}

impl Inner {
    fn client(&self) -> RuntimeServiceClient<Channel> {
        let channel = self.channel.get_or_init(|| {
            let socket = self.socket.clone();
            // tonic wants a URI; the connector dials the socket and ignores it.
            Endpoint::from_static("http://cri.invalid")
                .connect_timeout(self.deadline)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(socket).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
        });
        RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn call_error(&self, rpc: &'static str, s: tonic::Status) -> RuntimeError {
        match s.code() {
            tonic::Code::NotFound if rpc == "ContainerStatus" => {
                RuntimeError::UnknownContainer { id: String::new() }
            }
            // tonic reports a socket it cannot dial, and a connection that breaks, as
            // Unavailable (or Unknown) with the transport error as the source.
            tonic::Code::Unavailable | tonic::Code::Unknown
                if std::error::Error::source(&s).is_some() =>
            {
                let (detail, io) = transport_detail(&s);
                let endpoint = self.endpoint.clone();
                // Not dialled at all vs. dialled and then not understood.
                match io {
                    Some(
                        std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::PermissionDenied,
                    ) => RuntimeError::Unreachable { endpoint, detail },
                    _ => RuntimeError::NotCri { endpoint, detail },
                }
            }
            code => RuntimeError::Call {
                rpc,
                code,
                message: s.message().to_string(),
            },
        }
    }

    async fn status(&self, id: &str) -> Result<api::ContainerStatus, RuntimeError> {
        let request = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let status = self
            .client()
            .container_status(request)
            .await
            .map_err(|s| match self.call_error("ContainerStatus", s) {
                RuntimeError::UnknownContainer { .. } => {
                    RuntimeError::UnknownContainer { id: id.to_string() }
                }
                e => e,
            })?
            .into_inner()
            .status
            .ok_or_else(|| RuntimeError::Malformed {
                rpc: "ContainerStatus",
                detail: format!("no status for container {id}"),
            })?;
        if status.id != id {
            return Err(RuntimeError::Malformed {
                rpc: "ContainerStatus",
                detail: format!("asked for container {id}, got {:?}", status.id),
            });
        }
        Ok(status)
    }

    async fn query(&self, id: &str) -> Result<PodSnapshot, RuntimeError> {
        let workload = RuntimeContainer::from_status(&self.status(id).await?);
        let uid = workload
            .pod_uid
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| RuntimeError::NotKubernetes { id: id.to_string() })?;
        let filter = ContainerFilter {
            label_selector: HashMap::from([(LABEL_POD_UID.to_string(), uid.clone())]),
            ..ContainerFilter::default()
        };
        let listed = self
            .client()
            .list_containers(ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|s| self.call_error("ListContainers", s))?
            .into_inner()
            .containers;
        if listed.len() > MAX_CONTAINERS_PER_POD {
            return Err(RuntimeError::TooManyContainers {
                uid,
                count: listed.len(),
            });
        }
        let mut containers = Vec::with_capacity(listed.len() + 1);
        for c in &listed {
            if c.id == workload.id {
                continue;
            }
            match self.status(&c.id).await {
                Ok(status) => containers.push(RuntimeContainer::from_status(&status)),
                // Removed between the list and the status: the kubelet would not see it
                // either.
                Err(RuntimeError::UnknownContainer { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        containers.push(workload.clone());
        Ok(PodSnapshot {
            workload,
            containers,
        })
    }

    fn note_health<T>(&self, result: &Result<T, RuntimeError>) {
        match result {
            Err(e) if e.is_outage() => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        endpoint = self.endpoint.as_str(), error:% = e;
                        "container runtime not answering: new containers wait for the kubelet's status (SPIRE's polling) until it does"
                    );
                }
            }
            _ => {
                if self.down.swap(false, Ordering::Relaxed) {
                    log::info!(endpoint = self.endpoint.as_str(); "container runtime answers again");
                }
            }
        }
    }
}

/// A transport failure's innermost cause ("No such file or directory", "Connection
/// refused"), which is what an operator needs (tonic's own text is "transport error"), and
/// the kind of the I/O error in the chain, if any.
fn transport_detail(s: &tonic::Status) -> (String, Option<std::io::ErrorKind>) {
    let mut detail = s.message().to_string();
    let mut kind = None;
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        detail = e.to_string();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            kind = Some(io.kind());
        }
        source = e.source();
    }
    (detail, kind)
}

#[cfg(test)]
mod tests {
    //! The client against sockets that are not a runtime; a real containerd and fake
    //! gRPC runtimes are in `tests/tests/cri_fast_path.rs`.

    use super::*;

    /// A directory for one test's socket, removed when dropped.
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new(name: &str) -> TempSocket {
            let dir =
                std::env::temp_dir().join(format!("attestor-cri-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempSocket(dir)
        }

        fn path(&self) -> PathBuf {
            self.0.join("cri.sock")
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A socket that accepts connections and never says a word.
    fn stalled(socket: &Path) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        })
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_and_names_the_socket() {
        let dir = TempSocket::new("missing");
        let socket = dir.path();
        let client = RuntimeClient::with_deadline(&socket, Duration::from_secs(5));
        let e = client.snapshot(CID).await.unwrap_err();
        assert!(matches!(e, RuntimeError::Unreachable { .. }), "{e:?}");
        assert!(e.is_outage());
        let text = e.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
    }

    #[tokio::test]
    async fn a_runtime_that_never_answers_times_out_and_the_waiters_share_one_query() {
        let dir = TempSocket::new("stall");
        let socket = dir.path();
        let held = stalled(&socket);
        let client = RuntimeClient::with_deadline(&socket, Duration::from_millis(200));
        let (a, b) = tokio::join!(client.snapshot(CID), client.snapshot(CID));
        for e in [a.unwrap_err(), b.unwrap_err()] {
            assert!(matches!(e, RuntimeError::Timeout { .. }), "{e:?}");
            assert!(e.to_string().contains("did not answer within 200ms"), "{e}");
        }
        assert_eq!(client.queries_started(), 1, "one query for both");
        // The next attempt is a new query (nothing is cached).
        assert!(client.snapshot(CID).await.is_err());
        assert_eq!(client.queries_started(), 2);
        held.abort();
    }

    #[tokio::test]
    async fn a_socket_that_speaks_no_grpc_is_no_answer() {
        use tokio::io::AsyncWriteExt;
        let dir = TempSocket::new("garbage");
        let socket = dir.path();
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let _ = c
                    .write_all(b"\x00\x01garbage that is not HTTP/2\r\n\r\n")
                    .await;
                let _ = c.shutdown().await;
            }
        });
        let client = RuntimeClient::with_deadline(&socket, Duration::from_secs(2));
        let e = client.snapshot(CID).await.unwrap_err();
        assert!(matches!(e, RuntimeError::NotCri { .. }), "{e:?}");
        assert!(e.is_outage());
        let text = e.to_string();
        assert!(
            text.contains("did not answer as a CRI (gRPC) server"),
            "{text}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_burst_beyond_the_cap_is_told_busy_not_queued() {
        let dir = TempSocket::new("busy");
        let socket = dir.path();
        let held = stalled(&socket);
        let client = RuntimeClient::with_deadline(&socket, Duration::from_secs(2));
        let ids: Vec<String> = (0..MAX_IN_FLIGHT + 5)
            .map(|i| format!("{i:064x}"))
            .collect();
        let results = futures_join(&client, &ids).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(RuntimeError::Busy)))
            .count();
        assert_eq!(busy, 5, "{results:?}");
        assert_eq!(client.queries_started(), MAX_IN_FLIGHT as u64);
        held.abort();
    }

    /// Starts every snapshot before awaiting any (all are in flight together).
    async fn futures_join(
        client: &RuntimeClient,
        ids: &[String],
    ) -> Vec<Result<Arc<PodSnapshot>, RuntimeError>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            let client = client.clone();
            let id = id.clone();
            set.spawn(async move { (i, client.snapshot(&id).await) });
            // Let the task register its query before the next one starts.
            tokio::task::yield_now().await;
        }
        let mut out: Vec<_> = set.join_all().await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }
}
