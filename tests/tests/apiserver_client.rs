//! The API server client (`attestor::apiserver`) against the API server simulator: the
//! configuration sources, authentication, client-go's error texts and retries, bounded
//! bodies, pagination, the watched cache with its freshness bound, and request coalescing.

// A test: a panic is a failure with a backtrace.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use attestor::apiserver::{AccessReview, ApiServer, ApiSettings, ResourceType};
use attestor_tests::apiserver_sim::{ApiServerSim, ApiServerSimBuilder, Fault, Gate};
use attestor_tests::kubelet_sim::PodBuilder;
use attestor_tests::tempdir::TempDir;

const AGENT: &str = "system:serviceaccount:spire:spire-agent";

fn sim() -> ApiServerSimBuilder {
    ApiServerSim::builder()
        .token("tok", AGENT)
        .allow_all(AGENT)
        .namespace("web", &[("team", "blue")])
}

fn client(sim: &ApiServerSim, dir: &TempDir, cache: bool) -> ApiServer {
    let kubeconfig = sim.write_kubeconfig(dir.path(), "tok").unwrap();
    ApiServer::new(ApiSettings::from_kubeconfig(&kubeconfig).unwrap(), cache).unwrap()
}

/// The sim adds `kubernetes.io/metadata.name`; only the test's label matters here.
fn team(l: &BTreeMap<String, String>) -> Option<&str> {
    l.get("team").map(String::as_str)
}

/// Requests with exactly this path (the sim's counters take prefixes).
fn exact(sim: &ApiServerSim, path: &str) -> usize {
    sim.requests().iter().filter(|r| r.path == path).count()
}

async fn eventually<F: FnMut() -> bool>(what: &str, within: Duration, mut check: F) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeconfig_and_in_cluster_configurations_authenticate() {
    let sim = sim().start().await.unwrap();
    let dir = TempDir::new("apiserver-client-auth");

    let api = client(&sim, &dir, false);
    let got = api.namespace_labels("web").await.unwrap();
    assert_eq!(team(&got), Some("blue"));

    // (Overwrites the first kubeconfig: its client is built already.)
    let inline = sim.write_kubeconfig_inline_ca(dir.path(), "tok").unwrap();
    let api = ApiServer::new(ApiSettings::from_kubeconfig(&inline).unwrap(), false).unwrap();
    assert_eq!(
        team(&api.namespace_labels("web").await.unwrap()),
        Some("blue")
    );

    let sa = sim.write_serviceaccount_dir(dir.path(), "tok").unwrap();
    let env = sim.in_cluster_env();
    let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let settings = ApiSettings::in_cluster(&lookup, &sa).unwrap();
    assert_eq!(settings.server(), sim.url());
    let api = ApiServer::new(settings, false).unwrap();
    assert_eq!(
        team(&api.namespace_labels("web").await.unwrap()),
        Some("blue")
    );

    // A wrong token: the Status message, as client-go prints it.
    let bad = sim.write_kubeconfig(dir.path(), "wrong").unwrap();
    let api = ApiServer::new(ApiSettings::from_kubeconfig(&bad).unwrap(), false).unwrap();
    let err = api.namespace_labels("web").await.unwrap_err();
    assert_eq!(err.to_string(), "Unauthorized");
    assert_eq!(err.http_status(), Some(401));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_rereads_the_token_file_at_once() {
    let sim = sim().start().await.unwrap();
    let dir = TempDir::new("apiserver-client-token");
    let token = dir.write("token", "tok\n");
    let kubeconfig = sim.write_kubeconfig_token_file(dir.path(), &token).unwrap();
    let api = ApiServer::new(ApiSettings::from_kubeconfig(&kubeconfig).unwrap(), false).unwrap();
    api.namespace_labels("web").await.unwrap();

    // Rotation within the one-minute cache: the old token is refused once, the file is read
    // again and the request retried.
    sim.set_tokens(&[("rotated", AGENT)]);
    std::fs::write(&token, "rotated").unwrap();
    sim.clear_requests();
    assert_eq!(
        team(&api.namespace_labels("web").await.unwrap()),
        Some("blue")
    );
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 200]);

    // A token nobody accepts: one retry, then the 401.
    sim.set_tokens(&[("other", AGENT)]);
    sim.clear_requests();
    let err = api.namespace_labels("web").await.unwrap_err();
    assert_eq!(err.to_string(), "Unauthorized");
    assert_eq!(sim.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn forbidden_and_not_found_read_like_client_go() {
    let sim = ApiServerSim::builder()
        .token("tok", AGENT)
        .grant(AGENT, "get", "namespaces")
        .namespace("web", &[])
        .start()
        .await
        .unwrap();
    let dir = TempDir::new("apiserver-client-texts");
    let api = client(&sim, &dir, false);

    let err = api.namespace_labels("nope").await.unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.to_string(), r#"namespaces "nope" not found"#);
    assert!(!err.retryable());

    let err = api.get_pod("web", "web-1").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            r#"pods "web-1" is forbidden: User "{AGENT}" cannot get resource "pods" in API group "" in the namespace "web""#
        )
    );
    assert_eq!(err.http_status(), Some(403));

    let err = api
        .find_metadata_by_uid(&ResourceType::pods(), "u")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            r#"pods is forbidden: User "{AGENT}" cannot list resource "pods" in API group "" at the cluster scope"#
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured_and_other_errors_are_not_retried() {
    let sim = sim().start().await.unwrap();
    let dir = TempDir::new("apiserver-client-retry");
    let api = client(&sim, &dir, false);
    let path = "/api/v1/namespaces/web";

    sim.fault_next(
        path,
        2,
        Fault::TooManyRequests {
            retry_after_secs: 1,
        },
    );
    let start = Instant::now();
    assert_eq!(
        team(&api.namespace_labels("web").await.unwrap()),
        Some("blue")
    );
    assert!(start.elapsed() >= Duration::from_secs(2), "waited as asked");
    assert_eq!(exact(&sim, path), 3);

    // A 5xx without Retry-After is the caller's to retry.
    sim.clear_requests();
    sim.fault_next(path, 1, Fault::Status(500, "boom".into()));
    let err = api.namespace_labels("web").await.unwrap_err();
    assert!(err.retryable());
    assert_eq!(
        err.to_string(),
        r#"an error on the server ("boom") has prevented the request from succeeding (get namespaces web)"#
    );
    assert_eq!(exact(&sim, path), 1);

    let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: leader changed","reason":"InternalError","code":500}"#;
    sim.fault_next(path, 1, Fault::Status(500, status.into()));
    let err = api.namespace_labels("web").await.unwrap_err();
    assert_eq!(err.to_string(), "etcdserver: leader changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_connection_is_retried_once_for_get() {
    let sim = sim().start().await.unwrap();
    let dir = TempDir::new("apiserver-client-cut");
    let api = client(&sim, &dir, false);
    let path = "/api/v1/namespaces/web";

    sim.fault_next(path, 1, Fault::Cut);
    assert_eq!(
        team(&api.namespace_labels("web").await.unwrap()),
        Some("blue")
    );

    sim.fault_next(path, 2, Fault::Cut);
    let err = api.namespace_labels("web").await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("Get \"{}{path}\": ", sim.url())),
        "{text}"
    );
    assert!(err.retryable());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_truncated_answers_are_refused() {
    let sim = sim().start().await.unwrap();
    let dir = TempDir::new("apiserver-client-size");
    let api = client(&sim, &dir, false);
    let path = "/api/v1/namespaces/web";

    sim.fault_next(path, 1, Fault::Oversized(5 << 20));
    let err = api.namespace_labels("web").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Get \"{}{path}\": the response exceeds the 4 MiB limit for a single object; the attestor refuses larger answers",
            sim.url()
        )
    );

    sim.fault_next(path, 2, Fault::Truncated);
    let err = api.namespace_labels("web").await.unwrap_err();
    assert!(err.to_string().starts_with("Get \""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_are_paged_and_uid_search_stops_when_found() {
    let mut builder = sim();
    for i in 0..1100 {
        builder = builder.namespace(&format!("ns-{i:04}"), &[]);
    }
    let sim = builder.start().await.unwrap();
    let dir = TempDir::new("apiserver-client-pages");
    let api = client(&sim, &dir, false);
    let uid_of = |name: &str| {
        sim.object("", "namespaces", "", name).unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // The sim's uids are derived from (resourceVersion, name length) and may collide;
    // search for one that is unique, on the last page.
    let names: Vec<String> = (0..1100).map(|i| format!("ns-{i:04}")).collect();
    let uids: Vec<String> = names.iter().map(|n| uid_of(n)).collect();
    let unique = |i: usize| uids.iter().filter(|u| **u == uids[i]).count() == 1;
    let last = (0..names.len()).rev().find(|i| unique(*i)).unwrap();
    sim.clear_requests();
    let found = api
        .find_metadata_by_uid(&ResourceType::namespaces(), &uids[last])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.name, names[last]);
    let lists: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/namespaces")
        .collect();
    assert!(lists.len() >= 3, "{} pages", lists.len());
    assert!(lists.iter().all(|r| r.query.contains("limit=500")));
    assert!(lists[1].query.contains("continue="));

    let first = uid_of("ns-0000");
    sim.clear_requests();
    let found = api
        .find_metadata_by_uid(&ResourceType::namespaces(), &first)
        .await
        .unwrap();
    assert_eq!(found.unwrap().name, "ns-0000");
    assert_eq!(
        exact(&sim, "/api/v1/namespaces"),
        1,
        "stopped at the first page"
    );

    assert_eq!(
        api.find_metadata_by_uid(&ResourceType::namespaces(), "no-such-uid")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_syncs_follows_watches_and_relists_on_410() {
    let sim = sim()
        .pod(
            PodBuilder::new("web-1")
                .namespace("web")
                .label("v", "1")
                .build(),
        )
        .start()
        .await
        .unwrap();
    let dir = TempDir::new("apiserver-client-cache");
    let api = client(&sim, &dir, true);

    assert_eq!(
        team(&api.namespace_labels("web").await.unwrap()),
        Some("blue")
    );
    let err = api.namespace_labels("nope").await.unwrap_err();
    assert!(err.is_not_found(), "absent from a fresh store: NotFound");
    assert_eq!(err.to_string(), r#"namespaces "nope" not found"#);
    assert_eq!(
        exact(&sim, "/api/v1/namespaces/web"),
        0,
        "answered from the cache"
    );
    let watch_request = || {
        sim.requests()
            .into_iter()
            .find(|r| r.path == "/api/v1/namespaces" && r.query.contains("watch=1"))
    };
    eventually("the watch", Duration::from_secs(5), || {
        watch_request().is_some()
    })
    .await;
    let watch = watch_request().unwrap();
    assert!(watch.query.contains("allowWatchBookmarks=true"));
    assert!(watch.query.contains("timeoutSeconds=60"));

    // A watch event updates the store.
    sim.set_namespace("web", &[("team", "red")]);
    let start = Instant::now();
    loop {
        if team(&api.namespace_labels("web").await.unwrap()) == Some("red") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "update not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Missed events and a compacted history: the re-watch gets 410, the informer lists again.
    sim.set_fault(
        "/api/v1/namespaces",
        Some(Fault::Status(500, "down".into())),
    );
    sim.abort_watches();
    eventually("the watch to end", Duration::from_secs(5), || {
        sim.open_watches() == 0
    })
    .await;
    sim.set_namespace("web", &[("team", "green")]);
    sim.expire_history();
    tokio::time::sleep(Duration::from_millis(700)).await;
    sim.clear_requests();
    sim.clear_faults();
    let start = Instant::now();
    loop {
        if team(&api.namespace_labels("web").await.unwrap()) == Some("green") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(8), "re-list not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The re-watch from the old version was refused (410), then the list was made.
    let seen: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/namespaces")
        .collect();
    let watch_at = seen.iter().position(|r| r.query.contains("watch=1"));
    let list_at = seen.iter().position(|r| !r.query.contains("watch"));
    assert!(
        matches!((watch_at, list_at), (Some(w), Some(l)) if w < l),
        "{seen:?}"
    );

    // The metadata of other resources comes from their own informer.
    let meta = api
        .get_metadata(&ResourceType::pods(), "web", "web-1")
        .await
        .unwrap();
    assert_eq!(meta.labels.get("v").map(String::as_str), Some("1"));
    assert_eq!(exact(&sim, "/api/v1/namespaces/web/pods/web-1"), 0);
}

/// With its watch down for longer than the 10 s freshness bound, the store no longer
/// answers: lookups go to the server.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_cache_falls_back_to_live_requests() {
    let sim = sim()
        .pod(
            PodBuilder::new("web-1")
                .namespace("web")
                .label("v", "1")
                .build(),
        )
        .start()
        .await
        .unwrap();
    let dir = TempDir::new("apiserver-client-fresh");
    let api = client(&sim, &dir, true);
    let live = "/api/v1/namespaces/web/pods/web-1";

    assert_eq!(
        api.get_metadata(&ResourceType::pods(), "web", "web-1")
            .await
            .unwrap()
            .labels["v"],
        "1"
    );
    assert_eq!(exact(&sim, live), 0);

    // The informer's list and watch fail from now on (the live GET path is not affected).
    sim.set_fault("/api/v1/pods", Some(Fault::Status(500, "down".into())));
    sim.abort_watches();
    sim.set_pod(
        PodBuilder::new("web-1")
            .namespace("web")
            .label("v", "2")
            .build(),
    )
    .unwrap();
    // Within the bound: the (now stale) store still answers.
    assert_eq!(
        api.get_metadata(&ResourceType::pods(), "web", "web-1")
            .await
            .unwrap()
            .labels["v"],
        "1"
    );
    assert_eq!(exact(&sim, live), 0);

    tokio::time::sleep(Duration::from_secs(11)).await;
    let meta = api
        .get_metadata(&ResourceType::pods(), "web", "web-1")
        .await
        .unwrap();
    assert_eq!(meta.labels["v"], "2", "answered live");
    assert_eq!(exact(&sim, live), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_namespace_lookups_share_one_request() {
    let sim = sim().start().await.unwrap();
    let dir = TempDir::new("apiserver-client-coalesce");
    let api = client(&sim, &dir, false);
    let path = "/api/v1/namespaces/web";
    let gate = Gate::new();
    sim.set_fault(path, Some(Fault::Gate(gate.clone())));

    let calls: Vec<_> = (0..200)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.namespace_labels("web").await })
        })
        .collect();
    eventually("the request to arrive", Duration::from_secs(5), || {
        sim.in_flight(path) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.open();
    for call in calls {
        assert_eq!(team(&call.await.unwrap().unwrap()), Some("blue"));
    }
    assert_eq!(sim.max_in_flight(path), 1);
    assert_eq!(exact(&sim, path), 1);

    // After it completed, a new call makes a new request (no caching).
    api.namespace_labels("web").await.unwrap();
    assert_eq!(exact(&sim, path), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_and_access_reviews() {
    let sim = sim()
        .workload_resources()
        .review_rule(
            "spiffe://example.org/broker",
            "impersonate-via-spire",
            "",
            "pods",
            "default",
            "blog-24ck7",
            true,
        )
        .start()
        .await
        .unwrap();
    let dir = TempDir::new("apiserver-client-discovery");
    let api = client(&sim, &dir, false);

    let rt = api.resolve_resource("apps", "deployments").await.unwrap();
    assert_eq!(
        (rt.version.as_str(), rt.kind.as_str(), rt.namespaced),
        ("v1", "Deployment", true)
    );
    assert_eq!(
        api.resolve_resource("core", "pods").await.unwrap(),
        ResourceType::pods()
    );
    assert_eq!(
        api.resolve_resource("", "namespaces").await.unwrap(),
        ResourceType::namespaces()
    );
    let err = api.resolve_resource("apps", "widgets").await.unwrap_err();
    assert_eq!(err.to_string(), "no matches for apps/, Resource=widgets");
    // Known answers and recent misses are not asked again.
    sim.clear_requests();
    api.resolve_resource("apps", "deployments").await.unwrap();
    api.resolve_resource("apps", "widgets").await.unwrap_err();
    assert_eq!(sim.requests().len(), 0);

    let mut review = AccessReview {
        user: "spiffe://example.org/broker".into(),
        group: String::new(),
        resource: "pods".into(),
        namespace: "default".into(),
        name: "blog-24ck7".into(),
        verb: "impersonate-via-spire".into(),
    };
    assert!(api.access_review(&review).await.unwrap());
    review.name = "other".into();
    assert!(!api.access_review(&review).await.unwrap());
    let sent = &sim.reviews()[0];
    assert_eq!(sent["spec"]["user"], "spiffe://example.org/broker");
    assert_eq!(
        sent["spec"]["resourceAttributes"]["verb"],
        "impersonate-via-spire"
    );
    assert!(sent["spec"].get("groups").is_none());
}
