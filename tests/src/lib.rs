//! Helpers shared by the integration tests.

pub mod kubelet_sim;
pub mod tempdir;
