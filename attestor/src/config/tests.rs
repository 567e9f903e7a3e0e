use super::*;

fn ok(text: &str) -> Config {
    match Config::parse(text) {
        Ok(c) => c,
        Err(e) => panic!("{text:?} rejected: {:?}", e.0),
    }
}

fn first_error(text: &str) -> String {
    match Config::parse(text) {
        Ok(c) => panic!("{text:?} accepted: {c:?}"),
        Err(e) => {
            let status = Status::from(e);
            assert_eq!(status.code, Code::InvalidArgument);
            status.message
        }
    }
}

fn all_errors(text: &str) -> Vec<String> {
    Config::parse(text)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn empty_plugin_data_gives_spire_defaults() {
    for text in ["", "  \n# nothing\n", "{}"] {
        let c = ok(text);
        assert_eq!(c, Config::default());
        assert_eq!(c.kubelet_port(), KubeletPort::Secure(10250));
        assert_eq!(
            c.kubelet_ca_path(),
            Path::new("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
        );
        assert_eq!(
            c.token_path(),
            Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
        assert!(!c.skip_kubelet_verification());
        assert_eq!(c.certificate_path(), None);
        assert_eq!(c.private_key_path(), None);
        assert!(!c.use_anonymous_authentication());
        assert_eq!(c.max_poll_attempts(), 60);
        assert_eq!(c.poll_retry_interval(), Duration::from_millis(500));
        assert_eq!(c.reload_interval(), Duration::from_secs(60));
        assert!(!c.disable_container_selectors());
        assert!(c.use_new_container_locator());
        assert!(!c.verbose_container_locator_logs());
        assert!(!c.experimental_api_server_cache());
        assert_eq!(c.tracker(), TrackerMode::Auto);
        assert_eq!(c.tracker_max_processes(), 65536);
        assert_eq!(
            c.kubelet_auth(),
            Ok(KubeletAuth::Token(PathBuf::from(DEFAULT_TOKEN_PATH)))
        );
        assert_eq!(c.kubelet_host(no_env), "127.0.0.1");
    }
}

#[test]
fn every_key_bare_and_quoted() {
    let bare = r#"
        kubelet_secure_port = 10260
        kubelet_ca_path = "/ca.pem"
        skip_kubelet_verification = true
        token_path = "/token"
        certificate_path = "/cert.pem"
        private_key_path = "/key.pem"
        use_anonymous_authentication = false
        node_name_env = "N"
        node_name = "node-a"
        max_poll_attempts = 5
        poll_retry_interval = "1.5s"
        reload_interval = "1h30m"
        disable_container_selectors = true
        use_new_container_locator = true
        verbose_container_locator_logs = true
        enable_namespace_labels = false
        disable_kubelet_client = false
        experimental {
            api_server {
                cache {
                    enabled = true
                }
            }
        }
        tracker = "procfs"
        tracker_max_processes = 1024
    "#;
    // What the agent prints for a JSON agent config: quoted keys and `= {` blocks.
    let quoted = bare
        .lines()
        .map(|l| {
            let t = l.trim_start();
            match t.split_once(' ') {
                Some((k, rest))
                    if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !k.is_empty() =>
                {
                    let rest = if rest == "{" { "= {" } else { rest };
                    format!("\"{k}\" {rest}")
                }
                _ => t.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(quoted.contains("\"experimental\" = {"), "{quoted}");
    assert!(quoted.contains("\"node_name_env\" = \"N\""), "{quoted}");
    let json = r#"{"kubelet_secure_port": 10260, "kubelet_ca_path": "/ca.pem",
        "skip_kubelet_verification": true, "token_path": "/token",
        "certificate_path": "/cert.pem", "private_key_path": "/key.pem",
        "use_anonymous_authentication": false, "node_name_env": "N", "node_name": "node-a",
        "max_poll_attempts": 5, "poll_retry_interval": "1.5s", "reload_interval": "1h30m",
        "disable_container_selectors": true, "use_new_container_locator": true,
        "verbose_container_locator_logs": true, "enable_namespace_labels": false,
        "disable_kubelet_client": false,
        "experimental": {"api_server": {"cache": {"enabled": true}}},
        "tracker": "procfs", "tracker_max_processes": 1024}"#;
    for text in [bare, quoted.as_str(), json] {
        let c = ok(text);
        assert_eq!(c.kubelet_port(), KubeletPort::Secure(10260));
        assert_eq!(c.kubelet_ca_path(), Path::new("/ca.pem"));
        assert!(c.skip_kubelet_verification());
        assert_eq!(c.token_path(), Path::new("/token"));
        assert_eq!(c.certificate_path(), Some(Path::new("/cert.pem")));
        assert_eq!(c.private_key_path(), Some(Path::new("/key.pem")));
        assert_eq!(
            c.kubelet_auth(),
            Ok(KubeletAuth::ClientCertificate {
                cert: "/cert.pem".into(),
                key: "/key.pem".into()
            })
        );
        assert_eq!(c.node_name(no_env), "node-a");
        assert_eq!(c.kubelet_host(no_env), "node-a");
        assert_eq!(c.max_poll_attempts(), 5);
        assert_eq!(c.poll_retry_interval(), Duration::from_millis(1500));
        assert_eq!(c.reload_interval(), Duration::from_secs(5400));
        assert!(c.disable_container_selectors());
        assert!(c.disable_container_selectors());
        assert!(c.verbose_container_locator_logs());
        assert!(c.experimental_api_server_cache());
        assert_eq!(c.tracker(), TrackerMode::Procfs);
        assert_eq!(c.tracker_max_processes(), 1024);
    }
}

#[test]
fn plugin_data_block_forms() {
    for text in [
        "experimental = {\n  api_server = {\n    cache = {\n      enabled = true\n    }\n  }\n}",
        "experimental {\n  api_server {\n    cache {\n      enabled = true\n    }\n  }\n}",
        "\"experimental\" {\n  \"api_server\" = {\n    \"cache\" {\n      \"enabled\" = true\n    }\n  }\n}",
    ] {
        assert!(ok(text).experimental_api_server_cache(), "{text}");
    }
}

#[test]
fn read_only_port() {
    let c = ok("kubelet_read_only_port = 10255\nnode_name = \"ignored\"");
    assert_eq!(c.kubelet_port(), KubeletPort::ReadOnly(10255));
    assert_eq!(c.kubelet_host(no_env), "127.0.0.1");
    // An integer in a string is an integer to HCL v1.
    assert_eq!(
        ok("kubelet_read_only_port = \"10255\"").kubelet_port(),
        KubeletPort::ReadOnly(10255)
    );
}

#[test]
fn both_ports() {
    assert_eq!(
        first_error("kubelet_read_only_port = 10255\nkubelet_secure_port = 10250"),
        "cannot use both the read-only and secure port"
    );
    // Values ≤ 0 mean unset.
    assert_eq!(
        ok("kubelet_read_only_port = 10255\nkubelet_secure_port = 0").kubelet_port(),
        KubeletPort::ReadOnly(10255)
    );
    assert_eq!(
        ok("kubelet_read_only_port = -1\nkubelet_secure_port = 10251").kubelet_port(),
        KubeletPort::Secure(10251)
    );
    assert_eq!(
        ok("kubelet_secure_port = -5").kubelet_port(),
        KubeletPort::Secure(10250)
    );
}

#[test]
fn port_out_of_range_beyond_spire() {
    assert_eq!(
        first_error("kubelet_secure_port = 70000"),
        "kubelet_secure_port must be a TCP port (1-65535), got 70000"
    );
}

#[test]
fn unknown_keys_are_sorted_and_reported_per_level() {
    assert_eq!(
        first_error("zeta = 1\nalpha = \"x\"\nkubelet_secure_port = 1"),
        "unknown configurations detected: alpha,zeta"
    );
    // One error per struct level (pluginconf.ReportUnusedKeys per UnusedKeyPositions), in
    // buildConfig's order: top, experimental, api_server, cache, broker, each broker entry.
    assert_eq!(
        all_errors(
            "experimental { foo = 1\n api_server { bar = 2\n cache { baz = true } } }\nzz = 1"
        ),
        [
            "unknown configurations detected: zz",
            "unknown configurations detected: foo",
            "unknown configurations detected: bar",
            "unknown configurations detected: baz",
        ]
    );
    assert_eq!(
        all_errors(
            r#"experimental {
                 x = 1
                 broker {
                   b = 1
                   access_policy = "permissive"
                   brokers = [{ id = "spiffe://td/a", e1 = 1 }, { id = "spiffe://td/b", e2 = 2, e0 = 0 }]
                 }
                 cache { c = 1 }
               }"#
        ),
        [
            "unknown configurations detected: cache,x",
            "unknown configurations detected: b",
            "unknown configurations detected: e1",
            "unknown configurations detected: e0,e2",
        ]
    );
    // SPIRE moved sigstore out of experimental (#6906): there it is unknown.
    assert_eq!(
        first_error("experimental { sigstore { } }"),
        "unknown configurations detected: sigstore"
    );
}

#[test]
fn keys_match_case_insensitively_like_hcl_v1() {
    assert_eq!(
        ok("Kubelet_Secure_Port = 1234").kubelet_port(),
        KubeletPort::Secure(1234)
    );
}

#[test]
fn durations() {
    assert_eq!(
        first_error("poll_retry_interval = \"abc\""),
        "unable to parse poll retry interval: time: invalid duration \"abc\""
    );
    assert_eq!(
        first_error("reload_interval = \"1\""),
        "unable to parse reload interval: time: missing unit in duration \"1\""
    );
    assert_eq!(
        first_error("reload_interval = \"5x\""),
        "unable to parse reload interval: time: unknown unit \"x\" in duration \"5x\""
    );
    // ≤ 0 (and empty) mean the defaults.
    let c = ok("poll_retry_interval = \"-1s\"\nreload_interval = \"0\"");
    assert_eq!(c.poll_retry_interval(), Duration::from_millis(500));
    assert_eq!(c.reload_interval(), Duration::from_secs(60));
    let c = ok("poll_retry_interval = \"\"\nreload_interval = \"\"");
    assert_eq!(c.poll_retry_interval(), Duration::from_millis(500));
    assert_eq!(
        ok("poll_retry_interval = \"250ms\"").poll_retry_interval(),
        Duration::from_millis(250)
    );
    assert_eq!(
        ok("reload_interval = \"1m\"").reload_interval(),
        Duration::from_secs(60)
    );
}

#[test]
fn max_poll_attempts() {
    assert_eq!(ok("max_poll_attempts = 0").max_poll_attempts(), 60);
    assert_eq!(ok("max_poll_attempts = -3").max_poll_attempts(), 60);
    assert_eq!(ok("max_poll_attempts = 7").max_poll_attempts(), 7);
}

#[test]
fn node_name_resolution() {
    let env = |k: &str| match k {
        "MY_NODE_NAME" => Some("from-default-env".to_string()),
        "CUSTOM" => Some("from-custom-env".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    assert_eq!(ok("").node_name(env), "from-default-env");
    assert_eq!(
        ok("node_name_env = \"CUSTOM\"").node_name(env),
        "from-custom-env"
    );
    // The named variable's value wins even when empty: no fallback to MY_NODE_NAME.
    assert_eq!(ok("node_name_env = \"EMPTY\"").node_name(env), "");
    assert_eq!(
        ok("node_name_env = \"EMPTY\"").kubelet_host(env),
        "127.0.0.1"
    );
    assert_eq!(ok("node_name_env = \"UNSET\"").node_name(env), "");
    // An empty node_name_env means the default variable.
    assert_eq!(
        ok("node_name_env = \"\"").node_name(env),
        "from-default-env"
    );
    // node_name overrides the environment.
    assert_eq!(
        ok("node_name = \"n1\"\nnode_name_env = \"CUSTOM\"").node_name(env),
        "n1"
    );
    assert_eq!(ok("node_name = \"n1\"").kubelet_host(env), "n1");
    assert_eq!(ok("").kubelet_host(env), "from-default-env");
}

#[test]
fn auth_precedence() {
    let c = ok(
        "use_anonymous_authentication = true\ncertificate_path = \"/c\"\nprivate_key_path = \"/k\"",
    );
    assert_eq!(c.kubelet_auth(), Ok(KubeletAuth::Anonymous));
    let c = ok("token_path = \"/t\"");
    assert_eq!(c.kubelet_auth(), Ok(KubeletAuth::Token("/t".into())));
    let c = ok("certificate_path = \"/c\"");
    assert_eq!(
        c.kubelet_auth().unwrap_err().message,
        "the private key path is required with the certificate path"
    );
    let c = ok("private_key_path = \"/k\"");
    let err = c.kubelet_auth().unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(
        err.message,
        "the certificate path is required with the private key path"
    );
}

#[test]
fn unsupported_keys_are_refused() {
    assert_eq!(
        first_error("sigstore {\n  rekor_url = \"https://rekor\"\n}"),
        "sigstore is not supported yet: image signature verification is not implemented; remove the sigstore block"
    );
    assert!(
        first_error("use_new_container_locator = false")
            .starts_with("use_new_container_locator = false is not supported yet: ")
    );
    // SPIRE's errors come before our refusals.
    assert_eq!(
        all_errors("sigstore {}\nuse_new_container_locator = false\nbogus = 1"),
        [
            "unknown configurations detected: bogus",
            "sigstore is not supported yet: image signature verification is not implemented; remove the sigstore block",
            "use_new_container_locator = false is not supported yet: the legacy container locator is not implemented (SPIRE deprecates it); remove the key or set it to true",
        ]
    );
}

#[test]
fn api_server_features_are_accepted() {
    let c = ok("enable_namespace_labels = true");
    assert!(c.enable_namespace_labels());
    assert!(!c.disable_kubelet_client());
    assert_eq!(c.broker(), None);
    let c = ok("disable_kubelet_client = true");
    assert!(c.disable_kubelet_client());
    assert!(!c.enable_namespace_labels());
    let c = ok("enable_namespace_labels = false\ndisable_kubelet_client = false");
    assert_eq!(c, Config::default());
}

// SPIRE k8s_test.go TestConfigure "disable kubelet client with kubelet config", and every
// key of validateDisableKubeletClientConfig's list, in its order.
#[test]
fn disable_kubelet_client_conflicts() {
    assert_eq!(
        first_error("disable_kubelet_client = true\nkubelet_secure_port = 12345"),
        "disable_kubelet_client cannot be used with kubelet_secure_port"
    );
    assert_eq!(
        all_errors(
            r#"disable_kubelet_client = true
               reload_interval = "1m"
               node_name = "n"
               node_name_env = "E"
               use_anonymous_authentication = true
               private_key_path = "/k"
               certificate_path = "/c"
               token_path = "/t"
               skip_kubelet_verification = true
               kubelet_ca_path = "/ca"
               kubelet_secure_port = 1
               kubelet_read_only_port = 2"#
        ),
        [
            "disable_kubelet_client cannot be used with kubelet_read_only_port",
            "disable_kubelet_client cannot be used with kubelet_secure_port",
            "disable_kubelet_client cannot be used with kubelet_ca_path",
            "disable_kubelet_client cannot be used with skip_kubelet_verification",
            "disable_kubelet_client cannot be used with token_path",
            "disable_kubelet_client cannot be used with certificate_path",
            "disable_kubelet_client cannot be used with private_key_path",
            "disable_kubelet_client cannot be used with use_anonymous_authentication",
            "disable_kubelet_client cannot be used with node_name_env",
            "disable_kubelet_client cannot be used with node_name",
            "disable_kubelet_client cannot be used with reload_interval",
            "cannot use both the read-only and secure port",
        ]
    );
    // Set means > 0 / non-empty / true, as SPIRE tests it.
    let c = ok(r#"disable_kubelet_client = true
                  kubelet_read_only_port = 0
                  kubelet_secure_port = -1
                  kubelet_ca_path = ""
                  skip_kubelet_verification = false
                  token_path = ""
                  use_anonymous_authentication = false
                  node_name_env = ""
                  reload_interval = """#);
    assert!(c.disable_kubelet_client());
    // Not a conflict without disable_kubelet_client.
    ok("disable_kubelet_client = false\nkubelet_secure_port = 12345");
}

// SPIRE k8s_test.go testBrokerConfigWithAccessPolicy.
fn broker_block(access_policy: &str, scope: Option<&str>) -> String {
    let scope = scope
        .map(|s| format!("\n            pod_reference_scope = \"{s}\""))
        .unwrap_or_default();
    format!(
        r#"
    experimental {{
      broker {{
        access_policy = "{access_policy}"
        brokers = [
          {{
            id = "spiffe://example.org/broker"{scope}
          }}
        ]
      }}
    }}
"#
    )
}

fn broker_of(text: &str) -> BrokerConfig {
    ok(text).broker().cloned().expect("a broker block")
}

fn entry(id: &str, scope: PodReferenceScope) -> BrokerEntry {
    BrokerEntry {
        id: id.to_string(),
        pod_reference_scope: scope,
    }
}

// SPIRE k8s_test.go TestConfigureBroker, all 13 cases (first error = SPIRE's message).
#[test]
fn spire_configure_broker_cases() {
    let ro = "kubelet_read_only_port = 12345\n";
    // valid broker
    let b = broker_of(&format!("{ro}{}", broker_block("permissive", None)));
    assert_eq!(b.access_policy, AccessPolicy::Permissive);
    assert_eq!(
        b.brokers,
        [entry(
            "spiffe://example.org/broker",
            PodReferenceScope::AgentNode
        )]
    );
    // valid broker with kubelet client disabled
    let c = ok(&format!(
        "disable_kubelet_client = true\n{}",
        broker_block("permissive", Some("cluster"))
    ));
    assert!(c.disable_kubelet_client());
    assert_eq!(
        c.broker().unwrap().brokers,
        [entry(
            "spiffe://example.org/broker",
            PodReferenceScope::Cluster
        )]
    );
    // disable kubelet client requires cluster pod reference scope
    assert_eq!(
        first_error(&format!(
            "disable_kubelet_client = true\n{}",
            broker_block("permissive", None)
        )),
        r#"experimental.broker.brokers[spiffe://example.org/broker].pod_reference_scope must be "cluster" when disable_kubelet_client is true"#
    );
    // top-level broker is rejected
    assert_eq!(
        first_error(&format!(
            r#"{ro}broker {{
                 access_policy = "permissive"
                 brokers = [
                   {{ id = "spiffe://example.org/broker" }}
                 ]
               }}"#
        )),
        "unknown configurations detected: broker"
    );
    // valid pod reference scope
    let b = broker_of(&format!(
        "{ro}{}",
        broker_block("permissive", Some("cluster"))
    ));
    assert_eq!(b.brokers[0].pod_reference_scope, PodReferenceScope::Cluster);
    // valid enforced access policy
    let b = broker_of(&format!("{ro}{}", broker_block("enforced", None)));
    assert_eq!(b.access_policy, AccessPolicy::Enforced);
    let brokers = |body: &str| format!("{ro}experimental {{\n  broker {{\n{body}\n  }}\n}}\n");
    for (name, body, want) in [
        (
            "missing access policy",
            r#"brokers = [ { id = "spiffe://example.org/broker" } ]"#,
            "experimental.broker.access_policy: must be specified as one of [permissive, enforced]",
        ),
        (
            "invalid access policy",
            r#"access_policy = "disabled"
               brokers = [ { id = "spiffe://example.org/broker" } ]"#,
            r#"experimental.broker.access_policy: unsupported value "disabled"; must be one of [permissive, enforced]"#,
        ),
        (
            "empty brokers",
            r#"access_policy = "permissive"
               brokers = []"#,
            "experimental.broker.brokers: at least one broker is required",
        ),
        (
            "missing id",
            r#"access_policy = "permissive"
               brokers = [
                 {}
               ]"#,
            "experimental.broker.brokers[0].id: must be specified",
        ),
        (
            "duplicate id",
            r#"access_policy = "permissive"
               brokers = [
                 { id = "spiffe://example.org/broker" },
                 { id = "spiffe://example.org/broker" },
               ]"#,
            "experimental.broker.brokers[spiffe://example.org/broker].id: duplicate broker id",
        ),
        (
            // SPIRE checks the prefix; go-spiffe's text follows.
            "invalid id",
            r#"access_policy = "permissive"
               brokers = [
                 { id = "not-a-spiffe-id" }
               ]"#,
            "experimental.broker.brokers[not-a-spiffe-id].id: scheme is missing or invalid",
        ),
        (
            "invalid pod reference scope",
            r#"access_policy = "permissive"
               brokers = [
                 {
                   id = "spiffe://example.org/broker"
                   pod_reference_scope = "Cluster"
                 }
               ]"#,
            r#"experimental.broker.brokers[spiffe://example.org/broker].pod_reference_scope: unsupported value "Cluster"; must be one of [agent_node, cluster]"#,
        ),
    ] {
        assert_eq!(first_error(&brokers(body)), want, "{name}");
    }
}

#[test]
fn broker_forms_hcl_blocks_and_json() {
    let want = BrokerConfig {
        access_policy: AccessPolicy::Enforced,
        brokers: vec![
            entry("spiffe://example.org/a", PodReferenceScope::AgentNode),
            entry("spiffe://example.org/b", PodReferenceScope::Cluster),
        ],
    };
    for text in [
        // List of objects.
        r#"experimental { broker {
             access_policy = "enforced"
             brokers = [{ id = "spiffe://example.org/a" }, { id = "spiffe://example.org/b", pod_reference_scope = "cluster" }]
           } }"#,
        // Repeated blocks.
        r#"experimental {
             broker {
               access_policy = "enforced"
               brokers {
                 id = "spiffe://example.org/a"
                 pod_reference_scope = ""
               }
               brokers {
                 id = "spiffe://example.org/b"
                 pod_reference_scope = "cluster"
               }
             }
           }"#,
        // What the agent prints for a JSON agent config.
        r#""experimental" = {
             "broker" = {
               "access_policy" = "enforced"
               "brokers" = [{ "id" = "spiffe://example.org/a" }, { "id" = "spiffe://example.org/b", "pod_reference_scope" = "cluster" }]
             }
           }"#,
        // JSON, and JSON's block form (a list of objects at each level).
        r#"{"experimental": {"broker": {"access_policy": "enforced", "brokers": [
             {"id": "spiffe://example.org/a"},
             {"id": "spiffe://example.org/b", "pod_reference_scope": "cluster"}]}}}"#,
        r#"{"experimental": [{"broker": [{"access_policy": "enforced", "brokers": [
             {"id": "spiffe://example.org/a", "pod_reference_scope": null},
             {"id": "spiffe://example.org/b", "pod_reference_scope": "cluster"}]}]}]}"#,
        // HCL v1 matches keys case-insensitively.
        r#"Experimental { BROKER {
             Access_Policy = "enforced"
             Brokers = [{ ID = "spiffe://example.org/a" }, { Id = "spiffe://example.org/b", POD_REFERENCE_SCOPE = "cluster" }]
           } }"#,
    ] {
        assert_eq!(broker_of(text), want, "{text}");
    }
    let b = broker_of(&broker_block("permissive", None));
    assert_eq!(
        b.entry("spiffe://example.org/broker")
            .map(|e| e.pod_reference_scope),
        Some(PodReferenceScope::AgentNode)
    );
    assert_eq!(b.entry("spiffe://example.org/other"), None);
    assert_eq!(b.access_policy.as_str(), "permissive");
    assert_eq!(PodReferenceScope::Cluster.as_str(), "cluster");
    assert_eq!(PodReferenceScope::AgentNode.as_str(), "agent_node");
    assert_eq!(AccessPolicy::Enforced.as_str(), "enforced");
    // Values are case-sensitive (only keys are not).
    assert_eq!(
        first_error(&broker_block("Enforced", None)),
        r#"experimental.broker.access_policy: unsupported value "Enforced"; must be one of [permissive, enforced]"#
    );
    // JSON null broker = absent.
    assert_eq!(ok(r#"{"experimental": {"broker": null}}"#).broker(), None);
}

#[test]
fn broker_edge_cases() {
    // An empty block, and no brokers key at all.
    assert_eq!(
        all_errors("experimental { broker {} }"),
        [
            "experimental.broker.access_policy: must be specified as one of [permissive, enforced]",
            "experimental.broker.brokers: at least one broker is required",
        ]
    );
    // Every entry is checked; the index counts across the whole list; ids are not parsed
    // before the duplicate check; invalid entries do not count for disable_kubelet_client.
    assert_eq!(
        all_errors(
            r#"disable_kubelet_client = true
               experimental { broker {
                 access_policy = "permissive"
                 brokers = [
                   { id = "spiffe://td/ok" },
                   { pod_reference_scope = "cluster" },
                   { id = "spiffe://td/" },
                   { id = "spiffe://td/" },
                   { id = "spiffe://td/ok" },
                   { id = "spiffe://td/x", pod_reference_scope = "node" },
                   { id = "spiffe://td/c", pod_reference_scope = "cluster" },
                   { id = "spiffe://td/n", pod_reference_scope = "agent_node" },
                 ]
               } }"#
        ),
        [
            "experimental.broker.brokers[1].id: must be specified",
            "experimental.broker.brokers[spiffe://td/].id: path cannot have a trailing slash",
            "experimental.broker.brokers[spiffe://td/].id: duplicate broker id",
            "experimental.broker.brokers[spiffe://td/ok].id: duplicate broker id",
            r#"experimental.broker.brokers[spiffe://td/x].pod_reference_scope: unsupported value "node"; must be one of [agent_node, cluster]"#,
            r#"experimental.broker.brokers[spiffe://td/ok].pod_reference_scope must be "cluster" when disable_kubelet_client is true"#,
            r#"experimental.broker.brokers[spiffe://td/n].pod_reference_scope must be "cluster" when disable_kubelet_client is true"#,
        ]
    );
    // go-spiffe's texts for IDs.
    for (id, reason) in [
        (
            "spiffe://Example.org/b",
            "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores",
        ),
        ("spiffe:///b", "trust domain is missing"),
        ("spiffe://td/a//b", "path cannot contain empty segments"),
        ("spiffe://td/a/../b", "path cannot contain dot segments"),
        (
            "spiffe://td/a b",
            "path segment characters are limited to letters, numbers, dots, dashes, and underscores",
        ),
    ] {
        assert_eq!(
            first_error(&format!(
                "experimental {{ broker {{\naccess_policy = \"enforced\"\nbrokers {{ id = \"{id}\" }}\n}} }}"
            )),
            format!("experimental.broker.brokers[{id}].id: {reason}")
        );
    }
    // A trust domain alone is a valid ID.
    assert_eq!(
        broker_of(&broker_block("permissive", None).replace("/broker", "")).brokers[0].id,
        "spiffe://example.org"
    );
    // Wrong shapes are decode errors.
    assert_eq!(
        first_error("experimental { broker { brokers = [\"spiffe://td/a\"] } }"),
        "unable to decode configuration: brokers: expected an object, got string \"spiffe://td/a\""
    );
    assert_eq!(
        first_error("experimental { broker { brokers = [{ id = [1] }] } }"),
        "unable to decode configuration: id: expected a string, got list"
    );
}

#[test]
fn broker_errors_in_buildconfig_order() {
    // unknown (top, experimental, api_server, cache, broker, entry) → broker rules →
    // disable_kubelet_client → intervals → ports → ours.
    assert_eq!(
        all_errors(
            r#"top = 1
               disable_kubelet_client = true
               node_name = "n"
               poll_retry_interval = "p"
               reload_interval = "r"
               kubelet_read_only_port = 1
               kubelet_secure_port = 2
               tracker = "t"
               sigstore {}
               experimental {
                 e = 1
                 api_server { a = 1
                   cache { c = 1 } }
                 broker {
                   bk = 1
                   access_policy = "bad"
                   brokers = [{ id = "spiffe://td/a", en = 1 }]
                 }
               }"#
        ),
        [
            "unknown configurations detected: top",
            "unknown configurations detected: e",
            "unknown configurations detected: a",
            "unknown configurations detected: c",
            "unknown configurations detected: bk",
            r#"experimental.broker.access_policy: unsupported value "bad"; must be one of [permissive, enforced]"#,
            "unknown configurations detected: en",
            "disable_kubelet_client cannot be used with kubelet_read_only_port",
            "disable_kubelet_client cannot be used with kubelet_secure_port",
            "disable_kubelet_client cannot be used with node_name",
            "disable_kubelet_client cannot be used with reload_interval",
            r#"experimental.broker.brokers[spiffe://td/a].pod_reference_scope must be "cluster" when disable_kubelet_client is true"#,
            "unable to parse poll retry interval: time: invalid duration \"p\"",
            "unable to parse reload interval: time: invalid duration \"r\"",
            "cannot use both the read-only and secure port",
            "sigstore is not supported yet: image signature verification is not implemented; remove the sigstore block",
            "tracker must be \"auto\", \"ebpf\" or \"procfs\", got \"t\"",
        ]
    );
}

#[test]
fn tracker_keys() {
    assert_eq!(ok("tracker = \"ebpf\"").tracker(), TrackerMode::Ebpf);
    assert_eq!(ok("tracker = \"auto\"").tracker(), TrackerMode::Auto);
    assert_eq!(
        first_error("tracker = \"bpf\""),
        "tracker must be \"auto\", \"ebpf\" or \"procfs\", got \"bpf\""
    );
    assert_eq!(
        ok("tracker_max_processes = 4194304").tracker_max_processes(),
        4_194_304
    );
    assert_eq!(
        first_error("tracker_max_processes = 1023"),
        "tracker_max_processes must be between 1024 and 4194304, got 1023"
    );
    assert_eq!(
        first_error("tracker_max_processes = 4194305"),
        "tracker_max_processes must be between 1024 and 4194304, got 4194305"
    );
}

#[test]
fn container_runtime_endpoint() {
    // Unset (or empty): SPIRE's behaviour, no runtime is asked.
    assert_eq!(ok("").container_runtime_endpoint(), None);
    assert_eq!(
        ok("container_runtime_endpoint = \"\"").container_runtime_endpoint(),
        None
    );
    // The kubelet's URL form, and the bare path the kubelet still accepts.
    for (text, path) in [
        (
            "unix:///run/containerd/containerd.sock",
            "/run/containerd/containerd.sock",
        ),
        ("/var/run/crio/crio.sock", "/var/run/crio/crio.sock"),
    ] {
        let c = ok(&format!("container_runtime_endpoint = \"{text}\""));
        assert_eq!(
            c.container_runtime_endpoint(),
            Some(Path::new(path)),
            "{text}"
        );
    }
    for (text, reason) in [
        (
            "unix://run/containerd/containerd.sock",
            "must be unix:///<absolute path> (three slashes), got \"unix://run/containerd/containerd.sock\"",
        ),
        (
            "tcp://127.0.0.1:1234",
            "must be a unix socket (unix:///run/containerd/containerd.sock), got the \"tcp\" scheme in \"tcp://127.0.0.1:1234\"",
        ),
        (
            "run/containerd/containerd.sock",
            "must be unix:///<absolute path> or an absolute path, got \"run/containerd/containerd.sock\"",
        ),
        (
            "unix:///run/x.sock?timeout=1s",
            "must be a plain socket path without query, fragment or control characters, got \"unix:///run/x.sock?timeout=1s\"",
        ),
    ] {
        assert_eq!(
            first_error(&format!("container_runtime_endpoint = \"{text}\"")),
            format!("container_runtime_endpoint {reason}"),
            "{text}"
        );
    }
    let long = format!("/{}", "a".repeat(120));
    assert_eq!(
        first_error(&format!("container_runtime_endpoint = \"{long}\"")),
        "container_runtime_endpoint names a socket path of 121 bytes; unix sockets allow at most 107"
    );
    assert_eq!(
        first_error("container_runtime_endpoint = [1]"),
        "unable to decode configuration: container_runtime_endpoint: expected a string, got list"
    );
}

#[test]
fn type_errors_name_the_key() {
    assert_eq!(
        first_error("kubelet_secure_port = \"abc\""),
        "unable to decode configuration: kubelet_secure_port: expected an integer, got string \"abc\""
    );
    assert_eq!(
        first_error("skip_kubelet_verification = \"yes\""),
        "unable to decode configuration: skip_kubelet_verification: expected true or false, got string \"yes\""
    );
    assert_eq!(
        first_error("max_poll_attempts = 1.5"),
        "unable to decode configuration: max_poll_attempts: expected an integer, got number 1.5"
    );
    assert_eq!(
        first_error("token_path = [\"a\"]"),
        "unable to decode configuration: token_path: expected a string, got list"
    );
    assert_eq!(
        first_error("experimental = 1"),
        "unable to decode configuration: experimental: expected an object, got number 1"
    );
    assert!(
        first_error("a = ").starts_with("unable to decode configuration: 1:5: expected a value")
    );
}

#[test]
fn errors_are_all_collected_in_order() {
    assert_eq!(
        all_errors(
            "bogus = 1\nkubelet_read_only_port = 1\nkubelet_secure_port = 2\npoll_retry_interval = \"x\"\nreload_interval = \"y\"\ntracker = \"z\""
        ),
        // SPIRE's buildConfig order: the intervals before the ports.
        [
            "unknown configurations detected: bogus",
            "unable to parse poll retry interval: time: invalid duration \"x\"",
            "unable to parse reload interval: time: invalid duration \"y\"",
            "cannot use both the read-only and secure port",
            "tracker must be \"auto\", \"ebpf\" or \"procfs\", got \"z\"",
        ]
    );
}

#[test]
fn json_null_means_unset() {
    let c = ok(r#"{"kubelet_secure_port": null, "node_name": null, "experimental": null}"#);
    assert_eq!(c, Config::default());
}

#[test]
fn empty_strings_mean_defaults_or_unset() {
    let c = ok(
        "kubelet_ca_path = \"\"\ntoken_path = \"\"\ncertificate_path = \"\"\nprivate_key_path = \"\"\nnode_name = \"\"",
    );
    assert_eq!(c, Config::default());
}

#[test]
fn repeated_keys_last_one_wins() {
    assert_eq!(
        ok("kubelet_secure_port = 1\nkubelet_secure_port = 2").kubelet_port(),
        KubeletPort::Secure(2)
    );
}
