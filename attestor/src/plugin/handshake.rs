//! go-plugin's start-up contract (spec §1): the magic cookie, the listener, and the one
//! handshake line on stdout.
//!
//! Pure parts (environment, line format) are separate from the I/O (binding) so they can be
//! tested without a host.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The magic cookie: SPIRE sets env `WorkloadAttestor=WorkloadAttestor` (the plugin type).
pub const COOKIE_KEY: &str = "WorkloadAttestor";
pub const COOKIE_VALUE: &str = "WorkloadAttestor";
/// go-plugin's core protocol version.
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// The SPIRE plugin SDK's application protocol version.
pub const APP_PROTOCOL_VERSION: u32 = 1;
/// sun_path is 108 bytes including the NUL.
const SUN_PATH_MAX: usize = 107;

/// What the plugin logs (error level, hclog JSON on stderr, which the host relays) before it
/// exits 1 when the host sets `PLUGIN_CLIENT_CERT`. SPIRE starts external plugins with
/// `AutoMTLS: false` (spiffe/spire `pkg/common/catalog/external.go`, `loadExternal`); a host
/// that asks for TLS gets no server rather than a plaintext one.
pub const AUTO_MTLS_REFUSED: &str = "PLUGIN_CLIENT_CERT is set, so the host asks for go-plugin \
     AutoMTLS: not supported (SPIRE never enables it); exiting without serving, as this plugin \
     never falls back to plaintext";

/// What the host told us through the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEnv {
    /// `PLUGIN_PROTOCOL_VERSIONS`: app versions the host accepts (empty if unset).
    pub protocol_versions: Vec<String>,
    /// `PLUGIN_MIN_PORT`/`PLUGIN_MAX_PORT` (defaults 10000/25000, as go-plugin's).
    pub min_port: u16,
    pub max_port: u16,
    /// `PLUGIN_UNIX_SOCKET_DIR`, else `$TMPDIR`, else `/tmp`.
    pub socket_dir: PathBuf,
    /// `PLUGIN_UNIX_SOCKET_GROUP`: group name or numeric gid for the socket (mode 0660).
    pub socket_group: Option<String>,
    /// `PLUGIN_CLIENT_CERT` is set (non-empty, as go-plugin's own check): the host wants
    /// AutoMTLS, which we refuse ([`AUTO_MTLS_REFUSED`]).
    pub auto_mtls_requested: bool,
    /// `PLUGIN_MULTIPLEX_GRPC` is set (we answer without multiplexing, 6 fields).
    pub multiplex_requested: bool,
}

/// Whether the process was started by a SPIRE agent as its `WorkloadAttestor` plugin.
pub fn is_plugin_mode(get: impl Fn(&str) -> Option<String>) -> bool {
    get(COOKIE_KEY).as_deref() == Some(COOKIE_VALUE)
}

impl HostEnv {
    pub fn from_env() -> HostEnv {
        HostEnv::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> HostEnv {
        let port = |k: &str, default: u16| {
            get(k)
                .and_then(|v| v.trim().parse::<u16>().ok())
                .unwrap_or(default)
        };
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        HostEnv {
            protocol_versions: get("PLUGIN_PROTOCOL_VERSIONS")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            min_port: port("PLUGIN_MIN_PORT", 10000),
            max_port: port("PLUGIN_MAX_PORT", 25000),
            socket_dir: non_empty("PLUGIN_UNIX_SOCKET_DIR")
                .or_else(|| non_empty("TMPDIR"))
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp")),
            socket_group: non_empty("PLUGIN_UNIX_SOCKET_GROUP"),
            auto_mtls_requested: non_empty("PLUGIN_CLIENT_CERT").is_some(),
            multiplex_requested: non_empty("PLUGIN_MULTIPLEX_GRPC").is_some(),
        }
    }

    /// Whether the host accepts our app protocol version (an unset list accepts anything).
    pub fn accepts_app_version(&self) -> bool {
        self.protocol_versions.is_empty()
            || self
                .protocol_versions
                .iter()
                .any(|v| v == &APP_PROTOCOL_VERSION.to_string())
    }
}

/// Where the gRPC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// `CORE|APP|NETWORK|ADDR|grpc|` + newline: six fields, the sixth (AutoMTLS's server
/// certificate) always empty as in every Go plugin without AutoMTLS, never a seventh (older
/// hosts split into at most six).
pub fn handshake_line(addr: &Address) -> String {
    let (network, address) = match addr {
        Address::Unix(p) => ("unix", p.display().to_string()),
        Address::Tcp(a) => ("tcp", a.to_string()),
    };
    format!("{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|{network}|{address}|grpc|\n")
}

/// A bound listener, not yet handed to tokio.
#[derive(Debug)]
pub enum Bound {
    Unix(std::os::unix::net::UnixListener, SocketFile),
    Tcp(std::net::TcpListener),
}

impl Bound {
    pub fn address(&self) -> Address {
        match self {
            Bound::Unix(_, f) => Address::Unix(f.0.clone()),
            Bound::Tcp(l) => Address::Tcp(
                l.local_addr()
                    .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            ),
        }
    }
}

/// Removes the socket file when dropped (normal exit, shutdown, error).
#[derive(Debug)]
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "cannot listen: unix socket in {dir} failed ({unix}), and no TCP port in 127.0.0.1:{min}..={max} is free"
    )]
    Nowhere {
        dir: String,
        unix: io::Error,
        min: u16,
        max: u16,
    },
}

/// Binds a unix socket `<dir>/plugin<random>` (what go-plugin does on Unix); if that is
/// impossible, the first free `127.0.0.1:<port>` in `[min_port, max_port]`.
pub fn listen(env: &HostEnv) -> Result<Bound, ListenError> {
    let unix_err = match listen_unix(&env.socket_dir, env.socket_group.as_deref()) {
        Ok(b) => return Ok(b),
        Err(e) => e,
    };
    log::warn!(
        dir = env.socket_dir.display().to_string(), error = unix_err.to_string();
        "cannot create a unix socket; falling back to TCP on 127.0.0.1"
    );
    for port in env.min_port..=env.max_port {
        if let Ok(l) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return Ok(Bound::Tcp(l));
        }
    }
    Err(ListenError::Nowhere {
        dir: env.socket_dir.display().to_string(),
        unix: unix_err,
        min: env.min_port,
        max: env.max_port,
    })
}

fn random_suffix(attempt: u32) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(attempt);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

fn listen_unix(dir: &Path, group: Option<&str>) -> io::Result<Bound> {
    for attempt in 0..16 {
        let path = dir.join(format!("plugin{}", random_suffix(attempt)));
        if path.as_os_str().len() > SUN_PATH_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path {} is longer than {SUN_PATH_MAX} bytes",
                    path.display()
                ),
            ));
        }
        match std::os::unix::net::UnixListener::bind(&path) {
            Ok(l) => {
                let file = SocketFile(path);
                if let Some(group) = group {
                    let gid = resolve_group(group)?;
                    std::os::unix::fs::chown(&file.0, None, Some(gid))?;
                    std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(0o660))?;
                }
                return Ok(Bound::Unix(l, file));
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "16 random socket names were all taken",
    ))
}

/// A numeric gid, or a group name looked up in `/etc/group`.
fn resolve_group(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group")?;
    group_gid(&text, group).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("PLUGIN_UNIX_SOCKET_GROUP: no group {group:?} in /etc/group"),
        )
    })
}

fn group_gid(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HostEnv {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HostEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn cookie_must_match_exactly() {
        let get = |v: &'static str| move |k: &str| (k == COOKIE_KEY).then(|| v.to_string());
        assert!(is_plugin_mode(get("WorkloadAttestor")));
        assert!(!is_plugin_mode(get("workloadattestor")));
        assert!(!is_plugin_mode(get("")));
        assert!(!is_plugin_mode(|_| None));
    }

    #[test]
    fn what_a_spire_host_passes() {
        let e = env(&[
            ("PLUGIN_PROTOCOL_VERSIONS", "1"),
            ("PLUGIN_MIN_PORT", "10000"),
            ("PLUGIN_MAX_PORT", "25000"),
            ("TMPDIR", "/var/tmp"),
        ]);
        assert_eq!(
            e,
            HostEnv {
                protocol_versions: vec!["1".into()],
                min_port: 10000,
                max_port: 25000,
                socket_dir: PathBuf::from("/var/tmp"),
                socket_group: None,
                auto_mtls_requested: false,
                multiplex_requested: false,
            }
        );
        assert!(e.accepts_app_version());
    }

    #[test]
    fn socket_dir_and_versions() {
        let e = env(&[
            ("PLUGIN_UNIX_SOCKET_DIR", "/run/p"),
            ("TMPDIR", "/var/tmp"),
            ("PLUGIN_PROTOCOL_VERSIONS", "2, 3"),
            ("PLUGIN_CLIENT_CERT", "-----BEGIN CERTIFICATE-----"),
            ("PLUGIN_MIN_PORT", "junk"),
        ]);
        assert_eq!(e.socket_dir, PathBuf::from("/run/p"));
        assert!(!e.accepts_app_version());
        assert!(e.auto_mtls_requested);
        assert_eq!(e.min_port, 10000);
        assert_eq!(env(&[]).socket_dir, PathBuf::from("/tmp"));
        // go-plugin's Serve checks `!= ""`: an empty PLUGIN_CLIENT_CERT is no AutoMTLS.
        assert!(!env(&[("PLUGIN_CLIENT_CERT", "")]).auto_mtls_requested);
        assert!(env(&[]).accepts_app_version());
    }

    #[test]
    fn handshake_line_has_six_fields() {
        assert_eq!(
            handshake_line(&Address::Unix(PathBuf::from("/tmp/plugin3358238432"))),
            "1|1|unix|/tmp/plugin3358238432|grpc|\n"
        );
        assert_eq!(
            handshake_line(&Address::Tcp(SocketAddr::from(([127, 0, 0, 1], 10001)))),
            "1|1|tcp|127.0.0.1:10001|grpc|\n"
        );
    }

    #[test]
    fn unix_socket_is_created_and_removed() {
        let dir = std::env::temp_dir().join(format!("attestor-hs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let e = env(&[("PLUGIN_UNIX_SOCKET_DIR", dir.to_str().expect("utf8"))]);
        let bound = listen(&e).expect("listen");
        let Address::Unix(path) = bound.address() else {
            panic!("expected a unix socket, got {}", bound.address());
        };
        assert_eq!(path.parent(), Some(dir.as_path()));
        assert!(
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("plugin"))
        );
        assert!(path.exists());
        drop(bound);
        assert!(!path.exists(), "socket removed on drop");
        std::fs::remove_dir(&dir).expect("rmdir");
    }

    #[test]
    fn tcp_when_no_unix_socket_is_possible() {
        let e = env(&[
            ("PLUGIN_UNIX_SOCKET_DIR", "/nonexistent/attestor/dir"),
            ("PLUGIN_MIN_PORT", "20000"),
            ("PLUGIN_MAX_PORT", "20999"),
        ]);
        let bound = listen(&e).expect("listen on tcp");
        let Address::Tcp(addr) = bound.address() else {
            panic!("expected tcp, got {}", bound.address());
        };
        assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
        assert!((20000..=20999).contains(&addr.port()));
    }

    #[test]
    fn group_lookup() {
        let g = "root:x:0:\nspire:x:1234:a,b\n";
        assert_eq!(group_gid(g, "spire"), Some(1234));
        assert_eq!(group_gid(g, "root"), Some(0));
        assert_eq!(group_gid(g, "spir"), None);
    }
}
