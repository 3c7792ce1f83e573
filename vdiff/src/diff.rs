//! The differ: two passes.
//!
//! 1. [`scan`] reads each image once, OLD and NEW at the same time (`rayon::join`), 1 MiB
//!    chunks hashed in parallel batches. It keeps, per block, a 16-byte digest (the first 16
//!    bytes of BLAKE3 over the block's leaf digests) and one byte of kind (data, zero,
//!    unallocated), and computes the image digest that goes into the header.
//! 2. [`diff`] walks NEW's blocks in order and picks, for each data block: continue the
//!    previous copy; the same offset in OLD; any block of OLD with the same digest; an earlier
//!    block of NEW; or a literal. Only literal blocks are read again, and their digests are
//!    checked against the first pass (an image changing under us is an error, not a bad delta).
//!    Literals are read and compressed in parallel batches, written in order.
//!
//! Memory, per block (4 KiB by default): NEW 21 bytes (digest, rolling checksum, kind) plus a
//! hash-map entry (about 32 bytes) for each literal block; OLD 21 bytes plus two hash-map
//! entries (by digest, by rolling checksum: about 50 bytes) for each data block. About 125
//! bytes per block of the pair at worst: 31 MiB per GiB of image at 4 KiB, 125 MiB for a
//! 4 GiB pair; `--block-size 16384` divides it by 4. The identity of NEW is
//! always its full digest, whatever its size: the first pass reads NEW once, the second reads
//! only its literal blocks.
//!
//! A 16-byte block digest could in principle collide (2^64 work for a birthday attack by a
//! hostile guest); such a collision would make a delta whose output fails the 32-byte target
//! digest check in vpatch. It can make a delta useless, never make vpatch write wrong data.

use crate::digest;
use crate::format::{
    Digest, Encoder, Header, Totals, CHUNK_BYTES, FLAG_FULL, FLAG_INDEX, LEAF_BYTES,
};
use crate::image::{Image, Kind};
use crate::{Error, Result};
use rayon::prelude::*;
// Keys are block digests and rolling checksums, millions of lookups per GiB: foldhash (fast,
// seeded at random per process, so a hostile guest cannot choose keys that collide).
use foldhash::HashMap;
use std::io::Write;

pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Target bytes per literal record the differ writes (the format allows up to 4 MiB). A
/// record never crosses a 1 MiB boundary of the target either: vpatch produces the target in
/// 1 MiB windows on every core, and a record inside one window is inflated once, by the
/// thread producing that window.
pub const LITERAL_RECORD_BYTES: u64 = 1 << 20;
/// Chunks hashed per parallel batch, and literal bytes compressed per batch.
const BATCH_CHUNKS: u64 = 32;
/// The bytes of NEW a batched diff takes at a time ([`diff_scanned_batches`]): 8 chunks (its
/// caller holds a batch while the differ works on another; a literal never spans batches, so
/// records are the same as with bigger batches).
pub const BATCH_BYTES: u64 = STREAM_BATCH_CHUNKS * CHUNK_BYTES;
const STREAM_BATCH_CHUNKS: u64 = 8;
/// Chunks per batch of [`diff_one_pass`], which holds two batches (one hashed while the other
/// is diffed): 8, so 16 MiB of buffers (32 held 64 MiB, every page of it new to the process and
/// cleared by the kernel on first touch, which on this VM cost more than the batches saved).
const ONE_PASS_BATCH_CHUNKS: u64 = 8;
const BATCH_LITERAL_BYTES: u64 = 32 << 20;

pub type BlockDigest = [u8; 16];

const K_DATA: u8 = 0;
const K_ZERO: u8 = 1;
const K_UNALLOCATED: u8 = 2;

/// What the first pass learns about an image.
pub struct Scan {
    pub size: u64,
    pub block_size: u32,
    pub digest: Digest,
    /// Per block: its digest (meaningful for data blocks only) and kind.
    pub blocks: Vec<BlockDigest>,
    kinds: Vec<u8>,
    /// Per block: the rolling checksum ([`weak`]) of a full data block, else 0.
    weaks: Vec<u32>,
}

impl Scan {
    /// A scan rebuilt from its parts (a signature file, a repository's stored scan). The
    /// vectors must all hold `ceil(size / block_size)` entries.
    pub fn from_parts(
        size: u64,
        block_size: u32,
        digest: Digest,
        blocks: Vec<BlockDigest>,
        kinds: Vec<u8>,
        weaks: Vec<u32>,
    ) -> Scan {
        Scan {
            size,
            block_size,
            digest,
            blocks,
            kinds,
            weaks,
        }
    }

    /// Block `i`'s rolling checksum (0 unless a full data block).
    pub fn weak(&self, i: usize) -> u32 {
        self.weaks[i]
    }

    /// Block `i`'s kind: 0 data, 1 zero, 2 unallocated.
    pub fn kind(&self, i: usize) -> u8 {
        self.kinds[i]
    }

    /// The rows of 1 MiB chunk `c` (whose digest the caller knows), to be placed in another
    /// scan through [`scan_composed`].
    pub fn chunk_rows(&self, c: u64, digest: Digest) -> ChunkScan {
        let per_chunk = (CHUNK_BYTES / self.block_size as u64) as usize;
        let b0 = (c as usize * per_chunk).min(self.blocks.len());
        let b1 = (b0 + per_chunk).min(self.blocks.len());
        ChunkScan {
            digest,
            blocks: self.blocks[b0..b1].to_vec(),
            kinds: self.kinds[b0..b1].to_vec(),
            weaks: self.weaks[b0..b1].to_vec(),
        }
    }

    fn block_len(&self, i: usize) -> u64 {
        let b = self.block_size as u64;
        b.min(self.size - i as u64 * b)
    }
}

/// What the first pass learns about one 1 MiB chunk: its digest and its blocks' rows.
#[derive(Clone, Debug)]
pub struct ChunkScan {
    pub digest: Digest,
    pub blocks: Vec<BlockDigest>,
    pub kinds: Vec<u8>,
    pub weaks: Vec<u32>,
}

/// The rolling checksum of rsync (two 16-bit sums), over a whole block: it finds blocks of
/// OLD at any byte offset of NEW's literal runs. Candidates are confirmed by the block digest.
pub fn weak(bytes: &[u8]) -> u32 {
    // a = sum of x_i; b = sum of (n - i) * x_i, both wanted mod 2^16 only, so 16-bit lanes
    // that wrap are exact. Bytes go to 32 lanes by i mod 32; per lane, `sa` sums the bytes
    // and `sb` sums `sa` after every row of 32, so sb_l = sum over rows c of (rows - c) * x.
    // Then with i = 32c + l and R rows: n - i = (n - 32R) + 32(R - c) - l, hence
    // b = (n - 32R) * A + 32 * sum(sb) - sum(l * sa_l), with A the rows' byte sum. No
    // multiply in the loop and no dependency between lanes: the compiler vectorizes it.
    const LANES: usize = 32;
    let mut sa = [0u16; LANES];
    let mut sb = [0u16; LANES];
    let mut rows = bytes.chunks_exact(LANES);
    for c in &mut rows {
        for l in 0..LANES {
            sa[l] = sa[l].wrapping_add(c[l] as u16);
            sb[l] = sb[l].wrapping_add(sa[l]);
        }
    }
    let rest = rows.remainder();
    let head = (bytes.len() - rest.len()) as u32;
    let n = bytes.len() as u32;
    let mut a_rows = 0u32;
    let mut b = 0u32;
    for l in 0..LANES {
        a_rows = a_rows.wrapping_add(sa[l] as u32);
        b = b
            .wrapping_add((sb[l] as u32).wrapping_mul(LANES as u32))
            .wrapping_sub((sa[l] as u32).wrapping_mul(l as u32));
    }
    b = b.wrapping_add((n - head).wrapping_mul(a_rows));
    let mut a = a_rows;
    for (k, &x) in rest.iter().enumerate() {
        a = a.wrapping_add(x as u32);
        b = b.wrapping_add((n - head - k as u32).wrapping_mul(x as u32));
    }
    (a & 0xffff) | (b << 16)
}

/// Roll the checksum of `len` bytes one byte on: `out` leaves, `inn` enters (the tests'
/// reference for the checksum at every offset).
#[cfg(test)]
fn roll(w: u32, out: u8, inn: u8, len: u32) -> u32 {
    let (a, b) = (w & 0xffff, w >> 16);
    let a2 = a.wrapping_sub(out as u32).wrapping_add(inn as u32) & 0xffff;
    let b2 = b
        .wrapping_sub(len.wrapping_mul(out as u32))
        .wrapping_add(a2)
        & 0xffff;
    a2 | (b2 << 16)
}

/// Per-thread scratch of the scan: a chunk's layout and its leaf digests.
type ScanScratch = (Vec<(u64, u64, Kind)>, Vec<Digest>);

thread_local! {
    /// Per-thread chunk bytes for [`scan_chunk`].
    static BUF: std::cell::RefCell<Vec<u8>> = Default::default();
    static SCRATCH: std::cell::RefCell<ScanScratch> = Default::default();
}

fn block_digest(leaves: &[Digest]) -> BlockDigest {
    let d = digest::chunk_from_leaves(leaves);
    d[..16].try_into().expect("16 bytes")
}

/// Read and hash the 1 MiB chunk at `start` (into a per-thread buffer).
pub fn scan_chunk(
    img: &dyn Image,
    start: u64,
    block_size: u64,
    keep_blocks: bool,
    want_weak: bool,
) -> Result<ChunkScan> {
    let len = CHUNK_BYTES.min(img.size() - start);
    BUF.with(|b| {
        let mut own = std::mem::take(&mut *b.borrow_mut());
        own.resize(len as usize, 0);
        // The buffer is this function's own: a chunk holding no data need not be read.
        let r = scan_chunk_rows(
            img,
            start,
            block_size,
            keep_blocks,
            want_weak,
            &mut own,
            None,
            false,
        );
        *b.borrow_mut() = own;
        r
    })
}

/// [`scan_chunk`] into `buf` (the chunk's length), which keeps the chunk's bytes. (Computing a
/// block's rolling checksum costs less than looking it up by digest in OLD's block map: the
/// map is too large for the caches.)
pub fn scan_chunk_into(
    img: &dyn Image,
    start: u64,
    block_size: u64,
    keep_blocks: bool,
    want_weak: bool,
    buf: &mut [u8],
) -> Result<ChunkScan> {
    scan_chunk_rows(
        img,
        start,
        block_size,
        keep_blocks,
        want_weak,
        buf,
        None,
        true,
    )
}

/// [`scan_chunk_into`], taking the rolling checksum of a block from `prior` (a scan with the
/// same block size, such as OLD's) when its block at the same index has the same digest: the
/// same bytes, so the same checksum, not computed again. A chunk the image says holds no data
/// is not read: its rows come from its layout, and `buf` is zeroed only with `fill_holes`
/// (when the caller keeps the bytes).
#[allow(clippy::too_many_arguments)]
fn scan_chunk_rows(
    img: &dyn Image,
    start: u64,
    block_size: u64,
    keep_blocks: bool,
    want_weak: bool,
    buf: &mut [u8],
    prior: Option<&Scan>,
    fill_holes: bool,
) -> Result<ChunkScan> {
    let len = buf.len() as u64;
    let prior = prior.filter(|p| p.block_size as u64 == block_size);
    let first = (start / block_size) as usize;
    SCRATCH.with(|b| {
        let (layout, leaves) = &mut *b.borrow_mut();
        if !img.layout_if_no_data(start, len, layout)? {
            img.read_layout(buf, start, layout)?;
        } else if fill_holes {
            buf.fill(0);
        }
        let nblocks = len.div_ceil(block_size) as usize;
        let mut out = ChunkScan {
            digest: [0; 32],
            blocks: Vec::new(),
            kinds: Vec::new(),
            weaks: Vec::new(),
        };
        let any_data = layout.iter().any(|l| l.2 == Kind::Data);
        if !any_data {
            out.digest = digest::zero_chunk_of(len);
        } else {
            digest::leaves(buf, leaves);
            out.digest = digest::chunk_from_leaves(leaves);
        }
        if !keep_blocks {
            return Ok(out);
        }
        out.blocks.resize(nblocks, [0; 16]);
        out.kinds.resize(nblocks, K_DATA);
        out.weaks.resize(nblocks, 0);
        let per_block = (block_size / LEAF_BYTES) as usize;
        let mut li = 0;
        for i in 0..nblocks {
            let bo = start + i as u64 * block_size;
            let be = (bo + block_size).min(start + len);
            // The layout pieces overlapping this block.
            while li < layout.len() && layout[li].0 + layout[li].1 <= bo {
                li += 1;
            }
            let mut has_data = false;
            let mut all_unalloc = true;
            let mut j = li;
            while j < layout.len() && layout[j].0 < be {
                match layout[j].2 {
                    Kind::Data => has_data = true,
                    Kind::Zero => all_unalloc = false,
                    Kind::Unallocated => {}
                }
                j += 1;
            }
            let bytes = &buf[(bo - start) as usize..(be - start) as usize];
            out.kinds[i] = if has_data && !digest::is_zero(bytes) {
                let l0 = i * per_block;
                let l1 = (l0 + per_block).min(leaves.len());
                out.blocks[i] = block_digest(&leaves[l0..l1]);
                if want_weak && bytes.len() as u64 == block_size {
                    let j = first + i;
                    out.weaks[i] = match prior {
                        Some(p)
                            if p.kinds.get(j) == Some(&K_DATA)
                                && p.weaks[j] != 0
                                && p.blocks[j] == out.blocks[i] =>
                        {
                            p.weaks[j]
                        }
                        _ => weak(bytes),
                    };
                }
                K_DATA
            } else if !has_data && all_unalloc {
                K_UNALLOCATED
            } else {
                K_ZERO
            };
        }
        Ok(out)
    })
}

/// Read an image once: its digest and, with `keep_blocks`, its per-block digests and kinds.
/// Blocks kept also get their rolling checksums (OLD's side of a diff, signatures).
pub fn scan(img: &dyn Image, block_size: u32, keep_blocks: bool) -> Result<Scan> {
    scan_reusing(img, block_size, keep_blocks, keep_blocks, None)
}

/// NEW's side of a diff: per-block digests and kinds, no rolling checksums (only OLD's are
/// looked up), which saves a pass of arithmetic over every data byte.
pub fn scan_new(img: &dyn Image, block_size: u32) -> Result<Scan> {
    scan_reusing(img, block_size, true, false, None)
}

/// Chunks a scan may take from an earlier scan instead of reading: the earlier scan, its chunk
/// digests, and which chunks of the image are known to equal it.
pub struct Reuse<'a> {
    pub from: &'a Scan,
    pub chunk_digests: &'a [Digest],
    pub same: &'a (dyn Fn(u64, u64) -> Result<bool> + Sync),
}

fn scan_reusing(
    img: &dyn Image,
    block_size: u32,
    keep_blocks: bool,
    want_weak: bool,
    reuse: Option<&Reuse>,
) -> Result<Scan> {
    Ok(scan_with_chunks(img, block_size, keep_blocks, want_weak, reuse)?.0)
}

/// [`scan`], also returning every chunk digest (32 bytes per MiB).
pub fn scan_with_chunks(
    img: &dyn Image,
    block_size: u32,
    keep_blocks: bool,
    want_weak: bool,
    reuse: Option<&Reuse>,
) -> Result<(Scan, Vec<Digest>)> {
    let size = img.size();
    let known = |i: u64| -> Result<Option<ChunkScan>> {
        let Some(r) = reuse else { return Ok(None) };
        let start = i * CHUNK_BYTES;
        let len = CHUNK_BYTES.min(size - start);
        if r.from.size == size && (r.same)(start, len)? {
            return Ok(Some(r.from.chunk_rows(i, r.chunk_digests[i as usize])));
        }
        Ok(None)
    };
    scan_composed(img, block_size, keep_blocks, want_weak, &known)
}

/// The general first pass: chunk `i` (1 MiB) is taken from `known(i)` when it answers, and
/// read and hashed otherwise (in parallel batches). What `known` supplies must be exactly what
/// reading would give: block rows with the scan's block size, and the chunk's digest; the
/// image digest is computed from the chunk digests either way.
pub fn scan_composed(
    img: &dyn Image,
    block_size: u32,
    keep_blocks: bool,
    want_weak: bool,
    known: &(dyn Fn(u64) -> Result<Option<ChunkScan>> + Sync),
) -> Result<(Scan, Vec<Digest>)> {
    check_block_size(block_size)?;
    let size = img.size();
    let nchunks = size.div_ceil(CHUNK_BYTES);
    let mut hasher = digest::ImageHasher::new(size);
    let nblocks = size.div_ceil(block_size as u64) as usize;
    let mut s = Scan {
        size,
        block_size,
        digest: [0; 32],
        blocks: Vec::with_capacity(if keep_blocks { nblocks } else { 0 }),
        kinds: Vec::with_capacity(if keep_blocks { nblocks } else { 0 }),
        weaks: Vec::with_capacity(if keep_blocks { nblocks } else { 0 }),
    };
    let mut chunks = Vec::with_capacity(nchunks as usize);
    let per_chunk = (CHUNK_BYTES / block_size as u64) as usize;
    let mut c = 0;
    while c < nchunks {
        let n = BATCH_CHUNKS.min(nchunks - c);
        let batch: Vec<Result<ChunkScan>> = (c..c + n)
            .into_par_iter()
            .map(|i| {
                let start = i * CHUNK_BYTES;
                if let Some(k) = known(i)? {
                    let len = CHUNK_BYTES.min(size - start);
                    let want = if keep_blocks {
                        len.div_ceil(block_size as u64) as usize
                    } else {
                        0
                    };
                    if keep_blocks
                        && (k.blocks.len() != want
                            || k.kinds.len() != want
                            || k.weaks.len() != want
                            || want > per_chunk)
                    {
                        return Err(Error::Input(format!(
                            "a known chunk at byte {start} has {} block rows, expected {want}",
                            k.blocks.len()
                        )));
                    }
                    return Ok(k);
                }
                scan_chunk(img, start, block_size as u64, keep_blocks, want_weak)
            })
            .collect();
        for r in batch {
            let r = r?;
            hasher.chunk(&r.digest);
            chunks.push(r.digest);
            if keep_blocks {
                s.blocks.extend_from_slice(&r.blocks);
                s.kinds.extend_from_slice(&r.kinds);
                s.weaks.extend_from_slice(&r.weaks);
            }
        }
        c += n;
    }
    s.digest = hasher.finish();
    Ok((s, chunks))
}

/// If `old` is a link of `new`'s snapshot chain (the same file, and the child above it still
/// names its CID as parentCID), the index of that link in `new`'s chain.
pub fn snapshot_link(old: &vmdk_parse::Disk, new: &vmdk_parse::Disk) -> Option<usize> {
    let top = old.links.first()?;
    let cid = top.cid?;
    let path = top.path.canonicalize().ok()?;
    (1..new.links.len()).find(|&k| {
        new.links[k].path.canonicalize().ok().as_ref() == Some(&path)
            && new.links[k].cid == Some(cid)
            && new.links[k - 1].parent_cid == Some(cid)
            && new.links.len() - k == old.links.len()
    })
}

/// [`diff`] for two disks, taking VMware's own change tracking when `old` is a link of `new`'s
/// chain: OLD is read once (its digest is the delta's source identity), and of NEW only the
/// 1 MiB chunks holding grains allocated above OLD are read; every other chunk equals OLD's.
pub fn diff_disks<W: Write>(
    old: &vmdk_parse::Disk,
    new: &vmdk_parse::Disk,
    opts: DiffOptions,
    out: W,
) -> Result<Summary> {
    let Some(k) = snapshot_link(old, new) else {
        return diff(Some(old), new, opts, out);
    };
    check_block_size(opts.block_size)?;
    let (old_scan, chunks) = scan_with_chunks(old, opts.block_size, true, true, None)?;
    let same = |start: u64, len: u64| -> Result<bool> {
        let mut pieces = Vec::new();
        new.resolve(start, len, false, &mut pieces)?;
        Ok(pieces.iter().all(|p| p.depth as usize >= k))
    };
    let reuse = Reuse {
        from: &old_scan,
        chunk_digests: &chunks,
        same: &same,
    };
    let new_scan = scan_reusing(new, opts.block_size, true, false, Some(&reuse))?;
    let mut s = second_pass(Some(old_scan), new_scan, new, Some(old), opts, out)?;
    s.snapshot_link = Some(k as u32);
    Ok(s)
}

/// How to diff.
#[derive(Clone, Copy, Debug)]
pub struct DiffOptions {
    /// Matching granularity: a power of two from 4 KiB to 1 MiB. Default 4 KiB.
    pub block_size: u32,
    /// zstd level for literals. Default 3.
    pub level: i32,
    /// Append the trailing index (random access for a delta stored as a file). Default no.
    pub index: bool,
}

impl Default for DiffOptions {
    fn default() -> DiffOptions {
        DiffOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            level: 3,
            index: false,
        }
    }
}

/// What a diff found, beyond the stream totals.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub source_size: u64,
    pub target_size: u64,
    pub identical: bool,
    /// Target bytes that differ from the source at the same offset (all of them past its end).
    pub changed_bytes: u64,
    /// Copy-source bytes taken from the same offset (unchanged data).
    pub unchanged_bytes: u64,
    /// When OLD was found in NEW's snapshot chain: its link index (only grains above it read).
    pub snapshot_link: Option<u32>,
    #[serde(skip)]
    pub totals: Totals,
    #[serde(skip)]
    pub source_digest: Digest,
    #[serde(skip)]
    pub target_digest: Digest,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Literal {
        offset: u64,
        length: u64,
    },
    Zero(u64),
    Unallocated(u64),
    CopySource {
        from: u64,
        length: u64,
    },
    /// `at`: where the record starts in the target; the copy must end before it.
    CopyTarget {
        from: u64,
        length: u64,
        at: u64,
    },
}

fn check_block_size(b: u32) -> Result<()> {
    if !b.is_power_of_two()
        || !(crate::format::MIN_BLOCK_SIZE..=crate::format::MAX_BLOCK_SIZE).contains(&b)
    {
        return Err(Error::Usage(format!(
            "block size {b} is not a power of two from 4096 to 1048576"
        )));
    }
    Ok(())
}

/// Whether two images read the same (size and image digest). One read of each, in parallel.
pub fn same(old: &dyn Image, new: &dyn Image) -> Result<bool> {
    if old.size() != new.size() {
        return Ok(false);
    }
    let (a, b) = rayon::join(|| scan(old, 4096, false), || scan(new, 4096, false));
    Ok(a?.digest == b?.digest)
}

/// The image digest of one image.
pub fn image_digest(img: &dyn Image) -> Result<Digest> {
    Ok(scan(img, 4096, false)?.digest)
}

/// Write the delta turning `old` (or nothing) into `new` to `out`.
pub fn diff<W: Write>(
    old: Option<&dyn Image>,
    new: &dyn Image,
    opts: DiffOptions,
    out: W,
) -> Result<Summary> {
    check_block_size(opts.block_size)?;
    let bs = opts.block_size;
    let (old_scan, new_scan) = match old {
        Some(o) => {
            let (a, b) = rayon::join(|| scan(o, bs, true), || scan_new(new, bs));
            (Some(a?), b?)
        }
        None => (None, scan_new(new, bs)?),
    };
    second_pass(old_scan, new_scan, new, old, opts, out)
}

/// Write the delta from the image a signature describes (on another host) to `new`. The
/// block size is the signature's; `opts.block_size` is not used.
pub fn diff_against<W: Write>(
    old: Scan,
    new: &dyn Image,
    opts: DiffOptions,
    out: W,
) -> Result<Summary> {
    let new_scan = scan_new(new, old.block_size)?;
    diff_scanned(Some(old), new_scan, new, opts, out)
}

/// The second pass on its own: write the delta from `old_scan` (or nothing) to `new`, given
/// NEW's first-pass scan (from [`scan_new`] or [`scan_composed`]). Only literal blocks of
/// `new` are read, and checked against `new_scan`.
pub fn diff_scanned<W: Write>(
    old_scan: Option<Scan>,
    new_scan: Scan,
    new: &dyn Image,
    opts: DiffOptions,
    out: W,
) -> Result<Summary> {
    second_pass(old_scan, new_scan, new, None, opts, out)
}

/// [`diff_scanned`], with OLD's bytes when the caller has them (`old_img`): each copy from
/// OLD is then extended byte by byte into the literal bytes before and after it.
fn second_pass<W: Write>(
    old_scan: Option<Scan>,
    new_scan: Scan,
    new: &dyn Image,
    old_img: Option<&dyn Image>,
    opts: DiffOptions,
    out: W,
) -> Result<Summary> {
    let mut eng = Engine::for_scans(old_scan.as_ref(), &new_scan, opts, out)?;
    eng.old_img = old_img;
    for i in 0..new_scan.kinds.len() {
        eng.decide(&new_scan, i);
        if eng.pending_literal >= BATCH_LITERAL_BYTES {
            eng.flush(new, &new_scan, None)?;
        }
    }
    eng.flush(new, &new_scan, None)?;
    eng.write_held_copy()?;
    let (totals, _) = eng.enc.finish()?;
    eng.summary.totals = totals;
    Ok(eng.summary)
}

/// What hands NEW over to [`diff_scanned_batches`]: `(start, len, buffer)`.
pub type BatchFill<'a> = dyn FnMut(u64, usize, &mut Vec<u8>) -> Result<()> + 'a;

/// [`diff_scanned`] with NEW handed over in order rather than read: `fill(start, len, buf)`
/// must leave NEW's bytes `[start, start + len)` in `buf` (holes as zeros; `buf` holds the
/// previous batch, or nothing, and may be swapped for a buffer of the caller's), for
/// consecutive batches of [`BATCH_BYTES`] (the last one shorter). Nothing is read twice and nothing is checked against `new_scan`: the caller
/// vouches for the bytes (vrepo's rewrites take them from vpatch, which checks the volume's
/// digest before the rewrite is kept). Used to restage an entry straight from the volume being
/// built, with no copy of the volume on disk.
pub fn diff_scanned_batches<W: Write>(
    old_scan: Option<Scan>,
    new_scan: Scan,
    opts: DiffOptions,
    out: W,
    fill: &mut BatchFill,
) -> Result<Summary> {
    let mut eng = Engine::for_scans(old_scan.as_ref(), &new_scan, opts, out)?;
    let size = new_scan.size;
    let bs = new_scan.block_size as u64;
    let nchunks = size.div_ceil(CHUNK_BYTES);
    let mut buf = Vec::new();
    let mut c = 0;
    while c < nchunks {
        let n = STREAM_BATCH_CHUNKS.min(nchunks - c);
        let start = c * CHUNK_BYTES;
        let len = (n * CHUNK_BYTES).min(size - start) as usize;
        fill(start, len, &mut buf)?;
        if buf.len() != len {
            return Err(Error::Input(format!(
                "the batch at byte {start} came with {} bytes, {len} expected",
                buf.len()
            )));
        }
        let first = (start / bs) as usize;
        let last = ((start + len as u64).div_ceil(bs) as usize).min(new_scan.kinds.len());
        for i in first..last {
            eng.decide(&new_scan, i);
        }
        let read = vec![true; n as usize];
        let batch = BatchBytes {
            start,
            bytes: &buf,
            read: &read,
        };
        eng.flush(&NoImage(size), &new_scan, Some(&batch))?;
        c += n;
    }
    eng.write_held_copy()?;
    let (totals, _) = eng.enc.finish()?;
    eng.summary.totals = totals;
    Ok(eng.summary)
}

/// The image behind a batched diff: never read (every literal is inside its batch, since a
/// batch is whole blocks and records do not cross a batch).
struct NoImage(u64);

impl Image for NoImage {
    fn size(&self) -> u64 {
        self.0
    }
    fn read_layout(&self, _: &mut [u8], offset: u64, _: &mut Vec<(u64, u64, Kind)>) -> Result<()> {
        Err(Error::Input(format!(
            "a batched diff read byte {offset} outside its batch"
        )))
    }
}

/// Bytes of NEW read in the current batch of a one-pass diff: the batch's start and, per 1 MiB
/// chunk, whether it was read (chunks supplied by the caller are not).
struct BatchBytes<'a> {
    start: u64,
    bytes: &'a [u8],
    read: &'a [bool],
}

impl BatchBytes<'_> {
    /// The bytes of `[offset, offset + len)`, when they were all read in this batch.
    fn get(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if offset < self.start || end > self.start + self.bytes.len() as u64 {
            return None;
        }
        let c0 = ((offset - self.start) / CHUNK_BYTES) as usize;
        let c1 = ((end - self.start).div_ceil(CHUNK_BYTES)) as usize;
        if !self.read[c0..c1].iter().all(|&r| r) {
            return None;
        }
        Some(&self.bytes[(offset - self.start) as usize..(end - self.start) as usize])
    }
}

/// Where [`diff_one_pass`] writes a delta: written in order from its start, and at the end its
/// first [`crate::format::HEADER_LEN`] bytes (the header, now with the target digest) are
/// written again.
pub trait DeltaOut: Write + Send {
    /// Replace the first `bytes.len()` bytes written.
    fn rewrite_start(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

impl<T: DeltaOut + ?Sized> DeltaOut for &mut T {
    fn rewrite_start(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        (**self).rewrite_start(bytes)
    }
}

impl<T: DeltaOut + ?Sized> DeltaOut for Box<T> {
    fn rewrite_start(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        (**self).rewrite_start(bytes)
    }
}

impl DeltaOut for &std::fs::File {
    fn rewrite_start(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(*self, bytes, 0)
    }
}

/// A diff in one pass over NEW: each batch of 1 MiB chunks is read and hashed (in parallel),
/// its blocks are matched, and its literals are compressed from the bytes still in memory;
/// NEW is read once. Chunk `i` is taken from `known(i)` instead when it answers (rows and
/// digest, as in [`scan_composed`]; such chunks are not read unless a literal needs them).
///
/// NEW's image digest is known only at the end, so it is written into the end record and
/// then into the header, which is written again at the end ([`DeltaOut::rewrite_start`]):
/// `out` is a file written from its start, or a stream that holds its first bytes back (an
/// upload). Returns the summary, NEW's scan and its chunk digests.
pub fn diff_one_pass<W: DeltaOut>(
    old_scan: Option<&Scan>,
    new: &dyn Image,
    known: &(dyn Fn(u64) -> Result<Option<ChunkScan>> + Sync),
    opts: DiffOptions,
    out: W,
) -> Result<(Summary, Scan, Vec<Digest>)> {
    check_block_size(opts.block_size)?;
    let bs = opts.block_size;
    let size = new.size();
    let header = Header {
        flags: if old_scan.is_none() { FLAG_FULL } else { 0 }
            | if opts.index { FLAG_INDEX } else { 0 },
        block_size: bs,
        source_size: old_scan.as_ref().map_or(0, |s| s.size),
        target_size: size,
        source_digest: old_scan.as_ref().map_or([0; 32], |s| s.digest),
        // Rewritten at the end, once known.
        target_digest: [0; 32],
    };
    let w = std::io::BufWriter::with_capacity(1 << 20, out);
    let enc = Encoder::new(w, header.clone(), opts.level)?;
    let mut eng = Engine::new(old_scan, enc, opts.level, &header);
    let nblocks = size.div_ceil(bs as u64) as usize;
    let mut scan = Scan {
        size,
        block_size: bs,
        digest: [0; 32],
        blocks: Vec::with_capacity(nblocks),
        kinds: Vec::with_capacity(nblocks),
        weaks: Vec::with_capacity(nblocks),
    };
    let mut hasher = digest::ImageHasher::new(size);
    let nchunks = size.div_ceil(CHUNK_BYTES);
    let mut chunks = Vec::with_capacity(nchunks as usize);
    // Read and hash batch `c` into `buf`, in parallel.
    let scan_batch = |c: u64, buf: &mut Vec<u8>| -> Vec<Result<(ChunkScan, bool)>> {
        let n = ONE_PASS_BATCH_CHUNKS.min(nchunks - c);
        let start = c * CHUNK_BYTES;
        buf.resize((n * CHUNK_BYTES).min(size - start) as usize, 0);
        buf.par_chunks_mut(CHUNK_BYTES as usize)
            .enumerate()
            .map(|(k, dst)| {
                let i = c + k as u64;
                if let Some(cs) = known(i)? {
                    return Ok((cs, false));
                }
                let cs = scan_chunk_rows(
                    new,
                    i * CHUNK_BYTES,
                    bs as u64,
                    true,
                    true,
                    dst,
                    old_scan,
                    true,
                )?;
                Ok((cs, true))
            })
            .collect()
    };
    // Batch c+1 is read and hashed while batch c's literals are compressed and written (both
    // on every core): the reading no longer waits for the writing.
    let (mut cur, mut next_buf) = (Vec::new(), Vec::new());
    let mut res = (nchunks > 0).then(|| scan_batch(0, &mut cur));
    let mut c = 0;
    while let Some(batch_res) = res.take() {
        let n = batch_res.len() as u64;
        let start = c * CHUNK_BYTES;
        let mut read = Vec::with_capacity(n as usize);
        let first_block = scan.blocks.len();
        for r in batch_res {
            let (cs, was_read) = r?;
            hasher.chunk(&cs.digest);
            chunks.push(cs.digest);
            scan.blocks.extend_from_slice(&cs.blocks);
            scan.kinds.extend_from_slice(&cs.kinds);
            scan.weaks.extend_from_slice(&cs.weaks);
            read.push(was_read);
        }
        if scan.blocks.len() != (((start + cur.len() as u64).div_ceil(bs as u64)) as usize) {
            return Err(Error::Input(format!(
                "a known chunk in the batch at byte {start} has the wrong number of block rows"
            )));
        }
        for i in first_block..scan.blocks.len() {
            eng.decide(&scan, i);
        }
        let next_c = c + n;
        let batch = BatchBytes {
            start,
            bytes: &cur,
            read: &read,
        };
        let old = eng.old;
        let (next, flushed) = rayon::join(
            || (next_c < nchunks).then(|| scan_batch(next_c, &mut next_buf)),
            || {
                flush(
                    &mut eng.enc,
                    new,
                    &scan,
                    old,
                    None,
                    &eng.weak_index,
                    &mut eng.pending,
                    &mut eng.copy,
                    eng.level,
                    Some(&batch),
                )
            },
        );
        flushed?;
        eng.pending_literal = 0;
        std::mem::swap(&mut cur, &mut next_buf);
        res = next;
        c = next_c;
    }
    scan.digest = hasher.finish();
    eng.enc.set_target_digest(scan.digest);
    eng.write_held_copy()?;
    let (totals, w) = eng.enc.finish()?;
    w.into_inner()
        .map_err(|e| Error::Io(e.into_error()))?
        .rewrite_start(
            &Header {
                target_digest: scan.digest,
                ..header
            }
            .encode(),
        )?;
    eng.summary.totals = totals;
    eng.summary.target_digest = scan.digest;
    eng.summary.identical = old_scan.is_some_and(|o| o.size == size && o.digest == scan.digest);
    Ok((eng.summary, scan, chunks))
}

/// The matching and writing shared by both ways of diffing: decide each block of NEW in
/// order, then [`Engine::flush`] the pending records (literals compressed in parallel).
struct Engine<'a, W: Write> {
    enc: Encoder<W>,
    old: Option<&'a Scan>,
    /// OLD's bytes, when this side has them (not from a signature, nor in vrepo's saves):
    /// copies are then extended byte by byte into the literal bytes around them.
    old_img: Option<&'a dyn Image>,
    old_index: HashMap<BlockDigest, u32>,
    new_index: HashMap<BlockDigest, u32>,
    weak_index: WeakIndex,
    pending: Vec<Op>,
    pending_literal: u64,
    /// A copy from OLD written last, held so that the next one can continue it (across
    /// flushes too: a copy runs on over the end of a batch).
    copy: Option<(u64, u64)>,
    summary: Summary,
    level: i32,
}

impl<'a, W: Write> Engine<'a, W> {
    /// The engine writing the delta from `old` to the image `new` describes (its scan known
    /// up front: the header is complete from the start).
    fn for_scans(old: Option<&'a Scan>, new: &Scan, opts: DiffOptions, out: W) -> Result<Self> {
        let header = Header {
            flags: if old.is_none() { FLAG_FULL } else { 0 }
                | if opts.index { FLAG_INDEX } else { 0 },
            block_size: new.block_size,
            source_size: old.map_or(0, |s| s.size),
            target_size: new.size,
            source_digest: old.map_or([0; 32], |s| s.digest),
            target_digest: new.digest,
        };
        let enc = Encoder::new(out, header.clone(), opts.level)?;
        let mut eng = Engine::new(old, enc, opts.level, &header);
        eng.summary.identical = old.is_some_and(|o| o.size == new.size && o.digest == new.digest);
        Ok(eng)
    }

    fn new(old: Option<&'a Scan>, enc: Encoder<W>, level: i32, header: &Header) -> Self {
        // Index OLD's data blocks by digest (first occurrence wins).
        let mut old_index: HashMap<BlockDigest, u32> = HashMap::default();
        if let Some(o) = old {
            old_index.reserve(o.kinds.iter().filter(|&&k| k == K_DATA).count());
            for (i, (d, &k)) in o.blocks.iter().zip(&o.kinds).enumerate() {
                if k == K_DATA {
                    old_index.entry(*d).or_insert(i as u32);
                }
            }
        }
        Engine {
            enc,
            old,
            old_img: None,
            old_index,
            new_index: HashMap::default(),
            weak_index: WeakIndex::new(old),
            pending: Vec::new(),
            pending_literal: 0,
            copy: None,
            summary: Summary {
                source_size: header.source_size,
                target_size: header.target_size,
                source_digest: header.source_digest,
                target_digest: header.target_digest,
                ..Summary::default()
            },
            level,
        }
    }

    /// Write the copy held for continuation, if any (before the end record).
    fn write_held_copy(&mut self) -> Result<()> {
        if let Some((from, length)) = self.copy.take() {
            self.enc.copy_source(from, length)?;
        }
        Ok(())
    }

    /// OLD's kind and digest of the block at `off`, when `off` starts a block of OLD.
    fn old_block(&self, off: u64) -> Option<(u8, &'a BlockDigest)> {
        let o = self.old?;
        let b = o.block_size as u64;
        if off % b != 0 || off >= o.size {
            return None;
        }
        let i = (off / b) as usize;
        Some((o.kinds[i], &o.blocks[i]))
    }

    /// Choose the record for block `i` of NEW (`scan` holds at least blocks `0..=i`).
    fn decide(&mut self, scan: &Scan, i: usize) {
        let b = scan.block_size as u64;
        let off = i as u64 * b;
        let len = scan.block_len(i);
        let kind = scan.kinds[i];
        let d = scan.blocks[i];
        let old = self.old;
        let same_as_old = match self.old_block(off) {
            Some((ok, od)) => {
                old.is_some_and(|o| o.block_len(i) == len)
                    && match (ok, kind) {
                        (K_DATA, K_DATA) => *od == d,
                        (K_DATA, _) | (_, K_DATA) => false,
                        _ => true,
                    }
            }
            None => false,
        };
        if !same_as_old {
            self.summary.changed_bytes += len;
        }
        let op = match kind {
            K_UNALLOCATED => Op::Unallocated(len),
            K_ZERO => Op::Zero(len),
            _ => {
                let cont_src = match self.pending.last() {
                    Some(Op::CopySource { from, length }) => Some(from + length),
                    _ => None,
                };
                let cont_tgt = match self.pending.last() {
                    Some(Op::CopyTarget { from, length, at }) if from + length + len <= *at => {
                        Some(from + length)
                    }
                    _ => None,
                };
                let is_old = |o: u64| {
                    matches!(self.old_block(o), Some((K_DATA, od)) if *od == d)
                        && old.is_some_and(|s| s.size - o >= len)
                };
                if let Some(s) = cont_src.filter(|&s| is_old(s)) {
                    Op::CopySource {
                        from: s,
                        length: len,
                    }
                } else if is_old(off) {
                    Op::CopySource {
                        from: off,
                        length: len,
                    }
                } else if let Some(&j) = self.old_index.get(&d) {
                    Op::CopySource {
                        from: j as u64 * b,
                        length: len,
                    }
                } else if let Some(t) = cont_tgt.filter(|&t| {
                    t % b == 0
                        && t < off
                        && scan.kinds[(t / b) as usize] == K_DATA
                        && scan.blocks[(t / b) as usize] == d
                        && scan.block_len((t / b) as usize) == len
                }) {
                    Op::CopyTarget {
                        from: t,
                        length: len,
                        at: off,
                    }
                } else if let Some(&j) = self
                    .new_index
                    .get(&d)
                    .filter(|&&j| scan.block_len(j as usize) == len)
                {
                    Op::CopyTarget {
                        from: j as u64 * b,
                        length: len,
                        at: off,
                    }
                } else {
                    self.new_index.insert(d, i as u32);
                    self.pending_literal += len;
                    Op::Literal {
                        offset: off,
                        length: len,
                    }
                }
            }
        };
        if let Op::CopySource { from, .. } = op {
            if from == off {
                self.summary.unchanged_bytes += len;
            }
        }
        push_op(&mut self.pending, op);
    }

    /// Write the pending records: literals read (or taken from `batch`) and compressed in
    /// parallel, after looking for OLD's blocks at unaligned offsets in them.
    fn flush(&mut self, new: &dyn Image, scan: &Scan, batch: Option<&BatchBytes>) -> Result<()> {
        flush(
            &mut self.enc,
            new,
            scan,
            self.old,
            self.old_img,
            &self.weak_index,
            &mut self.pending,
            &mut self.copy,
            self.level,
            batch,
        )?;
        self.pending_literal = 0;
        Ok(())
    }
}

/// Append `op`, merging it into the last op when it continues it.
fn push_op(ops: &mut Vec<Op>, op: Op) {
    if let Some(last) = ops.last_mut() {
        match (last, op) {
            (Op::Zero(a), Op::Zero(b)) | (Op::Unallocated(a), Op::Unallocated(b)) => {
                *a += b;
                return;
            }
            (
                Op::Literal { offset, length },
                Op::Literal {
                    offset: o,
                    length: l,
                },
            ) if *offset + *length == o
                && *length + l <= LITERAL_RECORD_BYTES
                && *offset / CHUNK_BYTES == (o + l - 1) / CHUNK_BYTES =>
            {
                *length += l;
                return;
            }
            (Op::CopySource { from, length }, Op::CopySource { from: f, length: l })
                if *from + *length == f =>
            {
                *length += l;
                return;
            }
            // A copy-target record may not read what it writes itself.
            (
                Op::CopyTarget { from, length, at },
                Op::CopyTarget {
                    from: f, length: l, ..
                },
            ) if *from + *length == f && f + l <= *at => {
                *length += l;
                return;
            }
            _ => {}
        }
    }
    ops.push(op);
}

/// OLD's full data blocks by rolling checksum, with a filter in front of the map so that the
/// byte-by-byte scan of literal runs rarely touches the map: a blocked Bloom filter (three bits
/// in one 64-bit word per checksum, about 16 bits per block), one memory access per byte
/// position and about 1 false hit in 200 (a one-bit filter let 1 in 16 through to the map).
struct WeakIndex {
    map: HashMap<u32, u32>,
    filter: Vec<u64>,
    /// log2 of the filter's words.
    word_bits: u32,
}

impl WeakIndex {
    fn new(old: Option<&Scan>) -> WeakIndex {
        let Some(o) = old else {
            return WeakIndex {
                map: HashMap::default(),
                filter: Vec::new(),
                word_bits: 0,
            };
        };
        let n = o.weaks.iter().filter(|&&w| w != 0).count();
        let words = (n.max(1) / 4).next_power_of_two().clamp(1 << 10, 1 << 24);
        let mut idx = WeakIndex {
            map: HashMap::with_capacity_and_hasher(n, Default::default()),
            filter: vec![0; words],
            word_bits: words.trailing_zeros(),
        };
        for (i, &w) in o.weaks.iter().enumerate() {
            if w != 0 && o.kinds[i] == K_DATA {
                idx.map.entry(w).or_insert(i as u32);
                let (word, bits) = idx.probe(w);
                idx.filter[word] |= bits;
            }
        }
        idx
    }

    /// The filter word and the three bits in it for checksum `w`.
    #[inline]
    fn probe(&self, w: u32) -> (usize, u64) {
        // The product's high bits depend on every bit of `w`: the word from the top (at most
        // 24 bits), the three bit positions from the 18 bits below.
        let x = (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let word = (x >> (64 - self.word_bits)) as usize;
        let bits = 1u64 << ((x >> 22) & 63) | 1u64 << ((x >> 28) & 63) | 1u64 << ((x >> 34) & 63);
        (word, bits)
    }
}

/// A literal run split by unaligned matches: bytes to send, or a copy from the source.
enum Part {
    Literal {
        length: u64,
        stored: bool,
        payload: Vec<u8>,
    },
    Copy {
        from: u64,
        length: u64,
    },
}

thread_local! {
    /// Per-thread prefix sums of [`split_unaligned`].
    static PREFIX: std::cell::RefCell<(Vec<u16>, Vec<u16>)> = Default::default();
}

/// Find blocks of OLD at any byte offset of a literal run (`buf`), rsync style: the weak
/// checksum at every byte offset, a candidate confirmed with the block digest, a match
/// extended block by block. Returns the run as literal pieces and copies.
///
/// The checksum at offset `i` comes from two prefix sums (mod 2^16, like the checksum): with
/// `s[j]` the sum of the first `j` bytes and `t[j] = s[1] + ... + s[j]`, a block of `n` bytes
/// at `i` has `a = s[i+n] - s[i]` and `b = t[i+n] - t[i] - n * s[i]`. Unlike rolling, every
/// offset is independent of the one before, so they are computed 64 at a time (vectorized)
/// and their filter lookups overlap; the result is the same as rolling byte by byte.
fn split_unaligned(
    buf: &[u8],
    old: Option<&Scan>,
    idx: &WeakIndex,
) -> Vec<(usize, usize, Option<u64>)> {
    let mut parts = Vec::new();
    let Some(old) = old else {
        parts.push((0, buf.len(), None));
        return parts;
    };
    let bs = old.block_size as usize;
    if idx.map.is_empty() || buf.len() < bs {
        parts.push((0, buf.len(), None));
        return parts;
    }
    let strong = |bytes: &[u8]| {
        let mut leaves = Vec::new();
        digest::leaves(bytes, &mut leaves);
        block_digest(&leaves)
    };
    PREFIX.with(|p| {
        let (s, t) = &mut *p.borrow_mut();
        s.clear();
        t.clear();
        s.resize(buf.len() + 1, 0);
        t.resize(buf.len() + 1, 0);
        let (mut sa, mut ta) = (0u16, 0u16);
        for ((&x, sj), tj) in buf.iter().zip(&mut s[1..]).zip(&mut t[1..]) {
            sa = sa.wrapping_add(x as u16);
            ta = ta.wrapping_add(sa);
            *sj = sa;
            *tj = ta;
        }
        let (s, t) = (&s[..], &t[..]);
        let n16 = bs as u16; // mod 2^16, as the sums
                             // The first offset in from..=last whose checksum the index holds and whose block
                             // digest confirms it, with OLD's block.
        let next_hit = |from: usize, last: usize| -> Option<(usize, u32)> {
            const G: usize = 64;
            let mut ws = [0u32; G];
            let mut k = from;
            while k <= last {
                let g = G.min(last + 1 - k);
                let (s0, s1) = (&s[k..k + g], &s[k + bs..k + bs + g]);
                let (t0, t1) = (&t[k..k + g], &t[k + bs..k + bs + g]);
                for q in 0..g {
                    let a = s1[q].wrapping_sub(s0[q]);
                    let b = t1[q]
                        .wrapping_sub(t0[q])
                        .wrapping_sub(n16.wrapping_mul(s0[q]));
                    ws[q] = a as u32 | (b as u32) << 16;
                }
                // The filter without branches (its lookups overlap), then the rare hits.
                let mut hits = 0u64;
                if !idx.filter.is_empty() {
                    for (q, &w) in ws[..g].iter().enumerate() {
                        let (word, bits) = idx.probe(w);
                        hits |= ((idx.filter[word] & bits == bits) as u64) << q;
                    }
                }
                while hits != 0 {
                    let q = hits.trailing_zeros() as usize;
                    hits &= hits - 1;
                    let (i, w) = (k + q, ws[q]);
                    if let Some(j) = idx.map.get(&w).copied() {
                        if strong(&buf[i..i + bs]) == old.blocks[j as usize] {
                            return Some((i, j));
                        }
                    }
                }
                k += g;
            }
            None
        };
        let last = buf.len() - bs;
        let mut lit_start = 0;
        let mut i = 0;
        while i <= last {
            let Some((at, j)) = next_hit(i, last) else {
                break;
            };
            if lit_start < at {
                parts.push((lit_start, at - lit_start, None));
            }
            let mut end = at + bs;
            let mut next = j as usize + 1;
            while end + bs <= buf.len()
                && next < old.blocks.len()
                && old.kinds[next] == K_DATA
                && old.weaks[next] != 0
                && strong(&buf[end..end + bs]) == old.blocks[next]
            {
                end += bs;
                next += 1;
            }
            parts.push((at, end - at, Some(j as u64 * bs as u64)));
            i = end;
            lit_start = end;
        }
        if lit_start < buf.len() {
            parts.push((lit_start, buf.len() - lit_start, None));
        }
    });
    parts
}

/// Read and compress the pending literals in parallel (after looking for OLD's blocks at
/// unaligned offsets in them), then write every pending op in order.
#[allow(clippy::too_many_arguments)]
fn flush<W: Write>(
    enc: &mut Encoder<W>,
    new: &dyn Image,
    scan: &Scan,
    old: Option<&Scan>,
    old_img: Option<&dyn Image>,
    idx: &WeakIndex,
    ops: &mut Vec<Op>,
    copy: &mut Option<(u64, u64)>,
    level: i32,
    batch: Option<&BatchBytes>,
) -> Result<()> {
    let b = scan.block_size as u64;
    let ops_ref: &[Op] = ops;
    let payloads: Vec<Result<Vec<Part>>> = ops
        .par_iter()
        .enumerate()
        .map(|(k, op)| match *op {
            Op::Literal { offset, length } => {
                let owned;
                let buf: &[u8] = match batch.and_then(|bb| bb.get(offset, length)) {
                    // Read once, in this batch: the bytes that were hashed.
                    Some(bytes) => bytes,
                    None => {
                        let mut v = vec![0u8; length as usize];
                        new.read_at(&mut v, offset)?;
                        // The bytes must be those the first pass hashed.
                        let mut leaves = Vec::new();
                        for (k, block) in v.chunks(b as usize).enumerate() {
                            digest::leaves(block, &mut leaves);
                            let i = (offset / b) as usize + k;
                            if block_digest(&leaves) != scan.blocks[i] {
                                return Err(Error::Changed(offset + k as u64 * b));
                            }
                        }
                        owned = v;
                        &owned
                    }
                };
                let mut parts = split_unaligned(buf, old, idx);
                if let Some(img) = old_img {
                    // Where OLD continues before the run and where it resumes after it.
                    let before = k.checked_sub(1).and_then(|j| match ops_ref[j] {
                        Op::CopySource { from, length } => Some(from + length),
                        _ => None,
                    });
                    let after = match ops_ref.get(k + 1) {
                        Some(&Op::CopySource { from, .. }) => Some(from),
                        _ => None,
                    };
                    parts = extend_copies(buf, parts, before, after, img)?;
                }
                parts
                    .into_iter()
                    .map(|(at, len, copy)| match copy {
                        Some(from) => Ok(Part::Copy {
                            from,
                            length: len as u64,
                        }),
                        None => {
                            let (stored, payload) =
                                Encoder::<W>::compress(&buf[at..at + len], level)?;
                            Ok(Part::Literal {
                                length: len as u64,
                                stored,
                                payload,
                            })
                        }
                    })
                    .collect()
            }
            _ => Ok(Vec::new()),
        })
        .collect();
    // Copies from OLD that continue each other are written as one record (an extension and
    // the copy it extends, an unaligned match that runs into an aligned one).
    let emit_copy = |enc: &mut Encoder<W>, c: &mut Option<(u64, u64)>| match c.take() {
        Some((from, length)) => enc.copy_source(from, length),
        None => Ok(()),
    };
    let add_copy = |enc: &mut Encoder<W>, c: &mut Option<(u64, u64)>, from: u64, length| match c {
        Some((f, l)) if *f + *l == from => {
            *l += length;
            Ok(())
        }
        _ => {
            emit_copy(enc, c)?;
            *c = Some((from, length));
            Ok::<(), crate::format::Error>(())
        }
    };
    for (op, p) in ops.iter().zip(payloads) {
        let parts = p?;
        match *op {
            Op::Literal { .. } => {
                for part in parts {
                    match part {
                        Part::Literal {
                            length,
                            stored,
                            payload,
                        } => {
                            emit_copy(enc, copy)?;
                            enc.literal_payload(length, stored, &payload)?
                        }
                        Part::Copy { from, length } => add_copy(enc, copy, from, length)?,
                    }
                }
            }
            Op::CopySource { from, length } => add_copy(enc, copy, from, length)?,
            _ => {
                emit_copy(enc, copy)?;
                match *op {
                    Op::Zero(l) => enc.zero(l)?,
                    Op::Unallocated(l) => enc.unallocated(l)?,
                    Op::CopyTarget { from, length, .. } => enc.copy_target(from, length)?,
                    Op::Literal { .. } | Op::CopySource { .. } => unreachable!(),
                }
            }
        }
    }
    ops.clear();
    Ok(())
}

/// Bytes compared with OLD at a time when extending a copy.
const EXTEND_PIECE: usize = 4096;

/// Extend the copies from OLD around each literal piece of a run byte by byte, as far as
/// the bytes agree with OLD: a file's tail after its last whole matching block, its head
/// before the first, the bytes around an edit inside a block. `before` is where OLD
/// continues the copy just before the run, `after` where the copy just after it starts in
/// OLD (when the records around the run are copies from OLD). Returns the parts with the
/// extensions as copies of their own; the writer joins them to the copies they continue.
fn extend_copies(
    buf: &[u8],
    parts: Vec<(usize, usize, Option<u64>)>,
    before: Option<u64>,
    after: Option<u64>,
    old: &dyn Image,
) -> Result<Vec<(usize, usize, Option<u64>)>> {
    let size = old.size();
    let mut piece = [0u8; EXTEND_PIECE];
    let mut out = Vec::with_capacity(parts.len() + 2);
    for (q, &(at, len, copy)) in parts.iter().enumerate() {
        if copy.is_some() {
            out.push((at, len, copy));
            continue;
        }
        let prev_end = match q.checked_sub(1) {
            Some(p) => parts[p].2.map(|from| from + parts[p].1 as u64),
            None => before,
        };
        let next_start = match parts.get(q + 1) {
            Some(&(_, _, c)) => c,
            None => after,
        };
        let bytes = &buf[at..at + len];
        // Forward: bytes equal to OLD's after the copy before.
        let mut f = 0;
        if let Some(s) = prev_end {
            while f < len && s + (f as u64) < size {
                let n = EXTEND_PIECE
                    .min(len - f)
                    .min((size - s - f as u64) as usize);
                old.read_at(&mut piece[..n], s + f as u64)?;
                let same = piece[..n]
                    .iter()
                    .zip(&bytes[f..f + n])
                    .take_while(|(a, b)| a == b)
                    .count();
                f += same;
                if same < n {
                    break;
                }
            }
        }
        // Backward: bytes equal to OLD's before the copy after, in what is left.
        let mut g = 0;
        if let Some(e) = next_start {
            while g < len - f && (g as u64) < e {
                let n = EXTEND_PIECE.min(len - f - g).min((e - g as u64) as usize);
                old.read_at(&mut piece[..n], e - (g + n) as u64)?;
                let end = len - g;
                let same = piece[..n]
                    .iter()
                    .rev()
                    .zip(bytes[end - n..end].iter().rev())
                    .take_while(|(a, b)| a == b)
                    .count();
                g += same;
                if same < n {
                    break;
                }
            }
        }
        if f > 0 {
            out.push((at, f, prev_end));
        }
        if len - f - g > 0 {
            out.push((at + f, len - f - g, None));
        }
        if g > 0 {
            out.push((at + len - g, g, next_start.map(|e| e - g as u64)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: roll byte by byte, look up every offset, take the first confirmed hit.
    fn split_by_rolling(
        buf: &[u8],
        old: &Scan,
        idx: &WeakIndex,
    ) -> Vec<(usize, usize, Option<u64>)> {
        let bs = old.block_size as usize;
        let strong = |bytes: &[u8]| {
            let mut leaves = Vec::new();
            digest::leaves(bytes, &mut leaves);
            block_digest(&leaves)
        };
        let (mut parts, mut lit_start, mut i) = (Vec::new(), 0, 0);
        let mut w = weak(&buf[..bs]);
        while i + bs <= buf.len() {
            let hit = idx
                .map
                .get(&w)
                .copied()
                .filter(|&j| strong(&buf[i..i + bs]) == old.blocks[j as usize]);
            if let Some(j) = hit {
                if lit_start < i {
                    parts.push((lit_start, i - lit_start, None));
                }
                let (mut end, mut next) = (i + bs, j as usize + 1);
                while end + bs <= buf.len()
                    && next < old.blocks.len()
                    && old.kinds[next] == K_DATA
                    && strong(&buf[end..end + bs]) == old.blocks[next]
                {
                    end += bs;
                    next += 1;
                }
                parts.push((i, end - i, Some(j as u64 * bs as u64)));
                (i, lit_start) = (end, end);
                if i + bs <= buf.len() {
                    w = weak(&buf[i..i + bs]);
                }
                continue;
            }
            if i + bs < buf.len() {
                w = roll(w, buf[i], buf[i + bs], bs as u32);
            }
            i += 1;
        }
        if lit_start < buf.len() {
            parts.push((lit_start, buf.len() - lit_start, None));
        }
        parts
    }

    #[test]
    fn unaligned_matches_are_those_of_rolling_byte_by_byte() {
        // OLD: 64 blocks of pseudo-random bytes. Runs: pieces of OLD at odd offsets between
        // fresh bytes, a run shorter than a block, and one that is all fresh.
        let mut x = 0x1234_5678u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        };
        let bs = 4096;
        let old_bytes: Vec<u8> = (0..64 * bs).map(|_| rnd()).collect();
        let old = scan(
            &crate::image::MemImage::new(old_bytes.clone()),
            bs as u32,
            true,
        )
        .unwrap();
        let idx = WeakIndex::new(Some(&old));
        let mut runs: Vec<Vec<u8>> = Vec::new();
        let mut run = Vec::new();
        for (k, take) in [(3usize, 1usize), (10, 3), (40, 1), (41, 2), (63, 1)] {
            run.extend((0..(k * 97) % 5000).map(|_| rnd()));
            run.extend_from_slice(&old_bytes[k * bs..(k + take) * bs]);
        }
        run.extend((0..4095).map(|_| rnd()));
        runs.push(run);
        runs.push(old_bytes[5 * bs + 1..6 * bs].to_vec());
        runs.push((0..3 * bs + 17).map(|_| rnd()).collect());
        runs.push(old_bytes[7 * bs..9 * bs].to_vec());
        for (r, buf) in runs.iter().enumerate() {
            let got = split_unaligned(buf, Some(&old), &idx);
            let want = if buf.len() < bs {
                vec![(0, buf.len(), None)]
            } else {
                split_by_rolling(buf, &old, &idx)
            };
            assert_eq!(got, want, "run {r}");
        }
        assert_eq!(
            split_unaligned(&runs[0], Some(&old), &idx)
                .iter()
                .filter(|p| p.2.is_some())
                .count(),
            5,
            "the five pieces of OLD in run 0 are found"
        );
    }

    #[test]
    fn rolling_checksum_rolls_like_it_recomputes() {
        let data: Vec<u8> = (0..20000u32).map(|i| (i * 7919 % 256) as u8).collect();
        let n = 4096;
        let mut w = weak(&data[..n]);
        for i in 0..data.len() - n {
            assert_eq!(w, weak(&data[i..i + n]), "at {i}");
            w = roll(w, data[i], data[i + n], n as u32);
        }
        // The definition: a = sum of bytes, b = sum of (n - i) * byte_i, both mod 2^16.
        let (a, b) = data[..n]
            .iter()
            .enumerate()
            .fold((0u64, 0u64), |(a, b), (i, &x)| {
                (a + x as u64, b + (n - i) as u64 * x as u64)
            });
        assert_eq!(
            weak(&data[..n]),
            (a & 0xffff) as u32 | (((b & 0xffff) as u32) << 16)
        );
        // Every length (rows of 32 and a remainder), bytes large enough to wrap the lanes.
        let big: Vec<u8> = (0..70000u32).map(|i| 255 - (i * 31 % 7) as u8).collect();
        for len in (0..100).chain([4095, 4096, 4097, 65536, 70000]) {
            let (a, b) = big[..len]
                .iter()
                .enumerate()
                .fold((0u64, 0u64), |(a, b), (i, &x)| {
                    (a + x as u64, b + (len - i) as u64 * x as u64)
                });
            assert_eq!(
                weak(&big[..len]),
                (a & 0xffff) as u32 | (((b & 0xffff) as u32) << 16),
                "length {len}"
            );
        }
    }
}
