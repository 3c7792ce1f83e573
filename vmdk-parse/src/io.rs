//! File access with errors that carry the path, and bounded reads.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An open file of a disk (a descriptor, an extent, a link) with its path and size at open time.
#[derive(Debug)]
pub struct DiskFile {
    pub path: PathBuf,
    pub file: File,
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
            file,
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
