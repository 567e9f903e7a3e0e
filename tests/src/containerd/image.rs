//! OCI images built on this machine from Debian's `busybox-static` (no registry, no network):
//! one uncompressed layer with `/bin/busybox`, its applet links, `/etc/passwd` and
//! `/etc/group`, written as an OCI image-layout tar that `ctr images import` accepts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

/// Where Debian's `busybox-static` installs the static binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into the image (the tests' commands use these).
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "ls", "ps", "id", "true", "false", "echo", "wait", "kill", "env",
];

/// An image written as an OCI layout tar.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Tagged name, e.g. `local.test/workload:1`.
    pub name: String,
    /// Repository part of the name, e.g. `local.test/workload`.
    pub repository: String,
    /// `sha256:<hex>` of the manifest (what `imageID`/`image_ref` report after the
    /// repo-digest tag).
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config (the image ID in containerd's CRI).
    pub config_digest: String,
    /// The OCI layout tar.
    pub tar: PathBuf,
}

impl BuiltImage {
    /// `<repository>@<manifest digest>`: the repo digest containerd reports as `image_ref`.
    pub fn repo_digest(&self) -> String {
        format!("{}@{}", self.repository, self.manifest_digest)
    }
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sha256:<hex>` of a file (coreutils `sha256sum`; no hashing crate for one use).
fn sha256_file(path: &Path) -> io::Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    let hex = out
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .ok_or_else(|| io::Error::other(format!("sha256sum printed {out:?}")))?;
    Ok(format!("sha256:{hex}"))
}

/// Stores `path` as a blob under `layout/blobs/sha256/`; returns (digest, size).
fn add_blob(layout: &Path, path: &Path) -> io::Result<(String, u64)> {
    let digest = sha256_file(path)?;
    let size = fs::metadata(path)?.len();
    let hex = digest.trim_start_matches("sha256:");
    fs::copy(path, layout.join("blobs/sha256").join(hex))?;
    Ok((digest, size))
}

fn add_json_blob(
    layout: &Path,
    scratch: &Path,
    v: &serde_json::Value,
) -> io::Result<(String, u64)> {
    fs::write(scratch, serde_json::to_vec(v).map_err(io::Error::other)?)?;
    add_blob(layout, scratch)
}

/// The OCI architecture name of this machine.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// Builds `name` (`<repository>:<tag>`) in `work` with `entrypoint` as its command.
pub fn build(work: &Path, name: &str, entrypoint: &[&str]) -> io::Result<BuiltImage> {
    let (repository, _tag) = name
        .rsplit_once(':')
        .ok_or_else(|| io::Error::other(format!("image name {name:?} has no tag")))?;
    let base = work.join(name.replace(['/', ':'], "_"));
    let rootfs = base.join("rootfs");
    let layout = base.join("layout");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        fs::create_dir_all(rootfs.join(d))?;
    }
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    fs::copy(BUSYBOX, rootfs.join("bin/busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    // Images with the same entrypoint would otherwise be byte-identical, and containerd
    // would report one image (its first tag) for both.
    fs::write(rootfs.join("etc/image-name"), format!("{name}\n"))?;

    let layer = base.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&layer)
        .arg("-C")
        .arg(&rootfs)
        .arg("."))?;
    let (layer_digest, layer_size) = add_blob(&layout, &layer)?;

    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": entrypoint,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = add_json_blob(&layout, &base.join("config.json"), &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) =
        add_json_blob(&layout, &base.join("manifest.json"), &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).map_err(io::Error::other)?,
    )?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    let tar = base.join("image.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout)
        .args(["oci-layout", "index.json", "blobs"]))?;
    fs::remove_dir_all(&rootfs)?;
    Ok(BuiltImage {
        name: name.to_owned(),
        repository: repository.to_owned(),
        manifest_digest,
        config_digest,
        tar,
    })
}

/// Imports `image` into containerd's `k8s.io` namespace with `ctr` and tags its repo digest
/// (`ctr import` records none, so without the tag `image_ref` would be the bare config
/// digest).
pub fn import(ctr_address: &Path, image: &BuiltImage) -> io::Result<()> {
    let ctr = |args: &[&str]| {
        run(Command::new("ctr")
            .arg("-a")
            .arg(ctr_address)
            .args(["-n", "k8s.io"])
            .args(args))
    };
    let tar = image.tar.to_string_lossy();
    ctr(&["images", "import", &tar])?;
    ctr(&[
        "images",
        "tag",
        "--force",
        &image.name,
        &image.repo_digest(),
    ])?;
    Ok(())
}
