//! Load: 1,000 concurrent attestations through the real plugin binary's gRPC for a while
//! (30 s in CI; `cargo xtask soak` runs 10 minutes). The plugin is configured against the
//! kubelet simulator (TLS, token), the attested processes are real, in kubelet-style cgroups.
//!
//! Asserted: every call succeeds with the exact selectors (nothing is injected here); the
//! plugin's open file descriptors and resident memory do not grow between the first and
//! the last sample window (beyond a small slack for allocator noise); latency is reported per
//! window so stability can be read off (not asserted: no timing asserts in tests).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use attestor::plugin::proto::config::ConfigureRequest;
use attestor::plugin::proto::config::config_client::ConfigClient;
use attestor::plugin::proto::goplugin::Empty;
use attestor::plugin::proto::goplugin::grpc_controller_client::GrpcControllerClient;
use attestor::plugin::proto::workloadattestor::AttestRequest;
use attestor::plugin::proto::workloadattestor::workload_attestor_client::WorkloadAttestorClient;
use attestor_tests::cart::{POD_UID, app_hex, cart_pod, expected_app_selectors};
use attestor_tests::kubelet_sim::{KubeletSim, generate_pods};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{attestor_bin, comm, kill_and_reap, require_root, wait_for};

const TOKEN: &str = "soak-token";
const CONCURRENCY: usize = 1000;

/// (open fds, VmRSS KiB) of a process.
fn sample(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    (fds, rss)
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v.get(((v.len().max(1) - 1) as f64 * p) as usize)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_attestations_through_the_plugin_without_growth() {
    if !require_root() {
        return;
    }
    let secs: u64 = std::env::var("ATTESTOR_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let bin = attestor_bin();

    let mut pods = generate_pods(60, "node-1", 33);
    pods.push(cart_pod(true).build());
    let sim = KubeletSim::builder()
        .token(TOKEN)
        .pods(pods)
        .start()
        .await
        .expect("simulator");
    let dir = TempDir::new("soak");
    let ca = dir.write("ca.pem", sim.ca_pem());
    let token = dir.write("token", TOKEN);
    let plugin_data = format!(
        "kubelet_secure_port = {}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\npoll_retry_interval = \"500ms\"\n",
        sim.port(),
        ca.display(),
        token.display()
    );

    let cgfs = attestor::cgroupfs::CgroupFs::discover().expect("cgroup2");
    let sandbox = Sandbox::new(&cgfs, "soak").expect("sandbox");
    let cgroup = sandbox
        .container(Layout::SystemdContainerd, POD_UID, &app_hex())
        .expect("cgroup");
    let workloads: Vec<i32> = (0..8)
        .map(|_| spawn_into_cgroup(&cgroup, Some(&["/bin/sleep", "7200"]), None).expect("spawn"))
        .collect();
    for &pid in &workloads {
        wait_for(Duration::from_secs(5), || {
            (comm(pid).as_deref() == Some("sleep")).then_some(())
        })
        .expect("exec");
    }

    let mut plugin: Child = Command::new(&bin)
        .env("WorkloadAttestor", "WorkloadAttestor")
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the plugin");
    let plugin_pid = plugin.id();
    let mut line = String::new();
    BufReader::new(plugin.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("handshake");
    let channel = attestor_tests::plugin_channel(attestor_tests::handshake_socket(&line)).await;
    ConfigClient::new(channel.clone())
        .configure(ConfigureRequest {
            core_configuration: None,
            hcl_configuration: plugin_data,
        })
        .await
        .expect("Configure");

    let want: Vec<String> = expected_app_selectors().into_iter().collect();
    // Warm up sequentially, then take the idle baseline of open descriptors.
    let mut warm = WorkloadAttestorClient::new(channel.clone());
    for &pid in &workloads {
        let r = warm
            .attest(AttestRequest { pid })
            .await
            .expect("warm-up attest");
        assert_eq!(r.get_ref().selector_values, want);
    }
    let (idle_fds, _) = sample(plugin_pid);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..CONCURRENCY {
        let mut client = WorkloadAttestorClient::new(channel.clone());
        let (ok, failed, latencies, want) =
            (ok.clone(), failed.clone(), latencies.clone(), want.clone());
        let pid = workloads[i % workloads.len()];
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let t = Instant::now();
                match client.attest(AttestRequest { pid }).await {
                    Ok(r) if r.get_ref().selector_values == want => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        latencies
                            .lock()
                            .expect("lock")
                            .push(t.elapsed().as_micros() as u64);
                    }
                    Ok(r) => panic!(
                        "wrong selectors for {pid}: {:?}",
                        r.get_ref().selector_values
                    ),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("attest {pid}: {e}");
                    }
                }
            }
        }));
    }
    // Sample the plugin every window; the first window is warm-up. RSS is also traced every
    // 30 s so that a rise can be told apart: steps (allocator high-water) or a slope (leak).
    let window = Duration::from_secs((secs / 6).max(5));
    let trace_every = Duration::from_secs(30);
    let mut samples = Vec::new();
    let mut rss_trace = Vec::new();
    let mut last_ok = 0;
    while Instant::now() < deadline {
        let window_end = (Instant::now() + window).min(deadline);
        while Instant::now() < window_end {
            let left = window_end.saturating_duration_since(Instant::now());
            tokio::time::sleep(trace_every.min(left)).await;
            rss_trace.push(sample(plugin_pid).1);
        }
        let (fds, rss) = sample(plugin_pid);
        let mut lat = std::mem::take(&mut *latencies.lock().expect("lock"));
        let done = ok.load(Ordering::Relaxed);
        println!(
            "window: {:>7} attestations, p50 {:>6} µs, p99 {:>6} µs; plugin fds {fds}, rss {:.1} MiB",
            done - last_ok,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            rss as f64 / 1024.0
        );
        last_ok = done;
        samples.push((fds, rss));
    }
    for t in tasks {
        t.await.expect("caller task");
    }
    let total = ok.load(Ordering::Relaxed);
    println!(
        "{total} attestations in {secs} s by {CONCURRENCY} concurrent callers; kubelet requests {}",
        sim.request_count()
    );
    let trace: Vec<String> = rss_trace
        .iter()
        .map(|kib| format!("{:.2}", *kib as f64 / 1024.0))
        .collect();
    println!(
        "plugin RSS every {} s (MiB): {}",
        trace_every.as_secs().min(window.as_secs()),
        trace.join(" ")
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no errors: none were injected"
    );
    assert!(total >= CONCURRENCY as u64, "every caller got answers");
    // Descriptors: under load each attestation in flight holds a pidfd; once idle again
    // the count must be back to the baseline (a leak of one per call would show thousands).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after_fds, _) = sample(plugin_pid);
    assert!(
        after_fds <= idle_fds + 8,
        "plugin fds: {idle_fds} idle before the load, {after_fds} idle after it"
    );
    // Memory: steady under load, from the second window (after warm-up) to the last.
    assert!(samples.len() >= 3, "at least three sample windows");
    let rss_start = samples[1].1;
    let rss_end = samples.last().expect("samples").1;
    assert!(
        rss_end <= rss_start + 8 * 1024,
        "plugin RSS grew under steady load from {rss_start} KiB to {rss_end} KiB"
    );
    println!(
        "plugin fds idle {idle_fds} → {after_fds}; RSS under load {rss_start} → {rss_end} KiB"
    );

    GrpcControllerClient::new(channel)
        .shutdown(Empty {})
        .await
        .expect("Shutdown");
    assert_eq!(plugin.wait().expect("wait").code(), Some(0));
    for pid in workloads {
        kill_and_reap(pid);
    }
}
