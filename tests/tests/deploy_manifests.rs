//! The Kubernetes manifests in `deploy/` against the Kubernetes API's own JSON schemas:
//! `kubernetes-validate --strict` (PyPI; unknown fields are errors, as `kubectl apply
//! --validate=strict` makes them), for the newest Kubernetes it ships and an older one still
//! in use. `cargo xtask setup` installs it into a venv (xtask/src/setup.rs,
//! `ensure_kubernetes_validate`); a missing validator fails these tests, it never skips them.
//! Also: the validator really rejects broken manifests, and the ServiceAccount, the
//! DaemonSet and the RBAC bindings name each other consistently.

use std::path::PathBuf;

use attestor_tests::manifests::{VERSIONS, documents, validate, workspace};
use attestor_tests::tempdir::TempDir;
use serde_json::Value;

/// Every `*.yaml` in deploy/, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(workspace().join("deploy"))
        .expect("deploy/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no manifests in deploy/");
    v
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    for file in manifests() {
        for version in VERSIONS {
            if let Err(e) = validate(&file, version) {
                panic!("{} (Kubernetes {version}): {e}", file.display());
            }
        }
    }
}

/// Each mutation of a real manifest must fail validation, with the validator's reason.
#[test]
fn the_validator_rejects_broken_manifests() {
    let dir = TempDir::new("deploy-manifests");
    let read = |name: &str| {
        std::fs::read_to_string(workspace().join("deploy").join(name)).expect("manifest")
    };
    let (rbac, ds) = (
        read("spire-agent-rbac.yaml"),
        read("spire-agent-daemonset.yaml"),
    );
    let cases = [
        (
            "a string where RBAC wants a list",
            rbac.replacen("verbs: [\"create\"]", "verbs: create", 1),
            "is not of type 'array'",
        ),
        (
            "an unknown field in the pod spec (strict)",
            ds.replacen("serviceAccountName:", "serviceAccount_Name:", 1),
            "'serviceAccount_Name' was unexpected",
        ),
        (
            "an unknown field in metadata (strict)",
            rbac.replacen(
                "  namespace: spire\n",
                "  namespace: spire\n  bogus: 1\n",
                1,
            ),
            "'bogus' was unexpected",
        ),
        (
            "a string where a boolean goes",
            ds.replacen("readOnly: true", "readOnly: \"yes\"", 1),
            "is not of type 'boolean'",
        ),
        (
            "a misspelt kind (only a warning to the tool)",
            rbac.replacen("kind: ClusterRole\n", "kind: ClusterRol\n", 1),
            "Couldn't find schema for kind ClusterRol",
        ),
        (
            "a missing required field",
            rbac.replacen(
                "  kind: ClusterRole\n  name: spire-agent-kubelet\n",
                "  kind: ClusterRole\n",
                1,
            ),
            "'name' is a required property",
        ),
    ];
    for (what, text, reason) in cases {
        assert!(
            text != rbac && text != ds,
            "{what}: the mutation did not apply"
        );
        let file = dir.write("broken.yaml", &text);
        match validate(&file, VERSIONS[0]) {
            Ok(()) => panic!("{what}: validated"),
            Err(e) => assert!(e.contains(reason), "{what}: expected {reason:?} in:\n{e}"),
        }
    }
}

/// The DaemonSet's ServiceAccount is the one deploy/ defines, every binding grants its
/// ClusterRole (defined in deploy/) to that ServiceAccount only, no rule uses a wildcard,
/// and deploy/README.md names every ClusterRole.
#[test]
fn service_account_daemonset_and_rbac_agree() {
    let docs: Vec<Value> = manifests().iter().flat_map(|f| documents(f)).collect();
    fn kind<'a>(docs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        docs.iter().filter(move |d| d["kind"] == k)
    }
    let of_kind = |k: &'static str| kind(&docs, k);
    let ds = of_kind("DaemonSet").next().expect("a DaemonSet");
    let sa = of_kind("ServiceAccount").next().expect("a ServiceAccount");
    let (name, ns) = (&sa["metadata"]["name"], &sa["metadata"]["namespace"]);
    assert_eq!(&ds["spec"]["template"]["spec"]["serviceAccountName"], name);
    assert_eq!(&ds["metadata"]["namespace"], ns);
    let roles: Vec<&Value> = of_kind("ClusterRole").collect();
    assert!(!roles.is_empty(), "no ClusterRole");
    let readme = std::fs::read_to_string(workspace().join("deploy/README.md")).expect("README");
    for role in &roles {
        let role_name = role["metadata"]["name"].as_str().expect("name");
        assert!(
            readme.contains(role_name),
            "deploy/README.md does not mention {role_name}"
        );
        for rule in role["rules"].as_array().expect("rules") {
            for key in ["apiGroups", "resources", "verbs"] {
                let values = rule[key].as_array().expect(key);
                assert!(
                    !values.iter().any(|v| v == "*"),
                    "{role_name}: wildcard in {rule}"
                );
            }
        }
        let bindings: Vec<&Value> = of_kind("ClusterRoleBinding")
            .filter(|b| b["roleRef"]["name"] == role["metadata"]["name"])
            .collect();
        assert_eq!(bindings.len(), 1, "{role_name}: one binding");
        let b = bindings[0];
        assert_eq!(b["roleRef"]["kind"], "ClusterRole");
        assert_eq!(
            b["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}]),
            "{role_name}: bound to the agent's ServiceAccount only"
        );
    }
    for b in of_kind("ClusterRoleBinding") {
        assert!(
            roles
                .iter()
                .any(|r| r["metadata"]["name"] == b["roleRef"]["name"]),
            "{}: its ClusterRole is not in deploy/",
            b["metadata"]["name"]
        );
    }
}
