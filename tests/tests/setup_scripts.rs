//! The Quick start's set-up (issue 19, item 8): `scripts/demo.sh`, `scripts/test.sh` and
//! `.ci/run` take what they need from the system through one helper, `scripts/need.sh`, whose
//! package list is the only one. Run with a PATH holding only fake commands, the helper names
//! the missing packages (`--check`), says the one command to run when it may not install
//! (`NEED_NO_INSTALL=1`, or no apt-get), and, as root with an apt-get, runs `apt-get update`
//! once and installs only what is missing. The scripts are shellcheck-clean, following the
//! helper they source. Garage, the S3 store of the S3 tests, comes from `scripts/need-garage.sh`
//! (a cargo build into a cache): tested with fake `cargo` and `garage` commands, nothing built.

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
    "curl",
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
        "e2fsprogs\nlibvmdk-utils\nshellcheck\nmake\nutil-linux\nbsdutils\nman-db\nfuse3\ncurl\n"
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
            "sudo apt-get install e2fsprogs libvmdk-utils shellcheck make util-linux bsdutils man-db fuse3 curl\n"
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
    // Garage (need-garage.sh) too, and the tests are told where it is.
    let o = Command::new("shellcheck")
        .arg("scripts/need-garage.sh")
        .current_dir(&r)
        .output()
        .expect("shellcheck");
    assert!(o.status.success(), "shellcheck:\n{}", stdout(&o));
    for text in [&ci, &test] {
        assert!(
            text.contains(". scripts/need-garage.sh\nneed_garage\n"),
            "{text}"
        );
    }
    assert!(test.contains("\nexport VML_GARAGE\n"), "{test}");
    // Every command the package list names is one the tests reckon with.
    let need = fs::read_to_string(need_sh()).unwrap();
    for c in ALL {
        assert!(need.contains(&format!(" {c}")), "{c} is not in need.sh");
    }
}

// ---- scripts/need-garage.sh: Garage 2.5.0, built once into a cache (issue 17) ----

/// A fake `garage` whose `--version` says `version` (the crates.io build's form).
fn fake_garage(at: &Path, version: &str) {
    fs::create_dir_all(at.parent().unwrap()).unwrap();
    fs::write(
        at,
        format!("#!/bin/sh\necho 'garage {version} [features: k2v, lmdb, sqlite]'\n"),
    )
    .unwrap();
    fs::set_permissions(at, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `bash scripts/need-garage.sh ARGS` with `fakes` first on the real PATH, HOME a folder of its
/// own (no real cache is looked at, nothing is built), and `env` set.
fn need_garage(fakes: &Path, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let path = format!(
        "{}:{}",
        fakes.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new(which("bash"));
    c.arg("scripts/need-garage.sh")
        .args(args)
        .current_dir(root())
        .env("PATH", path)
        .env("HOME", home)
        .env_remove("VML_CACHE")
        .env_remove("VML_GARAGE")
        .env_remove("NEED_NO_INSTALL");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("bash")
}

#[test]
fn need_garage_path_and_check_build_nothing() {
    let home = tempfile::tempdir().unwrap();
    let fakes = tempfile::tempdir().unwrap();
    // A cargo that must not run: it would leave a mark.
    let mark = fakes.path().join("cargo-ran");
    fake(
        fakes.path(),
        "cargo",
        &format!("echo \"$@\" >>'{}'\n", mark.display()),
    );
    let h = home.path().display().to_string();
    let o = need_garage(fakes.path(), home.path(), &["--path"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("{h}/.cache/vml/garage-2.5.0/bin/garage\n")
    );
    assert_eq!(stderr(&o), "");
    let cache = home.path().join("cache");
    let c = cache.display().to_string();
    let vml_cache = [("VML_CACHE", c.as_str())];
    let o = need_garage(fakes.path(), home.path(), &["--path"], &vml_cache);
    assert_eq!(stdout(&o), format!("{c}/garage-2.5.0/bin/garage\n"));
    let o = need_garage(
        fakes.path(),
        home.path(),
        &["--path"],
        &[("VML_GARAGE", "/opt/g/garage")],
    );
    assert_eq!(stdout(&o), "/opt/g/garage\n");

    // --check: missing, another version, then 2.5.0 (either way of saying it).
    let bin = cache.join("garage-2.5.0/bin/garage");
    let o = need_garage(fakes.path(), home.path(), &["--check"], &vml_cache);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    for (version, ok) in [
        ("cargo:2.5.1", false),
        ("cargo:12.5.0", false),
        ("v2.5.0-rc1", false),
        ("cargo:2.5.0", true),
        ("v2.5.0", true),
    ] {
        fake_garage(&bin, version);
        let o = need_garage(fakes.path(), home.path(), &["--check"], &vml_cache);
        assert_eq!(o.status.success(), ok, "{version}: {}", stderr(&o));
        assert_eq!(stdout(&o), "");
    }
    // Present: need_garage is silent and builds nothing.
    let o = need_garage(fakes.path(), home.path(), &[], &vml_cache);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!((stdout(&o).as_str(), stderr(&o).as_str()), ("", ""));
    assert!(!mark.exists(), "cargo ran");
    // Without leave to build, a missing Garage is one line naming the command to run.
    fs::remove_file(&bin).unwrap();
    let o = need_garage(
        fakes.path(),
        home.path(),
        &[],
        &[("VML_CACHE", c.as_str()), ("NEED_NO_INSTALL", "1")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        format!("need-garage.sh: Garage 2.5.0 is missing ({c}/garage-2.5.0/bin/garage); build it with: scripts/need-garage.sh (10-20 minutes)\n")
    );
    // VML_GARAGE names a binary to use, never one to build.
    let o = need_garage(
        fakes.path(),
        home.path(),
        &[],
        &[("VML_GARAGE", "/nonexistent/garage")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("VML_GARAGE=/nonexistent/garage is not Garage 2.5.0"),
        "{}",
        stderr(&o)
    );
    assert!(!mark.exists(), "cargo ran");
    let o = need_garage(fakes.path(), home.path(), &["--build"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("usage"), "{}", stderr(&o));
}

#[test]
fn need_garage_builds_it_once_with_cargo_install_and_names_a_failure() {
    let home = tempfile::tempdir().unwrap();
    let fakes = tempfile::tempdir().unwrap();
    let cache = home.path().join("cache");
    let c = cache.display().to_string();
    let log = fakes.path().join("cargo.log");
    // A cargo that logs its arguments and the target folder it was given, then installs a fake
    // Garage 2.5.0 into --root.
    fake(
        fakes.path(),
        "cargo",
        &format!(
            "echo \"$* target=${{CARGO_TARGET_DIR:-}}\" >>'{log}'\n\
             echo '   Compiling garage v2.5.0' >&2\n\
             root=; while [ $# -gt 0 ]; do [ \"$1\" = --root ] && root=$2; shift; done\n\
             mkdir -p \"$root/bin\"\n\
             printf '#!/bin/sh\\necho \"garage cargo:2.5.0 [features: lmdb]\"\\n' >\"$root/bin/garage\"\n\
             chmod 755 \"$root/bin/garage\"\n",
            log = log.display()
        ),
    );
    let env = [
        ("VML_CACHE", c.as_str()),
        ("CARGO_TARGET_DIR", "/work/somewhere/target"),
    ];
    let o = need_garage(fakes.path(), home.path(), &[], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o),
        format!("need-garage.sh: building Garage 2.5.0 (S3 store for the tests) into {c}/garage-2.5.0 with cargo install: 10-20 minutes, once\n")
    );
    // Its own target folder, not the caller's.
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!(
            "install garage --locked --force --version 2.5.0 --root {c}/garage-2.5.0 target=\n"
        )
    );
    // cargo's chatter is kept in the log, not shown.
    let kept = fs::read_to_string(cache.join("garage-2.5.0.log")).unwrap();
    assert!(kept.contains("Compiling garage"), "{kept}");
    // Built: the next run does nothing.
    let o = need_garage(fakes.path(), home.path(), &[], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 1);

    // A failing build: cargo's last lines, then one line naming the log; exit 2.
    fs::remove_dir_all(cache.join("garage-2.5.0")).unwrap();
    fake(
        fakes.path(),
        "cargo",
        "echo 'error: could not compile `garage_db`' >&2; exit 101\n",
    );
    let o = need_garage(fakes.path(), home.path(), &[], &env);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("error: could not compile `garage_db`\n"),
        "{err}"
    );
    assert!(
        err.ends_with(&format!("need-garage.sh: cargo install garage --version 2.5.0 failed (its whole output: {c}/garage-2.5.0.log)\n")),
        "{err}"
    );
    // A build that succeeds without leaving a working 2.5.0 binary is a failure too.
    fake(fakes.path(), "cargo", "exit 0\n");
    let o = need_garage(fakes.path(), home.path(), &[], &env);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("failed"), "{}", stderr(&o));
}
