//! COWD extents (`VMFSSPARSE` in a descriptor, createType `vmfsSparse`): the ESX "redo log"
//! snapshot delta, `<disk>-00000N-delta.vmdk`, default on VMFS5 for disks under 2 TiB.
//!
//! Layout (all offsets in 512-byte sectors, see `docs/vmdk-parse.md` and
//! `../shared/reference/vmdk-vmx-formats.md` §1.4; VMware's `COWDisk_Header`, libyal §COWD,
//! qemu `vmdk_open_vmfs_sparse`):
//!
//! | byte | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `COWD` |
//! | 4 | 4 | version, 1 |
//! | 8 | 4 | flags (3 in every file seen) |
//! | 12 | 4 | capacity, sectors (u32, so at most 2 TiB) |
//! | 16 | 4 | grainSize, sectors (ESXi writes 1) |
//! | 20 | 4 | gdOffset, sector of the grain directory (4, right after the header) |
//! | 24 | 4 | numGDEntries |
//! | 28 | 4 | nextFreeSector |
//! | 32 | 12 | root: cylinders, heads, sectors; or child: parentFileName\[1024\] … |
//! | 1056 | 4 | … child: parentGeneration |
//! | 1060 | 4 | generation |
//! | 1064 | 60 | name |
//! | 1124 | 512 | description |
//! | 1636 | 4 | savedGeneration |
//! | 1640 | 8 | reserved |
//! | 1648 | 4 | uncleanShutdown |
//! | 1652 | 396 | padding (the header is 2048 bytes, 4 sectors) |
//!
//! The grain directory (GD) holds `numGDEntries` u32 sectors of grain tables (0 = no table: the
//! whole span the table would cover is unallocated). A grain table (GT) always holds
//! [`GTES_PER_GT`] (4096) u32 grain-table entries (GTE), each the sector of one grain.
//!
//! Decisions where readers disagree or the format is silent:
//! - **GTE 1 is a zeroed grain**: it reads as zeros and never falls through to the parent.
//!   Sector 1 lies inside the 4-sector header, so it can never hold guest data; xen-orchestra
//!   (`VhdEsxiCowd.mjs`: "emptied grain, no data, don't look into parent") reads it this way.
//!   qemu never sets `has_zero_grain` for COWD and reads the grain at sector 1, that is the
//!   header bytes 512.. (inside `parentFileName`), as data. Measured with qemu-img 10.0 by
//!   `tests/tests/esx_deltas.rs` (`cowd_gte_1_reads_zeros_where_qemu_reads_header_bytes`): the
//!   guest sees header bytes 512..1024. ESXi leaves `parentFileName` empty, so on real files
//!   qemu returns zeros too and the two readings agree.
//! - GTE 0 is unallocated (read the parent).
//! - A grain table or grain at a sector below [`CowdExtent::metadata_end_sector`] (inside the
//!   header or grain directory), or reaching past the end of the file, is corruption: reads
//!   fail rather than return metadata or invent zeros.
//! - `flags`, `nextFreeSector`, the generations and `uncleanShutdown` do not change how a grain
//!   is found; they are kept in [`CowdHeader`] for `info` and `check` but not enforced (a delta
//!   copied off a running host may be marked unclean and still be consistent).
//! - `numGDEntries` may exceed what the capacity needs (the declared directory must still lie in
//!   the file); only the entries that cover the capacity are read.
//!
//! Memory: the grain directory of the largest COWD (2 TiB, 1-sector grains) is 1 Mi entries,
//! 4 MiB, and is held; grain tables (16 KiB each) are read on demand into a bounded cache.

use crate::error::{Error, Result};
use crate::extent::{ExtentMap, FileId, Location, PieceSink, TableCache};
use crate::io::DiskFile;
use crate::sparse::{MAX_CAPACITY_BYTES, MAX_GRAIN_SECTORS, SECTOR};
use byteorder::{ByteOrder, LittleEndian};
use std::sync::Arc;

pub const MAGIC: &[u8; 4] = b"COWD";
/// The only version known.
pub const VERSION: u32 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 2048;
/// Size of the header in sectors: nothing else may live below this.
pub const HEADER_SECTORS: u64 = HEADER_LEN as u64 / SECTOR;
/// Entries per grain table: fixed by the format (libyal; qemu passes 4096 as `l2_size`).
pub const GTES_PER_GT: u64 = 4096;
/// A GTE with this value is a zeroed grain (see the module docs).
pub const GTE_ZERO: u32 = 1;
/// Grain tables kept in memory per extent (16 KiB each, so 8 MiB); beyond this the cache starts
/// again.
const GT_CACHE_TABLES: usize = 512;

// The capacity field is a u32 count of sectors, so every COWD fits the disk-size limit.
const _: () = assert!(u32::MAX as u64 * SECTOR <= MAX_CAPACITY_BYTES);

/// The header fields, with the spec's names (VMware `COWDisk_Header`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CowdHeader {
    pub version: u32,
    pub flags: u32,
    /// Virtual size in sectors.
    pub capacity: u32,
    /// Sectors per grain.
    pub grain_size: u32,
    /// Sector of the grain directory.
    pub gd_offset: u32,
    pub num_gd_entries: u32,
    /// Next sector the writer would allocate.
    pub next_free_sector: u32,
    /// Root extents only (a union with `parent_file_name` in the spec).
    pub cylinders: u32,
    pub heads: u32,
    pub sectors: u32,
    /// Child extents only; ESXi leaves it empty and names the parent in the descriptor.
    pub parent_file_name: String,
    pub parent_generation: u32,
    pub generation: u32,
    pub name: String,
    pub description: String,
    pub saved_generation: u32,
    pub unclean_shutdown: u32,
}

/// A NUL-terminated string field, decoded leniently (these fields are informational).
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl CowdHeader {
    /// Parse the 2048-byte header; `None` without the magic.
    pub fn parse(b: &[u8]) -> Option<CowdHeader> {
        if b.len() < HEADER_LEN || &b[0..4] != MAGIC {
            return None;
        }
        Some(CowdHeader {
            version: LittleEndian::read_u32(&b[4..]),
            flags: LittleEndian::read_u32(&b[8..]),
            capacity: LittleEndian::read_u32(&b[12..]),
            grain_size: LittleEndian::read_u32(&b[16..]),
            gd_offset: LittleEndian::read_u32(&b[20..]),
            num_gd_entries: LittleEndian::read_u32(&b[24..]),
            next_free_sector: LittleEndian::read_u32(&b[28..]),
            cylinders: LittleEndian::read_u32(&b[32..]),
            heads: LittleEndian::read_u32(&b[36..]),
            sectors: LittleEndian::read_u32(&b[40..]),
            parent_file_name: c_string(&b[32..1056]),
            parent_generation: LittleEndian::read_u32(&b[1056..]),
            generation: LittleEndian::read_u32(&b[1060..]),
            name: c_string(&b[1064..1124]),
            description: c_string(&b[1124..1636]),
            saved_generation: LittleEndian::read_u32(&b[1636..]),
            unclean_shutdown: LittleEndian::read_u32(&b[1648..]),
        })
    }

    /// Bytes of virtual disk one grain table covers.
    pub fn gt_coverage_bytes(&self) -> u64 {
        GTES_PER_GT * self.grain_size as u64 * SECTOR
    }

    /// Grain directory entries needed to cover the capacity.
    pub fn gd_entries_needed(&self) -> u64 {
        (self.capacity as u64).div_ceil(GTES_PER_GT * self.grain_size as u64)
    }

    /// Sectors the declared grain directory occupies.
    pub fn gd_sectors(&self) -> u64 {
        (self.num_gd_entries as u64 * 4).div_ceil(SECTOR)
    }

    /// Check every field that sizes an allocation, a loop or a lookup.
    fn validate(&self, f: &DiskFile) -> Result<()> {
        let bad = |what: String| Err(Error::corrupt(&f.path, what));
        if self.version != VERSION {
            return Err(Error::unsupported(
                &f.path,
                format!("COWD version {} (only {VERSION} is known)", self.version),
            ));
        }
        let g = self.grain_size as u64;
        if g == 0 || !g.is_power_of_two() || g > MAX_GRAIN_SECTORS {
            return bad(format!(
                "COWD grain size {g} sectors is not a power of two from 1 to {MAX_GRAIN_SECTORS}"
            ));
        }
        if (self.gd_offset as u64) < HEADER_SECTORS {
            return bad(format!(
                "COWD grain directory at sector {} overlaps the {HEADER_SECTORS}-sector header",
                self.gd_offset
            ));
        }
        let needed = self.gd_entries_needed();
        if (self.num_gd_entries as u64) < needed {
            return bad(format!(
                "COWD grain directory has {} entries, but a capacity of {} sectors needs {needed}",
                self.num_gd_entries, self.capacity
            ));
        }
        let gd_end = (self.gd_offset as u64 + self.gd_sectors()) * SECTOR;
        if gd_end > f.len {
            return bad(format!(
                "COWD grain directory (sector {}, {} entries) ends at byte {gd_end}, past the end of the file ({} bytes)",
                self.gd_offset, self.num_gd_entries, f.len
            ));
        }
        Ok(())
    }
}

/// One COWD extent file.
#[derive(Debug)]
pub struct CowdExtent {
    pub file: FileId,
    pub header: CowdHeader,
    /// The grain directory entries that cover the capacity.
    gd: Vec<u32>,
    grain_bytes: u64,
    capacity_bytes: u64,
    metadata_end_sector: u64,
    gt_cache: TableCache<u32>,
}

impl CowdExtent {
    pub fn open(files: &[DiskFile], file: FileId) -> Result<CowdExtent> {
        let f = &files[file as usize];
        let mut hb = vec![0u8; HEADER_LEN];
        f.read_exact_at(&mut hb, 0, "COWD header")?;
        let header =
            CowdHeader::parse(&hb).ok_or_else(|| Error::corrupt(&f.path, "no COWD magic"))?;
        header.validate(f)?;
        let needed = header.gd_entries_needed();
        // Bounded: validate() checked that the whole declared directory lies in the file.
        let raw = f.read_vec(
            header.gd_offset as u64 * SECTOR,
            needed * 4,
            "COWD grain directory",
        )?;
        // read_vec gave exactly `needed * 4` bytes, as read_u32_into requires.
        let mut gd = vec![0u32; needed as usize];
        LittleEndian::read_u32_into(&raw, &mut gd);
        Ok(CowdExtent {
            file,
            grain_bytes: header.grain_size as u64 * SECTOR,
            capacity_bytes: header.capacity as u64 * SECTOR,
            metadata_end_sector: header.gd_offset as u64 + header.gd_sectors(),
            header,
            gd,
            gt_cache: TableCache::new(GT_CACHE_TABLES),
        })
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }
    pub fn grain_bytes(&self) -> u64 {
        self.grain_bytes
    }

    /// The grain directory entries that cover the capacity (grain table sectors, 0 = none).
    pub fn grain_directory(&self) -> &[u32] {
        &self.gd
    }

    /// First sector past the header and the grain directory: grain tables and grains live at
    /// or after it.
    pub fn metadata_end_sector(&self) -> u64 {
        self.metadata_end_sector
    }

    /// Read the grain table at `sector`, checking it lies in the file past the metadata.
    pub fn read_gt_at(&self, files: &[DiskFile], sector: u64, what: &str) -> Result<Vec<u32>> {
        let f = &files[self.file as usize];
        if sector < self.metadata_end_sector {
            return Err(Error::corrupt(
                &f.path,
                format!(
                    "{what} at sector {sector} points into the header or grain directory (which end at sector {})",
                    self.metadata_end_sector
                ),
            ));
        }
        let at = sector.checked_mul(SECTOR).ok_or_else(|| {
            Error::corrupt(&f.path, format!("{what} at sector {sector} is absurd"))
        })?;
        let raw = f.read_vec(at, GTES_PER_GT * 4, what)?;
        let mut gt = vec![0u32; GTES_PER_GT as usize];
        LittleEndian::read_u32_into(&raw, &mut gt);
        Ok(gt)
    }

    fn gt(&self, files: &[DiskFile], gd_index: u64, gt_sector: u32) -> Result<Arc<[u32]>> {
        self.gt_cache.get_or_load(gd_index, || {
            self.read_gt_at(
                files,
                gt_sector as u64,
                &format!("COWD grain table {gd_index}"),
            )
        })
    }

    /// Where grain `g` is, given its grain-table entry; `skip` bytes into the grain.
    fn grain_location(&self, files: &[DiskFile], g: u64, gte: u32, skip: u64) -> Result<Location> {
        match gte {
            0 => return Ok(Location::Unallocated),
            GTE_ZERO => return Ok(Location::Zero),
            _ => {}
        }
        let f = &files[self.file as usize];
        let sector = gte as u64;
        if sector < self.metadata_end_sector {
            return Err(Error::corrupt(
                &f.path,
                format!(
                    "grain {g} at sector {sector} points into the header or grain directory (which end at sector {})",
                    self.metadata_end_sector
                ),
            ));
        }
        let valid = self
            .grain_bytes
            .min(self.capacity_bytes - g * self.grain_bytes);
        let at = sector * SECTOR;
        if at + valid > f.len {
            return Err(Error::corrupt(
                &f.path,
                format!(
                    "grain {g} at sector {sector} ({valid} bytes) lies past the end of the file ({} bytes)",
                    f.len
                ),
            ));
        }
        Ok(Location::Data {
            file: self.file,
            offset: at + skip,
        })
    }
}

impl ExtentMap for CowdExtent {
    fn resolve(
        &self,
        files: &[DiskFile],
        offset: u64,
        len: u64,
        _: bool,
        sink: &mut PieceSink,
    ) -> Result<()> {
        let end = offset + len;
        let span = self.header.gt_coverage_bytes();
        let mut pos = offset;
        while pos < end {
            let gdi = pos / span;
            let span_end = ((gdi + 1) * span).min(end);
            let gt_sector = *self.gd.get(gdi as usize).ok_or_else(|| {
                Error::corrupt(
                    &files[self.file as usize].path,
                    format!("byte {pos} is beyond the COWD grain directory"),
                )
            })?;
            if gt_sector == 0 {
                // No table: the whole span it would cover is unallocated.
                sink.push(pos, span_end - pos, Location::Unallocated);
                pos = span_end;
                continue;
            }
            let gt = self.gt(files, gdi, gt_sector)?;
            while pos < span_end {
                let g = pos / self.grain_bytes;
                let gs = g * self.grain_bytes;
                let ge = (gs + self.grain_bytes).min(span_end);
                let gte = gt[(g % GTES_PER_GT) as usize];
                sink.push(pos, ge - pos, self.grain_location(files, g, gte, pos - gs)?);
                pos = ge;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A COWD file under construction: header fields plus a sparse image of sectors.
    struct Builder {
        capacity: u32,
        grain_size: u32,
        gd_offset: u32,
        num_gd_entries: u32,
        version: u32,
        /// (byte offset, bytes) written after the header.
        writes: Vec<(u64, Vec<u8>)>,
        len: Option<u64>,
    }

    impl Builder {
        /// Capacity in grains of one sector, GD at sector 4 with as many entries as needed.
        fn new(capacity: u32, grain_size: u32) -> Builder {
            let entries = (capacity as u64).div_ceil(GTES_PER_GT * grain_size as u64) as u32;
            Builder {
                capacity,
                grain_size,
                gd_offset: 4,
                num_gd_entries: entries,
                version: 1,
                writes: Vec::new(),
                len: None,
            }
        }
        fn u32s_at(&mut self, sector: u64, values: &[u32]) -> &mut Self {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.writes.push((sector * SECTOR, bytes));
            self
        }
        fn bytes_at(&mut self, sector: u64, bytes: &[u8]) -> &mut Self {
            self.writes.push((sector * SECTOR, bytes.to_vec()));
            self
        }
        fn write(&self, dir: &Path) -> std::path::PathBuf {
            let mut img = vec![0u8; HEADER_LEN];
            img[0..4].copy_from_slice(MAGIC);
            for (at, v) in [
                (4, self.version),
                (8, 3),
                (12, self.capacity),
                (16, self.grain_size),
                (20, self.gd_offset),
                (24, self.num_gd_entries),
            ] {
                img[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            let gd_end = (self.gd_offset as u64 * SECTOR
                + (self.num_gd_entries as u64 * 4).div_ceil(SECTOR) * SECTOR)
                as usize;
            // Room for the declared directory, unless a test declares an absurd one on purpose.
            img.resize(img.len().max(gd_end.min(1 << 20)), 0);
            for (at, b) in &self.writes {
                let at = *at as usize;
                if img.len() < at + b.len() {
                    img.resize(at + b.len(), 0);
                }
                img[at..at + b.len()].copy_from_slice(b);
            }
            if let Some(len) = self.len {
                img.resize(len as usize, 0);
            }
            let p = dir.join("t-delta.vmdk");
            std::fs::write(&p, img).unwrap();
            p
        }
    }

    fn open(p: &Path) -> Result<(Vec<DiskFile>, CowdExtent)> {
        let files = vec![DiskFile::open(p)?];
        let e = CowdExtent::open(&files, 0)?;
        Ok((files, e))
    }

    fn resolve(
        files: &[DiskFile],
        e: &CowdExtent,
        off: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, Location)>> {
        let mut sink = PieceSink::default();
        e.resolve(files, off, len, false, &mut sink)?;
        Ok(sink.pieces)
    }

    fn expect_corrupt(r: Result<impl std::fmt::Debug>, needle: &str) {
        match r {
            Err(e) => {
                assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
                assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
            }
            Ok(v) => panic!("expected a corrupt error with {needle:?}, got {v:?}"),
        }
    }

    #[test]
    fn every_gte_kind_and_an_empty_gd_entry() {
        let dir = tempfile::tempdir().unwrap();
        // 2 grain tables of 4096 one-sector grains; the second has no table.
        let mut b = Builder::new(8192, 1);
        // GD ends at sector 5; GT 0 at sector 5..37; grain data at 40 and 41.
        b.u32s_at(4, &[5, 0]);
        let mut gt = vec![0u32; 4096];
        gt[0] = 40; // data
        gt[1] = GTE_ZERO;
        gt[2] = 0; // parent
        gt[3] = 41; // data, adjacent in the file to grain 0's sector + 1
        gt[4] = 40; // the same sector as grain 0: allowed, COWD does not forbid sharing
        b.u32s_at(5, &gt);
        b.bytes_at(40, &[0xaa; 512]).bytes_at(41, &[0xbb; 512]);
        let p = b.write(dir.path());
        let (files, e) = open(&p).unwrap();
        assert_eq!(e.capacity_bytes(), 8192 * 512);
        assert_eq!(e.grain_directory(), &[5, 0]);
        assert_eq!(e.metadata_end_sector(), 5);
        let pieces = resolve(&files, &e, 0, 8192 * 512).unwrap();
        assert_eq!(
            pieces,
            vec![
                (
                    0,
                    512,
                    Location::Data {
                        file: 0,
                        offset: 40 * 512
                    }
                ),
                (512, 512, Location::Zero),
                (1024, 512, Location::Unallocated),
                (
                    1536,
                    512,
                    Location::Data {
                        file: 0,
                        offset: 41 * 512
                    }
                ),
                (
                    2048,
                    512,
                    Location::Data {
                        file: 0,
                        offset: 40 * 512
                    }
                ),
                // The rest of table 0, then the whole span of GD entry 1, unallocated.
                (2560, 8192 * 512 - 2560, Location::Unallocated),
            ]
        );
        // A read starting inside a grain skips into it.
        let pieces = resolve(&files, &e, 100, 1000).unwrap();
        assert_eq!(
            pieces,
            vec![
                (
                    100,
                    412,
                    Location::Data {
                        file: 0,
                        offset: 40 * 512 + 100
                    }
                ),
                (512, 512, Location::Zero),
                (1024, 76, Location::Unallocated),
            ]
        );
        assert_eq!(e.read_gt_at(&files, 5, "gt").unwrap(), gt);
    }

    #[test]
    fn larger_grains_and_a_partial_last_grain() {
        let dir = tempfile::tempdir().unwrap();
        // 8-sector grains, capacity 20 sectors: grains 0, 1, and a half grain 2.
        let mut b = Builder::new(20, 8);
        let mut gt = vec![0u32; 4096];
        gt[1] = 40;
        gt[2] = 48;
        b.u32s_at(4, &[5]).u32s_at(5, &gt);
        // The last grain is 4 sectors: the file may end where its valid part ends.
        b.bytes_at(48, &[7; 4 * 512]);
        let p = b.write(dir.path());
        let (files, e) = open(&p).unwrap();
        assert_eq!(files[0].len, 52 * 512);
        let pieces = resolve(&files, &e, 0, 20 * 512).unwrap();
        assert_eq!(
            pieces,
            vec![
                (0, 4096, Location::Unallocated),
                (
                    4096,
                    6144,
                    Location::Data {
                        file: 0,
                        offset: 40 * 512
                    }
                ),
            ]
        );
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        type Change = Box<dyn Fn(&mut Builder)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|b: &mut Builder| b.grain_size = 3),
                "not a power of two",
            ),
            (
                Box::new(|b: &mut Builder| b.grain_size = 0),
                "not a power of two",
            ),
            (
                Box::new(|b: &mut Builder| b.grain_size = 16384),
                "not a power of two",
            ),
            (
                Box::new(|b: &mut Builder| b.gd_offset = 3),
                "overlaps the 4-sector header",
            ),
            (Box::new(|b: &mut Builder| b.num_gd_entries = 1), "needs 2"),
            (
                Box::new(|b: &mut Builder| b.gd_offset = 1_000_000),
                "past the end of the file",
            ),
            (
                Box::new(|b: &mut Builder| b.num_gd_entries = u32::MAX),
                "past the end of the file",
            ),
        ];
        for (change, needle) in cases {
            let mut b = Builder::new(8192, 1);
            change(&mut b);
            let p = b.write(dir.path());
            expect_corrupt(open(&p).map(|_| ()), needle);
        }
        let mut b = Builder::new(8192, 1);
        b.version = 2;
        let err = open(&b.write(dir.path())).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unsupported, "{err}");

        // Shorter than the header, and no magic.
        let p = dir.path().join("short.vmdk");
        std::fs::write(&p, b"COWD\x01\0\0\0").unwrap();
        expect_corrupt(open(&p).map(|_| ()), "past the end of the file");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        expect_corrupt(open(&p).map(|_| ()), "no COWD magic");
    }

    #[test]
    fn extra_gd_entries_are_allowed_and_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Builder::new(4096, 1);
        b.num_gd_entries = 128; // one sector of directory
        b.u32s_at(4, &[0, 12345]);
        let (_, e) = open(&b.write(dir.path())).unwrap();
        assert_eq!(e.grain_directory(), &[0]);
        assert_eq!(e.metadata_end_sector(), 5);
    }

    #[test]
    fn corrupt_tables_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(u32, u32, &str)> = vec![
            // (GD entry 0, GTE 0, expected message)
            (
                4,
                40,
                "grain table 0 at sector 4 points into the header or grain directory",
            ),
            (1_000_000, 40, "past the end of the file"),
            (5, 2, "grain 0 at sector 2 points into the header"),
            (5, 4, "grain 0 at sector 4 points into the header"),
            (
                5,
                41,
                "grain 0 at sector 41 (512 bytes) lies past the end of the file",
            ),
        ];
        for (gde, gte, needle) in cases {
            let mut b = Builder::new(4096, 1);
            let mut gt = vec![0u32; 4096];
            gt[0] = gte;
            b.u32s_at(4, &[gde]).u32s_at(5, &gt).bytes_at(40, &[1; 512]);
            let p = b.write(dir.path());
            let (files, e) = open(&p).unwrap();
            expect_corrupt(resolve(&files, &e, 0, 512), needle);
        }
        // A grain table cut by the end of the file.
        let mut b = Builder::new(4096, 1);
        b.u32s_at(4, &[5]);
        b.len = Some(5 * 512 + 100);
        let (files, e) = open(&b.write(dir.path())).unwrap();
        expect_corrupt(resolve(&files, &e, 0, 512), "past the end of the file");
    }

    #[test]
    fn grain_tables_are_cached_and_the_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Builder::new(4096, 1);
        let mut gt = vec![0u32; 4096];
        gt[0] = 40;
        b.u32s_at(4, &[5]).u32s_at(5, &gt).bytes_at(40, &[9; 512]);
        let p = b.write(dir.path());
        let (files, e) = open(&p).unwrap();
        resolve(&files, &e, 0, 512).unwrap();
        // Break the table on disk: the cached copy still answers.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[0; 4], 5 * 512))
            .unwrap();
        assert_eq!(
            resolve(&files, &e, 0, 512).unwrap(),
            vec![(
                0,
                512,
                Location::Data {
                    file: 0,
                    offset: 40 * 512
                }
            )]
        );
        assert_eq!(e.gt_cache.len(), 1);
    }
}
