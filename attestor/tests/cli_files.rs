//! Every file the command line reads is bounded (issue 11): `--cgroup-file`, `--pods-file`,
//! `--config` and `check-config FILE` refuse `/dev/zero`, a FIFO, a directory and a file one
//! byte over their cap, promptly, naming the file and the type or limit. Before, `/dev/zero`
//! grew to gigabytes of memory and a FIFO blocked forever, so each run here has a deadline:
//! a hang fails the test instead of hanging CI.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Far more than a refusal takes (milliseconds), far less than a CI timeout.
const DEADLINE: Duration = Duration::from_secs(20);

/// Caps, as the error messages print them (attestor::boundedfile).
const CGROUP_CAP: u64 = 256 << 10;
const POD_LIST_CAP: u64 = 64 << 20;
const PLUGIN_DATA_CAP: u64 = 1 << 20;

/// A cgroup file that names a container, so the pod list is read: SPIRE's own fixture, read
/// from `../shared` where it lives.
const CGROUP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/spire-testdata/cgroups_pid_in_pod.txt"
);

/// Runs the binary with `stdin`, killing it if it has not exited within [`DEADLINE`].
fn run_with(args: &[&str], stdin: Stdio) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_attestor"))
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the attestor binary");
    let start = Instant::now();
    // Outputs are one line, far below a pipe's buffer: polling cannot deadlock on them.
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("attestor {args:?} still running after {DEADLINE:?}: blocked on an input");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_with(args, Stdio::null())
}

/// Exit 1, nothing on stdout, exactly this error line on stderr.
fn assert_error(o: &Output, line: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");
    assert_eq!(stderr, format!("error: InvalidArgument: {line}\n"));
}

/// A fresh scratch directory under cargo's per-target temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli_files-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fifo(dir: &Path) -> PathBuf {
    let path = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success(), "mkfifo");
    path
}

/// A sparse file of `len` bytes: instant, and no disk used, even at 64 MiB.
fn sized(dir: &Path, len: u64) -> PathBuf {
    let path = dir.join(format!("size-{len}"));
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    path
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// For each input: the bad file and what its error says after `<file>: `.
fn bad_inputs(dir: &Path, cap: u64, what: &str) -> Vec<(PathBuf, String)> {
    vec![
        (
            PathBuf::from("/dev/zero"),
            "not a regular file (a character device)".into(),
        ),
        (fifo(dir), "not a regular file (a FIFO)".into()),
        (dir.to_owned(), "not a regular file (a directory)".into()),
        (
            sized(dir, cap + 1),
            format!(
                "is {} bytes, more than the {} limit for {what}",
                cap + 1,
                if cap >= 1 << 20 {
                    format!("{} MiB", cap >> 20)
                } else {
                    format!("{} KiB", cap >> 10)
                }
            ),
        ),
    ]
}

#[test]
fn cgroup_file_is_bounded() {
    let dir = scratch("cgroup");
    let pods = write(&dir, "pods.json", "{\"items\":[]}");
    for (bad, problem) in bad_inputs(&dir, CGROUP_CAP, "a cgroup file") {
        let o = run(&["attest", "--cgroup-file", s(&bad), "--pods-file", s(&pods)]);
        assert_error(
            &o,
            &format!(
                "--cgroup-file {}: {problem}; give a copy of the workload's /proc/<pid>/cgroup",
                bad.display()
            ),
        );
    }
}

#[test]
fn pods_file_is_bounded_by_the_kubelet_body_cap() {
    let dir = scratch("pods");
    let cgroup = PathBuf::from(CGROUP);
    for (bad, problem) in bad_inputs(&dir, POD_LIST_CAP, "a pod list") {
        let o = run(&[
            "attest",
            "--cgroup-file",
            s(&cgroup),
            "--pods-file",
            s(&bad),
        ]);
        assert_error(
            &o,
            &format!(
                "--pods-file {}: {problem}; give a file with the kubelet's /pods JSON",
                bad.display()
            ),
        );
    }
}

#[test]
fn config_is_bounded() {
    let dir = scratch("config");
    let cgroup = PathBuf::from(CGROUP);
    let pods = write(&dir, "pods.json", "{\"items\":[]}");
    for (bad, problem) in bad_inputs(&dir, PLUGIN_DATA_CAP, "a plugin_data file") {
        let o = run(&[
            "attest",
            "--cgroup-file",
            s(&cgroup),
            "--pods-file",
            s(&pods),
            "--config",
            s(&bad),
        ]);
        assert_error(
            &o,
            &format!(
                "--config {}: {problem}; give a plugin_data file (HCL, or JSON)",
                bad.display()
            ),
        );
    }
}

#[test]
fn check_config_file_is_bounded() {
    let dir = scratch("check-config");
    for (bad, problem) in bad_inputs(&dir, PLUGIN_DATA_CAP, "a plugin_data file") {
        let o = run(&["check-config", s(&bad)]);
        assert_error(
            &o,
            &format!(
                "check-config {}: {problem}; give a plugin_data file (HCL, or JSON)",
                bad.display()
            ),
        );
    }
    // Exactly the cap is read (and then parsed: 1 MiB of spaces is an empty HCL body).
    let at_cap = write(&dir, "at-cap.hcl", &" ".repeat(PLUGIN_DATA_CAP as usize));
    let o = run(&["check-config", s(&at_cap)]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

/// `-` is stdin, bounded like a file: `/dev/zero` on stdin stops at the cap.
#[test]
fn stdin_is_bounded_too() {
    let zero = || Stdio::from(std::fs::File::open("/dev/zero").unwrap());
    let o = run_with(&["check-config", "-"], zero());
    assert_error(
        &o,
        "check-config - (stdin): holds more than the 1 MiB limit for a plugin_data file; give a plugin_data file (HCL, or JSON)",
    );

    let dir = scratch("stdin");
    let cgroup = PathBuf::from(CGROUP);
    let o = run_with(
        &["attest", "--cgroup-file", s(&cgroup), "--pods-file", "-"],
        zero(),
    );
    assert_error(
        &o,
        "--pods-file - (stdin): holds more than the 64 MiB limit for a pod list; give a file with the kubelet's /pods JSON",
    );

    // A real answer on stdin is read: the container is not in this (empty) list.
    let pods = std::fs::File::open(write(&dir, "pods.json", "{\"items\":[]}")).unwrap();
    let o = run_with(
        &["attest", "--cgroup-file", s(&cgroup), "--pods-file", "-"],
        Stdio::from(pods),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: DeadlineExceeded: no selectors found after max poll attempts\n"
    );

    // Stdin can be read once.
    let o = run(&["attest", "--cgroup-file", "-", "--pods-file", "-"]);
    assert_error(
        &o,
        "only one input can read stdin (`-`), not --cgroup-file and --pods-file; give the others as files",
    );
}
