//! What the differ and the applier read: an image's size, its layout (data, zero, unallocated
//! ranges) and its bytes. Implemented for every disk vmdk-parse opens and for images in memory.

use crate::Result;
use vmdk_parse::extent::Location;
use vmdk_parse::{Disk, Piece};

/// The state of a range of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Data,
    /// Reads as zeros, allocated (zero grains).
    Zero,
    /// Reads as zeros, not allocated anywhere.
    Unallocated,
}

/// A readable image. Shared between threads.
pub trait Image: Sync {
    fn size(&self) -> u64;

    /// Read `[offset, offset + buf.len())` into `buf` (holes as zeros) and report its layout
    /// into `layout` as `(offset, length, kind)`, in order, covering the range.
    fn read_layout(
        &self,
        buf: &mut [u8],
        offset: u64,
        layout: &mut Vec<(u64, u64, Kind)>,
    ) -> Result<()>;

    /// Read bytes only.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut l = Vec::new();
        self.read_layout(buf, offset, &mut l)
    }

    /// When `[offset, offset + len)` holds no data (zero and unallocated ranges only) and the
    /// image can tell without reading: true, with the layout of the range in `layout`. False
    /// means "maybe data". Lets a scan skip filling all-hole chunks with zeros.
    fn layout_if_no_data(
        &self,
        _offset: u64,
        _len: u64,
        _layout: &mut Vec<(u64, u64, Kind)>,
    ) -> Result<bool> {
        Ok(false)
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<Piece>, Vec<u8>)> = Default::default();
}

fn kind_of(loc: &Location) -> Kind {
    match loc {
        Location::Unallocated => Kind::Unallocated,
        Location::Zero => Kind::Zero,
        Location::Data { .. } | Location::Compressed { .. } => Kind::Data,
    }
}

/// Append piece `p` to `layout`, joined to the last range when it continues it in kind.
fn push_piece(layout: &mut Vec<(u64, u64, Kind)>, p: &Piece) {
    let kind = kind_of(&p.loc);
    match layout.last_mut() {
        Some(last) if last.2 == kind && last.0 + last.1 == p.offset => last.1 += p.len,
        _ => layout.push((p.offset, p.len, kind)),
    }
}

impl Image for Disk {
    fn size(&self) -> u64 {
        self.capacity()
    }

    fn read_layout(
        &self,
        buf: &mut [u8],
        offset: u64,
        layout: &mut Vec<(u64, u64, Kind)>,
    ) -> Result<()> {
        layout.clear();
        SCRATCH.with(|s| {
            let (pieces, scratch) = &mut *s.borrow_mut();
            pieces.clear();
            self.resolve(offset, buf.len() as u64, true, pieces)?;
            for p in pieces.iter() {
                let at = (p.offset - offset) as usize;
                self.read_piece(p, &mut buf[at..at + p.len as usize], scratch)?;
                push_piece(layout, p);
            }
            Ok(())
        })
    }

    fn layout_if_no_data(
        &self,
        offset: u64,
        len: u64,
        layout: &mut Vec<(u64, u64, Kind)>,
    ) -> Result<bool> {
        layout.clear();
        SCRATCH.with(|s| {
            let (pieces, _) = &mut *s.borrow_mut();
            pieces.clear();
            self.resolve(offset, len, true, pieces)?;
            if pieces.iter().any(|p| kind_of(&p.loc) == Kind::Data) {
                return Ok(false);
            }
            for p in pieces.iter() {
                push_piece(layout, p);
            }
            Ok(true)
        })
    }
}

/// An image in memory: bytes, and ranges declared unallocated or zero (which must hold zeros).
#[derive(Clone, Debug, Default)]
pub struct MemImage {
    pub data: Vec<u8>,
    /// Sorted, non-overlapping `(offset, length, kind)` ranges that are not data.
    pub holes: Vec<(u64, u64, Kind)>,
}

impl MemImage {
    pub fn new(data: Vec<u8>) -> MemImage {
        MemImage {
            data,
            holes: Vec::new(),
        }
    }
}

impl Image for MemImage {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_layout(
        &self,
        buf: &mut [u8],
        offset: u64,
        layout: &mut Vec<(u64, u64, Kind)>,
    ) -> Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.size() {
            return Err(crate::Error::Input(format!(
                "read of {} bytes at {offset} past the image end {}",
                buf.len(),
                self.size()
            )));
        }
        buf.copy_from_slice(&self.data[offset as usize..end as usize]);
        layout.clear();
        let mut pos = offset;
        let push = |o: u64, l: u64, k: Kind, layout: &mut Vec<(u64, u64, Kind)>| {
            if l > 0 {
                layout.push((o, l, k));
            }
        };
        for &(ho, hl, k) in &self.holes {
            let (a, b) = (ho.max(pos), (ho + hl).min(end));
            if a >= b {
                continue;
            }
            push(pos, a - pos, Kind::Data, layout);
            push(a, b - a, k, layout);
            pos = b;
        }
        push(pos, end - pos, Kind::Data, layout);
        Ok(())
    }
}
