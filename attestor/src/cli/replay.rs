//! `attestor attest --cgroup-file F --pods-file P`: reads the recorded inputs and prints
//! what [`crate::attest::replay`] answers.

use std::path::Path;

use super::{Failure, input};
use crate::attest;
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
    // Read only if the replay gets that far (SPIRE reads the list once it has a container).
    let read_pods = || match pods_file {
        Some(path) => input::PODS_FILE.read(path),
        None => Err(Status::new(
            Code::InvalidArgument,
            "--pods-file is required",
        )),
    };
    let selectors = attest::replay(&cgroups, read_pods, &config).map_err(fail)?;
    super::print_selectors(&selectors, args.output);
    Ok(())
}
