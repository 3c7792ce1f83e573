//! `cat`: the guest-visible bytes of a disk, to a stream or to a file.
//!
//! The disk is read window by window (8 MiB): each window is resolved once, its pieces are read
//! or inflated in parallel (compressed grains use both cores), and the window is written out.
//! To a regular file, holes are left where the disk is unallocated or zero, and 4 KiB blocks of
//! data that are all zeros are skipped too, as `qemu-img convert` does; the file is written under
//! a temporary name and renamed when complete, so a failed run never leaves a half disk behind.

use crate::disk::{Disk, Piece};
use crate::error::Error;
use crate::extent::Location;
use rayon::prelude::*;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const WINDOW_BYTES: u64 = 8 << 20;
const ZERO_BLOCK: usize = 4096;

/// Why `cat` failed: the disk could not be read, or the output could not be written.
#[derive(thiserror::Error, Debug)]
pub enum CatError {
    #[error(transparent)]
    Disk(#[from] Error),
    #[error("{}: {source}", path.display())]
    Output { path: PathBuf, source: io::Error },
}

/// Where the bytes go.
enum Sink<'a> {
    /// A stream: every byte is written, in order.
    Stream(&'a mut dyn Write),
    /// A regular file, already sized: only non-zero data is written.
    Sparse(&'a File),
}

/// Write the whole disk to `out`, in order (stdout, a pipe, a device).
pub fn cat_to_writer(disk: &Disk, out: &mut dyn Write) -> Result<(), CatError> {
    run(disk, Sink::Stream(out), Path::new("-"))
}

/// Write the whole disk to the regular file `path` as a sparse file, atomically.
/// A block or character device is written in full, in place.
pub fn cat_to_path(disk: &Disk, path: &Path) -> Result<(), CatError> {
    let out_err = |source| CatError::Output {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(out_err)?;
            run(disk, Sink::Stream(&mut f), path)?;
            return f.sync_all().map_err(out_err);
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
        let f = File::create(&tmp).map_err(|source| CatError::Output {
            path: tmp.clone(),
            source,
        })?;
        f.set_len(disk.capacity())
            .map_err(|source| CatError::Output {
                path: tmp.clone(),
                source,
            })?;
        run(disk, Sink::Sparse(&f), &tmp)?;
        f.sync_all().map_err(|source| CatError::Output {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, path).map_err(out_err)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn run(disk: &Disk, mut sink: Sink<'_>, out_path: &Path) -> Result<(), CatError> {
    let out_err = |source| CatError::Output {
        path: out_path.to_path_buf(),
        source,
    };
    let cap = disk.capacity();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut buf = vec![0u8; WINDOW_BYTES.min(cap) as usize];
    let mut pos = 0u64;
    while pos < cap {
        let len = WINDOW_BYTES.min(cap - pos);
        pieces.clear();
        disk.resolve(pos, len, true, &mut pieces)?;
        let window = &mut buf[..len as usize];
        // A sparse file skips zero and unallocated pieces, so they need no zeros in memory
        // either: a 3 TiB disk holding a few MiB must cost what its map costs.
        fill_window(disk, pos, &pieces, window, matches!(sink, Sink::Sparse(_)))?;
        match &mut sink {
            Sink::Stream(w) => w.write_all(window).map_err(out_err)?,
            Sink::Sparse(f) => {
                for p in &pieces {
                    if matches!(p.loc, Location::Zero | Location::Unallocated) {
                        continue;
                    }
                    let at = (p.offset - pos) as usize;
                    write_nonzero(f, &window[at..at + p.len as usize], p.offset)
                        .map_err(out_err)?;
                }
            }
        }
        pos += len;
    }
    if let Sink::Stream(w) = sink {
        w.flush().map_err(out_err)?;
    }
    Ok(())
}

/// Read every piece of a window into `window` (which starts at disk offset `base`), in parallel.
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
fn write_nonzero(f: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut i = 0;
    while i < data.len() {
        // Skip zero blocks.
        while i < data.len() && is_zero(&data[i..(i + ZERO_BLOCK).min(data.len())]) {
            i += ZERO_BLOCK;
        }
        if i >= data.len() {
            break;
        }
        let start = i;
        while i < data.len() && !is_zero(&data[i..(i + ZERO_BLOCK).min(data.len())]) {
            i += ZERO_BLOCK;
        }
        let end = i.min(data.len());
        f.write_all_at(&data[start..end], offset + start as u64)?;
    }
    Ok(())
}

fn is_zero(b: &[u8]) -> bool {
    // OR-folding 64-byte chunks vectorises well and still stops at the first non-zero chunk.
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}
