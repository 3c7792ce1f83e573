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

/// The descriptor grammar, in nom combinators over the decoded text. Whitespace is Unicode
/// whitespace (`char::is_whitespace`), as `str::trim` and `split_whitespace` read it.
mod grammar {
    use super::Access;
    use nom::bytes::complete::{take_till, take_till1, take_while};
    use nom::character::complete::char;
    use nom::combinator::{eof, map_opt, map_res, opt, peek, rest};
    use nom::sequence::{preceded, separated_pair, terminated};
    use nom::{IResult, Parser};

    /// The parsers report only "no match": each caller names what was wrong.
    pub type PResult<'a, O> = IResult<&'a str, O, ()>;

    pub fn ws0(i: &str) -> PResult<'_, &str> {
        take_while(char::is_whitespace).parse(i)
    }

    /// One whitespace-separated word, leading whitespace skipped.
    pub fn word(i: &str) -> PResult<'_, &str> {
        preceded(ws0, take_till1(char::is_whitespace)).parse(i)
    }

    /// A line with nothing but whitespace.
    pub fn blank(i: &str) -> PResult<'_, &str> {
        terminated(ws0, eof).parse(i)
    }

    /// A line whose first non-blank character is `#`.
    pub fn comment(i: &str) -> PResult<'_, char> {
        preceded(ws0, char('#')).parse(i)
    }

    /// The access mode that opens an extent line (any case).
    pub fn access(i: &str) -> PResult<'_, Access> {
        map_opt(word, |w: &str| {
            if w.eq_ignore_ascii_case("RW") {
                Some(Access::Rw)
            } else if w.eq_ignore_ascii_case("RDONLY") {
                Some(Access::Rdonly)
            } else if w.eq_ignore_ascii_case("NOACCESS") {
                Some(Access::Noaccess)
            } else {
                None
            }
        })
        .parse(i)
    }

    /// Whether a line is an extent line: it opens with an access mode.
    pub fn is_extent(i: &str) -> bool {
        peek(access).parse(i).is_ok()
    }

    /// A decimal count of sectors (as `u64::from_str` reads it).
    pub fn sectors(i: &str) -> PResult<'_, u64> {
        map_res(word, str::parse::<u64>).parse(i)
    }

    /// The opening quote of a file name, after blanks.
    pub fn open_quote(i: &str) -> PResult<'_, char> {
        preceded(ws0, char('"')).parse(i)
    }

    /// The rest of a quoted file name, closing quote included.
    pub fn quoted_rest(i: &str) -> PResult<'_, &str> {
        terminated(take_till(|c| c == '"'), char('"')).parse(i)
    }

    /// Nothing but blanks to the end of the line.
    pub fn end(i: &str) -> PResult<'_, &str> {
        preceded(ws0, eof).parse(i)
    }

    /// `key=value`: everything up to the first `=`, and everything after it.
    pub fn pair(i: &str) -> PResult<'_, (&str, &str)> {
        separated_pair(take_till(|c| c == '='), char('='), rest).parse(i)
    }

    /// The optional start offset after the file name.
    pub fn offset_word(i: &str) -> PResult<'_, Option<&str>> {
        opt(word).parse(i)
    }
}

/// `key=value` on a line, split at the first `=`: the key trimmed, the value unquoted.
fn key_value(line: &str) -> Option<(&str, &str)> {
    grammar::pair(line)
        .ok()
        .map(|(_, (k, v))| (k.trim(), unquote(v)))
}

/// The `encoding` key, read from raw bytes before decoding (it is always ASCII).
fn declared_encoding(bytes: &[u8]) -> Option<String> {
    for line in bytes.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if let Some((k, v)) = key_value(&line) {
            if k.eq_ignore_ascii_case("encoding") {
                return Some(v.to_string());
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
        let Some((k, v)) = key_value(s) else {
            return false;
        };
        return k.eq_ignore_ascii_case("version") && matches!(v, "1" | "2" | "3");
    }
    false
}

fn parse_extent_line(path: &Path, lineno: usize, line: &str) -> Result<ExtentLine> {
    use grammar::*;
    let bad =
        |what: &str| Error::corrupt(path, format!("descriptor line {lineno}: {what}: {line:?}"));
    let (i, access) = access(line).map_err(|_| bad("bad access mode"))?;
    let (i, size_sectors) = sectors(i).map_err(|_| bad("bad extent size"))?;
    let (i, kind_word) = word(i).map_err(|_| bad("missing extent type"))?;
    let kind = ExtentType::parse(kind_word)
        .ok_or_else(|| bad(&format!("unknown extent type {kind_word}")))?;
    let (i, file) = match open_quote(i) {
        Ok((i, _)) => {
            let (i, name) = quoted_rest(i).map_err(|_| bad("unterminated file name"))?;
            (i, Some(name.to_string()))
        }
        Err(_) => match end(i) {
            Ok((i, _)) => (i, None),
            Err(_) => return Err(bad("file name must be quoted")),
        },
    };
    let offset_sectors = match offset_word(i) {
        Ok((_, Some(w))) => w.parse().map_err(|_| bad("bad extent offset"))?,
        _ => 0,
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
            let line = if grammar::blank(raw).is_ok() {
                Line::Blank
            } else if grammar::comment(raw).is_ok() {
                Line::Comment(raw.to_string())
            } else if grammar::is_extent(raw) {
                extents += 1;
                if extents > MAX_EXTENTS {
                    return Err(Error::corrupt(
                        path,
                        format!("more than {MAX_EXTENTS} extents"),
                    ));
                }
                Line::Extent(parse_extent_line(path, i + 1, raw.trim())?)
            } else if let Some((key, value)) = key_value(raw) {
                Line::Pair {
                    key: key.to_string(),
                    value: value.to_string(),
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
