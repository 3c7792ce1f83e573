//! The Quick start's set-up (issue 19, item 8): `scripts/demo.sh`, `scripts/test.sh` and
//! `.ci/run` take what they need from the system through one helper, `scripts/need.sh`, whose
//! package list is the only one. Run with a PATH holding only fake commands, the helper names
//! the missing packages (`--check`), says the one command to run when it may not install
//! (`NEED_NO_INSTALL=1`, or no apt-get), and, as root with an apt-get, runs `apt-get update`
//! once and installs only what is missing. The scripts are shellcheck-clean, following the
//! helper they source.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn need_sh() -> PathBuf {
    root().join("scripts/need.sh")
}

/// The commands of every package of need.sh's list.
const ALL: &[&str] = &[
    "qemu-img",
    "qemu-io",
    "mke2fs",
    "debugfs",
    "vmdkinfo",
    "shellcheck",
    "make",
    "flock",
    "prlimit",
    "script",
    "man",
    "fusermount3",
];

/// A folder for PATH holding fake `cmds` (each exits 0) and the real `dirname` (the scripts
/// find their folder with it before any check).
fn fake_path(cmds: &[&str]) -> TempDir {
    let t = tempfile::tempdir().unwrap();
    for c in cmds {
        fake(t.path(), c, "exit 0\n");
    }
    let dirname = which("dirname");
    std::os::unix::fs::symlink(dirname, t.path().join("dirname")).unwrap();
    t
}

fn fake(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `name` on the test's own PATH.
fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

/// bash running `args` with PATH set to `path` alone.
fn bash(path: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(which("bash"));
    c.args(args)
        .current_dir(root())
        .env("PATH", path)
        .env_remove("NEED_NO_INSTALL");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("bash")
}

/// bash sourcing need.sh and running `call` (say `need qemu-utils`).
fn sourced(path: &Path, call: &str, env: &[(&str, &str)]) -> Output {
    let script = format!(". '{}' && {call}", need_sh().display());
    bash(path, &["-c", &script], env)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn running_as_root() -> bool {
    let o = Command::new("id").arg("-u").output().expect("id -u");
    stdout(&o).trim() == "0"
}

#[test]
fn check_names_the_missing_packages_and_installs_nothing() {
    let bin = fake_path(&["qemu-img", "qemu-io", "mke2fs", "cargo"]);
    let need = need_sh().display().to_string();
    // One command of a package is not enough: debugfs is missing, so e2fsprogs is.
    let o = bash(
        bin.path(),
        &[&need, "--check", "qemu-utils", "e2fsprogs"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "e2fsprogs\n");
    // No package named: every package of the list.
    let o = bash(bin.path(), &[&need, "--check"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "e2fsprogs\nlibvmdk-utils\nshellcheck\nmake\nutil-linux\nbsdutils\nman-db\nfuse3\n"
    );
    let all = fake_path(ALL);
    let o = bash(all.path(), &[&need, "--check"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    // A name not in the list is a mistake of the caller's, not a missing package.
    let o = bash(all.path(), &[&need, "--check", "qemu"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown package qemu"),
        "{}",
        stderr(&o)
    );
    let o = bash(all.path(), &[&need], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("usage"), "{}", stderr(&o));
}

#[test]
fn without_leave_to_install_one_line_names_the_command_to_run() {
    let bin = fake_path(&["qemu-img", "qemu-io", "cargo"]);
    // An apt-get that must not run: it would leave a mark.
    let mark = bin.path().join("apt-get-ran");
    fake(
        bin.path(),
        "apt-get",
        &format!("echo \"$@\" >>'{}'\n", mark.display()),
    );
    let o = sourced(
        bin.path(),
        "need qemu-utils e2fsprogs libvmdk-utils",
        &[("NEED_NO_INSTALL", "1")],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("install them with: sudo apt-get install e2fsprogs libvmdk-utils\n"),
        "{err}"
    );
    assert!(!mark.exists(), "apt-get ran");
    // With nothing missing, need is silent.
    let o = sourced(bin.path(), "need qemu-utils", &[("NEED_NO_INSTALL", "1")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    // No apt-get: the Debian names, and the system's package manager.
    fs::remove_file(bin.path().join("apt-get")).unwrap();
    let o = sourced(bin.path(), "need e2fsprogs", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("missing packages (Debian names): e2fsprogs; install them with your system's package manager"),
        "{}",
        stderr(&o)
    );
    // cargo comes from rustup.
    fs::remove_file(bin.path().join("cargo")).unwrap();
    let o = sourced(bin.path(), "need qemu-utils", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cargo is missing: install Rust with https://rustup.rs"));
}

#[test]
fn demo_and_tests_stop_before_building_naming_what_to_install() {
    let bin = fake_path(&["qemu-img", "qemu-io", "cargo", "apt-get"]);
    let env = [("NEED_NO_INSTALL", "1")];
    let o = bash(bin.path(), &["scripts/demo.sh"], &env);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).ends_with("install them with: sudo apt-get install e2fsprogs fuse3\n"),
        "{}",
        stderr(&o)
    );
    let o = bash(bin.path(), &["scripts/test.sh"], &env);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).ends_with(
            "sudo apt-get install e2fsprogs libvmdk-utils shellcheck make util-linux bsdutils man-db fuse3\n"
        ),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "", "test.sh went on");
}

#[test]
fn as_root_apt_get_installs_only_what_is_missing() {
    // need.sh tells root by $EUID; elsewhere only the other tests apply.
    if !running_as_root() {
        eprintln!("not root: the install path is not exercised");
        return;
    }
    let bin = fake_path(&["qemu-img", "qemu-io", "cargo"]);
    let log = bin.path().join("apt-get.log");
    // A fake apt-get that logs its arguments and, on install, provides e2fsprogs' commands.
    let body = format!(
        "echo \"$@\" >>'{log}'\n\
         case \"$*\" in *install*e2fsprogs*) for c in mke2fs debugfs; do \
         printf '#!/bin/sh\\n' >'{dir}'/$c; /bin/chmod 755 '{dir}'/$c; done;; esac\n",
        log = log.display(),
        dir = bin.path().display()
    );
    fake(bin.path(), "apt-get", &body);
    let o = sourced(bin.path(), "need qemu-utils e2fsprogs", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).ends_with(": installing e2fsprogs (apt-get)\n"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "update -qq\ninstall -y -qq e2fsprogs\n"
    );
    // Installed: the next run does nothing.
    let o = sourced(bin.path(), "need qemu-utils e2fsprogs", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 2);
    // A failing apt-get: its output, shown only now, and the failure named.
    fake(
        bin.path(),
        "apt-get",
        "echo 'E: Unable to locate package' >&2; exit 100\n",
    );
    let o = sourced(bin.path(), "need libvmdk-utils", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o)
            .ends_with("E: Unable to locate package\nbash: apt-get install libvmdk-utils failed\n"),
        "{}",
        stderr(&o)
    );
    // An install that does not provide the commands is a failure, named.
    fake(bin.path(), "apt-get", "exit 0\n");
    let o = sourced(bin.path(), "need libvmdk-utils", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("still missing after apt-get install: libvmdk-utils"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn scripts_share_one_package_list_and_are_shellcheck_clean() {
    let r = root();
    let scripts = [
        "scripts/need.sh",
        "scripts/demo.sh",
        "scripts/test.sh",
        ".ci/run",
    ];
    // -x: follow the `. scripts/need.sh` of each, as its `source=` directive names it (from the
    // repository's root).
    let o = Command::new("shellcheck")
        .arg("-x")
        .args(scripts)
        .current_dir(&r)
        .output()
        .expect("shellcheck");
    assert!(o.status.success(), "shellcheck:\n{}", stdout(&o));
    for s in &scripts[1..] {
        let text = fs::read_to_string(r.join(s)).unwrap();
        assert!(text.contains("scripts/need.sh"), "{s} does not use need.sh");
        assert!(
            !text.contains("apt-get install"),
            "{s} has a package list of its own"
        );
    }
    let ci = fs::read_to_string(r.join(".ci/run")).unwrap();
    assert!(ci.contains("\nneed_all\n"), "{ci}");
    assert!(ci.trim_end().ends_with("exec ./scripts/test.sh"), "{ci}");
    let test = fs::read_to_string(r.join("scripts/test.sh")).unwrap();
    assert!(test.contains("\nneed_all\n"), "{test}");
    // Every command the package list names is one the tests reckon with.
    let need = fs::read_to_string(need_sh()).unwrap();
    for c in ALL {
        assert!(need.contains(&format!(" {c}")), "{c} is not in need.sh");
    }
}
