//! streamOptimized extents, in the layout of VMware's own stream writer (`StreamVmdkWriter`,
//! package `com.vmware.transfer.streamVmdk`) and the reference notes §1.3, in one forward pass:
//!
//! | at (sectors) | what |
//! |---|---|
//! | 0 | header: version 3, flags 0x30001 (newline detector, compressed, markers), compressAlgorithm 1 (deflate), gdOffset `GD_AT_END` |
//! | 1 | embedded descriptor, 20 sectors |
//! | 128 (overHead) | grain records in disk order: LBA (u64 sectors), size (u32), zlib data, padded to a sector |
//! | | after the last grain of each grain table: a GT marker and the table (tables with no grain are left out: directory entry 0) |
//! | | a GD marker and the grain directory |
//! | | a footer marker and the footer (the header again, with the real gdOffset), then an end-of-stream marker |
//!
//! There are no zero grains in a stream: zero and unallocated ranges both become grains left
//! out of their table. Grains are compressed 64 at a time on every core (rayon, one libdeflater
//! compressor per thread) and written in disk order.

use super::grains::{GrainAssembler, GrainSink, Range};
use super::{
    encode_header, Appender, WriteError, EMBEDDED_DESCRIPTOR_SECTORS, GRAIN_SECTORS, GTES_PER_GT,
};
use crate::sparse::{
    SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_VALID_NEWLINE, GD_AT_END, MARKER_EOS,
    MARKER_FOOTER, MARKER_GD, MARKER_GT, SECTOR,
};
use byteorder::{ByteOrder, LittleEndian};
use rayon::prelude::*;
use std::fs::File;
use std::path::PathBuf;

/// Grains compressed in one parallel batch (4 MiB of guest data).
const BATCH_GRAINS: usize = 64;
/// Where the first grain record starts: a grain's worth of sectors, as qemu's overHead.
const OVER_HEAD: u64 = GRAIN_SECTORS;
const GRAIN_BYTES: usize = (GRAIN_SECTORS * SECTOR) as usize;

pub(crate) struct StreamExtent {
    asm: GrainAssembler,
    sink: StreamSink,
}

struct StreamSink {
    out: Appender,
    capacity_sectors: u64,
    descriptor: String,
    /// The grain directory: sector of each grain table, 0 for tables left out.
    gd: Vec<u32>,
    gt_index: u64,
    gt: Vec<u32>,
    gt_dirty: bool,
    /// Grains waiting to be compressed, and their indexes.
    batch: Vec<u8>,
    batch_index: Vec<u64>,
}

/// A 512-byte metadata marker: `val` sectors of metadata of type `kind` follow.
fn marker(val: u64, kind: u32) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    LittleEndian::write_u64(&mut m[0..8], val);
    LittleEndian::write_u32(&mut m[12..16], kind);
    m
}

impl StreamExtent {
    pub(crate) fn new(
        file: File,
        path: PathBuf,
        size: u64,
        descriptor: &str,
    ) -> Result<StreamExtent, WriteError> {
        if descriptor.len() as u64 > EMBEDDED_DESCRIPTOR_SECTORS * SECTOR {
            return Err(WriteError::Invalid {
                path,
                what: format!(
                    "descriptor of {} bytes does not fit its 10 KiB",
                    descriptor.len()
                ),
            });
        }
        let capacity_sectors = size / SECTOR;
        let gt_count = capacity_sectors.div_ceil(GRAIN_SECTORS * GTES_PER_GT);
        Ok(StreamExtent {
            asm: GrainAssembler::new(GRAIN_BYTES as u64, size),
            sink: StreamSink {
                out: Appender::new(file, path, OVER_HEAD * SECTOR),
                capacity_sectors,
                descriptor: descriptor.to_string(),
                gd: vec![0; gt_count as usize],
                gt_index: 0,
                gt: vec![0; GTES_PER_GT as usize],
                gt_dirty: false,
                batch: Vec::with_capacity(BATCH_GRAINS * GRAIN_BYTES),
                batch_index: Vec::with_capacity(BATCH_GRAINS),
            },
        })
    }

    pub(crate) fn push(&mut self, range: Range<'_>) -> Result<(), WriteError> {
        self.asm.push(range, &mut self.sink)
    }

    pub(crate) fn finish(self) -> Result<(), WriteError> {
        let mut s = self.sink;
        s.compress_batch()?;
        s.close_table()?;
        let gd_sectors = (s.gd.len() as u64 * 4).div_ceil(SECTOR);
        s.out.append(&marker(gd_sectors, MARKER_GD))?;
        let gd_offset = s.out.pos() / SECTOR;
        let mut gd = vec![0u8; s.gd.len() * 4];
        LittleEndian::write_u32_into(&s.gd, &mut gd);
        s.out.append(&gd)?;
        s.out.pad_sector()?;
        let header = |gd_offset| SparseHeader {
            version: 3,
            flags: FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: s.capacity_sectors,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_size: EMBEDDED_DESCRIPTOR_SECTORS,
            num_gtes_per_gt: GTES_PER_GT as u32,
            rgd_offset: 0,
            gd_offset,
            over_head: OVER_HEAD,
            unclean_shutdown: 0,
            single_end_line_char: b'\n',
            non_end_line_char: b' ',
            double_end_line_char1: b'\r',
            double_end_line_char2: b'\n',
            compress_algorithm: 1,
        };
        s.out.append(&marker(1, MARKER_FOOTER))?;
        s.out.append(&encode_header(&header(gd_offset)))?;
        s.out.append(&marker(0, MARKER_EOS))?;
        s.out.flush()?;
        let mut head = encode_header(&header(GD_AT_END)).to_vec();
        head.extend_from_slice(s.descriptor.as_bytes());
        s.out.write_at(&head, 0)
    }
}

impl StreamSink {
    fn sector_u32(&self) -> Result<u32, WriteError> {
        u32::try_from(self.out.pos() / SECTOR).map_err(|_| WriteError::Unsupported {
            path: self.out.path.clone(),
            what: "the compressed stream passes 2 TiB, past what grain tables can address".into(),
        })
    }

    /// Write the current grain table (after its grains), if it has any entry.
    fn close_table(&mut self) -> Result<(), WriteError> {
        if !self.gt_dirty {
            return Ok(());
        }
        self.out
            .append(&marker(GTES_PER_GT * 4 / SECTOR, MARKER_GT))?;
        self.gd[self.gt_index as usize] = self.sector_u32()?;
        let mut bytes = vec![0u8; self.gt.len() * 4];
        LittleEndian::write_u32_into(&self.gt, &mut bytes);
        self.out.append(&bytes)?;
        self.gt.fill(0);
        self.gt_dirty = false;
        Ok(())
    }

    /// Compress the batch on every core, then append the records in disk order.
    fn compress_batch(&mut self) -> Result<(), WriteError> {
        if self.batch_index.is_empty() {
            return Ok(());
        }
        let path = &self.out.path;
        let capacity_bytes = self.capacity_sectors * SECTOR;
        let records: Vec<Result<Vec<u8>, WriteError>> = self
            .batch
            .par_chunks(GRAIN_BYTES)
            .zip(self.batch_index.par_iter())
            .map_init(
                || libdeflater::Compressor::new(libdeflater::CompressionLvl::default()),
                |c, (grain, &index)| {
                    // The last grain of a disk that ends inside it holds only the bytes up to
                    // the capacity, as qemu writes it: readers inflate it into that much room.
                    let valid =
                        (capacity_bytes - index * GRAIN_BYTES as u64).min(GRAIN_BYTES as u64);
                    let grain = &grain[..valid as usize];
                    let mut rec = vec![0u8; 12 + c.zlib_compress_bound(grain.len())];
                    let n =
                        c.zlib_compress(grain, &mut rec[12..])
                            .map_err(|e| WriteError::Output {
                                path: path.clone(),
                                source: std::io::Error::other(format!("compressing a grain: {e}")),
                            })?;
                    LittleEndian::write_u64(&mut rec[0..8], index * GRAIN_SECTORS);
                    LittleEndian::write_u32(&mut rec[8..12], n as u32);
                    rec.truncate(12 + n);
                    rec.resize((12 + n).next_multiple_of(SECTOR as usize), 0);
                    Ok(rec)
                },
            )
            .collect();
        let indexes = std::mem::take(&mut self.batch_index);
        for (rec, &index) in records.into_iter().zip(&indexes) {
            let rec = rec?;
            let t = index / GTES_PER_GT;
            if t != self.gt_index {
                self.close_table()?;
                self.gt_index = t;
            }
            self.gt[(index % GTES_PER_GT) as usize] = self.sector_u32()?;
            self.gt_dirty = true;
            self.out.append(&rec)?;
        }
        self.batch_index = indexes;
        self.batch_index.clear();
        self.batch.clear();
        Ok(())
    }
}

impl GrainSink for StreamSink {
    fn data(&mut self, index: u64, grain: &[u8]) -> Result<(), WriteError> {
        self.batch.extend_from_slice(grain);
        self.batch_index.push(index);
        if self.batch_index.len() == BATCH_GRAINS {
            self.compress_batch()?;
        }
        Ok(())
    }

    fn zero_run(&mut self, _first: u64, _end: u64) -> Result<(), WriteError> {
        Ok(())
    }

    fn unallocated_run(&mut self, _first: u64, _end: u64) -> Result<(), WriteError> {
        Ok(())
    }
}
