//! The example site scripts (issues 6 and 16): `scripts/site-backup.sh` (nightly save of every
//! VM folder under a directory, each as a VM of its own (`--vm NAME`), several at once, with
//! `--at-snapshot` for running VMs, then one prune applied to each VM; a timestamped main log
//! and one log per VM; a non-zero exit naming every VM that failed) and `scripts/vm.mk` (back
//! up and restore a VM by name; `site`: every VM of a folder with make's parallelism, then a
//! prune), run on generated VMs: running ones (lock folder, a VMware snapshot in the .vmsd),
//! shut-down ones, and ones with a broken disk chain. Entries are told apart by `vm.name` in
//! `list --json`, never by number: parallel saves take numbers in any order. Both scripts are
//! shellcheck-clean (for the Makefile: the shell its recipes expand to, from `make -n`).

mod common;
mod vrepo_support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use vrepo_support::*;

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("scripts")
}

/// web (running), db (shut down) and, with `broken`, a VM whose disk's parent link is missing.
fn make_vms(vms: &Path, broken: bool) {
    make_running_vm(&vms.join("web"), 16, 40);
    make_vm(&vms.join("db"), 12, 3, 41);
    if broken {
        make_broken_vm(&vms.join("broken"));
    }
}

/// A VM whose disk's parent link is missing: every save of it fails (exit 4).
fn make_broken_vm(dir: &Path) {
    let b = make_vm(dir, 8, 1, 42);
    qemu_child(&b, "disk.vmdk", "disk-000001.vmdk");
    write_vmx(&b, "disk-000001.vmdk", "broken");
    fs::remove_file(b.join("disk.vmdk")).unwrap();
}

/// Small shut-down VMs at `vms/REL` for each REL (a path, maybe nested), each with data of its
/// own (no VM is based on another's entry).
fn make_site(vms: &Path, rels: &[&str]) {
    for (i, rel) in rels.iter().enumerate() {
        make_vm(&vms.join(rel), 6, 1, 60 + i as u64);
    }
}

fn site_backup(args: &[&str], env: &[(&str, &str)]) -> Output {
    site_backup_with(vrepo_bin(), args, env)
}

fn site_backup_with(vrepo: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("bash");
    c.arg(scripts().join("site-backup.sh"))
        .arg("--vrepo")
        .arg(vrepo)
        .args(args)
        .env_remove("VREPO_REPOSITORY");
    for k in [
        "KEEP_LAST",
        "KEEP_DAILY",
        "KEEP_WEEKLY",
        "KEEP_MONTHLY",
        "NO_PRUNE",
        "SITE_JOBS",
        "SITE_LOG_DIR",
        "SITE_BACKUP_LOG",
        "MAX_CHAIN",
        "LOCK_WAIT",
        "VREPO",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    c.output().unwrap()
}

fn entries(repo: &Repo) -> Vec<Value> {
    repo.stdout(&["--json", "list"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn vm_of(e: &Value) -> &str {
    e["vm"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("vm.name in {e}"))
}

/// Entries by VM (`vm.name` of `list --json`), each VM's oldest first.
fn by_vm(repo: &Repo) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in entries(repo) {
        m.entry(vm_of(&e).to_owned()).or_default().push(e);
    }
    m
}

/// The names of a VM's entries, oldest first.
fn names_of(es: &[Value]) -> Vec<String> {
    es.iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

fn source_of(e: &Value) -> String {
    Path::new(e["source"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn assert_timestamped(log: &str) {
    assert!(!log.is_empty());
    for l in log.lines() {
        let b = l.as_bytes();
        let ok = b.len() > 21
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'Z'
            && b[20] == b' '
            && l[..4].bytes().all(|c| c.is_ascii_digit());
        assert!(ok, "not a timestamped line: {l:?}");
    }
}

/// `dir/NAME.log` exists for each of `names` and nothing else is in `dir`; each is timestamped
/// and holds only lines about its own VM: `saving NAME`, `  NAME: ...` (vrepo's), `saved NAME`,
/// `FAILED NAME...` and `prune: ... of vm NAME: ...`. Returns the logs by name.
fn assert_vm_logs(dir: &Path, names: &[&str]) -> BTreeMap<String, String> {
    let mut found: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|n| format!("{n}.log")).collect();
    want.sort();
    assert_eq!(found, want, "the logs in {}", dir.display());
    let mut out = BTreeMap::new();
    for n in names {
        let text = fs::read_to_string(dir.join(format!("{n}.log"))).unwrap();
        assert_timestamped(&text);
        for l in text.lines() {
            let what = &l[21..];
            let own = what.starts_with(&format!("saving {n}, "))
                || what.starts_with(&format!("  {n}: "))
                || what == format!("saved {n}")
                || what.starts_with(&format!("FAILED {n}"))
                || (what.starts_with("prune: keep ")
                    && what.contains(&format!(" entries of vm {n}: ")));
            assert!(own, "{n}.log has a line not about {n}: {l:?}\n{text}");
        }
        out.insert(n.to_string(), text);
    }
    out
}

/// A `vrepo` for the scripts that runs the real one, but holds each save 1 s and records how
/// many saves were running when each started (one number a line in `counts`).
fn counting_vrepo(dir: &Path) -> (PathBuf, PathBuf) {
    let running = dir.join("running");
    fs::create_dir_all(&running).unwrap();
    let counts = dir.join("counts");
    let w = dir.join("vrepo-counting");
    fs::write(
        &w,
        format!(
            "#!/bin/sh\n\
             case \" $* \" in *\" save \"*) ;; *) exec '{real}' \"$@\" ;; esac\n\
             : >'{running}'/$$\n\
             ls '{running}' | wc -l >>'{counts}'\n\
             sleep 1\n\
             '{real}' \"$@\"\n\
             s=$?\n\
             rm -f '{running}'/$$\n\
             exit $s\n",
            real = vrepo_bin().display(),
            running = running.display(),
            counts = counts.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&w, fs::Permissions::from_mode(0o755)).unwrap();
    (w, counts)
}

/// The most saves seen running at once, and how many saves started.
fn concurrency(counts: &Path) -> (usize, usize) {
    let text = fs::read_to_string(counts).unwrap_or_default();
    let v: Vec<usize> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    (v.iter().copied().max().unwrap_or(0), v.len())
}

fn shellcheck(what: &str, text: &str, exclude: &[&str]) {
    let mut args = vec!["-s", "sh"];
    let ex = exclude.join(",");
    if !exclude.is_empty() {
        args.extend(["-e", ex.as_str()]);
    }
    args.push("-");
    let mut c = Command::new("shellcheck")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("shellcheck");
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("#!/bin/sh\n{text}").as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "shellcheck {what}:\n{text}\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn site_backup_saves_every_vm_logs_prunes_and_fails_when_one_fails() {
    let t = tempdir();
    let vms = t.path().join("vms");
    make_vms(&vms, true);
    let db1 = keep(&vms.join("db"), &t.path().join("db1"));
    let repo = Repo::init(&t.path().join("repo"), &[]);
    let log = t.path().join("backup.log");

    // Night 1: broken fails, the others are still saved; exit 1.
    let o = site_backup(
        &[
            "-r",
            s(&repo.root),
            "-l",
            s(&log),
            "--keep-last",
            "10",
            s(&vms),
        ],
        &[],
    );
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert_timestamped(&text);
    for want in [
        "FAILED broken",
        "saving db, plain",
        "saved db",
        "saving web, at its snapshot (running)",
        "saved web",
        "done: 2 saved, 1 failed (broken)",
    ] {
        assert!(text.contains(want), "{want:?} in the log:\n{text}");
    }
    // vrepo's own message about the broken VM is in the log too, and in broken's own log.
    assert!(text.contains("broken: vrepo: "), "{text}");
    let logs = assert_vm_logs(&repo.root.join("site-logs"), &["broken", "db", "web"]);
    assert!(logs["broken"].contains("broken: vrepo: "), "{logs:?}");
    assert!(logs["broken"].contains("FAILED broken (vrepo exit 4)"));
    assert!(logs["db"].contains("saved db"));
    let es = entries(&repo);
    assert_eq!(es.len(), 2, "{es:?}");
    let by = |vm: &str| {
        es.iter()
            .find(|e| vm_of(e) == vm)
            .unwrap_or_else(|| panic!("{vm} saved"))
            .clone()
    };
    let (db, web) = (by("db"), by("web"));
    assert_eq!(source_of(&db), "db");
    assert_eq!(source_of(&web), "web");
    assert!(db["at_snapshot"].is_null());
    assert_eq!(web["at_snapshot"], "before");
    let db_name = db["name"].as_str().unwrap();
    assert_builds(&repo, db_name, &db1, &t.path().join("b"));
    assert_builds(&repo, "db:latest", &db1, &t.path().join("b"));
    let b = t.path().join("bw");
    repo.build("web:latest", &b, &[]);
    assert!(same_bytes(&vms.join("web/disk.vmdk"), &b.join("disk.vmdk")));
    assert!(
        !b.join("disk-000001.vmdk").exists(),
        "the running delta is not saved"
    );

    // Night 2: broken is gone, db changed; the policy from the environment keeps the newest
    // entry of each VM: each VM's night-1 entry goes, the night-2 ones stay.
    fs::remove_dir_all(vms.join("broken")).unwrap();
    guest_write(&vms.join("db/disk.vmdk"), 5 * MIB, MIB, 43);
    let db2 = keep(&vms.join("db"), &t.path().join("db2"));
    let o = site_backup(
        &["-r", s(&repo.root), "-l", s(&log), s(&vms)],
        &[
            ("KEEP_LAST", "1"),
            ("KEEP_DAILY", "0"),
            ("KEEP_WEEKLY", "0"),
            ("KEEP_MONTHLY", "0"),
        ],
    );
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert_timestamped(&text);
    assert!(
        text.contains("prune of each VM saved: keep last 1, daily 0"),
        "{text}"
    );
    for gone in [db_name, web["name"].as_str().unwrap()] {
        assert!(
            text.contains(&format!("remove {gone}")),
            "prune's report is logged: {text}"
        );
    }
    assert!(
        text.ends_with("site backup done: 2 saved, 0 failed\n"),
        "{text}"
    );
    let m = by_vm(&repo);
    assert_eq!(m.keys().collect::<Vec<_>>(), ["db", "web"], "{m:?}");
    for (vm, es) in &m {
        assert_eq!(es.len(), 1, "{vm}: {:?}", names_of(es));
        assert!(!names_of(es).contains(&db_name.to_owned()));
    }
    assert_builds(&repo, "db:latest", &db2, &t.path().join("b"));
    // Each VM's log got night 2 appended, and what prune kept of it.
    let logs = assert_vm_logs(&repo.root.join("site-logs"), &["broken", "db", "web"]);
    assert_eq!(logs["db"].matches("saved db").count(), 2, "{}", logs["db"]);
    assert!(
        logs["db"].contains("prune: keep 1 entries of vm db: "),
        "{}",
        logs["db"]
    );

    // Usage errors: exit 2.
    assert_eq!(site_backup(&[], &[]).status.code(), Some(2));
    assert_eq!(
        site_backup(&["-r", s(&repo.root), s(&t.path().join("none"))], &[])
            .status
            .code(),
        Some(2)
    );
    for bad in [["--keep-last", "x"], ["-j", "0"], ["--jobs", "two"]] {
        let mut a = bad.to_vec();
        a.extend(["-r", s(&repo.root), s(&vms)]);
        assert_eq!(site_backup(&a, &[]).status.code(), Some(2), "{bad:?}");
    }
    // A repository that does not exist: every VM fails, exit 1, both named.
    let o = site_backup(
        &[
            "-r",
            s(&t.path().join("norepo")),
            "-l",
            s(&t.path().join("l2")),
            "--log-dir",
            s(&t.path().join("l2-vms")),
            s(&vms),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("0 saved, 2 failed (db web)"), "{err}");
    // An empty folder (an unmounted datastore looks like one) is no success either.
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let o = site_backup(&["-r", s(&repo.root), s(&empty)], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text_of(&o));
    assert!(text_of(&o).contains("no VM folder"), "{}", text_of(&o));
}

/// The regression of issue 16: with repository-wide retention, one run over three VMs kept
/// only the newest entry and removed the only backups of the two others on the first night.
#[test]
fn site_backup_default_retention_keeps_every_vm() {
    let t = tempdir();
    let vms = t.path().join("vms");
    make_site(&vms, &["web", "db", "prod/app"]);
    let repo = Repo::init(&t.path().join("repo"), &[]);

    for night in 1..=2 {
        evolve_all(&vms, &["web", "db", "prod/app"], night);
        let o = site_backup(&["-r", s(&repo.root), s(&vms)], &[]);
        let text = text_of(&o);
        assert_eq!(o.status.code(), Some(0), "night {night}: {text}");
        assert!(
            text.contains("prune of each VM saved: keep last 0, daily 7, weekly 4, monthly 6"),
            "{text}"
        );
        let m = by_vm(&repo);
        // prod/app is VM prod_app: the path under VMS_DIR, / made _.
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["db", "prod_app", "web"],
            "night {night}: {m:?}"
        );
        for (vm, es) in &m {
            // Each VM keeps its newest entry of each day (both nights fall on one day unless
            // the test runs over midnight, UTC).
            let days: BTreeSet<&str> = es
                .iter()
                .map(|e| &e["time"].as_str().unwrap()[..10])
                .collect();
            assert_eq!(
                es.len(),
                days.len(),
                "night {night}: {vm}: {:?}",
                names_of(es)
            );
            assert!(night == 2 || es.len() == 1);
        }
        let vms_out: Vec<Value> = repo
            .stdout(&["--json", "vms"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(vms_out.len(), 3, "{vms_out:?}");
        for v in &vms_out {
            assert_eq!(v["entries"], m[v["vm"].as_str().unwrap()].len(), "{v}");
            assert_eq!(
                v["newest"],
                m[v["vm"].as_str().unwrap()].last().unwrap()["name"]
            );
        }
    }
    // Each VM builds back to its folder as it is now.
    for (rel, vm) in [("web", "web"), ("db", "db"), ("prod/app", "prod_app")] {
        assert_builds(
            &repo,
            &format!("{vm}:latest"),
            &vms.join(rel),
            &t.path().join("b"),
        );
    }
    assert_vm_logs(&repo.root.join("site-logs"), &["db", "prod_app", "web"]);
}

/// Change each VM's disk a little (a new night).
fn evolve_all(vms: &Path, rels: &[&str], night: u64) {
    for (i, rel) in rels.iter().enumerate() {
        guest_write(
            &vms.join(rel).join("disk.vmdk"),
            2 * MIB,
            64 * 1024,
            night * 100 + i as u64,
        );
    }
}

/// Several nights: `--keep-last N` keeps each VM's newest N entries; the default daily policy,
/// with the entries of earlier nights dated on earlier days, keeps each VM's newest entry of its
/// newest D days.
#[test]
fn site_backup_prunes_each_vm_to_its_own_newest_entries() {
    let t = tempdir();
    let vms = t.path().join("vms");
    let rels = ["alpha", "bravo", "charlie"];
    make_site(&vms, &rels);
    let repo = Repo::init(&t.path().join("repo"), &[]);

    // Four nights, keep the last 2 of each VM.
    let mut saved: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for night in 1..=4 {
        evolve_all(&vms, &rels, night);
        let before: Vec<String> = names_of(&entries(&repo));
        let o = site_backup(
            &["-r", s(&repo.root), "-j", "3", "--keep-last", "2", s(&vms)],
            &[
                ("KEEP_DAILY", "0"),
                ("KEEP_WEEKLY", "0"),
                ("KEEP_MONTHLY", "0"),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "night {night}: {}", text_of(&o));
        for e in entries(&repo) {
            let n = e["name"].as_str().unwrap().to_owned();
            if !before.contains(&n) {
                saved.entry(vm_of(&e).to_owned()).or_default().push(n);
            }
        }
        let m = by_vm(&repo);
        assert_eq!(m.len(), 3, "{m:?}");
        for (vm, es) in &m {
            let want: Vec<String> = saved[vm].iter().rev().take(2).rev().cloned().collect();
            assert_eq!(names_of(es), want, "night {night}: {vm} keeps its newest 2");
        }
    }
    for (vm, names) in &saved {
        assert_eq!(names.len(), 4, "{vm}: one entry a night");
    }

    // The default policy over five more nights, earlier nights dated 2026-01-0N: each VM keeps
    // the newest entry of each of its newest 3 days that have entries.
    let repo2 = Repo::init(&t.path().join("repo2"), &[]);
    let mut night_of: BTreeMap<String, u32> = BTreeMap::new();
    for night in 1..=5u32 {
        evolve_all(&vms, &rels, 10 + night as u64);
        let o = site_backup(
            &["-r", s(&repo2.root), s(&vms)],
            &[
                ("KEEP_DAILY", "3"),
                ("KEEP_WEEKLY", "0"),
                ("KEEP_MONTHLY", "0"),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "night {night}: {}", text_of(&o));
        let m = by_vm(&repo2);
        assert_eq!(m.len(), 3, "{m:?}");
        for (vm, es) in &m {
            let nights: Vec<u32> = es
                .iter()
                .map(|e| *night_of.get(e["name"].as_str().unwrap()).unwrap_or(&night))
                .collect();
            let want: Vec<u32> = (night.saturating_sub(2).max(1)..=night).collect();
            assert_eq!(nights, want, "night {night}: {vm}: {:?}", names_of(es));
        }
        // Date tonight's entries on day N of January (they stay older than tomorrow's).
        for e in entries(&repo2) {
            let n = e["name"].as_str().unwrap().to_owned();
            if let std::collections::btree_map::Entry::Vacant(v) = night_of.entry(n) {
                set_time(
                    &repo2,
                    v.key(),
                    &format!("2026-01-0{night}T01:30:00.000000Z"),
                );
                v.insert(night);
            }
        }
    }
}

/// Four VMs, one broken, two saves at a time: the exit status and the last line name the
/// broken VM, the three others are saved, each VM has a log of its own lines only, and never
/// more than two saves ran at once (but two did).
#[test]
fn site_backup_runs_jobs_in_parallel_and_names_every_failure() {
    let t = tempdir();
    let vms = t.path().join("vms");
    make_site(&vms, &["alpha", "bravo", "charlie"]);
    make_broken_vm(&vms.join("delta"));
    let repo = Repo::init(&t.path().join("repo"), &[]);
    let (counting, counts) = counting_vrepo(t.path());
    let log = t.path().join("main.log");

    let o = site_backup_with(
        &counting,
        &["-r", s(&repo.root), "-j", "2", "-l", s(&log), s(&vms)],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.ends_with("site backup done: 3 saved, 1 failed (delta)"),
        "{err}"
    );
    let m = by_vm(&repo);
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        ["alpha", "bravo", "charlie"],
        "{m:?}"
    );
    for (vm, es) in &m {
        assert_eq!(es.len(), 1, "{vm}");
        assert_eq!(source_of(&es[0]), *vm);
        assert_builds(
            &repo,
            &format!("{vm}:latest"),
            &vms.join(vm),
            &t.path().join("b"),
        );
    }
    let logs = assert_vm_logs(
        &repo.root.join("site-logs"),
        &["alpha", "bravo", "charlie", "delta"],
    );
    for vm in ["alpha", "bravo", "charlie"] {
        assert!(logs[vm].contains(&format!("saved {vm}")), "{}", logs[vm]);
        assert!(
            logs[vm].contains(&format!("  {vm}: E")),
            "vrepo's line: {}",
            logs[vm]
        );
    }
    assert!(
        logs["delta"].contains("FAILED delta (vrepo exit 4)"),
        "{}",
        logs["delta"]
    );
    assert!(
        logs["delta"].contains("delta: vrepo: "),
        "{}",
        logs["delta"]
    );
    // The main log has every VM's lines.
    let main = fs::read_to_string(&log).unwrap();
    assert_timestamped(&main);
    for l in logs.values().flat_map(|t| t.lines()) {
        if !l[21..].starts_with("prune: ") {
            assert!(main.contains(&l[21..]), "{l:?} in the main log:\n{main}");
        }
    }
    let (most, started) = concurrency(&counts);
    assert_eq!(started, 4, "one save a VM");
    assert_eq!(most, 2, "two saves at once, never more");

    // Three failures at once are all named (no status lost), from SITE_JOBS=3, with the VM
    // logs where SITE_LOG_DIR says.
    for vm in ["alpha", "charlie"] {
        fs::remove_file(vms.join(vm).join("disk.vmdk")).unwrap();
    }
    fs::remove_file(&counts).unwrap();
    let logs2 = t.path().join("logs2");
    let o = site_backup_with(
        &counting,
        &["-r", s(&repo.root), s(&vms)],
        &[
            ("SITE_JOBS", "3"),
            ("SITE_LOG_DIR", s(&logs2)),
            ("KEEP_LAST", "1"),
            ("KEEP_DAILY", "0"),
            ("KEEP_WEEKLY", "0"),
            ("KEEP_MONTHLY", "0"),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .ends_with("site backup done: 1 saved, 3 failed (alpha charlie delta)"),
        "{err}"
    );
    assert_vm_logs(&logs2, &["alpha", "bravo", "charlie", "delta"]);
    let (most, started) = concurrency(&counts);
    assert_eq!((most, started), (3, 4));
    // The failed VMs keep what they had; bravo keeps its newest.
    let m = by_vm(&repo);
    for (vm, es) in &m {
        assert_eq!(es.len(), 1, "{vm}: {:?}", names_of(es));
    }
}

/// VM names from nested folders (a / becomes _), and two folders getting one name both fail.
#[test]
fn site_backup_names_nested_folders_and_refuses_two_folders_of_one_name() {
    let t = tempdir();
    let vms = t.path().join("vms");
    make_site(&vms, &["prod/app", "prod_app", "test/app", "-x"]);
    let repo = Repo::init(&t.path().join("repo"), &[]);
    let o = site_backup(&["-r", s(&repo.root), s(&vms)], &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("site backup done: 2 saved, 2 failed (prod_app prod_app)"),
        "{err}"
    );
    assert!(
        err.contains("more than one folder gets this VM name"),
        "{err}"
    );
    let m = by_vm(&repo);
    assert_eq!(m.keys().collect::<Vec<_>>(), ["-x", "test_app"], "{m:?}");
    assert_eq!(source_of(&m["test_app"][0]), "app");
}

fn make(args: &[&str]) -> Output {
    make_with(vrepo_bin(), args)
}

fn make_with(vrepo: &Path, args: &[&str]) -> Output {
    Command::new("make")
        .arg("--no-print-directory")
        .arg("-f")
        .arg(scripts().join("vm.mk"))
        .arg(format!("VREPO={}", vrepo.display()))
        .args(args)
        .env_remove("VREPO_REPOSITORY")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .unwrap()
}

fn make_ok(args: &[&str]) -> String {
    let o = make(args);
    assert!(
        o.status.success(),
        "make {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn vm_makefile_backs_up_and_restores_by_name() {
    let t = tempdir();
    let vms = t.path().join("vms");
    make_vms(&vms, false);
    let db1 = keep(&vms.join("db"), &t.path().join("db1"));
    let repo = Repo::init(&t.path().join("repo"), &[]);
    let r = format!("REPO={}", repo.root.display());
    let v = format!("VMS={}", vms.display());

    make_ok(&["backup", "VM=db", &v, &r]);
    let out = make_ok(&["backup", "VM=web", &v, &r]);
    assert!(out.contains("running"), "{out}");
    let es = entries(&repo);
    assert_eq!(es.len(), 2);
    assert_eq!(source_of(&es[0]), "db");
    assert_eq!(vm_of(&es[0]), "db");
    assert_eq!(vm_of(&es[1]), "web");
    assert!(es[0]["at_snapshot"].is_null());
    assert_eq!(es[1]["at_snapshot"], "before");
    assert_eq!(es[0]["message"], "make backup db");

    // Again, incremental; then --full by MODE.
    guest_write(&vms.join("db/disk.vmdk"), 2 * MIB, MIB, 44);
    let db3 = keep(&vms.join("db"), &t.path().join("db3"));
    make_ok(&["backup", "VM=db", &v, &r]);
    make_ok(&["backup", "VM=db", &v, &r, "MODE=--full"]);
    let es = entries(&repo);
    assert_eq!(es[2]["mode"], "incremental");
    assert_eq!(es[2]["parent"], "E1");
    assert_eq!(es[3]["mode"], "full");
    assert_eq!(vm_of(&es[3]), "db");

    // Restore by entry into DEST, and to the default place.
    let dest = t.path().join("restored");
    make_ok(&[
        "restore",
        "VM=db",
        "ENTRY=E1",
        &format!("DEST={}", dest.display()),
        &r,
    ]);
    assert_same_files(&db1, &dest, "restore E1");
    make_ok(&["restore", "VM=db", "ENTRY=E3", &v, &r]);
    assert_same_files(&db3, &vms.join("db-restored-E3"), "restore E3");
    // With VM and no ENTRY: the VM's newest entry (db:latest, E4), not the repository's.
    make_ok(&["backup", "VM=web", &v, &r]);
    make_ok(&["restore", "VM=db", &v, &r]);
    assert_same_files(&db3, &vms.join("db-restored-latest"), "restore db:latest");
    make_ok(&["restore", "VM=db", "ENTRY=db:latest~2", &v, &r]);
    assert_same_files(
        &db1,
        &vms.join("db-restored-latest~2"),
        "restore db:latest~2",
    );
    // Into a non-empty folder only with FORCE=1.
    let o = make(&[
        "restore",
        "ENTRY=E3",
        &format!("DEST={}", dest.display()),
        &r,
    ]);
    assert!(!o.status.success());
    assert_same_files(&db1, &dest, "a refused restore changed nothing");
    make_ok(&[
        "restore",
        "ENTRY=E3",
        &format!("DEST={}", dest.display()),
        &r,
        "FORCE=1",
    ]);
    assert_same_files(&db3, &dest, "restore --force");

    let count = |text: &str| text.lines().filter(|l| l.starts_with('E')).count();
    let list = make_ok(&["list", &r]);
    assert_eq!(count(&list), 5, "{list}");
    let list = make_ok(&["list", "VM=db", &r]);
    assert_eq!(count(&list), 3, "{list}");
    let out = make_ok(&["vms", &r]);
    assert!(out.contains("db") && out.contains("web"), "{out}");
    make_ok(&["verify", &r]);
    make_ok(&["verify", "VM=web", &r]);
    make_ok(&["tree", &r]);

    // Mistakes fail: no VM, no such VM, no repository, no such entry.
    assert!(!make(&["backup", &v, &r]).status.success());
    assert!(!make(&["backup", "VM=nope", &v, &r]).status.success());
    assert!(!make(&["backup", "VM=db", &v]).status.success());
    let o = make(&[
        "restore",
        "ENTRY=E9",
        &format!("DEST={}", t.path().join("x").display()),
        &r,
    ]);
    assert!(!o.status.success());
    assert!(!t.path().join("x").exists() || files_of(&t.path().join("x")).is_empty());
}

/// `make -j2 -k site`: every VM of a folder by a target of its own, two at a time; one broken
/// VM fails the run (named) while the others are saved, logged and pruned.
#[test]
fn vm_makefile_site_saves_every_vm_in_parallel_then_prunes() {
    let t = tempdir();
    let vms = t.path().join("vms");
    make_site(&vms, &["alpha", "bravo", "prod/charlie"]);
    make_broken_vm(&vms.join("delta"));
    let repo = Repo::init(&t.path().join("repo"), &[]);
    let (counting, counts) = counting_vrepo(t.path());
    let r = format!("REPO={}", repo.root.display());
    let v = format!("VMS={}", vms.display());
    let saved = ["alpha", "bravo", "prod_charlie"];

    let mut nights: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for night in 1..=2 {
        evolve_all(&vms, &["alpha", "bravo", "prod/charlie"], 20 + night);
        fs::remove_file(&counts).ok();
        let o = make_with(
            &counting,
            &[
                "-j2",
                "-k",
                "site",
                &v,
                &r,
                "KEEP_LAST=1",
                "KEEP_DAILY=0",
                "KEEP_WEEKLY=0",
                "KEEP_MONTHLY=0",
            ],
        );
        let text = text_of(&o);
        assert!(!o.status.success(), "night {night}: {text}");
        assert!(
            text.contains("site backup done: 3 saved, 1 failed (delta)"),
            "{text}"
        );
        assert!(text.contains("FAILED delta (vrepo exit 4)"), "{text}");
        assert!(
            text.contains("prune of each VM saved: keep last 1"),
            "{text}"
        );
        let m = by_vm(&repo);
        assert_eq!(m.keys().collect::<Vec<_>>(), saved, "night {night}: {m:?}");
        for (vm, es) in &m {
            // The prune ran although delta failed: each VM keeps its newest entry only.
            assert_eq!(es.len(), 1, "night {night}: {vm}: {:?}", names_of(es));
            let n = es[0]["name"].as_str().unwrap().to_owned();
            assert!(
                !nights.get(vm).is_some_and(|v| v.contains(&n)),
                "a new entry"
            );
            nights.entry(vm.clone()).or_default().push(n);
        }
        let logs = assert_vm_logs(
            &repo.root.join("site-logs"),
            &["alpha", "bravo", "delta", "prod_charlie"],
        );
        for vm in saved {
            assert_eq!(
                logs[vm].matches(&format!("saved {vm}")).count(),
                night as usize
            );
        }
        let (most, started) = concurrency(&counts);
        assert_eq!((most, started), (2, 4), "night {night}: two saves at once");
    }
    for (rel, vm) in [("alpha", "alpha"), ("prod/charlie", "prod_charlie")] {
        assert_builds(
            &repo,
            &format!("{vm}:latest"),
            &vms.join(rel),
            &t.path().join("b"),
        );
    }

    // Without failures: exit 0; KEEP_*=0: no prune.
    fs::remove_dir_all(vms.join("delta")).unwrap();
    let o = make(&[
        "-j3",
        "site",
        &v,
        &r,
        "KEEP_DAILY=0",
        "KEEP_WEEKLY=0",
        "KEEP_MONTHLY=0",
    ]);
    let text = text_of(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("site backup done: 3 saved, 0 failed"),
        "{text}"
    );
    assert!(
        text.contains("prune skipped: no retention policy"),
        "{text}"
    );
    for (vm, es) in by_vm(&repo) {
        assert_eq!(es.len(), 2, "{vm}");
    }

    // No VM folder at all (an unmounted datastore looks like that): a failure.
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let o = make(&["site", &format!("VMS={}", empty.display()), &r]);
    assert!(!o.status.success());
    assert!(text_of(&o).contains("no VM folder"), "{}", text_of(&o));
}

#[test]
fn scripts_are_shellcheck_clean_and_documented() {
    let o = Command::new("shellcheck")
        .arg(scripts().join("site-backup.sh"))
        .output()
        .expect("shellcheck");
    assert!(
        o.status.success(),
        "shellcheck site-backup.sh:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The Makefile's recipes, as make hands them to the shell.
    let t = tempdir();
    let vms = t.path().join("vms");
    fs::create_dir_all(vms.join("db")).unwrap();
    fs::write(vms.join("db/vm.vmx"), "").unwrap();
    let v = format!("VMS={}", vms.display());
    for target in [
        "backup",
        "restore",
        "list",
        "tree",
        "vms",
        "verify",
        "site-save/db",
        "site-prune",
    ] {
        for extra in [&[][..], &["SITE_STAMPS=/tmp/stamps", "MAX_CHAIN=4"][..]] {
            let mut a = vec![
                "-n",
                target,
                "VM=db",
                &v,
                "REPO=/srv/repo",
                "ENTRY=E3",
                "MODE=--full",
            ];
            a.extend_from_slice(extra);
            let o = make(&a);
            assert!(o.status.success(), "make -n {target}: {}", text_of(&o));
            shellcheck(
                &format!("vm.mk {target}"),
                &String::from_utf8_lossy(&o.stdout),
                &[],
            );
        }
    }
    // `site` itself, its sub-makes left out (MAKE=:); under -n its recipe stops after them.
    let o = make(&["-n", "site", &v, "REPO=/srv/repo", "MAKE=:"]);
    assert!(o.status.success(), "make -n site: {}", text_of(&o));
    shellcheck(
        "vm.mk site",
        &String::from_utf8_lossy(&o.stdout),
        &["SC2317"],
    );

    // Usage in the header of each, and --help prints it, options included.
    for f in ["site-backup.sh", "vm.mk"] {
        let text = fs::read_to_string(scripts().join(f)).unwrap();
        assert!(text.contains("Usage"), "{f}");
    }
    let text = fs::read_to_string(scripts().join("vm.mk")).unwrap();
    assert!(
        text.contains("-k site VMS=dir REPO=dir"),
        "vm.mk documents site"
    );
    let o = site_backup(&["--help"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let help = String::from_utf8_lossy(&o.stderr);
    for want in [
        "Usage: site-backup.sh",
        "-j, --jobs N",
        "SITE_JOBS, default 2",
        "--log-dir DIR",
        "SITE_LOG_DIR",
        "--vm NAME",
        "--keep-daily D",
    ] {
        assert!(help.contains(want), "{want:?} in --help:\n{help}");
    }
}
