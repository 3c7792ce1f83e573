//! `mount`: every entry of the repository as read-only files (FUSE), read in place.
//!
//! ```text
//! MOUNTPOINT/entries/E7/...       the entry's files, byte for byte as saved
//! MOUNTPOINT/guest/E7/DISK.raw    the guest-visible image of each disk of E7
//! MOUNTPOINT/vms/NAME/latest      symbolic links by VM: latest, each tag, each entry
//! ```
//!
//! Nothing is built first. A file of an entry is a range of the entry's volume, read through
//! its delta chain with a [`vpatch::ChainReader`]: a read resolves only the records it needs,
//! each checked against its checksum, and inflated records are kept in one [`RecordCache`]
//! that every file of every entry shares. A guest image is the disk's chain opened by
//! vmdk-parse over the entry's stored files ([`vmdk_parse::FileSource`]), so a read of a guest
//! block reads the grain tables and the grain it needs, nothing more. A damaged record fails
//! the reads that need it (EIO, and a line through the warning callback), never returns wrong
//! bytes, and leaves every other read working.
//!
//! The tree is made from the entries' manifests and grows when entries are added while
//! mounted (looked for at most once a second, when a top-level folder is listed or looked
//! in). Entries are never removed under a mount: the caller holds the repository's shared
//! lock, which every rewrite waits for.

use crate::error::{Error, Result};
use crate::manifest::Entry;
use crate::repo::Repo;
use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, Request,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vpatch::reader::Extent;
use vpatch::{ChainReader, RecordCache};

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Bytes of inflated records kept for all files together.
    pub cache_bytes: usize,
    /// Only these VMs' entries (all when empty).
    pub vms: Vec<String>,
    /// Threads serving reads.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            cache_bytes: 64 << 20,
            vms: Vec::new(),
            threads: 4,
        }
    }
}

/// Called with one line for each read that failed (a damaged record, a vanished file).
pub type Warn = Box<dyn Fn(&str) + Send + Sync>;

const ROOT: u64 = fuser::FUSE_ROOT_ID;
/// How long the kernel may keep names and attributes. Entries never change under a mount;
/// the top-level folders grow, so they are looked at again after this.
const TTL: Duration = Duration::from_secs(1);
/// How often the entry list is read again, at most.
const REFRESH: Duration = Duration::from_secs(1);

enum Kind {
    Dir(BTreeMap<String, u64>),
    /// Filled when first listed or looked in: the disks of entry `.0`.
    GuestDir(String, Option<BTreeMap<String, u64>>),
    /// A stored file: `size` bytes at `offset` of the entry's volume.
    Stored {
        entry: String,
        offset: u64,
        size: u64,
        mode: u32,
    },
    /// The guest image of the disk whose top link is `top` in the entry.
    Guest {
        entry: String,
        top: String,
        size: u64,
    },
    Link(String),
}

struct Node {
    kind: Kind,
    mtime: SystemTime,
}

struct Tree {
    /// Inode `i` is `nodes[i - 1]`.
    nodes: Vec<Node>,
    /// The entry names looked at (loaded, left out by --vm, or damaged).
    seen: HashSet<String>,
    /// The repository's entries, by name, as last read.
    manifests: HashMap<String, Arc<Entry>>,
    refreshed: Option<Instant>,
}

impl Tree {
    fn add(&mut self, kind: Kind, mtime: SystemTime) -> u64 {
        self.nodes.push(Node { kind, mtime });
        self.nodes.len() as u64
    }

    fn node(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The children of `ino` when it is a plain folder.
    fn dir_mut(&mut self, ino: u64) -> Option<&mut BTreeMap<String, u64>> {
        match &mut self.nodes.get_mut(ino.checked_sub(1)? as usize)?.kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// The child folder `name` of folder `dir`, made when missing; `None` when `dir` is not a
    /// folder or `name` is taken by something else.
    fn subdir(&mut self, dir: u64, name: &str, mtime: SystemTime) -> Option<u64> {
        match self.dir_mut(dir)?.get(name) {
            Some(&i) => match self.node(i)?.kind {
                Kind::Dir(_) => Some(i),
                _ => None,
            },
            None => {
                let i = self.add(Kind::Dir(BTreeMap::new()), mtime);
                self.dir_mut(dir)?.insert(name.to_string(), i);
                Some(i)
            }
        }
    }
}

/// The repository as a FUSE file system.
pub struct RepoFs {
    shared: Arc<Shared>,
    pool: rayon::ThreadPool,
    /// Per file read: where its last read ended, and how far its records are prefetched.
    streams: Mutex<HashMap<u64, (u64, u64)>>,
}

/// Bytes read ahead of a sequential reader.
const PREFETCH: u64 = 4 << 20;

/// A guest image's ranges: `(offset, length, data)`.
type GuestMap = Vec<(u64, u64, bool)>;

/// Opened once, on first use; a failure is kept (as its message) and reported on each use.
type Once<T> = Arc<OnceLock<std::result::Result<Arc<T>, String>>>;

struct Shared {
    repo: Repo,
    opts: MountOptions,
    cache: Arc<RecordCache>,
    tree: RwLock<Tree>,
    readers: Mutex<HashMap<String, Once<ChainReader>>>,
    disks: Mutex<HashMap<(String, String), Once<vmdk_parse::Disk>>>,
    maps: Mutex<HashMap<(String, String), Once<GuestMap>>>,
    warn: Warn,
    uid: u32,
    gid: u32,
    // Top-level folders.
    entries_dir: u64,
    guest_dir: u64,
    vms_dir: u64,
}

fn time_of_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// An entry's time: its newest file's mtime (entries record their own time as text).
fn entry_time(e: &Entry) -> SystemTime {
    time_of_ns(e.files.iter().map(|f| f.mtime_ns).max().unwrap_or(0))
}

impl RepoFs {
    /// The file system of `repo` (whose shared lock the caller holds while it is mounted).
    pub fn new(repo: Repo, opts: MountOptions, warn: Warn) -> Result<RepoFs> {
        let now = SystemTime::now();
        let mut tree = Tree {
            nodes: Vec::new(),
            seen: HashSet::new(),
            manifests: HashMap::new(),
            refreshed: None,
        };
        let root = tree.add(Kind::Dir(BTreeMap::new()), now);
        debug_assert_eq!(root, ROOT);
        let mut top = |name| {
            tree.subdir(root, name, now)
                .expect("a new folder of the root")
        };
        let (entries_dir, guest_dir, vms_dir) = (top("entries"), top("guest"), top("vms"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.max(1))
            .thread_name(|i| format!("vrepo-mount-{i}"))
            .build()
            .map_err(|e| Error::Io {
                what: "starting the mount's threads".into(),
                source: io::Error::other(e.to_string()),
            })?;
        let shared = Shared {
            cache: Arc::new(RecordCache::new(opts.cache_bytes)),
            repo,
            opts,
            tree: RwLock::new(tree),
            readers: Mutex::new(HashMap::new()),
            disks: Mutex::new(HashMap::new()),
            maps: Mutex::new(HashMap::new()),
            warn,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            entries_dir,
            guest_dir,
            vms_dir,
        };
        shared.refresh(true)?;
        {
            let t = shared.read_tree();
            for vm in &shared.opts.vms {
                if !t.manifests.values().any(|e| e.vm_name() == vm) {
                    return Err(Error::Missing(format!(
                        "no VM named {vm:?} in this repository (vrepo vms lists them)"
                    )));
                }
            }
        }
        Ok(RepoFs {
            shared: Arc::new(shared),
            pool,
            streams: Mutex::new(HashMap::new()),
        })
    }

    /// Records found in the cache and records inflated, so far.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.shared.cache.stats()
    }
}

impl Shared {
    fn read_tree(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_tree(&self) -> std::sync::RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Add the entries saved since the last look (at most once per [`REFRESH`] unless
    /// `force`).
    fn refresh(&self, force: bool) -> Result<()> {
        if !force {
            let t = self.read_tree();
            if t.refreshed.is_some_and(|at| at.elapsed() < REFRESH) {
                return Ok(());
            }
        }
        // Entries never change under the mount (rewrites wait for its lock): only new numbers
        // need reading.
        let numbers = self.repo.numbers()?;
        let new: Vec<String> = {
            let t = self.read_tree();
            numbers
                .iter()
                .map(|n| format!("E{n}"))
                .filter(|n| !t.seen.contains(n))
                .collect()
        };
        let mut loaded = Vec::new();
        for name in new {
            match self.repo.load(&name) {
                Ok(e) => loaded.push(e),
                // Shown once; the rest of the repository stays readable.
                Err(err) => (self.warn)(&format!("entry {name} left out: {err}")),
            }
            self.write_tree().seen.insert(name);
        }
        let mut t = self.write_tree();
        t.refreshed = Some(Instant::now());
        let wanted =
            |e: &Entry| self.opts.vms.is_empty() || self.opts.vms.iter().any(|v| v == e.vm_name());
        let mut changed = false;
        for e in loaded.into_iter().filter(|e| wanted(e)) {
            changed = true;
            let when = entry_time(&e);
            let Some(dir) = t.subdir(self.entries_dir, &e.name, when) else {
                continue;
            };
            for f in &e.files {
                let mut parts: Vec<&str> = f.path.split('/').collect();
                let Some(base) = parts.pop() else { continue };
                // A name that is both a file and a folder (a damaged manifest) is left out.
                let Some(at) = parts
                    .into_iter()
                    .try_fold(dir, |at, p| t.subdir(at, p, when))
                else {
                    continue;
                };
                if t.dir_mut(at).is_none_or(|c| c.contains_key(base)) {
                    continue;
                }
                let ino = t.add(
                    Kind::Stored {
                        entry: e.name.clone(),
                        offset: f.offset,
                        size: f.size,
                        mode: f.mode,
                    },
                    time_of_ns(f.mtime_ns),
                );
                if let Some(c) = t.dir_mut(at) {
                    c.insert(base.to_string(), ino);
                }
            }
            let g = t.add(Kind::GuestDir(e.name.clone(), None), when);
            if let Some(c) = t.dir_mut(self.guest_dir) {
                c.insert(e.name.clone(), g);
            }
            t.manifests.insert(e.name.clone(), Arc::new(e));
        }
        if !changed {
            return Ok(());
        }
        // vms/NAME/{E7, TAG, latest}: from every entry in the mount (a new one moves latest).
        let mut by_vm: BTreeMap<String, Vec<Arc<Entry>>> = BTreeMap::new();
        for e in t.manifests.values() {
            by_vm
                .entry(e.vm_name().to_string())
                .or_default()
                .push(e.clone());
        }
        for (vm, list) in by_vm {
            let when = list
                .iter()
                .map(|e| entry_time(e))
                .max()
                .unwrap_or(UNIX_EPOCH);
            let Some(dir) = t.subdir(self.vms_dir, &vm, when) else {
                continue;
            };
            let mut links: Vec<(String, String)> = Vec::new();
            for e in &list {
                links.push((e.name.clone(), e.name.clone()));
                for tag in &e.tags {
                    links.push((tag.clone(), e.name.clone()));
                }
            }
            if let Some(n) = list.iter().max_by_key(|e| e.number) {
                links.push(("latest".into(), n.name.clone()));
            }
            for (name, target) in links {
                let target = format!("../../entries/{target}");
                let existing = t.dir_mut(dir).and_then(|c| c.get(&name).copied());
                match existing {
                    Some(i) => {
                        if let Kind::Link(old) = &mut t.nodes[i as usize - 1].kind {
                            *old = target;
                        }
                    }
                    None => {
                        let i = t.add(Kind::Link(target), when);
                        if let Some(c) = t.dir_mut(dir) {
                            c.insert(name, i);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The reader of `entry`'s volume, opened once.
    fn reader(&self, entry: &str) -> std::result::Result<Arc<ChainReader>, String> {
        let cell = {
            let mut m = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(entry.to_string()).or_default().clone()
        };
        cell.get_or_init(|| {
            let open = || -> Result<Arc<ChainReader>> {
                let e = self.repo.load(entry)?;
                let chain = self.repo.chain(&e)?;
                let deltas = crate::build::open_deltas(&self.repo, &chain, &e)?;
                Ok(Arc::new(ChainReader::open(deltas, self.cache.clone())?))
            };
            open().map_err(|e| format!("entry {entry}: {e}"))
        })
        .clone()
    }

    /// The guest view of the disk whose top link is `top` in `entry`, opened once.
    fn disk(&self, entry: &str, top: &str) -> std::result::Result<Arc<vmdk_parse::Disk>, String> {
        let cell = {
            let mut m = self.disks.lock().unwrap_or_else(|p| p.into_inner());
            m.entry((entry.to_string(), top.to_string()))
                .or_default()
                .clone()
        };
        cell.get_or_init(|| {
            let reader = self.reader(entry)?;
            let manifest = self
                .read_tree()
                .manifests
                .get(entry)
                .cloned()
                .ok_or_else(|| format!("entry {entry} is not in the mount"))?;
            let source = EntryFiles {
                files: manifest
                    .files
                    .iter()
                    .map(|f| (PathBuf::from(&f.path), (f.offset, f.size)))
                    .collect(),
                reader,
            };
            vmdk_parse::Disk::open_with(
                Path::new(top),
                &vmdk_parse::OpenOptions {
                    root: Some(PathBuf::new()),
                    source: Some(Arc::new(source)),
                    ..Default::default()
                },
            )
            .map(Arc::new)
            .map_err(|e| format!("entry {entry}: {top}: {e}"))
        })
        .clone()
    }

    /// Fill guest folder `ino` (entry `entry`) with one image per disk of the entry's `.vmx`.
    fn fill_guest(&self, ino: u64, entry: &str) {
        let disks = self.disks_of(entry);
        let mut names: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for top in disks {
            let size = match self.disk(entry, &top) {
                Ok(d) => d.capacity(),
                Err(msg) => {
                    (self.warn)(&format!("guest/{entry}: {msg}"));
                    continue;
                }
            };
            let stem = Path::new(&top)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("disk")
                .to_string();
            let mut name = format!("{stem}.raw");
            let mut n = 2;
            while names.contains_key(&name) {
                name = format!("{stem}-{n}.raw");
                n += 1;
            }
            names.insert(name, (top, size));
        }
        let mut t = self.write_tree();
        let when = t.node(ino).map_or(UNIX_EPOCH, |n| n.mtime);
        if matches!(
            t.node(ino).map(|n| &n.kind),
            Some(Kind::GuestDir(_, Some(_)))
        ) {
            return;
        }
        let mut children = BTreeMap::new();
        for (name, (top, size)) in names {
            let i = t.add(
                Kind::Guest {
                    entry: entry.to_string(),
                    top,
                    size,
                },
                when,
            );
            children.insert(name, i);
        }
        if let Some(Kind::GuestDir(_, c)) = t.nodes.get_mut(ino as usize - 1).map(|n| &mut n.kind) {
            *c = Some(children);
        }
    }

    /// The top links of the disks the entry's `.vmx` names (present ones, stored in the entry).
    fn disks_of(&self, entry: &str) -> Vec<String> {
        let Some(manifest) = self.read_tree().manifests.get(entry).cloned() else {
            return Vec::new();
        };
        let Ok(reader) = self.reader(entry) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for f in manifest.files.iter().filter(|f| f.role == "config") {
            if f.size > 4 << 20 {
                continue;
            }
            let mut bytes = vec![0u8; f.size as usize];
            if let Err(e) = reader.read_at(f.offset, &mut bytes) {
                (self.warn)(&format!("entries/{entry}/{}: {e}", f.path));
                continue;
            }
            let Ok(doc) = vmx_parse::Document::parse(Path::new(&f.path), &bytes) else {
                continue;
            };
            let folder = Path::new(&f.path).parent().unwrap_or(Path::new(""));
            for d in vmx_parse::VmConfig::from_document(&doc).disks {
                if !d.present || Path::new(&d.file_name).is_absolute() {
                    continue;
                }
                let p = lexical(&folder.join(&d.file_name));
                if manifest.file(&p).is_some() && !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, size) = match &node.kind {
            Kind::Dir(_) | Kind::GuestDir(..) => (FileType::Directory, 0o555, 0),
            Kind::Stored { size, mode, .. } => {
                (FileType::RegularFile, (*mode & 0o7777) as u16, *size)
            }
            Kind::Guest { size, .. } => (FileType::RegularFile, 0o444, *size),
            Kind::Link(t) => (FileType::Symlink, 0o777, t.len() as u64),
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    /// The children of folder `ino`, filling a guest folder first.
    fn children(&self, ino: u64) -> Option<Vec<(String, u64)>> {
        // The top-level folders and vms/NAME grow as entries are saved; an entry's own folders
        // never change, but telling them apart costs more than the rate-limited look.
        if matches!(
            self.read_tree().node(ino).map(|n| &n.kind),
            Some(Kind::Dir(_))
        ) {
            if let Err(e) = self.refresh(false) {
                (self.warn)(&format!("reading the entries: {e}"));
            }
        }
        let guest = match self.read_tree().node(ino).map(|n| &n.kind) {
            Some(Kind::GuestDir(e, None)) => Some(e.clone()),
            _ => None,
        };
        if let Some(e) = guest {
            self.fill_guest(ino, &e);
        }
        let t = self.read_tree();
        match &t.node(ino)?.kind {
            Kind::Dir(c) | Kind::GuestDir(_, Some(c)) => {
                Some(c.iter().map(|(n, i)| (n.clone(), *i)).collect())
            }
            Kind::GuestDir(_, None) => Some(Vec::new()),
            _ => None,
        }
    }

    /// Read `len` bytes at `offset` of file `ino`.
    fn read(&self, ino: u64, offset: u64, len: u32) -> std::result::Result<Vec<u8>, (i32, String)> {
        let what = {
            let t = self.read_tree();
            match t.node(ino).map(|n| &n.kind) {
                Some(Kind::Stored {
                    entry,
                    offset: at,
                    size,
                    ..
                }) => (entry.clone(), None, *at, *size),
                Some(Kind::Guest { entry, top, size }) => {
                    (entry.clone(), Some(top.clone()), 0, *size)
                }
                Some(Kind::Dir(_) | Kind::GuestDir(..)) => {
                    return Err((libc::EISDIR, String::new()))
                }
                _ => return Err((libc::EINVAL, String::new())),
            }
        };
        let (entry, top, at, size) = what;
        if offset >= size {
            return Ok(Vec::new());
        }
        let n = (len as u64).min(size - offset) as usize;
        let mut buf = vec![0u8; n];
        match top {
            None => {
                let r = self.reader(&entry).map_err(|m| (libc::EIO, m))?;
                let got = r
                    .read_at(at + offset, &mut buf)
                    .map_err(|e| (libc::EIO, format!("entry {entry}: {e}")))?;
                if got != n {
                    return Err((libc::EIO, format!("entry {entry}: its volume ends early")));
                }
            }
            Some(top) => {
                let d = self.disk(&entry, &top).map_err(|m| (libc::EIO, m))?;
                d.read_at(&mut buf, offset)
                    .map_err(|e| (libc::EIO, format!("entry {entry}: {top}: {e}")))?;
            }
        }
        Ok(buf)
    }

    /// Inflate the records bytes `[offset, offset + len)` of stored file `ino` need (guest
    /// images: nothing; their reads go through the disk's grain tables).
    fn prefetch(&self, ino: u64, offset: u64, len: u64) {
        let (entry, at, size) = match self.read_tree().node(ino).map(|n| &n.kind) {
            Some(Kind::Stored {
                entry,
                offset: at,
                size,
                ..
            }) => (entry.clone(), *at, *size),
            _ => return,
        };
        if offset >= size {
            return;
        }
        if let Ok(r) = self.reader(&entry) {
            r.prefetch(at + offset, len.min(size - offset));
        }
    }

    /// The guest image's map, made once: `(offset, length, data)` in order, neighbours of one
    /// kind merged; zero and unallocated ranges are holes.
    fn guest_map(&self, entry: &str, top: &str) -> std::result::Result<Arc<GuestMap>, String> {
        let cell = {
            let mut m = self.maps.lock().unwrap_or_else(|p| p.into_inner());
            m.entry((entry.to_string(), top.to_string()))
                .or_default()
                .clone()
        };
        cell.get_or_init(|| {
            let d = self.disk(entry, top)?;
            let mut out: GuestMap = Vec::new();
            for r in d.map() {
                let r = r.map_err(|e| format!("entry {entry}: {top}: {e}"))?;
                let data = r.state == vmdk_parse::State::Data;
                match out.last_mut() {
                    Some((_, l, k)) if *k == data => *l += r.length,
                    _ => out.push((r.offset, r.length, data)),
                }
            }
            Ok(Arc::new(out))
        })
        .clone()
    }

    /// `SEEK_DATA` (`data`) or `SEEK_HOLE` from `offset` in file `ino`: the offset of the first
    /// data (hole) at or after it, the end of the file for a hole, ENXIO when there is none.
    fn seek(&self, ino: u64, offset: u64, data: bool) -> std::result::Result<u64, i32> {
        let kind = match self.read_tree().node(ino).map(|n| &n.kind) {
            Some(Kind::Stored {
                entry,
                offset: at,
                size,
                ..
            }) => (entry.clone(), None, *at, *size),
            Some(Kind::Guest { entry, top, size }) => (entry.clone(), Some(top.clone()), 0, *size),
            _ => return Err(libc::EINVAL),
        };
        let (entry, top, at, size) = kind;
        if offset >= size {
            return Err(libc::ENXIO);
        }
        let ranges: Vec<(u64, u64, bool)> = match top {
            None => {
                let r = self.reader(&entry).map_err(|_| libc::EIO)?;
                r.extents(at + offset, size - offset)
                    .into_iter()
                    .map(|(o, l, k)| (o - at, l, k == Extent::Data))
                    .collect()
            }
            Some(top) => {
                let map = self.guest_map(&entry, &top).map_err(|m| {
                    (self.warn)(&m);
                    libc::EIO
                })?;
                let first = map.partition_point(|&(o, l, _)| o + l <= offset);
                map[first..].to_vec()
            }
        };
        for (o, _, k) in ranges {
            if k == data {
                return Ok(o.max(offset));
            }
        }
        if data {
            Err(libc::ENXIO)
        } else {
            Ok(size)
        }
    }
}

/// `a/./b/../c` as `a/c` (names in a manifest have no `..`; names in descriptors may).
fn lexical(p: &Path) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n.to_str().unwrap_or("")),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.join("/")
}

/// An entry's stored files, for vmdk-parse: each a range of the entry's volume.
struct EntryFiles {
    files: HashMap<PathBuf, (u64, u64)>,
    reader: Arc<ChainReader>,
}

impl std::fmt::Debug for EntryFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntryFiles({} files)", self.files.len())
    }
}

struct EntryFile {
    offset: u64,
    size: u64,
    reader: Arc<ChainReader>,
}

impl vmdk_parse::ReadAt for EntryFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        self.reader
            .read_at(self.offset + offset, &mut buf[..n])
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

impl vmdk_parse::FileSource for EntryFiles {
    fn open(&self, path: &Path) -> io::Result<(Arc<dyn vmdk_parse::ReadAt>, u64)> {
        let key = PathBuf::from(lexical(path));
        let &(offset, size) = self
            .files
            .get(&key)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not stored in the entry"))?;
        Ok((
            Arc::new(EntryFile {
                offset,
                size,
                reader: self.reader.clone(),
            }),
            size,
        ))
    }
}

impl Filesystem for RepoFs {
    fn init(
        &mut self,
        _req: &Request<'_>,
        config: &mut fuser::KernelConfig,
    ) -> std::result::Result<(), libc::c_int> {
        // Sequential reads (cp, qemu-img convert) come in 1 MiB requests, the records' size,
        // rather than the kernel's default of 128 KiB: when the kernel allows no more, it says
        // what it allows.
        if let Err(most) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(most);
        }
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(libc::ENOENT);
        };
        let Some(children) = self.shared.children(parent) else {
            return reply.error(libc::ENOTDIR);
        };
        let Some(&(_, ino)) = children.iter().find(|(n, _)| n == name) else {
            return reply.error(libc::ENOENT);
        };
        let t = self.shared.read_tree();
        match t.node(ino) {
            Some(node) => reply.entry(&TTL, &self.shared.attr(ino, node), 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let t = self.shared.read_tree();
        match t.node(ino) {
            Some(node) => reply.attr(&TTL, &self.shared.attr(ino, node)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.shared.read_tree().node(ino).map(|n| &n.kind) {
            Some(Kind::Link(t)) => reply.data(t.as_bytes()),
            _ => reply.error(libc::EINVAL),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        match self.shared.read_tree().node(ino).map(|n| &n.kind) {
            // Entries never change: the kernel may keep what it read.
            Some(Kind::Stored { .. } | Kind::Guest { .. }) => {
                reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE)
            }
            Some(_) => reply.error(libc::EISDIR),
            None => reply.error(libc::ENOENT),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        // A read that continues the previous one of the same file starts inflating the records
        // of the next PREFETCH bytes on another thread, so sequential reads (cp, qemu-img
        // convert, debugfs dump) use every core, as a build does.
        let ahead = {
            let mut s = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            let st = s.entry(ino).or_default();
            let sequential = st.0 == offset;
            st.0 = offset + u64::from(size);
            let from = st.1.max(st.0);
            if sequential && from < st.0 + PREFETCH {
                st.1 = st.0 + PREFETCH;
                Some((from, st.1 - from))
            } else {
                None
            }
        };
        if let Some((from, len)) = ahead {
            let shared = self.shared.clone();
            self.pool.spawn(move || shared.prefetch(ino, from, len));
        }
        let shared = self.shared.clone();
        // On a thread of the pool: the session goes on taking requests meanwhile.
        self.pool
            .spawn(move || match shared.read(ino, offset, size) {
                Ok(buf) => reply.data(&buf),
                Err((code, msg)) => {
                    if !msg.is_empty() {
                        (shared.warn)(&msg);
                    }
                    reply.error(code)
                }
            });
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(children) = self.shared.children(ino) else {
            return reply.error(libc::ENOTDIR);
        };
        let t = self.shared.read_tree();
        let mut all: Vec<(u64, FileType, String)> = vec![
            (ino, FileType::Directory, ".".into()),
            (ROOT, FileType::Directory, "..".into()),
        ];
        for (name, i) in children {
            let kind = match t.node(i).map(|n| &n.kind) {
                Some(Kind::Dir(_) | Kind::GuestDir(..)) => FileType::Directory,
                Some(Kind::Link(_)) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            all.push((i, kind, name));
        }
        for (k, (i, kind, name)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(i, (k + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let files = self.shared.read_tree().nodes.len() as u64;
        reply.statfs(0, 0, 0, files, 0, 1 << 20, 255, 1 << 20);
    }

    fn lseek(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            // The kernel answers SEEK_SET/CUR/END itself.
            _ => return reply.error(libc::EINVAL),
        };
        match self.shared.seek(ino, off, data) {
            Ok(o) => reply.offset(o as i64),
            Err(code) => reply.error(code),
        }
    }
}

/// Refuse what cannot be mounted on, with one clear reason: a missing path, a file, a folder
/// that is not empty; and a machine without FUSE (`/dev/fuse`, `fusermount3`).
pub fn check_mountpoint(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::Missing(format!(
            "mount point {} does not exist (make an empty folder)",
            path.display()
        )),
        _ => Error::Io {
            what: format!("mount point {}", path.display()),
            source: e,
        },
    })?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "mount point {} is not a folder",
            path.display()
        )));
    }
    let mut list = std::fs::read_dir(path).map_err(|e| Error::Io {
        what: format!("mount point {}", path.display()),
        source: e,
    })?;
    if list.next().is_some() {
        return Err(Error::Usage(format!(
            "mount point {} is not empty",
            path.display()
        )));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::Unsupported(
            "FUSE is not available here (no /dev/fuse; load the fuse module)".into(),
        ));
    }
    let found = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    if !found("fusermount3") && !found("fusermount") {
        return Err(Error::Unsupported(
            "fusermount3 is missing (Debian: apt-get install fuse3)".into(),
        ));
    }
    Ok(())
}

/// Mount `fs` read-only at `mountpoint` and serve it until it is unmounted from outside
/// (`fusermount3 -u`) or `stop` returns true (then unmount). Checked every 100 ms.
pub fn serve(fs: RepoFs, mountpoint: &Path, stop: impl Fn() -> bool) -> Result<()> {
    let options = [
        fuser::MountOption::RO,
        fuser::MountOption::FSName("vrepo".into()),
        fuser::MountOption::Subtype("vrepo".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    let session = fuser::spawn_mount2(fs, mountpoint, &options).map_err(|e| Error::Io {
        what: format!("mounting on {}", mountpoint.display()),
        source: e,
    })?;
    while !stop() && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Dropping the session unmounts (when still mounted) and ends its thread.
    drop(session);
    Ok(())
}
