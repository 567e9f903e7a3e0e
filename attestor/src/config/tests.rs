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
fn unknown_keys_are_sorted_and_nested_ones_count() {
    assert_eq!(
        first_error("zeta = 1\nalpha = \"x\"\nkubelet_secure_port = 1"),
        "unknown configurations detected: alpha,zeta"
    );
    assert_eq!(
        first_error("experimental { foo = 1\n api_server { bar = 2\n cache { baz = true } } }"),
        "unknown configurations detected: bar,baz,foo"
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
    assert_eq!(
        first_error("experimental {\n broker {\n access_policy = \"permissive\"\n }\n}"),
        "experimental.broker is not supported yet: the SPIRE Broker API is not implemented; remove the broker block"
    );
    assert!(
        first_error("enable_namespace_labels = true")
            .starts_with("enable_namespace_labels is not supported yet: ")
    );
    assert!(ok("enable_namespace_labels = false").kubelet_port() == KubeletPort::Secure(10250));
    assert!(
        first_error("use_new_container_locator = false")
            .starts_with("use_new_container_locator = false is not supported yet: ")
    );
    assert!(
        first_error("disable_kubelet_client = true")
            .starts_with("disable_kubelet_client is not supported yet: ")
    );
    ok("disable_kubelet_client = false");
}

#[test]
fn disable_kubelet_client_exclusivity_messages_come_first() {
    assert_eq!(
        all_errors(
            "disable_kubelet_client = true\nkubelet_secure_port = 10250\nnode_name = \"n\"\nreload_interval = \"1m\""
        ),
        [
            "disable_kubelet_client cannot be used with kubelet_secure_port",
            "disable_kubelet_client cannot be used with node_name",
            "disable_kubelet_client cannot be used with reload_interval",
            "disable_kubelet_client is not supported yet: this attestor always reads pods from the kubelet; remove the key or set it to false",
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
        [
            "unknown configurations detected: bogus",
            "cannot use both the read-only and secure port",
            "unable to parse poll retry interval: time: invalid duration \"x\"",
            "unable to parse reload interval: time: invalid duration \"y\"",
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
