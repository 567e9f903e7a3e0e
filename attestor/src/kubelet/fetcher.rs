//! Shared, rate-limited, versioned pod-list fetches and the attestation poll loop.
//!
//! Semantics (SPIRE v1.15.3 `podlistfetcher.go`, #7085):
//!
//! * Concurrent callers share one in-flight request.
//! * Request *starts* are at least `poll_retry_interval` apart, across all callers
//!   (the kubelet sees at most one `/pods` per interval from this agent, however many
//!   workloads are attesting; SPIRE users hit kubelet load and memory spikes without this).
//! * Each successful list gets a version, increasing by one per success. A list is served
//!   from cache to a caller only while it is *fresh* (its request started less than one
//!   interval ago) and newer than what that caller already searched.
//! * A caller that already searched version `v` always gets a list newer than `v`, so the
//!   poll loop never searches the same list twice.
//! * Failures are not cached: the waiters of a failed request get its error; the next
//!   caller starts a new request (once the interval allows).
//! * The request runs in a spawned task: a caller that goes away (its future dropped, or
//!   its cancel future completes) leaves the request running for the others, and the
//!   result still updates the cache.
//!
//! Time is tokio time, so tests may use `tokio::time::pause`.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{KubeletClient, KubeletError};
use crate::status::{Code, Status};

/// The fetch operation behind a [`PodListFetcher`]: the kubelet client, or a fake.
pub trait FetchPods: Send + Sync + 'static {
    /// Failure of one fetch; only its `Display` text is kept.
    type Error: fmt::Display + Send + 'static;
    /// Fetch the raw `/pods` body once.
    fn fetch_pods(&self) -> impl Future<Output = Result<Bytes, Self::Error>> + Send;
}

impl FetchPods for KubeletClient {
    type Error = KubeletError;
    fn fetch_pods(&self) -> impl Future<Output = Result<Bytes, KubeletError>> + Send {
        KubeletClient::fetch_pods(self)
    }
}

impl<T: FetchPods> FetchPods for Arc<T> {
    type Error = T::Error;
    fn fetch_pods(&self) -> impl Future<Output = Result<Bytes, Self::Error>> + Send {
        T::fetch_pods(self)
    }
}

/// Adapts a closure returning a future to [`FetchPods`] (fakes in tests).
pub struct FetchFn<F>(pub F);

impl<F, Fut, E> FetchPods for FetchFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, E>> + Send,
    E: fmt::Display + Send + 'static,
{
    type Error = E;
    fn fetch_pods(&self) -> impl Future<Output = Result<Bytes, E>> + Send {
        (self.0)()
    }
}

/// One successful `/pods` answer. Cloning shares the body (no copy), so a thousand
/// waiters on one request hold one buffer.
#[derive(Clone)]
pub struct PodList {
    version: u64,
    body: Bytes,
    started: Instant,
}

impl PodList {
    /// 1 for the first successful list, +1 for each later one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The raw JSON body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// When the request that produced this list started.
    pub fn started(&self) -> Instant {
        self.started
    }
}

impl fmt::Debug for PodList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodList")
            .field("version", &self.version)
            .field("bytes", &self.body.len())
            .finish()
    }
}

/// A failed fetch as its waiters see it (the fetch error's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailure(Arc<str>);

impl FetchFailure {
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FetchFailure {}

type Outcome = Option<Result<PodList, FetchFailure>>;

struct State {
    latest: Option<PodList>,
    last_start: Option<Instant>,
    in_flight: Option<watch::Receiver<Outcome>>,
    versions: u64,
    requests_started: u64,
}

struct Inner<F> {
    fetch: F,
    interval: Duration,
    state: Mutex<State>,
}

impl<F> Inner<F> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is valid after any panic (every update is a single assignment), so a
        // poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shares pod-list fetches between concurrent attestations. Clones share everything.
pub struct PodListFetcher<F> {
    inner: Arc<Inner<F>>,
}

impl<F> Clone for PodListFetcher<F> {
    fn clone(&self) -> Self {
        PodListFetcher {
            inner: self.inner.clone(),
        }
    }
}

impl<F> fmt::Debug for PodListFetcher<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("PodListFetcher")
            .field("interval", &self.inner.interval)
            .field("latest_version", &st.latest.as_ref().map(|l| l.version))
            .field("requests_started", &st.requests_started)
            .finish_non_exhaustive()
    }
}

/// What [`PodListFetcher::newer_than`] decided under the lock.
enum Step {
    Ready(PodList),
    Wait(watch::Receiver<Outcome>),
    Sleep(Instant),
}

impl<F: FetchPods> PodListFetcher<F> {
    /// `poll_retry_interval` is the minimum time between request starts (SPIRE default
    /// 500 ms). Needs a tokio runtime when used (fetches run in spawned tasks).
    pub fn new(fetch: F, poll_retry_interval: Duration) -> Self {
        PodListFetcher {
            inner: Arc::new(Inner {
                fetch,
                interval: poll_retry_interval,
                state: Mutex::new(State {
                    latest: None,
                    last_start: None,
                    in_flight: None,
                    versions: 0,
                    requests_started: 0,
                }),
            }),
        }
    }

    /// How many fetches this fetcher has started (for metrics and tests).
    pub fn requests_started(&self) -> u64 {
        self.inner.lock().requests_started
    }

    /// The fetch operation (e.g. the kubelet client).
    pub fn fetcher(&self) -> &F {
        &self.inner.fetch
    }

    /// A pod list newer than version `seen` (any fresh list when `None`): the cached one
    /// if fresh and newer, else the in-flight request's result, else a new request as
    /// soon as the interval allows. Cancel-safe: dropping the future only stops waiting.
    pub async fn newer_than(&self, seen: Option<u64>) -> Result<PodList, FetchFailure> {
        let seen = seen.unwrap_or(0);
        loop {
            let step = self.step(seen);
            match step {
                Step::Ready(list) => return Ok(list),
                Step::Sleep(until) => tokio::time::sleep_until(until).await,
                Step::Wait(mut rx) => {
                    let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
                    match outcome {
                        Ok(Some(Ok(list))) if list.version > seen => return Ok(list),
                        // Cannot happen (versions only grow); look again rather than
                        // hand back a list this caller has seen.
                        Ok(Some(Ok(_))) => {}
                        Ok(Some(Err(failure))) => return Err(failure),
                        Ok(None) | Err(_) => {
                            // The fetch task ended without a result (it panicked):
                            // clear it so the next caller starts afresh.
                            let mut st = self.inner.lock();
                            if st.in_flight.as_ref().is_some_and(|r| r.same_channel(&rx)) {
                                st.in_flight = None;
                            }
                            return Err(FetchFailure("pod list fetch ended unexpectedly".into()));
                        }
                    }
                }
            }
        }
    }

    fn step(&self, seen: u64) -> Step {
        let now = Instant::now();
        let mut st = self.inner.lock();
        if let Some(latest) = &st.latest
            && latest.version > seen
            && now < latest.started + self.inner.interval
        {
            return Step::Ready(latest.clone());
        }
        if let Some(rx) = &st.in_flight {
            return Step::Wait(rx.clone());
        }
        if let Some(last) = st.last_start {
            let allowed = last + self.inner.interval;
            if now < allowed {
                return Step::Sleep(allowed);
            }
        }
        // Start a request.
        let (tx, rx) = watch::channel(None);
        st.last_start = Some(now);
        st.requests_started += 1;
        st.in_flight = Some(rx.clone());
        drop(st);

        let inner = self.inner.clone();
        tokio::spawn(async move {
            let result = inner.fetch.fetch_pods().await;
            let outcome = {
                let mut st = inner.lock();
                let outcome = match result {
                    Ok(body) => {
                        st.versions += 1;
                        let list = PodList {
                            version: st.versions,
                            body,
                            started: now,
                        };
                        st.latest = Some(list.clone());
                        Ok(list)
                    }
                    Err(e) => Err(FetchFailure(e.to_string().into())),
                };
                st.in_flight = None;
                outcome
            };
            // No receivers left is fine: the cache is already updated.
            let _ = tx.send(Some(outcome));
        });
        Step::Wait(rx)
    }

    /// The attestation poll loop. Attempt `1..=max_attempts` (at least one) gets a list
    /// newer than the last one seen and calls `search` on it:
    ///
    /// * `Ok(Some(t))` ⇒ `Ok(t)`; `Err(status)` ⇒ that status at once (e.g. a pod JSON
    ///   decode error);
    /// * `Ok(None)` (a miss) or a fetch failure ⇒ next attempt, which waits for the next
    ///   allowed request.
    ///
    /// After the last attempt: if it failed to fetch, `Unavailable` with that error (the
    /// kubelet is the problem); if it got a list, `DeadlineExceeded` "no selectors found
    /// after max poll attempts" (the workload is not in the kubelet's list). An earlier
    /// failure followed by successful lists counts as a miss: the kubelet recovered.
    ///
    /// `cancel` completing ⇒ `Canceled` "attestation canceled". Dropping the returned
    /// future cancels too. Neither affects other callers' shared request.
    pub async fn poll<T>(
        &self,
        max_attempts: u32,
        mut search: impl FnMut(&PodList) -> Result<Option<T>, Status>,
        cancel: impl Future<Output = ()>,
    ) -> Result<T, Status> {
        let attempts = async {
            let mut seen = None;
            let mut last_error: Option<FetchFailure> = None;
            for _attempt in 1..=max_attempts.max(1) {
                match self.newer_than(seen).await {
                    Ok(list) => {
                        seen = Some(list.version);
                        last_error = None;
                        if let Some(found) = search(&list)? {
                            return Ok(found);
                        }
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            Err(match last_error {
                Some(e) => Status::new(Code::Unavailable, e.to_string()),
                None => crate::status::gave_up(),
            })
        };
        tokio::select! {
            result = attempts => result,
            () = cancel => Err(crate::status::cancelled()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    type Ready = std::future::Ready<Result<Bytes, String>>;
    type Counting = PodListFetcher<FetchFn<Box<dyn Fn() -> Ready + Send + Sync>>>;

    fn counting_fetcher(interval: Duration) -> (Counting, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let f: Box<dyn Fn() -> Ready + Send + Sync> = Box::new(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(Ok(Bytes::from(format!("list {n}"))))
        });
        (PodListFetcher::new(FetchFn(f), interval), calls)
    }

    #[tokio::test(start_paused = true)]
    async fn newer_than_never_repeats_a_version() {
        let (f, calls) = counting_fetcher(Duration::from_millis(500));
        let a = f.newer_than(None).await.map(|l| l.version());
        assert_eq!(a, Ok(1));
        // Fresh cache serves a first-time caller without a request.
        let b = f.newer_than(None).await.map(|l| l.version());
        assert_eq!(b, Ok(1));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let c = f.newer_than(Some(1)).await.map(|l| l.version());
        assert_eq!(c, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn request_starts_are_an_interval_apart() {
        let (f, calls) = counting_fetcher(Duration::from_millis(500));
        let t0 = Instant::now();
        let mut seen = None;
        for _ in 0..5 {
            seen = f.newer_than(seen).await.ok().map(|l| l.version());
        }
        assert_eq!(seen, Some(5));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // Paused clock: elapsed is exactly the enforced waits.
        assert_eq!(t0.elapsed(), Duration::from_millis(2000));
    }

    #[tokio::test(start_paused = true)]
    async fn poll_outcomes() {
        let (f, _) = counting_fetcher(Duration::from_millis(10));
        let found = f
            .poll(
                5,
                |l| Ok((l.version() == 3).then_some(l.version())),
                std::future::pending(),
            )
            .await;
        assert_eq!(found, Ok(3));
        let miss = f
            .poll(3, |_| Ok(None::<()>), std::future::pending())
            .await
            .map_err(|s| s.code);
        assert_eq!(miss, Err(Code::DeadlineExceeded));
        let cancelled = f
            .poll(3, |_| Ok(None::<()>), std::future::ready(()))
            .await
            .map_err(|s| s.code);
        assert_eq!(cancelled, Err(Code::Cancelled));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_not_cached_and_last_error_wins() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let f = PodListFetcher::new(
            FetchFn(move || {
                c.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err::<Bytes, _>("kubelet said no"))
            }),
            Duration::from_millis(10),
        );
        let r = f.poll(4, |_| Ok(None::<()>), std::future::pending()).await;
        assert_eq!(r, Err(Status::new(Code::Unavailable, "kubelet said no")));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_the_shared_request_running() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let f = PodListFetcher::new(
            FetchFn(move || {
                let c = c.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(Bytes::from_static(b"{}"))
                }
            }),
            Duration::from_millis(500),
        );
        let a = {
            let f = f.clone();
            tokio::spawn(async move { f.newer_than(None).await.map(|l| l.version()) })
        };
        let b = {
            let f = f.clone();
            tokio::spawn(async move {
                f.poll(
                    3,
                    |l| Ok(Some(l.version())),
                    tokio::time::sleep(Duration::from_millis(10)),
                )
                .await
            })
        };
        tokio::task::yield_now().await;
        let b = b.await.map_err(|e| e.to_string());
        assert_eq!(
            b,
            Ok(Err(Status::new(Code::Cancelled, "attestation canceled")))
        );
        let a = a.await.map_err(|e| e.to_string());
        assert_eq!(a, Ok(Ok(1)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(f.requests_started(), 1);
    }
}
