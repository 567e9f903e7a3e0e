//! The Broker API's `AttestReference` and the API-server features of SPIRE v1.15.3's k8s
//! attestor: `enable_namespace_labels`, `experimental.broker`, `disable_kubelet_client`.
//!
//! Read with spiffe/spire v1.15.3 `pkg/agent/plugin/workloadattestor/k8s/k8s.go` beside it;
//! each step names the function it follows, and every status code and message is SPIRE's:
//! * [`Pipeline::attest_reference`] — `Plugin.AttestReference` / `attestReference`: the
//!   configuration, the reference's presence, the broker caller (`getBrokerEntryIfPresent`),
//!   then the reference type; a broker under `access_policy = "enforced"` must then pass a
//!   SubjectAccessReview on the resolved object (`checkBrokerImpersonationForReference`);
//! * a `WorkloadPIDReference` gives exactly what `Attest` gives ([`Attestor`]);
//! * a `KubernetesObjectReference` to `pods`/`core` resolves the pod in the kubelet's list
//!   first, then (scope `cluster` only) through the API server (`attestByPodReference`,
//!   `findPodByName`, `findPodByUID`, `getPodListForReference`), and gives the pod
//!   selectors; any other type is resolved through discovery and gets the object
//!   vocabulary ([`selectors::object`], `attestByObjectReference`, `findObject`).
//!
//! The API server is set up on first use from the process environment (in-cluster service
//! account or `KUBECONFIG`, as controller-runtime's `ctrl.GetConfig`), as SPIRE's
//! `getOrCreateKubeClient` does: a node without it fails only the attestations that need it,
//! with SPIRE's text.

use std::future::Future;
use std::sync::{Arc, Mutex};

use prost::Message as _;

use super::Attestor;
use crate::apiserver::{AccessReview, ApiServer, ApiSettings, ObjectMeta, ResourceType};
use crate::config::spiffe_id::SpiffeId;
use crate::config::{AccessPolicy, BrokerEntry, Config, PodReferenceScope};
use crate::goquote::go_quote;
use crate::plugin::proto::broker::{KubernetesObjectReference, WorkloadPidReference};
use crate::plugin::{
    CancellationToken, KUBERNETES_OBJECT_REFERENCE_TYPE_URL, ReferenceRequest,
    WORKLOAD_PID_REFERENCE_TYPE_URL,
};
use crate::pods::{Pod, PodIndex, PodsError};
use crate::selectors;
use crate::status::{Code, Status};
use crate::tracker::Tracker;

/// The verb of the SubjectAccessReview an enforced broker must pass (`k8s.go`,
/// `brokerImpersonationReviewVerb`); RBAC grants it on the objects a broker may reference.
pub const IMPERSONATION_VERB: &str = "impersonate-via-spire";

/// The Kubernetes API server as the attestor reaches it: built on first use, kept once built.
pub struct ApiAccess {
    cache: bool,
    server: Mutex<Option<ApiServer>>,
}

impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccess")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl ApiAccess {
    /// From the process environment when first needed; `cache`:
    /// `experimental.api_server.cache.enabled`.
    pub fn from_environment(cache: bool) -> ApiAccess {
        ApiAccess {
            cache,
            server: Mutex::new(None),
        }
    }

    /// A given client (a library user, a test).
    pub fn with_server(server: ApiServer) -> ApiAccess {
        ApiAccess {
            cache: false,
            server: Mutex::new(Some(server)),
        }
    }

    /// The client, set up now if it is not yet. The error reads as SPIRE's
    /// `buildKubeClientOptions` error does.
    pub fn server(&self) -> Result<ApiServer, String> {
        let mut slot = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = slot.as_ref() {
            return Ok(server.clone());
        }
        let settings = ApiSettings::from_environment(&|k| std::env::var(k).ok())
            .map_err(|e| format!("unable to load Kubernetes client config: {e}"))?;
        let server = ApiServer::new(settings, self.cache)
            .map_err(|e| format!("unable to create Kubernetes client: {e}"))?;
        *slot = Some(server.clone());
        Ok(server)
    }

    /// `ns-label:` selector values of `namespace` (`k8s.go`, `getNamespaceLabels`); a
    /// failure is the `Internal` status the attestation fails with.
    pub async fn namespace_selectors(&self, namespace: &str) -> Result<Vec<String>, Status> {
        let fail = |detail: String| {
            Status::new(
                Code::Internal,
                format!(
                    "unable to get namespace labels for {}: {detail}",
                    go_quote(namespace)
                ),
            )
        };
        let server = self
            .server()
            .map_err(|e| fail(format!("unable to set up kube client: {e}")))?;
        let labels = server.namespace_labels(namespace).await.map_err(|e| {
            fail(format!(
                "unable to get namespace {}: {e}",
                go_quote(namespace)
            ))
        })?;
        Ok(selectors::namespace_labels(&labels))
    }
}

/// One configuration's whole attestor: PID attestation through the kubelet (absent with
/// `disable_kubelet_client`), and references through the kubelet and the API server.
pub struct Pipeline {
    config: Config,
    tracker: Arc<Tracker>,
    attestor: Option<Arc<Attestor>>,
    api: Arc<ApiAccess>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("attestor", &self.attestor)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Builds the kubelet client (unless disabled; its files are read now, as in SPIRE's
    /// Configure). The API server is reached from the process environment on first use.
    pub fn new(
        config: Config,
        tracker: Arc<Tracker>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Pipeline, Status> {
        let api = Arc::new(ApiAccess::from_environment(
            config.experimental_api_server_cache(),
        ));
        Self::with_api(config, tracker, env, api)
    }

    /// [`Pipeline::new`] with a given API-server access.
    pub fn with_api(
        config: Config,
        tracker: Arc<Tracker>,
        env: impl Fn(&str) -> Option<String>,
        api: Arc<ApiAccess>,
    ) -> Result<Pipeline, Status> {
        let attestor = if config.disable_kubelet_client() {
            None
        } else {
            Some(Arc::new(
                Attestor::new(config.clone(), tracker.clone(), env)?.with_api(api.clone()),
            ))
        };
        if needs_api_server(&config)
            && let Err(e) = api.server()
        {
            // SPIRE finds out at the first attestation; an operator is better told now.
            log::warn!(
                error = e.as_str();
                "the Kubernetes API server is not reachable with this environment: attestations that need it (namespace labels, Broker API references) will fail until it is"
            );
        }
        Ok(Pipeline {
            config,
            tracker,
            attestor,
            api,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// The PID pipeline; `None` with `disable_kubelet_client`.
    pub fn attestor(&self) -> Option<&Arc<Attestor>> {
        self.attestor.as_ref()
    }

    /// `Attest`: the PID pipeline, or SPIRE's `FailedPrecondition` without a kubelet client.
    pub async fn attest(
        &self,
        pid: i64,
        cancel: impl Future<Output = ()>,
    ) -> Result<Vec<String>, Status> {
        match &self.attestor {
            Some(attestor) => attestor.attest(pid, cancel).await,
            None => Err(kubelet_disabled()),
        }
    }

    /// `AttestReference` (see the module doc).
    pub async fn attest_reference(
        &self,
        request: ReferenceRequest,
        cancel: CancellationToken,
    ) -> Result<Vec<String>, Status> {
        let Some(reference) = request.reference else {
            return Err(Status::new(
                Code::InvalidArgument,
                "workload reference must be provided",
            ));
        };
        let broker = broker_entry(&self.config, &request.broker_caller_ids)?;
        let resolved = match reference.type_url.as_str() {
            WORKLOAD_PID_REFERENCE_TYPE_URL => {
                let pid = WorkloadPidReference::decode(reference.value.as_slice())
                    .map_err(|e| invalid(format!("unable to unmarshal PID reference: {e}")))?
                    .pid;
                self.by_pid(pid, &cancel).await?
            }
            KUBERNETES_OBJECT_REFERENCE_TYPE_URL => {
                let object = KubernetesObjectReference::decode(reference.value.as_slice())
                    .map_err(|e| invalid(format!("unable to unmarshal object reference: {e}")))?;
                let object = ObjectRef::validate(object)?;
                cancellable(&cancel, self.by_object(broker, &object)).await?
            }
            other => return Err(invalid(format!("unsupported reference type: {other}"))),
        };
        if let (Some(broker), Some(subject)) = (broker, &resolved.subject)
            && self
                .config
                .broker()
                .is_some_and(|b| b.access_policy == AccessPolicy::Enforced)
        {
            cancellable(&cancel, self.check_impersonation(broker, subject)).await?;
        }
        Ok(resolved.selectors)
    }

    /// `attestByPIDReference`: what `Attest` gives; the pod is the subject of the access
    /// review (none when the process is not in a pod).
    async fn by_pid(&self, pid: i32, cancel: &CancellationToken) -> Result<Resolved, Status> {
        let Some(attestor) = &self.attestor else {
            return Err(kubelet_disabled());
        };
        let selectors = attestor.attest(i64::from(pid), cancel.cancelled()).await?;
        let subject = (!selectors.is_empty()).then(|| Subject {
            group: String::new(),
            resource: "pods".to_string(),
            namespace: selectors::value_of(&selectors, "ns:")
                .unwrap_or_default()
                .to_string(),
            name: selectors::value_of(&selectors, "pod-name:")
                .unwrap_or_default()
                .to_string(),
        });
        Ok(Resolved { selectors, subject })
    }

    /// `attestByKubernetesObjectReference`.
    async fn by_object(
        &self,
        broker: Option<&BrokerEntry>,
        object: &ObjectRef,
    ) -> Result<Resolved, Status> {
        if object.plural == "pods" && object.group == "core" {
            self.by_pod(broker, object).await
        } else {
            self.by_generic(object).await
        }
    }

    /// `attestByPodReference`.
    async fn by_pod(
        &self,
        broker: Option<&BrokerEntry>,
        object: &ObjectRef,
    ) -> Result<Resolved, Status> {
        // `brokerPodReferenceScope`: a call that is not a broker's resolves on this node only.
        let scope = broker.map_or(PodReferenceScope::AgentNode, |b| b.pod_reference_scope);
        let pod = if object.name.is_empty() {
            self.find_pod_by_uid(&object.uid, scope).await?
        } else {
            if object.namespace.is_empty() {
                return Err(namespace_required());
            }
            self.find_pod_by_name(&object.namespace, &object.name, scope)
                .await?
        };
        let meta = &pod.metadata;
        let (namespace, name) = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let uid = meta.uid.as_deref().unwrap_or_default();
        if !object.uid.is_empty() && uid != object.uid {
            return Err(Status::new(
                Code::NotFound,
                format!(
                    "pod {namespace}/{name} has UID {uid}, expected {}",
                    object.uid
                ),
            ));
        }
        let mut values = selectors::build(&pod, None);
        if self.config.enable_namespace_labels() {
            selectors::merge(&mut values, self.api.namespace_selectors(&namespace).await?);
        }
        Ok(Resolved {
            selectors: values,
            subject: Some(Subject {
                group: kubernetes_api_group(&object.group).to_string(),
                resource: object.plural.clone(),
                namespace,
                name,
            }),
        })
    }

    /// `findPodByName`: the kubelet's list, then (scope `cluster`) a live GET.
    async fn find_pod_by_name(
        &self,
        namespace: &str,
        name: &str,
        scope: PodReferenceScope,
    ) -> Result<Pod, Status> {
        if let Some(pod) = self
            .kubelet_lookup(scope, |index| index.pod_named(namespace, name))
            .await?
        {
            return Ok(pod);
        }
        if scope == PodReferenceScope::AgentNode {
            return Err(Status::new(
                Code::NotFound,
                format!("pod {namespace}/{name} not found on agent node"),
            ));
        }
        let server = self
            .api
            .server()
            .map_err(|e| internal(format!("unable to create Kubernetes client: {e}")))?;
        live_pod(&server, namespace, name).await
    }

    /// `findPodByUID`: the kubelet's list, then (scope `cluster`) the pod metadata listed
    /// cluster-wide to learn its name, then a live GET of the pod.
    async fn find_pod_by_uid(&self, uid: &str, scope: PodReferenceScope) -> Result<Pod, Status> {
        if let Some(pod) = self
            .kubelet_lookup(scope, |index| index.pod_with_uid(uid))
            .await?
        {
            return Ok(pod);
        }
        if scope == PodReferenceScope::AgentNode {
            return Err(Status::new(
                Code::NotFound,
                format!("pod with UID {uid} not found on agent node"),
            ));
        }
        let server = self
            .api
            .server()
            .map_err(|e| internal(format!("unable to create Kubernetes metadata client: {e}")))?;
        let meta = server
            .find_metadata_by_uid(&ResourceType::pods(), uid)
            .await
            .map_err(|e| internal(format!("unable to list Pod: {e}")))?
            .ok_or_else(|| Status::new(Code::NotFound, format!("Pod with UID {uid} not found")))?;
        let pod = live_pod(&server, &meta.namespace, &meta.name).await?;
        let found = pod.metadata.uid.as_deref().unwrap_or_default();
        if found != uid {
            return Err(Status::new(
                Code::NotFound,
                format!(
                    "pod {}/{} has UID {found}, expected {uid}",
                    meta.namespace, meta.name
                ),
            ));
        }
        Ok(pod)
    }

    /// `getPodListForReference` + the lookup: `Ok(None)` when the kubelet's list does not
    /// have the pod, or (scope `cluster`) when there is no list to look in.
    async fn kubelet_lookup(
        &self,
        scope: PodReferenceScope,
        find: impl FnOnce(&PodIndex) -> Result<Option<Pod>, PodsError>,
    ) -> Result<Option<Pod>, Status> {
        let cluster = scope == PodReferenceScope::Cluster;
        let Some(attestor) = &self.attestor else {
            return if cluster {
                Ok(None)
            } else {
                Err(kubelet_disabled())
            };
        };
        let unavailable = |e: String| {
            if cluster {
                log::debug!(error = e.as_str(); "Unable to query kubelet for pod reference; falling back to Kubernetes API");
                Ok(None)
            } else {
                Err(Status::new(Code::Unavailable, e))
            }
        };
        match attestor.with_current_index(find).await {
            Err(failure) => unavailable(failure.to_string()),
            // A list SPIRE's fetcher would not parse is a failed fetch there.
            Ok(Err(e)) if e.is_retryable() => unavailable(e.to_string()),
            // `decodePodFromKubelet`: the text starts with SPIRE's.
            Ok(Err(e)) => Err(internal(e.to_string())),
            Ok(Ok(found)) => Ok(found),
        }
    }

    /// `attestByObjectReference`: any resource but pods, through discovery and metadata.
    async fn by_generic(&self, object: &ObjectRef) -> Result<Resolved, Status> {
        let (plural, group) = (object.plural.as_str(), object.group.as_str());
        let server = self
            .api
            .server()
            .map_err(|e| internal(format!("unable to set up Kubernetes client: {e}")))?;
        let resource = server
            .resolve_resource(kubernetes_api_group(group), plural)
            .await
            .map_err(|e| invalid(format!("unknown Kubernetes resource {plural}.{group}: {e}")))?;
        if resource.namespaced && !object.name.is_empty() && object.namespace.is_empty() {
            return Err(namespace_required());
        }
        if !resource.namespaced && !object.namespace.is_empty() {
            return Err(invalid(
                "namespace must be empty for cluster-scoped resource",
            ));
        }
        let meta = find_object(&server, &resource, object).await?;
        if !object.uid.is_empty() && meta.uid != object.uid {
            return Err(Status::new(
                Code::NotFound,
                format!(
                    "{plural}.{group} {}/{} has UID {}, expected {}",
                    meta.namespace, meta.name, meta.uid, object.uid
                ),
            ));
        }
        let mut values = selectors::object(plural, group, &resource, &meta);
        if self.config.enable_namespace_labels()
            && resource.namespaced
            && !meta.namespace.is_empty()
        {
            selectors::merge(
                &mut values,
                self.api.namespace_selectors(&meta.namespace).await?,
            );
        }
        Ok(Resolved {
            selectors: values,
            subject: Some(Subject {
                group: kubernetes_api_group(group).to_string(),
                resource: plural.to_string(),
                namespace: meta.namespace,
                name: meta.name,
            }),
        })
    }

    /// `checkBrokerImpersonationForReference`: a SubjectAccessReview for the broker's
    /// SPIFFE ID, verb `impersonate-via-spire`, on the resolved object.
    async fn check_impersonation(
        &self,
        broker: &BrokerEntry,
        subject: &Subject,
    ) -> Result<(), Status> {
        let server = self
            .api
            .server()
            .map_err(|e| internal(format!("unable to set up Kubernetes client: {e}")))?;
        let review = AccessReview {
            user: broker.id.clone(),
            group: subject.group.clone(),
            resource: subject.resource.clone(),
            namespace: subject.namespace.clone(),
            name: subject.name.clone(),
            verb: IMPERSONATION_VERB.to_string(),
        };
        let allowed = server.access_review(&review).await.map_err(|e| {
            internal(format!(
                "unable to check Kubernetes authorization for broker: {e}"
            ))
        })?;
        if allowed {
            Ok(())
        } else {
            Err(Status::new(
                Code::PermissionDenied,
                "Kubernetes authorizer does not allow the broker to use impersonate-via-spire for the referenced object",
            ))
        }
    }
}

/// `getBrokerEntryIfPresent`: no caller metadata is not a broker call; a caller must be one
/// SPIFFE ID, of a configured broker.
fn broker_entry<'c>(config: &'c Config, ids: &[String]) -> Result<Option<&'c BrokerEntry>, Status> {
    let id = match ids {
        [] => return Ok(None),
        [one] => SpiffeId::parse(one).map_err(|e| {
            internal(format!(
                "unable to determine broker caller identity: invalid broker caller SPIFFE ID: {e}"
            ))
        })?,
        _ => {
            return Err(internal(
                "unable to determine broker caller identity: multiple broker caller SPIFFE IDs provided",
            ));
        }
    };
    let Some(brokers) = config.broker() else {
        return Err(internal("broker configuration missing"));
    };
    match brokers.entry(id.as_str()) {
        Some(entry) => Ok(Some(entry)),
        None => Err(Status::new(
            Code::PermissionDenied,
            format!("broker {} is not configured", go_quote(id.as_str())),
        )),
    }
}

/// Whether a configuration uses the API server at all.
fn needs_api_server(config: &Config) -> bool {
    config.enable_namespace_labels() || config.broker().is_some() || config.disable_kubelet_client()
}

/// A `KubernetesObjectReference` that passed `validateKubernetesObjectReference`.
#[derive(Debug)]
struct ObjectRef {
    plural: String,
    /// As the reference spells it: `core` for the core group.
    group: String,
    namespace: String,
    name: String,
    uid: String,
}

impl ObjectRef {
    /// `validateKubernetesObjectReference`, in SPIRE's order.
    fn validate(r: KubernetesObjectReference) -> Result<ObjectRef, Status> {
        let Some(kind) = r.r#type else {
            return Err(invalid("object reference is missing type"));
        };
        if kind.plural.is_empty() {
            return Err(invalid("object reference type is missing plural"));
        }
        if kind.group.is_empty() {
            return Err(invalid("object reference type is missing group"));
        }
        let key = match r.key {
            None if r.uid.is_empty() => {
                return Err(invalid("object reference is missing key and UID"));
            }
            Some(key) if key.name.is_empty() => {
                return Err(invalid("object reference key is missing name"));
            }
            key => key.unwrap_or_default(),
        };
        Ok(ObjectRef {
            plural: kind.plural,
            group: kind.group,
            namespace: key.namespace,
            name: key.name,
            uid: r.uid,
        })
    }
}

/// What a reference resolved to: its selector values, and the object an enforced broker's
/// access review is about (none for a process outside any pod).
struct Resolved {
    selectors: Vec<String>,
    subject: Option<Subject>,
}

/// The SubjectAccessReview's resource attributes.
#[derive(Debug)]
struct Subject {
    /// The API group as Kubernetes spells it ("" for core).
    group: String,
    resource: String,
    namespace: String,
    name: String,
}

/// A live GET of a pod (`findPodByName`'s and `findPodByUID`'s fallback).
async fn live_pod(server: &ApiServer, namespace: &str, name: &str) -> Result<Pod, Status> {
    let body = server.get_pod(namespace, name).await.map_err(|e| {
        if e.is_not_found() {
            Status::new(Code::NotFound, format!("pod {namespace}/{name} not found"))
        } else {
            internal(format!("unable to get pod from Kubernetes API: {e}"))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| internal(format!("unable to get pod from Kubernetes API: {e}")))
}

/// `findObject`: a GET by name, else a cluster-wide list filtered by UID.
async fn find_object(
    server: &ApiServer,
    resource: &ResourceType,
    object: &ObjectRef,
) -> Result<ObjectMeta, Status> {
    let kind = &resource.kind;
    if !object.name.is_empty() {
        return server
            .get_metadata(resource, &object.namespace, &object.name)
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    Status::new(
                        Code::NotFound,
                        format!("{kind} {}/{} not found", object.namespace, object.name),
                    )
                } else {
                    internal(format!("unable to get {kind}: {e}"))
                }
            });
    }
    server
        .find_metadata_by_uid(resource, &object.uid)
        .await
        .map_err(|e| internal(format!("unable to list {kind}: {e}")))?
        .ok_or_else(|| {
            Status::new(
                Code::NotFound,
                format!("{kind} with UID {} not found", object.uid),
            )
        })
}

/// `kubernetesAPIGroup`: the Broker API spells the core group `core`, Kubernetes "".
fn kubernetes_api_group(group: &str) -> &str {
    if group == "core" { "" } else { group }
}

/// `kubeletClientUnavailableError` with `disable_kubelet_client = true`.
fn kubelet_disabled() -> Status {
    Status::new(Code::FailedPrecondition, "kubelet client is disabled")
}

/// `ErrNamespaceRequired`.
fn namespace_required() -> Status {
    invalid("namespace is required when name is set for a namespaced resource")
}

fn invalid(message: impl Into<String>) -> Status {
    Status::new(Code::InvalidArgument, message)
}

fn internal(message: impl Into<String>) -> Status {
    Status::new(Code::Internal, message)
}

/// `fut`, or `Canceled` as soon as the caller goes away.
async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(crate::status::cancelled()),
        result = fut => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::proto::broker::{KubernetesObjectKey, KubernetesObjectType};

    fn config(text: &str) -> Config {
        Config::parse(text).expect("valid plugin_data")
    }

    const BROKER: &str = "spiffe://example.org/broker";

    fn with_broker(access_policy: &str, scope: &str) -> Config {
        config(&format!(
            "experimental {{\n broker {{\n access_policy = \"{access_policy}\"\n brokers = [{{ id = \"{BROKER}\"\n pod_reference_scope = \"{scope}\" }}]\n }}\n}}\n"
        ))
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_broker_caller_is_checked_in_spires_order() {
        let plain = config("");
        assert_eq!(broker_entry(&plain, &[]).unwrap(), None);
        let e = broker_entry(&plain, &ids(&[BROKER])).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::Internal, "broker configuration missing")
        );

        let c = with_broker("enforced", "cluster");
        let entry = broker_entry(&c, &ids(&[BROKER])).unwrap().unwrap();
        assert_eq!(entry.pod_reference_scope, PodReferenceScope::Cluster);
        let e = broker_entry(&c, &ids(&["spiffe://example.org/other"])).unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        assert_eq!(
            e.message,
            r#"broker "spiffe://example.org/other" is not configured"#
        );
        let e = broker_entry(&c, &ids(&["spiffe://Example.org/x"])).unwrap_err();
        assert_eq!(e.code, Code::Internal);
        assert_eq!(
            e.message,
            "unable to determine broker caller identity: invalid broker caller SPIFFE ID: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
        );
        let e = broker_entry(&c, &ids(&[BROKER, BROKER])).unwrap_err();
        assert_eq!(
            e.message,
            "unable to determine broker caller identity: multiple broker caller SPIFFE IDs provided"
        );
        // The ID is checked before the configuration (SPIRE parses the metadata first).
        let e = broker_entry(&plain, &ids(&[""])).unwrap_err();
        assert!(e.message.ends_with("cannot be empty"), "{e}");
    }

    fn reference(
        kind: Option<(&str, &str)>,
        key: Option<(&str, &str)>,
        uid: &str,
    ) -> KubernetesObjectReference {
        KubernetesObjectReference {
            r#type: kind.map(|(plural, group)| KubernetesObjectType {
                plural: plural.into(),
                group: group.into(),
            }),
            key: key.map(|(namespace, name)| KubernetesObjectKey {
                namespace: namespace.into(),
                name: name.into(),
            }),
            uid: uid.into(),
        }
    }

    /// spiffe/spire v1.15.3 `k8s_test.go` `TestAttestReferenceKubernetesObjectValidation`
    /// (the five checks of `validateKubernetesObjectReference`; the sixth, a pod without a
    /// namespace, is `attestByPodReference`'s).
    #[test]
    fn object_references_are_validated_in_spires_order() {
        let pods = Some(("pods", "core"));
        let cases = [
            (
                reference(None, None, "u"),
                "object reference is missing type",
            ),
            (
                reference(Some(("", "core")), None, "u"),
                "object reference type is missing plural",
            ),
            (
                reference(Some(("pods", "")), None, "u"),
                "object reference type is missing group",
            ),
            (
                reference(pods, None, ""),
                "object reference is missing key and UID",
            ),
            (
                reference(pods, Some(("shop", "")), ""),
                "object reference key is missing name",
            ),
            // An empty key message is still a key: its name is missing, even with a UID.
            (
                reference(pods, Some(("", "")), "u"),
                "object reference key is missing name",
            ),
        ];
        for (r, message) in cases {
            let e = ObjectRef::validate(r).unwrap_err();
            assert_eq!(
                (e.code, e.message.as_str()),
                (Code::InvalidArgument, message)
            );
        }
        let ok = ObjectRef::validate(reference(pods, Some(("", "checkout")), "")).unwrap();
        assert_eq!((ok.namespace.as_str(), ok.name.as_str()), ("", "checkout"));
        let ok = ObjectRef::validate(reference(pods, None, "u")).unwrap();
        assert_eq!(ok.uid, "u");
    }

    #[test]
    fn core_is_the_empty_api_group() {
        assert_eq!(kubernetes_api_group("core"), "");
        assert_eq!(kubernetes_api_group("apps"), "apps");
        assert_eq!(kubernetes_api_group(""), "");
    }
}
