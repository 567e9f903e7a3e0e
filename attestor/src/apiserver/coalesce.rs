//! Sharing one in-flight request among concurrent callers asking the same thing.
//!
//! The request runs in its own task, so a caller that gives up (its future is dropped)
//! does not cancel it for the others. The key is forgotten when the request ends, before
//! its answer is handed out: a caller arriving after that starts a new request (this is
//! not a cache).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::error::ApiError;

type Slot<V> = watch::Receiver<Option<Result<V, ApiError>>>;

/// In-flight requests by key.
pub(super) struct Flights<K, V> {
    inflight: Arc<Mutex<HashMap<K, Slot<V>>>>,
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Flights {
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The answer of the request in flight for `key`, or of a new one made by `start`
    /// (called only when none is in flight).
    pub async fn run<F, Fut>(&self, key: K, start: F) -> Result<V, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, ApiError>> + Send + 'static,
    {
        let mut slot = {
            let mut inflight = self
                .inflight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match inflight.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx.clone());
                    let request = start();
                    let map = Arc::clone(&self.inflight);
                    tokio::spawn(async move {
                        let answer = request.await;
                        // Forget first: whoever comes after this point asks anew.
                        map.lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .remove(&key);
                        // No receiver left is fine: every caller gave up.
                        let _ = tx.send(Some(answer));
                    });
                    rx
                }
            }
        };
        match slot.wait_for(Option::is_some).await {
            Ok(answer) => answer.clone().unwrap_or(Err(ApiError::Abandoned)),
            // The task ended without answering (it panicked).
            Err(_) => Err(ApiError::Abandoned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_one_request() {
        let flights = Arc::new(Flights::<String, u32>::new());
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut callers = Vec::new();
        for _ in 0..200 {
            let (flights, started, gate) = (flights.clone(), started.clone(), gate.clone());
            callers.push(tokio::spawn(async move {
                flights
                    .run("ns".to_owned(), || async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok(7)
                    })
                    .await
            }));
        }
        // Let every caller join the flight before the answer comes.
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        gate.notify_one();
        for c in callers {
            assert_eq!(c.await.unwrap().unwrap(), 7);
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);

        // After it ended, a new call makes a new request.
        let again = flights
            .run("ns".to_owned(), || async { Ok(8) })
            .await
            .unwrap();
        assert_eq!(again, 8);
    }

    #[tokio::test]
    async fn a_caller_giving_up_does_not_cancel_the_others() {
        let flights = Arc::new(Flights::<&'static str, u32>::new());
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let first = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        g.notified().await;
                        Ok(1)
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        let second = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", || async { Ok(2) }).await })
        };
        tokio::task::yield_now().await;
        first.abort();
        gate.notify_one();
        assert_eq!(
            second.await.unwrap().unwrap(),
            1,
            "shared the first request"
        );
    }

    #[tokio::test]
    async fn errors_are_shared_and_keys_are_separate() {
        let flights = Flights::<&'static str, u32>::new();
        let err = flights
            .run("a", || async {
                Err(ApiError::not_found("", "namespaces", "a"))
            })
            .await
            .unwrap_err();
        assert!(err.is_not_found());
        let (a, b) = tokio::join!(
            flights.run("a", || async { Ok(1) }),
            flights.run("b", || async { Ok(2) })
        );
        assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
    }
}
