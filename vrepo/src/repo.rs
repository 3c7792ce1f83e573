//! The repository folder: its marker file, its entries, the working-area records, and the
//! temporary folder where saves are prepared (layout in `docs/vrepo.md`).

use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, parse_entry_name, Entry, MAX_MANIFEST_BYTES};
use crate::owner::{own_tag, owner_of, Owner};
use crate::rewrite::JournalFile;
use crate::storage::{Location, Numbering, Storage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub const REPO_SCHEMA: &str = "vrepo.repository/1";
pub const MARKER: &str = "vrepo.json";
pub const ENTRIES: &str = "entries";
pub const WORKAREAS: &str = "workareas";
pub const TMP: &str = "tmp";
/// The highest entry number given so far (names are never reused).
pub const LAST: &str = "last-entry";
pub const WORKAREA_SCHEMA: &str = "vrepo.workarea/1";

/// `vrepo.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub schema: String,
    /// Block size of every entry's volume, fixed at `init`.
    pub block_size: u32,
    pub created: String,
    /// Default for `save --max-chain`: the longest chain an incremental save may make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chain: Option<u32>,
}

impl RepoConfig {
    /// A new repository's `vrepo.json`, and its text.
    fn new(block_size: u32, max_chain: Option<u32>) -> (RepoConfig, String) {
        let config = RepoConfig {
            schema: REPO_SCHEMA.into(),
            block_size,
            created: now_rfc3339(),
            max_chain,
        };
        let text = serde_json::to_string_pretty(&config).expect("serializable") + "\n";
        (config, text)
    }
}

/// A working area's record: the entry it was last saved as or built from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkAreaRecord {
    pub schema: String,
    pub path: String,
    pub entry: String,
    /// `save` or `build`.
    pub by: String,
    pub time: String,
}

pub struct Repo {
    /// The folder of a local repository; for one on object storage, its location as `-r`
    /// names it (for messages only: nothing is read there).
    pub root: PathBuf,
    /// Where its bytes are read and written.
    pub store: Arc<dyn Storage>,
    pub config: RepoConfig,
}

/// Now, RFC 3339 UTC with microseconds.
pub fn now_rfc3339() -> String {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    vmx_parse::vmsd::rfc3339_from_us(us)
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// Write `bytes` to `path` so a crash leaves the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        own_tag()
    ));
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .at(&tmp)
        .and_then(|_| fs::rename(&tmp, path).at(path));
    if written.is_err() {
        // A full disk: the half-written copy goes now, not with the next command's cleanup.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fsync_dir(dir)
}

/// Remove a dead command's leftover. Another command may be removing it at the same time:
/// one that is already gone is fine.
fn remove_leftover(p: &Path) -> Result<()> {
    let r = if p.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.at(p),
    }
}

/// The checksum of `entry.json`: its BLAKE3, in hex.
pub const ENTRY_SUM: &str = "entry.json.b3";

/// Write `entry.json` and its checksum into an entry folder being prepared, fsynced.
pub fn write_manifest(dir: &Path, entry: &Entry) -> Result<()> {
    let text = serde_json::to_string_pretty(entry).expect("serializable") + "\n";
    let sum = format!("{}\n", blake3::hash(text.as_bytes()).to_hex());
    for (name, bytes) in [("entry.json", text.as_bytes()), (ENTRY_SUM, sum.as_bytes())] {
        let p = dir.join(name);
        let mut f = File::create(&p).at(&p)?;
        f.write_all(bytes).and_then(|_| f.sync_all()).at(&p)?;
    }
    fsync_dir(dir)
}

/// Read at most `cap` bytes of a small file; larger is corrupt.
pub fn read_small(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let f = File::open(path).at(path)?;
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf).at(path)?;
    if buf.len() as u64 > cap {
        return Err(Error::Corrupt(format!(
            "{}: larger than {cap} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// The length of a seal line: `{"b3":"`, 64 hex digits, `"}`, a newline.
const SEAL_LEN: usize = 74;

/// `payload` followed by its seal: a last line `{"b3":"HEX"}` with the BLAKE3 of every byte
/// before it. The small files that are replaced in place (`last-entry`, the working-area
/// records, the journal) are sealed, so that a flipped bit which still parses, or a cut, is
/// found rather than believed.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = payload.to_vec();
    out.extend_from_slice(b"{\"b3\":\"");
    out.extend_from_slice(blake3::hash(payload).to_hex().as_bytes());
    out.extend_from_slice(b"\"}\n");
    out
}

/// The payload of a sealed file, or what is wrong with it.
pub fn unseal(bytes: &[u8]) -> std::result::Result<&[u8], &'static str> {
    let Some(cut) = bytes.len().checked_sub(SEAL_LEN) else {
        return Err("too short to hold its seal (cut short?)");
    };
    let (payload, line) = bytes.split_at(cut);
    let hex = line
        .strip_prefix(b"{\"b3\":\"")
        .and_then(|r| r.strip_suffix(b"\"}\n"))
        .ok_or("its last line is not its seal (cut short?)")?;
    if hex != blake3::hash(payload).to_hex().as_bytes() {
        return Err("its BLAKE3 differs from its seal");
    }
    Ok(payload)
}

/// What a sealed small file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Sealed {
    Missing,
    /// Unreadable as a sealed file: why (without the path).
    Damaged(String),
    Payload(Vec<u8>),
}

/// What a sealed object read from a store holds (`None`: missing).
pub fn sealed_of(bytes: Option<Vec<u8>>) -> Sealed {
    match bytes {
        None => Sealed::Missing,
        Some(b) => match unseal(&b) {
            Ok(p) => Sealed::Payload(p.to_vec()),
            Err(why) => Sealed::Damaged(why.into()),
        },
    }
}

/// Read a sealed object of at most `cap` bytes from `store`.
pub fn read_sealed_key(store: &dyn Storage, key: &str, cap: u64) -> Result<Sealed> {
    match store.get(key, cap) {
        Ok(b) => Ok(sealed_of(b)),
        Err(Error::Corrupt(_)) => Ok(Sealed::Damaged(format!("larger than {cap} bytes"))),
        Err(e) => Err(e),
    }
}

/// Read a sealed file of at most `cap` bytes. Only an I/O error other than a missing file is
/// an error.
pub fn read_sealed(path: &Path, cap: u64) -> Result<Sealed> {
    if !path.exists() {
        return Ok(Sealed::Missing);
    }
    let bytes = match read_small(path, cap) {
        Ok(b) => b,
        Err(Error::Corrupt(_)) => return Ok(Sealed::Damaged(format!("larger than {cap} bytes"))),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Sealed::Missing)
        }
        Err(e) => return Err(e),
    };
    Ok(match unseal(&bytes) {
        Ok(p) => Sealed::Payload(p.to_vec()),
        Err(why) => Sealed::Damaged(why.into()),
    })
}

/// The entry number a sealed `last-entry` payload (`N` and a newline) records.
fn parse_last(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload)
        .ok()?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

/// A working-area record at `key`: none, the record, or (inner error) why it is damaged.
fn read_record(
    store: &dyn Storage,
    key: &str,
) -> Result<std::result::Result<Option<WorkAreaRecord>, String>> {
    Ok(match read_sealed_key(store, key, 1 << 16)? {
        Sealed::Missing => Ok(None),
        Sealed::Damaged(why) => Err(why),
        Sealed::Payload(b) => match serde_json::from_slice::<WorkAreaRecord>(&b) {
            Ok(r) if r.schema == WORKAREA_SCHEMA => Ok(Some(r)),
            Ok(_) => Err("an unknown schema".into()),
            Err(e) => Err(e.to_string()),
        },
    })
}

/// Every working-area record that is damaged: its path in the repository
/// (`workareas/H.json`) and why.
pub fn damaged_records(repo: &Repo) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for key in record_keys(repo)? {
        if let Err(why) = read_record(&*repo.store, &key)? {
            out.push((key, why));
        }
    }
    out.sort();
    Ok(out)
}

/// The keys of the working-area records (`workareas/H.json`).
fn record_keys(repo: &Repo) -> Result<Vec<String>> {
    Ok(repo
        .store
        .list(&format!("{WORKAREAS}/"))?
        .into_iter()
        .map(|l| l.key)
        .filter(|k| {
            k.strip_prefix(&format!("{WORKAREAS}/"))
                .is_some_and(|n| n.ends_with(".json") && !n.contains('/') && !n.starts_with('.'))
        })
        .collect())
}

impl Numbering for Repo {
    fn last_number(&self) -> Result<u64> {
        Repo::last_number(self)
    }
    fn bump_last(&self, n: u64) -> Result<()> {
        Repo::bump_last(self, n)
    }
    fn check_tags(&self, entry: &Entry) -> Result<()> {
        self.check_tags_free(&entry.tags, entry.vm_name())
    }
}

impl Repo {
    /// Make a repository at `loc`: a folder (created if missing; an existing one must be
    /// empty), or a key prefix of a bucket that holds nothing yet.
    pub fn init_at(loc: &Location, block_size: u32, max_chain: Option<u32>) -> Result<Repo> {
        if let Location::Local(p) = loc {
            return Repo::init(p, block_size, max_chain);
        }
        let store = loc.storage()?;
        if store.get(MARKER, 1 << 16)?.is_some() {
            return Err(Error::Refused(format!("{loc}: already a VML repository")));
        }
        if !store.list("")?.is_empty() {
            return Err(Error::Refused(format!(
                "{loc}: not empty; a repository is made under a new or empty prefix"
            )));
        }
        let (config, text) = RepoConfig::new(block_size, max_chain);
        store.put(MARKER, text.as_bytes())?;
        Ok(Repo {
            root: PathBuf::from(loc.to_string()),
            store,
            config,
        })
    }

    /// Open the repository at `loc`. A local one's leftovers of dead commands are cleared.
    pub fn open_at(loc: &Location) -> Result<Repo> {
        if let Location::Local(p) = loc {
            return Repo::open(p);
        }
        let store = loc.storage()?;
        let Some(bytes) = store.get(MARKER, 1 << 16)? else {
            return Err(Error::Missing(format!(
                "{loc}: no repository there (no {MARKER}; make one with `vrepo -r {loc} init`)"
            )));
        };
        let config = parse_config(&bytes, &format!("{loc}/{MARKER}"))?;
        let repo = Repo {
            root: PathBuf::from(loc.to_string()),
            store,
            config,
        };
        repo.clean_leftovers()?;
        Ok(repo)
    }

    /// Whether the repository is a local folder (the rewrites and `mount` need one, for now).
    pub fn require_local(&self, command: &str) -> Result<&Path> {
        self.store.local_root().ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: `vrepo {command}` works on a local repository only, for now (copy the \
                 entries to a local one with `vrepo copy`)",
                self.root.display()
            ))
        })
    }

    /// Make a repository in `path` (created if missing; an existing folder must be empty).
    pub fn init(path: &Path, block_size: u32, max_chain: Option<u32>) -> Result<Repo> {
        if path.join(MARKER).exists() {
            return Err(Error::Refused(format!(
                "{}: already a VML repository",
                path.display()
            )));
        }
        if path.exists() {
            let mut it = fs::read_dir(path).at(path)?;
            if it.next().is_some() {
                return Err(Error::Refused(format!(
                    "{}: not empty; a repository is made in a new or empty folder",
                    path.display()
                )));
            }
        } else {
            fs::create_dir_all(path).at(path)?;
        }
        for d in [ENTRIES, WORKAREAS, TMP] {
            fs::create_dir(path.join(d)).at(&path.join(d))?;
        }
        let (config, text) = RepoConfig::new(block_size, max_chain);
        // The marker goes last: a folder without it is not a repository yet.
        write_atomic(&path.join(MARKER), text.as_bytes())?;
        Ok(Repo {
            root: path.to_path_buf(),
            store: Arc::new(crate::storage::local::Local::new(path)),
            config,
        })
    }

    /// Open an existing repository, and clear the leftovers of commands that died.
    pub fn open(path: &Path) -> Result<Repo> {
        let marker = path.join(MARKER);
        if !path.is_dir() {
            return Err(Error::Missing(format!(
                "{}: no such repository (make one with `vrepo -r {} init`)",
                path.display(),
                path.display()
            )));
        }
        if !marker.exists() {
            return Err(Error::Missing(format!(
                "{}: not a VML repository (no {MARKER})",
                path.display()
            )));
        }
        let bytes = read_small(&marker, 1 << 16)?;
        let config = parse_config(&bytes, &marker.display().to_string())?;
        // Real folders, not symbolic links: leftovers in tmp/ are deleted, and a link would
        // aim that at any folder.
        for d in [ENTRIES, WORKAREAS, TMP] {
            if !fs::symlink_metadata(path.join(d)).is_ok_and(|m| m.is_dir()) {
                return Err(Error::Corrupt(format!(
                    "{}: the folder {d}/ is missing or not a plain folder",
                    path.display()
                )));
            }
        }
        let repo = Repo {
            root: path.to_path_buf(),
            store: Arc::new(crate::storage::local::Local::new(path)),
            config,
        };
        repo.clean_leftovers()?;
        Ok(repo)
    }

    /// Remove the leftovers of commands whose process is gone (killed, or from before a
    /// reboot): their folders in `tmp/` and `write_atomic`'s temporary files. Those of live
    /// processes, and of processes of other hosts (see [`crate::owner`]), are left alone.
    pub fn clean_leftovers(&self) -> Result<()> {
        self.clean(false)
    }

    /// [`Repo::clean_leftovers`] for a command holding the exclusive lock: no other command
    /// on any host holds a lock beside it, so every leftover goes, whoever made it, except
    /// the folders an unfinished rewrite's journal names.
    pub fn clean_all_leftovers(&self) -> Result<()> {
        self.clean(true)
    }

    fn clean(&self, exclusive: bool) -> Result<()> {
        if self.store.local_root().is_none() {
            return self.clean_staged(exclusive);
        }
        let gone = |tag: &str| exclusive || owner_of(tag) == Owner::Gone;
        let tmp = self.root.join(TMP);
        // Folders a rewrite's journal still needs are kept until the rewrite is finished. A
        // damaged journal keeps nothing (its rewrite is given up, never finished); one that
        // cannot be read, or is sealed but not understood (another version's), keeps tmp/ as
        // it is.
        let keep: Vec<String> = match crate::rewrite::read_journal(self) {
            Ok(JournalFile::Absent | JournalFile::Damaged(_)) => Vec::new(),
            Ok(JournalFile::Sound(j)) => j.swaps.into_iter().map(|s| s.staged).collect(),
            Err(_) => return self.clean_atomic_leftovers(&gone),
        };
        for e in fs::read_dir(&tmp).at(&tmp)? {
            let e = e.at(&tmp)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            // KIND-TAG-NANOS
            let tag = name
                .split_once('-')
                .and_then(|(_, rest)| rest.rsplit_once('-'))
                .map_or("", |(tag, _)| tag);
            if gone(tag) {
                remove_leftover(&e.path())?;
            }
        }
        self.clean_atomic_leftovers(&gone)
    }

    /// On object storage: the entry folders of saves that died before their entry.json was
    /// written (their claim's tag names a dead process of this host; with `exclusive`, any),
    /// with their unfinished multipart uploads.
    fn clean_staged(&self, exclusive: bool) -> Result<()> {
        let mut dirs: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
        for l in self.store.list(&format!("{ENTRIES}/"))? {
            if let Some(n) = crate::storage::s3::entry_number_of_key(&l.key) {
                dirs.entry(n).or_default().push(l.key);
            }
        }
        for (n, keys) in dirs {
            if keys.iter().any(|k| k.ends_with("/entry.json")) {
                continue;
            }
            let claims: Vec<&String> = keys.iter().filter(|k| k.contains("/claim.")).collect();
            let dead = |k: &str| {
                let tag = k
                    .rsplit_once("/claim.")
                    .and_then(|(_, t)| t.strip_suffix(".json"))
                    .unwrap_or("");
                exclusive || owner_of(tag) == Owner::Gone
            };
            // A folder without a claim is a claim's remains: only an exclusive holder knows
            // no save is writing it.
            let gone = if claims.is_empty() {
                exclusive
            } else {
                claims.iter().all(|k| dead(k))
            };
            if !gone {
                continue;
            }
            for k in &claims {
                let c = self
                    .store
                    .get(k, 1 << 20)
                    .ok()
                    .flatten()
                    .and_then(|b| serde_json::from_slice::<crate::storage::s3::Claim>(&b).ok());
                for (key, id) in c.map(|c| c.uploads).unwrap_or_default() {
                    if crate::storage::s3::entry_number_of_key(&key) == Some(n) {
                        self.store.abort_upload(&key, &id);
                    }
                }
            }
            for k in &keys {
                self.store.delete(k)?;
            }
        }
        Ok(())
    }

    /// `write_atomic`'s temporary files (`.NAME.TAG.tmp`) of processes that died while
    /// replacing a working-area record, `last-entry` or the journal.
    fn clean_atomic_leftovers(&self, gone: &dyn Fn(&str) -> bool) -> Result<()> {
        for dir in [self.root.clone(), self.root.join(WORKAREAS)] {
            for e in fs::read_dir(&dir).at(&dir)? {
                let e = e.at(&dir)?;
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
                    continue;
                };
                let Some((_, tag)) = rest.rsplit_once('.') else {
                    continue;
                };
                let ours = tag
                    .split('-')
                    .next()
                    .is_some_and(|p| p.parse::<u32>().is_ok());
                if ours && gone(tag) && e.path().is_file() {
                    remove_leftover(&e.path())?;
                }
            }
        }
        Ok(())
    }

    /// Remove every folder of this process in `tmp/` (`KIND-TAG-NANOS`): what a command
    /// that failed before it changed anything had prepared. Errors are ignored: the next
    /// command removes what is left, as for a dead process.
    pub fn remove_own_tmp(&self) {
        if self.store.local_root().is_none() {
            return;
        }
        let tmp = self.root.join(TMP);
        let own = own_tag();
        let Ok(dir) = fs::read_dir(&tmp) else { return };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let mine = name
                .split_once('-')
                .and_then(|(_, rest)| rest.strip_prefix(own.as_str()))
                .is_some_and(|nanos| nanos.starts_with('-'));
            if mine {
                let _ = remove_leftover(&e.path());
            }
        }
    }

    /// A new temporary folder for a command of this process: `tmp/KIND-TAG-NANOS` in a
    /// local repository; in the system's temporary folder for one on object storage.
    pub fn tmp_dir(&self, kind: &str) -> Result<PathBuf> {
        match self.store.local_root() {
            Some(root) => crate::storage::local::tmp_dir(root, kind),
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let p = std::env::temp_dir().join(format!("vrepo-{kind}-{}-{nanos}", own_tag()));
                fs::create_dir(&p).at(&p)?;
                Ok(p)
            }
        }
    }

    pub fn entry_dir(&self, name: &str) -> PathBuf {
        self.root.join(ENTRIES).join(name)
    }

    /// The numbers of the entries present, ascending. Other names in `entries/` are ignored.
    pub fn numbers(&self) -> Result<Vec<u64>> {
        if self.store.local_root().is_none() {
            // An entry is there once its entry.json is.
            let mut out: Vec<u64> = self
                .store
                .list(&format!("{ENTRIES}/"))?
                .into_iter()
                .filter_map(|l| {
                    let rest = l.key.strip_prefix("entries/")?;
                    let (name, file) = rest.split_once('/')?;
                    (file == "entry.json").then(|| parse_entry_name(name))?
                })
                .collect();
            out.sort_unstable();
            return Ok(out);
        }
        let dir = self.root.join(ENTRIES);
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            if let Some(n) = e.file_name().to_str().and_then(parse_entry_name) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Read and check one entry's `entry.json`.
    pub fn load(&self, name: &str) -> Result<Entry> {
        if parse_entry_name(name).is_none() {
            return Err(Error::Usage(format!("{name:?} is not an entry name")));
        }
        let missing = || Error::Missing(format!("no entry {name} in this repository"));
        if self.store.local_root().is_some() && !self.entry_dir(name).is_dir() {
            return Err(missing());
        }
        let key = format!("{ENTRIES}/{name}/entry.json");
        let bytes = match self.store.get(&key, MAX_MANIFEST_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) if self.store.local_root().is_none() => return Err(missing()),
            Ok(None) => {
                return Err(Error::Corrupt(format!(
                    "entry {name}: entry.json is missing"
                )))
            }
            Err(e) => return Err(e),
        };
        // entry.json has its own checksum: a flipped bit in a name or a message is still
        // valid JSON.
        let sum = match self
            .store
            .get(&format!("{ENTRIES}/{name}/{ENTRY_SUM}"), 256)
        {
            Ok(Some(s)) => s,
            _ => {
                return Err(Error::Corrupt(format!(
                    "entry {name}: {ENTRY_SUM} is missing or unreadable"
                )))
            }
        };
        if String::from_utf8_lossy(&sum).trim() != blake3::hash(&bytes).to_hex().as_str() {
            return Err(Error::Corrupt(format!(
                "entry {name}: entry.json is damaged (its BLAKE3 differs from {ENTRY_SUM})"
            )));
        }
        let e: Entry = serde_json::from_slice(&bytes)
            .map_err(|err| Error::Corrupt(format!("entry {name}: entry.json: {err}")))?;
        e.validate(name)?;
        let mut e = e;
        // An older version's entry belongs to the VM named after its working area's folder.
        if e.vm.name.is_none() {
            e.vm.name = Some(e.vm_name().to_owned());
        }
        Ok(e)
    }

    /// Every entry, ascending.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        self.numbers()?
            .into_iter()
            .map(|n| self.load(&format!("E{n}")))
            .collect()
    }

    /// An entry by selector (see [`crate::vms::Selector`]): `E7`, a tag, `latest`,
    /// `VM:latest`, `VM:latest~N`, `VM:TAG`, `VM:E7`.
    pub fn resolve(&self, spec: &str) -> Result<Entry> {
        self.resolve_in(spec, None)
    }

    /// [`Repo::resolve`] with a VM scope (a command's `--vm`) for specs that name no VM.
    pub fn resolve_in(&self, spec: &str, scope: Option<&str>) -> Result<Entry> {
        crate::vms::parse(spec, scope)?;
        if scope.is_none() && parse_entry_name(spec).is_some() {
            return self.load(spec);
        }
        let entries = self.entries()?;
        crate::vms::resolve(&entries, spec, scope).cloned()
    }

    /// The entries `e` needs to be built: its tree's full entry first, `e` last.
    pub fn chain(&self, e: &Entry) -> Result<Vec<Entry>> {
        let mut out = vec![e.clone()];
        let mut cur = e.clone();
        while let Some(p) = cur.parent.clone() {
            let pe = self.load(&p).map_err(|err| match err {
                Error::Missing(_) => Error::Corrupt(format!(
                    "entry {} needs {p}, which is missing from the repository",
                    cur.name
                )),
                other => other,
            })?;
            // Validation guarantees parents are earlier entries, so this ends.
            out.push(pe.clone());
            cur = pe;
        }
        out.reverse();
        Ok(out)
    }

    fn record_key(&self, workarea: &Path) -> String {
        let key = blake3::hash(workarea.as_os_str().as_encoded_bytes());
        format!("{WORKAREAS}/{}.json", &key.to_hex()[..32])
    }

    /// Whether entry `name` exists (its entry.json is there).
    pub fn has_entry(&self, name: &str) -> Result<bool> {
        if self.store.local_root().is_some() {
            return Ok(self.entry_dir(name).is_dir());
        }
        Ok(self
            .store
            .size(&format!("{ENTRIES}/{name}/entry.json"))?
            .is_some())
    }

    /// The entry a working area (canonical path) was last saved as or built from, if that
    /// entry still exists; or (inner error) why its record is damaged.
    pub fn workarea_entry(
        &self,
        workarea: &Path,
    ) -> Result<std::result::Result<Option<String>, String>> {
        let r = match read_record(&*self.store, &self.record_key(workarea))? {
            Ok(Some(r)) => r,
            other => return Ok(other.map(|_| None)),
        };
        if r.path != workarea.to_string_lossy() || parse_entry_name(&r.entry).is_none() {
            return Ok(Ok(None));
        }
        Ok(Ok(self.has_entry(&r.entry)?.then_some(r.entry)))
    }

    /// Point every working-area record naming an entry of `moved` at its replacement, so a
    /// working area whose entry is removed saves incrementally against the nearest surviving
    /// ancestor instead of falling back to full.
    pub fn repoint_workareas(&self, moved: &HashMap<String, Option<String>>) -> Result<()> {
        for key in record_keys(self)? {
            // A damaged record is left as it is, for verify to report.
            let Ok(Ok(Some(mut r))) = read_record(&*self.store, &key) else {
                continue;
            };
            match moved.get(&r.entry) {
                Some(Some(to)) => {
                    r.entry = to.clone();
                    let text = serde_json::to_string_pretty(&r).expect("serializable") + "\n";
                    self.store.put(&key, &seal(text.as_bytes()))?;
                }
                Some(None) => self.store.delete(&key)?,
                None => {}
            }
        }
        Ok(())
    }

    pub fn set_workarea_entry(&self, workarea: &Path, entry: &str, by: &str) -> Result<()> {
        let r = WorkAreaRecord {
            schema: WORKAREA_SCHEMA.into(),
            path: workarea.to_string_lossy().into_owned(),
            entry: entry.into(),
            by: by.into(),
            time: now_rfc3339(),
        };
        let text = serde_json::to_string_pretty(&r).expect("serializable") + "\n";
        self.store
            .put(&self.record_key(workarea), &seal(text.as_bytes()))
    }

    /// The highest entry number ever given: names are never reused, even after the newest
    /// entries were removed. A damaged `last-entry` counts as none: numbering goes on from the
    /// newest entry present (and the record is rewritten by the next save).
    pub fn last_number(&self) -> Result<u64> {
        let present = self.numbers()?.last().copied().unwrap_or(0);
        Ok(present.max(self.last_record()?.unwrap_or(0)))
    }

    /// What `last-entry` records (0 when it is missing), or why it is damaged or unreadable:
    /// it is only a floor above the entries present, so a save goes on without it.
    pub fn last_record(&self) -> Result<std::result::Result<u64, String>> {
        Ok(match read_sealed_key(&*self.store, LAST, 256) {
            Ok(Sealed::Missing) => Ok(0),
            Ok(Sealed::Payload(b)) => parse_last(&b).ok_or_else(|| "not an entry number".into()),
            Ok(Sealed::Damaged(why)) => Err(why),
            Err(e) => Err(e.to_string()),
        })
    }

    /// Record that entry number `n` was given (or removed).
    pub fn bump_last(&self, n: u64) -> Result<()> {
        // Only a write that changes the record: removing the newest entry after its save
        // recorded it writes nothing (which matters on a full disk). A damaged record is
        // replaced.
        let present = self.numbers()?.last().copied().unwrap_or(0);
        let n = match self.last_record()? {
            Ok(r) if r >= n || present > n => return Ok(()),
            Ok(_) => n,
            Err(_) => n.max(present),
        };
        self.store.put(LAST, &seal(format!("{n}\n").as_bytes()))
    }

    /// Tags name one entry of a VM each (`VM:TAG`); the same tag may be on entries of
    /// several VMs.
    pub fn check_tags_free(&self, tags: &[String], vm: &str) -> Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        for e in self.entries()? {
            if e.vm_name() != vm {
                continue;
            }
            if let Some(t) = e.tags.iter().find(|t| tags.contains(t)) {
                return Err(Error::Usage(format!(
                    "tag {t:?} is already on {} of VM {vm:?} (a tag names one entry of a VM)",
                    e.name
                )));
            }
        }
        Ok(())
    }
}

/// Read and check `vrepo.json`'s bytes (`what` names it in messages).
fn parse_config(bytes: &[u8], what: &str) -> Result<RepoConfig> {
    let config: RepoConfig =
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))?;
    if config.schema != REPO_SCHEMA {
        return Err(Error::Unsupported(format!(
            "{what}: schema {:?}, this vrepo reads {REPO_SCHEMA:?}",
            config.schema
        )));
    }
    let bs = config.block_size;
    if !bs.is_power_of_two() || !(4096..=(1 << 20)).contains(&bs) {
        return Err(Error::Corrupt(format!("{what}: block size {bs}")));
    }
    Ok(config)
}

/// A tag: a short name that cannot be mistaken for an entry name or `latest`.
pub fn check_tag(t: &str) -> Result<()> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'))
        && manifest::parse_entry_name(t).is_none()
        && t != "latest"
        && !t.starts_with("latest~");
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "tag {t:?}: use up to 64 letters, digits and - _ . @ +, not an entry name or \"latest\" (~ and : are not allowed)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_finds_every_flipped_bit_and_every_cut() {
        let payload = b"{\n  \"entry\": \"E3\"\n}\n";
        let sealed = seal(payload);
        assert_eq!(sealed.len(), payload.len() + SEAL_LEN);
        assert_eq!(unseal(&sealed), Ok(&payload[..]));
        for at in 0..sealed.len() {
            for bit in 0..8 {
                let mut b = sealed.clone();
                b[at] ^= 1 << bit;
                assert!(unseal(&b).is_err(), "byte {at} bit {bit}");
            }
        }
        for len in 0..sealed.len() {
            assert!(unseal(&sealed[..len]).is_err(), "cut to {len}");
        }
        assert_eq!(unseal(&seal(b"")), Ok(&b""[..]));
    }

    #[test]
    fn last_entry_payloads() {
        assert_eq!(parse_last(b"7\n"), Some(7));
        for bad in [&b"7"[..], b"", b"\n", b"x\n", b"7 \n", b"-1\n"] {
            assert_eq!(parse_last(bad), None, "{bad:?}");
        }
    }
}
