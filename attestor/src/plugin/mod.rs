//! The SPIRE external-plugin surface: `WorkloadAttestor "k8s" { plugin_cmd = … }`.
//!
//! A SPIRE agent starts the binary with `WorkloadAttestor=WorkloadAttestor` in its
//! environment (go-plugin's magic cookie). [`run`] then:
//! 1. installs the hclog JSON logger on stderr ([`hclog`]) and a panic hook that logs there;
//! 2. exits 1 if the host set `PLUGIN_CLIENT_CERT` (go-plugin AutoMTLS, see below);
//! 3. builds the [`WorkloadAttestor`], binds `<dir>/plugin<random>` (TCP only if no unix socket is
//!    possible) and prints the one handshake line `1|1|unix|<path>|grpc|` on stdout;
//! 4. serves gRPC (plaintext h2c, as every SPIRE plugin): health, go-plugin's
//!    broker/controller/stdio, and SPIRE's Init, Config and WorkloadAttestor (`services`);
//! 5. stops on `GRPCController/Shutdown` or SIGTERM (SIGINT is ignored, as in go-plugin),
//!    runs `WorkloadAttestor::deinit` if the host has not, removes the socket and exits 0.
//!
//! **No AutoMTLS.** SPIRE's agent starts external plugins with `AutoMTLS: false`
//! (spiffe/spire `pkg/common/catalog/external.go`, `loadExternal`; go-plugin's brokered
//! connections cannot use it), so the transport is a unix socket only the agent's user can
//! reach. A host that asks for AutoMTLS gets a refusal before the handshake
//! ([`handshake::AUTO_MTLS_REFUSED`]), never a plaintext server in place of the TLS it
//! asked for. Supporting it would put a certificate generator, a P-521 verifier and a TLS
//! server into a binary whose only host never uses them.
//!
//! Wire details and their sources: `../shared/reference/spire-plugin-protocol.md`.
//!
//! This module knows nothing of pods or kubelets: the attestation pipeline plugs in through
//! the [`WorkloadAttestor`] trait.

pub mod handshake;
pub mod hclog;
/// Test support (`test-support` feature): the fuzz targets and attestor-tests drive the
/// services without a socket; the shipped binary does not carry it.
#[cfg(feature = "test-support")]
pub mod in_process;
mod metrics;
pub mod proto;
mod services;

use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

use crate::status::Status;
use handshake::{Bound, HostEnv};
pub use services::{CONFIG_SERVICE, METRICS_HOST_SERVICE, WORKLOAD_ATTESTOR_SERVICE};

/// What the plugin server needs from the attestation pipeline.
///
/// Calls may overlap: `attest` runs concurrently with itself and with `configure` (SPIRE
/// re-configures on SIGUSR1 while serving). The server guarantees that `attest` is only
/// called after one `configure` succeeded, and that `configure` calls never overlap.
/// A panic in any method becomes gRPC `Internal` for that call; the process keeps serving.
pub trait WorkloadAttestor: Send + Sync + 'static {
    /// Parses and validates `plugin_data` (HCL1 text as SPIRE re-prints it; "" when the agent
    /// config has none) and, on success, swaps the new configuration in atomically.
    /// Bad configuration: `InvalidArgument`. Runs on a blocking thread. The server never
    /// logs `hcl`, but it logs error messages and the agent logs them too: never quote
    /// secret values (tokens, passwords) in them.
    fn configure(&self, hcl: &str) -> Result<(), Status>;

    /// Checks `plugin_data` without applying it; `Ok(notes)` means valid. An
    /// `InvalidArgument` error is reported as `valid = false` with its message as the note.
    /// Runs on a blocking thread.
    fn validate(&self, hcl: &str) -> Result<Vec<String>, Status>;

    /// Selector values of process `pid`, without the `k8s:` prefix (`ns:default`, …).
    /// `Ok(vec![])` means "not a Kubernetes workload". `cancel` fires when the agent gives up
    /// on the call (the Workload API client went away): stop working and return
    /// `Code::Cancelled` promptly; the result is discarded.
    fn attest(
        &self,
        pid: i32,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<Vec<String>, Status>> + Send;

    /// Selector values of a Broker API reference (`AttestReference`, SPIRE ≥ 1.15.2), or of a
    /// PID whose `Attest` carried a broker caller identity. The request is handed over
    /// undecoded: SPIRE checks the configuration, the reference's presence and the caller
    /// before it decodes the reference, and the attestor keeps that order. Without an
    /// override: `Unimplemented`, on which the agent falls back to `Attest` for a PID
    /// reference (spiffe/spire `pkg/agent/plugin/workloadattestor/v1.go`, `V1.AttestReference`).
    fn attest_reference(
        &self,
        request: ReferenceRequest,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<Vec<String>, Status>> + Send {
        let _ = (request, cancel);
        std::future::ready(Err(Status::new(
            crate::status::Code::Unimplemented,
            "AttestReference not implemented",
        )))
    }

    /// Releases resources (Init.Deinit at unload, or at exit if the host never sent it);
    /// afterwards `attest` is not called until a `configure` succeeds again. Called at most
    /// once per successful `configure` (once at most if none succeeded). Runs on a blocking
    /// thread.
    fn deinit(&self);
}

/// The gRPC metadata key that carries a Broker API caller's SPIFFE ID to the plugin
/// (spiffe/spire `pkg/agent/broker/brokercontext/context.go`, `callerIDMetadataKey`).
pub const BROKER_CALLER_ID_METADATA: &str = "spire-agent-broker-caller-id";

/// Type URL of a `spiffe.broker.WorkloadPIDReference` in a `google.protobuf.Any`.
pub const WORKLOAD_PID_REFERENCE_TYPE_URL: &str =
    "type.googleapis.com/spiffe.broker.WorkloadPIDReference";
/// Type URL of a `spiffe.broker.KubernetesObjectReference` in a `google.protobuf.Any`.
pub const KUBERNETES_OBJECT_REFERENCE_TYPE_URL: &str =
    "type.googleapis.com/spiffe.broker.KubernetesObjectReference";

/// One `AttestReference` call (or an `Attest` with a broker caller), as received.
#[derive(Debug, Clone, Default)]
pub struct ReferenceRequest {
    /// `AttestReferenceRequest.reference`; `None` when the request had none.
    pub reference: Option<prost_types::Any>,
    /// Every value of the [`BROKER_CALLER_ID_METADATA`] metadata, in order (none: the call
    /// does not come from the Broker API). Non-ASCII values are kept lossily, so they fail
    /// SPIFFE ID parsing rather than disappear.
    pub broker_caller_ids: Vec<String>,
}

impl ReferenceRequest {
    /// A PID reference, as SPIRE's own plugin packs an `Attest` (`k8s.go`, `Plugin.Attest`).
    pub fn pid(pid: i32, broker_caller_ids: Vec<String>) -> ReferenceRequest {
        use prost::Message as _;
        ReferenceRequest {
            reference: Some(prost_types::Any {
                type_url: WORKLOAD_PID_REFERENCE_TYPE_URL.to_string(),
                value: proto::broker::WorkloadPidReference { pid }.encode_to_vec(),
            }),
            broker_caller_ids,
        }
    }
}

/// Whether this process was started as a SPIRE `WorkloadAttestor` plugin.
pub fn is_plugin_mode() -> bool {
    handshake::is_plugin_mode(|k| std::env::var(k).ok())
}

/// How long in-flight calls get to finish after Shutdown before we exit anyway (the agent
/// SIGKILLs after 2 s).
const GRACE: Duration = Duration::from_millis(800);

/// Plugin mode: logs, handshake, serve until Shutdown/SIGTERM. `build` constructs the
/// attestor after logging is set up, inside the tokio runtime (so it may `tokio::spawn`);
/// an error is logged and ends the process with 1 before any handshake. Returns the
/// process exit code. Without the magic cookie it prints go-plugin's "This binary is a
/// plugin" message and returns 1.
pub fn run<A, F>(build: F) -> i32
where
    A: WorkloadAttestor,
    F: FnOnce() -> Result<A, String>,
{
    if !is_plugin_mode() {
        // go-plugin's Serve does the same when the magic cookie is missing.
        eprintln!(
            "This binary is a plugin. These are not meant to be executed directly.\n\
             Please execute the program that consumes these plugins (the SPIRE agent), which \
             will load any plugins automatically."
        );
        return 1;
    }
    hclog::HclogLogger::install();
    install_panic_hook();
    let env = HostEnv::from_env();
    // Before anything is built or bound: a host that asked for TLS must not get a plaintext
    // server, and we serve no TLS (module docs).
    if env.auto_mtls_requested {
        log::error!("{}", handshake::AUTO_MTLS_REFUSED);
        return 1;
    }
    if !env.accepts_app_version() {
        log::warn!(
            host_versions = env.protocol_versions.join(",");
            "the host does not list plugin protocol version 1; answering 1 anyway"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("attestor-plugin")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!(error = e.to_string(); "cannot start the async runtime");
            return 1;
        }
    };
    // `build` may start background tasks (kubelet client, caches): give it the runtime.
    let _entered = runtime.enter();
    let attestor = match build() {
        Ok(a) => a,
        Err(e) => {
            log::error!(error = e; "cannot start the attestor");
            return 1;
        }
    };
    let bound = match handshake::listen(&env) {
        Ok(b) => b,
        Err(e) => {
            log::error!(error = e.to_string(); "cannot listen");
            return 1;
        }
    };
    match runtime.block_on(serve(attestor, bound)) {
        Ok(()) => 0,
        Err(e) => {
            log::error!(error = e; "plugin server failed");
            1
        }
    }
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let text = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!(panic = text, location = location; "panic");
    }));
}

async fn serve<A: WorkloadAttestor>(attestor: A, bound: Bound) -> Result<(), String> {
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone())?;
    let shared = services::Shared::new(attestor, shutdown.clone());
    let router = tonic::transport::Server::builder()
        .add_routes(routes(services::Services(shared.clone())).await);

    let address = bound.address();
    let stop = shutdown.clone().cancelled_owned();
    type ServeFuture = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
    // `_socket` removes the socket file when this function returns.
    let (server, _socket): (ServeFuture, _) = match bound {
        Bound::Unix(l, file) => {
            let l = to_tokio_unix(l).map_err(|e| format!("unix listener: {e}"))?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
            let fut: ServeFuture = Box::pin(router.serve_with_incoming_shutdown(incoming, stop));
            (fut, Some(file))
        }
        Bound::Tcp(l) => {
            l.set_nonblocking(true)
                .map_err(|e| format!("tcp listener: {e}"))?;
            let l =
                tokio::net::TcpListener::from_std(l).map_err(|e| format!("tcp listener: {e}"))?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
            let fut: ServeFuture = Box::pin(router.serve_with_incoming_shutdown(incoming, stop));
            (fut, None)
        }
    };

    // The handshake line is the first and only thing we write on stdout.
    let line = handshake::handshake_line(&address);
    {
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write the handshake line to stdout: {e}"))?;
    }
    log::debug!(
        address = address.to_string(), version = env!("CARGO_PKG_VERSION");
        "plugin serving"
    );

    let forced = async {
        shutdown.cancelled().await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| format!("gRPC server: {e}"))?,
        () = forced => log::debug!("in-flight calls did not finish after shutdown; exiting anyway"),
    }
    if let Err(s) = shared.deinit_once().await {
        log::warn!(error = s.to_string(); "deinit at exit failed");
    }
    log::debug!("plugin exiting");
    Ok(())
}

/// Every service the plugin serves, health reporting "plugin" SERVING. The server and
/// `in_process::InProcess` (fuzzing, tests; `test-support`) share it, so both dispatch alike.
async fn routes<A: WorkloadAttestor>(svc: services::Services<A>) -> tonic::service::Routes {
    use proto::config::config_server::ConfigServer;
    use proto::goplugin::grpc_broker_server::GrpcBrokerServer;
    use proto::goplugin::grpc_controller_server::GrpcControllerServer;
    use proto::goplugin::grpc_stdio_server::GrpcStdioServer;
    use proto::init::init_server::InitServer;
    use proto::workloadattestor::workload_attestor_server::WorkloadAttestorServer;

    // The statuses live in the service; the reporter may go.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    tonic::service::Routes::new(health_service)
        .add_service(GrpcBrokerServer::new(svc.clone()))
        .add_service(GrpcControllerServer::new(svc.clone()))
        .add_service(GrpcStdioServer::new(svc.clone()))
        .add_service(WorkloadAttestorServer::new(svc.clone()))
        .add_service(ConfigServer::new(svc.clone()))
        .add_service(InitServer::new(svc))
}

fn to_tokio_unix(l: std::os::unix::net::UnixListener) -> std::io::Result<tokio::net::UnixListener> {
    l.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(l)
}

/// SIGTERM stops the server; SIGINT is ignored (a Ctrl-C to the agent's process group must
/// not kill the plugin before the agent unloads it), as go-plugin's Serve does.
fn watch_signals(shutdown: CancellationToken) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    log::debug!("SIGTERM: shutting down");
                    shutdown.cancel();
                    return;
                }
                _ = int.recv() => log::debug!("SIGINT ignored (the agent unloads plugins itself)"),
            }
        }
    });
    Ok(())
}
