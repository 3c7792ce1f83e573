//! # vmx-parse
//!
//! A lossless model of VMware's dictionary files (`.vmx`, `.vmsd`, `.vmxf`-style
//! `key = "value"` files), a structured view of a VM's configuration and snapshot tree, and the
//! inventory of the files that make up a VM. vrepo reads VMs through it; site scripts change
//! settings through the `vmx-parse` binary without breaking the file.
//!
//! ```no_run
//! use std::path::Path;
//! let mut doc = vmx_parse::Document::open(Path::new("vm/vm.vmx"))?;
//! let vm = vmx_parse::VmConfig::from_document(&doc);
//! for d in &vm.disks {
//!     println!("{} {} independent={}", d.node, d.file_name, d.independent);
//! }
//! doc.set("annotation", "backed up \"today\"")?; // stored as |22today|22
//! std::fs::write("vm/vm.vmx.new", doc.to_bytes()).unwrap();
//! # Ok::<(), vmx_parse::Error>(())
//! ```
//!
//! ## Design
//! - [`Document`] is the file as an ordered list of lines, each keeping its original bytes:
//!   writing an unchanged document gives back the input byte for byte (CRLF, a missing final
//!   newline, odd spacing, windows-1252 or Shift_JIS bytes). Edits touch only the lines they
//!   concern. Keys are case-insensitive, the last duplicate wins, the map is flat.
//! - [`VmConfig`] and [`SnapshotTree`] are read-only views over a document.
//! - [`inventory::inventory`] lists a VM's files, following disk chains with
//!   `vmdk_parse::Disk`, under the same path policy as vmdk-parse.
//! - Hostile input: files over 16 MiB, lines over 1 MiB, more than 262144 lines, NUL bytes
//!   are errors; lines that are not `key = value` (no `=`, no key) are kept raw and reported
//!   as [`Warning`]s; a value without its closing quote is read to the end of its line, with a
//!   warning. Bytes invalid in the file's encoding are not an error (VMware runs such VMs, and
//!   a backup stores what is there): the line keeps its bytes, is read with U+FFFD, and is
//!   reported as a [`Problem`]. Nothing panics (fuzzed: `fuzz/`).
//! - The library never prints and never exits; errors are typed ([`Error`], [`ErrorKind`]).
//!
//! Syntax decisions and the JSON schemas of the binary are documented in `docs/vmx-parse.md`.

pub mod document;
pub mod error;
pub mod escape;
pub mod inventory;
pub mod report;
pub mod view;
pub mod vmsd;

pub use document::{read_capped, Document, Duplicate, Eol, Line, LineKind, Pair, Problem, Warning};
pub use error::{Error, ErrorKind, Result};
pub use inventory::{inventory, FileRecord, FilesOptions, Inventory, Role};
pub use view::VmConfig;
pub use vmsd::SnapshotTree;

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` so that a crash never leaves half a file: a temporary file in the
/// same folder, flushed, given the permissions of the file it replaces (or, for a new file,
/// those of `like`, the file it was made from; the temporary file's 0600 otherwise), then
/// renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8], like: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".vmx-parse-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| Error::io(tmp.path(), e))?;
    if let Ok(meta) = std::fs::metadata(path).or_else(|_| std::fs::metadata(like)) {
        tmp.as_file()
            .set_permissions(meta.permissions())
            .map_err(|e| Error::io(tmp.path(), e))?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// At most 80 characters of a text, for messages about hostile lines.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}
