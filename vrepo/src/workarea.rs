//! What a working area holds: its one VM, the files to store (with size, mtime, permissions and,
//! for disk links, CID), and the files skipped with their reason. Built on vmx-parse's
//! inventory, which follows every disk's snapshot chain.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{check_stored_path, Skipped, VmIdentity};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use vmx_parse::{Document, FilesOptions, Role, SnapshotTree, VmConfig};

/// Names vrepo itself uses inside a working area while building (never stored).
pub const BUILD_PREFIX: &str = ".vrepo-";

/// The content of a file to store.
#[derive(Clone, Debug)]
pub enum Content {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct WaFile {
    /// Relative, `/`-separated.
    pub rel: String,
    pub role: Role,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub cid: Option<String>,
    pub content: Content,
}

#[derive(Clone, Debug)]
pub struct WorkArea {
    /// Canonical path.
    pub root: PathBuf,
    pub vm: VmIdentity,
    /// Sorted by `rel`.
    pub files: Vec<WaFile>,
    pub skipped: Vec<Skipped>,
    /// With `at_snapshot`: the snapshot saved.
    pub snapshot: Option<String>,
    /// What the save should report but not refuse: damaged lines of the `.vmx` (bytes invalid
    /// in its encoding; VMware runs such VMs, and the file is stored byte for byte).
    pub warnings: Vec<String>,
}

/// The `.vmx` files at the top of a folder.
pub fn vmx_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).at(root)? {
        let e = e.at(root)?;
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if n.to_ascii_lowercase().ends_with(".vmx") && e.path().is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

fn role_name(r: Role) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".into())
}

pub fn role_str(r: Role) -> String {
    role_name(r)
}

pub fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// Inspect the working area `dir`. With `at_snapshot`, describe the VM as of its current
/// VMware snapshot instead of as it runs.
pub fn inspect(dir: &Path, at_snapshot: bool) -> Result<WorkArea> {
    let meta = fs::metadata(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Missing(format!("{}: no such working area", dir.display()))
        } else {
            Error::io(dir, e)
        }
    })?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "{}: a working area is a folder",
            dir.display()
        )));
    }
    let root = dir.canonicalize().at(dir)?;
    let vmxs = vmx_files(&root)?;
    let vmx = match vmxs.len() {
        0 => {
            return Err(Error::Missing(format!(
                "{}: no VM here (no .vmx file)",
                dir.display()
            )))
        }
        1 => vmxs[0].clone(),
        _ => {
            let names: Vec<String> = vmxs
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            return Err(Error::Refused(format!(
                "{}: a working area holds one VM, this one has {} ({})",
                dir.display(),
                names.len(),
                names.join(", ")
            )));
        }
    };
    let doc = Document::open(&vmx)?;
    let config = VmConfig::from_document(&doc);
    let inv = vmx_parse::inventory(&vmx, &doc, &FilesOptions::default()).map_err(outside)?;
    let rel_of = |p: &Path| -> Option<String> {
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        };
        // `snapshots/../disk.vmdk` is stored as `disk.vmdk` (vmx-parse lists it so already;
        // this keeps vrepo right whatever form it is given).
        let abs = vmdk_parse::disk::tidy_path(&abs);
        let r = abs.strip_prefix(&root).ok()?;
        let s = r.to_str()?.to_owned();
        check_stored_path(&s).ok()?;
        Some(s)
    };
    let vmx_rel = rel_of(&vmx).unwrap_or_else(|| "vm.vmx".into());

    // Running-VM check: lock folders mean VMware has the VM open.
    let locks: Vec<String> = inv
        .locks()
        .map(|f| rel_of(Path::new(&f.path)).unwrap_or_else(|| f.path.clone()))
        .collect();
    if !locks.is_empty() && !at_snapshot {
        return Err(Error::Refused(format!(
            "{}: the VM is running or was not shut down cleanly (lock {}); \
             save it with --at-snapshot after taking a VMware snapshot, or power it off",
            dir.display(),
            locks[0]
        )));
    }

    // CIDs of every disk link, and each disk's chain (leaf first) for --at-snapshot.
    let mut cids: HashMap<PathBuf, u32> = HashMap::new();
    let mut chains: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for d in &config.disks {
        let p = root.join(&d.file_name);
        if !p.exists() {
            return Err(Error::Missing(format!(
                "{}: disk {} ({}) is missing",
                dir.display(),
                d.node,
                d.file_name
            )));
        }
        let disk = vmdk_parse::Disk::open_with(
            &p,
            &vmdk_parse::OpenOptions {
                root: Some(root.clone()),
                ..Default::default()
            },
        )
        .map_err(outside)?;
        let mut chain = Vec::new();
        for l in &disk.links {
            let c = l.path.canonicalize().unwrap_or_else(|_| l.path.clone());
            if let Some(cid) = l.cid {
                cids.insert(c.clone(), cid);
            }
            chain.push(c);
        }
        chains.insert(d.node.clone(), chain);
    }

    // A disk chain that cannot be followed is an error, never a silent partial save. Opening
    // the disks above gave typed errors (a missing parent: missing, a CID mismatch: corrupt);
    // this catches what the inventory alone sees (a link of an older snapshot).
    for f in &inv.files {
        let disk_role = matches!(
            f.role,
            Role::DiskDescriptor | Role::DiskExtent | Role::DiskLink
        );
        if disk_role && f.depth.is_some() {
            // Missing before corrupt: a missing link also carries a problem text.
            if f.exists == Some(false) {
                return Err(Error::Missing(format!(
                    "{}: a file of disk {} is missing",
                    f.path,
                    f.disk.as_deref().unwrap_or("?")
                )));
            }
            if let Some(p) = &f.problem {
                return Err(Error::Corrupt(format!("{}: {p}", f.path)));
            }
        }
    }

    // --at-snapshot: which links are frozen, and the config as the snapshot recorded it.
    let mut exclude: HashMap<PathBuf, String> = HashMap::new();
    let mut vmx_bytes: Option<Vec<u8>> = None;
    let mut snapshot = None;
    if at_snapshot {
        let vmsd = vmx.with_extension("vmsd");
        let tree = if vmsd.exists() {
            SnapshotTree::from_document(&Document::open(&vmsd)?)
        } else {
            return Err(Error::Refused(format!(
                "{}: --at-snapshot needs a VMware snapshot, and the VM has none (no .vmsd)",
                dir.display()
            )));
        };
        let cur = tree
            .snapshots
            .iter()
            .find(|s| s.is_current)
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{}: --at-snapshot needs a current VMware snapshot, and the .vmsd names none",
                    dir.display()
                ))
            })?;
        snapshot = Some(
            cur.display_name
                .clone()
                .unwrap_or_else(|| format!("uid {}", cur.uid.unwrap_or(0))),
        );
        let mut doc2 = doc.clone();
        for d in &config.disks {
            let Some(sd) = cur.disks.iter().find(|x| {
                x.node
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&d.node))
            }) else {
                return Err(Error::Unsupported(format!(
                    "disk {} was added after the current snapshot; --at-snapshot cannot save it",
                    d.node
                )));
            };
            let Some(fname) = &sd.file_name else {
                return Err(Error::Corrupt(format!(
                    "{}: the snapshot names no file for disk {}",
                    vmsd.display(),
                    d.node
                )));
            };
            let frozen = root
                .join(fname)
                .canonicalize()
                .map_err(|e| Error::io(&root.join(fname), e))?;
            let chain = &chains[&d.node];
            let Some(k) = chain.iter().position(|c| c == &frozen) else {
                return Err(Error::Corrupt(format!(
                    "{}: the snapshot's disk {fname} is not in the chain of {}",
                    vmsd.display(),
                    d.node
                )));
            };
            for running in &chain[..k] {
                exclude.insert(running.clone(), "running delta above the snapshot".into());
            }
            doc2.set(&format!("{}.fileName", d.node), fname)?;
        }
        vmx_bytes = Some(doc2.to_bytes());
    }

    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in &inv.files {
        // A file of a disk's chain (a link or an extent) is stored, or the save fails naming
        // it: an entry without it could not rebuild the disk.
        let chain_file = f.depth.is_some()
            && matches!(
                f.role,
                Role::DiskDescriptor | Role::DiskExtent | Role::DiskLink
            );
        let chain_refusal = |name: &str, why: &str| {
            Error::Refused(format!(
                "{name}: a file of the chain of disk {} {why}; the entry could not rebuild the disk",
                f.disk.as_deref().unwrap_or("?")
            ))
        };
        let Some(rel) = rel_of(Path::new(&f.path)) else {
            if chain_file {
                return Err(match Path::new(&f.path).to_str() {
                    None => Error::Unsupported(format!(
                        "{}: a file of the chain of disk {} has a name vrepo cannot store (not UTF-8)",
                        f.path,
                        f.disk.as_deref().unwrap_or("?")
                    )),
                    Some(_) if f.inside_folder => {
                        chain_refusal(&f.path, "has a name vrepo cannot store")
                    }
                    Some(_) => chain_refusal(&f.path, "is outside the working area"),
                });
            }
            skipped.push(Skipped {
                path: f.path.clone(),
                reason: if f.inside_folder {
                    "a name vrepo cannot store (not UTF-8)".into()
                } else {
                    "outside the working area".into()
                },
            });
            continue;
        };
        if !seen.insert(rel.clone()) {
            continue;
        }
        if rel.split('/').any(|c| c.starts_with(BUILD_PREFIX)) {
            continue;
        }
        let skip = |reason: &str| Skipped {
            path: rel.clone(),
            reason: reason.into(),
        };
        match f.role {
            Role::Lock => {
                skipped.push(skip("lock"));
                continue;
            }
            Role::Swap => {
                skipped.push(skip("swap file"));
                continue;
            }
            _ => {}
        }
        let abs = root.join(&rel);
        let Ok(m) = fs::symlink_metadata(&abs) else {
            if chain_file {
                return Err(Error::Missing(format!(
                    "{rel}: a file of the chain of disk {} is missing",
                    f.disk.as_deref().unwrap_or("?")
                )));
            }
            skipped.push(skip("missing"));
            continue;
        };
        if !m.is_file() && chain_file {
            return Err(chain_refusal(
                &rel,
                "is not a regular file (vrepo stores regular files only)",
            ));
        }
        if !m.is_file() {
            skipped.push(skip(if m.is_dir() {
                "a folder"
            } else {
                "not a regular file"
            }));
            continue;
        }
        let canon = abs.canonicalize().unwrap_or_else(|_| abs.clone());
        if at_snapshot {
            if let Some(r) = exclude.get(&canon) {
                skipped.push(skip(r));
                continue;
            }
            let lower = rel.to_ascii_lowercase();
            let skip_running = match f.role {
                Role::Log => Some("log of the running VM"),
                Role::Suspend => Some("state of the running VM"),
                Role::Memory if !lower.contains("snapshot") => Some("memory of the running VM"),
                _ => None,
            };
            if let Some(r) = skip_running {
                skipped.push(skip(r));
                continue;
            }
        }
        let content = match (&vmx_bytes, f.role) {
            (Some(b), Role::Config) => Content::Bytes(b.clone()),
            _ => Content::Path(abs.clone()),
        };
        let size = match &content {
            Content::Bytes(b) => b.len() as u64,
            Content::Path(_) => m.len(),
        };
        files.push(WaFile {
            rel,
            role: f.role,
            size,
            mtime_ns: mtime_ns(&m),
            mode: m.permissions().mode() & 0o777,
            cid: cids.get(&canon).map(|c| format!("{c:08x}")),
            content,
        });
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    let warnings = doc
        .problems()
        .into_iter()
        .map(|p| {
            let key = p.key.map(|k| format!("{k}: ")).unwrap_or_default();
            format!("warning: {vmx_rel}: line {}: {key}{}", p.line, p.message)
        })
        .collect();
    Ok(WorkArea {
        root,
        vm: VmIdentity {
            name: None,
            vmx: vmx_rel,
            display_name: config.display_name.clone(),
            guest_os: config.guest_os.clone(),
            uuid_bios: config.uuid.bios.clone(),
            uuid_location: config.uuid.location.clone(),
        },
        files,
        skipped,
        snapshot,
        warnings,
    })
}

/// The path-policy refusals of vmx-parse and vmdk-parse suggest their own `--allow-outside`;
/// vrepo has none (it could not build such a file back inside a working area).
fn outside<E: Into<Error>>(e: E) -> Error {
    let e: Error = e.into();
    if e.kind() == crate::error::ErrorKind::Refused {
        let ours = "(vrepo saves only VMs whose files are inside the working area)";
        let m = e
            .to_string()
            .replace("(use --root DIR or --allow-outside to follow it)", ours)
            .replace("(use --allow-outside to follow it)", ours);
        return Error::Refused(m);
    }
    e
}
