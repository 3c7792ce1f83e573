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
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use vdiff::diff::Scan;
use vdiff::format::{Digest, CHUNK_BYTES};

pub const DELTA: &str = "delta.vdelta";
pub const SIGNATURE: &str = "signature.zst";
pub const CHUNKS: &str = "chunks.bin";
pub const CHUNKS_MAGIC: [u8; 8] = *b"VMLCHNK\0";

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

fn check_at(repo: &Repo, entry: &Entry, file: &str, want: &Stored) -> Result<()> {
    let path = repo.entry_dir(&entry.name).join(file);
    let (size, d) = blake3_file(&path)?;
    if size != want.size || hex(&d) != want.blake3 {
        return Err(Error::Corrupt(format!(
            "entry {}: {file} is damaged ({size} bytes; size or BLAKE3 differ from entry.json)",
            entry.name
        )));
    }
    Ok(())
}

pub fn write_signature(path: &Path, scan: &Scan) -> Result<()> {
    let f = File::create(path).at(path)?;
    let z = zstd::stream::write::Encoder::new(BufWriter::with_capacity(1 << 20, f), 3).at(path)?;
    let z = vdiff::signature::write(scan, z).map_err(|e| Error::Io {
        what: path.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    let w = z.finish().at(path)?;
    let f = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    f.sync_all().at(path)
}

pub fn write_chunks(path: &Path, chunks: &[Digest]) -> Result<()> {
    let f = File::create(path).at(path)?;
    let mut w = BufWriter::new(f);
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&CHUNKS_MAGIC);
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&(chunks.len() as u64).to_le_bytes());
    w.write_all(&h).at(path)?;
    for c in chunks {
        w.write_all(c).at(path)?;
    }
    let f = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    f.sync_all().at(path)
}

/// Read an entry's chunk digests (after checking the file against `entry.json`).
pub fn read_chunks(repo: &Repo, e: &Entry) -> Result<Vec<Digest>> {
    check_at(repo, e, CHUNKS, &e.stored.chunks)?;
    let path = repo.entry_dir(&e.name).join(CHUNKS);
    let want = e.volume.size.div_ceil(CHUNK_BYTES);
    let bytes = crate::repo::read_small(&path, 24 + want * 32)?;
    let bad = || Error::Corrupt(format!("entry {}: {CHUNKS} is malformed", e.name));
    if bytes.len() < 24 || bytes[..8] != CHUNKS_MAGIC || bytes[8..12] != 1u32.to_le_bytes() {
        return Err(bad());
    }
    let n = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if n != want || bytes.len() as u64 != 24 + n * 32 {
        return Err(bad());
    }
    Ok(bytes[24..]
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect())
}

/// Read an entry's block digests (after checking the file against `entry.json`).
pub fn read_signature(repo: &Repo, e: &Entry) -> Result<Scan> {
    check_at(repo, e, SIGNATURE, &e.stored.signature)?;
    let path = repo.entry_dir(&e.name).join(SIGNATURE);
    let f = File::open(&path).at(&path)?;
    let z = zstd::stream::read::Decoder::new(BufReader::new(f)).at(&path)?;
    let scan = vdiff::signature::read(z)
        .map_err(|err| Error::Corrupt(format!("entry {}: {SIGNATURE}: {err}", e.name)))?;
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
    Ok(scan)
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
