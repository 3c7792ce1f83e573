//! Commands that rewrite or remove entries: `rm`, `rm --rebase`, `consolidate`. They run under
//! the exclusive lock.
//!
//! An entry is rewritten by *restaging* it: its volume is produced from its chain, then diffed
//! against the volume of its new parent (or none: a full entry) into a folder under `tmp/`, with
//! the same name, volume, files and history. Its volume is unchanged, so the entries that
//! depend on it (their deltas and relative signatures name its volume) stay valid.
//!
//! Crash safety: the staged folders are complete and fsynced before `journal.json` is written;
//! from then on the rewrite only rolls forward. Each staged folder replaces its entry in one
//! step (`renameat2(RENAME_EXCHANGE)`), and an entry is removed (renamed out of `entries/`)
//! only after every child no longer needs it. At every instant every entry can be built; a
//! killed rewrite is finished by the next command that gets the exclusive lock, and staged
//! folders of a rewrite killed before its journal are removed like any leftover.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{hex, parse_entry_name, Entry, Mode, Stored};
use crate::query::Scratch;
use crate::repo::{fsync_dir, read_small, write_atomic, Repo, ENTRIES, TMP};
use crate::store;
use crate::volume::{Part, Source, VolumeImage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use vdiff::diff::DiffOptions;
use vdiff::format::CHUNK_BYTES;

pub const JOURNAL: &str = "journal.json";
pub const JOURNAL_SCHEMA: &str = "vrepo.journal/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Swap {
    /// The entry replaced.
    pub entry: String,
    /// Its restaged folder, a name in `tmp/`.
    pub staged: String,
    /// The parent the restaged entry has.
    pub new_parent: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub schema: String,
    /// `rm`, `consolidate`.
    pub op: String,
    pub swaps: Vec<Swap>,
    /// Entries to remove once every swap is done.
    pub remove: Vec<String>,
}

/// What a rewrite did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rewritten {
    pub removed: Vec<String>,
    /// `(entry, its new parent or null)`.
    pub rewritten: Vec<(String, Option<String>)>,
}

/// Restage `e` relative to `new_parent` (`None`: a full entry). Returns the staged folder.
pub fn restage(repo: &Repo, e: &Entry, new_parent: Option<&Entry>, level: i32) -> Result<PathBuf> {
    let chain = repo.chain(e)?;
    let scratch = Scratch(repo.tmp_dir("volume")?);
    let raw = scratch.0.join("volume.raw");
    crate::build::write_volume(repo, &chain, e, &raw)?;
    let scan = store::read_signature(repo, e)?;
    let chunks = store::read_chunks(repo, e)?;
    let pdata = match new_parent {
        Some(p) => Some(store::load_parent(repo, p)?),
        None => None,
    };
    let staged = repo.tmp_dir("stage")?;
    let result = (|| -> Result<Entry> {
        // The relative signature maps chunks of the same file.
        let mut candidates: HashMap<u64, u64> = HashMap::new();
        if let Some(pd) = &pdata {
            for f in &e.files {
                if let Some(pf) = pd.entry.file(&f.path) {
                    for c in 0..f.size.min(pf.size).div_ceil(CHUNK_BYTES) {
                        candidates.insert(f.offset / CHUNK_BYTES + c, pf.offset / CHUNK_BYTES + c);
                    }
                }
            }
        }
        let map = |c: u64| candidates.get(&c).copied();
        let sig = staged.join(store::SIGNATURE);
        store::write_signature(
            &sig,
            &scan,
            pdata
                .as_ref()
                .map(|pd| (&pd.scan, &map as &store::ChunkMap)),
        )?;
        let ch = staged.join(store::CHUNKS);
        store::write_chunks(&ch, &chunks)?;
        let f = File::open(&raw).at(&raw)?;
        let img = VolumeImage::new(
            vec![Part {
                offset: 0,
                size: e.volume.size,
                source: Source::File(f),
                name: format!("the volume of {}", e.name),
            }],
            e.volume.size,
        );
        let dp = staged.join(store::DELTA);
        let out = File::create(&dp).at(&dp)?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let opts = DiffOptions {
            block_size: e.volume.block_size,
            level,
            index: true,
        };
        vdiff::diff::diff_scanned(pdata.map(|pd| pd.scan), scan, &img, opts, &mut w)?;
        w.flush().at(&dp)?;
        let out = w
            .into_inner()
            .map_err(|err| Error::io(&dp, err.into_error()))?;
        out.sync_all().at(&dp)?;
        let stored = |p: &Path| -> Result<Stored> {
            let (size, d) = store::blake3_file(p)?;
            Ok(Stored {
                size,
                blake3: hex(&d),
            })
        };
        let mut ne = e.clone();
        ne.parent = new_parent.map(|p| p.name.clone());
        ne.mode = match new_parent {
            None => Mode::Full,
            Some(p) if p.parent.is_none() && e.mode == Mode::Differential => Mode::Differential,
            Some(_) => Mode::Incremental,
        };
        ne.stored.delta = stored(&dp)?;
        ne.stored.signature = stored(&sig)?;
        ne.stored.chunks = stored(&ch)?;
        Ok(ne)
    })();
    match result {
        Ok(ne) => {
            let text = serde_json::to_string_pretty(&ne).expect("serializable") + "\n";
            let mf = staged.join("entry.json");
            let mut f = File::create(&mf).at(&mf)?;
            f.write_all(text.as_bytes())
                .and_then(|_| f.sync_all())
                .at(&mf)?;
            fsync_dir(&staged)?;
            Ok(staged)
        }
        Err(err) => {
            let _ = fs::remove_dir_all(&staged);
            Err(err)
        }
    }
}

fn journal_path(repo: &Repo) -> PathBuf {
    repo.root.join(JOURNAL)
}

/// The journal of a rewrite in progress, if any.
pub fn read_journal(repo: &Repo) -> Result<Option<Journal>> {
    let p = journal_path(repo);
    if !p.exists() {
        return Ok(None);
    }
    let bytes = read_small(&p, 1 << 20)?;
    let j: Journal = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", p.display())))?;
    if j.schema != JOURNAL_SCHEMA {
        return Err(Error::Corrupt(format!("{}: unknown schema", p.display())));
    }
    for s in &j.swaps {
        if parse_entry_name(&s.entry).is_none()
            || s.staged.contains('/')
            || s.staged.starts_with('.')
            || s.new_parent
                .as_deref()
                .is_some_and(|p| parse_entry_name(p).is_none())
        {
            return Err(Error::Corrupt(format!("{}: a bad step", p.display())));
        }
    }
    if j.remove.iter().any(|r| parse_entry_name(r).is_none()) {
        return Err(Error::Corrupt(format!("{}: a bad step", p.display())));
    }
    Ok(Some(j))
}

/// Carry out a journal: every swap not yet done, then the removals. Idempotent: a crash at
/// any point and a second run finish the same work.
pub fn apply_journal(repo: &Repo, j: &Journal) -> Result<()> {
    let entries = repo.root.join(ENTRIES);
    let tmp = repo.root.join(TMP);
    for s in &j.swaps {
        let staged = tmp.join(&s.staged);
        let cur = repo.entry_dir(&s.entry);
        let done = match repo.load(&s.entry) {
            Ok(e) => e.parent == s.new_parent,
            Err(_) => false,
        };
        if done || !staged.join("entry.json").exists() {
            continue;
        }
        if cur.exists() {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &cur,
                rustix::fs::CWD,
                &staged,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| Error::io(&cur, e.into()))?;
        } else {
            fs::rename(&staged, &cur).at(&cur)?;
        }
        fsync_dir(&entries)?;
    }
    fsync_dir(&tmp)?;
    let mut trash = Vec::new();
    for r in &j.remove {
        let d = repo.entry_dir(r);
        if d.exists() {
            let t = repo.tmp_dir("removed")?;
            fs::rename(&d, t.join(r)).at(&d)?;
            fsync_dir(&entries)?;
            trash.push(t);
        }
    }
    fs::remove_file(journal_path(repo)).at(&journal_path(repo))?;
    fsync_dir(&repo.root)?;
    // What is left in tmp/ (old copies, removed entries) goes now or with the next cleanup.
    for s in &j.swaps {
        let _ = fs::remove_dir_all(tmp.join(&s.staged));
    }
    for t in trash {
        let _ = fs::remove_dir_all(t);
    }
    let _ = repo.clean_leftovers();
    Ok(())
}

/// Finish a rewrite a killed command left behind. Call with the exclusive lock held.
pub fn recover(repo: &Repo) -> Result<bool> {
    match read_journal(repo)? {
        Some(j) => {
            apply_journal(repo, &j)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

fn run(repo: &Repo, j: Journal) -> Result<()> {
    let text = serde_json::to_string_pretty(&j).expect("serializable") + "\n";
    write_atomic(&journal_path(repo), text.as_bytes())?;
    apply_journal(repo, &j)
}

fn staged_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `rm ENTRY` (refused while entries depend on it) and `rm --rebase ENTRY` (its children are
/// first restaged onto its parent, or made full).
pub fn remove(repo: &Repo, e: &Entry, rebase: bool, level: i32) -> Result<Rewritten> {
    let all = repo.entries()?;
    let children: Vec<&Entry> = all
        .iter()
        .filter(|c| c.parent.as_deref() == Some(&e.name))
        .collect();
    if !children.is_empty() && !rebase {
        let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
        return Err(Error::Refused(format!(
            "{} is needed by {}; rm --rebase {} rewrites them first",
            e.name,
            names.join(", "),
            e.name
        )));
    }
    let new_parent = match &e.parent {
        Some(p) => Some(repo.load(p)?),
        None => None,
    };
    let mut swaps = Vec::new();
    let mut out = Rewritten::default();
    for c in &children {
        let staged = match restage(repo, c, new_parent.as_ref(), level) {
            Ok(s) => s,
            Err(err) => {
                for s in &swaps {
                    let s: &Swap = s;
                    let _ = fs::remove_dir_all(repo.root.join(TMP).join(&s.staged));
                }
                return Err(err);
            }
        };
        swaps.push(Swap {
            entry: c.name.clone(),
            staged: staged_name(&staged),
            new_parent: new_parent.as_ref().map(|p| p.name.clone()),
        });
        out.rewritten
            .push((c.name.clone(), new_parent.as_ref().map(|p| p.name.clone())));
    }
    run(
        repo,
        Journal {
            schema: JOURNAL_SCHEMA.into(),
            op: "rm".into(),
            swaps,
            remove: vec![e.name.clone()],
        },
    )?;
    out.removed.push(e.name.clone());
    Ok(out)
}

/// `consolidate ENTRY [--full]`: make the chain `e` needs shorter: restage it onto its
/// parent's parent, or (with `full`, or when its parent is already a full entry) as a full
/// entry.
pub fn consolidate(repo: &Repo, e: &Entry, full: bool, level: i32) -> Result<Rewritten> {
    let Some(p) = &e.parent else {
        return Ok(Rewritten::default());
    };
    let parent = repo.load(p)?;
    let new_parent = match (&parent.parent, full) {
        (Some(gp), false) => Some(repo.load(gp)?),
        _ => None,
    };
    let staged = restage(repo, e, new_parent.as_ref(), level)?;
    let np = new_parent.as_ref().map(|x| x.name.clone());
    run(
        repo,
        Journal {
            schema: JOURNAL_SCHEMA.into(),
            op: "consolidate".into(),
            swaps: vec![Swap {
                entry: e.name.clone(),
                staged: staged_name(&staged),
                new_parent: np.clone(),
            }],
            remove: vec![],
        },
    )?;
    Ok(Rewritten {
        removed: vec![],
        rewritten: vec![(e.name.clone(), np)],
    })
}
