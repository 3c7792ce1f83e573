//! `verify`: is every entry still buildable?
//!
//! Structure (always): every `entry.json` reads and validates, its parent exists, every stored
//! file exists at the size `entry.json` gives, and each delta's header names the parent's
//! volume as its source and the entry's volume as its target. With `read_data`: every stored
//! file's BLAKE3 against `entry.json`, and every delta decoded in full (each record's checksum,
//! the end record, the index). With `sample`: that percentage of each delta's records, chosen
//! at random, read through the index and checked, plus the BLAKE3 of the small files.
//!
//! An entry whose own files are damaged is `damaged`; an entry that needs a damaged or missing
//! entry is `unbuildable`; the rest are `ok`. The repository's sealed bookkeeping files
//! (`last-entry`, working-area records, an unfinished rewrite's journal) are checked against
//! their seals and reported apart, in `files`.

use crate::error::Result;
use crate::manifest::{unhex32, Entry};
use crate::repo::Repo;
use crate::storage::Cursor;
use crate::store;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;

#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    pub read_data: bool,
    /// Percent of each delta's records to read, 0 < p <= 100.
    pub sample: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EntryReport {
    pub entry: String,
    /// `ok`, `damaged` or `unbuildable`.
    pub status: &'static str,
    pub problems: Vec<String>,
    /// For an unbuildable entry: the damaged or missing entry it needs.
    pub needs: Option<String>,
}

/// A damaged file of the repository's own bookkeeping (not of an entry).
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    /// The path inside the repository: `last-entry`, `workareas/H.json`, `journal.json`.
    pub file: String,
    pub problem: String,
    /// What it means for the user.
    pub effect: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub checked: Vec<EntryReport>,
    pub ok: Vec<String>,
    pub damaged: Vec<String>,
    pub unbuildable: Vec<String>,
    /// Damaged bookkeeping files: none of them can make an entry unbuildable.
    pub files: Vec<FileReport>,
}

pub const VERIFY_SCHEMA: &str = "vrepo.verify/1";

/// Problems with one entry's own files.
fn check_entry(repo: &Repo, e: &Entry, parent: Option<&Entry>, opts: VerifyOptions) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, want) in [
        (store::DELTA, &e.stored.delta),
        (store::SIGNATURE, &e.stored.signature),
        (store::CHUNKS, &e.stored.chunks),
    ] {
        match repo.store.size(&store::key_of(&e.name, name)) {
            Ok(Some(len)) if len == want.size => {}
            Ok(Some(len)) => problems.push(format!(
                "{name} is {len} bytes, entry.json says {}",
                want.size
            )),
            Ok(None) => problems.push(format!(
                "{name}: {}",
                std::io::Error::from(std::io::ErrorKind::NotFound)
            )),
            Err(err) => problems.push(format!("{name}: {err}")),
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    // The delta's header links it to its parent and to this volume.
    let delta_key = store::key_of(&e.name, store::DELTA);
    let header = repo
        .store
        .open(&delta_key)
        .map_err(|err| err.to_string())
        .and_then(|(f, len)| {
            vdiff::format::Decoder::new(BufReader::new(Cursor::new(f, len)))
                .map(|d| d.header().clone())
                .map_err(|err| err.to_string())
        });
    match header {
        Err(err) => problems.push(format!("{}: {err}", store::DELTA)),
        Ok(h) => {
            let want_target = unhex32(&e.volume.digest);
            if Some(h.target_digest) != want_target || h.target_size != e.volume.size {
                problems.push(format!(
                    "{}: its target is not the volume entry.json describes",
                    store::DELTA
                ));
            }
            match parent {
                // A parent that is named but cannot be read makes this entry unbuildable,
                // not damaged: its own delta is not to blame.
                None if e.parent.is_some() => {}
                None if !h.is_full() => problems.push(format!(
                    "{}: a full entry's delta needs a source",
                    store::DELTA
                )),
                Some(p)
                    if h.is_full()
                        || Some(h.source_digest) != unhex32(&p.volume.digest)
                        || h.source_size != p.volume.size =>
                {
                    problems.push(format!(
                        "{}: its source is not the volume of {}",
                        store::DELTA,
                        p.name
                    ))
                }
                _ => {}
            }
        }
    }
    if opts.read_data || opts.sample.is_some() {
        let files: &[(&str, &crate::manifest::Stored)] = if opts.read_data {
            &[
                (store::DELTA, &e.stored.delta),
                (store::SIGNATURE, &e.stored.signature),
                (store::CHUNKS, &e.stored.chunks),
            ]
        } else {
            &[
                (store::SIGNATURE, &e.stored.signature),
                (store::CHUNKS, &e.stored.chunks),
            ]
        };
        for (name, want) in files {
            match store::blake3_object(repo, &store::key_of(&e.name, name)) {
                Ok((size, d)) if size == want.size && crate::manifest::hex(&d) == want.blake3 => {}
                Ok(_) => problems.push(format!("{name}: its BLAKE3 differs from entry.json")),
                Err(err) => problems.push(format!("{name}: {err}")),
            }
        }
    }
    if opts.read_data {
        if let Err(err) = decode_all(repo, &delta_key) {
            problems.push(format!("{}: {err}", store::DELTA));
        }
    } else if let Some(p) = opts.sample {
        if let Err(err) = sample_records(repo, &delta_key, p) {
            problems.push(format!("{}: {err}", store::DELTA));
        }
    }
    problems
}

/// Decode a delta from start to end: every record's checksum, the end record and the index.
fn decode_all(repo: &Repo, key: &str) -> std::result::Result<(), String> {
    let (f, len) = repo.store.open(key).map_err(|e| e.to_string())?;
    let mut d = vdiff::format::Decoder::new(BufReader::with_capacity(4 << 20, Cursor::new(f, len)))
        .map_err(|e| e.to_string())?;
    while d.next_record().map_err(|e| e.to_string())?.is_some() {}
    Ok(())
}

/// Read `percent` of a delta's records, at random, through its index.
fn sample_records(repo: &Repo, key: &str, percent: f64) -> std::result::Result<(), String> {
    let (f, len) = repo.store.open(key).map_err(|e| e.to_string())?;
    let f = vpatch::DeltaFile::new(f, len);
    let (header, index) = vdiff::format::read_index(&f, len).map_err(|e| e.to_string())?;
    // A small xorshift seeded from the clock: sampling needs spread, not secrecy.
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let threshold = (percent / 100.0 * u32::MAX as f64) as u64;
    for &(_, at) in &index {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x & 0xffff_ffff) <= threshold {
            vdiff::format::read_record_at(&f, len, &header, at).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Verify `names` (all entries when empty). Entries they need are checked too, since a damaged
/// ancestor makes them unbuildable.
pub fn verify(repo: &Repo, names: &[String], opts: VerifyOptions) -> Result<Report> {
    let numbers = repo.numbers()?;
    // Load every entry that can be loaded; the others are damaged.
    let mut loaded: BTreeMap<u64, std::result::Result<Entry, String>> = BTreeMap::new();
    for n in &numbers {
        let name = format!("E{n}");
        loaded.insert(*n, repo.load(&name).map_err(|e| e.to_string()));
    }
    let wanted: Vec<u64> = if names.is_empty() {
        numbers.clone()
    } else {
        let mut w = Vec::new();
        for spec in names {
            let e = repo.resolve(spec)?;
            // The chain back to the full entry, as far as it can be followed.
            let mut cur = Some(e.number);
            while let Some(n) = cur {
                if w.contains(&n) {
                    break;
                }
                w.push(n);
                cur = match loaded.get(&n) {
                    Some(Ok(e)) => e
                        .parent
                        .as_deref()
                        .and_then(crate::manifest::parse_entry_name),
                    _ => None,
                };
            }
        }
        w.sort_unstable();
        w
    };
    let mut own: HashMap<u64, Vec<String>> = HashMap::new();
    for &n in &wanted {
        let problems = match loaded.get(&n) {
            Some(Ok(e)) => {
                let pn = e
                    .parent
                    .as_deref()
                    .and_then(crate::manifest::parse_entry_name);
                // The link to the parent's volume is checked only against a sound parent
                // (checked first: parents are earlier entries): a damaged parent's record
                // must not get its children called damaged rather than unbuildable.
                let parent = pn
                    .filter(|p| own.get(p).is_none_or(|pp| pp.is_empty()))
                    .and_then(|p| loaded.get(&p))
                    .and_then(|r| r.as_ref().ok());
                check_entry(repo, e, parent, opts)
            }
            Some(Err(err)) => vec![err.clone()],
            None => vec!["missing".into()],
        };
        own.insert(n, problems);
    }
    // Status in number order: parents come before children.
    let mut status: HashMap<u64, (&'static str, Option<String>)> = HashMap::new();
    let mut checked = Vec::new();
    for &n in &wanted {
        let problems = own.remove(&n).unwrap_or_default();
        let (st, needs) = if !problems.is_empty() {
            ("damaged", None)
        } else {
            let parent = match loaded.get(&n) {
                Some(Ok(e)) => e.parent.clone(),
                _ => None,
            };
            match parent {
                None => ("ok", None),
                Some(p) => match crate::manifest::parse_entry_name(&p) {
                    Some(pn) if !loaded.contains_key(&pn) => ("unbuildable", Some(p)),
                    Some(pn) => match status.get(&pn) {
                        Some(("ok", _)) => ("ok", None),
                        Some((_, Some(root))) => ("unbuildable", Some(root.clone())),
                        Some((_, None)) => ("unbuildable", Some(p)),
                        None => ("unbuildable", Some(p)),
                    },
                    None => ("unbuildable", Some(p)),
                },
            }
        };
        status.insert(n, (st, needs.clone()));
        checked.push(EntryReport {
            entry: format!("E{n}"),
            status: st,
            problems,
            needs,
        });
    }
    let pick = |s: &str| -> Vec<String> {
        checked
            .iter()
            .filter(|r| r.status == s)
            .map(|r| r.entry.clone())
            .collect()
    };
    let (ok, damaged, unbuildable) = (pick("ok"), pick("damaged"), pick("unbuildable"));
    Ok(Report {
        schema: VERIFY_SCHEMA,
        checked,
        ok,
        damaged,
        unbuildable,
        files: bookkeeping(repo)?,
    })
}

/// The sealed bookkeeping files (`last-entry`, working-area records, a journal), checked
/// against their seals.
fn bookkeeping(repo: &Repo) -> Result<Vec<FileReport>> {
    let mut out = Vec::new();
    if let Err(problem) = repo.last_record()? {
        out.push(FileReport {
            file: crate::repo::LAST.into(),
            problem,
            effect: "the next save numbers on from the newest entry present and rewrites it",
        });
    }
    for (file, problem) in crate::repo::damaged_records(repo)? {
        out.push(FileReport {
            file,
            problem,
            effect: "its working area's next save is full (or give --parent)",
        });
    }
    if let crate::rewrite::JournalFile::Damaged(problem) = crate::rewrite::read_journal(repo)? {
        out.push(FileReport {
            file: crate::rewrite::JOURNAL.into(),
            problem,
            effect: "every entry builds; the next rm, consolidate or prune gives up the \
                     interrupted rewrite it recorded",
        });
    }
    Ok(out)
}
