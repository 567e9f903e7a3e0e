//! `cargo xtask bench podlist`: the pod-list index (`attestor::pods::PodIndex`, issue 14)
//! against a SPIRE-style baseline, both on the same generated `/pods` bodies
//! ([`attestor_tests::podgen`]: 110 and 250 pods).
//!
//! The baseline is `tests/go-spire-podlist` (Go, fastjson): what SPIRE v1.15.3 does per
//! kubelet answer (parse the whole body, map pod UID → value) and per attestation
//! (re-serialise the candidate pod, `encoding/json`-decode it, look the container up, build
//! the selectors). It decodes only the fields the selectors read, where SPIRE decodes a full
//! `corev1.Pod`, so its figures are a lower bound of SPIRE's cost. It runs as one long-lived
//! child speaking line-delimited JSON, so rounds alternate Go / ours without process
//! start-up, and it times itself (wall, and process CPU from `getrusage(RUSAGE_SELF)`, which
//! includes its garbage collector).
//!
//! 1. **first**: the first attestation on a list not seen before. Go: parse + map + one
//!    attestation; ours: `PodIndex::new` + `search_in`. A fresh list each repetition (ours: a
//!    new `Bytes` copy of the body, made before the clock starts; the index, and the body
//!    with it, is dropped inside the timing).
//! 2. **cached**: further attestations on a list already parsed / indexed, each for a
//!    container not asked before on it: per round a new list, then every container of it (5
//!    status entries per pod) once, in a shuffled order. No selector memo on either side.
//! 3. **burst**: one new 250-pod list and 250 containers (one per pod, cycling through its 5
//!    status entries), attested one after the other: total process CPU and wall.
//! 4. **memory**: `PodIndex::heap_bytes` next to the body, and the Go heap its parsed list
//!    holds.
//!
//! Both sides must return the same sorted selectors for every container measured (and for a
//! few without a pod UID, where SPIRE examines every pod) before anything is timed; a
//! mismatch panics. Ours runs single-threaded on this process's main thread, and its CPU is
//! this process's `getrusage(RUSAGE_SELF)` (the Go child is another process). `ROUNDS=<n>`
//! changes the number of rounds (default 12).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use attestor::locator::ContainerRef;
use attestor::pods::{PodIndex, SearchOptions};
use attestor::selectors::search_in;
use attestor_tests::go_host::build_go_program;
use attestor_tests::podgen::{self, STATUS_SLOTS};
use attestor_tests::tempdir::TempDir;
use bytes::Bytes;
use serde_json::{Value, json};

/// Pod counts measured (the kubelet's default maximum per node, and a large node).
const SIZES: [u64; 2] = [110, 250];
/// Repetitions of "first" per side, size and round.
const FIRST_REPS: usize = 10;
/// The burst's list.
const BURST_PODS: u64 = 250;
/// Per-attestation target for "cached", 250 pods (ours, p50 wall).
const CACHED_TARGET_US: f64 = 50.0;
/// Speed-up targets: "cached" (Go / ours), burst CPU (Go / ours).
const CACHED_SPEEDUP: f64 = 3.0;
/// Issue 14's targets for the first attestation on a new list (Go / ours).
const FIRST_SPEEDUP: f64 = 10.0;
const BURST_CPU_SPEEDUP: f64 = 5.0;

// --- Timing --------------------------------------------------------------------------------

/// One timed batch: wall time per attestation (or the one burst), process CPU for the batch,
/// and how many selector values were built.
#[derive(Debug, Default)]
struct Batch {
    wall: Vec<Duration>,
    cpu: Duration,
    selectors: usize,
}

impl Batch {
    fn mean_wall(&self) -> Duration {
        self.wall.iter().sum::<Duration>() / self.wall.len() as u32
    }

    fn cpu_per_item(&self) -> Duration {
        self.cpu / self.wall.len() as u32
    }
}

/// This process's CPU time, user + system, every thread (`getrusage(RUSAGE_SELF)`).
fn process_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage writes into the pointer given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    pct(&v, 0.5)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// --- The Go side ---------------------------------------------------------------------------

/// The running Go baseline (see the module doc); closing its stdin ends it.
struct GoSide {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl GoSide {
    fn start(bin: &Path) -> GoSide {
        let mut child = Command::new(bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        GoSide {
            child,
            stdin: Some(stdin),
            stdout,
        }
    }

    fn call(&mut self, cmd: Value) -> Value {
        let stdin = self.stdin.as_mut().expect("Go side stdin open");
        writeln!(stdin, "{cmd}").expect("write to the Go side");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the Go side");
        assert!(
            !line.is_empty(),
            "the Go side exited on {} (its panic is above)",
            cmd["op"]
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    }

    /// A timed batch's answer.
    fn batch(&mut self, cmd: Value) -> Batch {
        let r = self.call(cmd);
        let ns = |v: &Value| Duration::from_nanos(v.as_u64().expect("nanoseconds"));
        Batch {
            wall: r["wall_ns"]
                .as_array()
                .expect("wall_ns")
                .iter()
                .map(ns)
                .collect(),
            cpu: ns(&r["cpu_ns"]),
            selectors: r["selectors"].as_u64().expect("selectors") as usize,
        }
    }
}

impl Drop for GoSide {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}

fn go_targets(targets: &[ContainerRef]) -> Value {
    targets
        .iter()
        .map(|t| json!({"pod_uid": t.pod_uid.as_deref().unwrap_or(""), "container_id": t.container_id}))
        .collect()
}

/// The Go program, built (`go build`, GOPATH mode) under `<target>/tmp/go-spire-podlist`.
fn go_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("the target directory");
    build_go_program(
        "go-spire-podlist",
        &target.join("tmp/go-spire-podlist"),
        "go-spire-podlist",
    )
}

// --- Our side ------------------------------------------------------------------------------

fn our_attest(index: &PodIndex, target: &ContainerRef, opts: &SearchOptions) -> usize {
    match search_in(index, target, opts) {
        Ok(Some(values)) => values.len(),
        Ok(None) => panic!("ours: {target:?} not in the list"),
        Err(e) => panic!("ours: {target:?}: {e}"),
    }
}

/// "first": per target, a new index of a fresh copy of `body`, then one attestation.
fn our_first(body: &[u8], targets: &[ContainerRef], opts: &SearchOptions) -> Batch {
    let copies: Vec<Bytes> = targets
        .iter()
        .map(|_| Bytes::copy_from_slice(body))
        .collect();
    let mut b = Batch::default();
    let cpu = process_cpu();
    for (copy, target) in copies.into_iter().zip(targets) {
        let start = Instant::now();
        let index = PodIndex::new(copy);
        b.selectors += our_attest(&index, target, opts);
        drop(index);
        b.wall.push(start.elapsed());
    }
    b.cpu = process_cpu() - cpu;
    b
}

/// "cached": one attestation per target on `index`.
fn our_cached(index: &PodIndex, targets: &[ContainerRef], opts: &SearchOptions) -> Batch {
    let mut b = Batch::default();
    let cpu = process_cpu();
    for target in targets {
        let start = Instant::now();
        b.selectors += our_attest(index, target, opts);
        b.wall.push(start.elapsed());
    }
    b.cpu = process_cpu() - cpu;
    b
}

/// "burst": one new index of `body`, then every target; the index stays (cached) after.
fn our_burst(body: &[u8], targets: &[ContainerRef], opts: &SearchOptions) -> Batch {
    let copy = Bytes::copy_from_slice(body);
    let mut b = Batch::default();
    let cpu = process_cpu();
    let start = Instant::now();
    let index = PodIndex::new(copy);
    for target in targets {
        b.selectors += our_attest(&index, target, opts);
    }
    b.wall.push(start.elapsed());
    b.cpu = process_cpu() - cpu;
    drop(index);
    b
}

// --- Workload ------------------------------------------------------------------------------

/// Every container of an `n`-pod list (5 status entries per pod), in a shuffled order that
/// depends on `seed`.
fn all_containers(n: u64, seed: u64) -> Vec<ContainerRef> {
    let mut v: Vec<ContainerRef> = (0..n)
        .flat_map(|p| STATUS_SLOTS.map(|s| podgen::container_ref(p, s)))
        .collect();
    // Fisher–Yates with splitmix64.
    let mut x = seed;
    for i in (1..v.len()).rev() {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        v.swap(i, (z % (i as u64 + 1)) as usize);
    }
    v
}

/// "first" targets of one round: different pods and slots each repetition and round.
fn first_targets(n: u64, round: usize) -> Vec<ContainerRef> {
    (0..FIRST_REPS)
        .map(|k| {
            let i = (round * FIRST_REPS + k) as u64;
            podgen::container_ref(i * 37 % n, STATUS_SLOTS[i as usize % STATUS_SLOTS.len()])
        })
        .collect()
}

/// The burst: one container per pod, cycling through the 5 status entries.
fn burst_targets(round: usize) -> Vec<ContainerRef> {
    (0..BURST_PODS)
        .map(|p| podgen::container_ref(p, STATUS_SLOTS[(p as usize + round) % STATUS_SLOTS.len()]))
        .collect()
}

/// Both sides must build the same selectors for every container of the list (and for a few
/// containers given without their pod UID).
fn check_same_selectors(go: &mut GoSide, file: usize, body: &[u8], n: u64, opts: &SearchOptions) {
    let mut targets = all_containers(n, 0);
    // Without a pod UID SPIRE decodes every pod of the list: a few are enough.
    const WITHOUT_UID: u64 = 5;
    targets.extend((0..WITHOUT_UID).map(|p| ContainerRef {
        pod_uid: None,
        ..podgen::container_ref(
            p * n / WITHOUT_UID,
            STATUS_SLOTS[p as usize % STATUS_SLOTS.len()],
        )
    }));
    let r = go.call(json!({"op": "check", "file": file, "targets": go_targets(&targets)}));
    let theirs = r["selectors"].as_array().expect("selectors");
    assert_eq!(theirs.len(), targets.len());
    let index = PodIndex::new(Bytes::copy_from_slice(body));
    for (target, go_values) in targets.iter().zip(theirs) {
        let go_values: Option<Vec<String>> =
            serde_json::from_value(go_values.clone()).expect("selector list");
        let ours = search_in(&index, target, opts)
            .unwrap_or_else(|e| panic!("ours: {target:?}: {e}"))
            .map(|mut v| {
                v.sort();
                v
            });
        assert!(ours.is_some(), "ours: {target:?} not found");
        assert_eq!(
            ours, go_values,
            "SELECTOR MISMATCH for {target:?} in the {n}-pod list (left: ours, right: Go)"
        );
    }
    println!(
        "  {n} pods: same selectors on both sides for {} containers ({WITHOUT_UID} without pod UID)",
        targets.len()
    );
}

// --- Main ----------------------------------------------------------------------------------

struct Side {
    /// "first", per size: per round, (mean wall, CPU) per attestation.
    first: Vec<Vec<(Duration, Duration)>>,
    /// "cached", per size: every attestation's wall, and per round the CPU per attestation.
    cached_wall: Vec<Vec<Duration>>,
    cached_cpu: Vec<Vec<Duration>>,
    /// burst: per round, (wall, CPU).
    burst: Vec<(Duration, Duration)>,
}

impl Side {
    fn new() -> Side {
        Side {
            first: vec![Vec::new(); SIZES.len()],
            cached_wall: vec![Vec::new(); SIZES.len()],
            cached_cpu: vec![Vec::new(); SIZES.len()],
            burst: Vec::new(),
        }
    }
}

/// Runs both sides of one measurement, Go first or ours first.
fn alternate<G, O>(
    go_first: bool,
    go: &mut GoSide,
    run_go: impl FnOnce(&mut GoSide) -> G,
    run_ours: impl FnOnce() -> O,
) -> (G, O) {
    if go_first {
        let g = run_go(go);
        (g, run_ours())
    } else {
        let o = run_ours();
        (run_go(go), o)
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let opts = SearchOptions::default();
    println!(
        "podlist-bench: {rounds} rounds, load average {} on {} CPUs",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let dir = TempDir::new("podlist-bench");
    let bodies: Vec<Vec<u8>> = SIZES.iter().map(|&n| podgen::pod_list(n)).collect();
    let files: Vec<PathBuf> = SIZES
        .iter()
        .zip(&bodies)
        .map(|(n, b)| dir.write(&format!("{n}.json"), b))
        .collect();
    let burst_file = SIZES
        .iter()
        .position(|&n| n == BURST_PODS)
        .expect("the burst size is one of SIZES");

    let mut go = GoSide::start(&go_binary());
    let r = go.call(json!({"op": "load", "files": files}));
    assert_eq!(r["ok"], true, "load: {r}");

    println!("check:");
    for (f, (&n, body)) in SIZES.iter().zip(&bodies).enumerate() {
        check_same_selectors(&mut go, f, body, n, &opts);
    }

    let mut go_side = Side::new();
    let mut ours = Side::new();
    for round in 0..rounds {
        // Who goes first alternates, so a load change hits both alike over the rounds.
        let go_first = round % 2 == 0;
        for (f, (&n, body)) in SIZES.iter().zip(&bodies).enumerate() {
            // 1. first attestation on a new list.
            let targets = first_targets(n, round);
            let run_go = |go: &mut GoSide| {
                go.batch(json!({"op": "first", "file": f, "targets": go_targets(&targets)}))
            };
            let run_ours = || our_first(body, &targets, &opts);
            let (g, o) = alternate(go_first, &mut go, run_go, run_ours);
            assert_eq!(g.selectors, o.selectors, "first, {n} pods: selector counts");
            go_side.first[f].push((g.mean_wall(), g.cpu_per_item()));
            ours.first[f].push((o.mean_wall(), o.cpu_per_item()));

            // 2. cached list, every container once.
            let targets = all_containers(n, round as u64 + 1);
            let index = PodIndex::new(Bytes::copy_from_slice(body));
            let r = go.call(json!({"op": "cache", "file": f}));
            assert_eq!(r["pods"], n, "cache: {r}");
            let run_go = |go: &mut GoSide| {
                go.batch(json!({"op": "attest", "targets": go_targets(&targets)}))
            };
            let run_ours = || our_cached(&index, &targets, &opts);
            let (g, o) = alternate(go_first, &mut go, run_go, run_ours);
            assert_eq!(
                g.selectors, o.selectors,
                "cached, {n} pods: selector counts"
            );
            go_side.cached_cpu[f].push(g.cpu_per_item());
            ours.cached_cpu[f].push(o.cpu_per_item());
            go_side.cached_wall[f].extend(g.wall);
            ours.cached_wall[f].extend(o.wall);
        }

        // 3. burst.
        let targets = burst_targets(round);
        let body = &bodies[burst_file];
        let run_go = |go: &mut GoSide| {
            go.batch(json!({"op": "burst", "file": burst_file, "targets": go_targets(&targets)}))
        };
        let run_ours = || our_burst(body, &targets, &opts);
        let (g, o) = alternate(go_first, &mut go, run_go, run_ours);
        assert_eq!(g.selectors, o.selectors, "burst: selector counts");
        go_side.burst.push((g.wall[0], g.cpu));
        ours.burst.push((o.wall[0], o.cpu));
        eprint!(".");
    }
    eprintln!();

    // 4. memory.
    let mut memory = Vec::new();
    for (f, (&n, body)) in SIZES.iter().zip(&bodies).enumerate() {
        let index = PodIndex::new(Bytes::copy_from_slice(body));
        let r = go.call(json!({"op": "cache", "file": f}));
        memory.push((
            n,
            body.len(),
            index.heap_bytes(),
            index.pod_count(),
            index.entry_count(),
            r["heap_bytes"].as_i64().unwrap_or(0),
        ));
    }
    drop(go);

    report(rounds, &bodies, &go_side, &ours, &memory);
    println!("load average at the end: {}", loadavg());
}

type Memory = (u64, usize, usize, usize, usize, i64);

fn report(rounds: usize, bodies: &[Vec<u8>], go: &Side, ours: &Side, memory: &[Memory]) {
    println!();
    println!(
        "Median over {rounds} rounds unless said otherwise; ratio = Go / ours (how many times less ours takes)."
    );
    println!();
    println!(
        "| measurement | pods | body | Go wall | ours wall | ratio | Go CPU | ours CPU | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |name: &str,
               n: u64,
               body: usize,
               gw: Duration,
               ow: Duration,
               gc: Option<(Duration, Duration)>| {
        let cpu = gc.map_or("| – | – | – |".to_string(), |(g, o)| {
            format!("| {} | {} | {} |", fmt(g), fmt(o), ratio(g, o))
        });
        println!(
            "| {name} | {n} | {:.2} MB | {} | {} | {} {cpu}",
            body as f64 / 1e6,
            fmt(gw),
            fmt(ow),
            ratio(gw, ow)
        );
    };
    let mut cached_250 = None;
    let mut first_speedups = Vec::new();
    for (f, &n) in SIZES.iter().enumerate() {
        let body = bodies[f].len();
        let wall = |s: &Side| median(s.first[f].iter().map(|x| x.0).collect());
        let cpu = |s: &Side| median(s.first[f].iter().map(|x| x.1).collect());
        let speedup = |g: Duration, o: Duration| g.as_secs_f64() / o.as_secs_f64();
        first_speedups.push((
            n,
            speedup(wall(go), wall(ours)),
            speedup(cpu(go), cpu(ours)),
        ));
        row(
            "first attestation, new list",
            n,
            body,
            wall(go),
            wall(ours),
            Some((cpu(go), cpu(ours))),
        );
        let mut gw = go.cached_wall[f].clone();
        let mut ow = ours.cached_wall[f].clone();
        gw.sort();
        ow.sort();
        let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
        let (gc, oc) = (
            median(go.cached_cpu[f].clone()),
            median(ours.cached_cpu[f].clone()),
        );
        row(
            &format!(
                "cached list, per attestation p50 (all rounds, n={})",
                gw.len()
            ),
            n,
            body,
            pct(&gw, 0.5),
            pct(&ow, 0.5),
            None,
        );
        row(
            "cached list, per attestation p99",
            n,
            body,
            pct(&gw, 0.99),
            pct(&ow, 0.99),
            None,
        );
        row(
            "cached list, per attestation mean (CPU: per round)",
            n,
            body,
            mean(&gw),
            mean(&ow),
            Some((gc, oc)),
        );
        if n == 250 {
            cached_250 = Some((pct(&gw, 0.5), pct(&ow, 0.5), gc, oc));
        }
    }
    let wall = |s: &Side| median(s.burst.iter().map(|x| x.0).collect());
    let cpu = |s: &Side| median(s.burst.iter().map(|x| x.1).collect());
    let burst_file = SIZES.iter().position(|&n| n == BURST_PODS).unwrap_or(0);
    let (gbc, obc) = (cpu(go), cpu(ours));
    row(
        &format!("burst: new list + {BURST_PODS} containers, total"),
        BURST_PODS,
        bodies[burst_file].len(),
        wall(go),
        wall(ours),
        Some((gbc, obc)),
    );

    println!();
    println!(
        "| memory | pods | body | index heap_bytes | index / body | pods indexed | entries | Go heap held by the parsed list |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for &(n, body, heap, pods, entries, go_heap) in memory {
        println!(
            "| | {n} | {:.2} MB | {:.1} KB | {:.2}% | {pods} | {entries} | {:.2} MB |",
            body as f64 / 1e6,
            heap as f64 / 1e3,
            heap as f64 * 100.0 / body as f64,
            go_heap as f64 / 1e6
        );
    }

    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    for (n, wall, cpu) in first_speedups {
        println!(
            "target: first attestation on a new list, {n} pods, ours ≥ {FIRST_SPEEDUP}× faster: {} (wall {wall:.1}×, CPU {cpu:.1}×)",
            verdict(wall >= FIRST_SPEEDUP && cpu >= FIRST_SPEEDUP)
        );
    }
    if let Some((gp50, op50, gc, oc)) = cached_250 {
        let speed_wall = gp50.as_secs_f64() / op50.as_secs_f64();
        let speed_cpu = gc.as_secs_f64() / oc.as_secs_f64();
        println!(
            "target: cached list, 250 pods, ours ≤ {CACHED_TARGET_US} µs per attestation: {} (p50 wall {:.1} µs, mean CPU {:.1} µs)",
            verdict(us(op50) <= CACHED_TARGET_US && us(oc) <= CACHED_TARGET_US),
            us(op50),
            us(oc)
        );
        println!(
            "target: cached list, 250 pods, ours ≥ {CACHED_SPEEDUP}× faster: {} (p50 wall {speed_wall:.1}×, mean CPU {speed_cpu:.1}×)",
            verdict(speed_wall >= CACHED_SPEEDUP && speed_cpu >= CACHED_SPEEDUP)
        );
    }
    let burst_speed = gbc.as_secs_f64() / obc.as_secs_f64();
    println!(
        "target: burst, ours ≥ {BURST_CPU_SPEEDUP}× less CPU: {} ({burst_speed:.1}×)",
        verdict(burst_speed >= BURST_CPU_SPEEDUP)
    );
}

/// Go / ours, with two decimals when ours is slower.
fn ratio(go: Duration, ours: Duration) -> String {
    let r = go.as_secs_f64() / ours.as_secs_f64();
    if r < 1.0 {
        format!("{r:.2}×")
    } else {
        format!("{r:.1}×")
    }
}

/// µs below 1 ms, else ms.
fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", us(d))
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}
