//! Operator-facing logs on stderr: `<level>: <message>`, level from `ATTESTOR_LOG`
//! (error, warn, info, debug, trace; default warn). Kernel aya-log records arrive here too
//! when `--ebpf-log` is given.

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // aya's loader narrates every relocation at debug level: show that only at trace.
        let loader = metadata.target().starts_with("aya");
        metadata.level() <= log::max_level() && (!loader || log::max_level() == LevelFilter::Trace)
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "{}: {}",
                record.level().as_str().to_ascii_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

pub fn init() {
    let level = std::env::var("ATTESTOR_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Warn);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
