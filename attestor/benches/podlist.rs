//! Pod list parsing (issue 3): find one container in a kubelet `/pods` body and build its
//! selectors, with the lazy scanner (`attestor::selectors::search`) versus a full `serde_json`
//! decode of the same body into typed structs.
//!
//! Run: `ATTESTOR_SKIP_EBPF=1 cargo bench -p attestor --bench podlist`
//!
//! The bodies are generated here: 110 pods (the kubelet's default max per node) and 250
//! pods, each ~10 KB like real kubelet output (labels, annotations with a
//! last-applied-configuration, owner, managed fields, three containers with env, probes and
//! mounts, two init containers, long image references, full statuses).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use attestor::locator::ContainerRef;
use attestor::pods::{Pod, SearchOptions};
use attestor::selectors::search;
use criterion::{Criterion, criterion_group, criterion_main};
use serde::Deserialize;
use serde_json::{Value, json};

fn hex(seed: u64, len: usize) -> String {
    // Deterministic pseudo-random hex (splitmix64).
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

fn uid(seed: u64) -> String {
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

fn container_id(pod: u64, c: u64) -> String {
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

fn pod(i: u64) -> Value {
    let names = ["api", "sidecar-proxy", "log-shipper"];
    let inits = ["init-config", "init-migrations"];
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
    let last_applied = serde_json::to_string(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": labels}, "spec": {"containers": [{"name": "api", "image": &images[0].0}]}})).unwrap();
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

fn pod_list(n: u64) -> Vec<u8> {
    let items: Vec<Value> = (0..n).map(pod).collect();
    serde_json::to_vec(
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
    )
    .unwrap()
}

// --- The baseline: decode everything into typed structs, then search -------------------------

#[derive(Deserialize)]
struct FullPodList {
    items: Vec<FullPod>,
}

/// Minimal typed pod for the baseline: the library's selector-relevant `Pod`, decoded for
/// every item of the list (unknown fields are skipped by serde, as a typed decode does).
#[derive(Deserialize)]
struct FullPod {
    #[serde(flatten)]
    pod: Pod,
}

fn full_decode_search(body: &[u8], target: &ContainerRef) -> Option<Vec<String>> {
    let list: FullPodList = serde_json::from_slice(body).unwrap();
    let want = format!("containerd://{}", target.container_id);
    let mut found = None;
    for item in &list.items {
        let pod = &item.pod;
        if pod.metadata.uid.as_deref() != target.pod_uid.as_deref() {
            continue;
        }
        let statuses = [
            &pod.status.container_statuses,
            &pod.status.init_container_statuses,
        ];
        let hit = statuses
            .iter()
            .filter_map(|l| l.as_deref())
            .flatten()
            .find(|s| s.container_id.as_deref() == Some(want.as_str()));
        if let Some(status) = hit {
            found = Some(attestor::selectors::build(pod, Some(status)));
        }
    }
    found
}

/// On-CPU time of this thread in nanoseconds (first field of `/proc/thread-self/schedstat`).
/// Unlike wall time it does not grow when other processes share the CPUs, which they do on
/// the 2-core build machine.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Mean on-CPU time per call of `f` over `iters` calls, in microseconds.
fn cpu_time_per_iter<T>(iters: u32, mut f: impl FnMut() -> T) -> Option<f64> {
    let start = thread_cpu_ns()?;
    for _ in 0..iters {
        black_box(f());
    }
    let end = thread_cpu_ns()?;
    Some((end - start) as f64 / f64::from(iters) / 1000.0)
}

fn bench(c: &mut Criterion) {
    for n in [110u64, 250] {
        let body = pod_list(n);
        let middle = n / 2;
        let target = ContainerRef {
            pod_uid: Some(uid(middle)),
            container_id: container_id(middle, 1),
        };
        let opts = SearchOptions::default();
        // Both paths must agree before they are timed.
        let lazy = search(&body, &target, &opts).unwrap().unwrap();
        assert_eq!(Some(lazy.clone()), full_decode_search(&body, &target));
        assert!(lazy.contains(&"container-name:sidecar-proxy".to_string()));
        eprintln!(
            "{n} pods: body {} bytes ({} bytes/pod), {} selectors",
            body.len(),
            body.len() as u64 / n,
            lazy.len()
        );
        // Criterion reports wall time; this is the same work in on-CPU time.
        let lazy_cpu = cpu_time_per_iter(300, || search(&body, &target, &opts).unwrap());
        let full_cpu = cpu_time_per_iter(60, || full_decode_search(&body, &target));
        if let (Some(lazy), Some(full)) = (lazy_cpu, full_cpu) {
            eprintln!(
                "{n} pods, on-CPU time per call: lazy_search {lazy:.0} µs, full_serde_decode {full:.0} µs, ratio {:.1}x",
                full / lazy
            );
        }
        let mut group = c.benchmark_group(format!("podlist_{n}_pods"));
        group.throughput(criterion::Throughput::Bytes(body.len() as u64));
        group.bench_function("lazy_search", |b| {
            b.iter(|| search(black_box(&body), black_box(&target), &opts).unwrap())
        });
        group.bench_function("full_serde_decode", |b| {
            b.iter(|| full_decode_search(black_box(&body), black_box(&target)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
