//! The metadata cache behind `experimental.api_server.cache.enabled`: one informer per
//! resource, like the controller-runtime cache SPIRE uses, and a freshness rule that cache
//! does not have.
//!
//! An informer lists the resource's metadata (pages of [`PAGE_SIZE`]), then watches from
//! the list's resource version (`allowWatchBookmarks=true`,
//! `timeoutSeconds=`[`WATCH_TIMEOUT_SECONDS`]), re-watches from the last version seen when
//! the server ends the stream, lists again on 410 `Expired`/`Gone`, and backs off
//! [`BACKOFF_INITIAL`] doubling to [`BACKOFF_MAX`] after errors.
//!
//! Freshness: the store answers only while its watch is connected, or was last confirmed
//! (list done, watch opened, event or bookmark received, stream ended cleanly) at most
//! [`FRESHNESS`] ago. Otherwise the caller makes a live request. A silently dead connection
//! counts as connected until TCP keepalive or the client-side watch deadline
//! ([`WATCH_TIMEOUT_SECONDS`] + [`WATCH_GRACE`]) ends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::error::{ApiError, Target};
use super::transport::{self, Call, PAGE_LIMIT, Transport, WATCH_LINE_LIMIT};
use super::wire::{
    self, ACCEPT_METADATA, ACCEPT_METADATA_LIST, LineSplitter, WatchEvent, WireList, WireMeta,
};
use super::{ObjectMeta, ResourceType};

/// Objects per list page (client-go's pager default).
pub(super) const PAGE_SIZE: u32 = 500;
/// Server-side bound on one watch request.
pub(super) const WATCH_TIMEOUT_SECONDS: u64 = 60;
/// How long past `timeoutSeconds` the client waits for the server to end a watch.
pub(super) const WATCH_GRACE: Duration = Duration::from_secs(15);
/// Longest time a store answers after its watch was last confirmed (see the module doc).
pub(super) const FRESHNESS: Duration = Duration::from_secs(10);
pub(super) const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Whether a store may answer now: synced, and connected or confirmed within
/// [`FRESHNESS`].
pub(super) fn is_fresh(
    synced: bool,
    connected: bool,
    confirmed_at: Option<Instant>,
    now: Instant,
) -> bool {
    synced
        && (connected
            || confirmed_at.is_some_and(|at| now.saturating_duration_since(at) <= FRESHNESS))
}

/// 0.5 s, 1 s, 2 s, … 30 s; back to the start after a success.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
    pub fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        now
    }
    pub fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncState {
    /// The first list has not ended yet: first users wait.
    Pending,
    /// The first list failed: users go live (and see the real error) until one succeeds.
    FirstListFailed,
    Synced,
}

#[derive(Default)]
struct Store {
    /// By (namespace, name); namespace "" for cluster-scoped resources.
    objects: HashMap<(String, String), ObjectMeta>,
    synced: bool,
    connected: bool,
    confirmed_at: Option<Instant>,
}

struct Shared {
    store: Mutex<Store>,
    sync: watch::Sender<SyncState>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The store's answer if it is fresh.
    fn fresh<T>(&self, answer: impl FnOnce(&Store) -> T) -> Option<T> {
        let store = self.store();
        is_fresh(
            store.synced,
            store.connected,
            store.confirmed_at,
            Instant::now(),
        )
        .then(|| answer(&store))
    }
}

/// One resource's informer. Dropping it stops its task.
pub(super) struct Informer {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

impl Drop for Informer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Informer {
    /// Starts the list-and-watch task (needs a Tokio runtime).
    pub fn start(transport: Arc<Transport>, rt: ResourceType) -> Informer {
        let (sync, _) = watch::channel(SyncState::Pending);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            sync,
        });
        let task = tokio::spawn(run(transport, rt, Arc::clone(&shared))).abort_handle();
        Informer { shared, task }
    }

    /// Waits until the first list has ended, in success or failure (bounded by the
    /// caller: drop the future to stop waiting).
    pub async fn first_list(&self) {
        let mut rx = self.shared.sync.subscribe();
        // Err only if the sender is gone, which `self` prevents.
        let _ = rx.wait_for(|s| *s != SyncState::Pending).await;
    }

    /// `None`: not fresh, ask the server. `Some(None)`: absent from a fresh store.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Option<ObjectMeta>> {
        self.shared.fresh(|store| {
            store
                .objects
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned()
        })
    }

    /// `None`: not fresh, ask the server.
    pub fn find_uid(&self, uid: &str) -> Option<Option<ObjectMeta>> {
        self.shared
            .fresh(|store| store.objects.values().find(|m| m.uid == uid).cloned())
    }
}

fn key(m: &ObjectMeta) -> (String, String) {
    (m.namespace.clone(), m.name.clone())
}

/// Lists `rt`'s metadata page by page, giving each object to `visit` until it returns
/// `true` (found, stop). Returns the list's resource version.
pub(super) async fn list_pages(
    transport: &Transport,
    rt: &ResourceType,
    mut visit: impl FnMut(WireMeta) -> bool,
) -> Result<String, ApiError> {
    let base = wire::collection_path(rt);
    let target = Target {
        verb: "list",
        group: rt.group.clone(),
        plural: rt.plural.clone(),
        name: String::new(),
    };
    let mut continue_token = String::new();
    loop {
        let mut path = format!("{base}?limit={PAGE_SIZE}");
        if !continue_token.is_empty() {
            path.push_str("&continue=");
            path.push_str(&wire::escape(&continue_token));
        }
        let body = transport
            .call(&Call::get(
                path.clone(),
                ACCEPT_METADATA_LIST,
                PAGE_LIMIT,
                target.clone(),
            ))
            .await?;
        let page: WireList = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            method: "Get",
            url: transport.url(&path),
            reason: e.to_string(),
        })?;
        for item in page.items {
            if visit(item.metadata) {
                return Ok(page.metadata.resource_version);
            }
        }
        if page.metadata.continue_token.is_empty() {
            return Ok(page.metadata.resource_version);
        }
        continue_token = page.metadata.continue_token;
    }
}

/// How one watch request ended.
enum WatchEnd {
    /// The server ended it (its `timeoutSeconds`): watch again from the last version.
    Closed,
    /// 410: the version is too old, list again.
    Expired,
    Failed(String),
}

async fn run(transport: Arc<Transport>, rt: ResourceType, shared: Arc<Shared>) {
    let what = super::error::group_resource(&rt.group, &rt.plural);
    let mut backoff = Backoff::new();
    let mut resource_version: Option<String> = None;
    loop {
        let rv = match resource_version.take() {
            Some(rv) => rv,
            None => {
                let mut objects = HashMap::new();
                let listed = list_pages(&transport, &rt, |m| {
                    let meta = ObjectMeta::from(m);
                    objects.insert(key(&meta), meta);
                    false
                })
                .await;
                match listed {
                    Ok(rv) => {
                        {
                            let mut store = shared.store();
                            store.objects = objects;
                            store.synced = true;
                            store.confirmed_at = Some(Instant::now());
                        }
                        shared.sync.send_replace(SyncState::Synced);
                        backoff.reset();
                        rv
                    }
                    Err(e) => {
                        log::warn!("API server cache: listing {what} failed: {e}");
                        shared.sync.send_if_modified(|s| {
                            let first = *s == SyncState::Pending;
                            if first {
                                *s = SyncState::FirstListFailed;
                            }
                            first
                        });
                        tokio::time::sleep(backoff.next()).await;
                        continue;
                    }
                }
            }
        };
        let mut rv = rv;
        let end = watch_once(&transport, &rt, &mut rv, &shared).await;
        shared.store().connected = false;
        match end {
            WatchEnd::Closed => {
                shared.store().confirmed_at = Some(Instant::now());
                backoff.reset();
                resource_version = Some(rv);
            }
            WatchEnd::Expired => {
                log::debug!(
                    "API server cache: {what} resource version {rv} expired; listing again"
                );
            }
            WatchEnd::Failed(e) => {
                log::warn!("API server cache: watching {what} failed: {e}");
                tokio::time::sleep(backoff.next()).await;
                resource_version = Some(rv);
            }
        }
    }
}

async fn watch_once(
    transport: &Transport,
    rt: &ResourceType,
    rv: &mut String,
    shared: &Shared,
) -> WatchEnd {
    let path = format!(
        "{}?watch=1&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_SECONDS}",
        wire::collection_path(rt),
        wire::escape(rv)
    );
    let target = Target {
        verb: "watch",
        group: rt.group.clone(),
        plural: rt.plural.clone(),
        name: String::new(),
    };
    let mut body = match transport.open_stream(&path, ACCEPT_METADATA, &target).await {
        Ok(body) => body,
        Err(e) if e.http_status() == Some(410) => return WatchEnd::Expired,
        Err(e) => return WatchEnd::Failed(e.to_string()),
    };
    {
        let mut store = shared.store();
        store.connected = true;
        store.confirmed_at = Some(Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(WATCH_TIMEOUT_SECONDS) + WATCH_GRACE;
    let mut lines = LineSplitter::new(WATCH_LINE_LIMIT.bytes);
    loop {
        let chunk = match tokio::time::timeout_at(deadline, transport::next_chunk(&mut body)).await
        {
            Err(_) => {
                return WatchEnd::Failed(format!(
                    "the server did not end the watch {}s after its timeoutSeconds",
                    WATCH_GRACE.as_secs()
                ));
            }
            Ok(Err(cause)) => return WatchEnd::Failed(cause),
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => {
                return match lines.finish() {
                    Some(line) => match apply(&line, rv, shared) {
                        Some(end) => end,
                        None => WatchEnd::Closed,
                    },
                    None => WatchEnd::Closed,
                };
            }
        };
        let complete = match lines.push(&chunk) {
            Ok(complete) => complete,
            Err(max) => {
                return WatchEnd::Failed(format!(
                    "a watch event exceeds the {} MiB limit for {}",
                    max >> 20,
                    WATCH_LINE_LIMIT.what
                ));
            }
        };
        for line in complete {
            if let Some(end) = apply(&line, rv, shared) {
                return end;
            }
        }
    }
}

/// Applies one event line; `Some` ends the watch.
fn apply(line: &[u8], rv: &mut String, shared: &Shared) -> Option<WatchEnd> {
    let event = match wire::decode_watch_line(line) {
        Ok(event) => event,
        Err(e) => return Some(WatchEnd::Failed(format!("undecodable watch event: {e}"))),
    };
    let mut store = shared.store();
    store.confirmed_at = Some(Instant::now());
    match event {
        WatchEvent::Added(m) | WatchEvent::Modified(m) => {
            rv.clone_from(&m.resource_version);
            let meta = ObjectMeta::from(m);
            store.objects.insert(key(&meta), meta);
        }
        WatchEvent::Deleted(m) => {
            rv.clone_from(&m.resource_version);
            let meta = ObjectMeta::from(m);
            store.objects.remove(&key(&meta));
        }
        WatchEvent::Bookmark(version) => *rv = version,
        WatchEvent::Error(e) if e.http_status() == Some(410) => return Some(WatchEnd::Expired),
        WatchEvent::Error(e) => return Some(WatchEnd::Failed(e.to_string())),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_needs_sync_and_a_recent_confirmation() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        assert!(!is_fresh(false, true, Some(t0), t0), "never synced");
        assert!(is_fresh(true, true, Some(t0), later(3600)), "connected");
        assert!(
            is_fresh(true, false, Some(t0), later(10)),
            "within the bound"
        );
        assert!(
            !is_fresh(true, false, Some(t0), later(11)),
            "past the bound"
        );
        assert!(!is_fresh(true, false, None, t0));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let seq: Vec<u64> = (0..9).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(
            seq,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next(), BACKOFF_INITIAL);
    }

    fn shared() -> Shared {
        let (sync, _) = watch::channel(SyncState::Pending);
        Shared {
            store: Mutex::new(Store {
                synced: true,
                connected: true,
                ..Store::default()
            }),
            sync,
        }
    }

    #[test]
    fn events_update_the_store_and_the_version() {
        let s = shared();
        let mut rv = "1".to_owned();
        let added = br#"{"type":"ADDED","object":{"metadata":{"name":"a","uid":"u","resourceVersion":"2","labels":{"k":"v"}}}}"#;
        assert!(apply(added, &mut rv, &s).is_none());
        assert_eq!(rv, "2");
        assert_eq!(s.fresh(|st| st.objects.len()), Some(1));
        let modified = br#"{"type":"MODIFIED","object":{"metadata":{"name":"a","uid":"u","resourceVersion":"3","labels":{"k":"w"}}}}"#;
        apply(modified, &mut rv, &s);
        assert_eq!(
            s.fresh(|st| st.objects[&(String::new(), "a".to_owned())].labels["k"].clone()),
            Some("w".to_owned())
        );
        apply(
            br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}"#,
            &mut rv,
            &s,
        );
        assert_eq!(rv, "9");
        apply(
            br#"{"type":"DELETED","object":{"metadata":{"name":"a","uid":"u","resourceVersion":"10"}}}"#,
            &mut rv,
            &s,
        );
        assert_eq!(s.fresh(|st| st.objects.len()), Some(0));
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","message":"too old resource version","reason":"Expired","code":410}}"#;
        assert!(matches!(apply(gone, &mut rv, &s), Some(WatchEnd::Expired)));
        assert!(matches!(
            apply(b"{", &mut rv, &s),
            Some(WatchEnd::Failed(_))
        ));
    }
}
