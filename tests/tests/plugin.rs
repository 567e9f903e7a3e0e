//! The SPIRE plugin surface, loaded by HashiCorp's real go-plugin client.
//!
//! `tests/go-host` (Go, built here into `target/tmp/go-host` against Debian's go-plugin 1.0.1,
//! driven through `attestor_tests::go_host`) loads `attestor-test-plugin` exactly as the
//! SPIRE agent loads `plugin_cmd`: magic cookie, gRPC only, no AutoMTLS, SHA-256 checksum,
//! `broker.Accept(1)` with the metrics host service, then Init → Configure → Attest → Deinit
//! → Kill. The plugin runs the real plugin server with the test attestor (real eBPF tracker,
//! selectors from the cgroup path), and the processes attested are real, in kubelet-style
//! cgroups.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attestor::plugin::handshake::AUTO_MTLS_REFUSED;
use attestor_tests::cart::{POD_UID, app_hex, cart_pod, expected_app_selectors};
use attestor_tests::go_host::{GoHost, code};
use attestor_tests::kubelet_sim::{KubeletSim, generate_pods};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{attestor_bin, cgroup_id, comm, kill_and_reap, require_root, wait_for};
use serde_json::{Value, json};

const PLUGIN: &str = env!("CARGO_BIN_EXE_attestor-test-plugin");
const POD_A: &str = "6f1c2d3e-4a5b-4c6d-8e7f-a0b1c2d3e4f5";
const POD_B: &str = "7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d";
const CID_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const CID_B: &str = "b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1";
const CID_HOLD: &str = "c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2";
const CID_PANIC: &str = "d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3";

/// This test binary's scratch directory: the Go host is built and logs there.
fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// The Go host binary (built once per test binary).
fn go_host() -> &'static Path {
    GoHost::binary(tmp())
}

/// `cmd` (the Go host, or a wrapper that runs it) loading `plugin`.
fn host_in(cmd: Command, plugin: &Path) -> GoHost {
    GoHost::start(cmd, plugin, tmp())
}

/// The Go host loading the test plugin (the test attestor).
fn host() -> GoHost {
    host_in(Command::new(go_host()), Path::new(PLUGIN))
}

/// The Go host loading the real `attestor` binary (the k8s pipeline).
fn real_host() -> GoHost {
    host_in(Command::new(go_host()), &attestor_bin())
}

/// The Go host (and so the plugin it starts) with only these capabilities (as root):
/// what deploy/spire-agent-daemonset.yaml grants the agent container.
fn host_with_caps(caps: &str) -> GoHost {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-all", "--ambient-caps=-all"])
        .arg(format!("--bounding-set=-all{caps}"))
        .arg(go_host());
    host_in(cmd, Path::new(PLUGIN))
}

fn sleeper(dir: &Path) -> i32 {
    let pid = spawn_into_cgroup(dir, Some(&["/bin/sleep", "120"]), None).expect("clone3");
    wait_for(Duration::from_secs(5), || {
        (comm(pid).as_deref() == Some("sleep")).then_some(())
    })
    .expect("child exec'd sleep");
    pid
}

fn expected(sandbox: &Sandbox, dir: &Path) -> Vec<String> {
    vec![
        format!("cgroup-path:{}", sandbox.hierarchy_path(dir)),
        format!("cgroup-id:{}", cgroup_id(dir)),
    ]
}

/// The kubelet simulator on its own runtime (these tests are synchronous), serving the cart
/// pod among generated ones, and the plugin_data that points at it.
struct Kubelet {
    _rt: tokio::runtime::Runtime,
    sim: KubeletSim,
    _dir: TempDir,
    plugin_data: String,
}

const TOKEN: &str = "plugin-test-token";

fn kubelet() -> Kubelet {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut pods = generate_pods(30, "node-1", 21);
    pods.push(cart_pod(true).build());
    let sim = rt
        .block_on(KubeletSim::builder().token(TOKEN).pods(pods).start())
        .expect("simulator");
    let dir = TempDir::new("plugin");
    let ca = dir.write("ca.pem", sim.ca_pem());
    let token = dir.write("token", TOKEN);
    // As the agent re-prints plugin_data from a JSON config: quoted keys.
    let plugin_data = format!(
        "\"kubelet_secure_port\" = {}\n\"kubelet_ca_path\" = \"{}\"\n\"token_path\" = \"{}\"\n\"poll_retry_interval\" = \"50ms\"\n\"max_poll_attempts\" = 5\n",
        sim.port(),
        ca.display(),
        token.display()
    );
    Kubelet {
        _rt: rt,
        sim,
        _dir: dir,
        plugin_data,
    }
}

fn sandbox(tag: &str) -> Sandbox {
    let cgfs = attestor::cgroupfs::CgroupFs::discover().expect("cgroup2 mount");
    Sandbox::new(&cgfs, tag).expect("sandbox")
}

/// The real binary, loaded 20 times by go-plugin, configured against the kubelet simulator,
/// attesting a real process in a kubelet-style cgroup: SPIRE's selectors, exactly.
#[test]
fn real_plugin_loads_twenty_times_and_attests_through_the_kubelet() {
    if !require_root() {
        return;
    }
    let k = kubelet();
    let sb = sandbox("plugin-real");
    let dir = sb
        .container(Layout::SystemdContainerd, POD_UID, &app_hex())
        .expect("cgroup");
    let pid = sleeper(&dir);
    let want: Vec<String> = expected_app_selectors().into_iter().collect();
    let mut host = real_host();
    for round in 0..20 {
        host.load();
        assert_eq!(
            host.configure(&k.plugin_data),
            ("OK".into(), String::new()),
            "round {round}"
        );
        assert_eq!(host.attest_ok(pid), want, "round {round}");
        host.unload();
    }
    assert!(k.sim.request_count() >= 20, "each load polled the kubelet");
    kill_and_reap(pid);
}

/// The real binary's error codes: bad text, unknown keys, not configured, a dead kubelet,
/// a process that is not in a pod.
#[test]
fn real_plugin_reports_spire_status_codes() {
    if !require_root() {
        return;
    }
    let k = kubelet();
    let sb = sandbox("plugin-real-errors");
    let app = sb
        .container(Layout::SystemdContainerd, POD_UID, &app_hex())
        .expect("cgroup");
    let pid = sleeper(&app);
    let host_dir = sb.dir("system.slice/cron.service").expect("cgroup");
    let host_pid = sleeper(&host_dir);
    let mut host = real_host();
    host.load();
    assert_eq!(
        code(&host.attest(pid)),
        ("FailedPrecondition".into(), "not configured".into())
    );
    let (c, m) = host.configure("kubelet_read_only_port = 10255\nkubelet_secure_port = 10250\n");
    assert_eq!(
        (c.as_str(), m.as_str()),
        (
            "InvalidArgument",
            "cannot use both the read-only and secure port"
        )
    );
    let (c, m) = host.configure("bogus = 1\nalso_bogus = true\n");
    assert_eq!(
        (c.as_str(), m.as_str()),
        (
            "InvalidArgument",
            "unknown configurations detected: also_bogus,bogus"
        )
    );
    let (c, _) = host.configure("kubelet_secure_port = \"not a number");
    assert_eq!(c, "InvalidArgument");
    // Still unconfigured after failed Configures.
    assert_eq!(code(&host.attest(pid)).0, "FailedPrecondition");
    // A kubelet that is not there: Unavailable after max_poll_attempts.
    let dead = k.plugin_data.replace(&format!("= {}", k.sim.port()), "= 1");
    assert_eq!(host.configure(&dead), ("OK".into(), String::new()));
    assert_eq!(code(&host.attest(pid)).0, "Unavailable");
    // Reconfigured to the live kubelet: answers again.
    assert_eq!(host.configure(&k.plugin_data), ("OK".into(), String::new()));
    assert_eq!(
        host.attest_ok(pid),
        expected_app_selectors().into_iter().collect::<Vec<_>>()
    );
    // Not in a pod: no selectors, no error.
    assert_eq!(host.attest_ok(host_pid), Vec::<String>::new());
    host.unload();
    kill_and_reap(pid);
    kill_and_reap(host_pid);
}

/// The five kinds of unusable `/pods` body, as the agent sees them through go-plugin: SPIRE
/// v1.15.3's code and message first (`podlistfetcher.go` `podListFetcher.parsePodList`,
/// reported by `k8s.go` `Plugin.attestByPIDReference` as `Unavailable` after
/// `max_poll_attempts`), our detail after "; ". The fastjson texts were produced by fastjson.
#[test]
fn real_plugin_gives_spires_texts_for_unusable_pod_lists() {
    if !require_root() {
        return;
    }
    let k = kubelet();
    let sb = sandbox("plugin-bad-lists");
    let app = sb
        .container(Layout::SystemdContainerd, POD_UID, &app_hex())
        .expect("cgroup");
    let pid = sleeper(&app);
    let mut host = real_host();
    host.load();
    assert_eq!(host.configure(&k.plugin_data), ("OK".into(), String::new()));
    for (what, body, want) in [
        (
            "not JSON",
            &b"<!DOCTYPE html>"[..],
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse number: unexpected char: "<"; unparsed tail: "<!DOCTYPE html>""#,
        ),
        (
            "truncated",
            br#"{"kind":"PodList","items":[{"metadata":"#,
            r#"unable to parse kubelet response: cannot parse JSON: cannot parse object: cannot parse object value: cannot parse array: cannot parse array value: cannot parse object: cannot parse object value: cannot parse empty string; unparsed tail: """#,
        ),
        (
            "an array",
            br#"[{"metadata":{"uid":"x"}}]"#,
            "invalid kubelet response: expected an object; got an array",
        ),
        (
            "no items",
            br#"{"kind":"PodList","apiVersion":"v1","metadata":{}}"#,
            r#"invalid kubelet response: expected an items array; the object has no "items" field"#,
        ),
        (
            "items not an array",
            br#"{"kind":"PodList","items":"none"}"#,
            r#"invalid kubelet response: expected an items array; "items" is a string"#,
        ),
    ] {
        k.sim.set_body(body);
        assert_eq!(
            code(&host.attest(pid)),
            ("Unavailable".into(), want.to_string()),
            "{what}"
        );
    }
    // `"items": null` is a list without pods: a miss, not an unusable list.
    k.sim.set_body(&br#"{"kind":"PodList","items":null}"#[..]);
    assert_eq!(
        code(&host.attest(pid)),
        (
            "DeadlineExceeded".into(),
            "no selectors found after max poll attempts".into()
        )
    );
    host.unload();
    kill_and_reap(pid);
}

#[test]
fn loads_twenty_times_in_a_row_and_exits_cleanly_each_time() {
    if !require_root() {
        return;
    }
    let sb = sandbox("plugin-load");
    let dir = sb
        .container(Layout::SystemdContainerd, POD_A, CID_A)
        .expect("cgroup");
    let pid = sleeper(&dir);
    let mut host = host();
    for round in 0..20 {
        host.load();
        assert_eq!(
            host.configure(""),
            ("OK".into(), String::new()),
            "round {round}"
        );
        assert_eq!(host.attest_ok(pid), expected(&sb, &dir), "round {round}");
        // Deinit reached the attestor (the tracker was released) …
        host.call(json!({"op": "deinit"}));
        let e = host.wait_log("test attestor: tracker released", "released", "true");
        assert_eq!(e["@level"], "info");
        // … and Kill found the process gone by itself.
        let r = host.call(json!({"op": "kill"}));
        assert_eq!(
            r,
            json!({"graceful": true, "exited_logged": true, "exit_error": ""}),
            "round {round}"
        );
    }
    kill_and_reap(pid);
}

#[test]
fn attests_real_processes_in_kubelet_style_cgroups() {
    if !require_root() {
        return;
    }
    let sb = sandbox("plugin-attest");
    let systemd = sb
        .container(Layout::SystemdContainerd, POD_A, CID_A)
        .expect("cgroup");
    let cgroupfs = sb
        .container(Layout::Cgroupfs, POD_B, CID_B)
        .expect("cgroup");
    let a = sleeper(&systemd);
    let b = sleeper(&cgroupfs);
    let mut host = host();
    host.load();
    assert_eq!(host.configure(""), ("OK".into(), String::new()));
    assert_eq!(host.attest_ok(a), expected(&sb, &systemd));
    assert_eq!(host.attest_ok(b), expected(&sb, &cgroupfs));
    assert_eq!(
        host.attest_ok(a)[0],
        format!(
            "cgroup-path:{}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f1c2d3e_4a5b_4c6d_8e7f_a0b1c2d3e4f5.slice/cri-containerd-{CID_A}.scope",
            sb.hierarchy_path(sb.root())
        )
    );
    // A process that moved is answered with its new cgroup.
    Sandbox::move_process(&cgroupfs, a).expect("move");
    assert_eq!(host.attest_ok(a), expected(&sb, &cgroupfs));
    // Errors from the attestor keep their codes through gRPC.
    kill_and_reap(b);
    assert_eq!(
        code(&host.attest(b)),
        ("NotFound".into(), format!("no process with pid {b}"))
    );
    assert_eq!(
        code(&host.attest(0)),
        (
            "InvalidArgument".into(),
            "pid 0 is not a process (the caller is not visible in this PID namespace; run with hostPID)"
                .into()
        )
    );
    host.unload();
    kill_and_reap(a);
}

#[test]
fn configure_errors_and_attest_before_configure() {
    if !require_root() {
        return;
    }
    let mut host = host();
    host.load();
    let me = std::process::id() as i32;
    assert_eq!(
        code(&host.attest(me)),
        ("FailedPrecondition".into(), "not configured".into())
    );
    assert_eq!(
        host.configure("this is not a map"),
        (
            "InvalidArgument".into(),
            "plugin_data must be a map of `key = value` lines: line 1: \"this is not a map\""
                .into()
        )
    );
    assert_eq!(
        host.configure("node_name = \"n1\"\n\n\"kubelet_secure_port\" = 10250"),
        (
            "InvalidArgument".into(),
            "unknown configurations detected: kubelet_secure_port,node_name".into()
        )
    );
    // A failed Configure leaves the plugin unconfigured.
    assert_eq!(
        code(&host.attest(me)),
        ("FailedPrecondition".into(), "not configured".into())
    );
    // A panic in Configure is Internal; the plugin lives on.
    assert_eq!(
        host.configure("panic_on_configure = true"),
        (
            "Internal".into(),
            "Configure panicked: test attestor: panic_on_configure is set".into()
        )
    );
    let r = host.call(json!({"op": "validate", "hcl": "bogus = 1"}));
    assert_eq!(r["code"], "OK");
    assert_eq!(r["valid"], false);
    assert_eq!(
        r["notes"],
        json!(["unknown configurations detected: bogus"])
    );
    let r = host.call(json!({"op": "validate", "hcl": "hold_cgroup_suffix = \"x\""}));
    assert_eq!(
        (r["code"].clone(), r["valid"].clone()),
        (json!("OK"), json!(true))
    );
    assert_eq!(host.configure(""), ("OK".into(), String::new()));
    let r = host.attest(me);
    assert_eq!(r["code"], "OK", "{r}");
    // plugin_data may carry credentials: its text never reaches the logs, valid or not.
    let secret = "s3cr3t-Zq8";
    assert_eq!(
        host.configure(&format!("hold_cgroup_suffix = \"{secret}\"")),
        ("OK".into(), String::new())
    );
    assert_eq!(
        host.configure(&format!("password = \"{secret}\"")).0,
        "InvalidArgument"
    );
    host.wait_log("configured", "plugin_data_bytes", "33");
    host.unload();
    let r = host.call(json!({"op": "count_logs", "value": secret}));
    assert_eq!(r["count"], 0, "plugin_data text leaked into the logs");
    // The two successful Configure calls are logged (with the length only).
    let r = host.call(json!({"op": "count_logs", "value": "\"@message\":\"configured\""}));
    assert_eq!(r["count"], 2);
}

#[test]
fn handler_panic_is_internal_and_the_plugin_keeps_serving() {
    if !require_root() {
        return;
    }
    let sb = sandbox("plugin-panic");
    let bad = sb
        .container(Layout::SystemdContainerd, POD_A, CID_PANIC)
        .expect("cgroup");
    let good = sb
        .container(Layout::SystemdContainerd, POD_A, CID_A)
        .expect("cgroup");
    let (p_bad, p_good) = (sleeper(&bad), sleeper(&good));
    let mut host = host();
    host.load();
    let hcl = format!("panic_cgroup_suffix = \"cri-containerd-{CID_PANIC}.scope\"");
    assert_eq!(host.configure(&hcl), ("OK".into(), String::new()));
    for _ in 0..3 {
        assert_eq!(
            code(&host.attest(p_bad)),
            (
                "Internal".into(),
                format!(
                    "Attest panicked: test attestor: pid {p_bad} is in {}, which ends with panic_cgroup_suffix",
                    sb.hierarchy_path(&bad)
                )
            )
        );
        assert_eq!(host.attest_ok(p_good), expected(&sb, &good));
    }
    let e = host.wait_log(
        "plugin handler panicked; answering Internal",
        "rpc",
        "Attest",
    );
    assert_eq!(e["@level"], "error");
    let e = host.wait_log("panic", "", "");
    assert_eq!(e["@level"], "error");
    assert!(
        e["location"]
            .as_str()
            .is_some_and(|l| l.contains("plugin_attestor.rs")),
        "{e}"
    );
    host.unload();
    kill_and_reap(p_bad);
    kill_and_reap(p_good);
}

#[test]
fn cancelled_attest_reaches_the_attestor() {
    if !require_root() {
        return;
    }
    let sb = sandbox("plugin-cancel");
    let hold = sb
        .container(Layout::Cgroupfs, POD_B, CID_HOLD)
        .expect("cgroup");
    let good = sb
        .container(Layout::Cgroupfs, POD_B, CID_B)
        .expect("cgroup");
    let (p_hold, p_good) = (sleeper(&hold), sleeper(&good));
    let mut host = host();
    host.load();
    assert_eq!(
        host.configure(&format!("hold_cgroup_suffix = \"{CID_HOLD}\"")),
        ("OK".into(), String::new())
    );
    // The host gives up after 300 ms, as an agent does when the Workload API client leaves.
    let r = host.call(json!({"op": "attest", "pid": p_hold, "timeout_ms": 300}));
    assert_eq!(r["code"], "DeadlineExceeded", "{r}");
    // The plugin saw the cancellation and the attestor's future returned because of it.
    let e = host.wait_log("attest cancelled by the caller", "pid", &p_hold.to_string());
    assert_eq!(e["@level"], "debug");
    assert_eq!(e["@module"], "agent.attestor-test-plugin");
    assert_eq!(host.attest_ok(p_good), expected(&sb, &good));
    host.unload();
    kill_and_reap(p_hold);
    kill_and_reap(p_good);
}

/// What the agent's metrics host service receives, through go-plugin's broker: per status
/// label, `IncrCounter [attestor attest]` values that sum to the Attests with that status
/// (the plugin sends one per status per flush), and one `MeasureSince [attestor attest
/// latency]` per Attest whose `time` makes the agent record the attestation's latency, not
/// the time the sample waited in the plugin for a slow agent.
#[test]
fn metrics_reach_the_agents_host_service() {
    if !require_root() {
        return;
    }
    let mut host = host();
    host.load();
    host.wait_log("metrics host service connected", "", "");
    assert_eq!(host.configure(""), ("OK".into(), String::new()));
    let me = std::process::id() as i32;
    // A slow agent: the plugin's first flush (one Attest: IncrCounter + MeasureSince) is
    // held in the host service…
    let held = Duration::from_millis(500);
    assert_eq!(
        host.call(json!({"op": "metrics_hold", "value": "on"}))["ok"],
        true
    );
    assert_eq!(host.attest(me)["code"], "OK");
    let r = host.call(json!({"op": "metrics", "entered": 2, "timeout_ms": 10_000}));
    assert_eq!(r["entered"], 2, "the first flush reached the agent: {r}");
    // …while more Attests wait in the plugin; then the agent answers.
    for _ in 0..3 {
        assert_eq!(host.attest(me)["code"], "OK");
    }
    for _ in 0..2 {
        assert_eq!(host.attest(0)["code"], "InvalidArgument");
    }
    std::thread::sleep(held);
    assert_eq!(
        host.call(json!({"op": "metrics_hold", "value": "off"}))["ok"],
        true
    );
    let expected = 2 + 2 + 5;
    let r = host.call(json!({"op": "metrics", "n": expected, "timeout_ms": 10_000}));
    assert_eq!(r["calls"].as_array().map(Vec::len), Some(expected), "{r}");
    // Nothing more arrives (each Attest counted once).
    std::thread::sleep(Duration::from_millis(300));
    let r = host.call(json!({"op": "metrics", "timeout_ms": 0}));
    let calls = r["calls"].as_array().expect("calls").clone();
    assert_eq!(calls.len(), expected, "{r}");

    // Per status: (sum of IncrCounter values, IncrCounter calls, MeasureSince calls).
    let mut by_status = std::collections::BTreeMap::<String, (f64, usize, usize)>::new();
    for c in &calls {
        let status = c["labels"]["status"]
            .as_str()
            .expect("status label")
            .to_string();
        let e = by_status.entry(status).or_default();
        match c["method"].as_str() {
            Some("IncrCounter") => {
                assert_eq!(c["key"], json!(["attestor", "attest"]), "{c}");
                e.0 += c["val"].as_f64().expect("val");
                e.1 += 1;
            }
            Some("MeasureSince") => {
                assert_eq!(c["key"], json!(["attestor", "attest", "latency"]), "{c}");
                assert_eq!(c["time_set"], true, "{c}");
                // The agent's receipt − time: the attestation plus the transport. Had
                // `time` been fixed when the Attest ended, the samples that waited for the
                // held flush would show more than `held`.
                let us = c["agent_latency_us"].as_i64().expect("agent_latency_us");
                assert!(
                    (0..200_000).contains(&us),
                    "the agent would record {us} µs: {c}"
                );
                e.2 += 1;
            }
            _ => panic!("unexpected call {c}"),
        }
    }
    // OK: 1 in the held flush, then 3 aggregated into one call; InvalidArgument: 2 in one.
    assert_eq!(
        by_status,
        [
            ("InvalidArgument".to_string(), (2.0, 1, 2)),
            ("OK".to_string(), (4.0, 2, 4)),
        ]
        .into_iter()
        .collect()
    );
    // Deinit (the agent unloads us next) waits for the flush in flight, here held for
    // 200 ms by the agent, and sends what is still pending, before it answers. The test
    // attestor's first Deinit releases its tracker, which takes about as long: that one
    // goes first, and the Attests after it answer FailedPrecondition.
    let r = host.call(json!({"op": "deinit"}));
    assert_eq!(code(&r), ("OK".into(), String::new()), "{r}");
    assert_eq!(host.configure(""), ("OK".into(), String::new()));
    let r = host.call(json!({"op": "metrics_hold", "value": "on", "timeout_ms": 200}));
    assert_eq!(r["ok"], true);
    assert_eq!(host.attest(me)["code"], "FailedPrecondition");
    let r = host.call(json!({"op": "metrics", "entered": expected + 2, "timeout_ms": 10_000}));
    assert_eq!(
        r["entered"],
        expected + 2,
        "the flush reached the agent: {r}"
    );
    assert_eq!(host.attest(me)["code"], "FailedPrecondition");
    let r = host.call(json!({"op": "deinit"}));
    assert_eq!(code(&r), ("OK".into(), String::new()), "{r}");
    let r = host.call(json!({"op": "metrics", "timeout_ms": 0}));
    let calls = r["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), expected + 2 + 2, "{r}");
    assert!(
        calls[expected..]
            .iter()
            .all(|c| c["labels"]["status"] == "FailedPrecondition"),
        "{r}"
    );
    host.unload();
}

#[test]
fn runs_with_only_the_capabilities_deploy_grants() {
    if !require_root() {
        return;
    }
    let sb = sandbox("plugin-caps");
    let dir = sb
        .container(Layout::SystemdContainerd, POD_A, CID_A)
        .expect("cgroup");
    let pid = sleeper(&dir);
    let mut host = host_with_caps(",+bpf,+perfmon,+dac_read_search");
    host.load();
    // eBPF loaded (the tracker did not fall back).
    host.wait_log("test attestor: tracker started", "ebpf", "true");
    assert_eq!(host.configure(""), ("OK".into(), String::new()));
    assert_eq!(host.attest_ok(pid), expected(&sb, &dir));
    host.unload();
    kill_and_reap(pid);
}

#[test]
fn checksum_mismatch_is_refused_before_start() {
    if !require_root() {
        return;
    }
    let mut host = host();
    let r = host.call(json!({"op": "load", "checksum": "00".repeat(32)}));
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"], "checksums did not match");
}

/// Spawns `bin` as a plugin 20 times; time from spawn to its handshake line, sorted.
fn time_to_handshake(bin: &Path) -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let mut child = Command::new(bin)
                .env("WorkloadAttestor", "WorkloadAttestor")
                .env("PLUGIN_PROTOCOL_VERSIONS", "1")
                .env_remove("PLUGIN_CLIENT_CERT")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn plugin");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("handshake");
            let d = t.elapsed();
            assert!(line.starts_with("1|1|unix|/"), "{line}");
            signal(&child, "TERM");
            let _ = child.wait();
            d
        })
        .collect();
    v.sort();
    v
}

/// Back-to-back `Attest` calls per run of the plugin bench.
const RUNS: [u64; 3] = [5000, 20_000, 80_000];

/// `cargo xtask bench plugin` (release): the real `attestor` binary loaded by go-plugin,
/// configured against the kubelet simulator, attesting a process in the cart pod.
#[test]
#[ignore = "benchmark: run explicitly (numbers in BENCHMARKS.md)"]
fn bench_attest_round_trip_and_start_to_handshake() {
    if !require_root() {
        return;
    }
    // Start to handshake of the real binary: the eBPF tracker is loaded, attached and
    // seeded before the handshake line.
    let starts = time_to_handshake(&attestor_bin());
    let k = kubelet();
    let sb = sandbox("plugin-bench");
    let dir = sb
        .container(Layout::SystemdContainerd, POD_UID, &app_hex())
        .expect("cgroup");
    let pid = sleeper(&dir);
    let mut host = real_host();
    // The host's metrics service keeps sums per metric, as the agent's sinks do, rather
    // than every call (tests/go-host: metricsRecorder.aggregate).
    let load = host.call(json!({"op": "load", "metrics_sink": "aggregate"}));
    assert_eq!(load["ok"], true, "{load}");
    assert_eq!(host.configure(&k.plugin_data), ("OK".into(), String::new()));
    // The kubelet's list stays cached for the run (warm): poll interval far longer than it.
    let warm = k.plugin_data.replace("\"50ms\"", "\"1h\"");
    assert_eq!(host.configure(&warm), ("OK".into(), String::new()));
    assert_eq!(
        host.attest_ok(pid),
        expected_app_selectors().into_iter().collect::<Vec<_>>()
    );
    // Bursts of 5,000 and 20,000 back-to-back calls (under 1 s, ~2 s: shorter than the
    // plugin's longest metrics delay, so its flush follows the burst), and 80,000 (~9 s:
    // sustained saturation, so flushes happen while calls are measured). `metrics_calls`:
    // RPCs the host service got meanwhile; CPU: of the host, which also serves the metrics,
    // and of the plugin, during the calls. A pause before each run lets the previous run's
    // flush end first.
    let with: Vec<Value> = RUNS
        .map(|n| {
            std::thread::sleep(Duration::from_secs(2));
            host.call(json!({"op": "bench", "pid": pid, "n": n}))
        })
        .into();
    let h = host.call(json!({"op": "bench", "mode": "health", "n": 5000}));
    assert_eq!(h["code"], "OK", "{h}");
    println!(
        "start→handshake, attestor binary incl. eBPF load, attach and /proc seed (20 starts): p50 {:?}, max {:?}",
        starts[starts.len() / 2],
        starts[starts.len() - 1]
    );
    println!(
        "go-plugin Client() incl. SHA-256 of the binary: {} µs; load incl. Dispense+Init: {} µs",
        load["connect_us"], load["load_us"]
    );
    for r in &with {
        assert_eq!(r["code"], "OK", "{r}");
        println!(
            "Attest round trip, warm, metrics on, n={}: p50 {} µs, p99 {} µs, max {} µs; {} metrics RPCs to the host in the {} ms measured; CPU ms host {}, plugin {}",
            r["n"],
            r["p50_us"],
            r["p99_us"],
            r["max_us"],
            r["metrics_calls"],
            r["elapsed_ms"],
            r["host_cpu_ms"],
            r["plugin_cpu_ms"]
        );
    }
    println!(
        "Health/Check round trip (transport baseline), n={}: p50 {} µs, p99 {} µs, max {} µs",
        h["n"], h["p50_us"], h["p99_us"], h["max_us"]
    );
    host.unload();
    // The same without the metrics host service (no metrics recorded or sent).
    let r = host.call(json!({"op": "load", "no_metrics": true}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(host.configure(&warm), ("OK".into(), String::new()));
    for n in RUNS {
        std::thread::sleep(Duration::from_secs(2));
        let r = host.call(json!({"op": "bench", "pid": pid, "n": n}));
        assert_eq!(r["code"], "OK", "{r}");
        assert_eq!(r["metrics_calls"], 0, "{r}");
        println!(
            "Attest round trip without metrics, n={}: p50 {} µs, p99 {} µs, max {} µs; {} ms measured; CPU ms host {}, plugin {}",
            r["n"],
            r["p50_us"],
            r["p99_us"],
            r["max_us"],
            r["elapsed_ms"],
            r["host_cpu_ms"],
            r["plugin_cpu_ms"]
        );
    }
    host.unload();
    println!("kubelet requests during the run: {}", k.sim.request_count());
    kill_and_reap(pid);
}

/// A go-plugin host with AutoMTLS on (SPIRE never turns it on: pkg/common/catalog/external.go,
/// `loadExternal`) loading the shipped binary: the plugin refuses before the handshake, says
/// why in the host's log, and binds nothing, so there is no plaintext server to reach.
#[test]
fn automtls_through_go_plugin_is_refused_before_the_handshake_never_served_in_plaintext() {
    if !require_root() {
        return;
    }
    // The plugin's socket would go in $TMPDIR (go-plugin 1.0.1 sets no socket dir).
    let sockets = TempDir::new("automtls-sockets");
    let mut cmd = Command::new(go_host());
    cmd.env("TMPDIR", sockets.path());
    let mut host = host_in(cmd, &attestor_bin());
    let r = host.call(json!({"op": "load", "automtls": true}));
    assert_eq!(r["ok"], false, "{r}");
    // No handshake line came. go-plugin 1.0.1 says so in one of two ways, whichever of its
    // select cases wins: the process exited, or stdout closed (an empty "line").
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error == "plugin exited before we could connect"
            || error.starts_with("Unrecognized remote plugin message: \n"),
        "{r}"
    );
    // The plugin's stderr, relayed by go-plugin into the host's log at the plugin's level.
    let e = host.wait_log(AUTO_MTLS_REFUSED, "", "");
    assert_eq!(e["@level"], "error", "{e}");
    host.wait_log("plugin process exited", "error", "exit status 1");
    let bound: Vec<_> = std::fs::read_dir(sockets.path())
        .expect("socket dir")
        .collect();
    assert!(bound.is_empty(), "the plugin bound {bound:?}");
    // The same host and binary without AutoMTLS load (handshake, Init) and unload: only
    // AutoMTLS is refused.
    host.load();
    host.unload();
}

/// The plugin started directly with the cookie (no host): stdout, stderr and the child.
fn spawn_plugin(env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(PLUGIN);
    cmd.env("WorkloadAttestor", "WorkloadAttestor")
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env_remove("PLUGIN_CLIENT_CERT")
        .env_remove("PLUGIN_UNIX_SOCKET_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn the plugin")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig}");
}

#[test]
fn without_the_cookie_it_explains_and_exits_1() {
    let out = Command::new(PLUGIN)
        .env_remove("WorkloadAttestor")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("This binary is a plugin."), "{err}");
    // A wrong cookie value is no cookie.
    let out = Command::new(PLUGIN)
        .env("WorkloadAttestor", "workloadattestor")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

/// Whatever `PLUGIN_CLIENT_CERT` holds (a certificate go-plugin would make, or junk), the
/// plugin exits 1 with one error line before it binds or prints anything; an empty value is
/// no AutoMTLS (go-plugin's own check) and the plugin serves.
#[test]
fn automtls_with_any_client_certificate_is_refused_not_served_in_plaintext() {
    let ca = attestor_tests::kubelet_sim::TestCa::new("go-plugin");
    let cert = ca.client_cert("localhost", attestor_tests::kubelet_sim::Validity::Valid);
    let dir = TempDir::new("automtls-direct");
    let socket_dir = dir.path().to_str().expect("utf8");
    for client_cert in [cert.cert_pem.as_str(), "-----BEGIN CERTIFICATE-----\n"] {
        let child = spawn_plugin(&[
            ("PLUGIN_CLIENT_CERT", client_cert),
            ("PLUGIN_UNIX_SOCKET_DIR", socket_dir),
        ]);
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty(), "no handshake line");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one error line: {err}");
        let line: Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("hclog JSON on stderr ({e}): {err}"));
        assert_eq!(line["@level"], "error");
        assert_eq!(line["@message"], AUTO_MTLS_REFUSED);
        let bound: Vec<_> = std::fs::read_dir(dir.path()).expect("socket dir").collect();
        assert!(bound.is_empty(), "the plugin bound {bound:?}");
    }
    let mut child = spawn_plugin(&[
        ("PLUGIN_CLIENT_CERT", ""),
        ("PLUGIN_UNIX_SOCKET_DIR", socket_dir),
    ]);
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("handshake");
    assert!(line.starts_with("1|1|unix|/"), "{line}");
    signal(&child, "TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
}

#[test]
fn handshake_is_the_only_stdout_line_sigint_is_ignored_sigterm_cleans_up() {
    if !require_root() {
        return;
    }
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sockdir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut child = spawn_plugin(&[("PLUGIN_UNIX_SOCKET_DIR", dir.to_str().expect("utf8"))]);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("handshake");
    let fields: Vec<&str> = line.trim_end_matches('\n').split('|').collect();
    assert_eq!(fields.len(), 6, "{line:?}");
    assert_eq!(fields[..3], ["1", "1", "unix"]);
    assert_eq!(fields[4..], ["grpc", ""]);
    let socket = PathBuf::from(fields[3]);
    assert_eq!(socket.parent(), Some(dir.as_path()));
    assert!(
        socket
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("plugin"))
    );
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
    // SIGINT first: if it were not ignored the exit status would say so.
    signal(&child, "INT");
    signal(&child, "TERM");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("stdout");
    assert_eq!(rest, "", "nothing after the handshake line");
    assert!(!socket.exists(), "socket removed at exit");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    for l in err.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        let ts = v["@timestamp"].as_str().expect("@timestamp");
        // 2006-01-02T15:04:05.000000Z
        assert_eq!(ts.len(), 27, "{ts}");
        assert_eq!(&ts[19..20], ".");
        assert!(ts.ends_with('Z'));
    }
    std::fs::remove_dir(&dir).expect("rmdir");
}

#[test]
fn serves_over_tcp_when_no_unix_socket_is_possible() {
    if !require_root() {
        return;
    }
    // go-plugin passes its own environment through: the plugin cannot create its socket in
    // a missing directory and falls back to 127.0.0.1 in [PLUGIN_MIN_PORT, PLUGIN_MAX_PORT].
    let mut cmd = Command::new(go_host());
    cmd.env("PLUGIN_UNIX_SOCKET_DIR", "/nonexistent/attestor-sockets");
    let mut host = host_in(cmd, Path::new(PLUGIN));
    host.load();
    let e = host.wait_log("plugin serving", "", "");
    let addr = e["address"].as_str().unwrap_or_default();
    assert!(addr.starts_with("tcp:127.0.0.1:"), "{e}");
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!((10000..=25000).contains(&port), "{port}");
    assert_eq!(host.configure(""), ("OK".into(), String::new()));
    assert_eq!(host.attest(std::process::id() as i32)["code"], "OK");
    host.unload();
}

/// What go-plugin 1.0.1 never calls but newer hosts (SPIRE's 1.6–1.8) do: GRPCStdio, and
/// the health service. Talks to the plugin directly with tonic clients.
#[test]
fn stdio_stream_stays_open_until_shutdown_and_health_is_serving() {
    use attestor::plugin::proto::goplugin::grpc_controller_client::GrpcControllerClient;
    use attestor::plugin::proto::goplugin::grpc_stdio_client::GrpcStdioClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    if !require_root() {
        return;
    }
    let mut child = spawn_plugin(&[]);
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("handshake");
    let socket = attestor_tests::handshake_socket(&line);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = attestor_tests::plugin_channel(socket).await;
        let mut health = HealthClient::new(channel.clone());
        for service in ["plugin", ""] {
            let r = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
        }
        let mut stdio = GrpcStdioClient::new(channel.clone())
            .stream_stdio(())
            .await
            .expect("StreamStdio")
            .into_inner();
        GrpcControllerClient::new(channel)
            .shutdown(attestor::plugin::proto::goplugin::Empty {})
            .await
            .expect("Shutdown");
        // The stream carried nothing and ends cleanly once the plugin shuts down.
        assert_eq!(stdio.message().await.expect("clean end of stream"), None);
    });
    assert_eq!(child.wait().expect("wait").code(), Some(0));
}

#[test]
fn reconfigure_while_attests_are_in_flight() {
    if !require_root() {
        return;
    }
    let sb = sandbox("plugin-reconf");
    let hold = sb
        .container(Layout::SystemdContainerd, POD_B, CID_HOLD)
        .expect("cgroup");
    let good = sb
        .container(Layout::SystemdContainerd, POD_A, CID_A)
        .expect("cgroup");
    let (p_hold, p_good) = (sleeper(&hold), sleeper(&good));
    let mut host = host();
    host.load();
    let hcl = format!("hold_cgroup_suffix = \"cri-containerd-{CID_HOLD}.scope\"");
    assert_eq!(host.configure(&hcl), ("OK".into(), String::new()));
    host.call(json!({"op": "attest_async", "id": "held", "pid": p_hold, "timeout_ms": 60_000}));
    host.wait_log(
        "test attestor: holding until cancelled",
        "pid",
        &p_hold.to_string(),
    );
    // SIGUSR1-style reconfigure while that call is in flight: not blocked by it, and the
    // next calls see the new configuration.
    assert_eq!(host.configure(""), ("OK".into(), String::new()));
    assert_eq!(host.attest_ok(p_hold), expected(&sb, &hold));
    // Concurrent calls all get their own answer.
    for i in 0..8 {
        let pid = if i % 2 == 0 { p_good } else { p_hold };
        host.call(json!({"op": "attest_async", "id": format!("c{i}"), "pid": pid}));
    }
    for i in 0..8 {
        let r = host.call(json!({"op": "await", "id": format!("c{i}")}));
        let dir = if i % 2 == 0 { &good } else { &hold };
        assert_eq!(r["code"], "OK", "c{i}: {r}");
        assert_eq!(r["selectors"], json!(expected(&sb, dir)), "c{i}");
    }
    // Unload with the first call still held: go-plugin closes its connection ("transport is
    // closing" for the caller), which cancels the call; the plugin still exits by itself.
    host.call(json!({"op": "deinit"}));
    let r = host.call(json!({"op": "kill"}));
    assert_eq!(
        r,
        json!({"graceful": true, "exited_logged": true, "exit_error": ""})
    );
    let r = host.call(json!({"op": "await", "id": "held"}));
    assert_eq!(r["code"], "Unavailable", "{r}");
    kill_and_reap(p_hold);
    kill_and_reap(p_good);
}
