//! SPIRE's Configure on the real kernel: the plugin's attestor ([`K8s`], what the binary
//! serves) loads the eBPF programs once, replaces them only when a Configure that changes
//! the tracker succeeds, and a rejected Configure leaves the running programs, and only
//! them, attached.
//!
//! One test in its own binary: it counts every `task_newtask` program the kernel has
//! loaded, which other tests loading trackers in parallel would disturb.

use std::collections::BTreeSet;
use std::time::Duration;

use attestor::attest::K8s;
use attestor::plugin::WorkloadAttestor;
use attestor::status::Code;
use attestor_tests::{require_root, wait_for};

/// Program ids of every loaded `task_newtask` (our fork hook; one per loaded tracker).
fn fork_hooks() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("task_newtask"))
        .map(|p| p.id())
        .collect()
}

/// Ours: those loaded since `before` was taken (another tracker on the host is not ours).
fn ours(before: &BTreeSet<u32>) -> BTreeSet<u32> {
    fork_hooks().difference(before).copied().collect()
}

/// Program teardown after the last fd closes is asynchronous (RCU): the set, once it
/// satisfies `ok` (within 10 s), else the set as it is then.
fn settled(before: &BTreeSet<u32>, ok: impl Fn(&BTreeSet<u32>) -> bool) -> BTreeSet<u32> {
    wait_for(Duration::from_secs(10), || {
        Some(ours(before)).filter(|s| ok(s))
    })
    .unwrap_or_else(|| ours(before))
}

// The kubelet client (hyper) is built inside a tokio context, as in the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_configure_leaves_the_running_programs_and_only_them() {
    if !require_root() {
        return;
    }
    let before = fork_hooks();
    let k8s = K8s::start().expect("plugin attestor");
    let first = ours(&before);
    assert_eq!(first.len(), 1, "one tracker loaded at start: {first:?}");

    // Read-only port: no CA or token file is needed for the Configure to succeed.
    let base = "kubelet_read_only_port = 10255\n";
    k8s.configure(base).expect("configure");
    assert_eq!(
        ours(&before),
        first,
        "unchanged tracker settings reuse the programs"
    );

    // A tracker change that fails later in the same Configure (the CA file is missing).
    let rejected = "tracker_max_processes = 2048\nkubelet_ca_path = \"/nonexistent/ca.crt\"\n";
    let e = k8s.configure(rejected).expect_err("missing CA");
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    let after = settled(&before, |s| *s == first);
    assert_eq!(after, first, "only the running programs stay attached");

    // The same change, accepted: the new programs replace the old ones.
    k8s.configure(&format!("{base}tracker_max_processes = 2048\n"))
        .expect("configure with a tracker change");
    let second = settled(&before, |s| s.len() == 1 && s.is_disjoint(&first));
    assert_eq!(second.len(), 1, "one tracker after the swap: {second:?}");
    assert!(
        second.is_disjoint(&first),
        "a new tracker: {first:?} → {second:?}"
    );

    // Deinit detaches everything.
    k8s.deinit();
    let left = settled(&before, BTreeSet::is_empty);
    assert!(left.is_empty(), "Deinit detaches the programs: {left:?}");
}
