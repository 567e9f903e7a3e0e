//! `cargo xtask setup`: install prerequisites idempotently, saying what is installed and why.
//!
//! Facts this relies on (checked on the CI machine kind, see
//! ../shared/reference/aya-toolchain-notes.md): the installed `nightly` is 2026-05-19 with
//! LLVM 22; bpf-linker 0.13 must be built against the same LLVM major (Debian's llvm-22-dev).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{self, exec, output};

/// The LLVM major version bpf-linker is built against here.
pub const LLVM_MAJOR: u32 = 22;

/// Debian packages the build and tests need.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against Debian's LLVM 22.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    // tests: tracefs mount helper and process tools
    "util-linux",
    "procps",
    // attestor/build.rs: protoc generates the plugin's gRPC code.
    "protobuf-compiler",
    // tests/tests/plugin.rs: the Go test host loads the plugin with HashiCorp's go-plugin
    // client (1.0.1 in bookworm; GOPATH build against /usr/share/gocode).
    "golang-go",
    "golang-github-hashicorp-go-plugin-dev",
    "golang-github-hashicorp-go-hclog-dev",
    "golang-google-grpc-dev",
    "golang-goprotobuf-dev",
    // tests/tests/deploy_image.rs: the Go host reads agent.conf with HCL v1, as the SPIRE
    // agent does (tests/go-host/agentconfig.go).
    "golang-github-hashicorp-hcl-dev",
    // `cargo xtask bench podlist`: the SPIRE baseline (tests/go-spire-podlist) parses the
    // kubelet's /pods body with fastjson, as SPIRE's k8s attestor does (1.6.3 in bookworm).
    "golang-github-valyala-fastjson-dev",
    // tests/tests/containers.rs: a private containerd (1.6, with its CRI plugin) and runc
    // create real pods; images are built from the static busybox. No daemon is started by
    // the packages here (no systemd). See ../shared/reference/containerd-cri-notes.md.
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    // tests/tests/deploy_manifests.rs: kubernetes-validate (PyPI) runs in a venv of Debian's
    // python3 (ensure_kubernetes_validate).
    "python3-venv",
];

/// tests/tests/deploy_manifests.rs validates deploy/*.yaml against the Kubernetes JSON
/// schemas (strict: unknown fields rejected) with this PyPI package, in a venv at
/// [`KUBERNETES_VALIDATE_VENV`] under the workspace. Pinned: it ships the schemas of the
/// Kubernetes versions up to its own (1.37.0 → Kubernetes 1.37).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The venv, relative to the workspace root (the test looks there too).
pub const KUBERNETES_VALIDATE_VENV: &str = "target/tools/kubernetes-validate";

pub fn run() -> Result<()> {
    ensure_apt_packages(APT_PACKAGES)?;
    ensure_nightly(&nightly_toolchain())?;
    ensure_bpf_linker()?;
    ensure_kubernetes_validate()?;
    Ok(())
}

/// Installs [`KUBERNETES_VALIDATE`] into its venv unless that version is already there
/// (Debian's python3, so that no pyenv or user site is involved; a few seconds).
pub fn ensure_kubernetes_validate() -> Result<()> {
    let venv = util::workspace_root().join(KUBERNETES_VALIDATE_VENV);
    let bin = venv.join("bin/kubernetes-validate");
    let want = KUBERNETES_VALIDATE.rsplit("==").next().unwrap_or_default();
    if output(Command::new(&bin).arg("--version")).is_some_and(|v| v.trim() == want) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {KUBERNETES_VALIDATE} into {}",
        venv.display()
    );
    exec(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    exec(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(KUBERNETES_VALIDATE),
    )
    .context("installing kubernetes-validate")
}

/// The nightly used for the eBPF build: `ATTESTOR_EBPF_TOOLCHAIN` or `nightly`.
pub fn nightly_toolchain() -> String {
    std::env::var("ATTESTOR_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".to_string())
}

pub fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing Debian packages: {}. Install them as root: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn llvm_major_of_rustc(toolchain: &str) -> Option<u32> {
    let v = output(Command::new("rustup").args(["run", toolchain, "rustc", "-vV"]))?;
    let line = v.lines().find(|l| l.starts_with("LLVM version:"))?;
    line.split(':')
        .nth(1)?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

pub fn ensure_nightly(toolchain: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with(toolchain)) {
        bail!(
            "the Rust toolchain `{toolchain}` is not installed. The eBPF build needs a nightly whose \
             LLVM is {LLVM_MAJOR} (e.g. nightly-2026-05-19): `rustup toolchain install nightly-2026-05-19` \
             and set ATTESTOR_EBPF_TOOLCHAIN=nightly-2026-05-19. Do not `rustup update`: an LLVM 23 \
             nightly cannot link with bpf-linker built on LLVM {LLVM_MAJOR}."
        );
    }
    match llvm_major_of_rustc(toolchain) {
        Some(major) if major == LLVM_MAJOR => {}
        Some(major) => bail!(
            "toolchain `{toolchain}` uses LLVM {major}, but bpf-linker here is built against LLVM \
             {LLVM_MAJOR}: the link would fail with `Invalid record`. Use a nightly with LLVM \
             {LLVM_MAJOR} (nightly-2026-05-19) via ATTESTOR_EBPF_TOOLCHAIN, or rebuild bpf-linker \
             against LLVM {major}."
        ),
        None => bail!("cannot run `rustup run {toolchain} rustc -vV` to check its LLVM version"),
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!(
            "xtask: adding rust-src to {toolchain} (bpfel-unknown-none builds core from source)"
        );
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            toolchain,
        ]))?;
    }
    Ok(())
}

fn cargo_home_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// Path of bpf-linker, if installed, and the LLVM major it is dynamically linked against.
fn find_bpf_linker() -> Option<(PathBuf, Option<u32>)> {
    let candidates = [cargo_home_bin().join("bpf-linker")];
    let path = candidates.into_iter().find(|p| p.is_file()).or_else(|| {
        output(Command::new("sh").args(["-c", "command -v bpf-linker"]))
            .map(|s| PathBuf::from(s.trim()))
    })?;
    let ldd = output(Command::new("ldd").arg(&path)).unwrap_or_default();
    let major = ldd
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("libLLVM.so.")
                .or_else(|| w.strip_prefix("libLLVM-"))
        })
        .and_then(|rest| rest.split(['.', '-']).next()?.parse().ok());
    Some((path, major))
}

pub fn ensure_bpf_linker() -> Result<PathBuf> {
    if let Some((path, major)) = find_bpf_linker() {
        match major {
            Some(m) if m != LLVM_MAJOR => bail!(
                "{} is linked against LLVM {m}, but the eBPF nightly uses LLVM {LLVM_MAJOR}. Reinstall it: \
                 LLVM_PREFIX=/usr/lib/llvm-{LLVM_MAJOR} cargo install bpf-linker --force --no-default-features --features llvm-{LLVM_MAJOR}",
                path.display()
            ),
            _ => return Ok(path),
        }
    }
    ensure_apt_packages(&["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"])?;
    eprintln!(
        "xtask: bpf-linker is missing; building it against Debian's LLVM {LLVM_MAJOR} (about a minute)"
    );
    exec(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "0.13.0"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("CARGO_TARGET_DIR"),
    )
    .context("installing bpf-linker")?;
    find_bpf_linker()
        .map(|(p, _)| p)
        .context("bpf-linker was installed but cannot be found in ~/.cargo/bin or PATH")
}
