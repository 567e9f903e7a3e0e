//! Fuzz target bodies: each takes arbitrary bytes, runs one parser of untrusted input and
//! asserts its documented invariants (a panic or failed assertion is a finding).
//!
//! Shared by the libFuzzer targets (`fuzz/fuzz_targets/*.rs`, nightly) and the stable corpus
//! replay (`tests/tests/fuzz_corpus.rs` includes this file with `#[path]`), so CI checks every
//! committed corpus input against exactly the same assertions.

use attestor::config::Config;
use attestor::locator::{ContainerRef, locate_cgroup_file, locate_path};
use attestor::pods::{PodsError, SearchOptions, search};
use attestor::status::{Code, Status};

/// `plugin_data` (HCL v1 or JSON) → `Config::parse`. Valid configs must satisfy the
/// documented ranges; invalid ones map to `InvalidArgument` with a message.
pub fn config(data: &[u8]) {
    // plugin_data reaches us as a protobuf `string`: always UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(c) => {
            // Every accessor must be total on an accepted config.
            let _ = c.kubelet_port();
            let _ = c.kubelet_ca_path();
            let _ = c.token_path();
            let _ = c.kubelet_auth();
            let _ = c.node_name(|_| None);
            let _ = c.kubelet_host(|_| Some("node-from-env".into()));
            let _ = c.reload_interval();
            let _ = c.search_options();
            assert!(c.max_poll_attempts() >= 1, "max_poll_attempts 0 accepted");
            let _ = c.poll_retry_interval();
            assert!(
                attestor::config::TRACKER_MAX_PROCESSES_RANGE
                    .contains(&i64::from(c.tracker_max_processes())),
                "tracker_max_processes {} accepted",
                c.tracker_max_processes()
            );
            // Parsing is deterministic.
            assert_eq!(Config::parse(text).ok(), Some(c));
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "Err with no error");
            let status = Status::from(errors);
            assert_eq!(status.code, Code::InvalidArgument);
            assert!(!status.message.is_empty());
        }
    }
}

/// A cgroup path / `/proc/<pid>/cgroup` file → `locate_path` / `locate_cgroup_file`.
pub fn locator(data: &[u8]) {
    // /proc/<pid>/cgroup is read with from_utf8_lossy by the tracker; do the same.
    let text = String::from_utf8_lossy(data);
    if let Some(r) = locate_path(&text) {
        check_ref(&r, &text);
    }
    match locate_cgroup_file(&text) {
        Ok(Some(r)) => {
            check_ref(&r, &text);
            // The answer comes from one line's path: some line must yield that container.
            let from_a_line = text.lines().any(|line| {
                line.splitn(3, ':')
                    .nth(2)
                    .and_then(locate_path)
                    .is_some_and(|l| l.container_id == r.container_id)
            });
            assert!(from_a_line, "{r:?} is not located by any single line");
        }
        Ok(None) => {
            // No line names a container.
            for line in text.lines() {
                if let Some(path) = line.splitn(3, ':').nth(2) {
                    assert_eq!(locate_path(path), None, "line {line:?} ignored");
                }
            }
        }
        Err(e) => {
            let status = Status::from(e);
            assert!(matches!(
                status.code,
                Code::Internal | Code::FailedPrecondition
            ));
            assert!(!status.message.is_empty());
        }
    }
}

fn check_ref(r: &ContainerRef, text: &str) {
    assert_eq!(r.container_id.len(), 64, "{r:?}");
    assert!(
        r.container_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{r:?}"
    );
    assert!(text.contains(&r.container_id), "{r:?} not in input");
    if let Some(uid) = &r.pod_uid {
        assert!(
            uid.len() == 36 || uid.len() == 32,
            "pod UID of unexpected length: {r:?}"
        );
        assert!(
            uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{r:?}"
        );
        assert!(
            text.contains("pod"),
            "{r:?}: pod UID without a `pod` prefix"
        );
    }
}

/// Container ID used when the input does not name one (seeds use it).
pub const SEED_CONTAINER_ID: &str =
    "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// Pod UID used when the input does not name one.
pub const SEED_POD_UID: &str = "11111111-2222-4333-8444-555555555555";

/// Input layout: byte 0 = flags (bit 0: `disable_container_selectors`, bit 1: the cgroup
/// gave no pod UID), then the `/pods` body. The target is the seed pod/container.
pub fn pods(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let target = ContainerRef {
        pod_uid: (flags & 2 == 0).then(|| SEED_POD_UID.to_string()),
        container_id: SEED_CONTAINER_ID.to_string(),
    };
    let opts = SearchOptions::new(flags & 1 != 0);
    match search(body, &target, &opts) {
        Ok(Some(values)) => {
            // Documented: sorted bytewise and deduplicated.
            assert!(
                values.windows(2).all(|w| w[0] < w[1]),
                "selectors not sorted/deduplicated: {values:?}"
            );
            assert!(values.iter().all(|v| !v.starts_with("k8s:")), "{values:?}");
            // Deterministic.
            assert_eq!(search(body, &target, &opts), Ok(Some(values)));
        }
        Ok(None) => {}
        Err(e) => {
            let retryable = e.is_retryable();
            assert_eq!(retryable, matches!(e, PodsError::InvalidList(_)));
            let status = Status::from(e);
            assert!(matches!(status.code, Code::Unavailable | Code::Internal));
            assert!(!status.message.is_empty());
        }
    }
}
