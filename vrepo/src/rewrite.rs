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
use crate::manifest::{parse_entry_name, Entry, Mode};
use crate::repo::{fsync_dir, seal, write_atomic, Repo, Sealed, ENTRIES, TMP};
use crate::store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// The restaged entry's `entry.json.b3` (the BLAKE3 of its entry.json): the swap is done when
    /// the entry in place has it. Journals written before it was recorded tell a done swap by
    /// its parent alone, which a recompression (same parent) cannot use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<String>,
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
///
/// The volume is never written out: vpatch produces it from the chain (each stored byte read
/// once, the volume digest checked at the end) on its own thread, in batches handed to the
/// differ, which matches them against the new parent's block digests and compresses the
/// literals. The staged delta is kept only if vpatch's digest check passed.
pub fn restage(
    repo: &Repo,
    e: &Entry,
    new_parent: Option<&Entry>,
    level: Option<i32>,
) -> Result<PathBuf> {
    let chain = repo.chain(e)?;
    let deltas = crate::build::open_deltas(repo, &chain, e)?;
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
        let candidates = match &pdata {
            Some(pd) => store::chunk_candidates(&candidates, &chunks, &pd.chunks),
            None => candidates,
        };
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
        let dp = staged.join(store::DELTA);
        let out = File::create(&dp).at(&dp)?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let opts = DiffOptions {
            block_size: e.volume.block_size,
            level: level.unwrap_or(crate::save::default_level(new_parent.is_none())),
            index: true,
        };
        stream_diff(deltas, pdata.map(|pd| pd.scan), scan, opts, &mut w).map_err(
            |err| match err {
                Error::Io { what, source } if what.is_empty() => Error::Io {
                    what: dp.display().to_string(),
                    source,
                },
                other => other,
            },
        )?;
        w.flush().at(&dp)?;
        let out = w
            .into_inner()
            .map_err(|err| Error::io(&dp, err.into_error()))?;
        out.sync_all().at(&dp)?;
        let stored = store::stored_of;
        let mut ne = e.clone();
        // A rewritten entry of an older version is written as this version's, its VM named.
        ne.schema = crate::manifest::ENTRY_SCHEMA.into();
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
        Ok(ne) => match crate::repo::write_manifest(&staged, &ne) {
            Ok(()) => Ok(staged),
            Err(err) => {
                let _ = fs::remove_dir_all(&staged);
                Err(err)
            }
        },
        Err(err) => {
            let _ = fs::remove_dir_all(&staged);
            Err(err)
        }
    }
}

/// Apply `deltas` (the entry's chain) on a thread of its own and diff what they produce,
/// batch by batch, against `old` into `out`. An error of the producer (a damaged delta, the
/// volume digest) wins over the differ's, which only sees the stream stop.
fn stream_diff(
    deltas: Vec<vpatch::DeltaInput>,
    old: Option<vdiff::diff::Scan>,
    scan: vdiff::diff::Scan,
    opts: DiffOptions,
    out: &mut dyn Write,
) -> Result<()> {
    use std::sync::mpsc;
    let size = scan.size;
    // Batches go over one at a time (a rendezvous): the producer fills the next batch while
    // the differ works on the current one; their buffers come back for reuse.
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(0);
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let producer = s.spawn(move || -> Result<()> {
            let mut sink = BatchSink {
                size,
                start: 0,
                cur: Vec::new(),
                tx,
                back: back_rx,
            };
            vpatch::apply(None, deltas, &mut sink)?;
            Ok(())
        });
        let ended = std::cell::Cell::new(false);
        let mut fill = {
            let ended = &ended;
            move |start: u64, len: usize, buf: &mut Vec<u8>| -> vdiff::Result<()> {
                let got = rx.recv().map_err(|_| {
                    ended.set(true);
                    vdiff::Error::Input("the volume stopped before its end".into())
                })?;
                // The previous batch goes back first: the producer waits for it.
                let n = got.len();
                let _ = back_tx.send(std::mem::replace(buf, got));
                if n != len {
                    return Err(vdiff::Error::Input(format!(
                        "the volume's batch at byte {start} has {n} bytes, {len} expected"
                    )));
                }
                Ok(())
            }
        };
        let diffed = vdiff::diff::diff_scanned_batches(old, scan, opts, out, &mut fill);
        // A differ that stopped early must not leave the producer waiting: both channels
        // close here.
        drop(fill);
        let ended = ended.get();
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(Error::Corrupt("the volume producer panicked".into())));
        // The differ's I/O errors are writes of the delta (its input is the batches): the
        // caller names the file.
        let diffed = diffed.map(|_| ()).map_err(|err| match err {
            vdiff::Error::Io(source) | vdiff::Error::Format(vdiff::format::Error::Io(source)) => {
                Error::Io {
                    what: String::new(),
                    source,
                }
            }
            other => Error::from(other),
        });
        match (produced, diffed) {
            // The producer stopped first (a damaged delta, a wrong digest): its error.
            (Err(p), Err(_)) if ended => Err(p),
            // The differ stopped first (its output could not be written): its error.
            (_, Err(d)) => Err(d),
            (Err(p), Ok(())) => Err(p),
            (Ok(()), Ok(())) => Ok(()),
        }
    })
}

/// Collects vpatch's output into the differ's batches ([`vdiff::diff::BATCH_BYTES`]).
struct BatchSink {
    size: u64,
    /// Volume offset of `cur`'s first byte.
    start: u64,
    cur: Vec<u8>,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    back: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl BatchSink {
    fn batch_len(&self) -> usize {
        vdiff::diff::BATCH_BYTES.min(self.size - self.start) as usize
    }

    /// Append `len` bytes (`bytes`, or zeros), handing over each batch as it fills.
    fn push(&mut self, offset: u64, mut bytes: Option<&[u8]>, mut len: u64) -> std::io::Result<()> {
        if offset != self.start + self.cur.len() as u64 {
            return Err(std::io::Error::other(
                "the volume's ranges are out of order",
            ));
        }
        while len > 0 {
            if self.start >= self.size {
                return Err(std::io::Error::other("the volume is longer than its size"));
            }
            let room = self.batch_len() - self.cur.len();
            let n = (len as usize).min(room);
            match bytes {
                Some(b) => {
                    self.cur.extend_from_slice(&b[..n]);
                    bytes = Some(&b[n..]);
                }
                None => self.cur.resize(self.cur.len() + n, 0),
            }
            len -= n as u64;
            if self.cur.len() == self.batch_len() {
                let full = std::mem::take(&mut self.cur);
                self.start += full.len() as u64;
                self.tx
                    .send(full)
                    .map_err(|_| std::io::Error::other("the differ stopped"))?;
                // The differ hands back the batch it was done with as soon as it takes this
                // one: two batch buffers in all, never three.
                let mut next = self.back.recv().unwrap_or_default();
                next.clear();
                next.reserve_exact(self.batch_len());
                self.cur = next;
            }
        }
        Ok(())
    }
}

impl vpatch::Sink for BatchSink {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.push(offset, Some(bytes), bytes.len() as u64)
    }
    fn zero(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.push(offset, None, len)
    }
    fn unallocated(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.push(offset, None, len)
    }
}

fn journal_path(repo: &Repo) -> PathBuf {
    repo.root.join(JOURNAL)
}

/// What `journal.json` holds.
#[derive(Debug)]
pub enum JournalFile {
    /// No rewrite is unfinished.
    Absent,
    /// Its seal does not match (why): it must never be carried out.
    Damaged(String),
    Sound(Journal),
}

/// The journal of a rewrite in progress, if any. A sound seal over a journal this version
/// does not understand (another schema) is an error.
pub fn read_journal(repo: &Repo) -> Result<JournalFile> {
    let p = journal_path(repo);
    Ok(
        match crate::repo::read_sealed_key(&*repo.store, JOURNAL, 1 << 20)? {
            Sealed::Missing => JournalFile::Absent,
            Sealed::Damaged(why) => JournalFile::Damaged(why),
            Sealed::Payload(bytes) => JournalFile::Sound(parse_journal(&bytes, &p)?),
        },
    )
}

/// Parse and check a journal's bytes (`path` for messages).
pub fn parse_journal(bytes: &[u8], p: &Path) -> Result<Journal> {
    let j: Journal = serde_json::from_slice(bytes)
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
    Ok(j)
}

/// Carry out a journal: every swap not yet done, then the removals. Idempotent: a crash at
/// any point and a second run finish the same work.
pub fn apply_journal(repo: &Repo, j: &Journal) -> Result<()> {
    let entries = repo.root.join(ENTRIES);
    let tmp = repo.root.join(TMP);
    for s in &j.swaps {
        let staged = tmp.join(&s.staged);
        let cur = repo.entry_dir(&s.entry);
        let done = match (&s.sum, repo.load(&s.entry)) {
            (Some(sum), Ok(_)) => entry_sum(&cur).as_ref() == Some(sum),
            (None, Ok(e)) => e.parent == s.new_parent,
            (_, Err(_)) => false,
        };
        if done || !staged.join(crate::repo::ENTRY_SUM).exists() {
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
    // Every swap is done: the copies swapped out are not needed any more, and their space is
    // given back before the bookkeeping below writes (a full disk).
    for s in &j.swaps {
        let _ = fs::remove_dir_all(tmp.join(&s.staged));
    }
    let gone = still_unneeded(repo, &j.remove)?;
    // Working areas whose entry goes continue from its nearest surviving ancestor.
    let mut moved: HashMap<String, Option<String>> = HashMap::new();
    for r in &gone {
        let mut cur = repo.load(r).ok().and_then(|e| e.parent);
        while let Some(c) = cur.clone() {
            if !gone.contains(&c) {
                break;
            }
            cur = repo.load(&c).ok().and_then(|e| e.parent);
        }
        moved.insert(r.clone(), cur);
    }
    repo.repoint_workareas(&moved)?;
    if let Some(n) = j.remove.iter().filter_map(|r| parse_entry_name(r)).max() {
        repo.bump_last(n)?;
    }
    let mut trash = Vec::new();
    // Newest first: a parent is always an earlier entry, so every entry still present (one
    // to be removed included) keeps its whole chain until it goes itself.
    let mut remove: Vec<&String> = gone.iter().collect();
    remove.sort_by_key(|r| std::cmp::Reverse(parse_entry_name(r)));
    for r in remove {
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
    // The removed entries go now or with the next cleanup.
    for t in trash {
        let _ = fs::remove_dir_all(t);
    }
    let _ = repo.clean_all_leftovers();
    Ok(())
}

/// The entries of `remove` that no entry staying needs. A journal's removals were planned
/// when no staying entry needed them, but a save that ran while the journal was left
/// unfinished (a reader held the lock, so the save could not finish it; or finishing it failed
/// on a full disk) may have saved an entry on one of them: that one and its chain stay.
fn still_unneeded(repo: &Repo, remove: &[String]) -> Result<Vec<String>> {
    let mut needed = std::collections::HashSet::new();
    for n in repo.numbers()? {
        let name = format!("E{n}");
        if remove.contains(&name) {
            continue;
        }
        // An entry that cannot be read cannot be built either; it protects nothing.
        let mut cur = repo.load(&name).ok().and_then(|e| e.parent);
        while let Some(p) = cur {
            if !remove.contains(&p) || !needed.insert(p.clone()) {
                break;
            }
            cur = repo.load(&p).ok().and_then(|e| e.parent);
        }
    }
    Ok(remove
        .iter()
        .filter(|r| !needed.contains(*r))
        .cloned()
        .collect())
}

/// What [`recover`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovered {
    /// No rewrite was left unfinished.
    Nothing,
    /// A killed rewrite was finished.
    Finished,
    /// The journal was damaged (why): its rewrite was given up, every entry as it is.
    GivenUp(String),
}

/// Finish a rewrite a killed command left behind. Call with the exclusive lock held.
///
/// A damaged journal is never acted on (a flipped entry name would remove the wrong entry).
/// Every step of a rewrite leaves each entry buildable, so its rewrite is given up instead:
/// the journal goes, with what it staged, and every entry stays as it is.
pub fn recover(repo: &Repo) -> Result<Recovered> {
    match read_journal(repo)? {
        JournalFile::Absent => Ok(Recovered::Nothing),
        JournalFile::Damaged(why) => {
            let p = journal_path(repo);
            fs::remove_file(&p).at(&p)?;
            fsync_dir(&repo.root)?;
            repo.clean_all_leftovers()?;
            Ok(Recovered::GivenUp(why))
        }
        JournalFile::Sound(j) => {
            apply_journal(repo, &j)?;
            Ok(Recovered::Finished)
        }
    }
}

/// The staging phase of a rewrite (before its journal): if it fails, what this command staged
/// so far is removed (nothing was changed yet), so a failed rewrite leaves `tmp/` as it found
/// it.
fn staging<T>(repo: &Repo, f: impl FnOnce() -> Result<T>) -> Result<T> {
    f().inspect_err(|_| repo.remove_own_tmp())
}

/// Write the journal and carry it out. A journal that cannot be written leaves the repository
/// as it was (the staged folders are removed); from the journal on, a failure (a full disk
/// while repointing working-area records) leaves the rewrite for the next command to finish,
/// and the error says so.
fn run(repo: &Repo, j: Journal) -> Result<()> {
    let text = serde_json::to_string_pretty(&j).expect("serializable") + "\n";
    let half_done = |err: Error| match err {
        Error::Io { what, source } => Error::Io {
            what: format!(
                "{} is half done; {JOURNAL} is kept and the next command finishes it: {what}",
                j.op
            ),
            source,
        },
        other => other,
    };
    if let Err(err) = write_atomic(&journal_path(repo), &seal(text.as_bytes())) {
        if journal_path(repo).exists() {
            return Err(half_done(err));
        }
        repo.remove_own_tmp();
        return Err(err);
    }
    apply_journal(repo, &j).map_err(half_done)
}

/// The `entry.json.b3` of the entry folder `dir`, trimmed; `None` when unreadable.
fn entry_sum(dir: &Path) -> Option<String> {
    let bytes = crate::repo::read_small(&dir.join(crate::repo::ENTRY_SUM), 256).ok()?;
    Some(String::from_utf8_lossy(&bytes).trim().to_string())
}

fn staged_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The entries below `roots` in the trees of `all` (`roots` not included), by number.
fn descendants<'a>(all: &'a [Entry], roots: &[&str]) -> Vec<&'a str> {
    let mut children: HashMap<&str, Vec<&'a str>> = HashMap::new();
    for e in all {
        if let Some(p) = &e.parent {
            children
                .entry(p.as_str())
                .or_default()
                .push(e.name.as_str());
        }
    }
    let mut out: Vec<&'a str> = Vec::new();
    let mut todo: Vec<&str> = roots.to_vec();
    while let Some(n) = todo.pop() {
        for &c in children.get(n).into_iter().flatten() {
            out.push(c);
            todo.push(c);
        }
    }
    out.sort_by_key(|n| parse_entry_name(n));
    out
}

/// Names for a one-line message: the first ten, then how many in all.
fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 10;
    if names.len() <= SHOWN {
        names.join(", ")
    } else {
        format!(
            "{}, ... ({} in all)",
            names[..SHOWN].join(", "),
            names.len()
        )
    }
}

/// `rm ENTRY` (refused while entries depend on it) and `rm --rebase ENTRY` (its children are
/// first restaged onto its parent, or made full).
pub fn remove(repo: &Repo, e: &Entry, rebase: bool, level: Option<i32>) -> Result<Rewritten> {
    repo.require_local("rm")?;
    let all = repo.entries()?;
    let children: Vec<&Entry> = all
        .iter()
        .filter(|c| c.parent.as_deref() == Some(&e.name))
        .collect();
    if !children.is_empty() && !rebase {
        let direct: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
        let through = descendants(&all, &direct);
        // "rewrites E3 first" / "rewrites them first"; "through it" / "through them".
        let (named, pronoun) = match direct[..] {
            [c] => (c, "it"),
            _ => ("them", "them"),
        };
        let mut msg = format!("{} is needed by {}", e.name, name_list(&direct));
        if !through.is_empty() {
            msg += &format!(" (and, through {pronoun}, by {})", name_list(&through));
        }
        msg += &format!("; rm --rebase {} rewrites {named} first", e.name);
        return Err(Error::Refused(msg));
    }
    let new_parent = match &e.parent {
        Some(p) => Some(repo.load(p)?),
        None => None,
    };
    let mut out = Rewritten::default();
    let swaps = staging(repo, || {
        let mut swaps = Vec::new();
        for c in &children {
            let staged = restage(repo, c, new_parent.as_ref(), level)?;
            swaps.push(Swap {
                entry: c.name.clone(),
                staged: staged_name(&staged),
                new_parent: new_parent.as_ref().map(|p| p.name.clone()),
                sum: entry_sum(&staged),
            });
        }
        Ok(swaps)
    })?;
    for c in &children {
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
pub fn consolidate(repo: &Repo, e: &Entry, full: bool, level: Option<i32>) -> Result<Rewritten> {
    repo.require_local("consolidate")?;
    let new_parent = match &e.parent {
        // A full entry is rewritten only to store it at another level (recompression).
        None if level.is_some() => None,
        None => return Ok(Rewritten::default()),
        Some(p) => {
            let parent = repo.load(p)?;
            match (&parent.parent, full) {
                (Some(gp), false) => Some(repo.load(gp)?),
                _ => None,
            }
        }
    };
    let staged = staging(repo, || restage(repo, e, new_parent.as_ref(), level))?;
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
                sum: entry_sum(&staged),
            }],
            remove: vec![],
        },
    )?;
    Ok(Rewritten {
        removed: vec![],
        rewritten: vec![(e.name.clone(), np)],
    })
}

/// Retention for `prune`: how many entries to keep by age.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    pub last: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (civil calendar).
fn days_of(date: &str) -> Option<i64> {
    let y: i64 = date.get(0..4)?.parse().ok()?;
    let m: i64 = date.get(5..7)?.parse().ok()?;
    let d: i64 = date.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The ISO-8601 week (year, week) of a day number: weeks start on Monday.
fn week_of(days: i64) -> (i64, i64) {
    // 1970-01-01 was a Thursday; the Thursday of a day's week decides its ISO year.
    let weekday = (days + 3).rem_euclid(7); // 0 = Monday
    let thursday = days - weekday + 3;
    // The year of that Thursday: walk from an estimate.
    let mut y = 1970 + thursday.div_euclid(365);
    while days_of(&format!("{:04}-01-01", y)).is_some_and(|d| d > thursday) {
        y -= 1;
    }
    while days_of(&format!("{:04}-01-01", y + 1)).is_some_and(|d| d <= thursday) {
        y += 1;
    }
    let jan1 = days_of(&format!("{y:04}-01-01")).unwrap_or(0);
    (y, (thursday - jan1) / 7 + 1)
}

/// Which entries the retention keeps (restic's rules): the newest `last`; the newest entry of
/// each of the newest `daily` days that have entries; the same per ISO week and per month.
pub fn kept(entries: &[Entry], r: Retention) -> std::collections::BTreeSet<String> {
    let mut by_age: Vec<&Entry> = entries.iter().collect();
    by_age.sort_by(|a, b| b.time.cmp(&a.time).then(b.number.cmp(&a.number)));
    let mut keep = std::collections::BTreeSet::new();
    for e in by_age.iter().take(r.last) {
        keep.insert(e.name.clone());
    }
    let mut bucket = |n: usize, key: &dyn Fn(&Entry) -> Option<String>| {
        let mut seen = std::collections::HashSet::new();
        for e in &by_age {
            if seen.len() >= n {
                break;
            }
            if let Some(k) = key(e) {
                if seen.insert(k) {
                    keep.insert(e.name.clone());
                }
            }
        }
    };
    bucket(r.daily, &|e| e.time.get(0..10).map(str::to_owned));
    bucket(r.weekly, &|e| {
        days_of(e.time.get(0..10)?).map(|d| format!("{:?}", week_of(d)))
    });
    bucket(r.monthly, &|e| e.time.get(0..7).map(str::to_owned));
    keep
}

impl Retention {
    /// No rule: keeps nothing.
    pub fn is_empty(&self) -> bool {
        self.last + self.daily + self.weekly + self.monthly == 0
    }
}

/// What `prune` (or `rm --vm NAME --all`) does, or would do with `dry_run`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrunePlan {
    pub keep: Vec<String>,
    pub remove: Vec<String>,
    /// `(entry, its new parent or null)`: kept entries whose parent goes.
    pub rewrite: Vec<(String, Option<String>)>,
    /// Per VM: what it keeps and what it loses.
    pub vms: BTreeMap<String, VmPlan>,
    pub dry_run: bool,
}

/// One VM's part of a [`PrunePlan`].
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct VmPlan {
    pub keep: Vec<String>,
    pub remove: Vec<String>,
}

/// `prune`: for each VM (of `scope`, or every VM), remove the entries the retention does not
/// keep of that VM's entries; entries of other VMs are not touched. A policy keeping no entry
/// of a VM that has entries is refused unless `allow_empty`.
pub fn prune(
    repo: &Repo,
    r: Retention,
    scope: &[String],
    allow_empty: bool,
    dry_run: bool,
    level: Option<i32>,
) -> Result<PrunePlan> {
    repo.require_local("prune")?;
    let all = repo.entries()?;
    crate::vms::check_vms(scope, &all)?;
    let mut groups: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
    for e in &all {
        groups.entry(e.vm_name()).or_default().push(e.clone());
    }
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut emptied = Vec::new();
    for (vm, es) in &groups {
        if !scope.is_empty() && !scope.iter().any(|s| s == vm) {
            keep.extend(es.iter().map(|e| e.name.clone()));
            continue;
        }
        let k = kept(es, r);
        if k.is_empty() {
            emptied.push(format!("{vm} ({} entries)", es.len()));
        }
        keep.extend(k);
    }
    if !emptied.is_empty() && !allow_empty {
        return Err(Error::Refused(format!(
            "this policy keeps no entry of VM {}; --allow-empty removes them (rm --vm NAME \
             --all retires a VM)",
            emptied.join(", ")
        )));
    }
    let mut plan = remove_all_but(repo, &all, &keep, "prune", dry_run, level)?;
    // Per VM, only the VMs the policy was applied to.
    if !scope.is_empty() {
        plan.vms.retain(|vm, _| scope.contains(vm));
    }
    Ok(plan)
}

/// `rm --vm NAME --all`: remove every entry of the VMs `vms`. Entries of other VMs that stand
/// on them are rewritten (as by prune).
pub fn retire(repo: &Repo, vms: &[String], dry_run: bool, level: Option<i32>) -> Result<PrunePlan> {
    repo.require_local("rm --all")?;
    let all = repo.entries()?;
    crate::vms::check_vms(vms, &all)?;
    let keep: BTreeSet<String> = all
        .iter()
        .filter(|e| !vms.iter().any(|v| v == e.vm_name()))
        .map(|e| e.name.clone())
        .collect();
    remove_all_but(repo, &all, &keep, "rm", dry_run, level)
}

/// The new parent of a kept entry `e` whose parent goes: its nearest kept ancestor; with none,
/// the earlier kept entry (the newest kept one of each VM is considered) that shares the most
/// content with it, when it shares at least 10%; else none (a full entry).
fn new_parent_of(
    repo: &Repo,
    e: &Entry,
    by_name: &HashMap<&str, &Entry>,
    keep: &BTreeSet<String>,
    all: &[Entry],
    planned: &HashMap<String, Option<String>>,
) -> Result<Option<String>> {
    let mut cur = e
        .parent
        .as_deref()
        .and_then(|p| by_name.get(p))
        .and_then(|x| x.parent.clone());
    while let Some(c) = cur.clone() {
        if keep.contains(&c) {
            return Ok(Some(c));
        }
        cur = by_name.get(c.as_str()).and_then(|x| x.parent.clone());
    }
    let mut heads: BTreeMap<&str, &Entry> = BTreeMap::new();
    for k in all {
        if k.number < e.number
            && keep.contains(&k.name)
            && k.volume.block_size == e.volume.block_size
        {
            heads.insert(k.vm_name(), k);
        }
    }
    let candidates: Vec<&Entry> = heads.into_values().collect();
    // A candidate's chain as it will be once the entries planned before it are rewritten.
    let links = |c: &Entry| {
        let parent_of = |n: &str| match planned.get(n) {
            Some(p) => p.clone(),
            None => by_name.get(n).and_then(|x| x.parent.clone()),
        };
        let mut k = 1;
        let mut cur = parent_of(&c.name);
        while let Some(p) = cur {
            k += 1;
            cur = parent_of(&p);
        }
        k
    };
    Ok(crate::vms::best_stored_base(repo, e, &candidates, &links)?.map(|(b, _)| b.name.clone()))
}

/// Remove every entry not in `keep`; a kept entry whose parent goes is restaged onto its new
/// parent ([`new_parent_of`]), so no kept entry ever breaks. The work grows with what is
/// removed: only kept children of removed entries are rewritten.
fn remove_all_but(
    repo: &Repo,
    all: &[Entry],
    keep: &BTreeSet<String>,
    op: &str,
    dry_run: bool,
    level: Option<i32>,
) -> Result<PrunePlan> {
    let by_name: HashMap<&str, &Entry> = all.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut plan = PrunePlan {
        dry_run,
        ..PrunePlan::default()
    };
    for e in all {
        let v = plan.vms.entry(e.vm_name().to_owned()).or_default();
        if keep.contains(&e.name) {
            plan.keep.push(e.name.clone());
            v.keep.push(e.name.clone());
        } else {
            plan.remove.push(e.name.clone());
            v.remove.push(e.name.clone());
        }
    }
    let mut planned: HashMap<String, Option<String>> = HashMap::new();
    for e in all {
        if !keep.contains(&e.name) {
            continue;
        }
        let Some(p) = &e.parent else { continue };
        if keep.contains(p) {
            continue;
        }
        let np = new_parent_of(repo, e, &by_name, keep, all, &planned)?;
        planned.insert(e.name.clone(), np.clone());
        plan.rewrite.push((e.name.clone(), np));
    }
    if dry_run || plan.remove.is_empty() {
        return Ok(plan);
    }
    let swaps = staging(repo, || {
        let mut swaps: Vec<Swap> = Vec::new();
        for (name, np) in &plan.rewrite {
            let e = by_name[name.as_str()];
            let parent = match np {
                Some(n) => Some(repo.load(n)?),
                None => None,
            };
            let s = restage(repo, e, parent.as_ref(), level)?;
            swaps.push(Swap {
                entry: name.clone(),
                staged: staged_name(&s),
                new_parent: np.clone(),
                sum: entry_sum(&s),
            });
        }
        Ok(swaps)
    })?;
    run(
        repo,
        Journal {
            schema: JOURNAL_SCHEMA.into(),
            op: op.into(),
            swaps,
            remove: plan.remove.clone(),
        },
    )?;
    Ok(plan)
}

/// Open the repository at `path` for `command` and take its lock (`wait`: how long to wait for
/// it). A rewrite a killed command left half-done is finished first, by whoever can get the
/// exclusive lock: an exclusive command always, a shared one when no one else holds the lock.
/// A damaged journal is left to verify to report and to the next exclusive command to give up
/// (see [`recover`]); the returned note then says what was given up.
pub fn open_locked(
    loc: &crate::storage::Location,
    mode: crate::lock::LockMode,
    command: &str,
    wait: Option<std::time::Duration>,
) -> Result<(Repo, crate::lock::RepoLock, Option<String>)> {
    use crate::lock::LockMode;
    let repo = Repo::open_at(loc)?;
    // Read again under the lock by `recover`: this look, without it, is only a hint.
    if mode == LockMode::Shared && matches!(read_journal(&repo)?, JournalFile::Sound(_)) {
        if let Ok(_x) = repo.lock(LockMode::Exclusive, "recover", None) {
            // Every entry builds at every step of a rewrite, so a reader does not need it
            // finished: a write that fails now (a full disk) leaves it for a later command
            // instead of failing this one. A rewrite's own commands still need it done.
            match recover(&repo) {
                Err(err) if err.kind() == crate::error::ErrorKind::Io => {}
                other => {
                    other?;
                }
            }
        }
    }
    let lock = repo.lock(mode, command, wait)?;
    let mut note = None;
    if mode == LockMode::Exclusive {
        if let Recovered::GivenUp(why) = recover(&repo)? {
            note = Some(format!(
                "{JOURNAL} was damaged ({why}): the interrupted rewrite it recorded was given \
                 up, and every entry stays as it was"
            ));
        }
        // Alone now: the leftovers of other hosts' dead commands go too.
        repo.clean_all_leftovers()?;
    }
    Ok((repo, lock, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(days_of("1970-01-01"), Some(0));
        assert_eq!(days_of("2000-03-01"), Some(11017));
        assert_eq!(days_of("2026-11-22"), Some(20779));
        // ISO weeks: 2026-11-22 is a Sunday in week 47; 2021-01-03 is in 2020's week 53;
        // 2024-12-30 is in 2025's week 1.
        assert_eq!(week_of(days_of("2026-11-22").unwrap()), (2026, 47));
        assert_eq!(week_of(days_of("2026-11-23").unwrap()), (2026, 48));
        assert_eq!(week_of(days_of("2021-01-03").unwrap()), (2020, 53));
        assert_eq!(week_of(days_of("2024-12-30").unwrap()), (2025, 1));
    }
}
