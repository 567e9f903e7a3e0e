//! Kubelet client benchmark against the simulator (loopback TLS, bearer token).
//!
//! ```text
//! ATTESTOR_SKIP_EBPF=1 cargo run --release -p attestor-tests --example kubelet_bench
//! ```
//!
//! 1. Cold fetch: a new client per fetch (TCP connect + TLS handshake + `/pods`), and warm
//!    fetch (pooled connection), for 110- and 250-pod lists, p50/p99, next to the
//!    simulator's own serve time per request (arrival to last body chunk handed over).
//! 2. Burst: 1,000 concurrent pollers through one `PodListFetcher` (500 ms interval, the
//!    SPIRE default), the container appearing in the third list: how many `/pods`
//!    requests the kubelet saw.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attestor::kubelet::{Auth, KubeletClient, KubeletSettings, PodListFetcher};
use attestor_tests::kubelet_sim::{
    ContainerKind, KubeletSim, PodBuilder, Runtime, generate_pods, hex64,
};
use attestor_tests::tempdir::TempDir;

const TOKEN: &str = "bench-token";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn settings(sim: &KubeletSim, dir: &TempDir) -> KubeletSettings {
    let mut s = KubeletSettings::secure(sim.port(), None);
    s.ca_path = dir.write("ca.pem", sim.ca_pem());
    s.auth = Auth::Token {
        path: dir.write("token", TOKEN),
    };
    s
}

fn must<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

async fn latency(pods: usize, rounds: usize) {
    let dir = TempDir::new("bench");
    let sim = must(
        "start sim",
        KubeletSim::builder()
            .token(TOKEN)
            .pods(generate_pods(pods, "node-1", 1))
            .start()
            .await,
    );
    let bytes = sim.current_body().len();
    let s = settings(&sim, &dir);

    let mut cold = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let client = must("client", KubeletClient::new(s.clone()));
        let body = must("cold fetch", client.fetch_pods().await);
        cold.push(t.elapsed());
        assert_eq!(body.len(), bytes);
    }
    let handling_cold = sim.serve_times();

    let client = must("client", KubeletClient::new(s.clone()));
    must("warm-up", client.fetch_pods().await);
    let mut warm = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let body = must("warm fetch", client.fetch_pods().await);
        warm.push(t.elapsed());
        assert_eq!(body.len(), bytes);
    }
    let mut handling = sim.serve_times();
    handling.drain(..handling_cold.len());

    cold.sort();
    warm.sort();
    let mut hc = handling_cold;
    hc.sort();
    handling.sort();
    println!(
        "| {pods} | {:.2} MB | cold (new client: TCP+TLS+GET) | {} | {} | {} | {} |",
        bytes as f64 / 1e6,
        ms(pct(&cold, 0.5)),
        ms(pct(&cold, 0.99)),
        ms(pct(&hc, 0.5)),
        ms(pct(&hc, 0.99)),
    );
    println!(
        "| {pods} | {:.2} MB | warm (pooled connection) | {} | {} | {} | {} |",
        bytes as f64 / 1e6,
        ms(pct(&warm, 0.5)),
        ms(pct(&warm, 0.99)),
        ms(pct(&handling, 0.5)),
        ms(pct(&handling, 0.99)),
    );
}

async fn burst(pollers: usize, pods: usize) {
    let dir = TempDir::new("bench");
    let id = Runtime::Containerd.container_id(&hex64(31337));
    let pending = PodBuilder::new("late-0").namespace("jobs").container(
        "worker",
        "registry.example.com/jobs/worker:1",
        None,
    );
    let uid = pending.uid_str().to_owned();
    let mut list = generate_pods(pods, "node-1", 2);
    list.push(pending.build());
    let sim = must(
        "start sim",
        KubeletSim::builder().token(TOKEN).pods(list).start().await,
    );
    sim.add_container_status_after(
        2,
        &uid,
        ContainerKind::Regular,
        "worker",
        "registry.example.com/jobs/worker:1",
        &id,
    );
    let client = must("client", KubeletClient::new(settings(&sim, &dir)));
    let fetcher = PodListFetcher::new(Arc::new(client), Duration::from_millis(500));

    // One byte scan per list version (the real search is someone else's code).
    let memo: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..pollers {
        let f = fetcher.clone();
        let memo = memo.clone();
        let id = id.clone();
        tasks.spawn(async move {
            f.poll(
                60,
                |l| {
                    let mut m = memo.lock().unwrap_or_else(|e| e.into_inner());
                    let hit = match m.iter().find(|(v, _)| *v == l.version()) {
                        Some((_, h)) => *h,
                        None => {
                            let h = l.body().windows(id.len()).any(|w| w == id.as_bytes());
                            m.push((l.version(), h));
                            h
                        }
                    };
                    Ok(hit.then_some(()))
                },
                std::future::pending(),
            )
            .await
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        if matches!(r, Ok(Ok(()))) {
            ok += 1;
        }
    }
    println!(
        "burst: {pollers} concurrent pollers, {pods}+1 pods, container in list 3: \
         {ok}/{pollers} found, kubelet /pods requests = {} (connections = {}), \
         wall time {} (two 500 ms poll intervals); one request per poller per attempt \
         would have been {}",
        sim.request_count(),
        sim.connection_count(),
        ms(t.elapsed()),
        pollers * 3,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!("rounds per row: {rounds}");
    println!("| pods | body | fetch | client p50 | client p99 | sim serve p50 | sim serve p99 |");
    println!("|---|---|---|---|---|---|---|");
    for pods in [110, 250] {
        latency(pods, rounds).await;
    }
    burst(1000, 110).await;
}
