//! The plugin's gRPC services without a socket, for the plugin fuzz target and tests.
//!
//! A request goes through the same tonic [`Routes`] the server serves (built by
//! [`super::routes`]): path dispatch, gRPC frame and protobuf decoding, our handlers and
//! response encoding. Only HTTP/2 and the socket are left out, so what a fuzzer finds here
//! is what an agent's message would do to the running plugin.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use tonic::service::Routes;
use tower::ServiceExt;

use super::CancellationToken;
use super::WorkloadAttestor;
use super::services::{Services, Shared};

/// One plugin server's services, called in-process.
pub struct InProcess<A> {
    routes: Routes,
    shared: Arc<Shared<A>>,
}

/// A gRPC reply as the agent would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status of the response (gRPC answers 200 even for errors).
    pub http_status: u16,
    /// `grpc-status` from the trailers, or the headers of a trailers-only response; `None`
    /// if neither carries it (a protocol violation).
    pub grpc_status: Option<i32>,
    /// `grpc-message`, percent-decoded.
    pub grpc_message: String,
    /// The response body: zero or more gRPC frames.
    pub body: Bytes,
}

impl Reply {
    /// The payload of the body's only uncompressed frame, if the body is exactly that.
    pub fn message(&self) -> Option<Bytes> {
        match first_frame(&self.body) {
            Some((payload, [])) => Some(Bytes::copy_from_slice(payload)),
            _ => None,
        }
    }
}

/// `[0][u32 BE length][payload][rest]` → (payload, rest): the first frame, if it is complete
/// and uncompressed (what tonic decodes for a unary call).
pub fn first_frame(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let rest = rest.get(4..)?;
    (flag == 0 && rest.len() >= len).then(|| rest.split_at(len))
}

/// payload → one uncompressed gRPC frame.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(0);
    // A u32 length prefix: payloads over 4 GiB cannot be framed (and never reach us).
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    Bytes::from(out)
}

impl<A: WorkloadAttestor> InProcess<A> {
    /// The services of a fresh plugin server around `attestor` (health reports "plugin"
    /// SERVING, as after the handshake). Call inside a tokio runtime.
    pub async fn new(attestor: A) -> Self {
        let shared = Shared::new(attestor, CancellationToken::new());
        let routes = super::routes(Services(shared.clone())).await;
        InProcess { routes, shared }
    }

    /// Sends one unary request: `path` is `/<service>/<method>`, `body` the raw gRPC body
    /// (use [`frame`] for a well-formed one).
    pub async fn call(&self, path: &str, body: Bytes) -> Reply {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://plugin{path}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(body));
        let request = match request {
            Ok(r) => r,
            // Only an unparsable path gets here: what an HTTP/2 server would refuse.
            Err(e) => return local_error(400, format!("bad request: {e}")),
        };
        let response = match self.routes.clone().oneshot(request).await {
            Ok(r) => r,
            Err(e) => return local_error(500, format!("routes: {e}")),
        };
        let (parts, body) = response.into_parts();
        let header_status = grpc_status(&parts.headers);
        let header_message = grpc_message(&parts.headers);
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(e) => return local_error(parts.status.as_u16(), format!("response body: {e}")),
        };
        let trailers = collected.trailers().cloned();
        let mut data = collected.aggregate();
        let body = data.copy_to_bytes(data.remaining());
        let (grpc_status, grpc_message) = match trailers.as_ref().and_then(grpc_status) {
            Some(s) => (
                Some(s),
                trailers.as_ref().map(grpc_message).unwrap_or_default(),
            ),
            None => (header_status, header_message),
        };
        Reply {
            http_status: parts.status.as_u16(),
            grpc_status,
            grpc_message,
            body,
        }
    }

    /// What the server does on `GRPCController/Shutdown` or SIGTERM: background tasks
    /// (metrics, broker) end. Dropping `InProcess` without it leaves them waiting.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Runs the attestor's deinit unless the host already did, as the server does at exit.
    pub async fn finish(&self) -> Result<(), crate::status::Status> {
        self.shutdown();
        self.shared.deinit_once().await
    }
}

fn local_error(http_status: u16, message: String) -> Reply {
    Reply {
        http_status,
        grpc_status: None,
        grpc_message: message,
        body: Bytes::new(),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn grpc_message(headers: &http::HeaderMap) -> String {
    let raw = headers
        .get("grpc-message")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    percent_encoding::percent_decode(raw)
        .decode_utf8_lossy()
        .into_owned()
}
