//! Kubernetes API server access for the features SPIRE's k8s attestor takes from it:
//! namespace labels (`enable_namespace_labels`), the Broker API's reference lookups
//! (pods, owners by UID, discovery, SubjectAccessReview) and their metadata cache
//! (`experimental.api_server.cache.enabled`).
//!
//! # Why hand-written REST
//!
//! About eight endpoints are needed. They are spoken directly over the stack the kubelet
//! client already uses (hyper 1, hyper-rustls, rustls with `ring`, serde_json), not through
//! `kube`/`k8s-openapi`: kube-client collects response bodies without a size bound, and
//! would bring a second HTTP/TLS stack and a large compile.
//!
//! # Layers
//!
//! * [`ApiSettings`] (`settings`): where the server is, found as controller-runtime's
//!   `ctrl.GetConfig()` finds it: `KUBECONFIG`, in-cluster, `$HOME/.kube/config`.
//! * `transport`: one request. Token file cached one minute and re-read at once on a 401
//!   (then the request is retried once); CA/client certificate re-read when a file's mtime
//!   or size changes, or every minute. Connect timeout 10 s, 30 s per attempt. client-go's
//!   retries: 429 and 5xx answers carrying `Retry-After` are retried after that many
//!   seconds (at most 10 s each), up to 10 times, for GET and the SubjectAccessReview POST;
//!   a GET whose connection was reset is retried once. Nothing else is retried: the
//!   caller's poll loop decides. Bodies are bounded: a single object 4 MiB, a list page
//!   32 MiB, a watch event line 4 MiB, discovery 4 MiB; larger answers are refused with an
//!   error naming the bound.
//! * [`ApiServer`]: the operations. Concurrent [`ApiServer::namespace_labels`] calls for one
//!   namespace share one in-flight request (`coalesce`); nothing is cached unless the cache
//!   is enabled. [`ApiServer::resolve_resource`] is discovery, positive answers kept, a miss
//!   re-discovering its group at most every 10 s (`discovery`).
//! * `informer`: the cache. Metadata lookups (namespace labels, `get_metadata`,
//!   `find_metadata_by_uid`) are answered from per-resource informers started on first use
//!   (paged LIST of 500, then WATCH with bookmarks, `timeoutSeconds=60`; re-watch from the
//!   last version; re-LIST on 410; backoff 0.5 s doubling to 30 s). The first use waits
//!   for the first list. **Freshness bound**: a store answers only while its watch is
//!   connected or was confirmed (list done, watch opened, event or bookmark, clean end)
//!   at most 10 s ago; otherwise the lookup is made live. A name absent from a fresh store
//!   is NotFound, as controller-runtime's cache answers. `get_pod` and `access_review` are
//!   always live, as in SPIRE.
//!
//! Errors ([`ApiError`]) read like client-go's: a `Status`'s message, Go's
//! `Get "https://…": <cause>` for transport failures.
//!
//! Out of scope: turning plugin configuration into calls (the attest module), selectors.

mod coalesce;
mod discovery;
mod error;
mod informer;
mod settings;
mod transport;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Method;
use serde::Deserialize;

use coalesce::Flights;
use discovery::Discovery;
use error::Target;
use informer::Informer;
use transport::{Call, OBJECT_LIMIT, Transport};
use wire::{ACCEPT_JSON, ACCEPT_METADATA, WireObject};

// The public interface is:
pub use error::ApiError;
pub use settings::{ApiSettings, SERVICEACCOUNT_DIR};

/// A resource as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
}

impl ResourceType {
    /// `namespaces` (core `v1`, cluster-scoped), as discovery describes it.
    pub fn namespaces() -> ResourceType {
        Self::core_v1("namespaces", "Namespace", false)
    }

    /// `pods` (core `v1`, namespaced), as discovery describes it.
    pub fn pods() -> ResourceType {
        Self::core_v1("pods", "Pod", true)
    }

    fn core_v1(plural: &str, kind: &str, namespaced: bool) -> ResourceType {
        ResourceType {
            group: String::new(),
            version: "v1".to_string(),
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced,
        }
    }
}

/// The metadata fields the attestor uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub controller: Option<bool>,
}

/// A SubjectAccessReview question: may `user` do `verb` on this resource? (No groups are
/// sent, as SPIRE sends none.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessReview {
    pub user: String,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub verb: String,
}

type Labels = BTreeMap<String, String>;

struct Inner {
    transport: Arc<Transport>,
    cache: bool,
    namespace_flights: Flights<String, Labels>,
    discovery: Discovery,
    /// By (group, version, plural). Dropping the map stops the informers.
    informers: Mutex<HashMap<(String, String, String), Arc<Informer>>>,
}

/// The API server client. Cheap to clone (one shared connection pool, cache and
/// discovery); informers stop when the last clone is dropped.
#[derive(Clone)]
pub struct ApiServer(Arc<Inner>);

impl fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiServer")
            .field("server", &self.0.transport.server())
            .field("cache", &self.0.cache)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Reads the TLS material (so a missing CA or key is reported now); no network I/O.
    /// `cache`: `experimental.api_server.cache.enabled`.
    pub fn new(settings: ApiSettings, cache: bool) -> Result<ApiServer, ApiError> {
        log::debug!("API server {} from {}", settings.server, settings.origin);
        Ok(ApiServer(Arc::new(Inner {
            transport: Arc::new(Transport::new(settings)?),
            cache,
            namespace_flights: Flights::new(),
            discovery: Discovery::new(),
            informers: Mutex::new(HashMap::new()),
        })))
    }

    /// Labels of a namespace (metadata GET, or the watched cache). Concurrent calls for one
    /// namespace share one request: at most one request in flight per namespace.
    pub async fn namespace_labels(&self, namespace: &str) -> Result<Labels, ApiError> {
        wire::check_name("namespace", namespace)?;
        let rt = ResourceType::namespaces();
        if let Some(informer) = self.informer(&rt).await
            && let Some(found) = informer.get("", namespace)
        {
            return found
                .map(|m| m.labels)
                .ok_or_else(|| ApiError::not_found("", "namespaces", namespace));
        }
        let transport = Arc::clone(&self.0.transport);
        let name = namespace.to_owned();
        self.0
            .namespace_flights
            .run(namespace.to_owned(), move || async move {
                live_metadata(&transport, &rt, "", &name)
                    .await
                    .map(|m| m.labels)
            })
            .await
    }

    /// Full pod JSON (always live, never cached), for SPIRE's pod selectors.
    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Bytes, ApiError> {
        wire::check_name("namespace", namespace)?;
        wire::check_name("name", name)?;
        let rt = ResourceType {
            group: String::new(),
            version: "v1".into(),
            plural: "pods".into(),
            kind: "Pod".into(),
            namespaced: true,
        };
        let target = Target {
            verb: "get",
            group: String::new(),
            plural: "pods".into(),
            name: name.to_owned(),
        };
        let path = wire::object_path(&rt, namespace, name);
        self.0
            .transport
            .call(&Call::get(path, ACCEPT_JSON, OBJECT_LIMIT, target))
            .await
    }

    /// Discovery (RESTMapper `KindFor` with no version): group "" (or "core") is core.
    /// Cached per group; a miss re-discovers the group at most every 10 s.
    pub async fn resolve_resource(
        &self,
        group: &str,
        plural: &str,
    ) -> Result<ResourceType, ApiError> {
        self.0
            .discovery
            .resolve(&self.0.transport, group, plural)
            .await
    }

    /// Metadata GET (cache-backed when enabled). `namespace` "" for cluster-scoped.
    pub async fn get_metadata(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<ObjectMeta, ApiError> {
        if rt.namespaced {
            wire::check_name("namespace", namespace)?;
        }
        wire::check_name("name", name)?;
        let namespace = if rt.namespaced { namespace } else { "" };
        if let Some(informer) = self.informer(rt).await
            && let Some(found) = informer.get(namespace, name)
        {
            return found.ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name));
        }
        live_metadata(&self.0.transport, rt, namespace, name).await
    }

    /// Cluster-wide metadata list filtered by UID (paged live, stopping at the match; the
    /// watched cache when enabled).
    pub async fn find_metadata_by_uid(
        &self,
        rt: &ResourceType,
        uid: &str,
    ) -> Result<Option<ObjectMeta>, ApiError> {
        if let Some(informer) = self.informer(rt).await
            && let Some(found) = informer.find_uid(uid)
        {
            return Ok(found);
        }
        let mut found = None;
        informer::list_pages(&self.0.transport, rt, |m| {
            if m.uid == uid {
                found = Some(ObjectMeta::from(m));
                true
            } else {
                false
            }
        })
        .await?;
        Ok(found)
    }

    /// SubjectAccessReview create (always live). `Ok(allowed)`.
    pub async fn access_review(&self, review: &AccessReview) -> Result<bool, ApiError> {
        let body = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": review.user,
                "resourceAttributes": {
                    "group": review.group,
                    "resource": review.resource,
                    "namespace": review.namespace,
                    "name": review.name,
                    "verb": review.verb,
                },
            },
        });
        let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
        let call = Call {
            method: Method::POST,
            path: path.to_owned(),
            accept: ACCEPT_JSON,
            body: Some(Bytes::from(body.to_string())),
            limit: OBJECT_LIMIT,
            target: Target {
                verb: "create",
                group: "authorization.k8s.io".into(),
                plural: "subjectaccessreviews".into(),
                name: String::new(),
            },
        };
        let answer = self.0.transport.call(&call).await?;

        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Review {
            status: ReviewStatus,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct ReviewStatus {
            allowed: bool,
        }
        let review: Review = serde_json::from_slice(&answer).map_err(|e| ApiError::Decode {
            method: "Post",
            url: self.0.transport.url(path),
            reason: e.to_string(),
        })?;
        Ok(review.status.allowed)
    }

    /// The informer for `rt` when the cache is on, started on first use, after its first
    /// list has ended (successfully or not; its lookups say whether it may answer).
    async fn informer(&self, rt: &ResourceType) -> Option<Arc<Informer>> {
        if !self.0.cache {
            return None;
        }
        let informer = {
            let mut informers = self
                .0
                .informers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let key = (rt.group.clone(), rt.version.clone(), rt.plural.clone());
            Arc::clone(informers.entry(key).or_insert_with(|| {
                Arc::new(Informer::start(Arc::clone(&self.0.transport), rt.clone()))
            }))
        };
        informer.first_list().await;
        Some(informer)
    }
}

/// Metadata GET of one object.
async fn live_metadata(
    transport: &Transport,
    rt: &ResourceType,
    namespace: &str,
    name: &str,
) -> Result<ObjectMeta, ApiError> {
    let path = wire::object_path(rt, namespace, name);
    let target = Target {
        verb: "get",
        group: rt.group.clone(),
        plural: rt.plural.clone(),
        name: name.to_owned(),
    };
    let body = transport
        .call(&Call::get(
            path.clone(),
            ACCEPT_METADATA,
            OBJECT_LIMIT,
            target,
        ))
        .await?;
    let object: WireObject = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
        method: "Get",
        url: transport.url(&path),
        reason: e.to_string(),
    })?;
    Ok(object.metadata.into())
}
