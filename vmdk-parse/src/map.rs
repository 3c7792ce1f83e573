//! The allocation map: contiguous ranges of the disk that are data, zero or unallocated, and
//! which link of the chain holds each.
//!
//! The map is produced window by window, so its memory does not grow with the disk: a 3 TiB
//! disk holding a few MiB costs a few grain-table reads per 32 MiB window.

use crate::disk::{Disk, Piece};
use crate::error::Result;
use crate::extent::{FileId, Location};
use std::collections::VecDeque;

/// How much virtual disk one step of the map resolves.
const WINDOW_BYTES: u64 = 64 << 20;

/// The state of a range, as `map` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Stored bytes (possibly compressed).
    Data,
    /// Reads as zeros and is allocated in the link that says so (zero grain, ZERO extent, a
    /// hole in a flat file).
    Zero,
    /// Not allocated anywhere in the chain; reads as zeros.
    Unallocated,
}

/// One range of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRange {
    pub offset: u64,
    pub length: u64,
    pub state: State,
    /// Link index holding the range (0 = the opened disk); for unallocated ranges, the base.
    pub depth: u32,
    /// File holding the bytes, for data and for zero ranges inside a file.
    pub file: Option<FileId>,
    /// Where the bytes start in `file`, for uncompressed data.
    pub file_offset: Option<u64>,
    pub compressed: bool,
}

impl MapRange {
    fn from_piece(p: &Piece) -> MapRange {
        let (state, file, file_offset, compressed) = match p.loc {
            Location::Unallocated => (State::Unallocated, None, None, false),
            Location::Zero => (State::Zero, None, None, false),
            Location::Data { file, offset } => (State::Data, Some(file), Some(offset), false),
            Location::Compressed { file, .. } => (State::Data, Some(file), None, true),
        };
        MapRange {
            offset: p.offset,
            length: p.len,
            state,
            depth: p.depth,
            file,
            file_offset,
            compressed,
        }
    }

    /// Whether `next` continues this range (same state, link and file, contiguous offsets).
    fn continues(&self, next: &MapRange) -> bool {
        self.offset + self.length == next.offset
            && self.state == next.state
            && self.depth == next.depth
            && self.file == next.file
            && self.compressed == next.compressed
            && match (self.file_offset, next.file_offset) {
                (Some(a), Some(b)) => a + self.length == b,
                (None, None) => true,
                _ => false,
            }
    }
}

/// Iterator over the merged map ranges of a disk.
pub struct MapIter<'a> {
    disk: &'a Disk,
    pos: u64,
    pieces: Vec<Piece>,
    ready: VecDeque<MapRange>,
    pending: Option<MapRange>,
    failed: bool,
}

impl<'a> MapIter<'a> {
    pub(crate) fn new(disk: &'a Disk) -> MapIter<'a> {
        MapIter {
            disk,
            pos: 0,
            pieces: Vec::new(),
            ready: VecDeque::new(),
            pending: None,
            failed: false,
        }
    }

    fn fill(&mut self) -> Result<()> {
        let cap = self.disk.capacity();
        while self.ready.is_empty() && self.pos < cap {
            let len = WINDOW_BYTES.min(cap - self.pos);
            self.pieces.clear();
            self.disk.resolve(self.pos, len, true, &mut self.pieces)?;
            self.pos += len;
            for p in &self.pieces {
                let r = MapRange::from_piece(p);
                match &mut self.pending {
                    Some(cur) if cur.continues(&r) => cur.length += r.length,
                    _ => {
                        if let Some(done) = self.pending.replace(r) {
                            self.ready.push_back(done);
                        }
                    }
                }
            }
        }
        if self.ready.is_empty() && self.pos >= cap {
            if let Some(done) = self.pending.take() {
                self.ready.push_back(done);
            }
        }
        Ok(())
    }
}

impl Iterator for MapIter<'_> {
    type Item = Result<MapRange>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Err(e) = self.fill() {
            self.failed = true;
            return Some(Err(e));
        }
        self.ready.pop_front().map(Ok)
    }
}

/// Byte totals of a map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub unallocated_bytes: u64,
}

impl Totals {
    pub fn add(&mut self, r: &MapRange) {
        match r.state {
            State::Data => self.data_bytes += r.length,
            State::Zero => self.zero_bytes += r.length,
            State::Unallocated => self.unallocated_bytes += r.length,
        }
    }
}
