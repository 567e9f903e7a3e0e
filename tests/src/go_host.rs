//! The Go go-plugin host (`tests/go-host`): HashiCorp's real go-plugin client (Debian's
//! 1.0.1), loading a plugin binary exactly as the SPIRE agent loads `plugin_cmd` (magic
//! cookie, gRPC only, no AutoMTLS, SHA-256 checksum, `broker.Accept(1)` with the metrics
//! host service, then Init → Configure → Attest → Deinit → Kill).
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
        let r = self.attest(pid);
        match code(&r) {
            (c, _) if c == "OK" => {
                Ok(serde_json::from_value(r["selectors"].clone()).expect("selectors"))
            }
            other => Err(other),
        }
    }

    /// `Attest(pid)`, asserted `OK`: the selector values.
    pub fn attest_ok(&mut self, pid: i32) -> Vec<String> {
        let r = self.attest(pid);
        assert_eq!(code(&r), ("OK".into(), String::new()), "attest {pid}: {r}");
        serde_json::from_value(r["selectors"].clone()).expect("selectors")
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
