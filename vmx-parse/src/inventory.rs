//! The inventory of a VM: every file that belongs to it, with its role.
//!
//! Starts from the `.vmx` and what it names (the `.vmxf`, the NVRAM, each disk's current leaf,
//! the suspend state, the swap file), follows each disk's whole snapshot chain through
//! vmdk-parse (descriptor and extent files, with their depth in the chain), reads the `.vmsd`
//! next to the `.vmx` for the snapshot state files, then lists the rest of the VM's folder and
//! gives each entry a role by its name. Lock folders (`*.lck`) are reported: the VM may be
//! running, and its files may be changing.
//!
//! VMware may keep snapshot links and states in another folder, `workingDir`; a link there
//! names its parent `../disk.vmdk`. The root stays the `.vmx`'s folder, so such a chain is
//! followed when `workingDir` is inside it, every path is listed with its `..` applied
//! (`disk.vmdk`, not `snapshots/../disk.vmdk`), and the `workingDir` folder is listed too.
//!
//! Path policy (as vmdk-parse's, `docs/vmdk-parse.md`): the root is the `.vmx`'s folder. A disk
//! whose name leaves it (`..` climbing out, an absolute path elsewhere, a symbolic link leading
//! out) is refused ([`crate::ErrorKind::Refused`]) unless `allow_outside`, because following a
//! disk means reading it. Other named files that leave the folder are listed with
//! `inside_folder: false` and not looked at (`exists: None`), so a crafted `.vmx` cannot probe
//! which files exist elsewhere.

use crate::document::Document;
use crate::error::{Error, Result};
use crate::view::VmConfig;
use crate::vmsd::SnapshotTree;
use serde::Serialize;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use vmdk_parse::disk::tidy_path;
use vmdk_parse::{Disk, LinkFormat, OpenOptions};

/// What a file is to its VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The `.vmx`.
    Config,
    /// The `.vmxf` (`extendedConfigFile`).
    Vmxf,
    /// The `.vmsd` snapshot database.
    Vmsd,
    /// The BIOS/EFI variables (`nvram`).
    Nvram,
    /// A text descriptor of a disk chain link (its data is in extents).
    DiskDescriptor,
    /// A file holding disk data: an extent of a descriptor, or a link that is its own extent
    /// (a hosted monolithicSparse link, a raw file).
    DiskExtent,
    /// A file of a disk chain whose kind is unknown because it is missing or unreadable.
    DiskLink,
    /// A snapshot's state (`.vmsn`).
    SnapshotState,
    /// The suspend state (`.vmss`, `checkpoint.vmState`).
    Suspend,
    /// Guest memory (`.vmem`).
    Memory,
    /// `vmware.log`, `vmware-N.log`.
    Log,
    /// A `*.lck` lock (usually a folder): the VM may be running.
    Lock,
    /// A swap file (`.vswp`).
    Swap,
    /// Anything else in the folder.
    Other,
}

/// One file of the inventory.
#[derive(Clone, Debug, Serialize)]
pub struct FileRecord {
    /// The path, relative to the current folder as the `.vmx` path was given.
    pub path: String,
    pub role: Role,
    /// Size of a regular file; `None` for folders and files missing or not looked at.
    pub size_bytes: Option<u64>,
    /// `None` when the file was not looked at (outside the folder, see the path policy).
    pub exists: Option<bool>,
    pub inside_folder: bool,
    /// The device whose disk chain holds this file (`scsi0:0`).
    pub disk: Option<String>,
    /// Place in that chain: 0 for the leaf the `.vmx` names, 1 for its parent, ...
    pub depth: Option<u32>,
    /// What is wrong with this file, if anything (a chain that cannot be followed, a CID
    /// mismatch, an unreadable `.vmsd`).
    pub problem: Option<String>,
}

/// How to build the inventory.
#[derive(Clone, Debug, Default)]
pub struct FilesOptions {
    /// Follow disk paths that leave the VM's folder. Default: refuse them.
    pub allow_outside: bool,
}

/// The files of a VM.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub files: Vec<FileRecord>,
}

impl Inventory {
    /// Lock files or folders were found: the VM may be running.
    pub fn locks(&self) -> impl Iterator<Item = &FileRecord> {
        self.files.iter().filter(|f| f.role == Role::Lock)
    }
}

/// Whether `..` components of a relative path climb above its start.
fn lexically_escapes(rel: &Path) -> bool {
    let mut depth: i64 = 0;
    for c in rel.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// The role of a folder entry from its name alone.
pub fn role_by_name(name: &str) -> Role {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "lck" => Role::Lock,
        "log" if lower.starts_with("vmware") => Role::Log,
        "vswp" => Role::Swap,
        "vmem" => Role::Memory,
        "vmsn" => Role::SnapshotState,
        "vmss" => Role::Suspend,
        "nvram" => Role::Nvram,
        "vmsd" => Role::Vmsd,
        "vmxf" => Role::Vmxf,
        _ => Role::Other,
    }
}

struct Builder<'a> {
    vmx: &'a Path,
    /// The `.vmx`'s folder as given (empty for a bare file name).
    dir: PathBuf,
    /// The same, canonical: the root of the path policy.
    root: PathBuf,
    opts: &'a FilesOptions,
    seen: HashSet<PathBuf>,
    files: Vec<FileRecord>,
}

impl Builder<'_> {
    fn join(&self, name: &str) -> PathBuf {
        let n = Path::new(name);
        if n.is_absolute() || self.dir.as_os_str().is_empty() {
            n.to_path_buf()
        } else {
            self.dir.join(n)
        }
    }

    fn lexically_inside(&self, name: &str) -> bool {
        let n = Path::new(name);
        if n.is_absolute() {
            n.strip_prefix(&self.root)
                .is_ok_and(|r| !lexically_escapes(r))
        } else {
            !lexically_escapes(n)
        }
    }

    /// Inside the root for real (symbolic links resolved); for a missing file, whether the
    /// folder it would be in is; `None` if neither can be resolved.
    fn really_inside(&self, path: &Path) -> Option<bool> {
        if let Ok(c) = path.canonicalize() {
            return Some(c.starts_with(&self.root));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        parent
            .canonicalize()
            .ok()
            .map(|c| c.starts_with(&self.root))
    }

    /// Record `path` once; later mentions of the same file are dropped.
    fn push(&mut self, path: &Path, mut rec: FileRecord) {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if self.seen.insert(key) {
            // `snapshots/../disk.vmdk` (a parent named from VMware's workingDir) is listed
            // as `disk.vmdk`: one file, one name, which vrepo can store.
            rec.path = tidy_path(path).to_string_lossy().into_owned();
            self.files.push(rec);
        }
    }

    /// Look at a file we may look at, and record it.
    fn push_stat(
        &mut self,
        path: &Path,
        role: Role,
        disk: Option<String>,
        depth: Option<u32>,
        mut problem: Option<String>,
    ) {
        let (exists, size_bytes) = match fs::metadata(path) {
            Ok(m) => (Some(true), m.is_file().then_some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Some(false), None),
            Err(e) => {
                problem.get_or_insert_with(|| e.to_string());
                (None, None)
            }
        };
        let inside_folder = self.really_inside(path).unwrap_or_else(|| {
            let rel = path
                .strip_prefix(&self.dir)
                .or_else(|_| path.strip_prefix(&self.root));
            rel.is_ok_and(|r| !lexically_escapes(r))
        });
        self.push(
            path,
            FileRecord {
                path: String::new(),
                role,
                size_bytes,
                exists,
                inside_folder,
                disk,
                depth,
                problem,
            },
        );
    }

    /// A file the configuration names (not a disk): looked at only if the policy allows.
    fn push_named(&mut self, name: &str, role: Role, disk: Option<String>) {
        let path = self.join(name);
        if !self.opts.allow_outside && !self.lexically_inside(name) {
            self.push(
                &path,
                FileRecord {
                    path: String::new(),
                    role,
                    size_bytes: None,
                    exists: None,
                    inside_folder: false,
                    disk,
                    depth: None,
                    problem: Some(
                        "outside the VM's folder; not looked at (use --allow-outside)".into(),
                    ),
                },
            );
            return;
        }
        self.push_stat(&path, role, disk, None, None);
    }

    fn refuse(&self, node: &str, name: &str) -> Error {
        Error::refused(
            self.vmx,
            format!(
                "{node}.fileName {name:?} leaves the VM's folder {} (use --allow-outside to follow it)",
                self.root.display()
            ),
        )
    }

    fn push_disk(&mut self, node: &str, name: &str) -> Result<()> {
        let path = self.join(name);
        if !self.opts.allow_outside
            && (!self.lexically_inside(name) || self.really_inside(&path) == Some(false))
        {
            return Err(self.refuse(node, name));
        }
        let node_s = Some(node.to_string());
        if matches!(fs::metadata(&path), Err(e) if e.kind() == io::ErrorKind::NotFound) {
            self.push_stat(
                &path,
                Role::DiskLink,
                node_s,
                Some(0),
                Some(format!("the disk {node} names does not exist")),
            );
            return Ok(());
        }
        let open = OpenOptions {
            allow_outside: self.opts.allow_outside,
            tolerate_chain_problems: true,
            // The VM's folder, not the disk's: a disk in a subfolder may name `../base.vmdk`.
            root: Some(self.root.clone()),
            source: None,
        };
        let disk = match Disk::open_with(&path, &open) {
            Ok(d) => d,
            // The VM's folder is the root here: vmx-parse has no `--root` to suggest.
            Err(vmdk_parse::Error::Refused { path, what }) => {
                let what = what.replace(
                    "(use --root DIR or --allow-outside to follow it)",
                    "(use --allow-outside to follow it)",
                );
                return Err(vmdk_parse::Error::Refused { path, what }.into());
            }
            Err(e) if e.kind() == vmdk_parse::ErrorKind::Refused => return Err(e.into()),
            Err(e) => {
                // The chain cannot be followed: the leaf carries the reason, and a file the
                // chain names but that is missing is listed as such.
                self.push_stat(
                    &path,
                    Role::DiskLink,
                    node_s.clone(),
                    Some(0),
                    Some(e.to_string()),
                );
                let missing = match &e {
                    vmdk_parse::Error::Named {
                        path, role, source, ..
                    } if source.kind() == io::ErrorKind::NotFound => {
                        let role = match *role {
                            "extent" => Role::DiskExtent,
                            _ => Role::DiskLink,
                        };
                        Some((path, role))
                    }
                    vmdk_parse::Error::Io { path, source }
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        Some((path, Role::DiskLink))
                    }
                    _ => None,
                };
                if let Some((missing, role)) = missing.filter(|(m, _)| **m != path) {
                    let problem = format!("missing file of the disk chain of {node}");
                    self.push_stat(missing, role, node_s, None, Some(problem));
                }
                return Ok(());
            }
        };
        let size_of = |p: &Path| disk.files.iter().find(|f| f.path == p).map(|f| f.len);
        for (depth, link) in disk.links.iter().enumerate() {
            let role = match link.format {
                LinkFormat::Descriptor => Role::DiskDescriptor,
                _ => Role::DiskExtent,
            };
            let problem = (depth == 0 && !disk.chain_problems.is_empty())
                .then(|| disk.chain_problems.join("; "));
            let rec = FileRecord {
                path: String::new(),
                role,
                size_bytes: size_of(&link.path),
                exists: Some(true),
                inside_folder: self.really_inside(&link.path).unwrap_or(false),
                disk: node_s.clone(),
                depth: Some(depth as u32),
                problem,
            };
            self.push(&link.path, rec);
            for ext in &link.extents {
                let Some(f) = ext.file.and_then(|id| disk.files.get(id as usize)) else {
                    continue;
                };
                if f.path == link.path {
                    continue;
                }
                let rec = FileRecord {
                    path: String::new(),
                    role: Role::DiskExtent,
                    size_bytes: Some(f.len),
                    exists: Some(true),
                    inside_folder: self.really_inside(&f.path).unwrap_or(false),
                    disk: node_s.clone(),
                    depth: Some(depth as u32),
                    problem: None,
                };
                self.push(&f.path.clone(), rec);
            }
        }
        Ok(())
    }

    fn push_vmsd(&mut self) {
        let stem = self
            .vmx
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = self.join(&format!("{stem}.vmsd"));
        if !path.is_file() {
            return;
        }
        match Document::open(&path) {
            Err(e) => self.push_stat(&path, Role::Vmsd, None, None, Some(e.to_string())),
            Ok(doc) => {
                self.push_stat(&path, Role::Vmsd, None, None, None);
                let tree = SnapshotTree::from_document(&doc);
                for s in &tree.snapshots {
                    if let Some(f) = s.file_name.as_deref().filter(|f| !f.is_empty()) {
                        self.push_named(f, Role::SnapshotState, None);
                    }
                }
                // Disks as of each snapshot are normally links of the chains already listed;
                // any that are not (a disk removed since) are listed here.
                for s in &tree.snapshots {
                    for d in &s.disks {
                        if let Some(f) = d.file_name.as_deref().filter(|f| !f.is_empty()) {
                            self.push_named(f, Role::DiskLink, d.node.clone());
                        }
                    }
                }
            }
        }
    }

    /// The VM's `workingDir`, where VMware keeps snapshot links and states, when it is another
    /// folder: listed like the VM's own folder if it is inside it (or `allow_outside`);
    /// otherwise reported, not looked at.
    fn push_working_dir(&mut self, name: &str) -> Result<()> {
        let path = tidy_path(&self.join(name));
        if tidy_path(&self.join(".")) == path || self.dir == path {
            return Ok(());
        }
        if !self.opts.allow_outside
            && (!self.lexically_inside(name) || self.really_inside(&path) == Some(false))
        {
            self.push(
                &path,
                FileRecord {
                    path: String::new(),
                    role: Role::Other,
                    size_bytes: None,
                    exists: None,
                    inside_folder: false,
                    disk: None,
                    depth: None,
                    problem: Some(
                        "workingDir outside the VM's folder; not looked at (use --allow-outside)"
                            .into(),
                    ),
                },
            );
            return Ok(());
        }
        if path.is_dir() {
            self.push_folder(&path)?;
        }
        Ok(())
    }

    /// Every entry of `dir` (the VM's folder as given, empty for the current folder).
    fn push_folder(&mut self, dir: &Path) -> Result<()> {
        let given = dir;
        let dir = if given.as_os_str().is_empty() {
            Path::new(".")
        } else {
            given
        };
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| Error::io(dir, e))?;
        names.sort();
        for name in names {
            let shown = name.to_string_lossy();
            let path = if given.as_os_str().is_empty() {
                PathBuf::from(&name)
            } else {
                given.join(&name)
            };
            let role = role_by_name(&shown);
            if self.really_inside(&path) == Some(false) && !self.opts.allow_outside {
                // A symbolic link leading out: listed, not followed.
                let rec = FileRecord {
                    path: String::new(),
                    role,
                    size_bytes: None,
                    exists: None,
                    inside_folder: false,
                    disk: None,
                    depth: None,
                    problem: Some("a symbolic link leading out of the VM's folder".into()),
                };
                self.push(&path, rec);
                continue;
            }
            self.push_stat(&path, role, None, None, None);
        }
        Ok(())
    }
}

/// The inventory of the VM whose configuration `doc` was read from `vmx`.
pub fn inventory(vmx: &Path, doc: &Document, opts: &FilesOptions) -> Result<Inventory> {
    let dir = vmx.parent().map(Path::to_path_buf).unwrap_or_default();
    let root_dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &dir
    };
    let root = root_dir
        .canonicalize()
        .map_err(|e| Error::io(root_dir, e))?;
    let mut b = Builder {
        vmx,
        dir,
        root,
        opts,
        seen: HashSet::new(),
        files: Vec::new(),
    };
    let config = VmConfig::from_document(doc);
    b.push_stat(vmx, Role::Config, None, None, None);
    if let Some(f) = &config.extended_config_file {
        b.push_named(f, Role::Vmxf, None);
    }
    if let Some(f) = &config.nvram {
        b.push_named(f, Role::Nvram, None);
    }
    for d in &config.disks {
        b.push_disk(&d.node, &d.file_name)?;
    }
    b.push_vmsd();
    if let Some(f) = &config.suspend_state {
        b.push_named(f, Role::Suspend, None);
    }
    if let Some(f) = &config.swap_file {
        b.push_named(f, Role::Swap, None);
    }
    let dir = b.dir.clone();
    b.push_folder(&dir)?;
    let working_dir = doc
        .get("workingDir")
        .map(str::trim)
        .filter(|w| !w.is_empty());
    if let Some(w) = working_dir {
        b.push_working_dir(w)?;
    }
    Ok(Inventory { files: b.files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_name() {
        assert_eq!(role_by_name("vm.vmx.lck"), Role::Lock);
        assert_eq!(role_by_name("vmware-2.log"), Role::Log);
        assert_eq!(role_by_name("other.log"), Role::Other);
        assert_eq!(role_by_name("vmx-vm-1234.vswp"), Role::Swap);
        assert_eq!(role_by_name("VM-Snapshot1.VMSN"), Role::SnapshotState);
        assert_eq!(role_by_name("vm-abc.vmem"), Role::Memory);
        assert_eq!(role_by_name("disk-ctk.vmdk"), Role::Other);
    }

    #[test]
    fn escapes() {
        assert!(lexically_escapes(Path::new("../x")));
        assert!(lexically_escapes(Path::new("a/../../x")));
        assert!(!lexically_escapes(Path::new("a/../x")));
        assert!(!lexically_escapes(Path::new("./sub/x.vmdk")));
    }
}
