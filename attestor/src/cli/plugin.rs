//! Plugin mode of the `attestor` binary: the SPIRE agent's `WorkloadAttestor "k8s"`,
//! served by [`crate::plugin::run`] around the library's [`crate::attest::K8s`].

pub fn run() -> i32 {
    crate::plugin::run(crate::attest::K8s::start)
}
