//! Signature files, version 1: the block digests of an image, for diffing against an OLD that
//! is on another host (`vdiff --signature OLD > old.sig`, then `vdiff --against old.sig NEW`).
//!
//! A signature holds what the differ's first pass learns about OLD: its size, its image digest
//! and, per block, a 16-byte digest, a rolling checksum and a kind. It is 21 bytes per block
//! (21 MiB for 4 GiB at 4 KiB blocks), written and read sequentially. All integers are little-endian; every
//! checksum is XXH3-64 (seed 0).
//!
//! Signature header (`SIG_HEADER_LEN` = 64 bytes):
//!
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 8 | `magic` | `SIG_MAGIC` = `"VMLDSIG\0"` |
//! | 8 | 4 | `version` | `SIG_VERSION` = 1 |
//! | 12 | 4 | `block_size` | as in a delta header: power of two, 4096 ..= 1048576 |
//! | 16 | 8 | `source_size` | bytes, at most 2^48 |
//! | 24 | 32 | `source_digest` | image digest of the image signed |
//! | 56 | 8 | `checksum` | XXH3-64 of bytes 0..56 |
//!
//! Then frames, each an 8-byte frame header (`count` u32, `reserved` u32 = 0), `count` entries
//! of 21 bytes (the block digest: the first 16 bytes of BLAKE3 over the block's leaf digests;
//! the u32 rolling checksum of a full data block as rsync computes it, two 16-bit sums, else 0;
//! then the kind: 0 data, 1 zero, 2 unallocated; digest and checksum are all zero unless the
//! kind is data), and an XXH3-64 of the frame header and entries. `count` is 1 ..= `SIG_FRAME_BLOCKS`
//! (65536). The blocks of all frames, in order, are the image's blocks, `ceil(source_size /
//! block_size)` of them exactly.
//!
//! The required end frame has `count` = 0, then a u64 with the number of blocks and the 32-byte
//! source digest again, then the XXH3-64 of those 40 bytes. Nothing may follow it.

use crate::diff::{BlockDigest, Scan};
use crate::format::{Digest, Error, Header, Result, FLAG_FULL, MAX_IMAGE_BYTES};
use byteorder::{ByteOrder, LittleEndian, WriteBytesExt};
use std::io::{self, Read, Write};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const SIG_MAGIC: [u8; 8] = *b"VMLDSIG\0";
pub const SIG_VERSION: u32 = 1;
pub const SIG_HEADER_LEN: usize = 64;
pub const SIG_FRAME_BLOCKS: u32 = 65536;
const ENTRY: usize = 21;

/// Write the signature of a scanned image.
pub fn write<W: Write>(scan: &Scan, mut out: W) -> Result<W> {
    let mut h = [0u8; SIG_HEADER_LEN];
    h[0..8].copy_from_slice(&SIG_MAGIC);
    LittleEndian::write_u32(&mut h[8..12], SIG_VERSION);
    LittleEndian::write_u32(&mut h[12..16], scan.block_size);
    LittleEndian::write_u64(&mut h[16..24], scan.size);
    h[24..56].copy_from_slice(&scan.digest);
    let sum = xxh3_64(&h[..56]);
    LittleEndian::write_u64(&mut h[56..64], sum);
    out.write_all(&h)?;
    let n = scan.blocks.len();
    let mut frame = Vec::with_capacity(8 + SIG_FRAME_BLOCKS as usize * ENTRY);
    let mut i = 0;
    while i < n {
        let count = (n - i).min(SIG_FRAME_BLOCKS as usize);
        frame.clear();
        frame.write_u32::<LittleEndian>(count as u32)?;
        frame.write_u32::<LittleEndian>(0)?;
        for j in i..i + count {
            frame.extend_from_slice(&scan.blocks[j]);
            frame.write_u32::<LittleEndian>(scan.weak(j))?;
            frame.push(scan.kind(j));
        }
        out.write_all(&frame)?;
        out.write_u64::<LittleEndian>(xxh3_64(&frame))?;
        i += count;
    }
    let mut end = [0u8; 8 + 8 + 32];
    LittleEndian::write_u64(&mut end[8..16], n as u64);
    end[16..48].copy_from_slice(&scan.digest);
    out.write_all(&end)?;
    out.write_u64::<LittleEndian>(xxh3_64(&end[8..]))?;
    out.flush()?;
    Ok(out)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], at: u64) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated { offset: at },
        _ => Error::Io(e),
    })
}

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::Corrupt {
        offset,
        what: what.into(),
    }
}

/// Read a signature back into the differ's view of OLD, checking every rule above.
pub fn read<R: Read>(mut input: R) -> Result<Scan> {
    let mut h = [0u8; SIG_HEADER_LEN];
    read_exact(&mut input, &mut h, 0)?;
    if h[0..8] != SIG_MAGIC {
        return Err(Error::BadMagic);
    }
    let version = LittleEndian::read_u32(&h[8..12]);
    if version != SIG_VERSION {
        return Err(Error::Version(version));
    }
    if xxh3_64(&h[..56]) != LittleEndian::read_u64(&h[56..64]) {
        return Err(corrupt(56, "signature header checksum mismatch"));
    }
    let block_size = LittleEndian::read_u32(&h[12..16]);
    let size = LittleEndian::read_u64(&h[16..24]);
    let digest: Digest = h[24..56].try_into().expect("32 bytes");
    // The delta header's rules for block size and image size, checked in one place.
    Header {
        flags: FLAG_FULL,
        block_size,
        source_size: 0,
        target_size: size.min(MAX_IMAGE_BYTES + 1),
        source_digest: [0; 32],
        target_digest: [0; 32],
    }
    .validate()?;
    let nblocks = size.div_ceil(block_size as u64);
    let mut blocks: Vec<BlockDigest> = Vec::new();
    let mut kinds: Vec<u8> = Vec::new();
    let mut weaks: Vec<u32> = Vec::new();
    let mut at = SIG_HEADER_LEN as u64;
    let mut entries = vec![0u8; SIG_FRAME_BLOCKS as usize * ENTRY];
    loop {
        let mut fh = [0u8; 8];
        read_exact(&mut input, &mut fh, at)?;
        let count = LittleEndian::read_u32(&fh[0..4]);
        if count == 0 {
            let mut end = [0u8; 40];
            read_exact(&mut input, &mut end, at + 8)?;
            let mut sum = [0u8; 8];
            read_exact(&mut input, &mut sum, at + 48)?;
            if fh[4..8] != [0; 4] || xxh3_64(&end[..40]) != LittleEndian::read_u64(&sum) {
                return Err(corrupt(at, "end frame checksum mismatch"));
            }
            let total = LittleEndian::read_u64(&end[0..8]);
            if total != nblocks || blocks.len() as u64 != nblocks || end[8..40] != digest {
                return Err(corrupt(
                    at,
                    format!(
                    "end frame says {total} blocks, the frames hold {}, the size needs {nblocks}",
                    blocks.len()
                ),
                ));
            }
            let mut one = [0u8; 1];
            if input.read(&mut one)? != 0 {
                return Err(corrupt(at + 56, "bytes after the end frame"));
            }
            break;
        }
        if count > SIG_FRAME_BLOCKS || blocks.len() as u64 + count as u64 > nblocks {
            return Err(corrupt(
                at,
                format!("frame of {count} blocks past the image's {nblocks}"),
            ));
        }
        let e = &mut entries[..count as usize * ENTRY];
        read_exact(&mut input, e, at + 8)?;
        let mut sum = [0u8; 8];
        read_exact(&mut input, &mut sum, at + 8 + e.len() as u64)?;
        let mut x = Xxh3::new();
        x.update(&fh);
        x.update(e);
        if x.digest() != LittleEndian::read_u64(&sum) {
            return Err(corrupt(at, "frame checksum mismatch"));
        }
        if fh[4..8] != [0; 4] {
            return Err(corrupt(at, "reserved frame bytes are not zero"));
        }
        for c in e.chunks_exact(ENTRY) {
            let kind = c[20];
            if kind > 2 || (kind != 0 && c[..20] != [0; 20]) {
                return Err(corrupt(at, format!("bad block entry (kind {kind})")));
            }
            blocks.push(c[..16].try_into().expect("16 bytes"));
            weaks.push(LittleEndian::read_u32(&c[16..20]));
            kinds.push(kind);
        }
        at += 16 + e.len() as u64;
    }
    Ok(Scan::from_parts(
        size, block_size, digest, blocks, kinds, weaks,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::scan;
    use crate::image::{Kind, MemImage};

    fn image() -> MemImage {
        let mut data: Vec<u8> = (0..40960u32).map(|i| (i * 13 % 251) as u8).collect();
        data[8192..12288].fill(0);
        data[16384..20480].fill(0);
        MemImage {
            data,
            holes: vec![(16384, 4096, Kind::Unallocated)],
        }
    }

    #[test]
    fn round_trip_and_every_damage_detected() {
        let s = scan(&image(), 4096, true).unwrap();
        let bytes = write(&s, Vec::new()).unwrap();
        let back = read(&bytes[..]).unwrap();
        assert_eq!(back.blocks, s.blocks);
        assert_eq!(back.digest, s.digest);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert!(read(&bad[..]).is_err(), "flip at {i}");
        }
        for cut in 0..bytes.len() {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn doc_agrees_with_module() {
        let doc = include_str!("../../docs/delta-format.md");
        let lines: std::collections::HashSet<&str> = doc.lines().collect();
        for l in include_str!("signature.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
        {
            let l = l
                .strip_prefix("//! ")
                .unwrap_or(l.trim_start_matches("//!"));
            assert!(lines.contains(l), "docs/delta-format.md lacks {l:?}");
        }
    }
}
