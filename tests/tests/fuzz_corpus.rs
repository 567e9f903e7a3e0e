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
