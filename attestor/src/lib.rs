//! attestor: which pod and container is this PID, and what are its SPIRE `k8s` selectors?
//!
//! Data flows one way, one module per step:
//!
//! ```text
//! pid ──tracker──▶ cgroup id + path ──locator──▶ pod UID + container ID
//!     ──kubelet──▶ pod ──selectors──▶ k8s:… selectors
//! ```
//!
//! `plugin` is the SPIRE external-plugin surface (go-plugin handshake, gRPC services, hclog
//! logs) around an [`plugin::Attestor`]; `cli` starts it when a SPIRE agent runs the binary.
//!
//! `sys` is the only module with `unsafe` code (raw syscalls, each with a `SAFETY` note).

pub mod cgroupfs;
pub mod cli;
pub mod plugin;
pub mod sandbox;
pub mod status;
mod sys;
pub mod tracker;
