//! Kubelet access: fetch the raw `/pods` list from the local kubelet, and share
//! those fetches between concurrent attestations.
//!
//! Two layers, as in SPIRE's k8s attestor (`kubeletclient.go`, `podlistfetcher.go`):
//!
//! * [`KubeletClient`] makes one `GET /pods` over the read-only port (plain HTTP on
//!   `127.0.0.1`) or the secure port (TLS, with a bearer token, a client certificate
//!   or no credentials). It re-reads the CA bundle, token, certificate and key every
//!   [`KubeletSettings::reload_interval`], caps the time and size of each answer, and
//!   returns the body as [`bytes::Bytes`].
//! * [`PodListFetcher`] sits in front of any [`FetchPods`] (the client, or a fake in
//!   tests): concurrent callers share one in-flight request, request starts are at least
//!   `poll_retry_interval` apart, every successful list gets a version, and
//!   [`PodListFetcher::poll`] is the attestation retry loop.
//!
//! Out of scope here: parsing the pod list and searching it (the `pods`/selectors
//! modules get the raw bytes), and turning plugin configuration into
//! [`KubeletSettings`] (the config module does that).
//!
//! # TLS verification rule
//!
//! * `skip_verification` ⇒ no verification at all (dangerous; mirrors
//!   `skip_kubelet_verification`).
//! * With a node name the client connects to `https://<node name>:<port>/pods` and the
//!   certificate must chain to the CA bundle **and** be valid for the node name.
//! * Without a node name it connects to `https://127.0.0.1:<port>/pods`; the certificate
//!   must chain to the CA bundle and be valid for the IP `127.0.0.1` (IP SAN) **or** for
//!   this machine's host name (the kernel's UTS name, `/proc/sys/kernel/hostname`, which
//!   is what `gethostname(2)` returns). SPIRE skips the name check in this case (its doc
//!   claims otherwise); we do not, because any local process holding a certificate from
//!   the cluster CA could otherwise impersonate the kubelet.

mod client;
mod fetcher;
// `pub(crate)`: the API server client reuses the PEM parsing and the skip verifier.
pub(crate) mod tls;

// The public interface is:
// (SPIRE's defaults the client starts from are `config`'s table.)
pub use client::{
    Auth, DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_TIMEOUT, Endpoint, KubeletClient, KubeletError,
    KubeletSettings,
};
pub use fetcher::{FetchFailure, FetchFn, FetchPods, PodList, PodListFetcher};
pub use tls::local_hostname;
