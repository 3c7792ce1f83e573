//! `vrepo`: the VML repository tool. A thin binary: arguments, one library call, printing.

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vml_cli::{Exit, Failure};
use vrepo::build::BuildOptions;
use vrepo::lock::{LockMode, RepoLock};
use vrepo::manifest::Entry;
use vrepo::save::SaveOptions;
use vrepo::{query, Error, ErrorKind, Mode, Repo};

/// Save VMware VMs into a repository as full, incremental or differential entries, and build
/// any entry back into a working area, byte for byte.
///
/// A working area is a folder holding one VM (.vmx, disks, snapshot chain, nvram...). Every
/// entry belongs to a VM (save --vm NAME; by default the working area's folder name); many VMs
/// share one repository, and a clone of a template is stored as what differs from it.
///
/// ENTRY selectors: E7; a tag; latest (the repository's newest entry); VM:latest;
/// VM:latest~N (the Nth entry of VM before its newest); VM:TAG; VM:E7. Layout of the
/// repository: docs/vrepo.md. Exit codes: 0 ok, 1 no (verify found damage), 2 usage,
/// 3 corrupt input or repository, 4 missing (entry, file, repository), 5 unsupported, 6 I/O
/// error, 7 refused (running VM, non-empty working area, unsafe path), 8 locked
/// (docs/exit-codes.md).
#[derive(Parser)]
#[command(name = "vrepo", version)]
struct Cli {
    /// The repository: a folder, or s3:http://HOST:PORT/BUCKET/PREFIX (or s3:https://...) on
    /// S3-compatible object storage, with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_DEFAULT_REGION set (default: $VREPO_REPOSITORY).
    #[arg(
        short = 'r',
        long = "repo",
        env = "VREPO_REPOSITORY",
        value_name = "REPO"
    )]
    repo: Option<PathBuf>,
    /// Print JSON on stdout (one object; JSON Lines for list, vms and diff).
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars (they are drawn only when stderr is a terminal anyway).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// When another command holds the repository lock, wait up to this long for it (default:
    /// fail at once with exit code 8).
    #[arg(long, global = true, value_name = "SECONDS")]
    wait: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a new, empty repository (the folder must be new or empty).
    Init {
        /// Block size of every entry, a power of two from 4096 to 1048576.
        #[arg(long, default_value_t = 4096, value_name = "N")]
        block_size: u32,
        /// Default for save --max-chain.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_chain: Option<u32>,
    },
    /// Save the VM of a working area as a new entry of its VM. Default: incremental against
    /// the entry this working area was last saved as or built from; else against its VM's
    /// newest entry (a moved folder keeps its chain); else, for a VM's first entry, against
    /// the stored entry sharing the most content with it (at least 10%: a clone of a
    /// template); else full.
    Save {
        workarea: PathBuf,
        /// The VM the entry belongs to (default: the working area's folder name). No `/`, no
        /// control characters, not an entry name.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// A full entry: the whole VM.
        #[arg(long, conflicts_with_all = ["incremental", "differential"])]
        full: bool,
        /// Only what differs from the previous entry.
        #[arg(long, conflicts_with = "differential")]
        incremental: bool,
        /// Only what differs from the full entry at the base of the tree.
        #[arg(long)]
        differential: bool,
        /// Save relative to this entry (E3, a tag, latest, VM:latest...) instead of the one
        /// chosen as above.
        #[arg(long, value_name = "ENTRY", conflicts_with = "full")]
        parent: Option<String>,
        /// A message stored with the entry.
        #[arg(short, long, default_value = "")]
        message: String,
        /// Name the entry by this tag too (unique in the repository); may be repeated.
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// Save the VM as of its current VMware snapshot (the frozen disk links, the snapshot's
        /// files, the config with its disks at those links), so a running VM is saved
        /// consistently.
        #[arg(long)]
        at_snapshot: bool,
        /// zstd level for new data, -7 to 22 (negative levels are zstd's fast ones). Default:
        /// 2 for a full entry (most of a repository, written once: on disks of installed
        /// software 16-17% smaller than at -1, for 1.3x the compression time), -1 for a
        /// partial one (a night's save, timed; its new data is small).
        #[arg(
            long,
            allow_negative_numbers = true,
            value_parser = clap::value_parser!(i32).range(-7..=22),
            value_name = "L"
        )]
        level: Option<i32>,
        /// When an incremental entry would make a chain longer than N links (a full entry
        /// is one link), save a differential entry instead (or a full one when N is 1), so
        /// build time stays bounded. Default: the repository's (init --max-chain), or none.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_chain: Option<u32>,
    },
    /// Recreate an entry's VM in a working area (created if missing; must be empty unless
    /// --force). Files are written under temporary names and renamed at the end.
    Build {
        entry: String,
        workarea: PathBuf,
        /// Build into a non-empty working area, replacing files of the same names.
        #[arg(long)]
        force: bool,
        /// Flush every file to stable storage before renaming it into place.
        #[arg(long)]
        sync: bool,
    },
    /// The entries, oldest first.
    List {
        /// Only the entries of this VM (may be repeated).
        #[arg(long = "vm", value_name = "NAME")]
        vms: Vec<String>,
    },
    /// Draw the trees of entries by VM: mode, stored size, time and message of each; an entry
    /// standing on another VM's entry names it.
    Tree {
        /// Only this VM (may be repeated).
        #[arg(long = "vm", value_name = "NAME")]
        vms: Vec<String>,
    },
    /// The VMs: entries, newest entry, stored bytes only each one uses and bytes shared with
    /// other VMs (a template's entries its clones stand on).
    Vms,
    /// Everything about one entry (its entry.json with --json).
    Show { entry: String },
    /// The entries needed to build ENTRY, its tree's full entry first.
    Deps { entry: String },
    /// Which files changed between two entries, and how many bytes (from stored digests).
    /// With --vm NAME and no entries: the VM's entry before its newest, and its newest.
    Diff {
        entry1: Option<String>,
        entry2: Option<String>,
        /// Entries without a VM (latest, latest~1, a tag) are this VM's.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
    },
    /// Check that entries can be built: structure always; with --read-data every stored byte
    /// against its digest. Names every damaged entry, every entry that needs one
    /// (unbuildable) and every entry still fine, and any damaged bookkeeping file (last-entry,
    /// a working-area record, a journal); exit 1 on damage.
    Verify {
        /// Entries to check (with the entries they need); default all.
        entries: Vec<String>,
        /// Check every entry of this VM (may be repeated), with the entries they need.
        #[arg(long = "vm", value_name = "NAME")]
        vms: Vec<String>,
        /// Read every stored byte: BLAKE3 of every file, every delta record's checksum.
        #[arg(long, conflicts_with = "sample")]
        read_data: bool,
        /// Read this percentage of each delta's records, chosen at random.
        #[arg(long, value_name = "PERCENT")]
        sample: Option<f64>,
    },
    /// Copy entries to another repository (a folder or s3:URL, either way): only those it
    /// lacks, each after its parent, every stored file checked against its BLAKE3 as it
    /// arrives. An interrupted copy resumes where it stopped when run again. The target
    /// must exist (`vrepo -r TARGET init`), with the same block size.
    Copy {
        /// Entries to copy (with the entries they need).
        entries: Vec<String>,
        /// The repository to copy into.
        #[arg(long = "to", value_name = "REPO")]
        to: PathBuf,
        /// Copy every entry.
        #[arg(long, conflicts_with = "entries")]
        all: bool,
        /// Copy every entry of this VM (may be repeated).
        #[arg(long = "vm", value_name = "NAME", conflicts_with = "all")]
        vms: Vec<String>,
    },
    /// Remove an entry. Refused while other entries depend on it, unless --rebase: they are
    /// first rewritten so they no longer need it (relative to its parent, or full). Every
    /// other entry still builds to the same bytes. `rm --vm NAME --all` retires a VM: every
    /// entry of it goes, and other VMs' entries standing on them are rewritten. Takes the
    /// exclusive lock.
    Rm {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        entry: Option<String>,
        /// Rewrite the entries that depend on ENTRY first.
        #[arg(long)]
        rebase: bool,
        /// With --all: the VM to retire (may be repeated).
        #[arg(long = "vm", value_name = "NAME", requires = "all")]
        vms: Vec<String>,
        /// Remove every entry of the VMs given with --vm.
        #[arg(long, requires = "vms")]
        all: bool,
        /// With --all: print what would be done, change nothing.
        #[arg(long, requires = "all")]
        dry_run: bool,
    },
    /// Shorten the chain an entry needs: rewrite it relative to its parent's parent, or with
    /// --full (or when its parent is a full entry) as a full entry. Entries depending on it
    /// stay buildable. Takes the exclusive lock.
    Consolidate {
        entry: String,
        #[arg(long)]
        full: bool,
        /// zstd level of the rewritten entry's new data (default: 2 for a full entry, -1 for
        /// a partial one). On a full entry, rewrites it at this level: recompression, e.g.
        /// `--level 19` for an entry kept for long.
        #[arg(
            long,
            allow_negative_numbers = true,
            value_parser = clap::value_parser!(i32).range(-7..=22),
            value_name = "L"
        )]
        level: Option<i32>,
    },
    /// Remove the entries a retention policy does not keep, applied to each VM's entries
    /// separately. Kept entries never break: a kept entry whose parent goes is rewritten onto
    /// its nearest kept ancestor, or else onto the earlier kept entry sharing the most content
    /// with it, or made full. Prints what it removes and rewrites. Takes the exclusive lock.
    Prune {
        /// Only these VMs' entries (may be repeated); other VMs keep everything.
        #[arg(long = "vm", value_name = "NAME")]
        vms: Vec<String>,
        /// zstd level of the entries a prune rewrites (default: 2 for one made full, -1 for
        /// one rewritten onto another parent).
        #[arg(
            long,
            allow_negative_numbers = true,
            value_parser = clap::value_parser!(i32).range(-7..=22),
            value_name = "L"
        )]
        level: Option<i32>,
        /// Allow a policy that keeps no entry of a VM (all of its entries go).
        #[arg(long)]
        allow_empty: bool,
        /// Keep the newest N entries.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_last: usize,
        /// Keep the newest entry of each of the newest D days that have entries.
        #[arg(long, default_value_t = 0, value_name = "D")]
        keep_daily: usize,
        /// The same per ISO week.
        #[arg(long, default_value_t = 0, value_name = "W")]
        keep_weekly: usize,
        /// The same per month.
        #[arg(long, default_value_t = 0, value_name = "M")]
        keep_monthly: usize,
        /// Print what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Mount the repository read-only with FUSE, in the foreground until unmounted
    /// (`fusermount3 -u MOUNTPOINT`) or interrupted: MOUNTPOINT/entries/E7/ holds entry E7's
    /// files as saved, guest/E7/DISK.raw the guest-visible image of each of its disks, and
    /// vms/NAME/ symbolic links to each VM's entries (latest, each tag, each entry). Nothing is
    /// built: reads are served from the stored deltas, each record checked; a damaged one
    /// fails the reads that need it (EIO) and is named on stderr. Holds the repository's
    /// shared lock: rewrites (rm, consolidate, prune) exit 8, or with --wait wait, until it
    /// is unmounted.
    Mount {
        /// An empty folder.
        mountpoint: PathBuf,
        /// Only this VM's entries (may be repeated).
        #[arg(long = "vm", value_name = "NAME")]
        vms: Vec<String>,
        /// MiB of inflated records kept in memory, shared by all files.
        #[arg(long, default_value_t = 64, value_name = "MIB")]
        cache_mib: usize,
    },
    /// One stored file's bytes to stdout; with --guest, the guest-visible contents of a disk.
    Cat {
        entry: String,
        file: String,
        /// The disk's guest-visible contents (the FILE is a disk's top link).
        #[arg(long)]
        guest: bool,
    },
}

fn exit_of(k: ErrorKind) -> Exit {
    match k {
        ErrorKind::Usage => Exit::Usage,
        ErrorKind::Corrupt => Exit::Corrupt,
        ErrorKind::Missing => Exit::Missing,
        ErrorKind::Unsupported => Exit::Unsupported,
        ErrorKind::Io => Exit::Io,
        ErrorKind::Refused => Exit::Refused,
        ErrorKind::Locked => Exit::Locked,
    }
}

fn fail(e: Error) -> Failure {
    Failure::new(exit_of(e.kind()), e)
}

fn out_err(e: io::Error) -> Failure {
    Failure::new(Exit::Io, format!("writing to stdout: {e}"))
}

/// A progress bar on stderr (only on a terminal) fed `(total, done)` reports; see [`Meter`].
fn bar(quiet: bool, what: &'static str) -> Option<Box<dyn Fn(u64, u64) + Send + Sync>> {
    if quiet || !io::stderr().is_terminal() {
        return None;
    }
    // Hidden until the first report gives its total: never drawn as "0 B/0 B".
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb.set_message(what);
    let meter = Mutex::new(Meter::default());
    let pb = ClearOnDrop(pb);
    Some(Box::new(move |total, done| {
        let pb = &pb.0;
        let mut m = meter.lock().unwrap_or_else(|e| e.into_inner());
        match m.report(total, done) {
            Shown::Nothing => {}
            Shown::At { total, pos, first } => {
                pb.set_length(total);
                pb.set_position(pos);
                if first {
                    pb.reset_eta();
                    pb.set_draw_target(ProgressDrawTarget::stderr());
                }
            }
            Shown::Done => pb.finish_and_clear(),
        }
    }))
}

/// A bar whose reports stop short of the total (a sparse file reads fewer bytes than its
/// size) is cleared when its job ends, not left on the terminal.
struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// What a progress bar shows, from `(total, done)` reports. Save's readers are several threads,
/// each reporting the running count it added to, so reports arrive out of order; and a count
/// can pass the total (a file read whole although some of it was known). The bar shows nothing
/// until a total is known, then a position that never steps back nor passes the total, and ends
/// once, when the total is reached.
#[derive(Debug, Default)]
struct Meter {
    total: u64,
    pos: u64,
    shown: bool,
    finished: bool,
}

#[derive(Debug, PartialEq)]
enum Shown {
    Nothing,
    /// Draw the bar at `pos` of `total`; `first`: the bar's first drawing.
    At {
        total: u64,
        pos: u64,
        first: bool,
    },
    /// Clear the bar: the total is reached (or there was nothing to do).
    Done,
}

impl Meter {
    fn report(&mut self, total: u64, done: u64) -> Shown {
        if self.finished {
            return Shown::Nothing;
        }
        let pos = done.max(self.pos).min(total);
        if total == 0 || pos >= total {
            self.finished = true;
            return Shown::Done;
        }
        if self.shown && total == self.total && pos == self.pos {
            return Shown::Nothing;
        }
        let first = !self.shown;
        (self.total, self.pos, self.shown) = (total, pos, true);
        Shown::At { total, pos, first }
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, v).map_err(|e| out_err(io::Error::other(e)))?;
    writeln!(out).map_err(out_err)
}

/// Open the repository and take its lock, shared (every command so far adds or reads).
fn open_as(cli: &CliCommon, command: &str, mode: LockMode) -> Result<(Repo, RepoLock), Failure> {
    let Some(r) = &cli.repo else {
        return Err(Failure::new(
            Exit::Usage,
            "no repository: give -r REPO or set VREPO_REPOSITORY",
        ));
    };
    let wait = cli.wait.map(std::time::Duration::from_secs);
    let loc = location(r)?;
    let (repo, lock, note) =
        vrepo::rewrite::open_locked(&loc, mode, command, wait).map_err(fail)?;
    if let Some(n) = note {
        eprintln!("vrepo: {n}");
    }
    Ok((repo, lock))
}

/// On object storage, what a command sent and received, on stderr (unless --quiet).
fn traffic(repo: &Repo, quiet: bool) {
    let (sent, got) = (repo.store.bytes_sent(), repo.store.bytes_received());
    if !quiet && repo.store.local_root().is_none() {
        eprintln!(
            "vrepo: sent {sent} bytes ({}) to the store, received {got} bytes ({})",
            query::human(sent),
            query::human(got)
        );
    }
}

/// Where `-r` points: `s3:URL`, else a folder.
fn location(r: &std::path::Path) -> Result<vrepo::storage::Location, Failure> {
    match r.to_str() {
        Some(s) if s.starts_with("s3:") => vrepo::storage::Location::parse(s).map_err(fail),
        _ => Ok(vrepo::storage::Location::Local(r.to_path_buf())),
    }
}

fn open(cli: &CliCommon, command: &str) -> Result<(Repo, RepoLock), Failure> {
    open_as(cli, command, LockMode::Shared)
}

struct CliCommon {
    repo: Option<PathBuf>,
    wait: Option<u64>,
}

fn show_text(e: &Entry) -> String {
    let mut s = String::new();
    s.push_str(&format!("entry     {}\n", e.name));
    s.push_str(&format!("time      {}\n", e.time));
    s.push_str(&format!("mode      {}\n", e.mode.as_str()));
    s.push_str(&format!(
        "parent    {}\n",
        e.parent.as_deref().unwrap_or("-")
    ));
    if !e.tags.is_empty() {
        s.push_str(&format!("tags      {}\n", e.tags.join(", ")));
    }
    if !e.message.is_empty() {
        s.push_str(&format!("message   {}\n", e.message));
    }
    s.push_str(&format!("source    {}\n", e.source));
    if let Some(snap) = &e.at_snapshot {
        s.push_str(&format!("snapshot  {snap}\n"));
    }
    s.push_str(&format!(
        "vm        {} ({})\n",
        e.vm.display_name.as_deref().unwrap_or("?"),
        e.vm.vmx
    ));
    s.push_str(&format!(
        "size      {} of files, {} stored\n",
        query::human(e.vm_bytes()),
        query::human(e.stored_bytes())
    ));
    s.push_str(&format!(
        "save      read {}, {} unchanged files not read, {} new data\n",
        query::human(e.stats.read_bytes),
        query::human(e.stats.unchanged_file_bytes),
        query::human(e.stats.literal_bytes)
    ));
    s.push_str("files\n");
    for f in &e.files {
        s.push_str(&format!(
            "  {:>10}  {:<16} {}\n",
            query::human(f.size),
            f.role,
            f.path
        ));
    }
    for k in &e.skipped {
        s.push_str(&format!("  skipped   {} ({})\n", k.path, k.reason));
    }
    s
}

fn run(cli: Cli) -> Result<Exit, Failure> {
    let mut stdout = io::stdout().lock();
    let common = CliCommon {
        repo: cli.repo.clone(),
        wait: cli.wait,
    };
    let mut exit = Exit::Ok;
    match cli.command {
        Command::Init {
            block_size,
            max_chain,
        } => {
            let Some(r) = &cli.repo else {
                return Err(Failure::new(
                    Exit::Usage,
                    "no repository: give -r REPO or set VREPO_REPOSITORY",
                ));
            };
            if !block_size.is_power_of_two() || !(4096..=(1 << 20)).contains(&block_size) {
                return Err(Failure::new(
                    Exit::Usage,
                    format!("block size {block_size} is not a power of two from 4096 to 1048576"),
                ));
            }
            let repo = Repo::init_at(&location(r)?, block_size, max_chain).map_err(fail)?;
            if cli.json {
                print_json(&serde_json::json!({
                    "repository": repo.root, "block_size": block_size
                }))?;
            } else {
                eprintln!("vrepo: made an empty repository in {}", r.display());
            }
        }
        Command::Save {
            workarea,
            full,
            incremental,
            differential,
            parent,
            message,
            tags,
            at_snapshot,
            level,
            max_chain,
            vm,
        } => {
            let (repo, _lock) = open(&common, "save")?;
            let mode = match (full, incremental, differential) {
                (true, _, _) => Some(Mode::Full),
                (_, true, _) => Some(Mode::Incremental),
                (_, _, true) => Some(Mode::Differential),
                _ if parent.is_some() => Some(Mode::Incremental),
                _ => None,
            };
            let opts = SaveOptions {
                mode,
                parent,
                message,
                tags,
                at_snapshot,
                level,
                max_chain,
                vm,
                wait: cli.wait.map(std::time::Duration::from_secs),
            };
            let saved =
                vrepo::save::save(&repo, &workarea, &opts, bar(cli.quiet, "save")).map_err(fail)?;
            if let Some(n) = &saved.note {
                eprintln!("vrepo: {n}");
            }
            for s in &saved.entry.skipped {
                eprintln!("vrepo: skipped {} ({})", s.path, s.reason);
            }
            traffic(&repo, cli.quiet);
            if cli.json {
                print_json(&saved.entry)?;
            } else {
                writeln!(stdout, "{}", query::line(&saved.entry)).map_err(out_err)?;
            }
        }
        Command::Build {
            entry,
            workarea,
            force,
            sync,
        } => {
            let (repo, _lock) = open(&common, "build")?;
            let e = repo.resolve(&entry).map_err(fail)?;
            let opts = BuildOptions { force, sync };
            let progress = bar(cli.quiet, "build").map(|b| b as Box<dyn Fn(u64, u64)>);
            let built = vrepo::build::build(&repo, &e, &workarea, &opts, progress).map_err(fail)?;
            if let Some(w) = &built.warning {
                eprintln!("vrepo: {w}");
            }
            traffic(&repo, cli.quiet);
            if cli.json {
                print_json(&built)?;
            } else {
                writeln!(
                    stdout,
                    "built {} into {} ({} files, {}, from {})",
                    built.entry,
                    built.workarea,
                    built.files,
                    query::human(built.bytes),
                    built.chain.join(" → ")
                )
                .map_err(out_err)?;
            }
        }
        Command::List { vms } => {
            let (repo, _lock) = open(&common, "list")?;
            let all = repo.entries().map_err(fail)?;
            for e in vrepo::vms::of_vms(&all, &vms).map_err(fail)? {
                if cli.json {
                    serde_json::to_writer(&mut stdout, e)
                        .map_err(|err| out_err(io::Error::other(err)))?;
                    writeln!(stdout).map_err(out_err)?;
                } else {
                    writeln!(stdout, "{}", query::line(e)).map_err(out_err)?;
                }
            }
        }
        Command::Tree { vms } => {
            let (repo, _lock) = open(&common, "tree")?;
            let all = repo.entries().map_err(fail)?;
            let shown = vrepo::vms::of_vms(&all, &vms).map_err(fail)?;
            if cli.json {
                let nodes: Vec<_> = shown
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "name": e.name, "vm": e.vm_name(), "parent": e.parent,
                            "mode": e.mode, "stored_bytes": e.stored_bytes(), "time": e.time,
                            "message": e.message, "tags": e.tags,
                        })
                    })
                    .collect();
                print_json(&nodes)?;
            } else {
                write!(stdout, "{}", query::tree(&shown, &all)).map_err(out_err)?;
            }
        }
        Command::Vms => {
            let (repo, _lock) = open(&common, "vms")?;
            let all = repo.entries().map_err(fail)?;
            for v in vrepo::vms::summaries(&all) {
                if cli.json {
                    serde_json::to_writer(&mut stdout, &v)
                        .map_err(|err| out_err(io::Error::other(err)))?;
                    writeln!(stdout).map_err(out_err)?;
                } else {
                    let mut l = format!(
                        "{:<20} {:>3} {:<7}  newest {:<6} {}  own {:>10}  shared {:>10}",
                        v.vm,
                        v.entries,
                        if v.entries == 1 { "entry" } else { "entries" },
                        v.newest,
                        query::short_time(&v.newest_time),
                        query::human(v.own_bytes),
                        query::human(v.shared_bytes)
                    );
                    if !v.stands_on.is_empty() {
                        l.push_str(&format!("  (stands on {})", v.stands_on.join(", ")));
                    }
                    writeln!(stdout, "{l}").map_err(out_err)?;
                }
            }
        }
        Command::Show { entry } => {
            let (repo, _lock) = open(&common, "show")?;
            let e = repo.resolve(&entry).map_err(fail)?;
            if cli.json {
                print_json(&e)?;
            } else {
                write!(stdout, "{}", show_text(&e)).map_err(out_err)?;
            }
        }
        Command::Deps { entry } => {
            let (repo, _lock) = open(&common, "deps")?;
            let e = repo.resolve(&entry).map_err(fail)?;
            let chain = repo.chain(&e).map_err(fail)?;
            if cli.json {
                let v: Vec<_> = chain
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "name": c.name, "mode": c.mode, "parent": c.parent,
                            "stored_bytes": c.stored_bytes(),
                        })
                    })
                    .collect();
                print_json(&serde_json::json!({
                    "entry": e.name,
                    "chain": v,
                    "stored_bytes": chain.iter().map(|c| c.stored_bytes()).sum::<u64>(),
                }))?;
            } else {
                for c in &chain {
                    writeln!(stdout, "{}", query::line(c)).map_err(out_err)?;
                }
            }
        }
        Command::Diff { entry1, entry2, vm } => {
            let (entry1, entry2) = match (entry1, entry2, &vm) {
                (Some(a), Some(b), _) => (a, b),
                (None, None, Some(_)) => ("latest~1".to_owned(), "latest".to_owned()),
                _ => {
                    return Err(Failure::new(
                        Exit::Usage,
                        "diff takes two entries (or, with --vm NAME, none: the VM's last two)",
                    ))
                }
            };
            let (repo, _lock) = open(&common, "diff")?;
            let a = repo.resolve_in(&entry1, vm.as_deref()).map_err(fail)?;
            let b = repo.resolve_in(&entry2, vm.as_deref()).map_err(fail)?;
            let rows = query::diff(&repo, &a, &b).map_err(fail)?;
            for r in &rows {
                if cli.json {
                    serde_json::to_writer(&mut stdout, r)
                        .map_err(|err| out_err(io::Error::other(err)))?;
                    writeln!(stdout).map_err(out_err)?;
                } else if r.status != "same" {
                    writeln!(
                        stdout,
                        "{:<8} {:>10}  {}",
                        r.status,
                        query::human(r.changed_bytes),
                        r.path
                    )
                    .map_err(out_err)?;
                }
            }
        }
        Command::Copy {
            entries,
            to,
            all,
            vms,
        } => {
            if entries.is_empty() && !all && vms.is_empty() {
                return Err(Failure::new(
                    Exit::Usage,
                    "copy what? name entries, or give --all or --vm NAME",
                ));
            }
            let (repo, _lock) = open(&common, "copy")?;
            let target = CliCommon {
                repo: Some(to.clone()),
                wait: common.wait,
            };
            let (dest, _dest_lock) = open(&target, "copy")?;
            let all_entries = repo.entries().map_err(fail)?;
            let mut wanted: Vec<vrepo::Entry> = Vec::new();
            if all {
                wanted = all_entries.clone();
            }
            if !vms.is_empty() {
                for e in vrepo::vms::of_vms(&all_entries, &vms).map_err(fail)? {
                    wanted.push(e.clone());
                }
            }
            for spec in &entries {
                wanted.push(repo.resolve(spec).map_err(fail)?);
            }
            let quiet = cli.json;
            let progress = |name: &str, bytes: u64| {
                if !quiet {
                    eprintln!("vrepo: copying {name} ({})", vrepo::query::human(bytes));
                }
            };
            let done = vrepo::copy::copy(&repo, &dest, &wanted, &progress).map_err(fail)?;
            for n in &done.notes {
                eprintln!("vrepo: {n}");
            }
            if cli.json {
                print_json(&serde_json::json!({
                    "copied": done.copied.iter().map(|(a, b)| serde_json::json!({"entry": a, "as": b})).collect::<Vec<_>>(),
                    "present": done.present.iter().map(|(a, b)| serde_json::json!({"entry": a, "as": b})).collect::<Vec<_>>(),
                    "bytes": done.bytes,
                }))?;
            } else {
                for (a, b) in &done.copied {
                    writeln!(stdout, "{a} copied as {b}").map_err(out_err)?;
                }
                eprintln!(
                    "vrepo: copied {} entries ({}) to {}; {} were there already",
                    done.copied.len(),
                    vrepo::query::human(done.bytes),
                    dest.root.display(),
                    done.present.len()
                );
            }
        }
        Command::Verify {
            mut entries,
            vms,
            read_data,
            sample,
        } => {
            if let Some(p) = sample {
                if !(p > 0.0 && p <= 100.0) {
                    return Err(Failure::new(
                        Exit::Usage,
                        format!("--sample {p}: a percentage above 0 and at most 100"),
                    ));
                }
            }
            let (repo, _lock) = open(&common, "verify")?;
            if !vms.is_empty() {
                let all = repo.entries().map_err(fail)?;
                for e in vrepo::vms::of_vms(&all, &vms).map_err(fail)? {
                    entries.push(e.name.clone());
                }
            }
            let opts = vrepo::verify::VerifyOptions { read_data, sample };
            let report = vrepo::verify::verify(&repo, &entries, opts).map_err(fail)?;
            if cli.json {
                print_json(&report)?;
            } else {
                for r in &report.checked {
                    let mut line = format!("{:<5} {}", r.entry, r.status);
                    if let Some(n) = &r.needs {
                        line.push_str(&format!(" (needs {n})"));
                    }
                    for p in &r.problems {
                        line.push_str(&format!("; {p}"));
                    }
                    writeln!(stdout, "{line}").map_err(out_err)?;
                }
                for f in &report.files {
                    writeln!(
                        stdout,
                        "file  {} damaged ({}); {}",
                        f.file, f.problem, f.effect
                    )
                    .map_err(out_err)?;
                }
            }
            if !report.damaged.is_empty() || !report.unbuildable.is_empty() {
                eprintln!(
                    "vrepo: damaged: {}; cannot be built: {}; fine: {}",
                    list_or_none(&report.damaged),
                    list_or_none(&report.unbuildable),
                    list_or_none(&report.ok)
                );
                exit = Exit::No;
            }
            if !report.files.is_empty() {
                let names: Vec<&str> = report.files.iter().map(|f| f.file.as_str()).collect();
                eprintln!(
                    "vrepo: damaged repository files: {} (no entry needs them)",
                    names.join(", ")
                );
                exit = Exit::No;
            }
        }
        Command::Rm {
            entry: None,
            vms,
            dry_run,
            ..
        } => {
            let (repo, _lock) = open_as(&common, "rm", LockMode::Exclusive)?;
            let plan = vrepo::rewrite::retire(&repo, &vms, dry_run, None).map_err(fail)?;
            report_plan(&mut stdout, cli.json, &plan)?;
        }
        Command::Rm {
            entry: Some(entry),
            rebase,
            ..
        } => {
            let (repo, _lock) = open_as(&common, "rm", LockMode::Exclusive)?;
            let e = repo.resolve(&entry).map_err(fail)?;
            let r = vrepo::rewrite::remove(&repo, &e, rebase, None).map_err(fail)?;
            report_rewrite(&mut stdout, cli.json, &r)?;
        }
        Command::Consolidate { entry, full, level } => {
            let (repo, _lock) = open_as(&common, "consolidate", LockMode::Exclusive)?;
            let e = repo.resolve(&entry).map_err(fail)?;
            match (&e.parent, level) {
                (None, None) => {
                    eprintln!("vrepo: {} is a full entry already; nothing to do", e.name)
                }
                (None, Some(l)) => eprintln!("vrepo: storing {} again at level {l}", e.name),
                _ => {}
            }
            let r = vrepo::rewrite::consolidate(&repo, &e, full, level).map_err(fail)?;
            report_rewrite(&mut stdout, cli.json, &r)?;
        }
        Command::Prune {
            vms,
            level,
            allow_empty,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            dry_run,
        } => {
            if keep_last + keep_daily + keep_weekly + keep_monthly == 0 && !allow_empty {
                return Err(Failure::new(
                    Exit::Usage,
                    "prune needs a policy (--keep-last, --keep-daily, --keep-weekly, \
                     --keep-monthly): with none it would remove every entry (--allow-empty \
                     says that is meant)",
                ));
            }
            let (repo, _lock) = open_as(&common, "prune", LockMode::Exclusive)?;
            let r = vrepo::rewrite::Retention {
                last: keep_last,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
            };
            let plan =
                vrepo::rewrite::prune(&repo, r, &vms, allow_empty, dry_run, level).map_err(fail)?;
            report_plan(&mut stdout, cli.json, &plan)?;
        }
        Command::Mount {
            mountpoint,
            vms,
            cache_mib,
        } => {
            vrepo::mount::check_mountpoint(&mountpoint).map_err(fail)?;
            let (repo, _lock) = open(&common, "mount")?;
            let opts = vrepo::mount::MountOptions {
                cache_bytes: cache_mib.saturating_mul(1 << 20),
                vms,
                ..Default::default()
            };
            let warn = Box::new(|msg: &str| eprintln!("vrepo: mount: {msg}"));
            let fs = vrepo::mount::RepoFs::new(repo, opts, warn).map_err(fail)?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGHUP,
            ] {
                signal_hook::flag::register(sig, stop.clone())
                    .map_err(|e| Failure::new(Exit::Io, format!("setting up signals: {e}")))?;
            }
            eprintln!(
                "vrepo: mounted at {} (read-only); unmount with `fusermount3 -u {}` or Ctrl-C",
                mountpoint.display(),
                mountpoint.display()
            );
            vrepo::mount::serve(fs, &mountpoint, || stop.load(Ordering::Relaxed)).map_err(fail)?;
            eprintln!("vrepo: unmounted {}", mountpoint.display());
        }
        Command::Cat { entry, file, guest } => {
            let (repo, _lock) = open(&common, "cat")?;
            vml_cli::refuse_terminal_stdout(if guest {
                "disk contents"
            } else {
                "file contents"
            })?;
            let e = repo.resolve(&entry).map_err(fail)?;
            match query::cat(&repo, &e, &file, guest, &mut stdout) {
                Ok(()) => {}
                Err(Error::Io { source, .. }) if vml_cli::is_broken_pipe(&source) => {}
                Err(err) if err.to_string().contains("Broken pipe") => {}
                Err(err) => return Err(fail(err)),
            }
        }
    }
    match stdout.flush() {
        Err(e) if !vml_cli::is_broken_pipe(&e) => Err(out_err(e)),
        _ => Ok(exit),
    }
}

fn report_rewrite(
    out: &mut impl Write,
    json: bool,
    r: &vrepo::rewrite::Rewritten,
) -> Result<(), Failure> {
    if json {
        return print_json(r);
    }
    for (e, p) in &r.rewritten {
        match p {
            Some(p) => writeln!(out, "rewrote {e}: now relative to {p}"),
            None => writeln!(out, "rewrote {e}: now a full entry"),
        }
        .map_err(out_err)?;
    }
    for e in &r.removed {
        writeln!(out, "removed {e}").map_err(out_err)?;
    }
    Ok(())
}

/// What prune or `rm --vm NAME --all` did (or would do): rewrites, removals, and per VM what
/// it keeps.
fn report_plan(
    out: &mut impl Write,
    json: bool,
    plan: &vrepo::rewrite::PrunePlan,
) -> Result<(), Failure> {
    if json {
        return print_json(plan);
    }
    let verb = if plan.dry_run { "would " } else { "" };
    for (e, p) in &plan.rewrite {
        match p {
            Some(p) => writeln!(out, "{verb}rewrite {e}: relative to {p}"),
            None => writeln!(out, "{verb}rewrite {e}: a full entry"),
        }
        .map_err(out_err)?;
    }
    for e in &plan.remove {
        writeln!(out, "{verb}remove {e}").map_err(out_err)?;
    }
    for (vm, v) in &plan.vms {
        writeln!(
            out,
            "{verb}keep {} entries of vm {vm}: {}",
            v.keep.len(),
            list_or_none(&v.keep)
        )
        .map_err(out_err)?;
    }
    Ok(())
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn main() -> ExitCode {
    if let Some(code) = vml_cli::generate::if_asked::<Cli>() {
        return code;
    }
    let cli = Cli::parse();
    vml_cli::finish("vrepo", run(cli))
}

#[cfg(test)]
mod tests {
    use super::{Meter, Shown};

    #[test]
    fn meter_waits_for_a_total_and_never_steps_back() {
        let mut m = Meter::default();
        let at = |total, pos, first| Shown::At { total, pos, first };
        assert_eq!(m.report(100, 0), at(100, 0, true));
        assert_eq!(m.report(100, 50), at(100, 50, false));
        // A reader thread's earlier count, arriving late.
        assert_eq!(m.report(100, 30), Shown::Nothing);
        assert_eq!(m.report(100, 50), Shown::Nothing);
        assert_eq!(m.report(100, 60), at(100, 60, false));
        // Past the total: the end, once; later reports change nothing.
        assert_eq!(m.report(100, 140), Shown::Done);
        assert_eq!(m.report(100, 70), Shown::Nothing);
        assert_eq!(m.report(100, 100), Shown::Nothing);
    }

    #[test]
    fn meter_with_nothing_to_do_is_never_drawn() {
        // A save whose files are all unchanged reads nothing: no "0 B/0 B" bar.
        let mut m = Meter::default();
        assert_eq!(m.report(0, 0), Shown::Done);
        assert_eq!(m.report(0, 0), Shown::Nothing);
        assert_eq!(m.report(0, 5), Shown::Nothing);
    }
}
