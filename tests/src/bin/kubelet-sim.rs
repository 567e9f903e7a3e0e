//! `kubelet-sim`: run the kubelet simulator on loopback for demos and benchmarks.
//!
//! Prints one JSON line on stdout when ready, e.g.
//! `{"https_port":41235,"https_url":"https://127.0.0.1:41235/pods","http_port":null,
//!   "ca_path":"/tmp/.../kubelet-ca.pem","pods":110,"body_bytes":1183321}`,
//! then serves until killed (SIGINT/SIGTERM or stdin closed is not watched: kill it).

use std::path::PathBuf;

use attestor_tests::kubelet_sim::{AnonymousMode, KubeletSim, generate_pods, pod_list_json};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    about = "Kubelet simulator: serves GET /pods over HTTPS (secure port) and/or HTTP (read-only port) on 127.0.0.1"
)]
struct Args {
    /// HTTPS (secure) port; 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    https_port: u16,
    /// Also serve plain HTTP (read-only port) on this port; 0 picks a free port.
    #[arg(long)]
    http_port: Option<u16>,
    /// Do not serve HTTPS at all (only with --http-port).
    #[arg(long)]
    no_https: bool,
    /// Number of generated pods (ignored with --fixture).
    #[arg(long, default_value_t = 110)]
    pods: usize,
    /// Serve this file verbatim as the /pods answer.
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Node name put in generated pods.
    #[arg(long, default_value = "node-1")]
    node_name: String,
    /// Seed for generated pods.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Accepted bearer token (repeatable).
    #[arg(long)]
    token: Vec<String>,
    /// PEM CA whose client certificates are accepted.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Serving-certificate names (repeatable; default 127.0.0.1 and localhost).
    #[arg(long)]
    server_san: Vec<String>,
    /// Answer to requests without credentials: forbidden (403), unauthorized (401), allowed.
    #[arg(long, default_value = "forbidden")]
    anonymous: String,
    /// Directory for kubelet-ca.pem (default: a new directory under the temp dir).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn fail(msg: String) -> ! {
    eprintln!("kubelet-sim: {msg}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let anonymous = match args.anonymous.as_str() {
        "forbidden" => AnonymousMode::Forbidden,
        "unauthorized" => AnonymousMode::Unauthorized,
        "allowed" => AnonymousMode::Allowed,
        other => fail(format!(
            "--anonymous must be forbidden, unauthorized or allowed, not {other:?}"
        )),
    };
    let body: Vec<u8> = match &args.fixture {
        Some(p) => std::fs::read(p)
            .unwrap_or_else(|e| fail(format!("reading fixture {}: {e}", p.display()))),
        None => pod_list_json(&generate_pods(args.pods, &args.node_name, args.seed)),
    };
    let client_ca = args.client_ca.as_ref().map(|p| {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| fail(format!("reading client CA {}: {e}", p.display())))
    });

    let mut https = None;
    if !args.no_https {
        let mut b = KubeletSim::builder()
            .tls(true)
            .port(args.https_port)
            .anonymous(anonymous)
            .body(body.clone());
        if !args.server_san.is_empty() {
            b = b.server_sans(args.server_san.clone());
        }
        for t in &args.token {
            b = b.token(t);
        }
        if let Some(ca) = &client_ca {
            b = b.client_ca(ca);
        }
        https = Some(
            b.start()
                .await
                .unwrap_or_else(|e| fail(format!("starting HTTPS server: {e}"))),
        );
    }
    let mut http = None;
    if let Some(port) = args.http_port {
        http = Some(
            KubeletSim::builder()
                .tls(false)
                .port(port)
                .body(body.clone())
                .start()
                .await
                .unwrap_or_else(|e| fail(format!("starting HTTP server: {e}"))),
        );
    }
    if https.is_none() && http.is_none() {
        fail("nothing to serve: --no-https without --http-port".into());
    }

    let ca_path = match &https {
        Some(sim) => {
            let dir = args.out_dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("kubelet-sim-{}", std::process::id()))
            });
            if let Err(e) = std::fs::create_dir_all(&dir) {
                fail(format!("creating {}: {e}", dir.display()));
            }
            let p = sim
                .write_ca(&dir)
                .unwrap_or_else(|e| fail(format!("writing CA into {}: {e}", dir.display())));
            Some(p.display().to_string())
        }
        None => None,
    };
    let line = serde_json::json!({
        "https_port": https.as_ref().map(KubeletSim::port),
        "https_url": https.as_ref().map(KubeletSim::url),
        "http_port": http.as_ref().map(KubeletSim::port),
        "http_url": http.as_ref().map(KubeletSim::url),
        "ca_path": ca_path,
        "pods": if args.fixture.is_some() { None } else { Some(args.pods) },
        "body_bytes": body.len(),
    });
    println!("{line}");
    std::future::pending::<()>().await;
}
