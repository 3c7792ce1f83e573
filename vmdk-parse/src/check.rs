//! `check`: structural consistency of a disk and its chain.
//!
//! Unlike reading, which stops at the first problem, `check` walks every table and reports
//! every problem it finds, each with the file and a kind from a fixed list (documented in
//! `docs/vmdk-parse.md`). A disk too damaged to open at all is reported as one `unreadable`
//! problem; a missing or unsupported disk is an error, not a report.

use crate::cowd::CowdExtent;
use crate::descriptor::Line;
use crate::disk::{Disk, ExtentData, OpenOptions};
use crate::error::{ErrorKind, Result};
use crate::sesparse::{GrainEntry, SeSparseExtent};
use crate::sparse::{SparseExtent, FLAG_VALID_NEWLINE, FLAG_ZERO_GTE, SECTOR};
use byteorder::{ByteOrder, LittleEndian};
use serde::Serialize;
use std::path::Path;

pub const CHECK_SCHEMA: &str = "vmdk-parse.check/1";
/// Problems listed in full; beyond this only counted.
const MAX_LISTED: usize = 1000;

#[derive(Serialize, Debug)]
pub struct Report {
    pub schema: &'static str,
    pub path: String,
    pub clean: bool,
    /// Links of the chain that were examined.
    pub links: usize,
    pub problems: Vec<Problem>,
    /// Problems found beyond the listed ones.
    pub unlisted_problems: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Problem {
    pub file: String,
    pub kind: &'static str,
    pub message: String,
}

struct Problems {
    list: Vec<Problem>,
    unlisted: u64,
}

impl Problems {
    fn add(&mut self, file: &Path, kind: &'static str, message: String) {
        if self.list.len() < MAX_LISTED {
            self.list.push(Problem {
                file: file.to_string_lossy().into_owned(),
                kind,
                message,
            });
        } else {
            self.unlisted += 1;
        }
    }
}

/// Open `path` tolerating chain problems and check it.
pub fn check_path(path: &Path, opts: &OpenOptions) -> Result<Report> {
    let opts = OpenOptions {
        tolerate_chain_problems: true,
        ..opts.clone()
    };
    match Disk::open_with(path, &opts) {
        Ok(d) => Ok(check_disk(&d)),
        Err(e) if e.kind() == ErrorKind::Corrupt => Ok(Report {
            schema: CHECK_SCHEMA,
            path: path.to_string_lossy().into_owned(),
            clean: false,
            links: 0,
            problems: vec![Problem {
                file: path.to_string_lossy().into_owned(),
                kind: "unreadable",
                message: e.to_string(),
            }],
            unlisted_problems: 0,
        }),
        Err(e) => Err(e),
    }
}

pub fn check_disk(d: &Disk) -> Report {
    let mut p = Problems {
        list: Vec::new(),
        unlisted: 0,
    };
    for msg in &d.chain_problems {
        p.add(&d.links[0].path, "chain", msg.clone());
    }
    for link in &d.links {
        if let Some(desc) = &link.descriptor {
            for (i, line) in desc.lines.iter().enumerate() {
                if let Line::Other(text) = line {
                    p.add(
                        &link.path,
                        "descriptor_syntax",
                        format!(
                            "line {}: {text:?} is not key=value, an extent or a comment",
                            i + 1
                        ),
                    );
                }
            }
        }
        for e in &link.extents {
            match &e.data {
                ExtentData::Sparse(s) => check_sparse(d, s, &mut p),
                ExtentData::Cowd(c) => check_cowd(d, c, &mut p),
                ExtentData::SeSparse(s) => check_sesparse(d, s, &mut p),
                ExtentData::Flat(_) | ExtentData::Zero(_) => {}
            }
        }
    }
    // Finally resolve the whole disk: anything a read would trip on.
    for r in d.map() {
        if let Err(e) = r {
            p.add(&d.links[0].path, "unreadable", e.to_string());
            break;
        }
    }
    Report {
        schema: CHECK_SCHEMA,
        path: d.links[0].path.to_string_lossy().into_owned(),
        clean: p.list.is_empty(),
        links: d.links.len(),
        problems: p.list,
        unlisted_problems: p.unlisted,
    }
}

/// A sector range of metadata, for overlap checks.
#[derive(Clone, Copy)]
struct Region {
    start: u64,
    end: u64,
    what: &'static str,
    index: u64,
}

fn check_sparse(d: &Disk, s: &SparseExtent, p: &mut Problems) {
    let f = &d.files[s.file as usize];
    let path = f.path.as_path();
    let h = &s.header;
    if h.flags & FLAG_VALID_NEWLINE != 0 && !h.newline_bytes_ok() {
        p.add(path, "header_newline", format!(
            "newline detector bytes are {:02x} {:02x} {:02x} {:02x}, expected 0a 20 0d 0a: the file went through a text-mode transfer",
            h.single_end_line_char, h.non_end_line_char, h.double_end_line_char1, h.double_end_line_char2
        ));
    }
    if h.unclean_shutdown != 0 {
        p.add(
            path,
            "dirty",
            "uncleanShutdown is set: the disk was not closed cleanly".into(),
        );
    }
    let Some(gd) = s.grain_directory() else {
        return; // A scanned stream has no tables to check.
    };
    let file_sectors = f.len.div_ceil(SECTOR);
    let gt_sectors = (h.num_gtes_per_gt as u64 * 4).div_ceil(SECTOR);
    let gd_sectors = (h.gd_entries() * 4).div_ceil(SECTOR);
    let mut fixed = vec![Region {
        start: 0,
        end: 1,
        what: "header",
        index: 0,
    }];
    if h.descriptor_offset != 0 {
        fixed.push(Region {
            start: h.descriptor_offset,
            end: h.descriptor_offset.saturating_add(h.descriptor_size),
            what: "descriptor",
            index: 0,
        });
    }
    fixed.push(Region {
        start: h.gd_offset,
        end: h.gd_offset.saturating_add(gd_sectors),
        what: "grain directory",
        index: 0,
    });
    let rgd = match s.redundant_grain_directory(&d.files) {
        Ok(r) => r,
        Err(e) => {
            p.add(path, "rgd_out_of_range", e.to_string());
            None
        }
    };
    if rgd.is_some() {
        fixed.push(Region {
            start: h.rgd_offset,
            end: h.rgd_offset.saturating_add(rgd_sectors(h)),
            what: "redundant grain directory",
            index: 0,
        });
    }
    let mut tables: Vec<Region> = Vec::new();
    let dirs: [(&[u32], &'static str); 2] = [
        (gd, "grain table"),
        (rgd.as_deref().unwrap_or(&[]), "redundant grain table"),
    ];
    for (dir, what) in dirs {
        for (i, &sector) in dir.iter().enumerate() {
            if sector == 0 {
                continue;
            }
            let r = Region {
                start: sector as u64,
                end: sector as u64 + gt_sectors,
                what,
                index: i as u64,
            };
            if r.end > file_sectors {
                p.add(path, "gt_out_of_range", format!("{what} {i} at sector {sector} lies past the end of the file ({file_sectors} sectors)"));
                continue;
            }
            for m in &fixed {
                if r.start < m.end && m.start < r.end {
                    p.add(
                        path,
                        "gt_overlap",
                        format!("{what} {i} at sector {sector} overlaps the {}", m.what),
                    );
                }
            }
            tables.push(r);
        }
    }
    tables.sort_by_key(|r| r.start);
    for w in tables.windows(2) {
        if w[1].start < w[0].end {
            p.add(
                path,
                "gt_overlap",
                format!(
                    "{} {} at sector {} overlaps {} {} at sector {}",
                    w[1].what, w[1].index, w[1].start, w[0].what, w[0].index, w[0].start
                ),
            );
        }
    }

    // Grain tables: compare with the redundant copy, and check every grain.
    let grain_sectors = h.grain_size;
    let meta_end = h.over_head.max(1);
    let slots = file_sectors
        .saturating_sub(meta_end)
        .div_ceil(grain_sectors);
    let mut used = vec![0u64; slots.div_ceil(64) as usize];
    let mut zero_without_flag = 0u64;
    let in_range = |sector: u32| (sector as u64) + gt_sectors <= file_sectors && sector != 0;
    for (i, &sector) in gd.iter().enumerate() {
        let gt = if in_range(sector) {
            s.read_gt_at(&d.files, sector as u64, "grain table").ok()
        } else {
            None
        };
        if let Some(rgd) = &rgd {
            let rsector = rgd.get(i).copied().unwrap_or(0);
            let rgt = if in_range(rsector) {
                s.read_gt_at(&d.files, rsector as u64, "redundant grain table")
                    .ok()
            } else {
                None
            };
            match (&gt, &rgt) {
                (Some(a), Some(b)) if a != b => {
                    let n = a.iter().zip(b).filter(|(x, y)| x != y).count();
                    p.add(
                        path,
                        "rgd_mismatch",
                        format!("grain table {i} differs from its redundant copy in {n} entries"),
                    );
                }
                (None, Some(_)) | (Some(_), None) if (sector == 0) != (rsector == 0) => {
                    p.add(path, "rgd_mismatch", format!("grain directory entry {i} is {sector} but the redundant entry is {rsector}"));
                }
                _ => {}
            }
        }
        let Some(gt) = gt else { continue };
        for (j, &gte) in gt.iter().enumerate() {
            let grain = i as u64 * h.num_gtes_per_gt as u64 + j as u64;
            let gte = gte as u64;
            if grain * grain_sectors >= h.capacity {
                if gte != 0 {
                    p.add(
                        path,
                        "grain_out_of_range",
                        format!("grain table {i} entry {j} is set beyond the capacity"),
                    );
                }
                continue;
            }
            match gte {
                0 => continue,
                1 => {
                    if h.flags & FLAG_ZERO_GTE == 0 && !h.compressed() {
                        zero_without_flag += 1;
                    }
                    continue;
                }
                _ => {}
            }
            if gte < meta_end {
                p.add(
                    path,
                    "grain_in_metadata",
                    format!(
                        "grain {grain} at sector {gte} lies in the metadata (overHead {meta_end})"
                    ),
                );
                continue;
            }
            if h.compressed() {
                let mut b = [0u8; 12];
                if gte * SECTOR + 12 > f.len
                    || f.read_exact_at(&mut b, gte * SECTOR, "grain record")
                        .is_err()
                {
                    p.add(path, "grain_out_of_range", format!("compressed grain {grain} at sector {gte} lies past the end of the file"));
                } else if h.markers() && LittleEndian::read_u64(&b) != grain * grain_sectors {
                    p.add(
                        path,
                        "grain_lba",
                        format!(
                            "compressed grain {grain} at sector {gte} is marked for sector {}",
                            LittleEndian::read_u64(&b)
                        ),
                    );
                }
                continue;
            }
            if gte + grain_sectors > file_sectors {
                p.add(path, "grain_out_of_range", format!("grain {grain} at sector {gte} lies past the end of the file ({file_sectors} sectors)"));
                continue;
            }
            let rel = gte - meta_end;
            if rel % grain_sectors == 0 {
                let slot = (rel / grain_sectors) as usize;
                if used[slot / 64] & (1 << (slot % 64)) != 0 {
                    p.add(
                        path,
                        "grain_overlap",
                        format!("grain {grain} at sector {gte} is also used by another grain"),
                    );
                }
                used[slot / 64] |= 1 << (slot % 64);
            }
        }
    }
    if zero_without_flag > 0 {
        p.add(path, "zero_gte_without_flag", format!(
            "{zero_without_flag} grain table entries are 1 (zero grain) but the header lacks the zero-grain flag; read as zeros"
        ));
    }
}

fn rgd_sectors(h: &crate::sparse::SparseHeader) -> u64 {
    (h.gd_entries() * 4).div_ceil(SECTOR)
}

/// Which slots (grains of a file, or grain indexes) are taken, to find two users of one slot.
/// Past `MAX_BITMAP_BYTES` the overlap check is skipped rather than use more memory.
struct Slots {
    bits: Option<Vec<u64>>,
}

const MAX_BITMAP_BYTES: u64 = 32 << 20;

impl Slots {
    fn new(count: u64) -> Slots {
        let words = count.div_ceil(64);
        Slots {
            bits: (words * 8 <= MAX_BITMAP_BYTES).then(|| vec![0u64; words as usize]),
        }
    }
    /// Mark `slot`; true if it was already taken.
    fn take(&mut self, slot: u64) -> bool {
        let Some(bits) = &mut self.bits else {
            return false;
        };
        let Some(w) = bits.get_mut((slot / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (slot % 64);
        let was = *w & bit != 0;
        *w |= bit;
        was
    }
}

fn check_cowd(d: &Disk, c: &CowdExtent, p: &mut Problems) {
    let f = &d.files[c.file as usize];
    let path = f.path.as_path();
    let h = &c.header;
    if h.unclean_shutdown != 0 {
        p.add(
            path,
            "dirty",
            "uncleanShutdown is set: the delta was not closed cleanly".into(),
        );
    }
    let file_sectors = f.len / SECTOR;
    let meta_end = c.metadata_end_sector();
    let gt_sectors = crate::cowd::GTES_PER_GT * 4 / SECTOR;
    let grain_sectors = h.grain_size as u64;
    let mut slots = Slots::new(file_sectors.div_ceil(grain_sectors));
    let gd = c.grain_directory();
    // Tables first, so a grain placed over a table is caught too.
    for (i, &sector) in gd.iter().enumerate() {
        let sector = sector as u64;
        if sector == 0 {
            continue;
        }
        if sector < meta_end {
            p.add(path, "gt_overlap", format!("grain table {i} at sector {sector} overlaps the header or grain directory (which end at sector {meta_end})"));
        } else if sector + gt_sectors > file_sectors {
            p.add(path, "gt_out_of_range", format!("grain table {i} at sector {sector} lies past the end of the file ({file_sectors} sectors)"));
        } else {
            let mut clash = false;
            for s in sector..sector + gt_sectors {
                clash |= slots.take(s / grain_sectors);
            }
            if clash {
                p.add(
                    path,
                    "gt_overlap",
                    format!("grain table {i} at sector {sector} overlaps another grain table"),
                );
            }
        }
    }
    for (i, &sector) in gd.iter().enumerate() {
        if sector == 0 {
            continue;
        }
        let Ok(gt) = c.read_gt_at(&d.files, sector as u64, "grain table") else {
            continue;
        };
        for (j, &gte) in gt.iter().enumerate() {
            let grain = i as u64 * crate::cowd::GTES_PER_GT + j as u64;
            let gte = gte as u64;
            if gte <= crate::cowd::GTE_ZERO as u64 {
                continue;
            }
            if grain * grain_sectors >= h.capacity as u64 {
                p.add(
                    path,
                    "grain_out_of_range",
                    format!("grain table {i} entry {j} is set beyond the capacity"),
                );
            } else if gte < meta_end {
                p.add(
                    path,
                    "grain_in_metadata",
                    format!("grain {grain} at sector {gte} lies in the header or grain directory"),
                );
            } else if gte + grain_sectors > file_sectors {
                p.add(path, "grain_out_of_range", format!("grain {grain} at sector {gte} lies past the end of the file ({file_sectors} sectors)"));
            } else if gte % grain_sectors == 0 && slots.take(gte / grain_sectors) {
                p.add(
                    path,
                    "grain_overlap",
                    format!(
                        "grain {grain} at sector {gte} overlaps a grain table or another grain"
                    ),
                );
            }
        }
    }
}

fn check_sesparse(d: &Disk, s: &SeSparseExtent, p: &mut Problems) {
    let f = &d.files[s.file as usize];
    let path = f.path.as_path();
    let h = &s.header;
    let mut tables = Slots::new(h.grain_tables());
    let mut grains = Slots::new(h.grains());
    let gtes = crate::sesparse::GTES_PER_GT;
    for (i, &entry) in s.grain_directory().iter().enumerate() {
        let sector = match s.gt_sector(&d.files, i as u64, entry) {
            Ok(Some(sector)) => sector,
            Ok(None) => continue,
            Err(e) => {
                p.add(path, "gt_out_of_range", e.to_string());
                continue;
            }
        };
        if tables.take(entry & 0xffff_ffff) {
            p.add(
                path,
                "gt_overlap",
                format!(
                    "grain directory entry {i} names grain table {} which another entry names too",
                    entry & 0xffff_ffff
                ),
            );
        }
        let gt = match s.read_gt_at(&d.files, sector, "grain table") {
            Ok(gt) => gt,
            Err(e) => {
                p.add(path, "gt_out_of_range", e.to_string());
                continue;
            }
        };
        for (j, &e) in gt.iter().enumerate() {
            let grain = i as u64 * gtes + j as u64;
            match GrainEntry::decode(e) {
                None => p.add(
                    path,
                    "grain_entry_invalid",
                    format!("grain {grain} has entry {e:#018x}, of no known type"),
                ),
                Some(GrainEntry::Allocated { index }) => {
                    if grain * crate::sesparse::GRAIN_SIZE >= h.capacity {
                        p.add(
                            path,
                            "grain_out_of_range",
                            format!("grain table {i} entry {j} is set beyond the capacity"),
                        );
                    } else if index >= h.grains() {
                        p.add(path, "grain_out_of_range", format!("grain {grain} is stored at grain index {index}, past the grains region ({} grains)", h.grains()));
                    } else if (h.grains_offset + (index + 1) * crate::sesparse::GRAIN_SIZE) * SECTOR
                        > f.len
                    {
                        p.add(
                            path,
                            "grain_out_of_range",
                            format!(
                                "grain {grain} (grain index {index}) lies past the end of the file"
                            ),
                        );
                    } else if grains.take(index) {
                        p.add(path, "grain_overlap", format!("grain {grain} uses grain index {index}, which another grain uses too"));
                    }
                }
                Some(_) => {}
            }
        }
    }
}
