//! The `cart` pod several end-to-end tests attest (live pipeline, plugin, demo-like tests),
//! and the selectors SPIRE's k8s attestor gives its `app` container (study §2), written out
//! from what the pod contains.

use std::collections::BTreeSet;

use crate::kubelet_sim::{PodBuilder, Runtime, hex64};

pub const POD_UID: &str = "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
pub const APP_IMAGE: &str = "registry.example.com/shop/cart:3.1";
pub const SIDECAR_IMAGE: &str = "registry.example.com/mesh/proxy:1.22";
pub const INIT_IMAGE: &str = "registry.example.com/tools/migrate:7";

pub fn app_hex() -> String {
    hex64(4242)
}

pub fn sidecar_hex() -> String {
    hex64(4343)
}

pub fn init_hex() -> String {
    hex64(4444)
}

/// The pod the tests attest: two containers and an init container, labels and an owner.
pub fn cart_pod(app_status: bool) -> PodBuilder {
    let app = Runtime::Containerd.container_id(&app_hex());
    PodBuilder::new("cart-7d9f8-abcde")
        .namespace("shop")
        .uid(POD_UID)
        .service_account("cart")
        .label("app", "cart")
        .label("tier", "backend")
        .owner(
            "ReplicaSet",
            "cart-7d9f8",
            "0f0e0d0c-0b0a-4908-8706-050403020100",
        )
        .container("app", APP_IMAGE, app_status.then_some(app.as_str()))
        .container(
            "proxy",
            SIDECAR_IMAGE,
            Some(&Runtime::Containerd.container_id(&sidecar_hex())),
        )
        .init_container(
            "migrate",
            INIT_IMAGE,
            Some(&Runtime::Containerd.container_id(&init_hex())),
        )
}

/// `imageID` the simulator reports for a container of `pod` (read back from its JSON).
pub fn image_id(pod: &serde_json::Value, container: &str) -> String {
    for field in ["containerStatuses", "initContainerStatuses"] {
        for s in pod["status"][field].as_array().into_iter().flatten() {
            if s["name"] == container {
                return s["imageID"].as_str().expect("imageID").to_string();
            }
        }
    }
    panic!("no status for {container}");
}

/// SPIRE's selectors for the `app` container of `cart_pod(true)` (study §2).
pub fn expected_app_selectors() -> BTreeSet<String> {
    expected_app_selectors_in(&cart_pod(true).build())
}

/// The same, for the cart pod as it appears in `pod` (image IDs read from its statuses).
pub fn expected_app_selectors_in(pod: &serde_json::Value) -> BTreeSet<String> {
    let (app_id, proxy_id, init_id) = (
        image_id(pod, "app"),
        image_id(pod, "proxy"),
        image_id(pod, "migrate"),
    );
    [
        "sa:cart".to_string(),
        "ns:shop".into(),
        "node-name:node-1".into(),
        format!("pod-uid:{POD_UID}"),
        "pod-name:cart-7d9f8-abcde".into(),
        format!("pod-image:{APP_IMAGE}"),
        format!("pod-image:{app_id}"),
        format!("pod-image:{SIDECAR_IMAGE}"),
        format!("pod-image:{proxy_id}"),
        "pod-image-count:2".into(),
        format!("pod-init-image:{INIT_IMAGE}"),
        format!("pod-init-image:{init_id}"),
        "pod-init-image-count:1".into(),
        "pod-label:app:cart".into(),
        "pod-label:tier:backend".into(),
        "pod-owner:ReplicaSet:cart-7d9f8".into(),
        "pod-owner-uid:ReplicaSet:0f0e0d0c-0b0a-4908-8706-050403020100".into(),
        "container-name:app".into(),
        format!("container-image:{APP_IMAGE}"),
        format!("container-image:{app_id}"),
    ]
    .into_iter()
    .collect()
}
