//! File access with errors that carry the path, and bounded reads.
//!
//! A disk's files are ordinary files by default; a [`FileSource`] given in
//! [`OpenOptions::source`](crate::OpenOptions::source) supplies them instead (vrepo's mount reads
//! a stored entry's files in place, without writing them out).

use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file's bytes, read by offset (`pread`), from any thread.
pub trait ReadAt: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

/// Where the files of a disk come from when they are not the file system's: `open` gets the
/// path of a file as the chain and descriptors name it, relative to the root the disk is opened
/// under (`..` and `.` already applied), and returns its bytes and length. The path policy still
/// applies: no name may leave the root.
pub trait FileSource: Send + Sync + std::fmt::Debug {
    fn open(&self, path: &Path) -> std::io::Result<(Arc<dyn ReadAt>, u64)>;
}

/// The bytes of a [`DiskFile`].
pub enum Backing {
    File(File),
    Source(Arc<dyn ReadAt>),
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backing::File(file) => file.fmt(f),
            Backing::Source(_) => f.write_str("Source"),
        }
    }
}

impl Backing {
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        match self {
            Backing::File(f) => FileExt::read_exact_at(f, buf, offset),
            Backing::Source(s) => {
                while !buf.is_empty() {
                    match s.read_at(buf, offset) {
                        Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        Ok(n) => {
                            buf = &mut buf[n..];
                            offset += n as u64;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// The operating system's file, for what only it can answer (`SEEK_DATA`).
    pub fn os_file(&self) -> Option<&File> {
        match self {
            Backing::File(f) => Some(f),
            Backing::Source(_) => None,
        }
    }
}

/// An open file of a disk (a descriptor, an extent, a link) with its path and size at open time.
#[derive(Debug)]
pub struct DiskFile {
    pub path: PathBuf,
    pub file: Backing,
    pub len: u64,
}

impl DiskFile {
    pub fn open(path: &Path) -> Result<DiskFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::corrupt(path, "is a directory, not a disk"));
        }
        Ok(DiskFile {
            path: path.to_path_buf(),
            len: meta.len(),
            file: Backing::File(file),
        })
    }

    /// Open `path` from `source`.
    pub fn open_from(source: &dyn FileSource, path: &Path) -> Result<DiskFile> {
        let (file, len) = source.open(path).map_err(|e| Error::io(path, e))?;
        Ok(DiskFile {
            path: path.to_path_buf(),
            len,
            file: Backing::Source(file),
        })
    }

    /// Read exactly `buf.len()` bytes at `offset`; a short file is corruption, not zeros.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "{what} at byte {offset} ({} bytes) lies past the end of the file ({} bytes)",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::corrupt(
                    &self.path,
                    format!("{what} at byte {offset}: file shrank while reading"),
                ),
                _ => Error::io(&self.path, e),
            })
    }

    /// Read `len` bytes at `offset` into a new buffer, after checking they lie in the file.
    /// `len` is bounded by the file size, so a hostile field cannot force a huge allocation.
    pub fn read_vec(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "{what} at byte {offset} ({len} bytes) lies past the end of the file ({} bytes)",
                    self.len
                ),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact_at(&mut buf, offset, what)?;
        Ok(buf)
    }
}
