//! Kernel layout facts read at load time, so nothing is compiled in:
//! struct member offsets from vmlinux BTF, tracepoint field offsets from tracefs `format`.

use std::io;
use std::path::{Path, PathBuf};

use super::btf::Btf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OffsetError {
    #[error(
        "cannot read kernel BTF {path}: {source} (the eBPF tracker needs CONFIG_DEBUG_INFO_BTF)"
    )]
    ReadBtf { path: PathBuf, source: io::Error },
    #[error("cannot parse kernel BTF {path}: {message}")]
    ParseBtf { path: PathBuf, message: String },
    #[error("kernel BTF has no usable `{member}` in `struct {ty}`: {message}")]
    Member {
        ty: &'static str,
        member: &'static str,
        message: String,
    },
    #[error("cannot read tracepoint format {path}: {source}")]
    ReadFormat { path: PathBuf, source: io::Error },
    #[error("tracepoint format {path} has no field `{field}` of {size} bytes (found: {found})")]
    Field {
        path: PathBuf,
        field: &'static str,
        size: u32,
        found: String,
    },
}

/// `task_struct` → cgroup id chain offsets, plus tgid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOffsets {
    pub task_flags: u32,
    pub task_tgid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Reads and indexes a BTF file with our reader (`btf.rs`).
pub(crate) fn read_btf(path: &Path) -> Result<Btf, OffsetError> {
    let blob = std::fs::read(path).map_err(|source| OffsetError::ReadBtf {
        path: path.into(),
        source,
    })?;
    Btf::parse(blob).map_err(|e| OffsetError::ParseBtf {
        path: path.into(),
        message: e.to_string(),
    })
}

impl TaskOffsets {
    pub fn from_btf_file(path: &Path) -> Result<Self, OffsetError> {
        Self::from_btf(&read_btf(path)?)
    }

    pub(crate) fn from_btf(btf: &Btf) -> Result<Self, OffsetError> {
        let member =
            |ty: &'static str, member: &'static str, size: usize| -> Result<u32, OffsetError> {
                let err = |message: String| OffsetError::Member {
                    ty,
                    member,
                    message,
                };
                let id = btf
                    .struct_id(ty)
                    .ok_or_else(|| err("type not found".into()))?;
                let (off, member_ty) = btf
                    .member(id, member)
                    .map_err(|e| err(e.to_string()))?
                    .ok_or_else(|| err("no such member".into()))?;
                let actual = btf.size_of(member_ty).map_err(|e| err(e.to_string()))?;
                if actual != size {
                    return Err(err(format!("is {actual} bytes, expected {size}")));
                }
                Ok(off)
            };
        Ok(TaskOffsets {
            task_flags: member("task_struct", "flags", 4)?,
            task_tgid: member("task_struct", "tgid", 4)?,
            task_cgroups: member("task_struct", "cgroups", 8)?,
            css_set_dfl_cgrp: member("css_set", "dfl_cgrp", 8)?,
            cgroup_kn: member("cgroup", "kn", 8)?,
            // u64 since 5.5 (before, a union kernfs_node_id of the same size but other meaning).
            kernfs_node_id: member("kernfs_node", "id", 8)?,
        })
    }
}

/// One field of a tracefs `format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatField {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a tracefs `format` file.
pub fn parse_format(text: &str) -> Vec<FormatField> {
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut name = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.trim().parse().ok();
            } else if name.is_none() && !part.is_empty() && !part.contains(':') {
                // "unsigned long long dst_id" or "char comm[16]" or "__data_loc char[] dst_path"
                let last = part.rsplit(' ').next().unwrap_or(part);
                name = Some(last.split('[').next().unwrap_or(last).to_string());
            }
        }
        if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
            fields.push(FormatField { name, offset, size });
        }
    }
    fields
}

/// Offsets of the `cgroup:cgroup_attach_task` fields we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOffsets {
    pub dst_root: u32,
    pub dst_id: u32,
    pub pid: u32,
}

impl AttachOffsets {
    pub fn from_format_file(path: &Path) -> Result<Self, OffsetError> {
        let text = std::fs::read_to_string(path).map_err(|source| OffsetError::ReadFormat {
            path: path.into(),
            source,
        })?;
        Self::from_format(path, &text)
    }

    pub fn from_format(path: &Path, text: &str) -> Result<Self, OffsetError> {
        let fields = parse_format(text);
        let get = |field: &'static str, size: u32| {
            fields
                .iter()
                .find(|f| f.name == field && f.size == size)
                .map(|f| f.offset)
                .ok_or_else(|| OffsetError::Field {
                    path: path.into(),
                    field,
                    size,
                    found: fields
                        .iter()
                        .map(|f| format!("{}@{}/{}", f.name, f.offset, f.size))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        };
        Ok(AttachOffsets {
            dst_root: get("dst_root", 4)?,
            dst_id: get("dst_id", 8)?,
            pid: get("pid", 4)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verbatim from a 6.1 kernel's events/cgroup/cgroup_attach_task/format.
    const ATTACH_6_1: &str = "name: cgroup_attach_task
ID: 341
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int dst_root;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int dst_level;\toffset:12;\tsize:4;\tsigned:1;
\tfield:u64 dst_id;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] dst_path;\toffset:28;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:32;\tsize:4;\tsigned:1;

print fmt: \"dst_root=%d dst_id=%llu dst_level=%d dst_path=%s pid=%d comm=%s\"
";

    #[test]
    fn parses_attach_format() {
        let o = AttachOffsets::from_format(Path::new("f"), ATTACH_6_1).expect("offsets");
        assert_eq!(
            o,
            AttachOffsets {
                dst_root: 8,
                dst_id: 16,
                pid: 24
            }
        );
    }

    #[test]
    fn field_names_with_arrays_and_common_pid_do_not_collide() {
        let f = parse_format(
            "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;",
        );
        assert_eq!(
            f[0],
            FormatField {
                name: "comm".into(),
                offset: 8,
                size: 16
            }
        );
        assert_eq!(f[1].name, "common_pid");
    }

    #[test]
    fn missing_field_is_a_clear_error() {
        let err = AttachOffsets::from_format(
            Path::new("fmt"),
            "field:int pid;\toffset:24;\tsize:4;\tsigned:1;",
        )
        .expect_err("dst_root missing");
        assert!(err.to_string().contains("no field `dst_root`"), "{err}");
    }

    #[test]
    fn btf_offsets_of_running_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} missing on this kernel");
            return;
        }
        let o = TaskOffsets::from_btf_file(path).expect("BTF offsets");
        // Sanity: every offset inside its struct and pointer-aligned where it is a pointer.
        assert!(o.task_tgid > 0 && o.task_tgid.is_multiple_of(4));
        assert!(o.task_cgroups > 0 && o.task_cgroups.is_multiple_of(8));
        assert_eq!(o.css_set_dfl_cgrp % 8, 0);
        assert_eq!(o.cgroup_kn % 8, 0);
        assert_eq!(o.kernfs_node_id % 8, 0);
    }
}
