//! attestor: which pod and container is this PID, and what are its SPIRE `k8s` selectors?
//!
//! Data flows one way, one module per step (README "How it fits together" draws the map;
//! a unit test checks that no module uses one downstream of it):
//!
//! ```text
//! pid ──tracker──▶ cgroup id + path ──locator──▶ pod UID + container ID
//!     ──kubelet──▶ /pods body ──pods──▶ pod ──selectors──▶ k8s:… values
//!                                        ╰──runtime──▶ the statuses the kubelet would
//!                                           publish (CRI), when `/pods` lacks the container
//! ```
//!
//! [`attest`] composes the steps: [`attest::Attestor`] is one configured pipeline,
//! [`attest::K8s`] the SPIRE plugin's attestor around it (Configure swaps whole pipelines,
//! all or nothing), [`attest::replay`] the same steps on recorded inputs. [`plugin`] serves
//! any [`plugin::WorkloadAttestor`] over go-plugin's protocol and knows nothing of pods;
//! [`cli`] parses arguments and prints.
//!
//! Under all of them: [`config`] (`plugin_data` → validated options, SPIRE's defaults),
//! [`status`] (the gRPC code + message every surface reports), [`boundedfile`] (every file an
//! operator names: regular files only, each kind with a size cap), [`cgroupfs`], [`goquote`],
//! and `sys`, the only module where the compiler allows `unsafe` (raw syscalls, each with a
//! `SAFETY` note).
//!
//! The pure attestation core (no I/O) that live attestation and the replay share:
//! [`config::Config::parse`], [`locator::locate_path`] / [`locator::locate_cgroup_file`],
//! [`pods::find`] and [`selectors::search`].

// Tests may unwrap: a panic there is a test failure with a backtrace. The non-test build of
// the library is still checked by `clippy --all-targets`.
#![cfg_attr(test, allow(clippy::unwrap_used))]
// `unsafe` lives in `sys` only: the compiler keeps the funnel.
#![deny(unsafe_code)]

// The data path, in order: each module uses only those above it (and the infrastructure).
pub mod attest;
pub mod kubelet;
// Kubernetes API server (namespace labels, Broker references): beside the kubelet step.
pub mod apiserver;
pub mod locator;
pub mod pods;
pub mod runtime;
pub mod selectors;
pub mod tracker;

// Surfaces: the SPIRE plugin protocol and the operator CLI (parses arguments and prints).
pub mod cli;
pub mod plugin;

// Infrastructure the data path stands on.
pub mod boundedfile;
pub mod cgroupfs;
pub mod config;
pub mod goquote;
pub mod install;
pub mod status;
// The one corner with `unsafe` (the crate root denies it everywhere else).
#[allow(unsafe_code)]
mod sys;

#[cfg(test)]
mod layering;
