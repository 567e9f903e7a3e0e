//! The deploy path as an operator runs it, end to end on this node's architecture:
//!
//! 1. `cargo xtask dist`'s OCI image (the multi-arch index, `attestor-oci.tar`) is imported
//!    into the suite's private containerd and named by digest, as a pull by digest names it;
//! 2. the rendered DaemonSet's `install-attestor` init container is run through CRI exactly
//!    as the manifest says: its image reference, command, security context and volume (the
//!    `emptyDir` becomes a host directory, as the kubelet makes one);
//! 3. the rendered `agent.conf` is read as the SPIRE agent reads it (HCL v1, in the Go host:
//!    tests/go-host/agentconfig.go), its `plugin_cmd` is found in the volume through the
//!    agent container's mounts, and HashiCorp's go-plugin client loads it with
//!    `plugin_checksum` and configures it with `plugin_data`; a checksum one digit off is
//!    refused.
//!
//! It also validates the rendered manifests against the Kubernetes schemas (both versions
//! of [`manifests::VERSIONS`]) and checks that every place that states the binary's hash
//! agrees: SHA256SUMS, dist.json, agent.conf, the installer's own output, the file.
//!
//! Needs root and `cargo xtask dist` run first (`cargo xtask test` runs it; the output
//! directory is `target/dist`, or `$ATTESTOR_DIST_DIR`): a missing dist fails, never skips.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use attestor_tests::containerd::Containerd;
use attestor_tests::containerd::pod::{ContainerSpec, Kind, Pod, PodSpec};
use attestor_tests::cri::api;
use attestor_tests::go_host::GoHost;
use attestor_tests::kubelet_sim::TestCa;
use attestor_tests::manifests::{self, VERSIONS, documents, validate};
use attestor_tests::ok;
use attestor_tests::tempdir::TempDir;
use serde_json::{Value, json};

/// What `cargo xtask dist` wrote (xtask/src/dist.rs).
struct Dist {
    dir: PathBuf,
    info: Value,
}

impl Dist {
    fn open() -> Dist {
        let dir = std::env::var_os("ATTESTOR_DIST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifests::workspace().join("target/dist"));
        let path = dir.join("dist.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run `cargo xtask dist` first (`cargo xtask test` does)",
                path.display()
            )
        });
        let info = serde_json::from_str(&text).expect("dist.json is JSON");
        Dist { dir, info }
    }

    fn str(&self, pointer: &str) -> String {
        self.info
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("dist.json has no {pointer}: {}", self.info))
            .to_string()
    }
}

/// This machine's architecture as OCI and Kubernetes name it.
fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no attestor build for {other}"),
    }
}

/// `name` as containerd's CRI stores it: Docker's normalisation (a first component with
/// no `.`/`:` and not `localhost` is a Docker Hub path; a single one is in `library/`).
fn normalized(name: &str) -> String {
    let first = name.split('/').next().unwrap_or_default();
    if name.contains('/') && (first.contains(['.', ':']) || first == "localhost") {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

fn ctr(cd: &Containerd, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(cd.socket())
        .args(["-n", "k8s.io"])
        .args(args)
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// The kubelet's CRI form of a container `securityContext` (pkg/kubelet/kuberuntime
/// `determineEffectiveSecurityContext` / `convertToRuntimeSecurityContext`): the three
/// fields the init container sets.
fn cri_security(sc: &Value) -> api::LinuxContainerSecurityContext {
    let drop: Vec<String> = sc["capabilities"]["drop"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("capability").to_string())
                .collect()
        })
        .unwrap_or_default();
    api::LinuxContainerSecurityContext {
        readonly_rootfs: sc["readOnlyRootFilesystem"] == json!(true),
        no_new_privs: sc["allowPrivilegeEscalation"] == json!(false),
        capabilities: Some(api::Capability {
            drop_capabilities: drop,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The host directory behind `mount_path` of `container`'s volume mounts (each volume an
/// `emptyDir`, made under `volumes`, as the kubelet does under its pod directory).
fn host_path_of(pod: &Value, container: &Value, in_container: &str, volumes: &Path) -> PathBuf {
    for m in container["volumeMounts"].as_array().expect("volumeMounts") {
        let mount_path = m["mountPath"].as_str().expect("mountPath");
        if let Some(rest) = Path::new(in_container)
            .strip_prefix(mount_path)
            .ok()
            .filter(|_| mount_path != "/")
        {
            let name = m["name"].as_str().expect("volume name");
            let volume = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("volume {name} is not declared"));
            assert!(
                volume.get("emptyDir").is_some(),
                "volume {name} is not an emptyDir: {volume}"
            );
            return volumes.join(name).join(rest);
        }
    }
    panic!("no volume of {} holds {in_container}", container["name"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_container_installs_what_the_agent_loads_with_the_shipped_checksum() {
    let dist = Dist::open();
    let arch = node_arch();
    let deploy = dist.dir.join("deploy").join(arch);

    // The rendered manifests are valid Kubernetes objects, for both arches.
    for a in ["amd64", "arm64"] {
        for file in ["spire-agent-daemonset.yaml", "spire-agent-config.yaml"] {
            let path = dist.dir.join("deploy").join(a).join(file);
            for version in VERSIONS {
                if let Err(e) = validate(&path, version) {
                    panic!("{} (Kubernetes {version}): {e}", path.display());
                }
            }
        }
    }
    let ds = documents(&deploy.join("spire-agent-daemonset.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod_spec = &ds["spec"]["template"]["spec"];
    assert_eq!(pod_spec["nodeSelector"]["kubernetes.io/arch"], arch);
    let config_map = documents(&deploy.join("spire-agent-config.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let agent_conf = deploy.join("agent.conf");
    assert_eq!(
        config_map["data"]["agent.conf"].as_str(),
        Some(
            std::fs::read_to_string(&agent_conf)
                .expect("agent.conf")
                .as_str()
        ),
        "the ConfigMap carries the rendered agent.conf"
    );
    let volumes = pod_spec["volumes"].as_array().expect("volumes");
    assert!(
        volumes.iter().any(|v| v["name"] == "spire-config"
            && v["configMap"]["name"] == config_map["metadata"]["name"]),
        "the DaemonSet mounts the ConfigMap it ships with"
    );
    let init = pod_spec["initContainers"]
        .as_array()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"] == "install-attestor")
        .expect("the install-attestor init container")
        .clone();
    let agent = pod_spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "spire-agent")
        .expect("the spire-agent container")
        .clone();
    let image = init["image"].as_str().expect("image").to_string();
    assert_eq!(
        image,
        dist.str("/image"),
        "the manifest names the image by digest"
    );
    let index_digest = dist.str("/index_digest");
    assert!(image.ends_with(&format!("@{index_digest}")), "{image}");

    let Some(cd) = Containerd::start_or_skip().await else {
        return;
    };
    // Import, and name it by digest as a pull of that reference would.
    let tar = dist.dir.join("attestor-oci.tar");
    ctr(&cd, &["images", "import", &tar.to_string_lossy()]);
    let tag = normalized(&dist.str("/tag"));
    let listed = ctr(&cd, &["images", "ls", "-q"]);
    let imported = listed
        .lines()
        .find(|l| normalized(l) == tag)
        .unwrap_or_else(|| panic!("{tag} not among the imported images:\n{listed}"))
        .to_string();
    // containerd's CRI finds images only by their normalized names: the image must carry
    // one (io.containerd.image.name), or the kubelet could not run it after an import.
    assert_eq!(imported, tag, "the imported image's name");
    ctr(
        &cd,
        &["images", "tag", "--force", &tag, &normalized(&image)],
    );

    // The init container, as the manifest says.
    let tmp = TempDir::new("deploy-image");
    let kubelet_volumes = tmp.path().join("volumes");
    let mut mounts = Vec::new();
    for m in init["volumeMounts"].as_array().expect("init volumeMounts") {
        let name = m["name"].as_str().expect("name");
        let host = kubelet_volumes.join(name);
        std::fs::create_dir_all(&host).expect("emptyDir");
        // emptyDir: 0777, as the kubelet makes it.
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777))
            .expect("chmod emptyDir");
        mounts.push(api::Mount {
            container_path: m["mountPath"].as_str().expect("mountPath").to_string(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m["readOnly"] == json!(true),
            ..Default::default()
        });
    }
    let command: Vec<String> = serde_json::from_value(init["command"].clone()).expect("command");
    let uid = "6a1d0c52-3e0f-4b8e-9a77-0d1e2f3a4b5c";
    let spec = PodSpec::new(&format!("spire-agent-{arch}-x7k2p"), uid)
        .namespace("spire")
        .service_account("spire-agent")
        .with_container(ContainerSpec {
            name: "install-attestor".into(),
            image: image.clone(),
            kind: Kind::Init,
            command: command.clone(),
            target: None,
            mounts,
            security: cri_security(&init["securityContext"]),
        });
    let mut pod = ok("RunPodSandbox", Pod::run(&cd, spec).await);
    let started = ok(
        "start install-attestor",
        pod.start(&cd, "install-attestor").await,
    );
    let exit = ok(
        "install-attestor exits",
        pod.wait_exited(&cd, &started.id).await,
    );
    let log_path = cd
        .log_root()
        .join(format!("spire_spire-agent-{arch}-x7k2p_{uid}"))
        .join("install-attestor/0.log");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(exit, 0, "install-attestor failed: {log}");

    // agent.conf as the agent reads it.
    let host = GoHost::binary(tmp.path());
    let out = Command::new(host)
        .arg("-agent-config")
        .arg(&agent_conf)
        .output()
        .expect("Go host -agent-config");
    let conf: Value = serde_json::from_slice(&out.stdout).expect("agent config JSON");
    assert!(conf.get("error").is_none(), "{conf}");
    let plugin_cmd = conf["plugin_cmd"].as_str().expect("plugin_cmd");
    let checksum = conf["plugin_checksum"].as_str().expect("plugin_checksum");
    let plugin_data = conf["plugin_data"].as_str().expect("plugin_data");
    let installed = host_path_of(pod_spec, &agent, plugin_cmd, &kubelet_volumes);

    // Every statement of the hash agrees with the file the agent will exec.
    let sha = sha256_hex(&installed);
    assert_eq!(checksum, sha, "agent.conf's plugin_checksum");
    assert_eq!(dist.str(&format!("/platforms/{arch}/binary_sha256")), sha);
    let sums = std::fs::read_to_string(dist.dir.join("SHA256SUMS")).expect("SHA256SUMS");
    assert!(
        sums.lines()
            .any(|l| l == format!("{sha}  attestor-linux-{arch}")),
        "SHA256SUMS:\n{sums}"
    );
    assert!(
        log.contains(&format!(
            "installed {} (",
            command.last().expect("install destination")
        )) && log.contains(&format!("sha256 {sha})")),
        "the installer reports what it installed: {log}"
    );
    let mode = std::fs::metadata(&installed)
        .expect("installed")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);

    // go-plugin loads it with the shipped checksum, and Configure takes the shipped data,
    // in what the agent container has: MY_NODE_NAME (downward API) and the ServiceAccount's
    // token and CA at the in-cluster path, mounted in a private mount namespace so the host's
    // /run is untouched.
    let sa = tmp.path().join("serviceaccount");
    std::fs::create_dir_all(&sa).expect("serviceaccount dir");
    std::fs::write(sa.join("token"), "deploy-image-test-token\n").expect("token");
    std::fs::write(
        sa.join("ca.crt"),
        TestCa::new("deploy-image-cluster-ca").cert_pem(),
    )
    .expect("ca.crt");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; mount -t tmpfs tmpfs /run; \
             mkdir -p /run/secrets/kubernetes.io; \
             cp -r \"$SA\" /run/secrets/kubernetes.io/serviceaccount; exec \"$@\"",
        )
        .arg("sh")
        .arg(host)
        .env("SA", &sa)
        .env("MY_NODE_NAME", "node-1");
    let mut agent_host = GoHost::start(cmd, &installed, tmp.path());
    let r = agent_host.call(json!({"op": "load", "checksum": checksum}));
    assert_eq!(r["ok"], true, "load with plugin_checksum: {r}");
    assert_eq!(
        agent_host.configure(plugin_data),
        ("OK".to_string(), String::new()),
        "Configure with agent.conf's plugin_data:\n{plugin_data}"
    );
    agent_host.unload();

    // One hex digit off: refused before the plugin starts.
    let mut wrong = checksum.to_string();
    let last = wrong.pop().expect("digit");
    wrong.push(if last == '0' { '1' } else { '0' });
    let mut refusing = GoHost::start(Command::new(host), &installed, tmp.path());
    let r = refusing.call(json!({"op": "load", "checksum": wrong}));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"], "checksums did not match");
    drop(refusing);

    ok("remove pod", pod.remove(&cd).await);
    cd.shutdown().await;
}
