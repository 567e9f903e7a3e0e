//! attestor: which pod and container is this PID, and what are its SPIRE `k8s` selectors?
//!
//! Data flows one way, one module per step:
//!
//! ```text
//! pid ──tracker──▶ cgroup id + path ──locator──▶ pod UID + container ID
//!     ──kubelet──▶ pod ──selectors──▶ k8s:… selectors
//! ```
//!
//! `sys` is the only module with `unsafe` code (raw syscalls, each with a `SAFETY` note).

// Tests may unwrap: a panic there is a test failure with a backtrace. The non-test build of
// the library is still checked by `clippy --all-targets`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
pub mod config;
pub mod locator;
pub mod pods;
pub mod selectors;
pub mod status;
