//! Metrics sent to the agent's `spire.hostservice.common.metrics.v1.Metrics` host service.
//!
//! The agent serves it behind go-plugin broker ID 1: it sends the socket address down the
//! `GRPCBroker/StartStream` stream while loading us, and lists the service name in
//! `Init.host_service_names`. We then dial that address (plain gRPC, as the SDK's
//! `broker.Dial(1)` does). If the host does not announce the service within 5 s, metrics stay
//! off (one debug line says so) and Attest records nothing.
//!
//! What the agent receives, per Attest outcome (`status=<gRPC code>`):
//! - `IncrCounter [attestor attest]`: the values sum to the number of Attests. They are
//!   aggregated: one call per status per flush, `val` = the Attests since the last flush.
//!   The agent's sinks add counter values (go-metrics `IncrCounterWithLabels`; Prometheus
//!   `Counter.Add`, statsd `|c`), so its totals are those of one `val = 1` call per Attest.
//! - `MeasureSince [attestor attest latency]`: one call per Attest, never aggregated.
//! - `IncrCounter [attestor metrics dropped]` (no labels): latency samples dropped because
//!   more than [`MAX_PENDING`] waited (a slow or hung agent). Counters are never dropped.
//!
//! **Off the Attest path.** [`Metrics::attest_done`] only adds the outcome to a small state
//! under a `std::sync::Mutex` (no I/O, no task, no await; O(1), as the sample buffer is
//! preallocated). One sender task sends what was recorded, by the flush policy below, and
//! never holds that mutex across an await; a slow or absent agent only makes samples wait
//! (then drop), never an Attest. The sender and the connection to the agent run on a
//! thread of their own (`attestor-metrics`, a current-thread runtime): on the server's two
//! workers their encoding and HTTP/2 work took turns with the Attests and, in cross-thread
//! wake-ups, cost ~3× the CPU (BENCHMARKS.md, "SPIRE plugin").
//!
//! **Flush policy**: as soon as the Attest path has been quiet for [`QUIET`] (a burst of
//! attestations is over), or at the latest [`MAX_DELAY`] after the oldest pending record,
//! or when [`HIGH_WATER`] samples wait. A flush sends [`IN_FLIGHT`] RPCs at a time on the
//! one HTTP/2 connection, so their frames go out together, and never floods the agent.
//! Why flushes wait for a pause: each latency sample is one RPC (the host service has no
//! batch form), and on a node with few CPUs the Attests that run during a flush wait for a
//! CPU. Sent after the burst, they cost the Attests nothing: bursts of back-to-back Attests
//! up to [`MAX_DELAY`] long measured p99 within 1.2× of no metrics at all, where flushing
//! every ~50 ms during the burst (512 samples) measured ~2× (BENCHMARKS.md, "SPIRE
//! plugin"). Saturation longer than that still flushes during it (~1.5×). The agent's view
//! lags by at most [`MAX_DELAY`], less than a metrics sink's usual reporting interval
//! (go-metrics' 10 s, Prometheus scrapes of 15 s and more).
//!
//! **`time` of MeasureSince.** The agent computes the latency on receipt as `now − time`
//! (see [`unix_nanos_before_now`]). Since we send later than the Attest ends, `time` is set
//! when the request is built, just before it is sent, to `now − latency`: the agent still
//! measures the attestation (plus the transport, as when it was sent at once), not the
//! time it waited here.
//!
//! **Deinit and exit** flush what is pending, waiting at most [`FINAL_FLUSH_WAIT`]
//! (`Shared::deinit_once`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};

use super::WorkloadAttestor;
use super::proto::goplugin::ConnInfo;
use super::proto::metrics::metrics_client::MetricsClient;
use super::proto::metrics::{IncrCounterRequest, Label, MeasureSinceRequest};
use super::services::{HOST_SERVICE_BROKER_ID, Shared};
use crate::status::{Code, Status, code_name};

/// How long to wait for the host's ConnInfo (the SDK's `broker.Dial` waits 5 s too).
const BROKER_WAIT: Duration = Duration::from_secs(5);
/// The Attest path has been this quiet: the burst is over, flush. Long enough that the
/// Attests of a burst (pods starting together) share their counter calls.
const QUIET: Duration = Duration::from_millis(10);
/// At the latest this long after the oldest pending record, flush even if Attests keep
/// coming (the agent's view lags by at most this much). Longer than the bursts a node sees
/// (a rollout's pods attest within seconds), so flushes fall after them.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Flush as soon as this many samples wait, half the bound, so a long saturation sends
/// before it drops.
const HIGH_WATER: usize = 32_768;
/// Most latency samples that wait for a flush; beyond, a sample is dropped and counted.
/// 65,536 × 24 bytes, in two preallocated buffers: at most 3 MiB, touched as they fill.
const MAX_PENDING: usize = 65_536;
/// RPCs of one flush in flight at once on the connection.
const IN_FLIGHT: usize = 16;
/// Longest wait for one round of [`IN_FLIGHT`] RPCs: a hung agent ends the flush (what it
/// carried is lost, as a failed RPC's metrics always were).
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait of the flush at Deinit or exit (the agent kills us 2 s after Shutdown, and
/// the server already grants in-flight calls 800 ms of that).
pub const FINAL_FLUSH_WAIT: Duration = Duration::from_millis(500);
/// `f32` (the proto's `val`) holds every integer up to 2^24 exactly; larger counts are
/// sent in parts so the agent's sum stays exact.
const MAX_EXACT_F32: u64 = 1 << 24;

const ATTEST_KEY: [&str; 2] = ["attestor", "attest"];
const LATENCY_KEY: [&str; 3] = ["attestor", "attest", "latency"];
const DROPPED_KEY: [&str; 3] = ["attestor", "metrics", "dropped"];

/// Number of gRPC codes (`Code` is 0..=16).
const CODES: usize = Code::Unauthenticated as usize + 1;

pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once the host's service is dialled; until then nothing is recorded.
    client: OnceLock<MetricsClient<Channel>>,
    pending: Mutex<Pending>,
    /// Wakes the sender: the first record after a flush, or [`HIGH_WATER`] reached.
    wake: Notify,
    /// Whoever sends a batch (the sender task, the final flush) holds this across the
    /// sending, so the final flush waits for the batch in flight and batches never overlap.
    sending: tokio::sync::Mutex<SenderState>,
    /// Cancelled when the `Metrics` is dropped: the sender ends. Not the server's shutdown:
    /// the final flush at exit comes after it and needs the connection, which the
    /// sender's runtime drives.
    stop: CancellationToken,
}

/// What was recorded since the last flush.
struct Pending {
    counts: [u64; CODES],
    samples: Vec<Sample>,
    dropped: u64,
    /// The oldest and newest record since the last flush (`None`: nothing pending).
    oldest: Option<Instant>,
    newest: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Sample {
    code: Code,
    latency: Duration,
}

/// One flush's worth, taken out of [`Pending`].
struct Batch {
    counts: [u64; CODES],
    samples: Vec<Sample>,
    dropped: u64,
}

#[derive(Default)]
struct SenderState {
    /// The sample buffer swapped in at each take, so records never allocate.
    spare: Vec<Sample>,
    /// Samples dropped since drops began (0: not in a drop episode).
    dropping: u64,
}

impl Metrics {
    pub fn disabled() -> Metrics {
        Metrics {
            inner: Arc::new(Inner {
                client: OnceLock::new(),
                pending: Mutex::new(Pending::new()),
                wake: Notify::new(),
                sending: tokio::sync::Mutex::new(SenderState::default()),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Dials the host's metrics service once the broker has announced it, and runs the
    /// sender, on a thread of their own (see the module doc); the thread ends when this
    /// `Metrics` is dropped.
    pub fn connect_via_broker<A: WorkloadAttestor>(&self, shared: Arc<Shared<A>>) {
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("attestor-metrics".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        log::warn!(error = e.to_string(); "metrics off: cannot start their runtime");
                        return;
                    }
                };
                runtime.block_on(connect_and_send(inner, shared));
            });
        if let Err(e) = spawned {
            log::warn!(error = e.to_string(); "metrics off: cannot start their thread");
        }
    }

    /// Records one Attest outcome: no I/O, no task, never waits on the agent.
    pub fn attest_done(&self, result: &Result<Vec<String>, Status>, started: Instant) {
        if self.inner.client.get().is_none() {
            return;
        }
        let code = match result {
            Ok(_) => Code::Ok,
            Err(s) => s.code,
        };
        let now = Instant::now();
        let wake =
            self.inner
                .lock_pending()
                .record(code, now.saturating_duration_since(started), now);
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// Sends what is pending now (Deinit, exit), after the batch in flight, waiting at
    /// most `within`. Best effort: what does not make it is lost.
    pub async fn flush(&self, within: Duration) {
        let Some(client) = self.inner.client.get() else {
            return;
        };
        let work = async {
            let mut state = self.inner.sending.lock().await;
            self.inner.send_pending(client, &mut state).await;
        };
        if tokio::time::timeout(within, work).await.is_err() {
            log::debug!(
                wait_ms = within.as_millis() as u64;
                "metrics: final flush cut short; what was pending is lost"
            );
        }
    }

    /// Tests: the sender, on the test's runtime, with a client of their own server.
    #[cfg(test)]
    fn start(&self, client: MetricsClient<Channel>) {
        assert!(self.inner.enable(client.clone()), "started twice");
        tokio::spawn(run_sender(self.inner.clone(), client));
    }
}

impl Drop for Metrics {
    /// The sender (and its thread) ends with the server that owns this.
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl Inner {
    /// Turns recording on with `client` (false if it already was). The sample buffer is
    /// allocated here (and its spare at the first flush), so records never allocate.
    fn enable(&self, client: MetricsClient<Channel>) -> bool {
        self.lock_pending().samples.reserve(MAX_PENDING);
        self.client.set(client).is_ok()
    }

    /// The pending state; a panic elsewhere while it was held cannot leave it inconsistent
    /// (every update is a plain field write), so a poisoned lock is used as is.
    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes what is pending and sends it. The caller holds `sending` (passed as `state`).
    async fn send_pending(&self, client: &MetricsClient<Channel>, state: &mut SenderState) {
        let mut spare = std::mem::take(&mut state.spare);
        // A no-op once the buffers have their size; never under the lock Attests take.
        spare.reserve(MAX_PENDING);
        let batch = self.lock_pending().take(spare);
        if batch.is_empty() {
            state.spare = batch.samples;
            return;
        }
        report_drops(state, batch.dropped);
        let failed = send(client, &batch).await;
        if failed > 0 {
            log::debug!(failed = failed as u64; "metrics: RPCs to the agent's metrics host service failed; their metrics are lost");
        }
        let mut samples = batch.samples;
        samples.clear();
        state.spare = samples;
    }
}

impl Pending {
    fn new() -> Pending {
        Pending {
            counts: [0; CODES],
            samples: Vec::new(),
            dropped: 0,
            oldest: None,
            newest: None,
        }
    }

    /// Adds one Attest. Whether to wake the sender: only on the first record after a flush
    /// (it then times the flush itself) and at [`HIGH_WATER`], so a busy Attest path does
    /// not wake it per call.
    fn record(&mut self, code: Code, latency: Duration, now: Instant) -> bool {
        if let Some(n) = self.counts.get_mut(code as usize) {
            *n += 1;
        }
        if self.samples.len() < MAX_PENDING {
            self.samples.push(Sample { code, latency });
        } else {
            self.dropped += 1;
        }
        let first = self.oldest.is_none();
        self.oldest.get_or_insert(now);
        self.newest = Some(now);
        first || self.samples.len() == HIGH_WATER
    }

    /// When the pending records are due to be sent (`None`: nothing pending).
    fn due(&self, now: Instant) -> Option<Instant> {
        let (oldest, newest) = (self.oldest?, self.newest?);
        if self.samples.len() >= HIGH_WATER {
            return Some(now);
        }
        Some((newest + QUIET).min(oldest + MAX_DELAY))
    }

    /// Everything pending; `spare` (empty, with room for [`MAX_PENDING`]) becomes the new
    /// sample buffer, so records never allocate.
    fn take(&mut self, spare: Vec<Sample>) -> Batch {
        let batch = Batch {
            counts: std::mem::replace(&mut self.counts, [0; CODES]),
            samples: std::mem::replace(&mut self.samples, spare),
            dropped: std::mem::take(&mut self.dropped),
        };
        self.oldest = None;
        self.newest = None;
        batch
    }
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.dropped == 0 && self.counts.iter().all(|&n| n == 0)
    }
}

/// The metrics thread: waits for the host's ConnInfo, dials it (so the connection is
/// driven by this thread's runtime) and runs the sender.
async fn connect_and_send<A: WorkloadAttestor>(inner: Arc<Inner>, shared: Arc<Shared<A>>) {
    let ci = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(BROKER_WAIT, shared.broker_conn_info(HOST_SERVICE_BROKER_ID)) => r,
    };
    let Ok(ci) = ci else {
        log::debug!("metrics off: the host did not announce broker service 1 within 5s");
        return;
    };
    // `shared` owns the `Metrics` whose drop ends the sender: not kept past this point.
    drop(shared);
    let client = match dial(&ci).await {
        Ok(channel) => MetricsClient::new(channel),
        Err(e) => {
            log::warn!(
                address = ci.address.as_str(), error = e.to_string();
                "metrics off: cannot dial the agent's metrics host service"
            );
            return;
        }
    };
    if !inner.enable(client.clone()) {
        // A second Init in the same process: the first sender serves both.
        return;
    }
    log::debug!(address = ci.address.as_str(); "metrics host service connected");
    run_sender(inner, client).await;
}

/// The sender: waits until the pending records are due (see the module doc), sends them,
/// and again, until the `Metrics` is dropped.
async fn run_sender(inner: Arc<Inner>, client: MetricsClient<Channel>) {
    loop {
        let now = Instant::now();
        let due = inner.lock_pending().due(now);
        match due {
            Some(at) if at <= now => {
                let mut state = inner.sending.lock().await;
                inner.send_pending(&client, &mut state).await;
            }
            // notify_one keeps a permit when nobody waits, so a record made between the
            // check above and this wait still wakes us.
            Some(at) => tokio::select! {
                () = inner.stop.cancelled() => return,
                () = inner.wake.notified() => {}
                () = tokio::time::sleep_until(at.into()) => {}
            },
            None => tokio::select! {
                () = inner.stop.cancelled() => return,
                () = inner.wake.notified() => {}
            },
        }
    }
}

/// One warning when latency samples start being dropped, one debug line when that ends.
fn report_drops(state: &mut SenderState, dropped: u64) {
    if dropped > 0 {
        if state.dropping == 0 {
            log::warn!(
                dropped = dropped, max_pending = MAX_PENDING as u64;
                "metrics: latency samples dropped, the agent's metrics host service does not keep up (counters stay exact; [attestor metrics dropped] counts them)"
            );
        }
        state.dropping += dropped;
    } else if state.dropping > 0 {
        log::debug!(dropped = state.dropping; "metrics: no more latency samples dropped");
        state.dropping = 0;
    }
}

type Rpc = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

/// Sends one batch, [`IN_FLIGHT`] RPCs at a time; the number of RPCs that failed or were
/// not sent.
async fn send(client: &MetricsClient<Channel>, batch: &Batch) -> usize {
    let mut rpcs: Vec<Rpc> = Vec::new();
    for (code, &n) in batch.counts.iter().enumerate() {
        let status = code_name(Code::from_i32(code as i32));
        rpcs.extend(counter(client, &ATTEST_KEY, n, &[("status", status)]));
    }
    rpcs.extend(counter(client, &DROPPED_KEY, batch.dropped, &[]));
    let mut failed = 0;
    let mut samples = batch.samples.chunks(IN_FLIGHT);
    let total = rpcs.len() + batch.samples.len();
    let mut sent = 0;
    loop {
        // The counters ride with the first round of samples.
        if let Some(chunk) = samples.next() {
            // `time` is taken now, just before the round goes out: see the module doc.
            let now = SystemTime::now();
            rpcs.extend(chunk.iter().map(|s| measure_since(client, s, now)));
        }
        if rpcs.is_empty() {
            break;
        }
        let round = rpcs.len();
        match tokio::time::timeout(RPC_TIMEOUT, join_all(std::mem::take(&mut rpcs))).await {
            Ok(errors) => failed += errors,
            Err(_) => {
                // A hung agent: the rest of the batch would wait as long each round.
                return failed + total - sent;
            }
        }
        sent += round;
    }
    failed
}

/// `IncrCounter key` with `val = n` (in parts of at most 2^24), none when `n` is 0.
fn counter(
    client: &MetricsClient<Channel>,
    key: &[&str],
    mut n: u64,
    labels: &[(&str, &str)],
) -> Vec<Rpc> {
    let mut rpcs: Vec<Rpc> = Vec::new();
    while n > 0 {
        let part = n.min(MAX_EXACT_F32);
        n -= part;
        let request = IncrCounterRequest {
            key: key.iter().map(|k| k.to_string()).collect(),
            val: part as f32,
            labels: to_labels(labels),
        };
        let mut client = client.clone();
        rpcs.push(Box::pin(async move {
            client.incr_counter(request).await.map(|_| ())
        }));
    }
    rpcs
}

fn measure_since(client: &MetricsClient<Channel>, sample: &Sample, now: SystemTime) -> Rpc {
    let request = MeasureSinceRequest {
        key: LATENCY_KEY.iter().map(|k| k.to_string()).collect(),
        time: unix_nanos_before_now(now, sample.latency),
        labels: to_labels(&[("status", code_name(sample.code))]),
    };
    let mut client = client.clone();
    Box::pin(async move { client.measure_since(request).await.map(|_| ()) })
}

/// `now − latency` in unix nanoseconds: MeasureSince's `time`.
///
/// The agent turns it back into a latency on receipt: spiffe/spire
/// `pkg/common/hostservice/metricsservice/v1.go`, `metricsV1.MeasureSince`, calls
/// `MeasureSinceWithLabels(req.Key, time.Unix(0, req.Time), labels)` (`telemetry.MetricsImpl`,
/// `pkg/common/telemetry/metrics.go`, passes it to every sink), and go-metrics
/// `(*Metrics).MeasureSinceWithLabels` (hashicorp/go-metrics `metrics.go`) records
/// `time.Now().Sub(start)`. So the agent sees `latency` plus the transport.
fn unix_nanos_before_now(now: SystemTime, latency: Duration) -> i64 {
    now.checked_sub(latency)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or_default()
}

fn to_labels(labels: &[(&str, &str)]) -> Vec<Label> {
    labels
        .iter()
        .map(|(name, value)| Label {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect()
}

/// Runs all `rpcs` concurrently in this task (so their requests reach the connection
/// together) until each is done; how many failed.
async fn join_all(rpcs: Vec<Rpc>) -> usize {
    let mut rpcs: Vec<Option<Rpc>> = rpcs.into_iter().map(Some).collect();
    let mut failed = 0;
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for slot in &mut rpcs {
            if let Some(rpc) = slot {
                match rpc.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        if let Err(e) = r {
                            log::trace!(error = e.message(); "metrics: RPC failed");
                            failed += 1;
                        }
                        *slot = None;
                    }
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    failed
}

async fn dial(ci: &ConnInfo) -> Result<Channel, tonic::transport::Error> {
    match ci.network.as_str() {
        "unix" => {
            let path = ci.address.clone();
            // The URI is not used for unix sockets (go-plugin dials "unused" too).
            Endpoint::from_static("http://unused")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(TokioIo::new)
                    }
                }))
                .await
        }
        _ => {
            Endpoint::from_shared(format!("http://{}", ci.address))?
                .connect()
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::{Request, Response};

    use super::*;
    use crate::plugin::proto::metrics::SetGaugeRequest;
    use crate::plugin::proto::metrics::metrics_server::{self, MetricsServer};

    /// One call as the agent received it.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Counter {
            key: Vec<String>,
            val: f32,
            labels: Vec<(String, String)>,
        },
        Since {
            key: Vec<String>,
            status: String,
            /// What the agent would record: its receipt time − `time`.
            latency: Duration,
        },
    }

    /// A real gRPC Metrics server on a unix socket, recording what it receives, as the
    /// agent's host service does. `stall`: every call hangs (a hung agent).
    #[derive(Clone, Default)]
    struct Agent {
        calls: Arc<Mutex<Vec<Call>>>,
        entered: Arc<AtomicUsize>,
        stall: bool,
    }

    fn labels(ls: Vec<Label>) -> Vec<(String, String)> {
        ls.into_iter().map(|l| (l.name, l.value)).collect()
    }

    impl Agent {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().expect("calls").clone()
        }

        async fn record(&self, call: Call) -> Result<Response<()>, tonic::Status> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            if self.stall {
                std::future::pending::<()>().await;
            }
            self.calls.lock().expect("calls").push(call);
            Ok(Response::new(()))
        }
    }

    #[tonic::async_trait]
    impl metrics_server::Metrics for Agent {
        async fn set_gauge(
            &self,
            _: Request<SetGaugeRequest>,
        ) -> Result<Response<()>, tonic::Status> {
            Err(tonic::Status::unimplemented("not sent by attestor"))
        }

        async fn incr_counter(
            &self,
            r: Request<IncrCounterRequest>,
        ) -> Result<Response<()>, tonic::Status> {
            let r = r.into_inner();
            self.record(Call::Counter {
                key: r.key,
                val: r.val,
                labels: labels(r.labels),
            })
            .await
        }

        async fn measure_since(
            &self,
            r: Request<MeasureSinceRequest>,
        ) -> Result<Response<()>, tonic::Status> {
            // As go-metrics does on receipt: now − time.
            let received = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970");
            let r = r.into_inner();
            let mut labels = labels(r.labels);
            assert_eq!(labels.len(), 1, "one label: status");
            let (name, status) = labels.remove(0);
            assert_eq!(name, "status");
            self.record(Call::Since {
                key: r.key,
                status,
                latency: received.saturating_sub(Duration::from_nanos(r.time as u64)),
            })
            .await
        }
    }

    /// The agent's socket, removed at the end of the test.
    struct Socket(PathBuf);

    impl Drop for Socket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Serves `agent` on a new unix socket; a client dialled to it as the plugin dials.
    async fn serve(agent: &Agent) -> (MetricsClient<Channel>, Socket) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "attestor-metrics-test-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the agent's socket");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MetricsServer::new(agent.clone()))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let ci = ConnInfo {
            service_id: HOST_SERVICE_BROKER_ID,
            network: "unix".into(),
            address: path.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let channel = dial(&ci).await.expect("dial the agent");
        (MetricsClient::new(channel), Socket(path))
    }

    /// Metrics sending to `agent`, as after the broker connection.
    async fn started(agent: &Agent) -> (Metrics, Socket) {
        let (client, socket) = serve(agent).await;
        let m = Metrics::disabled();
        m.start(client);
        (m, socket)
    }

    /// The agent's calls once it has `n`, and after a pause that would show any extra one.
    async fn calls(agent: &Agent, n: usize) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.calls.lock().expect("calls").len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(QUIET * 20).await;
        agent.calls()
    }

    fn ok() -> Result<Vec<String>, Status> {
        Ok(vec!["ns:default".into()])
    }

    fn err(code: Code) -> Result<Vec<String>, Status> {
        Err(Status::new(code, "x"))
    }

    fn key(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    fn status(s: &str) -> Vec<(String, String)> {
        vec![("status".into(), s.into())]
    }

    /// (key, labels, sum of the values, number of calls) of IncrCounter.
    type CounterSum = (Vec<String>, Vec<(String, String)>, f32, usize);

    /// IncrCounter values summed per (key, labels), and how many calls carried them.
    fn counters(calls: &[Call]) -> Vec<CounterSum> {
        let mut out: Vec<CounterSum> = Vec::new();
        for c in calls {
            if let Call::Counter { key, val, labels } = c {
                match out.iter_mut().find(|(k, l, ..)| k == key && l == labels) {
                    Some(e) => {
                        e.2 += val;
                        e.3 += 1;
                    }
                    None => out.push((key.clone(), labels.clone(), *val, 1)),
                }
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// MeasureSince calls per status label (all with the latency key).
    fn samples(calls: &[Call]) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for c in calls {
            if let Call::Since { key: k, status, .. } = c {
                assert_eq!(*k, key(&LATENCY_KEY));
                match out.iter_mut().find(|(s, _)| s == status) {
                    Some(e) => e.1 += 1,
                    None => out.push((status.clone(), 1)),
                }
            }
        }
        out.sort();
        out
    }

    // Records made without an await between them cannot be interleaved with the sender on
    // this (current-thread) test runtime: they land in one flush.
    #[tokio::test]
    async fn counters_are_aggregated_per_status_and_every_sample_is_sent() {
        let agent = Agent::default();
        let (m, _socket) = started(&agent).await;
        for i in 0..13 {
            let r = if i % 4 == 3 {
                err(Code::NotFound)
            } else {
                ok()
            };
            m.attest_done(&r, Instant::now());
        }
        let calls = calls(&agent, 2 + 13).await;
        assert_eq!(calls.len(), 2 + 13, "{calls:?}");
        assert_eq!(
            counters(&calls),
            vec![
                (key(&ATTEST_KEY), status("NotFound"), 3.0, 1),
                (key(&ATTEST_KEY), status("OK"), 10.0, 1),
            ]
        );
        assert_eq!(
            samples(&calls),
            vec![("NotFound".into(), 3), ("OK".into(), 10)]
        );
    }

    #[tokio::test]
    async fn measure_since_time_is_the_send_time_minus_the_latency() {
        let agent = Agent::default();
        let (m, _socket) = started(&agent).await;
        let latency = Duration::from_millis(40);
        // A batch in flight (a slow agent) holds the next one back for 400 ms.
        let in_flight = m.inner.sending.lock().await;
        let started = Instant::now().checked_sub(latency).expect("uptime > 40 ms");
        m.attest_done(&ok(), started);
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(in_flight);
        let calls = calls(&agent, 2).await;
        let seen: Vec<Duration> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Since { latency, .. } => Some(*latency),
                Call::Counter { .. } => None,
            })
            .collect();
        assert_eq!(seen.len(), 1, "{calls:?}");
        // The agent sees the attestation's 40 ms plus the transport, not the 400 ms wait.
        assert!(
            seen[0] >= latency && seen[0] < latency + Duration::from_millis(200),
            "the agent would record {:?} for a 40 ms attestation",
            seen[0]
        );
    }

    #[tokio::test]
    async fn a_full_buffer_drops_samples_but_counters_stay_exact() {
        let agent = Agent::default();
        let (m, _socket) = started(&agent).await;
        let over = 100;
        let in_flight = m.inner.sending.lock().await;
        let mut not_found = 0;
        for i in 0..MAX_PENDING + over {
            if i % 3 == 0 {
                m.attest_done(&err(Code::NotFound), Instant::now());
                not_found += 1;
            } else {
                m.attest_done(&ok(), Instant::now());
            }
        }
        drop(in_flight);
        let calls = calls(&agent, 3 + MAX_PENDING).await;
        assert_eq!(
            counters(&calls),
            vec![
                (key(&DROPPED_KEY), vec![], over as f32, 1),
                (key(&ATTEST_KEY), status("NotFound"), not_found as f32, 1),
                (
                    key(&ATTEST_KEY),
                    status("OK"),
                    (MAX_PENDING + over - not_found) as f32,
                    1
                ),
            ]
        );
        let sent: usize = samples(&calls).iter().map(|(_, n)| n).sum();
        assert_eq!(sent, MAX_PENDING);
        assert_eq!(calls.len(), 3 + MAX_PENDING);
    }

    #[tokio::test]
    async fn nothing_is_recorded_or_sent_while_disabled() {
        let agent = Agent::default();
        // The agent is there, but the plugin never connected (no metrics host service).
        let (_client, _socket) = serve(&agent).await;
        let m = Metrics::disabled();
        for _ in 0..100 {
            m.attest_done(&ok(), Instant::now());
        }
        m.flush(FINAL_FLUSH_WAIT).await;
        {
            let p = m.inner.lock_pending();
            assert!(p.samples.is_empty() && p.counts.iter().all(|&n| n == 0));
            assert_eq!(p.due(Instant::now()), None);
        }
        assert_eq!(calls(&agent, 0).await, vec![]);
    }

    #[tokio::test]
    async fn the_final_flush_sends_what_is_pending_once() {
        let agent = Agent::default();
        let (m, _socket) = started(&agent).await;
        for _ in 0..5 {
            m.attest_done(&ok(), Instant::now());
        }
        // Before the sender's quiet period is over.
        m.flush(FINAL_FLUSH_WAIT).await;
        assert_eq!(agent.calls().len(), 1 + 5);
        // The sender finds nothing left to send.
        let calls = calls(&agent, 1 + 5).await;
        assert_eq!(
            counters(&calls),
            vec![(key(&ATTEST_KEY), status("OK"), 5.0, 1)]
        );
        assert_eq!(calls.len(), 1 + 5);
    }

    #[tokio::test]
    async fn a_hung_agent_never_blocks_attest_and_the_final_flush_is_bounded() {
        let agent = Agent {
            stall: true,
            ..Agent::default()
        };
        let (m, _socket) = started(&agent).await;
        m.attest_done(&ok(), Instant::now());
        // The sender's first batch is now stuck in the agent.
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.entered.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(agent.entered.load(Ordering::SeqCst) > 0);
        let n = 10 * MAX_PENDING;
        let t = Instant::now();
        for _ in 0..n {
            m.attest_done(&ok(), Instant::now());
        }
        // ~50 ns each; the bound only catches a record that waits on the agent.
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        {
            let p = m.inner.lock_pending();
            assert_eq!(p.samples.len(), MAX_PENDING);
            assert_eq!(p.dropped, (n - MAX_PENDING) as u64);
            assert_eq!(p.counts[Code::Ok as usize], n as u64);
        }
        let t = Instant::now();
        m.flush(Duration::from_millis(100)).await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn flushes_when_quiet_at_the_latest_after_max_delay_or_at_high_water() {
        let t0 = Instant::now();
        let mut p = Pending::new();
        assert_eq!(p.due(t0), None);
        // The first record wakes the sender, which flushes once the path is quiet.
        assert!(p.record(Code::Ok, Duration::ZERO, t0));
        assert_eq!(p.due(t0), Some(t0 + QUIET));
        // A steady stream of Attests moves the quiet point, up to the max delay.
        let mut t = t0;
        while t < t0 + MAX_DELAY {
            t += QUIET / 2;
            assert!(!p.record(Code::Ok, Duration::ZERO, t));
            if p.samples.len() >= HIGH_WATER - 1 {
                break;
            }
        }
        assert_eq!(p.due(t), Some((t + QUIET).min(t0 + MAX_DELAY)));
        let mut p = Pending::new();
        for i in 1..=HIGH_WATER {
            // The high-water record wakes the sender, due at once.
            assert_eq!(
                p.record(Code::Ok, Duration::ZERO, t0),
                i == 1 || i == HIGH_WATER
            );
        }
        assert_eq!(
            p.due(t0 + Duration::from_nanos(1)),
            Some(t0 + Duration::from_nanos(1))
        );
        let batch = p.take(Vec::new());
        assert_eq!(batch.samples.len(), HIGH_WATER);
        assert_eq!(p.due(t0), None);
    }

    #[test]
    fn large_counts_are_sent_exactly() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _entered = rt.enter();
        let channel = Endpoint::from_static("http://unused").connect_lazy();
        let client = MetricsClient::new(channel);
        let n = 3 * MAX_EXACT_F32 + 5;
        assert_eq!(counter(&client, &ATTEST_KEY, n, &[]).len(), 4);
        assert!(counter(&client, &ATTEST_KEY, 0, &[]).is_empty());
        assert_eq!(MAX_EXACT_F32 as f32 as u64, MAX_EXACT_F32);
        assert_ne!((MAX_EXACT_F32 + 1) as f32 as u64, MAX_EXACT_F32 + 1);
    }
}
