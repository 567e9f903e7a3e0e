//! Plugin mode of the `attestor` binary: hands the attestation pipeline to the plugin server.
//!
//! Integration point: replace [`Pipeline`] with the real pid → cgroup → pod → selectors
//! pipeline (config, locator, kubelet, selectors). Until then the binary loads into SPIRE but
//! refuses Configure, so an agent never runs with an attestor that answers nothing.

use crate::plugin::{self, Attestor, CancellationToken};
use crate::status::{Code, Status};

/// Placeholder for the k8s pipeline (not in this tree yet).
struct Pipeline;

const NOT_WIRED: &str =
    "this attestor build has no Kubernetes attestation pipeline yet (integration pending)";

impl Attestor for Pipeline {
    fn configure(&self, _hcl: &str) -> Result<(), Status> {
        Err(Status::new(Code::FailedPrecondition, NOT_WIRED))
    }

    fn validate(&self, _hcl: &str) -> Result<Vec<String>, Status> {
        Err(Status::new(Code::FailedPrecondition, NOT_WIRED))
    }

    async fn attest(&self, _pid: i32, _cancel: CancellationToken) -> Result<Vec<String>, Status> {
        Err(Status::new(Code::FailedPrecondition, "not configured"))
    }

    fn deinit(&self) {}
}

pub fn run() -> i32 {
    plugin::run(|| Ok(Pipeline))
}
