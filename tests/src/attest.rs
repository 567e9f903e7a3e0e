//! PID → `k8s` selector values for the container tests: the library's live pipeline
//! (`attestor::attest::Attestor`: tracker → locator → kubelet `/pods` over HTTPS with the
//! shared fetcher → pod search → liveness check) with the tests' configuration.

use std::sync::Arc;

use attestor::attest::Attestor;
use attestor::config::Config;
use attestor::status::Status;
use attestor::tracker::Tracker;

/// The live attestation pipeline, configured from `plugin_data`.
#[derive(Debug)]
pub struct Pipeline {
    attestor: Attestor,
}

impl Pipeline {
    /// `config` is validated `plugin_data` (kubelet endpoint, CA, auth, poll settings).
    pub fn new(tracker: Tracker, config: &Config) -> Result<Pipeline, Status> {
        Ok(Pipeline {
            attestor: Attestor::new(config.clone(), Arc::new(tracker), |_| None)?,
        })
    }

    pub fn tracker(&self) -> &Tracker {
        self.attestor.tracker()
    }

    /// Selector values (no `k8s:` prefix, sorted) for `pid`. A process in no container
    /// gets none; a container the kubelet never lists gives `DeadlineExceeded` after
    /// `max_poll_attempts` lists.
    pub async fn attest(&self, pid: i32) -> Result<Vec<String>, Status> {
        self.attestor
            .attest(i64::from(pid), std::future::pending())
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
    parse(&sim_plugin_data(
        port,
        ca_path,
        token_path,
        max_poll_attempts,
        poll_ms,
    ))
}

/// [`sim_config`] with the CRI fast path on: `container_runtime_endpoint` set to the unix
/// socket `socket` (which need not exist).
pub fn sim_config_with_runtime(
    port: u16,
    ca_path: &std::path::Path,
    token_path: &std::path::Path,
    max_poll_attempts: u32,
    poll_ms: u64,
    socket: &std::path::Path,
) -> Config {
    let text = sim_plugin_data(port, ca_path, token_path, max_poll_attempts, poll_ms)
        + &runtime_endpoint_line(socket);
    parse(&text)
}

/// The text of [`sim_config`]'s `plugin_data` (for the CLI's `--config` file and the
/// plugin's Configure).
pub fn sim_plugin_data(
    port: u16,
    ca_path: &std::path::Path,
    token_path: &std::path::Path,
    max_poll_attempts: u32,
    poll_ms: u64,
) -> String {
    format!(
        "kubelet_secure_port = {port}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\n\
         max_poll_attempts = {max_poll_attempts}\npoll_retry_interval = \"{poll_ms}ms\"\n",
        ca_path.display(),
        token_path.display()
    )
}

/// The `plugin_data` line that turns the CRI fast path on for the socket `socket`.
pub fn runtime_endpoint_line(socket: &std::path::Path) -> String {
    format!(
        "container_runtime_endpoint = \"unix://{}\"\n",
        socket.display()
    )
}

fn parse(text: &str) -> Config {
    match Config::parse(text) {
        Ok(c) => c,
        Err(e) => panic!("test plugin_data does not parse: {e}\n{text}"),
    }
}
