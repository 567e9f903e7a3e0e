//! `cargo xtask vm-test`: the kernel-facing tests on Debian's cloud kernels, each booted under
//! qemu TCG from an initramfs of static test binaries (see
//! ../shared/reference/aya-toolchain-notes.md §3, §6). amd64: 5.10, 6.1, 6.12 (plus 6.1 with
//! BPF LSM off) under `qemu-system-x86_64`; arm64: 5.10, 6.1 and 6.12 under
//! `qemu-system-aarch64 -M virt`, with the guest binaries cross-built for
//! aarch64-unknown-linux-musl ([`cross`]). The eBPF object is the same on both: its offsets
//! come from the guest kernel's BTF when it loads.
//!
//! Kernels are fetched with `apt-get download` through the machine's own apt configuration:
//! the private sources are the machine's (`/etc/apt/sources.list`, `sources.list.d/*.list`
//! and `*.sources`; [`private_sources`]) with only the suite names changed to the ones that
//! carry the wanted kernels, read into a private lists dir and cache per architecture (apt's
//! architecture set to the guest's, so no `dpkg --add-architecture`), so the machine's apt
//! state is untouched; URIs, components, `Signed-By` and the proxy settings of
//! `apt.conf.d` (apt reads them itself) stay the machine's. The arm64 guest's userland
//! (busybox, util-linux's `unshare` and its glibc) comes from bookworm's arm64 packages the
//! same way. Everything is cached in `$ATTESTOR_VM_CACHE` (default `/var/cache/attestor-vm`).
//! The guest's `/init` mounts what the tests need, runs each test binary and prints markers
//! this command parses; a kernel panic, a timeout, a missing marker, a guest of the wrong
//! architecture or a failed test fails the run.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cross::{self, Target};
use crate::setup;
use crate::util::{exec, output, workspace_root};

/// Which guests boot.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
    #[default]
    All,
}

impl Arch {
    fn includes(self, t: &Target) -> bool {
        match self {
            Arch::All => true,
            Arch::Amd64 => t.oci_arch == cross::AMD64.oci_arch,
            Arch::Arm64 => t.oci_arch == cross::ARM64.oci_arch,
        }
    }
}

#[derive(clap::Args)]
pub struct Options {
    /// Guest architectures: amd64 (qemu-system-x86_64), arm64 (qemu-system-aarch64 -M virt)
    /// or all.
    #[arg(long, value_enum, default_value_t = Arch::All)]
    pub arch: Arch,
    /// Only these kernels (amd64: 5.10, 6.1, 6.1-nolsm, 6.12; arm64: arm64-5.10, arm64-6.1,
    /// arm64-6.12); default: every kernel of the chosen architectures.
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// CI's set: of the chosen architectures, every amd64 kernel and one arm64 kernel
    /// (`CI_ARM64_KERNELS`): an arm64 guest takes about 1.5× an amd64 one (140–160 s against
    /// 90 s for every group, measured).
    #[arg(long)]
    pub ci: bool,
    /// Seconds before a boot is declared hung.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

impl Default for Options {
    /// What the command line gives without flags: every kernel of every architecture.
    fn default() -> Self {
        Options {
            arch: Arch::All,
            kernels: Vec::new(),
            ci: false,
            timeout: 600,
        }
    }
}

/// The arm64 kernels `--ci` boots (the others: `cargo xtask vm-test --arch arm64`).
pub const CI_ARM64_KERNELS: &[&str] = &["arm64-6.12"];

/// A kernel to boot: how to find its package, and extra command-line arguments.
struct Kernel {
    /// What `--kernels` takes: the series (amd64), `arm64-` and the series (arm64), and a
    /// suffix for a variant command line. Also the cache directory, without the variant.
    name: &'static str,
    arch: &'static Target,
    /// Metapackage whose dependency names the current image package, and the version prefix
    /// of the stanza to use (the ABI number in the image name changes with each update).
    meta: &'static str,
    version_prefix: &'static str,
    /// The Debian suite whose archive has it (the machine's suites, renamed; see
    /// [`private_sources`]).
    suite: &'static str,
    cmdline: &'static str,
    why: &'static str,
}

impl Kernel {
    /// The series without the architecture prefix (`6.1-nolsm`), for the matrix.
    fn short(&self) -> &'static str {
        self.name
            .strip_prefix(self.arch.oci_arch)
            .and_then(|n| n.strip_prefix('-'))
            .unwrap_or(self.name)
    }
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        arch: &cross::AMD64,
        meta: "linux-image-cloud-amd64",
        version_prefix: "5.10.",
        suite: "bullseye-security",
        cmdline: "",
        why: "bullseye-security; BPF LSM built but not in the default LSM list",
    },
    Kernel {
        name: "6.1",
        arch: &cross::AMD64,
        meta: "linux-image-cloud-amd64",
        version_prefix: "6.1.",
        suite: "bookworm",
        cmdline: "",
        why: "bookworm; no PIDFD_GET_INFO",
    },
    Kernel {
        name: "6.1-nolsm",
        arch: &cross::AMD64,
        meta: "linux-image-cloud-amd64",
        version_prefix: "6.1.",
        suite: "bookworm",
        cmdline: "lsm=lockdown,yama",
        why: "bookworm with BPF LSM disabled",
    },
    Kernel {
        name: "6.12",
        arch: &cross::AMD64,
        meta: "linux-image-6.12-cloud-amd64",
        version_prefix: "6.12.",
        suite: "bookworm-security",
        cmdline: "",
        why: "bookworm-security (6.12 from trixie); no PIDFD_GET_INFO",
    },
    Kernel {
        name: "arm64-5.10",
        arch: &cross::ARM64,
        meta: "linux-image-cloud-arm64",
        version_prefix: "5.10.",
        // Not bullseye-security as for amd64: the mirror of the machine this was written on
        // answers 404 for every arm64 5.10 image of bullseye-security (signed and unsigned),
        // while bullseye's last point release (5.10.223) is there.
        suite: "bullseye",
        cmdline: "",
        why: "bullseye (last point release), arm64 cloud flavour",
    },
    Kernel {
        name: "arm64-6.1",
        arch: &cross::ARM64,
        meta: "linux-image-cloud-arm64",
        version_prefix: "6.1.",
        suite: "bookworm",
        cmdline: "",
        why: "bookworm, arm64 cloud flavour",
    },
    Kernel {
        name: "arm64-6.12",
        arch: &cross::ARM64,
        meta: "linux-image-6.12-cloud-arm64",
        version_prefix: "6.12.",
        suite: "bookworm-security",
        cmdline: "",
        why: "bookworm-security (6.12 from trixie), arm64 cloud flavour",
    },
];

/// How an architecture's guest is emulated.
struct Machine {
    qemu: &'static str,
    /// The Debian package with `qemu`.
    qemu_package: &'static str,
    qemu_args: &'static [&'static str],
    console: &'static str,
    /// `uname -m` in the guest.
    uname: &'static str,
}

fn machine(t: &Target) -> Machine {
    if t.oci_arch == cross::ARM64.oci_arch {
        Machine {
            qemu: "qemu-system-aarch64",
            qemu_package: "qemu-system-arm",
            // pauth-impdef: the emulator's own pointer-authentication hash instead of QARMA5:
            // the same instructions for the guest, less emulation work (the arm64 6.1 guest:
            // /init at 4 s and all groups in 138 s, against 9 s and 172 s with plain `max`).
            qemu_args: &["-M", "virt", "-cpu", "max,pauth-impdef=on", "-accel", "tcg"],
            console: "ttyAMA0",
            uname: "aarch64",
        }
    } else {
        Machine {
            qemu: "qemu-system-x86_64",
            qemu_package: "qemu-system-x86",
            qemu_args: &["-accel", "tcg", "-cpu", "max"],
            console: "ttyS0",
            uname: "x86_64",
        }
    }
}

/// Integration-test targets (`tests/tests/*.rs` of attestor-tests) run in every guest: the
/// kernel-facing ones. Every other target, also each of `attestor/tests/*.rs` (the shipped
/// crate's own tests, none kernel-facing: kernel tests need the test scaffolding, which lives
/// in attestor-tests), is in [`SKIPPED`] with the reason; a unit test checks that each target
/// is in exactly one list.
/// `soak` runs the real plugin binary's gRPC server in the guest (1,000 concurrent Attests);
/// `pidns` runs as PID 1 of a new PID namespace; `forgery` uses util-linux's `unshare`,
/// copied into the guest with its libraries ([`GUEST_HOST_TOOLS`]).
const GUEST_TESTS: &[&str] = &[
    "tracker",
    "live",
    "soak",
    "pid_reuse",
    "forgery",
    "pidns",
    "demo",
    "pinning",
    // Mounts a named cgroup v1 hierarchy beside the guest's cgroup2 (README, "Node layouts").
    "cgroup_v1",
    // The plugin's Configure swapping (and detaching) eBPF programs on each kernel.
    "configure",
];
const SKIPPED: &[(&str, &str)] = &[
    (
        "privileges",
        "CAP_BPF + CAP_PERFMON alone do not load the tracker on Debian's kernels (measured in these guests): 5.10 charges BPF maps to RLIMIT_MEMLOCK (64 KiB at boot) and creating AYA_LOGS fails; 6.1 and 6.12 boot with perf_event_paranoid=3 (the host: 2) and perf_event_open of the tracepoints fails. An open finding about the documented privileges, not about the guest; runs on the host",
    ),
    (
        "kubelet",
        "userspace TLS client only, not kernel-facing; runs on the host",
    ),
    (
        "kubelet_faults",
        "kubelet faults seen by the userspace client (the tracker path is live's); serves bodies up to 1 GiB into a 2 GiB guest; runs on the host",
    ),
    (
        "plugin",
        "the Go host is built with Debian's Go at test time; runs on the host (the plugin server itself runs in the guest in the soak group)",
    ),
    ("containers", "needs containerd and runc; runs on the host"),
    (
        "deploy_image",
        "imports `cargo xtask dist`'s OCI image into containerd and runs the init container through CRI and the plugin through the Go host; needs containerd, runc, Go and target/dist; runs on the host",
    ),
    (
        "cri_fast_path",
        "needs containerd and runc; runs on the host",
    ),
    (
        "fuzz_corpus",
        "userspace parsers only; reads fuzz/ from the source tree, which the guest has not; runs on the host",
    ),
    (
        "plugin_mode",
        "go-plugin handshake of the binary, not kernel-facing; runs on the host",
    ),
    (
        "cli_files",
        "bounded reads of the CLI's input files (/dev/zero, FIFOs, directories), not kernel-facing; runs on the host",
    ),
    (
        "apiserver",
        "SPIRE's broker and namespace-label cases through the Go host (built with Debian's Go at test time) against the simulators; reads SPIRE's fixtures from ../shared; runs on the host",
    ),
    (
        "apiserver_client",
        "userspace API-server client against the simulator, not kernel-facing; runs on the host",
    ),
    (
        "apiserver_sim",
        "the API-server simulator's own tests, not kernel-facing; runs on the host",
    ),
    (
        "deploy_manifests",
        "schema check of deploy/*.yaml with kubernetes-validate (a venv in the source tree), not kernel-facing; runs on the host",
    ),
    (
        "replay_cli",
        "offline replay of files, not kernel-facing; reads SPIRE's fixtures from ../shared, which the guest has not; runs on the host",
    ),
];

/// Groups of [`GUEST_TESTS`] an architecture's guests do not run: (architecture, group, why).
/// A unit test keeps `tracker` and `live` off this list.
const ARCH_SKIPPED: &[(&str, &str, &str)] = &[];

/// Whether `name` (`arm64`, `aarch64`, …) is `t`.
fn is_arch(name: &str, t: &Target) -> bool {
    cross::by_name(name).is_some_and(|n| n.triple == t.triple)
}

/// The groups `t`'s guests run.
fn guest_tests(t: &Target) -> Vec<&'static str> {
    GUEST_TESTS
        .iter()
        .copied()
        .filter(|g| !ARCH_SKIPPED.iter().any(|(a, n, _)| is_arch(a, t) && n == g))
        .collect()
}

/// Packages whose integration tests the guests run: only attestor-tests (see [`GUEST_TESTS`];
/// a unit test keeps every guest target in `tests/tests/`).
const GUEST_PACKAGES: &[&str] = &["attestor-tests"];

/// Binaries the guest tests run by their build path (`env!("CARGO_BIN_EXE_<name>")`): copied
/// into the initramfs at that same absolute path. The `attestor` CLI is not one of them: the
/// tests find it as `/t/attestor` beside `/t/deps/<test>` (`attestor_tests::attestor_bin`).
const GUEST_BINS: &[&str] = &["demo"];

/// util-linux tools the guest tests need beyond busybox's applets (busybox 1.35's `unshare`
/// has no `--cgroup`), copied with their shared libraries. amd64: the host's own; arm64: the
/// same files from bookworm's arm64 packages ([`ARM64_USERLAND`]).
const GUEST_HOST_TOOLS: &[&str] = &["/usr/bin/unshare"];

/// The arm64 guest's userland, from bookworm's arm64 packages: (package, files in it). The
/// loader and libc are what `unshare` needs (`readelf -d`, checked when they are fetched: a
/// foreign binary cannot be `ldd`ed).
const ARM64_USERLAND: &[(&str, &[&str])] = &[
    ("busybox-static", &["bin/busybox"]),
    ("util-linux", &["usr/bin/unshare"]),
    (
        "libc6",
        &[
            "lib/ld-linux-aarch64.so.1",
            "lib/aarch64-linux-gnu/libc.so.6",
        ],
    ),
];
/// The suite of [`ARM64_USERLAND`].
const USERLAND_SUITE: &str = "bookworm";

fn cache_dir() -> PathBuf {
    std::env::var_os("ATTESTOR_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/attestor-vm"))
}

/// One apt source (deb822 stanza, or a one-line entry turned into one): its fields in order,
/// values verbatim (multi-line values such as an inline `Signed-By` key included).
#[derive(Debug, Clone, PartialEq)]
struct Source {
    fields: Vec<(String, String)>,
}

impl Source {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn words(&self, name: &str) -> Vec<&str> {
        self.get(name)
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default()
    }

    fn set(&mut self, name: &str, value: String) {
        match self
            .fields
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(f) => f.1 = value,
            None => self.fields.push((name.to_string(), value)),
        }
    }
}

/// Stanzas of a deb822 `.sources` file (`#` comments dropped, continuation lines kept).
fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !fields.is_empty() {
                out.push(Source {
                    fields: std::mem::take(&mut fields),
                });
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The deb822 name of a one-line `[option=value]`.
fn deb822_option(name: &str) -> String {
    match name {
        "arch" => "Architectures".into(),
        "lang" => "Languages".into(),
        "target" => "Targets".into(),
        "pdiffs" => "PDiffs".into(),
        other => other
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-"),
    }
}

/// Entries of a one-line `sources.list` file: `deb [opts] URI SUITE COMPONENT...`.
fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some((kind, mut rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let mut fields = vec![("Types".to_string(), kind.to_string())];
        rest = rest.trim_start();
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            for opt in opts.split_whitespace() {
                if let Some((k, v)) = opt.split_once('=') {
                    fields.push((deb822_option(k), v.replace(',', " ")));
                }
            }
            rest = after;
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        fields.push(("URIs".into(), uri.into()));
        fields.push(("Suites".into(), suite.into()));
        fields.push(("Components".into(), words.collect::<Vec<_>>().join(" ")));
        out.push(Source { fields });
    }
    out
}

/// The machine's apt sources: `sources.list` and, in `sources.list.d`, `*.list` (one-line)
/// and `*.sources` (deb822) files, as apt reads them; other names (`*.disabled-by-farm`,
/// `*.save`, …) are ignored, as apt ignores them. `files`: (file name, contents).
fn machine_sources(files: &[(String, String)]) -> Vec<Source> {
    let mut out = Vec::new();
    for (name, text) in files {
        if name.ends_with(".sources") {
            out.extend(parse_deb822(text));
        } else if name.ends_with(".list") {
            out.extend(parse_one_line(text));
        }
    }
    out
}

/// Splits a suite into its release name and suffix: `bookworm-security` → (`bookworm`,
/// `-security`), `bookworm` → (`bookworm`, ``).
fn split_suite(suite: &str) -> (&str, &str) {
    match suite.find('-') {
        Some(i) => suite.split_at(i),
        None => (suite, ""),
    }
}

/// The private deb822 sources that carry `wanted` suites: every enabled binary (`deb`)
/// source of the machine whose suites include one of the same kind (same suffix: the main
/// archive for `bookworm`, the security archive for `bullseye-security`), with its suites
/// replaced by the wanted ones of that kind and every other field (URIs, components,
/// `Signed-By`, …) unchanged, except an `Architectures` restriction, which becomes `arch`
/// (the guest's). Errors if a wanted suite has no such source.
fn private_sources(machine: &[Source], wanted: &[&str], arch: &str) -> Result<String> {
    let mut out = String::new();
    let mut covered: Vec<&str> = Vec::new();
    for src in machine {
        if !src.words("Types").contains(&"deb")
            || src
                .get("Enabled")
                .is_some_and(|v| v.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let kinds: Vec<&str> = src
            .words("Suites")
            .into_iter()
            .map(|s| split_suite(s).1)
            .collect();
        let mut suites: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| kinds.contains(&split_suite(w).1))
            .collect();
        suites.dedup();
        if suites.is_empty() {
            continue;
        }
        covered.extend(&suites);
        let mut private = src.clone();
        private.set("Types", "deb".into());
        private.set("Suites", suites.join(" "));
        if private.get("Architectures").is_some() {
            private.set("Architectures", arch.into());
        }
        for (k, v) in &private.fields {
            out.push_str(&format!("{k}: {v}\n"));
        }
        out.push('\n');
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !covered.contains(w))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the machine's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d) have no \
             archive for {} (no suite of the same kind to rename)",
            missing.join(", ")
        );
    }
    Ok(out)
}

/// Reads the machine's apt source files (name, contents): `/etc/apt/sources.list` and the
/// entries of `/etc/apt/sources.list.d`, sorted as apt reads them.
fn read_machine_source_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        files.push(("sources.list".to_string(), text));
    }
    let mut names: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    for path in names {
        if let (Some(name), Ok(text)) = (path.file_name(), fs::read_to_string(&path)) {
            files.push((name.to_string_lossy().into_owned(), text));
        }
    }
    files
}

/// apt options for the private sources, lists and cache under `apt`, for Debian
/// architecture `arch` only. `Dir::Etc::Parts` is left alone, so the machine's `apt.conf.d`
/// (proxies, …) applies.
fn apt_opts(apt: &Path, arch: &str) -> Vec<String> {
    vec![
        "-oDir::Etc::SourceList=/dev/null".into(),
        format!(
            "-oDir::Etc::SourceParts={}",
            apt.join("sources.list.d").display()
        ),
        format!("-oDir::State::Lists={}", apt.join("lists").display()),
        format!("-oDir::Cache={}", apt.join("cache").display()),
        format!("-oAPT::Architecture={arch}"),
        format!("-oAPT::Architectures={arch}"),
        "-oAPT::Sandbox::User=root".into(),
        "-oDebug::NoLocking=1".into(),
    ]
}

/// The image package a metapackage currently depends on, for a version prefix.
fn image_package(apt: &Path, arch: &str, meta: &str, prefix: &str) -> Result<String> {
    let show = output(
        Command::new("apt-cache")
            .args(apt_opts(apt, arch))
            .args(["show", meta]),
    )
    .with_context(|| format!("apt-cache show {meta}"))?;
    for stanza in show.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        if field("Version:").is_some_and(|v| v.starts_with(prefix))
            && let Some(dep) = field("Depends:")
            && let Some(pkg) = dep.split([' ', ',']).next()
        {
            return Ok(pkg.to_string());
        }
    }
    bail!("no {meta} for a {prefix}x kernel in the archives of the machine's apt sources")
}

/// Private apt state of one guest architecture. amd64 keeps the directory names it had before
/// arm64 (`apt`, `debs`), so warm caches stay warm.
struct PrivateApt {
    arch: &'static str,
    /// Sources, lists and cache ([`apt_opts`]).
    dir: PathBuf,
    /// Where `apt-get download` puts the packages.
    debs: PathBuf,
}

impl PrivateApt {
    fn new(t: &Target) -> PrivateApt {
        let suffix = if t.oci_arch == cross::AMD64.oci_arch {
            String::new()
        } else {
            format!("-{}", t.debian_arch)
        };
        PrivateApt {
            arch: t.debian_arch,
            dir: cache_dir().join(format!("apt{suffix}")),
            debs: cache_dir().join(format!("debs{suffix}")),
        }
    }

    /// Writes the private sources (the suites of `t`'s kernels, and for arm64 the userland's)
    /// and reads their package lists.
    fn update(&self, t: &Target) -> Result<()> {
        fs::create_dir_all(self.dir.join("lists/partial"))?;
        fs::create_dir_all(self.dir.join("cache/archives/partial"))?;
        let mut wanted: Vec<&str> = Vec::new();
        let userland = (t.oci_arch != cross::AMD64.oci_arch).then_some(USERLAND_SUITE);
        for suite in KERNELS
            .iter()
            .filter(|k| k.arch.oci_arch == t.oci_arch)
            .map(|k| k.suite)
            .chain(userland)
        {
            if !wanted.contains(&suite) {
                wanted.push(suite);
            }
        }
        let sources = private_sources(
            &machine_sources(&read_machine_source_files()),
            &wanted,
            self.arch,
        )?;
        let parts = self.dir.join("sources.list.d");
        let _ = fs::remove_dir_all(&parts);
        fs::create_dir_all(&parts)?;
        fs::write(parts.join("attestor-vm.sources"), sources)?;
        exec(
            Command::new("apt-get")
                .args(apt_opts(&self.dir, self.arch))
                .args(["update", "-qq"]),
        )
    }

    /// Downloads `pkg` (the candidate version) into [`Self::debs`]; its path.
    fn download(&self, pkg: &str) -> Result<PathBuf> {
        fs::create_dir_all(&self.debs)?;
        exec(
            Command::new("apt-get")
                .current_dir(&self.debs)
                .args(apt_opts(&self.dir, self.arch))
                .args(["download", "-qq", pkg]),
        )?;
        let version = output(
            Command::new("apt-cache")
                .args(apt_opts(&self.dir, self.arch))
                .args(["policy", pkg]),
        )
        .and_then(|p| {
            p.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("Candidate:")
                    .map(|v| v.trim().to_string())
            })
        })
        .with_context(|| format!("apt-cache policy {pkg}"))?;
        // apt-get download names the file pkg_version_arch.deb, ':' escaped as %3a.
        let deb = self.debs.join(format!(
            "{pkg}_{}_{}.deb",
            version.replace(':', "%3a"),
            self.arch
        ));
        if !deb.is_file() {
            bail!("{pkg} was not downloaded to {}", deb.display());
        }
        Ok(deb)
    }
}

/// `vmlinuz` (arm64: the `Image` Debian installs as vmlinuz, which qemu's `-kernel` boots) for
/// a kernel series, downloaded once.
fn fetch_kernel(k: &Kernel) -> Result<PathBuf> {
    let series = k.name.trim_end_matches("-nolsm");
    let dir = cache_dir().join("kernels").join(series);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let apt = PrivateApt::new(k.arch);
    apt.update(k.arch)?;
    let pkg = image_package(&apt.dir, apt.arch, k.meta, k.version_prefix)?;
    let deb = apt.download(&pkg)?;
    let unpack = dir.join("pkg");
    fs::create_dir_all(&unpack)?;
    exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
    let boot = unpack.join("boot");
    let image = fs::read_dir(&boot)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", deb.display()))?;
    fs::copy(&image, &vmlinuz)?;
    fs::write(dir.join("package"), &pkg)?;
    let _ = fs::remove_dir_all(&unpack);
    Ok(vmlinuz)
}

/// The arm64 guest's userland ([`ARM64_USERLAND`]): (file on this machine, path in the
/// guest). The packages are downloaded and unpacked once, into the cache.
fn arm64_userland() -> Result<Vec<(PathBuf, PathBuf)>> {
    let t = &cross::ARM64;
    let root = cache_dir().join(format!("userland-{}", t.debian_arch));
    let files: Vec<(PathBuf, PathBuf)> = ARM64_USERLAND
        .iter()
        .flat_map(|(_, files)| files.iter())
        .map(|f| (root.join(f), PathBuf::from(f)))
        .collect();
    if !files.iter().all(|(f, _)| f.is_file()) {
        let apt = PrivateApt::new(t);
        apt.update(t)?;
        let unpack = root.with_extension("tmp");
        let _ = fs::remove_dir_all(&unpack);
        fs::create_dir_all(&unpack)?;
        for (pkg, _) in ARM64_USERLAND {
            let deb = apt.download(pkg)?;
            exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
        }
        let _ = fs::remove_dir_all(&root);
        fs::rename(&unpack, &root)?;
    }
    // What each dynamically linked tool needs must be among the files.
    for tool in GUEST_HOST_TOOLS {
        let bin = root.join(tool.trim_start_matches('/'));
        let dynamic = output(Command::new("readelf").args(["-d", "-l"]).arg(&bin))
            .with_context(|| format!("readelf {}", bin.display()))?;
        for line in dynamic.lines() {
            let needed = line
                .split_once("Shared library: [")
                .or_else(|| line.split_once("interpreter: "))
                .and_then(|(_, rest)| rest.split([']']).next())
                .map(|n| n.rsplit('/').next().unwrap_or(n));
            if let Some(lib) = needed
                && !files
                    .iter()
                    .any(|(_, g)| g.file_name().is_some_and(|f| f == lib))
            {
                bail!(
                    "{tool} (arm64) needs {lib}, which ARM64_USERLAND does not list (xtask/src/vm.rs)"
                );
            }
        }
    }
    Ok(files)
}

/// The amd64 guest's userland: the host's busybox (busybox-static) and [`GUEST_HOST_TOOLS`]
/// with their shared libraries (`ldd`), at their own paths.
fn amd64_userland() -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut files = vec![(PathBuf::from("/bin/busybox"), PathBuf::from("bin/busybox"))];
    for tool in GUEST_HOST_TOOLS {
        for f in std::iter::once(PathBuf::from(tool)).chain(shared_libraries(tool)?) {
            let guest = f.strip_prefix("/").unwrap_or(&f).to_path_buf();
            files.push((f, guest));
        }
    }
    Ok(files)
}

/// What the guest runs, built for the guest's musl target (static).
struct GuestBinaries {
    /// Test target name → test executable.
    tests: Vec<(String, PathBuf)>,
    /// [`GUEST_BINS`] at their build paths (what `CARGO_BIN_EXE_*` names).
    bins: Vec<PathBuf>,
    /// The CLI (also `/t/attestor`).
    cli: PathBuf,
}

/// Builds the test binaries and the CLI for `t`'s musl target (static), with the flags
/// `cargo xtask dist` uses ([`cross::cargo`]), so both share `target/<triple>/release`.
fn build_guest_binaries(t: &Target) -> Result<GuestBinaries> {
    cross::ensure(t)?;
    let target = t.triple;
    exec(cross::cargo(t).args([
        "build",
        "--release",
        "--target",
        target,
        "-p",
        "attestor",
        "--bin",
        "attestor",
    ]))?;
    let mut cmd = cross::cargo(t);
    cmd.args(["test", "--no-run", "--release", "--target", target])
        .args(GUEST_PACKAGES.iter().flat_map(|p| ["-p", p]))
        .args(guest_tests(t).into_iter().flat_map(|g| ["--test", g]))
        .args(["--message-format=json"])
        .stdout(Stdio::piped())
        // cargo's progress and errors, shown as they come.
        .stderr(Stdio::inherit());
    eprintln!(
        "xtask: $ cargo test --no-run --target {target} -p {} (guest tests)",
        GUEST_PACKAGES.join(" -p ")
    );
    let out = cmd.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the guest test binaries for {target} failed");
    }
    let mut tests = Vec::new();
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        if msg["profile"]["test"] == true {
            tests.push((name.to_string(), PathBuf::from(exe)));
        } else if GUEST_BINS.contains(&name) && !bins.contains(&PathBuf::from(exe)) {
            bins.push(PathBuf::from(exe));
        }
    }
    let cli = cross::release_dir(t).join("attestor");
    Ok(GuestBinaries { tests, bins, cli })
}

/// Shared libraries a dynamically linked host tool needs (`ldd`), with the loader.
fn shared_libraries(tool: &str) -> Result<Vec<PathBuf>> {
    let out = output(Command::new("ldd").arg(tool)).with_context(|| format!("ldd {tool}"))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies `from` to the same absolute path under `root`.
fn copy_at_same_path(root: &Path, from: &Path) -> Result<()> {
    let to = root.join(from.strip_prefix("/").unwrap_or(from));
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, &to).with_context(|| format!("copy {} into the initramfs", from.display()))?;
    Ok(())
}

const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
# tracefs stays unmounted on purpose: the tracker must mount it itself.
ip link set lo up
hostname vmtest
echo "VM_KERNEL $(uname -r) $(uname -m)"
echo "VM_LSM $(cat /sys/kernel/security/lsm)"
echo "VM_CMDLINE $(cat /proc/cmdline)"
echo "VM_PERF_PARANOID $(cat /proc/sys/kernel/perf_event_paranoid) VM_MEMLOCK $(ulimit -l)"
# util-linux's unshare (/usr/bin) before busybox's applets (/bin).
export PATH=/usr/bin:/bin
export CI=1 RUST_BACKTRACE=1 ATTESTOR_BIN=/t/attestor ATTESTOR_SOAK_SECS=20
for t in /t/deps/*; do
  n=$(basename $t)
  echo "VMTEST-BEGIN $n"
  $t --test-threads=1
  echo "VMTEST-END $n rc=$?"
done
echo VMTEST-DONE
poweroff -f
"#;

/// Packs `/init`, the userland ((file here, path in the guest)) and the guest binaries.
fn build_initramfs(
    dir: &Path,
    guest: &GuestBinaries,
    userland: &[(PathBuf, PathBuf)],
) -> Result<PathBuf> {
    let (tests, cli) = (&guest.tests, &guest.cli);
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    // /mnt: forgery's workload mounts its forged files there.
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "mnt", "t/deps"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost vmtest\n::1 localhost\n",
    )?;
    for (from, to) in userland {
        let to = root.join(to);
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(from, &to)
            .with_context(|| format!("copy {} into the initramfs", from.display()))?;
    }
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    for (name, exe) in tests {
        fs::copy(exe, root.join("t/deps").join(name))?;
    }
    fs::copy(cli, root.join("t/attestor"))?;
    for bin in &guest.bins {
        copy_at_same_path(&root, bin)?;
    }
    let init = root.join("init");
    fs::write(&init, INIT)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let image = dir.join("initramfs.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            image.display()
        ))
        .status()?;
    if !status.success() {
        bail!("packing the initramfs failed");
    }
    Ok(image)
}

/// What one boot produced.
#[derive(Default)]
struct Boot {
    booted: bool,
    done: bool,
    panic: bool,
    timed_out: bool,
    /// test binary → (passed, failed, ignored, rc)
    results: BTreeMap<String, (u32, u32, u32, Option<i32>)>,
    failures: Vec<String>,
    lsm: String,
    /// `uname -m` of the guest.
    uname: String,
    /// Wall time from qemu's start to `/init`, and of each test binary.
    to_init: Option<Duration>,
    took: BTreeMap<String, Duration>,
    log: PathBuf,
}

impl Boot {
    /// Why a group or the boot has no result: a panic, a timeout, else `otherwise`.
    fn why(&self, otherwise: &'static str) -> &'static str {
        if self.panic {
            "kernel panic"
        } else if self.timed_out {
            "timeout"
        } else {
            otherwise
        }
    }
}

fn boot(
    m: &Machine,
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
    log: &Path,
    timeout: Duration,
) -> Result<Boot> {
    let mut child = Command::new(m.qemu)
        .args(m.qemu_args)
        .args(["-smp", "2", "-m", "2G"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console={} panic=-1 quiet {cmdline}", m.console))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (apt-get install {})", m.qemu, m.qemu_package))?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let mut out = fs::File::create(log)?;
    let mut b = Boot {
        log: log.to_path_buf(),
        ..Boot::default()
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let mut current: Option<String> = None;
    let mut began = started;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                b.timed_out = true;
                let _ = child.kill();
                break;
            }
        };
        writeln!(out, "{line}")?;
        let line = line.trim_end_matches('\r');
        if line.contains("Kernel panic") {
            b.panic = true;
            let _ = child.kill();
        } else if let Some(rest) = line.split("VM_KERNEL ").nth(1) {
            b.booted = true;
            b.to_init = Some(started.elapsed());
            b.uname = rest
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            eprintln!(
                "xtask:   guest kernel {rest} (at {:.1?})",
                started.elapsed()
            );
        } else if let Some(rest) = line.strip_prefix("VM_LSM ") {
            b.lsm = rest.to_string();
        } else if let Some(name) = line.strip_prefix("VMTEST-BEGIN ") {
            current = Some(name.to_string());
            began = Instant::now();
            b.results.entry(name.to_string()).or_default();
        } else if let Some(rest) = line.strip_prefix("VMTEST-END ") {
            let mut it = rest.split(" rc=");
            if let (Some(name), Some(rc)) = (it.next(), it.next()) {
                b.results.entry(name.to_string()).or_default().3 = rc.trim().parse().ok();
                b.took.insert(name.to_string(), began.elapsed());
                eprintln!(
                    "xtask:   {name} rc={} in {:.0?}",
                    rc.trim(),
                    began.elapsed()
                );
            }
            current = None;
        } else if line.trim() == "VMTEST-DONE" {
            b.done = true;
        } else if let (Some(name), Some(rest)) = (&current, line.strip_prefix("test result: ")) {
            let count = |word: &str| -> u32 {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .strip_suffix(word)
                            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    })
                    .unwrap_or(0)
            };
            let e = b.results.entry(name.clone()).or_default();
            e.0 += count("passed");
            e.1 += count("failed");
            e.2 += count("ignored");
        } else if let (Some(name), true) = (&current, line.ends_with("... FAILED")) {
            b.failures.push(format!(
                "{name}: {}",
                line.trim_end_matches(" ... FAILED")
                    .trim_start_matches("test ")
            ));
        }
    }
    let _ = child.wait();
    Ok(b)
}

/// The kernels `opts` selects, in [`KERNELS`] order.
fn selected(opts: &Options) -> Result<Vec<&'static Kernel>> {
    let unknown: Vec<&String> = opts
        .kernels
        .iter()
        .filter(|n| !KERNELS.iter().any(|k| k.name == n.as_str()))
        .collect();
    let names = || {
        KERNELS
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !unknown.is_empty() {
        bail!(
            "no kernel {}; choose from {}",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            names()
        );
    }
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| opts.arch.includes(k.arch))
        .filter(|k| {
            if !opts.kernels.is_empty() {
                opts.kernels.iter().any(|n| n == k.name)
            } else if opts.ci {
                k.arch.oci_arch == cross::AMD64.oci_arch || CI_ARM64_KERNELS.contains(&k.name)
            } else {
                true
            }
        })
        .collect();
    if kernels.is_empty() {
        bail!(
            "no kernel of --arch {:?} among {}; choose from {}",
            opts.arch,
            opts.kernels.join(", "),
            names()
        );
    }
    Ok(kernels)
}

/// One matrix row: (architecture and kernel, LSMs, group → cell).
type Row = (String, String, BTreeMap<String, String>);

pub fn run(opts: &Options) -> Result<()> {
    let kernels = selected(opts)?;
    let mut targets: Vec<&'static Target> = Vec::new();
    for k in &kernels {
        if !targets.iter().any(|t| t.oci_arch == k.arch.oci_arch) {
            targets.push(k.arch);
        }
    }
    let mut packages = vec!["cpio"];
    for t in &targets {
        packages.push(machine(t).qemu_package);
        if t.oci_arch == cross::AMD64.oci_arch {
            // The amd64 guest's busybox is the host's.
            packages.push("busybox-static");
        }
    }
    setup::ensure_apt_packages(&packages)?;
    let mut images = Vec::new();
    for k in &kernels {
        images.push(fetch_kernel(k).with_context(|| format!("fetching the {} kernel", k.name))?);
    }
    let work = workspace_root().join("target/vm");
    fs::create_dir_all(&work)?;
    let mut table: Vec<Row> = Vec::new();
    let mut failed = false;
    for t in targets {
        let started = Instant::now();
        let guest = build_guest_binaries(t)?;
        eprintln!(
            "xtask: {} guest binaries built in {:.0?}",
            t.oci_arch,
            started.elapsed()
        );
        let userland = if t.oci_arch == cross::AMD64.oci_arch {
            amd64_userland()?
        } else {
            arm64_userland()?
        };
        // amd64 keeps target/vm itself (its paths from before arm64).
        let dir = if t.oci_arch == cross::AMD64.oci_arch {
            work.clone()
        } else {
            work.join(t.oci_arch)
        };
        fs::create_dir_all(&dir)?;
        let initramfs = build_initramfs(&dir, &guest, &userland)?;
        for (k, image) in kernels.iter().zip(&images) {
            if k.arch.oci_arch != t.oci_arch {
                continue;
            }
            let (row, ok) = run_kernel(opts, k, image, &initramfs, &work, &guest)?;
            failed |= !ok;
            table.push(row);
        }
    }
    print_table(&table);
    if failed {
        bail!("VM tests failed (logs in {})", work.display());
    }
    Ok(())
}

/// Boots `k` and turns what it printed into a matrix row; whether everything passed.
fn run_kernel(
    opts: &Options,
    k: &Kernel,
    image: &Path,
    initramfs: &Path,
    work: &Path,
    guest: &GuestBinaries,
) -> Result<(Row, bool)> {
    let m = machine(k.arch);
    let mut failed = false;
    eprintln!("xtask: booting {} ({}) under {} TCG", k.name, k.why, m.qemu);
    let log = work.join(format!("boot-{}.log", k.name));
    let started = Instant::now();
    let timeout = Duration::from_secs(opts.timeout);
    let mut b = boot(&m, image, initramfs, k.cmdline, &log, timeout)?;
    if b.panic && !b.booted {
        // A panic before /init ran is the emulator, not us (seen once in ~20 TCG boots of
        // 6.12): boot once more, and say so.
        eprintln!(
            "xtask:   kernel panicked before /init; booting {} again",
            k.name
        );
        b = boot(&m, image, initramfs, k.cmdline, &log, timeout)?;
    }
    eprintln!(
        "xtask:   {} done in {:.0?} (log: {})",
        k.name,
        started.elapsed(),
        b.log.display()
    );
    let mut row = BTreeMap::new();
    for (name, _) in &guest.tests {
        let cell = match b.results.get(name) {
            Some((p, 0, i, Some(0))) => format!(
                "passed ({p}{})",
                if *i > 0 {
                    format!(", {i} ignored")
                } else {
                    String::new()
                }
            ),
            Some((p, f, _, rc)) => {
                failed = true;
                format!(
                    "FAILED ({p} passed, {f} failed, rc {})",
                    rc.map_or("none".into(), |r| r.to_string())
                )
            }
            None => {
                failed = true;
                format!("FAILED ({})", b.why("no result marker"))
            }
        };
        let cell = match b.took.get(name) {
            Some(took) => format!("{cell} in {}s", took.as_secs()),
            None => cell,
        };
        row.insert(name.clone(), cell);
    }
    for (name, why) in SKIPPED {
        row.insert((*name).to_string(), format!("skipped: {why}"));
    }
    for (arch, name, why) in ARCH_SKIPPED {
        if is_arch(arch, k.arch) {
            row.insert((*name).to_string(), format!("skipped on {arch}: {why}"));
        }
    }
    if b.booted && b.uname != m.uname {
        failed = true;
        row.insert(
            "(boot)".into(),
            format!("FAILED: the guest is {}, not {}", b.uname, m.uname),
        );
    }
    if !b.done {
        failed = true;
        row.insert(
            "(boot)".into(),
            format!("FAILED: {}", b.why("guest did not finish")),
        );
    } else if let Some(t) = b.to_init {
        row.insert(
            "(boot)".into(),
            format!(
                "/init at {}s, all done at {}s",
                t.as_secs(),
                started.elapsed().as_secs()
            ),
        );
    }
    for f in &b.failures {
        eprintln!("xtask:   failed test on {}: {f}", k.name);
    }
    let label = format!("{} {}", k.arch.oci_arch, k.short());
    Ok(((label, b.lsm.clone(), row), !failed))
}

fn print_table(table: &[Row]) {
    let mut groups: Vec<String> = table
        .iter()
        .flat_map(|(_, _, r)| r.keys().cloned())
        .collect();
    groups.sort();
    groups.dedup();
    println!("\nVM test matrix (architecture and kernel × test group):");
    for (kernel, lsm, row) in table {
        println!("  {kernel}  [LSMs: {lsm}]");
        for g in &groups {
            println!("    {g:<12} {}", row.get(g).map_or("-", String::as_str));
        }
    }
    let (mut p, mut f) = (0u32, 0u32);
    for (_, _, row) in table {
        for cell in row.values() {
            if cell.starts_with("passed") {
                p += 1;
            } else if cell.starts_with("FAILED") {
                f += 1;
            }
        }
    }
    println!("vm-test: {p} passed, {f} failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integration-test targets of the packages the guests can run: `tests/tests/*.rs` and
    /// `attestor/tests/*.rs`, from the source tree.
    fn test_targets() -> Vec<String> {
        let mut names = Vec::new();
        for dir in ["tests/tests", "attestor/tests"] {
            for entry in fs::read_dir(workspace_root().join(dir)).expect(dir) {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|e| e == "rs")
                    && let Some(stem) = path.file_stem()
                {
                    names.push(stem.to_string_lossy().into_owned());
                }
            }
        }
        names.sort();
        names
    }

    #[test]
    fn every_test_group_runs_in_the_guests_or_says_why_not() {
        let targets = test_targets();
        assert!(targets.contains(&"tracker".to_string()), "{targets:?}");
        for t in &targets {
            let guest = GUEST_TESTS.contains(&t.as_str());
            let skipped = SKIPPED.iter().any(|(n, _)| n == t);
            assert!(
                guest ^ skipped,
                "test group `{t}` must be in exactly one of GUEST_TESTS and SKIPPED (xtask/src/vm.rs)"
            );
        }
        for name in GUEST_TESTS.iter().chain(SKIPPED.iter().map(|(n, _)| n)) {
            assert!(
                targets.iter().any(|t| t == name),
                "`{name}` is listed in xtask/src/vm.rs but there is no tests/tests/{name}.rs nor attestor/tests/{name}.rs"
            );
        }
        for (name, why) in SKIPPED {
            assert!(!why.trim().is_empty(), "{name}: say why it is skipped");
        }
        // The guests build only GUEST_PACKAGES (attestor-tests).
        for name in GUEST_TESTS {
            assert!(
                workspace_root()
                    .join("tests/tests")
                    .join(format!("{name}.rs"))
                    .is_file(),
                "guest test `{name}` must be a tests/tests/*.rs target of attestor-tests"
            );
        }
    }

    #[test]
    fn every_kernel_names_a_suite() {
        for k in KERNELS {
            assert!(!k.suite.is_empty(), "{}", k.name);
        }
    }

    #[test]
    fn every_architecture_runs_tracker_and_live_and_says_why_it_skips_a_group() {
        for t in cross::ALL {
            assert!(
                KERNELS.iter().any(|k| k.arch.oci_arch == t.oci_arch),
                "no {} kernel",
                t.oci_arch
            );
            let runs = guest_tests(t);
            for required in ["tracker", "live"] {
                assert!(
                    runs.contains(&required),
                    "{required} must run in the {} guests",
                    t.oci_arch
                );
            }
            // Every guest group either runs on t or is in ARCH_SKIPPED for t, with a reason.
            for g in GUEST_TESTS {
                let skipped: Vec<_> = ARCH_SKIPPED
                    .iter()
                    .filter(|(a, n, _)| is_arch(a, t) && n == g)
                    .collect();
                assert!(
                    runs.contains(g) ^ !skipped.is_empty(),
                    "{g} on {}: runs or is skipped, not both",
                    t.oci_arch
                );
                assert!(skipped.len() <= 1, "{g} is in ARCH_SKIPPED twice");
            }
        }
        for (arch, name, why) in ARCH_SKIPPED {
            assert!(
                cross::by_name(arch).is_some(),
                "{arch}: no such architecture"
            );
            assert!(
                GUEST_TESTS.contains(name),
                "{name} in ARCH_SKIPPED is not a guest group (GUEST_TESTS)"
            );
            assert!(
                !why.trim().is_empty(),
                "{name} on {arch}: say why it is skipped"
            );
        }
    }

    #[test]
    fn kernel_names_are_unique_and_carry_their_architecture() {
        for (i, k) in KERNELS.iter().enumerate() {
            assert!(
                KERNELS[..i].iter().all(|o| o.name != k.name),
                "{} twice",
                k.name
            );
            let prefixed = k.name.starts_with(&format!("{}-", k.arch.oci_arch));
            // amd64 names stay what they were (5.10, 6.1, …); other arches are prefixed.
            assert_eq!(
                prefixed,
                k.arch.oci_arch != cross::AMD64.oci_arch,
                "{}",
                k.name
            );
            assert!(
                k.meta.ends_with(k.arch.debian_arch),
                "{}: {}",
                k.name,
                k.meta
            );
        }
        assert_eq!(
            KERNELS
                .iter()
                .find(|k| k.name == "arm64-6.12")
                .map(Kernel::short),
            Some("6.12")
        );
        assert_eq!(
            KERNELS
                .iter()
                .find(|k| k.name == "6.1-nolsm")
                .map(Kernel::short),
            Some("6.1-nolsm")
        );
    }

    fn names(opts: &Options) -> Vec<&'static str> {
        selected(opts)
            .expect("kernels")
            .iter()
            .map(|k| k.name)
            .collect()
    }

    #[test]
    fn options_select_kernels() {
        let all = Options::default();
        assert_eq!(names(&all).len(), KERNELS.len());
        assert_eq!(all.timeout, 600);
        let arm = Options {
            arch: Arch::Arm64,
            ..Default::default()
        };
        assert!(names(&arm).iter().all(|n| n.starts_with("arm64-")));
        assert!(names(&arm).contains(&"arm64-6.1") && names(&arm).contains(&"arm64-6.12"));
        let ci = Options {
            ci: true,
            ..Default::default()
        };
        let amd64: Vec<&str> = KERNELS
            .iter()
            .filter(|k| k.arch.oci_arch == "amd64")
            .map(|k| k.name)
            .collect();
        let want: Vec<&str> = amd64
            .iter()
            .copied()
            .chain(CI_ARM64_KERNELS.iter().copied())
            .collect();
        assert_eq!(names(&ci), want);
        let one = Options {
            arch: Arch::Amd64,
            kernels: vec!["6.1".into()],
            ..Default::default()
        };
        assert_eq!(names(&one), ["6.1"]);
        let wrong_arch = Options {
            arch: Arch::Amd64,
            kernels: vec!["arm64-6.1".into()],
            ..Default::default()
        };
        assert!(selected(&wrong_arch).is_err());
        let unknown = Options {
            kernels: vec!["4.19".into()],
            ..Default::default()
        };
        assert!(selected(&unknown).is_err());
    }

    #[test]
    fn an_architecture_restriction_becomes_the_guests() {
        let machine = machine_sources(&files(&[(
            "debian.list",
            "deb [arch=amd64] http://mirror.example/debian bookworm main\n",
        )]));
        let out = private_sources(&machine, &["bookworm"], "arm64").expect("sources");
        assert!(out.contains("Architectures: arm64\n"), "{out}");
        assert!(!out.contains("amd64"), "{out}");
    }

    const KEY: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    const WANTED: &[&str] = &["bullseye-security", "bookworm", "bookworm-security"];

    #[test]
    fn deb822_sources_keep_everything_but_the_suites() {
        let text = format!(
            "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main contrib\nSigned-By: {KEY}\n\n\
             Types: deb deb-src\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\
             Components: main\nSigned-By: {KEY}\n"
        );
        let machine = machine_sources(&files(&[("debian.sources", &text)]));
        assert_eq!(machine.len(), 2);
        let out = private_sources(&machine, WANTED, "amd64").expect("sources");
        assert_eq!(
            out,
            format!(
                "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\
                 Components: main contrib\nSigned-By: {KEY}\n\n\
                 Types: deb\nURIs: http://mirror.example/debian-security\n\
                 Suites: bullseye-security bookworm-security\nComponents: main\nSigned-By: {KEY}\n\n"
            )
        );
    }

    #[test]
    fn one_line_sources_become_stanzas_with_their_options() {
        let text = format!(
            "# comment\n\
             deb [signed-by={KEY} arch=amd64] http://mirror.example/debian bookworm main non-free-firmware\n\
             deb-src http://mirror.example/debian bookworm main\n\
             deb http://mirror.example/debian bookworm-updates main\n\
             deb [signed-by={KEY}] http://mirror.example/debian-security bookworm-security main # trailing\n"
        );
        let machine = machine_sources(&files(&[("sources.list", &text)]));
        assert_eq!(machine.len(), 4);
        let out = private_sources(&machine, WANTED, "amd64").expect("sources");
        assert_eq!(
            out,
            format!(
                "Types: deb\nSigned-By: {KEY}\nArchitectures: amd64\nURIs: http://mirror.example/debian\n\
                 Suites: bookworm\nComponents: main non-free-firmware\n\n\
                 Types: deb\nSigned-By: {KEY}\nURIs: http://mirror.example/debian-security\n\
                 Suites: bullseye-security bookworm-security\nComponents: main\n\n"
            )
        );
    }

    #[test]
    fn files_apt_ignores_and_disabled_stanzas_are_ignored() {
        let main = format!(
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\nSigned-By: {KEY}\n\n\
             Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\
             Components: main\nSigned-By: {KEY}\n"
        );
        let machine = machine_sources(&files(&[
            ("debian.sources", &main),
            (
                "google-cloud-sdk.list.disabled-by-farm",
                "deb https://other.example/apt cloud-sdk-bookworm main\n",
            ),
            (
                "nodesource.sources.disabled-by-farm",
                "Types: deb\nURIs: https://other.example/node\nSuites: nodistro\nComponents: main\n",
            ),
            (
                "off.sources",
                "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n",
            ),
            (
                "old.list.save",
                "deb http://old.example/debian bookworm main\n",
            ),
        ]));
        let out = private_sources(&machine, WANTED, "amd64").expect("sources");
        assert!(!out.contains("other.example"), "{out}");
        assert!(!out.contains("off.example"), "{out}");
        assert!(!out.contains("old.example"), "{out}");
        assert_eq!(out.matches("Types: deb\n").count(), 2, "{out}");
    }

    #[test]
    fn multi_line_signed_by_is_kept_verbatim() {
        let text = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n\
                    Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBF\n -----END PGP PUBLIC KEY BLOCK-----\n";
        let machine = machine_sources(&files(&[("inline.sources", text)]));
        let out = private_sources(&machine, &["bookworm"], "amd64").expect("sources");
        assert!(
            out.contains("Signed-By: \n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBF\n -----END PGP PUBLIC KEY BLOCK-----\n"),
            "{out}"
        );
    }

    #[test]
    fn a_suite_without_an_archive_of_its_kind_is_an_error() {
        let machine = machine_sources(&files(&[(
            "debian.list",
            "deb http://mirror.example/debian bookworm main\n",
        )]));
        let err = private_sources(&machine, WANTED, "amd64").expect_err("no security archive");
        assert!(
            err.to_string()
                .contains("bullseye-security, bookworm-security"),
            "{err}"
        );
    }
}
