//! Kubernetes manifests against the Kubernetes API's own JSON schemas: `kubernetes-validate
//! --strict` (PyPI, in the venv `cargo xtask setup` makes: xtask/src/setup.rs
//! `ensure_kubernetes_validate`), and their documents read with the PyYAML the validator
//! uses. Shared by tests/tests/deploy_manifests.rs (the templates in deploy/) and
//! tests/tests/deploy_image.rs (what `cargo xtask dist` renders from them).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The Kubernetes versions validated against: the newest the pinned validator ships, and an
/// older release that clusters still run.
pub const VERSIONS: [&str; 2] = ["1.37.0", "1.30.0"];

pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// The venv `cargo xtask setup` makes (xtask/src/setup.rs `KUBERNETES_VALIDATE_VENV`).
pub fn venv_bin(name: &str) -> PathBuf {
    let bin = workspace()
        .join("target/tools/kubernetes-validate/bin")
        .join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo xtask setup` (installs kubernetes-validate in a venv)",
        bin.display()
    );
    bin
}

/// The documents of a YAML file as JSON (PyYAML from the validator's venv: the parser the
/// validator itself uses).
pub fn documents(file: &Path) -> Vec<Value> {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
        ])
        .arg(file)
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

/// `kubernetes-validate --strict` of `file` for Kubernetes `version`: Ok if every document
/// passed (one `passed` line each, no warning: an unknown kind is only a warning to the
/// tool), else its output.
pub fn validate(file: &Path, version: &str) -> Result<(), String> {
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", version])
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = text.lines().filter(|l| l.contains(" passed for ")).count();
    let docs = documents(file).len();
    if out.status.success()
        && passed == docs
        && !text
            .lines()
            .any(|l| l.starts_with("WARN") || l.starts_with("ERROR"))
    {
        Ok(())
    } else {
        Err(format!(
            "exit {:?}, {passed} of {docs} documents passed:\n{text}",
            out.status.code()
        ))
    }
}
