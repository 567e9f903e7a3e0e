//! The `attestor` binary's entry into plugin mode (the services themselves are tested
//! through go-plugin in tests/tests/plugin.rs).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_attestor");

#[test]
fn without_cookie_or_subcommand_it_says_it_is_a_spire_plugin() {
    let out = Command::new(BIN)
        .env_remove("WorkloadAttestor")
        .output()
        .expect("run attestor");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("This binary is a plugin: the SPIRE agent's WorkloadAttestor \"k8s\""),
        "{err}"
    );
    assert!(
        err.contains("plugin_cmd = \"/opt/spire/plugins/attestor\""),
        "{err}"
    );
    assert!(err.contains("plugin_checksum"), "{err}");
}

#[test]
fn with_the_cookie_it_enters_plugin_mode_whatever_the_arguments() {
    let dir = std::env::temp_dir().join(format!("attestor-pm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    // `plugin_args` from the agent config must not be parsed as subcommands.
    let mut child = Command::new(BIN)
        .args(["resolve", "--bogus"])
        .env("WorkloadAttestor", "WorkloadAttestor")
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_UNIX_SOCKET_DIR", &dir)
        .env_remove("PLUGIN_CLIENT_CERT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn attestor");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("handshake line");
    let socket = line
        .strip_prefix("1|1|unix|")
        .and_then(|rest| rest.strip_suffix("|grpc|\n"))
        .unwrap_or_else(|| panic!("handshake line {line:?}"))
        .to_string();
    assert!(socket.starts_with(dir.to_str().expect("utf8")), "{socket}");
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    assert!(!std::path::Path::new(&socket).exists());
    std::fs::remove_dir(&dir).expect("rmdir");
}

/// go-plugin AutoMTLS (`PLUGIN_CLIENT_CERT`), which SPIRE never enables, is refused before
/// anything is built, bound or printed: no plaintext server for a host that asked for TLS.
#[test]
fn a_host_asking_for_automtls_is_refused_before_the_handshake() {
    let dir = std::env::temp_dir().join(format!("attestor-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = Command::new(BIN)
        .env("WorkloadAttestor", "WorkloadAttestor")
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_UNIX_SOCKET_DIR", &dir)
        .env("PLUGIN_CLIENT_CERT", "-----BEGIN CERTIFICATE-----\n")
        .output()
        .expect("run attestor");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no handshake line");
    let err = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = serde_json::from_str(err.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("hclog JSON on stderr ({e}): {err}"));
    assert_eq!(line["@level"], "error", "{line}");
    assert_eq!(
        line["@message"],
        attestor::plugin::handshake::AUTO_MTLS_REFUSED,
        "{line}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).expect("socket dir").count(),
        0,
        "nothing bound"
    );
    std::fs::remove_dir(&dir).expect("rmdir");
}
