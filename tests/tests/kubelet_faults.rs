//! A misbehaving kubelet, seen through the live pipeline (`Attestor::attest` on a real
//! process in a kubelet-style cgroup, eBPF tracker, TLS to the kubelet simulator).
//!
//! For every fault: the attestation ends with the documented status (`Unavailable` with the
//! kubelet client's message; SPIRE reports the last kubelet error that way) within the
//! configured deadline, the process's peak RSS grows by less than [`RSS_BOUND`] while the
//! fault is served, and the very next attestation after the fault is cleared returns the
//! selectors again (failures are never cached).
//!
//! Settings: `max_poll_attempts = 2`, `poll_retry_interval = 50ms`, client `request_timeout`
//! 1 s and `max_body_bytes` 16 MiB (set through `Attestor::with_kubelet_settings`; the
//! defaults are 10 s and 64 MiB). The deadline of one attestation is then
//! `2 × (1 s + 50 ms)`; durations are only checked against that plus a loose margin.
//!
//! Memory bound: a `/pods` answer is buffered only up to `max_body_bytes` (the client checks
//! Content-Length first, then counts bytes as they arrive, growing its buffer geometrically
//! but never past the limit; while it grows, the old and the new buffer coexist), so the
//! peak RSS growth of the whole process (client *and* in-process simulator) must stay below
//! `2 × max_body_bytes + 8 MiB` (8 MiB: TLS records, hyper's read buffer, allocator slack),
//! whatever the kubelet sends — 1 GiB included. Measured
//! with `/proc/self/clear_refs` (reset VmHWM) and `/proc/self/status` (VmHWM − VmRSS before).
//! Tests in this file run one at a time (a lock) so that they do not see each other's memory.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use attestor::attest::{Attestor, kubelet_settings};
use attestor::config::Config;
use attestor::status::{Code, Status};
use attestor::tracker::{Tracker, TrackerMode, TrackerOptions};
use attestor_tests::kubelet_sim::{
    Fault, KubeletSim, KubeletSimBuilder, PodBuilder, Runtime, TestCa, Validity, generate_pods,
    hex64,
};
use attestor_tests::require_root;
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;

const TOKEN: &str = "faults-token-93e1";
const POD_UID: &str = "3c2b1a09-8f7e-4d6c-9b5a-493827161504";
const MAX_BODY: usize = 16 * 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const ATTEMPTS: u64 = 2;
const INTERVAL: Duration = Duration::from_millis(50);
/// Peak RSS growth allowed while a fault is served.
const RSS_BOUND: u64 = 2 * MAX_BODY as u64 + 8 * 1024 * 1024;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tracker() -> Arc<Tracker> {
    static TRACKER: OnceLock<Arc<Tracker>> = OnceLock::new();
    TRACKER
        .get_or_init(|| {
            Arc::new(
                Tracker::start(&TrackerOptions {
                    mode: TrackerMode::Ebpf,
                    ..TrackerOptions::default()
                })
                .expect("eBPF tracker"),
            )
        })
        .clone()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn app_hex() -> String {
    hex64(7070)
}

fn pods() -> Vec<serde_json::Value> {
    let mut pods = generate_pods(30, "node-1", 70);
    pods.push(
        PodBuilder::new("payments-0")
            .namespace("pay")
            .uid(POD_UID)
            .service_account("payments")
            .container(
                "app",
                "registry.example.com/pay/api:2",
                Some(&Runtime::Containerd.container_id(&app_hex())),
            )
            .build(),
    );
    pods
}

/// A workload in a pod (an exec'd `sleep`: a fork that never execs would keep a copy of
/// every socket of this process, the simulator's listener included), an attestor pointed at the simulator, and the selectors it gets
/// while the kubelet is healthy.
struct Rig {
    sim: Option<KubeletSim>,
    attestor: Attestor,
    pid: i32,
    healthy: BTreeSet<String>,
    _sandbox: Sandbox,
    _dir: TempDir,
}

impl Rig {
    async fn start(builder: KubeletSimBuilder, extra_config: &str) -> Rig {
        let sim = builder.pods(pods()).start().await.expect("simulator");
        let dir = TempDir::new("faults");
        let attestor = attestor_for(sim.port(), &sim.ca_pem(), &dir, extra_config);
        let tracker = tracker();
        let sandbox =
            Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "faults").expect("sandbox");
        let cgroup = sandbox
            .container(Layout::SystemdContainerd, POD_UID, &app_hex())
            .expect("cgroup");
        let pid = spawn_into_cgroup(&cgroup, Some(&["/bin/sleep", "600"]), None).expect("spawn");
        let mut rig = Rig {
            sim: Some(sim),
            attestor,
            pid,
            healthy: BTreeSet::new(),
            _sandbox: sandbox,
            _dir: dir,
        };
        rig.healthy = rig.attest().await.expect("healthy kubelet").0;
        assert!(rig.healthy.contains(&format!("pod-uid:{POD_UID}")));
        assert!(rig.healthy.contains("container-name:app"));
        assert!(rig.healthy.contains("sa:payments"));
        rig
    }

    async fn attest(&self) -> Result<(BTreeSet<String>, Duration), Status> {
        let started = Instant::now();
        let v = self
            .attestor
            .attest(i64::from(self.pid), std::future::pending())
            .await?;
        Ok((v.into_iter().collect(), started.elapsed()))
    }

    /// Attests under the current fault: must fail `Unavailable` within the deadline and
    /// within the memory bound. Returns the message.
    async fn attest_faulty(&self) -> String {
        // A list fetched less than one poll interval ago is still served from the cache.
        tokio::time::sleep(INTERVAL * 2).await;
        let rss = RssProbe::start();
        let started = Instant::now();
        let e = self
            .attestor
            .attest(i64::from(self.pid), std::future::pending())
            .await
            .expect_err("the kubelet is faulty");
        let elapsed = started.elapsed();
        rss.assert_growth_below(RSS_BOUND);
        assert_eq!(e.code, Code::Unavailable, "{e}");
        let deadline = (REQUEST_TIMEOUT + INTERVAL) * ATTEMPTS as u32;
        assert!(
            elapsed < deadline + Duration::from_secs(10),
            "took {elapsed:?}, deadline {deadline:?}"
        );
        assert!(!e.message.contains(TOKEN), "the token leaked: {e}");
        e.message
    }

    fn sim(&self) -> &KubeletSim {
        self.sim.as_ref().expect("kubelet simulator")
    }

    /// Restarts the kubelet on the same port with the same CA (and so drops our pooled
    /// connection: the next request needs a new TLS handshake).
    async fn restart_kubelet(
        &mut self,
        configure: impl Fn(KubeletSimBuilder) -> KubeletSimBuilder,
    ) {
        let old = self.sim.take().expect("kubelet simulator");
        let (port, ca) = (old.port(), old.ca());
        old.shutdown().await;
        // The old connections close asynchronously (aborted tasks): retry the bind briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let b = configure(builder().port(port).server_ca(ca.clone())).pods(pods());
            match b.start().await {
                Ok(sim) => {
                    self.sim = Some(sim);
                    return;
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("kubelet restarts: {e}"),
            }
        }
    }

    /// The fault is gone: the next attestation gets the same selectors as before.
    async fn assert_recovers(&self) {
        let (got, _) = self.attest().await.expect("recovered kubelet");
        assert_eq!(got, self.healthy);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        attestor_tests::kill_and_reap(self.pid);
    }
}

fn attestor_for(port: u16, ca_pem: &str, dir: &TempDir, extra: &str) -> Attestor {
    let ca = dir.write("ca.pem", ca_pem);
    let token = dir.write("token", format!("{TOKEN}\n"));
    let text = format!(
        "kubelet_secure_port = {port}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\n\
         max_poll_attempts = {ATTEMPTS}\npoll_retry_interval = \"{}ms\"\n{extra}",
        ca.display(),
        token.display(),
        INTERVAL.as_millis()
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("config: {e:?}"));
    let mut settings = kubelet_settings(&config, |_| None).expect("settings");
    settings.request_timeout = REQUEST_TIMEOUT;
    settings.max_body_bytes = MAX_BODY;
    Attestor::with_kubelet_settings(config, tracker(), settings).expect("attestor")
}

fn builder() -> KubeletSimBuilder {
    KubeletSim::builder().token(TOKEN)
}

/// Peak RSS growth of this process from `start` on.
struct RssProbe {
    baseline: u64,
}

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

impl RssProbe {
    fn start() -> RssProbe {
        // "5" resets the peak (VmHWM) to the current RSS.
        std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
        RssProbe {
            baseline: status_kib("VmRSS:") * 1024,
        }
    }

    fn assert_growth_below(&self, bound: u64) {
        let peak = status_kib("VmHWM:") * 1024;
        let growth = peak.saturating_sub(self.baseline);
        eprintln!(
            "peak RSS growth {} KiB (bound {} KiB)",
            growth / 1024,
            bound / 1024
        );
        assert!(
            growth < bound,
            "peak RSS grew by {growth} bytes (bound {bound})"
        );
    }
}

fn run(test: impl std::future::Future<Output = ()>) {
    if !require_root() {
        return;
    }
    let _serial = serial();
    runtime().block_on(test);
}

#[test]
fn connection_refused() {
    run(async {
        // A port nobody listens on; the kubelet comes up there later with the same CA.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let ca = Arc::new(TestCa::new("late-kubelet-ca"));
        let dir = TempDir::new("faults");
        let attestor = attestor_for(port, ca.cert_pem(), &dir, "");
        let tracker = tracker();
        let sandbox =
            Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "faults").expect("sandbox");
        let cgroup = sandbox
            .container(Layout::Cgroupfs, POD_UID, &app_hex())
            .expect("cgroup");
        let pid = spawn_into_cgroup(&cgroup, Some(&["/bin/sleep", "600"]), None).expect("spawn");
        let rss = RssProbe::start();
        let e = attestor
            .attest(i64::from(pid), std::future::pending())
            .await
            .expect_err("nobody listens");
        rss.assert_growth_below(RSS_BOUND);
        assert_eq!(e.code, Code::Unavailable);
        assert!(
            e.message.starts_with(&format!(
                "kubelet request to https://127.0.0.1:{port}/pods failed: "
            )),
            "{e}"
        );
        assert!(e.message.contains("Connection refused"), "{e}");

        let sim = builder()
            .port(port)
            .server_ca(ca)
            .pods(pods())
            .start()
            .await
            .expect("kubelet comes up");
        let got = attestor
            .attest(i64::from(pid), std::future::pending())
            .await
            .expect("kubelet is up");
        assert!(got.contains(&format!("pod-uid:{POD_UID}")), "{got:?}");
        assert_eq!(sim.request_count(), 1);
        attestor_tests::kill_and_reap(pid);
    });
}

#[test]
fn hang_without_a_single_byte() {
    run(async {
        let rig = Rig::start(builder(), "").await;
        rig.sim().set_fault(Some(Fault::Hang));
        let msg = rig.attest_faulty().await;
        assert_eq!(
            msg,
            format!(
                "kubelet request to {} timed out after {REQUEST_TIMEOUT:?}",
                rig.sim().url()
            )
        );
        rig.sim().set_fault(None);
        rig.assert_recovers().await;
    });
}

#[test]
fn slow_drip() {
    run(async {
        let rig = Rig::start(builder(), "").await;
        // ~40 KiB at 64 bytes per 20 ms would take 13 s: longer than the request timeout.
        rig.sim().set_fault(Some(Fault::SlowDrip {
            chunk: 64,
            every: Duration::from_millis(20),
        }));
        let msg = rig.attest_faulty().await;
        assert_eq!(
            msg,
            format!(
                "kubelet request to {} timed out after {REQUEST_TIMEOUT:?}",
                rig.sim().url()
            )
        );
        rig.sim().set_fault(None);
        rig.assert_recovers().await;
    });
}

async fn http_status(code: u16, body: &str) {
    let rig = Rig::start(builder(), "").await;
    rig.sim().set_fault(Some(Fault::Status(code, body.into())));
    let msg = rig.attest_faulty().await;
    assert_eq!(
        msg,
        format!("unexpected status code on pods response: {code} {body}")
    );
    rig.sim().set_fault(None);
    rig.assert_recovers().await;
}

#[test]
fn http_401_from_the_kubelet() {
    // The kubelet's real 401 (a token it does not accept): rotate the accepted tokens.
    run(async {
        let rig = Rig::start(builder(), "").await;
        rig.sim().set_tokens(&["some-other-token"]);
        let msg = rig.attest_faulty().await;
        assert_eq!(
            msg,
            "unexpected status code on pods response: 401 Unauthorized"
        );
        rig.sim().set_tokens(&[TOKEN]);
        rig.assert_recovers().await;
    });
}

#[test]
fn http_403_from_the_kubelet() {
    run(async {
        let rig = Rig::start(builder(), "").await;
        rig.sim().set_forbid_authenticated(true);
        let msg = rig.attest_faulty().await;
        assert_eq!(
            msg,
            "unexpected status code on pods response: 403 Forbidden (user=token-user, verb=get, \
             resource=nodes, subresource=proxy)"
        );
        rig.sim().set_forbid_authenticated(false);
        rig.assert_recovers().await;
    });
}

#[test]
fn http_500_from_the_kubelet() {
    run(http_status(500, "Internal Server Error: runtime down"));
}

#[test]
fn http_503_from_the_kubelet() {
    run(http_status(503, "kubelet is restarting"));
}

/// Serves a body that is not a usable pod list (a fault, or `body` as is) and checks the
/// status the attestation ends with. `want` is SPIRE v1.15.3's message for that body
/// (`podlistfetcher.go`, `podListFetcher.parsePodList`, reported by `k8s.go`
/// `Plugin.attestByPIDReference` as `Unavailable` once the attempts are used up) followed by
/// our detail, if any; the fastjson texts in SPIRE's part were produced by fastjson itself.
async fn unparsable(fault: Option<Fault>, body: Option<&'static [u8]>, want: Want<'_>) {
    let rig = Rig::start(builder(), "").await;
    if let Some(f) = fault {
        rig.sim().set_fault(Some(f));
    }
    if let Some(b) = body {
        rig.sim().set_body(b);
    }
    let msg = rig.attest_faulty().await;
    match want {
        Want::Exactly(want) => assert_eq!(msg, want),
        Want::StartsWith(want) => assert!(msg.starts_with(want), "{msg} (wanted {want:?}…)"),
    }
    rig.sim().set_fault(None);
    rig.sim().set_pods(pods());
    rig.assert_recovers().await;
}

enum Want<'a> {
    Exactly(&'a str),
    StartsWith(&'a str),
}

#[test]
fn truncated_json() {
    // Half of the rendered list ends inside one of its pods (where exactly depends on the
    // generated pods, so only the part fastjson's text is sure to have is checked).
    run(unparsable(
        Some(Fault::Truncated),
        None,
        Want::StartsWith(
            "unable to parse kubelet response: cannot parse JSON: cannot parse object: cannot \
             parse object value: cannot parse array: cannot parse array value: cannot parse \
             object: ",
        ),
    ));
    run(unparsable(
        None,
        Some(br#"{"kind":"PodList","items":[{"metadata":{"uid":""#),
        Want::Exactly(
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse object: cannot parse object value: cannot parse array: cannot parse array value: cannot parse object: cannot parse object value: cannot parse object: cannot parse object value: cannot parse string: missing closing '"'; unparsed tail: """#,
        ),
    ));
}

#[test]
fn invalid_json() {
    run(unparsable(
        Some(Fault::Malformed),
        None,
        Want::Exactly(
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse object: cannot parse object value: cannot parse array: cannot parse array value: unexpected value found: "this is <html> not json"; unparsed tail: "this is <html> not json""#,
        ),
    ));
    run(unparsable(
        None,
        Some(b"<!DOCTYPE html>"),
        Want::Exactly(
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse number: unexpected char: "<"; unparsed tail: "<!DOCTYPE html>""#,
        ),
    ));
}

#[test]
fn an_array_instead_of_an_object() {
    for (body, want) in [
        (
            &br#"[{"metadata":{"uid":"3c2b1a09-8f7e-4d6c-9b5a-493827161504"}}]"#[..],
            "invalid kubelet response: expected an object; got an array",
        ),
        (
            br#""items""#,
            "invalid kubelet response: expected an object; got a string",
        ),
    ] {
        run(unparsable(None, Some(body), Want::Exactly(want)));
    }
}

#[test]
fn an_object_without_items() {
    run(unparsable(
        None,
        Some(br#"{"kind":"PodList"}"#),
        Want::Exactly(
            r#"invalid kubelet response: expected an items array; the object has no "items" field"#,
        ),
    ));
}

#[test]
fn items_that_are_not_an_array() {
    run(unparsable(
        None,
        Some(br#"{"kind":"Status","items":{"metadata":{"uid":"x"}}}"#),
        Want::Exactly(r#"invalid kubelet response: expected an items array; "items" is an object"#),
    ));
}

async fn huge_body(declare_length: bool) {
    let rig = Rig::start(builder(), "").await;
    rig.sim().set_fault(Some(Fault::Huge {
        bytes: 1 << 30,
        declare_length,
    }));
    let msg = rig.attest_faulty().await;
    assert_eq!(msg, format!("kubelet response exceeds {MAX_BODY} bytes"));
    rig.sim().set_fault(None);
    rig.assert_recovers().await;
}

#[test]
fn one_gib_body_with_content_length() {
    run(huge_body(true));
}

#[test]
fn one_gib_body_chunked() {
    run(huge_body(false));
}

#[test]
fn reset_mid_body() {
    run(async {
        let rig = Rig::start(builder(), "").await;
        rig.sim().set_fault(Some(Fault::ResetMidBody));
        let msg = rig.attest_faulty().await;
        assert!(
            msg.starts_with(&format!(
                "reading the kubelet response from {} failed: ",
                rig.sim().url()
            )),
            "{msg}"
        );
        rig.sim().set_fault(None);
        rig.assert_recovers().await;
    });
}

#[test]
fn tls_handshake_failure() {
    run(async {
        let mut rig = Rig::start(builder(), "").await;
        // Answer new connections with plaintext instead of a server hello.
        rig.restart_kubelet(|b| b).await;
        rig.sim().set_break_tls(true);
        let failures = rig.sim().handshake_failures();
        let msg = rig.attest_faulty().await;
        assert!(
            msg.starts_with(&format!("kubelet request to {} failed: ", rig.sim().url())),
            "{msg}"
        );
        assert!(msg.contains("received corrupt message"), "{msg}");
        assert_eq!(rig.sim().handshake_failures(), failures + ATTEMPTS, "{msg}");
        rig.sim().set_break_tls(false);
        rig.assert_recovers().await;
    });
}

#[test]
fn certificate_expiring_between_reloads() {
    // The kubelet's serving certificate expires while we hold our credentials (nothing
    // changes on our side, no reload is due: reload_interval is an hour). The next handshake
    // must fail closed with the expiry, and attestation must work again as soon as the
    // kubelet serves a renewed certificate: no agent restart, no waiting for a reload.
    run(async {
        let mut rig = Rig::start(builder(), "reload_interval = \"1h\"\n").await;
        // The kubelet restarts with the certificate that has expired in the meantime.
        rig.restart_kubelet(|b| b.server_validity(Validity::Expired))
            .await;
        let ca = rig.sim().ca();
        let sans = ["127.0.0.1", "localhost"];
        let msg = rig.attest_faulty().await;
        assert!(
            msg.starts_with(&format!("kubelet request to {} failed: ", rig.sim().url())),
            "{msg}"
        );
        assert!(
            msg.contains("invalid peer certificate: certificate expired"),
            "{msg}"
        );
        rig.sim()
            .rotate_server_cert(ca, &sans, Validity::Valid)
            .expect("rotate");
        rig.assert_recovers().await;
    });
}
