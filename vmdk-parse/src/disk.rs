//! A disk: a chain of links (the opened file, then its parents), each made of extents.
//!
//! Opening follows `parentFileNameHint` from link to link, checks that each child's
//! `parentCID` equals its parent's `CID` and that the capacities agree (VMware refuses such
//! chains, and so do we), and applies the path policy to every file a descriptor names.

use crate::descriptor::{looks_like_descriptor, Access, Descriptor, ExtentType, CID_NONE};
use crate::error::{Error, Result};
use crate::extent::{ExtentMap, FileId, FlatExtent, Location, PieceSink, ZeroExtent};
use crate::io::{DiskFile, FileSource};
use crate::sparse::{SparseExtent, MAX_CAPACITY_BYTES, SECTOR};
use crate::{cowd, sesparse};
use byteorder::{ByteOrder, LittleEndian};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Longest chain followed; VMware allows 32 snapshots (255 on some products).
pub const MAX_CHAIN_LINKS: usize = 1024;

/// How to open a disk.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Follow extent and parent paths that leave the opened disk's folder (absolute paths,
    /// `..`, symbolic links pointing out). Off by default: see "Path policy" in the docs.
    pub allow_outside: bool,
    /// The folder extent and parent paths must stay in (default: the opened disk's folder).
    /// vmx-parse and vrepo pass the VM's folder, so a link in a subfolder (VMware's
    /// `workingDir`) may name `../disk.vmdk`; the command lines take it as `--root DIR`.
    pub root: Option<PathBuf>,
    /// Record chain inconsistencies (CID or capacity mismatch) in [`Disk::chain_problems`]
    /// instead of failing; used by `check`.
    pub tolerate_chain_problems: bool,
    /// Read the disk's files from here instead of the file system. Paths are then taken
    /// lexically (`..` and `.` applied, no symbolic links), relative to `root` (default: the
    /// opened path's folder), and must stay under it (`allow_outside` is ignored).
    pub source: Option<Arc<dyn FileSource>>,
}

/// The kind of data an extent holds.
#[derive(Debug)]
pub enum ExtentData {
    Flat(FlatExtent),
    Zero(ZeroExtent),
    Sparse(SparseExtent),
    Cowd(cowd::CowdExtent),
    SeSparse(sesparse::SeSparseExtent),
}

impl ExtentData {
    fn map(&self) -> &dyn ExtentMap {
        match self {
            ExtentData::Flat(e) => e,
            ExtentData::Zero(e) => e,
            ExtentData::Sparse(e) => e,
            ExtentData::Cowd(e) => e,
            ExtentData::SeSparse(e) => e,
        }
    }
}

/// One extent of a link.
#[derive(Debug)]
pub struct Extent {
    /// First virtual byte of the link this extent holds.
    pub start: u64,
    pub size: u64,
    /// The extent type as the descriptor names it (`SPARSE` for a bare sparse file, `FLAT` for
    /// a raw image).
    pub kind: ExtentType,
    pub access: Access,
    pub file: Option<FileId>,
    pub data: ExtentData,
}

/// How a link was found on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkFormat {
    /// A text descriptor file naming extent files.
    Descriptor,
    /// A hosted sparse file (`KDMV`) holding its own data, with or without an embedded descriptor.
    Sparse,
    /// A bare COWD (vmfsSparse) file opened directly.
    Cowd,
    /// A bare seSparse file opened directly.
    SeSparse,
    /// A raw image: no VMDK structure, the file is the disk.
    Raw,
}

/// One link of a snapshot chain: the opened disk is link 0, its parent link 1, and so on.
#[derive(Debug)]
pub struct Link {
    pub path: PathBuf,
    pub format: LinkFormat,
    /// `createType`, or `"raw"` for raw images; empty when a sparse file has no descriptor.
    pub create_type: String,
    pub descriptor: Option<Descriptor>,
    pub cid: Option<u32>,
    pub parent_cid: Option<u32>,
    pub parent_hint: Option<String>,
    pub capacity: u64,
    pub extents: Vec<Extent>,
}

/// An opened disk with its whole chain.
#[derive(Debug)]
pub struct Disk {
    /// Every file opened for this disk, indexed by [`FileId`].
    pub files: Vec<DiskFile>,
    /// Link 0 is the opened disk; the last link is the base.
    pub links: Vec<Link>,
    /// Chain inconsistencies found with [`OpenOptions::tolerate_chain_problems`].
    pub chain_problems: Vec<String>,
    capacity: u64,
    /// Unique per opened disk, so per-thread caches never mix two disks.
    id: u64,
    /// Where relative paths may lead: the opened disk's folder, canonical.
    root: PathBuf,
    opts: OpenOptions,
}

/// A resolved piece of the disk: virtual range, where its bytes are, which link holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub len: u64,
    pub loc: Location,
    /// Link index: 0 for the opened disk. Unallocated pieces carry the base link's index.
    pub depth: u32,
}

/// `path` with `.` and `..` components applied without touching the file system (`..` at the
/// root stays at the root, as the kernel does).
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c.as_os_str()),
        }
    }
    out
}

/// `path` with its `.` and `..` components applied, when that names the same file: a link
/// in `snapshots/` naming `../disk.vmdk` is `disk.vmdk`, not `snapshots/../disk.vmdk`. Leading
/// `..` of a relative path stay. The path is returned unchanged when it has nothing to apply,
/// when either form cannot be resolved (a missing file), or when they resolve to different
/// files (`dir/..` where `dir` is a symbolic link: the kernel's `..` is the link target's
/// parent, not `dir`'s).
pub fn tidy_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    let mut changed = false;
    // Normal components pushed so far, which a `..` may take back.
    let mut depth = 0usize;
    for c in path.components() {
        match c {
            Component::CurDir => changed = true,
            Component::ParentDir if depth > 0 => {
                out.pop();
                depth -= 1;
                changed = true;
            }
            Component::ParentDir if path.is_absolute() => changed = true,
            Component::Normal(n) => {
                out.push(n);
                depth += 1;
            }
            c => out.push(c.as_os_str()),
        }
    }
    if !changed {
        return path.to_path_buf();
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    match (path.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) if a == b => out,
        _ => path.to_path_buf(),
    }
}

impl Disk {
    pub fn open(path: impl AsRef<Path>) -> Result<Disk> {
        Disk::open_with(path, &OpenOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Disk> {
        let path = path.as_ref();
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = opts.root.as_deref().unwrap_or(dir);
        let root = if opts.source.is_some() {
            lexically_normal(dir)
        } else {
            // Name the disk itself, not its folder, when it is missing.
            std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            dir.canonicalize().map_err(|e| Error::io(dir, e))?
        };
        let mut disk = Disk {
            files: Vec::new(),
            links: Vec::new(),
            chain_problems: Vec::new(),
            capacity: 0,
            id: NEXT_DISK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            root,
            opts: opts.clone(),
        };
        let mut seen = HashSet::new();
        let mut next = Some(path.to_path_buf());
        while let Some(p) = next.take() {
            let canon = if disk.opts.source.is_some() {
                lexically_normal(&p)
            } else {
                p.canonicalize().map_err(|e| match disk.links.last() {
                    Some(child) => Error::io(&p, e).named_by(&child.path, "parent"),
                    None => Error::io(&p, e),
                })?
            };
            if !seen.insert(canon) {
                return Err(Error::corrupt(&p, "snapshot chain loops back to this file"));
            }
            if disk.links.len() >= MAX_CHAIN_LINKS {
                return Err(Error::corrupt(
                    &p,
                    format!("snapshot chain is longer than {MAX_CHAIN_LINKS} links"),
                ));
            }
            let link = disk.open_link(&p)?;
            if let Some(child) = disk.links.pop() {
                let checked = disk.check_parent(&child, &link);
                disk.links.push(child);
                checked?;
            }
            next = match (&link.parent_hint, link.parent_cid) {
                (Some(hint), _) => Some(disk.resolve_path(&link.path, hint, "parent")?),
                (None, Some(pc)) if pc != CID_NONE => {
                    return Err(Error::corrupt(
                        &link.path,
                        format!("parentCID={pc:08x} but no parentFileNameHint"),
                    ))
                }
                _ => None,
            };
            disk.links.push(link);
        }
        disk.capacity = disk.links[0].capacity;
        Ok(disk)
    }

    /// The guest-visible size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn check_parent(&mut self, child: &Link, parent: &Link) -> Result<()> {
        let chain = |what: String| Error::Chain {
            child: child.path.clone(),
            parent: parent.path.clone(),
            what,
        };
        let mut problems = Vec::new();
        match (child.parent_cid, parent.cid) {
            (Some(pc), Some(c)) if pc != c => problems.push(chain(format!(
                "content ID mismatch: the child's parentCID is {pc:08x} but the parent's CID is {c:08x}; the parent changed after the child was made"
            ))),
            (_, None) => problems.push(chain("the parent has no CID".into())),
            _ => {}
        }
        if child.capacity != parent.capacity {
            problems.push(chain(format!(
                "capacity mismatch: the child is {} bytes but the parent is {} bytes",
                child.capacity, parent.capacity
            )));
        }
        for p in problems {
            if self.opts.tolerate_chain_problems {
                self.chain_problems.push(p.to_string());
            } else {
                return Err(p);
            }
        }
        Ok(())
    }

    /// Resolve a path named inside `from` (an extent or parent file name) under the path policy.
    fn resolve_path(&self, from: &Path, name: &str, what: &'static str) -> Result<PathBuf> {
        let named = Path::new(name);
        let parent = from.parent().filter(|p| !p.as_os_str().is_empty());
        // Relative to the naming file's folder; `a.vmdk` next to `b.vmdk` stays `a.vmdk`.
        let joined = match parent {
            Some(dir) => dir.join(named),
            None => named.to_path_buf(),
        };
        if self.opts.source.is_some() {
            // A source's files have no symbolic links: the name alone decides.
            let normal = lexically_normal(&joined);
            if named.is_absolute() || !normal.starts_with(&self.root) {
                return Err(Error::refused(
                    from,
                    format!(
                        "{what} path {name:?} leaves the folder {}",
                        self.root.display()
                    ),
                ));
            }
            return Ok(normal);
        }
        if !self.opts.allow_outside {
            let refuse = || {
                Error::refused(
                    from,
                    format!(
                        "{what} path {name:?} leaves the folder {} (use --root DIR or --allow-outside to follow it)",
                        self.root.display()
                    ),
                )
            };
            // First by the name alone, so a hostile name cannot probe which files exist: the
            // name, taken from the naming file's (real) folder with `..` applied lexically,
            // must stay under the root.
            let from_dir = match parent {
                Some(dir) => dir.canonicalize().map_err(|e| Error::io(dir, e))?,
                None => Path::new(".")
                    .canonicalize()
                    .map_err(|e| Error::io(Path::new("."), e))?,
            };
            if !lexically_normal(&from_dir.join(named)).starts_with(&self.root) {
                return Err(refuse());
            }
            // Then for real: symbolic links may still lead out.
            let canon = joined
                .canonicalize()
                .map_err(|e| Error::io(&joined, e).named_by(from, what))?;
            if !canon.starts_with(&self.root) {
                return Err(refuse());
            }
        }
        Ok(tidy_path(&joined))
    }

    fn add_file(&mut self, path: &Path) -> Result<FileId> {
        let f = match &self.opts.source {
            Some(source) => DiskFile::open_from(source.as_ref(), path)?,
            None => DiskFile::open(path)?,
        };
        let regular = match f.file.os_file() {
            Some(file) => file.metadata().map_err(|e| Error::io(path, e))?.is_file(),
            None => true,
        };
        if !regular && !self.files.is_empty() {
            return Err(Error::unsupported(
                path,
                "extent is not a regular file (device extents are not supported)",
            ));
        }
        self.files.push(f);
        Ok((self.files.len() - 1) as FileId)
    }

    fn open_link(&mut self, path: &Path) -> Result<Link> {
        let fid = self.add_file(path)?;
        let f = &self.files[fid as usize];
        let mut head = vec![0u8; f.len.min(4096) as usize];
        f.read_exact_at(&mut head, 0, "start of file")?;
        if head.starts_with(crate::sparse::MAGIC) {
            return self.open_bare_sparse(path, fid);
        }
        if head.starts_with(cowd::MAGIC) {
            let e = cowd::CowdExtent::open(&self.files, fid)?;
            let size = e.capacity_bytes();
            return Ok(bare_link(
                path,
                LinkFormat::Cowd,
                "vmfsSparse",
                size,
                ExtentType::VmfsSparse,
                fid,
                ExtentData::Cowd(e),
            ));
        }
        if head.len() >= 8 && LittleEndian::read_u64(&head[..8]) == sesparse::MAGIC {
            let e = sesparse::SeSparseExtent::open(&self.files, fid)?;
            let size = e.capacity_bytes();
            return Ok(bare_link(
                path,
                LinkFormat::SeSparse,
                "seSparse",
                size,
                ExtentType::SeSparse,
                fid,
                ExtentData::SeSparse(e),
            ));
        }
        if looks_like_descriptor(&head) {
            let len = f.len;
            if len > crate::descriptor::MAX_DESCRIPTOR_BYTES {
                return Err(Error::corrupt(
                    path,
                    format!("looks like a descriptor but is {len} bytes"),
                ));
            }
            let bytes = f.read_vec(0, len, "descriptor")?;
            let d = Descriptor::parse(path, &bytes)?;
            return self.open_descriptor_link(path, d);
        }
        let size = f.len;
        if size > MAX_CAPACITY_BYTES {
            return Err(Error::corrupt(
                path,
                format!("raw image of {size} bytes is over the {MAX_CAPACITY_BYTES}-byte limit"),
            ));
        }
        Ok(bare_link(
            path,
            LinkFormat::Raw,
            "raw",
            size,
            ExtentType::Flat,
            fid,
            ExtentData::Flat(FlatExtent {
                file: fid,
                start: 0,
            }),
        ))
    }

    fn open_bare_sparse(&mut self, path: &Path, fid: FileId) -> Result<Link> {
        let e = SparseExtent::open(&self.files, fid)?;
        let f = &self.files[fid as usize];
        let h = e.first_header.as_ref().unwrap_or(&e.header);
        let descriptor = if h.descriptor_offset != 0 && h.descriptor_size != 0 {
            let len = h.descriptor_size.saturating_mul(SECTOR);
            if len > crate::descriptor::MAX_DESCRIPTOR_BYTES {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "embedded descriptor of {} sectors is absurd",
                        h.descriptor_size
                    ),
                ));
            }
            let bytes = f.read_vec(
                h.descriptor_offset.saturating_mul(SECTOR),
                len,
                "embedded descriptor",
            )?;
            Some(Descriptor::parse(path, &bytes)?)
        } else {
            None
        };
        let size = e.capacity_bytes();
        let mut link = bare_link(
            path,
            LinkFormat::Sparse,
            "",
            size,
            ExtentType::Sparse,
            fid,
            ExtentData::Sparse(e),
        );
        if let Some(d) = descriptor {
            link.create_type = d.create_type().unwrap_or("").to_string();
            link.cid = d.cid(path)?;
            link.parent_cid = d.parent_cid(path)?;
            link.parent_hint = d.parent_hint().map(str::to_string);
            link.descriptor = Some(d);
        }
        Ok(link)
    }

    fn open_descriptor_link(&mut self, path: &Path, d: Descriptor) -> Result<Link> {
        let create_type = d.create_type().unwrap_or("").to_string();
        let ct = create_type.to_ascii_lowercase();
        if matches!(
            ct.as_str(),
            "vmfsraw"
                | "vmfsrawdevicemap"
                | "vmfsrdm"
                | "vmfspassthroughrawdevicemap"
                | "vmfsrdmp"
                | "fulldevice"
                | "partitioneddevice"
        ) {
            return Err(Error::unsupported(
                path,
                format!("createType {create_type:?} is a raw device mapping or physical disk"),
            ));
        }
        let lines: Vec<_> = d.extents().cloned().collect();
        if lines.is_empty() {
            return Err(Error::corrupt(path, "descriptor names no extents"));
        }
        let mut extents = Vec::with_capacity(lines.len());
        let mut start = 0u64;
        for line in lines {
            let size = line
                .size_sectors
                .checked_mul(SECTOR)
                .filter(|s| {
                    start
                        .checked_add(*s)
                        .is_some_and(|e| e <= MAX_CAPACITY_BYTES)
                })
                .ok_or_else(|| Error::corrupt(path, "extent sizes add up to an absurd capacity"))?;
            if line.access == Access::Noaccess {
                return Err(Error::unsupported(path, "an extent has access NOACCESS"));
            }
            let (file, data) = match line.kind.clone() {
                ExtentType::Zero => (None, ExtentData::Zero(ZeroExtent)),
                ExtentType::VmfsRdm | ExtentType::VmfsRaw => {
                    return Err(Error::unsupported(
                        path,
                        format!("{} extents (raw device mappings)", line.kind.as_str()),
                    ))
                }
                kind => {
                    let name = line
                        .file
                        .as_deref()
                        .ok_or_else(|| Error::corrupt(path, "extent has no file"))?;
                    let p = self.resolve_path(path, name, "extent")?;
                    let fid = self.add_file(&p).map_err(|e| e.named_by(path, "extent"))?;
                    let f = &self.files[fid as usize];
                    let data = match kind {
                        ExtentType::Flat | ExtentType::Vmfs => {
                            let at = line
                                .offset_sectors
                                .checked_mul(SECTOR)
                                .ok_or_else(|| Error::corrupt(path, "absurd extent offset"))?;
                            if at.checked_add(size).is_none_or(|end| end > f.len) {
                                return Err(Error::corrupt(
                                    &f.path,
                                    format!("flat extent file is {} bytes, but the descriptor needs {} bytes from byte {at}", f.len, size),
                                ));
                            }
                            ExtentData::Flat(FlatExtent {
                                file: fid,
                                start: at,
                            })
                        }
                        ExtentType::Sparse => {
                            ExtentData::Sparse(SparseExtent::open(&self.files, fid)?)
                        }
                        ExtentType::VmfsSparse => {
                            ExtentData::Cowd(cowd::CowdExtent::open(&self.files, fid)?)
                        }
                        ExtentType::SeSparse => {
                            ExtentData::SeSparse(sesparse::SeSparseExtent::open(&self.files, fid)?)
                        }
                        ExtentType::Zero | ExtentType::VmfsRdm | ExtentType::VmfsRaw => {
                            unreachable!("handled above")
                        }
                    };
                    let holds = match &data {
                        ExtentData::Sparse(e) => Some(e.capacity_bytes()),
                        ExtentData::Cowd(e) => Some(e.capacity_bytes()),
                        ExtentData::SeSparse(e) => Some(e.capacity_bytes()),
                        _ => None,
                    };
                    if let Some(holds) = holds {
                        if holds < size {
                            return Err(Error::corrupt(
                                &self.files[fid as usize].path,
                                format!(
                                    "extent holds {holds} bytes, but the descriptor says {size}"
                                ),
                            ));
                        }
                    }
                    (Some(fid), data)
                }
            };
            extents.push(Extent {
                start,
                size,
                kind: line.kind,
                access: line.access,
                file,
                data,
            });
            start += size;
        }
        Ok(Link {
            path: path.to_path_buf(),
            format: LinkFormat::Descriptor,
            cid: d.cid(path)?,
            parent_cid: d.parent_cid(path)?,
            parent_hint: d.parent_hint().map(str::to_string),
            create_type,
            descriptor: Some(d),
            capacity: start,
            extents,
        })
    }

    /// Resolve `[offset, offset + len)` into pieces, following unallocated ranges down the
    /// chain. Pieces come out in order, cover the range exactly, and neighbours that continue
    /// each other are merged.
    pub fn resolve(
        &self,
        offset: u64,
        len: u64,
        want_holes: bool,
        out: &mut Vec<Piece>,
    ) -> Result<()> {
        self.check_range(offset, len)?;
        self.resolve_link(0, offset, len, want_holes, out)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.capacity) {
            return Err(Error::OutOfRange {
                offset,
                len,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    fn resolve_link(
        &self,
        depth: usize,
        offset: u64,
        len: u64,
        want_holes: bool,
        out: &mut Vec<Piece>,
    ) -> Result<()> {
        let link = &self.links[depth];
        let end = offset + len;
        let first = link.extents.partition_point(|e| e.start + e.size <= offset);
        let mut sink = PieceSink::default();
        for ext in &link.extents[first..] {
            if ext.start >= end {
                break;
            }
            let from = offset.max(ext.start);
            let to = end.min(ext.start + ext.size);
            sink.pieces.clear();
            ext.data.map().resolve(
                &self.files,
                from - ext.start,
                to - from,
                want_holes,
                &mut sink,
            )?;
            for &(o, l, loc) in &sink.pieces {
                let o = o + ext.start;
                if loc == Location::Unallocated && depth + 1 < self.links.len() {
                    self.resolve_link(depth + 1, o, l, want_holes, out)?;
                } else {
                    push_piece(
                        out,
                        Piece {
                            offset: o,
                            len: l,
                            loc,
                            depth: depth as u32,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Read guest-visible bytes at `offset` into `buf`. Reads past the end are an error.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        // Small reads are the common case (vdiff reads 4 KiB blocks): reuse this thread's
        // buffers rather than allocate per call.
        READ_SCRATCH.with(|s| {
            let (pieces, scratch) = &mut *s.borrow_mut();
            pieces.clear();
            self.resolve(offset, buf.len() as u64, false, pieces)?;
            for p in pieces.iter() {
                let at = (p.offset - offset) as usize;
                self.read_piece(p, &mut buf[at..at + p.len as usize], scratch)?;
            }
            Ok(())
        })
    }

    /// Read the bytes of one resolved piece into `buf` (exactly `piece.len` long).
    pub fn read_piece(&self, p: &Piece, buf: &mut [u8], scratch: &mut Vec<u8>) -> Result<()> {
        match p.loc {
            Location::Unallocated | Location::Zero => buf.fill(0),
            Location::Data { file, offset } => {
                self.files[file as usize].read_exact_at(buf, offset, "data")?;
            }
            Location::Compressed {
                file,
                record,
                grain_index,
                grain_bytes,
                skip,
            } => {
                GRAIN_CACHE.with(|c| -> Result<()> {
                    let mut c = c.borrow_mut();
                    let key = (self.id, file, record);
                    if c.key != Some(key) {
                        c.key = None;
                        c.data.resize(grain_bytes as usize, 0);
                        let ext = self.sparse_extent_of(file).ok_or_else(|| {
                            Error::corrupt(&self.files[file as usize].path, "compressed piece outside a sparse extent")
                        })?;
                        let GrainCache { data, .. } = &mut *c;
                        let n = ext.inflate_grain(&self.files, record, grain_index, data, scratch)?;
                        if n < grain_bytes as usize {
                            return Err(Error::corrupt(
                                &self.files[file as usize].path,
                                format!("compressed grain at byte {record} inflates to {n} bytes, {grain_bytes} expected"),
                            ));
                        }
                        c.key = Some(key);
                    }
                    let s = skip as usize;
                    buf.copy_from_slice(&c.data[s..s + buf.len()]);
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    /// The sparse extent stored in `file`, for inflating its grains.
    pub fn sparse_extent_of(&self, file: FileId) -> Option<&SparseExtent> {
        self.links
            .iter()
            .flat_map(|l| &l.extents)
            .find_map(|e| match &e.data {
                ExtentData::Sparse(s) if s.file == file => Some(s),
                _ => None,
            })
    }

    /// The allocation map, as an iterator of merged ranges in disk order.
    pub fn map(&self) -> crate::map::MapIter<'_> {
        crate::map::MapIter::new(self)
    }
}

static NEXT_DISK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct GrainCache {
    key: Option<(u64, FileId, u64)>,
    data: Vec<u8>,
}

thread_local! {
    static READ_SCRATCH: std::cell::RefCell<(Vec<Piece>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    // The last grain inflated on this thread: small sequential reads of a compressed disk
    // inflate each grain once.
    static GRAIN_CACHE: std::cell::RefCell<GrainCache> =
        const { std::cell::RefCell::new(GrainCache { key: None, data: Vec::new() }) };
}

fn push_piece(out: &mut Vec<Piece>, p: Piece) {
    if let Some(last) = out.last_mut() {
        if last.offset + last.len == p.offset
            && last.depth == p.depth
            && last.loc.continued_by(last.len, &p.loc)
        {
            last.len += p.len;
            return;
        }
    }
    out.push(p);
}

fn bare_link(
    path: &Path,
    format: LinkFormat,
    create_type: &str,
    size: u64,
    kind: ExtentType,
    fid: FileId,
    data: ExtentData,
) -> Link {
    Link {
        path: path.to_path_buf(),
        format,
        create_type: create_type.to_string(),
        descriptor: None,
        cid: None,
        parent_cid: None,
        parent_hint: None,
        capacity: size,
        extents: vec![Extent {
            start: 0,
            size,
            kind,
            access: Access::Rw,
            file: Some(fid),
            data,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn tidy_path_applies_dots_only_when_it_names_the_same_file() {
        let t = tempfile::tempdir().expect("temp dir");
        let d = t.path();
        fs::create_dir_all(d.join("vm/snapshots")).expect("folders");
        fs::write(d.join("vm/disk.vmdk"), b"x").expect("file");
        let vm = d.join("vm");
        assert_eq!(
            tidy_path(&vm.join("snapshots/../disk.vmdk")),
            vm.join("disk.vmdk")
        );
        assert_eq!(tidy_path(&vm.join("./disk.vmdk")), vm.join("disk.vmdk"));
        // Nothing to apply: unchanged.
        assert_eq!(tidy_path(&vm.join("disk.vmdk")), vm.join("disk.vmdk"));
        // Missing: unchanged, so errors name the path as written.
        let missing = vm.join("snapshots/../gone.vmdk");
        assert_eq!(tidy_path(&missing), missing);
        // A symbolic link to a folder elsewhere: the kernel's `..` is the target's parent.
        fs::create_dir_all(d.join("other/deep")).expect("folders");
        fs::write(d.join("other/disk.vmdk"), b"y").expect("file");
        std::os::unix::fs::symlink(d.join("other/deep"), vm.join("link")).expect("symlink");
        let through = vm.join("link/../disk.vmdk");
        assert_eq!(tidy_path(&through), through);
    }

    #[test]
    fn tidy_path_keeps_leading_parents_of_relative_paths() {
        // Tests run in the package's folder: `../PKG/src/../Cargo.toml` is `../PKG/Cargo.toml`.
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let pkg = here.file_name().expect("package folder name");
        assert_eq!(std::env::current_dir().expect("cwd"), here);
        let p = Path::new("..").join(pkg).join("src/../Cargo.toml");
        assert_eq!(tidy_path(&p), Path::new("..").join(pkg).join("Cargo.toml"));
        let missing = Path::new("../a/b/../c.vmdk");
        assert_eq!(tidy_path(missing), missing);
    }
}
