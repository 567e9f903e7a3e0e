//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`, format in the kernel's
//! Documentation/bpf/btf.rst): struct member offsets and type sizes, nothing else.
//!
//! Why not a crate: the BTF crates on the registry materialise every type of vmlinux
//! (btfparse 1.3 peaks at ≈60 MB RSS for a 6.x kernel) to answer our five questions; this
//! reader keeps the raw blob (≈5 MB) plus one `u32` per type and never panics on bad input.

use std::fmt;

const MAGIC: u16 = 0xeb9f;

// BTF_KIND_* (include/uapi/linux/btf.h)
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfError(pub String);

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, BtfError> {
    Err(BtfError(msg.into()))
}

/// Parsed view of a BTF blob.
pub struct Btf {
    blob: Vec<u8>,
    types: (usize, usize),
    strings: (usize, usize),
    /// Byte offset (within `blob`) of each type's header; index = type id - 1.
    offsets: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Header {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// Where the kind-specific data starts.
    data: usize,
}

impl Btf {
    pub fn parse(blob: Vec<u8>) -> Result<Btf, BtfError> {
        let u16_at = |o: usize| blob.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            blob.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(MAGIC) {
            return err("not little-endian BTF (bad magic)");
        }
        let field = |o| {
            u32_at(o)
                .map(|v| v as usize)
                .ok_or_else(|| BtfError("truncated header".into()))
        };
        let hdr_len = field(4)?;
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let span = |off: usize, len: usize| -> Result<(usize, usize), BtfError> {
            let start = hdr_len
                .checked_add(off)
                .ok_or_else(|| BtfError("section offset overflow".into()))?;
            let end = start
                .checked_add(len)
                .ok_or_else(|| BtfError("section length overflow".into()))?;
            if end > blob.len() {
                return err("section past the end of the blob");
            }
            Ok((start, end))
        };
        let types = span(type_off, type_len)?;
        let strings = span(str_off, str_len)?;
        let mut btf = Btf {
            blob,
            types,
            strings,
            offsets: Vec::new(),
        };
        let mut at = types.0;
        while at < types.1 {
            btf.offsets
                .push(u32::try_from(at).map_err(|_| BtfError("blob too large".into()))?);
            let h = btf.header_at(at)?;
            at = h.data + btf.data_len(&h)?;
        }
        if at != types.1 {
            return err("type section does not end on a type boundary");
        }
        Ok(btf)
    }

    fn u32_at(&self, o: usize) -> Result<u32, BtfError> {
        self.blob
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| BtfError(format!("read past the end at {o}")))
    }

    fn header_at(&self, at: usize) -> Result<Header, BtfError> {
        if at + 12 > self.types.1 {
            return err("truncated type");
        }
        let info = self.u32_at(at + 4)?;
        Ok(Header {
            name_off: self.u32_at(at)?,
            kind: (info >> 24) & 0x1f,
            vlen: info & 0xffff,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32_at(at + 8)?,
            data: at + 12,
        })
    }

    fn data_len(&self, h: &Header) -> Result<usize, BtfError> {
        let vlen = h.vlen as usize;
        Ok(match h.kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
            other => return err(format!("unknown BTF kind {other}")),
        })
    }

    fn type_header(&self, id: u32) -> Result<Header, BtfError> {
        let idx = (id as usize)
            .checked_sub(1)
            .ok_or_else(|| BtfError("type id 0 (void) has no header".into()))?;
        let at = *self
            .offsets
            .get(idx)
            .ok_or_else(|| BtfError(format!("type id {id} out of range")))?;
        self.header_at(at as usize)
    }

    fn name(&self, off: u32) -> &[u8] {
        let start = self.strings.0 + off as usize;
        let bytes = self.blob.get(start..self.strings.1).unwrap_or(&[]);
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        &bytes[..end]
    }

    /// Follows typedef/const/volatile/restrict/type-tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<(u32, Header), BtfError> {
        for _ in 0..32 {
            let h = self.type_header(id)?;
            match h.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = h.size_or_type
                }
                _ => return Ok((id, h)),
            }
        }
        err("type modifier chain too long")
    }

    /// Size in bytes of type `id`.
    pub fn size_of(&self, id: u32) -> Result<usize, BtfError> {
        let (_, h) = self.resolve(id)?;
        Ok(match h.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                h.size_or_type as usize
            }
            KIND_PTR => 8,
            KIND_ARRAY => {
                let elem = self.u32_at(h.data)?;
                let n = self.u32_at(h.data + 8)? as usize;
                self.size_of(elem)?.saturating_mul(n)
            }
            other => return err(format!("type of kind {other} has no size")),
        })
    }

    /// The id of the struct named `name` that has members (not a forward declaration).
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        (1..=self.offsets.len() as u32).find(|&id| {
            self.type_header(id).is_ok_and(|h| {
                h.kind == KIND_STRUCT && h.vlen > 0 && self.name(h.name_off) == name.as_bytes()
            })
        })
    }

    /// The id of the typedef named `name` (`btf_trace_<tracepoint>` for a tp_btf program).
    pub fn typedef_id(&self, name: &str) -> Option<u32> {
        (1..=self.offsets.len() as u32).find(|&id| {
            self.type_header(id)
                .is_ok_and(|h| h.kind == KIND_TYPEDEF && self.name(h.name_off) == name.as_bytes())
        })
    }

    /// Byte offset and type id of `member` in struct/union `id`, looking into anonymous
    /// struct/union members as C does.
    pub fn member(&self, id: u32, member: &str) -> Result<Option<(u32, u32)>, BtfError> {
        self.member_in(id, member, 0)
    }

    fn member_in(&self, id: u32, member: &str, depth: u32) -> Result<Option<(u32, u32)>, BtfError> {
        if depth > 8 {
            return err("anonymous members nested too deep");
        }
        let (_, h) = self.resolve(id)?;
        if h.kind != KIND_STRUCT && h.kind != KIND_UNION {
            return err(format!("type {id} is not a struct or union"));
        }
        for i in 0..h.vlen as usize {
            let at = h.data + 12 * i;
            let (name_off, ty, raw) =
                (self.u32_at(at)?, self.u32_at(at + 4)?, self.u32_at(at + 8)?);
            // With kind_flag the low 24 bits are the bit offset, the top 8 the bitfield size.
            let (bit_offset, bitfield) = if h.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if name_off == 0 {
                let (_, inner) = self.resolve(ty)?;
                if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                    && let Some((off, t)) = self.member_in(ty, member, depth + 1)?
                {
                    return Ok(Some((bit_offset / 8 + off, t)));
                }
                continue;
            }
            if self.name(name_off) == member.as_bytes() {
                if bitfield || bit_offset % 8 != 0 {
                    return err(format!("member `{member}` is a bitfield"));
                }
                return Ok(Some((bit_offset / 8, ty)));
            }
        }
        Ok(None)
    }
}

/// A BTF blob in which type `id` is the typedef `name` and every type before it a bare
/// pointer: all that aya's `BtfTracePoint::load` reads from the kernel BTF it is given (it
/// looks up `btf_trace_<tracepoint>` by name and kind and attaches to that id). aya parses
/// this in well under a millisecond, where the whole vmlinux BTF costs it tens of
/// milliseconds (see `KernelTracker::load`). `None`: a blob without the typedef, so aya
/// reports the missing tracepoint type itself.
pub fn attach_only_blob(typedef: Option<u32>, name: &str) -> Vec<u8> {
    let count = typedef.unwrap_or(0) as usize;
    let type_len = 12 * count;
    let mut strings = vec![0u8];
    strings.extend_from_slice(name.as_bytes());
    strings.push(0);
    let mut b = Vec::with_capacity(24 + type_len + strings.len());
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&[1, 0]); // version 1, no flags
    for w in [
        24u32,
        0,
        type_len as u32,
        type_len as u32,
        strings.len() as u32,
    ] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    for i in 1..=count {
        let (name_off, kind) = if i == count {
            (1, KIND_TYPEDEF)
        } else {
            (0, KIND_PTR)
        };
        for w in [name_off, kind << 24, 0] {
            b.extend_from_slice(&w.to_le_bytes());
        }
    }
    b.extend_from_slice(&strings);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from (name, info, size_or_type, extra words) types.
    fn blob(strings: &[&str], types: &[(u32, u32, u32, Vec<u32>)]) -> (Vec<u8>, Vec<u32>) {
        let mut strtab = vec![0u8];
        let mut offs = Vec::new();
        for s in strings {
            offs.push(strtab.len() as u32);
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
        }
        let mut ty = Vec::new();
        for (name, info, sot, extra) in types {
            for w in [*name, *info, *sot].iter().chain(extra.iter()) {
                ty.extend_from_slice(&w.to_le_bytes());
            }
        }
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            ty.len() as u32,
            ty.len() as u32,
            strtab.len() as u32,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&ty);
        b.extend_from_slice(&strtab);
        (b, offs)
    }

    #[test]
    fn member_offsets_including_anonymous_unions() {
        // 1 int(4); 2 ptr->1; 3 union { int a; int *p; }; 4 struct task { int pid; union; int *cg; }
        let names = ["int", "a", "p", "task", "pid", "cg"];
        let (_, o) = blob(&names, &[]);
        let (b, _) = blob(
            &names,
            &[
                (o[0], KIND_INT << 24, 4, vec![32]),
                (0, KIND_PTR << 24, 1, vec![]),
                (0, KIND_UNION << 24 | 2, 8, vec![o[1], 1, 0, o[2], 2, 0]),
                (
                    o[3],
                    KIND_STRUCT << 24 | 3,
                    24,
                    vec![o[4], 1, 0, 0, 3, 64, o[5], 2, 128],
                ),
            ],
        );
        let btf = Btf::parse(b).expect("parse");
        let task = btf.struct_id("task").expect("task");
        assert_eq!(btf.member(task, "pid").expect("ok"), Some((0, 1)));
        assert_eq!(
            btf.member(task, "p").expect("ok"),
            Some((8, 2)),
            "inside the anonymous union"
        );
        assert_eq!(btf.member(task, "cg").expect("ok"), Some((16, 2)));
        assert_eq!(btf.member(task, "nope").expect("ok"), None);
        assert_eq!(btf.size_of(2).expect("ptr"), 8);
        assert_eq!(btf.size_of(1).expect("int"), 4);
    }

    #[test]
    fn attach_only_blob_puts_the_typedef_at_its_id() {
        let btf = Btf::parse(attach_only_blob(Some(5), "btf_trace_x")).expect("parse");
        assert_eq!(btf.typedef_id("btf_trace_x"), Some(5));
        assert_eq!(btf.typedef_id("btf_trace_y"), None);
        let empty = Btf::parse(attach_only_blob(None, "btf_trace_x")).expect("parse");
        assert_eq!(empty.typedef_id("btf_trace_x"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(vec![]).is_err());
        assert!(Btf::parse(vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let (mut b, _) = blob(&["x"], &[(1, KIND_STRUCT << 24 | 5, 4, vec![])]);
        assert!(Btf::parse(b.clone()).is_err(), "members past the end");
        b[6] = 0xff; // hdr_len
        assert!(Btf::parse(b).is_err());
        let (b, _) = blob(&["x"], &[(1, 30 << 24, 4, vec![])]);
        assert!(Btf::parse(b).is_err(), "unknown kind");
    }
}
