//! Replays the committed fuzz corpus on stable: every file under `fuzz/corpus/<target>/`
//! (minimized libFuzzer corpus) and `fuzz/regressions/<target>/` (inputs that once failed)
//! goes through the same checks the libFuzzer targets run (`fuzz/src/checks.rs`, included
//! here), so CI needs neither nightly nor cargo-fuzz. `cargo xtask fuzz-replay` runs this
//! test alone; `cargo xtask fuzz-replay --libfuzzer` replays through the real fuzz binaries.

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= 10,
        "fuzz/corpus/{target} holds only {} inputs: was the corpus deleted?",
        files.len()
    );
    for f in &files {
        let data = match std::fs::read(f) {
            Ok(d) => d,
            // A fuzzer running on the corpus meanwhile replaces inputs by smaller ones.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", f.display()),
        };
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails the {target} checks", f.display());
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}

#[test]
fn locator_corpus() {
    replay("locator", checks::locator);
}

#[test]
fn pods_corpus() {
    replay("pods", checks::pods);
}

#[test]
fn plugin_corpus() {
    replay("plugin", checks::plugin);
}

/// The plugin harness itself: hand-written sessions get the codes an agent would see.
mod plugin_sessions {
    use super::checks::{
        OP_ATTEST, OP_ATTEST_REFERENCE, OP_CONFIGURE, OP_DEINIT, OP_HEALTH, OP_INIT, OP_RAW,
        OP_SHUTDOWN, OP_VALIDATE, plugin_record as rec, plugin_transcript,
    };

    const OK: i32 = 0;
    const INVALID_ARGUMENT: i32 = 3;
    const NOT_FOUND: i32 = 5;
    const FAILED_PRECONDITION: i32 = 9;
    const GOOD: &str =
        "kubelet_read_only_port = 10255\nmax_poll_attempts = 2\npoll_retry_interval = \"10ms\"\n";

    fn string(tag: u8, v: &str) -> Vec<u8> {
        let mut out = vec![tag << 3 | 2, u8::try_from(v.len()).expect("short strings")];
        out.extend_from_slice(v.as_bytes());
        out
    }

    fn configure(hcl: &str) -> Vec<u8> {
        string(2, hcl)
    }

    fn pid(p: i32) -> Vec<u8> {
        use prost::Message as _;
        attestor::plugin::proto::workloadattestor::AttestRequest { pid: p }.encode_to_vec()
    }

    /// A PID no process has: the highest one the kernel can hand out, unless in use.
    fn free_pid() -> i32 {
        let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .expect("pid_max")
            .trim()
            .parse()
            .expect("pid_max is a number");
        (1..max)
            .rev()
            .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .expect("a free PID")
    }

    fn codes(records: &[Vec<u8>]) -> Vec<Option<i32>> {
        plugin_transcript(&records.concat())
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    #[test]
    fn lifecycle() {
        let me = i32::try_from(std::process::id()).expect("PIDs fit i32");
        let got = codes(&[
            rec(OP_ATTEST, &pid(me)),
            rec(OP_INIT, &[]),
            rec(OP_VALIDATE, &configure("nope = 1")),
            rec(OP_CONFIGURE, &configure("nope = 1")),
            rec(OP_ATTEST, &pid(me)),
            rec(OP_CONFIGURE, &configure(GOOD)),
            // This test is not in a pod: no selectors, no kubelet call.
            rec(OP_ATTEST, &pid(me)),
            rec(OP_ATTEST, &pid(0)),
            rec(OP_ATTEST, &pid(-5)),
            rec(OP_ATTEST, &pid(free_pid())),
            rec(OP_CONFIGURE, &configure("nope = 1")),
            // A rejected reconfigure keeps the previous configuration.
            rec(OP_ATTEST, &pid(-5)),
            // AttestReference without a reference.
            rec(OP_ATTEST_REFERENCE, &[]),
            rec(OP_DEINIT, &[]),
            rec(OP_ATTEST, &pid(me)),
            rec(OP_HEALTH, &string(1, "plugin")),
            rec(OP_HEALTH, &string(1, "else")),
            rec(OP_ATTEST_REFERENCE, &[]),
        ]);
        assert_eq!(
            got,
            [
                FAILED_PRECONDITION,
                OK,
                OK,
                INVALID_ARGUMENT,
                FAILED_PRECONDITION,
                OK,
                OK,
                INVALID_ARGUMENT,
                INVALID_ARGUMENT,
                NOT_FOUND,
                INVALID_ARGUMENT,
                INVALID_ARGUMENT,
                INVALID_ARGUMENT,
                OK,
                FAILED_PRECONDITION,
                OK,
                NOT_FOUND,
                FAILED_PRECONDITION,
            ]
            .map(Some)
        );
    }

    #[test]
    fn bad_frames_and_messages_are_errors() {
        let got = codes(&[
            rec(OP_CONFIGURE, &configure(GOOD)),
            // Compressed flag without negotiated compression.
            rec(OP_ATTEST | OP_RAW, b"\x01\x00\x00\x00\x02\x08\x01"),
            // Truncated frame, empty body.
            rec(OP_ATTEST | OP_RAW, b"\x00\x00\x00\x00\x09\x08"),
            rec(OP_ATTEST | OP_RAW, b""),
            // A string field cut short.
            rec(OP_CONFIGURE, b"\x12\x05ab"),
            rec(OP_SHUTDOWN, &[]),
        ]);
        assert_eq!(got[0], Some(OK));
        for (i, code) in got[1..5].iter().enumerate() {
            assert!(
                matches!(code, Some(c) if *c != OK),
                "record {}: {code:?}",
                i + 1
            );
        }
        assert_eq!(got[5], Some(OK));
    }

    /// Regression (found by the fuzzer, `fuzz/regressions/plugin/crash-c24fa641…`): a
    /// Deinit before the first Configure used up the plugin's only deinit, so a later
    /// Deinit left the new configuration in place and Attest kept answering.
    #[test]
    fn deinit_after_a_reconfigure_deinitializes() {
        let me = i32::try_from(std::process::id()).expect("PIDs fit i32");
        let got = codes(&[
            rec(OP_DEINIT, &[]),
            rec(OP_CONFIGURE, &configure(GOOD)),
            rec(OP_ATTEST, &pid(me)),
            rec(OP_DEINIT, &[]),
            rec(OP_ATTEST, &pid(me)),
            rec(OP_DEINIT, &[]),
            rec(OP_CONFIGURE, &configure(GOOD)),
            rec(OP_ATTEST, &pid(me)),
        ]);
        assert_eq!(
            got,
            [OK, OK, OK, OK, FAILED_PRECONDITION, OK, OK, OK].map(Some)
        );
    }

    /// Regression (found writing the harness): credential files are bounded regular files.
    #[test]
    fn configure_refuses_endless_credential_files() {
        let hcl = "token_path = \"/dev/zero\"\nskip_kubelet_verification = true\n";
        let got = codes(&[
            rec(OP_VALIDATE, &configure(hcl)),
            rec(OP_CONFIGURE, &configure(hcl)),
            rec(OP_ATTEST, &pid(1)),
        ]);
        // Valid plugin_data (Validate reads no files), refused by Configure, never applied.
        assert_eq!(got, [OK, INVALID_ARGUMENT, FAILED_PRECONDITION].map(Some));
    }
}
