//! The VMs of a repository: every entry belongs to one (`entry.json`'s `vm.name`, or for older
//! entries their working area's folder name).
//!
//! - [`Selector`]: how a command names an entry (`E7`, a tag, `latest`, `VM:latest`,
//!   `VM:latest~N`, `VM:TAG`, `VM:E7`).
//! - [`summaries`]: `vrepo vms`, each VM with its entries and the stored bytes only it uses or
//!   shares with other VMs (a clone standing on its template's entry).
//! - [`choose_base`] and [`best_stored_base`]: the entry sharing the most content with a new
//!   VM's files, or with an entry being rewritten, found from stored chunk digests.
//! - [`VmLock`]: two working areas cannot save one VM at the same time.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{check_vm_name, parse_entry_name, BasedOn, Entry};
use crate::repo::{now_rfc3339, Repo};
use crate::store;
use crate::workarea::{Content, WorkArea};
use rustix::fs::FlockOperation;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;
use vdiff::format::{Digest, CHUNK_BYTES};

/// How a command names an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `E7` (with a VM: it must belong to it).
    Name(u64),
    /// `latest`, `latest~N`: the newest entry (of the repository, or of the VM), or the Nth
    /// entry before it, in the order entries were made.
    Latest(u64),
    /// A tag (unique within a VM; without a VM, it must be on one entry only).
    Tag(String),
}

/// A parsed selector: the VM it is scoped to, if any, and what it names there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub vm: Option<String>,
    pub what: Selector,
}

pub const SELECTOR_HELP: &str = "E7, a tag, latest (the repository's newest entry), \
     VM:latest, VM:latest~N (the Nth entry of VM before its newest), VM:TAG, VM:E7";

/// Parse `spec`. `scope` (a command's `--vm`) applies when the spec names no VM itself.
pub fn parse(spec: &str, scope: Option<&str>) -> Result<Spec> {
    let (vm, rest) = match spec.rsplit_once(':') {
        Some((vm, rest)) => {
            check_vm_name(vm).map_err(|m| Error::Usage(format!("entry {spec:?}: VM name {m}")))?;
            (Some(vm.to_owned()), rest)
        }
        None => (scope.map(str::to_owned), spec),
    };
    let what = if let Some(n) = parse_entry_name(rest) {
        Selector::Name(n)
    } else if rest == "latest" {
        Selector::Latest(0)
    } else if let Some(n) = rest.strip_prefix("latest~") {
        match n.parse::<u64>() {
            Ok(k) if !n.starts_with('+') => Selector::Latest(k),
            _ => {
                return Err(Error::Usage(format!(
                    "entry {spec:?}: latest~N takes a number (names: {SELECTOR_HELP})"
                )))
            }
        }
    } else if crate::repo::check_tag(rest).is_ok() {
        Selector::Tag(rest.to_owned())
    } else {
        return Err(Error::Usage(format!(
            "{spec:?} is not an entry (names: {SELECTOR_HELP})"
        )));
    };
    Ok(Spec { vm, what })
}

/// The names of the VMs that have entries, sorted.
pub fn vm_names(entries: &[Entry]) -> BTreeSet<String> {
    entries.iter().map(|e| e.vm_name().to_owned()).collect()
}

/// The "no such VM" error: exit 4, naming the VMs there are.
pub fn no_such_vm(name: &str, entries: &[Entry]) -> Error {
    let names = vm_names(entries);
    let list = if names.is_empty() {
        "the repository has no entries yet".to_owned()
    } else {
        format!(
            "its VMs are {}",
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    Error::Missing(format!("no VM named {name:?} in this repository ({list})"))
}

/// Check that every name of `vms` has entries (exit 4 naming the VMs there are otherwise).
pub fn check_vms(vms: &[String], entries: &[Entry]) -> Result<()> {
    let names = vm_names(entries);
    match vms.iter().find(|v| !names.contains(*v)) {
        Some(v) => Err(no_such_vm(v, entries)),
        None => Ok(()),
    }
}

/// The entries of the VMs `vms` (all entries when empty), in order.
pub fn of_vms<'a>(entries: &'a [Entry], vms: &[String]) -> Result<Vec<&'a Entry>> {
    check_vms(vms, entries)?;
    Ok(entries
        .iter()
        .filter(|e| vms.is_empty() || vms.iter().any(|v| v == e.vm_name()))
        .collect())
}

/// Resolve a selector against `entries` (every entry of the repository, ascending).
pub fn resolve<'a>(entries: &'a [Entry], spec: &str, scope: Option<&str>) -> Result<&'a Entry> {
    let p = parse(spec, scope)?;
    let pool: Vec<&Entry> = match &p.vm {
        Some(vm) => {
            let v: Vec<&Entry> = entries.iter().filter(|e| e.vm_name() == vm).collect();
            if v.is_empty() {
                return Err(no_such_vm(vm, entries));
            }
            v
        }
        None => entries.iter().collect(),
    };
    let whose = match &p.vm {
        Some(vm) => format!(" of VM {vm:?}"),
        None => String::new(),
    };
    match &p.what {
        Selector::Name(n) => match pool.iter().find(|e| e.number == *n) {
            Some(e) => Ok(e),
            None if p.vm.is_some() && entries.iter().any(|e| e.number == *n) => {
                let e = entries.iter().find(|e| e.number == *n).expect("found");
                Err(Error::Missing(format!(
                    "{} is an entry of VM {:?}, not{whose}",
                    e.name,
                    e.vm_name()
                )))
            }
            None => Err(Error::Missing(format!("no entry E{n} in this repository"))),
        },
        Selector::Latest(k) => {
            if pool.is_empty() {
                return Err(Error::Missing("the repository has no entries yet".into()));
            }
            let k = *k as usize;
            if k >= pool.len() {
                return Err(Error::Missing(format!(
                    "{spec}: there are only {} entries{whose}",
                    pool.len()
                )));
            }
            Ok(pool[pool.len() - 1 - k])
        }
        Selector::Tag(t) => {
            let hits: Vec<&&Entry> = pool.iter().filter(|e| e.tags.contains(t)).collect();
            match hits[..] {
                [e] => Ok(e),
                [] => Err(Error::Missing(format!(
                    "no entry{whose} named or tagged {t:?} (names: {SELECTOR_HELP})"
                ))),
                _ => {
                    let list: Vec<String> = hits
                        .iter()
                        .map(|e| format!("{}:{t} ({})", e.vm_name(), e.name))
                        .collect();
                    Err(Error::Usage(format!(
                        "tag {t:?} is on entries of several VMs: say which: {}",
                        list.join(", ")
                    )))
                }
            }
        }
    }
}

/// One VM of `vrepo vms`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VmSummary {
    pub vm: String,
    pub entries: usize,
    pub newest: String,
    pub newest_time: String,
    /// Stored bytes of entries only this VM's entries need.
    pub own_bytes: u64,
    /// Stored bytes of entries this VM's entries need together with other VMs' entries (a
    /// template's entry its clones stand on counts for the template and for each clone).
    pub shared_bytes: u64,
    /// The VMs whose entries this VM's chains stand on.
    pub stands_on: Vec<String>,
}

/// Which VMs need each entry: its own and those of every entry whose chain holds it.
pub fn users(entries: &[Entry]) -> HashMap<&str, BTreeSet<&str>> {
    let by_name: HashMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut out: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for e in entries {
        let vm = e.vm_name();
        let mut cur = Some(e);
        while let Some(c) = cur {
            if !out.entry(c.name.as_str()).or_default().insert(vm) && c.name != e.name {
                break;
            }
            cur = c.parent.as_deref().and_then(|p| by_name.get(p).copied());
        }
    }
    out
}

/// Every VM with its entry count, newest entry and stored bytes, sorted by name.
pub fn summaries(entries: &[Entry]) -> Vec<VmSummary> {
    let users = users(entries);
    let by_name: HashMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut out: BTreeMap<&str, VmSummary> = BTreeMap::new();
    for e in entries {
        let s = out.entry(e.vm_name()).or_insert_with(|| VmSummary {
            vm: e.vm_name().to_owned(),
            entries: 0,
            newest: String::new(),
            newest_time: String::new(),
            own_bytes: 0,
            shared_bytes: 0,
            stands_on: Vec::new(),
        });
        s.entries += 1;
        s.newest = e.name.clone();
        s.newest_time = e.time.clone();
        if let Some(p) = e.parent.as_deref().and_then(|p| by_name.get(p)) {
            let pv = p.vm_name().to_owned();
            if pv != s.vm && !s.stands_on.contains(&pv) {
                s.stands_on.push(pv);
            }
        }
    }
    for e in entries {
        let Some(u) = users.get(e.name.as_str()) else {
            continue;
        };
        for vm in u {
            if let Some(s) = out.get_mut(vm) {
                if u.len() == 1 {
                    s.own_bytes += e.stored_bytes();
                } else {
                    s.shared_bytes += e.stored_bytes();
                }
            }
        }
    }
    // A VM whose chain stands on another VM's entry through one of its own entries' ancestors
    // of a third VM: list every VM of the chain, not only the direct parent's.
    for e in entries {
        let vm = e.vm_name();
        let mut cur = e.parent.as_deref().and_then(|p| by_name.get(p).copied());
        while let Some(c) = cur {
            let cv = c.vm_name();
            if cv != vm {
                if let Some(s) = out.get_mut(vm) {
                    if !s.stands_on.iter().any(|x| x == cv) {
                        s.stands_on.push(cv.to_owned());
                    }
                }
            }
            cur = c.parent.as_deref().and_then(|p| by_name.get(p).copied());
        }
    }
    out.into_values()
        .map(|mut s| {
            s.stands_on.sort();
            s
        })
        .collect()
}

/// The share of its content a new VM must find in a stored entry for that entry to become its
/// parent.
pub const MIN_SHARED_PERCENT: f64 = 10.0;

/// How many 1 MiB chunks of a working area [`choose_base`] reads: one in 64 (1.6%), at least
/// 32 and at most 1024 (1 GiB), so choosing costs a small fraction of the save's one full read
/// (and what it reads is in the page cache for that read).
fn sample_size(total: u64) -> u64 {
    (total / 64).clamp(32, 1024).min(total)
}

/// The entry to base a new VM's first save on: among the newest entry of every VM, the one
/// holding the largest share of a sample of the working area's non-zero 1 MiB chunks (chunk
/// digests compared with each candidate's stored `chunks.bin`), when that share is at least
/// [`MIN_SHARED_PERCENT`]. Returns it with what was measured.
pub fn choose_base(
    repo: &Repo,
    entries: &[Entry],
    wa: &WorkArea,
) -> Result<Option<(Entry, BasedOn)>> {
    let heads = newest_per_vm(entries);
    if heads.is_empty() {
        return Ok(None);
    }
    // Every chunk of every file read from disk, in file order; a sample at a fixed stride.
    let mut chunks: Vec<(&std::path::Path, u64, u64)> = Vec::new();
    for f in &wa.files {
        if let Content::Path(p) = &f.content {
            for c in 0..f.size.div_ceil(CHUNK_BYTES) {
                let at = c * CHUNK_BYTES;
                chunks.push((p, at, CHUNK_BYTES.min(f.size - at)));
            }
        }
    }
    let total = chunks.len() as u64;
    let want = sample_size(total);
    if want == 0 {
        return Ok(None);
    }
    // A file's last chunk is short: in the stored volume it is followed by zeros up to the next
    // 1 MiB (or ends the volume), so both digests are looked for.
    let mut sample: Vec<(Digest, Option<Digest>)> = Vec::new();
    let mut nonzero = 0u64;
    let mut sampled_bytes = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    let mut leaves = Vec::new();
    let mut open: Option<(&std::path::Path, File)> = None;
    for k in 0..want {
        let (p, at, len) = chunks[(k * total / want) as usize];
        if open.as_ref().is_none_or(|(q, _)| *q != p) {
            open = Some((p, File::open(p).at(p)?));
        }
        let f = &mut open.as_mut().expect("opened").1;
        let b = &mut buf[..len as usize];
        f.seek(SeekFrom::Start(at)).at(p)?;
        f.read_exact(b).at(p)?;
        sampled_bytes += len;
        if vdiff::digest::is_zero(b) {
            continue;
        }
        nonzero += 1;
        vdiff::digest::leaves(b, &mut leaves);
        let short = vdiff::digest::chunk_from_leaves(&leaves);
        if len == CHUNK_BYTES {
            sample.push((short, None));
        } else {
            buf[len as usize..].fill(0);
            vdiff::digest::leaves(&buf, &mut leaves);
            sample.push((vdiff::digest::chunk_from_leaves(&leaves), Some(short)));
        }
    }
    sample.sort_unstable();
    sample.dedup();
    let wanted: HashSet<&Digest> = sample
        .iter()
        .flat_map(|(a, b)| std::iter::once(a).chain(b.as_ref()))
        .collect();
    if nonzero == 0 {
        return Ok(None);
    }
    // Ties (a template and its clones share the same part of a new clone) go to the shorter
    // chain, so a clone stands on the template rather than on another clone; then to the newest.
    let by_name: HashMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let links = |e: &Entry| {
        let mut n = 1;
        let mut cur = e.parent.as_deref();
        while let Some(p) = cur {
            n += 1;
            cur = by_name.get(p).and_then(|x| x.parent.as_deref());
        }
        n
    };
    let best = most_shared(repo, heads, &links, &|digests| {
        let present: HashSet<&Digest> = digests.iter().filter(|d| wanted.contains(*d)).collect();
        // Distinct sampled chunks found (a chunk sampled twice counts once).
        sample
            .iter()
            .filter(|(a, b)| present.contains(a) || b.as_ref().is_some_and(|b| present.contains(b)))
            .count()
    });
    let Some((e, hits)) = best else {
        return Ok(None);
    };
    let percent = 100.0 * hits as f64 / sample.len() as f64;
    if percent < MIN_SHARED_PERCENT {
        return Ok(None);
    }
    let based = BasedOn {
        entry: e.name.clone(),
        vm: e.vm_name().to_owned(),
        shared_percent: (percent * 10.0).round() / 10.0,
        sampled_bytes,
    };
    Ok(Some((e.clone(), based)))
}

/// The newest entry (highest number) of each VM.
pub fn newest_per_vm(entries: &[Entry]) -> Vec<&Entry> {
    let mut m: BTreeMap<&str, &Entry> = BTreeMap::new();
    for e in entries {
        m.insert(e.vm_name(), e);
    }
    m.into_values().collect()
}

/// The newest entry of VM `vm`.
pub fn newest_of<'a>(entries: &'a [Entry], vm: &str) -> Option<&'a Entry> {
    entries.iter().rev().find(|e| e.vm_name() == vm)
}

/// Among `candidates`, the one whose stored chunk digests hold the largest share of `e`'s
/// non-zero chunks, when that share is at least [`MIN_SHARED_PERCENT`]. Used by the rewrites
/// for an entry that loses every ancestor: rather than make it full, it is based on the kept
/// entry that shares most with it (a clone's oldest entry, once its template's old entries are
/// pruned, goes onto the template's entry that is kept).
///
/// Ties go to the candidate with the fewer links (`links`: its chain's length as it will be),
/// then to the newest.
pub fn best_stored_base<'a>(
    repo: &Repo,
    e: &Entry,
    candidates: &[&'a Entry],
    links: &dyn Fn(&Entry) -> usize,
) -> Result<Option<(&'a Entry, f64)>> {
    if candidates.is_empty() {
        return Ok(None);
    }
    let zero = vdiff::digest::zero_chunk();
    let own: HashSet<Digest> = store::read_chunks(repo, e)?
        .into_iter()
        .filter(|d| *d != zero)
        .collect();
    if own.is_empty() {
        return Ok(None);
    }
    let best = most_shared(repo, candidates.iter().copied(), links, &|digests| {
        let found: HashSet<&Digest> = digests.iter().filter(|d| own.contains(*d)).collect();
        found.len()
    });
    Ok(best.and_then(|(c, n)| {
        let p = 100.0 * n as f64 / own.len() as f64;
        (p >= MIN_SHARED_PERCENT).then_some((c, p))
    }))
}

/// Among `candidates`, the one whose stored chunk digests give the most `hits` (ties: the fewer
/// `links`, then the newest), with its hits. A candidate whose `chunks.bin` cannot be read is
/// passed over: it could not be a parent either.
fn most_shared<'a>(
    repo: &Repo,
    candidates: impl IntoIterator<Item = &'a Entry>,
    links: &dyn Fn(&Entry) -> usize,
    hits: &dyn Fn(&[Digest]) -> usize,
) -> Option<(&'a Entry, usize)> {
    // Most hits, then fewest links, then newest.
    type Rank = (usize, std::cmp::Reverse<usize>, u64);
    let mut best: Option<(Rank, &Entry)> = None;
    for c in candidates {
        let Ok(digests) = store::read_chunks(repo, c) else {
            continue;
        };
        let key = (hits(&digests), std::cmp::Reverse(links(c)), c.number);
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, c));
        }
    }
    best.map(|(k, c)| (c, k.0))
}

/// While held, no other save of the same VM runs (from another working area, or the same).
/// A `flock` on `REPO/locks/vm-HASH.lock`, released when dropped or when the process dies.
pub struct VmLock {
    _file: Option<File>,
    _lease: Option<crate::storage::lease::Lease>,
}

pub const LOCKS: &str = "locks";

impl Drop for VmLock {
    fn drop(&mut self) {
        // The holder's line goes with the hold (the unlock follows when the file closes).
        if let Some(f) = &self._file {
            let _ = f.set_len(0);
        }
    }
}

impl VmLock {
    /// Take VM `vm`'s save lock for the working area `from`, waiting up to `wait`.
    pub fn take(repo: &Repo, vm: &str, from: &str, wait: Option<Duration>) -> Result<VmLock> {
        let busy = |holder: String| {
            Error::Locked(format!(
                "VM {vm:?} is being saved{holder}: one VM is saved by one save at a \
                 time (--vm NAME saves {from} as another VM; --wait SECONDS waits)"
            ))
        };
        if repo.store.local_root().is_none() {
            use crate::storage::lease;
            let key = blake3::hash(vm.as_bytes()).to_hex();
            let message = |h: Option<&lease::Holder>| {
                let holder = h.map_or(String::new(), |h| {
                    format!(
                        " from {} (pid {} on {}, since {})",
                        h.detail.as_deref().unwrap_or("?"),
                        h.pid,
                        h.host,
                        h.since
                    )
                });
                busy(holder).to_string()
            };
            let l = lease::acquire(
                &repo.store,
                &format!("vm-{}", &key[..32]),
                lease::Mode::Exclusive,
                "save",
                Some(from),
                wait,
                &message,
            )?;
            return Ok(VmLock {
                _file: None,
                _lease: Some(l),
            });
        }
        let dir = repo.root.join(LOCKS);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io(&dir, e))
            }
            _ => {}
        }
        // A plain folder, not a link that would aim the lock files anywhere.
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(Error::Corrupt(format!(
                "{}: the folder {LOCKS}/ is not a plain folder",
                repo.root.display()
            )));
        }
        let key = blake3::hash(vm.as_bytes()).to_hex();
        let path = dir.join(format!("vm-{}.lock", &key[..32]));
        let mut file = crate::lock::open_lock_file(&path)?;
        if !crate::lock::flock_within(&file, FlockOperation::NonBlockingLockExclusive, wait)
            .at(&path)?
        {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
            let live = crate::owner::holder_may_live(v["host"].as_str(), v["pid"].as_u64());
            let holder = match v["workarea"].as_str().filter(|_| live) {
                Some(w) => format!(
                    " from {w} (pid {} on {}, since {})",
                    v["pid"],
                    v["host"].as_str().unwrap_or("?"),
                    v["since"].as_str().unwrap_or("?")
                ),
                None => String::new(),
            };
            return Err(busy(holder));
        }
        // Only for messages: who holds it.
        let info = serde_json::json!({
            "vm": vm, "workarea": from, "pid": std::process::id(),
            "host": crate::owner::hostname(), "since": now_rfc3339(),
        })
        .to_string();
        let _ = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(info.as_bytes()));
        Ok(VmLock {
            _file: Some(file),
            _lease: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let p = |s: &str| parse(s, None).map(|x| (x.vm, x.what));
        assert_eq!(p("E7").unwrap(), (None, Selector::Name(7)));
        assert_eq!(p("latest").unwrap(), (None, Selector::Latest(0)));
        assert_eq!(p("latest~2").unwrap(), (None, Selector::Latest(2)));
        assert_eq!(
            p("web:latest~1").unwrap(),
            (Some("web".into()), Selector::Latest(1))
        );
        assert_eq!(
            p("db:prod:monday").unwrap(),
            (Some("db:prod".into()), Selector::Tag("monday".into()))
        );
        assert_eq!(
            p("web:E3").unwrap(),
            (Some("web".into()), Selector::Name(3))
        );
        assert_eq!(
            parse("latest", Some("web")).unwrap(),
            Spec {
                vm: Some("web".into()),
                what: Selector::Latest(0)
            }
        );
        for bad in [
            "latest~",
            "latest~x",
            "latest~-1",
            "latest~+1",
            ":latest",
            "web:",
            "a b",
        ] {
            assert!(parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn samples_are_a_small_share() {
        assert_eq!(sample_size(0), 0);
        assert_eq!(sample_size(10), 10);
        assert_eq!(sample_size(540), 32);
        assert_eq!(sample_size(4096), 64);
        assert_eq!(sample_size(16384), 256);
        assert_eq!(sample_size(1 << 20), 1024);
    }
}
