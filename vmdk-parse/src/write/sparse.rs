//! Hosted sparse extents (monolithicSparse, and the `-s00N` extents of twoGbMaxExtentSparse),
//! in the layout VMware and qemu write (sectors):
//!
//! | at | what |
//! |---|---|
//! | 0 | header: version 1 (2 with the zero-grain flag when zero grains were written), flags newline detector + redundant GD |
//! | 1 | embedded descriptor, 20 sectors (monolithicSparse only; split extents have none) |
//! | rgdOffset | redundant grain directory, then all its grain tables |
//! | gdOffset | grain directory, then all its grain tables |
//! | overHead | grains, 64 KiB each, in disk order; overHead is rounded up to a grain |
//!
//! Every grain table is preallocated (as qemu and VMware do), so grains are simply appended and a
//! table is written, to both copies, once the disk position has moved past it: one grain and one
//! table in memory. The header is written last.

use super::grains::{GrainAssembler, GrainSink, Range};
use super::{
    encode_header, out_err, Appender, WriteError, EMBEDDED_DESCRIPTOR_SECTORS, GRAIN_SECTORS,
    GTES_PER_GT,
};
use crate::sparse::{SparseHeader, FLAG_REDUNDANT_GD, FLAG_VALID_NEWLINE, FLAG_ZERO_GTE, SECTOR};
use byteorder::{ByteOrder, LittleEndian};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Sectors of one grain table.
const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;

/// Where everything of a hosted sparse extent lies, in sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SparseLayout {
    pub capacity_sectors: u64,
    pub gt_count: u64,
    pub gd_sectors: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub rgd: u64,
    pub gd: u64,
    pub over_head: u64,
}

impl SparseLayout {
    pub(crate) fn new(capacity_bytes: u64, embedded_descriptor: bool) -> SparseLayout {
        let capacity_sectors = capacity_bytes / SECTOR;
        let grains = capacity_sectors.div_ceil(GRAIN_SECTORS);
        let gt_count = grains.div_ceil(GTES_PER_GT);
        let gd_sectors = (gt_count * 4).div_ceil(SECTOR);
        let (descriptor_offset, descriptor_size) = if embedded_descriptor {
            (1, EMBEDDED_DESCRIPTOR_SECTORS)
        } else {
            (0, 0)
        };
        let rgd = 1 + descriptor_size;
        let gd = rgd + gd_sectors + gt_count * GT_SECTORS;
        let over_head = (gd + gd_sectors + gt_count * GT_SECTORS).next_multiple_of(GRAIN_SECTORS);
        SparseLayout {
            capacity_sectors,
            gt_count,
            gd_sectors,
            descriptor_offset,
            descriptor_size,
            rgd,
            gd,
            over_head,
        }
    }

    fn rgt(&self, i: u64) -> u64 {
        self.rgd + self.gd_sectors + i * GT_SECTORS
    }

    fn gt(&self, i: u64) -> u64 {
        self.gd + self.gd_sectors + i * GT_SECTORS
    }

    /// Grain table entries are u32 sectors: the last grain must start below 2^32 sectors.
    pub(crate) fn check_fits(&self, path: &Path) -> Result<(), WriteError> {
        let grains = self.capacity_sectors.div_ceil(GRAIN_SECTORS);
        let last = self.over_head + (grains.max(1) - 1) * GRAIN_SECTORS;
        if last > u32::MAX as u64 {
            return Err(WriteError::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "a hosted sparse extent holds at most 2 TiB ({} sectors asked); use twoGbMaxExtentSparse or streamOptimized",
                    self.capacity_sectors
                ),
            });
        }
        Ok(())
    }

    /// A grain directory: entry `i` is the sector of grain table `i`, tables laid end to end.
    fn directory(&self, first_table: u64) -> Vec<u8> {
        let mut b = vec![0u8; (self.gd_sectors * SECTOR) as usize];
        for (i, entry) in b
            .chunks_exact_mut(4)
            .take(self.gt_count as usize)
            .enumerate()
        {
            LittleEndian::write_u32(entry, (first_table + i as u64 * GT_SECTORS) as u32);
        }
        b
    }
}

pub(crate) struct SparseExtent {
    asm: GrainAssembler,
    sink: SparseSink,
}

struct SparseSink {
    out: Appender,
    layout: SparseLayout,
    descriptor: Option<String>,
    zero_grains: bool,
    zero_used: bool,
    /// The grain table being filled, and whether it has entries to write.
    gt_index: u64,
    gt: Vec<u32>,
    gt_dirty: bool,
}

impl SparseExtent {
    pub(crate) fn new(
        file: File,
        path: PathBuf,
        size: u64,
        descriptor: Option<&str>,
        zero_grains: bool,
    ) -> Result<SparseExtent, WriteError> {
        let layout = SparseLayout::new(size, descriptor.is_some());
        layout.check_fits(&path)?;
        if let Some(d) = descriptor {
            if d.len() as u64 > layout.descriptor_size * SECTOR {
                return Err(WriteError::Invalid {
                    path,
                    what: format!("descriptor of {} bytes does not fit its 10 KiB", d.len()),
                });
            }
        }
        let start = layout.over_head * SECTOR;
        Ok(SparseExtent {
            asm: GrainAssembler::new(GRAIN_SECTORS * SECTOR, size),
            sink: SparseSink {
                out: Appender::new(file, path, start),
                layout,
                descriptor: descriptor.map(str::to_string),
                zero_grains,
                zero_used: false,
                gt_index: 0,
                gt: vec![0; GTES_PER_GT as usize],
                gt_dirty: false,
            },
        })
    }

    pub(crate) fn push(&mut self, range: Range<'_>) -> Result<(), WriteError> {
        self.asm.push(range, &mut self.sink)
    }

    pub(crate) fn finish(self) -> Result<(), WriteError> {
        let mut s = self.sink;
        s.flush_gt()?;
        s.out.flush()?;
        let l = &s.layout;
        s.out.write_at(&l.directory(l.rgt(0)), l.rgd * SECTOR)?;
        s.out.write_at(&l.directory(l.gt(0)), l.gd * SECTOR)?;
        if let Some(d) = &s.descriptor {
            s.out.write_at(d.as_bytes(), l.descriptor_offset * SECTOR)?;
        }
        let end = s.out.pos().max(l.over_head * SECTOR);
        s.out.file.set_len(end).map_err(out_err(&s.out.path))?;
        let header = SparseHeader {
            version: if s.zero_used { 2 } else { 1 },
            flags: FLAG_VALID_NEWLINE
                | FLAG_REDUNDANT_GD
                | if s.zero_used { FLAG_ZERO_GTE } else { 0 },
            capacity: l.capacity_sectors,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: l.descriptor_offset,
            descriptor_size: l.descriptor_size,
            num_gtes_per_gt: GTES_PER_GT as u32,
            rgd_offset: l.rgd,
            gd_offset: l.gd,
            over_head: l.over_head,
            unclean_shutdown: 0,
            single_end_line_char: b'\n',
            non_end_line_char: b' ',
            double_end_line_char1: b'\r',
            double_end_line_char2: b'\n',
            compress_algorithm: 0,
        };
        s.out.write_at(&encode_header(&header), 0)
    }
}

impl SparseSink {
    fn set(&mut self, grain: u64, sector: u32) -> Result<(), WriteError> {
        let t = grain / GTES_PER_GT;
        if t != self.gt_index {
            self.flush_gt()?;
            self.gt_index = t;
        }
        self.gt[(grain % GTES_PER_GT) as usize] = sector;
        self.gt_dirty = true;
        Ok(())
    }

    /// Write the current grain table to both copies.
    fn flush_gt(&mut self) -> Result<(), WriteError> {
        if !self.gt_dirty {
            return Ok(());
        }
        let mut bytes = vec![0u8; self.gt.len() * 4];
        LittleEndian::write_u32_into(&self.gt, &mut bytes);
        let l = &self.layout;
        self.out.write_at(&bytes, l.rgt(self.gt_index) * SECTOR)?;
        self.out.write_at(&bytes, l.gt(self.gt_index) * SECTOR)?;
        self.gt.fill(0);
        self.gt_dirty = false;
        Ok(())
    }
}

impl GrainSink for SparseSink {
    fn data(&mut self, index: u64, grain: &[u8]) -> Result<(), WriteError> {
        let sector = self.out.pos() / SECTOR;
        // check_fits bounds every grain's sector; this only guards the arithmetic.
        let sector = u32::try_from(sector).map_err(|_| WriteError::Unsupported {
            path: self.out.path.clone(),
            what: "grain past 2 TiB in a hosted sparse extent".into(),
        })?;
        self.out.append(grain)?;
        self.set(index, sector)
    }

    fn zero_run(&mut self, first: u64, end: u64) -> Result<(), WriteError> {
        if self.zero_grains {
            self.zero_used = true;
            for g in first..end {
                self.set(g, 1)?;
            }
        }
        Ok(())
    }

    fn unallocated_run(&mut self, _first: u64, _end: u64) -> Result<(), WriteError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_vmware_and_qemu_layout() {
        // A small disk: rgd 21, gd 26, overHead 128, as vmware-vdiskmanager and qemu-img write
        // (reference notes §1.1, "Observed real headers").
        let l = SparseLayout::new(6 << 20, true);
        assert_eq!((l.rgd, l.gd, l.over_head, l.gt_count), (21, 26, 128, 1));
        // 2 TiB less a grain-rounded overHead fits; 2 TiB does not.
        let two_tib = 2u64 << 40;
        assert!(SparseLayout::new(two_tib, true)
            .check_fits(Path::new("x"))
            .is_err());
        assert!(SparseLayout::new(two_tib - (1 << 30), true)
            .check_fits(Path::new("x"))
            .is_ok());
        // A split extent of 2047 MiB: no descriptor, and under 2 GiB with its metadata.
        let s = SparseLayout::new(super::super::SPLIT_EXTENT_SECTORS * SECTOR, false);
        assert_eq!(s.rgd, 1);
        assert!(s.over_head * SECTOR + super::super::SPLIT_EXTENT_SECTORS * SECTOR <= 2 << 30);
    }
}
