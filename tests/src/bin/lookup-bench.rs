//! `cargo xtask bench lookup`: concurrent warm lookups through the tracker (issue 12).
//!
//! 1, 8 and 64 threads resolve live processes whose cgroup the kernel map answers, through
//! two eBPF trackers of the same build: one as the tracker is now (lookups through their own
//! map handle, no lock), one with every map operation behind one `Mutex`, as before
//! (`Tracker::serialise_map_for_bench`, the baseline). Rounds alternate between the two so
//! machine load hits both alike. Two figures each: the map lookup alone (`map_entry`) and a
//! whole `resolve` (pidfd open, lookup, liveness check, id → path from the warm cache, and the
//! pidfd close when the `Resolution` drops).
//!
//! Also: `Tracker::start` in eBPF mode (load, attach, seed), median of several starts.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use attestor::tracker::{Source, Tracker, TrackerMode, TrackerOptions};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::{comm, kill_and_reap, require_root, wait_for};

const PROCESSES: usize = 64;
/// Calls per (mode, thread count, round), split among the threads.
const CALLS: usize = 64_000;
const ROUNDS: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Lookup,
    Resolve,
}

/// Wall time for `CALLS` calls made by `threads` threads started together.
fn run(tracker: &Tracker, pids: &[i32], threads: usize, call: Call) -> Duration {
    let per_thread = CALLS / threads;
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for i in 0..per_thread {
                    let pid = pids[(t * 7 + i) % pids.len()];
                    match call {
                        Call::Lookup => {
                            let e = tracker.map_entry(pid as u32).expect("map entry");
                            std::hint::black_box(e);
                        }
                        Call::Resolve => {
                            let r = tracker.resolve(pid as i64).expect("resolve");
                            debug_assert!(matches!(r.source, Source::Ebpf(_)));
                            std::hint::black_box(r);
                        }
                    }
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let t = Instant::now();
        barrier.wait();
        t.elapsed()
    })
}

fn start_ebpf() -> Tracker {
    Tracker::start(&TrackerOptions {
        mode: TrackerMode::Ebpf,
        ..TrackerOptions::default()
    })
    .expect("eBPF tracker")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !require_root() {
        return;
    }
    println!(
        "kernel: {}, {} CPUs",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!("\n[1] Tracker::start in eBPF mode (load + attach + seed), 9 starts");
    drop(start_ebpf()); // warm-up: page cache of the BTF file, the binary
    let starts: Vec<Duration> = (0..9)
        .map(|_| {
            let t = Instant::now();
            let tracker = start_ebpf();
            let d = t.elapsed();
            drop(tracker);
            d
        })
        .collect();
    let mut sorted = starts.clone();
    sorted.sort();
    println!(
        "  median {:.1} ms (min {:.1}, max {:.1})",
        median(starts).as_secs_f64() * 1e3,
        sorted[0].as_secs_f64() * 1e3,
        sorted[sorted.len() - 1].as_secs_f64() * 1e3
    );

    let lock_free = start_ebpf();
    let mut serialised = start_ebpf();
    serialised.serialise_map_for_bench();
    let sandbox = Sandbox::new(lock_free.cgroupfs().expect("cgroup2 mount"), "lookup-bench")
        .expect("sandbox");
    let mut pids = Vec::new();
    for i in 0..PROCESSES {
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        let dir = sandbox
            .container(Layout::SystemdContainerd, &uid, &format!("{i:064x}"))
            .expect("cgroup");
        pids.push(spawn_into_cgroup(&dir, Some(&["/bin/sleep", "600"]), None).expect("spawn"));
    }
    for &pid in &pids {
        wait_for(Duration::from_secs(5), || {
            (comm(pid).as_deref() == Some("sleep")).then_some(())
        })
        .expect("exec");
        for t in [&lock_free, &serialised] {
            let r = t.resolve(pid as i64).expect("resolve");
            assert!(
                matches!(r.source, Source::Ebpf(_)),
                "pid {pid} answered from {}",
                r.source
            );
        }
    }

    println!(
        "\n[2] {PROCESSES} live processes answered by the kernel map; {CALLS} calls per round split \
         among the threads, {ROUNDS} alternating rounds per row (warm path cache)"
    );
    println!(
        "  {:<8} {:>7}  {:>16} {:>16}  {:>6}",
        "call", "threads", "one Mutex (before)", "lock-free (now)", "ratio"
    );
    for call in [Call::Lookup, Call::Resolve] {
        for threads in [1usize, 8, 64] {
            let _ = run(&serialised, &pids, threads, call);
            let _ = run(&lock_free, &pids, threads, call);
            let (mut before, mut now) = (Duration::ZERO, Duration::ZERO);
            for round in 0..ROUNDS {
                if round % 2 == 0 {
                    before += run(&serialised, &pids, threads, call);
                    now += run(&lock_free, &pids, threads, call);
                } else {
                    now += run(&lock_free, &pids, threads, call);
                    before += run(&serialised, &pids, threads, call);
                }
            }
            let n = (CALLS / threads * threads * ROUNDS) as f64;
            let rate = |d: Duration| n / d.as_secs_f64();
            println!(
                "  {:<8} {:>7}  {:>11.0} k/s  {:>11.0} k/s  {:>5.2}x",
                match call {
                    Call::Lookup => "lookup",
                    Call::Resolve => "resolve",
                },
                threads,
                rate(before) / 1e3,
                rate(now) / 1e3,
                rate(now) / rate(before)
            );
        }
    }
    println!("  (k/s: thousand calls per second over all threads; ratio: lock-free / one Mutex)");

    for pid in &pids {
        kill_and_reap(*pid);
    }
    drop(sandbox);
}
