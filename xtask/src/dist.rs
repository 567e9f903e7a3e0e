//! `cargo xtask dist`: the release artifacts, built offline and reproducibly.
//!
//! ```text
//! DIR/attestor-linux-amd64, attestor-linux-arm64   static musl binaries (0755)
//! DIR/SHA256SUMS                                   `sha256sum -c SHA256SUMS` works in DIR
//! DIR/attestor-oci.tar                             OCI image layout (tar), multi-arch
//! DIR/dist.json                                    image by digest, tag, per-arch digests
//! DIR/deploy/<arch>/                               deploy/ rendered with the digest + checksum
//! DIR/deploy/spire-agent-rbac.yaml                 copied verbatim
//! ```
//!
//! The image is `FROM scratch` holding only `/attestor` (the init container runs
//! `/attestor install …`). `attestor-oci.tar` is an OCI image layout: `index.json` has one
//! descriptor, an image index, annotated with `org.opencontainers.image.ref.name` = TAG (skopeo,
//! `oci-archive:…:TAG`) and `io.containerd.image.name` = REPO:TAG, REPO normalized as
//! containerd names images (`ctr images import`; [`normalized_repo`]); that
//! index lists one manifest per architecture (platform linux/amd64, linux/arm64), each with
//! its config and one gzip layer. Pushing keeps the digests: `skopeo copy --all
//! oci-archive:DIR/attestor-oci.tar docker://REPO:TAG`.
//!
//! Tools. The JSON documents are `oci-spec`'s image types (youki-dev's crate, maintained,
//! pure Rust), the layer and the archive are written with the `tar` crate, gzip with `flate2`
//! (its pure-Rust miniz_oxide backend) and digests with `sha2`. What this file writes itself is
//! the composition: which blob is where, and the determinism of every byte. The alternatives:
//! - `ocidir` (the Rust crate for writing OCI directories) depends on `openssl-sys`: xtask must
//!   compile on a cold machine *before* `cargo xtask setup` has installed libssl-dev, and
//!   it has no public API for a nested image index (its index append is private);
//! - `umoci` (Debian 0.4.7) writes single-platform manifests only, no image index;
//! - buildah builds into containers-storage (root or user namespaces, a storage driver), more
//!   than xtask can count on a build machine having; skopeo only copies existing images.
//!
//! Reproducibility (same sources ⇒ same bytes, `--check-reproducible` proves it by building
//! again from scratch in `target/dist-recheck`):
//! - time: `SOURCE_DATE_EPOCH` from the environment, else the HEAD commit's time
//!   (`git log -1 --format=%ct`); it is the config's `created`, the history's, and every tar
//!   mtime; the gzip header's mtime is 0;
//! - tar headers: ustar, uid/gid 0, empty user/group names, fixed modes, no pax headers
//!   (no atime/ctime), entries sorted by path;
//! - JSON: every document goes through [`canonical_json`] (object keys sorted, whatever
//!   serde_json's `preserve_order` feature or oci-spec's `HashMap` annotations would do);
//! - binaries: `cross::cargo` remaps the workspace and `CARGO_HOME` paths, and
//!   `build_ebpf` does the same for the embedded eBPF object (and the nightly rust-src). Build
//!   scripts' OUT_DIRs (the `include!`d gRPC code) are then `/attestor/target/…`; the scratch
//!   build remaps its own target dir to that same path. Same toolchains assumed: the pinned
//!   stable and nightly rustc, bpf-linker, and Debian's musl-gcc / aarch64-linux-gnu-gcc.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, HistoryBuilder,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::build_ebpf;
use crate::cross::{self, Target};
use crate::util::{exec, output, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Output directory (default: target/dist).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Image repository the manifests refer to (e.g. registry.example.com/attestor).
    #[arg(long, default_value = "attestor")]
    pub image_repo: String,
    /// Image tag (default: the workspace version).
    #[arg(long)]
    pub tag: Option<String>,
    /// Build everything a second time from scratch (target/dist-recheck) and compare every
    /// artifact byte for byte.
    #[arg(long)]
    pub check_reproducible: bool,
}

/// The deploy templates and their placeholders.
const DAEMONSET: &str = "spire-agent-daemonset.yaml";
const AGENT_CONF: &str = "agent.conf";
const CONFIG_MAP: &str = "spire-agent-config.yaml";
const RBAC: &str = "spire-agent-rbac.yaml";
const IMAGE_PLACEHOLDER: &str = "REPLACE/attestor:VERSION";
const ARCH_PLACEHOLDER: &str = "REPLACE_ARCH";
const CHECKSUM_PLACEHOLDER: &str = "REPLACE_WITH_SHA256_OF_THE_ATTESTOR_BINARY";

const OCI_ARCHIVE: &str = "attestor-oci.tar";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

pub fn run(opts: &Options) -> Result<()> {
    let root = workspace_root();
    let epoch = source_date_epoch()?;
    let tag = opts
        .tag
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    check_reference(&opts.image_repo, &tag)?;
    let out = opts.out.clone().unwrap_or_else(|| root.join("target/dist"));
    let templates = Templates::read(&root.join("deploy"))?;

    let started = Instant::now();
    build_ebpf::run(&Default::default())?;
    let target_dir = root.join("target");
    let binaries = build_all(&target_dir, None)?;
    let summary = write_dist(&out, &binaries, &opts.image_repo, &tag, epoch, &templates)?;
    let build_time = started.elapsed();

    let recheck = if opts.check_reproducible {
        Some(check_reproducible(&summary, opts, &tag, epoch, &templates)?)
    } else {
        None
    };

    eprintln!();
    for b in &binaries {
        eprintln!("xtask: dist: {} build: {}", b.arch, secs(b.build_time));
    }
    eprintln!("xtask: dist: total {}", secs(build_time));
    if let Some(t) = recheck {
        eprintln!(
            "xtask: dist: --check-reproducible (rebuild from scratch + compare): {}",
            secs(t)
        );
    }
    print_summary(&out, &summary, &opts.image_repo, &tag);
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `SOURCE_DATE_EPOCH`, else the HEAD commit's time (seconds since the epoch).
fn source_date_epoch() -> Result<u64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let v = v.to_string_lossy();
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    let out = output(
        Command::new("git")
            .current_dir(workspace_root())
            .args(["log", "-1", "--format=%ct"]),
    )
    .context("SOURCE_DATE_EPOCH is not set and `git log -1 --format=%ct` failed (not a git checkout?): set SOURCE_DATE_EPOCH")?;
    out.trim()
        .parse()
        .with_context(|| format!("`git log -1 --format=%ct` printed {out:?}"))
}

/// The repository and tag must make a valid image reference (distribution's grammar, loosely:
/// lowercase repository path, tag of word characters, dots and dashes).
/// `repo` as containerd names images: Docker's normalisation (distribution/reference
/// `ParseNormalizedNamed`): a first path component without `.` or `:` that is not
/// `localhost` is a Docker Hub path, and a one-component name is in `library/`. `ctr images
/// import` takes `io.containerd.image.name` verbatim, and containerd's CRI (hence the
/// kubelet) finds images only by their normalized names.
fn normalized_repo(repo: &str) -> String {
    match repo.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => repo.into(),
        Some(_) => format!("docker.io/{repo}"),
        None => format!("docker.io/library/{repo}"),
    }
}

fn check_reference(repo: &str, tag: &str) -> Result<()> {
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    ensure!(tag_ok, "--tag {tag:?} is not a valid image tag");
    let repo_ok = !repo.is_empty()
        && !repo.contains(['@', ' '])
        && repo
            .rsplit('/')
            .next()
            .is_some_and(|name| !name.is_empty() && !name.contains(':'))
        && repo
            .chars()
            .all(|c| c.is_ascii_graphic() && !c.is_ascii_uppercase());
    ensure!(
        repo_ok,
        "--image-repo {repo:?} is not an image repository (lowercase, no tag or digest)"
    );
    Ok(())
}

/// One architecture's built binary.
struct Binary {
    arch: &'static str,
    bytes: Vec<u8>,
    /// How long its `cargo build` took.
    build_time: Duration,
}

/// Builds the release binary of every architecture in `target_dir`; `ebpf` overrides the
/// embedded object (the from-scratch check builds its own).
fn build_all(target_dir: &Path, ebpf: Option<&Path>) -> Result<Vec<Binary>> {
    let mut binaries = Vec::new();
    for t in cross::ALL {
        let started = Instant::now();
        let path = build_one(t, target_dir, ebpf)?;
        let build_time = started.elapsed();
        let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        check_static(&bytes, t).with_context(|| format!("{}", path.display()))?;
        binaries.push(Binary {
            arch: t.oci_arch,
            bytes,
            build_time,
        });
    }
    Ok(binaries)
}

fn build_one(t: &Target, target_dir: &Path, ebpf: Option<&Path>) -> Result<PathBuf> {
    cross::ensure(t)?;
    let mut cmd = cross::cargo(t);
    cmd.args([
        "build",
        "--release",
        "--target",
        t.triple,
        "-p",
        "attestor",
        "--bin",
        "attestor",
    ])
    .env("CARGO_TARGET_DIR", target_dir);
    let default_target_dir = workspace_root().join("target");
    if target_dir != default_target_dir {
        // Build scripts' OUT_DIR paths (the gRPC code is `include!`d from there) end up in
        // panic locations. In the default target dir they are remapped with the workspace
        // (`/attestor/target/…`); another target dir is made to look the same. rustc uses the
        // last matching prefix, and cargo does not hash RUSTFLAGS into file names, so the
        // artifacts keep the names they have in target/.
        let flags = cmd
            .get_envs()
            .find(|(k, _)| *k == "CARGO_ENCODED_RUSTFLAGS")
            .and_then(|(_, v)| v)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        cmd.env(
            "CARGO_ENCODED_RUSTFLAGS",
            append_flag(
                &flags,
                &format!(
                    "--remap-path-prefix={}=/attestor/target",
                    target_dir.display()
                ),
            ),
        );
    }
    match ebpf {
        Some(obj) => cmd.env("ATTESTOR_EBPF_OBJECT", obj),
        None => cmd.env_remove("ATTESTOR_EBPF_OBJECT"),
    };
    cmd.env_remove("ATTESTOR_SKIP_EBPF");
    exec(&mut cmd)?;
    Ok(target_dir.join(t.triple).join("release/attestor"))
}

/// Appends one flag to a `CARGO_ENCODED_RUSTFLAGS` value (0x1f-separated).
fn append_flag(flags: &str, flag: &str) -> String {
    if flags.is_empty() {
        flag.to_string()
    } else {
        format!("{flags}\x1f{flag}")
    }
}

/// ELF machine numbers of the architectures we ship.
fn elf_machine(arch: &str) -> Option<u16> {
    match arch {
        "amd64" => Some(62),
        "arm64" => Some(183),
        _ => None,
    }
}

/// The binary must be a 64-bit little-endian ELF for `t` without a program interpreter
/// (`PT_INTERP`): statically linked, runnable from a `FROM scratch` image.
fn check_static(elf: &[u8], t: &Target) -> Result<()> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    ensure!(
        elf.starts_with(b"\x7fELF") && elf.get(4) == Some(&2) && elf.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file"
    );
    let machine = u16_at(0x12).context("truncated ELF header")?;
    ensure!(
        Some(machine) == elf_machine(t.oci_arch),
        "ELF machine {machine} is not {} ({})",
        t.oci_arch,
        t.triple
    );
    let phoff = usize::try_from(u64_at(0x20).context("truncated ELF header")?)?;
    let phentsize = usize::from(u16_at(0x36).context("truncated ELF header")?);
    let phnum = usize::from(u16_at(0x38).context("truncated ELF header")?);
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).context("truncated program headers")?;
        if p_type == 3 {
            bail!(
                "dynamically linked (it has a PT_INTERP program header): the image is FROM scratch, \
                 the binary must be static (musl target, see xtask/src/cross.rs)"
            );
        }
    }
    Ok(())
}

pub fn sha256_hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in Sha256::digest(data) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What `dist` produced, for dist.json, the summary and the reproducibility check.
struct Summary {
    /// Files written, relative to the output directory, sorted.
    files: Vec<String>,
    index_digest: String,
    /// (arch, manifest digest, binary sha256 hex)
    platforms: Vec<(&'static str, String, String)>,
    sha256sums: String,
}

/// Writes every artifact into `out` from the built binaries.
fn write_dist(
    out: &Path,
    binaries: &[Binary],
    repo: &str,
    tag: &str,
    epoch: u64,
    templates: &Templates,
) -> Result<Summary> {
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    let images: Vec<(&str, &[u8])> = binaries.iter().map(|b| (b.arch, &b.bytes[..])).collect();

    for b in binaries {
        files.insert(binary_name(b.arch), (b.bytes.clone(), 0o755));
    }
    let named: Vec<(String, &[u8])> = binaries
        .iter()
        .map(|b| (binary_name(b.arch), &b.bytes[..]))
        .collect();
    let sums = sha256sums(&named);
    files.insert("SHA256SUMS".into(), (sums.clone().into_bytes(), 0o644));

    let layout = oci_layout(&images, repo, tag, epoch)?;
    files.insert(OCI_ARCHIVE.into(), (layout.to_tar(epoch)?, 0o644));

    let image = format!("{repo}@{}", layout.index_digest);
    let platforms: Vec<(&'static str, String, String)> = binaries
        .iter()
        .zip(&layout.manifest_digests)
        .map(|(b, m)| (b.arch, m.clone(), sha256_hex(&b.bytes)))
        .collect();
    files.insert(
        "dist.json".into(),
        (
            dist_json(&image, &layout.index_digest, repo, tag, &platforms)?,
            0o644,
        ),
    );

    for (arch, _, sha) in &platforms {
        let agent_conf = templates.agent_conf(sha)?;
        files.insert(
            format!("deploy/{arch}/{DAEMONSET}"),
            (templates.daemonset(&image, arch)?.into_bytes(), 0o644),
        );
        files.insert(
            format!("deploy/{arch}/{CONFIG_MAP}"),
            (config_map(arch, &agent_conf).into_bytes(), 0o644),
        );
        files.insert(
            format!("deploy/{arch}/{AGENT_CONF}"),
            (agent_conf.into_bytes(), 0o644),
        );
    }
    files.insert(
        format!("deploy/{RBAC}"),
        (templates.rbac.clone().into_bytes(), 0o644),
    );

    for (name, (bytes, mode)) in &files {
        write_file(&out.join(name), bytes, *mode)?;
    }
    Ok(Summary {
        files: files.into_keys().collect(),
        index_digest: layout.index_digest,
        platforms,
        sha256sums: sums,
    })
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn binary_name(arch: &str) -> String {
    format!("attestor-linux-{arch}")
}

/// `sha256sum` output for `files` (name, content), sorted by name.
fn sha256sums(files: &[(String, &[u8])]) -> String {
    let mut lines: Vec<(String, String)> = files
        .iter()
        .map(|(name, data)| (name.clone(), sha256_hex(data)))
        .collect();
    lines.sort();
    lines
        .iter()
        .map(|(name, hex)| format!("{hex}  {name}\n"))
        .collect()
}

fn dist_json(
    image: &str,
    index_digest: &str,
    repo: &str,
    tag: &str,
    platforms: &[(&str, String, String)],
) -> Result<Vec<u8>> {
    let mut per_arch = serde_json::Map::new();
    for (arch, manifest, sha) in platforms {
        per_arch.insert(
            (*arch).to_string(),
            serde_json::json!({ "manifest_digest": manifest, "binary_sha256": sha }),
        );
    }
    let doc = serde_json::json!({
        "image": image,
        "index_digest": index_digest,
        "tag": format!("{repo}:{tag}"),
        "platforms": per_arch,
    });
    let mut bytes = serde_json::to_vec_pretty(&canonical(doc))?;
    bytes.push(b'\n');
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------
// OCI image layout

/// An OCI image layout in memory: path (relative, `/`-separated) → content.
struct Layout {
    files: BTreeMap<String, Vec<u8>>,
    /// `sha256:…` of the image index that index.json points to.
    index_digest: String,
    /// `sha256:…` of each architecture's manifest, in the order of the images given.
    manifest_digests: Vec<String>,
}

/// Objects with sorted keys, whatever the map type behind the serialization: oci-spec's
/// annotations are `HashMap`s (random iteration order), and serde_json's Map keeps insertion
/// order when any crate in the build enables its `preserve_order` feature.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Compact JSON with sorted keys: the bytes of a blob, stable across runs.
fn canonical_json<T: serde::Serialize>(doc: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&canonical(serde_json::to_value(doc)?))?)
}

impl Layout {
    fn new() -> Layout {
        Layout {
            files: BTreeMap::new(),
            index_digest: String::new(),
            manifest_digests: Vec::new(),
        }
    }

    /// Stores a blob; returns its descriptor (`sha256:…` digest and size).
    fn blob(&mut self, media_type: MediaType, data: Vec<u8>) -> Result<DescriptorBuilder> {
        let hex = sha256_hex(&data);
        let digest = Digest::from_str(&format!("sha256:{hex}"))?;
        let size = data.len() as u64;
        self.files.insert(format!("blobs/sha256/{hex}"), data);
        Ok(DescriptorBuilder::default()
            .media_type(media_type)
            .digest(digest)
            .size(size))
    }

    /// The tar of the layout: entries sorted by path, directories first, fixed metadata.
    fn to_tar(&self, epoch: u64) -> Result<Vec<u8>> {
        let mut entries: BTreeMap<String, Option<&[u8]>> = BTreeMap::new();
        for (path, data) in &self.files {
            let mut dir = String::new();
            let parts: Vec<&str> = path.split('/').collect();
            for part in &parts[..parts.len() - 1] {
                dir.push_str(part);
                dir.push('/');
                entries.insert(dir.clone(), None);
            }
            entries.insert(path.clone(), Some(data));
        }
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            match data {
                Some(data) => append(&mut tar, &path, data, 0o644, epoch)?,
                None => append_dir(&mut tar, &path, epoch)?,
            }
        }
        Ok(tar.into_inner()?)
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch);
    h
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
    epoch: u64,
) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, data.len() as u64, mode, epoch);
    tar.append_data(&mut h, path, data)
        .with_context(|| format!("tar entry {path}"))
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, epoch: u64) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0, 0o755, epoch);
    tar.append_data(&mut h, path, std::io::empty())
        .with_context(|| format!("tar entry {path}"))
}

/// The uncompressed layer: a tar holding exactly `attestor` (0755, root, mtime = epoch).
fn layer_tar(binary: &[u8], epoch: u64) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "attestor", binary, 0o755, epoch)?;
    Ok(tar.into_inner()?)
}

/// gzip with a fixed header (mtime 0, no file name, OS "unknown").
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// RFC 3339 (UTC) of seconds since the epoch.
fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let rem = epoch % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The OCI image layout: one image index (in index.json, with the ref-name annotations)
/// listing one manifest per architecture, each `FROM scratch` with `/attestor`.
fn oci_layout(images: &[(&str, &[u8])], repo: &str, tag: &str, epoch: u64) -> Result<Layout> {
    let mut layout = Layout::new();
    let created = rfc3339(epoch);
    let mut manifests: Vec<Descriptor> = Vec::new();
    for (arch, binary) in images {
        let layer = layer_tar(binary, epoch)?;
        let diff_id = format!("sha256:{}", sha256_hex(&layer));
        let layer_desc = layout
            .blob(MediaType::ImageLayerGzip, gzip(&layer)?)?
            .build()?;
        let config = ImageConfigurationBuilder::default()
            .created(created.clone())
            .architecture(Arch::from(*arch))
            .os(Os::Linux)
            .config(
                ConfigBuilder::default()
                    .entrypoint(vec!["/attestor".to_string()])
                    .build()?,
            )
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![diff_id])
                    .build()?,
            )
            .history(vec![
                HistoryBuilder::default()
                    .created(created.clone())
                    .created_by(format!(
                        "cargo xtask dist: COPY attestor-linux-{arch} /attestor"
                    ))
                    .build()?,
            ])
            .build()?;
        let config_desc = layout
            .blob(MediaType::ImageConfig, canonical_json(&config)?)?
            .build()?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc)
            .layers(vec![layer_desc])
            .build()?;
        let platform = PlatformBuilder::default()
            .architecture(Arch::from(*arch))
            .os(Os::Linux)
            .build()?;
        let desc = layout
            .blob(MediaType::ImageManifest, canonical_json(&manifest)?)?
            .platform(platform)
            .build()?;
        layout.manifest_digests.push(desc.digest().to_string());
        manifests.push(desc);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()?;
    let annotations = HashMap::from([
        (ANNOTATION_REF_NAME.to_string(), tag.to_string()),
        (
            ANNOTATION_CONTAINERD_NAME.to_string(),
            format!("{}:{tag}", normalized_repo(repo)),
        ),
    ]);
    let index_desc = layout
        .blob(MediaType::ImageIndex, canonical_json(&index)?)?
        .annotations(annotations)
        .build()?;
    layout.index_digest = index_desc.digest().to_string();
    let top = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![index_desc])
        .build()?;
    layout
        .files
        .insert("index.json".into(), canonical_json(&top)?);
    let oci_layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()?;
    layout
        .files
        .insert("oci-layout".into(), canonical_json(&oci_layout)?);
    Ok(layout)
}

// ---------------------------------------------------------------------------------------
// deploy/ rendering

/// The deploy/ templates, read once.
struct Templates {
    daemonset: String,
    agent_conf: String,
    rbac: String,
}

impl Templates {
    fn read(dir: &Path) -> Result<Templates> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
        };
        let t = Templates {
            daemonset: read(DAEMONSET)?,
            agent_conf: read(AGENT_CONF)?,
            rbac: read(RBAC)?,
        };
        require_placeholders(
            &format!("deploy/{DAEMONSET}"),
            &t.daemonset,
            &[IMAGE_PLACEHOLDER, ARCH_PLACEHOLDER],
        )?;
        require_placeholders(
            &format!("deploy/{AGENT_CONF}"),
            &t.agent_conf,
            &[CHECKSUM_PLACEHOLDER],
        )?;
        Ok(t)
    }

    fn daemonset(&self, image: &str, arch: &str) -> Result<String> {
        render_daemonset(&self.daemonset, image, arch)
    }

    fn agent_conf(&self, sha256: &str) -> Result<String> {
        render_agent_conf(&self.agent_conf, sha256)
    }
}

/// Each placeholder must occur in the template (else the template changed under us).
fn require_placeholders(file: &str, text: &str, placeholders: &[&str]) -> Result<()> {
    for p in placeholders {
        ensure!(
            text.contains(p),
            "{file}: the placeholder `{p}` is missing: cannot render it"
        );
    }
    Ok(())
}

/// No `REPLACE` may remain after rendering.
fn require_rendered(file: &str, text: &str) -> Result<()> {
    if let Some((n, line)) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("REPLACE"))
    {
        bail!(
            "{file}:{}: `REPLACE` left after rendering: {}",
            n + 1,
            line.trim()
        );
    }
    Ok(())
}

/// deploy/spire-agent-daemonset.yaml for `arch`, with the image by digest.
fn render_daemonset(template: &str, image: &str, arch: &str) -> Result<String> {
    let file = format!("deploy/{DAEMONSET}");
    require_placeholders(&file, template, &[IMAGE_PLACEHOLDER, ARCH_PLACEHOLDER])?;
    let text = template
        .replace(IMAGE_PLACEHOLDER, image)
        .replace(ARCH_PLACEHOLDER, arch);
    require_rendered(&file, &text)?;
    Ok(text)
}

/// deploy/agent.conf with the checksum of this architecture's binary.
fn render_agent_conf(template: &str, sha256: &str) -> Result<String> {
    let file = format!("deploy/{AGENT_CONF}");
    require_placeholders(&file, template, &[CHECKSUM_PLACEHOLDER])?;
    let text = template.replace(CHECKSUM_PLACEHOLDER, sha256);
    require_rendered(&file, &text)?;
    Ok(text)
}

/// Whether `text` survives a YAML literal block (`|`) byte for byte: printable, one final
/// newline, no line that YAML would read as indentation only or as the indentation
/// indicator's job.
fn literal_block_safe(text: &str) -> bool {
    let Some(body) = text.strip_suffix('\n') else {
        return false;
    };
    !body.is_empty()
        && !body.ends_with('\n')
        && !body.starts_with([' ', '\t', '\n'])
        && !body
            .chars()
            .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{feff}')
        && body
            .split('\n')
            .all(|l| l.is_empty() || !l.trim_matches([' ', '\t']).is_empty())
}

/// The ConfigMap `spire-agent-<arch>` (namespace spire) holding agent.conf.
fn config_map(arch: &str, agent_conf: &str) -> String {
    let value = if literal_block_safe(agent_conf) {
        let mut block = String::from("|\n");
        for line in agent_conf.lines() {
            if line.is_empty() {
                block.push('\n');
            } else {
                block.push_str("    ");
                block.push_str(line);
                block.push('\n');
            }
        }
        block
    } else {
        // A JSON string is a YAML double-quoted scalar, exact for any text.
        let mut s = serde_json::Value::String(agent_conf.to_string()).to_string();
        s.push('\n');
        s
    };
    format!(
        "# Generated by `cargo xtask dist` from deploy/{AGENT_CONF} (the {arch} binary's checksum).\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  \
           name: spire-agent-{arch}\n  \
           namespace: spire\n\
         data:\n  \
           agent.conf: {value}"
    )
}

// ---------------------------------------------------------------------------------------
// --check-reproducible and the summary

/// Builds everything again from scratch (its own target dir, eBPF object included) into a
/// second output directory and compares every artifact; returns how long it took. The scratch
/// build trees are removed when everything matches and kept for investigation otherwise.
fn check_reproducible(
    first: &Summary,
    opts: &Options,
    tag: &str,
    epoch: u64,
    templates: &Templates,
) -> Result<Duration> {
    let started = Instant::now();
    let root = workspace_root();
    let scratch = root.join("target/dist-recheck");
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("remove {}", scratch.display()))?;
    }
    eprintln!(
        "xtask: dist: --check-reproducible: building again from scratch in {}",
        scratch.display()
    );
    let ebpf = build_ebpf::build(&Default::default(), &scratch.join("ebpf"))?;
    let binaries = build_all(&scratch.join("target"), Some(&ebpf))?;
    for b in &binaries {
        eprintln!(
            "xtask: dist: --check-reproducible: {} build from scratch: {}",
            b.arch,
            secs(b.build_time)
        );
    }
    let out2 = scratch.join("out");
    let second = write_dist(&out2, &binaries, &opts.image_repo, tag, epoch, templates)?;
    let out1 = opts.out.clone().unwrap_or_else(|| root.join("target/dist"));
    let elapsed = started.elapsed();

    ensure!(
        first.files == second.files,
        "the two builds wrote different files: {:?} vs {:?}",
        first.files,
        second.files
    );
    println!("{:<48} {:<64} identical", "file", "sha256");
    let mut differ = Vec::new();
    for name in &first.files {
        let a = fs::read(out1.join(name)).with_context(|| format!("read {name}"))?;
        let b = fs::read(out2.join(name)).with_context(|| format!("read {name}"))?;
        let same = a == b;
        println!(
            "{name:<48} {:<64} {}",
            sha256_hex(&a),
            if same { "yes" } else { "no" }
        );
        if !same {
            differ.push(name.clone());
        }
    }
    if !differ.is_empty() {
        bail!(
            "not reproducible: {} differ between {} and {}",
            differ.join(", "),
            out1.display(),
            out2.display()
        );
    }
    eprintln!(
        "xtask: dist: reproducible: {} files identical ({} and {})",
        first.files.len(),
        out1.display(),
        out2.display()
    );
    // The scratch build trees (~900 MB) are only worth keeping to investigate a difference.
    for dir in ["target", "ebpf"] {
        let dir = scratch.join(dir);
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(elapsed)
}

fn print_summary(out: &Path, s: &Summary, repo: &str, tag: &str) {
    let out = out.display();
    println!();
    println!("Release artifacts in {out}");
    println!("  image:  {repo}@{}", s.index_digest);
    println!("  tag:    {repo}:{tag} (in {OCI_ARCHIVE})");
    for (arch, manifest, _) in &s.platforms {
        println!("  linux/{arch} manifest: {manifest}");
    }
    println!("SHA256SUMS:");
    for line in s.sha256sums.lines() {
        println!("  {line}");
    }
    println!("Next steps:");
    if !repo.contains('/') {
        println!(
            "  (the manifests name the image `{repo}@…`: rerun with --image-repo REGISTRY/attestor \
             so that they name your registry)"
        );
    }
    println!("  skopeo copy --all oci-archive:{out}/{OCI_ARCHIVE} docker://{repo}:{tag}");
    println!("  kubectl apply -f {out}/deploy/{RBAC}");
    for (arch, _, _) in &s.platforms {
        println!("  kubectl apply -f {out}/deploy/{arch}/   # {arch} nodes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_names_are_normalized_as_docker_does() {
        assert_eq!(normalized_repo("attestor"), "docker.io/library/attestor");
        assert_eq!(
            normalized_repo("spiffe/attestor"),
            "docker.io/spiffe/attestor"
        );
        assert_eq!(
            normalized_repo("reg.example/attestor"),
            "reg.example/attestor"
        );
        assert_eq!(normalized_repo("localhost/attestor"), "localhost/attestor");
        assert_eq!(normalized_repo("reg:5000/a/b"), "reg:5000/a/b");
    }
    use std::io::Read;

    const EPOCH: u64 = 1_700_000_000;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(EPOCH), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn daemonset_renders_image_and_arch() {
        let t =
            "name: spire-agent-REPLACE_ARCH\nimage: REPLACE/attestor:VERSION\narch: REPLACE_ARCH\n";
        let r = render_daemonset(t, "reg/attestor@sha256:ab", "arm64").expect("render");
        assert_eq!(
            r,
            "name: spire-agent-arm64\nimage: reg/attestor@sha256:ab\narch: arm64\n"
        );
    }

    #[test]
    fn agent_conf_renders_the_checksum() {
        let t = "plugin_checksum = \"REPLACE_WITH_SHA256_OF_THE_ATTESTOR_BINARY\"\n";
        let r = render_agent_conf(t, "00ff").expect("render");
        assert_eq!(r, "plugin_checksum = \"00ff\"\n");
    }

    #[test]
    fn missing_placeholder_names_file_and_placeholder() {
        let e = render_daemonset("image: REPLACE/attestor:VERSION\n", "x@sha256:1", "amd64")
            .expect_err("no arch placeholder");
        let msg = format!("{e:#}");
        assert!(msg.contains("deploy/spire-agent-daemonset.yaml"), "{msg}");
        assert!(msg.contains("REPLACE_ARCH"), "{msg}");
        let e = render_agent_conf("plugin_checksum = \"\"\n", "00").expect_err("missing");
        let msg = format!("{e:#}");
        assert!(msg.contains("deploy/agent.conf"), "{msg}");
        assert!(msg.contains(CHECKSUM_PLACEHOLDER), "{msg}");
    }

    #[test]
    fn leftover_replace_names_file_and_line() {
        let t = "a: REPLACE_ARCH\nimage: REPLACE/attestor:VERSION\nb: REPLACE_ME\n";
        let e = render_daemonset(t, "x@sha256:1", "amd64").expect_err("leftover");
        let msg = format!("{e:#}");
        assert!(msg.contains("deploy/spire-agent-daemonset.yaml:3"), "{msg}");
        assert!(msg.contains("REPLACE_ME"), "{msg}");
    }

    #[test]
    fn the_real_templates_render_cleanly() {
        let t = Templates::read(&workspace_root().join("deploy")).expect("templates");
        let d = t
            .daemonset("reg.example/attestor@sha256:abc", "arm64")
            .expect("daemonset");
        assert!(d.contains("image: reg.example/attestor@sha256:abc"));
        assert!(d.contains("kubernetes.io/arch: arm64"));
        let hex = "a".repeat(64);
        let c = t.agent_conf(&hex).expect("agent.conf");
        assert!(c.contains(&format!("plugin_checksum = \"{hex}\"")));
        let cm = config_map("arm64", &c);
        let v: serde_norway::Value = serde_norway::from_str(&cm).expect("configmap yaml");
        assert_eq!(v["data"]["agent.conf"].as_str(), Some(c.as_str()));
        assert!(
            literal_block_safe(&c),
            "the shipped agent.conf uses the literal block"
        );
    }

    #[test]
    fn config_map_keeps_the_text_byte_exact() {
        for text in [
            "agent {\n    a = 1\n\n}\n",
            "no final newline",
            "two final newlines\n\n",
            "  starts indented\nx\n",
            "blank-ish line\n   \nend\n",
            "tab\tinside\n",
            "cr\r\nlf\n",
            "quote \" and backslash \\ and : colon # hash\n",
        ] {
            let cm = config_map("amd64", text);
            let v: serde_norway::Value = serde_norway::from_str(&cm).expect(&cm);
            assert_eq!(v["kind"].as_str(), Some("ConfigMap"));
            assert_eq!(v["metadata"]["name"].as_str(), Some("spire-agent-amd64"));
            assert_eq!(v["metadata"]["namespace"].as_str(), Some("spire"));
            assert_eq!(v["data"]["agent.conf"].as_str(), Some(text), "{cm}");
        }
    }

    #[test]
    fn sha256sums_format() {
        let files = vec![
            ("attestor-linux-arm64".to_string(), &b"b"[..]),
            ("attestor-linux-amd64".to_string(), &b"a"[..]),
        ];
        let s = sha256sums(&files);
        assert_eq!(
            s,
            "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb  attestor-linux-amd64\n\
             3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d  attestor-linux-arm64\n"
        );
    }

    #[test]
    fn sha256sums_checks_with_sha256sum() {
        if output(Command::new("sha256sum").arg("--version")).is_none() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let files = vec![
            ("attestor-linux-amd64".to_string(), &b"one"[..]),
            ("attestor-linux-arm64".to_string(), &b"two"[..]),
        ];
        for (name, data) in &files {
            fs::write(dir.path().join(name), data).expect("write");
        }
        fs::write(dir.path().join("SHA256SUMS"), sha256sums(&files)).expect("write");
        let status = Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(dir.path())
            .output()
            .expect("sha256sum");
        assert!(status.status.success(), "{status:?}");
    }

    #[test]
    fn layer_holds_only_attestor_deterministically() {
        let a = layer_tar(b"\x7fELF fake", EPOCH).expect("layer");
        let b = layer_tar(b"\x7fELF fake", EPOCH).expect("layer");
        assert_eq!(a, b, "same input, same bytes");
        let mut archive = tar::Archive::new(&a[..]);
        let mut names = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let h = entry.header();
            names.push(entry.path().expect("path").display().to_string());
            assert_eq!(h.mode().expect("mode"), 0o755);
            assert_eq!(h.uid().expect("uid"), 0);
            assert_eq!(h.gid().expect("gid"), 0);
            assert_eq!(h.mtime().expect("mtime"), EPOCH);
            assert_eq!(h.username().expect("uname"), Some(""));
            assert_eq!(h.groupname().expect("gname"), Some(""));
            assert_eq!(h.entry_type(), tar::EntryType::Regular);
            assert!(entry.pax_extensions().expect("pax").is_none());
            let mut body = Vec::new();
            entry.read_to_end(&mut body).expect("read");
            assert_eq!(body, b"\x7fELF fake");
        }
        assert_eq!(names, ["attestor"]);
        let g1 = gzip(&a).expect("gzip");
        assert_eq!(g1, gzip(&b).expect("gzip"));
        assert_eq!(&g1[4..8], &[0, 0, 0, 0], "gzip mtime 0");
    }

    fn read_json(dir: &Path, rel: &str) -> Value {
        serde_json::from_slice(&fs::read(dir.join(rel)).expect(rel)).expect(rel)
    }

    fn blob_path(digest: &str) -> String {
        format!(
            "blobs/sha256/{}",
            digest.strip_prefix("sha256:").expect("sha256 digest")
        )
    }

    /// The descriptor's blob exists, is named by its sha256 and has its size.
    fn check_blob(dir: &Path, desc: &Value) -> Vec<u8> {
        let digest = desc["digest"].as_str().expect("digest");
        let data = fs::read(dir.join(blob_path(digest))).expect(digest);
        assert_eq!(format!("sha256:{}", sha256_hex(&data)), digest);
        assert_eq!(desc["size"].as_u64(), Some(data.len() as u64), "{digest}");
        data
    }

    #[test]
    fn oci_layout_structure() {
        let images: Vec<(&str, &[u8])> =
            vec![("amd64", b"amd64 binary"), ("arm64", b"arm64 binary")];
        let layout = oci_layout(&images, "reg.example/attestor", "1.2.3", EPOCH).expect("layout");
        let tar_bytes = layout.to_tar(EPOCH).expect("tar");
        let again = oci_layout(&images, "reg.example/attestor", "1.2.3", EPOCH)
            .expect("layout")
            .to_tar(EPOCH)
            .expect("tar");
        assert_eq!(tar_bytes, again, "same input, same archive");

        // Outer tar: sorted, fixed metadata.
        let mut names = Vec::new();
        for entry in tar::Archive::new(&tar_bytes[..])
            .entries()
            .expect("entries")
        {
            let entry = entry.expect("entry");
            let h = entry.header();
            let name = entry.path().expect("path").display().to_string();
            let dir = h.entry_type() == tar::EntryType::Directory;
            assert_eq!(
                h.mode().expect("mode"),
                if dir { 0o755 } else { 0o644 },
                "{name}"
            );
            assert_eq!((h.uid().expect("uid"), h.gid().expect("gid")), (0, 0));
            assert_eq!(h.mtime().expect("mtime"), EPOCH);
            assert_eq!(h.username().expect("uname"), Some(""));
            names.push(name);
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);

        let dir = tempfile::tempdir().expect("tempdir");
        tar::Archive::new(&tar_bytes[..])
            .unpack(dir.path())
            .expect("unpack");
        let dir = dir.path();
        assert_eq!(read_json(dir, "oci-layout")["imageLayoutVersion"], "1.0.0");

        let index = read_json(dir, "index.json");
        assert_eq!(index["schemaVersion"], 2);
        let top = index["manifests"].as_array().expect("manifests");
        assert_eq!(top.len(), 1);
        assert_eq!(
            top[0]["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(top[0]["annotations"][ANNOTATION_REF_NAME], "1.2.3");
        assert_eq!(
            top[0]["annotations"][ANNOTATION_CONTAINERD_NAME],
            "reg.example/attestor:1.2.3"
        );
        assert_eq!(
            top[0]["digest"].as_str(),
            Some(layout.index_digest.as_str())
        );

        let nested: Value = serde_json::from_slice(&check_blob(dir, &top[0])).expect("index");
        assert_eq!(
            nested["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        let manifests = nested["manifests"].as_array().expect("manifests");
        assert_eq!(manifests.len(), 2);
        let mut blobs_seen = vec![blob_path(&layout.index_digest)];
        for (desc, (arch, binary)) in manifests.iter().zip(&images) {
            assert_eq!(
                desc["mediaType"],
                "application/vnd.oci.image.manifest.v1+json"
            );
            assert_eq!(desc["platform"]["architecture"], *arch);
            assert_eq!(desc["platform"]["os"], "linux");
            blobs_seen.push(blob_path(desc["digest"].as_str().expect("digest")));
            let manifest: Value = serde_json::from_slice(&check_blob(dir, desc)).expect("manifest");
            assert_eq!(manifest["schemaVersion"], 2);
            assert_eq!(
                manifest["config"]["mediaType"],
                "application/vnd.oci.image.config.v1+json"
            );
            let config: Value =
                serde_json::from_slice(&check_blob(dir, &manifest["config"])).expect("config");
            blobs_seen.push(blob_path(manifest["config"]["digest"].as_str().expect("d")));
            assert_eq!(config["architecture"], *arch);
            assert_eq!(config["os"], "linux");
            assert_eq!(config["created"], "2023-11-14T22:13:20Z");
            assert_eq!(
                config["config"]["Entrypoint"],
                serde_json::json!(["/attestor"])
            );
            assert_eq!(config["history"].as_array().map(Vec::len), Some(1));
            let layers = manifest["layers"].as_array().expect("layers");
            assert_eq!(layers.len(), 1);
            assert_eq!(
                layers[0]["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            blobs_seen.push(blob_path(layers[0]["digest"].as_str().expect("d")));
            let gz = check_blob(dir, &layers[0]);
            let mut layer = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut layer)
                .expect("gunzip");
            assert_eq!(
                config["rootfs"],
                serde_json::json!({"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))]})
            );
            assert_eq!(layer, layer_tar(binary, EPOCH).expect("layer"));
        }
        // Nothing else in blobs/.
        let mut on_disk: Vec<String> = fs::read_dir(dir.join("blobs/sha256"))
            .expect("blobs")
            .map(|e| {
                format!(
                    "blobs/sha256/{}",
                    e.expect("e").file_name().to_string_lossy()
                )
            })
            .collect();
        on_disk.sort();
        blobs_seen.sort();
        assert_eq!(on_disk, blobs_seen);
    }

    #[test]
    fn json_keys_are_sorted_whatever_the_map() {
        let mut annotations = HashMap::new();
        for i in 0..32 {
            annotations.insert(format!("k{i:02}"), i.to_string());
        }
        let desc = DescriptorBuilder::default()
            .media_type(MediaType::ImageIndex)
            .digest(Digest::from_str(&format!("sha256:{}", "0".repeat(64))).expect("digest"))
            .size(1u64)
            .annotations(annotations)
            .build()
            .expect("descriptor");
        let text = String::from_utf8(canonical_json(&desc).expect("json")).expect("utf8");
        let positions: Vec<usize> = (0..32)
            .map(|i| text.find(&format!("\"k{i:02}\"")).expect("key"))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(
            text.find("\"annotations\"") < text.find("\"digest\""),
            "{text}"
        );
    }

    #[test]
    fn static_check_reads_the_program_headers() {
        // A minimal ELF64 LE header for x86_64 with one program header of type `ty`.
        let elf = |machine: u16, ty: u32| {
            let mut e = vec![0u8; 64 + 56];
            e[..4].copy_from_slice(b"\x7fELF");
            e[4] = 2;
            e[5] = 1;
            e[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
            e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            e[64..68].copy_from_slice(&ty.to_le_bytes());
            e
        };
        check_static(&elf(62, 1), &cross::AMD64).expect("static amd64");
        check_static(&elf(183, 6), &cross::ARM64).expect("static arm64");
        let e = check_static(&elf(62, 3), &cross::AMD64).expect_err("interp");
        assert!(format!("{e:#}").contains("PT_INTERP"));
        assert!(
            check_static(&elf(183, 1), &cross::AMD64).is_err(),
            "wrong machine"
        );
        assert!(check_static(b"#!/bin/sh\n", &cross::AMD64).is_err());
    }

    #[test]
    fn flags_append_in_the_encoded_form() {
        assert_eq!(append_flag("", "-Cx"), "-Cx");
        assert_eq!(append_flag("-Ca\x1f-Cb", "-Cx"), "-Ca\x1f-Cb\x1f-Cx");
    }

    #[test]
    fn references_are_checked() {
        check_reference("attestor", "0.1.0").expect("default");
        check_reference("registry.example.com:5000/team/attestor", "v1_2-rc.1").expect("full");
        assert!(check_reference("Attestor", "1").is_err());
        assert!(check_reference("attestor:1", "1").is_err());
        assert!(check_reference("attestor", "").is_err());
        assert!(check_reference("attestor", "-x").is_err());
        assert!(check_reference("attestor", "a/b").is_err());
    }
}
