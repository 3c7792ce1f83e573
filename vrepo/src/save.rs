//! `save`: a working area's VM becomes a new entry.
//!
//! 1. Inspect the working area (one VM, not running unless `--at-snapshot`, chains intact).
//! 2. Pick the parent: the entry the working area was last saved as or built from
//!    (incremental), its tree's full entry (differential), or none (full).
//! 3. Lay the files out as a volume and scan it: every 1 MiB chunk of a file whose size, mtime
//!    and CID equal the parent's is taken from the parent's stored digests and not read.
//! 4. vdiff the volume against the parent's stored block digests (never the parent's data):
//!    the delta holds literals (zstd, both cores), copies from the parent's volume and from
//!    earlier in this one, zero and unallocated ranges.
//! 5. Write delta, signature and chunk digests into a temporary folder, fsync, then publish it
//!    as the next entry in one rename.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{
    check_vm_name, hex, Entry, FileEntry, Mode, SaveStats, Stored, StoredFiles, Volume,
    ENTRY_SCHEMA,
};
use crate::repo::{check_tag, now_rfc3339, Repo};
use crate::store;
use crate::vms::{choose_base, newest_of, VmLock};
use crate::volume::{layout, Part, Source, VolumeImage};
use crate::workarea::{self, Content};
use byteorder::{ByteOrder, LittleEndian};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use vdiff::diff::{ChunkScan, DiffOptions, Scan};
use vdiff::format::{Digest, CHUNK_BYTES};

/// zstd level of a full entry's new data when none is asked for. A full entry is most of a
/// repository's bytes and is written once, so it is stored smaller than a night's data: on
/// disks of installed software level 2 stores 16-17% less than -1 for 1.3x the compression
/// time (level 3: 4% less again, but 2x the time of -1, which a full save pays in wall time).
/// See the README's figures.
pub const FULL_LEVEL: i32 = 2;

/// zstd level of a partial entry's new data when none is asked for: one of zstd's fast levels,
/// since a night's save is timed and its new data is small.
pub const PARTIAL_LEVEL: i32 = -1;

/// The level of new data when none is asked for: [`FULL_LEVEL`] for a full entry (no parent),
/// else [`PARTIAL_LEVEL`]. Saves and rewrites (which restage an entry) both use it.
pub fn default_level(full: bool) -> i32 {
    if full {
        FULL_LEVEL
    } else {
        PARTIAL_LEVEL
    }
}

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// `None`: incremental when the working area has an entry, else full.
    pub mode: Option<Mode>,
    /// Save relative to this entry (or its tree's full entry, for differential).
    pub parent: Option<String>,
    pub message: String,
    pub tags: Vec<String>,
    pub at_snapshot: bool,
    /// zstd level for new data; `None`: [`default_level`] of the entry's kind.
    pub level: Option<i32>,
    /// The longest chain an incremental save may make (default: the repository's, or none).
    pub max_chain: Option<u32>,
    /// The VM the entry belongs to (default: the working area's folder name).
    pub vm: Option<String>,
    /// How long to wait for another save of the same VM (default: refuse at once).
    pub wait: Option<std::time::Duration>,
}

/// What happened.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Saved {
    pub entry: Entry,
    /// Set when the mode asked for could not be used (no earlier entry: saved full).
    pub note: Option<String>,
}

/// Progress callbacks: total bytes to read is known up front, then bytes read so far.
pub type Progress = Option<Box<dyn Fn(u64, u64) + Send + Sync>>;

/// The VM name of a save: `--vm`, or the working area's folder name.
pub fn vm_name_of(root: &Path, given: Option<&str>) -> Result<String> {
    match given {
        Some(n) => {
            check_vm_name(n).map_err(|m| Error::Usage(format!("--vm: VM name {m}")))?;
            Ok(n.to_owned())
        }
        None => {
            let n = root
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            check_vm_name(&n).map_err(|m| {
                Error::Usage(format!(
                    "{}: the folder's name cannot name its VM ({m}); give one with --vm NAME",
                    root.display()
                ))
            })?;
            Ok(n)
        }
    }
}

pub fn save(repo: &Repo, dir: &Path, opts: &SaveOptions, progress: Progress) -> Result<Saved> {
    for t in &opts.tags {
        check_tag(t)?;
    }
    let wa = workarea::inspect(dir, opts.at_snapshot)?;
    let vm = vm_name_of(&wa.root, opts.vm.as_deref())?;
    repo.check_tags_free(&opts.tags, &vm)?;
    // One save of a VM at a time: two working areas claiming one name never interleave their
    // entries' choice of parent.
    let _vm_lock = VmLock::take(repo, &vm, &wa.root.to_string_lossy(), opts.wait)?;

    // The parent: --parent; else the entry this working area was last saved as or built from;
    // else the VM's own newest entry (the folder moved or was renamed); else, for a VM's first
    // entry, the stored entry sharing the most content (a clone of a template); else none.
    // Damaged lines of the .vmx are reported, never a reason to refuse the VM.
    let mut note = (!wa.warnings.is_empty()).then(|| wa.warnings.join("; "));
    let mut record_damage = None;
    let mut based_on = None;
    let mut anchor = match &opts.parent {
        Some(p) => Some(repo.resolve(p)?),
        None => match repo.workarea_entry(&wa.root)? {
            Ok(Some(n)) => Some(repo.load(&n)?),
            Ok(None) => None,
            Err(why) => {
                record_damage = Some(why);
                None
            }
        },
    };
    if anchor.is_none() && opts.mode != Some(Mode::Full) {
        let entries = repo.entries()?;
        let damage = match &record_damage {
            Some(why) => format!(
                "this working area's record in the repository is damaged ({why}), so the entry \
                 it was last saved as or built from is not known"
            ),
            None => "this working area has no entry recorded in the repository".into(),
        };
        if let Some(e) = newest_of(&entries, &vm) {
            note = Some(format!(
                "{damage}: continuing VM {vm:?} from its newest entry {} (saved from {})",
                e.name, e.source
            ));
            anchor = Some(e.clone());
        } else if let Some((e, b)) = choose_base(repo, &entries, &wa)? {
            note = Some(format!(
                "based on {} of VM {:?}, {}% shared (a first save of VM {vm:?}; --full saves it \
                 whole)",
                e.name, b.vm, b.shared_percent
            ));
            based_on = Some(b);
            anchor = Some(e);
        }
    }
    let (mode, parent) = match (opts.mode, anchor) {
        (Some(Mode::Full), _) => (Mode::Full, None),
        (m, None) => {
            if let Some(why) = record_damage {
                note = Some(format!(
                    "saved full: this working area's record in the repository is damaged \
                     ({why}), so the entry it was last saved as or built from is not known \
                     (--parent names one)"
                ));
            } else if let Some(m) = m {
                note = Some(format!(
                    "saved full: {} needs an earlier entry, and this working area has none \
                     (it was never saved or built here; --parent names one)",
                    m.as_str()
                ));
            }
            (Mode::Full, None)
        }
        (Some(Mode::Differential), Some(a)) => {
            let root = repo.chain(&a)?.remove(0);
            (Mode::Differential, Some(root))
        }
        (_, Some(a)) => {
            // --max-chain: an incremental entry whose chain would be too long becomes
            // differential (two links) or, when even that is too long, full.
            let max = opts
                .max_chain
                .or(repo.config.max_chain)
                .map(|m| m.max(1) as usize);
            let links = repo.chain(&a)?.len() + 1;
            match max {
                Some(m) if links > m && m >= 2 => {
                    note = join_notes(
                        note,
                        format!(
                        "saved differential: an incremental entry would make a chain of {links} \
                         links, more than --max-chain {m}"
                    ),
                    );
                    let root = repo.chain(&a)?.remove(0);
                    (Mode::Differential, Some(root))
                }
                Some(m) if links > m => {
                    note = join_notes(
                        note,
                        format!(
                        "saved full: an incremental entry would make a chain of {links} links, \
                         more than --max-chain {m}"
                    ),
                    );
                    based_on = None;
                    (Mode::Full, None)
                }
                _ => (Mode::Incremental, Some(a)),
            }
        }
    };
    let parent_data = match &parent {
        Some(p) => Some(store::load_parent(repo, p)?),
        None => None,
    };
    if let Some(pd) = &parent_data {
        if pd.scan.block_size != repo.config.block_size {
            return Err(Error::Corrupt(format!(
                "entry {}: block size {} differs from the repository's",
                pd.entry.name, pd.scan.block_size
            )));
        }
    }

    // The volume.
    let (offsets, vsize) = layout(wa.files.iter().map(|f| f.size));
    let mut parts = Vec::with_capacity(wa.files.len());
    let mut known: HashMap<u64, u64> = HashMap::new(); // our chunk -> parent's chunk
    let mut candidates: HashMap<u64, u64> = HashMap::new();
    let mut stats = SaveStats::default();
    let mut to_read = 0u64;
    for (f, &off) in wa.files.iter().zip(&offsets) {
        let unchanged = parent_data.as_ref().and_then(|pd| {
            let pf = pd.entry.file(&f.rel)?;
            let same = !matches!(f.content, Content::Bytes(_))
                && !pf.synthesized
                && pf.size == f.size
                && pf.mtime_ns == f.mtime_ns
                && pf.cid == f.cid;
            same.then_some(pf.offset)
        });
        // Where this file's chunks were in the parent, for the relative signature.
        if let Some(pf) = parent_data.as_ref().and_then(|pd| pd.entry.file(&f.rel)) {
            let n = f.size.min(pf.size).div_ceil(CHUNK_BYTES);
            for c in 0..n {
                candidates.insert(off / CHUNK_BYTES + c, pf.offset / CHUNK_BYTES + c);
            }
        }
        if let Some(poff) = unchanged {
            let n = f.size.div_ceil(CHUNK_BYTES);
            for c in 0..n {
                known.insert(off / CHUNK_BYTES + c, poff / CHUNK_BYTES + c);
            }
            stats.unchanged_file_bytes += f.size;
        } else {
            to_read += f.size;
        }
        let source = match &f.content {
            Content::Bytes(b) => Source::Bytes(b.clone()),
            Content::Path(p) => Source::File(File::open(p).at(p)?),
        };
        parts.push(Part {
            offset: off,
            size: f.size,
            source,
            name: wa.root.join(&f.rel).display().to_string(),
        });
    }
    let mut vol = VolumeImage::new(parts, vsize);
    if let Some(p) = progress {
        p(to_read, 0);
        vol.progress = Some(Box::new(move |n| p(to_read, n)));
    }
    let bs = repo.config.block_size;
    let known_fn = |i: u64| -> vdiff::Result<Option<ChunkScan>> {
        let (Some(pd), Some(&pc)) = (parent_data.as_ref(), known.get(&i)) else {
            return Ok(None);
        };
        let Some(d) = pd.chunks.get(pc as usize) else {
            return Ok(None);
        };
        Ok(Some(pd.scan.chunk_rows(pc, *d)))
    };
    // Write the entry's files (into a temporary folder, or straight to the store): the delta
    // in one pass over the working area, then the block and chunk digests that pass computed.
    // Dropped unpublished, the stage removes what it wrote.
    let mut stage = repo.store.stage(repo)?;
    let result = (|| -> Result<Entry> {
        let mut out = stage.upload(store::DELTA)?;
        let delta_path = out.describe();
        let dopts = DiffOptions {
            block_size: bs,
            level: opts.level.unwrap_or(default_level(parent_data.is_none())),
            index: true,
        };
        let parent_scan = parent_data.as_ref().map(|pd| &pd.scan);
        let (summary, scan, chunks) =
            vdiff::diff::diff_one_pass(parent_scan, &vol, &known_fn, dopts, &mut out).map_err(
                |e| match e {
                    // The encoder's write errors are a format::Error::Io.
                    vdiff::Error::Io(source)
                    | vdiff::Error::Format(vdiff::format::Error::Io(source)) => Error::Io {
                        what: format!("saving into {delta_path}"),
                        source,
                    },
                    other => Error::from(other),
                },
            )?;
        // The delta is finished (synced and hashed, or its last parts sent) on another thread
        // while the digests are written.
        let (delta_stored, written) = std::thread::scope(|s| {
            let delta = s.spawn(move || out.finish());
            let written = write_digests(
                &mut *stage,
                &wa,
                &scan,
                parent_data.as_ref(),
                &candidates,
                &chunks,
            );
            let delta = delta
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (delta, written)
        });
        let (sig_stored, chunks_stored) = written?;
        let delta_stored = delta_stored?;
        let volume_digest: Digest = scan.digest;

        // Per-file digests: BLAKE3 over the size and the file's chunk digests.
        let file_digest = |off: u64, size: u64| -> String {
            let mut h = blake3::Hasher::new();
            let mut size_le = [0u8; 8];
            LittleEndian::write_u64(&mut size_le, size);
            h.update(&size_le);
            let c0 = (off / CHUNK_BYTES) as usize;
            let n = size.div_ceil(CHUNK_BYTES) as usize;
            for d in &chunks[c0..c0 + n] {
                h.update(d);
            }
            hex(h.finalize().as_bytes())
        };
        stats.read_bytes = vol.read.load(std::sync::atomic::Ordering::Relaxed);
        stats.changed_bytes = summary.changed_bytes;
        stats.literal_bytes = summary.totals.literal_bytes;
        stats.copied_bytes = summary.totals.copy_source_bytes + summary.totals.copy_target_bytes
            - summary.unchanged_bytes;
        let files = wa
            .files
            .iter()
            .zip(&offsets)
            .map(|(f, &off)| FileEntry {
                path: f.rel.clone(),
                role: workarea::role_str(f.role),
                size: f.size,
                mtime_ns: f.mtime_ns,
                mode: f.mode,
                offset: off,
                cid: f.cid.clone(),
                digest: file_digest(off, f.size),
                synthesized: matches!(f.content, Content::Bytes(_)),
            })
            .collect();
        Ok(Entry {
            schema: ENTRY_SCHEMA.into(),
            name: String::new(),
            number: 0,
            time: now_rfc3339(),
            message: opts.message.clone(),
            mode,
            parent: parent.as_ref().map(|p| p.name.clone()),
            tags: opts.tags.clone(),
            source: wa.root.to_string_lossy().into_owned(),
            at_snapshot: wa.snapshot.clone(),
            vm: crate::manifest::VmIdentity {
                name: Some(vm.clone()),
                ..wa.vm.clone()
            },
            based_on: based_on.clone(),
            volume: Volume {
                size: vsize,
                digest: hex(&volume_digest),
                block_size: bs,
            },
            files,
            skipped: wa.skipped.clone(),
            stored: StoredFiles {
                delta: delta_stored,
                signature: sig_stored,
                chunks: chunks_stored,
            },
            stats: stats.clone(),
        })
    })();
    let mut entry = result?;
    let last_damaged = repo.last_record()?.err();
    if crate::storage::lease::any_lost() {
        return Err(Error::Locked(format!(
            "{}: this save's lock could not be renewed for {} s, so another command may hold \
             the repository now; nothing was saved",
            repo.root.display(),
            crate::storage::lease::LEASE.as_secs()
        )));
    }
    let warning = stage.publish(&mut entry, repo)?;
    // The entry is saved whatever happens now: a record that cannot be written (a full disk)
    // only loses the working area's default parent, and is reported, not an error.
    let recorded = repo
        .set_workarea_entry(&wa.root, &entry.name, "save")
        .err()
        .map(|e| {
            format!(
                "{} was saved, but could not be recorded as this working area's entry (the next \
             save picks its parent as if it was not): {e}",
                entry.name
            )
        });
    let renumbered = last_damaged.map(|why| {
        format!(
            "{} follows the newest entry present, because last-entry is damaged or unreadable \
             ({why}): \
             if newer entries were removed, their names may come again",
            entry.name
        )
    });
    let notes: Vec<String> = [note, renumbered, warning, recorded]
        .into_iter()
        .flatten()
        .collect();
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(Saved { entry, note })
}

fn join_notes(a: Option<String>, b: String) -> Option<String> {
    Some(match a {
        Some(a) => format!("{a}; {b}"),
        None => b,
    })
}

/// After the delta: refuse a torn copy (a file that changed while it was read), then write the
/// block digests (`signature.zst`) and chunk digests (`chunks.bin`) into `stage`. Returns what
/// `entry.json` records of them.
fn write_digests(
    stage: &mut dyn crate::storage::Stage,
    wa: &workarea::WorkArea,
    scan: &Scan,
    parent_data: Option<&store::ParentData>,
    candidates: &HashMap<u64, u64>,
    chunks: &[Digest],
) -> Result<(Stored, Stored)> {
    for f in &wa.files {
        if let Content::Path(p) = &f.content {
            let now = std::fs::metadata(p).at(p)?;
            if now.len() != f.size || workarea::mtime_ns(&now) != f.mtime_ns {
                return Err(Error::Io {
                    what: p.display().to_string(),
                    source: std::io::Error::other(
                        "changed while it was saved (is the VM running? power it off, \
                         or snapshot it and save --at-snapshot); nothing was stored",
                    ),
                });
            }
        }
    }
    let candidates = match parent_data {
        Some(pd) => store::chunk_candidates(candidates, chunks, &pd.chunks),
        None => HashMap::new(),
    };
    let map = |c: u64| candidates.get(&c).copied();
    let up = stage.upload(store::SIGNATURE)?;
    let name = up.describe();
    let up = store::write_signature_to(
        std::io::BufWriter::with_capacity(1 << 20, up),
        scan,
        parent_data.map(|pd| (&pd.scan, &map as &store::ChunkMap)),
    )
    .map_err(|e| named(e, &name))?;
    let sig = finish_buffered(up, &name)?;
    let up = stage.upload(store::CHUNKS)?;
    let name = up.describe();
    let up = store::write_chunks_to(std::io::BufWriter::with_capacity(1 << 20, up), chunks)
        .map_err(|e| named(e, &name))?;
    let chunks = finish_buffered(up, &name)?;
    Ok((sig, chunks))
}

/// An I/O error about `name` (the whole path or URL of what was written).
fn named(e: Error, name: &str) -> Error {
    match e {
        Error::Io { source, .. } => Error::Io {
            what: name.into(),
            source,
        },
        other => other,
    }
}

/// Flush a buffered upload and finish it.
fn finish_buffered(
    w: std::io::BufWriter<Box<dyn crate::storage::Upload>>,
    name: &str,
) -> Result<Stored> {
    w.into_inner()
        .map_err(|e| Error::Io {
            what: name.into(),
            source: e.into_error(),
        })?
        .finish()
}
