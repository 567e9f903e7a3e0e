//! [`ApiSettings`]: where the API server is and how to trust and authenticate to it, found
//! the way controller-runtime's `ctrl.GetConfig()` finds it (SPIRE's k8s attestor calls it),
//! without the `--kubeconfig` flag: `KUBECONFIG`, else in-cluster, else
//! `$HOME/.kube/config`.
//!
//! Only paths and inline bytes are kept here; files are read by the transport (token every
//! minute, TLS material when it changes). Inline secrets never appear in `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::error::ApiError;
use crate::boundedfile;

/// The service account directory every pod gets (client-go `rest.InClusterConfig`).
pub const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A kubeconfig is a few KiB, or a few hundred KiB with many inline CAs and contexts.
pub(super) const KUBECONFIG_FILE: boundedfile::Kind = boundedfile::Kind {
    what: "a kubeconfig file",
    max_bytes: 4 << 20,
};

/// Bytes that come from a file (read again when it changes) or inline from a kubeconfig.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Material {
    File(PathBuf),
    Inline(Vec<u8>),
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Material::File(p) => write!(f, "File({})", p.display()),
            // Inline data may be a private key: only its size is shown.
            Material::Inline(b) => write!(f, "Inline(<{} bytes>)", b.len()),
        }
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Trust {
    /// `certificate-authority(-data)`, or the service account's `ca.crt`.
    Ca(Material),
    /// No CA given: the system bundle (client-go uses the system roots).
    System,
    /// `insecure-skip-tls-verify: true`.
    Insecure,
}

/// The bearer token.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum TokenSource {
    /// `token:` in a kubeconfig.
    Inline(String),
    /// `tokenFile:`, or the service account token: re-read every minute.
    File(PathBuf),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// Where and how to reach the API server. `Debug` shows paths, never token or key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// `https://host:port`, no trailing slash.
    pub(super) server: String,
    pub(super) trust: Trust,
    /// `tls-server-name`: the name the certificate must carry, instead of the URL's host.
    pub(super) tls_server_name: Option<String>,
    pub(super) token: Option<TokenSource>,
    /// (certificate chain, private key).
    pub(super) client_cert: Option<(Material, Material)>,
    /// "in-cluster configuration" or "kubeconfig PATH", for log lines.
    pub(super) origin: String,
}

impl ApiSettings {
    /// `ctrl.GetConfig()` order: `KUBECONFIG` (its first path), then in-cluster (the
    /// `KUBERNETES_SERVICE_*` variables and [`SERVICEACCOUNT_DIR`]), then
    /// `$HOME/.kube/config`. `env` is the process environment (a closure, for tests).
    pub fn from_environment(env: &dyn Fn(&str) -> Option<String>) -> Result<ApiSettings, ApiError> {
        if let Some(list) = env("KUBECONFIG").filter(|v| !v.is_empty()) {
            // client-go merges every file of the list; one file is what deployments use,
            // and the first one is where client-go takes the current context from.
            let Some(first) = list.split(':').find(|p| !p.is_empty()) else {
                return Err(ApiError::Kubeconfig {
                    path: PathBuf::from(list),
                    reason: "KUBECONFIG names no file".into(),
                });
            };
            return ApiSettings::from_kubeconfig(Path::new(first));
        }
        let in_cluster = match ApiSettings::in_cluster(env, Path::new(SERVICEACCOUNT_DIR)) {
            Ok(settings) => return Ok(settings),
            Err(e) => e,
        };
        let home_config = PathBuf::from(env("HOME").unwrap_or_default()).join(".kube/config");
        if home_config.exists() {
            return ApiSettings::from_kubeconfig(&home_config);
        }
        Err(ApiError::NoConfiguration {
            in_cluster: Box::new(in_cluster),
            home_config,
        })
    }

    /// client-go `rest.InClusterConfig`: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
    /// the token and `ca.crt` of `serviceaccount_dir`. The token is read now (an error if
    /// missing, as client-go) and again every minute.
    pub fn in_cluster(
        env: &dyn Fn(&str) -> Option<String>,
        serviceaccount_dir: &Path,
    ) -> Result<ApiSettings, ApiError> {
        let host = env("KUBERNETES_SERVICE_HOST").filter(|v| !v.is_empty());
        let port = env("KUBERNETES_SERVICE_PORT").filter(|v| !v.is_empty());
        let (Some(host), Some(port)) = (host, port) else {
            return Err(ApiError::NotInCluster);
        };
        let token_path = serviceaccount_dir.join("token");
        read_token(&token_path)?;
        let server = format!("https://{}", join_host_port(&host, &port));
        Ok(ApiSettings {
            server,
            trust: Trust::Ca(Material::File(serviceaccount_dir.join("ca.crt"))),
            tls_server_name: None,
            token: Some(TokenSource::File(token_path)),
            client_cert: None,
            origin: "in-cluster configuration".into(),
        })
    }

    /// A kubeconfig file (YAML or JSON): its `current-context`'s cluster and user.
    /// Relative paths in it are relative to the file, as in client-go.
    pub fn from_kubeconfig(path: &Path) -> Result<ApiSettings, ApiError> {
        let bytes = boundedfile::read(path, KUBECONFIG_FILE)
            .map_err(|e| ApiError::read_file("kubeconfig", path, e))?;
        parse_kubeconfig(path, &bytes)
    }

    /// The API server URL, e.g. `https://10.96.0.1:443`.
    pub fn server(&self) -> &str {
        &self.server
    }
}

/// Reads and checks a token file: trimmed, non-empty, usable in a header.
pub(super) fn read_token(path: &Path) -> Result<String, ApiError> {
    let bytes = boundedfile::read(path, boundedfile::CREDENTIAL)
        .map_err(|e| ApiError::read_file("token file", path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| ApiError::InvalidToken {
        path: path.to_owned(),
        problem: "is not UTF-8",
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ApiError::InvalidToken {
            path: path.to_owned(),
            problem: "is empty",
        });
    }
    if http::HeaderValue::from_str(token).is_err() {
        return Err(ApiError::InvalidToken {
            path: path.to_owned(),
            problem: "holds characters not allowed in an HTTP header",
        });
    }
    Ok(token.to_owned())
}

/// Go's `net.JoinHostPort`: brackets around an IPv6 host.
fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Deserialize)]
struct KubeConfig {
    #[serde(rename = "current-context", default)]
    current_context: String,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    #[serde(default)]
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
    proxy_url: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(rename = "client-certificate")]
    client_certificate: Option<String>,
    #[serde(rename = "client-certificate-data")]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key")]
    client_key: Option<String>,
    #[serde(rename = "client-key-data")]
    client_key_data: Option<String>,
    // Present only to be refused by name.
    exec: Option<IgnoredAny>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<IgnoredAny>,
    username: Option<IgnoredAny>,
    password: Option<IgnoredAny>,
    #[serde(rename = "as")]
    impersonate: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

fn parse_kubeconfig(path: &Path, bytes: &[u8]) -> Result<ApiSettings, ApiError> {
    let invalid = |reason: String| ApiError::Kubeconfig {
        path: path.to_owned(),
        reason,
    };
    let unsupported = |field: &str| ApiError::Unsupported {
        path: path.to_owned(),
        field: field.to_owned(),
    };
    let config: KubeConfig = serde_norway::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if config.current_context.is_empty() {
        return Err(invalid(
            "current-context is not set; set it with `kubectl config use-context`".into(),
        ));
    }
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == config.current_context)
        .ok_or_else(|| invalid(format!("context {:?} not found", config.current_context)))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.context.cluster)
        .map(|c| &c.cluster)
        .ok_or_else(|| invalid(format!("cluster {:?} not found", context.context.cluster)))?;
    // client-go treats a context without a (known) user as anonymous.
    let default_user = User::default();
    let user = config
        .users
        .iter()
        .find(|u| u.name == context.context.user)
        .map_or(&default_user, |u| &u.user);

    if cluster.server.is_empty() {
        return Err(invalid(format!(
            "cluster {:?} has no server",
            context.context.cluster
        )));
    }
    if cluster.proxy_url.is_some() {
        return Err(unsupported("clusters[].cluster.proxy-url"));
    }
    let refused = [
        (user.exec.is_some(), "users[].user.exec"),
        (user.auth_provider.is_some(), "users[].user.auth-provider"),
        (user.username.is_some(), "users[].user.username"),
        (user.password.is_some(), "users[].user.password"),
        (user.impersonate.is_some(), "users[].user.as"),
    ];
    if let Some((_, field)) = refused.iter().find(|(present, _)| *present) {
        return Err(unsupported(field));
    }

    let dir = path.parent().unwrap_or(Path::new("."));
    let file = |p: &str| Material::File(dir.join(p));
    let data = |field: &str, b64: &str| -> Result<Material, ApiError> {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(Material::Inline)
            .map_err(|e| invalid(format!("{field} is not valid base64: {e}")))
    };
    // client-go: the `-data` form wins over the file form.
    let pick = |data_field: &str, d: &Option<String>, f: &Option<String>| match (d, f) {
        (Some(d), _) if !d.is_empty() => data(data_field, d).map(Some),
        (_, Some(f)) if !f.is_empty() => Ok(Some(file(f))),
        _ => Ok(None),
    };

    let ca = pick(
        "certificate-authority-data",
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    )?;
    let trust = match (cluster.insecure_skip_tls_verify, ca) {
        // client-go refuses both together ("specifying a root certificates file with the
        // insecure flag is not allowed").
        (true, Some(_)) => {
            return Err(invalid(
                "specifying a root certificates file with the insecure flag is not allowed".into(),
            ));
        }
        (true, None) => Trust::Insecure,
        (false, Some(ca)) => Trust::Ca(ca),
        (false, None) => Trust::System,
    };
    let cert = pick(
        "client-certificate-data",
        &user.client_certificate_data,
        &user.client_certificate,
    )?;
    let key = pick("client-key-data", &user.client_key_data, &user.client_key)?;
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "client-certificate and client-key must be given together".into(),
            ));
        }
    };
    let token = match (&user.token, &user.token_file) {
        (Some(t), _) if !t.is_empty() => Some(TokenSource::Inline(t.clone())),
        (_, Some(f)) if !f.is_empty() => Some(TokenSource::File(dir.join(f))),
        _ => None,
    };
    if let Some(TokenSource::Inline(t)) = &token
        && http::HeaderValue::from_str(t).is_err()
    {
        return Err(invalid(
            "users[].user.token holds characters not allowed in an HTTP header".into(),
        ));
    }
    Ok(ApiSettings {
        server: cluster.server.trim_end_matches('/').to_owned(),
        trust,
        tls_server_name: cluster.tls_server_name.clone().filter(|n| !n.is_empty()),
        token,
        client_cert,
        origin: format!("kubeconfig {}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("attestor-apiserver-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: kind
clusters:
- name: kind
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority: pki/ca.crt
    tls-server-name: kubernetes
- name: other
  cluster:
    server: https://other:6443
    insecure-skip-tls-verify: true
contexts:
- name: kind
  context: {cluster: kind, user: agent}
- name: other
  context: {cluster: other, user: agent}
users:
- name: agent
  user:
    tokenFile: token
    client-certificate-data: Y2VydA==
    client-key: /abs/key.pem
"#;

    #[test]
    fn kubeconfig_current_context_is_resolved() {
        let dir = Dir::new("kc");
        let path = dir.write("config", KUBECONFIG);
        let s = ApiSettings::from_kubeconfig(&path).unwrap();
        assert_eq!(s.server(), "https://127.0.0.1:6443");
        assert_eq!(s.trust, Trust::Ca(Material::File(dir.0.join("pki/ca.crt"))));
        assert_eq!(s.tls_server_name.as_deref(), Some("kubernetes"));
        assert_eq!(s.token, Some(TokenSource::File(dir.0.join("token"))));
        assert_eq!(
            s.client_cert,
            Some((
                Material::Inline(b"cert".to_vec()),
                Material::File("/abs/key.pem".into())
            ))
        );

        let other = KUBECONFIG.replace("current-context: kind", "current-context: other");
        let path = dir.write("other", &other);
        let s = ApiSettings::from_kubeconfig(&path).unwrap();
        assert_eq!(s.trust, Trust::Insecure);
    }

    #[test]
    fn json_kubeconfigs_are_read_too() {
        let dir = Dir::new("json");
        let path = dir.write(
            "config.json",
            r#"{"current-context":"c","clusters":[{"name":"k","cluster":{"server":"https://h:1"}}],
               "contexts":[{"name":"c","context":{"cluster":"k","user":"u"}}],
               "users":[{"name":"u","user":{"token":"secret-token"}}]}"#,
        );
        let s = ApiSettings::from_kubeconfig(&path).unwrap();
        assert_eq!(s.trust, Trust::System);
        assert_eq!(s.token, Some(TokenSource::Inline("secret-token".into())));
        let debug = format!("{s:?}");
        assert!(!debug.contains("secret-token"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn unsupported_auth_is_refused_by_field() {
        let dir = Dir::new("unsupported");
        for (snippet, field) in [
            ("exec: {command: aws}", "users[].user.exec"),
            ("auth-provider: {name: gcp}", "users[].user.auth-provider"),
            ("username: admin", "users[].user.username"),
        ] {
            let text = KUBECONFIG.replace("tokenFile: token", snippet);
            let path = dir.write("config", &text);
            let err = ApiSettings::from_kubeconfig(&path).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "kubeconfig {}: {field} is not supported by the attestor; use a token, tokenFile or client certificate instead",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn broken_kubeconfigs_say_what_is_wrong() {
        let dir = Dir::new("broken");
        let cases = [
            (
                KUBECONFIG.replace("current-context: kind", ""),
                "current-context is not set",
            ),
            (
                KUBECONFIG.replace("current-context: kind", "current-context: nope"),
                "context \"nope\" not found",
            ),
            (
                KUBECONFIG.replace("client-key: /abs/key.pem", ""),
                "client-certificate and client-key must be given together",
            ),
            (
                KUBECONFIG.replace("Y2VydA==", "not*base64"),
                "client-certificate-data is not valid base64",
            ),
            (
                KUBECONFIG.replace(
                    "tls-server-name: kubernetes",
                    "insecure-skip-tls-verify: true",
                ),
                "specifying a root certificates file with the insecure flag is not allowed",
            ),
            ("[not, a, map]".to_owned(), "invalid kubeconfig"),
        ];
        for (text, want) in cases {
            let path = dir.write("config", &text);
            let err = ApiSettings::from_kubeconfig(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
        let err = ApiSettings::from_kubeconfig(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unable to read kubeconfig /dev/zero: not a regular file (a character device)"
        );
    }

    #[test]
    fn in_cluster_follows_client_go() {
        let dir = Dir::new("incluster");
        dir.write("token", "  tok\n");
        let s = ApiSettings::in_cluster(
            &env(&[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
            ]),
            &dir.0,
        )
        .unwrap();
        assert_eq!(s.server(), "https://10.96.0.1:443");
        assert_eq!(s.trust, Trust::Ca(Material::File(dir.0.join("ca.crt"))));
        assert_eq!(s.token, Some(TokenSource::File(dir.0.join("token"))));

        let s = ApiSettings::in_cluster(
            &env(&[
                ("KUBERNETES_SERVICE_HOST", "fd00::1"),
                ("KUBERNETES_SERVICE_PORT", "6443"),
            ]),
            &dir.0,
        )
        .unwrap();
        assert_eq!(s.server(), "https://[fd00::1]:6443");

        let err =
            ApiSettings::in_cluster(&env(&[("KUBERNETES_SERVICE_HOST", "h")]), &dir.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"
        );

        dir.write("token", "\n");
        let err = ApiSettings::in_cluster(
            &env(&[
                ("KUBERNETES_SERVICE_HOST", "h"),
                ("KUBERNETES_SERVICE_PORT", "1"),
            ]),
            &dir.0,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("token file {} is empty", dir.0.join("token").display())
        );
    }

    #[test]
    fn environment_order_is_kubeconfig_in_cluster_home() {
        let dir = Dir::new("order");
        let kc = dir.write("kc", KUBECONFIG);
        let list = format!("{}:/nonexistent/second", kc.display());
        let s = ApiSettings::from_environment(&env(&[
            ("KUBECONFIG", &list),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ]))
        .unwrap();
        assert_eq!(s.server(), "https://127.0.0.1:6443");

        // No KUBECONFIG and not in a cluster: $HOME/.kube/config.
        std::fs::create_dir_all(dir.0.join(".kube")).unwrap();
        dir.write(".kube/config", KUBECONFIG);
        let home = dir.0.display().to_string();
        let s = ApiSettings::from_environment(&env(&[("HOME", &home)])).unwrap();
        assert!(s.origin.ends_with(".kube/config"), "{}", s.origin);

        let err = ApiSettings::from_environment(&env(&[("HOME", "/nonexistent")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no API server configuration: unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined; KUBECONFIG is not set and /nonexistent/.kube/config does not exist"
        );
    }
}
