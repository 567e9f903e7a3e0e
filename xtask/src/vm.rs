//! `cargo xtask vm-test`: the kernel-facing tests on Debian's cloud kernels 5.10, 6.1 and 6.12
//! (plus 6.1 with BPF LSM off), each booted under qemu TCG from an initramfs of static test
//! binaries (see ../shared/reference/aya-toolchain-notes.md §3, §6).
//!
//! Kernels are fetched with `apt-get download` through a private sources list and lists dir,
//! so the machine's own apt setup is untouched, and cached in `$ATTESTOR_VM_CACHE`
//! (default `/var/cache/attestor-vm`). The guest's `/init` mounts what the tests need, runs
//! each test binary and prints markers this command parses; a kernel panic, a timeout, a
//! missing marker or a failed test fails the run.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::setup;
use crate::util::{cargo, exec, output, workspace_root};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Only these kernels (5.10, 6.1, 6.1-nolsm, 6.12); default: all.
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Seconds before a boot is declared hung.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// A kernel to boot: how to find its package, and extra command-line arguments.
struct Kernel {
    name: &'static str,
    /// Metapackage whose dependency names the current image package, and the version prefix
    /// of the stanza to use (the ABI number in the image name changes with each update).
    meta: &'static str,
    version_prefix: &'static str,
    cmdline: &'static str,
    why: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        meta: "linux-image-cloud-amd64",
        version_prefix: "5.10.",
        cmdline: "",
        why: "bullseye-security; BPF LSM built but not in the default LSM list",
    },
    Kernel {
        name: "6.1",
        meta: "linux-image-cloud-amd64",
        version_prefix: "6.1.",
        cmdline: "",
        why: "bookworm; no PIDFD_GET_INFO",
    },
    Kernel {
        name: "6.1-nolsm",
        meta: "linux-image-cloud-amd64",
        version_prefix: "6.1.",
        cmdline: "lsm=lockdown,yama",
        why: "bookworm with BPF LSM disabled",
    },
    Kernel {
        name: "6.12",
        meta: "linux-image-6.12-cloud-amd64",
        version_prefix: "6.12.",
        cmdline: "",
        why: "bookworm-security (6.12 from trixie); no PIDFD_GET_INFO",
    },
];

const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
";

/// Test binaries (cargo integration-test targets of attestor-tests) run in every guest.
/// Others are skipped there with the reason given.
/// `soak` runs the real plugin binary's gRPC server in the guest (1,000 concurrent Attests).
const GUEST_TESTS: &[&str] = &["tracker", "live", "soak"];
const SKIPPED: &[(&str, &str)] = &[
    (
        "privileges",
        "needs util-linux setpriv --bounding-set (busybox's has none); runs on the host",
    ),
    (
        "kubelet",
        "userspace TLS client only, not kernel-facing; runs on the host",
    ),
    (
        "plugin",
        "the Go host is built with Debian's Go at test time; runs on the host (the plugin server itself runs in the guest in the soak group)",
    ),
    ("containers", "needs containerd and runc; runs on the host"),
];

fn cache_dir() -> PathBuf {
    std::env::var_os("ATTESTOR_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/attestor-vm"))
}

fn apt_opts(apt: &Path) -> Vec<String> {
    vec![
        format!(
            "-oDir::Etc::SourceList={}",
            apt.join("sources.list").display()
        ),
        "-oDir::Etc::SourceParts=/dev/null".into(),
        format!("-oDir::State::Lists={}", apt.join("lists").display()),
        format!("-oDir::Cache={}", apt.join("cache").display()),
        "-oAPT::Sandbox::User=root".into(),
        "-oDebug::NoLocking=1".into(),
    ]
}

/// The image package a metapackage currently depends on, for a version prefix.
fn image_package(apt: &Path, meta: &str, prefix: &str) -> Result<String> {
    let show = output(
        Command::new("apt-cache")
            .args(apt_opts(apt))
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
    bail!("no {meta} for a {prefix}x kernel in the Debian archives")
}

/// `vmlinuz` for a kernel series, downloaded once.
fn fetch_kernel(k: &Kernel) -> Result<PathBuf> {
    let series = k.name.trim_end_matches("-nolsm");
    let dir = cache_dir().join("kernels").join(series);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let apt = cache_dir().join("apt");
    fs::create_dir_all(apt.join("lists/partial"))?;
    fs::create_dir_all(apt.join("cache/archives/partial"))?;
    fs::write(apt.join("sources.list"), SOURCES)?;
    exec(
        Command::new("apt-get")
            .args(apt_opts(&apt))
            .args(["update", "-qq"]),
    )?;
    let pkg = image_package(&apt, k.meta, k.version_prefix)?;
    let dl = cache_dir().join("debs");
    fs::create_dir_all(&dl)?;
    exec(
        Command::new("apt-get")
            .current_dir(&dl)
            .args(apt_opts(&apt))
            .args(["download", "-qq", &pkg]),
    )?;
    let deb = fs::read_dir(&dl)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
        })
        .with_context(|| format!("{pkg} was not downloaded"))?;
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

/// Builds the test binaries and the CLI for x86_64-unknown-linux-musl (static).
fn build_guest_binaries() -> Result<(Vec<(String, PathBuf)>, PathBuf)> {
    exec(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))?;
    let target = "x86_64-unknown-linux-musl";
    exec(cargo().args([
        "build",
        "--release",
        "--target",
        target,
        "-p",
        "attestor",
        "--bin",
        "attestor",
    ]))?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-run",
        "--release",
        "--target",
        target,
        "-p",
        "attestor-tests",
    ])
    .args(GUEST_TESTS.iter().flat_map(|t| ["--test", t]))
    .args(["--message-format=json"])
    .stdout(Stdio::piped());
    eprintln!("xtask: $ cargo test --no-run --target {target} -p attestor-tests (guest tests)");
    let out = cmd.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the guest test binaries failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && let (Some(exe), Some(name)) =
                (msg["executable"].as_str(), msg["target"]["name"].as_str())
        {
            tests.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    let cli = workspace_root()
        .join("target")
        .join(target)
        .join("release/attestor");
    Ok((tests, cli))
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
echo "VM_KERNEL $(uname -r)"
echo "VM_LSM $(cat /sys/kernel/security/lsm)"
echo "VM_CMDLINE $(cat /proc/cmdline)"
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

fn build_initramfs(dir: &Path, tests: &[(String, PathBuf)], cli: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "t/deps"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost vmtest\n::1 localhost\n",
    )?;
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("copy busybox (busybox-static)")?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    for (name, exe) in tests {
        fs::copy(exe, root.join("t/deps").join(name))?;
    }
    fs::copy(cli, root.join("t/attestor"))?;
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
    log: PathBuf,
}

fn boot(
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
    log: &Path,
    timeout: Duration,
) -> Result<Boot> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet {cmdline}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
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
    let deadline = Instant::now() + timeout;
    let mut current: Option<String> = None;
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
            eprintln!("xtask:   guest kernel {rest}");
        } else if let Some(rest) = line.strip_prefix("VM_LSM ") {
            b.lsm = rest.to_string();
        } else if let Some(name) = line.strip_prefix("VMTEST-BEGIN ") {
            current = Some(name.to_string());
            b.results.entry(name.to_string()).or_default();
        } else if let Some(rest) = line.strip_prefix("VMTEST-END ") {
            let mut it = rest.split(" rc=");
            if let (Some(name), Some(rc)) = (it.next(), it.next()) {
                b.results.entry(name.to_string()).or_default().3 = rc.trim().parse().ok();
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

pub fn run(opts: &Options) -> Result<()> {
    // musl-tools: ring (rustls) compiles C for the static musl guest binaries.
    setup::ensure_apt_packages(&["qemu-system-x86", "busybox-static", "cpio", "musl-tools"])?;
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| opts.kernels.is_empty() || opts.kernels.iter().any(|n| n == k.name))
        .collect();
    if kernels.is_empty() {
        bail!("no such kernel; choose from 5.10, 6.1, 6.1-nolsm, 6.12");
    }
    let mut images = Vec::new();
    for k in &kernels {
        images.push(fetch_kernel(k).with_context(|| format!("fetching the {} kernel", k.name))?);
    }
    let (tests, cli) = build_guest_binaries()?;
    let work = workspace_root().join("target/vm");
    fs::create_dir_all(&work)?;
    let initramfs = build_initramfs(&work, &tests, &cli)?;
    let mut table: Vec<(String, String, BTreeMap<String, String>)> = Vec::new();
    let mut failed = false;
    for (k, image) in kernels.iter().zip(&images) {
        eprintln!("xtask: booting {} ({}) under qemu TCG", k.name, k.why);
        let log = work.join(format!("boot-{}.log", k.name));
        let started = Instant::now();
        let mut b = boot(
            image,
            &initramfs,
            k.cmdline,
            &log,
            Duration::from_secs(opts.timeout),
        )?;
        if b.panic && !b.booted {
            // A panic before /init ran is the emulator, not us (seen once in ~20 TCG boots of
            // 6.12): boot once more, and say so.
            eprintln!(
                "xtask:   kernel panicked before /init; booting {} again",
                k.name
            );
            b = boot(
                image,
                &initramfs,
                k.cmdline,
                &log,
                Duration::from_secs(opts.timeout),
            )?;
        }
        eprintln!(
            "xtask:   {} done in {:.0?} (log: {})",
            k.name,
            started.elapsed(),
            b.log.display()
        );
        let mut row = BTreeMap::new();
        for (name, _) in &tests {
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
                    let why = if b.panic {
                        "kernel panic"
                    } else if b.timed_out {
                        "timeout"
                    } else {
                        "no result marker"
                    };
                    format!("FAILED ({why})")
                }
            };
            row.insert(name.clone(), cell);
        }
        for (name, why) in SKIPPED {
            row.insert((*name).to_string(), format!("skipped: {why}"));
        }
        if !b.done {
            failed = true;
            let why = if b.panic {
                "kernel panic"
            } else if b.timed_out {
                "timeout"
            } else {
                "guest did not finish"
            };
            row.insert("(boot)".into(), format!("FAILED: {why}"));
        }
        for f in &b.failures {
            eprintln!("xtask:   failed test on {}: {f}", k.name);
        }
        table.push((k.name.to_string(), b.lsm.clone(), row));
    }
    print_table(&table);
    if failed {
        bail!("VM tests failed (logs in {})", work.display());
    }
    Ok(())
}

fn print_table(table: &[(String, String, BTreeMap<String, String>)]) {
    let mut groups: Vec<String> = table
        .iter()
        .flat_map(|(_, _, r)| r.keys().cloned())
        .collect();
    groups.sort();
    groups.dedup();
    println!("\nVM test matrix (kernel × test group):");
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
