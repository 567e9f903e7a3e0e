//! `cargo xtask bench tracker`: the three tracker figures in BENCHMARKS.md, each measured
//! against its baseline in the same run.
//!
//! 1. `resolve(pid)` through the eBPF map vs through the pidfd-verified `/proc` read
//!    (and `PIDFD_GET_INFO` where the kernel has it).
//! 2. Process churn: spawns of `/bin/true` with the programs attached vs detached, in
//!    alternating rounds so drift in machine load hits both sides alike.
//! 3. Kernel memory of the process map sized for 32k processes.

use std::process::Command;
use std::time::{Duration, Instant};

use attestor::tracker::{Source, Tracker, TrackerMode, TrackerOptions};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::{comm, kill_and_reap, require_root, wait_for};

static CLOSE_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static CLOSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Times `resolve()` and, separately, dropping its result (which closes the pidfd it keeps
/// for the end-of-attestation liveness check).
fn time_resolves(tracker: &Tracker, pids: &[i32], rounds: usize) -> (Vec<Duration>, Source) {
    let mut samples = Vec::with_capacity(pids.len() * rounds);
    let mut source = None;
    for _ in 0..rounds {
        for &pid in pids {
            let t = Instant::now();
            let r = tracker.resolve(pid as i64).expect("resolve");
            let resolved = t.elapsed();
            source.get_or_insert(r.source);
            let t = Instant::now();
            drop(r);
            samples.push(resolved);
            CLOSE_NS.fetch_add(
                t.elapsed().as_nanos() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            CLOSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    samples.sort();
    (samples, source.expect("at least one sample"))
}

fn report(name: &str, samples: &[Duration]) -> f64 {
    let mean = samples.iter().sum::<Duration>().as_secs_f64() / samples.len() as f64;
    println!(
        "  {name:<28} n={:<6} mean {:>8.2} µs  p50 {:>8.2} µs  p99 {:>8.2} µs",
        samples.len(),
        mean * 1e6,
        percentile(samples, 0.5).as_secs_f64() * 1e6,
        percentile(samples, 0.99).as_secs_f64() * 1e6
    );
    mean
}

fn spawn_round(n: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        let status = Command::new("/bin/true").status().expect("spawn /bin/true");
        assert!(status.success());
    }
    t.elapsed()
}

fn main() {
    if !require_root() {
        return;
    }
    println!(
        "kernel: {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );

    // 1. resolve latency by source
    let ebpf = Tracker::start(&TrackerOptions {
        mode: TrackerMode::Ebpf,
        ..TrackerOptions::default()
    })
    .expect("eBPF tracker");
    let sandbox = Sandbox::new(ebpf.cgroupfs().expect("cgroup2 mount"), "bench").expect("sandbox");
    let mut pids = Vec::new();
    for i in 0..50 {
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        let dir = sandbox
            .container(Layout::SystemdContainerd, &uid, &format!("{i:064x}"))
            .expect("cgroup");
        let pid = spawn_into_cgroup(&dir, Some(&["/bin/sleep", "600"]), None).expect("spawn");
        pids.push(pid);
    }
    for &pid in &pids {
        wait_for(Duration::from_secs(5), || {
            (comm(pid).as_deref() == Some("sleep")).then_some(())
        })
        .expect("exec");
    }
    let procfs = Tracker::start(&TrackerOptions {
        mode: TrackerMode::Procfs,
        pidfd_info: false,
        ..TrackerOptions::default()
    })
    .expect("procfs tracker");
    let pidfd = Tracker::start(&TrackerOptions {
        mode: TrackerMode::Procfs,
        ..TrackerOptions::default()
    })
    .expect("pidfd tracker");
    println!(
        "\n[1] resolve(pid), 50 processes in kubelet-style cgroups, 400 rounds (warm path cache)"
    );
    // Warm-up, then interleave the sources so both see the same machine state.
    let _ = time_resolves(&ebpf, &pids, 20);
    let _ = time_resolves(&procfs, &pids, 20);
    let (mut e_all, mut p_all, mut i_all) = (Vec::new(), Vec::new(), Vec::new());
    let mut info_source = None;
    for _ in 0..40 {
        let (e, s) = time_resolves(&ebpf, &pids, 10);
        assert!(
            matches!(s, Source::Ebpf(_)),
            "eBPF tracker answered from {s:?}"
        );
        e_all.extend(e);
        let (p, s) = time_resolves(&procfs, &pids, 10);
        assert_eq!(s, Source::ProcCgroup);
        p_all.extend(p);
        let (i, s) = time_resolves(&pidfd, &pids, 10);
        info_source = Some(s);
        i_all.extend(i);
    }
    e_all.sort();
    p_all.sort();
    i_all.sort();
    let e = report("ebpf map", &e_all);
    let p = report("pidfd + /proc/<pid>/cgroup", &p_all);
    let i = report(
        &format!("{}", info_source.expect("ran"))
            .chars()
            .take(28)
            .collect::<String>(),
        &i_all,
    );
    let p50 = |v: &[Duration]| percentile(v, 0.5).as_secs_f64();
    println!(
        "  => eBPF map vs /proc fallback: {:.1}x faster (mean), {:.1}x (p50); vs PIDFD_GET_INFO: {:.1}x (mean)",
        p / e,
        p50(&p_all) / p50(&e_all),
        i / e
    );
    let closes = CLOSES.load(std::sync::atomic::Ordering::Relaxed).max(1);
    println!(
        "  (dropping a Resolution closes its pidfd: {:.2} µs mean, same for every source, not included above)",
        CLOSE_NS.load(std::sync::atomic::Ordering::Relaxed) as f64 / closes as f64 / 1000.0
    );
    drop(procfs);
    drop(pidfd);
    for pid in &pids {
        kill_and_reap(*pid);
    }
    drop(sandbox);
    drop(ebpf);

    // 2. spawn overhead
    let rounds = 10;
    let per_round = 500;
    println!(
        "\n[2] {} spawns of /bin/true, {rounds} alternating rounds of {per_round}",
        rounds * per_round
    );
    let _ = spawn_round(200); // warm-up
    let (mut detached, mut attached) = (Duration::ZERO, Duration::ZERO);
    for r in 0..rounds {
        if r % 2 == 0 {
            detached += spawn_round(per_round);
            let t = Tracker::start(&TrackerOptions {
                mode: TrackerMode::Ebpf,
                ..TrackerOptions::default()
            })
            .expect("attach");
            attached += spawn_round(per_round);
            drop(t);
        } else {
            let t = Tracker::start(&TrackerOptions {
                mode: TrackerMode::Ebpf,
                ..TrackerOptions::default()
            })
            .expect("attach");
            attached += spawn_round(per_round);
            drop(t);
            detached += spawn_round(per_round);
        }
    }
    let n = (rounds * per_round) as f64;
    // In-kernel cost of the programs themselves, from the kernel's own BPF run-time stats
    // (immune to the machine noise that dominates the wall-clock comparison on 2 shared vCPUs).
    let t = Tracker::start(&TrackerOptions {
        mode: TrackerMode::Ebpf,
        ..TrackerOptions::default()
    })
    .expect("attach");
    let stats_fd =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time stats");
    let wall = spawn_round(1000);
    let stats = t.program_run_stats();
    drop(stats_fd);
    let total: Duration = stats.iter().map(|(_, _, d)| *d).sum();
    for (name, count, time) in &stats {
        if *count > 0 {
            println!(
                "  {name:<22} {count:>6} runs, {:>6.0} ns/run",
                time.as_nanos() as f64 / *count as f64
            );
        }
    }
    println!(
        "  in-kernel program time per spawn (fork+exec+exit): {:.2} µs = {:.3} % of a {:.0} µs spawn",
        total.as_secs_f64() / 1000.0 * 1e6,
        total.as_secs_f64() / wall.as_secs_f64() * 100.0,
        wall.as_secs_f64() / 1000.0 * 1e6
    );
    drop(t);
    println!(
        "  detached: {:.1} µs/spawn   attached: {:.1} µs/spawn   => {:+.2} %",
        detached.as_secs_f64() / n * 1e6,
        attached.as_secs_f64() / n * 1e6,
        (attached.as_secs_f64() / detached.as_secs_f64() - 1.0) * 100.0
    );

    // 3. map memory
    println!("\n[3] kernel memory of the process map (preallocated hash, 16-byte values)");
    for max in [32_768u32, 65_536] {
        let t = Tracker::start(&TrackerOptions {
            mode: TrackerMode::Ebpf,
            max_processes: max,
            ..TrackerOptions::default()
        })
        .expect("tracker");
        let empty = t.map_memory_bytes().unwrap_or(0);
        let added = t.fill_map_for_test();
        let full = t.map_memory_bytes().unwrap_or(0);
        println!(
            "  max_processes={max:<6} memlock {:.2} MiB (after filling {} more entries: {:.2} MiB) = {:.0} bytes/entry",
            empty as f64 / (1 << 20) as f64,
            added,
            full as f64 / (1 << 20) as f64,
            full as f64 / max as f64
        );
    }
}
