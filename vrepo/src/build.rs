//! `build`: recreate an entry's VM in a working area.
//!
//! The entry's chain (its tree's full entry first) is handed to vpatch as one chain of deltas:
//! vpatch resolves where every block of the volume lives across the chain before reading it,
//! so each stored block is read once whatever the chain length, and checks the volume's digest
//! at the end. The files are written under a temporary folder inside the working area and
//! renamed into place only after that check; a failed build leaves the working area as it was.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{unhex32, Entry};
use crate::owner::{own_tag, owner_of, Owner};
use crate::repo::Repo;
use crate::store;
use crate::volume::FilesSink;
use crate::workarea::BUILD_PREFIX;
use std::fs::{self, File, FileTimes};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Build into a working area that is not empty, replacing files of the same names.
    pub force: bool,
    /// fsync every file before renaming it into place.
    pub sync: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Built {
    pub entry: String,
    pub workarea: String,
    /// The entries read, full entry first.
    pub chain: Vec<String>,
    pub files: usize,
    /// Sum of the file sizes.
    pub bytes: u64,
    /// Data bytes written (holes and zero ranges are not written).
    pub written_bytes: u64,
    /// Set when the build is complete but the repository could not record it as the working
    /// area's entry (a full disk): the next save from it picks its parent as if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Remove `.vrepo-build-*` folders left in `root` by builds whose process is gone.
fn clean_build_leftovers(root: &Path) -> Result<()> {
    for e in fs::read_dir(root).at(root)? {
        let e = e.at(root)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".vrepo-build-") else {
            continue;
        };
        // `.vrepo-build-TAG`: the builds of another host into a shared folder are left alone.
        if owner_of(rest) == Owner::Gone {
            fs::remove_dir_all(e.path()).at(&e.path())?;
        }
    }
    Ok(())
}

/// Make sure every folder on the way to `rel` inside `root` is a real folder (created when
/// missing), never a symbolic link, so a rename cannot land outside the working area.
fn safe_parent(root: &Path, rel: &str) -> Result<PathBuf> {
    walk_parent(root, rel, true)
}

/// [`safe_parent`] with `create` false only checks (a missing folder is fine: it will be made).
fn walk_parent(root: &Path, rel: &str, create: bool) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len() - 1] {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Refused(format!(
                    "{}: is a symbolic link or a file, not a folder; refusing to build through it",
                    cur.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&cur).at(&cur)?;
            }
            Err(e) => return Err(Error::io(&cur, e)),
        }
    }
    Ok(cur)
}

pub type Progress = Option<Box<dyn Fn(u64, u64)>>;

/// Open the deltas of `chain` (full entry first, `entry` last), checked against their
/// manifests' sizes and linked up by their headers (vpatch checks every record and the volume
/// digest as it applies them).
pub fn open_deltas(repo: &Repo, chain: &[Entry], entry: &Entry) -> Result<Vec<vpatch::DeltaInput>> {
    // The deltas, checked against their manifests' sizes (vpatch checks every record and
    // the volume digest).
    let mut deltas = Vec::with_capacity(chain.len());
    for e in chain {
        let (f, len, plan) = repo
            .store
            .open_planned(&store::key_of(&e.name, store::DELTA))
            .map_err(|err| match err {
                Error::Missing(m) | Error::Corrupt(m) => {
                    Error::Corrupt(format!("entry {}: {}: {m}", e.name, store::DELTA))
                }
                Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    Error::Corrupt(format!("entry {}: {}: {source}", e.name, store::DELTA))
                }
                other => other,
            })?;
        if len != e.stored.delta.size {
            return Err(Error::Corrupt(format!(
                "entry {}: {} is {len} bytes, entry.json says {} (damaged)",
                e.name,
                store::DELTA,
                e.stored.delta.size
            )));
        }
        deltas.push(vpatch::DeltaInput {
            name: format!("entry {}", e.name),
            file: match plan {
                Some(p) => vpatch::DeltaFile::with_plan(f, len, p),
                None => vpatch::DeltaFile::new(f, len),
            },
        });
    }
    let headers = vpatch::read_headers(&mut deltas)?;
    let last = headers.last().expect("a chain has at least one entry");
    if Some(last.target_digest) != unhex32(&entry.volume.digest)
        || last.target_size != entry.volume.size
    {
        return Err(Error::Corrupt(format!(
            "entry {}: its delta does not produce the volume entry.json describes",
            entry.name
        )));
    }

    Ok(deltas)
}

/// Write `entry`'s files (whose chain is `chain`) under `tmp`, an empty folder: patched, their
/// volume digest checked, permissions and mtimes set. Returns the data bytes written.
pub fn write_files(
    repo: &Repo,
    chain: &[Entry],
    entry: &Entry,
    tmp: &Path,
    progress: Progress,
    sync: bool,
) -> Result<u64> {
    let deltas = open_deltas(repo, chain, entry)?;

    let mut files = Vec::with_capacity(entry.files.len());
    for f in &entry.files {
        let p = safe_parent(tmp, &f.path)?.join(f.path.rsplit('/').next().unwrap_or(""));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .at(&p)?;
        file.set_len(f.size).at(&p)?;
        files.push((f.offset, f.size, file, p));
    }
    let total = entry.vm_bytes();
    let mut sink = FilesSink::new(
        files,
        progress.map(|p| {
            p(total, 0);
            Box::new(move |n| p(total, n)) as Box<dyn Fn(u64)>
        }),
    );
    let applied = vpatch::apply(None, deltas, &mut sink);
    let files = sink.finish().doing(|| "writing the built files".into());
    let applied = applied?;
    let files = files?;
    for (f, file) in entry.files.iter().zip(&files) {
        let t = UNIX_EPOCH + Duration::from_nanos(f.mtime_ns.max(0) as u64);
        let p = tmp.join(&f.path);
        // Permission bits only: a hostile entry must not make setuid files.
        file.set_permissions(fs::Permissions::from_mode(f.mode & 0o777))
            .at(&p)?;
        file.set_times(FileTimes::new().set_modified(t).set_accessed(t))
            .at(&p)?;
        if sync {
            file.sync_all().at(&p)?;
        }
    }
    Ok(applied.written_bytes)
}

pub fn build(
    repo: &Repo,
    entry: &Entry,
    dir: &Path,
    opts: &BuildOptions,
    progress: Progress,
) -> Result<Built> {
    let chain = repo.chain(entry)?;
    // The working area.
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::Refused(format!("{}: not a folder", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).at(dir)?;
        }
        Err(e) => return Err(Error::io(dir, e)),
    }
    let root = dir.canonicalize().at(dir)?;
    clean_build_leftovers(&root)?;
    if !opts.force {
        let mut names = Vec::new();
        for e in fs::read_dir(&root).at(&root)? {
            names.push(e.at(&root)?.file_name().to_string_lossy().into_owned());
        }
        if !names.is_empty() {
            names.sort();
            return Err(Error::Refused(format!(
                "{}: not empty ({}{}); build into an empty folder, or add --force to replace files",
                dir.display(),
                names[..names.len().min(3)].join(", "),
                if names.len() > 3 { ", ..." } else { "" }
            )));
        }
    }

    let tmp = root.join(format!("{BUILD_PREFIX}build-{}", own_tag()));
    fs::create_dir(&tmp).at(&tmp)?;
    let result = (|| -> Result<Built> {
        let written = write_files(repo, &chain, entry, &tmp, progress, opts.sync)?;
        // Every destination is checked before the first rename, so a refusal leaves the
        // working area as it was.
        for f in &entry.files {
            walk_parent(&root, &f.path, false)?;
            let dest = root.join(&f.path);
            if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
                return Err(Error::Refused(format!(
                    "{}: a folder is in the way of a file of the entry",
                    dest.display()
                )));
            }
        }
        // Into place.
        for f in &entry.files {
            let parent = safe_parent(&root, &f.path)?;
            let dest = parent.join(f.path.rsplit('/').next().unwrap_or(""));
            let src = tmp.join(&f.path);
            fs::rename(&src, &dest).at(&dest)?;
        }
        Ok(Built {
            entry: entry.name.clone(),
            workarea: root.to_string_lossy().into_owned(),
            chain: chain.iter().map(|e| e.name.clone()).collect(),
            files: entry.files.len(),
            bytes: entry.vm_bytes(),
            written_bytes: written,
            warning: None,
        })
    })();
    let _ = fs::remove_dir_all(&tmp);
    let mut built = result?;
    if opts.sync {
        crate::repo::fsync_dir(&root)?;
    }
    // The working area is complete now: a record that cannot be written is reported only.
    if let Err(e) = repo.set_workarea_entry(&root, &entry.name, "build") {
        built.warning = Some(format!(
            "built {}, but could not record it as this working area's entry (the next save \
             from it picks its parent as if it was not): {e}",
            entry.name
        ));
    }
    Ok(built)
}
