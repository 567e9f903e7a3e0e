//! Pods created through CRI the way kubelet creates them, and the kubelet's `/pods` entry
//! for them built from what CRI reports.
//!
//! Kubelet's part (kuberuntime `generatePodSandboxConfig`, `generateContainerConfig`):
//! * RunPodSandbox: metadata (name, namespace, uid, attempt), the pod labels plus
//!   `io.kubernetes.pod.{name,namespace,uid}`, `kubernetes.io/config.*` annotations, a log
//!   directory `<logs>/<ns>_<name>_<uid>`, `cgroup_parent = /kubepods/<qos>/pod<uid>`
//!   (cgroupfs driver; Guaranteed pods sit directly under `/kubepods`), host network;
//! * CreateContainer: metadata (name, attempt = restart count), the image by ID as
//!   `EnsureImageExists` returns it, `io.kubernetes.container.name` + pod labels,
//!   `io.kubernetes.container.{hash,restartCount,...}` annotations, `<name>/<attempt>.log`,
//!   PID namespace per container (`TARGET` for a debug container aimed at another);
//! * StartContainer.
//!
//! What the API server would add (service account, node name, owner, pod labels) comes from
//! [`PodSpec`]; every status field (container IDs, images, state, restart counts) comes
//! from CRI: `ListContainers`, `ContainerStatus` and `PodSandboxStatus`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::Containerd;
use crate::cri::{CriError, api, info_pid};

/// Which list of the pod a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `spec.containers`.
    App,
    /// `spec.initContainers`, run to completion.
    Init,
    /// `spec.initContainers` with `restartPolicy: Always` (native sidecar, keeps running).
    Sidecar,
    /// `spec.ephemeralContainers` (`kubectl debug`), added to a running pod.
    Ephemeral,
}

/// Kubelet QoS class, which picks the cgroup parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    fn class(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }

    /// kubelet's cgroupfs-driver pod cgroup.
    pub fn cgroup_parent(self, uid: &str) -> String {
        match self {
            Qos::Guaranteed => format!("/kubepods/pod{uid}"),
            Qos::Burstable => format!("/kubepods/burstable/pod{uid}"),
            Qos::BestEffort => format!("/kubepods/besteffort/pod{uid}"),
        }
    }

    /// kubelet's systemd-driver pod cgroup (the full slice path it sends to CRI).
    pub fn systemd_cgroup_parent(self, uid: &str) -> String {
        let uid_ = uid.replace('-', "_");
        match self {
            Qos::Guaranteed => format!("/kubepods.slice/kubepods-pod{uid_}.slice"),
            Qos::Burstable => format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"
            ),
            Qos::BestEffort => format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"
            ),
        }
    }

    fn oom_score_adj(self) -> i64 {
        match self {
            Qos::Guaranteed => -997,
            Qos::Burstable => 500,
            Qos::BestEffort => 1000,
        }
    }
}

/// One container of the pod spec.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub kind: Kind,
    /// `command` (empty: the image's entrypoint).
    pub command: Vec<String>,
    /// For [`Kind::Ephemeral`]: the container whose PID namespace it joins.
    pub target: Option<String>,
    /// Volumes, as the kubelet passes them to CRI (host path, container path, read-only).
    pub mounts: Vec<api::Mount>,
    /// The kubelet's translation of the container's `securityContext`
    /// (`readOnlyRootFilesystem`, `allowPrivilegeEscalation: false`, `capabilities.drop`);
    /// its namespace options are set by [`Pod::start`].
    pub security: api::LinuxContainerSecurityContext,
}

/// What the API server knows about the pod.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
    pub node: String,
    pub qos: Qos,
    pub labels: Vec<(String, String)>,
    /// (kind, name, uid) of the controller.
    pub owner: Option<(String, String, String)>,
    pub containers: Vec<ContainerSpec>,
    /// Send the systemd driver's slice path as `cgroup_parent` (a kubelet configured for
    /// systemd in front of a containerd on cgroupfs).
    pub systemd_parent: bool,
}

impl PodSpec {
    /// A BestEffort pod in `default` on `node-1` with service account `default`.
    pub fn new(name: &str, uid: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            namespace: "default".into(),
            uid: uid.into(),
            service_account: "default".into(),
            node: "node-1".into(),
            qos: Qos::BestEffort,
            labels: Vec::new(),
            owner: None,
            containers: Vec::new(),
            systemd_parent: false,
        }
    }
    /// A BestEffort pod in `default` with one app container, `app`, running the workload
    /// image (`command`; empty: the image's entrypoint). Its selectors:
    /// [`crate::expect::one_app_selectors`].
    pub fn one_app(name: &str, uid: &str, command: &[&str]) -> PodSpec {
        PodSpec::new(name, uid).container(Kind::App, "app", super::WORKLOAD_IMAGE, command)
    }
    /// See [`PodSpec::systemd_parent`].
    pub fn systemd_cgroup_parent(mut self) -> Self {
        self.systemd_parent = true;
        self
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.into();
        self
    }
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }
    pub fn owner(mut self, kind: &str, name: &str, uid: &str) -> Self {
        self.owner = Some((kind.into(), name.into(), uid.into()));
        self
    }
    /// Adds a container; `command` empty runs the image's entrypoint.
    pub fn container(mut self, kind: Kind, name: &str, image: &str, command: &[&str]) -> Self {
        self.containers.push(ContainerSpec {
            name: name.into(),
            image: image.into(),
            kind,
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            target: None,
            mounts: Vec::new(),
            security: Default::default(),
        });
        self
    }
    /// Adds a fully specified container (mounts, security context).
    pub fn with_container(mut self, c: ContainerSpec) -> Self {
        self.containers.push(c);
        self
    }
}

/// A container that CRI started.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    /// Its init process (host PID namespace); 0 if it had already exited.
    pub pid: i32,
}

/// The last state of a container that was replaced (kubelet's `lastState.terminated`).
#[derive(Debug, Clone)]
struct Previous {
    id: String,
    attempt: u32,
    exit_code: i32,
    reason: String,
    started_at: i64,
    finished_at: i64,
}

/// A pod whose sandbox runs in the private containerd.
#[derive(Debug)]
pub struct Pod {
    spec: PodSpec,
    sandbox_id: String,
    sandbox_config: api::PodSandboxConfig,
    /// Last terminated instance per container name (restarts).
    previous: HashMap<String, Previous>,
}

use attestor::runtime::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

fn ns_option(pid: api::NamespaceMode, target: &str) -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node as i32,
        pid: pid as i32,
        ipc: api::NamespaceMode::Pod as i32,
        target_id: target.to_owned(),
        ..Default::default()
    }
}

/// RFC 3339 UTC time of a CRI nanosecond timestamp (what the kubelet puts in statuses).
pub fn rfc3339(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Pod {
    /// RunPodSandbox as kubelet sends it. The sandbox's pause process runs afterwards.
    pub async fn run(cd: &Containerd, spec: PodSpec) -> Result<Pod, CriError> {
        let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
        labels.insert(LABEL_POD_NAME.into(), spec.name.clone());
        labels.insert(LABEL_POD_NAMESPACE.into(), spec.namespace.clone());
        labels.insert(LABEL_POD_UID.into(), spec.uid.clone());
        let annotations: HashMap<String, String> = [
            ("kubernetes.io/config.source", "api"),
            (
                "kubernetes.io/config.seen",
                "2026-11-27T17:00:00.000000000Z",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cgroup_parent = if spec.systemd_parent {
            spec.qos.systemd_cgroup_parent(&spec.uid)
        } else {
            spec.qos.cgroup_parent(&spec.uid)
        };
        let log_dir = cd
            .log_root()
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            // kubelet leaves the hostname empty for host-network pods.
            hostname: String::new(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels,
            annotations,
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.clone(),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns_option(api::NamespaceMode::Container, "")),
                    ..Default::default()
                }),
                sysctls: HashMap::new(),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Recorded before the call: a failed RunPodSandbox may still leave the cgroup.
        cd.track_cgroup_parent(&cgroup_parent);
        let sandbox_id = cd.cri().run_pod_sandbox(config.clone()).await?;
        Ok(Pod {
            spec,
            sandbox_id,
            sandbox_config: config,
            previous: HashMap::new(),
        })
    }

    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    pub fn uid(&self) -> &str {
        &self.spec.uid
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    /// The pause process (from verbose PodSandboxStatus).
    pub async fn sandbox_pid(&self, cd: &Containerd) -> Result<i32, CriError> {
        let st = cd.cri().pod_sandbox_status(&self.sandbox_id).await?;
        info_pid(&st.info).ok_or_else(|| CriError {
            call: "PodSandboxStatus",
            message: format!("no pid in sandbox info: {:?}", st.info.get("info")),
        })
    }

    /// Adds an ephemeral (debug) container to the spec, optionally targeting another
    /// container's PID namespace, as `kubectl debug --target` does.
    pub fn add_ephemeral(
        &mut self,
        name: &str,
        image: &str,
        command: &[&str],
        target: Option<&str>,
    ) {
        self.spec.containers.push(ContainerSpec {
            name: name.into(),
            image: image.into(),
            kind: Kind::Ephemeral,
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            target: target.map(Into::into),
            mounts: Vec::new(),
            security: Default::default(),
        });
    }

    fn container_spec(&self, name: &str) -> Result<ContainerSpec, CriError> {
        self.spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| CriError {
                call: "CreateContainer",
                message: format!("container {name:?} is not in the pod spec"),
            })
    }

    /// CRI containers of this pod named `name`, newest attempt first.
    async fn instances(
        &self,
        cd: &Containerd,
        name: &str,
    ) -> Result<Vec<api::Container>, CriError> {
        let mut list = cd
            .cri()
            .list_containers(&[
                (LABEL_POD_UID, &self.spec.uid),
                (LABEL_CONTAINER_NAME, name),
            ])
            .await?;
        list.sort_by_key(|c| std::cmp::Reverse(c.metadata.as_ref().map_or(0, |m| m.attempt)));
        Ok(list)
    }

    /// CreateContainer + StartContainer for the spec container `name`, with attempt =
    /// number of earlier instances (kubelet's restart count). Returns once CRI reports the
    /// container running with its init PID.
    pub async fn start(&mut self, cd: &Containerd, name: &str) -> Result<Started, CriError> {
        self.start_labelled(cd, name, &[]).await
    }

    /// [`Pod::start`], but the container's CRI labels have `overrides` set over the four the
    /// kubelet puts there (`io.kubernetes.pod.uid` naming another pod, say): what a runtime
    /// (or whoever can create containers through it) could claim about a container that
    /// the kubelet never made. CreateContainer takes any labels; the container still goes
    /// into this pod's sandbox and cgroup.
    pub async fn start_labelled(
        &mut self,
        cd: &Containerd,
        name: &str,
        overrides: &[(&str, &str)],
    ) -> Result<Started, CriError> {
        let spec = self.container_spec(name)?;
        // kubelet's restart count: one more than the newest instance, live or removed.
        let newest_live = self
            .instances(cd, name)
            .await?
            .first()
            .and_then(|c| c.metadata.as_ref().map(|m| m.attempt + 1));
        let newest_removed = self.previous.get(name).map(|p| p.attempt + 1);
        let attempt = newest_live.max(newest_removed).unwrap_or(0);
        let image = cd
            .cri()
            .image_status(&spec.image)
            .await?
            .ok_or_else(|| CriError {
                call: "ImageStatus",
                message: format!("image {} is not present", spec.image),
            })?;
        let target_id = match &spec.target {
            Some(t) => self
                .instances(cd, t)
                .await?
                .first()
                .map(|c| c.id.clone())
                .ok_or_else(|| CriError {
                    call: "CreateContainer",
                    message: format!("debug target {t:?} has no container"),
                })?,
            None => String::new(),
        };
        let pid_mode = if target_id.is_empty() {
            api::NamespaceMode::Container
        } else {
            api::NamespaceMode::Target
        };
        let labels: HashMap<String, String> = [
            (LABEL_CONTAINER_NAME, name),
            (LABEL_POD_NAME, &self.spec.name),
            (LABEL_POD_NAMESPACE, &self.spec.namespace),
            (LABEL_POD_UID, &self.spec.uid),
        ]
        .into_iter()
        .chain(overrides.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let annotations: HashMap<String, String> = [
            ("io.kubernetes.container.hash", "5e2f1a7c".to_owned()),
            ("io.kubernetes.container.restartCount", attempt.to_string()),
            (
                "io.kubernetes.container.terminationMessagePath",
                "/dev/termination-log".to_owned(),
            ),
            (
                "io.kubernetes.container.terminationMessagePolicy",
                "File".to_owned(),
            ),
            ("io.kubernetes.pod.terminationGracePeriod", "30".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.to_owned(),
                attempt,
            }),
            // kubelet passes the image ID that EnsureImageExists returned.
            image: Some(api::ImageSpec {
                image: image.id.clone(),
                annotations: HashMap::new(),
                // What the kubelet sends since 1.30 (`ImageSpec.user_specified_image`).
                user_specified_image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: Vec::new(),
            working_dir: String::new(),
            envs: vec![
                api::KeyValue {
                    key: "KUBERNETES_SERVICE_HOST".into(),
                    value: "10.96.0.1".into(),
                },
                api::KeyValue {
                    key: "KUBERNETES_SERVICE_PORT".into(),
                    value: "443".into(),
                },
            ],
            labels,
            annotations,
            log_path: format!("{name}/{attempt}.log"),
            stdin: false,
            stdin_once: false,
            tty: false,
            linux: Some(api::LinuxContainerConfig {
                resources: Some(api::LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: 0,
                    cpu_shares: 2,
                    memory_limit_in_bytes: 0,
                    oom_score_adj: self.spec.qos.oom_score_adj(),
                    ..Default::default()
                }),
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(ns_option(pid_mode, &target_id)),
                    ..spec.security.clone()
                }),
            }),
            mounts: spec.mounts.clone(),
            ..Default::default()
        };
        let id = cd
            .cri()
            .create_container(&self.sandbox_id, config, self.sandbox_config.clone())
            .await?;
        cd.cri().start_container(&id).await?;
        // StartContainer returns once the task runs, so the status should carry its pid;
        // a status read in the same instant may still say CREATED with pid 0: look again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let pid = loop {
            let st = cd.cri().container_status(&id).await?;
            let state = st.status.as_ref().map(|s| s.state);
            if let Some(pid) = info_pid(&st.info) {
                break pid;
            }
            if state == Some(api::ContainerState::ContainerExited as i32) {
                // Already finished (an init container running `true`).
                break 0;
            }
            if std::time::Instant::now() > deadline {
                return Err(CriError {
                    call: "ContainerStatus",
                    message: format!("started container {id} has no pid (state {state:?})"),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        Ok(Started { id, pid })
    }

    /// StopContainer with no grace period (SIGKILL), as for a failed liveness probe that
    /// is past its grace.
    pub async fn stop(&self, cd: &Containerd, id: &str) -> Result<(), CriError> {
        cd.cri().stop_container(id, 0).await
    }

    /// Restarts `name` as kubelet does after the container dies: the old instance is
    /// stopped and removed (its last state kept for `lastState`), a new one is created with
    /// attempt + 1 and started. Returns the new container; its ID differs.
    pub async fn restart(&mut self, cd: &Containerd, name: &str) -> Result<Started, CriError> {
        let current = self.instances(cd, name).await?;
        let old = current.first().ok_or_else(|| CriError {
            call: "ListContainers",
            message: format!("no container {name:?} to restart"),
        })?;
        let attempt = old.metadata.as_ref().map_or(0, |m| m.attempt);
        cd.cri().stop_container(&old.id, 0).await?;
        let st = cd
            .cri()
            .container_status(&old.id)
            .await?
            .status
            .unwrap_or_default();
        self.previous.insert(
            name.to_owned(),
            Previous {
                id: old.id.clone(),
                attempt,
                exit_code: st.exit_code,
                reason: if st.reason.is_empty() {
                    "Error".into()
                } else {
                    st.reason.clone()
                },
                started_at: st.started_at,
                finished_at: st.finished_at,
            },
        );
        cd.cri().remove_container(&old.id).await?;
        let started = self.start(cd, name).await?;
        let new_attempt = self
            .instances(cd, name)
            .await?
            .first()
            .and_then(|c| c.metadata.as_ref().map(|m| m.attempt));
        if new_attempt != Some(attempt + 1) {
            return Err(CriError {
                call: "CreateContainer",
                message: format!(
                    "restart of {name}: attempt {new_attempt:?}, want {}",
                    attempt + 1
                ),
            });
        }
        Ok(started)
    }

    /// The pod as the kubelet's `/pods` lists it, filled from CRI.
    pub async fn kubelet_json(&self, cd: &Containerd) -> Result<Value, CriError> {
        let sandbox = cd.cri().pod_sandbox_status(&self.sandbox_id).await?;
        let sb = sandbox.status.unwrap_or_default();
        let meta = sb.metadata.unwrap_or_default();
        let labels: Map<String, Value> = sb
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("io.kubernetes."))
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let owners: Vec<Value> = self
            .spec
            .owner
            .iter()
            .map(|(kind, name, uid)| {
                json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid,
                       "controller": true, "blockOwnerDeletion": true})
            })
            .collect();

        let mut spec_lists: [(Kind, Vec<Value>); 3] = [
            (Kind::App, vec![]),
            (Kind::Init, vec![]),
            (Kind::Ephemeral, vec![]),
        ];
        let mut status_lists: [Vec<Value>; 3] = [vec![], vec![], vec![]];
        let mut inits_done = true;
        for c in &self.spec.containers {
            let slot = match c.kind {
                Kind::App => 0,
                Kind::Init | Kind::Sidecar => 1,
                Kind::Ephemeral => 2,
            };
            let mut cs = json!({"name": c.name, "image": c.image});
            if !c.command.is_empty() {
                cs["command"] = json!(c.command);
            }
            if c.kind == Kind::Sidecar {
                cs["restartPolicy"] = json!("Always");
            }
            if let Some(t) = &c.target {
                cs["targetContainerName"] = json!(t);
            }
            spec_lists[slot].1.push(cs);
            let status = self.container_status_json(cd, c).await?;
            if c.kind == Kind::Init && status["state"].get("terminated").is_none() {
                inits_done = false;
            }
            if c.kind == Kind::Sidecar && status["state"].get("running").is_none() {
                inits_done = false;
            }
            status_lists[slot].push(status);
        }

        let mut spec = json!({
            "nodeName": self.spec.node,
            "serviceAccountName": self.spec.service_account,
            "serviceAccount": self.spec.service_account,
            "hostNetwork": true,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
        });
        let mut status = json!({
            "phase": if inits_done { "Running" } else { "Pending" },
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "qosClass": self.spec.qos.class(),
            "startTime": rfc3339(sb.created_at),
        });
        let fields = [
            ("containers", "containerStatuses"),
            ("initContainers", "initContainerStatuses"),
            ("ephemeralContainers", "ephemeralContainerStatuses"),
        ];
        for (((_, specs), statuses), (spec_field, status_field)) in
            spec_lists.into_iter().zip(status_lists).zip(fields)
        {
            if specs.is_empty() {
                continue;
            }
            spec[spec_field] = Value::Array(specs);
            status[status_field] = Value::Array(statuses);
        }
        Ok(json!({
            "metadata": {
                "name": meta.name,
                "namespace": meta.namespace,
                "uid": meta.uid,
                "creationTimestamp": rfc3339(sb.created_at),
                "labels": labels,
                "ownerReferences": owners,
                "annotations": sb.annotations,
            },
            "spec": spec,
            "status": status,
        }))
    }

    /// One container status as kubelet's `convertToAPIContainerStatuses` fills it.
    async fn container_status_json(
        &self,
        cd: &Containerd,
        c: &ContainerSpec,
    ) -> Result<Value, CriError> {
        let instances = self.instances(cd, &c.name).await?;
        let Some(latest) = instances.first() else {
            // Not created yet: a waiting status with the spec's image and no IDs.
            let reason = if c.kind == Kind::App && self.has_pending_init(cd).await? {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            return Ok(json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": false,
                "restartCount": 0,
                "started": false,
                "state": {"waiting": {"reason": reason}},
                "lastState": {},
            }));
        };
        let st = cd
            .cri()
            .container_status(&latest.id)
            .await?
            .status
            .unwrap_or_default();
        let container_id = format!("containerd://{}", st.id);
        let running = st.state == api::ContainerState::ContainerRunning as i32;
        let state = match api::ContainerState::try_from(st.state) {
            Ok(api::ContainerState::ContainerRunning) => {
                json!({"running": {"startedAt": rfc3339(st.started_at)}})
            }
            Ok(api::ContainerState::ContainerExited) => json!({"terminated": {
                "exitCode": st.exit_code,
                "reason": if st.reason.is_empty() { "Completed".to_owned() } else { st.reason.clone() },
                "containerID": container_id,
                "startedAt": rfc3339(st.started_at),
                "finishedAt": rfc3339(st.finished_at),
            }}),
            // kubelet: created but not running is "waiting to be running", with its ID.
            _ => json!({"waiting": {}}),
        };
        let last_state = match self.previous.get(&c.name) {
            Some(p) => json!({"terminated": {
                "exitCode": p.exit_code,
                "reason": p.reason,
                "containerID": format!("containerd://{}", p.id),
                "startedAt": rfc3339(p.started_at),
                "finishedAt": rfc3339(p.finished_at),
            }}),
            None => json!({}),
        };
        let mut v = json!({
            "name": c.name,
            // kubelet copies the runtime's answers: containerd reports the image's first
            // repo tag and its repo digest.
            "image": st.image.as_ref().map(|i| i.image.clone()).unwrap_or_default(),
            "imageID": st.image_ref,
            "containerID": container_id,
            "ready": running && c.kind != Kind::Init,
            "restartCount": st.metadata.as_ref().map_or(0, |m| m.attempt),
            "started": running,
            "state": state,
            "lastState": last_state,
        });
        if c.kind == Kind::Ephemeral {
            // Ephemeral statuses carry no ready/started/restartCount semantics.
            v["ready"] = json!(false);
        }
        Ok(v)
    }

    async fn has_pending_init(&self, cd: &Containerd) -> Result<bool, CriError> {
        for c in self.spec.containers.iter().filter(|c| c.kind == Kind::Init) {
            let done = match self.instances(cd, &c.name).await?.first() {
                Some(i) => i.state == api::ContainerState::ContainerExited as i32,
                None => false,
            };
            if !done {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Waits (up to 30 s) until CRI reports container `id` exited; returns its exit code.
    pub async fn wait_exited(&self, cd: &Containerd, id: &str) -> Result<i32, CriError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let st = cd
                .cri()
                .container_status(id)
                .await?
                .status
                .unwrap_or_default();
            if st.state == api::ContainerState::ContainerExited as i32 {
                return Ok(st.exit_code);
            }
            if std::time::Instant::now() > deadline {
                return Err(CriError {
                    call: "ContainerStatus",
                    message: format!("container {id} still in state {} after 30 s", st.state),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// StopPodSandbox + RemovePodSandbox (kubelet's pod deletion at the runtime).
    pub async fn remove(self, cd: &Containerd) -> Result<(), CriError> {
        cd.cri().stop_pod_sandbox(&self.sandbox_id).await?;
        cd.cri().remove_pod_sandbox(&self.sandbox_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_of_cri_nanos() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_798_800_123_456_789), "2026-11-27T17:00:00Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00Z");
    }
}
