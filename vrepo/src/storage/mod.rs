//! Where a repository's bytes live: one interface, [`Storage`], over a local folder
//! ([`local::Local`]) and an S3-compatible bucket ([`s3::S3`]).
//!
//! Keys are `/`-separated paths relative to the repository's root (`entries/E7/delta.vdelta`),
//! the same on both: a local repository's files are its keys. The repository code (save,
//! build, verify, copy) reads and writes through this trait and does not know which it runs
//! on. What differs in kind, not in bytes, is behind the trait too: how an entry's files are
//! staged and published ([`Storage::stage`]) and how the repository is locked
//! (`crate::lock`).

pub mod late_hash;
pub mod lease;
pub mod local;
pub mod s3;

use crate::error::{Error, Result};
use crate::manifest::{Entry, Stored};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use vmdk_parse::ReadAt;

/// Where a repository is, as `-r` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A folder.
    Local(PathBuf),
    /// `s3:http://HOST:PORT/BUCKET/PREFIX` (or `https://`), as restic spells it.
    S3(s3::S3Url),
}

impl Location {
    /// Parse what `-r` gives: `s3:URL`, else a path.
    pub fn parse(s: &str) -> Result<Location> {
        match s.strip_prefix("s3:") {
            Some(url) => Ok(Location::S3(s3::S3Url::parse(url)?)),
            None => Ok(Location::Local(PathBuf::from(s))),
        }
    }

    /// Open the storage there (nothing is read yet).
    pub fn storage(&self) -> Result<Arc<dyn Storage>> {
        Ok(match self {
            Location::Local(p) => Arc::new(local::Local::new(p)),
            Location::S3(u) => Arc::new(s3::S3::connect(u)?),
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(u) => write!(f, "s3:{u}"),
        }
    }
}

/// One object as a listing gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// When it was last written, by the store's clock (nanoseconds since 1970), when known.
    pub modified_ns: Option<i128>,
}

/// A new object being written in order. Nothing of it is visible under its key before
/// [`Upload::finish`]; dropped unfinished, it is given up (and what was sent is removed).
pub trait Upload: vdiff::diff::DeltaOut {
    /// Where it goes, for messages (a path, or `s3:URL/KEY`).
    fn describe(&self) -> String;
    /// Make it whole and durable; its size and BLAKE3, as `entry.json` records them.
    fn finish(self: Box<Self>) -> Result<Stored>;
}

/// An entry's files being written, before the entry exists ([`Storage::stage`]).
pub trait Stage: Send {
    /// A new file of the entry.
    fn upload(&mut self, file: &str) -> Result<Box<dyn Upload>>;
    /// Publish the entry: its `entry.json` (and `entry.json.b3`) are written last, with the
    /// name chosen here or at [`Storage::stage`] (`entry.name` and `entry.number` are set).
    /// Tags are checked free just before. Once the entry is visible, a failure of what
    /// follows (the `last-entry` record) is returned as a warning, not an error.
    fn publish(self: Box<Self>, entry: &mut Entry, n: &dyn Numbering) -> Result<Option<String>>;
}

/// What a [`Stage`] needs of the repository to name an entry.
pub trait Numbering {
    /// The highest entry number given so far.
    fn last_number(&self) -> Result<u64>;
    /// Record that number `n` was given.
    fn bump_last(&self, n: u64) -> Result<()>;
    /// Refuse `entry` if one of its tags is on another entry of its VM.
    fn check_tags(&self, entry: &Entry) -> Result<()>;
}

/// Reads and writes of a repository's objects.
pub trait Storage: Send + Sync {
    /// The repository's location, for messages.
    fn location(&self) -> String;
    /// The folder, for a local repository.
    fn local_root(&self) -> Option<&Path>;
    /// A whole object of at most `cap` bytes; `None` when it does not exist. Larger is
    /// corrupt.
    fn get(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>>;
    /// An object's size; `None` when it does not exist.
    fn size(&self, key: &str) -> Result<Option<u64>>;
    /// Read an object by ranges, and its size. A missing object is [`Error::Missing`].
    fn open(&self, key: &str) -> Result<(Arc<dyn ReadAt>, u64)>;
    /// [`Storage::open`] for a read by a planned apply: with a [`vpatch::ReadPlan`] that a
    /// store read by requests uses to fetch the planned ranges ahead (none for a folder).
    fn open_planned(&self, key: &str) -> Result<(Arc<dyn ReadAt>, u64, Option<vpatch::ReadPlan>)> {
        let (r, len) = self.open(key)?;
        Ok((r, len, None))
    }
    /// Write a whole object, replacing one there: a reader sees the old bytes or the new.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Every object whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>>;
    /// Remove an object; one that is not there is fine.
    fn delete(&self, key: &str) -> Result<()>;
    /// Start writing a new entry's files (a store that names the entry now, rather than at
    /// [`Stage::publish`], asks `n`).
    fn stage(&self, n: &dyn Numbering) -> Result<Box<dyn Stage>>;
    /// Give up a multipart upload left by a dead save (object storage; nothing for a
    /// folder). Errors are ignored: an upload already gone is fine.
    fn abort_upload(&self, _key: &str, _id: &str) {}
    /// Bytes sent to the store so far by this process (object storage; 0 for a folder).
    fn bytes_sent(&self) -> u64 {
        0
    }
    /// Bytes received from the store so far by this process (object storage; 0 for a folder).
    fn bytes_received(&self) -> u64 {
        0
    }
}

/// Size and BLAKE3 of bytes in memory.
pub fn stored_of_bytes(bytes: &[u8]) -> Stored {
    Stored {
        size: bytes.len() as u64,
        blake3: blake3::hash(bytes).to_hex().to_string(),
    }
}

/// Write all of `bytes` as an upload of `file` in `stage`, and finish it.
pub fn upload_bytes(stage: &mut dyn Stage, file: &str, bytes: &[u8]) -> Result<Stored> {
    let mut up = stage.upload(file)?;
    up.write_all(bytes).map_err(|e| Error::Io {
        what: file.into(),
        source: e,
    })?;
    up.finish()
}

/// A reader from the start of an object read by ranges (see [`Storage::open`]).
pub struct Cursor {
    inner: Arc<dyn ReadAt>,
    len: u64,
    pos: u64,
}

impl Cursor {
    pub fn new(inner: Arc<dyn ReadAt>, len: u64) -> Cursor {
        Cursor { inner, len, pos: 0 }
    }
}

impl std::io::Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let n = buf
            .len()
            .min((self.len - self.pos).min(usize::MAX as u64) as usize);
        let k = self.inner.read_at(&mut buf[..n], self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}
