//! Random access to what a chain of deltas produces, without producing it.
//!
//! A [`ChainReader`] answers `read_at(offset, buf)` for the target of a chain whose first delta
//! is full: the range is resolved through the chain's record tables (a copy-source of delta k
//! is looked up in delta k-1, a copy-target in the same delta's earlier records), and only the
//! literal records the range needs are read, each checked against its checksum before a byte
//! of it is used. Inflated records are kept in a [`RecordCache`] of bounded size that several
//! readers share (vrepo's mount: every file of every entry), so neighbouring reads and entries
//! whose chains share deltas inflate a record once.

use crate::{read_literal, resolve, Delta, DeltaInput, Error, Leaf, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use vdiff::format;

/// Inflated literal records, shared by readers, at most `budget` bytes (the least recently used
/// record goes first). Keys are a delta's name and the record's place in it, so readers must
/// give each distinct delta file a distinct name.
pub struct RecordCache {
    budget: usize,
    inner: Mutex<CacheInner>,
}

/// A record: its delta's name and its index there.
type Key = (Arc<str>, usize);

#[derive(Default)]
struct CacheInner {
    /// Each record's bytes and when it was last used.
    map: HashMap<Key, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    tick: u64,
    hits: u64,
    misses: u64,
}

impl RecordCache {
    pub fn new(budget: usize) -> RecordCache {
        RecordCache {
            budget,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A reader that panicked left nothing half-done that matters: the map stays usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &Key) -> Option<Arc<Vec<u8>>> {
        let mut c = self.lock();
        c.tick += 1;
        let tick = c.tick;
        match c.map.get_mut(key) {
            Some((bytes, used)) => {
                *used = tick;
                let b = bytes.clone();
                c.hits += 1;
                Some(b)
            }
            None => {
                c.misses += 1;
                None
            }
        }
    }

    fn put(&self, key: Key, bytes: Arc<Vec<u8>>) {
        if bytes.len() > self.budget {
            return;
        }
        let mut c = self.lock();
        c.tick += 1;
        let tick = c.tick;
        let len = bytes.len();
        if let Some((old, _)) = c.map.insert(key, (bytes, tick)) {
            c.bytes -= old.len();
        }
        c.bytes += len;
        while c.bytes > self.budget {
            let Some(victim) = c
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((old, _)) = c.map.remove(&victim) {
                c.bytes -= old.len();
            }
        }
    }

    /// (records found, records inflated) since the cache was made.
    pub fn stats(&self) -> (u64, u64) {
        let c = self.lock();
        (c.hits, c.misses)
    }

    /// Bytes of inflated records held now.
    pub fn held(&self) -> usize {
        self.lock().bytes
    }
}

/// What a range of the target is made of, for `SEEK_DATA`/`SEEK_HOLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// Bytes from a literal record.
    Data,
    /// Zeros: a zero range or an unallocated one (a hole of the target).
    Hole,
}

/// Reads of the target of a chain of deltas (the first one full).
pub struct ChainReader {
    deltas: Vec<Delta>,
    names: Vec<Arc<str>>,
    size: u64,
    cache: Arc<RecordCache>,
}

impl ChainReader {
    /// Index every delta of the chain (its trailing index when it has one, else by decoding it
    /// once) and check that they link up, the first one full.
    pub fn open(deltas: Vec<DeltaInput>, cache: Arc<RecordCache>) -> Result<ChainReader> {
        let deltas = crate::prepare(None, deltas)?;
        let names = deltas.iter().map(|d| Arc::from(d.name.as_str())).collect();
        let size = deltas.last().map_or(0, |d| d.header.target_size);
        Ok(ChainReader {
            deltas,
            names,
            size,
            cache,
        })
    }

    /// The target's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fill `buf` with the target's bytes at `offset` (fewer at the end of the target; none
    /// past it). Returns how many bytes were filled. An error leaves `buf` unspecified.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.size - offset);
        let mut leaves = Vec::new();
        resolve(
            &self.deltas,
            self.deltas.len() - 1,
            offset,
            len,
            &mut leaves,
        );
        let mut at = 0usize;
        for (n, leaf) in leaves {
            let out = &mut buf[at..at + n as usize];
            match leaf {
                Leaf::Zero | Leaf::Unallocated => out.fill(0),
                Leaf::Base(_) => {
                    // prepare() refused a chain whose first delta is not full.
                    return Err(Error::Usage("the chain has no full delta first".into()));
                }
                Leaf::Literal { delta, rec, skip } => {
                    let bytes = self.record(delta, rec)?;
                    let skip = skip as usize;
                    out.copy_from_slice(&bytes[skip..skip + out.len()]);
                }
            }
            at += n as usize;
        }
        Ok(at)
    }

    /// The target's ranges from `offset` to `offset + len`, each as data or hole, in order,
    /// neighbours of one kind merged: `(offset, length, kind)`.
    pub fn extents(&self, offset: u64, len: u64) -> Vec<(u64, u64, Extent)> {
        let mut out: Vec<(u64, u64, Extent)> = Vec::new();
        if offset >= self.size {
            return out;
        }
        let len = len.min(self.size - offset);
        let mut leaves = Vec::new();
        resolve(
            &self.deltas,
            self.deltas.len() - 1,
            offset,
            len,
            &mut leaves,
        );
        let mut at = offset;
        for (n, leaf) in leaves {
            let kind = match leaf {
                Leaf::Zero | Leaf::Unallocated => Extent::Hole,
                _ => Extent::Data,
            };
            match out.last_mut() {
                Some((_, l, k)) if *k == kind => *l += n,
                _ => out.push((at, n, kind)),
            }
            at += n;
        }
        out
    }

    /// Literal record `rec` of delta `delta`, inflated: from the cache, or read, checked and
    /// inflated now (and kept).
    fn record(&self, delta: usize, rec: usize) -> Result<Arc<Vec<u8>>> {
        let key = (self.names[delta].clone(), rec);
        if let Some(b) = self.cache.get(&key) {
            return Ok(b);
        }
        let d = &self.deltas[delta];
        let mut bytes = vec![0u8; d.recs[rec].length as usize];
        read_literal(d, rec, |stored, payload| {
            format::literal_into(stored, payload, &mut bytes)
        })?;
        let bytes = Arc::new(bytes);
        self.cache.put(key, bytes.clone());
        Ok(bytes)
    }
}
