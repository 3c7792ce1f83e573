//! Writing VMDK files: monolithicSparse, streamOptimized, monolithicFlat, twoGbMaxExtentSparse
//! and twoGbMaxExtentFlat.
//!
//! The API is sequential, so a producer that only moves forward (a delta stream applied in
//! target order, a disk read window by window) can feed it:
//!
//! ```no_run
//! use vmdk_parse::write::{Subformat, VmdkWriter, WriteOptions};
//! let mut w = VmdkWriter::create("out.vmdk", Subformat::StreamOptimized, 1 << 30, &WriteOptions::default())?;
//! w.write_data(0, &[0xab; 4096])?;
//! w.write_zero(1 << 20, 1 << 20)?;          // 4 KiB..1 MiB was skipped: unallocated
//! w.write_unallocated(2 << 20, 1 << 20)?;
//! w.finish()?;                              // the rest of the disk is unallocated
//! # Ok::<(), vmdk_parse::write::WriteError>(())
//! ```
//!
//! Ranges come in increasing offset order; a gap between two ranges, and whatever follows the
//! last one, is unallocated. Every file is written under a temporary name in the folder of the
//! output (`.NAME.vmdk-parse-PID.tmp`) and renamed into place by [`VmdkWriter::finish`], extents
//! first and the descriptor last; a writer dropped without `finish`, or a `finish` that fails,
//! removes its temporary files, so nothing appears under the final names unless the whole disk
//! was written. Layouts and decisions are documented in `docs/vmdk-parse.md` ("Writing").
//!
//! Memory is bounded whatever the disk size: one grain and one grain table per sparse extent,
//! plus for streamOptimized a batch of 64 grains being compressed (4 MiB in, up to 4 MiB out)
//! and the grain directory (4 bytes per 32 MiB of capacity: 256 KiB for 2 TiB, 32 MiB at the
//! 256 TiB capacity cap).

mod flat;
mod grains;
mod sparse;
mod stream;

use crate::disk::Disk;
use crate::error::Error;
use crate::extent::Location;
use crate::sparse::{SparseHeader, HEADER_LEN, MAGIC, MAX_CAPACITY_BYTES, SECTOR};
use byteorder::{ByteOrder, LittleEndian};
use grains::Range;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Sectors per grain we write (64 KiB), as VMware and qemu do.
pub const GRAIN_SECTORS: u64 = 128;
/// Entries per grain table we write, the only value VMware supports.
pub const GTES_PER_GT: u64 = 512;
/// Sectors reserved for an embedded descriptor, as VMware and qemu do.
pub const EMBEDDED_DESCRIPTOR_SECTORS: u64 = 20;
/// Extent size of the twoGbMaxExtent formats: 2047 MiB, as VMware Workstation splits, so a
/// sparse extent with its metadata stays under 2 GiB.
pub const SPLIT_EXTENT_SECTORS: u64 = 4_192_256;

/// The VMDK layouts the writer produces (the descriptor's `createType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subformat {
    MonolithicSparse,
    StreamOptimized,
    MonolithicFlat,
    TwoGbMaxExtentSparse,
    TwoGbMaxExtentFlat,
}

impl Subformat {
    pub const ALL: [Subformat; 5] = [
        Subformat::MonolithicSparse,
        Subformat::StreamOptimized,
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentSparse,
        Subformat::TwoGbMaxExtentFlat,
    ];

    /// The `createType` value, which is also the name the CLI takes.
    pub fn create_type(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::StreamOptimized => "streamOptimized",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
        }
    }

    /// Whether the disk is one file with its descriptor embedded.
    fn embedded(self) -> bool {
        matches!(
            self,
            Subformat::MonolithicSparse | Subformat::StreamOptimized
        )
    }
}

/// `ddb.adapterType`: the controller the disk was made for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdapterType {
    Ide,
    Buslogic,
    #[default]
    Lsilogic,
    LegacyEsx,
}

impl AdapterType {
    pub fn name(self) -> &'static str {
        match self {
            AdapterType::Ide => "ide",
            AdapterType::Buslogic => "buslogic",
            AdapterType::Lsilogic => "lsilogic",
            AdapterType::LegacyEsx => "legacyESX",
        }
    }
}

/// How the writer lays out the disk.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// `ddb.adapterType` (default lsilogic). It also picks the geometry: 16 heads for ide,
    /// 255 otherwise, 63 sectors per track.
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion` (default 4, as qemu writes; every VMware product opens it).
    pub hw_version: u32,
    /// Store zero ranges of hosted sparse extents as zero grains (GTE 1, header version 2 with
    /// the zero-grain flag) rather than as unallocated grains (GTE 0). Default: no. Both read
    /// as zeros in the disks we write (they have no parent), and libvmdk (20200926, Debian's
    /// libvmdk-utils) reads a zero grain as the sector it names, sector 1 (the descriptor),
    /// even with the flag set; qemu-img does not write zero grains by default either.
    /// streamOptimized has no zero grains; flat extents store both as holes.
    pub zero_grains: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            adapter_type: AdapterType::default(),
            hw_version: 4,
            zero_grains: false,
        }
    }
}

/// Why writing failed.
#[derive(thiserror::Error, Debug)]
pub enum WriteError {
    /// Reading the source disk failed ([`write_disk`]).
    #[error(transparent)]
    Disk(#[from] Error),
    /// An output file could not be written.
    #[error("{}: {source}", path.display())]
    Output { path: PathBuf, source: io::Error },
    /// The disk cannot be stored in this subformat (too large for its tables).
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    /// The caller broke the API's rules (ranges out of order, past the end, a capacity that is
    /// not a whole number of sectors).
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

pub(crate) fn out_err(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// The 512-byte on-disk form of a hosted sparse header (the inverse of
/// [`SparseHeader::parse`]).
pub(crate) fn encode_header(h: &SparseHeader) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..4].copy_from_slice(MAGIC);
    LittleEndian::write_u32(&mut b[4..8], h.version);
    LittleEndian::write_u32(&mut b[8..12], h.flags);
    LittleEndian::write_u64(&mut b[12..20], h.capacity);
    LittleEndian::write_u64(&mut b[20..28], h.grain_size);
    LittleEndian::write_u64(&mut b[28..36], h.descriptor_offset);
    LittleEndian::write_u64(&mut b[36..44], h.descriptor_size);
    LittleEndian::write_u32(&mut b[44..48], h.num_gtes_per_gt);
    LittleEndian::write_u64(&mut b[48..56], h.rgd_offset);
    LittleEndian::write_u64(&mut b[56..64], h.gd_offset);
    LittleEndian::write_u64(&mut b[64..72], h.over_head);
    b[72] = h.unclean_shutdown;
    b[73] = h.single_end_line_char;
    b[74] = h.non_end_line_char;
    b[75] = h.double_end_line_char1;
    b[76] = h.double_end_line_char2;
    LittleEndian::write_u16(&mut b[77..79], h.compress_algorithm);
    b
}

/// A fresh content ID. Not cryptographic, only different from one disk to the next: std's
/// `RandomState` (randomly keyed per process) over the time and the process id. Never
/// `ffffffff` or `fffffffe`, which some software reads as "no parent" or "disk of zeros"
/// (open-vmdk `StreamOptimizedClose`).
pub fn random_cid() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(now);
    h.write_u32(std::process::id());
    let v = h.finish();
    let cid = (v ^ (v >> 32)) as u32;
    if cid >= 0xffff_fffe {
        cid - 2
    } else {
        cid
    }
}

/// One extent line of a descriptor.
struct ExtentLine {
    sectors: u64,
    kind: &'static str,
    file: String,
    /// FLAT extents name an offset in their file.
    offset: Option<u64>,
}

/// The descriptor text, in the order and spelling qemu and VMware write.
fn descriptor_text(
    subformat: Subformat,
    capacity_bytes: u64,
    cid: u32,
    extents: &[ExtentLine],
    opts: &WriteOptions,
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = write!(
        s,
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"{}\"\n\n# Extent description\n",
        subformat.create_type()
    );
    for e in extents {
        let _ = write!(s, "RW {} {} \"{}\"", e.sectors, e.kind, e.file);
        if let Some(o) = e.offset {
            let _ = write!(s, " {o}");
        }
        s.push('\n');
    }
    let heads: u64 = if opts.adapter_type == AdapterType::Ide {
        16
    } else {
        255
    };
    let max_cylinders = if opts.adapter_type == AdapterType::Ide {
        16383
    } else {
        65535
    };
    let cylinders = (capacity_bytes / SECTOR / (heads * 63)).clamp(1, max_cylinders);
    // VMware's long content ID ends with the CID (open-vmdk `makeDiskDescriptorFile`).
    let long = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(cid);
        let a = h.finish();
        h.write_u64(a);
        format!("{a:016x}{:08x}{cid:08x}", h.finish() as u32)
    };
    let _ = write!(
        s,
        "\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"{}\"\nddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"{heads}\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"{}\"\nddb.longContentID = \"{long}\"\n",
        opts.hw_version,
        opts.adapter_type.name()
    );
    s
}

/// Files written under temporary names, renamed into place together or removed.
struct TempFiles {
    /// (temporary, final), in the order they are renamed.
    files: Vec<(PathBuf, PathBuf)>,
    done: bool,
}

impl TempFiles {
    fn add(&mut self, final_path: PathBuf) -> PathBuf {
        let dir = final_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.vmdk-parse-{}.tmp", std::process::id()));
        self.files.push((tmp.clone(), final_path));
        tmp
    }

    /// Rename every file into place; on failure, take back the ones already renamed.
    fn commit(&mut self) -> Result<(), WriteError> {
        for i in 0..self.files.len() {
            let (tmp, fin) = &self.files[i];
            if let Err(e) = std::fs::rename(tmp, fin) {
                let err = out_err(fin)(e);
                for (_, done) in &self.files[..i] {
                    let _ = std::fs::remove_file(done);
                }
                return Err(err);
            }
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        if !self.done {
            for (tmp, _) in &self.files {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// Sequential, buffered appends to a file, for grains and stream records.
pub(crate) struct Appender {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
}

const APPEND_FLUSH_BYTES: usize = 4 << 20;

impl Appender {
    pub(crate) fn new(file: File, path: PathBuf, start: u64) -> Appender {
        Appender {
            file,
            path,
            start,
            buf: Vec::with_capacity(APPEND_FLUSH_BYTES + (1 << 17)),
        }
    }

    /// File offset of the next byte appended.
    pub(crate) fn pos(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= APPEND_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Zeros up to the next sector boundary.
    pub(crate) fn pad_sector(&mut self) -> Result<(), WriteError> {
        let pad = (SECTOR - self.pos() % SECTOR) % SECTOR;
        self.buf.resize(self.buf.len() + pad as usize, 0);
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<(), WriteError> {
        self.file
            .write_all_at(&self.buf, self.start)
            .map_err(out_err(&self.path))?;
        self.start += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    pub(crate) fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), WriteError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(out_err(&self.path))
    }
}

/// One extent being written; offsets are relative to the extent's first byte.
enum ExtentWriter {
    Flat(flat::FlatExtent),
    Sparse(sparse::SparseExtent),
    Stream(stream::StreamExtent),
}

impl ExtentWriter {
    fn push(&mut self, range: Range<'_>) -> Result<(), WriteError> {
        match self {
            ExtentWriter::Flat(e) => e.push(range),
            ExtentWriter::Sparse(e) => e.push(range),
            ExtentWriter::Stream(e) => e.push(range),
        }
    }
    fn finish(self) -> Result<(), WriteError> {
        match self {
            ExtentWriter::Flat(e) => e.finish(),
            ExtentWriter::Sparse(e) => e.finish(),
            ExtentWriter::Stream(e) => e.finish(),
        }
    }
}

/// Where one extent goes.
struct ExtentPlan {
    start: u64,
    size: u64,
    tmp: PathBuf,
}

/// A VMDK being written, front to back. See the module docs.
pub struct VmdkWriter {
    subformat: Subformat,
    capacity: u64,
    opts: WriteOptions,
    /// The descriptor's file (the disk as opened later).
    path: PathBuf,
    descriptor: String,
    /// Next byte expected.
    pos: u64,
    plan: Vec<ExtentPlan>,
    /// The extent being written and its index in `plan`.
    cur: Option<(usize, ExtentWriter)>,
    /// Descriptor file, for the formats with a separate one.
    descriptor_tmp: Option<PathBuf>,
    temps: TempFiles,
}

impl VmdkWriter {
    /// Start writing a disk of `capacity_bytes` (a multiple of 512) at `path`.
    pub fn create(
        path: impl AsRef<Path>,
        subformat: Subformat,
        capacity_bytes: u64,
        opts: &WriteOptions,
    ) -> Result<VmdkWriter, WriteError> {
        let path = path.as_ref().to_path_buf();
        let invalid = |what: String| WriteError::Invalid {
            path: path.clone(),
            what,
        };
        if capacity_bytes == 0 || capacity_bytes % SECTOR != 0 {
            return Err(invalid(format!(
                "capacity of {capacity_bytes} bytes is not a positive whole number of sectors"
            )));
        }
        if capacity_bytes > MAX_CAPACITY_BYTES {
            return Err(WriteError::Unsupported {
                path,
                what: format!("capacity of {capacity_bytes} bytes is over the 256 TiB limit"),
            });
        }
        if subformat == Subformat::MonolithicSparse {
            sparse::SparseLayout::new(capacity_bytes, true).check_fits(&path)?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| invalid("the output needs a file name".into()))?;
        let stem = name.strip_suffix(".vmdk").unwrap_or(&name).to_string();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut temps = TempFiles {
            files: Vec::new(),
            done: false,
        };
        let mut plan = Vec::new();
        let mut lines = Vec::new();
        let split = |size: u64| -> Vec<(u64, u64)> {
            let step = SPLIT_EXTENT_SECTORS * SECTOR;
            (0..size.div_ceil(step))
                .map(|i| (i * step, step.min(size - i * step)))
                .collect()
        };
        let (kind, pieces) = match subformat {
            Subformat::MonolithicSparse | Subformat::StreamOptimized => {
                ("SPARSE", vec![(0, capacity_bytes)])
            }
            Subformat::MonolithicFlat => ("FLAT", vec![(0, capacity_bytes)]),
            Subformat::TwoGbMaxExtentSparse => ("SPARSE", split(capacity_bytes)),
            Subformat::TwoGbMaxExtentFlat => ("FLAT", split(capacity_bytes)),
        };
        let file_of = |i: usize| match subformat {
            Subformat::MonolithicSparse | Subformat::StreamOptimized => name.clone(),
            Subformat::MonolithicFlat => format!("{stem}-flat.vmdk"),
            Subformat::TwoGbMaxExtentSparse => format!("{stem}-s{:03}.vmdk", i + 1),
            Subformat::TwoGbMaxExtentFlat => format!("{stem}-f{:03}.vmdk", i + 1),
        };
        for (i, &(start, size)) in pieces.iter().enumerate() {
            let file = file_of(i);
            let tmp = temps.add(dir.join(&file));
            plan.push(ExtentPlan { start, size, tmp });
            lines.push(ExtentLine {
                sectors: size / SECTOR,
                kind,
                file,
                offset: (kind == "FLAT").then_some(0),
            });
        }
        let descriptor = descriptor_text(subformat, capacity_bytes, random_cid(), &lines, opts);
        let descriptor_tmp = (!subformat.embedded()).then(|| temps.add(path.clone()));
        let mut w = VmdkWriter {
            subformat,
            capacity: capacity_bytes,
            opts: opts.clone(),
            path,
            descriptor,
            pos: 0,
            plan,
            cur: None,
            descriptor_tmp,
            temps,
        };
        w.open_extent(0)?;
        Ok(w)
    }

    /// The guest-visible size being written.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The descriptor text the disk gets (embedded or in its own file).
    pub fn descriptor(&self) -> &str {
        &self.descriptor
    }

    /// Guest bytes `data` at `offset`.
    pub fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        self.put(offset, Range::Data(data))
    }

    /// `len` bytes at `offset` read as zeros: unallocated grains (zero grains with
    /// [`WriteOptions::zero_grains`]), holes in flat extents.
    pub fn write_zero(&mut self, offset: u64, len: u64) -> Result<(), WriteError> {
        self.put(offset, Range::Zero(len))
    }

    /// `len` bytes at `offset` stay unallocated (the same as leaving them out).
    pub fn write_unallocated(&mut self, offset: u64, len: u64) -> Result<(), WriteError> {
        self.put(offset, Range::Unallocated(len))
    }

    /// Write what is left as unallocated, the metadata, and rename every file into place.
    pub fn finish(mut self) -> Result<(), WriteError> {
        if self.pos < self.capacity {
            self.put(self.pos, Range::Unallocated(self.capacity - self.pos))?;
        }
        if let Some((_, e)) = self.cur.take() {
            e.finish()?;
        }
        if let Some(tmp) = &self.descriptor_tmp {
            std::fs::write(tmp, &self.descriptor).map_err(out_err(tmp))?;
        }
        self.temps.commit()
    }

    fn open_extent(&mut self, i: usize) -> Result<(), WriteError> {
        let p = &self.plan[i];
        let file = File::create(&p.tmp).map_err(out_err(&p.tmp))?;
        let embedded = self
            .subformat
            .embedded()
            .then_some(self.descriptor.as_str());
        let e = match self.subformat {
            Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat => {
                ExtentWriter::Flat(flat::FlatExtent::new(file, p.tmp.clone(), p.size)?)
            }
            Subformat::MonolithicSparse | Subformat::TwoGbMaxExtentSparse => {
                ExtentWriter::Sparse(sparse::SparseExtent::new(
                    file,
                    p.tmp.clone(),
                    p.size,
                    embedded,
                    self.opts.zero_grains,
                )?)
            }
            Subformat::StreamOptimized => ExtentWriter::Stream(stream::StreamExtent::new(
                file,
                p.tmp.clone(),
                p.size,
                embedded.unwrap_or_default(),
            )?),
        };
        self.cur = Some((i, e));
        Ok(())
    }

    fn put(&mut self, offset: u64, range: Range<'_>) -> Result<(), WriteError> {
        let len = range.len();
        if offset < self.pos || offset.checked_add(len).is_none_or(|e| e > self.capacity) {
            return Err(WriteError::Invalid {
                path: self.path.clone(),
                what: format!(
                    "range of {len} bytes at {offset} is out of order or past the end (next byte expected {}, capacity {})",
                    self.pos, self.capacity
                ),
            });
        }
        if offset > self.pos {
            self.put(self.pos, Range::Unallocated(offset - self.pos))?;
        }
        let mut done = 0u64;
        while done < len {
            let (i, _) = self
                .cur
                .as_ref()
                .expect("an extent is open while pos < capacity");
            let i = *i;
            let (start, size) = (self.plan[i].start, self.plan[i].size);
            let n = (len - done).min(start + size - self.pos);
            let part = match range {
                Range::Data(d) => Range::Data(&d[done as usize..(done + n) as usize]),
                Range::Zero(_) => Range::Zero(n),
                Range::Unallocated(_) => Range::Unallocated(n),
            };
            if let Some((_, e)) = &mut self.cur {
                e.push(part)?;
            }
            self.pos += n;
            done += n;
            if self.pos == start + size && i + 1 < self.plan.len() {
                if let Some((_, e)) = self.cur.take() {
                    e.finish()?;
                }
                self.open_extent(i + 1)?;
            }
        }
        Ok(())
    }
}

/// Write the whole of `src` to `path` in `subformat`: data as data, zero ranges as zero,
/// unallocated ranges (nowhere in the chain) as unallocated. The source is read window by window
/// on another thread while this one writes, as `cat` does.
pub fn write_disk(
    src: &Disk,
    path: &Path,
    subformat: Subformat,
    opts: &WriteOptions,
) -> Result<(), WriteError> {
    // A raw image of an odd size is padded to a whole sector, as qemu-img does.
    let capacity = src.capacity().div_ceil(SECTOR) * SECTOR;
    let mut w = VmdkWriter::create(path, subformat, capacity, opts)?;
    let how = crate::cat::WindowFill {
        fill_holes: false,
        skip_hole_windows: false,
    };
    crate::cat::for_each_window(src, how, |pos, pieces, bytes| -> Result<(), WriteError> {
        for p in pieces {
            match p.loc {
                Location::Unallocated => w.write_unallocated(p.offset, p.len)?,
                Location::Zero => w.write_zero(p.offset, p.len)?,
                Location::Data { .. } | Location::Compressed { .. } => {
                    let at = (p.offset - pos) as usize;
                    w.write_data(p.offset, &bytes[at..at + p.len as usize])?
                }
            }
        }
        Ok(())
    })?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_the_reader() {
        let h = SparseHeader {
            version: 3,
            flags: 0x30001,
            capacity: 1 << 33,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: u64::MAX,
            over_head: 128,
            unclean_shutdown: 0,
            single_end_line_char: b'\n',
            non_end_line_char: b' ',
            double_end_line_char1: b'\r',
            double_end_line_char2: b'\n',
            compress_algorithm: 1,
        };
        assert_eq!(SparseHeader::parse(&encode_header(&h)), Some(h));
    }

    #[test]
    fn cids_are_fresh_and_never_special() {
        let a = random_cid();
        let b = random_cid();
        assert_ne!(a, b);
        for c in [a, b] {
            assert!(c < 0xffff_fffe);
        }
    }

    #[test]
    fn descriptor_reads_back() {
        let lines = [ExtentLine {
            sectors: 2048,
            kind: "FLAT",
            file: "d-flat.vmdk".into(),
            offset: Some(0),
        }];
        let opts = WriteOptions {
            adapter_type: AdapterType::Ide,
            ..WriteOptions::default()
        };
        let text = descriptor_text(
            Subformat::MonolithicFlat,
            1 << 20,
            0x1234abcd,
            &lines,
            &opts,
        );
        let d = crate::descriptor::Descriptor::parse(Path::new("d.vmdk"), text.as_bytes()).unwrap();
        assert_eq!(d.get("CID"), Some("1234abcd"));
        assert_eq!(d.get("parentCID"), Some("ffffffff"));
        assert_eq!(d.get("createType"), Some("monolithicFlat"));
        assert_eq!(d.get("ddb.adapterType"), Some("ide"));
        assert_eq!(d.get("ddb.geometry.heads"), Some("16"));
        assert!(d.get("ddb.longContentID").unwrap().ends_with("1234abcd"));
        assert_eq!(d.get("ddb.longContentID").unwrap().len(), 32);
        let e: Vec<_> = d.extents().collect();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].size_sectors, 2048);
        assert_eq!(e[0].file.as_deref(), Some("d-flat.vmdk"));
    }

    /// One range of a generated disk: data (from a seed, or zeros), zero, unallocated, or a
    /// gap left out of the calls.
    #[derive(Clone, Debug)]
    enum Gen {
        Data(u64, bool),
        Zero(u64),
        Unallocated(u64),
        Gap(u64),
    }

    fn gen_range() -> impl proptest::strategy::Strategy<Value = Gen> {
        use proptest::prelude::*;
        let len = 1u64..200_000;
        prop_oneof![
            (len.clone(), any::<bool>()).prop_map(|(l, z)| Gen::Data(l, z)),
            len.clone().prop_map(Gen::Zero),
            len.clone().prop_map(Gen::Unallocated),
            len.prop_map(Gen::Gap),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// read(write(ranges)) == ranges, for every subformat, with grains cut anywhere and a
        /// capacity that ends inside a grain.
        #[test]
        fn written_disks_read_back(sectors in 1u64..6000, ranges in proptest::collection::vec(gen_range(), 0..24)) {
            let cap = sectors * SECTOR;
            let mut want = vec![0u8; cap as usize];
            // Per byte: 0 unallocated, 1 zero, 2 data.
            let mut kind = vec![0u8; cap as usize];
            let dir = tempfile::tempdir().unwrap();
            let zg = WriteOptions { zero_grains: true, ..WriteOptions::default() };
            let runs = Subformat::ALL
                .iter()
                .map(|&s| (s, WriteOptions::default()))
                .chain([(Subformat::MonolithicSparse, zg)]);
            for (n, (sub, opts)) in runs.enumerate() {
                let p = dir.path().join(format!("{n}-{}.vmdk", sub.create_type()));
                let mut w = VmdkWriter::create(&p, sub, cap, &opts).unwrap();
                let mut pos = 0u64;
                for (i, r) in ranges.iter().enumerate() {
                    let (len, end) = match r {
                        Gen::Data(l, _) | Gen::Zero(l) | Gen::Unallocated(l) | Gen::Gap(l) => {
                            let l = (*l).min(cap - pos);
                            (l, pos + l)
                        }
                    };
                    if len == 0 {
                        break;
                    }
                    let span = pos as usize..end as usize;
                    match r {
                        Gen::Data(_, zeros) => {
                            let bytes: Vec<u8> = if *zeros {
                                vec![0; len as usize]
                            } else {
                                (0..len).map(|j| (j as u8) ^ (i as u8) | 1).collect()
                            };
                            want[span.clone()].copy_from_slice(&bytes);
                            kind[span].fill(2);
                            w.write_data(pos, &bytes).unwrap();
                        }
                        Gen::Zero(_) => {
                            kind[span].fill(1);
                            w.write_zero(pos, len).unwrap();
                        }
                        Gen::Unallocated(_) => w.write_unallocated(pos, len).unwrap(),
                        Gen::Gap(_) => {}
                    }
                    pos = end;
                }
                w.finish().unwrap();
                let d = Disk::open(&p).unwrap();
                proptest::prop_assert_eq!(d.capacity(), cap);
                let mut got = vec![0u8; cap as usize];
                d.read_at(&mut got, 0).unwrap();
                proptest::prop_assert!(got == want, "{:?}: contents differ", sub);
                // Nothing is allocated where nothing was written, except inside a grain (or a
                // 4 KiB flat block) that also holds something written.
                let unit = if sub.create_type().ends_with("Flat") { 4096 } else { GRAIN_SECTORS * SECTOR };
                for r in d.map() {
                    let r = r.unwrap();
                    if r.state == crate::map::State::Unallocated {
                        continue;
                    }
                    let from = r.offset / unit * unit;
                    let to = (r.offset + r.length).div_ceil(unit) * unit;
                    let to = to.min(cap);
                    let wrote = kind[from as usize..to as usize].contains(&2);
                    if r.state == crate::map::State::Data {
                        proptest::prop_assert!(wrote, "{:?}: data invented at {}", sub, r.offset);
                    }
                }
            }
            // Each pass re-derives `want` identically; no disk may differ from it.
            drop(dir);
        }
    }
}
