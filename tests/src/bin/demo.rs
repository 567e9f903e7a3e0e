//! `cargo xtask demo`: live attestation without a cluster.
//!
//! Starts the eBPF tracker and a kubelet simulator (real HTTPS on loopback, bearer token),
//! creates kubelet-style cgroups in a private sandbox, starts workload processes in them the
//! ways container runtimes do, and attests each one as a SPIRE agent would ask us to.

use std::sync::Arc;
use std::time::Duration;

use attestor::attest::Attestor;
use attestor::config::Config;
use attestor::sandbox::{Layout, Sandbox};
use attestor::tracker::{Tracker, TrackerOptions, spawn_into_cgroup};
use attestor_tests::kubelet_sim::{
    ContainerKind, KubeletSim, PodBuilder, Runtime, generate_pods, hex64,
};
use attestor_tests::tempdir::TempDir;
use attestor_tests::{children, comm, kill_and_reap, require_root, wait_for};

const TOKEN: &str = "demo-token";

struct Workload {
    what: &'static str,
    pid: i32,
}

fn wait_exec(pid: i32, name: &str) {
    let _ = wait_for(Duration::from_secs(5), || {
        (comm(pid).as_deref() == Some(name)).then_some(())
    });
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

    // Two pods on this "node", among 40 generated ones.
    let web_uid = "5b7f3c2a-1d2e-4f60-8a9b-0c1d2e3f4a5b";
    let batch_uid = "0e4c9a55-7f1b-4c3d-9e2a-6b5d4c3b2a19";
    let (web_app, web_proxy, batch_job, late) = (hex64(1), hex64(2), hex64(3), hex64(4));
    let web = PodBuilder::new("web-6c9f7-x2k4q")
        .namespace("shop")
        .uid(web_uid)
        .service_account("web")
        .label("app", "web")
        .owner(
            "ReplicaSet",
            "web-6c9f7",
            "a0a1a2a3-b0b1-4c0c-8d0d-e0e1e2e3e4e5",
        )
        .container(
            "app",
            "registry.example.com/shop/web:2.4",
            Some(&Runtime::Containerd.container_id(&web_app)),
        )
        .container(
            "proxy",
            "registry.example.com/mesh/proxy:1.22",
            Some(&Runtime::Containerd.container_id(&web_proxy)),
        )
        .realistic();
    let batch = PodBuilder::new("report-29182")
        .namespace("finance")
        .uid(batch_uid)
        .service_account("reports")
        .owner(
            "Job",
            "report-29182",
            "c0c1c2c3-d0d1-4e0e-8f0f-a0a1a2a3a4a5",
        )
        .container(
            "report",
            "registry.example.com/finance/report:9",
            Some(&Runtime::Containerd.container_id(&batch_job)),
        )
        .realistic();
    let mut pods = generate_pods(40, "node-1", 7);
    pods.push(web.build());
    pods.push(batch.build());
    let sim = KubeletSim::builder()
        .token(TOKEN)
        .pods(pods)
        .start()
        .await?;
    // A debug container whose status the kubelet reports only after two more polls.
    sim.add_container_status_after(
        2,
        web_uid,
        ContainerKind::Ephemeral,
        "debugger-7x2",
        "busybox:1.36",
        &Runtime::Containerd.container_id(&late),
    );

    let dir = TempDir::new("demo");
    let ca = dir.write("kubelet-ca.pem", sim.ca_pem());
    let token = dir.write("token", TOKEN);
    let plugin_data = format!(
        "kubelet_secure_port = {}\nkubelet_ca_path = \"{}\"\ntoken_path = \"{}\"\npoll_retry_interval = \"200ms\"\n",
        sim.port(),
        ca.display(),
        token.display()
    );
    println!(
        "kubelet   simulator at {} (TLS, bearer token, 42 pods)",
        sim.url()
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
    wait_exec(pid, "sleep");
    workloads.push(Workload {
        what: "web/app (systemd driver, clone3 into the cgroup)",
        pid,
    });
    // Started elsewhere, then moved by writing cgroup.procs.
    let d = sandbox.container(Layout::SystemdContainerd, web_uid, &web_proxy)?;
    let mut proxy = std::process::Command::new("sleep").arg("60").spawn()?;
    Sandbox::move_process(&d, proxy.id() as i32)?;
    workloads.push(Workload {
        what: "web/proxy (moved via cgroup.procs)",
        pid: proxy.id() as i32,
    });
    // A shell that forks a child inside a cgroupfs-driver pod.
    let d = sandbox.container(Layout::Cgroupfs, batch_uid, &batch_job)?;
    let sh = spawn_into_cgroup(&d, Some(&["/bin/sh", "-c", "sleep 60 & wait"]), None)?;
    let child = wait_for(Duration::from_secs(5), || children(sh).into_iter().next());
    workloads.push(Workload {
        what: "finance/report shell (cgroupfs driver)",
        pid: sh,
    });
    if let Some(c) = child {
        wait_exec(c, "sleep");
        workloads.push(Workload {
            what: "  its forked child",
            pid: c,
        });
    }
    // `kubectl debug`: an ephemeral container, not yet in the kubelet's status.
    let d = sandbox.container(Layout::SystemdContainerd, web_uid, &late)?;
    let dbg = spawn_into_cgroup(&d, Some(&["/bin/sleep", "60"]), None)?;
    wait_exec(dbg, "sleep");
    workloads.push(Workload {
        what: "web/debugger (ephemeral, status appears late)",
        pid: dbg,
    });
    // A host process.
    let d = sandbox.dir("system.slice/cron.service")?;
    let host = spawn_into_cgroup(&d, Some(&["/bin/sleep", "60"]), None)?;
    wait_exec(host, "sleep");
    workloads.push(Workload {
        what: "host service (not in a pod)",
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
    for (pid, what) in [
        (0i64, "pid 0"),
        (-5, "negative"),
        (2, "kthreadd"),
        (4_194_305, "above pid_max"),
    ] {
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
