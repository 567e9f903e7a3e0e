//! Objects, the resource registry, the resourceVersion counter and the change history
//! that watches replay.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use crate::kubelet_sim::uuid;

/// `(group, plural)`; group `""` is core.
pub(crate) type Key = (String, String);

/// A resource served by the simulator (discovery, get, list, watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl ResourceDef {
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceDef {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            namespaced,
        }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub(crate) fn key(&self) -> Key {
        (self.group.clone(), self.plural.clone())
    }

    /// Field labels a field selector may use (the API server's per-resource lists).
    pub(crate) fn field_labels(&self) -> &'static [&'static str] {
        match (self.group.as_str(), self.plural.as_str()) {
            ("", "pods") => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            ("", "namespaces") => &["metadata.name", "status.phase"],
            _ if self.namespaced => &["metadata.name", "metadata.namespace"],
            _ => &["metadata.name"],
        }
    }
}

/// The built-in resources of a core `v1` API (always registered).
pub(crate) fn core_resources() -> Vec<ResourceDef> {
    [
        ("Namespace", "namespaces", false),
        ("Pod", "pods", true),
        ("Node", "nodes", false),
        ("Service", "services", true),
        ("ConfigMap", "configmaps", true),
        ("Secret", "secrets", true),
        ("ServiceAccount", "serviceaccounts", true),
        ("Endpoints", "endpoints", true),
        ("Event", "events", true),
        ("ReplicationController", "replicationcontrollers", true),
        ("PersistentVolumeClaim", "persistentvolumeclaims", true),
        ("PersistentVolume", "persistentvolumes", false),
    ]
    .into_iter()
    .map(|(k, p, n)| ResourceDef::new("", "v1", k, p, n))
    .collect()
}

/// The usual workload resources (`apps/v1`, `batch/v1`).
pub(crate) fn workload_resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::new("apps", "v1", "Deployment", "deployments", true),
        ResourceDef::new("apps", "v1", "ReplicaSet", "replicasets", true),
        ResourceDef::new("apps", "v1", "StatefulSet", "statefulsets", true),
        ResourceDef::new("apps", "v1", "DaemonSet", "daemonsets", true),
        ResourceDef::new("batch", "v1", "Job", "jobs", true),
        ResourceDef::new("batch", "v1", "CronJob", "cronjobs", true),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: Key,
    pub etype: EventType,
    pub object: Value,
    /// The object before a modification (to turn MODIFIED into ADDED/DELETED for
    /// watchers whose selector it enters or leaves).
    pub prev: Option<Value>,
}

pub(crate) struct Store {
    pub resources: Vec<ResourceDef>,
    objects: HashMap<Key, BTreeMap<(String, String), Value>>,
    pub rv: u64,
    /// Events with rv ≤ this are gone (`expire_history`).
    pub compacted: u64,
    pub history: Vec<Event>,
    pub namespace_name_label: bool,
}

const CREATED: &str = "2026-01-01T00:00:00Z";

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Store {
    pub fn new(resources: Vec<ResourceDef>, namespace_name_label: bool) -> Store {
        Store {
            resources,
            objects: HashMap::new(),
            rv: 0,
            compacted: 0,
            history: Vec::new(),
            namespace_name_label,
        }
    }

    pub fn resource(&self, group: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.plural == plural)
    }

    /// Adds a resource (replacing one with the same group and plural).
    pub fn register(&mut self, def: ResourceDef) {
        self.resources
            .retain(|r| !(r.group == def.group && r.plural == def.plural));
        self.resources.push(def);
    }

    pub fn get(&self, key: &Key, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(namespace.to_owned(), name.to_owned())))
    }

    /// Objects of a resource in key order (namespace, name), optionally in one namespace.
    pub fn list(&self, key: &Key, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .get(key)
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
                    .map(|(_, v)| v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates or replaces an object; assigns uid (kept from the previous version),
    /// creationTimestamp, resourceVersion, kind and apiVersion. Returns the new RV.
    pub fn put(&mut self, group: &str, plural: &str, mut obj: Value) -> Result<u64, String> {
        let def = self
            .resource(group, plural)
            .cloned()
            .ok_or_else(|| format!("resource {plural:?} in group {group:?} is not registered"))?;
        if !obj.is_object() {
            return Err(format!("{} is not a JSON object", def.kind));
        }
        let name = meta_str(&obj, "name")
            .ok_or_else(|| format!("{} without metadata.name", def.kind))?
            .to_owned();
        let namespace = if def.namespaced {
            meta_str(&obj, "namespace")
                .ok_or_else(|| format!("{} {name:?} without metadata.namespace", def.kind))?
                .to_owned()
        } else {
            String::new()
        };
        if def.namespaced && self.get(&ns_key(), "", &namespace).is_none() {
            // The namespace lifecycle admission would refuse; for tests, create it.
            self.put("", "namespaces", json!({"metadata": {"name": namespace}}))?;
        }
        let key = def.key();
        let prev = self.get(&key, &namespace, &name).cloned();
        self.rv += 1;
        let rv = self.rv;
        let o = obj.as_object_mut().ok_or("not an object")?;
        o.insert("kind".into(), json!(def.kind));
        o.insert("apiVersion".into(), json!(def.api_version()));
        let meta = o
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or("metadata is not an object")?;
        if !def.namespaced {
            meta.remove("namespace");
        }
        let prev_uid = prev
            .as_ref()
            .and_then(|p| meta_str(p, "uid"))
            .map(str::to_owned);
        if meta
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            let seed = format!("{group}/{plural}/{namespace}/{name}/{rv}")
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                });
            let uid = prev_uid.unwrap_or_else(|| uuid(seed));
            meta.insert("uid".into(), json!(uid));
        }
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta.insert("creationTimestamp".into(), json!(CREATED));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if key == ns_key() {
            if self.namespace_name_label {
                // The NamespaceDefaultLabelName admission plugin (Kubernetes ≥ 1.21).
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
            o.entry("spec")
                .or_insert_with(|| json!({"finalizers": ["kubernetes"]}));
            o.entry("status")
                .or_insert_with(|| json!({"phase": "Active"}));
        }
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((namespace, name), obj.clone());
        let etype = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.history.push(Event {
            rv,
            key,
            etype,
            object: obj,
            prev,
        });
        Ok(rv)
    }

    /// Removes an object; the DELETED event carries it with the deletion's RV.
    pub fn delete(
        &mut self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<u64> {
        let key = (group.to_owned(), plural.to_owned());
        let mut obj = self
            .objects
            .get_mut(&key)?
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        self.rv += 1;
        let rv = self.rv;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        self.history.push(Event {
            rv,
            key,
            etype: EventType::Deleted,
            object: obj,
            prev: None,
        });
        Some(rv)
    }

    /// Compaction: watches from an RV before now get `410 Expired`.
    pub fn expire_history(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }
}

pub(crate) fn ns_key() -> Key {
    (String::new(), "namespaces".to_owned())
}

/// A parsed field selector (`a=b,c!=d`).
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses against the resource's field labels; the error is the API server's message.
    pub fn parse(s: &str, def: &ResourceDef) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            if !def.field_labels().contains(&field) {
                return Err(format!(
                    "Unable to find \"{}, Resource={}\" that match label selector \"\", field selector \"{s}\": field label not supported: {field}",
                    def.api_version(),
                    def.plural
                ));
            }
            reqs.push((field.to_owned(), eq, value.trim().to_owned()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, value)| {
            let mut v = obj;
            for part in field.split('.') {
                v = v.get(part).unwrap_or(&Value::Null);
            }
            let actual = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *value) == *eq
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{…}}`.
pub(crate) fn partial_metadata(obj: &Value, keep_managed_fields: bool) -> Value {
    let mut meta = obj
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if !keep_managed_fields {
        meta.remove("managedFields");
    }
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
}

/// A list item: without kind/apiVersion, as the API server writes list items.
pub(crate) fn list_item(obj: &Value) -> Value {
    let mut o = obj.as_object().cloned().unwrap_or_else(Map::new);
    o.remove("kind");
    o.remove("apiVersion");
    Value::Object(o)
}
