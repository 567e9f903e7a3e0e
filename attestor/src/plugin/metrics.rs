//! Metrics sent to the agent's `spire.hostservice.common.metrics.v1.Metrics` host service.
//!
//! The agent serves it behind go-plugin broker ID 1: it sends the socket address down the
//! `GRPCBroker/StartStream` stream while loading us, and lists the service name in
//! `Init.host_service_names`. We then dial that address (plain gRPC, as the SDK's
//! `broker.Dial(1)` does) and send, per Attest: `IncrCounter [attestor attest]` with label
//! `status=<gRPC code>`, and `MeasureSince [attestor attest latency]`.
//!
//! Metrics are best effort: they never delay or fail an attestation. If the host does not
//! announce the service within 5 s, metrics stay off (one debug line says so).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::WorkloadAttestor;
use super::proto::goplugin::ConnInfo;
use super::proto::metrics::metrics_client::MetricsClient;
use super::proto::metrics::{IncrCounterRequest, Label, MeasureSinceRequest};
use super::services::{HOST_SERVICE_BROKER_ID, Shared};
use crate::status::Status;

/// How long to wait for the host's ConnInfo (the SDK's `broker.Dial` waits 5 s too).
const BROKER_WAIT: Duration = Duration::from_secs(5);

pub struct Metrics {
    client: Arc<OnceLock<MetricsClient<Channel>>>,
}

impl Metrics {
    pub fn disabled() -> Metrics {
        Metrics {
            client: Arc::new(OnceLock::new()),
        }
    }

    /// Dials the host's metrics service in the background once the broker has announced it.
    pub fn connect_via_broker<A: WorkloadAttestor>(&self, shared: Arc<Shared<A>>) {
        let slot = self.client.clone();
        tokio::spawn(async move {
            let ci = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                r = tokio::time::timeout(BROKER_WAIT, shared.broker_conn_info(HOST_SERVICE_BROKER_ID)) => r,
            };
            let Ok(ci) = ci else {
                log::debug!("metrics off: the host did not announce broker service 1 within 5s");
                return;
            };
            match dial(&ci).await {
                Ok(channel) => {
                    let _ = slot.set(MetricsClient::new(channel));
                    log::debug!(address = ci.address.as_str(); "metrics host service connected");
                }
                Err(e) => log::warn!(
                    address = ci.address.as_str(), error = e.to_string();
                    "metrics off: cannot dial the agent's metrics host service"
                ),
            }
        });
    }

    /// Records one Attest outcome (fire and forget).
    pub fn attest_done(&self, result: &Result<Vec<String>, Status>, started: Instant) {
        let Some(client) = self.client.get() else {
            return;
        };
        let mut client = client.clone();
        let status = match result {
            Ok(_) => "OK",
            Err(s) => s.code_name(),
        };
        let labels = vec![Label {
            name: "status".into(),
            value: status.into(),
        }];
        let start_ns = SystemTime::now()
            .checked_sub(started.elapsed())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        tokio::spawn(async move {
            let counter = IncrCounterRequest {
                key: vec!["attestor".into(), "attest".into()],
                val: 1.0,
                labels: labels.clone(),
            };
            let since = MeasureSinceRequest {
                key: vec!["attestor".into(), "attest".into(), "latency".into()],
                time: start_ns,
                labels,
            };
            if let Err(e) = client.incr_counter(counter).await {
                log::trace!(error = e.message(); "metrics: IncrCounter failed");
            }
            if let Err(e) = client.measure_since(since).await {
                log::trace!(error = e.message(); "metrics: MeasureSince failed");
            }
        });
    }
}

async fn dial(ci: &ConnInfo) -> Result<Channel, tonic::transport::Error> {
    match ci.network.as_str() {
        "unix" => {
            let path = ci.address.clone();
            // The URI is not used for unix sockets (go-plugin dials "unused" too).
            Endpoint::from_static("http://unused")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(TokioIo::new)
                    }
                }))
                .await
        }
        _ => {
            Endpoint::from_shared(format!("http://{}", ci.address))?
                .connect()
                .await
        }
    }
}
