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
//!
//! [`boundedfile`] reads every file an operator names (credential paths in `plugin_data`, the
//! CLI's input files): regular files only, each kind with a size cap.
//!
//! The pure attestation core (no I/O) that live attestation and the replay CLI share:
//! * [`config::Config::parse`] — `plugin_data` (HCL v1 or JSON) → validated options;
//! * [`locator::locate_path`] / [`locator::locate_cgroup_file`] — cgroup → [`locator::ContainerRef`];
//! * [`pods::search`] — one `/pods` body + `ContainerRef` → selector values, or "not in this
//!   list" (poll again); [`selectors::build`] makes the values from a decoded pod.

// Tests may unwrap: a panic there is a test failure with a backtrace. The non-test build of
// the library is still checked by `clippy --all-targets`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod attest;
pub mod boundedfile;
pub mod cgroupfs;
pub mod cli;
pub mod config;
pub mod kubelet;
pub mod locator;
pub mod plugin;
pub mod pods;
pub mod selectors;
pub mod status;
mod sys;
pub mod tracker;
