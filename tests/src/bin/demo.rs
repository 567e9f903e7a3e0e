//! `cargo xtask demo`: live attestation without a cluster.
//!
//! Starts the eBPF tracker and a kubelet simulator (real HTTPS on loopback, bearer token),
//! creates kubelet-style cgroups in a private sandbox, starts workload processes in them the
//! ways container runtimes do, and attests each one as a SPIRE agent would ask us to.
//!
//! One entry point: `cargo xtask demo` runs this binary (`cargo run -p attestor-tests --bin
//! demo`, no arguments), and `tests/tests/demo.rs` runs the very same binary
//! (`CARGO_BIN_EXE_demo`) and checks what it prints against `attestor_tests::demo`, so a
//! broken demo fails CI. What it sets up (pods, workload labels, bad PIDs) lives there.

use std::sync::Arc;
use std::time::Duration;

use attestor::attest::Attestor;
use attestor::config::Config;
use attestor::tracker::{Tracker, TrackerOptions};
use attestor_tests::demo;
use attestor_tests::kubelet_sim::{ContainerKind, KubeletSim, Runtime, generate_pods};
use attestor_tests::sandbox::{Layout, Sandbox};
use attestor_tests::spawn::spawn_into_cgroup;
use attestor_tests::tempdir::TempDir;
use attestor_tests::{children, comm, kill_and_reap, require_root, wait_for};

struct Workload {
    what: &'static str,
    pid: i32,
}

/// Waits until `pid` runs `name`, so that what is attested is the workload, not the fork
/// before its exec.
fn wait_exec(pid: i32, name: &str) -> Result<(), String> {
    wait_for(Duration::from_secs(5), || {
        (comm(pid).as_deref() == Some(name)).then_some(())
    })
    .ok_or_else(|| format!("pid {pid} did not exec {name} within 5 s"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !require_root() {
        return Err("the demo loads eBPF programs and creates cgroups: run it as root".into());
    }
    let tracker = Arc::new(Tracker::start(&TrackerOptions::default())?);
    match tracker.fallback_reason() {
        None => println!(
            "tracker   eBPF programs attached; cgroup2 at {}",
            tracker
                .cgroupfs()
                .expect("cgroup2 mount")
                .mount_point()
                .display()
        ),
        Some(why) => println!("tracker   eBPF not in use ({why}); using the fallback"),
    }

    // Two pods on this "node", among generated ones (attestor_tests::demo).
    let (web_app, web_proxy, batch_job, late) = (
        demo::web_app_hex(),
        demo::web_proxy_hex(),
        demo::report_hex(),
        demo::debugger_hex(),
    );
    let (web_uid, batch_uid) = (demo::WEB_UID, demo::BATCH_UID);
    let (web, batch) = (demo::web_pod(), demo::batch_pod());
    let mut pods = generate_pods(demo::GENERATED_PODS, "node-1", 7);
    pods.push(web.build());
    pods.push(batch.build());
    let sim = KubeletSim::builder()
        .token(demo::TOKEN)
        .pods(pods)
        .start()
        .await?;
    // A debug container whose status the kubelet reports only after two more polls.
    sim.add_container_status_after(
        demo::DEBUGGER_AFTER_POLLS,
        web_uid,
        ContainerKind::Ephemeral,
        demo::DEBUGGER_NAME,
        demo::DEBUGGER_IMAGE,
        &Runtime::Containerd.container_id(&late),
    );

    let dir = TempDir::new("demo");
    let ca = dir.write("kubelet-ca.pem", sim.ca_pem());
    let token = dir.write("token", demo::TOKEN);
    let plugin_data = format!(
        "kubelet_secure_port = {}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\npoll_retry_interval = \"200ms\"\n",
        sim.port(),
        ca.display(),
        token.display()
    );
    println!(
        "kubelet   simulator at {} (TLS, bearer token, {} pods)",
        sim.url(),
        demo::GENERATED_PODS + 2
    );
    println!(
        "plugin_data:\n    {}",
        plugin_data.trim_end().replace('\n', "\n    ")
    );
    let attestor = Attestor::new(
        Config::parse(&plugin_data).map_err(|e| format!("{e:?}"))?,
        tracker.clone(),
        |_| None,
    )?;

    let sandbox = Sandbox::new(tracker.cgroupfs().expect("cgroup2 mount"), "demo")?;
    let mut workloads = Vec::new();
    // Started directly in the container cgroup, as runc does with clone3(CLONE_INTO_CGROUP).
    let d = sandbox.container(Layout::SystemdContainerd, web_uid, &web_app)?;
    let pid = spawn_into_cgroup(&d, Some(&["/bin/sleep", "60"]), None)?;
    wait_exec(pid, "sleep")?;
    workloads.push(Workload {
        what: demo::WEB_APP,
        pid,
    });
    // Started elsewhere, then moved by writing cgroup.procs.
    let d = sandbox.container(Layout::SystemdContainerd, web_uid, &web_proxy)?;
    let mut proxy = std::process::Command::new("sleep").arg("60").spawn()?;
    Sandbox::move_process(&d, proxy.id() as i32)?;
    workloads.push(Workload {
        what: demo::WEB_PROXY,
        pid: proxy.id() as i32,
    });
    // A shell that forks a child inside a cgroupfs-driver pod.
    let d = sandbox.container(Layout::Cgroupfs, batch_uid, &batch_job)?;
    let sh = spawn_into_cgroup(&d, Some(&["/bin/sh", "-c", "sleep 60 & wait"]), None)?;
    workloads.push(Workload {
        what: demo::REPORT_SHELL,
        pid: sh,
    });
    let child = wait_for(Duration::from_secs(5), || children(sh).into_iter().next())
        .ok_or("the shell did not fork its child within 5 s")?;
    wait_exec(child, "sleep")?;
    workloads.push(Workload {
        what: demo::REPORT_CHILD,
        pid: child,
    });
    // `kubectl debug`: an ephemeral container, not yet in the kubelet's status.
    let d = sandbox.container(Layout::SystemdContainerd, web_uid, &late)?;
    let dbg = spawn_into_cgroup(&d, Some(&["/bin/sleep", "60"]), None)?;
    wait_exec(dbg, "sleep")?;
    workloads.push(Workload {
        what: demo::WEB_DEBUGGER,
        pid: dbg,
    });
    // A host process.
    let d = sandbox.dir("system.slice/cron.service")?;
    let host = spawn_into_cgroup(&d, Some(&["/bin/sleep", "60"]), None)?;
    wait_exec(host, "sleep")?;
    workloads.push(Workload {
        what: demo::HOST_SERVICE,
        pid: host,
    });

    for w in &workloads {
        let (result, trace) = attestor
            .attest_traced(w.pid as i64, std::future::pending())
            .await;
        println!("\npid {}  {}", w.pid, w.what);
        if let Some(r) = &trace.resolution {
            println!(
                "    cgroup   {}\n    source   {} ({:?})",
                r.cgroup_path, r.source, r.elapsed
            );
        }
        if trace.lists_searched > 0 {
            println!(
                "    kubelet  {} pod list(s) searched, newest version {}",
                trace.lists_searched,
                trace.list_version.unwrap_or(0)
            );
        }
        match result {
            Ok(selectors) if selectors.is_empty() => {
                println!("    no selectors: not in a pod ({:?})", trace.total)
            }
            Ok(selectors) => {
                println!("    {} selectors in {:?}:", selectors.len(), trace.total);
                for s in selectors {
                    println!("      k8s:{s}");
                }
            }
            Err(e) => println!("    error: {e}"),
        }
    }
    println!("\nPIDs that are not workloads:");
    for &(pid, what) in demo::BAD_PIDS {
        match attestor.attest(pid, std::future::pending()).await {
            Ok(s) => println!(
                "    attest({pid}) [{what}]: {} selectors (not in a pod)",
                s.len()
            ),
            Err(e) => println!("    attest({pid}) [{what}]: {e}"),
        }
    }
    println!("\nkubelet requests made: {}", sim.request_count());
    let _ = proxy.kill();
    let _ = proxy.wait();
    for w in &workloads {
        kill_and_reap(w.pid);
    }
    drop(sandbox);
    Ok(())
}
