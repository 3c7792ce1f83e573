//! # vpatch
//!
//! Apply VML deltas (`docs/delta-format.md`, decoded by the `vdiff` crate) to a base image:
//! one delta, or a chain of deltas in one pass.
//!
//! ## How a chain is applied in one pass
//! 1. Headers first: each delta's source size and digest must equal the previous delta's
//!    target (or the base's size, and with `verify_base` its digest, for the first delta). A
//!    delta made for another base is refused before anything is written.
//! 2. Every delta is decoded once, sequentially, checking every record checksum and the end
//!    record; only an index of its records is kept (40 bytes per record; literal payloads stay
//!    in the delta file and are read back by offset). A delta read from a pipe is spooled to an
//!    anonymous temporary file first, by the binary.
//! 3. The target is produced in 1 MiB windows, in parallel batches. Each window is resolved
//!    through the chain before anything is read: a copy-source of delta k is looked up in delta
//!    k-1, down to the base; a copy-target in the same delta's earlier records. Each output byte
//!    is then written exactly once, and zero and unallocated ranges are not written at all
//!    (the output is sparse).
//! 4. The image digest of what was produced is compared with the last delta's target digest;
//!    the caller publishes the output only if it matches (the binary renames a temporary file).
//!
//! The library never prints. Output goes to a [`Sink`]: a file, or memory in tests.

use rayon::prelude::*;
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use vdiff::digest;
use vdiff::format::{self, Decoder, Digest, Header, Record, CHECKSUM_LEN, CHUNK_BYTES};
use vdiff::Image;

pub mod inplace;

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

/// A delta to apply: a name for messages and a seekable file holding the stream.
pub struct DeltaInput {
    pub name: String,
    pub file: File,
}

/// Where the target goes, in target order: each range exactly once, ranges contiguous.
/// The applier does the heavy work (reading the base, inflating literals, hashing) on every
/// core and hands the results to the sink on one thread, so a sequential writer (a VMDK
/// writer, a pipe) fits.
pub trait Sink {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
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
    Literal {
        payload_at: u64,
        payload_len: u32,
        stored: bool,
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
    file: File,
    header: Header,
    recs: Vec<Rec>,
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
        d.file.seek(SeekFrom::Start(0)).map_err(|e| Error::Io {
            what: d.name.clone(),
            source: e,
        })?;
        let dec = Decoder::new(BufReader::new(&d.file)).map_err(|source| Error::Delta {
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

fn index(input: DeltaInput) -> Result<Delta> {
    let DeltaInput { name, mut file } = input;
    let err = |source| Error::Delta {
        name: name.clone(),
        source,
    };
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::Io {
        what: name.clone(),
        source: e,
    })?;
    let mut dec = Decoder::new(BufReader::with_capacity(1 << 20, &file)).map_err(err)?;
    let header = dec.header().clone();
    let mut recs = Vec::new();
    while let Some(r) = dec.next_record().map_err(err)? {
        let (offset, length) = (r.offset(), r.length());
        let what = match r {
            Record::Literal {
                stored, payload, ..
            } => What::Literal {
                payload_at: dec.stream_position() - CHECKSUM_LEN as u64 - payload.len() as u64,
                payload_len: payload.len() as u32,
                stored,
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
    drop(dec);
    Ok(Delta {
        name,
        file,
        header,
        recs,
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

/// Recently inflated literal records: (apply run, delta, record) -> bytes. The run id keeps a
/// thread from serving one run's bytes to the next.
type LiteralCache = Vec<((u64, usize, usize), Vec<u8>)>;

static NEXT_RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    static LITERALS: RefCell<LiteralCache> = const { RefCell::new(Vec::new()) };
}
const LITERAL_CACHE_ENTRIES: usize = 4;

fn with_literal<T>(
    run: u64,
    deltas: &[Delta],
    k: usize,
    i: usize,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T> {
    LITERALS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(pos) = c.iter().position(|(key, _)| *key == (run, k, i)) {
            return Ok(f(&c[pos].1));
        }
        let d = &deltas[k];
        let r = d.recs[i];
        let What::Literal {
            payload_at,
            payload_len,
            stored,
        } = r.what
        else {
            unreachable!("leaf built from a literal record")
        };
        let mut payload = vec![0u8; payload_len as usize];
        d.file
            .read_exact_at(&mut payload, payload_at)
            .map_err(|e| Error::Io {
                what: d.name.clone(),
                source: e,
            })?;
        let mut bytes = Vec::new();
        format::literal_bytes(stored, &payload, r.length, &mut bytes).map_err(|source| {
            Error::Delta {
                name: d.name.clone(),
                source: match source {
                    format::Error::Corrupt { what, .. } => format::Error::Corrupt {
                        offset: payload_at,
                        what,
                    },
                    e => e,
                },
            }
        })?;
        let out = f(&bytes);
        if c.len() == LITERAL_CACHE_ENTRIES {
            c.remove(0);
        }
        c.push(((run, k, i), bytes));
        Ok(out)
    })
}

/// One produced window: its chunk digest, its ranges, and the bytes of its data ranges.
struct Window {
    digest: Digest,
    /// (offset in the window, length, leaf kind) with Base and Literal merged into `Data`.
    ranges: Vec<(u64, u64, Out)>,
    buf: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    Data,
    /// In place: bytes the base already holds at this offset.
    Keep,
    Zero,
    Unallocated,
}

/// Produce one window (resolve, read, inflate, hash); writing is left to the caller.
fn window(
    run: u64,
    deltas: &[Delta],
    base: Option<&dyn Image>,
    start: u64,
    len: u64,
    keep: bool,
    known: Option<Digest>,
) -> Result<Window> {
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
                buf: Vec::new(),
            });
        }
    }
    if ranges.iter().all(|r| r.2 != Out::Data && r.2 != Out::Keep) {
        return Ok(Window {
            digest: digest::zero_chunk_of(len),
            ranges,
            buf: Vec::new(),
        });
    }
    let mut buf = vec![0u8; len as usize];
    let mut pos = 0usize;
    for &(l, leaf) in &leaves {
        let dst = &mut buf[pos..pos + l as usize];
        match leaf {
            Leaf::Zero | Leaf::Unallocated => {}
            Leaf::Base(s) => base
                .ok_or_else(|| Error::Usage("copy from a base that is not there".into()))?
                .read_at(dst, s)?,
            Leaf::Literal { delta, rec, skip } => with_literal(run, deltas, delta, rec, |b| {
                dst.copy_from_slice(&b[skip as usize..skip as usize + dst.len()])
            })?,
        }
        pos += l as usize;
    }
    let digest = match (unchanged, known) {
        (true, Some(d)) => d,
        _ => {
            let mut lv = Vec::new();
            digest::leaves(&buf, &mut lv);
            digest::chunk_from_leaves(&lv)
        }
    };
    Ok(Window {
        digest,
        ranges,
        buf,
    })
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
    let deltas = prepare(base, deltas)?;
    produce(base, base_chunks, &deltas, sink, false)
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

/// Produce the target window by window into `sink`. With `keep`, ranges copied from the base at
/// their own offset are read (for the digest) but not handed to the sink: the base is the
/// output.
fn produce(
    base: Option<&dyn Image>,
    base_chunks: Option<&[Digest]>,
    deltas: &[Delta],
    sink: &mut dyn Sink,
    keep: bool,
) -> Result<Applied> {
    let last = &deltas[deltas.len() - 1].header;
    let size = last.target_size;
    let expect = last.target_digest;
    let nchunks = size.div_ceil(CHUNK_BYTES);
    let run = NEXT_RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut hasher = digest::ImageHasher::new(size);
    let mut written = 0;
    let mut c = 0;
    const BATCH: u64 = 32;
    while c < nchunks {
        let n = BATCH.min(nchunks - c);
        let res: Vec<Result<Window>> = (c..c + n)
            .into_par_iter()
            .map(|i| {
                let start = i * CHUNK_BYTES;
                let len = CHUNK_BYTES.min(size - start);
                // The base's digest of this chunk, if the target chunk is the same range.
                let known = base_chunks.and_then(|c| {
                    let base_len = base.map_or(0, |b| b.size()).saturating_sub(start);
                    if base_len.min(CHUNK_BYTES) == len {
                        c.get(i as usize).copied()
                    } else {
                        None
                    }
                });
                window(run, deltas, base, start, len, keep, known)
            })
            .collect();
        for (i, r) in (c..c + n).zip(res) {
            let w = r?;
            hasher.chunk(&w.digest);
            let start = i * CHUNK_BYTES;
            let io = |e| Error::Io {
                what: "writing the output".into(),
                source: e,
            };
            for &(o, l, kind) in &w.ranges {
                match kind {
                    Out::Data => {
                        sink.data(start + o, &w.buf[o as usize..(o + l) as usize])
                            .map_err(io)?;
                        written += l;
                    }
                    Out::Keep => {}
                    Out::Zero => sink.zero(start + o, l).map_err(io)?,
                    Out::Unallocated => sink.unallocated(start + o, l).map_err(io)?,
                }
            }
        }
        c += n;
    }
    let got = hasher.finish();
    if got != expect {
        return Err(Error::TargetDigest);
    }
    Ok(Applied {
        target_size: size,
        target_digest: got,
        written_bytes: written,
    })
}
