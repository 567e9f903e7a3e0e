//! A CRI (`runtime.v1`) client over a unix socket: the calls kubelet makes to create, inspect
//! and remove pods and containers. The messages and the client are the product's
//! (`attestor::runtime::api`, generated from Kubernetes' own `api.proto` vendored in
//! `attestor/proto/cri-api`); [`fake`] serves the same API for runtimes that misbehave.
//!
//! Out of scope: anything kubelet does besides the CRI calls (the pod list it serves is
//! built in [`crate::containerd::pod`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod fake;

/// The `runtime.v1` messages and clients the product uses.
pub use attestor::runtime::api;

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;

/// A failed CRI call: which call, and the gRPC status or transport error.
#[derive(Debug)]
pub struct CriError {
    pub call: &'static str,
    pub message: String,
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CRI {}: {}", self.call, self.message)
    }
}

impl std::error::Error for CriError {}

fn call_err(call: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
    move |s| CriError {
        call,
        message: format!("{:?}: {}", s.code(), s.message()),
    }
}

/// Runtime and image services on one connection.
#[derive(Debug, Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the CRI endpoint at the unix socket `socket`.
    pub async fn connect(socket: &Path) -> Result<CriClient, CriError> {
        let socket: PathBuf = socket.to_owned();
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://[::]:0")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| CriError {
                call: "connect",
                message: e.to_string(),
            })?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    pub async fn version(&self) -> Result<api::VersionResponse, CriError> {
        let req = api::VersionRequest {
            version: "v1".into(),
        };
        let r = self.runtime.clone().version(req).await;
        r.map(|r| r.into_inner()).map_err(call_err("Version"))
    }

    /// The runtime's conditions (`RuntimeReady`, `NetworkReady`) by type.
    pub async fn conditions(&self) -> Result<HashMap<String, bool>, CriError> {
        let r = self
            .runtime
            .clone()
            .status(api::StatusRequest { verbose: false })
            .await
            .map_err(call_err("Status"))?
            .into_inner();
        Ok(r.status
            .map(|s| {
                s.conditions
                    .into_iter()
                    .map(|c| (c.r#type, c.status))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn run_pod_sandbox(&self, config: api::PodSandboxConfig) -> Result<String, CriError> {
        let req = api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let r = self.runtime.clone().run_pod_sandbox(req).await;
        r.map(|r| r.into_inner().pod_sandbox_id)
            .map_err(call_err("RunPodSandbox"))
    }

    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        let r = self.runtime.clone().stop_pod_sandbox(req).await;
        r.map(|_| ()).map_err(call_err("StopPodSandbox"))
    }

    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        let r = self.runtime.clone().remove_pod_sandbox(req).await;
        r.map(|_| ()).map_err(call_err("RemovePodSandbox"))
    }

    /// Sandbox status; `info` (verbose) carries the pause process's `pid`.
    pub async fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> Result<api::PodSandboxStatusResponse, CriError> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        let r = self.runtime.clone().pod_sandbox_status(req).await;
        r.map(|r| r.into_inner())
            .map_err(call_err("PodSandboxStatus"))
    }

    pub async fn list_pod_sandboxes(&self) -> Result<Vec<api::PodSandbox>, CriError> {
        let req = api::ListPodSandboxRequest { filter: None };
        let r = self.runtime.clone().list_pod_sandbox(req).await;
        r.map(|r| r.into_inner().items)
            .map_err(call_err("ListPodSandbox"))
    }

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let r = self.runtime.clone().create_container(req).await;
        r.map(|r| r.into_inner().container_id)
            .map_err(call_err("CreateContainer"))
    }

    pub async fn start_container(&self, id: &str) -> Result<(), CriError> {
        let req = api::StartContainerRequest {
            container_id: id.into(),
        };
        let r = self.runtime.clone().start_container(req).await;
        r.map(|_| ()).map_err(call_err("StartContainer"))
    }

    /// Stops with `timeout` seconds of grace (0: SIGKILL at once).
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), CriError> {
        let req = api::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        let r = self.runtime.clone().stop_container(req).await;
        r.map(|_| ()).map_err(call_err("StopContainer"))
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let req = api::RemoveContainerRequest {
            container_id: id.into(),
        };
        let r = self.runtime.clone().remove_container(req).await;
        r.map(|_| ()).map_err(call_err("RemoveContainer"))
    }

    /// Containers whose labels include all of `labels` (none: every container).
    pub async fn list_containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<api::Container>, CriError> {
        let filter = api::ContainerFilter {
            label_selector: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        };
        let req = api::ListContainersRequest {
            filter: Some(filter),
        };
        let r = self.runtime.clone().list_containers(req).await;
        r.map(|r| r.into_inner().containers)
            .map_err(call_err("ListContainers"))
    }

    /// Verbose container status; `info["info"]` is JSON with the init `pid`.
    pub async fn container_status(
        &self,
        id: &str,
    ) -> Result<api::ContainerStatusResponse, CriError> {
        let req = api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        let r = self.runtime.clone().container_status(req).await;
        r.map(|r| r.into_inner())
            .map_err(call_err("ContainerStatus"))
    }

    pub async fn list_images(&self) -> Result<Vec<api::Image>, CriError> {
        let req = api::ListImagesRequest { filter: None };
        let r = self.images.clone().list_images(req).await;
        r.map(|r| r.into_inner().images)
            .map_err(call_err("ListImages"))
    }

    /// The image known by `reference`, or `None` if the runtime does not have it.
    pub async fn image_status(&self, reference: &str) -> Result<Option<api::Image>, CriError> {
        let req = api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let r = self.images.clone().image_status(req).await;
        r.map(|r| r.into_inner().image)
            .map_err(call_err("ImageStatus"))
    }
}

/// The init process of a container from a verbose status `info` map (containerd puts a JSON
/// object with `pid` under the key `info`); `None` before the task starts (pid 0).
pub fn info_pid(info: &HashMap<String, String>) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    let pid = v.get("pid")?.as_i64()?;
    i32::try_from(pid).ok().filter(|p| *p > 0)
}
