//! Reading a file an operator named (a command-line flag, a `plugin_data` path), bounded so
//! that a wrong path can neither exhaust memory nor hang the process.
//!
//! Only regular files are read: `/dev/zero` (a character device), a FIFO, a directory or a
//! socket is refused by what the opened descriptor is (fstat, not stat of the path, so the
//! file checked is the file read). The open is non-blocking, so that a FIFO with no writer
//! is refused instead of waiting forever in `open(2)`. A regular file larger than its kind's
//! cap is refused before any of it is read, and at most cap + 1 bytes are ever read, so a
//! file that grows after the fstat, or a `/proc` file whose size says 0, is bounded too.
//!
//! Errors say what went wrong but not which file: the caller names the file (a flag or a
//! `plugin_data` key) and what to do about it.

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// What a file holds, and the largest one of that kind accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// Completes "the 64 MiB limit for …": `"a pod list"`.
    pub what: &'static str,
    pub max_bytes: u64,
}

/// A kubelet `/pods` body, from the kubelet (the client's default body cap,
/// `kubelet::DEFAULT_MAX_BODY_BYTES`, is this) or saved to a file (so any answer the agent
/// would accept from the kubelet can be replayed, and nothing larger): 64 MiB. A 110-pod
/// node answers roughly 1 MiB and a very dense 250-pod node with large pod specs a few MiB,
/// so this leaves more than 10x headroom, while bounding what a broken or hostile endpoint
/// can make the agent buffer (SPIRE reads the whole body with no cap).
pub const POD_LIST: Kind = Kind {
    what: "a pod list",
    max_bytes: 64 << 20,
};

/// A `plugin_data` file (HCL or JSON). Real ones are well under 1 KiB (a dozen keys), so
/// 1 MiB is three orders of magnitude of headroom; a file anywhere near it is the wrong
/// file. (SPIRE reads its config files whole; the plugin's `Configure` itself is bounded by
/// the 4 MiB gRPC message limit.)
pub const PLUGIN_DATA: Kind = Kind {
    what: "a plugin_data file",
    max_bytes: 1 << 20,
};

/// A copy of `/proc/<pid>/cgroup`: one line per hierarchy, each path at most `PATH_MAX`
/// (4 KiB) as the kernel prints it. cgroup v2 has one line and a v1 host a dozen or so
/// (one per controller hierarchy plus named ones like systemd's), so 256 KiB — 64 lines at
/// `PATH_MAX` — holds any real file several times over.
pub const CGROUP_FILE: Kind = Kind {
    what: "a cgroup file",
    max_bytes: 256 << 10,
};

/// `kubelet_ca_path`, `token_path`, `certificate_path`, `private_key_path`: a token is a
/// few KiB and a CA bundle rarely 1 MiB. Read again every `reload_interval`.
pub const CREDENTIAL: Kind = Kind {
    what: "a credential file",
    max_bytes: 4 << 20,
};

/// Why a bounded read failed. The messages name the failed step; the caller adds the file
/// and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("cannot open: {source}")]
    Open { source: std::io::Error },
    #[error("cannot stat the opened file: {source}")]
    Stat { source: std::io::Error },
    /// `file_type` is "a directory", "a FIFO", "a character device", …
    #[error("not a regular file ({file_type})")]
    NotRegular { file_type: &'static str },
    #[error("is {size} bytes, more than the {} limit for {}", Bytes(kind.max_bytes), kind.what)]
    TooLarge { size: u64, kind: Kind },
    /// More than the cap was read although fstat said less: a file that grew meanwhile, a
    /// `/proc` file (size 0), or a stream (stdin), whose size is unknown.
    #[error("holds more than the {} limit for {}", Bytes(kind.max_bytes), kind.what)]
    OverCap { kind: Kind },
    #[error("cannot read: {source}")]
    Read { source: std::io::Error },
}

/// Reads the regular file at `path`, of at most `kind.max_bytes`.
pub fn read(path: &Path, kind: Kind) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO without a writer opens at once (and is then refused) instead of
        // blocking; no effect on regular files. O_NOCTTY: a terminal named by mistake does not
        // become our controlling terminal. (std adds O_CLOEXEC itself; said here too.)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| ReadError::Open { source })?;
    let meta = file
        .metadata()
        .map_err(|source| ReadError::Stat { source })?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        return Err(ReadError::NotRegular {
            file_type: describe(file_type),
        });
    }
    if meta.len() > kind.max_bytes {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            kind,
        });
    }
    let data = read_capped(file, meta.len(), kind)?;
    if data.len() as u64 > kind.max_bytes {
        return Err(ReadError::OverCap { kind });
    }
    Ok(data)
}

/// Reads a stream (stdin, given as `-`) of at most `kind.max_bytes`: what it is connected
/// to is the operator's explicit choice, so it is not refused by type, only bounded.
pub fn read_stream(stream: impl std::io::Read, kind: Kind) -> Result<Vec<u8>, ReadError> {
    let data = read_capped(stream, 0, kind)?;
    if data.len() as u64 > kind.max_bytes {
        return Err(ReadError::OverCap { kind });
    }
    Ok(data)
}

/// At most cap + 1 bytes: one more than allowed is how "too large" is seen without reading
/// the rest.
fn read_capped(
    stream: impl std::io::Read,
    size_hint: u64,
    kind: Kind,
) -> Result<Vec<u8>, ReadError> {
    let mut data = Vec::with_capacity(usize::try_from(size_hint.min(kind.max_bytes)).unwrap_or(0));
    stream
        .take(kind.max_bytes.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|source| ReadError::Read { source })?;
    Ok(data)
}

fn describe(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        // The open followed any symlink, so this is a type Linux does not have today.
        "an unknown file type"
    }
}

/// A size as the limits are chosen: "64 MiB", "256 KiB", else "N bytes".
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{} MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => write!(f, "{} KiB", n >> 10),
            n => write!(f, "{n} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Kind = Kind {
        what: "a test file",
        max_bytes: 1024,
    };

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "attestor-boundedfile-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn message(r: Result<Vec<u8>, ReadError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn regular_files_up_to_the_cap_are_read() {
        let dir = Dir::new("ok");
        let path = dir.0.join("f");
        std::fs::write(&path, b"0::/kubepods\n").unwrap();
        assert_eq!(read(&path, SMALL).unwrap(), b"0::/kubepods\n");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read(&path, SMALL).unwrap(), b"");
        std::fs::write(&path, vec![b'a'; 1024]).unwrap();
        assert_eq!(read(&path, SMALL).unwrap().len(), 1024);
    }

    #[test]
    fn one_byte_over_the_cap_is_refused_with_size_and_limit() {
        let dir = Dir::new("big");
        let path = dir.0.join("f");
        std::fs::write(&path, vec![b'a'; 1025]).unwrap();
        assert_eq!(
            message(read(&path, SMALL)),
            "is 1025 bytes, more than the 1 KiB limit for a test file"
        );
    }

    #[test]
    fn non_regular_files_are_refused_by_type() {
        assert_eq!(
            message(read(Path::new("/dev/zero"), SMALL)),
            "not a regular file (a character device)"
        );
        let dir = Dir::new("types");
        assert_eq!(
            message(read(&dir.0, SMALL)),
            "not a regular file (a directory)"
        );
        let socket = dir.0.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        // A socket cannot be open(2)ed at all; either way it is refused, not read.
        assert!(read(&socket, SMALL).is_err());
    }

    /// Without O_NONBLOCK, open(2) of a FIFO waits for a writer: this test would hang.
    #[test]
    fn a_fifo_without_a_writer_is_refused_at_once() {
        let dir = Dir::new("fifo");
        let fifo = dir.0.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(message(read(&path, SMALL))));
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO blocked");
        assert_eq!(got, "not a regular file (a FIFO)");
    }

    #[test]
    fn missing_file_names_the_step() {
        let got = message(read(Path::new("/nonexistent/attestor-file"), SMALL));
        assert!(got.starts_with("cannot open: No such file"), "{got}");
    }

    /// `/proc` files say size 0 whatever they hold: the read itself enforces the cap.
    #[test]
    fn proc_files_are_bounded_by_the_read() {
        let text = read(Path::new("/proc/self/cgroup"), CGROUP_FILE).unwrap();
        assert!(!text.is_empty());
        let tiny = Kind {
            what: "a tiny file",
            max_bytes: 4,
        };
        // At least "0::/\n", 5 bytes.
        assert_eq!(
            message(read(Path::new("/proc/self/cgroup"), tiny)),
            "holds more than the 4 bytes limit for a tiny file"
        );
    }

    #[test]
    fn streams_are_bounded() {
        assert_eq!(read_stream(&b"abc"[..], SMALL).unwrap(), b"abc");
        assert_eq!(read_stream(&[0u8; 1024][..], SMALL).unwrap().len(), 1024);
        // An endless stream (stdin from /dev/zero) stops at cap + 1 bytes.
        assert_eq!(
            message(read_stream(std::io::repeat(0), SMALL)),
            "holds more than the 1 KiB limit for a test file"
        );
    }

    #[test]
    fn limits_read_as_chosen() {
        assert_eq!(Bytes(64 << 20).to_string(), "64 MiB");
        assert_eq!(Bytes(256 << 10).to_string(), "256 KiB");
        assert_eq!(Bytes(1000).to_string(), "1000 bytes");
        assert_eq!(Bytes(1536 << 10).to_string(), "1536 KiB");
        assert_eq!(POD_LIST.max_bytes, 64 << 20);
    }
}
