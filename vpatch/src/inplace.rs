//! `vpatch --in-place`: update a raw image directly, writing only the ranges that change, with
//! an undo file so that the image is never left half-patched.
//!
//! 1. Plan: every delta is decoded and each target window resolved; a range of the base is
//!    *modified* unless the target copies it from the base at its own offset. Ranges past the
//!    base's end need no undo (the base is truncated back).
//! 2. Undo: the pre-image of every modified range is written to the undo file (`UNDO_MAGIC`,
//!    then records of at most 1 MiB, each `offset` u64, `length` u64, the bytes and an XXH3-64
//!    of the three; then an end record of 16 bytes of 0xff, the total length and an XXH3-64),
//!    and the file is flushed to stable storage before the base is touched.
//! 3. Apply: the target is produced as usual, but reads of the base go through the undo file
//!    for modified ranges, so the source is the original base however far writing has gone.
//!    Zero and unallocated ranges are punched as holes (or written as zeros where the file
//!    system cannot punch).
//! 4. The image digest of the target is checked. If it matches, the base is flushed and the
//!    undo file removed. If it does not, or anything fails, the pre-images are written back,
//!    the base is cut to its old size, and the undo file removed.
//!
//! After a crash in step 3, `vpatch --restore UNDO BASE` puts the pre-images back.
//!
//! Undo header (`UNDO_HEADER_LEN` = 40 bytes): `magic` "VMLUNDO\0", `version` u32 = 1,
//! `reserved` u32 = 0, `base_size` u64, `target_size` u64, XXH3-64 of bytes 0..32.

use super::{prepare, produce, resolve, Applied, DeltaInput, Error, Leaf, Result, Sink};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use vdiff::format::CHUNK_BYTES;
use vdiff::{Image, Kind};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const UNDO_MAGIC: [u8; 8] = *b"VMLUNDO\0";
pub const UNDO_HEADER_LEN: usize = 40;
const RECORD_MAX: u64 = 1 << 20;
const END_MARK: [u8; 16] = [0xff; 16];

fn io_err(what: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::Io {
        what: what.display().to_string(),
        source: e,
    }
}

/// The base as it was: the file's bytes, with modified ranges read from the undo file.
struct Original<'a> {
    base: &'a dyn Image,
    undo: &'a File,
    /// (offset, length, position of the bytes in the undo file), sorted.
    saved: &'a [(u64, u64, u64)],
}

impl Image for Original<'_> {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_layout(
        &self,
        buf: &mut [u8],
        offset: u64,
        layout: &mut Vec<(u64, u64, Kind)>,
    ) -> vdiff::Result<()> {
        self.base.read_layout(buf, offset, layout)?;
        let end = offset + buf.len() as u64;
        let first = self.saved.partition_point(|r| r.0 + r.1 <= offset);
        for &(o, l, at) in &self.saved[first..] {
            if o >= end {
                break;
            }
            let (a, b) = (o.max(offset), (o + l).min(end));
            let dst = &mut buf[(a - offset) as usize..(b - offset) as usize];
            self.undo
                .read_exact_at(dst, at + (a - o))
                .map_err(vdiff::Error::Io)?;
        }
        Ok(())
    }
}

/// Writes into the base file itself.
struct InPlace<'a> {
    file: &'a File,
    base_size: u64,
}

impl InPlace<'_> {
    fn hole(&self, offset: u64, len: u64) -> io::Result<()> {
        // Past the old end the file is freshly extended: already a hole.
        let len = len.min(self.base_size.saturating_sub(offset));
        if len == 0 {
            return Ok(());
        }
        let punched = rustix::fs::fallocate(
            self.file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            offset,
            len,
        );
        if punched.is_ok() {
            return Ok(());
        }
        let zeros = vec![0u8; RECORD_MAX.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.file
                .write_all_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

impl Sink for InPlace<'_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.hole(offset, len)
    }
    fn unallocated(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.hole(offset, len)
    }
}

/// Apply `deltas` to the raw image `base_path` in place (`base` is the same file opened for
/// reading). `undo_path` must not exist; it is removed when the call returns, whatever the
/// outcome, unless restoring itself failed (then it is what `restore` needs).
pub fn apply_in_place(
    base: &dyn Image,
    base_chunks: Option<&[vdiff::format::Digest]>,
    base_path: &Path,
    deltas: Vec<DeltaInput>,
    undo_path: &Path,
) -> Result<Applied> {
    let deltas = prepare(Some(base), deltas)?;
    let base_size = base.size();
    let target_size = deltas[deltas.len() - 1].header.target_size;

    // 1. Plan the modified ranges of the base.
    let mut modified: Vec<(u64, u64)> = Vec::new();
    let limit = base_size.min(target_size);
    let mut leaves = Vec::new();
    let mut start = 0;
    while start < limit {
        let len = CHUNK_BYTES.min(limit - start);
        leaves.clear();
        resolve(&deltas, deltas.len() - 1, start, len, &mut leaves);
        let mut pos = start;
        for &(l, leaf) in &leaves {
            let same = matches!(leaf, Leaf::Base(s) if s == pos);
            if !same {
                match modified.last_mut() {
                    Some(m) if m.0 + m.1 == pos => m.1 += l,
                    _ => modified.push((pos, l)),
                }
            }
            pos += l;
        }
        start += len;
    }

    // 2. Save the pre-images, durably, before touching the base.
    let uerr = io_err(undo_path);
    let undo = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(undo_path)
        .map_err(&uerr)?;
    let saved = match write_undo(base, &undo, &modified, base_size, target_size) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(undo_path);
            return Err(e);
        }
    };

    // 3. Apply, reading the original base through the undo file.
    let berr = io_err(base_path);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .open(base_path)
            .map_err(&berr)?;
        if target_size > base_size {
            file.set_len(target_size).map_err(&berr)?;
        }
        let original = Original {
            base,
            undo: &undo,
            saved: &saved,
        };
        let mut sink = InPlace {
            file: &file,
            base_size,
        };
        let (applied, _) = produce(
            Some(&original),
            base_chunks,
            &deltas,
            &mut sink,
            true,
            false,
        )?;
        if target_size < base_size {
            file.set_len(target_size).map_err(&berr)?;
        }
        file.sync_all().map_err(&berr)?;
        Ok(applied)
    })();
    match result {
        Ok(a) => {
            std::fs::remove_file(undo_path).map_err(&uerr)?;
            Ok(a)
        }
        Err(e) => {
            drop(undo);
            restore(undo_path, base_path)?;
            Err(e)
        }
    }
}

fn write_undo(
    base: &dyn Image,
    undo: &File,
    modified: &[(u64, u64)],
    base_size: u64,
    target_size: u64,
) -> Result<Vec<(u64, u64, u64)>> {
    let err = |e| Error::Io {
        what: "writing the undo file".into(),
        source: e,
    };
    let mut w = BufWriter::with_capacity(1 << 20, undo);
    let mut h = [0u8; UNDO_HEADER_LEN];
    h[0..8].copy_from_slice(&UNDO_MAGIC);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[16..24].copy_from_slice(&base_size.to_le_bytes());
    h[24..32].copy_from_slice(&target_size.to_le_bytes());
    let sum = xxh3_64(&h[..32]);
    h[32..40].copy_from_slice(&sum.to_le_bytes());
    w.write_all(&h).map_err(err)?;
    let mut at = UNDO_HEADER_LEN as u64;
    let mut saved = Vec::new();
    let mut buf = Vec::new();
    let mut total = 0u64;
    for &(o, l) in modified {
        let mut done = 0;
        while done < l {
            let n = (l - done).min(RECORD_MAX);
            let off = o + done;
            buf.resize(n as usize, 0);
            base.read_at(&mut buf, off)?;
            let mut x = Xxh3::new();
            x.update(&off.to_le_bytes());
            x.update(&n.to_le_bytes());
            x.update(&buf);
            w.write_all(&off.to_le_bytes()).map_err(err)?;
            w.write_all(&n.to_le_bytes()).map_err(err)?;
            w.write_all(&buf).map_err(err)?;
            w.write_all(&x.digest().to_le_bytes()).map_err(err)?;
            saved.push((off, n, at + 16));
            at += 16 + n + 8;
            total += n;
            done += n;
        }
    }
    let mut end = [0u8; 24];
    end[..16].copy_from_slice(&END_MARK);
    end[16..24].copy_from_slice(&total.to_le_bytes());
    w.write_all(&end).map_err(err)?;
    w.write_all(&xxh3_64(&end).to_le_bytes()).map_err(err)?;
    w.flush().map_err(err)?;
    drop(w);
    undo.sync_all().map_err(err)?;
    Ok(saved)
}

/// Put the pre-images of an undo file back into the base, cut the base to its old size, and
/// remove the undo file. A damaged or cut undo file is refused before anything is written.
pub fn restore(undo_path: &Path, base_path: &Path) -> Result<()> {
    // Two passes: check every record, then write; memory stays one record.
    let base_size = read_undo(undo_path, None)?;
    let berr = io_err(base_path);
    let file = OpenOptions::new()
        .write(true)
        .open(base_path)
        .map_err(&berr)?;
    read_undo(undo_path, Some(&file))?;
    file.set_len(base_size).map_err(&berr)?;
    file.sync_all().map_err(&berr)?;
    std::fs::remove_file(undo_path).map_err(io_err(undo_path))?;
    Ok(())
}

/// Read an undo file, checking every rule; with `apply_to`, write each pre-image back.
/// Returns the base's old size.
fn read_undo(undo_path: &Path, apply_to: Option<&File>) -> Result<u64> {
    let uerr = io_err(undo_path);
    let corrupt = |what: &str| Error::Undo(format!("{}: {what}", undo_path.display()));
    let mut r = BufReader::with_capacity(1 << 20, File::open(undo_path).map_err(&uerr)?);
    let mut h = [0u8; UNDO_HEADER_LEN];
    r.read_exact(&mut h)
        .map_err(|_| corrupt("not an undo file (too short)"))?;
    if h[0..8] != UNDO_MAGIC
        || h[8..12] != 1u32.to_le_bytes()
        || xxh3_64(&h[..32]) != u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"))
    {
        return Err(corrupt("not a version 1 undo file, or a damaged header"));
    }
    let base_size = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    let mut buf = Vec::new();
    let mut total = 0u64;
    loop {
        let mut rh = [0u8; 16];
        r.read_exact(&mut rh).map_err(|_| corrupt("cut short"))?;
        if rh == END_MARK {
            let mut rest = [0u8; 16];
            r.read_exact(&mut rest).map_err(|_| corrupt("cut short"))?;
            let mut end = [0u8; 24];
            end[..16].copy_from_slice(&END_MARK);
            end[16..].copy_from_slice(&rest[..8]);
            if xxh3_64(&end) != u64::from_le_bytes(rest[8..].try_into().expect("8 bytes"))
                || u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) != total
            {
                return Err(corrupt("damaged end record"));
            }
            return Ok(base_size);
        }
        let off = u64::from_le_bytes(rh[..8].try_into().expect("8 bytes"));
        let n = u64::from_le_bytes(rh[8..].try_into().expect("8 bytes"));
        if n == 0 || n > RECORD_MAX || off.checked_add(n).is_none_or(|e| e > base_size) {
            return Err(corrupt("record outside the base"));
        }
        buf.resize(n as usize, 0);
        r.read_exact(&mut buf).map_err(|_| corrupt("cut short"))?;
        let mut sum = [0u8; 8];
        r.read_exact(&mut sum).map_err(|_| corrupt("cut short"))?;
        let mut x = Xxh3::new();
        x.update(&rh);
        x.update(&buf);
        if x.digest() != u64::from_le_bytes(sum) {
            return Err(corrupt("record checksum mismatch"));
        }
        if let Some(f) = apply_to {
            f.write_all_at(&buf, off).map_err(io_err(undo_path))?;
        }
        total += n;
    }
}
