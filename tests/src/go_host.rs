//! The Go go-plugin host (`tests/go-host`): HashiCorp's real go-plugin client (Debian's
//! 1.0.1), loading a plugin binary exactly as the SPIRE agent loads `plugin_cmd` (magic
//! cookie, gRPC only, no AutoMTLS, SHA-256 checksum, `broker.Accept(1)` with the metrics
//! host service, then Init → Configure → Attest → Deinit → Kill). `AttestReference` (the
//! Broker API's RPC) is called as SPIRE v1.15.3's agent calls it: raw
//! ([`GoHost::attest_reference`]) or through the agent's fallback wrapper
//! ([`GoHost::agent_attest_reference`], [`GoHost::agent_attest`]), with a [`Reference`]
//! and the broker caller IDs as `spire-agent-broker-caller-id` metadata.
//!
//! [`GoHost::binary`] builds it with `go` (GOPATH mode against `/usr/share/gocode`; `cargo
//! xtask setup` installs golang-go and go-plugin), once per test process; [`build_go_program`]
//! does the build for the other Go programs under `tests/` too. A [`GoHost`] is
//! one running host: one JSON command per stdin line in, one JSON result per stdout line
//! out. Its log (hclog JSON: the host's and the plugin's relayed stderr) goes to a file,
//! printed if the test fails.
//!
//! Used by `plugin.rs` (the plugin surface) and `cri_fast_path.rs` (the CRI fast path
//! through the plugin). Both pass their `CARGO_TARGET_TMPDIR` (set for integration tests
//! only), under which the host is built and logs, in `go-host/`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::wait_for;

/// The services a plugin built on `attestor::plugin` answers Init with.
pub const SERVICES: [&str; 2] = [
    "spire.plugin.agent.workloadattestor.v1.WorkloadAttestor",
    "spire.service.common.config.v1.Config",
];

/// A running Go host (see the module doc).
pub struct GoHost {
    child: Child,
    /// `None` once closed (the host then unloads its plugin and exits).
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    log: PathBuf,
}

impl std::fmt::Debug for GoHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoHost")
            .field("pid", &self.child.id())
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl GoHost {
    /// The host binary, `<tmp>/go-host/attestor-go-host`, built on the first call in this
    /// process (later calls return the same path, whatever their `tmp`), by
    /// [`build_go_program`].
    pub fn binary(tmp: &Path) -> &'static Path {
        static HOST: OnceLock<PathBuf> = OnceLock::new();
        HOST.get_or_init(|| build_go_program("go-host", &tmp.join("go-host"), "attestor-go-host"))
    }

    /// Starts `cmd` (the [`GoHost::binary`], or a wrapper such as `setpriv` that runs it as
    /// its last argument) with `-plugin <plugin>`. The log goes to a new file under
    /// `<tmp>/go-host/logs`, removed when the host is dropped unless the test is failing.
    pub fn start(mut cmd: Command, plugin: &Path, tmp: &Path) -> GoHost {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tmp.join("go-host/logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!(
            "host-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log).expect("host log file");
        let mut child = cmd
            .arg("-plugin")
            .arg(plugin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("start the Go host");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        GoHost {
            child,
            stdin: Some(stdin),
            stdout,
            log,
        }
    }

    /// One command, its result. Blocks the thread: called from a task of a multi-threaded
    /// tokio runtime, the worker's other tasks (a kubelet simulator the plugin polls) move
    /// to another thread meanwhile (`block_in_place`, a plain call outside a runtime; a
    /// current-thread runtime cannot serve both and panics).
    pub fn call(&mut self, cmd: Value) -> Value {
        tokio::task::block_in_place(|| {
            let stdin = self.stdin.as_mut().expect("host stdin open");
            writeln!(stdin, "{cmd}").expect("write to the Go host");
            let mut line = String::new();
            self.stdout.read_line(&mut line).expect("read the Go host");
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{cmd}: bad reply {line:?}: {e}"))
        })
    }

    /// `load` (Client, Dispense, Init); asserts the Init answer ([`SERVICES`]) and the
    /// negotiated protocol version (1). The host's answer.
    pub fn load(&mut self) -> Value {
        let r = self.call(json!({"op": "load"}));
        assert_eq!(r["ok"], true, "load: {r}");
        assert_eq!(r["plugin_services"], json!(SERVICES), "Init answer");
        assert_eq!(r["negotiated"], 1);
        r
    }

    /// `Configure(hcl)`: the gRPC code and message ([`code`]).
    pub fn configure(&mut self, hcl: &str) -> (String, String) {
        code(&self.call(json!({"op": "configure", "hcl": hcl})))
    }

    /// `Attest(pid)`: the host's answer (`code`, `message`, `selectors`).
    pub fn attest(&mut self, pid: i32) -> Value {
        self.call(json!({"op": "attest", "pid": pid}))
    }

    /// `Attest(pid)`: the selector values, or the gRPC code and message.
    pub fn attest_result(&mut self, pid: i32) -> Result<Vec<String>, (String, String)> {
        selectors(&self.attest(pid))
    }

    /// `Attest(pid)`, asserted `OK`: the selector values.
    pub fn attest_ok(&mut self, pid: i32) -> Vec<String> {
        let r = self.attest(pid);
        assert_eq!(code(&r), ("OK".into(), String::new()), "attest {pid}: {r}");
        serde_json::from_value(r["selectors"].clone()).expect("selectors")
    }

    /// The raw `AttestReference(r)` RPC, with one `spire-agent-broker-caller-id` metadata
    /// value per `callers` entry (the agent sends one for a Broker API call, none otherwise):
    /// the selector values, or the gRPC code and message.
    pub fn attest_reference(
        &mut self,
        r: &Reference,
        callers: &[&str],
    ) -> Result<Vec<String>, (String, String)> {
        selectors(&self.reference_call("attest_reference", r, callers))
    }

    /// `AttestReference(r)` as the agent's `V1.AttestReference` makes it
    /// (pkg/agent/plugin/workloadattestor/v1.go): on `Unimplemented`, a PID reference falls
    /// back to `Attest(pid)`; any other reference returns the `Unimplemented`.
    pub fn agent_attest_reference(
        &mut self,
        r: &Reference,
        callers: &[&str],
    ) -> Result<Vec<String>, (String, String)> {
        selectors(&self.reference_call("agent_attest_reference", r, callers))
    }

    /// `Attest(pid)` as the agent's `V1.Attest` makes it: on `Unimplemented`,
    /// `AttestReference` with the PID packed as a `WorkloadPIDReference`.
    pub fn agent_attest(&mut self, pid: i32) -> Result<Vec<String>, (String, String)> {
        selectors(&self.call(json!({"op": "agent_attest", "pid": pid})))
    }

    /// The host's whole answer to `op` (`attest_reference`, `agent_attest_reference`) for
    /// `r`: `code`, `message`, `selectors`, plus `calls` (the RPCs made, in order, e.g.
    /// `["AttestReference", "Attest"]` for the agent's fallback) and `us` (their time).
    pub fn reference_call(&mut self, op: &str, r: &Reference, callers: &[&str]) -> Value {
        let mut cmd = r.to_json();
        cmd["op"] = op.into();
        cmd["caller_ids"] = json!(callers);
        self.call(cmd)
    }

    /// `n` concurrent `AttestReference(r)` calls, released together (raw, or with `agent`
    /// through the agent's wrapper): each call's result, and the time until the last one
    /// answered.
    pub fn attest_reference_many(
        &mut self,
        r: &Reference,
        callers: &[&str],
        n: usize,
        agent: bool,
    ) -> (Vec<AttestResult>, Duration) {
        let mut cmd = r.to_json();
        cmd["op"] = "attest_reference_many".into();
        cmd["caller_ids"] = json!(callers);
        cmd["n"] = n.into();
        cmd["agent"] = agent.into();
        let a = self.call(cmd);
        let results = a["results"]
            .as_array()
            .unwrap_or_else(|| panic!("attest_reference_many: {a}"))
            .iter()
            .map(selectors)
            .collect();
        let us = a["elapsed_us"].as_u64().expect("elapsed_us");
        (results, Duration::from_micros(us))
    }

    /// Starts `AttestReference(r)` (raw, or with `agent` through the agent's wrapper) in the
    /// background as call `id`, for [`GoHost::await_call`].
    pub fn attest_reference_async(
        &mut self,
        id: &str,
        r: &Reference,
        callers: &[&str],
        agent: bool,
    ) {
        let mut cmd = r.to_json();
        cmd["op"] = "attest_reference_async".into();
        cmd["caller_ids"] = json!(callers);
        cmd["agent"] = agent.into();
        cmd["id"] = id.into();
        let a = self.call(cmd);
        assert_eq!(a["started"], id, "attest_reference_async: {a}");
    }

    /// The result of call `id` (`attest_async`, `attest_reference_async`), once it answered.
    pub fn await_call(&mut self, id: &str) -> Result<Vec<String>, (String, String)> {
        selectors(&self.call(json!({"op": "await", "id": id})))
    }

    /// Waits (10 s at most) for a log entry with `message` whose `field` is `value` (`""`:
    /// any entry with that message); asserts one came, and returns it.
    pub fn wait_log(&mut self, message: &str, field: &str, value: &str) -> Value {
        let r = self.call(json!({
            "op": "wait_log", "message": message, "field": field, "value": value,
            "timeout_ms": 10_000
        }));
        assert_eq!(
            r["found"], true,
            "log {message:?} {field}={value} not seen: {r}"
        );
        r["entry"].clone()
    }

    /// Deinit + Kill; asserts the plugin exited by itself with status 0 (no SIGKILL).
    pub fn unload(&mut self) {
        let r = self.call(json!({"op": "deinit"}));
        assert_eq!(code(&r), ("OK".into(), String::new()), "deinit: {r}");
        let r = self.call(json!({"op": "kill"}));
        assert_eq!(
            r,
            json!({"graceful": true, "exited_logged": true, "exit_error": ""}),
            "the plugin must exit on Shutdown, with status 0, before go-plugin's 2 s SIGKILL"
        );
    }
}

/// Builds the Go program in `tests/<dir>` (package main) into `<work>/<name>` and returns
/// that path: GOPATH mode (`GO111MODULE=off`) against Debian's `/usr/share/gocode`, no
/// network, with its GOPATH and build cache under `work`. Panics if `go` is missing or the
/// build fails.
///
/// `go build` writes a file of its own and renames it into place: another process (another
/// test binary, another `cargo test`) may be running the previous build, which an overwrite in
/// place would fail on (`text file busy`) or corrupt.
pub fn build_go_program(dir: &str, work: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let bin = work.join(name);
    let building = work.join(format!("{name}.{}.tmp", std::process::id()));
    std::fs::create_dir_all(work).unwrap_or_else(|e| panic!("creating {}: {e}", work.display()));
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&building)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:/usr/share/gocode", work.join("gopath").display()),
        )
        .env("GOCACHE", work.join("cache"))
        .env("GOFLAGS", "")
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run `go` ({e}): run `cargo xtask setup` (installs golang-go and the Go packages the tests build against)")
        });
    assert!(status.success(), "go build of tests/{dir} failed");
    std::fs::rename(&building, &bin)
        .unwrap_or_else(|e| panic!("installing {}: {e}", bin.display()));
    bin
}

impl Drop for GoHost {
    fn drop(&mut self) {
        // Closing stdin makes the host Kill() a still-loaded plugin and exit, so a failed
        // test leaves no orphaned plugin behind; SIGKILL only if it does not.
        self.stdin = None;
        if wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- Go host log ({}), last 200 lines:", self.log.display());
            for l in &lines[lines.len().saturating_sub(200)..] {
                eprintln!("{l}");
            }
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The gRPC code and message of a host answer (`"?"` for a missing field).
pub fn code(r: &Value) -> (String, String) {
    (
        r["code"].as_str().unwrap_or("?").to_string(),
        r["message"].as_str().unwrap_or("?").to_string(),
    )
}

/// An Attest or AttestReference outcome: the selector values, or the gRPC code and message.
pub type AttestResult = Result<Vec<String>, (String, String)>;

/// The selector values of an attest-shaped host answer (`code` OK), or its code and message.
pub fn selectors(r: &Value) -> Result<Vec<String>, (String, String)> {
    match code(r) {
        (c, _) if c == "OK" => Ok(serde_json::from_value(r["selectors"].clone())
            .unwrap_or_else(|e| panic!("selectors of {r}: {e}"))),
        other => Err(other),
    }
}

/// The type URL of go-spiffe's `spiffe.broker.WorkloadPIDReference` packed in an `Any`.
pub const PID_REFERENCE_TYPE_URL: &str = "type.googleapis.com/spiffe.broker.WorkloadPIDReference";
/// The type URL of go-spiffe's `spiffe.broker.KubernetesObjectReference` packed in an `Any`.
pub const OBJECT_REFERENCE_TYPE_URL: &str =
    "type.googleapis.com/spiffe.broker.KubernetesObjectReference";

/// A workload reference for `AttestReference`, packed by the host into a
/// `google.protobuf.Any` as the agent packs it (`anypb.New`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `WorkloadPIDReference { pid }`.
    Pid(i32),
    /// `KubernetesObjectReference { type: { plural, group }, key: { namespace, name }, uid }`:
    /// the type always present, the key only if `namespace` or `name` is non-empty (a
    /// UID-only reference has none). SPIRE's group for core resources is `"core"`. Other
    /// shapes: [`Reference::object_parts`].
    Object {
        plural: String,
        group: String,
        namespace: String,
        name: String,
        uid: String,
    },
    /// Any `Any`: an unsupported type URL, a malformed value.
    Raw { type_url: String, value: Vec<u8> },
    /// No reference at all (`AttestReferenceRequest {}`).
    Missing,
}

impl Reference {
    /// An object reference ([`Reference::Object`]).
    pub fn object(plural: &str, group: &str, namespace: &str, name: &str, uid: &str) -> Reference {
        Reference::Object {
            plural: plural.into(),
            group: group.into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// A pod by namespace and name (type `pods`, group `core`).
    pub fn pod(namespace: &str, name: &str) -> Reference {
        Reference::object("pods", "core", namespace, name, "")
    }

    /// A `KubernetesObjectReference` with its `type` (plural, group) and `key` (namespace,
    /// name) messages present (even empty) or absent as given, encoded here ([`Reference::Raw`]).
    pub fn object_parts(
        object_type: Option<(&str, &str)>,
        key: Option<(&str, &str)>,
        uid: &str,
    ) -> Reference {
        let pair = |(a, b): (&str, &str)| {
            let mut m = Vec::new();
            proto_bytes(&mut m, 1, a.as_bytes(), false);
            proto_bytes(&mut m, 2, b.as_bytes(), false);
            m
        };
        let mut value = Vec::new();
        if let Some(t) = object_type {
            proto_bytes(&mut value, 1, &pair(t), true);
        }
        if let Some(k) = key {
            proto_bytes(&mut value, 2, &pair(k), true);
        }
        proto_bytes(&mut value, 3, uid.as_bytes(), false);
        Reference::Raw {
            type_url: OBJECT_REFERENCE_TYPE_URL.into(),
            value,
        }
    }

    /// The host command's reference fields (see `command.reference` in tests/go-host/main.go).
    pub fn to_json(&self) -> Value {
        match self {
            Reference::Pid(pid) => json!({"ref": "pid", "pid": pid}),
            Reference::Object {
                plural,
                group,
                namespace,
                name,
                uid,
            } => json!({
                "ref": "object", "plural": plural, "group": group,
                "namespace": namespace, "name": name, "uid": uid
            }),
            Reference::Raw { type_url, value } => {
                json!({"ref": "raw", "type_url": type_url, "raw_value": base64(value)})
            }
            Reference::Missing => json!({"ref": "none"}),
        }
    }
}

/// Appends a length-delimited protobuf field (`always`: even when empty, as a present
/// sub-message is; proto3 omits empty strings).
fn proto_bytes(out: &mut Vec<u8>, field: u32, data: &[u8], always: bool) {
    if data.is_empty() && !always {
        return;
    }
    for mut n in [u64::from(field << 3 | 2), data.len() as u64] {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(data);
}

/// Standard base64 with padding (Go's encoding/json form of `[]byte`).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_encoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0xfc]), "//79/A==");
    }

    #[test]
    fn object_parts_encode_present_and_absent_messages() {
        let raw = |r: Reference| match r {
            Reference::Raw { value, .. } => value,
            other => panic!("{other:?}"),
        };
        assert_eq!(raw(Reference::object_parts(None, None, "")), b"");
        // type {plural "pods", group "core"}, key {} (present, empty), uid "u".
        assert_eq!(
            raw(Reference::object_parts(
                Some(("pods", "core")),
                Some(("", "")),
                "u"
            )),
            b"\x0a\x0c\x0a\x04pods\x12\x04core\x12\x00\x1a\x01u"
        );
    }
}
