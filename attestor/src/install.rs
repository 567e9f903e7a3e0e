//! `attestor install DEST`: how the plugin binary gets from its image to the path the SPIRE
//! agent starts (`plugin_cmd`). The image is `FROM scratch` (only `/attestor`, no shell, no
//! `cp`), so the DaemonSet's init container runs the binary to copy itself
//! (deploy/spire-agent-daemonset.yaml, `install-attestor`).
//!
//! The agent refuses a plugin whose SHA-256 differs from `plugin_checksum`, and starts it
//! from a volume it shares with nothing else; what can go wrong here is a half-written file
//! (the node or the container dies mid-copy, the volume fills up) that the agent then
//! execs. So the copy goes to a temporary file in DEST's directory, is fsynced, renamed over
//! DEST (atomic within one filesystem), the directory fsynced, and DEST is read back and
//! hashed: the installed file is either the whole binary or absent, and the hash printed is
//! the one `plugin_checksum` must hold.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file the running binary was started from.
pub const SELF_EXE: &str = "/proc/self/exe";

/// Larger than any build of the binary (~15 MiB) by far; a source beyond it is not ours.
pub const MAX_BINARY_BYTES: u64 = 256 << 20;

/// Mode of the installed binary: the agent (another user, possibly) executes it; nobody but
/// the owner writes it.
const MODE: u32 = 0o755;

/// What was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub path: PathBuf,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the installed file: `plugin_checksum`.
    pub sha256: String,
}

/// Why the binary could not be installed; each names the file and what to check.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read the binary to install ({path}): {source}")]
    ReadSource { path: PathBuf, source: io::Error },
    #[error(
        "the binary to install ({path}) is not a regular file of at most {max} bytes: not an \
         attestor binary"
    )]
    SourceTooLarge { path: PathBuf, max: u64 },
    #[error(
        "cannot install into {dir}: {source} (the directory must exist and be writable: \
         check the init container's volumeMounts)"
    )]
    Directory { dir: PathBuf, source: io::Error },
    #[error(
        "cannot install to {path}: it is a directory; give the file path, e.g. {path}/attestor"
    )]
    IsDirectory { path: PathBuf },
    #[error("cannot write {path}: {source} (is the volume full?)")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "installed {path} but reading it back gave sha256 {found}, not {expected}: the volume \
         does not keep what is written to it"
    )]
    Mismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

/// Copies `source` to `dest` atomically (see the module comment) and returns the installed
/// file's size and SHA-256. An existing `dest` file is replaced; `dest`'s directory must
/// exist.
pub fn install(source: &Path, dest: &Path) -> Result<Installed, InstallError> {
    if dest.is_dir() {
        return Err(InstallError::IsDirectory {
            path: dest.to_path_buf(),
        });
    }
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut input = File::open(source).map_err(read_err(source))?;
    let meta = input.metadata().map_err(read_err(source))?;
    if !meta.is_file() || meta.len() > MAX_BINARY_BYTES {
        return Err(InstallError::SourceTooLarge {
            path: source.to_path_buf(),
            max: MAX_BINARY_BYTES,
        });
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attestor".into());
    let tmp = dir.join(format!(".{name}.install-{}", std::process::id()));
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .open(&tmp)
        .map_err(|e| InstallError::Directory {
            dir: dir.clone(),
            source: e,
        })?;
    let written = copy_and_hash(&mut input, &mut out, source, &tmp);
    let result = written.and_then(|(bytes, sha256)| {
        let write_err = |e| InstallError::Write {
            path: tmp.clone(),
            source: e,
        };
        // The umask may have narrowed the mode given at creation.
        out.set_permissions(fs::Permissions::from_mode(MODE))
            .map_err(write_err)?;
        out.sync_all().map_err(write_err)?;
        drop(out);
        fs::rename(&tmp, dest).map_err(|e| InstallError::Write {
            path: dest.to_path_buf(),
            source: e,
        })?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| InstallError::Directory {
                dir: dir.clone(),
                source: e,
            })?;
        Ok((bytes, sha256))
    });
    let (bytes, expected) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let mut back = File::open(dest).map_err(|e| InstallError::Write {
        path: dest.to_path_buf(),
        source: e,
    })?;
    let (_, found) = copy_and_hash(&mut back, &mut io::sink(), dest, dest)?;
    if found != expected {
        return Err(InstallError::Mismatch {
            path: dest.to_path_buf(),
            expected,
            found,
        });
    }
    Ok(Installed {
        path: dest.to_path_buf(),
        bytes,
        sha256: found,
    })
}

fn read_err(source: &Path) -> impl Fn(io::Error) -> InstallError + '_ {
    move |e| InstallError::ReadSource {
        path: source.to_path_buf(),
        source: e,
    }
}

/// Streams `from` into `to` (at most [`MAX_BINARY_BYTES`]), returning the byte count and
/// the lower-case hex SHA-256 of what was read.
fn copy_and_hash(
    from: &mut impl Read,
    to: &mut impl Write,
    from_path: &Path,
    to_path: &Path,
) -> Result<(u64, String), InstallError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut total: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(from_path)(e)),
        };
        total += n as u64;
        if total > MAX_BINARY_BYTES {
            return Err(InstallError::SourceTooLarge {
                path: from_path.to_path_buf(),
                max: MAX_BINARY_BYTES,
            });
        }
        ctx.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|e| InstallError::Write {
            path: to_path.to_path_buf(),
            source: e,
        })?;
    }
    let digest = ctx.finish();
    let hex = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok((total, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("attestor-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// coreutils' sha256sum: an implementation other than the one under test.
    fn sha256sum(path: &Path) -> String {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }

    #[test]
    fn installs_an_exact_executable_copy_and_reports_its_sha256() {
        let dir = scratch("copy");
        let src = dir.join("src");
        // More than one read buffer, not a multiple of it.
        let body: Vec<u8> = (0..200_003u32).map(|i| (i % 251) as u8).collect();
        fs::write(&src, &body).unwrap();
        let dest = dir.join("plugins/attestor");
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let got = install(&src, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), body);
        assert_eq!(got.bytes, body.len() as u64);
        assert_eq!(got.sha256, sha256sum(&dest));
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        // Nothing else left in the directory (the temporary file was renamed).
        let names: Vec<_> = fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("attestor")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replaces_an_existing_file_whole() {
        let dir = scratch("replace");
        let src = dir.join("src");
        fs::write(&src, b"new binary").unwrap();
        let dest = dir.join("attestor");
        fs::write(&dest, b"an older, longer binary that must not leave a tail").unwrap();
        let got = install(&src, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new binary");
        assert_eq!(got.sha256, sha256sum(&dest));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_what_to_check() {
        let dir = scratch("errors");
        let src = dir.join("src");
        fs::write(&src, b"x").unwrap();

        let missing_dir = dir.join("no-such-volume/attestor");
        let e = install(&src, &missing_dir).unwrap_err();
        assert!(matches!(e, InstallError::Directory { .. }), "{e}");
        assert!(e.to_string().contains("no-such-volume"), "{e}");
        assert!(e.to_string().contains("volumeMounts"), "{e}");

        let e = install(&src, &dir).unwrap_err();
        assert!(matches!(e, InstallError::IsDirectory { .. }), "{e}");

        let e = install(&dir.join("absent"), &dir.join("attestor")).unwrap_err();
        assert!(matches!(e, InstallError::ReadSource { .. }), "{e}");
        assert!(e.to_string().contains("absent"), "{e}");

        // A directory or a device is not a binary to install.
        let e = install(Path::new("/dev/zero"), &dir.join("attestor")).unwrap_err();
        assert!(matches!(e, InstallError::SourceTooLarge { .. }), "{e}");
        assert!(!dir.join("attestor").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_and_write_failures_name_their_file() {
        // A directory opened as a file fails at read; /dev/full fails every write.
        let dir = scratch("partial");
        let dest = dir.join("attestor");
        let mut bad = File::open(&dir).unwrap();
        let mut out = Vec::new();
        let e = copy_and_hash(&mut bad, &mut out, &dir, &dest).unwrap_err();
        assert!(matches!(e, InstallError::ReadSource { .. }), "{e}");
        let e = copy_and_hash(
            &mut &b"abc"[..],
            &mut File::options().write(true).open("/dev/full").unwrap(),
            &dir,
            Path::new("/dev/full"),
        )
        .unwrap_err();
        assert!(matches!(e, InstallError::Write { .. }), "{e}");
        assert!(e.to_string().contains("/dev/full"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hashes_match_known_vectors() {
        let (n, hex) = copy_and_hash(
            &mut &b"abc"[..],
            &mut io::sink(),
            Path::new("a"),
            Path::new("b"),
        )
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
