//! The files of one entry folder besides `entry.json`:
//!
//! - `delta.vdelta`: the vdiff delta (with its trailing index) from the parent's volume;
//! - `signature.zst`: the volume's vdiff signature (block digests), zstd-compressed;
//! - `chunks.bin`: `VMLCHNK\0`, u32 version 1, u32 zero, u64 count, then `count` 32-byte
//!   digests of the volume's 1 MiB chunks.
//!
//! Each is named in `entry.json` with its size and BLAKE3, checked whenever it is read.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{hex, unhex32, Entry, Stored};
use crate::repo::Repo;
use byteorder::{ByteOrder, LittleEndian, ReadBytesExt, WriteBytesExt};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use vdiff::diff::Scan;
use vdiff::format::{Digest, CHUNK_BYTES};

pub const DELTA: &str = "delta.vdelta";
pub const SIGNATURE: &str = "signature.zst";
pub const CHUNKS: &str = "chunks.bin";
pub const CHUNKS_MAGIC: [u8; 8] = *b"VMLCHNK\0";
pub const RSIG_MAGIC: [u8; 8] = *b"VMLRSIG\0";
pub const RSIG_HEADER_LEN: usize = 96;

/// What a save needs of its parent: its manifest, block digests and chunk digests.
pub struct ParentData {
    pub entry: Entry,
    pub scan: Scan,
    pub chunks: Vec<Digest>,
}

/// Size and BLAKE3 of a file.
pub fn blake3_file(path: &Path) -> Result<(u64, [u8; 32])> {
    let mut f = File::open(path).at(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).at(path)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, *h.finalize().as_bytes()))
}

/// Size and BLAKE3 of a stored file just written, as `entry.json` records them.
pub fn stored_of(path: &Path) -> Result<Stored> {
    let (size, d) = blake3_file(path)?;
    Ok(Stored {
        size,
        blake3: hex(&d),
    })
}

/// The key of stored file `file` of entry `name`.
pub fn key_of(name: &str, file: &str) -> String {
    format!("{}/{name}/{file}", crate::repo::ENTRIES)
}

/// Size and BLAKE3 of a stored object, read once in order.
pub fn blake3_object(repo: &Repo, key: &str) -> Result<(u64, [u8; 32])> {
    if let Some(root) = repo.store.local_root() {
        return blake3_file(&root.join(key));
    }
    let (r, len) = repo.store.open(key)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        let k = r.read_at(&mut buf[..n], at).doing(|| key.to_string())?;
        if k == 0 {
            return Err(Error::Corrupt(format!(
                "{key}: shorter than its listed size"
            )));
        }
        h.update(&buf[..k]);
        at += k as u64;
    }
    Ok((len, *h.finalize().as_bytes()))
}

fn damaged(entry: &Entry, file: &str, size: u64) -> Error {
    Error::Corrupt(format!(
        "entry {}: {file} is damaged ({size} bytes; size or BLAKE3 differ from entry.json)",
        entry.name
    ))
}

fn check_at(repo: &Repo, entry: &Entry, file: &str, want: &Stored) -> Result<()> {
    let (size, d) = blake3_object(repo, &key_of(&entry.name, file))?;
    if size != want.size || hex(&d) != want.blake3 {
        return Err(damaged(entry, file, size));
    }
    Ok(())
}

/// A small stored file of `entry`, read whole (at most `cap` bytes) and checked against
/// `entry.json`.
fn read_checked(
    repo: &Repo,
    entry: &Entry,
    file: &str,
    want: &Stored,
    cap: u64,
) -> Result<Vec<u8>> {
    let key = key_of(&entry.name, file);
    if want.size > cap {
        return Err(damaged(entry, file, want.size));
    }
    let bytes = match repo.store.get(&key, want.size) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(Error::Io {
                what: format!("{}/{key}", repo.store.location()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
        Err(Error::Corrupt(_)) => return Err(damaged(entry, file, want.size + 1)),
        Err(e) => return Err(e),
    };
    if bytes.len() as u64 != want.size || hex(blake3::hash(&bytes).as_bytes()) != want.blake3 {
        return Err(damaged(entry, file, bytes.len() as u64));
    }
    Ok(bytes)
}

/// Write the volume's block digests: a full vdiff signature, or with `parent` a relative one.
pub fn write_signature(
    path: &Path,
    scan: &Scan,
    parent: Option<(&Scan, &ChunkMap<'_>)>,
) -> Result<()> {
    let f = File::create(path).at(path)?;
    let w = write_signature_to(BufWriter::with_capacity(1 << 20, f), scan, parent).map_err(
        |e| match e {
            Error::Io { source, .. } => Error::io(path, source),
            other => other,
        },
    )?;
    let f = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    f.sync_all().at(path)
}

/// [`write_signature`] into any writer (zstd-compressed); returns the writer.
pub fn write_signature_to<W: Write>(
    out: W,
    scan: &Scan,
    parent: Option<(&Scan, &ChunkMap<'_>)>,
) -> Result<W> {
    let what = || SIGNATURE.to_string();
    let z = zstd::stream::write::Encoder::new(out, 3).doing(what)?;
    let to_io = |e: vdiff::format::Error| Error::Io {
        what: what(),
        source: std::io::Error::other(e),
    };
    let z = match parent {
        None => vdiff::signature::write(scan, z).map_err(to_io)?,
        Some((p, map)) => write_relative(scan, p, map, z).doing(what)?,
    };
    z.finish().doing(what)
}

/// The parent's chunk to refer to for each chunk of a new volume: the one at the same place of
/// the same file (`by_path`) when its digest is the same, else any parent chunk with the same
/// digest (a renamed file, a clone of a template's disk), else the one at the same place.
/// Rows are compared again before a reference is written.
pub fn chunk_candidates(
    by_path: &std::collections::HashMap<u64, u64>,
    own: &[Digest],
    parent: &[Digest],
) -> std::collections::HashMap<u64, u64> {
    let mut by_digest: std::collections::HashMap<&Digest, u64> =
        std::collections::HashMap::with_capacity(parent.len());
    for (i, d) in parent.iter().enumerate() {
        by_digest.entry(d).or_insert(i as u64);
    }
    let mut out = std::collections::HashMap::with_capacity(own.len());
    for (c, d) in own.iter().enumerate() {
        let c = c as u64;
        let same_place = by_path
            .get(&c)
            .copied()
            .filter(|&pc| parent.get(pc as usize) == Some(d));
        if let Some(pc) = same_place
            .or_else(|| by_digest.get(d).copied())
            .or_else(|| by_path.get(&c).copied())
        {
            out.insert(c, pc);
        }
    }
    out
}

/// For a chunk of the new volume, the parent's chunk that held the same place of the same
/// file (a candidate: rows are compared before a reference is written).
pub type ChunkMap<'a> = dyn Fn(u64) -> Option<u64> + 'a;

fn rows_per_chunk(bs: u32) -> u64 {
    CHUNK_BYTES / bs as u64
}

/// Rows `[b0, b1)` of a scan, encoded as in a vdiff signature (21 bytes each).
fn encode_rows(s: &Scan, b0: usize, b1: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    for j in b0..b1 {
        out.write_all(&s.blocks[j])?;
        out.write_u32::<LittleEndian>(s.weak(j))?;
        out.write_u8(s.kind(j))?;
    }
    Ok(())
}

fn same_rows(a: &Scan, a0: usize, b: &Scan, b0: usize, n: usize) -> bool {
    (0..n).all(|k| {
        a.blocks[a0 + k] == b.blocks[b0 + k]
            && a.kind(a0 + k) == b.kind(b0 + k)
            && a.weak(a0 + k) == b.weak(b0 + k)
    })
}

fn write_relative<W: Write>(
    scan: &Scan,
    parent: &Scan,
    map: &ChunkMap<'_>,
    mut out: W,
) -> std::io::Result<W> {
    let per = rows_per_chunk(scan.block_size) as usize;
    let nchunks = scan.size.div_ceil(CHUNK_BYTES);
    let mut h = Vec::with_capacity(RSIG_HEADER_LEN);
    h.write_all(&RSIG_MAGIC)?;
    h.write_u32::<LittleEndian>(1)?;
    h.write_u32::<LittleEndian>(scan.block_size)?;
    h.write_u64::<LittleEndian>(scan.size)?;
    h.write_all(&scan.digest)?;
    h.write_all(&parent.digest)?;
    h.write_u64::<LittleEndian>(nchunks)?;
    out.write_all(&h)?;
    let pchunks = parent.size.div_ceil(CHUNK_BYTES);
    let mut buf = Vec::with_capacity(per * 21 + 16);
    for c in 0..nchunks {
        buf.clear();
        let b0 = c as usize * per;
        let b1 = (b0 + per).min(scan.blocks.len());
        let n = b1 - b0;
        let reference = map(c).filter(|&pc| {
            let p0 = pc as usize * per;
            pc < pchunks
                && parent.block_size == scan.block_size
                && p0 + n <= parent.blocks.len()
                && (p0 + per).min(parent.blocks.len()) - p0 == n
                && same_rows(scan, b0, parent, p0, n)
        });
        match reference {
            Some(pc) => {
                buf.write_u8(1)?;
                buf.write_u64::<LittleEndian>(pc)?;
            }
            None => {
                buf.write_u8(0)?;
                buf.write_u32::<LittleEndian>(n as u32)?;
                encode_rows(scan, b0, b1, &mut buf)?;
            }
        }
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(out)
}

/// Apply a relative signature (decompressed `bytes`) to its parent's scan.
pub fn read_relative(bytes: &[u8], parent: &Scan, name: &str) -> Result<Scan> {
    let bad = |m: &str| Error::Corrupt(format!("entry {name}: {SIGNATURE}: {m}"));
    if bytes.len() < RSIG_HEADER_LEN || bytes[..8] != RSIG_MAGIC {
        return Err(bad("not a signature"));
    }
    // The length was checked above: the fixed header reads cannot fall short.
    if LittleEndian::read_u32(&bytes[8..12]) != 1 {
        return Err(bad("unknown version"));
    }
    let bs = LittleEndian::read_u32(&bytes[12..16]);
    let size = LittleEndian::read_u64(&bytes[16..24]);
    let digest: Digest = bytes[24..56].try_into().expect("32 bytes");
    let pdigest: Digest = bytes[56..88].try_into().expect("32 bytes");
    let nchunks = LittleEndian::read_u64(&bytes[88..96]);
    if bs != parent.block_size || pdigest != parent.digest {
        return Err(bad("made for another parent"));
    }
    if size > vdiff::format::MAX_IMAGE_BYTES || nchunks != size.div_ceil(CHUNK_BYTES) {
        return Err(bad("sizes do not agree"));
    }
    let per = rows_per_chunk(bs) as usize;
    let nblocks = size.div_ceil(bs as u64) as usize;
    // Bounded by the input: every chunk costs at least 9 bytes.
    if nchunks > bytes.len() as u64 {
        return Err(bad("truncated"));
    }
    let mut blocks = Vec::with_capacity(nblocks.min(bytes.len()));
    let mut kinds = Vec::with_capacity(nblocks.min(bytes.len()));
    let mut weaks = Vec::with_capacity(nblocks.min(bytes.len()));
    // The chunk records, read front to back; a short read is a truncated file.
    let mut rest = &bytes[RSIG_HEADER_LEN..];
    let truncated = |_| bad("truncated");
    let pchunks = parent.size.div_ceil(CHUNK_BYTES);
    for c in 0..nchunks as usize {
        let want = (nblocks - c * per).min(per);
        match rest.read_u8().map_err(truncated)? {
            1 => {
                let pc = rest.read_u64::<LittleEndian>().map_err(truncated)?;
                let p0 = pc as usize * per;
                if pc >= pchunks || p0 + want > parent.blocks.len() {
                    return Err(bad("a reference past the parent's volume"));
                }
                for j in p0..p0 + want {
                    blocks.push(parent.blocks[j]);
                    kinds.push(parent.kind(j));
                    weaks.push(parent.weak(j));
                }
            }
            0 => {
                let n = rest.read_u32::<LittleEndian>().map_err(truncated)? as usize;
                if n != want {
                    return Err(bad("a chunk with the wrong number of blocks"));
                }
                if rest.len() < n * 21 {
                    return Err(bad("truncated"));
                }
                let (rows, tail) = rest.split_at(n * 21);
                rest = tail;
                for r in rows.chunks_exact(21) {
                    let kind = r[20];
                    if kind > 2 || (kind != 0 && r[..20] != [0; 20]) {
                        return Err(bad("a bad block row"));
                    }
                    blocks.push(r[..16].try_into().expect("16 bytes"));
                    weaks.push(LittleEndian::read_u32(&r[16..20]));
                    kinds.push(kind);
                }
            }
            _ => return Err(bad("a bad chunk tag")),
        }
    }
    if !rest.is_empty() {
        return Err(bad("bytes after the last chunk"));
    }
    Ok(Scan::from_parts(size, bs, digest, blocks, kinds, weaks))
}

pub fn write_chunks(path: &Path, chunks: &[Digest]) -> Result<()> {
    let f = File::create(path).at(path)?;
    let w = write_chunks_to(BufWriter::new(f), chunks).map_err(|e| match e {
        Error::Io { source, .. } => Error::io(path, source),
        other => other,
    })?;
    let f = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    f.sync_all().at(path)
}

/// [`write_chunks`] into any writer; returns the writer.
pub fn write_chunks_to<W: Write>(mut w: W, chunks: &[Digest]) -> Result<W> {
    let what = || CHUNKS.to_string();
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&CHUNKS_MAGIC);
    h.write_u32::<LittleEndian>(1).doing(what)?;
    h.write_u32::<LittleEndian>(0).doing(what)?;
    h.write_u64::<LittleEndian>(chunks.len() as u64)
        .doing(what)?;
    w.write_all(&h).doing(what)?;
    for c in chunks {
        w.write_all(c).doing(what)?;
    }
    Ok(w)
}

/// Read an entry's chunk digests (after checking the file against `entry.json`).
pub fn read_chunks(repo: &Repo, e: &Entry) -> Result<Vec<Digest>> {
    let want = e.volume.size.div_ceil(CHUNK_BYTES);
    let bytes = read_checked(repo, e, CHUNKS, &e.stored.chunks, 24 + want * 32)?;
    let bad = || Error::Corrupt(format!("entry {}: {CHUNKS} is malformed", e.name));
    if bytes.len() < 24 || bytes[..8] != CHUNKS_MAGIC || LittleEndian::read_u32(&bytes[8..12]) != 1
    {
        return Err(bad());
    }
    let n = LittleEndian::read_u64(&bytes[16..24]);
    if n != want || bytes.len() as u64 != 24 + n * 32 {
        return Err(bad());
    }
    Ok(bytes[24..]
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect())
}

/// Decompress an entry's `signature.zst` (after checking it against `entry.json`), at most
/// `cap` bytes.
fn signature_bytes(repo: &Repo, e: &Entry) -> Result<Vec<u8>> {
    // 21 bytes per block and a little per chunk: anything larger is not this volume's.
    let cap = e.volume.size / e.volume.block_size as u64 * 21
        + e.volume.size.div_ceil(CHUNK_BYTES) * 16
        + 4096;
    // zstd adds little to what it cannot compress.
    let packed = read_checked(
        repo,
        e,
        SIGNATURE,
        &e.stored.signature,
        cap + cap / 64 + 4096,
    )?;
    let z = zstd::stream::read::Decoder::new(&packed[..])
        .map_err(|err| Error::Corrupt(format!("entry {}: {SIGNATURE}: {err}", e.name)))?;
    let mut out = Vec::new();
    z.take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|err| Error::Corrupt(format!("entry {}: {SIGNATURE}: {err}", e.name)))?;
    if out.len() as u64 > cap {
        return Err(Error::Corrupt(format!(
            "entry {}: {SIGNATURE} is larger than its volume needs",
            e.name
        )));
    }
    Ok(out)
}

/// Read an entry's block digests. A relative signature needs its parent's, and so on back to
/// the nearest full one: each file is checked against its `entry.json`.
pub fn read_signature(repo: &Repo, e: &Entry) -> Result<Scan> {
    // Walk back to the nearest full signature, then apply the relative ones forward.
    let mut pending: Vec<(Entry, Vec<u8>)> = Vec::new();
    let mut cur = e.clone();
    let mut scan = loop {
        let bytes = signature_bytes(repo, &cur)?;
        if bytes.starts_with(&vdiff::signature::SIG_MAGIC) {
            break vdiff::signature::read(&bytes[..]).map_err(|err| {
                Error::Corrupt(format!("entry {}: {SIGNATURE}: {err}", cur.name))
            })?;
        }
        let parent = cur.parent.clone().ok_or_else(|| {
            Error::Corrupt(format!(
                "entry {}: {SIGNATURE} is relative but the entry has no parent",
                cur.name
            ))
        })?;
        pending.push((cur, bytes));
        cur = repo.load(&parent)?;
    };
    check_scan(&cur, &scan)?;
    while let Some((x, bytes)) = pending.pop() {
        scan = read_relative(&bytes, &scan, &x.name)?;
        check_scan(&x, &scan)?;
    }
    Ok(scan)
}

fn check_scan(e: &Entry, scan: &Scan) -> Result<()> {
    let digest = unhex32(&e.volume.digest);
    if scan.size != e.volume.size
        || Some(scan.digest) != digest
        || scan.block_size != e.volume.block_size
    {
        return Err(Error::Corrupt(format!(
            "entry {}: {SIGNATURE} describes another volume than entry.json",
            e.name
        )));
    }
    Ok(())
}

pub fn load_parent(repo: &Repo, e: &Entry) -> Result<ParentData> {
    let (scan, chunks) = rayon::join(|| read_signature(repo, e), || read_chunks(repo, e));
    Ok(ParentData {
        entry: e.clone(),
        scan: scan?,
        chunks: chunks?,
    })
}

/// Check an entry's delta file against `entry.json` (size and BLAKE3).
pub fn check_delta(repo: &Repo, e: &Entry) -> Result<()> {
    check_at(repo, e, DELTA, &e.stored.delta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdiff::MemImage;

    fn scan_of(data: Vec<u8>) -> Scan {
        vdiff::diff::scan(&MemImage::new(data), 4096, true).unwrap()
    }

    fn rows(s: &Scan) -> Vec<(BlockRow, u8, u32)> {
        (0..s.blocks.len())
            .map(|i| (s.blocks[i], s.kind(i), s.weak(i)))
            .collect()
    }
    type BlockRow = [u8; 16];

    #[test]
    fn relative_signature_round_trips_and_rejects_damage() {
        let mb = CHUNK_BYTES as usize;
        let old: Vec<u8> = (0..3 * mb).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[mb + 5] ^= 0xff; // chunk 1 changes
        new.extend((0..mb).map(|i| (i % 13) as u8)); // a fourth chunk
        let (p, s) = (scan_of(old), scan_of(new));
        let map = |c: u64| (c < 3).then_some(c);
        let bytes = write_relative(&s, &p, &map, Vec::new()).unwrap();
        // Two chunks referenced (9 bytes each), two explicit.
        assert!(bytes.len() < RSIG_HEADER_LEN + 2 * 9 + 2 * (5 + 256 * 21) + 1);
        let back = read_relative(&bytes, &p, "E2").unwrap();
        assert_eq!(back.digest, s.digest);
        assert_eq!(rows(&back), rows(&s));
        // Truncated, extended, or for another parent: refused.
        assert!(read_relative(&bytes[..bytes.len() - 1], &p, "E2").is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_relative(&longer, &p, "E2").is_err());
        assert!(read_relative(&bytes, &s, "E2").is_err());
        // A reference past the parent's volume.
        let far = |_: u64| Some(1000);
        let b2 = write_relative(&s, &p, &far, Vec::new()).unwrap();
        assert_eq!(read_relative(&b2, &p, "E2").unwrap().digest, s.digest);
        let mut forged = bytes.clone();
        // The first chunk is a reference to chunk 0: point it far away.
        assert_eq!(forged[RSIG_HEADER_LEN], 1);
        forged[RSIG_HEADER_LEN + 1..RSIG_HEADER_LEN + 9].copy_from_slice(&99u64.to_le_bytes());
        assert!(read_relative(&forged, &p, "E2").is_err());
    }
}
