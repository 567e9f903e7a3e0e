//! `attestor attest --cgroup-file F --pods-file P`: SPIRE's attestation on recorded inputs.
//!
//! Same steps as a live attestation — locate the container from the cgroup file, search the
//! pod list, build selectors — with one difference: the pod list never changes, so where
//! SPIRE would poll `max_poll_attempts` times it gives SPIRE's final answer at once
//! (`DeadlineExceeded` "no selectors found after max poll attempts", or `Unavailable` with
//! the last pod-list error), without sleeping.

#![forbid(unsafe_code)]

use std::path::Path;

use super::{Failure, input};
use crate::config::Config;
use crate::locator;
use crate::pods;
use crate::status::{Code, Status};

/// Runs the replay and prints the selectors (`k8s:`-prefixed, sorted).
pub(super) fn run(
    cgroup_file: &Path,
    pods_file: Option<&Path>,
    args: &super::AttestArgs,
) -> Result<(), Failure> {
    let fail = |status: Status| Failure {
        status,
        format: args.output,
        notes: Vec::new(),
    };
    input::at_most_one_stdin(&[
        (input::CONFIG, args.config.as_deref()),
        (input::CGROUP_FILE, Some(cgroup_file)),
        (input::PODS_FILE, pods_file),
    ])
    .map_err(fail)?;
    let config = super::load_config(args.config.as_deref()).map_err(fail)?;
    let cgroups = input::CGROUP_FILE.read_text(cgroup_file).map_err(fail)?;
    // Like SPIRE, the pod list is only read once a container ID is known.
    let read_pods = || match pods_file {
        Some(path) => input::PODS_FILE.read(path),
        None => Err(Status::new(
            Code::InvalidArgument,
            "--pods-file is required",
        )),
    };
    let selectors = replay(&cgroups, read_pods, &config).map_err(fail)?;
    super::print_selectors(&selectors, args.output);
    Ok(())
}

/// The replay itself, without I/O but the pod-list read (done only when needed): selector
/// values without the `k8s:` prefix, sorted; empty when the process is not in a pod.
pub fn replay(
    cgroups: &str,
    read_pods: impl FnOnce() -> Result<Vec<u8>, Status>,
    config: &Config,
) -> Result<Vec<String>, Status> {
    let Some(target) = locator::locate_cgroup_file(cgroups)? else {
        return Ok(Vec::new());
    };
    let body = read_pods()?;
    match pods::search(&body, &target, &config.search_options()) {
        Ok(Some(selectors)) => Ok(selectors),
        // Every later poll would see the same list.
        Ok(None) => Err(Status::new(
            Code::DeadlineExceeded,
            "no selectors found after max poll attempts",
        )),
        // SPIRE retries these, then reports the last one as Unavailable.
        Err(e) if e.is_retryable() => Err(Status::new(Code::Unavailable, e.to_string())),
        Err(e) => Err(e.into()),
    }
}
