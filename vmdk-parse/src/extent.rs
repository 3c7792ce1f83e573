//! Extents: the pieces a link's virtual disk is made of, and how each maps its bytes.
//!
//! Every extent kind answers one question, [`ExtentMap::resolve`]: for a range of its own
//! virtual bytes, which sub-ranges are unallocated (fall through to the parent link), zero,
//! stored plainly at some file offset, or inside a compressed grain. Reading, `map`, `cat` and
//! `check` are all built on that one answer, so the kinds share everything else.

use crate::error::Result;
use crate::io::DiskFile;

/// Index of a file in [`crate::Disk::files`].
pub type FileId = u32;

/// Where the bytes of a piece of an extent are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Not stored in this link: read from the parent link, or zeros at the base of the chain.
    Unallocated,
    /// Reads as zeros whatever the parent holds (zero grains, ZERO extents, holes in flat files).
    Zero,
    /// Stored as is, starting at byte `offset` of file `file`.
    Data { file: FileId, offset: u64 },
    /// Inside a compressed grain (streamOptimized): the grain record starts at byte `record` of
    /// `file`, the grain inflates to `grain_bytes`, and the piece starts `skip` bytes into it.
    Compressed {
        file: FileId,
        record: u64,
        grain_index: u64,
        grain_bytes: u32,
        skip: u32,
    },
}

impl Location {
    /// Whether `next`, placed right after `len` bytes of `self`, continues it: both unallocated,
    /// both zero, or data of the same file at the following offset. Compressed grains never
    /// merge (each is inflated on its own).
    pub fn continued_by(&self, len: u64, next: &Location) -> bool {
        match (self, next) {
            (Location::Unallocated, Location::Unallocated) | (Location::Zero, Location::Zero) => {
                true
            }
            (
                Location::Data {
                    file: f1,
                    offset: o1,
                },
                Location::Data {
                    file: f2,
                    offset: o2,
                },
            ) => f1 == f2 && o1 + len == *o2,
            _ => false,
        }
    }
}

/// Collects resolved pieces, merging neighbours that continue each other.
///
/// Offsets are relative to the extent that pushes them.
#[derive(Default)]
pub struct PieceSink {
    pub pieces: Vec<(u64, u64, Location)>,
}

impl PieceSink {
    pub fn push(&mut self, offset: u64, len: u64, loc: Location) {
        if len == 0 {
            return;
        }
        if let Some((lo, ll, lloc)) = self.pieces.last_mut() {
            if *lo + *ll == offset && lloc.continued_by(*ll, &loc) {
                *ll += len;
                return;
            }
        }
        self.pieces.push((offset, len, loc));
    }
}

/// What every extent kind implements.
pub trait ExtentMap {
    /// Push the pieces of `[offset, offset + len)` (extent-relative bytes, within the extent)
    /// into `sink`, in order and covering the range exactly.
    ///
    /// `want_holes` asks plain-data extents to report holes of sparse host files as zero
    /// (for `map` and `cat`); plain reads pass `false` and skip the extra system calls.
    fn resolve(
        &self,
        files: &[DiskFile],
        offset: u64,
        len: u64,
        want_holes: bool,
        sink: &mut PieceSink,
    ) -> Result<()>;
}

/// A plain data extent: FLAT and VMFS extents, and raw images. `start` is the byte in the file
/// where the extent's first byte is.
#[derive(Debug)]
pub struct FlatExtent {
    pub file: FileId,
    pub start: u64,
}

impl ExtentMap for FlatExtent {
    fn resolve(
        &self,
        files: &[DiskFile],
        offset: u64,
        len: u64,
        want_holes: bool,
        sink: &mut PieceSink,
    ) -> Result<()> {
        let data = |o: u64| Location::Data {
            file: self.file,
            offset: self.start + o,
        };
        if !want_holes {
            sink.push(offset, len, data(offset));
            return Ok(());
        }
        let f = &files[self.file as usize];
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let phys = self.start + pos;
            let found = match f.file.os_file() {
                Some(file) => seek_data_hole(file, phys),
                // A file of a FileSource: all data, which is always correct.
                None => Some((phys, u64::MAX)),
            };
            match found {
                // No data at or after `phys`: the rest is a hole.
                None => {
                    sink.push(pos, end - pos, Location::Zero);
                    break;
                }
                Some((data_start, hole_start)) => {
                    let data_at = (data_start - self.start).clamp(pos, end);
                    sink.push(pos, data_at - pos, Location::Zero);
                    let data_end = hole_start.saturating_sub(self.start).clamp(data_at, end);
                    sink.push(data_at, data_end - data_at, data(data_at));
                    if data_end == pos {
                        // The file system gave no progress; treat the rest as data.
                        sink.push(pos, end - pos, data(pos));
                        break;
                    }
                    pos = data_end;
                }
            }
        }
        Ok(())
    }
}

/// The next data region at or after `at`: `(data_start, hole_start)`, or `None` when only a
/// hole follows. File systems without SEEK_DATA report all data, which is always correct.
fn seek_data_hole(file: &std::fs::File, at: u64) -> Option<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let data = match seek(file, SeekFrom::Data(at)) {
        Ok(d) => d,
        Err(rustix::io::Errno::NXIO) => return None,
        Err(_) => return Some((at, u64::MAX)),
    };
    let hole = seek(file, SeekFrom::Hole(data)).unwrap_or(u64::MAX);
    Some((data, hole))
}

/// A ZERO extent: reads as zeros, has no file.
#[derive(Debug)]
pub struct ZeroExtent;

impl ExtentMap for ZeroExtent {
    fn resolve(
        &self,
        _: &[DiskFile],
        offset: u64,
        len: u64,
        _: bool,
        sink: &mut PieceSink,
    ) -> Result<()> {
        sink.push(offset, len, Location::Zero);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_merges_only_continuations() {
        let mut s = PieceSink::default();
        s.push(0, 10, Location::Zero);
        s.push(10, 5, Location::Zero);
        s.push(
            15,
            5,
            Location::Data {
                file: 0,
                offset: 100,
            },
        );
        s.push(
            20,
            5,
            Location::Data {
                file: 0,
                offset: 105,
            },
        );
        s.push(
            25,
            5,
            Location::Data {
                file: 0,
                offset: 200,
            },
        );
        s.push(30, 0, Location::Unallocated);
        s.push(30, 5, Location::Unallocated);
        assert_eq!(
            s.pieces,
            vec![
                (0, 15, Location::Zero),
                (
                    15,
                    10,
                    Location::Data {
                        file: 0,
                        offset: 100
                    }
                ),
                (
                    25,
                    5,
                    Location::Data {
                        file: 0,
                        offset: 200
                    }
                ),
                (30, 5, Location::Unallocated),
            ]
        );
    }
}

/// Grain tables read on demand and kept, up to a bound, by their directory index. Shared by the
/// hosted sparse, COWD and seSparse readers: tables are small and reads walk them in order, so
/// clearing the whole cache when it is full is as good as LRU here and far simpler.
#[derive(Debug)]
pub struct TableCache<T> {
    tables: std::sync::Mutex<std::collections::HashMap<u64, std::sync::Arc<[T]>>>,
    max_tables: usize,
}

impl<T> TableCache<T> {
    pub fn new(max_tables: usize) -> TableCache<T> {
        TableCache {
            tables: std::sync::Mutex::new(std::collections::HashMap::new()),
            max_tables,
        }
    }

    /// The table at directory index `index`, loaded with `load` when not cached.
    pub fn get_or_load(
        &self,
        index: u64,
        load: impl FnOnce() -> Result<Vec<T>>,
    ) -> Result<std::sync::Arc<[T]>> {
        // A panic while holding the lock cannot leave a half-inserted table: take it anyway.
        let lock = || self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = lock().get(&index) {
            return Ok(t.clone());
        }
        let t: std::sync::Arc<[T]> = load()?.into();
        let mut cache = lock();
        if cache.len() >= self.max_tables {
            cache.clear();
        }
        cache.insert(index, t.clone());
        Ok(t)
    }

    /// Tables held now.
    pub fn len(&self) -> usize {
        self.tables.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
