//! Logs in plugin mode: hclog JSON lines on stderr, the format the SPIRE agent's go-plugin
//! client parses (spec §1 "Logging").
//!
//! One line per record: `{"@level":"info","@message":"…","@timestamp":"…",<fields>}`.
//! `@timestamp` has exactly six fractional digits (`2006-01-02T15:04:05.000000Z07:00`);
//! with three or nine the agent treats the whole line as plain text. Key-value pairs given to
//! `log` (`log::info!(pid = 5; "attested")`) become top-level keys. Levels are not filtered
//! by the agent's level here: the host filters (and drops trace).
//!
//! What is logged is up to the callers; the plugin never logs `plugin_data` text (it may
//! hold credentials), only its length.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{self, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// The `log::Log` implementation used in plugin mode.
pub struct HclogLogger {
    /// Level for attestor's own records.
    own: LevelFilter,
}

/// Targets that are noisy below warn (transport internals, eBPF loader narration).
const LIBRARY_PREFIXES: &[&str] = &["h2", "hyper", "tonic", "tower", "aya", "mio", "tokio"];

impl HclogLogger {
    /// Our records at `own` and above; libraries at warn and above unless `own` is trace.
    pub fn new(own: LevelFilter) -> Self {
        HclogLogger { own }
    }

    /// Installs the logger. The level comes from `ATTESTOR_LOG` (default debug: the agent
    /// filters by its own `log_level`).
    pub fn install() {
        let own = std::env::var("ATTESTOR_LOG")
            .ok()
            .and_then(|v| v.parse::<LevelFilter>().ok())
            .unwrap_or(LevelFilter::Debug);
        static LOGGER: std::sync::OnceLock<HclogLogger> = std::sync::OnceLock::new();
        let logger = LOGGER.get_or_init(|| HclogLogger::new(own));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(own);
        }
    }
}

impl Log for HclogLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let library = LIBRARY_PREFIXES
            .iter()
            .any(|p| metadata.target().starts_with(p));
        if library && self.own < LevelFilter::Trace {
            metadata.level() <= Level::Warn
        } else {
            metadata.level() <= self.own
        }
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record, SystemTime::now());
        // One write per line so concurrent records never interleave mid-line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// hclog's level names.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// One JSON line, newline included.
pub fn format_line(record: &Record<'_>, now: SystemTime) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"@level\":\"");
    out.push_str(level_name(record.level()));
    out.push_str("\",\"@message\":");
    push_json_str(&mut out, &record.args().to_string());
    out.push_str(",\"@timestamp\":\"");
    out.push_str(&timestamp(now));
    out.push('"');
    let mut fields = Fields { out: &mut out };
    let _ = record.key_values().visit(&mut fields);
    out.push_str("}\n");
    out
}

struct Fields<'a> {
    out: &'a mut String,
}

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        self.out.push(',');
        // `@…` keys are hclog's own; a field must not shadow them.
        let key = key.as_str();
        if key.starts_with('@') {
            push_json_str(self.out, &format!("_{key}"));
        } else {
            push_json_str(self.out, key);
        }
        self.out.push(':');
        if let Some(b) = value.to_bool() {
            self.out.push_str(if b { "true" } else { "false" });
        } else if let Some(i) = value.to_i64() {
            let _ = write!(self.out, "{i}");
        } else if let Some(u) = value.to_u64() {
            let _ = write!(self.out, "{u}");
        } else if let Some(f) = value.to_f64().filter(|f| f.is_finite()) {
            let _ = write!(self.out, "{f}");
        } else {
            push_json_str(self.out, &value.to_string());
        }
        Ok(())
    }
}

fn push_json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        // Serialising a &str cannot fail; keep the line valid JSON regardless.
        Err(_) => out.push_str("\"\""),
    }
}

/// `2006-01-02T15:04:05.000000Z` in UTC: exactly six fractional digits, as hclog's parser
/// requires.
pub fn timestamp(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamp_has_six_fractional_digits_and_utc_zone() {
        let t = UNIX_EPOCH + Duration::new(1_704_164_645, 123_456_789);
        assert_eq!(timestamp(t), "2024-01-02T03:04:05.123456Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // Leap day and end of a leap year.
        let t = UNIX_EPOCH + Duration::new(951_782_400, 0);
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::new(1_735_689_599, 999_999_999);
        assert_eq!(timestamp(t), "2024-12-31T23:59:59.999999Z");
    }

    fn line(record: &Record<'_>) -> serde_json::Value {
        let t = UNIX_EPOCH + Duration::new(1_704_164_645, 123_456_000);
        let s = format_line(record, t);
        assert!(s.ends_with('\n'));
        assert_eq!(s.matches('\n').count(), 1, "one line: {s:?}");
        serde_json::from_str(&s).expect("valid JSON")
    }

    #[test]
    fn record_becomes_hclog_json_with_fields_as_keys() {
        let kvs: &[(&str, kv::Value<'_>)] = &[
            ("pid", kv::Value::from(42i64)),
            ("path", kv::Value::from("/kubepods/\"x\"")),
            ("ok", kv::Value::from(true)),
            ("@level", kv::Value::from("spoof")),
        ];
        let v = line(
            &Record::builder()
                .level(Level::Warn)
                .args(format_args!("attest failed: {}", "line\nbreak"))
                .key_values(&kvs)
                .build(),
        );
        assert_eq!(
            v,
            serde_json::json!({
                "@level": "warn",
                "@message": "attest failed: line\nbreak",
                "@timestamp": "2024-01-02T03:04:05.123456Z",
                "pid": 42,
                "path": "/kubepods/\"x\"",
                "ok": true,
                "_@level": "spoof",
            })
        );
    }

    #[test]
    fn every_level_has_its_hclog_name() {
        for (level, name) in [
            (Level::Error, "error"),
            (Level::Warn, "warn"),
            (Level::Info, "info"),
            (Level::Debug, "debug"),
            (Level::Trace, "trace"),
        ] {
            let v = line(
                &Record::builder()
                    .level(level)
                    .args(format_args!("m"))
                    .build(),
            );
            assert_eq!(v["@level"], name);
        }
    }

    #[test]
    fn libraries_are_quiet_below_warn_unless_tracing() {
        let l = HclogLogger::new(LevelFilter::Debug);
        let meta = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(l.enabled(&meta("attestor::plugin", Level::Debug)));
        assert!(!l.enabled(&meta("attestor::plugin", Level::Trace)));
        assert!(!l.enabled(&meta("h2::codec", Level::Debug)));
        assert!(l.enabled(&meta("h2::codec", Level::Warn)));
        assert!(!l.enabled(&meta("aya::obj", Level::Info)));
        let l = HclogLogger::new(LevelFilter::Trace);
        assert!(l.enabled(&meta("h2::codec", Level::Trace)));
    }
}
