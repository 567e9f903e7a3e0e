//! Fuzz target bodies: each takes arbitrary bytes, runs one parser of untrusted input and
//! asserts its documented invariants (a panic or failed assertion is a finding).
//!
//! Shared by the libFuzzer targets (`fuzz/fuzz_targets/*.rs`, nightly) and the stable corpus
//! replay (`tests/tests/fuzz_corpus.rs` includes this file with `#[path]`), so CI checks every
//! committed corpus input against exactly the same assertions.

use attestor::config::Config;
use attestor::locator::{ContainerRef, locate_cgroup_file, locate_path};
use attestor::pods::{PodIndex, PodsError, SearchOptions};
use attestor::selectors::{search, search_in};
use attestor::status::{Code, Status};

/// `plugin_data` (HCL v1 or JSON) → `Config::parse`. Valid configs must satisfy the
/// documented ranges; invalid ones map to `InvalidArgument` with a message.
pub fn config(data: &[u8]) {
    // plugin_data reaches us as a protobuf `string`: always UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(c) => {
            // Every accessor must be total on an accepted config.
            let _ = c.kubelet_port();
            let _ = c.kubelet_ca_path();
            let _ = c.token_path();
            let _ = c.kubelet_auth();
            let _ = c.node_name(|_| None);
            let _ = c.kubelet_host(|_| Some("node-from-env".into()));
            let _ = c.reload_interval();
            let _ = attestor::pods::SearchOptions::from_config(&c);
            assert!(c.max_poll_attempts() >= 1, "max_poll_attempts 0 accepted");
            let _ = c.poll_retry_interval();
            assert!(
                attestor::config::TRACKER_MAX_PROCESSES_RANGE
                    .contains(&i64::from(c.tracker_max_processes())),
                "tracker_max_processes {} accepted",
                c.tracker_max_processes()
            );
            // Parsing is deterministic.
            assert_eq!(Config::parse(text).ok(), Some(c));
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "Err with no error");
            let status = Status::from(errors);
            assert_eq!(status.code, Code::InvalidArgument);
            assert!(!status.message.is_empty());
        }
    }
}

/// A cgroup path / `/proc/<pid>/cgroup` file → `locate_path` / `locate_cgroup_file`.
pub fn locator(data: &[u8]) {
    // /proc/<pid>/cgroup is read with from_utf8_lossy by the tracker; do the same.
    let text = String::from_utf8_lossy(data);
    if let Some(r) = locate_path(&text) {
        check_ref(&r, &text);
    }
    match locate_cgroup_file(&text) {
        Ok(Some(r)) => {
            check_ref(&r, &text);
            // The answer comes from one line's path: some line must yield that container.
            let from_a_line = text.lines().any(|line| {
                line.splitn(3, ':')
                    .nth(2)
                    .and_then(locate_path)
                    .is_some_and(|l| l.container_id == r.container_id)
            });
            assert!(from_a_line, "{r:?} is not located by any single line");
        }
        Ok(None) => {
            // No line names a container.
            for line in text.lines() {
                if let Some(path) = line.splitn(3, ':').nth(2) {
                    assert_eq!(locate_path(path), None, "line {line:?} ignored");
                }
            }
        }
        Err(e) => {
            let status = Status::from(e);
            assert!(matches!(
                status.code,
                Code::Internal | Code::FailedPrecondition
            ));
            assert!(!status.message.is_empty());
        }
    }
}

fn check_ref(r: &ContainerRef, text: &str) {
    assert_eq!(r.container_id.len(), 64, "{r:?}");
    assert!(
        r.container_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{r:?}"
    );
    assert!(text.contains(&r.container_id), "{r:?} not in input");
    if let Some(uid) = &r.pod_uid {
        assert!(
            uid.len() == 36 || uid.len() == 32,
            "pod UID of unexpected length: {r:?}"
        );
        assert!(
            uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{r:?}"
        );
        assert!(
            text.contains("pod"),
            "{r:?}: pod UID without a `pod` prefix"
        );
    }
}

/// Container ID used when the input does not name one (seeds use it).
pub const SEED_CONTAINER_ID: &str =
    "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// Pod UID used when the input does not name one.
pub const SEED_POD_UID: &str = "11111111-2222-4333-8444-555555555555";

/// Input layout: byte 0 = flags (bit 0: `disable_container_selectors`, bit 1: the cgroup
/// gave no pod UID), then the `/pods` body. The target is the seed pod/container.
pub fn pods(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let target = ContainerRef {
        pod_uid: (flags & 2 == 0).then(|| SEED_POD_UID.to_string()),
        container_id: SEED_CONTAINER_ID.to_string(),
    };
    let opts = SearchOptions::new(flags & 1 != 0);
    // The live path: one index per list version, searched by every container.
    let index = PodIndex::new(body.to_vec());
    let answer = search_in(&index, &target, &opts);
    // The index stays within its stated bounds: per pod, per status entry, and unescaped
    // text no longer than the body.
    assert!(index.pod_count() <= attestor::pods::MAX_PODS);
    assert!(index.entry_count() <= attestor::pods::MAX_ENTRIES);
    assert!(
        index.heap_bytes()
            <= attestor::pods::BASE_BYTES
                + index.pod_count() * attestor::pods::POD_BYTES
                + index.entry_count() * attestor::pods::ENTRY_BYTES
                + body.len(),
        "index of {} pods, {} entries takes {} bytes",
        index.pod_count(),
        index.entry_count(),
        index.heap_bytes()
    );
    // The one-shot search is the same code; so is a second index of the same body.
    assert_eq!(search(body, &target, &opts), answer);
    match answer {
        Ok(Some(values)) => {
            // Documented: sorted bytewise and deduplicated.
            assert!(
                values.windows(2).all(|w| w[0] < w[1]),
                "selectors not sorted/deduplicated: {values:?}"
            );
            assert!(values.iter().all(|v| !v.starts_with("k8s:")), "{values:?}");
            // Deterministic, and the index answers again the same.
            assert_eq!(search_in(&index, &target, &opts), Ok(Some(values)));
            // A pod found by its UID is among the pods with that UID (another pod with the
            // same UID may not decode).
            if target.pod_uid.is_some() {
                match index.pods_with_uid(SEED_POD_UID) {
                    Ok(pods) => assert!(!pods.is_empty(), "found by UID but no pod has it"),
                    Err(PodsError::InvalidPod(_)) => {}
                    Err(e) => panic!("a list that answered refuses pods by UID: {e}"),
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            let retryable = e.is_retryable();
            assert_eq!(
                retryable,
                !matches!(e, PodsError::InvalidPod(_) | PodsError::TwoPods)
            );

            let status = Status::from(e);
            assert!(matches!(status.code, Code::Unavailable | Code::Internal));
            assert!(!status.message.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The plugin's message handling.

use attestor::attest::K8s;
use attestor::plugin::in_process::{InProcess, Reply, first_frame, frame};
use attestor::plugin::proto::config::{ConfigureRequest, ValidateRequest, ValidateResponse};
use attestor::plugin::proto::init::{InitRequest, InitResponse};
use attestor::plugin::proto::workloadattestor::{
    AttestReferenceRequest, AttestReferenceResponse, AttestRequest, AttestResponse,
};
use attestor::plugin::{CONFIG_SERVICE, WORKLOAD_ATTESTOR_SERVICE};
use attestor::tracker::{StartError, Tracker, TrackerMode, TrackerOptions};
use prost::Message as _;

/// The unary methods an agent (or anything that reaches the socket) can call, by op code.
pub const PLUGIN_METHODS: [&str; 8] = [
    "/spire.service.private.init.v1.Init/Init",
    "/spire.service.private.init.v1.Init/Deinit",
    "/spire.service.common.config.v1.Config/Configure",
    "/spire.service.common.config.v1.Config/Validate",
    "/spire.plugin.agent.workloadattestor.v1.WorkloadAttestor/Attest",
    "/plugin.GRPCController/Shutdown",
    "/grpc.health.v1.Health/Check",
    // SPIRE 1.15.2+'s Broker API call.
    "/spire.plugin.agent.workloadattestor.v1.WorkloadAttestor/AttestReference",
];
pub const OP_INIT: u8 = 0;
pub const OP_DEINIT: u8 = 1;
pub const OP_CONFIGURE: u8 = 2;
pub const OP_VALIDATE: u8 = 3;
pub const OP_ATTEST: u8 = 4;
pub const OP_SHUTDOWN: u8 = 5;
pub const OP_HEALTH: u8 = 6;
pub const OP_ATTEST_REFERENCE: u8 = 7;
/// Op flag: the record's bytes are the raw gRPC body (framing fuzzed too), not a payload.
pub const OP_RAW: u8 = 0x80;
/// Calls per input: enough for Init → Configure → Attest → reconfigure → Deinit → Attest.
const MAX_CALLS: usize = 24;
/// No call but Attest may take long (Attest may wait on a kubelet if the PID happens to
/// be in a pod); a Configure or Validate that does is a finding.
const CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// `grpc.health.v1.HealthCheckRequest` / `HealthCheckResponse` (one field each).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// One record of a plugin input: `[op][len: u16 LE][len bytes]`.
pub fn plugin_record(op: u8, bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    let mut out = vec![op];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
    out
}

/// Input: up to 24 records `[op][len: u16 LE][bytes]`, sent in order to one fresh plugin
/// server (the binary's `K8s` attestor with the `/proc` tracker) through the tonic routes
/// the binary serves. Op bits 0–2 pick the method ([`PLUGIN_METHODS`]); without
/// [`OP_RAW`] the bytes are the protobuf message and are framed here. Every reply is
/// checked against a model of the plugin: Validate/Configure agree with `Config::parse`,
/// Attest answers `FailedPrecondition` exactly when no Configure has succeeded since the
/// last Deinit, bad frames and messages are errors, and no handler ever panics.
pub fn plugin(data: &[u8]) {
    plugin_transcript(data);
}

/// [`plugin`], returning each call's method and gRPC code (`None`: an Attest dropped at the
/// deadline, as an agent giving up would).
pub fn plugin_transcript(data: &[u8]) -> Vec<(u8, Option<i32>)> {
    plugin_runtime().block_on(plugin_session(data))
}

fn plugin_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Trackers forced to `/proc`: a Configure must not load eBPF programs thousands of times a
/// second (the eBPF tracker has its own tests on real kernels).
fn procfs_tracker(opts: &TrackerOptions) -> Result<Tracker, StartError> {
    Tracker::start(&TrackerOptions {
        mode: TrackerMode::Procfs,
        ..opts.clone()
    })
}

async fn plugin_session(data: &[u8]) -> Vec<(u8, Option<i32>)> {
    let mut transcript = Vec::new();
    let k8s = K8s::with_tracker_start(procfs_tracker).expect("the /proc tracker starts");
    let server = InProcess::new(k8s).await;
    // Model: whether Attest may run (a Configure succeeded since the start or last Deinit).
    let mut configured = false;
    let mut rest = data;
    for _ in 0..MAX_CALLS {
        let Some((&op, tail)) = rest.split_first() else {
            break;
        };
        let len = match tail {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => 0,
        };
        let tail = tail.get(2..).unwrap_or_default();
        let (bytes, next) = tail.split_at(len.min(tail.len()));
        rest = next;

        let method = op & 7;
        let path = PLUGIN_METHODS[usize::from(method)];
        let body = if op & OP_RAW != 0 {
            bytes::Bytes::copy_from_slice(bytes)
        } else {
            frame(bytes)
        };
        let (request, exact) = match first_frame(&body) {
            Some((payload, rest)) => (Some(payload.to_vec()), rest.is_empty()),
            None => (None, false),
        };
        let Ok(reply) = tokio::time::timeout(CALL_DEADLINE, server.call(path, body)).await else {
            // Dropping an Attest is the agent giving up: a real path, not a finding.
            assert_eq!(method, OP_ATTEST, "{path} hung");
            transcript.push((method, None));
            continue;
        };
        check_plugin_reply(
            path,
            method,
            request.as_deref(),
            exact,
            &reply,
            &mut configured,
        );
        transcript.push((method, reply.grpc_status));
    }
    server.finish().await.expect("deinit at exit");
    transcript
}

/// Selector values in the documented shape: sorted, distinct, `<kind>:<value>` without the
/// `k8s:` prefix (the agent adds it).
fn check_selector_values(values: &[String]) {
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    assert!(
        values
            .iter()
            .all(|v| v.contains(':') && !v.starts_with("k8s:")),
        "{values:?}"
    );
}

fn check_plugin_reply(
    path: &str,
    method: u8,
    request: Option<&[u8]>,
    exact: bool,
    reply: &Reply,
    configured: &mut bool,
) {
    // gRPC codes.
    const OK: i32 = 0;
    const INVALID_ARGUMENT: i32 = 3;
    const DEADLINE_EXCEEDED: i32 = 4;
    const NOT_FOUND: i32 = 5;
    const FAILED_PRECONDITION: i32 = 9;
    const PERMISSION_DENIED: i32 = 7;
    const INTERNAL: i32 = 13;
    const UNAVAILABLE: i32 = 14;

    assert_eq!(reply.http_status, 200, "{path}: {reply:?}");
    let code = reply
        .grpc_status
        .unwrap_or_else(|| panic!("{path}: no grpc-status: {reply:?}"));
    let message = reply.grpc_message.clone();
    // A handler panic is caught and answered `Internal` with "<Op> panicked: …" (libFuzzer's
    // panic hook aborts even on caught panics; the stable replay needs this check). Our
    // error messages never start with input text, so the prefix cannot be forged.
    assert!(
        ![
            "Init",
            "Deinit",
            "Configure",
            "Validate",
            "Attest",
            "AttestReference"
        ]
        .iter()
        .any(|op| message.starts_with(&format!("{op} panicked: "))),
        "{path}: {message}"
    );
    if code == OK {
        assert!(
            reply.message().is_some(),
            "{path}: OK without one response frame"
        );
    } else {
        assert!(
            reply.body.is_empty(),
            "{path}: an error with a body: {reply:?}"
        );
    }
    // A body tonic cannot frame or decode never reaches a handler.
    let Some(request) = request else {
        assert_ne!(
            code, OK,
            "{path}: a body without a complete frame was accepted"
        );
        return;
    };
    // More than one frame, or trailing bytes: tonic reads the whole body before the handler
    // runs, and may refuse it then. If it does not, the handler saw the first frame.
    if !exact && code != OK {
        return;
    }
    let response = reply.message().unwrap_or_default();
    match method {
        OP_INIT => {
            if InitRequest::decode(request).is_err() {
                assert_ne!(code, OK, "{path}: undecodable request accepted");
                return;
            }
            assert_eq!(code, OK, "{path}: {message}");
            let names = InitResponse::decode(response)
                .expect("InitResponse")
                .plugin_service_names;
            assert_eq!(names, [WORKLOAD_ATTESTOR_SERVICE, CONFIG_SERVICE]);
        }
        OP_DEINIT => {
            // DeinitRequest has no fields: any well-formed protobuf decodes.
            if code == OK {
                *configured = false;
            } else {
                assert!(
                    attestor::plugin::proto::init::DeinitRequest::decode(request).is_err(),
                    "{path}: {message}"
                );
            }
        }
        OP_CONFIGURE => {
            let Ok(req) = ConfigureRequest::decode(request) else {
                assert_ne!(code, OK, "{path}: undecodable request accepted");
                return;
            };
            match Config::parse(&req.hcl_configuration) {
                Err(errors) => {
                    assert_eq!(code, INVALID_ARGUMENT, "{path}: {message}");
                    assert_eq!(message, Status::from(errors).message);
                }
                Ok(_) => {
                    // A valid plugin_data may still name credential files that are missing.
                    assert!(
                        code == OK || code == INVALID_ARGUMENT,
                        "{path}: {code} {message}"
                    );
                    if code == OK {
                        *configured = true;
                    }
                }
            }
        }
        OP_VALIDATE => {
            let Ok(req) = ValidateRequest::decode(request) else {
                assert_ne!(code, OK, "{path}: undecodable request accepted");
                return;
            };
            assert_eq!(code, OK, "{path}: {message}");
            let got = ValidateResponse::decode(response).expect("ValidateResponse");
            match Config::parse(&req.hcl_configuration) {
                Ok(_) => assert!(got.valid && got.notes.is_empty(), "{got:?}"),
                Err(errors) => {
                    assert!(!got.valid, "{got:?}");
                    assert_eq!(got.notes, [Status::from(errors).message]);
                }
            }
        }
        OP_ATTEST => {
            let Ok(req) = AttestRequest::decode(request) else {
                assert_ne!(code, OK, "{path}: undecodable request accepted");
                return;
            };
            if !*configured {
                assert_eq!(code, FAILED_PRECONDITION, "{path}: {message}");
                assert_eq!(message, "not configured");
                return;
            }
            if req.pid <= 0 {
                assert_eq!(code, INVALID_ARGUMENT, "pid {}: {message}", req.pid);
                return;
            }
            // What else a PID gets depends on the machine's processes; never a panic or a
            // bug-class error, and selectors only in the documented shape.
            assert!(
                [
                    OK,
                    INVALID_ARGUMENT,
                    NOT_FOUND,
                    UNAVAILABLE,
                    DEADLINE_EXCEEDED
                ]
                .contains(&code),
                "pid {}: {code} {message}",
                req.pid
            );
            if code == OK {
                check_selector_values(
                    &AttestResponse::decode(response)
                        .expect("AttestResponse")
                        .selector_values,
                );
            }
        }
        OP_ATTEST_REFERENCE => {
            let Ok(req) = AttestReferenceRequest::decode(request) else {
                assert_ne!(code, OK, "{path}: undecodable request accepted");
                return;
            };
            if !*configured {
                assert_eq!(code, FAILED_PRECONDITION, "{path}: {message}");
                assert_eq!(message, "not configured");
                return;
            }
            if req.reference.is_none() {
                assert_eq!(code, INVALID_ARGUMENT, "{path}: {message}");
                assert_eq!(message, "workload reference must be provided");
                return;
            }
            // Without a broker caller (no metadata here) and without an API server in the
            // environment, a reference resolves through the kubelet or fails with one of
            // SPIRE's codes; never a panic, never selectors in another shape.
            assert!(
                [
                    OK,
                    INVALID_ARGUMENT,
                    NOT_FOUND,
                    UNAVAILABLE,
                    DEADLINE_EXCEEDED,
                    FAILED_PRECONDITION,
                    PERMISSION_DENIED,
                    INTERNAL,
                ]
                .contains(&code),
                "{path}: {code} {message}"
            );
            if code == OK {
                check_selector_values(
                    &AttestReferenceResponse::decode(response)
                        .expect("AttestReferenceResponse")
                        .selector_values,
                );
            }
        }
        OP_SHUTDOWN => {
            if attestor::plugin::proto::goplugin::Empty::decode(request).is_ok() {
                assert_eq!(code, OK, "{path}: {message}");
            } else {
                assert_ne!(code, OK, "{path}: undecodable request accepted");
            }
        }
        OP_HEALTH => {
            let Ok(req) = HealthCheckRequest::decode(request) else {
                assert_ne!(code, OK, "{path}: undecodable request accepted");
                return;
            };
            if req.service.is_empty() || req.service == "plugin" {
                assert_eq!(code, OK, "{path} {:?}: {message}", req.service);
                let status = HealthCheckResponse::decode(response).expect("HealthCheckResponse");
                assert_eq!(status.status, 1, "SERVING");
            } else {
                assert_eq!(code, NOT_FOUND, "{path} {:?}: {message}", req.service);
            }
        }
        _ => unreachable!("op codes are 0..8"),
    }
}
