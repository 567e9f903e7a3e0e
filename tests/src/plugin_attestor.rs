//! A small but real [`WorkloadAttestor`] for the plugin tests: the real [`Tracker`] resolves the PID
//! and the selectors come from its cgroup (`cgroup-path:<path>`, `cgroup-id:<id>`). The
//! integrator replaces it with the SPIRE k8s pipeline; the plugin surface does not change.
//!
//! `plugin_data` is a flat HCL1 map, `key = value` per line (keys may be quoted, as SPIRE
//! prints them from a JSON agent config). Keys:
//! - `hold_cgroup_suffix = "…"`: `attest` of a process whose cgroup path ends with this
//!   waits until the caller cancels (stands in for a slow kubelet).
//! - `panic_cgroup_suffix = "…"`: `attest` of such a process panics (handler panic test).
//! - `panic_on_configure = true`: the Configure call panics.
//!
//! Anything else is rejected with `InvalidArgument`, the way SPIRE's k8s attestor does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use attestor::plugin::{CancellationToken, WorkloadAttestor};
use attestor::status::{Code, Status};
use attestor::tracker::{ResolveError, Tracker, TrackerOptions};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestConfig {
    pub hold_cgroup_suffix: Option<String>,
    pub panic_cgroup_suffix: Option<String>,
    pub panic_on_configure: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
}

/// Parses the flat `key = value` map; errors are `InvalidArgument` with the line number.
pub fn parse_config(hcl: &str) -> Result<TestConfig, Status> {
    let invalid = |msg: String| Status::new(Code::InvalidArgument, msg);
    let mut map = BTreeMap::new();
    for (n, raw) in hcl.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(invalid(format!(
                "plugin_data must be a map of `key = value` lines: line {}: {line:?}",
                n + 1
            )));
        };
        let key = key.trim();
        let key = key
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .unwrap_or(key);
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(format!(
                "plugin_data: line {}: {key:?} is not a valid key",
                n + 1
            )));
        }
        let value = value.trim();
        let parsed = if let Some(s) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Value::Str(s.to_string())
        } else if value == "true" || value == "false" {
            Value::Bool(value == "true")
        } else if let Ok(i) = value.parse() {
            Value::Int(i)
        } else {
            return Err(invalid(format!(
                "plugin_data: line {}: the value of {key:?} must be a string, a number or a bool, got {value:?}",
                n + 1
            )));
        };
        if map.insert(key.to_string(), parsed).is_some() {
            return Err(invalid(format!(
                "plugin_data: line {}: {key:?} is set twice",
                n + 1
            )));
        }
    }
    let mut config = TestConfig::default();
    let mut unknown = Vec::new();
    for (key, value) in map {
        match (key.as_str(), value) {
            ("hold_cgroup_suffix", Value::Str(s)) => config.hold_cgroup_suffix = Some(s),
            ("panic_cgroup_suffix", Value::Str(s)) => config.panic_cgroup_suffix = Some(s),
            ("panic_on_configure", Value::Bool(b)) => config.panic_on_configure = b,
            ("hold_cgroup_suffix" | "panic_cgroup_suffix", _) => {
                return Err(invalid(format!("{key} must be a string")));
            }
            ("panic_on_configure", _) => return Err(invalid(format!("{key} must be a bool"))),
            _ => unknown.push(key),
        }
    }
    if !unknown.is_empty() {
        // Same wording as SPIRE's k8s attestor (keys sorted).
        return Err(invalid(format!(
            "unknown configurations detected: {}",
            unknown.join(",")
        )));
    }
    Ok(config)
}

/// The test attestor: a tracker (released by `deinit`) and the current config.
pub struct TestAttestor {
    tracker: Mutex<Option<Arc<Tracker>>>,
    config: RwLock<Option<Arc<TestConfig>>>,
}

impl TestAttestor {
    /// Starts the real tracker (eBPF when it loads, else the pidfd + /proc fallbacks).
    pub fn start() -> Result<TestAttestor, String> {
        let tracker = Tracker::start(&TrackerOptions::default()).map_err(|e| e.to_string())?;
        log::info!(ebpf = tracker.uses_ebpf(); "test attestor: tracker started");
        Ok(TestAttestor {
            tracker: Mutex::new(Some(Arc::new(tracker))),
            config: RwLock::new(None),
        })
    }

    fn tracker(&self) -> Result<Arc<Tracker>, Status> {
        self.tracker
            .lock()
            .ok()
            .and_then(|t| t.clone())
            .ok_or_else(|| Status::new(Code::FailedPrecondition, "deinitialized"))
    }
}

impl WorkloadAttestor for TestAttestor {
    fn configure(&self, hcl: &str) -> Result<(), Status> {
        let config = parse_config(hcl)?;
        if config.panic_on_configure {
            panic!("test attestor: panic_on_configure is set");
        }
        if let Ok(mut slot) = self.config.write() {
            *slot = Some(Arc::new(config));
        }
        Ok(())
    }

    fn validate(&self, hcl: &str) -> Result<Vec<String>, Status> {
        parse_config(hcl).map(|_| Vec::new())
    }

    async fn attest(&self, pid: i32, cancel: CancellationToken) -> Result<Vec<String>, Status> {
        let config = self
            .config
            .read()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| Status::new(Code::FailedPrecondition, "not configured"))?;
        let tracker = self.tracker()?;
        let r = match tracker.resolve(pid as i64) {
            Ok(r) => r,
            // Not in any container: not a workload of ours.
            Err(ResolveError::RootCgroup(_)) => return Ok(Vec::new()),
            Err(
                e @ (ResolveError::ZeroPid
                | ResolveError::NegativePid(_)
                | ResolveError::PidOutOfRange(_)),
            ) => return Err(Status::new(Code::InvalidArgument, e.to_string())),
            Err(e @ (ResolveError::NoSuchProcess(_) | ResolveError::Exited(_))) => {
                return Err(Status::new(Code::NotFound, e.to_string()));
            }
            Err(e) => return Err(Status::new(Code::Internal, e.to_string())),
        };
        let path = r.cgroup_path.to_string();
        if let Some(suffix) = &config.panic_cgroup_suffix
            && path.ends_with(suffix.as_str())
        {
            panic!("test attestor: pid {pid} is in {path}, which ends with panic_cgroup_suffix");
        }
        if let Some(suffix) = &config.hold_cgroup_suffix
            && path.ends_with(suffix.as_str())
        {
            log::debug!(pid = pid; "test attestor: holding until cancelled");
            cancel.cancelled().await;
            return Err(Status::new(Code::Cancelled, "attest cancelled"));
        }
        if !r.is_alive() {
            return Err(Status::new(
                Code::NotFound,
                format!("pid {pid} exited during attestation"),
            ));
        }
        Ok(vec![
            format!("cgroup-path:{path}"),
            format!("cgroup-id:{}", r.cgroup_id),
        ])
    }

    fn deinit(&self) {
        let dropped = self
            .tracker
            .lock()
            .ok()
            .and_then(|mut t| t.take())
            .is_some();
        log::info!(released = dropped; "test attestor: tracker released");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_known_keys() {
        assert_eq!(parse_config(""), Ok(TestConfig::default()));
        assert_eq!(
            parse_config(
                "hold_cgroup_suffix = \"hold.scope\"\n\n\"panic_cgroup_suffix\" = \"p\"\npanic_on_configure = false\n"
            ),
            Ok(TestConfig {
                hold_cgroup_suffix: Some("hold.scope".into()),
                panic_cgroup_suffix: Some("p".into()),
                panic_on_configure: false,
            })
        );
    }

    #[test]
    fn rejections_are_invalid_argument() {
        let err = |hcl: &str| parse_config(hcl).expect_err(hcl);
        let e = err("zeta = 1\nalpha = \"x\"");
        assert_eq!(e.code, Code::InvalidArgument);
        assert_eq!(e.message, "unknown configurations detected: alpha,zeta");
        assert_eq!(
            err("[\"a\", \"b\"]").message,
            "plugin_data must be a map of `key = value` lines: line 1: \"[\\\"a\\\", \\\"b\\\"]\""
        );
        assert_eq!(
            err("panic_on_configure = \"yes\"").message,
            "panic_on_configure must be a bool"
        );
        assert_eq!(
            err("a = 1\na = 2").message,
            "plugin_data: line 2: \"a\" is set twice"
        );
    }
}
