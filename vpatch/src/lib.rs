//! # vpatch
//!
//! Apply VML deltas (`docs/delta-format.md`, decoded by the `vdiff` crate) to a base image:
//! one delta, or a chain of deltas in one pass.
//!
//! ## How a chain is applied in one pass
//! 1. Headers first: each delta's source size and digest must equal the previous delta's
//!    target (or the base's size for the first delta). A delta made for another base is refused
//!    before anything is written when the base's digest is checked up front ([`check_base`]);
//!    with [`ApplyOptions::verify_base`] it is checked instead while the target is produced
//!    (one read of the base serves both digests) and the caller discards the output on
//!    [`Error::WrongBase`].
//! 2. Each delta gets a table of its records (40 bytes per record; literal payloads stay in the
//!    delta file and are read back by offset). A delta with a trailing index (`FLAG_INDEX`)
//!    gets it from the index: every record header is read and checked, no literal payload is
//!    read, and a literal's checksum is checked when (and only if) the target needs its bytes,
//!    so a chain of stored deltas reads each needed literal about once and overwritten ones
//!    never. A delta without an index is decoded once, sequentially, checking every record
//!    checksum and the end record; its literals are checked again when read. A delta read
//!    from a pipe is spooled to an anonymous temporary file first, by the binary.
//! 3. The target is produced in 1 MiB windows, in parallel batches. Each window is resolved
//!    through the chain before anything is read: a copy-source of delta k is looked up in delta
//!    k-1, down to the base; a copy-target in the same delta's earlier records. Each output byte
//!    is then written exactly once, and zero and unallocated ranges are not written at all
//!    (the output is sparse).
//! 4. The image digest of what was produced is compared with the last delta's target digest
//!    (after the base digest, when it is checked on the way); the caller publishes the output
//!    only if both match (the binary renames a temporary file).
//!
//! The library never prints. Output goes to a [`Sink`]: a file, or memory in tests.

use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use vdiff::digest;
use vdiff::format::{
    self, Decoder, Digest, Header, Record, CHECKSUM_LEN, CHUNK_BYTES, RECORD_HEADER_LEN,
};
use vdiff::Image;
use vmdk_parse::cat::AlignedBuf;

pub mod inplace;
pub mod reader;

pub use reader::{ChainReader, RecordCache};

/// Errors of the applier. `Delta` and `WrongBase` are about the inputs' content (exit code
/// corrupt); `Io` is about reading or writing files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name}: {source}")]
    Delta { name: String, source: format::Error },
    #[error("{0}")]
    WrongBase(String),
    #[error("{0}")]
    Usage(String),
    #[error("reading the base: {0}")]
    Base(#[from] vdiff::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the output does not match the delta's target digest (a wrong base, or corrupt data)")]
    TargetDigest,
    #[error("{0}")]
    Undo(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A delta to apply: a name for messages and where its bytes are read from.
pub struct DeltaInput {
    pub name: String,
    pub file: DeltaFile,
}

/// A delta's bytes, read by offset: a file, or anything else that reads at an offset (an
/// object in a store read by ranges: see vrepo's storage). Reads of a record table and of
/// each literal record go through [`FileExt::read_at`]; nothing is ever written.
#[derive(Clone)]
pub struct DeltaFile {
    inner: Arc<dyn vmdk_parse::ReadAt>,
    len: u64,
    plan: Option<ReadPlan>,
}

/// Told, before an apply reads a delta's records, which byte ranges (offset, length) it will
/// read, in the order it will first need them: a source that reads slowly one request at a
/// time (an object store) fetches them ahead, several at once.
pub type ReadPlan = Arc<dyn Fn(Vec<(u64, u64)>) + Send + Sync>;

impl DeltaFile {
    /// `len` bytes read through `inner`.
    pub fn new(inner: Arc<dyn vmdk_parse::ReadAt>, len: u64) -> DeltaFile {
        DeltaFile {
            inner,
            len,
            plan: None,
        }
    }

    /// [`DeltaFile::new`], with `plan` told what an apply will read (see [`ReadPlan`]).
    pub fn with_plan(inner: Arc<dyn vmdk_parse::ReadAt>, len: u64, plan: ReadPlan) -> DeltaFile {
        DeltaFile {
            inner,
            len,
            plan: Some(plan),
        }
    }

    /// The same bytes, with `plan` told what an apply will read.
    pub fn planned(self, plan: ReadPlan) -> DeltaFile {
        DeltaFile {
            plan: Some(plan),
            ..self
        }
    }

    /// A file, its length taken now.
    pub fn from_file(file: File) -> io::Result<DeltaFile> {
        let len = file.metadata()?.len();
        Ok(DeltaFile::new(Arc::new(file), len))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A reader from the start, for decoding the stream in order.
    fn reader(&self) -> DeltaCursor<'_> {
        DeltaCursor { file: self, pos: 0 }
    }
}

impl FileExt for DeltaFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf
            .len()
            .min((self.len - offset).min(usize::MAX as u64) as usize);
        self.inner.read_at(&mut buf[..n], offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a delta is only read",
        ))
    }
}

struct DeltaCursor<'a> {
    file: &'a DeltaFile,
    pos: u64,
}

impl io::Read for DeltaCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = FileExt::read_at(self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Where the target goes, in target order: each range exactly once, ranges contiguous.
/// The applier does the heavy work (reading the base, inflating literals, hashing) on every
/// core and hands the results to the sink on one thread, so a sequential writer (a VMDK
/// writer, a pipe) fits.
pub trait Sink {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// [`Sink::data`] with the bytes handed over rather than lent: a sink that writes on
    /// another thread keeps them (a share of the produced window's buffer) instead of copying
    /// them. The default lends them to [`Sink::data`].
    fn data_shared(&mut self, offset: u64, bytes: SharedBytes) -> io::Result<()> {
        self.data(offset, bytes.get())
    }
    /// Allocated zeros (zero grains in a VMDK).
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()>;
    fn unallocated(&mut self, offset: u64, len: u64) -> io::Result<()>;
}

/// A sparse raw file, already sized to the target: zero and unallocated ranges stay holes.
pub struct RawSink<'a>(pub &'a File);

impl Sink for RawSink<'_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all_at(bytes, offset)
    }
    fn zero(&mut self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn unallocated(&mut self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
}

/// A sparse raw file, already sized to the target, written like [`RawSink`] except that the
/// 4 KiB-aligned middle of each data range goes through an `O_DIRECT` handle when there is one
/// (vmdk-parse's `SparseOut`, as `vmdk-parse cat -o` writes): copying the output through the
/// page cache was most of vpatch's kernel time.
pub struct DirectRawSink<'a>(pub vmdk_parse::cat::SparseOut<'a>);

impl Sink for DirectRawSink<'_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.write_at(bytes, offset)
    }
    fn zero(&mut self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn unallocated(&mut self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
}

/// A VMDK being written by vmdk-parse's writer: zero and unallocated ranges are passed on as
/// such, and the writer's options decide how zero ranges are stored (by default unallocated:
/// some readers mishandle zero grains). Call `finish` on the writer only after [`apply`]
/// succeeded.
pub struct VmdkSink<'a>(pub &'a mut vmdk_parse::write::VmdkWriter);

fn werr(e: vmdk_parse::write::WriteError) -> io::Error {
    io::Error::other(e)
}

impl Sink for VmdkSink<'_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.write_data(offset, bytes).map_err(werr)
    }
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.0.write_zero(offset, len).map_err(werr)
    }
    fn unallocated(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.0.write_unallocated(offset, len).map_err(werr)
    }
}

/// The target in memory, with the kinds of its ranges (for tests).
#[derive(Default)]
pub struct MemSink {
    pub data: Vec<u8>,
    pub unallocated_bytes: u64,
    pub zero_bytes: u64,
}

impl Sink for MemSink {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        assert_eq!(offset, self.data.len() as u64, "ranges in order");
        self.data.extend_from_slice(bytes);
        Ok(())
    }
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        assert_eq!(offset, self.data.len() as u64, "ranges in order");
        self.zero_bytes += len;
        self.data.resize(self.data.len() + len as usize, 0);
        Ok(())
    }
    fn unallocated(&mut self, offset: u64, len: u64) -> io::Result<()> {
        assert_eq!(offset, self.data.len() as u64, "ranges in order");
        self.unallocated_bytes += len;
        self.data.resize(self.data.len() + len as usize, 0);
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum What {
    /// Checked against its checksum whenever it is read (`format::read_literal_at`).
    Literal {
        /// Where the record's header starts in the delta file.
        record_at: u64,
        payload_len: u32,
        /// Whether the payload is stored uncompressed; `None` when the table was built
        /// without reading the record's header (it is read with the record).
        stored: Option<bool>,
    },
    Zero,
    Unallocated,
    CopySource(u64),
    CopyTarget(u64),
}

#[derive(Clone, Copy, Debug)]
struct Rec {
    offset: u64,
    length: u64,
    what: What,
}

struct Delta {
    name: String,
    file: DeltaFile,
    /// The file's length when it was indexed.
    len: u64,
    header: Header,
    recs: Vec<Rec>,
    /// Whether the record table came from the trailing index.
    indexed: bool,
    /// Bytes read from the file, to build the table and since.
    bytes_read: AtomicU64,
}

/// Where a piece of a target window comes from, after resolving through the chain.
#[derive(Clone, Copy, Debug)]
enum Leaf {
    Zero,
    Unallocated,
    Base(u64),
    Literal { delta: usize, rec: usize, skip: u64 },
}

/// What an apply produced.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub target_size: u64,
    pub target_digest: Digest,
    pub written_bytes: u64,
}

/// Read just the header of each delta, and check the chain links up (no base check).
pub fn read_headers(deltas: &mut [DeltaInput]) -> Result<Vec<Header>> {
    let mut headers = Vec::with_capacity(deltas.len());
    for d in deltas.iter_mut() {
        let dec = Decoder::new(BufReader::new(d.file.reader())).map_err(|source| Error::Delta {
            name: d.name.clone(),
            source,
        })?;
        headers.push(dec.header().clone());
    }
    for (k, h) in headers.iter().enumerate().skip(1) {
        let prev = &headers[k - 1];
        if h.is_full() {
            return Err(Error::Usage(format!(
                "{}: a full delta can only come first in a chain",
                deltas[k].name
            )));
        }
        if h.source_size != prev.target_size || h.source_digest != prev.target_digest {
            return Err(Error::WrongBase(format!(
                "{}: made for another source than what {} produces",
                deltas[k].name,
                deltas[k - 1].name
            )));
        }
    }
    Ok(headers)
}

/// Check that `base` (or no base) is what the first delta applies to. With `verify_digest`,
/// the base is read once in full (in parallel, holes free) and its image digest compared;
/// otherwise only its size, and a wrong base is caught by the target digest at the end.
///
/// Returns the verified base's chunk digests (32 bytes per MiB): given to
/// [`apply_verified`], a target chunk copied whole from the same place of the base takes the
/// base's chunk digest instead of being hashed again.
pub fn check_base(
    base: Option<&dyn Image>,
    first: &Header,
    name: &str,
    verify_digest: bool,
) -> Result<Option<Vec<Digest>>> {
    match base {
        None if !first.is_full() => Err(Error::Usage(format!(
            "{name}: not a full delta; it needs its base image"
        ))),
        None => Ok(None),
        Some(_) if first.is_full() => Err(Error::Usage(format!(
            "{name}: a full delta takes no base (use --full)"
        ))),
        Some(b) => {
            if b.size() != first.source_size {
                return Err(Error::WrongBase(format!(
                    "{name}: made for a base of {} bytes; this base has {}",
                    first.source_size,
                    b.size()
                )));
            }
            if !verify_digest {
                return Ok(None);
            }
            let (scan, chunks) = vdiff::diff::scan_with_chunks(b, 4096, false, false, None)?;
            if scan.digest != first.source_digest {
                return Err(Error::WrongBase(format!(
                    "{name}: made for another base (image digest differs)"
                )));
            }
            Ok(Some(chunks))
        }
    }
}

/// Build the record table of one delta: from its trailing index when it has one (no literal
/// payload is read; each is checked when read), else by decoding the whole stream.
fn index(input: DeltaInput) -> Result<Delta> {
    let DeltaInput { name, file } = input;
    let err = |source| Error::Delta {
        name: name.clone(),
        source,
    };
    let len = file.len();
    let mut hb = [0u8; format::HEADER_LEN];
    let indexed = file.read_exact_at(&mut hb, 0).is_ok()
        && Header::decode(&hb).is_ok_and(|h| h.flags & format::FLAG_INDEX != 0);
    if indexed {
        // A source read by requests (a planned one: an object store) skips the literal
        // headers: one request each would cost more than the records.
        let table = if file.plan.is_some() {
            format::read_record_table_lazy(&file, len)
        } else {
            format::read_record_table(&file, len)
        }
        .map_err(err)?;
        let recs = table
            .records
            .iter()
            .map(|r| Rec {
                offset: r.offset,
                length: r.length,
                what: match r.kind {
                    format::KIND_LITERAL => What::Literal {
                        record_at: r.stream_offset,
                        payload_len: r.payload_len,
                        stored: (r.flags != format::FLAGS_UNREAD)
                            .then_some(r.flags == format::LITERAL_STORED),
                    },
                    format::KIND_ZERO => What::Zero,
                    format::KIND_UNALLOCATED => What::Unallocated,
                    format::KIND_COPY_SOURCE => What::CopySource(r.arg),
                    _ => What::CopyTarget(r.arg),
                },
            })
            .collect();
        return Ok(Delta {
            name,
            file,
            len,
            header: table.header,
            recs,
            indexed: true,
            bytes_read: AtomicU64::new(table.bytes_read),
        });
    }
    let mut dec = Decoder::new(BufReader::with_capacity(1 << 20, file.reader())).map_err(err)?;
    let header = dec.header().clone();
    let mut recs = Vec::new();
    while let Some(r) = dec.next_record().map_err(err)? {
        let (offset, length) = (r.offset(), r.length());
        let what = match r {
            Record::Literal {
                stored, payload, ..
            } => What::Literal {
                record_at: dec.stream_position()
                    - (RECORD_HEADER_LEN + CHECKSUM_LEN) as u64
                    - payload.len() as u64,
                payload_len: payload.len() as u32,
                stored: Some(stored),
            },
            Record::Zero { .. } => What::Zero,
            Record::Unallocated { .. } => What::Unallocated,
            Record::CopySource { source_offset, .. } => What::CopySource(source_offset),
            Record::CopyTarget { target_offset, .. } => What::CopyTarget(target_offset),
        };
        recs.push(Rec {
            offset,
            length,
            what,
        });
    }
    let read = dec.stream_position();
    drop(dec);
    Ok(Delta {
        name,
        file,
        len,
        header,
        recs,
        indexed: false,
        bytes_read: AtomicU64::new(read),
    })
}

/// Resolve target range `[off, off + len)` of delta `k` into leaves, in order.
fn resolve(deltas: &[Delta], k: usize, off: u64, len: u64, out: &mut Vec<(u64, Leaf)>) {
    let mut stack = vec![(k, off, len)];
    while let Some((k, off, len)) = stack.pop() {
        let recs = &deltas[k].recs;
        // Records cover the target exactly (the decoder checked), so one contains `off`.
        let i = recs.partition_point(|r| r.offset + r.length <= off);
        let r = recs[i];
        let skip = off - r.offset;
        let piece = len.min(r.length - skip);
        if piece < len {
            stack.push((k, off + piece, len - piece));
        }
        match r.what {
            What::Zero => push_leaf(out, piece, Leaf::Zero),
            What::Unallocated => push_leaf(out, piece, Leaf::Unallocated),
            What::Literal { .. } => push_leaf(
                out,
                piece,
                Leaf::Literal {
                    delta: k,
                    rec: i,
                    skip,
                },
            ),
            What::CopySource(s) if k == 0 => push_leaf(out, piece, Leaf::Base(s + skip)),
            What::CopySource(s) => stack.push((k - 1, s + skip, piece)),
            What::CopyTarget(t) => stack.push((k, t + skip, piece)),
        }
    }
}

/// The literal leaves of window `c` of a target of `size` bytes, in order: `(delta, record)`
/// (`leaves` is scratch space).
fn window_literals<'a>(
    deltas: &[Delta],
    size: u64,
    c: u64,
    leaves: &'a mut Vec<(u64, Leaf)>,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    let start = c * CHUNK_BYTES;
    leaves.clear();
    let len = CHUNK_BYTES.min(size - start);
    resolve(deltas, deltas.len() - 1, start, len, leaves);
    leaves.iter().filter_map(|(_, leaf)| match *leaf {
        Leaf::Literal { delta, rec, .. } => Some((delta, rec)),
        _ => None,
    })
}

fn push_leaf(out: &mut Vec<(u64, Leaf)>, len: u64, leaf: Leaf) {
    if let Some((l, last)) = out.last_mut() {
        match (last, leaf) {
            (Leaf::Zero, Leaf::Zero) | (Leaf::Unallocated, Leaf::Unallocated) => {
                *l += len;
                return;
            }
            (Leaf::Base(a), Leaf::Base(b)) if *a + *l == b => {
                *l += len;
                return;
            }
            _ => {}
        }
    }
    out.push((len, leaf));
}

/// Inflated literal records shared by the threads producing windows, driven by a plan made
/// before the first window: how many leaves of the target each record still serves. A record
/// that serves one leaf is inflated for it alone (straight into the window when the leaf is
/// the whole record); one that serves more is kept until its last leaf took its piece, so
/// it is inflated once however many windows (on whichever threads) need it: a record cut by
/// a window boundary, a block duplicated across the image, pieces of a full entry's record
/// that later deltas of a chain still copy. When the cache is full, the record whose next use
/// is furthest away goes (Belady's rule: the plan knows the future). Measured on the vrepo
/// bench's 3-entry chain (1.29 GB of distinct records needed): 1.99 GB inflated with
/// per-thread caches, 1.64 GB with a shared cache evicting the least recently used, 1.51 GB
/// with this rule at the default budget (a budget of 256 MiB inflates each record once).
struct Literals {
    /// Per delta, per record: leaves still to serve. Changed only under `state`'s lock.
    left: Vec<Vec<AtomicU32>>,
    /// Per delta, per record (and one past the last): where its uses start in `uses`.
    first: Vec<Vec<usize>>,
    /// The window (chunk index) of every literal leaf, grouped by record, in window order.
    uses: Vec<u64>,
    /// Bytes of inflated records held at most.
    budget: usize,
    state: Mutex<CacheState>,
    /// Signalled when a record being inflated is ready (or failed).
    ready: Condvar,
}

#[derive(Default)]
struct CacheState {
    map: HashMap<(usize, usize), Slot>,
    /// Bytes of the records held.
    held: usize,
}

enum Slot {
    /// Being inflated by a thread; others wait for it.
    Pending,
    Ready(Arc<Vec<u8>>),
}

/// Inflated records held for later leaves, by default at most this many bytes
/// ([`ApplyOptions::literal_cache_bytes`]): past it the one needed again last is dropped (and
/// inflated again when a leaf needs it).
pub const LITERAL_CACHE_BYTES: usize = 64 << 20;

impl Literals {
    /// The plan: every literal leaf of every window of the target, counted per record.
    fn plan(deltas: &[Delta], size: u64, budget: usize) -> Literals {
        let left: Vec<Vec<AtomicU32>> = deltas
            .iter()
            .map(|d| d.recs.iter().map(|_| AtomicU32::new(0)).collect())
            .collect();
        let nchunks = size.div_ceil(CHUNK_BYTES);
        (0..nchunks)
            .into_par_iter()
            .for_each_init(Vec::new, |leaves, c| {
                for (delta, rec) in window_literals(deltas, size, c, leaves) {
                    left[delta][rec].fetch_add(1, Ordering::Relaxed);
                }
            });
        // Where each record is used: counted above, filled in window order here (a block of
        // windows resolved at a time on every core, so memory stays with the leaves).
        let mut first = Vec::with_capacity(deltas.len());
        let mut total = 0usize;
        for l in &left {
            let mut f = Vec::with_capacity(l.len() + 1);
            for n in l {
                f.push(total);
                total += n.load(Ordering::Relaxed) as usize;
            }
            f.push(total);
            first.push(f);
        }
        let mut uses = vec![0u64; total];
        let mut cursor: Vec<Vec<usize>> = first.clone();
        const PLAN_BLOCK: u64 = 4096;
        let mut c0 = 0;
        while c0 < nchunks {
            let n = PLAN_BLOCK.min(nchunks - c0);
            let found: Vec<Vec<(usize, usize)>> = (c0..c0 + n)
                .into_par_iter()
                .map_init(Vec::new, |leaves, c| {
                    window_literals(deltas, size, c, leaves).collect()
                })
                .collect();
            for (c, recs) in (c0..).zip(found) {
                for (k, i) in recs {
                    // The same resolution as the count: always in range (checked anyway).
                    if cursor[k][i] < first[k][i + 1] {
                        uses[cursor[k][i]] = c;
                        cursor[k][i] += 1;
                    }
                }
            }
            c0 += n;
        }
        Literals {
            left,
            first,
            uses,
            budget,
            state: Mutex::new(CacheState::default()),
            ready: Condvar::new(),
        }
    }

    /// Tell each delta's source that has a [`ReadPlan`] the records it will be read for, in
    /// the order of their first use.
    fn tell_plans(&self, deltas: &[Delta]) {
        for (k, d) in deltas.iter().enumerate() {
            let Some(plan) = &d.file.plan else { continue };
            let mut firsts: Vec<(u64, u64, u64)> = d
                .recs
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let What::Literal {
                        record_at,
                        payload_len,
                        ..
                    } = r.what
                    else {
                        return None;
                    };
                    let u = self.uses.get(self.first[k][i]..self.first[k][i + 1])?;
                    let len = (RECORD_HEADER_LEN + CHECKSUM_LEN) as u64 + payload_len as u64;
                    u.first().map(|&w| (w, record_at, len))
                })
                .collect();
            firsts.sort_unstable();
            plan(firsts.into_iter().map(|(_, at, len)| (at, len)).collect());
        }
    }

    /// The first window at or after `chunk` that uses record `i` of delta `k` (`u64::MAX`:
    /// none).
    fn next_use(&self, (k, i): (usize, usize), chunk: u64) -> u64 {
        let u = &self.uses[self.first[k][i]..self.first[k][i + 1]];
        u.get(u.partition_point(|&w| w < chunk))
            .copied()
            .unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A thread that panicked holding the lock left the map consistent (every change is
        // one statement): carry on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fill `dst` with bytes `[skip, skip + dst.len())` of literal record `key.1` of delta
    /// `key.0`, for one leaf of the plan, in window `chunk`.
    fn fill(
        &self,
        deltas: &[Delta],
        key: (usize, usize),
        skip: usize,
        dst: &mut [u8],
        chunk: u64,
    ) -> Result<()> {
        let (k, i) = key;
        let mut st = self.lock();
        // Leaves still to serve after this one (a leaf the plan did not count, which cannot
        // happen, is served uncached).
        let left = self.left[k][i].load(Ordering::Relaxed).saturating_sub(1);
        self.left[k][i].store(left, Ordering::Relaxed);
        loop {
            let cs = &mut *st;
            let hit = match cs.map.get(&key) {
                Some(Slot::Ready(bytes)) => Some(Arc::clone(bytes)),
                Some(Slot::Pending) => None,
                None => break,
            };
            match hit {
                Some(bytes) => {
                    if left == 0 {
                        cs.map.remove(&key);
                        cs.held -= bytes.len();
                    }
                    drop(st);
                    dst.copy_from_slice(&bytes[skip..skip + dst.len()]);
                    return Ok(());
                }
                None => st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        }
        let r = deltas[k].recs[i];
        if left == 0 || r.length as usize > self.budget {
            drop(st);
            if skip == 0 && r.length == dst.len() as u64 {
                return read_literal(&deltas[k], i, |stored, payload| {
                    format::literal_into(stored, payload, dst)
                });
            }
            return SPARE.with(|s| {
                let mut bytes = s.borrow_mut();
                read_literal(&deltas[k], i, |stored, payload| {
                    format::literal_bytes(stored, payload, r.length, &mut bytes)
                })?;
                dst.copy_from_slice(&bytes[skip..skip + dst.len()]);
                Ok(())
            });
        }
        st.map.insert(key, Slot::Pending);
        drop(st);
        // Should inflating fail (or panic), the pending slot goes and the waiters are woken:
        // one of them inflates it again (and meets the same error).
        let pending = Pending { lits: self, key };
        let mut bytes = Vec::new();
        read_literal(&deltas[k], i, |stored, payload| {
            format::literal_bytes(stored, payload, r.length, &mut bytes)
        })?;
        std::mem::forget(pending);
        let mut st = self.lock();
        dst.copy_from_slice(&bytes[skip..skip + dst.len()]);
        let len = bytes.len();
        st.map.insert(key, Slot::Ready(Arc::new(bytes)));
        st.held += len;
        while st.held > self.budget {
            // The record needed again last goes; that may be the one just inflated.
            let furthest = st
                .map
                .iter()
                .filter_map(|(&k, s)| match s {
                    Slot::Ready(_) => Some((self.next_use(k, chunk), k)),
                    Slot::Pending => None,
                })
                .max();
            let Some((_, old)) = furthest else { break };
            if let Some(Slot::Ready(bytes)) = st.map.remove(&old) {
                st.held -= bytes.len();
            }
        }
        self.ready.notify_all();
        Ok(())
    }
}

/// A record being inflated: dropped before it is ready (an error), its slot goes.
struct Pending<'a> {
    lits: &'a Literals,
    key: (usize, usize),
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.lits.lock().map.remove(&self.key);
        self.lits.ready.notify_all();
    }
}

thread_local! {
    /// Per thread: a stored record's bytes as read (header, payload, checksum), reused.
    static RECORD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Per thread: a literal record inflated for one piece of it, reused.
    static SPARE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A decoding error placed at the record it is about.
fn at_record(e: format::Error, record_at: u64) -> format::Error {
    match e {
        format::Error::Corrupt { what, .. } => format::Error::Corrupt {
            offset: record_at,
            what,
        },
        e => e,
    }
}

/// Read literal record `i` of `d` (checked against its index entry and checksum, into the
/// thread's record buffer) and hand `(stored, payload)` to `inflate`; errors name the delta
/// and the record.
fn read_literal(
    d: &Delta,
    i: usize,
    inflate: impl FnOnce(bool, &[u8]) -> format::Result<()>,
) -> Result<()> {
    let r = d.recs[i];
    let What::Literal {
        record_at,
        payload_len,
        stored,
    } = r.what
    else {
        unreachable!("leaf built from a literal record")
    };
    let head = format::RecordHead {
        kind: format::KIND_LITERAL,
        flags: match stored {
            Some(true) => format::LITERAL_STORED,
            Some(false) => 0,
            None => format::FLAGS_UNREAD,
        },
        reserved: 0,
        payload_len,
        offset: r.offset,
        length: r.length,
        arg: 0,
        stream_offset: record_at,
    };
    let derr = |source| Error::Delta {
        name: d.name.clone(),
        source,
    };
    RECORD.with(|rb| {
        let mut record = rb.borrow_mut();
        let (stored, payload) = match stored {
            Some(stored) => (
                stored,
                format::read_literal_at(&d.file, d.len, &head, &mut record).map_err(derr)?,
            ),
            None => {
                format::read_literal_unread_at(&d.file, d.len, &head, &mut record).map_err(derr)?
            }
        };
        d.bytes_read
            .fetch_add(head.stream_len(), std::sync::atomic::Ordering::Relaxed);
        inflate(stored, payload).map_err(|source| derr(at_record(source, record_at)))
    })
}

/// One produced window: its chunk digest, its ranges, and the bytes of its data ranges.
struct Window {
    digest: Digest,
    /// (offset in the window, length, leaf kind) with Base and Literal merged into `Data`.
    ranges: Vec<(u64, u64, Out)>,
    /// The window's bytes, aligned in memory for `O_DIRECT` writes ([`DirectRawSink`]).
    buf: Buf,
    /// With the base checked on the way: the digest of the base's chunk at the same place.
    base_digest: Option<Digest>,
    /// Base bytes read for that digest alone.
    base_check_bytes: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    Data,
    /// In place: bytes the base already holds at this offset.
    Keep,
    Zero,
    Unallocated,
}

/// A window's bytes: none (nothing to write), or an aligned buffer from the pool.
#[derive(Default)]
struct Buf(Option<Arc<Pooled>>, usize);

impl Buf {
    /// A window buffer of `len` bytes (at most a window), from the pool: its bytes are
    /// whatever a previous window left, so every byte must be written.
    fn new(len: usize) -> Buf {
        debug_assert!(len as u64 <= CHUNK_BYTES);
        let b = POOL
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| AlignedBuf::new(CHUNK_BYTES as usize));
        Buf(Some(Arc::new(Pooled(Some(b)))), len)
    }
    fn get_mut(&mut self) -> &mut [u8] {
        match self.0.as_mut().and_then(Arc::get_mut) {
            Some(b) => b.0.as_mut().expect("held until dropped").get_mut(self.1),
            None => &mut [],
        }
    }
    /// A share of `[at, at + len)`.
    fn share(&self, at: usize, len: usize) -> SharedBytes {
        assert!(at + len <= self.1);
        SharedBytes {
            buf: self.0.clone().expect("a window with data has a buffer"),
            at,
            len,
        }
    }
}

/// Window buffers not in use, kept for the next windows: a build goes through a window per
/// MiB, and a fresh 1 MiB buffer costs page faults and zeroing every time.
static POOL: std::sync::Mutex<Vec<AlignedBuf>> = std::sync::Mutex::new(Vec::new());
/// At most this many idle buffers are kept (the windows in flight are about 2 batches and a
/// sink's queue).
const POOL_BUFFERS: usize = 96;

/// A window buffer that goes back to the pool when its last share is dropped.
struct Pooled(Option<AlignedBuf>);

impl Pooled {
    fn buf(&self) -> &AlignedBuf {
        self.0.as_ref().expect("held until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let (Some(b), Ok(mut p)) = (self.0.take(), POOL.lock()) {
            if p.len() < POOL_BUFFERS && b.capacity() >= CHUNK_BYTES as usize {
                p.push(b);
            }
        }
    }
}

/// Bytes of a produced window, shared rather than copied ([`Sink::data_shared`]). Aligned in
/// memory as the target offset is: a 4 KiB-aligned target offset is at a 4 KiB-aligned
/// address, so `O_DIRECT` writes can use them as they are.
pub struct SharedBytes {
    buf: Arc<Pooled>,
    at: usize,
    len: usize,
}

impl SharedBytes {
    /// The first `len` bytes of `buf`, shared.
    pub fn new(buf: AlignedBuf, len: usize) -> SharedBytes {
        assert!(len <= buf.capacity());
        SharedBytes {
            buf: Arc::new(Pooled(Some(buf))),
            at: 0,
            len,
        }
    }

    pub fn get(&self) -> &[u8] {
        &self.buf.buf().get(self.at + self.len)[self.at..]
    }
    /// The sub-range `[from, from + len)` of these bytes.
    pub fn slice(&self, from: usize, len: usize) -> SharedBytes {
        assert!(from + len <= self.len);
        SharedBytes {
            buf: self.buf.clone(),
            at: self.at + from,
            len,
        }
    }
}

/// What a window task needs besides its place.
struct Job<'a> {
    literals: Literals,
    deltas: &'a [Delta],
    base: Option<&'a dyn Image>,
    keep: bool,
    /// Compute the base's chunk digests on the way ([`ApplyOptions::verify_base`]).
    verify_base: bool,
}

/// Produce one window (resolve, read, inflate, hash); writing is left to the caller.
fn window(job: &Job, start: u64, len: u64, known: Option<Digest>) -> Result<Window> {
    let (deltas, base, keep) = (job.deltas, job.base, job.keep);
    let mut leaves = Vec::new();
    resolve(deltas, deltas.len() - 1, start, len, &mut leaves);
    let mut ranges: Vec<(u64, u64, Out)> = Vec::new();
    let mut pos = 0;
    for &(l, leaf) in &leaves {
        let kind = match leaf {
            Leaf::Zero => Out::Zero,
            Leaf::Unallocated => Out::Unallocated,
            Leaf::Base(s) if keep && s == start + pos => Out::Keep,
            Leaf::Base(_) | Leaf::Literal { .. } => Out::Data,
        };
        match ranges.last_mut() {
            Some(r) if r.2 == kind => r.1 += l,
            _ => ranges.push((pos, l, kind)),
        }
        pos += l;
    }
    // Copied whole from the same place of a verified base: the base's chunk digest holds.
    let unchanged =
        ranges.len() == 1 && matches!(leaves.as_slice(), [(_, Leaf::Base(s))] if *s == start);
    if let (true, Some(d)) = (unchanged, known) {
        if keep {
            return Ok(Window {
                digest: d,
                ranges,
                buf: Buf::default(),
                base_digest: job.verify_base.then_some(d),
                base_check_bytes: 0,
            });
        }
    }
    let mut target_leaves = Vec::new();
    let (digest, buf) = if ranges.iter().all(|r| r.2 != Out::Data && r.2 != Out::Keep) {
        (digest::zero_chunk_of(len), Buf::default())
    } else {
        let mut aligned = Buf::new(len as usize);
        let buf = aligned.get_mut();
        let mut pos = 0usize;
        for &(l, leaf) in &leaves {
            let dst = &mut buf[pos..pos + l as usize];
            match leaf {
                // The buffer comes from the pool: zeros are written too (they are hashed).
                Leaf::Zero | Leaf::Unallocated => dst.fill(0),
                Leaf::Base(s) => base
                    .ok_or_else(|| Error::Usage("copy from a base that is not there".into()))?
                    .read_at(dst, s)?,
                Leaf::Literal { delta, rec, skip } => {
                    let chunk = start / CHUNK_BYTES;
                    job.literals
                        .fill(deltas, (delta, rec), skip as usize, dst, chunk)?
                }
            }
            pos += l as usize;
        }
        let digest = match (unchanged, known) {
            (true, Some(d)) => d,
            _ => {
                digest::leaves(buf, &mut target_leaves);
                digest::chunk_from_leaves(&target_leaves)
            }
        };
        (digest, aligned)
    };
    let (base_digest, base_check_bytes) = match base {
        Some(b) if job.verify_base && start < b.size() => {
            base_chunk_digest(b, start, len, &leaves, &target_leaves, digest)?
        }
        _ => (None, 0),
    };
    Ok(Window {
        digest,
        ranges,
        buf,
        base_digest,
        base_check_bytes,
    })
}

/// A base chunk's bytes and layout, reused by each thread.
type BaseScratch = (Vec<u8>, Vec<(u64, u64, vdiff::Kind)>);

thread_local! {
    static BASE_SCRATCH: RefCell<BaseScratch> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The digest of the base's chunk at `start`, reusing what producing the target window there
/// already learnt: where a 4 KiB leaf of the target is copied from the base at its own offset,
/// the two leaves are the same bytes and share their digest; only the other leaves of the base
/// are read (holes are not) and hashed. Returns the digest and the base bytes read for it.
fn base_chunk_digest(
    base: &dyn Image,
    start: u64,
    len: u64,
    leaves: &[(u64, Leaf)],
    target_leaves: &[Digest],
    target_digest: Digest,
) -> Result<(Option<Digest>, u64)> {
    let base_len = CHUNK_BYTES.min(base.size() - start);
    if base_len == len && matches!(leaves, [(_, Leaf::Base(s))] if *s == start) {
        return Ok((Some(target_digest), 0));
    }
    const LEAF: u64 = format::LEAF_BYTES;
    let nleaves = base_len.div_ceil(LEAF) as usize;
    // Which base leaves equal the target's: wholly inside a same-offset copy of the base, with
    // the same length in both (the last leaf of either may be short).
    let mut same = vec![false; nleaves];
    if !target_leaves.is_empty() {
        let mut pos = 0u64;
        for &(l, leaf) in leaves {
            if matches!(leaf, Leaf::Base(s) if s == start + pos) {
                let end = pos + l;
                let mut j = pos.div_ceil(LEAF);
                while j < nleaves as u64 && j * LEAF < end {
                    let target_end = ((j + 1) * LEAF).min(len);
                    if target_end > end {
                        break;
                    }
                    same[j as usize] = target_end == ((j + 1) * LEAF).min(base_len);
                    j += 1;
                }
            }
            pos += l;
        }
    }
    let mut digests = vec![[0u8; 32]; nleaves];
    let mut read = 0u64;
    // One buffer per thread, reused: a fresh zeroed MiB per chunk cost page faults.
    BASE_SCRATCH.with(|s| -> Result<()> {
        let (buf, layout) = &mut *s.borrow_mut();
        let mut j = 0;
        while j < nleaves {
            if same[j] {
                digests[j] = target_leaves[j];
                j += 1;
                continue;
            }
            let run_start = j;
            while j < nleaves && !same[j] {
                j += 1;
            }
            let (a, b) = (run_start as u64 * LEAF, (j as u64 * LEAF).min(base_len));
            buf.resize((b - a) as usize, 0);
            base.read_layout(buf, start + a, layout)?;
            read += layout
                .iter()
                .filter(|r| r.2 == vdiff::Kind::Data)
                .map(|r| r.1)
                .sum::<u64>();
            for (n, chunk) in buf.chunks(LEAF as usize).enumerate() {
                let leaf_at = start + a + n as u64 * LEAF;
                let hole = chunk.len() as u64 == LEAF
                    && layout.iter().any(|&(o, l, kind)| {
                        kind != vdiff::Kind::Data && o <= leaf_at && leaf_at + LEAF <= o + l
                    });
                digests[run_start + n] = if hole {
                    digest::zero_leaf()
                } else {
                    digest::leaf(chunk)
                };
            }
        }
        Ok(())
    })?;
    Ok((Some(digest::chunk_from_leaves(&digests)), read))
}

/// Decode `deltas` (already checked with [`read_headers`] and [`check_base`]) and write the
/// target to `sink`. Fails with [`Error::TargetDigest`] if what was written is not the
/// target the last delta names; the caller must then discard the output.
pub fn apply(
    base: Option<&dyn Image>,
    deltas: Vec<DeltaInput>,
    sink: &mut dyn Sink,
) -> Result<Applied> {
    apply_verified(base, None, deltas, sink)
}

/// [`apply`] with the chunk digests [`check_base`] returned for `base`.
pub fn apply_verified(
    base: Option<&dyn Image>,
    base_chunks: Option<&[Digest]>,
    deltas: Vec<DeltaInput>,
    sink: &mut dyn Sink,
) -> Result<Applied> {
    let opts = ApplyOptions {
        base_chunks,
        ..Default::default()
    };
    Ok(apply_with(base, deltas, sink, &opts)?.applied)
}

/// Options of [`apply_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions<'a> {
    /// The base's chunk digests, from [`check_base`] with its digest check: a target chunk
    /// copied whole from the same place of the base takes them instead of being hashed.
    /// Default none.
    pub base_chunks: Option<&'a [Digest]>,
    /// Check the base's image digest against the first delta's source digest *while*
    /// producing the target, instead of reading the whole base up front with [`check_base`]:
    /// a base chunk the target copies at its own place is hashed once for both digests, and
    /// of the others only the leaves that change are read. A wrong base is then found at the
    /// end ([`Error::WrongBase`], before the target digest is compared), after the sink got
    /// the output: the caller must discard it, as on any error. Default false.
    pub verify_base: bool,
    /// Inflated literal records that later windows still need are held up to this many bytes
    /// (default [`LITERAL_CACHE_BYTES`]); 0 inflates a record again for each piece of it.
    pub literal_cache_bytes: Option<usize>,
}

/// What [`apply_with`] did and read.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub applied: Applied,
    /// Deltas whose records were found through their trailing index (literal payloads read
    /// only where the target needs them) rather than by decoding the whole stream.
    pub indexed_deltas: usize,
    /// The deltas' sizes, added up.
    pub delta_bytes: u64,
    /// Bytes read from the delta files, added up: record tables, then literal records.
    pub delta_bytes_read: u64,
    /// Base bytes read only to check its digest (with `verify_base`; holes are not read).
    pub base_check_bytes: u64,
}

/// [`apply`] with options, reporting what was read. With `verify_base`, only the base's size
/// needs checking up front (`check_base(.., false)`).
pub fn apply_with(
    base: Option<&dyn Image>,
    deltas: Vec<DeltaInput>,
    sink: &mut dyn Sink,
    opts: &ApplyOptions,
) -> Result<Report> {
    let deltas = prepare(base, deltas)?;
    let verify = opts.verify_base && base.is_some();
    let (applied, base_check_bytes) = produce(
        base,
        opts.base_chunks,
        &deltas,
        sink,
        false,
        verify,
        opts.literal_cache_bytes,
    )?;
    Ok(Report {
        applied,
        indexed_deltas: deltas.iter().filter(|d| d.indexed).count(),
        delta_bytes: deltas.iter().map(|d| d.len).sum(),
        delta_bytes_read: deltas
            .iter()
            .map(|d| d.bytes_read.load(std::sync::atomic::Ordering::Relaxed))
            .sum(),
        base_check_bytes,
    })
}

/// Decode every delta into its record index, and check that each applies to what precedes it.
fn prepare(base: Option<&dyn Image>, deltas: Vec<DeltaInput>) -> Result<Vec<Delta>> {
    if deltas.is_empty() {
        return Err(Error::Usage("no delta to apply".into()));
    }
    let deltas: Vec<Delta> = deltas.into_iter().map(index).collect::<Result<_>>()?;
    // Resolution indexes records by these sizes: check the links again, whatever the caller did.
    for (k, d) in deltas.iter().enumerate() {
        let source = match k {
            0 => base.map(|b| b.size()),
            _ => Some(deltas[k - 1].header.target_size),
        };
        let ok = match source {
            None => d.header.is_full(),
            Some(s) => !d.header.is_full() && d.header.source_size == s,
        };
        if !ok {
            return Err(Error::WrongBase(format!(
                "{}: its source is not what precedes it",
                d.name
            )));
        }
    }
    Ok(deltas)
}

/// Windows produced at a time, in parallel, while the previous batch goes to the sink. 16, one
/// window per task: a build of the bench's 3-entry repository takes the same time as with 32
/// in tasks of 4 (median 0.95 s against 0.94 s of 5 interleaved runs; its 50-entry chain 1.61 s
/// against 1.70 s) and its peak RSS is 166 MiB instead of 200 MiB: the literal cache, shared
/// by the threads, no longer needs neighbouring windows on one thread.
const BATCH: u64 = 16;

/// Produce the target window by window into `sink`. With `keep`, ranges copied from the base at
/// their own offset are read (for the digest) but not handed to the sink: the base is the
/// output. With `verify_base`, the base's image digest is computed on the way and compared
/// with the first delta's source digest before the target digest. Returns what was applied
/// and the base bytes read for the base check alone.
fn produce(
    base: Option<&dyn Image>,
    base_chunks: Option<&[Digest]>,
    deltas: &[Delta],
    sink: &mut dyn Sink,
    keep: bool,
    verify_base: bool,
    literal_cache_bytes: Option<usize>,
) -> Result<(Applied, u64)> {
    let last = &deltas[deltas.len() - 1].header;
    let size = last.target_size;
    let expect = last.target_digest;
    let nchunks = size.div_ceil(CHUNK_BYTES);
    let literals = Literals::plan(
        deltas,
        size,
        literal_cache_bytes.unwrap_or(LITERAL_CACHE_BYTES),
    );
    literals.tell_plans(deltas);
    let job = Job {
        literals,
        deltas,
        base,
        keep,
        verify_base,
    };
    let base_size = base.map_or(0, |b| b.size());
    let mut base_hasher = digest::ImageHasher::new(base_size);
    let mut base_check_bytes = 0;
    let mut hasher = digest::ImageHasher::new(size);
    let mut written = 0;
    // Windows are produced a batch at a time on every core, and handed to the sink in order
    // on this thread while the next batch is produced: a sink that waits (a device behind
    // O_DIRECT, a pipe) no longer stalls the cores.
    let compute = |c: u64, n: u64| -> Vec<Result<Window>> {
        (c..c + n)
            .collect::<Vec<u64>>()
            .into_par_iter()
            .map(|i| {
                let start = i * CHUNK_BYTES;
                let len = CHUNK_BYTES.min(size - start);
                // The base's digest of this chunk, if the target chunk is the same range.
                let known = base_chunks.and_then(|c| {
                    let base_len = base_size.saturating_sub(start);
                    if base_len.min(CHUNK_BYTES) == len {
                        c.get(i as usize).copied()
                    } else {
                        None
                    }
                });
                window(&job, start, len, known)
            })
            .collect()
    };
    let mut c = 0;
    let mut cur = (nchunks > 0).then(|| compute(0, BATCH.min(nchunks)));
    while let Some(res) = cur.take() {
        let n = res.len() as u64;
        let next_c = c + n;
        let (next, consumed) = std::thread::scope(|s| {
            let next = (next_c < nchunks).then(|| {
                let nn = BATCH.min(nchunks - next_c);
                s.spawn(move || compute(next_c, nn))
            });
            let consumed = (|| -> Result<()> {
                for (i, r) in (c..c + n).zip(res) {
                    let w = r?;
                    hasher.chunk(&w.digest);
                    if let Some(d) = w.base_digest {
                        base_hasher.chunk(&d);
                        base_check_bytes += w.base_check_bytes;
                    }
                    let start = i * CHUNK_BYTES;
                    let io = |e| Error::Io {
                        what: "writing the output".into(),
                        source: e,
                    };
                    for &(o, l, kind) in &w.ranges {
                        match kind {
                            Out::Data => {
                                sink.data_shared(start + o, w.buf.share(o as usize, l as usize))
                                    .map_err(io)?;
                                written += l;
                            }
                            Out::Keep => {}
                            Out::Zero => sink.zero(start + o, l).map_err(io)?,
                            Out::Unallocated => sink.unallocated(start + o, l).map_err(io)?,
                        }
                    }
                }
                Ok(())
            })();
            let next = next.map(|h| h.join().expect("a window batch thread panicked"));
            (next, consumed)
        });
        consumed?;
        c = next_c;
        cur = next;
    }
    if let (true, Some(b)) = (verify_base, base) {
        // The base's chunks past the target's end: read and hashed alone.
        let mut c = nchunks;
        let base_nchunks = base_size.div_ceil(CHUNK_BYTES);
        while c < base_nchunks {
            let n = BATCH.min(base_nchunks - c);
            let res: Vec<Result<(Option<Digest>, u64)>> = (c..c + n)
                .into_par_iter()
                .map(|i| base_chunk_digest(b, i * CHUNK_BYTES, 0, &[], &[], [0; 32]))
                .collect();
            for r in res {
                let (d, read) = r?;
                base_hasher.chunk(&d.expect("a base chunk digest"));
                base_check_bytes += read;
            }
            c += n;
        }
        if base_hasher.finish() != deltas[0].header.source_digest {
            return Err(Error::WrongBase(format!(
                "{}: made for another base (image digest differs)",
                deltas[0].name
            )));
        }
    }
    let got = hasher.finish();
    if got != expect {
        return Err(Error::TargetDigest);
    }
    Ok((
        Applied {
            target_size: size,
            target_digest: got,
            written_bytes: written,
        },
        base_check_bytes,
    ))
}
