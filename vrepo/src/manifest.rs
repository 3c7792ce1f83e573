//! `entry.json`: what an entry is (schema `vrepo.entry/1`, documented in `docs/vrepo.md`).
//!
//! Read as hostile input: unknown fields are refused, every path is checked before use
//! ([`check_stored_path`]), and the volume layout is checked against the sizes it claims
//! ([`Entry::validate`]).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

pub const ENTRY_SCHEMA: &str = "vrepo.entry/2";
/// Entries of older versions: no VM name (their VM is named after their working area's
/// folder) and no `based_on`. Read as before, never written.
pub const ENTRY_SCHEMA_V1: &str = "vrepo.entry/1";
/// Files start at multiples of this in an entry's volume (the image digest's chunk size), so a
/// file's chunks, and so its block digests, do not depend on what precedes it.
pub const FILE_ALIGN: u64 = vdiff::format::CHUNK_BYTES;
/// Largest `entry.json` read (a VM has tens of files; this allows hundreds of thousands).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Full,
    Incremental,
    Differential,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
            Mode::Differential => "differential",
        }
    }
}

/// The identity of the VM an entry holds, from its `.vmx`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmIdentity {
    /// The VM the entry belongs to (`save --vm`, by default the working area's folder name).
    /// Absent in `vrepo.entry/1` entries: see [`Entry::vm_name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The `.vmx`'s path in the working area.
    pub vmx: String,
    pub display_name: Option<String>,
    pub guest_os: Option<String>,
    pub uuid_bios: Option<String>,
    pub uuid_location: Option<String>,
}

/// One stored file of the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the working area, `/`-separated, no `.` or `..` components.
    pub path: String,
    /// The role vmx-parse gives it (`config`, `disk-extent`, `nvram`, ...).
    pub role: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Permission bits.
    pub mode: u32,
    /// Where the file's bytes start in the entry's volume (a multiple of [`FILE_ALIGN`]).
    pub offset: u64,
    /// For a disk link that carries a descriptor: its CID, as 8 hex digits.
    pub cid: Option<String>,
    /// BLAKE3 over the file's size and the digests of its 1 MiB chunks (hex).
    pub digest: String,
    /// Not the file on disk but what `save --at-snapshot` made of it (the `.vmx` with its
    /// disks pointing at the snapshot's links).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synthesized: bool,
}

/// Why a save's parent is an entry of another VM: the first save of a VM with no entry of its
/// own, based on the stored entry sharing the most content with it (a clone of a template).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasedOn {
    /// The entry chosen (the parent, or with `--differential` the descendant of the parent
    /// that was measured).
    pub entry: String,
    /// Its VM.
    pub vm: String,
    /// Percent of the sampled non-zero 1 MiB chunks of the working area found in it.
    pub shared_percent: f64,
    /// Bytes of the working area read to choose.
    pub sampled_bytes: u64,
}

impl Eq for BasedOn {}

/// A file of the working area that was not stored, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// One of the entry's own stored files, with its size and BLAKE3 (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub size: u64,
    pub blake3: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredFiles {
    /// The delta (vdiff format, with its index) from the parent's volume, or from nothing.
    pub delta: Stored,
    /// The volume's block digests: a vdiff signature, zstd-compressed.
    pub signature: Stored,
    /// The volume's 1 MiB chunk digests, 32 bytes each.
    pub chunks: Stored,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub size: u64,
    /// The vdiff image digest of the volume (hex).
    pub digest: String,
    pub block_size: u32,
}

/// What save did: bytes read from the working area, and what the delta holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveStats {
    /// Bytes of working-area files read (files unchanged since the parent are not read).
    pub read_bytes: u64,
    /// Bytes of files not read because their size, mtime and CID matched the parent's.
    pub unchanged_file_bytes: u64,
    /// Volume bytes that differ from the parent's at the same place.
    pub changed_bytes: u64,
    /// Bytes stored as new data (before compression).
    pub literal_bytes: u64,
    /// Bytes found elsewhere in the parent or earlier in this entry (moved, duplicated).
    pub copied_bytes: u64,
}

/// An entry's `entry.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub schema: String,
    /// `E<number>`.
    pub name: String,
    pub number: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub message: String,
    pub mode: Mode,
    pub parent: Option<String>,
    pub tags: Vec<String>,
    /// The working area it was saved from (absolute).
    pub source: String,
    /// With `save --at-snapshot`: the VMware snapshot saved (its display name, or uid).
    pub at_snapshot: Option<String>,
    pub vm: VmIdentity,
    pub volume: Volume,
    pub files: Vec<FileEntry>,
    pub skipped: Vec<Skipped>,
    pub stored: StoredFiles,
    pub stats: SaveStats,
    /// Set when the save chose its parent among other VMs' entries by shared content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<BasedOn>,
}

impl Entry {
    /// The VM this entry belongs to: the name it was saved with, or for an entry of an older
    /// version the name of the folder it was saved from.
    pub fn vm_name(&self) -> &str {
        match &self.vm.name {
            Some(n) => n,
            None => folder_name(&self.source),
        }
    }

    /// Bytes this entry stores (its delta, signature and chunk digests).
    pub fn stored_bytes(&self) -> u64 {
        self.stored.delta.size + self.stored.signature.size + self.stored.chunks.size
    }

    /// The sum of the VM's file sizes.
    pub fn vm_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Check what a hostile or damaged `entry.json` could get wrong: the schema, paths, the
    /// volume layout (files in order, aligned, inside the volume, not overlapping).
    pub fn validate(&self, dir_name: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Corrupt(format!("entry {dir_name}: entry.json: {m}")));
        match self.schema.as_str() {
            ENTRY_SCHEMA => {
                let Some(n) = &self.vm.name else {
                    return bad("no VM name".into());
                };
                check_vm_name(n).map_err(|m| {
                    Error::Corrupt(format!("entry {dir_name}: entry.json: VM name: {m}"))
                })?;
            }
            ENTRY_SCHEMA_V1 if self.vm.name.is_none() && self.based_on.is_none() => {}
            _ => {
                return bad(format!(
                    "schema {:?}, expected {ENTRY_SCHEMA:?} (or {ENTRY_SCHEMA_V1:?})",
                    self.schema
                ))
            }
        }
        if self.name != dir_name || parse_entry_name(&self.name) != Some(self.number) {
            return bad(format!("names itself {:?}", self.name));
        }
        if let Some(p) = &self.parent {
            match parse_entry_name(p) {
                Some(n) if n < self.number => {}
                _ => return bad(format!("parent {p:?} is not an earlier entry")),
            }
        }
        if (self.mode == Mode::Full) != self.parent.is_none() {
            return bad("a full entry has no parent, a partial entry has one".into());
        }
        let bs = self.volume.block_size;
        if !bs.is_power_of_two() || !(4096..=(1 << 20)).contains(&bs) {
            return bad(format!("block size {bs}"));
        }
        let mut end = 0u64;
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            check_stored_path(&f.path)
                .map_err(|m| Error::Corrupt(format!("entry {dir_name}: stored path: {m}")))?;
            if !seen.insert(f.path.to_ascii_lowercase()) {
                return bad(format!("{} is listed twice", f.path));
            }
            if f.offset % FILE_ALIGN != 0 || f.offset < end {
                return bad(format!("{} is misplaced in the volume", f.path));
            }
            end = match f.offset.checked_add(f.size) {
                Some(e) if e <= self.volume.size => e,
                _ => return bad(format!("{} runs past the volume", f.path)),
            };
        }
        // A file cannot also be a folder on the way to another file (`a` and `a/b`).
        for f in &self.files {
            let lower = f.path.to_ascii_lowercase();
            let mut at = 0;
            while let Some(k) = lower[at..].find('/') {
                at += k;
                if seen.contains(&lower[..at]) {
                    return bad(format!(
                        "{} is a file and a folder of {}",
                        &f.path[..at],
                        f.path
                    ));
                }
                at += 1;
            }
        }
        if self.volume.size > vdiff::format::MAX_IMAGE_BYTES {
            return bad("volume too large".into());
        }
        Ok(())
    }
}

/// The last component of a `/`-separated path (the folder name of a working area).
pub fn folder_name(path: &str) -> &str {
    let t = path.trim_end_matches('/');
    match t.rsplit_once('/') {
        Some((_, n)) if !n.is_empty() => n,
        _ if !t.is_empty() => t,
        _ => "/",
    }
}

/// A VM name: what `save --vm` takes and a working area's folder name must be to serve as
/// one. Not empty, at most 255 bytes, no `/`, no control characters, not an entry name
/// (`E7`). Other characters, `:` included, are fine: a selector `VM:latest` splits at its
/// last `:`, and tags and `latest~N` hold none.
pub fn check_vm_name(n: &str) -> std::result::Result<(), String> {
    if n.is_empty() || n.len() > 255 {
        return Err(format!("{n:?} is empty or longer than 255 bytes"));
    }
    if n.contains('/') || n.chars().any(char::is_control) {
        return Err(format!("{n:?} holds a / or a control character"));
    }
    if parse_entry_name(n).is_some() {
        return Err(format!("{n:?} is an entry name"));
    }
    Ok(())
}

/// `E12` → 12.
pub fn parse_entry_name(s: &str) -> Option<u64> {
    let digits = s.strip_prefix('E')?;
    if digits.is_empty() || digits.len() > 18 || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// A stored path may only name a place inside the working area: relative, `/`-separated
/// normal components, no `.`/`..`, no empty component, no NUL or backslash.
pub fn check_stored_path(p: &str) -> std::result::Result<(), String> {
    if p.is_empty() || p.len() > 4096 {
        return Err(format!("{p:?} is empty or too long"));
    }
    if p.starts_with('/') || p.contains('\\') || p.contains('\0') {
        return Err(format!(
            "{p:?} is not a relative path inside the working area"
        ));
    }
    for c in p.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("{p:?} is not a plain path inside the working area"));
        }
    }
    Ok(())
}

/// Lowercase hex.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits → 32 bytes.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(parse_entry_name("E1"), Some(1));
        assert_eq!(parse_entry_name("E120"), Some(120));
        for bad in [
            "E",
            "E0",
            "E01",
            "e1",
            "E1x",
            "E-1",
            "1",
            "E99999999999999999999",
        ] {
            assert_eq!(parse_entry_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn stored_paths() {
        for ok in ["vm.vmx", "disks/a.vmdk", "a b/c"] {
            assert!(check_stored_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "a\0b",
            "a/",
        ] {
            assert!(check_stored_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vm_names() {
        for ok in ["web", "tmpl A", "db:prod", "E", "E0", "latest", "ünï"] {
            assert!(check_vm_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in ["", "a/b", "a\nb", "a\tb", "E7", long.as_str()] {
            assert!(check_vm_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(folder_name("/vmfs/web"), "web");
        assert_eq!(folder_name("/vmfs/web/"), "web");
        assert_eq!(folder_name("web"), "web");
        assert_eq!(folder_name("/"), "/");
    }

    #[test]
    fn hex_round_trip() {
        let d: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        assert_eq!(unhex32(&hex(&d)), Some(d));
        assert_eq!(unhex32("zz"), None);
    }
}
