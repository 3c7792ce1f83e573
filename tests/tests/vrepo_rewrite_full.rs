//! Write errors during vrepo's rewrites (issue 6: "disk full during any write: a clear error,
//! nothing lost, leftovers cleaned"): `rm --rebase`, `consolidate --full` and `prune` run
//! - on a small tmpfs holding the repository, filled to levels from nothing to a few pages
//!   more than what the rewrite needs (the pages of the entries it stages, its journal and
//!   lock.json), page by page near that, so the write that fails is in turn a staged
//!   signature, delta, entry.json, entry.json.b3 and the journal (skipped when mounting is not
//!   allowed);
//! - under several RLIMIT_FSIZE limits (SIGXFSZ ignored, so a write past the limit fails with
//!   EFBIG), from 0 to the size of the largest staged file;
//! - with a write after the journal failing (`last-entry` made a folder): the writes after the
//!   journal are hard to make fail on tmpfs, as the copies swapped out are freed before them.
//!
//! Each run either succeeds whole (exit 0, the result a run with room gives) or fails with one
//! line on stderr naming the file and the cause, exit 6 (docs/exit-codes.md). Then, still
//! without room, `list` works; a failed rewrite that left no journal left nothing in `tmp/`
//! either. With room again, the next command leaves no journal and an empty `tmp/`, the
//! entries are exactly the ones before or the ones after the rewrite, `verify --read-data`
//! passes, every entry present builds to exactly the files it was saved from, and a
//! rolled-back rewrite run again completes.

mod common;
mod vrepo_support;

use common::Mount;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;
use vrepo_support::*;

/// Exit code of an I/O error (docs/exit-codes.md).
const EXIT_IO: i32 = 6;
/// tmpfs allocates whole pages.
const PAGE: u64 = 4096;

/// The repository the rewrites run on (a template copied for every run) and the saved states.
struct Fixture {
    t: tempfile::TempDir,
    template: PathBuf,
    /// entry -> the files it was saved from (a `cp -a` copy)
    states: BTreeMap<String, PathBuf>,
}

/// E1 full; E2, E3, E4 incremental in a line; E5 incremental on E2 from a second working area;
/// a third working area built from E2 (its record names E2, so `rm --rebase E2` repoints it).
/// Tree: E1 - E2 - (E3 - E4, E5).
fn fixture() -> Fixture {
    let t = tempdir();
    let dir = t.path().to_path_buf();
    let template = dir.join("template");
    let repo = Repo::init(&template, &[]);
    let wa = make_vm(&dir.join("wa"), 16, 8, 11);
    let mut states = BTreeMap::new();
    let mut step = |repo: &Repo, wa: &Path, n: u64| {
        let name = repo.save_name(wa, &[]);
        assert_eq!(name, format!("E{n}"));
        states.insert(name.clone(), keep(wa, &dir.join(format!("state-{name}"))));
    };
    step(&repo, &wa, 1);
    for n in 2..=4u64 {
        guest_write(&wa.join("disk.vmdk"), (n * 3) * MIB, MIB, 60 + n);
        step(&repo, &wa, n);
    }
    let wa2 = dir.join("wa2");
    repo.build("E2", &wa2, &[]);
    guest_write(&wa2.join("disk.vmdk"), 13 * MIB, 2 * MIB, 71);
    step(&repo, &wa2, 5);
    repo.build("E2", &dir.join("wa3"), &[]);
    assert_eq!(parents(&repo), tree_before());
    Fixture {
        t,
        template,
        states,
    }
}

type Parents = Vec<(String, Option<String>)>;

fn parents(repo: &Repo) -> Parents {
    repo.list().into_iter().map(|(n, p, _)| (n, p)).collect()
}

fn p(v: &[(&str, Option<&str>)]) -> Parents {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.map(str::to_owned)))
        .collect()
}

fn tree_before() -> Parents {
    p(&[
        ("E1", None),
        ("E2", Some("E1")),
        ("E3", Some("E2")),
        ("E4", Some("E3")),
        ("E5", Some("E2")),
    ])
}

/// Entry folders present (without going through vrepo, which would recover first).
fn entry_dirs(repo: &Repo) -> Vec<String> {
    let mut v: Vec<(u64, String)> = fs::read_dir(repo.root.join("entries"))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            let k = n.strip_prefix('E')?.parse().ok()?;
            Some((k, n))
        })
        .collect();
    v.sort();
    v.into_iter().map(|x| x.1).collect()
}

fn journal(repo: &Repo) -> bool {
    repo.root.join("journal.json").exists()
}

/// Bytes a folder's files take on tmpfs (whole pages), folders themselves taking none.
fn pages_of(dir: &Path) -> u64 {
    files_of(dir)
        .values()
        .map(|m| m.len().div_ceil(PAGE) * PAGE)
        .sum()
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    /// A fresh copy of the template at `to`.
    fn copy(&self, to: &Path) -> Repo {
        if to.exists() {
            fs::remove_dir_all(to).unwrap();
        }
        common::run(Command::new("cp").arg("-a").arg(&self.template).arg(to));
        Repo::at(to)
    }

    /// Each entry present builds to the files it was saved from (built outside the repository's
    /// file system).
    fn assert_all_build(&self, repo: &Repo, label: &str) {
        let dest = self.path("check");
        let names = entry_dirs(repo);
        eprintln!("{label}: building {names:?}");
        for name in names {
            assert_builds(repo, &name, &self.states[&name], &dest);
        }
    }
}

/// A rewrite under test: its arguments, the tree it leaves.
struct Rewrite {
    args: &'static [&'static str],
    after: Parents,
}

fn rm_rebase() -> Rewrite {
    Rewrite {
        args: &["rm", "--rebase", "E2"],
        after: p(&[
            ("E1", None),
            ("E3", Some("E1")),
            ("E4", Some("E3")),
            ("E5", Some("E1")),
        ]),
    }
}

fn consolidate_full() -> Rewrite {
    Rewrite {
        args: &["consolidate", "--full", "E4"],
        after: p(&[
            ("E1", None),
            ("E2", Some("E1")),
            ("E3", Some("E2")),
            ("E4", None),
            ("E5", Some("E2")),
        ]),
    }
}

fn prune() -> Rewrite {
    // Per VM: keeps E3 and E4 of VM wa and E5 of VM wa2 (which stood on E2 of wa). E3 loses
    // every ancestor and becomes full; E5 too, and goes onto E4, the earlier kept entry that
    // shares the most with it.
    Rewrite {
        args: &["prune", "--keep-last", "2"],
        after: p(&[("E3", None), ("E4", Some("E3")), ("E5", Some("E4"))]),
    }
}

impl Rewrite {
    fn json_args(&self) -> Vec<&str> {
        let mut a = vec!["--json"];
        a.extend_from_slice(self.args);
        a
    }
}

/// What a run with room gives: its stdout, and the largest file it stages and the bytes its
/// staged entries take (whole pages), taken from the rewritten entries' folders.
struct Measured {
    stdout: Value,
    largest_file: u64,
    staged_pages: u64,
}

fn measure(fx: &Fixture, rw: &Rewrite, at: &Path) -> Measured {
    let repo = fx.copy(at);
    let t0 = Instant::now();
    let out = repo.ok(&rw.json_args());
    eprintln!("{:?}: {:?} with room", rw.args, t0.elapsed());
    assert_eq!(parents(&repo), rw.after, "{:?} with room", rw.args);
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rewritten: Vec<String> = stdout["rewritten"]
        .as_array()
        .or(stdout["rewrite"].as_array())
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect();
    assert!(!rewritten.is_empty());
    let (mut largest_file, mut staged_pages) = (0, 0);
    for e in &rewritten {
        let d = repo.root.join("entries").join(e);
        staged_pages += pages_of(&d);
        for m in files_of(&d).values() {
            largest_file = largest_file.max(m.len());
        }
    }
    fs::remove_dir_all(&repo.root).unwrap();
    Measured {
        stdout,
        largest_file,
        staged_pages,
    }
}

/// A failed command: exit 6, nothing on stdout, one line `vrepo: ...` naming `cause`.
fn assert_failed_io(o: &Output, cause: &str, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(EXIT_IO),
        "{what}: exit code; stderr: {err}"
    );
    assert!(o.stdout.is_empty(), "{what}: stdout of a failed command");
    assert_eq!(err.lines().count(), 1, "{what}: one line on stderr: {err}");
    assert!(err.starts_with("vrepo: "), "{what}: {err}");
    assert!(
        err.contains(cause),
        "{what}: the error names the cause: {err}"
    );
    err.trim_end().to_owned()
}

/// How room is taken away: the cause a failure names, how to run a command without room, how
/// to give room back.
struct NoRoom<'a> {
    cause: &'a str,
    run: &'a dyn Fn(&[&str]) -> Output,
    room: &'a dyn Fn(),
}

/// The outcome `o` of one run of `rw` without room: checked, then room is given back and the
/// rest is checked. Returns a short description for the test's summary.
fn check_run(
    fx: &Fixture,
    rw: &Rewrite,
    want: &Measured,
    repo: &Repo,
    o: &Output,
    no_room: &NoRoom,
    what: &str,
) -> String {
    let NoRoom {
        cause,
        run: still_full,
        room,
    } = no_room;
    let ok = o.status.success();
    let journal_left = journal(repo);
    if ok {
        let v: Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{what}: stdout: {e}"));
        assert_eq!(v, want.stdout, "{what}: the result of a run with room");
        assert!(!journal_left, "{what}: succeeded and left its journal");
        assert_eq!(tmp_contents(repo), Vec::<String>::new(), "{what}: tmp/");
    } else {
        let line = assert_failed_io(o, cause, what);
        assert!(
            line.contains(&format!("{}/", s(&repo.root))),
            "{what}: the error names the file it could not write: {line}"
        );
        eprintln!("{what}: {line} (journal left: {journal_left})");
        if !journal_left {
            assert_eq!(
                tmp_contents(repo),
                Vec::<String>::new(),
                "{what}: a failed rewrite that left no journal left tmp/"
            );
        }
    }

    // Still without room: a reading command works (and finishes the rewrite if it can).
    let l = still_full(&["--json", "list"]);
    assert!(
        l.status.success(),
        "{what}: list without room: {}",
        String::from_utf8_lossy(&l.stderr)
    );
    let finished_full = journal_left && !journal(repo);
    if !journal(repo) {
        assert_eq!(
            tmp_contents(repo),
            Vec::<String>::new(),
            "{what}: tmp/ after list without room"
        );
    }

    // With room: the next command finishes what is left.
    room();
    let now = parents(repo);
    assert!(!journal(repo), "{what}: list with room left the journal");
    assert_eq!(
        tmp_contents(repo),
        Vec::<String>::new(),
        "{what}: tmp/ after list"
    );
    let forward = now == rw.after;
    if !forward {
        assert!(
            !journal_left,
            "{what}: a journal was left, so the rewrite must finish: {now:?}"
        );
        assert_eq!(now, tree_before(), "{what}: neither before nor after");
    } else {
        assert!(
            ok || journal_left,
            "{what}: failed before its journal, yet the rewrite happened"
        );
    }
    let v = repo.json(&["verify", "--read-data"]);
    assert_eq!(v["damaged"], serde_json::json!([]), "{what}: {v}");
    assert_eq!(v["unbuildable"], serde_json::json!([]), "{what}: {v}");
    fx.assert_all_build(repo, what);
    if !forward {
        let o = repo.output(&rw.json_args());
        assert!(
            o.status.success(),
            "{what}: run again with room: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v, want.stdout, "{what}: run again with room");
        assert_eq!(parents(repo), rw.after, "{what}: run again with room");
        assert!(!journal(repo), "{what}: run again: journal");
        assert_eq!(tmp_contents(repo), Vec::<String>::new(), "{what}: tmp/");
        fx.assert_all_build(repo, &format!("{what}, run again"));
    }
    match (ok, journal_left, finished_full) {
        (true, _, _) => "ok".into(),
        (false, false, _) => "failed, rolled back".into(),
        (false, true, true) => "failed after its journal, finished by list".into(),
        (false, true, false) => "failed after its journal, finished with room".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// A full file system.

/// Fill `mnt` so that exactly `free` bytes stay free (there must be that much).
fn leave_exactly(mnt: &Mount, filler: &Path, free: u64) {
    let _ = fs::remove_file(filler);
    let before = mnt.free();
    assert!(before >= free, "only {before} bytes free, {free} asked");
    mnt.leave_free(filler, free);
    assert_eq!(mnt.free(), free, "filled to leave {free} bytes free");
}

fn on_a_full_file_system(rw: Rewrite) {
    let fx = fixture();
    let Some(mnt) = Mount::tmpfs(&fx.path("mnt"), 96 * MIB) else {
        return;
    };
    let want = measure(&fx, &rw, &mnt.0.join("measure"));
    // At the moment the journal is written: the staged entries, the journal and lock.json.
    let need = want.staged_pages + 2 * PAGE;
    let root = mnt.0.join("repo");
    let filler = mnt.0.join("filler");
    let mut outcomes = Vec::new();
    let t0 = Instant::now();
    for free in [
        0,
        need / 3 / PAGE * PAGE,
        need - 3 * PAGE,
        need - 2 * PAGE,
        need - PAGE,
        need,
        need + PAGE,
        need + 2 * PAGE,
        need + 3 * PAGE,
        need + 16 * PAGE,
    ] {
        let what = format!(
            "{:?} with {free} bytes free (staging takes {need})",
            rw.args
        );
        let repo = fx.copy(&root);
        leave_exactly(&mnt, &filler, free);
        let o = repo.output(&rw.json_args());
        let no_room = NoRoom {
            cause: "No space left on device",
            run: &|args| repo.output(args),
            room: &|| fs::remove_file(&filler).unwrap(),
        };
        let how = check_run(&fx, &rw, &want, &repo, &o, &no_room, &what);
        outcomes.push(format!("{free}: {how}"));
    }
    eprintln!(
        "{:?} on a full file system ({:?}): {outcomes:#?}",
        rw.args,
        t0.elapsed()
    );
    assert!(
        outcomes.iter().any(|o| o.ends_with(": ok")),
        "some level lets it succeed"
    );
    assert!(
        outcomes.iter().any(|o| o.contains("rolled back")),
        "some level makes it fail"
    );
}

#[test]
fn rm_rebase_on_a_full_file_system() {
    on_a_full_file_system(rm_rebase());
}

#[test]
fn consolidate_full_on_a_full_file_system() {
    on_a_full_file_system(consolidate_full());
}

#[test]
fn prune_on_a_full_file_system() {
    on_a_full_file_system(prune());
}

// ---------------------------------------------------------------------------------------------
// RLIMIT_FSIZE.

/// `vrepo -r REPO --quiet ARGS` with RLIMIT_FSIZE `limit` and SIGXFSZ ignored (the disposition
/// survives exec), so a write past the limit fails with EFBIG as on a full disk.
fn limited(repo: &Repo, limit: u64, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=\"$0\" -- \"$@\"")
        .arg(limit.to_string())
        .arg(vrepo_bin())
        .arg("-r")
        .arg(&repo.root)
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap()
}

fn have_prlimit() -> bool {
    Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn past_the_file_size_limit(rw: Rewrite) {
    if !have_prlimit() {
        eprintln!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let fx = fixture();
    let want = measure(&fx, &rw, &fx.path("measure"));
    let big = want.largest_file;
    let root = fx.path("repo");
    let mut outcomes = Vec::new();
    let t0 = Instant::now();
    for limit in [0, 1, PAGE, big / 3, big - 1, big] {
        let what = format!(
            "{:?} with RLIMIT_FSIZE {limit} (largest staged file {big})",
            rw.args
        );
        let repo = fx.copy(&root);
        let o = limited(&repo, limit, &rw.json_args());
        let no_room = NoRoom {
            cause: "File too large",
            run: &|args| limited(&repo, limit, args),
            room: &|| {},
        };
        let how = check_run(&fx, &rw, &want, &repo, &o, &no_room, &what);
        outcomes.push(format!("{limit}: {how}"));
    }
    eprintln!(
        "{:?} past the file size limit ({:?}): {outcomes:#?}",
        rw.args,
        t0.elapsed()
    );
    assert!(
        outcomes.last().is_some_and(|o| o.ends_with(": ok")),
        "the largest file fits, so it succeeds"
    );
}

#[test]
fn rm_rebase_past_the_file_size_limit() {
    past_the_file_size_limit(rm_rebase());
}

#[test]
fn consolidate_full_past_the_file_size_limit() {
    past_the_file_size_limit(consolidate_full());
}

#[test]
fn prune_past_the_file_size_limit() {
    past_the_file_size_limit(prune());
}

// ---------------------------------------------------------------------------------------------
// A write failing after the journal.

/// On a full disk the writes after a rewrite's journal (working-area records, `last-entry`) are
/// hard to hit on tmpfs, since the copies swapped out are freed first; a file system that frees
/// space late (btrfs, a snapshot) can still fail them. Here `last-entry` is made a folder, so
/// writing it fails every time, at the same point. The rewrite fails naming what is left to
/// do; while it cannot be finished, reading commands and saves still work (a save onto the
/// entry the rewrite removes keeps that entry); once the write can succeed, the next command
/// finishes the rewrite.
#[test]
fn a_rewrite_failing_after_its_journal_is_finished_by_a_later_command() {
    let t = tempdir();
    let dir = t.path();
    let repo = Repo::init(&dir.join("repo"), &[]);
    let wa = make_vm(&dir.join("wa"), 8, 4, 21);
    assert_eq!(repo.save_name(&wa, &[]), "E1");
    let s1 = keep(&wa, &dir.join("state-E1"));
    guest_write(&wa.join("disk.vmdk"), MIB, MIB, 22);
    assert_eq!(repo.save_name(&wa, &[]), "E2");
    let s2 = keep(&wa, &dir.join("state-E2"));
    let last = repo.root.join("last-entry");
    fs::remove_file(&last).unwrap();
    fs::create_dir(&last).unwrap();

    // rm E2: the journal is written, the working area's record moved to E1, then writing
    // last-entry fails.
    let o = repo.output(&["rm", "E2"]);
    let line = assert_failed_io(&o, "Is a directory", "rm E2 with last-entry a folder");
    assert!(
        line.contains("rm is half done; journal.json is kept and the next command finishes it"),
        "the error says what is left: {line}"
    );
    assert!(journal(&repo));
    eprintln!("rm E2, last-entry a folder: {line}");

    // Reading works while the rewrite cannot be finished, and E2 is still there.
    assert_eq!(repo.names(), ["E1", "E2"]);
    assert!(journal(&repo), "list could not finish it");
    let check = dir.join("check");
    assert_builds(&repo, "E1", &s1, &check);
    assert_builds(&repo, "E2", &s2, &check);
    // A save onto E2 meanwhile (it says it could not update last-entry).
    guest_write(&wa.join("disk.vmdk"), 3 * MIB, MIB, 23);
    let o = repo.output(&["--json", "save", s(&wa), "--parent", "E2"]);
    assert!(
        o.status.success(),
        "save: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let e3: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((&e3["name"], &e3["parent"]), (&"E3".into(), &"E2".into()));
    let s3 = keep(&wa, &dir.join("state-E3"));

    // The write can succeed again: the next command finishes the rm, which keeps E2, as E3
    // needs it.
    fs::remove_dir(&last).unwrap();
    assert_eq!(
        repo.list(),
        [
            ("E1".into(), None, "full".into()),
            ("E2".into(), Some("E1".into()), "incremental".into()),
            ("E3".into(), Some("E2".into()), "incremental".into()),
        ]
    );
    assert!(!journal(&repo), "list finished the rewrite");
    assert_eq!(tmp_contents(&repo), Vec::<String>::new());
    let v = repo.json(&["verify", "--read-data"]);
    assert_eq!(v["ok"], serde_json::json!(["E1", "E2", "E3"]), "{v}");
    for (e, st) in [("E1", &s1), ("E2", &s2), ("E3", &s3)] {
        assert_builds(&repo, e, st, &check);
    }
    let err = repo.fails(&["rm", "E2"], 7);
    assert!(err.contains("needed by E3"), "{err}");
}
