//! A realistic kubelet `/pods` body generator, shared by the pod-list benchmarks
//! (`tests/benches/podlist.rs`, issue 3; `podlist-bench`, issue 14).
//!
//! Each pod is ~11.4 KB of JSON like real kubelet output: 8 labels, annotations with a
//! `kubectl.kubernetes.io/last-applied-configuration`, a ReplicaSet owner, managed
//! containers with env, ports, resources, probes and mounts ([`CONTAINERS`], and
//! [`INIT_CONTAINERS`] as init containers), long registry image references with `sha256`
//! digests, and full statuses with `lastState`. 110 pods (the kubelet's default maximum per
//! node) = 1.25 MB, 250 pods = 2.85 MB. Everything is deterministic: pod `i` has UID
//! [`uid`]`(i)` and its status slot `c` has container ID [`container_id`]`(i, c)`.

use std::collections::BTreeMap;

use attestor::locator::ContainerRef;
use serde_json::{Value, json};

/// The app containers of every pod; their statuses are slots 0, 1, 2.
pub const CONTAINERS: [&str; 3] = ["api", "sidecar-proxy", "log-shipper"];
/// The init containers of every pod; their statuses are slots 5, 6.
pub const INIT_CONTAINERS: [&str; 2] = ["init-config", "init-migrations"];
/// Every status slot of a pod (`containerStatuses`, then `initContainerStatuses`).
pub const STATUS_SLOTS: [u64; 5] = [0, 1, 2, 5, 6];

/// The container of status slot `slot` of pod `pod`, as a cgroup path names it (pod UID and
/// container ID).
pub fn container_ref(pod: u64, slot: u64) -> ContainerRef {
    ContainerRef {
        pod_uid: Some(uid(pod)),
        container_id: container_id(pod, slot),
    }
}

/// `len` deterministic pseudo-random hex digits from `seed` (splitmix64).
pub fn hex(seed: u64, len: usize) -> String {
    let mut x = seed;
    let mut out = String::with_capacity(len);
    while out.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.push_str(&format!("{z:016x}"));
    }
    out.truncate(len);
    out
}

/// A pod UID (8-4-4-4-12 hex) from `seed`; pod `i` has `uid(i)`.
pub fn uid(seed: u64) -> String {
    let h = hex(seed, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The 64-hex container ID of status slot `c` of pod `pod` (see [`STATUS_SLOTS`]).
pub fn container_id(pod: u64, c: u64) -> String {
    hex(pod * 100 + c + 7, 64)
}

fn image(name: &str, seed: u64) -> (String, String) {
    let tag = format!(
        "registry.example.internal:5000/platform/team-{name}/{name}-service:v1.{seed}.3-build.{}",
        seed * 17
    );
    let digest = format!(
        "registry.example.internal:5000/platform/team-{name}/{name}-service@sha256:{}",
        hex(seed + 99, 64)
    );
    (tag, digest)
}

fn container_spec(name: &str, img: &str) -> Value {
    let env: Vec<Value> = (0..3)
        .map(|i| json!({"name": format!("{}_SETTING_{i}", name.to_uppercase()), "value": format!("value-{i}-for-{name}-with-some-length")}))
        .collect();
    json!({
        "name": name, "image": img,
        "command": ["/bin/app", "--config=/etc/app/config.yaml", "--log-level=info"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": env,
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app"},
            {"name": "kube-api-access-abcde", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
    })
}

fn container_status(name: &str, pod: u64, c: u64, tag: &str, digest: &str) -> Value {
    json!({
        "name": name,
        "state": {"running": {"startedAt": "2026-11-27T10:00:00Z"}},
        "lastState": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2026-11-26T10:00:00Z", "finishedAt": "2026-11-27T09:59:58Z", "containerID": format!("containerd://{}", hex(pod * 1000 + c, 64))}},
        "ready": true, "restartCount": 1, "started": true,
        "image": tag, "imageID": digest,
        "containerID": format!("containerd://{}", container_id(pod, c))
    })
}

/// Pod `i` of a generated list (see the module doc).
pub fn pod(i: u64) -> Value {
    let names = CONTAINERS;
    let inits = INIT_CONTAINERS;
    let images: Vec<(String, String)> = names
        .iter()
        .enumerate()
        .map(|(c, n)| image(n, i * 10 + c as u64))
        .collect();
    let init_images: Vec<(String, String)> = inits
        .iter()
        .enumerate()
        .map(|(c, n)| image(n, i * 10 + 5 + c as u64))
        .collect();
    let labels: BTreeMap<String, String> = (0..8)
        .map(|l| {
            (
                format!("app.kubernetes.io/label-{l}"),
                format!("value-{l}-{i}"),
            )
        })
        .collect();
    let spec = json!({
        "containers": names.iter().zip(&images).map(|(n, (t, _))| container_spec(n, t)).collect::<Vec<_>>(),
        "initContainers": inits.iter().zip(&init_images).map(|(n, (t, _))| container_spec(n, t)).collect::<Vec<_>>(),
        "serviceAccountName": format!("workload-{i}"), "nodeName": "node-a.example.internal",
        "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        "volumes": [{"name": "config", "configMap": {"name": format!("workload-{i}-config"), "defaultMode": 420}}]
    });
    let last_applied = serde_json::to_string(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": labels}, "spec": {"containers": [{"name": "api", "image": &images[0].0}]}}))
    .expect("a JSON value serialises");
    let conditions: Vec<Value> = ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-27T09:00:05Z"}))
        .collect();
    json!({
        "metadata": {
            "name": format!("workload-{i}-7d9f8c6b5-{}", &hex(i, 5)),
            "generateName": format!("workload-{i}-7d9f8c6b5-"),
            "namespace": format!("team-{}", i % 7),
            "uid": uid(i),
            "resourceVersion": format!("{}", 100_000 + i),
            "creationTimestamp": "2026-11-27T09:00:00Z",
            "labels": labels,
            "annotations": {
                "kubernetes.io/config.seen": "2026-11-27T09:00:01.123456789Z",
                "kubernetes.io/config.source": "api",
                "kubectl.kubernetes.io/last-applied-configuration": last_applied
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("workload-{i}-7d9f8c6b5"), "uid": uid(i + 50_000), "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "10.0.0.17", "podIP": format!("10.244.{}.{}", i / 250, i % 250), "startTime": "2026-11-27T09:00:01Z", "qosClass": "Burstable",
            "initContainerStatuses": inits.iter().zip(&init_images).enumerate().map(|(c, (n, (t, d)))| container_status(n, i, 5 + c as u64, t, d)).collect::<Vec<_>>(),
            "containerStatuses": names.iter().zip(&images).enumerate().map(|(c, (n, (t, d)))| container_status(n, i, c as u64, t, d)).collect::<Vec<_>>()
        }
    })
}

/// A kubelet `/pods` body of pods `0..n`.
pub fn pod_list(n: u64) -> Vec<u8> {
    let items: Vec<Value> = (0..n).map(pod).collect();
    serde_json::to_vec(
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
    )
    .expect("a JSON value serialises")
}
