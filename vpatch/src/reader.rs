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
use std::sync::{Arc, Mutex, OnceLock};
use vdiff::format;

/// Inflated literal records, shared by readers, at most `budget` bytes (the least recently used
/// record goes first). Keys are a delta's name and the record's place in it, so readers must
/// give each distinct delta file a distinct name. A record wanted by several threads at once
/// (the kernel's readahead sends neighbouring requests together) is inflated by one of them;
/// the others wait for it.
pub struct RecordCache {
    budget: usize,
    inner: Mutex<CacheInner>,
}

/// A record: its delta's name and its index there.
type Key = (Arc<str>, usize);

/// A record's bytes once inflated (`None`: its inflation failed).
type Slot = Arc<OnceLock<Option<Arc<Vec<u8>>>>>;

#[derive(Default)]
struct CacheInner {
    /// Each record's slot, when it was last used, and whether its bytes are counted.
    map: HashMap<Key, (Slot, u64, usize)>,
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

    /// The record `key`: from the cache, or made by `load` (once, whichever thread asks first;
    /// a failure is not kept: each thread that waited for it tries on its own).
    fn get_or_load(&self, key: Key, load: impl Fn() -> Result<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
        let slot = {
            let mut c = self.lock();
            c.tick += 1;
            let tick = c.tick;
            let e = c
                .map
                .entry(key.clone())
                .or_insert_with(|| (Arc::new(OnceLock::new()), tick, 0));
            e.1 = tick;
            e.0.clone()
        };
        let mut failed = None;
        let mut loaded = false;
        let got = slot
            .get_or_init(|| {
                loaded = true;
                match load() {
                    Ok(v) => Some(Arc::new(v)),
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                }
            })
            .clone();
        {
            let mut c = self.lock();
            if loaded {
                c.misses += 1;
            } else {
                c.hits += 1;
            }
        }
        let Some(bytes) = got else {
            // Not kept: the next read tries again.
            let mut c = self.lock();
            if c.map
                .get(&key)
                .is_some_and(|(s, _, _)| Arc::ptr_eq(s, &slot))
            {
                c.map.remove(&key);
            }
            drop(c);
            return match failed {
                Some(e) => Err(e),
                // Another thread's inflation failed: this one tries on its own.
                None => load().map(Arc::new),
            };
        };
        let mut c = self.lock();
        let len = bytes.len();
        let newly = match c.map.get_mut(&key) {
            Some((s, _, counted)) if Arc::ptr_eq(s, &slot) && *counted == 0 => {
                *counted = len;
                true
            }
            _ => false,
        };
        if newly {
            c.bytes += len;
            while c.bytes > self.budget {
                let Some(victim) = c
                    .map
                    .iter()
                    .filter(|(_, (_, _, counted))| *counted > 0)
                    .min_by_key(|(_, (_, used, _))| *used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some((_, _, counted)) = c.map.remove(&victim) {
                    c.bytes -= counted;
                }
            }
        }
        Ok(bytes)
    }

    /// (reads served by a record another read inflated, records inflated) since the cache was
    /// made.
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
        let leaves = self.leaves(offset, len);
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

    /// Inflate into the cache the records that `[offset, offset + len)` needs, without reading
    /// the range (a read-ahead). Errors are left for the read that needs the record.
    pub fn prefetch(&self, offset: u64, len: u64) {
        if offset >= self.size {
            return;
        }
        let len = len.min(self.size - offset);
        let leaves = self.leaves(offset, len);
        for (_, leaf) in leaves {
            if let Leaf::Literal { delta, rec, .. } = leaf {
                let _ = self.record(delta, rec);
            }
        }
    }

    /// The target's ranges from `offset` to `offset + len`, each as data or hole, in order,
    /// neighbours of one kind merged: `(offset, length, kind)`.
    pub fn extents(&self, offset: u64, len: u64) -> Vec<(u64, u64, Extent)> {
        let mut out: Vec<(u64, u64, Extent)> = Vec::new();
        if offset >= self.size {
            return out;
        }
        let len = len.min(self.size - offset);
        let leaves = self.leaves(offset, len);
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

    /// Where `[offset, offset + len)` of the target comes from, resolved down the chain.
    fn leaves(&self, offset: u64, len: u64) -> Vec<(u64, Leaf)> {
        let mut leaves = Vec::new();
        resolve(
            &self.deltas,
            self.deltas.len() - 1,
            offset,
            len,
            &mut leaves,
        );
        leaves
    }

    /// Literal record `rec` of delta `delta`, inflated: from the cache, or read, checked and
    /// inflated now (and kept).
    fn record(&self, delta: usize, rec: usize) -> Result<Arc<Vec<u8>>> {
        let key = (self.names[delta].clone(), rec);
        let d = &self.deltas[delta];
        self.cache.get_or_load(key, || {
            let mut bytes = Vec::new();
            read_literal(d, rec, |stored, payload| {
                // Into spare capacity: nothing zeroed first.
                format::literal_bytes(stored, payload, d.recs[rec].length, &mut bytes)
            })?;
            Ok(bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_wanted_by_many_threads_at_once_is_loaded_once() {
        let cache = RecordCache::new(1 << 20);
        let loads = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let b = cache
                        .get_or_load((Arc::from("d"), 3), || {
                            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(vec![7u8; 1000])
                        })
                        .unwrap();
                    assert_eq!(*b, vec![7u8; 1000]);
                });
            }
        });
        assert_eq!(loads.into_inner(), 1);
        assert_eq!(cache.stats(), (7, 1));
        assert_eq!(cache.held(), 1000);
    }

    #[test]
    fn a_failed_load_is_not_kept_and_the_budget_holds() {
        let cache = RecordCache::new(2500);
        let key = |i| (Arc::from("d"), i);
        let err = || Error::Usage("damaged".into());
        assert!(cache.get_or_load(key(0), || Err(err())).is_err());
        assert_eq!(
            *cache.get_or_load(key(0), || Ok(vec![1; 1000])).unwrap(),
            vec![1; 1000]
        );
        for i in 1..10 {
            cache.get_or_load(key(i), || Ok(vec![2; 1000])).unwrap();
            assert!(cache.held() <= 2500);
        }
        // The least recently used went: key 0 is loaded again.
        let again = std::sync::atomic::AtomicBool::new(false);
        cache
            .get_or_load(key(0), || {
                again.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(vec![1; 1000])
            })
            .unwrap();
        assert!(again.into_inner());
    }
}
