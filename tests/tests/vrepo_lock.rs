//! The repository lock (issue 6, docs/vrepo.md "Locking"): rm, consolidate and prune are
//! exclusive, save, build, list, show, verify are shared. A command that cannot get the lock
//! fails at once with exit 8, or waits with `--wait SECONDS`; readers run together; a lock
//! held by a process killed with SIGKILL never blocks anyone (the kernel drops flock locks).
//!
//! Holders are util-linux's `flock(1)` (shared or exclusive, on `REPO/lock`), a shell that
//! takes the lock and `exec`s into `sleep` (so one pid holds it), and vrepo itself.

mod common;
mod vrepo_support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vrepo_support::*;

/// A repository with E1 (full), E2 (on E1) and E3 (on E2) of a small VM; the working area.
fn small_repo(dir: &Path) -> (Repo, std::path::PathBuf) {
    let repo = Repo::init(&dir.join("repo"), &[]);
    let wa = make_vm(&dir.join("wa"), 12, 4, 21);
    repo.save(&wa, &[]);
    guest_write(&wa.join("disk.vmdk"), 6 * MIB, MIB, 22);
    repo.save(&wa, &[]);
    guest_write(&wa.join("disk.vmdk"), 8 * MIB, MIB, 23);
    repo.save(&wa, &[]);
    (repo, wa)
}

/// Whether someone holds the lock in a way that keeps an exclusive locker out.
fn lock_held(repo: &Repo) -> bool {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(repo.root.join("lock"))
        .unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
}

/// A holder of the lock, shared or exclusive: a shell that takes it with util-linux's
/// `flock -s|-x` on a descriptor of its own and then becomes `sleep SECS`, so one process (the
/// child's pid) holds it and SIGKILL to it releases it. Returned once the lock is taken.
fn flock_holder(repo: &Repo, shared: bool, secs: u32) -> Child {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec 9>>\"$1\"; flock \"$2\" 9; echo held; exec sleep \"$3\"")
        .arg("sh")
        .arg(repo.root.join("lock"))
        .arg(if shared { "-s" } else { "-x" })
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh and util-linux flock");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    assert!(lock_held(repo));
    child
}

/// Run `args`, which must fail with exit 8 quickly; the error line.
fn locked_at_once(repo: &Repo, args: &[&str]) -> String {
    let t0 = Instant::now();
    let err = repo.fails(args, 8);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "{args:?}: failed at once, not after {:?}",
        t0.elapsed()
    );
    err
}

#[test]
fn a_reader_makes_writers_fail_at_once_or_wait_and_readers_run_together() {
    let t = tempdir();
    let (repo, wa) = small_repo(t.path());
    let mut holder = flock_holder(&repo, true, 3);
    let held_since = Instant::now();
    // Exclusive commands: exit 8 at once, nothing changed.
    for args in [
        &["prune", "--keep-last", "1"][..],
        &["consolidate", "--full", "E3"],
        &["rm", "E3"],
        &["rm", "--rebase", "E2"],
    ] {
        let err = locked_at_once(&repo, args);
        assert!(err.contains("in use") || err.contains("locked"), "{err}");
        assert!(
            err.contains("--wait"),
            "the message says how to wait: {err}"
        );
    }
    assert_eq!(repo.names(), ["E1", "E2", "E3"]);
    // Shared commands run beside the reader.
    guest_write(&wa.join("disk.vmdk"), 2 * MIB, MIB, 24);
    assert_eq!(repo.save_name(&wa, &[]), "E4");
    let st4 = keep(&wa, &t.path().join("st4"));
    assert_builds(&repo, "E4", &st4, &t.path().join("b4"));
    repo.ok(&["list"]);
    repo.ok(&["show", "E2"]);
    repo.ok(&["verify", "--read-data"]);
    assert!(
        held_since.elapsed() < Duration::from_secs(3),
        "the reader is still there (machine too slow for this test)"
    );
    // With --wait, an exclusive command waits for the reader to go, then runs.
    let t0 = Instant::now();
    let o = repo.output(&["--wait", "30", "prune", "--keep-last", "3"]);
    assert!(
        o.status.success(),
        "prune --wait: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        holder.try_wait().unwrap().is_some(),
        "it waited for the reader"
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
    holder.wait().unwrap();
    assert_eq!(repo.names(), ["E2", "E3", "E4"]);
    assert_builds(&repo, "E4", &st4, &t.path().join("b4"));
}

#[test]
fn a_writer_makes_everyone_fail_at_once_or_wait() {
    let t = tempdir();
    let (repo, wa) = small_repo(t.path());
    let mut holder = flock_holder(&repo, false, 2);
    for args in [
        &["list"][..],
        &["verify"],
        &["build", "E2", s(&t.path().join("b"))],
        &["save", s(&wa)],
        &["prune", "--keep-last", "1"],
    ] {
        let err = locked_at_once(&repo, args);
        assert!(err.contains("locked") || err.contains("in use"), "{err}");
    }
    assert!(!t.path().join("b").exists(), "a locked build wrote nothing");
    // A reader waits too.
    let o = repo.output(&["--wait", "30", "list"]);
    assert!(o.status.success());
    assert!(
        holder.try_wait().unwrap().is_some(),
        "it waited for the writer"
    );
    holder.wait().unwrap();
    // A wait shorter than the holder's time gives up with exit 8, after waiting.
    let mut holder = flock_holder(&repo, false, 4);
    let t0 = Instant::now();
    let err = repo.fails(&["--wait", "1", "list"], 8);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(err.contains("waited"), "{err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn a_running_vrepo_writer_is_named_and_shared_commands_run_together() {
    let t = tempdir();
    let repo = Repo::init(&t.path().join("repo"), &[]);
    // A disk big enough for consolidate --full to take a while.
    let wa = make_vm(&t.path().join("wa"), 40, 32, 31);
    repo.save(&wa, &[]);
    guest_write(&wa.join("disk.vmdk"), 34 * MIB, MIB, 32);
    repo.save(&wa, &[]);
    let st2 = keep(&wa, &t.path().join("st2"));
    let mut c = repo
        .cmd()
        .args(["consolidate", "--full", "E2"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let info = repo.root.join("lock.json");
    let t0 = Instant::now();
    while !info.exists() && c.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(5));
    }
    // A reader and another writer are both told who holds the lock.
    let o = repo.output(&["list"]);
    let o2 = repo.output(&["prune", "--keep-last", "1"]);
    let running = c.try_wait().unwrap().is_none();
    if running {
        for o in [o, o2] {
            assert_eq!(o.status.code(), Some(8));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("vrepo consolidate") && err.contains(&format!("pid {}", c.id())),
                "the holder is named: {err}"
            );
        }
    } else {
        eprintln!("consolidate finished before list ran; holder message not checked");
    }
    assert!(c.wait().unwrap().success());
    assert!(!info.exists(), "lock.json goes with the lock");
    assert_eq!(repo.list()[1].1, None, "E2 is full now");
    assert_builds(&repo, "E2", &st2, &t.path().join("b2"));

    // Shared commands at once: two saves of two working areas, builds, list and verify, all
    // while a reader holds the lock.
    let mut reader = flock_holder(&repo, true, 30);
    let wb = t.path().join("wb");
    repo.build("E1", &wb, &[]);
    guest_write(&wa.join("disk.vmdk"), 3 * MIB, MIB, 33);
    guest_write(&wb.join("disk.vmdk"), 4 * MIB, MIB, 34);
    let spawn = |args: &[&str]| {
        repo.cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let b1 = t.path().join("bb1");
    let children = vec![
        spawn(&["--json", "save", s(&wa)]),
        spawn(&["--json", "save", s(&wb)]),
        spawn(&["build", "E2", s(&b1)]),
        spawn(&["verify", "--read-data"]),
        spawn(&["list"]),
    ];
    let mut saved = Vec::new();
    for (i, ch) in children.into_iter().enumerate() {
        let o = ch.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "shared command {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if i < 2 {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            saved.push(v["name"].as_str().unwrap().to_owned());
        }
    }
    saved.sort();
    assert_eq!(saved, ["E3", "E4"], "two saves at once take two names");
    assert_same_files(&st2, &b1, "build beside saves");
    reader.kill().unwrap();
    reader.wait().unwrap();
    let v = repo.json(&["verify", "--read-data"]);
    assert_eq!(v["ok"].as_array().unwrap().len(), 4, "{v}");
}

#[test]
fn a_lock_held_by_a_killed_process_does_not_block() {
    let t = tempdir();
    let (repo, _wa) = small_repo(t.path());
    // An exclusive holder (one process, see flock_holder), killed with SIGKILL.
    let mut holder = flock_holder(&repo, false, 60);
    locked_at_once(&repo, &["prune", "--keep-last", "2"]);
    locked_at_once(&repo, &["list"]);
    // SIGKILL: the kernel drops the lock; the next exclusive command runs at once.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let t0 = Instant::now();
    let o = repo.json(&["prune", "--keep-last", "2"]);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(o["remove"], serde_json::json!(["E1"]), "{o}");
    assert_eq!(repo.names(), ["E2", "E3"]);

    // The same with vrepo itself as the holder, killed in the middle of a rewrite.
    let mut c = repo
        .cmd()
        .args(["consolidate", "--full", "E3"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let info = repo.root.join("lock.json");
    while !info.exists() && c.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = c.kill();
    c.wait().unwrap();
    // lock.json may be left behind by the killed holder; it only feeds messages, and a dead
    // holder is never named.
    if info.exists() {
        let reader = flock_holder(&repo, true, 5);
        let err = locked_at_once(&repo, &["prune", "--keep-last", "1"]);
        assert!(!err.contains("consolidate"), "a dead holder named: {err}");
        let mut reader = reader;
        reader.kill().unwrap();
        reader.wait().unwrap();
    }
    let t0 = Instant::now();
    let o = repo.output(&["rm", "--rebase", "E2"]);
    assert!(
        o.status.success(),
        "after a killed holder: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(repo.names(), ["E3"]);
    assert_eq!(repo.list()[0].1, None);
    assert!(!repo.root.join("journal.json").exists());
    assert_eq!(tmp_contents(&repo), Vec::<String>::new());
}

/// A holder on another host sharing the repository (NFS): its pid means nothing here, so it is
/// named whatever that pid is on this host, never taken for a dead holder, and its lock is
/// never broken: commands fail with exit 8 (or wait) as long as it holds the lock. Simulated
/// with an exclusive `flock` holder and the `lock.json` such a holder writes.
#[test]
fn a_holder_on_another_host_is_named_and_never_broken() {
    let t = tempdir();
    let (repo, _wa) = small_repo(t.path());
    let mut holder = flock_holder(&repo, false, 30);
    // A pid that is not running here.
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    fs::write(
        repo.root.join("lock.json"),
        format!(
            r#"{{"pid": {dead}, "host": "otherhost", "command": "prune", "since": "2026-12-07T03:00:00Z"}}"#
        ),
    )
    .unwrap();
    for args in [&["list"][..], &["prune", "--keep-last", "1"], &["rm", "E3"]] {
        let err = locked_at_once(&repo, args);
        assert!(
            err.contains(&format!("vrepo prune (pid {dead} on otherhost")),
            "{args:?}: the other host's holder is named: {err}"
        );
    }
    let t0 = Instant::now();
    let err = repo.fails(&["--wait", "1", "rm", "E3"], 8);
    assert!(t0.elapsed() >= Duration::from_millis(900), "{err}");
    assert!(err.contains("otherhost") && err.contains("waited"), "{err}");
    assert!(
        repo.root.join("lock.json").exists(),
        "its lock.json is left alone"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(repo.names(), ["E1", "E2", "E3"], "nothing was removed");
}
