//! `copy`: entries from one repository to another (a local folder and a bucket, either way).
//!
//! Each entry is copied after its parent, only when the target does not hold it yet. An entry
//! is recognised in the target by what it stores, not by its name (names are given by each
//! repository): its volume's digest and its delta's BLAKE3. A delta is copied byte for byte,
//! so a copied partial entry's delta still applies to the copy of its parent, whose volume is
//! the same. Every stored file's size and BLAKE3 are checked against `entry.json` as it
//! arrives, before the entry is published in the target; a copy stopped half-way leaves no
//! entry behind (its staged files are a dead command's leftovers), and the next copy starts
//! again from the first entry missing.

use crate::error::{Error, Result};
use crate::manifest::{Entry, ENTRY_SCHEMA};
use crate::repo::Repo;
use crate::store;
use std::collections::HashMap;
use std::io::Write;

/// What a copy did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Copied {
    /// Source entry name and its name in the target, in the order copied.
    pub copied: Vec<(String, String)>,
    /// Source entries the target held already, and their names there.
    pub present: Vec<(String, String)>,
    /// Stored bytes copied.
    pub bytes: u64,
    /// Notes for the user (a tag left behind because the target has it on another entry).
    pub notes: Vec<String>,
}

/// How an entry is known across repositories.
fn identity(e: &Entry) -> (String, String) {
    (e.volume.digest.clone(), e.stored.delta.blake3.clone())
}

/// The entries `wanted` (names in `from`) need, each after its parent, without repeats. The
/// entries are read once (on object storage, every `entry.json` is a request).
fn with_ancestors(from: &Repo, wanted: &[Entry]) -> Result<Vec<Entry>> {
    let all: HashMap<String, Entry> = from
        .entries()?
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect();
    let mut needed: HashMap<String, Entry> = HashMap::new();
    for e in wanted {
        let mut cur = Some(e.clone());
        while let Some(c) = cur.take() {
            if needed.contains_key(&c.name) {
                break;
            }
            if let Some(p) = &c.parent {
                cur = Some(all.get(p).cloned().ok_or_else(|| {
                    Error::Corrupt(format!(
                        "entry {} needs {p}, which is missing from the repository",
                        c.name
                    ))
                })?);
            }
            needed.insert(c.name.clone(), c);
        }
    }
    // Parents have lower numbers: number order puts each after its parent.
    let mut out: Vec<Entry> = needed.into_values().collect();
    out.sort_by_key(|e| e.number);
    Ok(out)
}

/// Copy `wanted` (and what they need) from `from` to `to`. `progress` is told each entry as
/// it starts (source name, its stored bytes).
pub fn copy(
    from: &Repo,
    to: &Repo,
    wanted: &[Entry],
    progress: &dyn Fn(&str, u64),
) -> Result<Copied> {
    if from.config.block_size != to.config.block_size {
        return Err(Error::Usage(format!(
            "{} has block size {} and {} has {}: entries copy only between repositories of one block size",
            from.root.display(),
            from.config.block_size,
            to.root.display(),
            to.config.block_size
        )));
    }
    let todo = with_ancestors(from, wanted)?;
    let present = to.entries()?;
    let mut there: HashMap<(String, String), String> = present
        .iter()
        .map(|e| (identity(e), e.name.clone()))
        .collect();
    // Tags name one entry of a VM: those the target has, by VM.
    let mut taken: HashMap<String, Vec<String>> = HashMap::new();
    for e in &present {
        taken
            .entry(e.vm_name().to_owned())
            .or_default()
            .extend(e.tags.iter().cloned());
    }
    let mut names: HashMap<String, String> = HashMap::new();
    let mut done = Copied::default();
    for e in &todo {
        if let Some(n) = there.get(&identity(e)) {
            names.insert(e.name.clone(), n.clone());
            done.present.push((e.name.clone(), n.clone()));
            continue;
        }
        progress(&e.name, e.stored_bytes());
        let mut ne = e.clone();
        ne.schema = ENTRY_SCHEMA.into();
        ne.parent = match &e.parent {
            None => None,
            Some(p) => Some(names.get(p).cloned().ok_or_else(|| {
                Error::Corrupt(format!("entry {}: its parent {p} was not copied", e.name))
            })?),
        };
        if let Some(b) = &mut ne.based_on {
            match names.get(&b.entry) {
                Some(n) => b.entry = n.clone(),
                None => ne.based_on = None,
            }
        }
        // A tag the target has on another entry of the VM stays behind, said.
        let vm_tags = taken.entry(ne.vm_name().to_owned()).or_default();
        let (keep, dropped): (Vec<String>, Vec<String>) =
            ne.tags.iter().cloned().partition(|t| !vm_tags.contains(t));
        vm_tags.extend(keep.iter().cloned());
        ne.tags = keep;
        let mut stage = to.store.stage(to)?;
        for (file, want) in [
            (store::DELTA, &e.stored.delta),
            (store::SIGNATURE, &e.stored.signature),
            (store::CHUNKS, &e.stored.chunks),
        ] {
            let key = store::key_of(&e.name, file);
            let (src, len) = from.store.open(&key)?;
            if len != want.size {
                return Err(Error::Corrupt(format!(
                    "entry {}: {file} is {len} bytes, entry.json says {}",
                    e.name, want.size
                )));
            }
            let mut up = stage.upload(file)?;
            let mut buf = vec![0u8; 8 << 20];
            let mut at = 0u64;
            while at < len {
                let n = ((len - at) as usize).min(buf.len());
                let k = src.read_at(&mut buf[..n], at).map_err(|err| Error::Io {
                    what: format!("{}/{key}", from.store.location()),
                    source: err,
                })?;
                if k == 0 {
                    return Err(Error::Corrupt(format!(
                        "entry {}: {file} is cut short",
                        e.name
                    )));
                }
                up.write_all(&buf[..k]).map_err(|err| Error::Io {
                    what: format!("{}: {key}", to.store.location()),
                    source: err,
                })?;
                at += k as u64;
            }
            let got = up.finish()?;
            if &got != want {
                return Err(Error::Corrupt(format!(
                    "entry {}: {file} arrived with another size or BLAKE3 than entry.json gives \
                     (damaged in {}: `vrepo verify --read-data` there); nothing was published",
                    e.name,
                    from.root.display()
                )));
            }
            done.bytes += len;
        }
        if let Some(w) = stage.publish(&mut ne, to)? {
            done.notes.push(w);
        }
        for t in dropped {
            done.notes.push(format!(
                "{} copied as {} without its tag {t:?}, which {} has on another entry of VM {:?}",
                e.name,
                ne.name,
                to.root.display(),
                ne.vm_name()
            ));
        }
        there.insert(identity(e), ne.name.clone());
        names.insert(e.name.clone(), ne.name.clone());
        done.copied.push((e.name.clone(), ne.name.clone()));
    }
    Ok(done)
}
