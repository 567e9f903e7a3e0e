//! SPIRE's attestation on recorded inputs: a `/proc/<pid>/cgroup` text and one kubelet
//! `/pods` body (`attestor attest --cgroup-file F --pods-file P`, the fuzz targets).
//!
//! Same steps as a live attestation — locate the container from the cgroup file, search the
//! pod list, build selectors — with one difference: the pod list never changes, so where
//! SPIRE would poll `max_poll_attempts` times this gives SPIRE's final answer at once
//! ([`crate::status::gave_up`], or `Unavailable` with the last pod-list error), without
//! sleeping.

use crate::config::Config;
use crate::locator;
use crate::pods::{PodIndex, SearchOptions};
use crate::selectors;
use crate::status::{self, Code, Status};

/// The replay, without I/O but the pod-list read (done only when needed, as SPIRE reads
/// the list only once a container ID is known): selector values without the `k8s:` prefix,
/// sorted; empty when the process is not in a pod.
pub fn replay(
    cgroups: &str,
    read_pods: impl FnOnce() -> Result<Vec<u8>, Status>,
    config: &Config,
) -> Result<Vec<String>, Status> {
    let Some(target) = locator::locate_cgroup_file(cgroups)? else {
        return Ok(Vec::new());
    };
    // Indexed as a live list version is (one code path for both).
    let list = PodIndex::new(read_pods()?);
    match selectors::search_in(&list, &target, &SearchOptions::from_config(config)) {
        Ok(Some(selectors)) => Ok(selectors),
        // Every later poll would see the same list.
        Ok(None) => Err(status::gave_up()),
        // SPIRE retries these, then reports the last one as Unavailable.
        Err(e) if e.is_retryable() => Err(Status::new(Code::Unavailable, e.to_string())),
        Err(e) => Err(e.into()),
    }
}
