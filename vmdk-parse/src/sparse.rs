//! Hosted sparse extents (magic `KDMV`): monolithicSparse, twoGbMaxExtentSparse extents,
//! hosted snapshot links, and streamOptimized (compressed grains with markers).
//!
//! Layout (all offsets in 512-byte sectors, see `docs/vmdk-parse.md` and
//! `../shared/reference/vmdk-vmx-formats.md` §1.1–1.3): a 512-byte header, an optional embedded
//! descriptor, a grain directory (GD) of u32 grain-table sectors, grain tables (GT) of
//! `numGTEsPerGT` u32 grain sectors, and grains of `grainSize` sectors.
//!
//! Decisions where readers disagree:
//! - GTE value 1 is a zero grain whether or not flag bit 2 is set. VMware's own reader
//!   (open-vmdk `SparsePread`) does this; qemu reads sector 1 (the descriptor) as data without
//!   the flag, which can never be guest data. `check` reports an unflagged 1.
//! - A grain or grain table pointing below `overHead` (into the header, descriptor or grain
//!   directories) is corruption: reads fail instead of returning metadata as guest bytes.
//! - streamOptimized with `gdOffset = GD_AT_END` uses the footer; without a valid footer, or
//!   with no grain directory at all, the file is scanned marker by marker (grain records carry
//!   their LBA), the way a stream consumer would read it.

use crate::error::{Error, Result};
use crate::extent::{ExtentMap, FileId, Location, PieceSink, TableCache};
use crate::io::DiskFile;
use byteorder::{ByteOrder, LittleEndian};
use std::sync::Arc;

pub const SECTOR: u64 = 512;
pub const MAGIC: &[u8; 4] = b"KDMV";
pub const HEADER_LEN: usize = 512;
pub const GD_AT_END: u64 = u64::MAX;

pub const FLAG_VALID_NEWLINE: u32 = 1 << 0;
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
pub const FLAG_ZERO_GTE: u32 = 1 << 2;
pub const FLAG_COMPRESSED: u32 = 1 << 16;
pub const FLAG_MARKERS: u32 = 1 << 17;
const KNOWN_INCOMPAT: u32 = FLAG_COMPRESSED | FLAG_MARKERS;

pub const MARKER_EOS: u32 = 0;
pub const MARKER_GT: u32 = 1;
pub const MARKER_GD: u32 = 2;
pub const MARKER_FOOTER: u32 = 3;
pub const MARKER_PROGRESS: u32 = 4;

/// Largest grain accepted, in sectors (4 MiB; VMware and qemu write 128).
pub const MAX_GRAIN_SECTORS: u64 = 8192;
/// Largest grain table accepted, in entries (VMware writes 512).
pub const MAX_GTES_PER_GT: u32 = 4096;
/// Largest virtual size accepted for any extent or disk, in bytes (256 TiB).
pub const MAX_CAPACITY_BYTES: u64 = 1 << 48;
/// Grain tables kept in memory per extent; beyond this the cache starts again.
const GT_CACHE_TABLES: usize = 512;

/// The header fields, with the spec's names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub grain_size: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub num_gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub over_head: u64,
    pub unclean_shutdown: u8,
    pub single_end_line_char: u8,
    pub non_end_line_char: u8,
    pub double_end_line_char1: u8,
    pub double_end_line_char2: u8,
    pub compress_algorithm: u16,
}

impl SparseHeader {
    pub fn parse(b: &[u8]) -> Option<SparseHeader> {
        if b.len() < HEADER_LEN || &b[0..4] != MAGIC {
            return None;
        }
        Some(SparseHeader {
            version: LittleEndian::read_u32(&b[4..]),
            flags: LittleEndian::read_u32(&b[8..]),
            capacity: LittleEndian::read_u64(&b[12..]),
            grain_size: LittleEndian::read_u64(&b[20..]),
            descriptor_offset: LittleEndian::read_u64(&b[28..]),
            descriptor_size: LittleEndian::read_u64(&b[36..]),
            num_gtes_per_gt: LittleEndian::read_u32(&b[44..]),
            rgd_offset: LittleEndian::read_u64(&b[48..]),
            gd_offset: LittleEndian::read_u64(&b[56..]),
            over_head: LittleEndian::read_u64(&b[64..]),
            unclean_shutdown: b[72],
            single_end_line_char: b[73],
            non_end_line_char: b[74],
            double_end_line_char1: b[75],
            double_end_line_char2: b[76],
            compress_algorithm: LittleEndian::read_u16(&b[77..]),
        })
    }

    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
    pub fn markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }
    /// Bytes of virtual disk one grain table covers.
    pub fn gt_coverage_bytes(&self) -> u64 {
        self.num_gtes_per_gt as u64 * self.grain_size * SECTOR
    }
    /// Number of grain directory entries.
    pub fn gd_entries(&self) -> u64 {
        let cover = self.num_gtes_per_gt as u64 * self.grain_size;
        self.capacity.div_ceil(cover)
    }
    /// Whether the newline-detector bytes are as written (they catch text-mode transfers).
    pub fn newline_bytes_ok(&self) -> bool {
        self.single_end_line_char == b'\n'
            && self.non_end_line_char == b' '
            && self.double_end_line_char1 == b'\r'
            && self.double_end_line_char2 == b'\n'
    }

    /// Check the fields that size allocations and loops. `file_len` bounds the tables.
    fn validate(&self, f: &DiskFile) -> Result<()> {
        let bad = |what: String| Err(Error::corrupt(&f.path, what));
        if !(1..=3).contains(&self.version) {
            return Err(Error::unsupported(
                &f.path,
                format!(
                    "sparse header version {} (1, 2 and 3 are known)",
                    self.version
                ),
            ));
        }
        let incompat = self.flags & 0xffff_0000;
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(Error::unsupported(
                &f.path,
                format!(
                    "sparse header has unknown incompatible flags {:#010x}",
                    incompat
                ),
            ));
        }
        if self.grain_size == 0
            || !self.grain_size.is_power_of_two()
            || self.grain_size > MAX_GRAIN_SECTORS
        {
            return bad(format!(
                "grain size {} sectors is not a power of two from 1 to {MAX_GRAIN_SECTORS}",
                self.grain_size
            ));
        }
        if self.num_gtes_per_gt == 0 || self.num_gtes_per_gt > MAX_GTES_PER_GT {
            return bad(format!(
                "{} entries per grain table (1 to {MAX_GTES_PER_GT} accepted)",
                self.num_gtes_per_gt
            ));
        }
        if self
            .capacity
            .checked_mul(SECTOR)
            .is_none_or(|b| b > MAX_CAPACITY_BYTES)
        {
            return bad(format!("capacity of {} sectors is absurd", self.capacity));
        }
        if self.compressed() && self.compress_algorithm != 1 {
            return Err(Error::unsupported(
                &f.path,
                format!(
                    "compression algorithm {} (only 1, deflate, is known)",
                    self.compress_algorithm
                ),
            ));
        }
        Ok(())
    }
}

/// A grain directory or its redundant copy: where each grain table is (sector, 0 = none).
type GrainDirectory = Vec<u32>;

/// How grains are found.
#[derive(Debug)]
enum Lookup {
    /// Through the grain directory and tables.
    Tables { gd: GrainDirectory },
    /// streamOptimized without a usable directory: grain index → record sector, from a scan.
    Scanned { grains: Vec<(u64, u64)> },
}

/// One hosted sparse extent file.
#[derive(Debug)]
pub struct SparseExtent {
    pub file: FileId,
    /// The header in effect (the footer's, for streamOptimized with the GD at the end).
    pub header: SparseHeader,
    /// The header at the start of the file, when it differs from `header` (GD at the end).
    pub first_header: Option<SparseHeader>,
    /// How the grains were found: "grain directory", "footer grain directory" or "scan".
    pub lookup_source: &'static str,
    lookup: Lookup,
    grain_bytes: u64,
    capacity_bytes: u64,
    /// First sector where grains and tables may live.
    data_start_sector: u64,
    gt_cache: TableCache<u32>,
}

impl SparseExtent {
    pub fn open(files: &[DiskFile], file: FileId) -> Result<SparseExtent> {
        let f = &files[file as usize];
        let mut hb = [0u8; HEADER_LEN];
        f.read_exact_at(&mut hb, 0, "sparse header")?;
        let first =
            SparseHeader::parse(&hb).ok_or_else(|| Error::corrupt(&f.path, "no KDMV magic"))?;
        first.validate(f)?;

        let mut header = first.clone();
        let mut first_header = None;
        let mut source = "grain directory";
        let mut use_scan = false;
        if first.gd_offset == GD_AT_END {
            if !first.compressed() {
                return Err(Error::corrupt(
                    &f.path,
                    "grain directory at end of file, but the extent is not compressed",
                ));
            }
            match read_footer(f)? {
                Some(footer) => {
                    footer.validate(f)?;
                    if footer.capacity != first.capacity || footer.grain_size != first.grain_size {
                        return Err(Error::corrupt(
                            &f.path,
                            "footer disagrees with the header on capacity or grain size",
                        ));
                    }
                    header = footer;
                    first_header = Some(first.clone());
                    source = "footer grain directory";
                    if header.gd_offset == GD_AT_END || header.gd_offset == 0 {
                        use_scan = true;
                    }
                }
                None => use_scan = true,
            }
        } else if first.gd_offset == 0 {
            if first.compressed() {
                use_scan = true;
            } else {
                return Err(Error::corrupt(
                    &f.path,
                    "sparse header has no grain directory (gdOffset 0)",
                ));
            }
        }

        let grain_bytes = header.grain_size * SECTOR;
        let capacity_bytes = header.capacity * SECTOR;
        let data_start_sector = header.over_head.max(1);
        let lookup = if use_scan {
            if !header.markers() {
                return Err(Error::corrupt(
                    &f.path,
                    "compressed extent has no grain directory and no markers to scan",
                ));
            }
            source = "scan";
            Lookup::Scanned {
                grains: scan_stream(f, &header)?,
            }
        } else {
            Lookup::Tables {
                gd: read_gd(f, &header, header.gd_offset, "grain directory")?,
            }
        };
        Ok(SparseExtent {
            file,
            header,
            first_header,
            lookup_source: source,
            lookup,
            grain_bytes,
            capacity_bytes,
            data_start_sector,
            gt_cache: TableCache::new(GT_CACHE_TABLES),
        })
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }
    pub fn grain_bytes(&self) -> u64 {
        self.grain_bytes
    }

    /// The grain directory in use, or `None` for a scanned stream.
    pub fn grain_directory(&self) -> Option<&[u32]> {
        match &self.lookup {
            Lookup::Tables { gd } => Some(gd),
            Lookup::Scanned { .. } => None,
        }
    }

    /// Read the redundant grain directory, if the header declares one.
    pub fn redundant_grain_directory(&self, files: &[DiskFile]) -> Result<Option<GrainDirectory>> {
        let h = &self.header;
        if h.flags & FLAG_REDUNDANT_GD == 0 || h.rgd_offset == 0 || h.rgd_offset == GD_AT_END {
            return Ok(None);
        }
        read_gd(
            &files[self.file as usize],
            h,
            h.rgd_offset,
            "redundant grain directory",
        )
        .map(Some)
    }

    /// Read one grain table at `sector`, checking it lies in the file past the metadata start.
    pub fn read_gt_at(&self, files: &[DiskFile], sector: u64, what: &str) -> Result<Vec<u32>> {
        let f = &files[self.file as usize];
        if sector == 0 {
            return Err(Error::corrupt(
                &f.path,
                format!("{what} points into the header (sector 0)"),
            ));
        }
        let n = self.header.num_gtes_per_gt as usize;
        let raw = f.read_vec(sector * SECTOR, n as u64 * 4, what)?;
        // read_vec gave exactly `n * 4` bytes, as read_u32_into requires.
        let mut gt = vec![0u32; n];
        LittleEndian::read_u32_into(&raw, &mut gt);
        Ok(gt)
    }

    fn gt(&self, files: &[DiskFile], gd_index: u64, gt_sector: u32) -> Result<Arc<[u32]>> {
        self.gt_cache.get_or_load(gd_index, || {
            self.read_gt_at(files, gt_sector as u64, &format!("grain table {gd_index}"))
        })
    }

    /// The location of grain `g` given its grain-table entry (a sector number).
    fn grain_location(&self, files: &[DiskFile], g: u64, gte: u64, skip: u64) -> Result<Location> {
        match gte {
            0 => return Ok(Location::Unallocated),
            1 => return Ok(Location::Zero),
            _ => {}
        }
        let f = &files[self.file as usize];
        let grain_start = g * self.grain_bytes;
        let valid = self.grain_bytes.min(self.capacity_bytes - grain_start);
        if gte < self.data_start_sector {
            return Err(Error::corrupt(
                &f.path,
                format!(
                    "grain {g} at sector {gte} points into the metadata (overHead {})",
                    self.data_start_sector
                ),
            ));
        }
        let at = gte * SECTOR;
        if self.header.compressed() {
            if at >= f.len {
                return Err(Error::corrupt(
                    &f.path,
                    format!(
                        "grain {g} at sector {gte} lies past the end of the file ({} bytes)",
                        f.len
                    ),
                ));
            }
            return Ok(Location::Compressed {
                file: self.file,
                record: at,
                grain_index: g,
                grain_bytes: valid as u32,
                skip: skip as u32,
            });
        }
        if at + valid > f.len {
            return Err(Error::corrupt(
                &f.path,
                format!(
                    "grain {g} at sector {gte} lies past the end of the file ({} bytes)",
                    f.len
                ),
            ));
        }
        Ok(Location::Data {
            file: self.file,
            offset: at + skip,
        })
    }

    /// Inflate the compressed grain at `record` into `out` (at least `grain_bytes` long);
    /// returns the number of valid bytes.
    pub fn inflate_grain(
        &self,
        files: &[DiskFile],
        record: u64,
        grain_index: u64,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<usize> {
        inflate_record(
            &files[self.file as usize],
            &self.header,
            record,
            grain_index,
            out,
            scratch,
        )
    }
}

/// Inflate one compressed grain record. Shared by reads and by `check`.
pub fn inflate_record(
    f: &DiskFile,
    header: &SparseHeader,
    record: u64,
    grain_index: u64,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<usize> {
    let grain_bytes = header.grain_size * SECTOR;
    let hdr_len = if header.markers() { 12 } else { 4 };
    let mut hdr = [0u8; 12];
    f.read_exact_at(&mut hdr[..hdr_len], record, "compressed grain header")?;
    let (lba, size) = if header.markers() {
        (
            Some(LittleEndian::read_u64(&hdr)),
            LittleEndian::read_u32(&hdr[8..]) as u64,
        )
    } else {
        (None, LittleEndian::read_u32(&hdr) as u64)
    };
    if let Some(lba) = lba {
        if lba != grain_index * header.grain_size {
            return Err(Error::corrupt(
                &f.path,
                format!("compressed grain at byte {record} is for sector {lba}, but the grain table says sector {}", grain_index * header.grain_size),
            ));
        }
    }
    // Deflate can expand incompressible data a little; more than this is not a grain.
    let max = grain_bytes + grain_bytes / 8 + 1024;
    if size == 0 || size > max {
        return Err(Error::corrupt(
            &f.path,
            format!("compressed grain at byte {record} claims {size} bytes"),
        ));
    }
    scratch.resize(size as usize, 0);
    f.read_exact_at(scratch, record + hdr_len as u64, "compressed grain")?;
    let want = out.len().min(grain_bytes as usize);
    let inflate = |into: &mut [u8]| {
        DECOMPRESSOR.with(|d| {
            d.borrow_mut().zlib_decompress(scratch, into).map_err(|e| {
                Error::corrupt(
                    &f.path,
                    format!("compressed grain at byte {record} does not inflate: {e:?}"),
                )
            })
        })
    };
    if want < grain_bytes as usize {
        // The last grain of a disk that ends inside it: VMware's StreamVmdkWriter
        // (com.vmware.transfer.streamVmdk) compresses it whole, qemu only up to the capacity.
        // Take either.
        let mut whole = vec![0u8; grain_bytes as usize];
        let n = inflate(&mut whole)?.min(want);
        out[..n].copy_from_slice(&whole[..n]);
        return Ok(n);
    }
    inflate(&mut out[..want])
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<libdeflater::Decompressor> =
        std::cell::RefCell::new(libdeflater::Decompressor::new());
}

fn read_gd(f: &DiskFile, h: &SparseHeader, sector: u64, what: &str) -> Result<GrainDirectory> {
    if sector == 0 {
        return Err(Error::corrupt(
            &f.path,
            format!("{what} points into the header (sector 0)"),
        ));
    }
    let n = h.gd_entries();
    let at = sector
        .checked_mul(SECTOR)
        .ok_or_else(|| Error::corrupt(&f.path, format!("{what} at sector {sector} is absurd")))?;
    // Bounded: read_vec refuses anything that does not lie in the file.
    let raw = f.read_vec(at, n * 4, what)?;
    let mut gd = vec![0u32; n as usize];
    LittleEndian::read_u32_into(&raw, &mut gd);
    Ok(gd)
}

/// The footer of a streamOptimized file: footer marker, header copy, end-of-stream marker in
/// the last 1536 bytes. `None` when they are not there.
fn read_footer(f: &DiskFile) -> Result<Option<SparseHeader>> {
    if f.len < 1536 + HEADER_LEN as u64 {
        return Ok(None);
    }
    let mut b = vec![0u8; 1536];
    f.read_exact_at(&mut b, f.len - 1536, "stream footer")?;
    let marker_type = LittleEndian::read_u32(&b[12..]);
    let eos_type = LittleEndian::read_u32(&b[1024 + 12..]);
    let eos_val = LittleEndian::read_u64(&b[1024..]);
    if LittleEndian::read_u32(&b[8..]) != 0
        || marker_type != MARKER_FOOTER
        || eos_type != MARKER_EOS
        || eos_val != 0
    {
        return Ok(None);
    }
    Ok(SparseHeader::parse(&b[512..1024]))
}

/// Walk a streamOptimized file record by record, collecting where each grain is.
fn scan_stream(f: &DiskFile, h: &SparseHeader) -> Result<Vec<(u64, u64)>> {
    let mut grains: Vec<(u64, u64)> = Vec::new();
    let mut sector = h.over_head.max(1);
    let total = f.len / SECTOR;
    let mut b = [0u8; 16];
    while sector < total {
        f.read_exact_at(&mut b, sector * SECTOR, "stream marker")?;
        let val = LittleEndian::read_u64(&b);
        let size = LittleEndian::read_u32(&b[8..]) as u64;
        if size != 0 {
            if val % h.grain_size != 0 || val >= h.capacity {
                return Err(Error::corrupt(&f.path, format!("grain record at sector {sector} has sector number {val}, not a grain of the disk")));
            }
            grains.push((val / h.grain_size, sector));
            sector += (12 + size).div_ceil(SECTOR);
            continue;
        }
        match LittleEndian::read_u32(&b[12..]) {
            MARKER_EOS => break,
            MARKER_GT | MARKER_GD | MARKER_FOOTER | MARKER_PROGRESS => {
                sector = sector.saturating_add(1).saturating_add(val);
            }
            t => {
                return Err(Error::corrupt(
                    &f.path,
                    format!("unknown stream marker type {t} at sector {sector}"),
                ))
            }
        }
    }
    // A grain written twice: the later record wins, as in a stream that is replayed.
    grains.sort_by_key(|&(g, s)| (g, std::cmp::Reverse(s)));
    grains.dedup_by_key(|&mut (g, _)| g);
    Ok(grains)
}

impl ExtentMap for SparseExtent {
    fn resolve(
        &self,
        files: &[DiskFile],
        offset: u64,
        len: u64,
        _: bool,
        sink: &mut PieceSink,
    ) -> Result<()> {
        let end = offset + len;
        let mut pos = offset;
        let gtes = self.header.num_gtes_per_gt as u64;
        while pos < end {
            let g = pos / self.grain_bytes;
            let grain_start = g * self.grain_bytes;
            let grain_end = (grain_start + self.grain_bytes).min(end);
            match &self.lookup {
                Lookup::Tables { gd } => {
                    let gdi = g / gtes;
                    let gt_sector = *gd.get(gdi as usize).ok_or_else(|| {
                        Error::corrupt(
                            &files[self.file as usize].path,
                            format!("grain {g} is beyond the grain directory"),
                        )
                    })?;
                    if gt_sector == 0 {
                        // No table: the whole span it would cover is unallocated.
                        let span_end = ((gdi + 1) * gtes * self.grain_bytes).min(end);
                        sink.push(pos, span_end - pos, Location::Unallocated);
                        pos = span_end;
                        continue;
                    }
                    let gt = self.gt(files, gdi, gt_sector)?;
                    // Walk the grains of this table in one go.
                    let table_end = ((gdi + 1) * gtes * self.grain_bytes).min(end);
                    let mut p = pos;
                    while p < table_end {
                        let g = p / self.grain_bytes;
                        let gs = g * self.grain_bytes;
                        let ge = (gs + self.grain_bytes).min(table_end);
                        let gte = gt[(g % gtes) as usize] as u64;
                        sink.push(p, ge - p, self.grain_location(files, g, gte, p - gs)?);
                        p = ge;
                    }
                    pos = table_end;
                }
                Lookup::Scanned { grains } => {
                    match grains.binary_search_by_key(&g, |&(gi, _)| gi) {
                        Ok(i) => {
                            let loc =
                                self.grain_location(files, g, grains[i].1, pos - grain_start)?;
                            sink.push(pos, grain_end - pos, loc);
                            pos = grain_end;
                        }
                        // No record for this grain: unallocated up to the next grain that has one
                        // (in one step: a hostile header may claim billions of tiny grains).
                        Err(i) => {
                            let next = grains.get(i).map_or(end, |&(gi, _)| {
                                gi.saturating_mul(self.grain_bytes).min(end)
                            });
                            sink.push(pos, next - pos, Location::Unallocated);
                            pos = next;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_last_grain_inflates_into_the_part_inside_the_disk() {
        // A record holding a whole 64 KiB grain, read for a disk that ends 2560 bytes into it.
        let grain: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
        let mut z = vec![0u8; c.zlib_compress_bound(grain.len())];
        let n = c.zlib_compress(&grain, &mut z).unwrap();
        let mut rec = 128u64.to_le_bytes().to_vec();
        rec.extend_from_slice(&(n as u32).to_le_bytes());
        rec.extend_from_slice(&z[..n]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rec");
        std::fs::write(&p, &rec).unwrap();
        let f = DiskFile::open(&p).unwrap();
        let mut h = SparseHeader::parse(&{
            let mut b = vec![0u8; HEADER_LEN];
            b[0..4].copy_from_slice(MAGIC);
            b
        })
        .unwrap();
        h.grain_size = 128;
        h.flags = FLAG_COMPRESSED | FLAG_MARKERS;
        let mut out = vec![0u8; 2560];
        let got = inflate_record(&f, &h, 0, 1, &mut out, &mut Vec::new()).unwrap();
        assert_eq!(got, 2560);
        assert_eq!(out, grain[..2560]);
    }
}
