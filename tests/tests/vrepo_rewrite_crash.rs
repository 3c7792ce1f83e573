//! Crash safety of vrepo's rewrites (issue 6): `rm --rebase`, `consolidate --full` and `prune`
//! killed with SIGKILL at many points spread over their measured duration, on a repository of
//! a VM with a disk of incompressible data (so each command runs long enough to be hit in
//! every phase: restaging into tmp/, the journal, the swaps, the removals).
//!
//! After each kill:
//! 1. while a shared lock is held (so no command can take the exclusive lock and finish the
//!    rewrite), every entry present builds to exactly the bytes it was saved with: the
//!    repository is consistent at the instant of the kill, half-done journal or not;
//! 2. the next command (`list`) finishes the rewrite or leaves it rolled back: no
//!    `journal.json`, `tmp/` empty, and the entries are either all of the ones before or
//!    exactly the ones the command leaves, with the parents it gives them;
//! 3. `verify --read-data` passes and every entry present builds to its saved bytes;
//! 4. when the rewrite was rolled back, the command is run again to completion, and the
//!    result is checked again.

mod common;
mod vrepo_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use vrepo_support::*;

/// The repository the commands are run on, built once per test, and the saved states.
struct Fixture {
    _t: tempfile::TempDir,
    /// On a disk, not tmpfs: fsync takes time there, which widens the journal phase
    /// (swaps and removals, each followed by an fsync) enough for kills to land in it.
    disk: tempfile::TempDir,
    dir: PathBuf,
    template: PathBuf,
    /// entry -> its saved state (a `cp -a` copy)
    states: BTreeMap<String, PathBuf>,
}

/// E1 full; E2, E3, E4 incremental in a line; E5 incremental on E2 from a second working
/// area. Tree: E1 - E2 - (E3 - E4, E5).
fn fixture() -> Fixture {
    let t = tempdir();
    let dir = t.path().to_path_buf();
    let template = dir.join("template");
    let repo = Repo::init(&template, &[]);
    let wa = make_vm(&dir.join("wa"), 24, 16, 5);
    let mut states = BTreeMap::new();
    let mut step = |repo: &Repo, wa: &Path, n: u64, extra: &[&str]| {
        let name = repo.save_name(wa, extra);
        assert_eq!(name, format!("E{n}"));
        states.insert(name.clone(), keep(wa, &dir.join(format!("state-{name}"))));
    };
    step(&repo, &wa, 1, &[]);
    for n in 2..=4u64 {
        guest_write(&wa.join("disk.vmdk"), (n * 5 % 14) * MIB, 2 * MIB, 50 + n);
        step(&repo, &wa, n, &[]);
    }
    let wa2 = dir.join("wa2");
    repo.build("E2", &wa2, &[]);
    guest_write(&wa2.join("disk.vmdk"), 18 * MIB, 3 * MIB, 77);
    step(&repo, &wa2, 5, &[]);
    assert_eq!(
        repo.list()
            .into_iter()
            .map(|(n, p, _)| (n, p))
            .collect::<Vec<_>>(),
        [
            ("E1".into(), None),
            ("E2".into(), Some("E1".into())),
            ("E3".into(), Some("E2".into())),
            ("E4".into(), Some("E3".into())),
            ("E5".into(), Some("E2".into())),
        ]
    );
    Fixture {
        _t: t,
        disk: tempfile::tempdir().unwrap(),
        dir,
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

impl Fixture {
    fn copy(&self, name: &str) -> Repo {
        let to = self.disk.path().join(name);
        if to.exists() {
            fs::remove_dir_all(&to).unwrap();
        }
        run_cp(&self.template, &to);
        Repo::at(&to)
    }

    /// Every entry present builds to its saved state.
    fn assert_all_build(&self, repo: &Repo, label: &str) {
        self.assert_build(repo, &repo_entry_dirs(repo), label)
    }

    /// Each of `names` builds to its saved state.
    fn assert_build(&self, repo: &Repo, names: &[String], label: &str) {
        for name in names {
            let dest = self.dir.join("check");
            if dest.exists() {
                fs::remove_dir_all(&dest).unwrap();
            }
            let o = repo.output(&["build", name, s(&dest)]);
            assert!(
                o.status.success(),
                "{label}: build {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_same_files(&self.states[name], &dest, &format!("{label}: {name}"));
            fs::remove_dir_all(&dest).unwrap();
        }
    }
}

fn run_cp(from: &Path, to: &Path) {
    common::run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Entry folders present (without going through vrepo, which would recover first).
fn repo_entry_dirs(repo: &Repo) -> Vec<String> {
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

/// Hold a shared lock on the repository (as a reader would) while `f` runs.
fn with_shared_lock<T>(repo: &Repo, f: impl FnOnce() -> T) -> T {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(repo.root.join("lock"))
        .unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared)
        .expect("a killed command holds no lock");
    let r = f();
    drop(file);
    r
}

fn spawn(repo: &Repo, args: &[&str]) -> std::process::Child {
    repo.cmd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// How a kill is timed.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This long after the start.
    After(std::time::Duration),
    /// This long after `journal.json` appears (the roll-forward phase: swaps, removals).
    AfterJournal(std::time::Duration),
}

/// Run `args` on copies of the fixture, killed at `points` spread over one run's duration and
/// at a few instants after its journal appears; `affected`: the entries the command rewrites
/// or whose chain goes through one.
fn kill_at_many_points(
    args: &[&str],
    before: Parents,
    after: Parents,
    affected: &[&str],
    points: u32,
) {
    use std::time::Duration;
    let fx = fixture();
    let affected: Vec<String> = affected.iter().map(|a| a.to_string()).collect();
    let sum_of = |r: &Repo| {
        fs::read(
            r.root
                .join("entries")
                .join(&affected[0])
                .join("entry.json.b3"),
        )
        .ok()
    };
    let original = sum_of(&fx.copy("original"));
    // One run to completion: how long it takes, and what it leaves.
    let r = fx.copy("measure");
    let t0 = Instant::now();
    r.ok(args);
    let dur = t0.elapsed();
    assert_eq!(parents(&r), after, "{args:?} to completion");
    assert_ne!(sum_of(&r), original, "{args:?} rewrote nothing");
    fx.assert_all_build(&r, &format!("{args:?} to completion"));
    eprintln!("{args:?}: {dur:?} to completion");
    let mut kills: Vec<Kill> = (0..points)
        .map(|i| Kill::After(dur.mul_f64((i as f64 + 0.5) / points as f64)))
        .collect();
    for us in [0, 1000] {
        kills.push(Kill::AfterJournal(Duration::from_micros(us)));
    }
    let (mut forward, mut back, mut in_journal) = (0, 0, 0);
    // The journal phase of a one-entry rewrite is short: a kill meant for it that finds the
    // command already done is tried again (a few times).
    let mut retries = 6;
    let mut kills: std::collections::VecDeque<Kill> = kills.into();
    while let Some(kill) = kills.pop_front() {
        let label = format!("{args:?} killed {kill:?} (a run takes {dur:?})");
        let repo = fx.copy("killed");
        let mut child = spawn(&repo, args);
        match kill {
            Kill::After(d) => std::thread::sleep(d),
            Kill::AfterJournal(d) => {
                let j = repo.root.join("journal.json");
                while !j.exists() && child.try_wait().unwrap().is_none() {
                    std::thread::yield_now();
                }
                std::thread::sleep(d);
            }
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        let journal = repo.root.join("journal.json").exists();
        in_journal += journal as u32;
        if matches!(kill, Kill::AfterJournal(_)) && !journal && in_journal == 0 && retries > 0 {
            retries -= 1;
            kills.push_back(Kill::AfterJournal(Duration::ZERO));
        }
        // 1. Consistent at the instant of the kill, before anything finishes the rewrite.
        with_shared_lock(&repo, || {
            let present = repo_entry_dirs(&repo);
            assert!(present.len() >= after.len(), "{label}: entries {present:?}");
            fx.assert_all_build(&repo, &format!("{label}, lock held, journal {journal}"));
            assert_eq!(
                repo.root.join("journal.json").exists(),
                journal,
                "{label}: a reader under a shared lock touched the journal"
            );
        });
        // 2. The next command finishes or rolls back.
        let now = parents(&repo);
        assert!(
            !repo.root.join("journal.json").exists(),
            "{label}: list left the journal"
        );
        assert_eq!(tmp_contents(&repo), Vec::<String>::new(), "{label}: tmp/");
        // A rewrite that keeps every parent (recompression) is told done by the first
        // affected entry's entry.json.b3.
        let finished = if now == after && (before != after || sum_of(&repo) != original) {
            true
        } else if now == after && !journal {
            false
        } else {
            assert!(
                !journal,
                "{label}: a journal was there, so the rewrite must finish"
            );
            assert_eq!(
                now, before,
                "{label} (exit {status:?}): neither before nor after"
            );
            false
        };
        // 3. Every entry is whole.
        let v = repo.json(&["verify", "--read-data"]);
        assert_eq!(v["damaged"], serde_json::json!([]), "{label}: {v}");
        assert_eq!(v["unbuildable"], serde_json::json!([]), "{label}: {v}");
        let present = repo_entry_dirs(&repo);
        let check: Vec<String> = affected
            .iter()
            .filter(|a| present.contains(a))
            .cloned()
            .collect();
        fx.assert_build(&repo, &check, &label);
        // 4. Run it again when it was rolled back.
        if finished {
            forward += 1;
        } else {
            back += 1;
            repo.ok(args);
            assert_eq!(parents(&repo), after, "{label}: run again");
            assert_ne!(sum_of(&repo), original, "{label}: run again");
            assert_eq!(tmp_contents(&repo), Vec::<String>::new(), "{label}: tmp/");
            assert!(!repo.root.join("journal.json").exists());
            let present = repo_entry_dirs(&repo);
            let check: Vec<String> = affected
                .iter()
                .filter(|a| present.contains(a))
                .cloned()
                .collect();
            fx.assert_build(&repo, &check, &format!("{label}, run again"));
        }
        eprintln!("{label}: journal at kill {journal}, rolled forward {finished}");
    }
    eprintln!("{args:?}: {forward} finished, {back} rolled back, {in_journal} killed in the journal phase");
    assert!(back > 0, "{args:?}: no kill landed before the journal");
    assert!(
        in_journal > 0,
        "{args:?}: no kill landed in the journal phase"
    );
}

#[test]
fn rm_rebase_killed_at_many_points() {
    kill_at_many_points(
        &["rm", "--rebase", "E2"],
        p(&[
            ("E1", None),
            ("E2", Some("E1")),
            ("E3", Some("E2")),
            ("E4", Some("E3")),
            ("E5", Some("E2")),
        ]),
        p(&[
            ("E1", None),
            ("E3", Some("E1")),
            ("E4", Some("E3")),
            ("E5", Some("E1")),
        ]),
        &["E3", "E4", "E5"],
        4,
    );
}

#[test]
fn consolidate_killed_at_many_points() {
    kill_at_many_points(
        &["consolidate", "--full", "E4"],
        p(&[
            ("E1", None),
            ("E2", Some("E1")),
            ("E3", Some("E2")),
            ("E4", Some("E3")),
            ("E5", Some("E2")),
        ]),
        p(&[
            ("E1", None),
            ("E2", Some("E1")),
            ("E3", Some("E2")),
            ("E4", None),
            ("E5", Some("E2")),
        ]),
        &["E4"],
        4,
    );
}

#[test]
fn recompression_of_the_root_killed_at_many_points() {
    // consolidate --level on the full entry every other entry stands on: the parents stay,
    // so only the journal's sum (the staged entry.json.b3) tells a done swap from one to do.
    let all = p(&[
        ("E1", None),
        ("E2", Some("E1")),
        ("E3", Some("E2")),
        ("E4", Some("E3")),
        ("E5", Some("E2")),
    ]);
    kill_at_many_points(
        &["consolidate", "--level", "9", "E1"],
        all.clone(),
        all,
        &["E1"],
        4,
    );
}

#[test]
fn prune_killed_at_many_points() {
    // Across VMs: E5, of VM wa2, stands on E2 of VM wa. Retention per VM keeps E3 and E4 of
    // wa and E5 of wa2; E3 loses every ancestor and becomes full, and so does E5, which goes
    // onto E4, the earlier kept entry sharing the most with it. Killed anywhere, every kept
    // entry of both VMs builds.
    kill_at_many_points(
        &["prune", "--keep-last", "2"],
        p(&[
            ("E1", None),
            ("E2", Some("E1")),
            ("E3", Some("E2")),
            ("E4", Some("E3")),
            ("E5", Some("E2")),
        ]),
        p(&[("E3", None), ("E4", Some("E3")), ("E5", Some("E4"))]),
        &["E3", "E4", "E5"],
        4,
    );
}

/// `rm E2` killed right after writing its journal, while a reader holds the shared lock: a
/// save then cannot take the exclusive lock to finish the rm, so it saves on E2 (its working
/// area's record still names E2). Finishing the rm later must keep E2, which E3 needs.
#[test]
fn a_save_onto_an_entry_an_unfinished_rm_removes_keeps_it() {
    let t = tempdir();
    let dir = t.path();
    let repo = Repo::init(&dir.join("repo"), &[]);
    let wa = make_vm(&dir.join("wa"), 8, 4, 31);
    assert_eq!(repo.save_name(&wa, &[]), "E1");
    let s1 = keep(&wa, &dir.join("state-E1"));
    guest_write(&wa.join("disk.vmdk"), MIB, MIB, 32);
    assert_eq!(repo.save_name(&wa, &[]), "E2");
    let s2 = keep(&wa, &dir.join("state-E2"));
    // What `rm E2` writes before it changes anything.
    fs::write(
        repo.root.join("journal.json"),
        sealed("{\"schema\": \"vrepo.journal/1\", \"op\": \"rm\", \"swaps\": [], \"remove\": [\"E2\"]}\n"),
    )
    .unwrap();
    guest_write(&wa.join("disk.vmdk"), 3 * MIB, MIB, 33);
    let e3 = with_shared_lock(&repo, || repo.save(&wa, &[]));
    assert_eq!((&e3["name"], &e3["parent"]), (&"E3".into(), &"E2".into()));
    assert!(
        repo.root.join("journal.json").exists(),
        "the save finished the rm"
    );
    let s3 = keep(&wa, &dir.join("state-E3"));

    // The next command finishes the rm: E2 stays, as E3 needs it.
    assert_eq!(
        parents(&repo),
        p(&[("E1", None), ("E2", Some("E1")), ("E3", Some("E2"))])
    );
    assert!(!repo.root.join("journal.json").exists());
    assert_eq!(tmp_contents(&repo), Vec::<String>::new());
    let v = repo.json(&["verify", "--read-data"]);
    assert_eq!(v["ok"], serde_json::json!(["E1", "E2", "E3"]), "{v}");
    let check = dir.join("check");
    for (e, st) in [("E1", &s1), ("E2", &s2), ("E3", &s3)] {
        assert_builds(&repo, e, st, &check);
    }
}
