//! The gRPC services a SPIRE agent calls (spec §1 table and §2), on top of a [`WorkloadAttestor`].
//!
//! go-plugin core: `plugin.GRPCBroker` (kept open, ConnInfo recorded), `plugin.GRPCController`
//! (Shutdown), `plugin.GRPCStdio` (open, silent). SPIRE: `Init`, `Config`, `WorkloadAttestor`.
//! Health ("plugin" SERVING) comes from `tonic-health`, wired next to these in `mod.rs`.
//!
//! Every call into the attestor runs on its own task, so a panic becomes `Internal` and the
//! process keeps serving; `Attest` cancels the attestor's token when the agent gives up.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Streaming};

use super::metrics::{FINAL_FLUSH_WAIT, Metrics};
use super::proto::config::{
    ConfigureRequest, ConfigureResponse, ValidateRequest, ValidateResponse, config_server,
};
use super::proto::goplugin::{
    ConnInfo, Empty, StdioData, grpc_broker_server, grpc_controller_server, grpc_stdio_server,
};
use super::proto::init::{DeinitRequest, DeinitResponse, InitRequest, InitResponse, init_server};
use super::proto::workloadattestor::{
    AttestReferenceRequest, AttestReferenceResponse, AttestRequest, AttestResponse,
    workload_attestor_server,
};
use super::{BROKER_CALLER_ID_METADATA, ReferenceRequest, WorkloadAttestor};
use crate::status::{Code, Status};

/// Full gRPC names of the services we implement, plugin service first (as the SDK lists them).
pub const WORKLOAD_ATTESTOR_SERVICE: &str =
    "spire.plugin.agent.workloadattestor.v1.WorkloadAttestor";
pub const CONFIG_SERVICE: &str = "spire.service.common.config.v1.Config";
/// The agent's metrics host service, served behind broker service ID 1.
pub const METRICS_HOST_SERVICE: &str = "spire.hostservice.common.metrics.v1.Metrics";
/// go-plugin broker ID of SPIRE's host services.
pub const HOST_SERVICE_BROKER_ID: u32 = 1;

/// State shared by all services of one plugin server.
pub struct Shared<A> {
    pub attestor: Arc<A>,
    configured: AtomicBool,
    /// Whether deinit has run since the last successful Configure (a Configure after a
    /// Deinit builds new state, which the next Deinit or the exit must release again).
    deinitialized: AtomicBool,
    /// Serialises Configure calls (SIGUSR1 reloads may overlap).
    configure_lock: tokio::sync::Mutex<()>,
    /// Cancelled when the server must stop (Shutdown, SIGTERM).
    pub shutdown: CancellationToken,
    /// ConnInfo received on the broker stream, by service ID.
    broker: Mutex<HashMap<u32, ConnInfo>>,
    broker_changed: Notify,
    pub metrics: Metrics,
}

impl<A: WorkloadAttestor> Shared<A> {
    pub fn new(attestor: A, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Shared {
            attestor: Arc::new(attestor),
            configured: AtomicBool::new(false),
            deinitialized: AtomicBool::new(false),
            configure_lock: tokio::sync::Mutex::new(()),
            shutdown,
            broker: Mutex::new(HashMap::new()),
            broker_changed: Notify::new(),
            metrics: Metrics::disabled(),
        })
    }

    /// Waits until the host has announced `service_id` on the broker stream.
    pub async fn broker_conn_info(&self, service_id: u32) -> ConnInfo {
        loop {
            let notified = self.broker_changed.notified();
            if let Some(ci) = self
                .broker
                .lock()
                .ok()
                .and_then(|m| m.get(&service_id).cloned())
            {
                return ci;
            }
            notified.await;
        }
    }

    /// Runs the attestor's deinit (Deinit RPC, or at exit if the host never sent it), once
    /// per successful Configure: a second Deinit with no Configure between is a no-op.
    pub async fn deinit_once(&self) -> Result<(), Status> {
        // Before the agent unloads us (Deinit) or we exit: the Attests recorded so far reach
        // its metrics, best effort and bounded. Every call flushes, deinit or not: Attests
        // that were in flight during a Deinit record after it.
        self.metrics.flush(FINAL_FLUSH_WAIT).await;
        if self.deinitialized.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.configured.store(false, Ordering::SeqCst);
        let attestor = self.attestor.clone();
        blocking("Deinit", move || {
            attestor.deinit();
            Ok(())
        })
        .await
    }
}

/// The text of a panic payload (`panic!("…")` gives &str or String).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

fn join_error(op: &str, e: tokio::task::JoinError) -> Status {
    if e.is_panic() {
        let text = panic_text(e.into_panic().as_ref());
        log::error!(rpc = op, panic = text.as_str(); "plugin handler panicked; answering Internal");
        Status::new(Code::Internal, format!("{op} panicked: {text}"))
    } else {
        Status::new(Code::Internal, format!("{op} was aborted"))
    }
}

/// Cancels an attestation whose RPC was dropped (the agent gave up), and says so.
struct CancelOnDrop {
    cancel: Option<CancellationToken>,
    /// The PID attested; `None` for an object reference.
    pid: Option<i32>,
    started: Instant,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.cancel = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel.cancel();
            let elapsed_us = self.started.elapsed().as_micros() as u64;
            match self.pid {
                Some(pid) => log::debug!(
                    pid = pid, elapsed_us = elapsed_us;
                    "attest cancelled by the caller"
                ),
                None => log::debug!(
                    elapsed_us = elapsed_us;
                    "attest reference cancelled by the caller"
                ),
            }
        }
    }
}

/// A future that turns a panic while polling into `Err(payload)`. Pinned in a box so no
/// unsafe pin projection is needed.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(payload) => std::task::Poll::Ready(Err(payload)),
        }
    }
}

/// Runs a synchronous attestor call on the blocking pool; a panic becomes `Internal`.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(join_error(op, e)))
}

/// The services, each a thin adapter over `Shared`.
pub struct Services<A>(pub Arc<Shared<A>>);

impl<A> Clone for Services<A> {
    fn clone(&self) -> Self {
        Services(self.0.clone())
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// A response stream that stays open, sending nothing, until the server shuts down.
fn silent_until(shutdown: CancellationToken) -> mpsc::Receiver<Result<(), ()>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        shutdown.cancelled().await;
        drop(tx);
    });
    rx
}

#[tonic::async_trait]
impl<A: WorkloadAttestor> grpc_broker_server::GrpcBroker for Services<A> {
    type StartStreamStream = BoxStream<ConnInfo>;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let shared = self.0.clone();
        // We never ask the host to dial us (no plugin-side brokered services), so the
        // outbound half only has to stay open until shutdown.
        let (tx, rx) = mpsc::channel::<Result<ConnInfo, tonic::Status>>(1);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    msg = incoming.message() => match msg {
                        Ok(Some(ci)) => {
                            log::debug!(
                                service_id = ci.service_id, network = ci.network.as_str(),
                                address = ci.address.as_str();
                                "broker: host announced a service"
                            );
                            if let Ok(mut m) = shared.broker.lock() {
                                m.insert(ci.service_id, ci);
                            }
                            shared.broker_changed.notify_waiters();
                        }
                        Ok(None) => break,
                        Err(e) => {
                            log::debug!(error = e.message(); "broker stream ended");
                            break;
                        }
                    },
                }
            }
            // Keep the response stream open until shutdown even if the host half-closed.
            shared.shutdown.cancelled().await;
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl<A: WorkloadAttestor> grpc_controller_server::GrpcController for Services<A> {
    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, tonic::Status> {
        log::debug!("shutdown requested by the host");
        // The reply still goes out: graceful shutdown lets in-flight calls finish.
        self.0.shutdown.cancel();
        Ok(Response::new(Empty {}))
    }
}

#[tonic::async_trait]
impl<A: WorkloadAttestor> grpc_stdio_server::GrpcStdio for Services<A> {
    type StreamStdioStream = BoxStream<StdioData>;

    async fn stream_stdio(
        &self,
        _: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, tonic::Status> {
        // We do not redirect stdout/stderr: logs go straight to stderr as hclog JSON.
        let rx = silent_until(self.0.shutdown.clone());
        let stream = tokio_stream::StreamExt::filter_map(ReceiverStream::new(rx), |_| None);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl<A: WorkloadAttestor> init_server::Init for Services<A> {
    async fn init(
        &self,
        request: Request<InitRequest>,
    ) -> Result<Response<InitResponse>, tonic::Status> {
        let host = request.into_inner().host_service_names;
        log::debug!(host_services = host.join(",").as_str(); "init");
        if host.iter().any(|s| s == METRICS_HOST_SERVICE) {
            self.0.metrics.connect_via_broker(self.0.clone());
        }
        Ok(Response::new(InitResponse {
            plugin_service_names: vec![
                WORKLOAD_ATTESTOR_SERVICE.to_string(),
                CONFIG_SERVICE.to_string(),
            ],
        }))
    }

    async fn deinit(
        &self,
        _: Request<DeinitRequest>,
    ) -> Result<Response<DeinitResponse>, tonic::Status> {
        log::debug!("deinit");
        self.0.deinit_once().await.map_err(tonic::Status::from)?;
        Ok(Response::new(DeinitResponse {}))
    }
}

#[tonic::async_trait]
impl<A: WorkloadAttestor> config_server::Config for Services<A> {
    async fn configure(
        &self,
        request: Request<ConfigureRequest>,
    ) -> Result<Response<ConfigureResponse>, tonic::Status> {
        let req = request.into_inner();
        let trust_domain = req
            .core_configuration
            .map(|c| c.trust_domain)
            .unwrap_or_default();
        let _serial = self.0.configure_lock.lock().await;
        let attestor = self.0.attestor.clone();
        let hcl = req.hcl_configuration;
        let len = hcl.len();
        // Never log the text: plugin_data may carry credentials.
        match blocking("Configure", move || attestor.configure(&hcl)).await {
            Ok(()) => {
                // Re-arm deinit before Attest may run on the new state.
                self.0.deinitialized.store(false, Ordering::SeqCst);
                self.0.configured.store(true, Ordering::SeqCst);
                log::info!(trust_domain = trust_domain.as_str(), plugin_data_bytes = len; "configured");
                Ok(Response::new(ConfigureResponse {}))
            }
            Err(s) => {
                log::warn!(code = s.code_name(), error = s.message.as_str(); "configure rejected");
                Err(s.into())
            }
        }
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, tonic::Status> {
        let hcl = request.into_inner().hcl_configuration;
        let attestor = self.0.attestor.clone();
        match blocking("Validate", move || attestor.validate(&hcl)).await {
            Ok(notes) => Ok(Response::new(ValidateResponse { valid: true, notes })),
            Err(s) if s.code == Code::InvalidArgument => Ok(Response::new(ValidateResponse {
                valid: false,
                notes: vec![s.message],
            })),
            Err(s) => Err(s.into()),
        }
    }
}

#[tonic::async_trait]
impl<A: WorkloadAttestor> workload_attestor_server::WorkloadAttestor for Services<A> {
    async fn attest(
        &self,
        request: Request<AttestRequest>,
    ) -> Result<Response<AttestResponse>, tonic::Status> {
        let callers = broker_caller_ids(request.metadata());
        let pid = request.into_inner().pid;
        if !self.0.configured.load(Ordering::SeqCst) {
            return Err(tonic::Status::failed_precondition("not configured"));
        }
        let started = Instant::now();
        let cancel = CancellationToken::new();
        // If the agent cancels the RPC, tonic drops this future: the guard then cancels the
        // token and logs it (the attestation future, polled right here, is dropped with it).
        let guard = CancelOnDrop {
            cancel: Some(cancel.clone()),
            pid: Some(pid),
            started,
        };
        // SPIRE's plugin serves Attest through AttestReference, so a broker caller named in
        // the metadata gets the broker's checks on a PID too (`k8s.go`, `Plugin.Attest`).
        // The agent's Workload API path never sets it: that path stays the plain one.
        let result = if callers.is_empty() {
            // Polled inline rather than spawned: a hand-off to another worker thread costs a
            // cross-thread wake-up per call; a panic is still caught and becomes Internal.
            caught("Attest", self.0.attestor.attest(pid, cancel.clone())).await
        } else {
            let request = ReferenceRequest::pid(pid, callers);
            caught(
                "Attest",
                self.0.attestor.attest_reference(request, cancel.clone()),
            )
            .await
        };
        guard.disarm();
        self.0.metrics.attest_done(&result, started);
        match result {
            Ok(selector_values) => {
                // Trace: one line per attestation is too much for the agent's debug level.
                log::trace!(
                    pid = pid, selectors = selector_values.len() as u64,
                    elapsed_us = started.elapsed().as_micros() as u64;
                    "attested"
                );
                Ok(Response::new(AttestResponse { selector_values }))
            }
            Err(s) => {
                log::debug!(pid = pid, code = s.code_name(), error = s.message.as_str(); "attest failed");
                Err(s.into())
            }
        }
    }

    async fn attest_reference(
        &self,
        request: Request<AttestReferenceRequest>,
    ) -> Result<Response<AttestReferenceResponse>, tonic::Status> {
        let callers = broker_caller_ids(request.metadata());
        let reference = request.into_inner().reference;
        if !self.0.configured.load(Ordering::SeqCst) {
            return Err(tonic::Status::failed_precondition("not configured"));
        }
        let type_url = reference
            .as_ref()
            .map(|r| r.type_url.clone())
            .unwrap_or_default();
        let started = Instant::now();
        let cancel = CancellationToken::new();
        let guard = CancelOnDrop {
            cancel: Some(cancel.clone()),
            pid: None,
            started,
        };
        let request = ReferenceRequest {
            reference,
            broker_caller_ids: callers,
        };
        let result = caught(
            "AttestReference",
            self.0.attestor.attest_reference(request, cancel.clone()),
        )
        .await;
        guard.disarm();
        match result {
            Ok(selector_values) => {
                log::debug!(
                    reference_type = type_url.as_str(), selectors = selector_values.len() as u64,
                    elapsed_us = started.elapsed().as_micros() as u64;
                    "reference attested"
                );
                Ok(Response::new(AttestReferenceResponse { selector_values }))
            }
            Err(s) => {
                log::debug!(
                    reference_type = type_url.as_str(), code = s.code_name(),
                    error = s.message.as_str();
                    "attest reference failed"
                );
                Err(s.into())
            }
        }
    }
}

/// Every value of the broker caller-ID metadata (see [`ReferenceRequest`]).
fn broker_caller_ids(metadata: &tonic::metadata::MetadataMap) -> Vec<String> {
    metadata
        .get_all(BROKER_CALLER_ID_METADATA)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Polls an attestor call, turning a panic into `Internal` (the process keeps serving).
async fn caught(
    rpc: &'static str,
    call: impl Future<Output = Result<Vec<String>, Status>>,
) -> Result<Vec<String>, Status> {
    CatchUnwind(Box::pin(call)).await.unwrap_or_else(|payload| {
        let text = panic_text(payload.as_ref());
        log::error!(rpc = rpc, panic = text.as_str(); "plugin handler panicked; answering Internal");
        Err(Status::new(Code::Internal, format!("{rpc} panicked: {text}")))
    })
}
