//! `attestor attest --pid` and `attestor explain --pid`: live attestation against the node's
//! kubelet, with the configuration a SPIRE agent would pass as `plugin_data`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Failure, OutputFormat};
use crate::attest::{self, Attestor, Pipeline, Trace};
use crate::locator::{self, ContainerRef};
use crate::plugin::{CancellationToken, ReferenceRequest};
use crate::status::{Code, Status};
use crate::tracker::{MEMBERSHIPS_SOURCE, Tracker};

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The workload's PID (host PID namespace).
    #[arg(long, allow_negative_numbers = true)]
    pid: i64,
    /// plugin_data file: HCL, or JSON if the file is a JSON object; `-` reads stdin. At most
    /// 1 MiB.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

fn build(config_path: Option<&Path>) -> Result<(tokio::runtime::Runtime, Pipeline), Status> {
    let config = super::load_config(config_path)?;
    let tracker =
        Tracker::start(&attest::tracker_options(&config)).map_err(attest::start_status)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Status::new(
                Code::Internal,
                format!("cannot start the async runtime: {e}"),
            )
        })?;
    // The kubelet client (hyper) needs the runtime's context to be built.
    let pipeline = {
        let _guard = runtime.enter();
        Pipeline::new(config, Arc::new(tracker), |k| std::env::var(k).ok())?
    };
    Ok((runtime, pipeline))
}

/// Ctrl-C cancels the attestation (SPIRE's caller cancellation).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(super) fn attest(pid: i64, config: Option<&Path>, format: OutputFormat) -> Result<(), Failure> {
    let fail = |status| Failure {
        status,
        format,
        notes: Vec::new(),
    };
    let (runtime, pipeline) = build(config).map_err(fail)?;
    let selectors = runtime
        .block_on(pipeline.attest(pid, interrupted()))
        .map_err(fail)?;
    super::print_selectors(&selectors, format);
    Ok(())
}

/// `attest` of a Broker API reference (`AttestReference`), optionally as a broker would
/// call it (the caller's SPIFFE ID in the request).
pub(super) fn attest_reference(
    request: ReferenceRequest,
    config: Option<&Path>,
    format: OutputFormat,
) -> Result<(), Failure> {
    let fail = |status| Failure {
        status,
        format,
        notes: Vec::new(),
    };
    let (runtime, pipeline) = build(config).map_err(fail)?;
    // Ctrl-C drops the attestation (every step is cancel-safe) and answers Canceled.
    let selectors = runtime
        .block_on(async {
            tokio::select! {
                selectors = pipeline.attest_reference(request, CancellationToken::new()) => selectors,
                () = interrupted() => Err(crate::status::cancelled()),
            }
        })
        .map_err(fail)?;
    super::print_selectors(&selectors, format);
    Ok(())
}

pub(super) fn explain(args: &ExplainArgs) -> Result<(), Failure> {
    let fail = |status| Failure {
        status,
        format: args.output,
        notes: Vec::new(),
    };
    let (runtime, pipeline) = build(args.config.as_deref()).map_err(fail)?;
    let attestor = pipeline.attestor().ok_or_else(|| {
        fail(Status::new(
            Code::FailedPrecondition,
            "kubelet client is disabled",
        ))
    })?;
    let (result, trace) = runtime.block_on(attestor.attest_traced(args.pid, interrupted()));
    match args.output {
        OutputFormat::Text => print_text(attestor, &trace, &result),
        OutputFormat::Json => println!("{}", json(attestor, &trace, &result)),
    }
    result.map(|_| ()).map_err(|status| Failure {
        status,
        // The explanation already went to stdout in JSON mode; the error says the rest.
        format: OutputFormat::Text,
        notes: Vec::new(),
    })
}

fn print_text(attestor: &Attestor, t: &Trace, result: &Result<Vec<String>, Status>) {
    let tracker = attestor.tracker();
    println!("pid {}", t.pid);
    match tracker.fallback_reason() {
        None => println!("  tracker        eBPF (programs attached)"),
        Some(why) => println!("  tracker        fallback ({why})"),
    }
    match &t.resolution {
        Some(r) => {
            println!(
                "  cgroup id      {}   [{} in {:?}]",
                r.cgroup_id, r.source, r.elapsed
            );
            println!("  cgroup path    {}", r.cgroup_path);
        }
        None if t.memberships.is_some() => {
            println!("  cgroup v2      / (the root cgroup: no container there)")
        }
        None => println!("  cgroup         (not resolved)"),
    }
    if let Some(m) = &t.memberships {
        println!(
            "  cgroup file    no container in the v2 path: every hierarchy read   [{} in {:?}]",
            MEMBERSHIPS_SOURCE, m.elapsed
        );
        match t
            .container
            .as_ref()
            .and_then(|c| answering_line(&m.text, c))
        {
            Some((n, line)) => println!("  answered by    /proc/{}/cgroup line {n}: {line}", m.pid),
            None => println!("  answered by    no line names a container"),
        }
    }
    match &t.container {
        Some(c) => {
            println!(
                "  pod uid        {}",
                c.pod_uid
                    .as_deref()
                    .unwrap_or("(not in the path: every pod is searched)")
            );
            println!("  container id   {}", c.container_id);
        }
        None if t.resolution.is_some() || t.memberships.is_some() => {
            println!("  container      none in any cgroup path: not in a pod")
        }
        None => {}
    }
    if let Some(elapsed) = t.kubelet_elapsed {
        println!(
            "  kubelet        {}: {} list(s) searched (newest version {}), {} request(s), {:?}",
            attestor.kubelet_url(),
            t.lists_searched,
            t.list_version.map_or("-".to_string(), |v| v.to_string()),
            t.kubelet_requests,
            elapsed
        );
        if t.lists_searched > 0 {
            println!(
                "  pod index      {} of them indexed by this attestation ({:?}); the rest reused an index",
                t.lists_indexed, t.index_elapsed
            );
        }
    }
    match (attestor.runtime(), &t.runtime) {
        (None, _) => {}
        (Some(r), None) => println!(
            "  runtime        {} (not asked{})",
            r.endpoint(),
            if t.source == Some(attest::Source::KubeletStatus) {
                ": the kubelet's status lists the container"
            } else {
                ""
            }
        ),
        (Some(_), Some(rt)) => {
            println!(
                "  runtime        {}: {} question(s), {:?}",
                rt.endpoint, rt.attempts, rt.elapsed
            );
            if let Some(why) = &rt.fallback {
                println!(
                    "  no fast answer {why}; falling back to the kubelet's status (SPIRE's polling)"
                );
            }
        }
    }
    if let Some(source) = t.source {
        println!("  source         {}", source.as_str());
    }
    if let Some(elapsed) = t.namespace_labels_elapsed {
        println!(
            "  namespace      labels from the API server (enable_namespace_labels), {elapsed:?}"
        );
    }
    match result {
        Ok(selectors) => {
            let pick = |prefix: &str| {
                selectors
                    .iter()
                    .find_map(|s| s.strip_prefix(prefix))
                    .unwrap_or("-")
                    .to_string()
            };
            if !selectors.is_empty() {
                println!(
                    "  matched        pod {}/{} (uid {}), container {}",
                    pick("ns:"),
                    pick("pod-name:"),
                    pick("pod-uid:"),
                    pick("container-name:")
                );
            }
            println!("  selectors      {} in {:?}", selectors.len(), t.total);
            for s in selectors {
                println!("    k8s:{s}");
            }
        }
        Err(e) => println!("  outcome        {e}  (after {:?})", t.total),
    }
}

/// The first `/proc/<pid>/cgroup` line (1-based number, text) whose path names `container`.
fn answering_line<'a>(text: &'a str, container: &ContainerRef) -> Option<(usize, &'a str)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let path = line.splitn(3, ':').nth(2)?;
        let found = locator::locate_path(path)?;
        (found.container_id == container.container_id).then_some((i + 1, line))
    })
}

fn json(attestor: &Attestor, t: &Trace, result: &Result<Vec<String>, Status>) -> serde_json::Value {
    let outcome = match result {
        Ok(selectors) => serde_json::json!({
            "selectors": selectors.iter().map(|s| format!("k8s:{s}")).collect::<Vec<_>>()
        }),
        Err(e) => super::error_json(e),
    };
    serde_json::json!({
        "pid": t.pid,
        "tracker": attestor.tracker().fallback_reason().map_or("ebpf".to_string(), |r| format!("fallback: {r}")),
        "resolution": t.resolution.as_ref().map(super::resolve::json_of),
        "memberships": t.memberships.as_ref().map(|m| {
            let line = t.container.as_ref().and_then(|c| answering_line(&m.text, c));
            serde_json::json!({
                "source": MEMBERSHIPS_SOURCE,
                "elapsed_us": m.elapsed.as_micros() as u64,
                "line": line.map(|(_, l)| l),
            })
        }),
        "container": t.container.as_ref().map(|c| serde_json::json!({
            "pod_uid": c.pod_uid, "container_id": c.container_id
        })),
        "kubelet": t.kubelet_elapsed.map(|e| serde_json::json!({
            "lists_searched": t.lists_searched,
            "list_version": t.list_version,
            "lists_indexed": t.lists_indexed,
            "index_elapsed_us": t.index_elapsed.as_micros() as u64,
            "requests": t.kubelet_requests,
            "elapsed_us": e.as_micros() as u64,
        })),
        "runtime": attestor.runtime().map(|r| serde_json::json!({
            "endpoint": r.endpoint(),
            "attempts": t.runtime.as_ref().map_or(0, |rt| rt.attempts),
            "elapsed_us": t.runtime.as_ref().map_or(0, |rt| rt.elapsed.as_micros() as u64),
            "fallback": t.runtime.as_ref().and_then(|rt| rt.fallback.as_deref()),
        })),
        "source": t.source.map(|s| match s {
            attest::Source::KubeletStatus => "kubelet",
            attest::Source::Runtime => "runtime",
        }),
        "namespace_labels_elapsed_us": t.namespace_labels_elapsed.map(|e| e.as_micros() as u64),
        "total_us": t.total.as_micros() as u64,
        "outcome": outcome,
    })
}
