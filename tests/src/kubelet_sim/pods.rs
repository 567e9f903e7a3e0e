//! Pod JSON as the kubelet's `/pods` returns it: a builder for pods with chosen
//! container IDs, and a generator of realistic lists (~10 KB per pod).

use serde_json::{Map, Value, json};

/// Container runtimes and their `containerID` scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
}

impl Runtime {
    pub fn scheme(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        }
    }

    /// `<scheme>://<id>`.
    pub fn container_id(self, hex_id: &str) -> String {
        format!("{}://{hex_id}", self.scheme())
    }
}

/// Deterministic 64-bit mixing (splitmix64), so generated lists are reproducible.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn seed_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// 64 lowercase hex digits derived from `seed` (a container ID's shape).
pub fn hex64(seed: u64) -> String {
    (0..4)
        .map(|i| format!("{:016x}", mix(seed.wrapping_add(i))))
        .collect()
}

/// A UUID-shaped string derived from `seed` (a pod UID's shape).
pub fn uuid(seed: u64) -> String {
    let a = mix(seed);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48 & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// Which status list a container belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Regular,
    Init,
    Ephemeral,
}

impl ContainerKind {
    /// The `spec` field listing containers of this kind.
    pub fn spec_field(self) -> &'static str {
        match self {
            ContainerKind::Regular => "containers",
            ContainerKind::Init => "initContainers",
            ContainerKind::Ephemeral => "ephemeralContainers",
        }
    }

    /// The `status` field listing their statuses.
    pub fn status_field(self) -> &'static str {
        match self {
            ContainerKind::Regular => "containerStatuses",
            ContainerKind::Init => "initContainerStatuses",
            ContainerKind::Ephemeral => "ephemeralContainerStatuses",
        }
    }
}

#[derive(Debug, Clone)]
struct ContainerSpec {
    kind: ContainerKind,
    name: String,
    image: String,
    /// Full `containerID` (with scheme); `None` ⇒ spec only, no status yet.
    id: Option<String>,
}

/// Builds one pod. Defaults: namespace `default`, node `node-1`, service account
/// `default`, phase `Running`, UID derived from the name, no containers.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    name: String,
    namespace: String,
    uid: String,
    node: String,
    service_account: String,
    phase: String,
    labels: Vec<(String, String)>,
    owners: Vec<(String, String, String)>,
    containers: Vec<ContainerSpec>,
    realistic: bool,
}

impl PodBuilder {
    pub fn new(name: &str) -> PodBuilder {
        PodBuilder {
            name: name.to_owned(),
            namespace: "default".into(),
            uid: uuid(seed_of(name)),
            node: "node-1".into(),
            service_account: "default".into(),
            phase: "Running".into(),
            labels: Vec::new(),
            owners: Vec::new(),
            containers: Vec::new(),
            realistic: false,
        }
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }
    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = uid.into();
        self
    }
    pub fn node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.into();
        self
    }
    pub fn phase(mut self, phase: &str) -> Self {
        self.phase = phase.into();
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }
    /// An owner reference (`kind`, `name`, `uid`), marked as the controller.
    pub fn owner(mut self, kind: &str, name: &str, uid: &str) -> Self {
        self.owners.push((kind.into(), name.into(), uid.into()));
        self
    }
    /// A container with this full `containerID` (e.g. `containerd://<64 hex>`), or with
    /// no status yet when `None` (just started: the kubelet has not reported it).
    pub fn container(mut self, name: &str, image: &str, id: Option<&str>) -> Self {
        self.containers.push(ContainerSpec {
            kind: ContainerKind::Regular,
            name: name.into(),
            image: image.into(),
            id: id.map(Into::into),
        });
        self
    }
    pub fn init_container(mut self, name: &str, image: &str, id: Option<&str>) -> Self {
        self.containers.push(ContainerSpec {
            kind: ContainerKind::Init,
            name: name.into(),
            image: image.into(),
            id: id.map(Into::into),
        });
        self
    }
    pub fn ephemeral_container(mut self, name: &str, image: &str, id: Option<&str>) -> Self {
        self.containers.push(ContainerSpec {
            kind: ContainerKind::Ephemeral,
            name: name.into(),
            image: image.into(),
            id: id.map(Into::into),
        });
        self
    }
    /// Add the bulk a real pod carries (annotations, env, probes, volumes, conditions),
    /// bringing it to roughly 10 KB of JSON.
    pub fn realistic(mut self) -> Self {
        self.realistic = true;
        self
    }

    pub fn uid_str(&self) -> &str {
        &self.uid
    }

    pub fn build(&self) -> Value {
        let labels: Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let owners: Vec<Value> = self
            .owners
            .iter()
            .map(|(kind, name, uid)| {
                json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid,
                       "controller": true, "blockOwnerDeletion": true})
            })
            .collect();
        let mut metadata = json!({
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "resourceVersion": format!("{}", mix(seed_of(&self.uid)) % 10_000_000),
            "creationTimestamp": "2026-11-27T10:00:00Z",
            "labels": labels,
            "ownerReferences": owners,
        });
        let mut spec = json!({
            "nodeName": self.node,
            "serviceAccountName": self.service_account,
            "serviceAccount": self.service_account,
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30,
            "enableServiceLinks": true,
            "priority": 0,
        });
        let mut status = json!({
            "phase": self.phase,
            "hostIP": "10.0.0.11",
            "podIP": format!("10.244.{}.{}", mix(seed_of(&self.uid)) % 250, mix(seed_of(&self.name)) % 250),
            "startTime": "2026-11-27T10:00:01Z",
            "qosClass": "Burstable",
        });
        for kind in [
            ContainerKind::Regular,
            ContainerKind::Init,
            ContainerKind::Ephemeral,
        ] {
            let of_kind: Vec<&ContainerSpec> =
                self.containers.iter().filter(|c| c.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let specs: Vec<Value> = of_kind
                .iter()
                .map(|c| container_spec(c, self.realistic))
                .collect();
            let statuses: Vec<Value> = of_kind
                .iter()
                .filter_map(|c| c.id.as_ref().map(|id| container_status(c, id)))
                .collect();
            spec[kind.spec_field()] = Value::Array(specs);
            status[kind.status_field()] = Value::Array(statuses);
        }
        if self.realistic {
            add_bulk(&mut metadata, &mut spec, &mut status, &self.name);
        }
        json!({"metadata": metadata, "spec": spec, "status": status})
    }
}

fn container_spec(c: &ContainerSpec, realistic: bool) -> Value {
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    });
    if realistic {
        let env: Vec<Value> = (0..12)
            .map(|i| json!({"name": format!("APP_SETTING_{i}"), "value": format!("value-{i}-{}", hex64(i as u64)[..24].to_owned())}))
            .collect();
        v["env"] = Value::Array(env);
        v["resources"] = json!({"limits": {"cpu": "500m", "memory": "512Mi"},
                                "requests": {"cpu": "100m", "memory": "128Mi"}});
        v["ports"] = json!([{"containerPort": 8080, "name": "http", "protocol": "TCP"},
                            {"containerPort": 9090, "name": "metrics", "protocol": "TCP"}]);
        v["volumeMounts"] = json!([
            {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": "kube-api-access-x7k2p", "readOnly": true},
            {"mountPath": "/etc/app/config", "name": "config"},
            {"mountPath": "/run/spire/sockets", "name": "spire-agent-socket", "readOnly": true}
        ]);
        v["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1,
            "successThreshold": 1, "failureThreshold": 3});
        v["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
            "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3});
        v["securityContext"] = json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}});
    }
    v
}

fn container_status(c: &ContainerSpec, id: &str) -> Value {
    let digest = hex64(seed_of(&c.image));
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imageID": format!("{}@sha256:{digest}", c.image.split(':').next().unwrap_or(&c.image)),
        "containerID": id,
        "ready": c.kind == ContainerKind::Regular,
        "restartCount": 0,
        "started": c.kind != ContainerKind::Init,
    });
    v["state"] = if c.kind == ContainerKind::Init {
        json!({"terminated": {"exitCode": 0, "reason": "Completed", "containerID": id,
               "startedAt": "2026-11-27T10:00:02Z", "finishedAt": "2026-11-27T10:00:03Z"}})
    } else {
        json!({"running": {"startedAt": "2026-11-27T10:00:04Z"}})
    };
    v
}

fn add_bulk(metadata: &mut Value, spec: &mut Value, status: &mut Value, name: &str) {
    // kubectl's last-applied annotation is the usual bulk of real pod metadata.
    let applied = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"{name}\",\"annotations\":{{}}}},\"spec\":{{{}}}}}",
        "\"containers\":[{\"name\":\"app\",\"image\":\"registry.example.com/team/app:1.2.3\"}],"
            .repeat(14)
    );
    metadata["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": applied,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
        "kubernetes.io/config.seen": "2026-11-27T10:00:00.123456789Z",
        "kubernetes.io/config.source": "api",
    });
    metadata["generateName"] = Value::String(format!("{name}-"));
    spec["volumes"] = json!([
        {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}}
        ]}},
        {"name": "config", "configMap": {"name": format!("{name}-config"), "defaultMode": 420}},
        {"name": "spire-agent-socket", "hostPath": {"path": "/run/spire/sockets", "type": "DirectoryOrCreate"}}
    ]);
    spec["tolerations"] = json!([
        {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
        {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}
    ]);
    spec["securityContext"] =
        json!({"fsGroup": 2000, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}});
    status["conditions"] = json!([
        {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": "2026-11-27T10:00:02Z"},
        {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-27T10:00:03Z"},
        {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-27T10:00:09Z"},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-27T10:00:09Z"},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-27T10:00:00Z"}
    ]);
    status["podIPs"] = json!([{"ip": status["podIP"].clone()}]);
}

/// `n` realistic pods on `node` (~10 KB each): deployments and daemonsets, 2 to 3
/// containers, an init container on every third pod, an ephemeral debug container on
/// every tenth, runtimes cycling containerd / CRI-O / docker. Same `seed` ⇒ same list.
pub fn generate_pods(n: usize, node: &str, seed: u64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let s = mix(seed ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
            let runtime = match i % 3 {
                0 => Runtime::Containerd,
                1 => Runtime::CriO,
                _ => Runtime::Docker,
            };
            let app = format!("app-{:03}", i % 40);
            let name = format!("{app}-{:05x}-{:05x}", s & 0xfffff, (s >> 20) & 0xfffff);
            let ns = format!("team-{}", i % 7);
            let (owner_kind, owner_name) = if i % 5 == 0 {
                ("DaemonSet", app.clone())
            } else {
                ("ReplicaSet", format!("{app}-{:08x}", s >> 32))
            };
            let mut b = PodBuilder::new(&name)
                .namespace(&ns)
                .uid(&uuid(s))
                .node(node)
                .service_account(&format!("{app}-sa"))
                .label("app", &app)
                .label("pod-template-hash", &format!("{:08x}", s >> 32))
                .label("team", &ns)
                .owner(owner_kind, &owner_name, &uuid(s ^ 0xabcdef))
                .container(
                    "app",
                    &format!("registry.example.com/{ns}/{app}:1.{}.0", i % 9),
                    Some(&runtime.container_id(&hex64(s ^ 1))),
                )
                .container(
                    "sidecar",
                    "registry.example.com/mesh/proxy:1.22.3",
                    Some(&runtime.container_id(&hex64(s ^ 2))),
                )
                .realistic();
            if i % 2 == 0 {
                b = b.container(
                    "log-shipper",
                    "registry.example.com/obs/shipper:3.1",
                    Some(&runtime.container_id(&hex64(s ^ 3))),
                );
            }
            if i % 3 == 0 {
                b = b.init_container(
                    "migrate",
                    &format!("registry.example.com/{ns}/{app}-migrate:1.0"),
                    Some(&runtime.container_id(&hex64(s ^ 4))),
                );
            }
            if i % 10 == 0 {
                b = b.ephemeral_container(
                    "debugger-x1",
                    "registry.example.com/tools/busybox:1.36",
                    Some(&runtime.container_id(&hex64(s ^ 5))),
                );
            }
            b.build()
        })
        .collect()
}

/// The `/pods` answer for these pods.
pub fn pod_list_json(pods: &[Value]) -> Vec<u8> {
    let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods});
    serde_json::to_vec(&list).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pods_are_about_10kb_and_ids_are_64_hex() {
        let pods = generate_pods(20, "node-1", 7);
        let size = pod_list_json(&pods).len() / 20;
        assert!((6_000..16_000).contains(&size), "{size} bytes per pod");
        let id = pods[0]["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap_or_default();
        let hex = id.strip_prefix("containerd://").unwrap_or_default();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(generate_pods(20, "node-1", 7), pods);
    }
}
