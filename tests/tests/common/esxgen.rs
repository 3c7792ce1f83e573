//! Writers of ESXi-style disks and snapshot chains, for tests.
//!
//! A chain is a base disk as ESXi writes a thick or thin disk on VMFS (`NAME.vmdk`, createType
//! `vmfs`, one `VMFS` extent `NAME-flat.vmdk`) with snapshot deltas on top, each a descriptor
//! `NAME-00000N.vmdk` (`parentCID` = the parent's `CID`, `parentFileNameHint`) naming one
//! extent:
//! - COWD, createType `vmfsSparse`, `RW N VMFSSPARSE "NAME-00000N-delta.vmdk"`: a 2048-byte
//!   header, the grain directory at sector 4, 4096-entry grain tables, one-sector grains, as
//!   ESXi writes them (grainSize 1).
//! - seSparse, createType `seSparse`, `RW N SESPARSE "NAME-00000N-sesparse.vmdk"`: const and
//!   volatile headers, a journal, a grain directory larger than needed, grain tables handed out
//!   out of order, 4 KiB grains stored at indexes above 4095 (so the rotated index layout is
//!   exercised) and in reverse order.
//!
//! A delta is described by [`Grains`]: which grain holds which bytes, is zero, or (seSparse)
//! unmapped; every other grain is unallocated. Each written [`Link`] carries the bytes the
//! guest should see through it as vmdk-parse documents the format, and where its tables and
//! grains are, for tests that damage the file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const SECTOR: u64 = 512;
/// Entries per grain table, both formats.
pub const GTES_PER_GT: u64 = 4096;
/// COWD header length.
pub const COWD_HEADER_BYTES: u64 = 2048;
/// seSparse grain indexes start here, so that every index has bits above bit 11.
pub const SESPARSE_FIRST_GRAIN_INDEX: u64 = 4096 + 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaKind {
    Cowd,
    SeSparse,
}

impl DeltaKind {
    /// Bytes per grain as ESXi writes them: COWD grainSize 1, seSparse grain_size 8.
    pub fn grain_bytes(self) -> u64 {
        match self {
            DeltaKind::Cowd => SECTOR,
            DeltaKind::SeSparse => 8 * SECTOR,
        }
    }
}

/// What one grain of a delta holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grain {
    /// Stored bytes, exactly one grain long.
    Data(Vec<u8>),
    /// A zero grain: COWD GTE 1, seSparse type 2.
    Zero,
    /// seSparse type 1, "scsi-unmapped" (COWD has no such entry).
    Unmapped,
}

/// A delta's content by grain index; grains not named are unallocated (read the parent).
pub type Grains = BTreeMap<u64, Grain>;

/// Where a delta's structures are in its extent file, for tests that damage it.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Byte offset of grain directory entry 0.
    pub gd_offset_bytes: u64,
    /// Bytes per grain directory entry (4 for COWD, 8 for seSparse).
    pub gd_entry_bytes: u64,
    /// Byte offset of each grain table, by grain directory index.
    pub gt_offset_bytes: BTreeMap<u64, u64>,
    /// Byte offset of each stored grain, by grain index.
    pub grain_offset_bytes: BTreeMap<u64, u64>,
}

/// One written link of a chain.
#[derive(Clone, Debug)]
pub struct Link {
    pub name: String,
    pub descriptor: PathBuf,
    /// `-flat.vmdk`, `-delta.vmdk` or `-sesparse.vmdk`.
    pub extent: PathBuf,
    pub cid: u32,
    /// `None` for the base.
    pub kind: Option<DeltaKind>,
    /// Snapshot number (0 for the base).
    pub number: u32,
    pub capacity_bytes: u64,
    /// Guest-visible bytes through this link, as vmdk-parse reads them; empty for chains too
    /// big to hold in memory (see [`write_base_sparse`]).
    pub expected: Vec<u8>,
    pub layout: Layout,
}

/// Options of a delta beyond its grains.
#[derive(Clone, Debug, Default)]
pub struct DeltaOptions {
    /// COWD `parentFileName` header field (ESXi leaves it empty).
    pub cowd_parent_file_name: Option<String>,
}

fn cid_for(name: &str, number: u32) -> u32 {
    // Distinct, stable, and never ffffffff/fffffffe.
    let h = name
        .bytes()
        .fold(0x0172_e8a4u32, |h, b| h.rotate_left(5) ^ b as u32);
    (h ^ number.wrapping_mul(0x9e37_79b9)) & 0x7fff_ffff
}

fn ddb(cid: u32) -> String {
    format!(
        "# The Disk Data Base\n#DDB\n\n\
         ddb.adapterType = \"lsilogic\"\n\
         ddb.longContentID = \"c493b057f416b9534001df44{cid:08x}\"\n\
         ddb.uuid = \"60 00 C2 98 5d 08 de f2-a0 14 2e 05 94 9d d8 38\"\n\
         ddb.virtualHWVersion = \"14\"\n"
    )
}

/// Write a base disk `NAME.vmdk` + `NAME-flat.vmdk` holding `data` (a multiple of 512 bytes).
pub fn write_base(dir: &Path, name: &str, data: &[u8]) -> Link {
    assert_eq!(data.len() as u64 % SECTOR, 0, "a disk is whole sectors");
    let extent = dir.join(format!("{name}-flat.vmdk"));
    fs::write(&extent, data).unwrap();
    let mut link = write_base_descriptor(dir, name, data.len() as u64);
    link.expected = data.to_vec();
    link
}

/// Write a base disk of `capacity` bytes whose flat file is sparse (zeros) except for `head`
/// at its start. The link's `expected` stays empty, and so do those of deltas written on it:
/// for disks too big to hold in memory.
pub fn write_base_sparse(dir: &Path, name: &str, capacity: u64, head: &[u8]) -> Link {
    assert_eq!(capacity % SECTOR, 0, "a disk is whole sectors");
    let extent = dir.join(format!("{name}-flat.vmdk"));
    let img = Image::create(&extent, capacity);
    img.put(0, head);
    write_base_descriptor(dir, name, capacity)
}

fn write_base_descriptor(dir: &Path, name: &str, capacity: u64) -> Link {
    let cid = cid_for(name, 0);
    let descriptor = dir.join(format!("{name}.vmdk"));
    let extent = dir.join(format!("{name}-flat.vmdk"));
    let sectors = capacity / SECTOR;
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={cid:08x}\nparentCID=ffffffff\n\
         isNativeSnapshot=\"no\"\ncreateType=\"vmfs\"\n\n# Extent description\n\
         RW {sectors} VMFS \"{name}-flat.vmdk\"\n\n{}",
        ddb(cid)
    );
    fs::write(&descriptor, text).unwrap();
    Link {
        name: name.to_string(),
        descriptor,
        extent,
        cid,
        kind: None,
        number: 0,
        capacity_bytes: capacity,
        expected: Vec::new(),
        layout: Layout::default(),
    }
}

/// Write delta `NAME-00000N.vmdk` of `kind` on top of `parent` (N = parent's number + 1).
pub fn write_delta(parent: &Link, kind: DeltaKind, grains: &Grains) -> Link {
    write_delta_with(parent, kind, grains, &DeltaOptions::default())
}

pub fn write_delta_with(
    parent: &Link,
    kind: DeltaKind,
    grains: &Grains,
    opts: &DeltaOptions,
) -> Link {
    let dir = parent.descriptor.parent().unwrap();
    let name = &parent.name;
    let number = parent.number + 1;
    let cid = cid_for(name, number);
    let capacity = parent.capacity_bytes;
    let grain_bytes = kind.grain_bytes();
    let grain_count = capacity.div_ceil(grain_bytes);
    let mut expected = parent.expected.clone();
    for (&g, grain) in grains {
        assert!(
            g < grain_count,
            "grain {g} is past the disk's {grain_count} grains"
        );
        if let Grain::Data(b) = grain {
            assert_eq!(
                b.len() as u64,
                grain_bytes,
                "grain {g} must be one grain long"
            );
        }
        if expected.is_empty() {
            continue;
        }
        let start = (g * grain_bytes) as usize;
        let end = ((g + 1) * grain_bytes).min(capacity) as usize;
        match grain {
            Grain::Data(b) => expected[start..end].copy_from_slice(&b[..end - start]),
            Grain::Zero | Grain::Unmapped => expected[start..end].fill(0),
        }
    }
    let (suffix, create_type, extent_type, ddb_extra) = match kind {
        DeltaKind::Cowd => ("delta", "vmfsSparse", "VMFSSPARSE", ""),
        DeltaKind::SeSparse => ("sesparse", "seSparse", "SESPARSE", "ddb.grain = \"8\"\n"),
    };
    let descriptor = dir.join(format!("{name}-{number:06}.vmdk"));
    let extent_name = format!("{name}-{number:06}-{suffix}.vmdk");
    let extent = dir.join(&extent_name);
    let layout = match kind {
        DeltaKind::Cowd => write_cowd(&extent, capacity, grains, opts),
        DeltaKind::SeSparse => write_sesparse(&extent, capacity, grains),
    };
    let parent_hint = parent.descriptor.file_name().unwrap().to_str().unwrap();
    // Key order and spelling as ESXi writes them; qemu also needs `CID=` before `parentCID=`
    // and `parentFileNameHint="` without spaces.
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={cid:08x}\nparentCID={:08x}\n\
         isNativeSnapshot=\"no\"\ncreateType=\"{create_type}\"\nparentFileNameHint=\"{parent_hint}\"\n\
         # Extent description\nRW {} {extent_type} \"{extent_name}\"\n\n{}{ddb_extra}",
        parent.cid,
        capacity / SECTOR,
        ddb(cid)
    );
    fs::write(&descriptor, text).unwrap();
    Link {
        name: name.clone(),
        descriptor,
        extent,
        cid,
        kind: Some(kind),
        number,
        capacity_bytes: capacity,
        expected,
        layout,
    }
}

/// Write a base with `data` and one delta per entry of `deltas`, each on the previous link.
pub fn write_chain(
    dir: &Path,
    name: &str,
    data: &[u8],
    deltas: &[(DeltaKind, Grains)],
) -> Vec<Link> {
    let mut links = vec![write_base(dir, name, data)];
    for (kind, grains) in deltas {
        let next = write_delta(links.last().unwrap(), *kind, grains);
        links.push(next);
    }
    links
}

/// A file written piece by piece at absolute offsets (holes stay sparse).
struct Image {
    file: fs::File,
}

impl Image {
    fn create(path: &Path, len: u64) -> Image {
        let file = fs::File::create(path).unwrap();
        file.set_len(len).unwrap();
        Image { file }
    }
    fn put(&self, at: u64, bytes: &[u8]) {
        self.file.write_all_at(bytes, at).unwrap();
    }
    fn put_u32s(&self, at: u64, v: &[u32]) {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.put(at, &b);
    }
    fn put_u64s(&self, at: u64, v: &[u64]) {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.put(at, &b);
    }
}

/// Grain directory indexes that have at least one grain.
fn used_tables(grains: &Grains) -> Vec<u64> {
    let mut t: Vec<u64> = grains.keys().map(|g| g / GTES_PER_GT).collect();
    t.dedup();
    t
}

/// A COWD delta: header, GD at sector 4, then the grain tables in GD order, then the data
/// grains in reverse grain order (a reader must not assume grains are stored in disk order).
fn write_cowd(path: &Path, capacity: u64, grains: &Grains, opts: &DeltaOptions) -> Layout {
    let capacity_sectors = u32::try_from(capacity / SECTOR).expect("COWD capacity fits u32");
    let gd_entries = (capacity_sectors as u64).div_ceil(GTES_PER_GT);
    let gd_sector = COWD_HEADER_BYTES / SECTOR;
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let mut next = gd_sector + gd_sectors;
    let mut layout = Layout {
        gd_offset_bytes: gd_sector * SECTOR,
        gd_entry_bytes: 4,
        ..Layout::default()
    };
    let mut gd = vec![0u32; gd_entries as usize];
    for t in used_tables(grains) {
        gd[t as usize] = next as u32;
        layout.gt_offset_bytes.insert(t, next * SECTOR);
        next += GTES_PER_GT * 4 / SECTOR;
    }
    let mut gts: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut data_at: Vec<(u64, &Vec<u8>)> = Vec::new();
    for (&g, grain) in grains.iter().rev() {
        let gte = match grain {
            Grain::Data(b) => {
                let at = next;
                next += 1;
                layout.grain_offset_bytes.insert(g, at * SECTOR);
                data_at.push((at * SECTOR, b));
                at as u32
            }
            Grain::Zero => 1,
            Grain::Unmapped => panic!("COWD has no unmapped grains"),
        };
        gts.entry(g / GTES_PER_GT)
            .or_insert_with(|| vec![0; GTES_PER_GT as usize])[(g % GTES_PER_GT) as usize] = gte;
    }

    let img = Image::create(path, next * SECTOR);
    let mut header = vec![0u8; COWD_HEADER_BYTES as usize];
    header[0..4].copy_from_slice(b"COWD");
    for (at, v) in [
        (4, 1u32),               // version
        (8, 3),                  // flags, as ESXi writes them
        (12, capacity_sectors),  // capacity
        (16, 1),                 // grainSize
        (20, gd_sector as u32),  // gdOffset
        (24, gd_entries as u32), // numGDEntries
        (28, next as u32),       // nextFreeSector
    ] {
        header[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    if let Some(p) = &opts.cowd_parent_file_name {
        let b = p.as_bytes();
        assert!(b.len() < 1024, "parentFileName is 1024 bytes with its NUL");
        header[32..32 + b.len()].copy_from_slice(b);
    }
    img.put(0, &header);
    img.put_u32s(gd_sector * SECTOR, &gd);
    for (t, gt) in &gts {
        img.put_u32s(layout.gt_offset_bytes[t], gt);
    }
    for (at, b) in data_at {
        img.put(at, b);
    }
    layout
}

/// A seSparse delta. Sectors: const header 0, volatile header 1, journal header 2, journal
/// 3..8, grain directory from 8 (one sector more than needed), grain tables (one spare),
/// free bitmap, backmap, then grains from [`SESPARSE_FIRST_GRAIN_INDEX`] on.
fn write_sesparse(path: &Path, capacity: u64, grains: &Grains) -> Layout {
    const GRAIN: u64 = 8;
    const GT_SECTORS: u64 = 64;
    let capacity_sectors = capacity / SECTOR;
    let gd_entries = capacity_sectors.div_ceil(GRAIN * GTES_PER_GT);
    let gd_offset = 8;
    let gd_size = (gd_entries * 8).div_ceil(SECTOR) + 1;
    let tables = used_tables(grains);
    let gt_offset = gd_offset + gd_size;
    let gt_size = (tables.len() as u64 + 1) * GT_SECTORS;
    let bitmap_offset = gt_offset + gt_size;
    let backmap_offset = bitmap_offset + 1;
    let grains_offset = (backmap_offset + 1).next_multiple_of(GRAIN);
    let data_grains = grains
        .values()
        .filter(|g| matches!(g, Grain::Data(_)))
        .count() as u64;
    let grains_size = (SESPARSE_FIRST_GRAIN_INDEX + data_grains) * GRAIN;

    let mut layout = Layout {
        gd_offset_bytes: gd_offset * SECTOR,
        gd_entry_bytes: 8,
        ..Layout::default()
    };
    // Tables are handed out in reverse directory order, so table index != directory index.
    let mut gd = vec![0u64; gd_entries as usize];
    for (i, &t) in tables.iter().rev().enumerate() {
        gd[t as usize] = (0x1000_0000u64 << 32) | i as u64;
        layout
            .gt_offset_bytes
            .insert(t, (gt_offset + i as u64 * GT_SECTORS) * SECTOR);
    }
    let mut gts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut data_at: Vec<(u64, &Vec<u8>)> = Vec::new();
    let mut index = SESPARSE_FIRST_GRAIN_INDEX;
    for (&g, grain) in grains.iter().rev() {
        let gte = match grain {
            Grain::Data(b) => {
                let at = (grains_offset + index * GRAIN) * SECTOR;
                layout.grain_offset_bytes.insert(g, at);
                data_at.push((at, b));
                let e = (3u64 << 60) | ((index & 0xFFF) << 48) | (index >> 12);
                index += 1;
                e
            }
            Grain::Zero => 2 << 60,
            Grain::Unmapped => 1 << 60,
        };
        gts.entry(g / GTES_PER_GT)
            .or_insert_with(|| vec![0; GTES_PER_GT as usize])[(g % GTES_PER_GT) as usize] = gte;
    }

    let img = Image::create(path, (grains_offset + grains_size) * SECTOR);
    let header = [
        0xCAFE_BABE,           // magic
        0x0000_0002_0000_0001, // version
        capacity_sectors,
        GRAIN,
        GT_SECTORS,
        0, // flags
        0,
        0,
        0,
        0, // reserved
        1,
        1, // volatile header
        2,
        1, // journal header
        3,
        5, // journal
        gd_offset,
        gd_size,
        gt_offset,
        gt_size,
        bitmap_offset,
        1,
        backmap_offset,
        1,
        grains_offset,
        grains_size,
    ];
    img.put_u64s(0, &header);
    // Volatile header: magic, free_gt_number, next_txn_seq_number, replay_journal.
    img.put_u64s(SECTOR, &[0xCAFE_CAFE, tables.len() as u64, 1, 0]);
    img.put_u64s(gd_offset * SECTOR, &gd);
    for (t, gt) in &gts {
        img.put_u64s(layout.gt_offset_bytes[t], gt);
    }
    for (at, b) in data_at {
        img.put(at, b);
    }
    layout
}

/// Bytes of `len` following a pattern unique to `seed` and the offset (never all zero within
/// a sector), so misplaced sectors show.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let sector = (i / 512) as u32;
            (sector.wrapping_mul(31) as u8) ^ (i as u8).wrapping_mul(7) ^ seed ^ 0x55
        })
        .map(|b| if b == 0 { 1 } else { b })
        .collect()
}

/// One grain of data filled by `pattern(seed, ..)`.
pub fn data_grain(kind: DeltaKind, seed: u8) -> Grain {
    Grain::Data(pattern(seed, kind.grain_bytes() as usize))
}

/// Replace `from` with `to` in a link's descriptor (to damage the chain).
pub fn edit_descriptor(link: &Link, from: &str, to: &str) {
    let text = fs::read_to_string(&link.descriptor).unwrap();
    assert!(
        text.contains(from),
        "{from:?} is not in {}",
        link.descriptor.display()
    );
    fs::write(&link.descriptor, text.replacen(from, to, 1)).unwrap();
}

/// Overwrite bytes of a file in place.
pub fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}
