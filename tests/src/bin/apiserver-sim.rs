//! `apiserver-sim`: run the API-server simulator on loopback for manual tests.
//!
//! Prints one JSON line on stdout when ready, e.g.
//! `{"url":"https://127.0.0.1:41235","port":41235,"ca_path":"/tmp/.../apiserver-ca.crt",
//!   "kubeconfig":"/tmp/.../kubeconfig","namespaces":2,"pods":110}`,
//! then serves until killed.

use std::path::PathBuf;

use attestor_tests::apiserver_sim::ApiServerSim;
use attestor_tests::kubelet_sim::generate_pods;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Kubernetes API-server simulator: HTTPS on 127.0.0.1 with token auth and RBAC")]
struct Args {
    /// Port; 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Accepted token as TOKEN=USER (repeatable). Default: `admin-token=admin`.
    #[arg(long)]
    token: Vec<String>,
    /// User allowed everything (repeatable). Default: `admin`.
    #[arg(long)]
    allow_all: Vec<String>,
    /// Grant as USER=VERB:RESOURCE, e.g. `system:serviceaccount:spire:spire-agent=get:namespaces`.
    #[arg(long)]
    grant: Vec<String>,
    /// Namespace as NAME or NAME:KEY=VALUE,KEY=VALUE (repeatable).
    #[arg(long)]
    namespace: Vec<String>,
    /// Number of generated pods.
    #[arg(long, default_value_t = 0)]
    pods: usize,
    /// Node name put in generated pods.
    #[arg(long, default_value = "node-1")]
    node_name: String,
    /// SubjectAccessReview answer for every review.
    #[arg(long)]
    review_allow: bool,
    /// Directory for apiserver-ca.crt and kubeconfig (default: a new temp directory).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn fail(msg: String) -> ! {
    eprintln!("apiserver-sim: {msg}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tokens = if args.token.is_empty() {
        vec!["admin-token=admin".to_owned()]
    } else {
        args.token.clone()
    };
    let admins = if args.allow_all.is_empty() && args.token.is_empty() {
        vec!["admin".to_owned()]
    } else {
        args.allow_all.clone()
    };
    let mut b = ApiServerSim::builder()
        .port(args.port)
        .review_default(args.review_allow);
    let mut first_token = None;
    for t in &tokens {
        let Some((tok, user)) = t.split_once('=') else {
            fail(format!("--token must be TOKEN=USER, not {t:?}"))
        };
        first_token.get_or_insert_with(|| tok.to_owned());
        b = b.token(tok, user);
    }
    for u in &admins {
        b = b.allow_all(u);
    }
    for g in &args.grant {
        let Some((user, rest)) = g.split_once('=') else {
            fail(format!("--grant must be USER=VERB:RESOURCE, not {g:?}"))
        };
        let Some((verb, resource)) = rest.split_once(':') else {
            fail(format!("--grant must be USER=VERB:RESOURCE, not {g:?}"))
        };
        b = b.grant(user, verb, resource);
    }
    for n in &args.namespace {
        let (name, labels) = n.split_once(':').unwrap_or((n.as_str(), ""));
        let labels: Vec<(&str, &str)> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| l.split_once('=').unwrap_or((l, "")))
            .collect();
        b = b.namespace(name, &labels);
    }
    for p in generate_pods(args.pods, &args.node_name, 1) {
        b = b.pod(p);
    }
    let sim = b
        .start()
        .await
        .unwrap_or_else(|e| fail(format!("start: {e}")));
    let dir = args.out_dir.clone().unwrap_or_else(|| {
        let d = std::env::temp_dir().join(format!("apiserver-sim-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| fail(format!("{}: {e}", d.display())));
        d
    });
    let kubeconfig = sim
        .write_kubeconfig(&dir, first_token.as_deref().unwrap_or(""))
        .unwrap_or_else(|e| fail(format!("writing kubeconfig: {e}")));
    println!(
        "{}",
        serde_json::json!({
            "url": sim.url(), "port": sim.port(),
            "ca_path": dir.join("apiserver-ca.crt"), "kubeconfig": kubeconfig,
            "namespaces": args.namespace.len(), "pods": args.pods,
        })
    );
    std::future::pending::<()>().await;
}
