//! `resolve_resource`: the RESTMapper's `KindFor` with no version, over discovery.
//!
//! Core (group `""`, or `"core"` as SPIRE's configuration spells it) is `/api/v1`; any
//! other group is found in `/apis`, and its versions are asked in discovery order (the
//! preferred one first), the first that serves the plural winning. Subresources
//! (`pods/status`) are skipped. Found resources are kept for the process lifetime (a
//! resource's group, version and scope do not change under a running cluster in practice);
//! a miss re-discovers its group, at most once per [`REDISCOVER_AFTER`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::ResourceType;
use super::error::{ApiError, Target};
use super::transport::{Call, DISCOVERY_LIMIT, Transport};
use super::wire::{self, ACCEPT_JSON, GroupList, ResourceList};

/// A group is discovered again for a missing plural at most this often (a CRD installed
/// after start is found within this time; a typo does not hammer the API server).
pub(super) const REDISCOVER_AFTER: Duration = Duration::from_secs(10);

struct Group {
    resources: HashMap<String, ResourceType>,
    discovered_at: Instant,
}

pub(super) struct Discovery {
    groups: Mutex<HashMap<String, Group>>,
    /// One discovery at a time: concurrent misses wait for it instead of repeating it.
    discovering: tokio::sync::Mutex<()>,
}

impl Discovery {
    pub fn new() -> Self {
        Discovery {
            groups: Mutex::new(HashMap::new()),
            discovering: tokio::sync::Mutex::new(()),
        }
    }

    /// `Some(Ok)` known, `Some(Err)` known missing (discovered recently), `None` ask.
    fn lookup(&self, group: &str, plural: &str) -> Option<Result<ResourceType, ApiError>> {
        let groups = self
            .groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = groups.get(group)?;
        match entry.resources.get(plural) {
            Some(rt) => Some(Ok(rt.clone())),
            None if entry.discovered_at.elapsed() < REDISCOVER_AFTER => {
                Some(Err(no_match(group, plural)))
            }
            None => None,
        }
    }

    pub async fn resolve(
        &self,
        transport: &Transport,
        group: &str,
        plural: &str,
    ) -> Result<ResourceType, ApiError> {
        // SPIRE maps "core" to "" before asking the mapper.
        let group = if group == "core" { "" } else { group };
        if plural.is_empty() || plural.contains('/') {
            return Err(no_match(group, plural));
        }
        if let Some(answer) = self.lookup(group, plural) {
            return answer;
        }
        let _one_at_a_time = self.discovering.lock().await;
        if let Some(answer) = self.lookup(group, plural) {
            return answer;
        }
        let resources = discover_group(transport, group).await?;
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        groups.insert(
            group.to_owned(),
            Group {
                resources,
                discovered_at: Instant::now(),
            },
        );
        groups
            .get(group)
            .and_then(|g| g.resources.get(plural))
            .cloned()
            .ok_or_else(|| no_match(group, plural))
    }
}

fn no_match(group: &str, plural: &str) -> ApiError {
    ApiError::NoMatch {
        group: group.to_owned(),
        plural: plural.to_owned(),
    }
}

async fn get<T: serde::de::DeserializeOwned>(
    transport: &Transport,
    path: String,
) -> Result<T, ApiError> {
    let body = transport
        .call(&Call::get(
            path.clone(),
            ACCEPT_JSON,
            DISCOVERY_LIMIT,
            Target::default(),
        ))
        .await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
        method: "Get",
        url: transport.url(&path),
        reason: e.to_string(),
    })
}

/// Every resource of `group`, each plural at the first version (in discovery order) that
/// serves it.
async fn discover_group(
    transport: &Transport,
    group: &str,
) -> Result<HashMap<String, ResourceType>, ApiError> {
    let versions = if group.is_empty() {
        vec!["v1".to_owned()]
    } else {
        let list: GroupList = get(transport, "/apis".to_owned()).await?;
        match list.groups.iter().find(|g| g.name == group) {
            Some(g) => g.ordered_versions(),
            None => Vec::new(),
        }
    };
    let mut found = HashMap::new();
    for version in versions {
        let path = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{}", wire::escape(&version))
        };
        let list: ResourceList = get(transport, path).await?;
        add_resources(&mut found, group, &version, list);
    }
    Ok(found)
}

/// Adds the top-level resources of one version; earlier versions win.
fn add_resources(
    found: &mut HashMap<String, ResourceType>,
    group: &str,
    version: &str,
    list: ResourceList,
) {
    for r in list.resources {
        if r.name.contains('/') {
            continue; // a subresource
        }
        found.entry(r.name.clone()).or_insert_with(|| ResourceType {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: r.name,
            kind: r.kind,
            namespaced: r.namespaced,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subresources_are_skipped_and_earlier_versions_win() {
        let mut found = HashMap::new();
        let v2: ResourceList = serde_json::from_str(
            r#"{"kind":"APIResourceList","groupVersion":"autoscaling/v2","resources":[
                {"name":"horizontalpodautoscalers","kind":"HorizontalPodAutoscaler","namespaced":true},
                {"name":"horizontalpodautoscalers/status","kind":"HorizontalPodAutoscaler","namespaced":true}]}"#,
        )
        .unwrap();
        let v1: ResourceList = serde_json::from_str(
            r#"{"resources":[{"name":"horizontalpodautoscalers","kind":"HorizontalPodAutoscaler","namespaced":true},
                {"name":"oldthings","kind":"OldThing","namespaced":false}]}"#,
        )
        .unwrap();
        add_resources(&mut found, "autoscaling", "v2", v2);
        add_resources(&mut found, "autoscaling", "v1", v1);
        assert_eq!(found.len(), 2);
        assert_eq!(found["horizontalpodautoscalers"].version, "v2");
        assert_eq!(found["oldthings"].version, "v1");
        assert!(!found["oldthings"].namespaced);
    }

    #[test]
    fn a_miss_reads_like_the_rest_mapper() {
        assert_eq!(
            no_match("", "widgets").to_string(),
            "no matches for /, Resource=widgets"
        );
    }
}
