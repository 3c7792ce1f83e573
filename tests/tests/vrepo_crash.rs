//! Crash safety of `vrepo` (issue 5): "an interrupted save or build (kill -9, power loss, disk
//! full) leaves the repository exactly as before, with no half entry visible; the next command
//! cleans up leftovers."
//!
//! Everything drives the real binary on sample VMs made at test time (a monolithicSparse disk
//! of incompressible data written through qemu-img, a .vmx, an .nvram):
//! - `save` and `build` killed with SIGKILL at many points spread over their measured
//!   duration; after each kill the repository must hold only complete entries, be otherwise
//!   exactly as before, be emptied of leftovers by the next command, and the working area of a
//!   save must be untouched (bytes, mtimes, no new names);
//! - write errors: RLIMIT_FSIZE (SIGXFSZ ignored, so writes fail with EFBIG) at several limits,
//!   and a small tmpfs filled to several levels around an entry's size (skipped when mounting
//!   is not allowed): a failed command exits 6 with one line on stderr and leaves no entry; a
//!   command that exits 0 left a complete one;
//! - two saves of different working areas into one repository at once, with `list` polled
//!   meanwhile.

mod common;

use common::{fresh_bin, qemu_img, qemu_io, run, Mount};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Exit code of an I/O error (docs/exit-codes.md).
const EXIT_IO: i32 = 6;

fn vrepo_bin() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| fresh_bin("vrepo", "vrepo"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

// ---------------------------------------------------------------------------------------------
// The repository, through the binary.

struct Repo {
    root: PathBuf,
}

impl Repo {
    fn init(root: &Path) -> Repo {
        let r = Repo {
            root: root.to_path_buf(),
        };
        r.ok(&["init"]);
        r
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(vrepo_bin());
        c.arg("-r").arg(&self.root).arg("--quiet");
        c
    }

    fn ok(&self, args: &[&str]) -> Output {
        run(self.cmd().args(args))
    }

    /// `save --json WORKAREA EXTRA...`: the new entry's name.
    fn save(&self, wa: &Path, extra: &[&str]) -> String {
        let mut a = vec!["--json", "save", s(wa)];
        a.extend_from_slice(extra);
        let out = self.ok(&a);
        let v: Value = serde_json::from_slice(&out.stdout).expect("save --json");
        v["name"].as_str().expect("name").to_owned()
    }

    /// `list --json`, which must succeed: every entry, parsed.
    fn list(&self) -> Vec<Value> {
        String::from_utf8(self.ok(&["--json", "list"]).stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("list line {l}: {e}")))
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.list()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn tmp_names(&self) -> Vec<String> {
        names_in(&self.root.join("tmp"))
    }

    /// Build `entry` into a new folder `dest` and compare it with `expected`.
    fn assert_builds_to(&self, entry: &str, expected: &WaState, dest: &Path) {
        if dest.exists() {
            fs::remove_dir_all(dest).unwrap();
        }
        self.ok(&["build", entry, s(dest)]);
        expected.assert_same(dest, &format!("entry {entry} built"));
        fs::remove_dir_all(dest).unwrap();
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn entry_number(name: &str) -> Option<u64> {
    let n = name.strip_prefix('E')?;
    (!n.starts_with('0') || n == "0")
        .then(|| n.parse().ok())
        .flatten()
}

/// Every folder in `entries/` is a complete entry: named `E<n>`, holding exactly its four
/// files, its `entry.json` naming itself and giving the sizes its stored files have. `list`
/// shows exactly these entries. Returns their names, oldest first.
fn assert_entries_complete(repo: &Repo) -> Vec<String> {
    let names = assert_entry_folders_complete(repo);
    assert_eq!(repo.names(), names, "list shows exactly the entry folders");
    names
}

/// Every folder in `entries/` is a complete entry (see `assert_entries_complete`).
fn assert_entry_folders_complete(repo: &Repo) -> Vec<String> {
    let dir = repo.root.join("entries");
    let mut names = names_in(&dir);
    names.sort_by_key(|n| entry_number(n));
    for n in &names {
        assert!(entry_number(n).is_some(), "entries/{n}: not an entry name");
        let d = dir.join(n);
        assert_eq!(
            names_in(&d),
            [
                "chunks.bin",
                "delta.vdelta",
                "entry.json",
                "entry.json.b3",
                "signature.zst"
            ],
            "entries/{n}: files"
        );
        let e: Value = serde_json::from_slice(&fs::read(d.join("entry.json")).unwrap())
            .unwrap_or_else(|err| panic!("entries/{n}/entry.json: {err}"));
        assert_eq!(e["name"], n.as_str(), "entries/{n}/entry.json names itself");
        for (key, file) in [
            ("delta", "delta.vdelta"),
            ("signature", "signature.zst"),
            ("chunks", "chunks.bin"),
        ] {
            assert_eq!(
                e["stored"][key]["size"].as_u64(),
                Some(fs::metadata(d.join(file)).unwrap().len()),
                "entries/{n}/{file}: size against entry.json"
            );
        }
    }
    names
}

/// The repository's files outside `tmp/` (and the lock file, which the first command makes):
/// small files by content, large ones by size, mtime and inode (entries are never rewritten).
fn repo_snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            // locks/: a save's VM lock, whose holder line a killed save leaves.
            if rel == "lock"
                || rel == "lock.json"
                || rel.starts_with("tmp/")
                || rel == "locks"
                || rel.starts_with("locks/")
            {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else if m.len() <= 1 << 16 {
                out.insert(rel, common::sha256_hex(&fs::read(&p).unwrap()));
            } else {
                let v = format!("{} {} {} {}", m.len(), m.mtime(), m.mtime_nsec(), m.ino());
                out.insert(rel, v);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Snapshot difference for messages.
fn snapshot_diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", a.get(k), b.get(k)))
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------------
// Sample VMs and their states.

/// `len` bytes from /dev/urandom (incompressible).
fn random(len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize);
    fs::File::open("/dev/urandom")
        .unwrap()
        .take(len)
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// A working area `dir`: `vm.vmx`, `vm.nvram` and `disk.vmdk`, a monolithicSparse disk of
/// `mib` MiB filled with incompressible data (converted from a raw image by qemu-img).
fn make_vm(dir: &Path, mib: u64, name: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let raw = dir.with_extension("raw");
    fs::write(&raw, random(mib * MIB)).unwrap();
    let disk = dir.join("disk.vmdk");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        s(&raw),
        s(&disk),
    ]);
    fs::remove_file(&raw).unwrap();
    let vmx = format!(
        ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\n\
         displayName = \"{name}\"\nguestOS = \"otherlinux-64\"\nnvram = \"vm.nvram\"\n\
         scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n\
         scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"disk.vmdk\"\n"
    );
    fs::write(dir.join("vm.vmx"), vmx).unwrap();
    fs::write(dir.join("vm.nvram"), random(8684)).unwrap();
    dir.to_path_buf()
}

/// Write `len` incompressible bytes at guest offset `off` of the working area's disk.
fn change_disk(wa: &Path, off: u64, len: u64) {
    let src = wa.with_extension("patch");
    fs::write(&src, random(len)).unwrap();
    qemu_io(
        &wa.join("disk.vmdk"),
        "vmdk",
        &[&format!("write -q -s {} {off} {len}", s(&src))],
    );
    fs::remove_file(&src).unwrap();
}

/// What a working area holds: every name with its bytes, mtime and mode.
#[derive(PartialEq)]
struct WaState {
    files: BTreeMap<String, (Vec<u8>, i64, i64, u32)>,
}

impl WaState {
    fn of(dir: &Path) -> WaState {
        let mut files = BTreeMap::new();
        for n in names_in(dir) {
            let p = dir.join(&n);
            let m = fs::symlink_metadata(&p).unwrap();
            let bytes = if m.is_file() {
                fs::read(&p).unwrap()
            } else {
                b"(not a file)".to_vec()
            };
            files.insert(n, (bytes, m.mtime(), m.mtime_nsec(), m.mode() & 0o7777));
        }
        WaState { files }
    }

    fn assert_same(&self, dir: &Path, what: &str) {
        let other = WaState::of(dir);
        assert_eq!(
            self.files.keys().collect::<Vec<_>>(),
            other.files.keys().collect::<Vec<_>>(),
            "{what}: names in {}",
            dir.display()
        );
        for (n, (bytes, sec, nsec, mode)) in &self.files {
            let (b2, sec2, nsec2, mode2) = &other.files[n];
            assert!(bytes == b2, "{what}: {n}: bytes differ");
            assert_eq!(
                (sec, nsec, mode),
                (sec2, nsec2, mode2),
                "{what}: {n}: mtime/mode"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Start `cmd` (stdout discarded, stderr to `err`), let it run `after`, then SIGKILL it unless
/// it ended by itself. Returns its exit status and run time when it ended by itself.
fn run_and_kill(cmd: &mut Command, after: Duration, err: &Path) -> Option<(ExitStatus, Duration)> {
    let start = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(err).unwrap())
        .spawn()
        .expect("spawn vrepo");
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some((st, start.elapsed()));
        }
        let left = after.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(2)));
    }
    // SIGKILL; it may have ended in between, which kill() tolerates.
    let _ = child.kill();
    let st = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    (st.signal() != Some(9)).then(|| (st, start.elapsed()))
}

/// A failed command: exit `code`, nothing on stdout, one line `vrepo: ...` on stderr.
fn assert_failed(o: &Output, code: i32, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit code; stderr: {err}"
    );
    assert!(o.stdout.is_empty(), "{what}: stdout of a failed command");
    assert_eq!(err.lines().count(), 1, "{what}: one line on stderr: {err}");
    assert!(err.starts_with("vrepo: "), "{what}: {err}");
    err.trim_end().to_owned()
}

/// Kill point `k` of `n` spread over `dur` (a little beyond it, so the last ones can land
/// after the entry is published).
///
/// `dur` is measured at test time (debug or release build, a loaded machine or not) and
/// updated by the tests whenever a command ends before its kill.
fn kill_point(dur: Duration, k: u32, n: u32) -> Duration {
    dur.mul_f64(1.1 * f64::from(k) / f64::from(n - 1))
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 during save.

#[test]
fn save_killed_at_many_points_leaves_the_repository_as_before() {
    let t = tempfile::tempdir().unwrap();
    let wa = make_vm(&t.path().join("wa"), 64, "crash save");
    let repo = Repo::init(&t.path().join("repo"));
    let e1 = repo.save(&wa, &["--full"]);
    let state1 = WaState::of(&wa);
    change_disk(&wa, 8 * MIB, 24 * MIB);
    let state2 = WaState::of(&wa);

    // Saves of both kinds, incremental (against E1: the whole disk is read again, as its
    // mtime changed) and full, each uninterrupted once: its duration, and an entry every
    // completed save must equal.
    let kinds: [(&str, Vec<&str>); 2] = [
        ("incremental", vec!["--parent", &e1]),
        ("full", vec!["--full"]),
    ];
    let mut durs = Vec::new();
    let mut saved = Vec::new();
    for (_, args) in &kinds {
        let start = Instant::now();
        saved.push(repo.save(&wa, args));
        durs.push(start.elapsed());
    }
    for e in &saved {
        repo.assert_builds_to(e, &state2, &t.path().join("check"));
    }

    let err = t.path().join("stderr");
    let (mut in_tmp, mut before_tmp, mut completed) = (0, 0, 0);
    let n = 24;
    for i in 0..n {
        let (kind, args) = &kinds[i as usize % 2];
        let dur = &mut durs[i as usize % 2];
        let at = kill_point(*dur, i / 2, n / 2);
        let what = format!("{kind} save killed after {at:?} (kill {i}, one takes {dur:?})");
        let before = repo_snapshot(&repo.root);
        let names_before = assert_entries_complete(&repo);

        let ended = run_and_kill(repo.cmd().arg("save").arg(&wa).args(args), at, &err);
        if let Some((st, took)) = ended {
            *dur = took;
            assert!(
                st.success(),
                "{what}: ended by itself with {st}: {}",
                fs::read_to_string(&err).unwrap()
            );
        }
        // Where it was: a temporary folder in tmp/ means it was writing the entry.
        let writing = !repo.tmp_names().is_empty();

        // The next command cleans up, and shows only complete entries.
        let names = assert_entries_complete(&repo);
        assert_eq!(
            repo.tmp_names(),
            Vec::<String>::new(),
            "{what}: tmp/ after list"
        );
        state2.assert_same(&wa, &format!("{what}: the working area"));
        let after = repo_snapshot(&repo.root);
        let new: Vec<&String> = names.iter().filter(|n| !names_before.contains(n)).collect();
        assert!(
            names_before.iter().all(|n| names.contains(n)),
            "{what}: entries lost: {names_before:?} -> {names:?}"
        );
        match new.as_slice() {
            [] => {
                if writing {
                    in_tmp += 1;
                } else {
                    before_tmp += 1;
                }
                assert!(
                    ended.is_none(),
                    "{what}: a save that succeeded made no entry"
                );
                assert!(
                    before == after,
                    "{what}: the repository changed: {}",
                    snapshot_diff(&before, &after)
                );
            }
            [n] => {
                completed += 1;
                // Only the new entry's folder and the working area's record may be new.
                let strip = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
                    m.iter()
                        .filter(|(k, _)| {
                            !k.starts_with(&format!("entries/{n}"))
                                && !k.starts_with("workareas/")
                                && *k != "last-entry"
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                assert!(
                    strip(&before) == strip(&after),
                    "{what}: the repository changed beyond the new entry {n}: {}",
                    snapshot_diff(&before, &after)
                );
                let wa_before: Vec<_> = before
                    .keys()
                    .filter(|k| k.starts_with("workareas/"))
                    .collect();
                let wa_after: Vec<_> = after
                    .keys()
                    .filter(|k| k.starts_with("workareas/"))
                    .collect();
                assert_eq!(wa_before, wa_after, "{what}: names in workareas/");
                repo.assert_builds_to(n, &state2, &t.path().join("check"));
            }
            _ => panic!("{what}: more than one new entry: {new:?}"),
        }
    }
    eprintln!(
        "save: {before_tmp} kills before the entry's folder was made, {in_tmp} while it was \
         written, {completed} after it was published (saves take {durs:?})"
    );
    assert!(
        in_tmp >= n / 4,
        "kills should land while the entry is written: {before_tmp} before, {in_tmp} while, \
         {completed} after"
    );

    // A last uninterrupted save (default mode); E1 still builds to its state (every other
    // entry was built when it appeared), and verify finds every entry fine.
    let last = repo.save(&wa, &[]);
    let check = t.path().join("check");
    repo.assert_builds_to(&last, &state2, &check);
    repo.assert_builds_to(&e1, &state1, &check);
    repo.ok(&["verify"]);
    assert_entries_complete(&repo);
    assert_eq!(repo.tmp_names(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 during build.

#[test]
fn build_killed_at_many_points_leaves_nothing_or_the_whole_build() {
    let t = tempfile::tempdir().unwrap();
    let wa = make_vm(&t.path().join("wa"), 32, "crash build");
    let repo = Repo::init(&t.path().join("repo"));
    repo.save(&wa, &["--full"]);
    change_disk(&wa, 8 * MIB, 8 * MIB);
    let e2 = repo.save(&wa, &[]);
    let state = WaState::of(&wa);
    let entries_before = repo_snapshot(&repo.root.join("entries"));

    let dest = t.path().join("dest");
    let start = Instant::now();
    repo.ok(&["build", &e2, s(&dest)]);
    let mut dur = start.elapsed();
    state.assert_same(&dest, "uninterrupted build");
    fs::remove_dir_all(&dest).unwrap();
    fs::create_dir(&dest).unwrap();

    let err = t.path().join("stderr");
    let (mut nothing, mut leftover, mut complete) = (0, 0, 0);
    let n = 16;
    for i in 0..n {
        let at = kill_point(dur, i, n);
        let what = format!("build killed after {at:?} (kill {i}, a build takes {dur:?})");
        let ended = run_and_kill(repo.cmd().args(["build", &e2, s(&dest)]), at, &err);
        if let Some((st, took)) = ended {
            dur = took;
            assert!(
                st.success(),
                "{what}: ended by itself with {st}: {}",
                fs::read_to_string(&err).unwrap()
            );
        }
        let names = names_in(&dest);
        let (temp, built): (Vec<&String>, Vec<&String>) =
            names.iter().partition(|n| n.starts_with(".vrepo-build-"));
        assert!(temp.len() <= 1, "{what}: {temp:?}");
        if !temp.is_empty() {
            leftover += 1;
        }
        if built.is_empty() {
            nothing += 1;
            assert!(
                ended.is_none(),
                "{what}: a build that succeeded built nothing"
            );
        } else {
            complete += 1;
            // The whole build, as saved; then emptied for the next kill (the leftover stays,
            // for the next build to remove).
            let only: Vec<&String> = state.files.keys().collect();
            assert_eq!(built, only, "{what}: a partial build is visible");
            for n in &built {
                let (bytes, sec, nsec, _) = &state.files[*n];
                let p = dest.join(n);
                let m = fs::metadata(&p).unwrap();
                assert!(fs::read(&p).unwrap() == *bytes, "{what}: {n}: bytes");
                assert_eq!(
                    (m.mtime(), m.mtime_nsec()),
                    (*sec, *nsec),
                    "{what}: {n}: mtime"
                );
                fs::remove_file(&p).unwrap();
            }
        }
        // The repository: entries untouched, tmp/ empty after the next command.
        repo.names();
        assert_eq!(repo.tmp_names(), Vec::<String>::new(), "{what}: tmp/");
        assert!(
            repo_snapshot(&repo.root.join("entries")) == entries_before,
            "{what}: entries changed"
        );
    }
    eprintln!(
        "build: {nothing} kills left nothing built ({leftover} with a .vrepo-build-* folder), \
         {complete} the whole build (a build takes {dur:?})"
    );
    assert!(leftover >= 3, "kills should land while files are written");

    // An uninterrupted build into the same folder, without --force: leftovers are removed.
    if names_in(&dest).is_empty() {
        // Make sure the next build has a dead build's folder to remove.
        let dead = dead_pid();
        let name = format!(".vrepo-build-{}", tag(dead, &host_tag(), &boot_id()));
        fs::create_dir(dest.join(name)).unwrap();
    }
    repo.ok(&["build", &e2, s(&dest)]);
    state.assert_same(&dest, "build after the kills");
}

// ---------------------------------------------------------------------------------------------
// 3. Leftovers of dead processes, planted where vrepo makes them.

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .replace('-', "")
        .chars()
        .take(12)
        .collect()
}

/// The tag vrepo puts in its temporary names (`PID-HOST-BOOT`, see vrepo's `owner` module),
/// written out again here so a change of format is a test failure.
fn tag(pid: u32, host: &str, boot: &str) -> String {
    format!("{pid}-{host}-{boot}")
}

fn host_tag() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect()
}

/// The pid of a process that has ended.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    pid
}

#[test]
fn leftovers_of_dead_commands_are_removed_and_live_ones_kept() {
    let t = tempfile::tempdir().unwrap();
    let wa = make_vm(&t.path().join("wa"), 4, "leftovers");
    let repo = Repo::init(&t.path().join("repo"));
    let e1 = repo.save(&wa, &[]);
    let before = repo_snapshot(&repo.root);
    let (dead, live, boot, host) = (dead_pid(), std::process::id(), boot_id(), host_tag());

    // A save's temporary folder of a dead process, of a live one, from before a reboot, in
    // the older tag format (no host) and of two processes on another host sharing the
    // repository (NFS): one with a pid that is dead here, one from a boot unknown here.
    let tmp = repo.root.join("tmp");
    let live_here = format!("save-{}-2", tag(live, &host, &boot));
    let elsewhere = [
        format!("save-{}-5", tag(dead, "otherhost", &boot)),
        format!("save-{}-6", tag(live, "otherhost", "0123456789ab")),
    ];
    for name in [
        format!("save-{}-1", tag(dead, &host, &boot)),
        live_here.clone(),
        format!("save-{}-3", tag(live, &host, "000000000000")),
        format!("save-{dead}-{boot}-4"),
    ]
    .iter()
    .chain(&elsewhere)
    {
        fs::create_dir(tmp.join(name)).unwrap();
        fs::write(tmp.join(name).join("delta.vdelta"), b"half").unwrap();
    }
    // A working-area record being replaced (write_atomic's temporary file) when its process
    // died, in both tag formats, and one being replaced by another host right now.
    let rec = names_in(&repo.root.join("workareas"))
        .into_iter()
        .next()
        .unwrap();
    let records = repo.root.join("workareas");
    for name in [
        format!(".{rec}.{}.tmp", tag(dead, &host, &boot)),
        format!(".{rec}.{dead}.tmp"),
    ] {
        fs::write(records.join(name), b"{\"half").unwrap();
    }
    let other_record = format!(".{rec}.{}.tmp", tag(dead, "otherhost", &boot));
    fs::write(records.join(&other_record), b"{\"half").unwrap();

    // A shared command removes what is known dead here and keeps the rest.
    assert_eq!(repo.names(), std::slice::from_ref(&e1));
    let mut kept: Vec<String> = elsewhere.to_vec();
    kept.push(live_here.clone());
    kept.sort();
    assert_eq!(repo.tmp_names(), kept);
    assert_eq!(names_in(&records), [other_record.clone(), rec.clone()]);
    fs::remove_dir_all(tmp.join(&live_here)).unwrap();
    fs::remove_file(records.join(&other_record)).unwrap();
    for name in &elsewhere {
        fs::remove_dir_all(tmp.join(name)).unwrap();
    }
    let after = repo_snapshot(&repo.root);
    assert!(
        before == after,
        "leftovers outside tmp/ stay: {}",
        snapshot_diff(&before, &after)
    );
    repo.assert_builds_to(&e1, &WaState::of(&wa), &t.path().join("check"));

    // Alone with the exclusive lock, a command knows nobody on any host is at work: the other
    // host's leftovers go too.
    for name in &elsewhere {
        fs::create_dir(tmp.join(name)).unwrap();
    }
    fs::write(records.join(&other_record), b"{\"half").unwrap();
    repo.ok(&["consolidate", &e1]);
    assert_eq!(repo.tmp_names(), Vec::<String>::new());
    let left = names_in(&records);
    assert!(
        left.contains(&rec) && !left.contains(&other_record),
        "{left:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Write errors: RLIMIT_FSIZE.

/// `vrepo -r REPO --quiet ARGS` with RLIMIT_FSIZE `limit` and SIGXFSZ ignored (the disposition
/// survives exec), so a write past the limit fails with EFBIG as on a full disk.
fn limited(repo: &Repo, limit: u64, args: &[&str]) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=\"$0\" -- \"$@\"")
        .arg(limit.to_string())
        .arg(vrepo_bin())
        .arg("-r")
        .arg(&repo.root)
        .arg("--quiet")
        .args(args);
    c.output().unwrap()
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn save_and_build_past_the_file_size_limit_fail_cleanly() {
    if !have("prlimit") {
        eprintln!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let wa = make_vm(&t.path().join("wa"), 32, "fsize");
    let repo = Repo::init(&t.path().join("repo"));
    let e1 = repo.save(&wa, &["--full"]);
    let state1 = WaState::of(&wa);
    change_disk(&wa, 4 * MIB, 12 * MIB);
    let state2 = WaState::of(&wa);
    let e2 = repo.save(&wa, &["--parent", &e1]);
    let stored: Value = serde_json::from_slice(
        &fs::read(repo.root.join("entries").join(&e2).join("entry.json")).unwrap(),
    )
    .unwrap();
    let size = |k: &str| stored["stored"][k]["size"].as_u64().unwrap();
    let (sig, delta) = (size("signature"), size("delta"));
    assert!(delta > sig, "the delta is the largest file");

    let before = repo_snapshot(&repo.root);
    for limit in [0, 1, sig / 2, sig + 4096, delta / 2, delta - delta / 16] {
        let what = format!("save with RLIMIT_FSIZE {limit} (signature {sig}, delta {delta})");
        let o = limited(&repo, limit, &["save", s(&wa), "--parent", &e1]);
        let line = assert_failed(&o, EXIT_IO, &what);
        assert!(
            line.contains("File too large"),
            "{what}: the error names the cause: {line}"
        );
        assert_entries_complete(&repo);
        assert_eq!(repo.tmp_names(), Vec::<String>::new(), "{what}: tmp/");
        let after = repo_snapshot(&repo.root);
        assert!(
            before == after,
            "{what}: the repository changed: {}",
            snapshot_diff(&before, &after)
        );
        state2.assert_same(&wa, &what);
    }

    // Build: the disk cannot be made in full; the working area gets nothing.
    let dest = t.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let what = "build with RLIMIT_FSIZE 1 MiB";
    let o = limited(&repo, MIB, &["build", &e2, s(&dest)]);
    let line = assert_failed(&o, EXIT_IO, what);
    assert!(line.contains("File too large"), "{what}: {line}");
    assert_eq!(
        names_in(&dest),
        Vec::<String>::new(),
        "{what}: the working area"
    );

    let check = t.path().join("check");
    repo.assert_builds_to(&e1, &state1, &check);
    repo.assert_builds_to(&e2, &state2, &check);
    let e3 = repo.save(&wa, &["--parent", &e1]);
    repo.assert_builds_to(&e3, &state2, &check);
}

// ---------------------------------------------------------------------------------------------
// 5. Write errors: a full file system (a small tmpfs; skipped when mounting is not allowed).

#[test]
fn save_and_build_on_a_full_file_system_fail_cleanly_or_succeed_whole() {
    let t = tempfile::tempdir().unwrap();
    let Some(mnt) = Mount::tmpfs(&t.path().join("mnt"), 96 * MIB) else {
        return;
    };
    let wa = make_vm(&t.path().join("wa"), 24, "full disk");
    let repo = Repo::init(&mnt.0.join("repo"));
    let filler = mnt.0.join("filler");
    let e1 = repo.save(&wa, &["--full"]);
    let state1 = WaState::of(&wa);
    change_disk(&wa, 2 * MIB, 8 * MIB);
    let state2 = WaState::of(&wa);
    // What one save takes.
    let free0 = mnt.free();
    let e2 = repo.save(&wa, &["--parent", &e1]);
    let need = free0 - mnt.free();
    assert!(need > 8 * MIB, "an entry of 8 MiB of new data takes {need}");
    let check = t.path().join("check");

    // Free space from half an entry to a little more than one: each save either fails
    // cleanly (exit 6, one line, no entry, the repository as before) or succeeds with a whole
    // entry. Around `need`, the entry fits but the working area's record may not.
    let page = 4096;
    let mut outcomes = Vec::new();
    for free in [
        need / 2,
        need - 4 * page,
        need - page,
        need,
        need + page,
        need + 2 * page,
        need + 8 * page,
    ] {
        mnt.leave_free(&filler, free);
        let what = format!("save with {free} bytes free (an entry takes {need})");
        let before = repo_snapshot(&repo.root);
        let names_before = repo.names();
        let o = repo
            .cmd()
            .args(["--json", "save", s(&wa), "--parent", &e1])
            .output()
            .unwrap();
        let names = assert_entries_complete(&repo);
        assert_eq!(repo.tmp_names(), Vec::<String>::new(), "{what}: tmp/");
        if o.status.success() {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            let n = v["name"].as_str().unwrap();
            assert_eq!(names.last().map(String::as_str), Some(n), "{what}");
            assert_eq!(names.len(), names_before.len() + 1, "{what}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.is_empty() || (err.contains(" was saved, but ") && err.lines().count() == 1),
                "{what}: saved, with stderr: {err}"
            );
            outcomes.push(format!(
                "{free}: saved{}",
                if err.is_empty() {
                    ""
                } else {
                    " (with a warning)"
                }
            ));
            // Room for the next round: this entry goes (it has no children).
            fs::remove_file(&filler).unwrap();
            repo.assert_builds_to(n, &state2, &check);
            repo.ok(&["rm", n]);
        } else {
            let line = assert_failed(&o, EXIT_IO, &what);
            assert!(line.contains("No space left"), "{what}: {line}");
            // The line names the file that could not be written.
            assert!(
                line.contains(s(&repo.root)),
                "{what}: names no file: {line}"
            );
            assert_eq!(names, names_before, "{what}: a failed save left an entry");
            let after = repo_snapshot(&repo.root);
            assert!(
                before == after,
                "{what}: the repository changed: {}",
                snapshot_diff(&before, &after)
            );
            outcomes.push(format!("{free}: failed"));
        }
        state2.assert_same(&wa, &what);
    }
    eprintln!("full file system: {outcomes:?}");

    // Build from a full repository into a working area elsewhere: only the working area's
    // record is written in the repository.
    mnt.leave_free(&filler, 0);
    let dest = t.path().join("dest");
    // The build is complete, so it succeeds, and says it could not record it.
    let o = repo.cmd().args(["build", &e2, s(&dest)]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "build from a full repository: {err}");
    assert!(
        err.starts_with("vrepo: built ")
            && err.contains("could not record")
            && err.lines().count() == 1,
        "build from a full repository: {err}"
    );
    state2.assert_same(&dest, "build from a full repository");
    fs::remove_file(&filler).unwrap();
    repo.assert_builds_to(&e1, &state1, &check);
    repo.assert_builds_to(&e2, &state2, &check);
}

// ---------------------------------------------------------------------------------------------
// 6. Two saves at once.

#[test]
fn concurrent_saves_of_two_working_areas_both_land_whole() {
    let t = tempfile::tempdir().unwrap();
    let was = [
        make_vm(&t.path().join("wa-a"), 24, "vm a"),
        make_vm(&t.path().join("wa-b"), 24, "vm b"),
    ];
    let repo = Arc::new(Repo::init(&t.path().join("repo")));

    // `list` polled while the saves run: it never fails and never shows a half entry.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (repo, stop) = (repo.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // Saves may publish between the two looks: list's entries are complete, and
                // every folder is.
                for v in repo.list() {
                    let n = v["name"].as_str().unwrap();
                    assert!(repo
                        .root
                        .join("entries")
                        .join(n)
                        .join("entry.json")
                        .exists());
                }
                assert_entry_folders_complete(&repo);
                n += 1;
            }
            n
        })
    };

    let mut states: Vec<(String, WaState)> = Vec::new();
    let mut last: [Option<String>; 2] = [None, None];
    for round in 0..3 {
        if round > 0 {
            for (i, wa) in was.iter().enumerate() {
                change_disk(wa, (round * 4 + i as u64) * MIB, 4 * MIB);
            }
        }
        let children: Vec<Child> = was
            .iter()
            .map(|wa| {
                repo.cmd()
                    .args(["--json", "save", s(wa)])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let mut round_names = BTreeSet::new();
        for (i, o) in outs.iter().enumerate() {
            assert!(
                o.status.success(),
                "round {round}: save of {}: {}",
                was[i].display(),
                String::from_utf8_lossy(&o.stderr)
            );
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            let name = v["name"].as_str().unwrap().to_owned();
            // Each working area's entry follows its own previous one.
            assert_eq!(
                v["parent"].as_str(),
                last[i].as_deref(),
                "round {round}: parent of {name}"
            );
            assert_eq!(
                v["source"].as_str(),
                Some(s(&was[i].canonicalize().unwrap()))
            );
            round_names.insert(name.clone());
            last[i] = Some(name.clone());
            states.push((name, WaState::of(&was[i])));
        }
        assert_eq!(round_names.len(), 2, "round {round}: distinct names");
    }
    stop.store(true, Ordering::Relaxed);
    let polls = poller.join().expect("list while saving");
    eprintln!("concurrent saves: list polled {polls} times meanwhile");

    let names = assert_entries_complete(&repo);
    assert_eq!(names.len(), 6);
    assert_eq!(repo.tmp_names(), Vec::<String>::new());
    let check = t.path().join("check");
    for (name, state) in &states {
        repo.assert_builds_to(name, state, &check);
    }
}
