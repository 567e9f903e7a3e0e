//! Kubelet client and pod-list fetcher against the kubelet simulator: real HTTP and TLS
//! over loopback. Assertions are on outcomes and counts, never on durations.
//!
//! Reload tests move tokio's clock forward (`pause`/`advance`/`resume`, current-thread
//! runtime only) instead of sleeping through `reload_interval`; hyper's pool keeps
//! std-clock time, so that jump does not expire pooled connections.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attestor::kubelet::{
    Auth, Endpoint, FetchPods, KubeletClient, KubeletError, KubeletSettings, PodList,
    PodListFetcher, local_hostname,
};
use attestor::status::{Code, Status};
use attestor_tests::kubelet_sim::{
    ANONYMOUS_FORBIDDEN_BODY, AnonymousMode, ContainerKind, Fault, KubeletSim, PodBuilder, Runtime,
    TestCa, Validity, generate_pods, hex64,
};
use attestor_tests::tempdir::TempDir;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const TOKEN: &str = "t0ken-0ne-secret-value";
const TOKEN2: &str = "t0ken-tw0-secret-value";
const RELOAD: Duration = Duration::from_secs(3600);

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err<T, E>(r: Result<T, E>) -> E {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// Secure-port settings for a simulator on 127.0.0.1, CA written to `dir`, anonymous.
fn secure(sim: &KubeletSim, dir: &TempDir) -> KubeletSettings {
    let mut s = KubeletSettings::secure(sim.port(), None);
    s.ca_path = dir.write("ca.pem", sim.ca_pem());
    s.auth = Auth::Anonymous;
    s.reload_interval = RELOAD;
    s
}

fn with_token(mut s: KubeletSettings, dir: &TempDir, token: &str) -> KubeletSettings {
    // Trailing newline: tokens are whitespace-trimmed.
    let path = dir.write("token", format!("{token}\n"));
    s.auth = Auth::Token { path };
    s
}

fn sample_pods() -> Vec<serde_json::Value> {
    let mut pods = generate_pods(5, "node-1", 3);
    pods.push(
        PodBuilder::new("web-0")
            .namespace("shop")
            .service_account("web")
            .label("app", "web")
            .owner("StatefulSet", "web", "11111111-2222-4333-8444-555555555555")
            .container(
                "app",
                "registry.example.com/shop/web:2.0",
                Some(&Runtime::Containerd.container_id(&hex64(99))),
            )
            .build(),
    );
    pods
}

fn sim_builder_tls() -> attestor_tests::kubelet_sim::KubeletSimBuilder {
    KubeletSim::builder().pods(sample_pods())
}

/// Jump tokio's clock past `RELOAD` (current-thread runtime, no I/O in flight).
async fn past_reload_interval() {
    tokio::time::pause();
    tokio::time::advance(RELOAD + Duration::from_secs(1)).await;
    tokio::time::resume();
}

// ---------------------------------------------------------------- endpoints and auth

#[tokio::test]
async fn read_only_port_serves_plain_http() {
    let sim = ok(KubeletSim::builder()
        .tls(false)
        .pods(sample_pods())
        .start()
        .await);
    let client = ok(KubeletClient::new(KubeletSettings::read_only(sim.port())));
    assert_eq!(
        client.url(),
        format!("http://127.0.0.1:{}/pods", sim.port())
    );
    let body = ok(client.fetch_pods().await);
    assert_eq!(body, sim.current_body());
    // The read-only port never needs the CA or token files (defaults don't exist here).
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn secure_port_with_bearer_token() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let client = ok(KubeletClient::new(with_token(
        secure(&sim, &dir),
        &dir,
        TOKEN,
    )));
    assert_eq!(
        client.url(),
        format!("https://127.0.0.1:{}/pods", sim.port())
    );
    let body = ok(client.fetch_pods().await);
    assert_eq!(body, sim.current_body());
    let v: serde_json::Value = ok(serde_json::from_slice(&body));
    assert_eq!(v["items"].as_array().map(Vec::len), Some(6));
}

#[tokio::test]
async fn secure_port_with_client_certificate() {
    let dir = TempDir::new("kubelet");
    let client_ca = TestCa::new("client-ca");
    let sim = ok(sim_builder_tls()
        .client_ca(client_ca.cert_pem())
        .start()
        .await);
    let ck = client_ca.client_cert("system:node:node-1", Validity::Valid);
    let mut s = secure(&sim, &dir);
    s.auth = Auth::ClientCert {
        cert_path: dir.write("client.pem", &ck.cert_pem),
        key_path: dir.write("client.key", &ck.key_pem),
    };
    let client = ok(KubeletClient::new(s));
    assert_eq!(ok(client.fetch_pods().await), sim.current_body());
    assert_eq!(sim.client_certs_seen().len(), 1);
}

#[tokio::test]
async fn client_certificate_from_another_ca_fails_the_handshake() {
    let dir = TempDir::new("kubelet");
    let trusted = TestCa::new("client-ca");
    let other = TestCa::new("other-ca");
    let sim = ok(sim_builder_tls()
        .client_ca(trusted.cert_pem())
        .start()
        .await);
    let ck = other.client_cert("intruder", Validity::Valid);
    let mut s = secure(&sim, &dir);
    s.auth = Auth::ClientCert {
        cert_path: dir.write("client.pem", &ck.cert_pem),
        key_path: dir.write("client.key", &ck.key_pem),
    };
    let client = ok(KubeletClient::new(s));
    let e = err(client.fetch_pods().await);
    assert!(
        matches!(e, KubeletError::Request { .. } | KubeletError::Body { .. }),
        "{e}"
    );
    assert_eq!(sim.request_count(), 0);
}

#[tokio::test]
async fn anonymous_gets_the_kubelet_403() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let client = ok(KubeletClient::new(secure(&sim, &dir)));
    let e = err(client.fetch_pods().await);
    assert_eq!(e.http_status(), Some(403));
    assert_eq!(
        e.to_string(),
        format!("unexpected status code on pods response: 403 {ANONYMOUS_FORBIDDEN_BODY}")
    );
    // Anonymous allowed by the kubelet: the same client now succeeds.
    sim.set_anonymous(AnonymousMode::Allowed);
    assert_eq!(ok(client.fetch_pods().await), sim.current_body());
}

#[tokio::test]
async fn wrong_token_gets_401_and_authenticated_can_be_forbidden() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let client = ok(KubeletClient::new(with_token(
        secure(&sim, &dir),
        &dir,
        "not-it",
    )));
    let e = err(client.fetch_pods().await);
    assert_eq!(
        e.to_string(),
        "unexpected status code on pods response: 401 Unauthorized"
    );
    let good = ok(KubeletClient::new(with_token(
        secure(&sim, &dir),
        &dir,
        TOKEN,
    )));
    sim.set_forbid_authenticated(true);
    let e = err(good.fetch_pods().await);
    assert_eq!(e.http_status(), Some(403));
    assert!(e.to_string().contains("user=token-user"), "{e}");
}

// ---------------------------------------------------------------- verification modes

#[tokio::test]
async fn server_certificate_from_another_ca_is_rejected() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls()
        .anonymous(AnonymousMode::Allowed)
        .start()
        .await);
    let mut s = secure(&sim, &dir);
    s.ca_path = dir.write("other-ca.pem", TestCa::new("other").cert_pem());
    let e = err(ok(KubeletClient::new(s)).fetch_pods().await);
    let msg = e.to_string();
    assert!(matches!(e, KubeletError::Request { .. }), "{msg}");
    assert!(msg.contains("certificate"), "{msg}");
    assert_eq!(sim.request_count(), 0);
}

#[tokio::test]
async fn expired_server_certificate_is_rejected() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls()
        .anonymous(AnonymousMode::Allowed)
        .server_validity(Validity::Expired)
        .start()
        .await);
    let e = err(ok(KubeletClient::new(secure(&sim, &dir)))
        .fetch_pods()
        .await);
    assert!(e.to_string().to_lowercase().contains("expired"), "{e}");
    assert_eq!(sim.request_count(), 0);
}

#[tokio::test]
async fn node_name_must_match_the_certificate() {
    let dir = TempDir::new("kubelet");
    // Node name "localhost" (resolves to loopback); certificate for another name.
    let sim = ok(sim_builder_tls()
        .anonymous(AnonymousMode::Allowed)
        .server_sans(["node-7.cluster.example"])
        .start()
        .await);
    let mut s = secure(&sim, &dir);
    s.endpoint = Endpoint::Secure {
        port: sim.port(),
        host: Some("localhost".into()),
    };
    let client = ok(KubeletClient::new(s.clone()));
    assert_eq!(
        client.url(),
        format!("https://localhost:{}/pods", sim.port())
    );
    let e = err(client.fetch_pods().await);
    assert!(e.to_string().contains("not valid for name"), "{e}");

    // Same node name, certificate naming it: accepted.
    let good = ok(sim_builder_tls()
        .anonymous(AnonymousMode::Allowed)
        .server_sans(["localhost"])
        .start()
        .await);
    s.ca_path = dir.write("good-ca.pem", good.ca_pem());
    s.endpoint = Endpoint::Secure {
        port: good.port(),
        host: Some("localhost".into()),
    };
    assert_eq!(
        ok(ok(KubeletClient::new(s)).fetch_pods().await),
        good.current_body()
    );
}

#[tokio::test]
async fn loopback_requires_127_0_0_1_or_this_hosts_name() {
    let dir = TempDir::new("kubelet");
    // SPIRE accepts this certificate (chain only); we do not.
    let sim = ok(sim_builder_tls()
        .anonymous(AnonymousMode::Allowed)
        .server_sans(["kubelet.wrong.example"])
        .start()
        .await);
    let e = err(ok(KubeletClient::new(secure(&sim, &dir)))
        .fetch_pods()
        .await);
    assert!(
        e.to_string().contains(
            "invalid peer certificate: kubelet certificate is valid neither for 127.0.0.1"
        ),
        "{e}"
    );

    // IP SAN 127.0.0.1 only: accepted.
    let ip = ok(sim_builder_tls()
        .anonymous(AnonymousMode::Allowed)
        .server_sans(["127.0.0.1"])
        .start()
        .await);
    assert_eq!(
        ok(ok(KubeletClient::new(secure(&ip, &dir))).fetch_pods().await),
        ip.current_body()
    );

    // This host's name only (the usual kubelet serving certificate): accepted.
    if let Some(host) = local_hostname() {
        let named = ok(sim_builder_tls()
            .anonymous(AnonymousMode::Allowed)
            .server_sans([host.as_str()])
            .start()
            .await);
        assert_eq!(
            ok(ok(KubeletClient::new(secure(&named, &dir)))
                .fetch_pods()
                .await),
            named.current_body()
        );
    }
}

#[tokio::test]
async fn ipv6_node_name_is_bracketed_and_verified() {
    let dir = TempDir::new("kubelet");
    let started = sim_builder_tls()
        .anonymous(AnonymousMode::Allowed)
        .bind(
            "::1"
                .parse()
                .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
        )
        .server_sans(["::1"])
        .start()
        .await;
    let Ok(sim) = started else {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    };
    let mut s = secure(&sim, &dir);
    s.endpoint = Endpoint::Secure {
        port: sim.port(),
        host: Some("::1".into()),
    };
    let client = ok(KubeletClient::new(s));
    assert_eq!(client.url(), format!("https://[::1]:{}/pods", sim.port()));
    assert_eq!(client.url(), sim.url());
    assert_eq!(ok(client.fetch_pods().await), sim.current_body());
}

#[tokio::test]
async fn skip_verification_accepts_any_certificate() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls()
        .token(TOKEN)
        .server_sans(["kubelet.wrong.example"])
        .server_validity(Validity::Expired)
        .start()
        .await);
    let mut s = with_token(secure(&sim, &dir), &dir, TOKEN);
    s.skip_verification = true;
    s.ca_path = PathBuf::from("/nonexistent/ca.pem"); // not read when skipping
    assert_eq!(
        ok(ok(KubeletClient::new(s)).fetch_pods().await),
        sim.current_body()
    );
}

// ---------------------------------------------------------------- reload

#[tokio::test(flavor = "current_thread")]
async fn token_rotation_keeps_the_connection_pool() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let s = with_token(secure(&sim, &dir), &dir, TOKEN);
    let client = ok(KubeletClient::new(s));
    ok(client.fetch_pods().await);
    assert_eq!(sim.connection_count(), 1);

    // Rotate: the kubelet now only accepts the new token, which is on disk.
    dir.write("token", format!("  {TOKEN2}\n"));
    sim.set_tokens(&[TOKEN2]);
    // Before reload_interval the old token is still used (lazy reload, SPIRE semantics).
    assert_eq!(err(client.fetch_pods().await).http_status(), Some(401));

    past_reload_interval().await;
    assert_eq!(ok(client.fetch_pods().await), sim.current_body());
    // Only the token changed: same pool, same TCP connection.
    assert_eq!(sim.connection_count(), 1);
    assert_eq!(sim.request_count(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn client_certificate_rotation_uses_the_new_certificate() {
    let dir = TempDir::new("kubelet");
    let client_ca = TestCa::new("client-ca");
    let sim = ok(sim_builder_tls()
        .client_ca(client_ca.cert_pem())
        .start()
        .await);
    let first = client_ca.client_cert("agent", Validity::Valid);
    let mut s = secure(&sim, &dir);
    s.auth = Auth::ClientCert {
        cert_path: dir.write("client.pem", &first.cert_pem),
        key_path: dir.write("client.key", &first.key_pem),
    };
    let client = ok(KubeletClient::new(s));
    ok(client.fetch_pods().await);

    let second = client_ca.client_cert("agent", Validity::Valid);
    dir.write("client.pem", &second.cert_pem);
    dir.write("client.key", &second.key_pem);
    past_reload_interval().await;
    ok(client.fetch_pods().await);

    // New TLS material ⇒ new pool ⇒ a new connection presenting the new certificate.
    assert_eq!(sim.connection_count(), 2);
    let seen = sim.client_certs_seen();
    let der = |pem: &str| ok(CertificateDer::from_pem_slice(pem.as_bytes())).to_vec();
    assert_eq!(seen, vec![der(&first.cert_pem), der(&second.cert_pem)]);
}

#[tokio::test(flavor = "current_thread")]
async fn kubelet_ca_change_on_disk_is_picked_up() {
    // SPIRE issue 5370: the kubelet's CA (and serving certificate) replaced.
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let s = with_token(secure(&sim, &dir), &dir, TOKEN);
    let client = ok(KubeletClient::new(s));
    ok(client.fetch_pods().await);

    let new_ca = Arc::new(TestCa::new("kubelet-ca-2"));
    ok(sim.rotate_server_cert(new_ca.clone(), &["127.0.0.1"], Validity::Valid));
    // A client that only knows the old CA cannot open new connections any more.
    let mut stale = with_token(secure(&sim, &dir), &dir, TOKEN);
    stale.ca_path = dir.write("old-ca.pem", TestCa::new("unrelated").cert_pem());
    assert!(ok(KubeletClient::new(stale)).fetch_pods().await.is_err());

    // The operator installs the new CA; after reload_interval the client rebuilds its
    // TLS configuration and pool and verifies the new certificate.
    dir.write("ca.pem", new_ca.cert_pem());
    past_reload_interval().await;
    assert_eq!(ok(client.fetch_pods().await), sim.current_body());
    assert_eq!(sim.connection_count(), 3); // first, stale client's attempt, rebuilt pool
}

#[tokio::test(flavor = "current_thread")]
async fn missing_or_broken_files_fail_closed_and_recover_at_once() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let s = with_token(secure(&sim, &dir), &dir, TOKEN);
    let token_path = dir.path().join("token");
    let ca_path = s.ca_path.clone();
    let client = ok(KubeletClient::new(s));
    ok(client.fetch_pods().await);

    // Token file removed: the kubelet would still take the old token, but we stop using it.
    ok(std::fs::remove_file(&token_path));
    past_reload_interval().await;
    let e = err(client.fetch_pods().await);
    assert!(matches!(e, KubeletError::LoadToken { .. }), "{e}");
    assert!(
        e.to_string().contains(&token_path.display().to_string()),
        "{e}"
    );
    // Still failing on the next fetch (nothing stale kept), without another interval.
    assert!(matches!(
        err(client.fetch_pods().await),
        KubeletError::LoadToken { .. }
    ));
    assert_eq!(sim.request_count(), 1);

    // Restored: picked up at the next fetch, no interval needed.
    dir.write("token", TOKEN);
    ok(client.fetch_pods().await);

    // CA replaced by garbage: a parse error naming the file.
    dir.write("ca.pem", "not a certificate");
    past_reload_interval().await;
    let e = err(client.fetch_pods().await);
    assert!(matches!(e, KubeletError::ParseCa { .. }), "{e}");
    assert!(
        e.to_string().contains(&ca_path.display().to_string()),
        "{e}"
    );
    dir.write("ca.pem", sim.ca_pem());
    ok(client.fetch_pods().await);
    assert_eq!(sim.request_count(), 3);
}

#[tokio::test]
async fn configuration_errors_name_the_file() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().start().await);
    let mut s = secure(&sim, &dir);
    s.ca_path = dir.path().join("absent-ca.pem");
    let e = err(KubeletClient::new(s.clone()));
    assert!(
        e.to_string().contains("absent-ca.pem") && e.to_string().contains("kubelet_ca_path"),
        "{e}"
    );

    let ck = TestCa::new("c").client_cert("x", Validity::Valid);
    let other = TestCa::new("d").client_cert("y", Validity::Valid);
    s.ca_path = dir.write("ca.pem", sim.ca_pem());
    s.auth = Auth::ClientCert {
        cert_path: dir.write("c.pem", &ck.cert_pem),
        key_path: dir.write("other.key", &other.key_pem),
    };
    let e = err(KubeletClient::new(s.clone()));
    assert!(matches!(e, KubeletError::KeyPair { .. }), "{e}");

    s.auth = Auth::ClientCert {
        cert_path: dir.write("c.pem", &ck.cert_pem),
        key_path: dir.write(
            "bad.key",
            "-----BEGIN PRIVATE KEY-----\nS3CRETKEYMATERIAL\n-----END PRIVATE KEY-----\n",
        ),
    };
    let e = err(KubeletClient::new(s));
    assert!(matches!(e, KubeletError::ParseKey { .. }), "{e}");
    assert!(!e.to_string().contains("S3CRETKEYMATERIAL"), "{e}");
}

#[tokio::test]
async fn secrets_never_appear_in_errors_or_debug() {
    let dir = TempDir::new("kubelet");
    let client_ca = TestCa::new("client-ca");
    let sim = ok(sim_builder_tls().token("something-else").start().await);
    let s = with_token(secure(&sim, &dir), &dir, TOKEN);
    let client = ok(KubeletClient::new(s.clone()));
    let e = err(client.fetch_pods().await); // 401
    for text in [
        e.to_string(),
        format!("{e:?}"),
        format!("{client:?}"),
        format!("{s:?}"),
        Status::from(e).to_string(),
    ] {
        assert!(!text.contains(TOKEN), "token leaked: {text}");
    }

    let ck = client_ca.client_cert("agent", Validity::Valid);
    let mut s = secure(&sim, &dir);
    s.auth = Auth::ClientCert {
        cert_path: dir.write("c.pem", &ck.cert_pem),
        key_path: dir.write("c.key", &ck.key_pem),
    };
    let client = ok(KubeletClient::new(s));
    let key_body: String = ck.key_pem.lines().nth(1).unwrap_or_default().to_owned();
    assert!(key_body.len() > 10);
    assert!(!format!("{client:?}").contains(&key_body));
    let e = err(client.fetch_pods().await); // sim has no client CA: anonymous ⇒ 403
    assert!(!e.to_string().contains(&key_body));
}

// ---------------------------------------------------------------- bad answers

#[tokio::test]
async fn error_statuses_carry_at_most_1kib_of_body() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let client = ok(KubeletClient::new(with_token(
        secure(&sim, &dir),
        &dir,
        TOKEN,
    )));
    for code in [500_u16, 503] {
        sim.fault_next(Fault::Status(code, "kubelet is unwell".into()));
        let e = err(client.fetch_pods().await);
        assert_eq!(
            e.to_string(),
            format!("unexpected status code on pods response: {code} kubelet is unwell")
        );
        let status = Status::from(e);
        assert_eq!(status.code, Code::Unavailable);
    }
    sim.fault_next(Fault::Status(500, "y".repeat(5000)));
    match err(client.fetch_pods().await) {
        KubeletError::Status { code, body } => {
            assert_eq!(code, 500);
            assert_eq!(body.len(), 1024);
        }
        other => panic!("unexpected {other}"),
    }
    // Faults were one-shot: back to normal.
    assert_eq!(ok(client.fetch_pods().await), sim.current_body());
}

#[tokio::test]
async fn slow_kubelet_times_out() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let mut s = with_token(secure(&sim, &dir), &dir, TOKEN);
    s.request_timeout = Duration::from_millis(200);
    let client = ok(KubeletClient::new(s));
    sim.fault_next(Fault::Delay(Duration::from_secs(30)));
    let e = err(client.fetch_pods().await);
    assert!(matches!(e, KubeletError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    // A fresh request after the timeout works.
    assert_eq!(ok(client.fetch_pods().await), sim.current_body());
}

#[tokio::test]
async fn malformed_and_truncated_bodies_are_returned_reset_is_an_error() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let client = ok(KubeletClient::new(with_token(
        secure(&sim, &dir),
        &dir,
        TOKEN,
    )));

    // Valid HTTP, bad JSON: parsing is the caller's job, the client returns the bytes.
    sim.fault_next(Fault::Malformed);
    let body = ok(client.fetch_pods().await);
    assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());

    sim.fault_next(Fault::Truncated);
    let body = ok(client.fetch_pods().await);
    assert_eq!(body.len(), sim.current_body().len() / 2);
    assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());

    // Connection aborted mid-body: an error, not a short body.
    sim.fault_next(Fault::ResetMidBody);
    let e = err(client.fetch_pods().await);
    assert!(
        matches!(e, KubeletError::Body { .. } | KubeletError::Request { .. }),
        "{e}"
    );

    // And the client recovers on a new connection.
    assert_eq!(ok(client.fetch_pods().await), sim.current_body());
}

#[tokio::test]
async fn oversized_answers_are_refused() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let mut s = with_token(secure(&sim, &dir), &dir, TOKEN);
    s.max_body_bytes = 1024 * 1024;
    let client = ok(KubeletClient::new(s));
    for chunked in [false, true] {
        sim.fault_next(Fault::Oversized {
            bytes: 3 * 1024 * 1024,
            chunked,
        });
        let e = err(client.fetch_pods().await);
        assert_eq!(e.to_string(), "kubelet response exceeds 1048576 bytes");
    }
    assert_eq!(ok(client.fetch_pods().await), sim.current_body());
}

// ---------------------------------------------------------------- fetcher + poll loop

/// A pod whose container is started but not yet in the kubelet's status.
fn pending_pod() -> (serde_json::Value, String) {
    let b = PodBuilder::new("late-0").namespace("jobs").container(
        "worker",
        "registry.example.com/jobs/worker:1",
        None,
    );
    let uid = b.uid_str().to_owned();
    (b.build(), uid)
}

fn contains(list: &PodList, needle: &str) -> bool {
    list.body()
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn fetcher_for(
    sim: &KubeletSim,
    dir: &TempDir,
    interval: Duration,
) -> PodListFetcher<Arc<KubeletClient>> {
    let client = ok(KubeletClient::new(with_token(secure(sim, dir), dir, TOKEN)));
    PodListFetcher::new(Arc::new(client), interval)
}

#[tokio::test]
async fn poll_sees_a_container_that_appears_later() {
    let dir = TempDir::new("kubelet");
    let id = Runtime::Containerd.container_id(&hex64(4242));
    let (pod, uid) = pending_pod();
    let sim = ok(KubeletSim::builder()
        .token(TOKEN)
        .pods(vec![pod])
        .start()
        .await);
    sim.add_container_status_after(
        3,
        &uid,
        ContainerKind::Regular,
        "worker",
        "registry.example.com/jobs/worker:1",
        &id,
    );
    let fetcher = fetcher_for(&sim, &dir, Duration::from_millis(20)).await;
    let found = fetcher
        .poll(
            10,
            |l| Ok(contains(l, &id).then_some(l.version())),
            std::future::pending(),
        )
        .await;
    assert_eq!(found, Ok(4));
    assert_eq!(sim.request_count(), 4);
}

#[tokio::test]
async fn poll_gives_up_with_deadline_exceeded_or_unavailable() {
    let dir = TempDir::new("kubelet");
    let sim = ok(KubeletSim::builder()
        .token(TOKEN)
        .pods(sample_pods())
        .start()
        .await);
    let fetcher = fetcher_for(&sim, &dir, Duration::from_millis(10)).await;

    let miss = fetcher
        .poll(3, |_| Ok(None::<()>), std::future::pending())
        .await;
    assert_eq!(
        miss,
        Err(Status::new(
            Code::DeadlineExceeded,
            "no selectors found after max poll attempts"
        ))
    );
    assert_eq!(sim.request_count(), 3);

    // A new fetcher per scenario: a fresh cached list would otherwise serve attempt 1.
    let fetcher = fetcher_for(&sim, &dir, Duration::from_millis(10)).await;
    sim.set_fault(Some(Fault::Status(503, "kubelet restarting".into())));
    let down = fetcher
        .poll(3, |_| Ok(None::<()>), std::future::pending())
        .await;
    assert_eq!(
        down,
        Err(Status::new(
            Code::Unavailable,
            "unexpected status code on pods response: 503 kubelet restarting"
        ))
    );
    assert_eq!(sim.request_count(), 6);

    // Errors are retried like misses: two failures, then the list is there.
    let fetcher = fetcher_for(&sim, &dir, Duration::from_millis(10)).await;
    sim.set_fault(None);
    sim.fault_next(Fault::Status(500, "a".into()));
    sim.fault_next(Fault::ResetMidBody);
    let found = fetcher
        .poll(5, |l| Ok(Some(l.version())), std::future::pending())
        .await;
    assert_eq!(found, Ok(1));
    assert_eq!(sim.request_count(), 9);

    // A search error ends the loop at once.
    let fatal = fetcher
        .poll(
            5,
            |_| Err::<Option<()>, _>(Status::new(Code::Unavailable, "bad pod JSON")),
            std::future::pending(),
        )
        .await;
    assert_eq!(fatal, Err(Status::new(Code::Unavailable, "bad pod JSON")));
}

#[tokio::test]
async fn cancelling_one_waiter_does_not_cancel_the_shared_request() {
    let dir = TempDir::new("kubelet");
    let sim = ok(KubeletSim::builder()
        .token(TOKEN)
        .pods(sample_pods())
        .start()
        .await);
    // Hold the request long enough for all waiters to join it.
    sim.fault_next(Fault::Delay(Duration::from_millis(300)));
    let fetcher = fetcher_for(&sim, &dir, Duration::from_millis(10)).await;

    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    let a = {
        let f = fetcher.clone();
        tokio::spawn(async move {
            f.poll(5, |l| Ok(Some(l.version())), async move {
                let _ = cancel_rx.await;
            })
            .await
        })
    };
    let b = {
        let f = fetcher.clone();
        tokio::spawn(async move {
            f.poll(5, |l| Ok(Some(l.version())), std::future::pending())
                .await
        })
    };
    let c = {
        let f = fetcher.clone();
        tokio::spawn(async move {
            f.poll(5, |l| Ok(Some(l.version())), std::future::pending())
                .await
        })
    };
    // Wait until the request is in flight, then cancel A and drop C's future outright.
    while sim.request_count() == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = cancel_tx.send(());
    c.abort();

    assert_eq!(
        ok(a.await),
        Err(Status::new(Code::Cancelled, "attestation canceled"))
    );
    assert_eq!(ok(b.await), Ok(1));
    assert!(ok_or_cancelled(c.await));
    assert_eq!(sim.request_count(), 1);
    assert_eq!(fetcher.requests_started(), 1);
}

fn ok_or_cancelled<T>(r: Result<T, tokio::task::JoinError>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => e.is_cancelled(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pollers_share_requests() {
    let dir = TempDir::new("kubelet");
    let id = Runtime::CriO.container_id(&hex64(777));
    let (pod, uid) = pending_pod();
    let mut pods = generate_pods(110, "node-1", 9);
    pods.push(pod);
    let sim = ok(KubeletSim::builder().token(TOKEN).pods(pods).start().await);
    // The container shows up in the third list.
    sim.add_container_status_after(
        2,
        &uid,
        ContainerKind::Regular,
        "worker",
        "registry.example.com/jobs/worker:1",
        &id,
    );
    let fetcher = fetcher_for(&sim, &dir, Duration::from_millis(50)).await;

    // One search per list version, shared: 1,000 byte scans of 1.2 MB would only
    // measure the test's own search.
    let memo: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
    let started = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let f = fetcher.clone();
        let memo = memo.clone();
        let id = id.clone();
        let started = started.clone();
        tasks.spawn(async move {
            started.store(true, Ordering::Relaxed);
            f.poll(
                20,
                |l| {
                    let mut m = memo.lock().unwrap_or_else(|e| e.into_inner());
                    let hit = match m.iter().find(|(v, _)| *v == l.version()) {
                        Some((_, hit)) => *hit,
                        None => {
                            let hit = contains(l, &id);
                            m.push((l.version(), hit));
                            hit
                        }
                    };
                    Ok(hit.then_some(l.version()))
                },
                std::future::pending(),
            )
            .await
        });
    }
    let mut found = 0;
    while let Some(r) = tasks.join_next().await {
        assert_eq!(ok(r), Ok(3));
        found += 1;
    }
    assert_eq!(found, 1000);
    assert!(started.load(Ordering::Relaxed));
    // Three lists were needed; that is all the kubelet saw.
    assert_eq!(sim.request_count(), 3);
    assert_eq!(fetcher.requests_started(), 3);
}

// The trait is what a fake would implement; make sure the client satisfies it by name.
#[allow(dead_code)]
fn client_is_fetch_pods(c: KubeletClient) -> impl FetchPods {
    c
}

#[tokio::test]
async fn kubelet_sim_binary_prints_a_ready_line_and_serves() {
    use tokio::io::AsyncBufReadExt;

    let dir = TempDir::new("kubelet");
    let mut child = ok(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kubelet-sim"))
            .args([
                "--pods",
                "12",
                "--token",
                TOKEN,
                "--http-port",
                "0",
                "--out-dir",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn(),
    );
    let Some(stdout) = child.stdout.take() else {
        panic!("no stdout")
    };
    let mut line = String::new();
    ok(tokio::io::BufReader::new(stdout).read_line(&mut line).await);
    let ready: serde_json::Value = ok(serde_json::from_str(&line));
    assert_eq!(ready["pods"], 12);

    let port = |k: &str| {
        ready[k]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0)
    };
    let mut s = KubeletSettings::secure(port("https_port"), None);
    s.ca_path = PathBuf::from(ready["ca_path"].as_str().unwrap_or_default());
    s.auth = Auth::Token {
        path: dir.write("token", TOKEN),
    };
    let secure_body = ok(ok(KubeletClient::new(s)).fetch_pods().await);
    let plain_body = ok(ok(KubeletClient::new(KubeletSettings::read_only(port(
        "http_port",
    ))))
    .fetch_pods()
    .await);
    assert_eq!(secure_body, plain_body);
    assert_eq!(ready["body_bytes"].as_u64(), Some(secure_body.len() as u64));
    let v: serde_json::Value = ok(serde_json::from_slice(&secure_body));
    assert_eq!(v["items"].as_array().map(Vec::len), Some(12));
    let _ = child.kill().await;
}

#[tokio::test]
async fn kubelet_down_is_a_connect_error_and_unavailable() {
    let dir = TempDir::new("kubelet");
    let sim = ok(sim_builder_tls().token(TOKEN).start().await);
    let s = with_token(secure(&sim, &dir), &dir, TOKEN);
    sim.shutdown().await; // listener closed: connection refused
    let client = Arc::new(ok(KubeletClient::new(s)));
    let e = err(client.fetch_pods().await);
    assert!(matches!(e, KubeletError::Request { .. }), "{e}");
    assert!(e.to_string().contains("onnect"), "{e}");

    let fetcher = PodListFetcher::new(client, Duration::from_millis(5));
    let r = fetcher
        .poll(2, |_| Ok(None::<()>), std::future::pending())
        .await;
    match r {
        Err(Status {
            code: Code::Unavailable,
            message,
        }) => assert!(
            message.starts_with("kubelet request to https://127.0.0.1:"),
            "{message}"
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fetcher.requests_started(), 2);
}
