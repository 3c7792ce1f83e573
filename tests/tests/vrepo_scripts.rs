//! The example site scripts (issue 6): `scripts/site-backup.sh` (nightly save of every VM
//! folder under a directory, `--at-snapshot` for running VMs, then prune, with a timestamped
//! log and a non-zero exit when any VM failed) and `scripts/vm.mk` (back up and restore a VM
//! by name), run on generated VMs: one running (lock folder, a VMware snapshot in its .vmsd),
//! one shut down, and one with a broken disk chain. Both scripts are shellcheck-clean (for the
//! Makefile: the shell its recipes expand to, from `make -n`).

mod common;
mod vrepo_support;

use serde_json::Value;
use std::fs;
use std::io::Write;
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
        let b = make_vm(&vms.join("broken"), 8, 1, 42);
        qemu_child(&b, "disk.vmdk", "disk-000001.vmdk");
        write_vmx(&b, "disk-000001.vmdk", "broken");
        fs::remove_file(b.join("disk.vmdk")).unwrap();
    }
}

fn site_backup(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("bash");
    c.arg(scripts().join("site-backup.sh"))
        .arg("--vrepo")
        .arg(vrepo_bin())
        .args(args)
        .env_remove("VREPO_REPOSITORY");
    for k in [
        "KEEP_LAST",
        "KEEP_DAILY",
        "KEEP_WEEKLY",
        "KEEP_MONTHLY",
        "NO_PRUNE",
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

fn shellcheck(what: &str, text: &str) {
    let mut c = Command::new("shellcheck")
        .args(["-s", "sh", "-"])
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
    // vrepo's own message about the broken VM is in the log too.
    assert!(text.contains("vrepo: "), "{text}");
    let es = entries(&repo);
    assert_eq!(es.len(), 2, "{es:?}");
    let by = |vm: &str| {
        es.iter()
            .find(|e| source_of(e) == vm)
            .unwrap_or_else(|| panic!("{vm} saved"))
            .clone()
    };
    let (db, web) = (by("db"), by("web"));
    assert!(db["at_snapshot"].is_null());
    assert_eq!(web["at_snapshot"], "before");
    let db_name = db["name"].as_str().unwrap();
    assert_builds(&repo, db_name, &db1, &t.path().join("b"));
    let b = t.path().join("bw");
    repo.build(web["name"].as_str().unwrap(), &b, &[]);
    assert!(same_bytes(&vms.join("web/disk.vmdk"), &b.join("disk.vmdk")));
    assert!(
        !b.join("disk-000001.vmdk").exists(),
        "the running delta is not saved"
    );

    // Night 2: broken is gone, db changed; the policy from the environment keeps 3 of 4.
    fs::remove_dir_all(vms.join("broken")).unwrap();
    guest_write(&vms.join("db/disk.vmdk"), 5 * MIB, MIB, 43);
    let db2 = keep(&vms.join("db"), &t.path().join("db2"));
    let o = site_backup(
        &["-r", s(&repo.root), "-l", s(&log), s(&vms)],
        &[
            ("KEEP_LAST", "3"),
            ("KEEP_DAILY", "0"),
            ("KEEP_WEEKLY", "0"),
            ("KEEP_MONTHLY", "0"),
        ],
    );
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert_timestamped(&text);
    assert!(text.contains("prune: keep last 3, daily 0"), "{text}");
    assert!(
        text.contains("remove E1"),
        "prune's report is logged: {text}"
    );
    assert!(
        text.ends_with("site backup done: 2 saved, 0 failed\n"),
        "{text}"
    );
    let es = entries(&repo);
    let names: Vec<&str> = es.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["E2", "E3", "E4"]);
    let db_new = es.iter().find(|e| source_of(e) == "db").unwrap();
    assert_builds(
        &repo,
        db_new["name"].as_str().unwrap(),
        &db2,
        &t.path().join("b"),
    );

    // Usage errors: exit 2.
    assert_eq!(site_backup(&[], &[]).status.code(), Some(2));
    assert_eq!(
        site_backup(&["-r", s(&repo.root), s(&t.path().join("none"))], &[])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        site_backup(&["--keep-last", "x", "-r", s(&repo.root), s(&vms)], &[])
            .status
            .code(),
        Some(2)
    );
    // A repository that does not exist: every VM fails, exit 1.
    let o = site_backup(
        &[
            "-r",
            s(&t.path().join("norepo")),
            "-l",
            s(&t.path().join("l2")),
            s(&vms),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
}

fn make(args: &[&str]) -> Output {
    Command::new("make")
        .arg("--no-print-directory")
        .arg("-f")
        .arg(scripts().join("vm.mk"))
        .arg(format!("VREPO={}", vrepo_bin().display()))
        .args(args)
        .env_remove("VREPO_REPOSITORY")
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

    let list = make_ok(&["list", &r]);
    assert_eq!(
        list.lines().filter(|l| l.starts_with('E')).count(),
        4,
        "{list}"
    );
    make_ok(&["verify", &r]);
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
    for target in ["backup", "restore", "list", "tree", "verify"] {
        let o = make(&[
            "-n",
            target,
            "VM=db",
            "VMS=/srv/vms",
            "REPO=/srv/repo",
            "ENTRY=E3",
            "MODE=--full",
        ]);
        assert!(o.status.success(), "make -n {target}");
        shellcheck(
            &format!("vm.mk {target}"),
            &String::from_utf8_lossy(&o.stdout),
        );
    }
    // Usage in the header of each, and --help prints it.
    for f in ["site-backup.sh", "vm.mk"] {
        let text = fs::read_to_string(scripts().join(f)).unwrap();
        assert!(text.contains("Usage"), "{f}");
    }
    let o = site_backup(&["--help"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Usage: site-backup.sh"));
}
