//! `vpatch --in-place`: update a raw image, or the flat extents of a flat VMDK
//! (monolithicFlat, twoGbMaxExtentFlat, vmfs: FLAT/VMFS extents named by a descriptor)
//! directly, writing only the ranges that change, with an undo file so that the image is never
//! left half-patched. Offsets are guest offsets; a write is split over the extents that hold
//! it. A flat VMDK keeps its size (its descriptor and extent files are not resized).
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
//! `target` u32 (0: BASE is a raw image file; 1: BASE is a flat VMDK descriptor and offsets
//! are written through its extents), `base_size` u64, `target_size` u64, XXH3-64 of bytes
//! 0..32.

use super::{prepare, produce, resolve, Applied, DeltaInput, Error, Leaf, Result, Sink};
use byteorder::{ByteOrder, LittleEndian, ReadBytesExt, WriteBytesExt};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use vdiff::format::CHUNK_BYTES;
use vdiff::{Image, Kind};
use vmdk_parse::descriptor::{Access, ExtentType};
use vmdk_parse::{Disk, ExtentData, LinkFormat};
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

/// `target` in the undo header: BASE is a raw image file.
pub const UNDO_TARGET_RAW: u32 = 0;
/// `target` in the undo header: BASE is a flat VMDK, written through its extents.
pub const UNDO_TARGET_FLAT_VMDK: u32 = 1;

/// One extent of the base opened for writing: guest `[start, start + len)` lives in `file`
/// from `file_offset` on.
struct TargetExtent {
    start: u64,
    len: u64,
    file: File,
    file_offset: u64,
    path: std::path::PathBuf,
}

/// Why `disk` cannot be updated in place, or `None` when it can: a raw image, or a single-link
/// flat VMDK whose extents are all FLAT/VMFS and writable.
pub fn unsupported(disk: &Disk) -> Option<String> {
    if disk.links.len() != 1 {
        return Some("a snapshot chain is not updated in place (flatten it first)".into());
    }
    let link = &disk.links[0];
    match link.format {
        LinkFormat::Raw | LinkFormat::Descriptor => {}
        _ => {
            return Some(format!(
                "{} disks are not updated in place (raw images and flat VMDKs only)",
                if link.create_type.is_empty() {
                    "sparse"
                } else {
                    &link.create_type
                }
            ))
        }
    }
    for e in &link.extents {
        let flat = matches!(e.data, ExtentData::Flat(_))
            && (link.format == LinkFormat::Raw
                || matches!(e.kind, ExtentType::Flat | ExtentType::Vmfs));
        if !flat {
            return Some(format!(
                "extent {} is not flat ({} extents are not updated in place)",
                e.start,
                e.kind.as_str()
            ));
        }
        if link.format == LinkFormat::Descriptor && e.access != Access::Rw {
            return Some(format!("extent at byte {} is not RW", e.start));
        }
    }
    None
}

/// Open the extents of `disk` for writing.
fn open_extents(disk: &Disk) -> Result<Vec<TargetExtent>> {
    if let Some(why) = unsupported(disk) {
        return Err(Error::Usage(why));
    }
    let mut out = Vec::new();
    for e in &disk.links[0].extents {
        let ExtentData::Flat(f) = &e.data else {
            unreachable!("checked by unsupported()")
        };
        let path = disk.files[f.file as usize].path.clone();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        out.push(TargetExtent {
            start: e.start,
            len: e.size,
            file,
            file_offset: f.start,
            path,
        });
    }
    Ok(out)
}

/// Writes into the base: its extents (one for a raw image), split where they meet.
struct InPlace<'a> {
    extents: &'a [TargetExtent],
    /// The old size: past it (a grown raw image) the file is freshly extended, already a hole.
    base_size: u64,
}

impl InPlace<'_> {
    /// Call `f(extent, file offset, range in the request)` for each extent piece of
    /// `[offset, offset + len)`.
    fn each(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&TargetExtent, u64, std::ops::Range<u64>) -> io::Result<()>,
    ) -> io::Result<()> {
        let end = offset + len;
        let mut pos = offset;
        let first = self.extents.partition_point(|e| e.start + e.len <= offset);
        for e in &self.extents[first..] {
            if pos >= end {
                break;
            }
            // The last extent of a raw image also holds what grows past its old end.
            let e_end = if e.start + e.len >= self.base_size {
                u64::MAX
            } else {
                e.start + e.len
            };
            if pos < e.start || pos >= e_end {
                return Err(io::Error::other(format!(
                    "guest byte {pos} is in no extent of the base"
                )));
            }
            let n = (end - pos).min(e_end - pos);
            f(
                e,
                e.file_offset + (pos - e.start),
                pos - offset..pos - offset + n,
            )?;
            pos += n;
        }
        if pos < end {
            return Err(io::Error::other(format!(
                "guest byte {pos} is in no extent of the base"
            )));
        }
        Ok(())
    }

    fn hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = len.min(self.base_size.saturating_sub(offset));
        if len == 0 {
            return Ok(());
        }
        self.each(offset, len, |e, at, r| punch(&e.file, at, r.end - r.start))
    }
}

/// Make `[offset, offset + len)` of `file` read as zeros: a hole where the file system can
/// punch one, written zeros otherwise.
fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let punched = rustix::fs::fallocate(
        file,
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
        file.write_all_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

impl Sink for InPlace<'_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.each(offset, bytes.len() as u64, |e, at, r| {
            e.file
                .write_all_at(&bytes[r.start as usize..r.end as usize], at)
        })
    }
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.hole(offset, len)
    }
    fn unallocated(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.hole(offset, len)
    }
}

/// Apply `deltas` to `disk`, a raw image or a flat VMDK opened from `base_path`, in place
/// ([`unsupported`] says which disks qualify; others are refused with [`Error::Usage`]).
/// `undo_path` must not exist; it is removed when the call returns, whatever the outcome,
/// unless restoring itself failed (then it is what [`restore`] needs). A flat VMDK must keep
/// its size.
pub fn apply_in_place_disk(
    disk: &Disk,
    base_chunks: Option<&[vdiff::format::Digest]>,
    base_path: &Path,
    deltas: Vec<DeltaInput>,
    undo_path: &Path,
) -> Result<Applied> {
    let extents = open_extents(disk)?;
    let kind = match disk.links[0].format {
        LinkFormat::Raw => UNDO_TARGET_RAW,
        _ => UNDO_TARGET_FLAT_VMDK,
    };
    run_in_place(
        disk,
        base_chunks,
        base_path,
        deltas,
        undo_path,
        extents,
        kind,
    )
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
    let file = OpenOptions::new()
        .write(true)
        .open(base_path)
        .map_err(io_err(base_path))?;
    let extents = vec![TargetExtent {
        start: 0,
        len: base.size(),
        file,
        file_offset: 0,
        path: base_path.to_path_buf(),
    }];
    run_in_place(
        base,
        base_chunks,
        base_path,
        deltas,
        undo_path,
        extents,
        UNDO_TARGET_RAW,
    )
}

fn run_in_place(
    base: &dyn Image,
    base_chunks: Option<&[vdiff::format::Digest]>,
    base_path: &Path,
    deltas: Vec<DeltaInput>,
    undo_path: &Path,
    extents: Vec<TargetExtent>,
    kind: u32,
) -> Result<Applied> {
    let deltas = prepare(Some(base), deltas)?;
    let base_size = base.size();
    let target_size = deltas[deltas.len() - 1].header.target_size;
    if kind != UNDO_TARGET_RAW && target_size != base_size {
        return Err(Error::Usage(format!(
            "{}: a flat VMDK is updated in place only to a target of its own size ({base_size} bytes, not {target_size})",
            base_path.display()
        )));
    }

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
    let saved = match write_undo(base, &undo, &modified, base_size, target_size, kind) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(undo_path);
            return Err(e);
        }
    };

    // 3. Apply, reading the original base through the undo file.
    let berr = io_err(base_path);
    let result = (|| {
        let file = &extents[0].file;
        if target_size > base_size {
            file.set_len(target_size).map_err(&berr)?;
        }
        let original = Original {
            base,
            undo: &undo,
            saved: &saved,
        };
        let mut sink = InPlace {
            extents: &extents,
            base_size,
        };
        let (applied, _) = produce(
            Some(&original),
            base_chunks,
            &deltas,
            &mut sink,
            true,
            false,
            None,
        )?;
        if target_size < base_size {
            file.set_len(target_size).map_err(&berr)?;
        }
        for e in &extents {
            e.file.sync_all().map_err(io_err(&e.path))?;
        }
        Ok(applied)
    })();
    match result {
        Ok(a) => {
            std::fs::remove_file(undo_path).map_err(&uerr)?;
            Ok(a)
        }
        Err(e) => {
            drop(undo);
            restore_extents(undo_path, &extents)?;
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
    kind: u32,
) -> Result<Vec<(u64, u64, u64)>> {
    let err = |e| Error::Io {
        what: "writing the undo file".into(),
        source: e,
    };
    let mut w = BufWriter::with_capacity(1 << 20, undo);
    let mut h = [0u8; UNDO_HEADER_LEN];
    h[0..8].copy_from_slice(&UNDO_MAGIC);
    LittleEndian::write_u32(&mut h[8..12], 1);
    LittleEndian::write_u32(&mut h[12..16], kind);
    LittleEndian::write_u64(&mut h[16..24], base_size);
    LittleEndian::write_u64(&mut h[24..32], target_size);
    let sum = xxh3_64(&h[..32]);
    LittleEndian::write_u64(&mut h[32..40], sum);
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
            let mut rh = [0u8; 16];
            LittleEndian::write_u64_into(&[off, n], &mut rh);
            let mut x = Xxh3::new();
            x.update(&rh);
            x.update(&buf);
            w.write_all(&rh).map_err(err)?;
            w.write_all(&buf).map_err(err)?;
            w.write_u64::<LittleEndian>(x.digest()).map_err(err)?;
            saved.push((off, n, at + 16));
            at += 16 + n + 8;
            total += n;
            done += n;
        }
    }
    let mut end = [0u8; 24];
    end[..16].copy_from_slice(&END_MARK);
    LittleEndian::write_u64(&mut end[16..24], total);
    w.write_all(&end).map_err(err)?;
    w.write_u64::<LittleEndian>(xxh3_64(&end)).map_err(err)?;
    w.flush().map_err(err)?;
    drop(w);
    undo.sync_all().map_err(err)?;
    Ok(saved)
}

/// Put the pre-images of an undo file back into the base, cut the base to its old size, and
/// remove the undo file. A damaged or cut undo file is refused before anything is written.
/// A flat VMDK base is opened with vmdk-parse's default options ([`restore_with`]).
pub fn restore(undo_path: &Path, base_path: &Path) -> Result<()> {
    restore_with(undo_path, base_path, &vmdk_parse::OpenOptions::default())
}

/// [`restore`], opening a flat VMDK base with `opts` (its path policy).
pub fn restore_with(
    undo_path: &Path,
    base_path: &Path,
    opts: &vmdk_parse::OpenOptions,
) -> Result<()> {
    // Two passes: check every record, then write; memory stays one record.
    let summary = read_undo(undo_path, None)?;
    let extents = match summary.target {
        UNDO_TARGET_RAW => {
            let file = OpenOptions::new()
                .write(true)
                .open(base_path)
                .map_err(io_err(base_path))?;
            vec![TargetExtent {
                start: 0,
                len: summary.base_size,
                file,
                file_offset: 0,
                path: base_path.to_path_buf(),
            }]
        }
        _ => {
            let disk = Disk::open_with(base_path, opts).map_err(|e| Error::Base(e.into()))?;
            if disk.capacity() != summary.base_size {
                return Err(Error::Undo(format!(
                    "{}: made for a base of {} bytes; {} has {}",
                    undo_path.display(),
                    summary.base_size,
                    base_path.display(),
                    disk.capacity()
                )));
            }
            open_extents(&disk)?
        }
    };
    restore_extents(undo_path, &extents)
}

/// Write the pre-images back through `extents` (the first is the raw file, cut back to its old
/// size), flush, and remove the undo file.
fn restore_extents(undo_path: &Path, extents: &[TargetExtent]) -> Result<()> {
    let summary = read_undo(undo_path, None)?;
    let sink = InPlace {
        extents,
        base_size: summary.base_size,
    };
    read_undo(undo_path, Some(&sink))?;
    if summary.target == UNDO_TARGET_RAW {
        let e = &extents[0];
        e.file.set_len(summary.base_size).map_err(io_err(&e.path))?;
    }
    for e in extents {
        e.file.sync_all().map_err(io_err(&e.path))?;
    }
    std::fs::remove_file(undo_path).map_err(io_err(undo_path))?;
    Ok(())
}

/// What an undo file's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UndoSummary {
    /// [`UNDO_TARGET_RAW`] or [`UNDO_TARGET_FLAT_VMDK`].
    pub target: u32,
    pub base_size: u64,
    pub target_size: u64,
    /// Pre-image bytes saved.
    pub saved_bytes: u64,
}

/// Check a whole undo file read from `r` (every record, the end record, nothing after it)
/// without writing anything: for `--restore` dry runs and the fuzz target.
pub fn check_undo(r: impl Read) -> Result<UndoSummary> {
    parse_undo(r, Path::new("undo"), &mut |_, _| Ok(()))
}

/// Read an undo file, checking every rule; with `apply_to`, write each pre-image back.
fn read_undo(undo_path: &Path, apply_to: Option<&InPlace>) -> Result<UndoSummary> {
    let f = File::open(undo_path).map_err(io_err(undo_path))?;
    let r = BufReader::with_capacity(1 << 20, f);
    parse_undo(r, undo_path, &mut |off, bytes| match apply_to {
        Some(sink) => sink
            .each(off, bytes.len() as u64, |e, at, r| {
                e.file
                    .write_all_at(&bytes[r.start as usize..r.end as usize], at)
            })
            .map_err(io_err(undo_path)),
        None => Ok(()),
    })
}

/// The undo file reader: every rule checked, each pre-image handed to `apply` in order.
fn parse_undo(
    mut r: impl Read,
    name: &Path,
    apply: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<UndoSummary> {
    let corrupt = |what: &str| Error::Undo(format!("{}: {what}", name.display()));
    let mut h = [0u8; UNDO_HEADER_LEN];
    r.read_exact(&mut h)
        .map_err(|_| corrupt("not an undo file (too short)"))?;
    let target = LittleEndian::read_u32(&h[12..16]);
    if h[0..8] != UNDO_MAGIC
        || LittleEndian::read_u32(&h[8..12]) != 1
        || xxh3_64(&h[..32]) != LittleEndian::read_u64(&h[32..])
    {
        return Err(corrupt("not a version 1 undo file, or a damaged header"));
    }
    if target != UNDO_TARGET_RAW && target != UNDO_TARGET_FLAT_VMDK {
        return Err(corrupt("unknown undo target kind"));
    }
    let base_size = LittleEndian::read_u64(&h[16..]);
    let target_size = LittleEndian::read_u64(&h[24..]);
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
            if xxh3_64(&end) != LittleEndian::read_u64(&rest[8..])
                || LittleEndian::read_u64(&rest[..8]) != total
            {
                return Err(corrupt("damaged end record"));
            }
            let mut one = [0u8; 1];
            if r.read(&mut one).map_err(io_err(name))? != 0 {
                return Err(corrupt("bytes after the end record"));
            }
            return Ok(UndoSummary {
                target,
                base_size,
                target_size,
                saved_bytes: total,
            });
        }
        let off = LittleEndian::read_u64(&rh[..8]);
        let n = LittleEndian::read_u64(&rh[8..]);
        if n == 0 || n > RECORD_MAX || off.checked_add(n).is_none_or(|e| e > base_size) {
            return Err(corrupt("record outside the base"));
        }
        buf.resize(n as usize, 0);
        r.read_exact(&mut buf).map_err(|_| corrupt("cut short"))?;
        let sum = r
            .read_u64::<LittleEndian>()
            .map_err(|_| corrupt("cut short"))?;
        let mut x = Xxh3::new();
        x.update(&rh);
        x.update(&buf);
        if x.digest() != sum {
            return Err(corrupt("record checksum mismatch"));
        }
        apply(off, &buf)?;
        total += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdiff::MemImage;

    fn undo_bytes(kind: u32) -> Vec<u8> {
        let base = MemImage::new((0..3 << 20).map(|i| (i % 251) as u8).collect());
        let f = tempfile::tempfile().unwrap();
        let modified = [(100, 5000), ((1 << 20) - 10, (1 << 20) + 20)];
        write_undo(&base, &f, &modified, base.size(), base.size() + 7, kind).unwrap();
        let mut b = Vec::new();
        let mut r = &f;
        std::io::Seek::rewind(&mut r).unwrap();
        r.read_to_end(&mut b).unwrap();
        b
    }

    #[test]
    fn undo_file_round_trip_and_damage() {
        for kind in [UNDO_TARGET_RAW, UNDO_TARGET_FLAT_VMDK] {
            let b = undo_bytes(kind);
            let s = check_undo(&b[..]).unwrap();
            assert_eq!(s.target, kind);
            assert_eq!(s.base_size, 3 << 20);
            assert_eq!(s.target_size, (3 << 20) + 7);
            assert_eq!(s.saved_bytes, 5000 + (1 << 20) + 20);
            for cut in (0..b.len()).step_by(997) {
                assert!(check_undo(&b[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(check_undo(&longer[..]).is_err(), "bytes after the end");
            for i in (0..b.len()).step_by(4099).chain([12, 41, b.len() - 9]) {
                let mut bad = b.clone();
                bad[i] ^= 0x08;
                assert!(check_undo(&bad[..]).is_err(), "flip at {i}");
            }
        }
    }
}
