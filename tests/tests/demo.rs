//! The demo is part of the suite: this runs the binary `cargo xtask demo` runs (the `demo`
//! binary of attestor-tests, no arguments; xtask/src/demo.rs) and checks what it prints: the
//! exact selector set of every workload, written out from the pods it sets up
//! (`attestor_tests::demo`), and the exact error for each of its bad PIDs.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use attestor_tests::demo::{self, BAD_PIDS, HOST_SERVICE, WORKLOADS};
use attestor_tests::require_root;

/// What the pipeline answers for each of [`BAD_PIDS`], in that order (README, "Bad PIDs get
/// distinct errors"; a kernel thread is not in a pod: zero selectors, as SPIRE answers).
const BAD_PID_OUTCOMES: &[&str] = &[
    "InvalidArgument: pid 0 is not a process (the caller is not visible in this PID namespace; run with hostPID)",
    "InvalidArgument: pid -5 is negative: not a process id",
    "0 selectors (not in a pod)",
    "NotFound: no process with pid 4194305",
];

/// One workload block of the output: `pid <n>  <label>` and the lines under it.
struct Block {
    pid: i32,
    lines: Vec<String>,
}

fn blocks(stdout: &str) -> BTreeMap<String, Block> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in stdout.lines() {
        if let Some((pid, label)) = line.strip_prefix("pid ").and_then(|r| r.split_once("  ")) {
            let pid = pid.parse().expect("pid number");
            let previous = out.insert(
                label.to_string(),
                Block {
                    pid,
                    lines: Vec::new(),
                },
            );
            assert!(previous.is_none(), "workload {label:?} printed twice");
            current = Some(label.to_string());
        } else if line.is_empty() || !line.starts_with(' ') {
            current = None;
        } else if let Some(label) = &current {
            out.get_mut(label)
                .expect("current block")
                .lines
                .push(line.trim().to_string());
        }
    }
    out
}

#[test]
fn demo_prints_every_workloads_exact_selectors_and_the_bad_pid_errors() {
    if !require_root() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .expect("run the demo binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );

    let blocks = blocks(&stdout);
    let labels: Vec<&str> = blocks.keys().map(String::as_str).collect();
    let mut want_labels = WORKLOADS.to_vec();
    want_labels.sort_unstable();
    assert_eq!(labels, want_labels, "workloads printed:\n{stdout}");
    let pids: BTreeSet<i32> = blocks.values().map(|b| b.pid).collect();
    assert_eq!(pids.len(), WORKLOADS.len(), "one process per workload");

    let expected = demo::expected_selectors();
    assert_eq!(
        expected.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        WORKLOADS,
        "attestor_tests::demo lists every workload once"
    );
    for (label, want) in expected {
        let block = &blocks[label];
        let got: BTreeSet<String> = block
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix("k8s:").map(str::to_string))
            .collect();
        assert_eq!(got, want, "selectors of {label} (pid {})", block.pid);
        let printed: Vec<&String> = block
            .lines
            .iter()
            .filter(|l| l.starts_with("k8s:"))
            .collect();
        assert_eq!(
            printed.len(),
            want.len(),
            "{label}: a selector printed twice"
        );
        assert!(
            printed.windows(2).all(|w| w[0] < w[1]),
            "{label}: selectors are printed sorted"
        );
        assert!(
            !block.lines.iter().any(|l| l.starts_with("error:")),
            "{label}: {:?}",
            block.lines
        );
        if label == HOST_SERVICE {
            assert!(
                block
                    .lines
                    .iter()
                    .any(|l| l.starts_with("no selectors: not in a pod")),
                "{label}: {:?}",
                block.lines
            );
        } else {
            assert!(
                block
                    .lines
                    .iter()
                    .any(|l| l.starts_with(&format!("{} selectors in ", want.len()))),
                "{label}: {:?}",
                block.lines
            );
        }
    }

    assert_eq!(BAD_PIDS.len(), BAD_PID_OUTCOMES.len());
    for (&(pid, what), outcome) in BAD_PIDS.iter().zip(BAD_PID_OUTCOMES) {
        let line = format!("    attest({pid}) [{what}]: {outcome}");
        assert!(
            stdout.lines().any(|l| l == line),
            "missing line {line:?} in:\n{stdout}"
        );
    }
}
