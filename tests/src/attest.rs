//! PID → `k8s` selector values, composed from the library's steps:
//! tracker → locator → kubelet `/pods` (over HTTPS, shared fetcher, polling) → pod search.
//!
//! This is the one place the tests compose the pipeline; when `attestor::attest` lands,
//! [`Pipeline::attest`] becomes a call to it.

use attestor::config::{Config, KubeletPort};
use attestor::kubelet::{Auth, Endpoint, KubeletClient, KubeletSettings, PodListFetcher};
use attestor::locator::{ContainerRef, locate_path};
use attestor::pods::{SearchOptions, search};
use attestor::status::{Code, Status};
use attestor::tracker::Tracker;

/// The live attestation steps with their settings.
pub struct Pipeline {
    tracker: Tracker,
    fetcher: PodListFetcher<KubeletClient>,
    max_poll_attempts: u32,
    search: SearchOptions,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("max_poll_attempts", &self.max_poll_attempts)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// `config` is validated `plugin_data`; the kubelet endpoint, CA, poll settings and
    /// search options come from it (anonymous auth or a token; the tests use anonymous).
    pub fn new(tracker: Tracker, config: &Config) -> Result<Pipeline, Status> {
        let endpoint = match config.kubelet_port() {
            KubeletPort::Secure(port) => Endpoint::Secure { port, host: None },
            KubeletPort::ReadOnly(port) => Endpoint::ReadOnly { port },
        };
        let auth = if config.use_anonymous_authentication() {
            Auth::Anonymous
        } else {
            Auth::Token {
                path: config.token_path().to_owned(),
            }
        };
        let mut settings = KubeletSettings::secure(0, None);
        settings.endpoint = endpoint;
        settings.ca_path = config.kubelet_ca_path().to_owned();
        settings.skip_verification = config.skip_kubelet_verification();
        settings.auth = auth;
        settings.reload_interval = config.reload_interval();
        let client = KubeletClient::new(settings)
            .map_err(|e| Status::new(Code::Internal, format!("kubelet client: {e}")))?;
        Ok(Pipeline {
            tracker,
            fetcher: PodListFetcher::new(client, config.poll_retry_interval()),
            max_poll_attempts: u32::try_from(config.max_poll_attempts()).unwrap_or(u32::MAX),
            search: config.search_options(),
        })
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Selector values (no `k8s:` prefix, sorted) for `pid`. A process in no container
    /// gets none; a container the kubelet never lists gives `DeadlineExceeded` after
    /// `max_poll_attempts` lists.
    pub async fn attest(&self, pid: i32) -> Result<Vec<String>, Status> {
        let resolution = self
            .tracker
            .resolve(i64::from(pid))
            .map_err(|e| Status::new(Code::Internal, e.to_string()))?;
        let Some(target) = locate_path(&resolution.cgroup_path) else {
            return Ok(Vec::new());
        };
        let selectors = self.attest_container(&target).await?;
        // The PID may have been reused during the kubelet round trip.
        if !resolution.is_alive() {
            return Err(Status::new(
                Code::Internal,
                format!("pid {pid} exited during attestation"),
            ));
        }
        Ok(selectors)
    }

    /// The kubelet half: polls pod lists until `target` is found.
    pub async fn attest_container(&self, target: &ContainerRef) -> Result<Vec<String>, Status> {
        self.fetcher
            .poll(
                self.max_poll_attempts,
                |list| match search(list.body(), target, &self.search) {
                    Ok(found) => Ok(found),
                    // A malformed list: try the next one.
                    Err(e) if e.is_retryable() => Ok(None),
                    Err(e) => Err(Status::from(e)),
                },
                std::future::pending::<()>(),
            )
            .await
    }
}

/// `plugin_data` for a simulator on `port` with its CA at `ca_path`, a bearer token read
/// from `token_path`, and `max_poll_attempts` lists `poll_ms` apart.
pub fn sim_config(
    port: u16,
    ca_path: &std::path::Path,
    token_path: &std::path::Path,
    max_poll_attempts: u32,
    poll_ms: u64,
) -> Config {
    let text = format!(
        "kubelet_secure_port = {port}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\n\
         max_poll_attempts = {max_poll_attempts}\npoll_retry_interval = \"{poll_ms}ms\"\n",
        ca_path.display(),
        token_path.display()
    );
    match Config::parse(&text) {
        Ok(c) => c,
        Err(e) => panic!("test plugin_data does not parse: {e}\n{text}"),
    }
}
