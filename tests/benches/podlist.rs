//! Pod list parsing (issue 3): find one container in a kubelet `/pods` body and build its
//! selectors, with the lazy scanner (`attestor::selectors::search`) versus a full `serde_json`
//! decode of the same body into typed structs.
//!
//! Run: `ATTESTOR_SKIP_EBPF=1 cargo bench -p attestor-tests --bench podlist`
//!
//! The bodies come from [`attestor_tests::podgen`]: 110 pods (the kubelet's default max per
//! node) and 250 pods, ~11.4 KB each like real kubelet output.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use attestor::locator::ContainerRef;
use attestor::pods::{Pod, SearchOptions};
use attestor::selectors::search;
use attestor_tests::podgen::{container_id, pod_list, uid};
use criterion::{Criterion, criterion_group, criterion_main};
use serde::Deserialize;

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
