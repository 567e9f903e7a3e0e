//! The API-server simulator itself, through a plain hyper + rustls client: authentication
//! and RBAC texts, metadata-only shapes, pagination, SubjectAccessReviews, discovery,
//! watches (events, bookmarks, 410), faults and the in-flight counters.

use std::sync::Arc;
use std::time::Duration;

use attestor_tests::apiserver_sim::{ApiServerSim, Fault, Gate};
use attestor_tests::kubelet_sim::PodBuilder;
use attestor_tests::tempdir::TempDir;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

const AGENT: &str = "system:serviceaccount:spire:spire-agent";
const META: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
const META_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

async fn send(
    sim: &ApiServerSim,
    method: &str,
    path: &str,
    token: Option<&str>,
    accept: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<hyper::Response<Incoming>, hyper::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(sim.ca_pem().as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(sim.addr())
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", sim.addr().to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("request");
    sender.send_request(req).await
}

/// (status, headers, parsed JSON body or Null).
async fn call(
    sim: &ApiServerSim,
    method: &str,
    path: &str,
    token: Option<&str>,
    accept: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, http::HeaderMap, Bytes) {
    let r = send(sim, method, path, token, accept, body)
        .await
        .expect("response");
    let code = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (code, headers, body)
}

async fn get(sim: &ApiServerSim, path: &str, token: &str, accept: Option<&str>) -> (u16, Value) {
    let (code, _, body) = call(sim, "GET", path, Some(token), accept, None).await;
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Polls `f` (without blocking the runtime) until it holds or 5 s pass.
async fn until(f: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn base() -> attestor_tests::apiserver_sim::ApiServerSimBuilder {
    ApiServerSim::builder()
        .token("admin-tok", "admin")
        .allow_all("admin")
        .token("agent-tok", AGENT)
}

#[tokio::test]
async fn authentication_and_rbac_texts() {
    let sim = base()
        .grant(AGENT, "get", "pods")
        .namespace("web", &[("team", "blue")])
        .workload_resources()
        .start()
        .await
        .expect("start");
    let (code, _, body) = call(&sim, "GET", "/api/v1/namespaces/web", None, None, None).await;
    assert_eq!(code, 401);
    assert_eq!(
        std::str::from_utf8(&body).expect("utf8"),
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#
    );
    let (code, v) = get(&sim, "/api/v1/namespaces/web", "wrong", None).await;
    assert_eq!((code, v["reason"].as_str()), (401, Some("Unauthorized")));

    let (code, v) = get(&sim, "/api/v1/namespaces/web", "agent-tok", None).await;
    assert_eq!(code, 403);
    assert_eq!(
        v["message"],
        format!(
            "namespaces \"web\" is forbidden: User \"{AGENT}\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"web\""
        )
    );
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(v["details"], json!({"name": "web", "kind": "namespaces"}));
    let (code, v) = get(&sim, "/api/v1/pods", "agent-tok", None).await;
    assert_eq!(code, 403);
    assert_eq!(
        v["message"],
        format!(
            "pods is forbidden: User \"{AGENT}\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
        )
    );
    let (code, v) = get(
        &sim,
        "/apis/apps/v1/namespaces/web/replicasets/rs",
        "agent-tok",
        None,
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        v["message"],
        format!(
            "replicasets.apps \"rs\" is forbidden: User \"{AGENT}\" cannot get resource \"replicasets\" in API group \"apps\" in the namespace \"web\""
        )
    );
    assert_eq!(
        v["details"],
        json!({"name": "rs", "group": "apps", "kind": "replicasets"})
    );
    // Granted verb: 404 for a missing pod, with the API server's text.
    let (code, v) = get(&sim, "/api/v1/namespaces/web/pods/nope", "agent-tok", None).await;
    assert_eq!(code, 404);
    assert_eq!(v["message"], "pods \"nope\" not found");
    // Non-resource path: 403 for a normal user, 404 for an admin.
    let (code, v) = get(&sim, "/foo", "agent-tok", None).await;
    assert_eq!(
        (code, v["message"].as_str()),
        (
            403,
            Some(format!("forbidden: User \"{AGENT}\" cannot get path \"/foo\"").as_str())
        )
    );
    let (code, v) = get(&sim, "/apis/nope.example/v1/things", "admin-tok", None).await;
    assert_eq!(code, 404);
    assert_eq!(
        v["message"],
        "the server could not find the requested resource"
    );

    // Token rotation.
    sim.set_tokens(&[("agent-tok-2", AGENT)]);
    let (code, _) = get(&sim, "/api/v1/namespaces/web/pods/nope", "agent-tok", None).await;
    assert_eq!(code, 401);
    let (code, _) = get(
        &sim,
        "/api/v1/namespaces/web/pods/nope",
        "agent-tok-2",
        None,
    )
    .await;
    assert_eq!(code, 404);
    let recs = sim.requests();
    assert_eq!(recs.len(), 10);
    assert_eq!(recs[0].user, None);
    assert_eq!(recs[0].status, 401);
    assert_eq!(recs[9].user.as_deref(), Some(AGENT));
    assert_eq!(sim.request_count("/api/v1/namespaces/web/pods"), 3);
}

#[tokio::test]
async fn namespaces_full_and_metadata_only() {
    let sim = base()
        .grant(AGENT, "get", "namespaces")
        .grant(AGENT, "list", "namespaces")
        .namespace("web", &[("team", "blue")])
        .start()
        .await
        .expect("start");
    let (code, v) = get(&sim, "/api/v1/namespaces/web", "agent-tok", None).await;
    assert_eq!(code, 200);
    assert_eq!(
        (v["kind"].as_str(), v["apiVersion"].as_str()),
        (Some("Namespace"), Some("v1"))
    );
    assert_eq!(
        v["metadata"]["labels"],
        json!({"team": "blue", "kubernetes.io/metadata.name": "web"})
    );
    assert!(v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert_eq!(v["status"]["phase"], "Active");

    let (code, v) = get(&sim, "/api/v1/namespaces/web", "agent-tok", Some(META)).await;
    assert_eq!(code, 200);
    assert_eq!(v["kind"], "PartialObjectMetadata");
    assert_eq!(v["apiVersion"], "meta.k8s.io/v1");
    assert!(v.get("spec").is_none() && v.get("status").is_none());
    assert_eq!(v["metadata"]["labels"]["team"], "blue");
    // Only the list form offered for a get: 406.
    let (code, v) = get(&sim, "/api/v1/namespaces/web", "agent-tok", Some(META_LIST)).await;
    assert_eq!((code, v["reason"].as_str()), (406, Some("NotAcceptable")));
    // With a JSON fallback: the full object.
    let (code, v) = get(
        &sim,
        "/api/v1/namespaces/web",
        "agent-tok",
        Some(&format!("{META_LIST}, application/json")),
    )
    .await;
    assert_eq!((code, v["kind"].as_str()), (200, Some("Namespace")));

    let (code, v) = get(&sim, "/api/v1/namespaces", "agent-tok", Some(META_LIST)).await;
    assert_eq!(code, 200);
    assert_eq!(v["kind"], "PartialObjectMetadataList");
    let names: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            assert_eq!(i["kind"], "PartialObjectMetadata");
            i["metadata"]["name"].as_str().expect("name")
        })
        .collect();
    assert_eq!(
        names,
        [
            "default",
            "kube-node-lease",
            "kube-public",
            "kube-system",
            "web"
        ]
    );
    assert_eq!(
        v["metadata"]["resourceVersion"],
        sim.resource_version().to_string()
    );
    let (_, v) = get(&sim, "/api/v1/namespaces", "agent-tok", None).await;
    assert_eq!(v["kind"], "NamespaceList");
    let uids: std::collections::BTreeSet<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["uid"].as_str())
        .collect();
    assert_eq!(uids.len(), 5, "distinct uids");
    assert!(
        v["items"][0].get("kind").is_none(),
        "list items carry no kind"
    );

    let (code, v) = get(&sim, "/api/v1/namespaces/nope", "agent-tok", None).await;
    assert_eq!(code, 404);
    assert_eq!(v["message"], "namespaces \"nope\" not found");
    assert_eq!(v["details"], json!({"name": "nope", "kind": "namespaces"}));
}

#[tokio::test]
async fn pods_field_selector_and_pagination() {
    let mut b = base().default_namespaces(false);
    for i in 0..5 {
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        b = b.pod(
            PodBuilder::new(&format!("p{i}"))
                .namespace("ns")
                .node(node)
                .build(),
        );
    }
    let mut pod = PodBuilder::new("p9").namespace("ns").node("node-a").build();
    pod["metadata"]["managedFields"] = json!([{"manager": "kubectl"}]);
    let sim = b.pod(pod).start().await.expect("start");

    let (code, v) = get(&sim, "/api/v1/namespaces/ns/pods/p1", "admin-tok", None).await;
    assert_eq!(code, 200);
    assert_eq!(
        (v["kind"].as_str(), v["spec"]["nodeName"].as_str()),
        (Some("Pod"), Some("node-b"))
    );

    let (code, v) = get(
        &sim,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a",
        "admin-tok",
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["kind"], "PodList");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(4));
    let (_, v) = get(
        &sim,
        "/api/v1/pods?fieldSelector=metadata.name%3Dp2,metadata.namespace%3Dns",
        "admin-tok",
        None,
    )
    .await;
    assert_eq!(v["items"][0]["metadata"]["name"], "p2");
    let (code, v) = get(
        &sim,
        "/api/v1/pods?fieldSelector=spec.bogus%3Dx",
        "admin-tok",
        None,
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("field label not supported: spec.bogus")),
        "{v}"
    );

    // Pages of 2 (metadata-only), then the rest; managedFields stripped.
    let mut seen = Vec::new();
    let mut path = "/api/v1/pods?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (code, v) = get(&sim, &path, "admin-tok", Some(META_LIST)).await;
        assert_eq!(code, 200, "{v}");
        pages += 1;
        for i in v["items"].as_array().expect("items") {
            assert!(i["metadata"].get("managedFields").is_none());
            seen.push(i["metadata"]["name"].as_str().expect("name").to_owned());
        }
        match v["metadata"]["continue"].as_str() {
            Some(c) => {
                assert!(v["metadata"]["remainingItemCount"].as_u64().is_some());
                path = format!("/api/v1/pods?limit=2&continue={c}");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4", "p9"]);

    // A continue token from before the compaction point: 410 Expired.
    let (_, v) = get(&sim, "/api/v1/pods?limit=2", "admin-tok", None).await;
    let c = v["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_owned();
    sim.set_pod(PodBuilder::new("p10").namespace("ns").build())
        .expect("set");
    sim.expire_history();
    let (code, v) = get(
        &sim,
        &format!("/api/v1/pods?limit=2&continue={c}"),
        "admin-tok",
        None,
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (410, Some("Expired")));
    let (code, _) = get(&sim, "/api/v1/pods?continue=%%%", "admin-tok", None).await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn generic_resources_and_discovery() {
    let sim = base()
        .workload_resources()
        .resource("example.org", "v1alpha1", "Widget", "widgets", false)
        .object(
            "apps",
            "replicasets",
            json!({"metadata": {"name": "web-abc", "namespace": "web", "labels": {"app": "web"},
                   "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                        "uid": "d-uid", "controller": true}]},
                   "spec": {"replicas": 2}}),
        )
        .object("example.org", "widgets", json!({"metadata": {"name": "w1", "uid": "w-uid"}}))
        .start()
        .await
        .expect("start");
    let (code, v) = get(
        &sim,
        "/apis/apps/v1/namespaces/web/replicasets/web-abc",
        "admin-tok",
        Some(META),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "d-uid");
    assert!(v.get("spec").is_none());
    let (code, v) = get(&sim, "/apis/apps/v1/replicasets", "admin-tok", None).await;
    assert_eq!(
        (code, v["kind"].as_str(), v["apiVersion"].as_str()),
        (200, Some("ReplicaSetList"), Some("apps/v1"))
    );
    let (code, v) = get(
        &sim,
        "/apis/example.org/v1alpha1/widgets/w1",
        "admin-tok",
        None,
    )
    .await;
    assert_eq!(
        (code, v["metadata"]["uid"].as_str(), v["kind"].as_str()),
        (200, Some("w-uid"), Some("Widget"))
    );
    let (code, v) = get(
        &sim,
        "/apis/apps/v1/namespaces/web/replicasets/nope",
        "admin-tok",
        None,
    )
    .await;
    assert_eq!(
        (code, v["message"].as_str()),
        (404, Some("replicasets.apps \"nope\" not found"))
    );
    // Wrong version, or a namespaced path for a cluster-scoped resource: 404.
    assert_eq!(
        get(&sim, "/apis/apps/v2/replicasets", "admin-tok", None)
            .await
            .0,
        404
    );
    assert_eq!(
        get(
            &sim,
            "/apis/example.org/v1alpha1/namespaces/x/widgets/w1",
            "admin-tok",
            None
        )
        .await
        .0,
        404
    );

    let (_, v) = get(&sim, "/api", "agent-tok", None).await;
    assert_eq!(
        (v["kind"].as_str(), v["versions"].clone()),
        (Some("APIVersions"), json!(["v1"]))
    );
    let (_, v) = get(&sim, "/api/v1", "agent-tok", None).await;
    let names: Vec<&str> = v["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for n in ["namespaces", "pods", "nodes", "pods/status"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    let (_, v) = get(&sim, "/apis", "agent-tok", None).await;
    let groups: Vec<&str> = v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(
        groups,
        ["apps", "batch", "example.org", "authorization.k8s.io"]
    );
    assert_eq!(
        v["groups"][2]["preferredVersion"],
        json!({"groupVersion": "example.org/v1alpha1", "version": "v1alpha1"})
    );
    let (_, v) = get(&sim, "/apis/apps/v1", "agent-tok", None).await;
    assert_eq!(v["groupVersion"], "apps/v1");
    let rs = v["resources"]
        .as_array()
        .expect("r")
        .iter()
        .find(|r| r["name"] == "replicasets")
        .cloned();
    assert_eq!(
        rs.map(|r| (r["kind"].clone(), r["namespaced"].clone())),
        Some((json!("ReplicaSet"), json!(true)))
    );
    assert_eq!(get(&sim, "/apis/nope/v1", "agent-tok", None).await.0, 404);
    assert_eq!(call(&sim, "GET", "/api", None, None, None).await.0, 401);
}

fn sar(user: &str, verb: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "resourceAttributes": {"group": "", "resource": "pods",
                 "namespace": "default", "name": name, "verb": verb}}}),
    )
    .expect("json")
}

#[tokio::test]
async fn subject_access_reviews() {
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let sim = base()
        .grant(AGENT, "create", "subjectaccessreviews")
        .token("other-tok", "other")
        .review_rule(
            "spiffe://example.org/broker",
            "impersonate-via-spire",
            "",
            "pods",
            "default",
            "blog-1",
            true,
        )
        .start()
        .await
        .expect("start");
    let (code, _, body) = call(
        &sim,
        "POST",
        path,
        Some("agent-tok"),
        None,
        Some(sar(
            "spiffe://example.org/broker",
            "impersonate-via-spire",
            "blog-1",
        )),
    )
    .await;
    assert_eq!(code, 201);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["status"]["allowed"], true);
    assert_eq!(v["spec"]["resourceAttributes"]["name"], "blog-1");
    let (code, _, body) = call(
        &sim,
        "POST",
        path,
        Some("agent-tok"),
        None,
        Some(sar(
            "spiffe://example.org/broker",
            "impersonate-via-spire",
            "blog-2",
        )),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json")["status"]["allowed"],
        false
    );

    let (code, _, body) = call(
        &sim,
        "POST",
        path,
        Some("other-tok"),
        None,
        Some(sar("x", "get", "y")),
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json")["message"],
        "subjectaccessreviews.authorization.k8s.io is forbidden: User \"other\" cannot create resource \"subjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope"
    );
    let (code, _, _) = call(
        &sim,
        "POST",
        path,
        Some("agent-tok"),
        None,
        Some(b"{not json".to_vec()),
    )
    .await;
    assert_eq!(code, 400);
    let (code, _, body) = call(
        &sim,
        "POST",
        path,
        Some("agent-tok"),
        None,
        Some(sar("", "get", "y")),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json")["reason"],
        "Invalid"
    );
    let (code, _, _) = call(
        &sim,
        "POST",
        path,
        Some("agent-tok"),
        None,
        Some(vec![b' '; 2 * 1024 * 1024]),
    )
    .await;
    assert_eq!(code, 413);
    let reviews = sim.reviews();
    assert_eq!(reviews.len(), 2, "only valid reviews are recorded");
    assert_eq!(reviews[1]["spec"]["resourceAttributes"]["name"], "blog-2");
}

/// A watch response read line by line.
struct Watch(Incoming, Vec<u8>);

impl Watch {
    async fn open(sim: &ApiServerSim, path: &str, accept: Option<&str>) -> Watch {
        let r = send(sim, "GET", path, Some("admin-tok"), accept, None)
            .await
            .expect("watch");
        assert_eq!(r.status(), 200);
        Watch(r.into_body(), Vec::new())
    }

    /// The next event, `None` when the stream ended; panics after 5 s.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.1.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.1.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("event JSON"));
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), self.0.frame())
                .await
                .expect("an event within 5 s");
            match frame {
                None => return None,
                Some(f) => {
                    if let Ok(d) = f.expect("frame").into_data() {
                        self.1.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn watch_events_bookmarks_and_expiry() {
    let sim = base()
        .namespace("web", &[("team", "blue")])
        .start()
        .await
        .expect("start");
    let rv = sim.resource_version();
    let mut w = Watch::open(&sim, &format!("/api/v1/namespaces?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=30"), Some(META)).await;
    assert_eq!(sim.open_watches(), 1);
    sim.set_namespace("web", &[("team", "red")]);
    sim.set_namespace("new", &[]);
    sim.delete_namespace("new");
    sim.send_bookmark();
    let e = w.next().await.expect("event");
    assert_eq!(
        (e["type"].as_str(), e["object"]["kind"].as_str()),
        (Some("MODIFIED"), Some("PartialObjectMetadata"))
    );
    assert_eq!(e["object"]["metadata"]["labels"]["team"], "red");
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        (rv + 1).to_string()
    );
    assert_eq!(w.next().await.expect("event")["type"], "ADDED");
    let e = w.next().await.expect("event");
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("new"))
    );
    let e = w.next().await.expect("event");
    assert_eq!(e["type"], "BOOKMARK");
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        (rv + 3).to_string()
    );
    sim.end_watches();
    assert!(w.next().await.is_none());
    assert!(until(|| sim.open_watches() == 0).await);

    // resourceVersion=0: the current state as ADDED first; timeoutSeconds ends it.
    let mut w = Watch::open(
        &sim,
        "/api/v1/namespaces?watch=true&resourceVersion=0&timeoutSeconds=1",
        None,
    )
    .await;
    let mut added = 0;
    while let Some(e) = w.next().await {
        assert_eq!(
            (e["type"].as_str(), e["object"]["kind"].as_str()),
            (Some("ADDED"), Some("Namespace"))
        );
        added += 1;
    }
    assert_eq!(added, 5);

    // Compacted: 200 with one ERROR event carrying a 410 Expired Status.
    sim.expire_history();
    let mut w = Watch::open(
        &sim,
        &format!("/api/v1/namespaces?watch=1&resourceVersion={rv}"),
        None,
    )
    .await;
    let e = w.next().await.expect("event");
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert_eq!(
        e["object"]["message"],
        format!("too old resource version: {rv} ({})", rv + 3)
    );
    assert!(w.next().await.is_none());
}

#[tokio::test]
async fn watch_pods_on_a_node() {
    let sim = base()
        .bookmark_interval(Duration::from_millis(200))
        .pod(PodBuilder::new("a").node("node-1").build())
        .start()
        .await
        .expect("start");
    let rv = sim.resource_version();
    let mut w = Watch::open(&sim, &format!("/api/v1/pods?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dnode-1"), None).await;
    sim.set_pod(PodBuilder::new("b").node("node-2").build())
        .expect("b");
    sim.set_pod(PodBuilder::new("c").node("node-1").build())
        .expect("c");
    sim.set_pod(PodBuilder::new("a").node("node-2").build())
        .expect("a moves");
    let e = w.next().await.expect("c");
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("c"))
    );
    assert_eq!(e["object"]["kind"], "Pod");
    let e = w.next().await.expect("a leaves");
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("a"))
    );
    // Periodic bookmarks.
    let e = w.next().await.expect("bookmark");
    assert_eq!(e["type"], "BOOKMARK");
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        sim.resource_version().to_string()
    );
    sim.abort_watches();
    let mut ended = false;
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(5), w.0.frame())
            .await
            .expect("ends")
        {
            None | Some(Err(_)) => {
                ended = true;
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    assert!(ended);
}

#[tokio::test]
async fn faults_and_counters() {
    let sim = base().namespace("web", &[]).start().await.expect("start");
    let p = "/api/v1/namespaces/web";

    sim.fault_next(
        p,
        1,
        Fault::Status(503, r#"{"kind":"Status","code":503}"#.into()),
    );
    assert_eq!(get(&sim, p, "admin-tok", None).await.0, 503);
    assert_eq!(get(&sim, p, "admin-tok", None).await.0, 200);

    sim.fault_next(
        p,
        1,
        Fault::TooManyRequests {
            retry_after_secs: 3,
        },
    );
    let (code, h, body) = call(&sim, "GET", p, Some("admin-tok"), None, None).await;
    assert_eq!(code, 429);
    assert_eq!(
        h.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("3")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json")["reason"],
        "TooManyRequests"
    );

    sim.fault_next(p, 1, Fault::Cut);
    assert!(
        send(&sim, "GET", p, Some("admin-tok"), None, None)
            .await
            .is_err()
    );

    sim.fault_next(p, 1, Fault::Oversized(100_000));
    let (code, _, body) = call(&sim, "GET", p, Some("admin-tok"), None, None).await;
    assert_eq!((code, body.len()), (200, 100_000));
    assert!(serde_json::from_slice::<Value>(&body).is_ok());

    sim.fault_next(p, 1, Fault::Truncated);
    let (code, _, body) = call(&sim, "GET", p, Some("admin-tok"), None, None).await;
    assert_eq!(code, 200);
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    sim.set_fault(p, Some(Fault::Delay(Duration::from_millis(200))));
    let t = std::time::Instant::now();
    assert_eq!(get(&sim, p, "admin-tok", None).await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    sim.set_fault(p, None);

    // A burst held by a gate: all in flight together, measured server-side.
    let gate = Gate::new();
    sim.set_fault("/api/v1/namespaces/", Some(Fault::Gate(gate.clone())));
    let sim = Arc::new(sim);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let sim = sim.clone();
        tasks.push(tokio::spawn(async move {
            get(&sim, "/api/v1/namespaces/web", "admin-tok", None)
                .await
                .0
        }));
    }
    assert!(until(|| sim.in_flight("/api/v1/namespaces/") == 5).await);
    sim.set_namespace("web", &[("late", "yes")]);
    gate.open();
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!(sim.max_in_flight("/api/v1/namespaces/web"), 5);
    assert_eq!(sim.max_in_flight("/api/v1/pods"), 0);
    assert_eq!(sim.in_flight("/"), 0);
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..6], [503, 200, 429, 0, 200, 200]);
    sim.clear_requests();
    assert_eq!(sim.request_count("/"), 0);
    assert_eq!(sim.max_in_flight("/"), 0);
}

#[tokio::test]
async fn client_configuration_files() {
    let sim = base().start().await.expect("start");
    let dir = TempDir::new("apiserver-sim");
    let kc = sim
        .write_kubeconfig(dir.path(), "agent-tok")
        .expect("kubeconfig");
    let text = std::fs::read_to_string(&kc).expect("read");
    assert!(
        text.contains(&format!("server: \"{}\"", sim.url())),
        "{text}"
    );
    assert!(text.contains("token: \"agent-tok\""));
    assert!(text.contains("current-context: sim"));
    let ca = dir.path().join("apiserver-ca.crt");
    assert_eq!(std::fs::read_to_string(ca).expect("ca"), sim.ca_pem());
    let kc = sim
        .write_kubeconfig_inline_ca(dir.path(), "agent-tok")
        .expect("kubeconfig");
    assert!(
        std::fs::read_to_string(kc)
            .expect("read")
            .contains("certificate-authority-data: LS0t")
    );
    let sa = sim
        .write_serviceaccount_dir(dir.path(), "agent-tok")
        .expect("sa");
    assert_eq!(
        std::fs::read_to_string(sa.join("token")).expect("token"),
        "agent-tok"
    );
    assert_eq!(
        std::fs::read_to_string(sa.join("ca.crt")).expect("ca"),
        sim.ca_pem()
    );
    let env = sim.in_cluster_env();
    assert_eq!(
        env[0],
        ("KUBERNETES_SERVICE_HOST".to_owned(), "127.0.0.1".to_owned())
    );
    assert_eq!(env[1].1, sim.port().to_string());
    assert_eq!(get(&sim, "/version", "", None).await.0, 200);
}
