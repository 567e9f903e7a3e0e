//! One scan per pod-list version: where each pod is and which status entries name which
//! container, so each attestation costs a hash lookup and the decode of its own pod.
//!
//! Why: a kubelet list is ~11 KB per pod; scanning all of it for every container that asks
//! (what `pods::find` did until issue 14) costs ~1.5 ms per attestation on a 250-pod list,
//! so a burst of distinct containers on one list (a node reboot, a rollout, a Job fan-out)
//! cost more CPU than SPIRE, which parses a list once and looks pods up in a map. The index
//! is built by the first attestation that searches a list version and shared by the others
//! (`attest` keeps one per version; the replay CLI and the fuzz targets build one per body).
//!
//! What it holds, all as byte ranges into the body (nothing is copied but strings with
//! escapes, which kubelets do not send in UIDs or container IDs):
//! * each pod with a non-empty `metadata.uid` (SPIRE keys pods by UID and skips the others):
//!   its byte range and its UID;
//! * each status entry (`containerStatuses`, `initContainerStatuses`,
//!   `ephemeralContainerStatuses`) whose `containerID` is a URL with a host: that host, the
//!   pod, the list and the position in it;
//! * chains of pods with the same UID and entries with the same container host, in list
//!   order, so a container named in two pods is still SPIRE's "two pods found with same
//!   container Id" and a UID listed twice still has both pods examined.
//!
//! Memory bound: [`BASE_BYTES`], then [`POD_BYTES`] per pod and [`ENTRY_BYTES`] per status
//! entry (the slot and its share of a hash map), plus the text of escaped strings (never
//! more than the body); [`PodIndex::heap_bytes`] reports what one index takes.
//! At most [`MAX_PODS`] pods and [`MAX_ENTRIES`] entries are indexed: a list beyond that is
//! refused ([`PodsError::TooLarge`]) rather than indexed without bound: 62 bytes per pod
//! and 66 per entry (x86_64) make at most ~12 MiB, whatever the body. A 250-pod list with
//! five status entries per pod takes ~85 KB, 3 % of its body (`cargo xtask bench podlist`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use bytes::Bytes;

use super::scan::{ScanResult, Scanner};
use super::{Found, Pod, PodsError, SearchOptions, StatusList, container_id_host};
use crate::locator::ContainerRef;

/// Pods indexed per list at most (a kubelet runs 110 by default, a few hundred at most).
pub const MAX_PODS: usize = 1 << 16;
/// Status entries with a container ID indexed per list at most (~2 per pod in practice).
pub const MAX_ENTRIES: usize = 1 << 17;
/// Bytes per indexed pod: its slot and its UID's hash-map slot (bucket + control byte at
/// the map's worst load factor).
pub const POD_BYTES: usize = std::mem::size_of::<PodSlot>() + MAP_SLOT_BYTES;
/// Bytes per indexed status entry, likewise.
pub const ENTRY_BYTES: usize = std::mem::size_of::<EntrySlot>() + MAP_SLOT_BYTES;
/// Bytes of an index whatever its size: the two hash maps' smallest tables.
pub const BASE_BYTES: usize =
    2 * MIN_MAP_CAPACITY * (std::mem::size_of::<(u64, Chain)>() + 1) * 8 / 7;
/// A hash-map bucket (`u64` key, [`Chain`]) and its control byte, over the 7/8 load factor,
/// doubled for tables sized by powers of two.
const MAP_SLOT_BYTES: usize = (std::mem::size_of::<(u64, Chain)>() + 1) * 8 / 7 * 2;
/// The capacity of std's smallest non-empty hash table (4 buckets).
const MIN_MAP_CAPACITY: usize = 3;

// The bound SECURITY.md and the module doc state, checked when compiling (x86_64 sizes).
const _: () = assert!(POD_BYTES <= 64 && ENTRY_BYTES <= 68);
const _: () = assert!(BASE_BYTES + MAX_PODS * POD_BYTES + MAX_ENTRIES * ENTRY_BYTES <= 13 << 20);

/// End of a chain.
const NONE: u32 = u32::MAX;

/// One pod list, scanned once. Cheap lookups from any number of threads (`&self`).
pub struct PodIndex {
    body: Bytes,
    state: Result<Entries, PodsError>,
}

/// A string of the body: a byte range of it, or (escaped in the JSON) unescaped text kept
/// beside the index.
#[derive(Clone, Copy)]
enum Text {
    Body { start: u32, end: u32 },
    Owned(u32),
}

/// First and last element of a chain (pods with one UID, entries with one container host).
#[derive(Clone, Copy)]
struct Chain {
    first: u32,
    last: u32,
}

struct PodSlot {
    start: u32,
    end: u32,
    uid: Text,
    /// Next pod with the same UID's hash, in list order.
    next: u32,
}

struct EntrySlot {
    host: Text,
    pod: u32,
    index: u32,
    list: StatusList,
    /// Next entry with the same host's hash, in list order.
    next: u32,
}

struct Entries {
    hasher: RandomState,
    pods: Vec<PodSlot>,
    entries: Vec<EntrySlot>,
    by_uid: HashMap<u64, Chain>,
    by_host: HashMap<u64, Chain>,
    owned: Vec<Box<str>>,
    /// More than [`MAX_ENTRIES`] status entries were met.
    overflow: bool,
}

impl PodIndex {
    /// Scans `body` once. Never fails: a body that is not a pod list is remembered, and
    /// every lookup answers with the error SPIRE would give for it (worded once, here).
    pub fn new(body: impl Into<Bytes>) -> PodIndex {
        let body = body.into();
        let state = Entries::build(&body);
        PodIndex { body, state }
    }

    /// The body this index was built from.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Pods indexed (those with a non-empty UID); 0 for a refused list.
    pub fn pod_count(&self) -> usize {
        self.state.as_ref().map_or(0, |e| e.pods.len())
    }

    /// Status entries indexed (those with a container ID host); 0 for a refused list.
    pub fn entry_count(&self) -> usize {
        self.state.as_ref().map_or(0, |e| e.entries.len())
    }

    /// Heap memory of the index itself, not counting the body it shares.
    pub fn heap_bytes(&self) -> usize {
        let Ok(e) = &self.state else {
            return 0;
        };
        let map = |m: &HashMap<u64, Chain>| {
            m.capacity() * (std::mem::size_of::<(u64, Chain)>() + 1) * 8 / 7
        };
        e.pods.capacity() * std::mem::size_of::<PodSlot>()
            + e.entries.capacity() * std::mem::size_of::<EntrySlot>()
            + map(&e.by_uid)
            + map(&e.by_host)
            + e.owned.capacity() * std::mem::size_of::<Box<str>>()
            + e.owned.iter().map(|s| s.len()).sum::<usize>()
    }

    /// Searches the list for the target container, with SPIRE's rules (see the module
    /// `pods`): `Ok(Some(found))` the one pod that holds it, decoded in full; `Ok(None)`
    /// not in this list.
    pub fn find(
        &self,
        target: &ContainerRef,
        opts: &SearchOptions,
    ) -> Result<Option<Found>, PodsError> {
        let e = self.state.as_ref().map_err(Clone::clone)?;
        let mut found: Option<Found> = None;
        for (pod, matched) in self.candidates(e, target, opts) {
            // SPIRE decodes the first pod before it meets the second.
            if found.is_some() {
                return Err(PodsError::TwoPods);
            }
            let matched = matched.filter(|_| !opts.disable_container_selectors);
            found = Some(Found {
                pod: self.decode(&e.pods[pod])?,
                matched,
            });
        }
        Ok(found)
    }

    /// The pods whose `metadata.uid` is `uid`, decoded in full: normally none or one (the
    /// runtime fast path looks the CRI's pod up by it; two is a list it refuses).
    pub fn pods_with_uid(&self, uid: &str) -> Result<Vec<Pod>, PodsError> {
        let e = self.state.as_ref().map_err(Clone::clone)?;
        e.pods_with_uid(&self.body, uid)
            .map(|p| self.decode(&e.pods[p]))
            .collect()
    }

    /// The pod with `metadata.uid` = `uid`, decoded in full, as the Broker API's pod
    /// reference finds it in SPIRE's UID-keyed map (`k8s.go`, `findPodByUID`): a UID listed
    /// twice gives the later pod, as the map keeps the last one parsed.
    pub fn pod_with_uid(&self, uid: &str) -> Result<Option<Pod>, PodsError> {
        let e = self.state.as_ref().map_err(Clone::clone)?;
        e.pods_with_uid(&self.body, uid)
            .last()
            .map(|p| self.decode(&e.pods[p]))
            .transpose()
    }

    /// The first pod in list order named `namespace`/`name`, decoded in full (`k8s.go`,
    /// `findPodByName`: a walk over the list, comparing only those two fields; a pod whose
    /// metadata does not read as strings is skipped, as fastjson's `GetStringBytes` skips it).
    pub fn pod_named(&self, namespace: &str, name: &str) -> Result<Option<Pod>, PodsError> {
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow, default)]
            metadata: Option<NamedMeta<'a>>,
        }
        #[derive(serde::Deserialize)]
        struct NamedMeta<'a> {
            #[serde(borrow, default)]
            namespace: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow, default)]
            name: Option<std::borrow::Cow<'a, str>>,
        }
        let e = self.state.as_ref().map_err(Clone::clone)?;
        for pod in &e.pods {
            let bytes = &self.body[pod.start as usize..pod.end as usize];
            let Ok(Named {
                metadata: Some(meta),
            }) = serde_json::from_slice::<Named<'_>>(bytes)
            else {
                continue;
            };
            if meta.namespace.as_deref().unwrap_or_default() == namespace
                && meta.name.as_deref().unwrap_or_default() == name
            {
                return self.decode(pod).map(Some);
            }
        }
        Ok(None)
    }

    /// Pods that yield selectors for `target`, in list order, each with its first matching
    /// status entry (search order: the lists in [`StatusList`] order, then position).
    fn candidates(
        &self,
        e: &Entries,
        target: &ContainerRef,
        opts: &SearchOptions,
    ) -> Vec<(usize, Option<(StatusList, usize)>)> {
        let body = &self.body;
        let cid = target.container_id.as_str();
        let first_match = |pod: usize| {
            e.entries_for(body, cid)
                .filter(|&i| e.entries[i].pod as usize == pod)
                // The first entry of the earliest list (min_by_key keeps the first of ties).
                .min_by_key(|&i| e.entries[i].list)
                .map(|i| (e.entries[i].list, e.entries[i].index as usize))
        };
        match &target.pod_uid {
            // Only the pod(s) the cgroup names; found by UID alone with container
            // selectors off.
            Some(uid) => e
                .pods_with_uid(body, uid)
                .filter_map(|pod| {
                    let matched = first_match(pod);
                    (matched.is_some() || opts.disable_container_selectors)
                        .then_some((pod, matched))
                })
                .collect(),
            None => {
                let mut pods: Vec<usize> = e
                    .entries_for(body, cid)
                    .map(|i| e.entries[i].pod as usize)
                    .collect();
                // Entries come in list order, so a pod's entries are adjacent.
                pods.dedup();
                pods.into_iter()
                    .map(|pod| (pod, first_match(pod)))
                    .collect()
            }
        }
    }

    fn decode(&self, pod: &PodSlot) -> Result<Pod, PodsError> {
        serde_json::from_slice(&self.body[pod.start as usize..pod.end as usize])
            .map_err(|e| PodsError::InvalidPod(e.to_string()))
    }
}

impl std::fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIndex")
            .field("bytes", &self.body.len())
            .field("pods", &self.pod_count())
            .field("entries", &self.entry_count())
            .field("refused", &self.state.as_ref().err())
            .finish()
    }
}

impl Entries {
    fn build(body: &Bytes) -> Result<Entries, PodsError> {
        if u32::try_from(body.len()).is_err() {
            return Err(PodsError::TooLarge(format!(
                "{} bytes; at most 4 GiB can be indexed",
                body.len()
            )));
        }
        let mut e = Entries {
            hasher: RandomState::new(),
            pods: Vec::new(),
            entries: Vec::new(),
            by_uid: HashMap::new(),
            by_host: HashMap::new(),
            owned: Vec::new(),
            overflow: false,
        };
        match e.scan(body) {
            Ok(()) => Ok(e),
            Err(Stop::TooLarge(what)) => Err(PodsError::TooLarge(what)),
            Err(Stop::Syntax(ours)) => Err(PodsError::refused_list(body, ours)),
        }
    }

    /// Walks the list: the same walk and the same checks as SPIRE's parse needs (see
    /// `scan`), recording pods and status entries instead of comparing them.
    fn scan(&mut self, body: &[u8]) -> Result<(), Stop> {
        let mut sc = Scanner::new(body);
        let mut items_seen = false;
        let mut too_large = None;
        let walked = sc
            .object(|key, sc| {
                // Only the first `items` counts, as with fastjson's `Object.Get` in SPIRE.
                if key != "items" || items_seen {
                    return sc.skip();
                }
                items_seen = true;
                if sc.null()? {
                    return Ok(());
                }
                sc.array(|_, sc| {
                    let start = sc.pos();
                    let before = self.entries.len();
                    let pod = self.pods.len() as u32;
                    let uid = self.probe_pod(body, sc, pod)?;
                    let end = sc.pos();
                    // SPIRE keys pods by UID and skips those without one.
                    let Some(uid) = uid.filter(|&u| !self.resolve(body, u).is_empty()) else {
                        self.entries.truncate(before);
                        return Ok(());
                    };
                    if self.pods.len() >= MAX_PODS || self.overflow {
                        too_large.get_or_insert_with(|| {
                            format!("more than {MAX_PODS} pods or {MAX_ENTRIES} container statuses")
                        });
                        // Keep scanning: a syntax error later still wins (SPIRE parses the
                        // whole body first).
                        self.entries.truncate(before);
                        return Ok(());
                    }
                    self.add_pod(start, end, uid);
                    Ok(())
                })
            })
            .and_then(|()| sc.end());
        walked.map_err(|e| Stop::Syntax(e.to_string()))?;
        if !items_seen {
            return Err(Stop::Syntax("no \"items\" field in the pod list".into()));
        }
        if let Some(what) = too_large {
            return Err(Stop::TooLarge(what));
        }
        // Chain pods by UID and entries by container host, now that both are final, in
        // maps sized once.
        self.pods.shrink_to_fit();
        self.entries.shrink_to_fit();
        self.owned.shrink_to_fit();
        self.by_uid.reserve(self.pods.len());
        for i in 0..self.pods.len() {
            let key = self.hash(body, self.pods[i].uid);
            link(&mut self.by_uid, key, i as u32, &mut self.pods, |p| {
                &mut p.next
            });
        }
        self.by_host.reserve(self.entries.len());
        for i in 0..self.entries.len() {
            let key = self.hash(body, self.entries[i].host);
            link(&mut self.by_host, key, i as u32, &mut self.entries, |e| {
                &mut e.next
            });
        }
        Ok(())
    }

    fn add_pod(&mut self, start: usize, end: usize, uid: Text) {
        self.pods.push(PodSlot {
            start: start as u32,
            end: end as u32,
            uid,
            next: NONE,
        });
    }

    /// Reads one pod's `metadata.uid` (the last one, if repeated) and pushes an entry per
    /// status entry whose `containerID` has a host. `None`: no or an empty UID.
    fn probe_pod(
        &mut self,
        body: &[u8],
        sc: &mut Scanner<'_>,
        pod: u32,
    ) -> ScanResult<Option<Text>> {
        let mut uid = None;
        sc.object(|key, sc| match key {
            "metadata" => {
                if sc.null()? {
                    return Ok(());
                }
                sc.object(|key, sc| {
                    if key != "uid" {
                        return sc.skip();
                    }
                    // `null` leaves an earlier `uid` of a repeated key, as the search always did.
                    if !sc.null()? {
                        let s = sc.string()?;
                        uid = Some(self.text(body, s));
                    }
                    Ok(())
                })
            }
            "status" => {
                if sc.null()? {
                    return Ok(());
                }
                sc.object(|key, sc| {
                    let list = match key {
                        "containerStatuses" => StatusList::Containers,
                        "initContainerStatuses" => StatusList::InitContainers,
                        "ephemeralContainerStatuses" => StatusList::EphemeralContainers,
                        _ => return sc.skip(),
                    };
                    if sc.null()? {
                        return Ok(());
                    }
                    sc.array(|index, sc| {
                        if sc.null()? {
                            return Ok(());
                        }
                        // The last `containerID` of an entry counts (a repeated key
                        // overrides), as the search always did.
                        let mut id = None;
                        sc.object(|key, sc| {
                            if key != "containerID" {
                                return sc.skip();
                            }
                            id = if sc.null()? { None } else { Some(sc.string()?) };
                            Ok(())
                        })?;
                        // Go's url.Parse gives no host without `scheme://`.
                        let Some(id) = id else { return Ok(()) };
                        let Some(host) = container_id_host(&id) else {
                            return Ok(());
                        };
                        if self.entries.len() >= MAX_ENTRIES {
                            self.overflow = true;
                            return Ok(());
                        }
                        let host = match &id {
                            Cow::Borrowed(_) => self.text(body, Cow::Borrowed(host)),
                            Cow::Owned(_) => self.owned(host),
                        };
                        self.entries.push(EntrySlot {
                            host,
                            pod,
                            index: index as u32,
                            list,
                            next: NONE,
                        });
                        Ok(())
                    })
                })
            }
            _ => sc.skip(),
        })?;
        Ok(uid)
    }

    /// `s` as a range of `body` when it is borrowed from it, else kept unescaped.
    fn text(&mut self, body: &[u8], s: std::borrow::Cow<'_, str>) -> Text {
        match s {
            Cow::Borrowed(b) => {
                // A sub-slice of `body` (the scanner borrows from it): its offset.
                let start = b.as_ptr() as usize - body.as_ptr() as usize;
                Text::Body {
                    start: start as u32,
                    end: (start + b.len()) as u32,
                }
            }
            Cow::Owned(o) => self.owned(&o),
        }
    }

    fn owned(&mut self, s: &str) -> Text {
        self.owned.push(s.into());
        Text::Owned(self.owned.len() as u32 - 1)
    }

    fn resolve<'b>(&'b self, body: &'b [u8], t: Text) -> &'b [u8] {
        match t {
            Text::Body { start, end } => &body[start as usize..end as usize],
            Text::Owned(i) => self.owned[i as usize].as_bytes(),
        }
    }

    fn hash(&self, body: &[u8], t: Text) -> u64 {
        self.hasher.hash_one(self.resolve(body, t))
    }

    /// Pods whose UID is `uid`, in list order.
    fn pods_with_uid<'s>(
        &'s self,
        body: &'s [u8],
        uid: &'s str,
    ) -> impl Iterator<Item = usize> + 's {
        self.chain(&self.by_uid, uid, |i| self.pods[i].next)
            // Equal hashes of different UIDs share a chain.
            .filter(move |&i| self.resolve(body, self.pods[i].uid) == uid.as_bytes())
    }

    /// Entries whose container host is `host`, in list order.
    fn entries_for<'s>(
        &'s self,
        body: &'s [u8],
        host: &'s str,
    ) -> impl Iterator<Item = usize> + 's {
        self.chain(&self.by_host, host, |i| self.entries[i].next)
            .filter(move |&i| self.resolve(body, self.entries[i].host) == host.as_bytes())
    }

    /// The chain of `text`'s hash in `map`, in list order; `next(i)` is element `i`'s link.
    fn chain<'s>(
        &'s self,
        map: &HashMap<u64, Chain>,
        text: &str,
        next: impl Fn(usize) -> u32 + 's,
    ) -> impl Iterator<Item = usize> + 's {
        let first = map
            .get(&self.hasher.hash_one(text.as_bytes()))
            .map_or(NONE, |c| c.first);
        std::iter::successors((first != NONE).then_some(first), move |&i| {
            let next = next(i as usize);
            (next != NONE).then_some(next)
        })
        .map(|i| i as usize)
    }
}

/// Appends element `i` of `items` to the chain of `key`; `next` is an element's link.
fn link<T>(
    map: &mut HashMap<u64, Chain>,
    key: u64,
    i: u32,
    items: &mut [T],
    next: fn(&mut T) -> &mut u32,
) {
    match map.get_mut(&key) {
        Some(chain) => {
            *next(&mut items[chain.last as usize]) = i;
            chain.last = i;
        }
        None => {
            map.insert(key, Chain { first: i, last: i });
        }
    }
}

/// Why a scan stopped.
enum Stop {
    Syntax(String),
    TooLarge(String),
}

#[cfg(test)]
mod tests {
    //! The index against a reference that decodes the whole list with `serde_json` and
    //! applies SPIRE's search to the values (what the search did before it was lazy), and
    //! the index's own edges: bounds, escapes, repeated keys, a refused list remembered.

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::selectors;

    const CID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const OTHER: &str = "aaaabbbbccccddddeeeeffff00001111aaaabbbbccccddddeeeeffff00001111";
    const UID_A: &str = "4f1e2d3c-5b6a-4789-9abc-def012345678";
    const UID_B: &str = "72631393-dd79-49e5-8450-f68d930b93b4";

    /// How an answer compares: selector values, or which error (texts of decode errors
    /// differ between `from_value` and `from_slice`).
    #[derive(Debug, PartialEq)]
    enum Answer {
        Values(Option<Vec<String>>),
        InvalidPod,
        TwoPods,
        Refused,
    }

    fn answer(r: Result<Option<Vec<String>>, PodsError>) -> Answer {
        match r {
            Ok(v) => Answer::Values(v),
            Err(PodsError::InvalidPod(_)) => Answer::InvalidPod,
            Err(PodsError::TwoPods) => Answer::TwoPods,
            Err(_) => Answer::Refused,
        }
    }

    /// SPIRE's search over the fully decoded list.
    fn reference(body: &[u8], target: &ContainerRef, opts: &SearchOptions) -> Answer {
        let Ok(top) = serde_json::from_slice::<Value>(body) else {
            return Answer::Refused;
        };
        let items = match top.get("items") {
            Some(Value::Array(items)) => items.clone(),
            Some(Value::Null) => Vec::new(),
            _ => return Answer::Refused,
        };
        let mut candidates = Vec::new();
        for pod in &items {
            let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str) else {
                continue;
            };
            if uid.is_empty() || target.pod_uid.as_deref().is_some_and(|want| want != uid) {
                continue;
            }
            let mut matched = None;
            for (list, key) in [
                (StatusList::Containers, "containerStatuses"),
                (StatusList::InitContainers, "initContainerStatuses"),
                (
                    StatusList::EphemeralContainers,
                    "ephemeralContainerStatuses",
                ),
            ] {
                let entries = pod
                    .get("status")
                    .and_then(|s| s.get(key))
                    .and_then(Value::as_array);
                let hit = entries.into_iter().flatten().position(|e| {
                    e.get("containerID")
                        .and_then(Value::as_str)
                        .and_then(container_id_host)
                        == Some(target.container_id.as_str())
                });
                if let Some(index) = hit {
                    matched = Some((list, index));
                    break;
                }
            }
            if matched.is_some() || (target.pod_uid.is_some() && opts.disable_container_selectors) {
                candidates.push((pod.clone(), matched));
            }
        }
        let mut found = None;
        for (pod, matched) in candidates {
            if found.is_some() {
                return Answer::TwoPods;
            }
            let Ok(pod) = serde_json::from_value::<Pod>(pod) else {
                return Answer::InvalidPod;
            };
            let matched = matched.filter(|_| !opts.disable_container_selectors);
            found = Some(Found { pod, matched });
        }
        Answer::Values(found.map(|f| selectors::build(&f.pod, f.workload())))
    }

    fn indexed(body: &[u8], target: &ContainerRef, opts: &SearchOptions) -> Answer {
        let index = PodIndex::new(body.to_vec());
        answer(selectors::search_in(&index, target, opts))
    }

    fn target(uid: Option<&str>, cid: &str) -> ContainerRef {
        ContainerRef {
            pod_uid: uid.map(str::to_string),
            container_id: cid.to_string(),
        }
    }

    // --- generated pod lists --------------------------------------------------------------

    fn container_id() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(Some(json!(format!("containerd://{CID}")))),
            Just(Some(json!(format!("docker://{CID}")))),
            Just(Some(json!(format!("cri-o://{CID}/x")))),
            Just(Some(json!(CID))),
            Just(Some(json!(format!("containerd://{OTHER}")))),
            Just(Some(json!("docker://"))),
            Just(Some(Value::Null)),
            Just(None),
        ]
    }

    fn status_entry() -> impl Strategy<Value = Value> {
        (container_id(), 0..3u8, any::<bool>()).prop_map(|(id, name, null)| {
            if null {
                return Value::Null;
            }
            let mut e = json!({
                "name": format!("c{name}"),
                "image": format!("img:{name}"),
                "imageID": format!("img@sha256:{name}"),
                "lastState": {"terminated": {"containerID": format!("docker://{CID}")}},
            });
            if let Some(id) = id {
                e["containerID"] = id;
            }
            e
        })
    }

    fn status_list() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            2 => proptest::collection::vec(status_entry(), 0..3).prop_map(|v| Some(Value::Array(v))),
            1 => Just(Some(Value::Null)),
            1 => Just(None),
        ]
    }

    fn pod() -> impl Strategy<Value = Value> {
        let uid = prop_oneof![
            Just(Some(json!(UID_A))),
            Just(Some(json!(UID_B))),
            Just(Some(json!(""))),
            Just(Some(Value::Null)),
            Just(None),
        ];
        (
            uid,
            status_list(),
            status_list(),
            status_list(),
            any::<bool>(),
            0..8u8,
        )
            .prop_map(|(uid, containers, inits, ephemeral, bad_labels, n)| {
                let mut meta = json!({"name": format!("p{n}"), "namespace": "ns"});
                if let Some(uid) = uid {
                    meta["uid"] = uid;
                }
                // A pod that does not decode: the search must report it, not skip it.
                meta["labels"] = if bad_labels && n == 0 {
                    json!("oops")
                } else {
                    json!({"app": format!("a{n}")})
                };
                let mut status = serde_json::Map::new();
                // Init statuses first in the JSON sometimes: search order is list order.
                for (key, list) in [
                    ("initContainerStatuses", inits),
                    ("containerStatuses", containers),
                    ("ephemeralContainerStatuses", ephemeral),
                ] {
                    if let Some(list) = list {
                        status.insert(key.to_string(), list);
                    }
                }
                json!({
                    "metadata": meta,
                    "spec": {"serviceAccountName": "sa", "nodeName": "n",
                             "containers": [{"name": "c0", "image": "img:0"}]},
                    "status": status,
                })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every answer of the index equals the full decode's, for every target.
        #[test]
        fn index_agrees_with_a_full_decode(pods in proptest::collection::vec(pod(), 0..6)) {
            let body = serde_json::to_vec(&json!({"kind": "PodList", "items": pods})).unwrap();
            for uid in [Some(UID_A), Some(UID_B), None] {
                for cid in [CID, OTHER] {
                    for disable in [false, true] {
                        let t = target(uid, cid);
                        let opts = SearchOptions::new(disable);
                        prop_assert_eq!(
                            indexed(&body, &t, &opts),
                            reference(&body, &t, &opts),
                            "target {:?}, disable {}", t, disable
                        );
                    }
                }
            }
        }
    }

    proptest! {
        /// Damaged lists (bytes replaced, cut, inserted): never a panic, the bound holds, and
        /// an index answers like a second index of the same bytes.
        #[test]
        fn damaged_lists_are_answered_or_refused(
            pods in proptest::collection::vec(pod(), 1..4),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
        ) {
            let mut body = serde_json::to_vec(&json!({"items": pods})).unwrap();
            for (at, byte, how) in edits {
                let i = at.index(body.len());
                match how {
                    0 => body[i] = byte,
                    1 => body.truncate(i),
                    _ => body.insert(i, byte),
                }
                if body.is_empty() {
                    break;
                }
            }
            let index = PodIndex::new(body.clone());
            prop_assert!(
                index.heap_bytes()
                    <= BASE_BYTES + index.pod_count() * POD_BYTES + index.entry_count() * ENTRY_BYTES + body.len()
            );
            for uid in [Some(UID_A), None] {
                let t = target(uid, CID);
                let opts = SearchOptions::default();
                prop_assert_eq!(answer(selectors::search_in(&index, &t, &opts)), indexed(&body, &t, &opts));
            }
        }
    }

    #[test]
    fn pods_and_entries_are_counted_and_bounded() {
        let body = serde_json::to_vec(&json!({"items": [
            {"metadata": {"uid": UID_A}, "status": {
                "containerStatuses": [{"containerID": format!("containerd://{CID}")}],
                "initContainerStatuses": [{"containerID": format!("containerd://{OTHER}")}, {}]}},
            // No UID: not indexed, nor its entries.
            {"metadata": {}, "status": {"containerStatuses": [{"containerID": "docker://x"}]}},
        ]}))
        .unwrap();
        let index = PodIndex::new(body);
        assert_eq!((index.pod_count(), index.entry_count()), (1, 2));
        assert!(
            index.heap_bytes() <= BASE_BYTES + POD_BYTES + 2 * ENTRY_BYTES,
            "{}",
            index.heap_bytes()
        );
    }

    #[test]
    fn too_many_pods_is_refused_not_indexed_without_bound() {
        let pod = format!(r#"{{"metadata":{{"uid":"{UID_A}"}}}}"#);
        let body = format!(r#"{{"items":[{}]}}"#, vec![pod; MAX_PODS + 1].join(","));
        let index = PodIndex::new(body.into_bytes());
        let err = index
            .find(&target(None, CID), &SearchOptions::default())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "pod list too large to search: more than {MAX_PODS} pods or {MAX_ENTRIES} container statuses"
            )
        );
        assert!(err.is_retryable());
        assert_eq!(index.heap_bytes(), 0);
    }

    #[test]
    fn too_many_statuses_is_refused() {
        let entry = format!(r#"{{"containerID":"containerd://{OTHER}"}}"#);
        let body = format!(
            r#"{{"items":[{{"metadata":{{"uid":"{UID_A}"}},"status":{{"containerStatuses":[{}]}}}}]}}"#,
            vec![entry; MAX_ENTRIES + 1].join(",")
        );
        let index = PodIndex::new(body.into_bytes());
        assert!(matches!(
            index.find(&target(None, CID), &SearchOptions::default()),
            Err(PodsError::TooLarge(_))
        ));
    }

    #[test]
    fn a_syntax_error_after_the_limit_still_wins() {
        let pod = format!(r#"{{"metadata":{{"uid":"{UID_A}"}}}}"#);
        let body = format!(r#"{{"items":[{}],"#, vec![pod; MAX_PODS + 1].join(","));
        let index = PodIndex::new(body.into_bytes());
        assert!(matches!(
            index.find(&target(None, CID), &SearchOptions::default()),
            Err(PodsError::Unparsable(_))
        ));
    }

    #[test]
    fn escaped_ids_and_uids_are_found() {
        // `\/` and `\u0034` are legal JSON escapes of `/` and `4`.
        let body = format!(
            r#"{{"items":[{{"metadata":{{"uid":"\u0034{}"}},"status":{{"containerStatuses":[{{"name":"c","containerID":"docker:\/\/{CID}"}}]}}}}]}}"#,
            &UID_A[1..]
        );
        let index = PodIndex::new(body.into_bytes());
        let found = index
            .find(&target(Some(UID_A), CID), &SearchOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!(found.workload().and_then(|s| s.name.as_deref()), Some("c"));
        assert_eq!(index.pods_with_uid(UID_A).unwrap().len(), 1);
    }

    #[test]
    fn repeated_keys_count_as_the_search_always_read_them() {
        // The last `containerID` of an entry counts; a `null` uid keeps an earlier one.
        let body = format!(
            r#"{{"items":[{{"metadata":{{"uid":"{UID_A}","uid":null}},"status":{{"containerStatuses":[
                {{"containerID":"docker://{CID}","containerID":"docker://{OTHER}"}}]}}}}]}}"#
        );
        let index = PodIndex::new(body.into_bytes());
        let opts = SearchOptions::default();
        assert_eq!(
            index.find(&target(None, CID), &opts).map(|f| f.is_some()),
            Ok(false)
        );
        // The pod is found by the last ID, and then refused by the decode: serde_json (and
        // Go's encoding/json in SPIRE) refuse the repeated field.
        assert!(matches!(
            index.find(&target(Some(UID_A), OTHER), &opts),
            Err(PodsError::InvalidPod(e)) if e.contains("duplicate field `uid`")
        ));
    }

    #[test]
    fn a_refused_list_answers_every_lookup_with_its_error() {
        let index = PodIndex::new(&b"<html>"[..]);
        let opts = SearchOptions::default();
        let first = index.find(&target(None, CID), &opts).unwrap_err();
        assert_eq!(
            index.find(&target(Some(UID_A), OTHER), &opts).unwrap_err(),
            first
        );
        assert_eq!(index.pods_with_uid(UID_A).unwrap_err(), first);
        assert!(
            first
                .to_string()
                .starts_with("unable to parse kubelet response: ")
        );
        assert_eq!((index.pod_count(), index.heap_bytes()), (0, 0));
    }
}
