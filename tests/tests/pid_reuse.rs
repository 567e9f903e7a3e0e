//! PID reuse stress: processes in different pods attest and exit in a tight loop while other
//! processes take over their exact PID numbers. No answer may ever name the pod of a process
//! other than the one holding the PID when the attestation was asked for.
//!
//! How PIDs are recycled: `clone3` with `set_tid` (via `spawn_into_cgroup(.., Some(pid))`)
//! re-creates a process at the *exact* number that was just freed, in the host PID namespace
//! the tracker watches, and `CLONE_INTO_CGROUP` places it in another pod's container cgroup
//! from birth. Every reuse is therefore immediate and exact, which is a harsher schedule than
//! a small `pid_max` (or a child PID namespace) gives: there a number comes back only after
//! the allocator wrapped around, here it comes back within microseconds, while the kernel
//! map, the pod-list cache and the per-version search memo may still hold the previous
//! owner's data. Should another process grab the number first (`EEXIST`), the iteration
//! counts as `reuse missed` and continues with a fresh number.
//!
//! Every attestation goes through the full pipeline: `Attestor::attest` (eBPF tracker,
//! pidfd-verified resolution, locator, kubelet simulator over TLS, pod search, liveness
//! check). Four schedules rotate; for each, what is correct is exact:
//!
//! | schedule        | what happens                                                   | correct       | WRONG                   |
//! |-----------------|----------------------------------------------------------------|---------------|-------------------------|
//! | `alive`         | the holder stays alive through the attestation                 | holder's pod  | any other pod, or none  |
//! | `reused-before` | holder killed and reaped, a new process in another pod takes the PID, then attest | new pod | the old pod (stale data), any other |
//! | `reused-during` | attestation resolved the PID and is held at the kubelet (`Fault::Hold`); holder killed, PID re-taken by another pod, then the kubelet answers | `NotFound` | any selectors at all |
//! | `racy`          | the swap runs on another thread concurrently with the attestation | old or new pod, or a clean error | a third pod, or none |
//!
//! Clean errors are `NotFound`/`Unavailable` statuses. `ATTESTOR_PID_REUSE_ATTESTATIONS` sets
//! the number of attestations (default 2,000 for CI; the long run uses 100,000):
//!
//! ```text
//! ATTESTOR_PID_REUSE_ATTESTATIONS=100000 nice -n 19 \
//!     cargo test --release -p attestor-tests --test pid_reuse -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attestor::attest::Attestor;
use attestor::config::Config;
use attestor::status::{Code, Status};
use attestor::tracker::{Tracker, TrackerMode, TrackerOptions};
use attestor_tests::kubelet_sim::{
    Fault, Gate, KubeletSim, PodBuilder, Runtime, generate_pods, hex64, uuid,
};
use attestor_tests::require_root;
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;

const TOKEN: &str = "pid-reuse-token";
const PODS: usize = 6;

struct Pod {
    uid: String,
    dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Schedule {
    Alive,
    ReusedBefore,
    ReusedDuring,
    Racy,
}

#[derive(Debug, Default)]
struct Tally {
    correct: u64,
    clean_errors: BTreeMap<String, u64>,
    wrong: Vec<String>,
}

#[derive(Debug, Default)]
struct Totals {
    per_schedule: BTreeMap<Schedule, Tally>,
    reuse_exact: u64,
    reuse_missed: u64,
    held_without_request: u64,
}

/// The pod an answer names (its `pod-uid:` selector), `None` for no selectors.
fn named_pod(values: &[String], pods: &[Pod]) -> Result<Option<usize>, String> {
    let uids: Vec<&str> = values
        .iter()
        .filter_map(|v| v.strip_prefix("pod-uid:"))
        .collect();
    match uids.as_slice() {
        [] if values.is_empty() => Ok(None),
        [uid] => pods
            .iter()
            .position(|p| p.uid == *uid)
            .map(Some)
            .ok_or_else(|| format!("unknown pod {uid}")),
        _ => Err(format!("malformed answer {values:?}")),
    }
}

fn is_clean(e: &Status) -> bool {
    matches!(e.code, Code::NotFound | Code::Unavailable)
}

/// The process holding the PID under test.
struct Holder {
    pid: i32,
    pod: usize,
}

fn kill_and_reap(pid: i32) {
    // SAFETY: plain syscalls on our own child; `status` is a valid out-pointer.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

/// Ends `old` and starts a process in `pod` at the same PID if possible.
fn swap(old: &Holder, pod: usize, pods: &[Pod], exact: &mut u64, missed: &mut u64) -> Holder {
    kill_and_reap(old.pid);
    match spawn_into_cgroup(&pods[pod].dir, None, Some(old.pid)) {
        Ok(pid) => {
            assert_eq!(pid, old.pid, "set_tid gave another pid");
            *exact += 1;
            Holder { pid, pod }
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // Someone else took the number between our reap and clone3.
            *missed += 1;
            let pid = spawn_into_cgroup(&pods[pod].dir, None, None).expect("spawn");
            Holder { pid, pod }
        }
        Err(e) => panic!("clone3(set_tid={}): {e}", old.pid),
    }
}

fn attestations_wanted() -> u64 {
    std::env::var("ATTESTOR_PID_REUSE_ATTESTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_names_another_processs_pod_under_exact_pid_reuse() {
    if !require_root() {
        return;
    }
    let total = attestations_wanted();
    let tracker = Arc::new(
        Tracker::start(&TrackerOptions {
            mode: TrackerMode::Ebpf,
            ..TrackerOptions::default()
        })
        .expect("eBPF tracker"),
    );
    let sandbox =
        Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "pidreuse").expect("sandbox");
    let mut pods = Vec::new();
    let mut pod_json = generate_pods(10, "node-1", 77);
    for i in 0..PODS {
        let uid = uuid(9000 + i as u64);
        let hex = hex64(9100 + i as u64);
        let layout = if i % 2 == 0 {
            Layout::SystemdContainerd
        } else {
            Layout::Cgroupfs
        };
        let dir = sandbox.container(layout, &uid, &hex).expect("cgroup");
        pod_json.push(
            PodBuilder::new(&format!("tenant-{i}"))
                .namespace(&format!("ns-{i}"))
                .uid(&uid)
                .service_account(&format!("sa-{i}"))
                .container(
                    "app",
                    "registry.example.com/app:1",
                    Some(&Runtime::Containerd.container_id(&hex)),
                )
                .build(),
        );
        pods.push(Pod { uid, dir });
    }
    let sim = KubeletSim::builder()
        .token(TOKEN)
        .pods(pod_json)
        .start()
        .await
        .expect("simulator");
    let files = TempDir::new("pidreuse");
    let ca = files.write("ca.pem", sim.ca_pem());
    let token = files.write("token", TOKEN);
    let text = format!(
        "kubelet_secure_port = {}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\n\
         poll_retry_interval = \"1ms\"\nmax_poll_attempts = 3\n",
        sim.port(),
        ca.display(),
        token.display()
    );
    let config = Config::parse(&text).expect("config");
    let attestor = Arc::new(Attestor::new(config, tracker, |_| None).expect("attestor"));

    let mut t = Totals::default();
    let pid = spawn_into_cgroup(&pods[0].dir, None, None).expect("spawn");
    let mut holder = Holder { pid, pod: 0 };
    let started = Instant::now();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..total {
        rng = attestor_tests::kubelet_sim::pods::mix(rng.wrapping_add(i));
        let next_pod = (holder.pod + 1 + (rng as usize % (PODS - 1))) % PODS;
        let schedule = match i % 4 {
            0 => Schedule::Alive,
            1 => Schedule::ReusedBefore,
            2 => Schedule::ReusedDuring,
            _ => Schedule::Racy,
        };
        let pid = i64::from(holder.pid);
        // Which pods may be named, and whether NotFound is the only correct answer.
        let (answer, allowed, must_fail): (Result<Vec<String>, Status>, Vec<usize>, bool) =
            match schedule {
                Schedule::Alive => {
                    let r = attestor.attest(pid, std::future::pending()).await;
                    (r, vec![holder.pod], false)
                }
                Schedule::ReusedBefore => {
                    holder = swap(
                        &holder,
                        next_pod,
                        &pods,
                        &mut t.reuse_exact,
                        &mut t.reuse_missed,
                    );
                    let r = attestor
                        .attest(i64::from(holder.pid), std::future::pending())
                        .await;
                    (r, vec![holder.pod], false)
                }
                Schedule::ReusedDuring => {
                    // Let the cached list go stale so this attestation must ask the kubelet.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let gate = Gate::new();
                    sim.fault_next(Fault::Hold(gate.clone()));
                    let before = sim.request_count();
                    let a = attestor.clone();
                    let task =
                        tokio::spawn(async move { a.attest(pid, std::future::pending()).await });
                    // The request reaching the kubelet proves the PID was resolved already.
                    let mut held = false;
                    while !task.is_finished() {
                        if sim.request_count() > before {
                            held = true;
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    let old_pod = holder.pod;
                    if held {
                        holder = swap(
                            &holder,
                            next_pod,
                            &pods,
                            &mut t.reuse_exact,
                            &mut t.reuse_missed,
                        );
                    }
                    gate.open();
                    let r = task.await.expect("join");
                    if held {
                        (r, vec![], true)
                    } else {
                        // Served from a fresh cached list before we could hold it: the
                        // holder was alive throughout.
                        t.held_without_request += 1;
                        (r, vec![old_pod], false)
                    }
                }
                Schedule::Racy => {
                    let a = attestor.clone();
                    let task =
                        tokio::spawn(async move { a.attest(pid, std::future::pending()).await });
                    let old_pod = holder.pod;
                    let (mut exact, mut missed) = (0, 0);
                    let old = Holder {
                        pid: holder.pid,
                        pod: holder.pod,
                    };
                    let dirs: Vec<Pod> = pods
                        .iter()
                        .map(|p| Pod {
                            uid: p.uid.clone(),
                            dir: p.dir.clone(),
                        })
                        .collect();
                    let new = tokio::task::spawn_blocking(move || {
                        let h = swap(&old, next_pod, &dirs, &mut exact, &mut missed);
                        (h, exact, missed)
                    })
                    .await
                    .expect("swap");
                    holder = new.0;
                    t.reuse_exact += new.1;
                    t.reuse_missed += new.2;
                    let r = task.await.expect("join");
                    (r, vec![old_pod, holder.pod], false)
                }
            };
        let tally = t.per_schedule.entry(schedule).or_default();
        match answer {
            Ok(values) => match named_pod(&values, &pods) {
                Ok(Some(p)) if !must_fail && allowed.contains(&p) => tally.correct += 1,
                other => tally.wrong.push(format!(
                    "attestation {i} ({schedule:?}, pid {pid}): named {other:?}, allowed {allowed:?}{}",
                    if must_fail { " (must be NotFound)" } else { "" }
                )),
            },
            Err(e) if must_fail && e.code == Code::NotFound => tally.correct += 1,
            Err(e) if !must_fail && is_clean(&e) => {
                *tally
                    .clean_errors
                    .entry(format!("{:?}", e.code))
                    .or_default() += 1;
            }
            Err(e) => tally.wrong.push(format!(
                "attestation {i} ({schedule:?}, pid {pid}): unexpected error {e}"
            )),
        }
    }
    let elapsed = started.elapsed();
    kill_and_reap(holder.pid);

    let (mut correct, mut clean, mut wrong) = (0, 0, 0);
    for (s, tally) in &t.per_schedule {
        let errors: u64 = tally.clean_errors.values().sum();
        println!(
            "{s:?}: correct {} clean errors {} {:?} wrong {}",
            tally.correct,
            errors,
            tally.clean_errors,
            tally.wrong.len()
        );
        correct += tally.correct;
        clean += errors;
        wrong += tally.wrong.len() as u64;
    }
    println!(
        "pid reuse: {total} attestations in {elapsed:.1?}: correct {correct}, clean errors {clean}, \
         WRONG {wrong}; exact reuses {}, reuse missed {}, reused-during served from cache {}, \
         kubelet requests {}",
        t.reuse_exact,
        t.reuse_missed,
        t.held_without_request,
        sim.request_count()
    );
    let wrongs: Vec<&String> = t.per_schedule.values().flat_map(|t| &t.wrong).collect();
    assert!(wrongs.is_empty(), "WRONG answers: {wrongs:#?}");
    assert_eq!(correct + clean, total);
    // The schedules that are exact must have been exercised, not skipped.
    let exact_during = t.per_schedule[&Schedule::ReusedDuring].correct;
    assert!(
        exact_during >= total / 8,
        "only {exact_during} reused-during attestations were held at the kubelet"
    );
    assert!(
        t.reuse_exact >= total / 4,
        "only {} exact reuses",
        t.reuse_exact
    );
    // Alive and reused-before have exactly one correct answer and nothing to excuse an error.
    for s in [Schedule::Alive, Schedule::ReusedBefore] {
        let tally = &t.per_schedule[&s];
        assert!(
            tally.clean_errors.is_empty(),
            "{s:?}: errors for a live process: {:?}",
            tally.clean_errors
        );
    }
}
