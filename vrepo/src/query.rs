//! Read-only questions about a repository: the tree drawing, an entry's dependencies, the
//! difference between two entries, one file's bytes.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{Entry, FileEntry};
use crate::repo::Repo;
use crate::store;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// `12.3 MiB`.
pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < U.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[u])
    }
}

/// `2026-11-22T06:35:37.123456Z` → `2026-11-22 06:35`.
pub fn short_time(t: &str) -> String {
    if t.len() >= 16 {
        format!("{} {}", &t[..10], &t[11..16])
    } else {
        t.to_owned()
    }
}

/// One line describing an entry (for `list` and `tree`).
pub fn line(e: &Entry) -> String {
    let mut s = format!(
        "{:<5} {:<12} {:>10}  {}",
        e.name,
        e.mode.as_str(),
        human(e.stored_bytes()),
        short_time(&e.time)
    );
    if !e.tags.is_empty() {
        s.push_str(&format!("  [{}]", e.tags.join(", ")));
    }
    if let Some(snap) = &e.at_snapshot {
        s.push_str(&format!("  (snapshot {snap:?})"));
    }
    if !e.message.is_empty() {
        s.push_str(&format!("  {}", e.message.replace(['\n', '\r'], " ")));
    }
    s
}

/// The ASCII drawing of the repository's trees, grouped by VM: under a `vm NAME` line, each
/// entry of that VM whose parent is not of that VM (a full entry, or one standing on another
/// VM's entry, which is named) at the left, children below their parent, oldest first. Only the
/// VMs of `shown` are drawn; `all` holds every entry (to name parents of other VMs).
pub fn tree(shown: &[&Entry], all: &[Entry]) -> String {
    let by_name: HashMap<&str, &Entry> = all.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut kids: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for e in all {
        if let Some(p) = &e.parent {
            kids.entry(p.as_str()).or_default().push(e);
        }
    }
    let mut vms: Vec<&str> = Vec::new();
    for e in shown {
        if !vms.contains(&e.vm_name()) {
            vms.push(e.vm_name());
        }
    }
    vms.sort_unstable();
    let mut out = String::new();
    fn walk(
        out: &mut String,
        e: &Entry,
        prefix: &str,
        last: bool,
        root: bool,
        kids: &HashMap<&str, Vec<&Entry>>,
        by_name: &HashMap<&str, &Entry>,
    ) {
        let (branch, next) = if root {
            ("", String::new())
        } else if last {
            ("└── ", format!("{prefix}    "))
        } else {
            ("├── ", format!("{prefix}│   "))
        };
        let mut l = line(e);
        if root {
            match e.parent.as_deref().map(|p| (p, by_name.get(p))) {
                Some((p, Some(pe))) => {
                    l.push_str(&format!("  (on {p} of vm {})", pe.vm_name()));
                }
                Some((p, None)) => l.push_str(&format!("  (its parent {p} is missing)")),
                None => {}
            }
        }
        out.push_str(&format!("{prefix}{branch}{l}\n"));
        // Children of the same VM; those of other VMs are drawn under their own VM.
        let children: Vec<&Entry> = kids
            .get(e.name.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|c| c.vm_name() == e.vm_name())
            .collect();
        for (i, c) in children.iter().enumerate() {
            walk(out, c, &next, i + 1 == children.len(), false, kids, by_name);
        }
    }
    for vm in vms {
        out.push_str(&format!("vm {vm}\n"));
        for e in all.iter().filter(|e| e.vm_name() == vm) {
            // Roots: full entries, entries standing on another VM's, and orphans whose parent
            // is gone (drawn as roots so nothing is hidden).
            let root = match e.parent.as_deref() {
                None => true,
                Some(p) => by_name.get(p).is_none_or(|pe| pe.vm_name() != vm),
            };
            if root {
                walk(&mut out, e, "", true, true, &kids, &by_name);
            }
        }
    }
    out
}

/// How a file differs between two entries.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileDiff {
    pub path: String,
    /// `same`, `changed`, `added` or `removed`.
    pub status: &'static str,
    pub size_before: Option<u64>,
    pub size_after: Option<u64>,
    /// Bytes in blocks whose content differs (all of a file added or removed).
    pub changed_bytes: u64,
}

/// Which files changed between `a` and `b`, and how many bytes (by the stored block digests:
/// no data is read).
pub fn diff(repo: &Repo, a: &Entry, b: &Entry) -> Result<Vec<FileDiff>> {
    let (sa, sb) = rayon::join(
        || store::read_signature(repo, a),
        || store::read_signature(repo, b),
    );
    let (sa, sb) = (sa?, sb?);
    let mut paths: BTreeMap<&str, (Option<&FileEntry>, Option<&FileEntry>)> = BTreeMap::new();
    for f in &a.files {
        paths.entry(&f.path).or_default().0 = Some(f);
    }
    for f in &b.files {
        paths.entry(&f.path).or_default().1 = Some(f);
    }
    let bs = a.volume.block_size as u64;
    let mut out = Vec::new();
    for (path, (fa, fb)) in paths {
        let d = match (fa, fb) {
            (Some(x), None) => FileDiff {
                path: path.into(),
                status: "removed",
                size_before: Some(x.size),
                size_after: None,
                changed_bytes: x.size,
            },
            (None, Some(y)) => FileDiff {
                path: path.into(),
                status: "added",
                size_before: None,
                size_after: Some(y.size),
                changed_bytes: y.size,
            },
            (Some(x), Some(y)) if x.digest == y.digest => FileDiff {
                path: path.into(),
                status: "same",
                size_before: Some(x.size),
                size_after: Some(y.size),
                changed_bytes: 0,
            },
            (Some(x), Some(y)) => {
                let mut changed = 0u64;
                let n = x.size.max(y.size).div_ceil(bs);
                let same_bs = b.volume.block_size as u64 == bs;
                for i in 0..n {
                    let at = i * bs;
                    let len = bs.min(x.size.max(y.size) - at);
                    let row = |s: &vdiff::diff::Scan, f: &FileEntry| {
                        (at < f.size).then(|| {
                            let k = ((f.offset + at) / bs) as usize;
                            (s.kind(k), s.blocks[k])
                        })
                    };
                    let same = same_bs
                        && at + len <= x.size.min(y.size)
                        && match (row(&sa, x), row(&sb, y)) {
                            (Some((0, da)), Some((0, db))) => da == db,
                            (Some((ka, _)), Some((kb, _))) => ka != 0 && kb != 0,
                            _ => false,
                        };
                    if !same {
                        changed += len;
                    }
                }
                FileDiff {
                    path: path.into(),
                    status: "changed",
                    size_before: Some(x.size),
                    size_after: Some(y.size),
                    changed_bytes: changed,
                }
            }
            (None, None) => continue,
        };
        out.push(d);
    }
    Ok(out)
}

/// A folder in the repository's `tmp/` removed when dropped.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Build every file of `e` into a scratch folder of the repository.
pub fn materialize(repo: &Repo, e: &Entry) -> Result<Scratch> {
    let chain = repo.chain(e)?;
    let dir = Scratch(repo.tmp_dir("cat")?);
    crate::build::write_files(repo, &chain, e, &dir.0, None, false)?;
    Ok(dir)
}

/// Write one stored file of `e` to `out`: its bytes, or with `guest` the guest-visible
/// contents of the disk it is the top of.
pub fn cat(repo: &Repo, e: &Entry, file: &str, guest: bool, out: &mut dyn Write) -> Result<()> {
    let Some(f) = e.file(file) else {
        let names: Vec<&str> = e.files.iter().map(|f| f.path.as_str()).collect();
        return Err(Error::Missing(format!(
            "entry {} has no file {file:?} (it has {})",
            e.name,
            names.join(", ")
        )));
    };
    // vmdk-parse reads any other file as a raw image; that is not what --guest asks for.
    if guest && !f.role.starts_with("disk") {
        return Err(Error::Usage(format!(
            "{file} is not a disk of entry {} (its role is {}); --guest reads disks",
            e.name, f.role
        )));
    }
    let dir = materialize(repo, e)?;
    let path = dir.0.join(&f.path);
    if guest {
        let disk = vmdk_parse::Disk::open_with(
            &path,
            &vmdk_parse::OpenOptions {
                root: Some(dir.0.clone()),
                ..Default::default()
            },
        )?;
        vmdk_parse::cat::cat_to_writer(&disk, out).map_err(|err| Error::Io {
            what: format!("{file} (guest contents)"),
            source: io::Error::other(err.to_string()),
        })?;
        return Ok(());
    }
    let mut src = File::open(&path).at(&path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).at(&path)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .doing(|| "writing to stdout".into())?;
    }
    out.flush().doing(|| "writing to stdout".into())?;
    Ok(())
}
