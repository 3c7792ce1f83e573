//! A repository in a local folder: keys are paths under it.
//!
//! A new entry's files are written into `tmp/save-TAG-NANOS/` (each fsynced), and published by
//! writing `entry.json` into that folder and renaming it into `entries/` in one step, so an
//! entry is either absent or whole (`docs/vrepo.md`, "Crash safety").

use super::{Listed, Numbering, ReadAt, Stage, Storage, Upload};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{Entry, Stored};
use crate::owner::own_tag;
use crate::repo::{fsync_dir, read_small, write_atomic, write_manifest, ENTRIES, TMP};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Local {
    root: PathBuf,
}

impl Local {
    pub fn new(root: &Path) -> Local {
        Local {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

fn walk(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<Listed>) -> Result<()> {
    let it = match fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for e in it {
        let e = e.at(dir)?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let key = format!("{rel}{name}");
        // Only what can still match the prefix.
        if !(key.starts_with(prefix) || prefix.starts_with(&key)) {
            continue;
        }
        let meta = e.path().symlink_metadata().at(&e.path())?;
        if meta.is_dir() {
            walk(&e.path(), &format!("{key}/"), prefix, out)?;
        } else if meta.is_file() && key.starts_with(prefix) {
            out.push(Listed {
                key,
                size: meta.len(),
                modified_ns: meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos() as i128),
            });
        }
    }
    Ok(())
}

impl Storage for Local {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn get(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        match read_small(&self.path(key), cap) {
            Ok(b) => Ok(Some(b)),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let p = self.path(key);
        match fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    fn open(&self, key: &str) -> Result<(Arc<dyn ReadAt>, u64)> {
        let p = self.path(key);
        let f = File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::Missing(format!("{}: missing", p.display())),
            _ => Error::io(&p, e),
        })?;
        let len = f.metadata().at(&p)?.len();
        Ok((Arc::new(f), len))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path(key), bytes)
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        walk(&self.root, "", prefix, &mut out)?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(&p, e)),
            _ => Ok(()),
        }
    }

    fn stage(&self, _: &dyn Numbering) -> Result<Box<dyn Stage>> {
        Ok(Box::new(LocalStage {
            root: self.root.clone(),
            dir: Some(tmp_dir(&self.root, "save")?),
        }))
    }
}

/// A new temporary folder for a command of this process: `tmp/KIND-TAG-NANOS`.
pub fn tmp_dir(root: &Path, kind: &str) -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let p = root.join(TMP).join(format!("{kind}-{}-{nanos}", own_tag()));
    fs::create_dir(&p).at(&p)?;
    Ok(p)
}

/// An entry folder being prepared under `tmp/`; removed when dropped unpublished.
struct LocalStage {
    root: PathBuf,
    dir: Option<PathBuf>,
}

impl Drop for LocalStage {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir_all(d);
        }
    }
}

struct LocalUpload {
    file: File,
    path: PathBuf,
}

impl Write for LocalUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl vdiff::diff::DeltaOut for LocalUpload {
    fn rewrite_start(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, 0)
    }
}

impl Upload for LocalUpload {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn finish(self: Box<Self>) -> Result<Stored> {
        self.file.sync_all().at(&self.path)?;
        crate::store::stored_of(&self.path)
    }
}

impl Stage for LocalStage {
    fn upload(&mut self, file: &str) -> Result<Box<dyn Upload>> {
        let path = self.dir.as_ref().expect("not yet published").join(file);
        let f = File::create(&path).at(&path)?;
        Ok(Box::new(LocalUpload { file: f, path }))
    }

    fn publish(
        mut self: Box<Self>,
        entry: &mut Entry,
        n: &dyn Numbering,
    ) -> Result<Option<String>> {
        let tmp = self.dir.clone().expect("published once");
        let entries = self.root.join(ENTRIES);
        for _ in 0..1000 {
            let num = n.last_number()? + 1;
            entry.number = num;
            entry.name = format!("E{num}");
            // Tags are unique within a VM: check against entries as they are now.
            n.check_tags(entry)?;
            write_manifest(&tmp, entry)?;
            let dest = entries.join(&entry.name);
            match fs::rename(&tmp, &dest) {
                Ok(()) => {
                    self.dir = None;
                    // The entry is visible now: what fails after this (a full disk) must not
                    // make the save look failed, so it is only reported.
                    let done = fsync_dir(&entries).and_then(|_| n.bump_last(num));
                    return Ok(done.err().map(|e| {
                        format!(
                            "{} was saved, but the repository could not be updated after it: {e}",
                            entry.name
                        )
                    }));
                }
                Err(e)
                    if dest.exists()
                        || e.kind() == io::ErrorKind::AlreadyExists
                        || e.raw_os_error() == Some(39) =>
                {
                    continue
                }
                Err(e) => return Err(Error::io(&dest, e)),
            }
        }
        Err(Error::Io {
            what: "publishing the entry".into(),
            source: io::Error::other("too many concurrent saves"),
        })
    }
}
