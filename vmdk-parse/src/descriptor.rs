//! The VMDK text descriptor: header keys, extent lines and the disk database (`ddb.*`).
//!
//! The descriptor is kept whole: every line in order, so `info` can show every key and a
//! future writer can reproduce it. Keys are matched case-insensitively ("The descriptor file is
//! a case-insensitive text based file", libyal); when a key repeats, the last one wins.
//!
//! Syntax (see `docs/vmdk-parse.md`):
//! ```text
//! # Disk DescriptorFile
//! version=1
//! CID=0172e8a4
//! parentCID=ffffffff
//! createType="vmfs"
//! RW 4096 VMFS "vmfs_thick-flat.vmdk"
//! ddb.adapterType = "lsilogic"
//! ```
//! Extent lines are `ACCESS SECTORS TYPE ["FILENAME" [OFFSET]]`; any other line that is not
//! `key = value`, a comment or blank is kept as `Other` and reported by `check`.

use crate::error::{Error, Result};
use std::path::Path;

/// Descriptors larger than this are refused: real ones are under 2 KiB, embedded ones 10 KiB.
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// More extents than this is not a disk (a 8 TiB twoGbMaxExtent disk has 4096).
pub const MAX_EXTENTS: usize = 1 << 16;
/// `CID`/`parentCID` value meaning "no parent".
pub const CID_NONE: u32 = 0xffff_ffff;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Access {
    Rw,
    Rdonly,
    Noaccess,
}

/// The extent types of the descriptor grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtentType {
    Flat,
    Sparse,
    Zero,
    Vmfs,
    VmfsSparse,
    VmfsRdm,
    VmfsRaw,
    SeSparse,
}

impl ExtentType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExtentType::Flat => "FLAT",
            ExtentType::Sparse => "SPARSE",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::VmfsRdm => "VMFSRDM",
            ExtentType::VmfsRaw => "VMFSRAW",
            ExtentType::SeSparse => "SESPARSE",
        }
    }
    fn parse(s: &str) -> Option<ExtentType> {
        Some(match s.to_ascii_uppercase().as_str() {
            "FLAT" => ExtentType::Flat,
            "SPARSE" => ExtentType::Sparse,
            "ZERO" => ExtentType::Zero,
            "VMFS" => ExtentType::Vmfs,
            "VMFSSPARSE" => ExtentType::VmfsSparse,
            "VMFSRDM" => ExtentType::VmfsRdm,
            "VMFSRAW" => ExtentType::VmfsRaw,
            "SESPARSE" => ExtentType::SeSparse,
            _ => return None,
        })
    }
}

/// One extent line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    pub access: Access,
    pub size_sectors: u64,
    pub kind: ExtentType,
    /// The file name as written (relative to the descriptor's folder, or absolute).
    pub file: Option<String>,
    /// Start of the extent's data in its file, in sectors (FLAT only).
    pub offset_sectors: u64,
}

/// One line of the descriptor, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Blank,
    Comment(String),
    /// `key=value` or `key = "value"`; `value` is unquoted.
    Pair {
        key: String,
        value: String,
    },
    Extent(ExtentLine),
    /// A line that fits no form; kept, and reported by `check`.
    Other(String),
}

#[derive(Clone, Debug)]
pub struct Descriptor {
    /// The descriptor text, decoded, without the NUL padding of embedded descriptors.
    pub text: String,
    pub lines: Vec<Line>,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// The `encoding` key, read from raw bytes before decoding (it is always ASCII).
fn declared_encoding(bytes: &[u8]) -> Option<String> {
    for line in bytes.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if let Some((k, v)) = line.split_once('=') {
            if k.trim().eq_ignore_ascii_case("encoding") {
                return Some(unquote(v).to_string());
            }
        }
    }
    None
}

/// Whether `bytes` look like a text descriptor, as qemu's probe decides: the first line that is
/// neither blank nor a comment is `version=N`.
pub fn looks_like_descriptor(bytes: &[u8]) -> bool {
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        let Ok(s) = std::str::from_utf8(trimmed) else {
            return false;
        };
        let Some((k, v)) = s.split_once('=') else {
            return false;
        };
        return k.trim().eq_ignore_ascii_case("version") && matches!(unquote(v), "1" | "2" | "3");
    }
    false
}

fn parse_extent_line(path: &Path, lineno: usize, line: &str) -> Result<ExtentLine> {
    let bad =
        |what: &str| Error::corrupt(path, format!("descriptor line {lineno}: {what}: {line:?}"));
    let mut rest = line.trim();
    let mut word = || -> Option<&str> {
        let r = rest.trim_start();
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        let (w, tail) = r.split_at(end);
        rest = tail;
        (!w.is_empty()).then_some(w)
    };
    let access = match word().map(|w| w.to_ascii_uppercase()).as_deref() {
        Some("RW") => Access::Rw,
        Some("RDONLY") => Access::Rdonly,
        Some("NOACCESS") => Access::Noaccess,
        _ => return Err(bad("bad access mode")),
    };
    let size_sectors: u64 = word()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad("bad extent size"))?;
    let kind_word = word().ok_or_else(|| bad("missing extent type"))?;
    let kind = ExtentType::parse(kind_word)
        .ok_or_else(|| bad(&format!("unknown extent type {kind_word}")))?;
    let tail = rest.trim_start();
    let (file, tail) = if let Some(q) = tail.strip_prefix('"') {
        let end = q.find('"').ok_or_else(|| bad("unterminated file name"))?;
        (Some(q[..end].to_string()), &q[end + 1..])
    } else if tail.is_empty() {
        (None, tail)
    } else {
        return Err(bad("file name must be quoted"));
    };
    let mut fields = tail.split_whitespace();
    let offset_sectors = match fields.next() {
        Some(w) => w.parse().map_err(|_| bad("bad extent offset"))?,
        None => 0,
    };
    // Further fields (partition UUID, device id) belong to device extents, refused later.
    if kind != ExtentType::Zero && file.is_none() {
        return Err(bad("extent has no file name"));
    }
    Ok(ExtentLine {
        access,
        size_sectors,
        kind,
        file,
        offset_sectors,
    })
}

impl Descriptor {
    /// Parse descriptor bytes read from `path` (a descriptor file, or the embedded area of a
    /// sparse file, NUL padding included).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Descriptor> {
        if bytes.len() as u64 > MAX_DESCRIPTOR_BYTES {
            return Err(Error::corrupt(
                path,
                format!(
                    "descriptor is {} bytes, over the {MAX_DESCRIPTOR_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        let bytes = match bytes.iter().position(|&b| b == 0) {
            Some(nul) => &bytes[..nul],
            None => bytes,
        };
        let text = match declared_encoding(bytes) {
            Some(label)
                if !label.eq_ignore_ascii_case("UTF-8") && !label.eq_ignore_ascii_case("utf8") =>
            {
                let enc = encoding_rs::Encoding::for_label(label.as_bytes()).ok_or_else(|| {
                    Error::unsupported(path, format!("descriptor encoding {label:?} is not known"))
                })?;
                let (text, _, had_errors) = enc.decode(bytes);
                if had_errors {
                    return Err(Error::corrupt(
                        path,
                        format!("descriptor is not valid {label}"),
                    ));
                }
                text.into_owned()
            }
            _ => String::from_utf8(bytes.to_vec()).map_err(|e| {
                Error::corrupt(
                    path,
                    format!(
                        "descriptor is not valid UTF-8 (byte {})",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })?,
        };
        let mut lines = Vec::new();
        let mut extents = 0usize;
        for (i, raw) in text.split('\n').enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = raw.trim();
            let first = trimmed
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let line = if trimmed.is_empty() {
                Line::Blank
            } else if trimmed.starts_with('#') {
                Line::Comment(raw.to_string())
            } else if matches!(first.as_str(), "RW" | "RDONLY" | "NOACCESS") {
                extents += 1;
                if extents > MAX_EXTENTS {
                    return Err(Error::corrupt(
                        path,
                        format!("more than {MAX_EXTENTS} extents"),
                    ));
                }
                Line::Extent(parse_extent_line(path, i + 1, trimmed)?)
            } else if let Some((k, v)) = trimmed.split_once('=') {
                Line::Pair {
                    key: k.trim().to_string(),
                    value: unquote(v).to_string(),
                }
            } else {
                Line::Other(raw.to_string())
            };
            lines.push(line);
        }
        // A trailing newline leaves one empty last element; drop it so lines == text lines.
        if text.ends_with('\n') {
            lines.pop();
        }
        Ok(Descriptor { text, lines })
    }

    /// Every `key = value` pair, in file order (duplicates included).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| match l {
            Line::Pair { key, value } => Some((key.as_str(), value.as_str())),
            _ => None,
        })
    }

    /// The value of `key`, matched case-insensitively; the last occurrence wins.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .last()
            .map(|(_, v)| v)
    }

    pub fn extents(&self) -> impl Iterator<Item = &ExtentLine> {
        self.lines.iter().filter_map(|l| match l {
            Line::Extent(e) => Some(e),
            _ => None,
        })
    }

    pub fn create_type(&self) -> Option<&str> {
        self.get("createType")
    }

    pub fn parent_hint(&self) -> Option<&str> {
        self.get("parentFileNameHint").filter(|s| !s.is_empty())
    }

    fn cid_value(&self, path: &Path, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => u32::from_str_radix(v.trim(), 16).map(Some).map_err(|_| {
                Error::corrupt(
                    path,
                    format!("descriptor {key}={v:?} is not a hexadecimal 32-bit value"),
                )
            }),
        }
    }

    /// `CID`, the content identifier of this link.
    pub fn cid(&self, path: &Path) -> Result<Option<u32>> {
        self.cid_value(path, "CID")
    }

    /// `parentCID`; `None` when absent, `Some(CID_NONE)` for "no parent".
    pub fn parent_cid(&self, path: &Path) -> Result<Option<u32>> {
        self.cid_value(path, "parentCID")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESXI: &str = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=0172e8a4\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW 4096 VMFS \"vmfs_thick-flat.vmdk\"\n\n# The Disk Data Base \n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.uuid = \"60 00 C2 98 5d 08 de f2-a0 14 2e 05 94 9d d8 38\"\n";

    #[test]
    fn parses_real_esxi_descriptor() {
        let d = Descriptor::parse(Path::new("x"), ESXI.as_bytes()).unwrap();
        assert_eq!(d.create_type(), Some("vmfs"));
        assert_eq!(d.cid(Path::new("x")).unwrap(), Some(0x0172e8a4));
        assert_eq!(d.parent_cid(Path::new("x")).unwrap(), Some(CID_NONE));
        let e: Vec<_> = d.extents().collect();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, ExtentType::Vmfs);
        assert_eq!(e[0].size_sectors, 4096);
        assert_eq!(e[0].file.as_deref(), Some("vmfs_thick-flat.vmdk"));
        assert_eq!(d.get("DDB.ADAPTERTYPE"), Some("lsilogic"));
        assert_eq!(d.lines.len(), ESXI.lines().count());
        assert!(looks_like_descriptor(ESXI.as_bytes()));
    }

    #[test]
    fn last_duplicate_wins_and_crlf() {
        let t = "version=1\r\nCID=00000001\r\ncid=00000002\r\nRW 8 FLAT \"a b.img\" 16\r\nRW 8 ZERO\r\n";
        let d = Descriptor::parse(Path::new("x"), t.as_bytes()).unwrap();
        assert_eq!(d.cid(Path::new("x")).unwrap(), Some(2));
        let e: Vec<_> = d.extents().collect();
        assert_eq!(e[0].file.as_deref(), Some("a b.img"));
        assert_eq!(e[0].offset_sectors, 16);
        assert_eq!(e[1].kind, ExtentType::Zero);
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        for t in [
            "version=1\nRW x FLAT \"a\"\n",
            "version=1\nRW 8 BOGUS \"a\"\n",
            "version=1\nRW 8 FLAT \"a\n",
            "version=1\nRW 8 FLAT a\n",
            "version=1\nRW 8 FLAT\n",
            "version=1\nCID=zz\n",
            "version=1\nRW 8 FLAT \"a\" -1\n",
        ] {
            let r = Descriptor::parse(Path::new("x"), t.as_bytes())
                .and_then(|d| d.cid(Path::new("x")).map(|_| d));
            assert!(r.is_err(), "{t:?}");
        }
    }

    #[test]
    fn windows_1252_descriptor() {
        let mut t = b"version=1\nencoding=\"windows-1252\"\nRW 8 FLAT \"caf".to_vec();
        t.push(0xe9);
        t.extend_from_slice(b"-flat.vmdk\" 0\n");
        let d = Descriptor::parse(Path::new("x"), &t).unwrap();
        assert_eq!(
            d.extents().next().unwrap().file.as_deref(),
            Some("café-flat.vmdk")
        );
        let bad = b"version=1\nRW 8 FLAT \"caf\xe9\" 0\n";
        assert!(Descriptor::parse(Path::new("x"), bad).is_err());
    }

    #[test]
    fn probe() {
        assert!(looks_like_descriptor(b"\n# c\nversion=3\n"));
        assert!(!looks_like_descriptor(b"KDMV\x01"));
        assert!(!looks_like_descriptor(b"version=9\n"));
        assert!(!looks_like_descriptor(&[0u8; 512]));
    }
}
