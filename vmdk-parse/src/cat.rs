//! `cat`: the guest-visible bytes of a disk, to a stream or to a file.
//!
//! The disk is read window by window (8 MiB). A reader thread resolves each window once and
//! reads or inflates its pieces (compressed grains on every core), while the calling thread
//! writes the previous window out: reading, inflating and writing overlap, with three window
//! buffers in all, so memory stays near 30 MiB whatever the disk size.
//!
//! To a regular file, holes are left where the disk is unallocated or zero, and 4 KiB blocks of
//! data that are all zeros are skipped too, as `qemu-img convert` does. The file is written under
//! a temporary name and renamed when complete, so a failed run never leaves a half disk behind.
//! Like `cp` and `qemu-img convert`, it is not flushed to stable storage unless asked
//! ([`CatOptions::sync`]).
//!
//! Aligned runs of data go to the output with `O_DIRECT` when the file system takes it: copying
//! a disk image through the page cache costs more kernel time than the copy itself on the
//! machines we measured (`scripts/bench-vmdk-parse.sh`), and a backup copy has no use for those
//! cached pages. Unaligned edges (512-byte grains, a disk size that is not a multiple of 4 KiB)
//! and file systems without `O_DIRECT` (tmpfs) use ordinary writes; Linux keeps the two coherent.

use crate::disk::{Disk, Piece};
use crate::error::Error;
use crate::extent::Location;
use rayon::prelude::*;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

const WINDOW_BYTES: u64 = 8 << 20;
/// Windows in flight: one being read, one queued, one being written.
const WINDOWS: usize = 3;
const ZERO_BLOCK: usize = 4096;

/// Why `cat` failed: the disk could not be read, or the output could not be written.
#[derive(thiserror::Error, Debug)]
pub enum CatError {
    #[error(transparent)]
    Disk(#[from] Error),
    #[error("{}: {source}", path.display())]
    Output { path: PathBuf, source: io::Error },
}

/// How `cat_to_path` writes its file.
#[derive(Clone, Copy, Debug, Default)]
pub struct CatOptions {
    /// Flush the output to stable storage before renaming it into place (default: no, as `cp`).
    pub sync: bool,
}

/// Where the bytes go.
enum Sink<'a> {
    /// A stream: every byte is written, in order.
    Stream(&'a mut dyn Write),
    /// A regular file, already sized: only non-zero data is written.
    Sparse(SparseOut<'a>),
}

/// Alignment of `O_DIRECT` offsets, lengths and buffers that every Linux file system accepts.
pub const DIRECT_ALIGN: usize = 4096;

/// A sparse output file, with an `O_DIRECT` handle on it when the file system allows one.
/// Shared with other writers of large files (vrepo's build).
pub struct SparseOut<'a> {
    pub file: &'a File,
    pub direct: Option<File>,
}

impl SparseOut<'_> {
    /// Write `data` at `offset`: the 4 KiB-aligned middle through the `O_DIRECT` handle when
    /// there is one and `data` is aligned in memory, the rest through the page cache.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let aligned = |n: usize| n % DIRECT_ALIGN == 0;
        if let Some(d) = &self.direct {
            // The aligned middle goes direct; the edges, if any, through the page cache.
            let addr = data.as_ptr() as usize;
            let head = (DIRECT_ALIGN - (offset as usize % DIRECT_ALIGN)) % DIRECT_ALIGN;
            let body = data.len().saturating_sub(head) / DIRECT_ALIGN * DIRECT_ALIGN;
            if body > 0 && aligned(addr + head) {
                if head > 0 {
                    self.file.write_all_at(&data[..head], offset)?;
                }
                match d.write_all_at(&data[head..head + body], offset + head as u64) {
                    Ok(()) => {}
                    // Some file systems open with O_DIRECT but refuse the writes.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                        self.direct = None;
                        self.file
                            .write_all_at(&data[head..head + body], offset + head as u64)?;
                    }
                    Err(e) => return Err(e),
                }
                let tail = head + body;
                if tail < data.len() {
                    self.file
                        .write_all_at(&data[tail..], offset + tail as u64)?;
                }
                return Ok(());
            }
        }
        self.file.write_all_at(data, offset)
    }
}

/// A second, `O_DIRECT` handle on a file, when its file system allows one.
pub fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .ok()
}

/// A zeroed buffer of `len` bytes whose start is aligned for `O_DIRECT`, without `unsafe`:
/// over-allocate and start at the first aligned byte.
pub struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let bytes = vec![0u8; len + DIRECT_ALIGN];
        let start = (DIRECT_ALIGN - bytes.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        AlignedBuf { bytes, start }
    }
    /// How many bytes it holds (at least the length it was made with).
    pub fn capacity(&self) -> usize {
        self.bytes.len() - self.start
    }
    pub fn get(&self, len: usize) -> &[u8] {
        &self.bytes[self.start..self.start + len]
    }
    pub fn get_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + len]
    }
}

/// Write the whole disk to `out`, in order (stdout, a pipe, a device).
pub fn cat_to_writer(disk: &Disk, out: &mut dyn Write) -> Result<(), CatError> {
    run(disk, Sink::Stream(out), Path::new("-"))
}

/// Write the whole disk to the regular file `path` as a sparse file, atomically.
/// A block or character device is written in full, in place.
pub fn cat_to_path(disk: &Disk, path: &Path, opts: CatOptions) -> Result<(), CatError> {
    let out_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CatError::Output { path, source }
    };
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(out_err(path))?;
            run(disk, Sink::Stream(&mut f), path)?;
            return f.sync_all().map_err(out_err(path));
        }
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.vmdk-parse-{}.tmp", std::process::id()));
    let result = (|| {
        let f = File::create(&tmp).map_err(out_err(&tmp))?;
        f.set_len(disk.capacity()).map_err(out_err(&tmp))?;
        let direct = open_direct(&tmp);
        run(disk, Sink::Sparse(SparseOut { file: &f, direct }), &tmp)?;
        if opts.sync {
            f.sync_all().map_err(out_err(&tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(out_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One window, read and ready to write.
struct Window {
    pos: u64,
    pieces: Vec<Piece>,
    buf: AlignedBuf,
}

/// What [`for_each_window`] reads into the window buffer.
#[derive(Clone, Copy)]
pub(crate) struct WindowFill {
    /// Fill zero and unallocated pieces with zeros (a stream needs every byte); otherwise
    /// their bytes in the buffer are left as they were.
    pub fill_holes: bool,
    /// Do not hand over windows made only of zero and unallocated pieces at all (a sparse
    /// output has nothing to do for them).
    pub skip_hole_windows: bool,
}

/// Hole pieces carried over to the next window at most (they merge, so this is rarely reached).
const MAX_CARRIED_PIECES: usize = 4096;

/// Walk the disk window by window in order: a reader thread resolves each window and reads or
/// inflates its pieces (compressed grains on every core) while `consume` handles the previous
/// window on the calling thread. `consume(pos, pieces, bytes)` gets the window's pieces and its
/// bytes (`bytes[0]` is disk offset `pos`); pieces come in disk order, and without
/// `fill_holes` the zero and unallocated pieces of windows holding nothing else are merged into
/// the next call (they may start before `pos`, and have no bytes). Stops at the first error of
/// either side.
pub(crate) fn for_each_window<E: From<Error>>(
    disk: &Disk,
    how: WindowFill,
    mut consume: impl FnMut(u64, &[Piece], &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let cap = disk.capacity();
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<Window, Error>>(1);
    let (free_tx, free_rx) = mpsc::channel::<Window>();
    for _ in 0..WINDOWS {
        let _ = free_tx.send(Window {
            pos: 0,
            pieces: Vec::new(),
            buf: AlignedBuf::new(WINDOW_BYTES.min(cap) as usize),
        });
    }
    std::thread::scope(|s| {
        // The reader: stops at the end, at its first error, or when the consumer gives up.
        s.spawn(move || {
            let mut pos = 0u64;
            let mut free = None;
            let mut carried: Vec<Piece> = Vec::new();
            while pos < cap {
                let mut w = match free.take() {
                    Some(w) => w,
                    None => match free_rx.recv() {
                        Ok(w) => w,
                        Err(_) => return,
                    },
                };
                let len = WINDOW_BYTES.min(cap - pos);
                w.pos = pos;
                w.pieces.clear();
                if let Err(e) = disk.resolve(pos, len, true, &mut w.pieces) {
                    let _ = full_tx.send(Err(e));
                    return;
                }
                pos += len;
                // Rather than wake the consumer hundreds of thousands of times on a mostly
                // empty 3 TiB disk, keep the buffer and go on.
                let holes_only = w
                    .pieces
                    .iter()
                    .all(|p| matches!(p.loc, Location::Zero | Location::Unallocated));
                if how.skip_hole_windows && holes_only {
                    free = Some(w);
                    continue;
                }
                if !how.fill_holes && holes_only {
                    // A consumer that wants the holes but not their bytes gets them merged into
                    // the next window it is handed.
                    for p in w.pieces.drain(..) {
                        match carried.last_mut() {
                            Some(last)
                                if last.loc == p.loc
                                    && last.depth == p.depth
                                    && last.offset + last.len == p.offset =>
                            {
                                last.len += p.len
                            }
                            _ => carried.push(p),
                        }
                    }
                    if carried.len() < MAX_CARRIED_PIECES && pos < cap {
                        free = Some(w);
                        continue;
                    }
                    std::mem::swap(&mut w.pieces, &mut carried);
                    if full_tx.send(Ok(w)).is_err() {
                        return;
                    }
                    continue;
                }
                let filled = fill_window(
                    disk,
                    w.pos,
                    &w.pieces,
                    w.buf.get_mut(len as usize),
                    !how.fill_holes,
                );
                if !carried.is_empty() {
                    carried.append(&mut w.pieces);
                    std::mem::swap(&mut w.pieces, &mut carried);
                }
                let failed = filled.is_err();
                if full_tx.send(filled.map(|()| w)).is_err() || failed {
                    return;
                }
            }
        });
        for msg in full_rx {
            let w = msg?;
            let len = WINDOW_BYTES.min(cap - w.pos) as usize;
            consume(w.pos, &w.pieces, w.buf.get(len))?;
            // The reader may have finished; then the buffer is simply dropped.
            let _ = free_tx.send(w);
        }
        Ok(())
    })
}

fn run(disk: &Disk, mut sink: Sink<'_>, out_path: &Path) -> Result<(), CatError> {
    let out_err = |source| CatError::Output {
        path: out_path.to_path_buf(),
        source,
    };
    let sparse = matches!(sink, Sink::Sparse(_));
    let how = WindowFill {
        fill_holes: !sparse,
        skip_hole_windows: sparse,
    };
    for_each_window(disk, how, |pos, pieces, window| -> Result<(), CatError> {
        match &mut sink {
            Sink::Stream(out) => out.write_all(window).map_err(out_err),
            Sink::Sparse(out) => {
                for p in pieces {
                    if matches!(p.loc, Location::Zero | Location::Unallocated) {
                        continue;
                    }
                    let at = (p.offset - pos) as usize;
                    write_nonzero(out, &window[at..at + p.len as usize], p.offset)
                        .map_err(out_err)?;
                }
                Ok(())
            }
        }
    })?;
    if let Sink::Stream(out) = &mut sink {
        out.flush().map_err(out_err)?;
    }
    Ok(())
}

/// Read every piece of a window into `window` (which starts at disk offset `base`), in parallel
/// when there are compressed grains to inflate. With `skip_zeros`, zero and unallocated pieces
/// are left as they are: a sparse output never looks at them.
fn fill_window(
    disk: &Disk,
    base: u64,
    pieces: &[Piece],
    window: &mut [u8],
    skip_zeros: bool,
) -> Result<(), Error> {
    // Split the window into the disjoint slices of each piece.
    let mut jobs: Vec<(&Piece, &mut [u8])> = Vec::with_capacity(pieces.len());
    let mut rest = window;
    let mut at = base;
    for p in pieces {
        debug_assert_eq!(p.offset, at);
        let (head, tail) = rest.split_at_mut(p.len as usize);
        if !(skip_zeros && matches!(p.loc, Location::Zero | Location::Unallocated)) {
            jobs.push((p, head));
        }
        rest = tail;
        at += p.len;
    }
    let compressed = pieces
        .iter()
        .filter(|p| matches!(p.loc, Location::Compressed { .. }))
        .count();
    if compressed >= 2 {
        jobs.into_par_iter()
            .try_for_each_init(Vec::new, |scratch, (p, slice)| {
                disk.read_piece(p, slice, scratch)
            })
    } else {
        let mut scratch = Vec::new();
        jobs.into_iter()
            .try_for_each(|(p, slice)| disk.read_piece(p, slice, &mut scratch))
    }
}

/// Write `data` at `offset`, skipping 4 KiB blocks that are all zeros (they stay holes).
pub(crate) fn write_nonzero(out: &mut SparseOut<'_>, data: &[u8], offset: u64) -> io::Result<()> {
    let block_is_zero = |i: usize| is_zero(&data[i..(i + ZERO_BLOCK).min(data.len())]);
    let mut i = 0;
    while i < data.len() {
        while i < data.len() && block_is_zero(i) {
            i += ZERO_BLOCK;
        }
        if i >= data.len() {
            break;
        }
        let start = i;
        while i < data.len() && !block_is_zero(i) {
            i += ZERO_BLOCK;
        }
        out.write_at(&data[start..i.min(data.len())], offset + start as u64)?;
    }
    Ok(())
}

pub(crate) fn is_zero(b: &[u8]) -> bool {
    // OR-folding 64-byte chunks vectorises well and still stops at the first non-zero chunk.
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}
