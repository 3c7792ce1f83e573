//! End-to-end tests of `vrepo` (issue 5), driving the real binary as users do, on sample VMs
//! made at test time with qemu-img and qemu-io (and esxgen for ESXi snapshot chains), judged by
//! outside oracles: `cmp`-equal files against copies of each saved state, `qemu-img check`,
//! `qemu-img compare`, `vmdk-parse check`.
//!
//! Every saved state is kept as a copy (`cp -a`), and at the end of the tests that damage or
//! extend a repository, every entry is built again and compared with its copy: nothing stored
//! is ever lost.

mod common;

use common::esxgen::{self, DeltaKind, Grain, Grains};
use common::{fresh_bin, qemu_img, qemu_io, qemu_raw, run};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

const MIB: u64 = 1 << 20;

fn vrepo_bin() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| fresh_bin("vrepo", "vrepo"))
}

fn vmdk_parse_bin() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| fresh_bin("vmdk-parse", "vmdk-parse"))
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

    fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8(self.ok(args).stdout).expect("UTF-8 output")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let text = self.stdout(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// `save --json WORKAREA EXTRA...`: the new entry.
    fn save(&self, wa: &Path, extra: &[&str]) -> Value {
        let mut a = vec!["save", s(wa)];
        a.extend_from_slice(extra);
        self.json(&a)
    }

    fn save_name(&self, wa: &Path, extra: &[&str]) -> String {
        self.save(wa, extra)["name"].as_str().unwrap().to_owned()
    }

    fn build(&self, entry: &str, dest: &Path, extra: &[&str]) -> Value {
        let mut a = vec!["build", entry, s(dest)];
        a.extend_from_slice(extra);
        self.json(&a)
    }

    fn show(&self, entry: &str) -> Value {
        self.json(&["show", entry])
    }

    fn parent(&self, entry: &str) -> Option<String> {
        self.show(entry)["parent"].as_str().map(str::to_owned)
    }

    /// Run `args`, which must fail with `code`: one line on stderr, `vrepo: ...`, and nothing
    /// on stdout. Returns the line.
    fn fails(&self, args: &[&str], code: i32) -> String {
        expect_failure(self.cmd().args(args), code)
    }

    fn names(&self) -> Vec<String> {
        self.stdout(&["--json", "list"])
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["name"].as_str().unwrap().to_owned()
            })
            .collect()
    }
}

fn expect_failure(cmd: &mut Command, code: i32) -> String {
    let o = cmd.output().expect("run");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(code),
        "{cmd:?}: expected exit {code}; stderr: {err}"
    );
    assert!(
        o.stdout.is_empty(),
        "{cmd:?}: a failed command prints nothing on stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(err.lines().count(), 1, "{cmd:?}: one line on stderr: {err}");
    assert!(err.starts_with("vrepo: "), "{cmd:?}: {err}");
    err.trim_end().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Sample VMs.

/// Deterministic incompressible bytes.
fn rand_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write_vmx(dir: &Path, disk: &str) {
    let text = format!(
        ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\n\
         displayName = \"vrepo test\"\nguestOS = \"otherlinux-64\"\n\
         uuid.bios = \"56 4d 0a 1b 2c 3d 4e 5f-60 71 82 93 a4 b5 c6 d7\"\n\
         nvram = \"vm.nvram\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n\
         scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"{disk}\"\n"
    );
    fs::write(dir.join("vm.vmx"), text).unwrap();
}

/// Write `len` incompressible bytes at guest offset `off` of `disk` (qemu-io).
fn guest_write(disk: &Path, off: u64, len: u64, seed: u64) {
    let src = tempfile::NamedTempFile::new().unwrap();
    fs::write(src.path(), rand_bytes(seed, len as usize)).unwrap();
    qemu_io(
        disk,
        "vmdk",
        &[&format!("write -q -s {} {off} {len}", s(src.path()))],
    );
}

/// A working area `dir`: `vm.vmx`, `vm.nvram` and `disk.vmdk` (monolithicSparse,
/// `disk_mib` MiB, 2 MiB of data at 0 and 1 MiB at the middle).
fn make_vm(dir: &Path, disk_mib: u64) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let disk = dir.join("disk.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        s(&disk),
        &format!("{disk_mib}M"),
    ]);
    guest_write(&disk, 0, 2 * MIB, 1);
    guest_write(&disk, disk_mib / 2 * MIB, MIB, 2);
    write_vmx(dir, "disk.vmdk");
    fs::write(dir.join("vm.nvram"), rand_bytes(3, 8684)).unwrap();
    dir.to_path_buf()
}

/// Change the VM a little: 512 KiB of the disk at `seed`-dependent places and the nvram.
fn evolve(wa: &Path, disk: &str, seed: u64) {
    let d = wa.join(disk);
    guest_write(&d, (seed % 7 + 3) * MIB, 512 * 1024, 100 + seed);
    let mut nv = fs::read(wa.join("vm.nvram")).unwrap();
    let at = (seed as usize * 97) % nv.len();
    nv[at] ^= 0xff;
    fs::write(wa.join("vm.nvram"), nv).unwrap();
}

/// A copy of a working area as it is now (`cp -a`: mtimes, modes, holes).
fn keep(wa: &Path, to: &Path) -> PathBuf {
    run(Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(wa)
        .arg(to));
    to.to_path_buf()
}

/// Regular files under `dir`, relative, with their metadata; folders are walked, other kinds
/// (lock folders' contents included) listed as they are.
fn files_of(dir: &Path) -> BTreeMap<String, fs::Metadata> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, fs::Metadata>) {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            if m.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, m);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn cmp(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

/// `built` holds exactly the files of `expected`, `cmp`-equal, with their mtimes and modes.
fn assert_same_files(expected: &Path, built: &Path) {
    let (e, b) = (files_of(expected), files_of(built));
    assert_eq!(
        e.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{} against {}",
        built.display(),
        expected.display()
    );
    for (rel, me) in &e {
        let mb = &b[rel];
        assert!(
            cmp(&expected.join(rel), &built.join(rel)),
            "{rel}: bytes differ from the saved state"
        );
        assert_eq!(
            (me.mtime(), me.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "{rel}: mtime"
        );
        assert_eq!(
            me.permissions().mode() & 0o7777,
            mb.permissions().mode() & 0o7777,
            "{rel}: mode"
        );
    }
}

/// The outside oracles agree the built disk opens and reads as the saved one.
fn assert_disk_ok(saved: &Path, built: &Path) {
    let o = Command::new(vmdk_parse_bin())
        .arg("check")
        .arg(built)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "vmdk-parse check {}: {}{}",
        built.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    qemu_img(&["check", "-q", "-f", "vmdk", s(built)]);
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "vmdk",
        "-F",
        "vmdk",
        s(saved),
        s(built),
    ]);
}

fn set_mtime(p: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// Build each `(entry, state)` into a new folder and compare it with its state.
fn assert_entries_build(repo: &Repo, states: &[(&str, &Path)], scratch: &Path) {
    for (name, state) in states {
        let dest = scratch.join(format!("rebuilt-{name}"));
        if dest.exists() {
            fs::remove_dir_all(&dest).unwrap();
        }
        repo.build(name, &dest, &[]);
        assert_same_files(state, &dest);
        fs::remove_dir_all(&dest).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The issue's example.

#[test]
fn issue_example_trees_and_every_entry_builds_to_its_state() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 32);
    let st = |n: u32| t.path().join(format!("state{n}"));

    let e1 = repo.save(&wa, &["-m", "monday"]);
    assert_eq!(e1["name"], "E1");
    let stored_e1 = keep(&repo.root.join("entries/E1"), &t.path().join("stored-E1"));
    assert_eq!(e1["mode"], "full");
    assert!(e1["parent"].is_null());
    keep(&wa, &st(1));

    evolve(&wa, "disk.vmdk", 2);
    assert_eq!(repo.save_name(&wa, &["-m", "tuesday"]), "E2");
    keep(&wa, &st(2));

    // Build E1 back into the working area itself.
    repo.build("E1", &wa, &["--force"]);
    assert_same_files(&st(1), &wa);

    evolve(&wa, "disk.vmdk", 3);
    assert_eq!(repo.save_name(&wa, &[]), "E3");
    keep(&wa, &st(3));
    evolve(&wa, "disk.vmdk", 4);
    assert_eq!(repo.save_name(&wa, &[]), "E4");
    keep(&wa, &st(4));

    // Build E3 into a fresh folder, then use that as the working area.
    let wa2 = t.path().join("wa2");
    repo.build("E3", &wa2, &[]);
    assert_same_files(&st(3), &wa2);
    evolve(&wa2, "disk.vmdk", 5);
    assert_eq!(repo.save_name(&wa2, &[]), "E5");
    keep(&wa2, &st(5));

    for (e, p) in [
        ("E1", None),
        ("E2", Some("E1")),
        ("E3", Some("E1")),
        ("E4", Some("E3")),
        ("E5", Some("E3")),
    ] {
        assert_eq!(repo.parent(e).as_deref(), p, "parent of {e}");
        let mode = repo.show(e)["mode"].clone();
        assert_eq!(mode, if p.is_none() { "full" } else { "incremental" });
    }

    // By VM: wa2 is a VM of its own (its folder's name), standing on E3 of wa.
    let tree = repo.stdout(&["tree"]);
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 7, "{tree}");
    for (line, prefix) in lines.iter().zip([
        "vm wa",
        "E1 ",
        "├── E2 ",
        "└── E3 ",
        "    └── E4 ",
        "vm wa2",
        "E5 ",
    ]) {
        assert!(line.starts_with(prefix), "{line:?} in\n{tree}");
    }
    assert!(lines[6].ends_with("(on E3 of vm wa)"), "{tree}");
    let lines = &lines[1..];
    assert!(
        lines[0].contains("full") && lines[0].contains("monday"),
        "{tree}"
    );
    assert!(lines[1].contains("incremental") && lines[1].contains("tuesday"));
    assert!(
        lines[0].contains("KiB") || lines[0].contains("MiB"),
        "sizes: {tree}"
    );

    // deps: the chain from the tree's full entry.
    let deps = repo.json(&["deps", "E4"]);
    let chain: Vec<&str> = deps["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["E1", "E3", "E4"]);

    let states: Vec<(String, PathBuf)> = (1..=5).map(|n| (format!("E{n}"), st(n))).collect();
    let refs: Vec<(&str, &Path)> = states
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_path()))
        .collect();
    assert_entries_build(&repo, &refs, t.path());
    // Entries are immutable once written.
    assert_same_files(&stored_e1, &repo.root.join("entries/E1"));
    // The disks open in the oracles too.
    let d = t.path().join("e4");
    repo.build("E4", &d, &[]);
    assert_disk_ok(&st(4).join("disk.vmdk"), &d.join("disk.vmdk"));
}

// ---------------------------------------------------------------------------------------------
// 2. Modes, parents, tags, latest.

#[test]
fn modes_parents_tags_and_latest() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 16);
    let st = |n: u32| t.path().join(format!("state{n}"));

    // --incremental with no earlier entry: saved full, and said so on stderr.
    let o = repo.ok(&["save", s(&wa), "--incremental", "--tag", "base"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("saved full"), "{err}");
    assert_eq!(repo.show("E1")["mode"], "full");
    keep(&wa, &st(1));

    evolve(&wa, "disk.vmdk", 2);
    let e2 = repo.save(&wa, &[]);
    assert_eq!(
        (e2["mode"].as_str(), e2["parent"].as_str()),
        (Some("incremental"), Some("E1"))
    );
    keep(&wa, &st(2));

    evolve(&wa, "disk.vmdk", 3);
    let e3 = repo.save(&wa, &["--differential"]);
    assert_eq!(
        (e3["mode"].as_str(), e3["parent"].as_str()),
        (Some("differential"), Some("E1"))
    );
    keep(&wa, &st(3));

    evolve(&wa, "disk.vmdk", 4);
    let e4 = repo.save(&wa, &["--full", "--tag", "weekly", "-m", "sunday"]);
    assert_eq!(e4["mode"], "full");
    assert!(e4["parent"].is_null());
    assert_eq!(e4["tags"], serde_json::json!(["weekly"]));
    keep(&wa, &st(4));

    // --parent by tag: incremental against E1 (not the working area's E4).
    evolve(&wa, "disk.vmdk", 5);
    let e5 = repo.save(&wa, &["--parent", "base"]);
    assert_eq!(
        (e5["mode"].as_str(), e5["parent"].as_str()),
        (Some("incremental"), Some("E1"))
    );
    keep(&wa, &st(5));

    // --differential --parent E5: against E5's tree's full entry, E1.
    evolve(&wa, "disk.vmdk", 6);
    let e6 = repo.save(&wa, &["--differential", "--parent", "E5"]);
    assert_eq!(
        (e6["mode"].as_str(), e6["parent"].as_str()),
        (Some("differential"), Some("E1"))
    );
    keep(&wa, &st(6));

    // A differential entry needs only its tree's full entry.
    for (e, chain) in [("E3", ["E1", "E3"]), ("E6", ["E1", "E6"])] {
        let deps = repo.json(&["deps", e]);
        let names: Vec<&str> = deps["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, chain);
    }

    // Default: incremental against the entry this working area last saved.
    evolve(&wa, "disk.vmdk", 7);
    let e7 = repo.save(&wa, &["--incremental"]);
    assert_eq!(
        (e7["mode"].as_str(), e7["parent"].as_str()),
        (Some("incremental"), Some("E6"))
    );
    keep(&wa, &st(7));

    // A tag names one entry: a taken tag is refused, and nothing is saved.
    let before = repo.names();
    repo.fails(&["save", s(&wa), "--tag", "weekly"], 2);
    repo.fails(&["save", s(&wa), "--tag", "E3"], 2);
    repo.fails(&["save", s(&wa), "--tag", "latest"], 2);
    assert_eq!(repo.names(), before);

    // Names: tags, latest, E<n>.
    assert_eq!(repo.show("weekly")["name"], "E4");
    assert_eq!(repo.show("base")["name"], "E1");
    assert_eq!(repo.show("latest")["name"], "E7");
    let text = repo.stdout(&["show", "weekly"]);
    assert!(text.contains("E4") && text.contains("sunday"), "{text}");
    let d = t.path().join("by-tag");
    repo.build("weekly", &d, &[]);
    assert_same_files(&st(4), &d);
    let d = t.path().join("by-latest");
    repo.build("latest", &d, &[]);
    assert_same_files(&st(7), &d);

    // A second working area that was never saved, a VM of its own (wb) holding wa's first
    // content: its first save is based on the entry sharing the most with it, and says so.
    let wb = make_vm(&t.path().join("wb"), 16);
    let o = repo.ok(&["save", s(&wb)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("based on E") && err.contains("of VM \"wa\""),
        "{err}"
    );
    let e8 = repo.show("latest");
    assert_eq!(e8["mode"], "incremental");
    assert_eq!(e8["vm"]["name"], "wb");
    assert_eq!(e8["based_on"]["entry"], e8["parent"]);
    keep(&wb, &st(8));

    let states: Vec<(String, PathBuf)> = (1..=8).map(|n| (format!("E{n}"), st(n))).collect();
    let refs: Vec<(&str, &Path)> = states
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_path()))
        .collect();
    assert_entries_build(&repo, &refs, t.path());
}

// ---------------------------------------------------------------------------------------------
// 3. Save reads only what changed.

#[test]
fn save_reads_only_changed_files() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 32);
    let e1 = repo.save(&wa, &[]);
    let disk_size = fs::metadata(wa.join("disk.vmdk")).unwrap().len();
    let total: u64 = files_of(&wa).values().map(|m| m.len()).sum();
    assert!(e1["stats"]["read_bytes"].as_u64().unwrap() > 0);

    // No change: nothing read, a tiny delta.
    let e2 = repo.save(&wa, &[]);
    assert_eq!(e2["stats"]["read_bytes"], 0, "{}", e2["stats"]);
    assert_eq!(e2["stats"]["unchanged_file_bytes"], total);
    assert_eq!(e2["stats"]["changed_bytes"], 0);
    let delta = e2["stored"]["delta"]["size"].as_u64().unwrap();
    assert!(delta < 4096, "an unchanged VM stores {delta} bytes");
    assert_eq!(
        repo.show("E2")["stats"]["read_bytes"],
        0,
        "show --json agrees"
    );

    // A touched disk (same bytes, new mtime) is read again, and still stores little.
    set_mtime(
        &wa.join("disk.vmdk"),
        SystemTime::now() + Duration::from_secs(60),
    );
    let e3 = repo.save(&wa, &[]);
    let read = e3["stats"]["read_bytes"].as_u64().unwrap();
    assert!(
        read > disk_size / 2 && read <= disk_size,
        "read {read} of a {disk_size}-byte disk"
    );
    assert_eq!(e3["stats"]["changed_bytes"], 0);
    assert!(e3["stored"]["delta"]["size"].as_u64().unwrap() < 16384);

    // New bytes at the same size and a new mtime: read, stored, and built back.
    let nv = wa.join("vm.nvram");
    fs::write(&nv, rand_bytes(77, 8684)).unwrap();
    let e4 = repo.save(&wa, &[]);
    let read = e4["stats"]["read_bytes"].as_u64().unwrap();
    assert!(
        read > 0 && read < 64 * 1024,
        "only the nvram is read: {read}"
    );
    assert!(e4["stats"]["literal_bytes"].as_u64().unwrap() >= 8000);
    let d = t.path().join("b4");
    repo.build("E4", &d, &[]);
    assert!(cmp(&nv, &d.join("vm.nvram")));

    // Save never reads the parent's stored data, only its digests: with every delta moved
    // away, an incremental save still works, and builds once they are back.
    let entries = repo.root.join("entries");
    for n in 1..=4 {
        let d = entries.join(format!("E{n}/delta.vdelta"));
        fs::rename(&d, d.with_extension("away")).unwrap();
    }
    evolve(&wa, "disk.vmdk", 5);
    assert_eq!(repo.save(&wa, &[])["parent"], "E4");
    for n in 1..=4 {
        let d = entries.join(format!("E{n}/delta.vdelta"));
        fs::rename(d.with_extension("away"), &d).unwrap();
    }
    let d = t.path().join("b5-away");
    repo.build("E5", &d, &[]);
    assert_same_files(&wa, &d);

    // A guest write of 1 MiB: the delta holds about that much, not the disk.
    guest_write(&wa.join("disk.vmdk"), 9 * MIB, MIB, 9);
    let e6 = repo.save(&wa, &[]);
    let delta = e6["stored"]["delta"]["size"].as_u64().unwrap();
    assert!(
        (MIB..MIB + 256 * 1024).contains(&delta),
        "1 MiB of new random data stored as {delta} bytes"
    );
    let d = t.path().join("b6");
    repo.build("E6", &d, &[]);
    assert_same_files(&wa, &d);
}

// ---------------------------------------------------------------------------------------------
// 4. Snapshot chains.

/// `qemu-img create -f vmdk -b PARENT -F vmdk CHILD` in `dir`.
fn qemu_child(dir: &Path, parent: &str, child: &str) {
    run(Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk", child,
        ])
        .current_dir(dir));
}

#[test]
fn qemu_snapshot_chains_save_build_and_grow_by_small_deltas() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 32);
    qemu_child(&wa, "disk.vmdk", "disk-000001.vmdk");
    guest_write(&wa.join("disk-000001.vmdk"), 4 * MIB, MIB, 11);
    write_vmx(&wa, "disk-000001.vmdk");
    let e1 = repo.save(&wa, &[]);
    let paths: Vec<&str> = e1["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["disk-000001.vmdk", "disk.vmdk", "vm.nvram", "vm.vmx"]
    );
    let s1 = keep(&wa, &t.path().join("s1"));
    let b1 = t.path().join("b1");
    repo.build("E1", &b1, &[]);
    assert_same_files(&s1, &b1);
    assert_disk_ok(&s1.join("disk-000001.vmdk"), &b1.join("disk-000001.vmdk"));

    // A new link between saves: a small new file, stored as a small delta.
    qemu_child(&wa, "disk-000001.vmdk", "disk-000002.vmdk");
    guest_write(&wa.join("disk-000002.vmdk"), 12 * MIB, 64 * 1024, 12);
    write_vmx(&wa, "disk-000002.vmdk");
    let e2 = repo.save(&wa, &[]);
    assert_eq!(e2["parent"], "E1");
    let vm_bytes: u64 = files_of(&wa).values().map(|m| m.len()).sum();
    let stored = e2["stored"]["delta"]["size"].as_u64().unwrap();
    assert!(
        stored < 256 * 1024 && stored * 20 < vm_bytes,
        "a new 64 KiB link stored as {stored} bytes (VM {vm_bytes} bytes)"
    );
    // The frozen links were not read again.
    let read = e2["stats"]["read_bytes"].as_u64().unwrap();
    let new_link = fs::metadata(wa.join("disk-000002.vmdk")).unwrap().len();
    assert!(read <= new_link + 64 * 1024, "read {read} bytes");
    let s2 = keep(&wa, &t.path().join("s2"));
    let jl = repo.stdout(&["--json", "diff", "E1", "E2"]);
    let status: BTreeMap<String, String> = jl
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().to_owned(),
                v["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(status["disk-000002.vmdk"], "added");
    assert_eq!(status["disk.vmdk"], "same");
    assert_eq!(status["disk-000001.vmdk"], "same");
    assert_eq!(status["vm.vmx"], "changed");
    let b2 = t.path().join("b2");
    repo.build("E2", &b2, &[]);
    assert_same_files(&s2, &b2);
    assert_disk_ok(&s2.join("disk-000002.vmdk"), &b2.join("disk-000002.vmdk"));
    // The guest sees all three links' writes.
    let raw = qemu_raw(&b2.join("disk-000002.vmdk"), t.path());
    assert_eq!(
        &raw[..2 * MIB as usize],
        &rand_bytes(1, 2 * MIB as usize)[..]
    );
    assert_eq!(
        &raw[4 * MIB as usize..5 * MIB as usize],
        &rand_bytes(11, MIB as usize)[..]
    );
    assert_eq!(
        &raw[12 * MIB as usize..12 * MIB as usize + 65536],
        &rand_bytes(12, 65536)[..]
    );

    // Snapshots deleted: the links committed into the base and removed.
    run(Command::new("qemu-img")
        .args(["commit", "-q", "-d", "disk-000002.vmdk"])
        .current_dir(&wa));
    run(Command::new("qemu-img")
        .args(["commit", "-q", "-d", "disk-000001.vmdk"])
        .current_dir(&wa));
    fs::remove_file(wa.join("disk-000002.vmdk")).unwrap();
    fs::remove_file(wa.join("disk-000001.vmdk")).unwrap();
    write_vmx(&wa, "disk.vmdk");
    let e3 = repo.save(&wa, &[]);
    assert_eq!(e3["files"].as_array().unwrap().len(), 3);
    let s3 = keep(&wa, &t.path().join("s3"));
    let jl = repo.stdout(&["--json", "diff", "E2", "E3"]);
    assert_eq!(jl.matches("\"removed\"").count(), 2, "{jl}");
    let b3 = t.path().join("b3");
    repo.build("E3", &b3, &[]);
    assert_disk_ok(&s2.join("disk-000002.vmdk"), &b3.join("disk.vmdk"));
    assert_entries_build(&repo, &[("E1", &s1), ("E2", &s2), ("E3", &s3)], t.path());
}

#[test]
fn long_chains_of_every_mode_build_every_entry() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 16);
    let mut states = Vec::new();
    for n in 1..=12u64 {
        let mode: &[&str] = match n {
            5 | 9 => &["--differential"],
            7 => &[], // saved with no change
            // zstd's fastest level and a slow one, in the same chain as the default (-1).
            2 => &["--incremental", "--level", "-7"],
            3 => &["--incremental", "--level", "12"],
            _ => &["--incremental"],
        };
        if n != 7 && n != 1 {
            evolve(&wa, "disk.vmdk", n);
        }
        if n == 10 {
            // A file that shrinks, and one that grows.
            fs::write(wa.join("vm.nvram"), rand_bytes(n, 4000)).unwrap();
            guest_write(&wa.join("disk.vmdk"), 14 * MIB, 2 * MIB, 1000 + n);
        }
        let e = repo.save(&wa, mode);
        states.push((
            e["name"].as_str().unwrap().to_owned(),
            keep(&wa, &t.path().join(format!("s{n}"))),
        ));
    }
    let deps = repo.json(&["deps", "E12"]);
    let chain: Vec<&str> = deps["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["E1", "E9", "E10", "E11", "E12"]);
    let refs: Vec<(&str, &Path)> = states
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_path()))
        .collect();
    assert_entries_build(&repo, &refs, t.path());
}

#[test]
fn esxi_cowd_and_sesparse_chains_save_and_build() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = t.path().join("wa");
    fs::create_dir(&wa).unwrap();
    let data = rand_bytes(21, 4 * MIB as usize);
    let mut g1 = Grains::new();
    for i in [0u64, 1, 7, 4095, 4096, 6000] {
        g1.insert(i, esxgen::data_grain(DeltaKind::Cowd, i as u8));
    }
    g1.insert(100, Grain::Zero);
    let mut g2 = Grains::new();
    for i in [2u64, 3, 300, 511] {
        g2.insert(i, esxgen::data_grain(DeltaKind::SeSparse, i as u8 ^ 0x5a));
    }
    g2.insert(5, Grain::Unmapped);
    let links = esxgen::write_chain(
        &wa,
        "vm",
        &data,
        &[(DeltaKind::Cowd, g1), (DeltaKind::SeSparse, g2)],
    );
    let top = links.last().unwrap();
    let top_name = top
        .descriptor
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    write_vmx(&wa, &top_name);
    fs::write(wa.join("vm.nvram"), rand_bytes(3, 8684)).unwrap();

    let e1 = repo.save(&wa, &[]);
    assert_eq!(e1["files"].as_array().unwrap().len(), 8, "{}", e1["files"]);
    let cids: Vec<&str> = e1["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["cid"].as_str())
        .collect();
    assert_eq!(cids.len(), 3, "one CID per descriptor: {cids:?}");
    let s1 = keep(&wa, &t.path().join("s1"));
    let b1 = t.path().join("b1");
    repo.build("E1", &b1, &[]);
    assert_same_files(&s1, &b1);
    assert_disk_ok(&wa.join(&top_name), &b1.join(&top_name));
    let guest = repo.ok(&["cat", "--guest", "E1", &top_name]).stdout;
    assert!(guest == top.expected, "the guest sees what esxgen wrote");
}

// ---------------------------------------------------------------------------------------------
// 5. --at-snapshot.

/// A running VM: `disk.vmdk` frozen by snapshot "before" (uid 1), `disk-000001.vmdk` the
/// running delta the `.vmx` names, the snapshot's `.vmsn`, and a lock folder.
fn make_running_vm(dir: &Path) -> PathBuf {
    let wa = make_vm(dir, 16);
    qemu_child(&wa, "disk.vmdk", "disk-000001.vmdk");
    guest_write(&wa.join("disk-000001.vmdk"), 0, MIB, 31);
    write_vmx(&wa, "disk-000001.vmdk");
    fs::write(
        wa.join("vm.vmsd"),
        ".encoding = \"UTF-8\"\nsnapshot.lastUID = \"1\"\nsnapshot.current = \"1\"\n\
         snapshot0.uid = \"1\"\nsnapshot0.filename = \"vm-Snapshot1.vmsn\"\n\
         snapshot0.displayName = \"before\"\nsnapshot0.numDisks = \"1\"\n\
         snapshot0.disk0.fileName = \"disk.vmdk\"\nsnapshot0.disk0.node = \"scsi0:0\"\n\
         snapshot.numSnapshots = \"1\"\n",
    )
    .unwrap();
    fs::write(wa.join("vm-Snapshot1.vmsn"), rand_bytes(32, 30000)).unwrap();
    fs::create_dir(wa.join("vm.vmx.lck")).unwrap();
    fs::write(wa.join("vm.vmx.lck/M01234.lck"), b"lock").unwrap();
    wa
}

#[test]
fn at_snapshot_saves_the_frozen_link_of_a_running_vm() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_running_vm(&t.path().join("wa"));

    let err = repo.fails(&["save", s(&wa)], 7);
    assert!(err.contains("lck") || err.contains("running"), "{err}");
    // --at-snapshot with no snapshot to save.
    let nosnap = keep(&wa, &t.path().join("nosnap"));
    fs::remove_file(nosnap.join("vm.vmsd")).unwrap();
    repo.fails(&["save", s(&nosnap), "--at-snapshot"], 7);
    assert!(repo.names().is_empty());

    let o = repo.ok(&["--json", "save", s(&wa), "--at-snapshot"]);
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["at_snapshot"], "before");
    let paths: Vec<&str> = e["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "disk.vmdk",
            "vm-Snapshot1.vmsn",
            "vm.nvram",
            "vm.vmsd",
            "vm.vmx"
        ]
    );
    let skipped: Vec<&str> = e["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["path"].as_str().unwrap())
        .collect();
    assert!(skipped.contains(&"disk-000001.vmdk"), "{skipped:?}");
    assert!(
        skipped.iter().any(|p| p.starts_with("vm.vmx.lck")),
        "{skipped:?}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("skipped"), "skips are reported: {err}");

    let b = t.path().join("b");
    repo.build("E1", &b, &[]);
    let vmx = fs::read_to_string(b.join("vm.vmx")).unwrap();
    let disk_line = vmx
        .lines()
        .find(|l| l.starts_with("scsi0:0.fileName"))
        .unwrap();
    assert!(
        disk_line.contains("\"disk.vmdk\""),
        "the built .vmx names the frozen link: {disk_line}"
    );
    assert!(!b.join("disk-000001.vmdk").exists());
    assert!(!b.join("vm.vmx.lck").exists());
    for f in ["disk.vmdk", "vm-Snapshot1.vmsn", "vm.vmsd", "vm.nvram"] {
        assert!(cmp(&wa.join(f), &b.join(f)), "{f}");
    }
    assert_disk_ok(&wa.join("disk.vmdk"), &b.join("disk.vmdk"));
    // The guest contents are the frozen base's, not the running VM's.
    let built = qemu_raw(&b.join("disk.vmdk"), t.path());
    assert_eq!(
        &built[..2 * MIB as usize],
        &rand_bytes(1, 2 * MIB as usize)[..]
    );
    let running = t.path().join("running");
    fs::create_dir(&running).unwrap();
    assert_ne!(built, qemu_raw(&wa.join("disk-000001.vmdk"), &running));
    // The built VM is not running, so it saves plainly, and the frozen disk is not re-read.
    let e2 = repo.save(&b, &[]);
    assert_eq!(e2["parent"], "E1");
    assert!(e2["at_snapshot"].is_null());
    let disk = fs::metadata(b.join("disk.vmdk")).unwrap().len();
    assert!(e2["stats"]["read_bytes"].as_u64().unwrap() < disk);
}

fn write_vmsd(wa: &Path, snapshots: &[(u32, &str, &str)], current: u32) {
    let mut text = format!(
        ".encoding = \"UTF-8\"\nsnapshot.lastUID = \"{current}\"\n\
         snapshot.current = \"{current}\"\nsnapshot.numSnapshots = \"{}\"\n",
        snapshots.len()
    );
    for (i, (uid, vmsn, disk)) in snapshots.iter().enumerate() {
        text.push_str(&format!(
            "snapshot{i}.uid = \"{uid}\"\nsnapshot{i}.filename = \"{vmsn}\"\n\
             snapshot{i}.displayName = \"snap{uid}\"\nsnapshot{i}.numDisks = \"1\"\n\
             snapshot{i}.disk0.fileName = \"{disk}\"\nsnapshot{i}.disk0.node = \"scsi0:0\"\n"
        ));
        if i > 0 {
            text.push_str(&format!(
                "snapshot{i}.parent = \"{}\"\n",
                snapshots[i - 1].0
            ));
        }
    }
    fs::write(wa.join("vm.vmsd"), text).unwrap();
}

/// The agentless backup cycle on a running VM: snapshot, save --at-snapshot, and again with a
/// second snapshot on top (a new frozen link), then after the snapshots are consolidated.
#[test]
fn at_snapshot_backup_cycle() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_running_vm(&t.path().join("wa"));
    repo.save(&wa, &["--at-snapshot"]);
    let base1 = keep(&wa.join("disk.vmdk"), &t.path().join("base1.vmdk"));

    // Snapshot 2: the running delta freezes, a new one runs.
    qemu_child(&wa, "disk-000001.vmdk", "disk-000002.vmdk");
    guest_write(&wa.join("disk-000002.vmdk"), 8 * MIB, MIB, 33);
    write_vmx(&wa, "disk-000002.vmdk");
    fs::write(wa.join("vm-Snapshot2.vmsn"), rand_bytes(34, 20000)).unwrap();
    write_vmsd(
        &wa,
        &[
            (1, "vm-Snapshot1.vmsn", "disk.vmdk"),
            (2, "vm-Snapshot2.vmsn", "disk-000001.vmdk"),
        ],
        2,
    );
    let e2 = repo.save(&wa, &["--at-snapshot"]);
    assert_eq!(e2["parent"], "E1");
    assert_eq!(e2["at_snapshot"], "snap2");
    let stored = e2["stored"]["delta"]["size"].as_u64().unwrap();
    assert!(
        stored < 2 * MIB,
        "a 1 MiB frozen link stored as {stored} bytes"
    );
    let b2 = t.path().join("b2");
    repo.build("E2", &b2, &[]);
    assert!(!b2.join("disk-000002.vmdk").exists());
    assert!(cmp(
        &wa.join("disk-000001.vmdk"),
        &b2.join("disk-000001.vmdk")
    ));
    assert!(cmp(&base1, &b2.join("disk.vmdk")));
    assert_disk_ok(&wa.join("disk-000001.vmdk"), &b2.join("disk-000001.vmdk"));
    let vmx = fs::read_to_string(b2.join("vm.vmx")).unwrap();
    assert!(
        vmx.contains("scsi0:0.fileName = \"disk-000001.vmdk\""),
        "{vmx}"
    );

    // Snapshots deleted: everything committed into the base; a new backup snapshot taken.
    for link in ["disk-000002.vmdk", "disk-000001.vmdk"] {
        run(Command::new("qemu-img")
            .args(["commit", "-q", "-d", link])
            .current_dir(&wa));
        fs::remove_file(wa.join(link)).unwrap();
    }
    fs::remove_file(wa.join("vm-Snapshot1.vmsn")).unwrap();
    fs::remove_file(wa.join("vm-Snapshot2.vmsn")).unwrap();
    let frozen = keep(&wa.join("disk.vmdk"), &t.path().join("base3.vmdk"));
    qemu_child(&wa, "disk.vmdk", "disk-000001.vmdk");
    guest_write(&wa.join("disk-000001.vmdk"), 2 * MIB, MIB, 35);
    write_vmx(&wa, "disk-000001.vmdk");
    fs::write(wa.join("vm-Snapshot3.vmsn"), rand_bytes(36, 20000)).unwrap();
    write_vmsd(&wa, &[(3, "vm-Snapshot3.vmsn", "disk.vmdk")], 3);
    let e3 = repo.save(&wa, &["--at-snapshot"]);
    assert_eq!(e3["parent"], "E2");
    let b3 = t.path().join("b3");
    repo.build("E3", &b3, &[]);
    assert!(cmp(&frozen, &b3.join("disk.vmdk")));
    assert_disk_ok(&frozen, &b3.join("disk.vmdk"));
    let names: Vec<String> = files_of(&b3).into_keys().collect();
    assert_eq!(
        names,
        [
            "disk.vmdk",
            "vm-Snapshot3.vmsn",
            "vm.nvram",
            "vm.vmsd",
            "vm.vmx"
        ]
    );
    // The guest sees what the two frozen deltas wrote, committed.
    let raw = qemu_raw(&b3.join("disk.vmdk"), t.path());
    assert_eq!(&raw[..MIB as usize], &rand_bytes(31, MIB as usize)[..]);
    assert_eq!(
        &raw[8 * MIB as usize..9 * MIB as usize],
        &rand_bytes(33, MIB as usize)[..]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Queries and their JSON.

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn is_hex64(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Pin `vrepo.entry/2`: every field, with its type.
fn assert_entry_shape(e: &Value) {
    let mut k = keys(e);
    // Only when the save chose its parent by shared content.
    if let Some(i) = k.iter().position(|x| *x == "based_on") {
        k.remove(i);
        let b = &e["based_on"];
        assert_eq!(keys(b), ["entry", "sampled_bytes", "shared_percent", "vm"]);
        assert_eq!(b["entry"], e["parent"]);
        assert!(b["shared_percent"].as_f64().unwrap() >= 10.0);
    }
    assert_eq!(
        k,
        [
            "at_snapshot",
            "files",
            "message",
            "mode",
            "name",
            "number",
            "parent",
            "schema",
            "skipped",
            "source",
            "stats",
            "stored",
            "tags",
            "time",
            "vm",
            "volume"
        ]
    );
    assert_eq!(e["schema"], "vrepo.entry/2");
    let name = e["name"].as_str().unwrap();
    assert_eq!(format!("E{}", e["number"].as_u64().unwrap()), name);
    assert!(e["time"].as_str().unwrap().ends_with('Z'));
    assert!(e["message"].is_string());
    assert!(["full", "incremental", "differential"].contains(&e["mode"].as_str().unwrap()));
    assert!(e["parent"].is_null() || e["parent"].is_string());
    assert!(e["tags"].as_array().unwrap().iter().all(Value::is_string));
    assert!(Path::new(e["source"].as_str().unwrap()).is_absolute());
    assert!(e["at_snapshot"].is_null() || e["at_snapshot"].is_string());
    assert_eq!(
        keys(&e["vm"]),
        [
            "display_name",
            "guest_os",
            "name",
            "uuid_bios",
            "uuid_location",
            "vmx"
        ]
    );
    assert!(e["vm"]["name"].is_string());
    assert_eq!(e["vm"]["vmx"], "vm.vmx");
    assert_eq!(e["vm"]["display_name"], "vrepo test");
    assert_eq!(keys(&e["volume"]), ["block_size", "digest", "size"]);
    assert!(e["volume"]["size"].is_u64() && e["volume"]["block_size"].is_u64());
    assert!(is_hex64(&e["volume"]["digest"]));
    for f in e["files"].as_array().unwrap() {
        let k = keys(f);
        let base = [
            "cid", "digest", "mode", "mtime_ns", "offset", "path", "role", "size",
        ];
        assert!(
            k == base || k == [&base[..], &["synthesized"]].concat(),
            "{f}"
        );
        assert!(f["path"].is_string() && f["role"].is_string());
        assert!(f["size"].is_u64() && f["offset"].is_u64() && f["mode"].is_u64());
        assert!(f["mtime_ns"].is_i64());
        assert!(is_hex64(&f["digest"]));
        assert!(f["cid"].is_null() || f["cid"].as_str().unwrap().len() == 8);
    }
    for k in e["skipped"].as_array().unwrap() {
        assert_eq!(keys(k), ["path", "reason"]);
    }
    assert_eq!(keys(&e["stored"]), ["chunks", "delta", "signature"]);
    for part in ["chunks", "delta", "signature"] {
        assert_eq!(keys(&e["stored"][part]), ["blake3", "size"]);
        assert!(e["stored"][part]["size"].is_u64());
        assert!(is_hex64(&e["stored"][part]["blake3"]));
    }
    assert_eq!(
        keys(&e["stats"]),
        [
            "changed_bytes",
            "copied_bytes",
            "literal_bytes",
            "read_bytes",
            "unchanged_file_bytes"
        ]
    );
    for v in e["stats"].as_object().unwrap().values() {
        assert!(v.is_u64());
    }
}

#[test]
fn queries_text_and_json() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 16);
    let e1 = repo.save(&wa, &["-m", "first", "--tag", "v1"]);
    assert_entry_shape(&e1);
    let s1 = keep(&wa, &t.path().join("s1"));
    guest_write(&wa.join("disk.vmdk"), 10 * MIB, MIB, 41);
    let e2 = repo.save(&wa, &["-m", "second"]);
    assert_entry_shape(&e2);
    let s2 = keep(&wa, &t.path().join("s2"));

    // show
    assert_eq!(repo.show("E2"), e2, "show --json is the saved entry.json");
    let text = repo.stdout(&["show", "E1"]);
    for want in [
        "E1",
        "full",
        "first",
        "v1",
        "disk.vmdk",
        "vm.nvram",
        "vm.vmx",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }

    // list: one line per entry; JSON Lines of entries.
    let text = repo.stdout(&["list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("E1") && lines[0].contains("first"));
    assert!(lines[1].starts_with("E2") && lines[1].contains("incremental"));
    let jl = repo.stdout(&["--json", "list"]);
    let rows: Vec<Value> = jl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    rows.iter().for_each(assert_entry_shape);
    assert_eq!(rows[1], e2);

    // tree --json: one array of nodes.
    let tree = repo.json(&["tree"]);
    let nodes = tree.as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert_eq!(
            keys(n),
            [
                "message",
                "mode",
                "name",
                "parent",
                "stored_bytes",
                "tags",
                "time",
                "vm"
            ]
        );
        assert!(n["stored_bytes"].is_u64());
    }
    assert_eq!(nodes[1]["parent"], "E1");

    // deps
    let deps = repo.json(&["deps", "E2"]);
    assert_eq!(keys(&deps), ["chain", "entry", "stored_bytes"]);
    assert_eq!(deps["entry"], "E2");
    let chain = deps["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    for c in chain {
        assert_eq!(keys(c), ["mode", "name", "parent", "stored_bytes"]);
    }
    let sum: u64 = chain
        .iter()
        .map(|c| c["stored_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(deps["stored_bytes"].as_u64(), Some(sum));
    let text = repo.stdout(&["deps", "E2"]);
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["E1", "E2"]);

    // diff: the changed disk's bytes; `same` for the rest.
    let jl = repo.stdout(&["--json", "diff", "E1", "E2"]);
    let rows: BTreeMap<String, Value> = jl
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(
                keys(&v),
                [
                    "changed_bytes",
                    "path",
                    "size_after",
                    "size_before",
                    "status"
                ]
            );
            (v["path"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    assert_eq!(rows.len(), 3);
    let d = &rows["disk.vmdk"];
    assert_eq!(d["status"], "changed");
    let changed = d["changed_bytes"].as_u64().unwrap();
    assert!(
        (MIB..2 * MIB).contains(&changed),
        "1 MiB written: {changed} bytes changed"
    );
    assert_eq!(rows["vm.vmx"]["status"], "same");
    assert_eq!(rows["vm.nvram"]["status"], "same");
    assert_eq!(rows["vm.vmx"]["changed_bytes"], 0);
    let text = repo.stdout(&["diff", "E1", "E2"]);
    assert!(
        text.contains("disk.vmdk") && text.contains("changed"),
        "{text}"
    );
    assert!(!text.contains("vm.vmx"), "{text}");
    let same = repo.stdout(&["--json", "diff", "E2", "E2"]);
    assert!(same.lines().all(|l| l.contains("\"same\"")), "{same}");

    // cat: a stored file's bytes; --guest: the disk as qemu-img reads it.
    for (e, st) in [("E1", &s1), ("E2", &s2)] {
        for f in ["vm.vmx", "vm.nvram", "disk.vmdk"] {
            let out = repo.ok(&["cat", e, f]).stdout;
            assert!(out == fs::read(st.join(f)).unwrap(), "cat {e} {f}");
        }
        let guest = repo.ok(&["cat", "--guest", e, "disk.vmdk"]).stdout;
        let scratch = t.path().join(format!("raw-{e}"));
        fs::create_dir(&scratch).unwrap();
        assert!(
            guest == qemu_raw(&st.join("disk.vmdk"), &scratch),
            "cat --guest {e}"
        );
    }
    let err = repo.fails(&["cat", "E1", "nope.vmdk"], 4);
    assert!(err.contains("nope.vmdk"), "{err}");
    repo.fails(&["cat", "--guest", "E1", "vm.nvram"], 2);
    // A reader that stops early is not an error.
    for guest in ["", "--guest"] {
        let o = run(Command::new("bash").arg("-c").arg(format!(
            "'{}' -r '{}' cat {guest} E2 disk.vmdk | head -c 10 >/dev/null; \
             echo \"${{PIPESTATUS[0]}}\"",
            vrepo_bin().display(),
            repo.root.display()
        )));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // A terminal is refused (`script` gives vrepo a pseudo-terminal as stdout).
    if Command::new("script").arg("--version").output().is_ok() {
        for guest in ["", "--guest"] {
            let cmd = format!(
                "'{}' -r '{}' cat {guest} E1 disk.vmdk; echo \"rc=$?\"",
                vrepo_bin().display(),
                repo.root.display()
            );
            let out = Command::new("script")
                .args(["-qec", &cmd, "/dev/null"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("rc=2"), "{text}");
            assert!(text.contains("terminal"), "{text}");
            assert!(text.len() < 500, "no data reached the terminal");
        }
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "util-linux `script` is needed in CI"
        );
    }

    // build --json and init --json.
    let b = repo.build("v1", &t.path().join("b"), &[]);
    assert_eq!(
        keys(&b),
        [
            "bytes",
            "chain",
            "entry",
            "files",
            "workarea",
            "written_bytes"
        ]
    );
    assert_eq!(b["entry"], "E1");
    assert_eq!(b["files"], 3);
    let r2 = Command::new(vrepo_bin())
        .arg("-r")
        .arg(t.path().join("repo2"))
        .args(["--json", "init"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&r2.stdout).unwrap();
    assert_eq!(keys(&v), ["block_size", "repository"]);
    // The environment variable names the repository too.
    let o = run(Command::new(vrepo_bin())
        .env("VREPO_REPOSITORY", &repo.root)
        .args(["show", "latest", "--json"]));
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), e2);
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input: one line, the documented exit code, nothing stored lost.

/// A repository with two entries of a VM, and copies of their states.
struct Saved {
    t: tempfile::TempDir,
    repo: Repo,
    wa: PathBuf,
    s1: PathBuf,
    s2: PathBuf,
}

fn two_entries() -> Saved {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 16);
    repo.save(&wa, &[]);
    let s1 = keep(&wa, &t.path().join("s1"));
    evolve(&wa, "disk.vmdk", 2);
    repo.save(&wa, &[]);
    let s2 = keep(&wa, &t.path().join("s2"));
    Saved {
        t,
        repo,
        wa,
        s1,
        s2,
    }
}

impl Saved {
    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    /// Both entries still build to their states, and no other entry appeared.
    fn intact(&self) {
        assert_eq!(self.repo.names(), ["E1", "E2"]);
        assert_entries_build(
            &self.repo,
            &[("E1", &self.s1), ("E2", &self.s2)],
            self.t.path(),
        );
    }

    /// A copy of the repository to damage.
    fn copy_repo(&self, name: &str) -> Repo {
        let to = self.path(name);
        keep(&self.repo.root, &to);
        Repo { root: to }
    }
}

#[test]
fn bad_repositories_entries_and_working_areas() {
    let x = two_entries();
    let (repo, wa) = (&x.repo, &x.wa);

    // Repositories.
    let nope = Repo {
        root: x.path("nope"),
    };
    let err = nope.fails(&["list"], 4);
    assert!(err.contains("no such repository"), "{err}");
    nope.fails(&["save", s(wa)], 4);
    assert!(!x.path("nope").exists(), "nothing is created");
    let plain = x.path("plain");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join("notes.txt"), b"hello").unwrap();
    let not_repo = Repo {
        root: plain.clone(),
    };
    let err = not_repo.fails(&["show", "latest"], 4);
    assert!(err.contains("not a VML repository"), "{err}");
    not_repo.fails(&["save", s(wa)], 4);
    not_repo.fails(&["init"], 7);
    assert_eq!(fs::read(plain.join("notes.txt")).unwrap(), b"hello");
    repo.fails(&["init"], 7);
    expect_failure(
        Command::new(vrepo_bin())
            .args(["list"])
            .env_remove("VREPO_REPOSITORY"),
        2,
    );

    // Entries.
    for args in [
        &["show", "E99"][..],
        &["show", "nosuchtag"],
        &["deps", "E3"],
        &["diff", "E1", "E9"],
        &["cat", "E7", "vm.vmx"],
        &["build", "E99", s(&x.path("never"))],
        &["save", s(wa), "--parent", "E42"],
    ] {
        repo.fails(args, 4);
    }
    assert!(!x.path("never").exists());

    // Working areas.
    repo.fails(&["save", s(&x.path("missing"))], 4);
    let empty = x.path("empty");
    fs::create_dir(&empty).unwrap();
    let err = repo.fails(&["save", s(&empty)], 4);
    assert!(err.contains(".vmx"), "{err}");
    let two = keep(wa, &x.path("two"));
    fs::copy(two.join("vm.vmx"), two.join("other.vmx")).unwrap();
    let err = repo.fails(&["save", s(&two)], 7);
    assert!(err.contains("other.vmx"), "{err}");
    let locked = keep(wa, &x.path("locked"));
    fs::create_dir(locked.join("vm.vmx.lck")).unwrap();
    repo.fails(&["save", s(&locked)], 7);
    let gone_disk = keep(wa, &x.path("gone-disk"));
    fs::remove_file(gone_disk.join("disk.vmdk")).unwrap();
    repo.fails(&["save", s(&gone_disk)], 4);

    // Disks that leave the working area: a symbolic link, an absolute path, `../`.
    let outside = x.path("outside.vmdk");
    fs::copy(wa.join("disk.vmdk"), &outside).unwrap();
    let linked = keep(wa, &x.path("linked"));
    fs::remove_file(linked.join("disk.vmdk")).unwrap();
    std::os::unix::fs::symlink(&outside, linked.join("disk.vmdk")).unwrap();
    repo.fails(&["save", s(&linked)], 7);
    for name in [s(&outside), "../outside.vmdk"] {
        let w = keep(wa, &x.path("named-outside"));
        write_vmx(&w, name);
        repo.fails(&["save", s(&w)], 7);
        fs::remove_dir_all(&w).unwrap();
    }

    // Build into a non-empty folder without --force: refused, the folder untouched.
    let busy = x.path("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("vm.nvram"), b"mine").unwrap();
    let err = repo.fails(&["build", "E1", s(&busy)], 7);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(busy.join("vm.nvram")).unwrap(), b"mine");
    assert_eq!(files_of(&busy).len(), 1);
    // A build target that is a file.
    repo.fails(&["build", "E1", s(&busy.join("vm.nvram"))], 7);

    // A repository whose tmp/ (where leftovers are deleted) is a link to another folder.
    let r = x.copy_repo("linked-tmp");
    let victim = x.path("victim");
    fs::create_dir_all(victim.join("photos")).unwrap();
    fs::write(victim.join("precious"), b"keep me").unwrap();
    fs::remove_dir(r.root.join("tmp")).unwrap();
    std::os::unix::fs::symlink(&victim, r.root.join("tmp")).unwrap();
    r.fails(&["list"], 3);
    r.fails(&["save", s(wa)], 3);
    assert_eq!(fs::read(victim.join("precious")).unwrap(), b"keep me");
    assert!(victim.join("photos").is_dir());

    // An entry whose parent was deleted by hand: it cannot be built, the rest can.
    let r = x.copy_repo("orphan");
    fs::remove_dir_all(r.root.join("entries/E1")).unwrap();
    let err = r.fails(&["build", "E2", s(&x.path("orphan-b"))], 3);
    assert!(err.contains("E1"), "{err}");
    r.fails(&["show", "E1"], 4);
    r.fails(&["save", s(wa), "--parent", "E2"], 3);
    let tree = r.stdout(&["tree"]);
    assert!(tree.starts_with("vm wa\nE2 "), "{tree}");
    assert!(tree.contains("(its parent E1 is missing)"), "{tree}");
    assert_eq!(r.names(), ["E2"]);

    x.intact();
}

#[test]
fn broken_chains_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));

    // A missing parent link.
    let wa = make_vm(&t.path().join("wa"), 16);
    qemu_child(&wa, "disk.vmdk", "disk-000001.vmdk");
    write_vmx(&wa, "disk-000001.vmdk");
    fs::remove_file(wa.join("disk.vmdk")).unwrap();
    let err = repo.fails(&["save", s(&wa)], 4);
    assert!(err.contains("disk.vmdk"), "{err}");

    // A parentCID that is not the parent's CID.
    let wb = t.path().join("wb");
    fs::create_dir(&wb).unwrap();
    let mut g = Grains::new();
    g.insert(3, esxgen::data_grain(DeltaKind::Cowd, 3));
    let links = esxgen::write_chain(
        &wb,
        "vm",
        &rand_bytes(5, MIB as usize),
        &[(DeltaKind::Cowd, g.clone()), (DeltaKind::Cowd, g)],
    );
    write_vmx(&wb, "vm-000002.vmdk");
    fs::write(wb.join("vm.nvram"), b"nv").unwrap();
    repo.save(&wb, &[]); // intact, it saves
    esxgen::edit_descriptor(
        &links[2],
        &format!("parentCID={:08x}", links[1].cid),
        "parentCID=0badc1d0",
    );
    repo.fails(&["save", s(&wb)], 3);
    assert_eq!(repo.names(), ["E1"]);
}

#[test]
fn build_never_writes_through_a_symlinked_folder() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    // The disk in a subfolder named to sort after the other files, so they would be renamed
    // into place first.
    let wa = t.path().join("wa");
    fs::create_dir_all(wa.join("zdisks")).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        s(&wa.join("zdisks/disk.vmdk")),
        "16M",
    ]);
    guest_write(&wa.join("zdisks/disk.vmdk"), 0, MIB, 51);
    write_vmx(&wa, "zdisks/disk.vmdk");
    fs::write(wa.join("vm.nvram"), b"nvram").unwrap();
    let e = repo.save(&wa, &[]);
    assert!(
        e["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "zdisks/disk.vmdk"),
        "{}",
        e["files"]
    );

    let dest = t.path().join("dest");
    repo.build("E1", &dest, &[]);
    assert_same_files(&wa, &dest);
    // Now the subfolder is a link to elsewhere, and the other files are the user's.
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::remove_dir_all(dest.join("zdisks")).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("zdisks")).unwrap();
    fs::write(dest.join("vm.nvram"), b"user's").unwrap();
    let before = keep(&dest, &t.path().join("before"));
    let err = repo.fails(&["build", "E1", s(&dest), "--force"], 7);
    assert!(err.contains("zdisks"), "{err}");
    assert!(
        files_of(&outside).is_empty(),
        "nothing written through the link"
    );
    assert_same_files(&before, &dest);

    // A folder where a file of the entry goes: refused before anything is replaced.
    fs::remove_file(dest.join("zdisks")).unwrap();
    fs::remove_file(dest.join("vm.vmx")).unwrap();
    fs::create_dir(dest.join("vm.vmx")).unwrap();
    let before = keep(&dest, &t.path().join("before2"));
    repo.fails(&["build", "E1", s(&dest), "--force"], 7);
    assert_same_files(&before, &dest);
}

/// Edit `entries/NAME/entry.json` of `repo` as JSON.
fn edit_entry(repo: &Repo, name: &str, f: impl FnOnce(&mut Value)) {
    let p = repo.root.join("entries").join(name).join("entry.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    let bytes = serde_json::to_vec_pretty(&v).unwrap();
    fs::write(&p, &bytes).unwrap();
    // Keep its checksum right, so that validation itself is what is tested.
    fs::write(
        p.with_file_name("entry.json.b3"),
        format!("{}\n", blake3::hash(&bytes).to_hex()),
    )
    .unwrap();
}

#[test]
fn hostile_entry_json_is_refused_and_writes_nothing_outside() {
    let x = two_entries();
    let abs = x.path("abs-evil");
    let abs_s = s(&abs).to_owned();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "dotdot",
            "E2",
            Box::new(|v| v["files"][2]["path"] = "../evil".into()),
        ),
        (
            "dotdot-deep",
            "E2",
            Box::new(|v| v["files"][0]["path"] = "a/../../evil".into()),
        ),
        (
            "absolute",
            "E2",
            Box::new(move |v| v["files"][1]["path"] = abs_s.clone().into()),
        ),
        (
            "overlap",
            "E2",
            Box::new(|v| v["files"][1]["offset"] = v["files"][0]["offset"].clone()),
        ),
        (
            "past-end",
            "E2",
            Box::new(|v| v["files"][2]["size"] = (1u64 << 40).into()),
        ),
        ("unknown-field", "E2", Box::new(|v| v["extra"] = 1.into())),
        (
            "unknown-file-field",
            "E2",
            Box::new(|v| v["files"][0]["owner"] = "root".into()),
        ),
        (
            "parent-later",
            "E1",
            Box::new(|v| {
                v["parent"] = "E2".into();
                v["mode"] = "incremental".into();
            }),
        ),
        ("parent-self", "E2", Box::new(|v| v["parent"] = "E2".into())),
        (
            "parent-missing",
            "E2",
            Box::new(|v| v["parent"] = "E0".into()),
        ),
        ("renamed", "E2", Box::new(|v| v["name"] = "E1".into())),
        (
            "file-and-folder",
            "E2",
            Box::new(|v| v["files"][0]["path"] = "vm.nvram/x".into()),
        ),
        (
            "empty-component",
            "E2",
            Box::new(|v| v["files"][0]["path"] = "a//disk.vmdk".into()),
        ),
    ];
    for (label, entry, edit) in cases {
        let r = x.copy_repo(&format!("repo-{label}"));
        edit_entry(&r, entry, edit);
        let sandbox = x.path(&format!("sandbox-{label}"));
        fs::create_dir(&sandbox).unwrap();
        let dest = sandbox.join("wa");
        let err = r.fails(&["build", "E2", s(&dest)], 3);
        assert!(err.contains("entry"), "{label}: {err}");
        r.fails(&["show", entry], 3);
        r.fails(&["cat", "E2", "vm.vmx"], 3);
        r.fails(&["save", s(&x.wa), "--parent", "E2"], 3);
        // Nothing anywhere but an empty working area at most.
        let left = files_of(&sandbox);
        assert!(left.is_empty(), "{label}: {left:?}");
        assert!(!x.path("evil").exists() && !abs.exists(), "{label}");
        assert!(!x.t.path().parent().unwrap().join("evil").exists());
    }
    x.intact();
}

fn flip(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    let at = (at as usize).min(b.len() - 1);
    b[at] ^= 0x10;
    fs::write(path, b).unwrap();
}

#[test]
fn flipped_bytes_in_stored_files_fail_loudly_never_wrong_bytes() {
    let x = two_entries();
    let mut cases = Vec::new();
    for entry in ["E1", "E2"] {
        let delta = x.repo.root.join("entries").join(entry).join("delta.vdelta");
        let n = fs::metadata(&delta).unwrap().len();
        for at in [20, n / 3, n / 2, n - 40, n - 1] {
            cases.push((entry, "delta.vdelta", at));
        }
        for file in ["signature.zst", "chunks.bin"] {
            let n = fs::metadata(x.repo.root.join("entries").join(entry).join(file))
                .unwrap()
                .len();
            cases.push((entry, file, n / 2));
            cases.push((entry, file, n - 1));
        }
    }
    for (i, (entry, file, at)) in cases.into_iter().enumerate() {
        let label = format!("{entry} {file} byte {at}");
        let r = x.copy_repo(&format!("repo-{i}"));
        flip(&r.root.join("entries").join(entry).join(file), at);
        let dest = x.path(&format!("b-{i}"));
        let o = r.cmd().args(["build", "E2", s(&dest)]).output().unwrap();
        match o.status.code() {
            Some(0) => {
                assert_ne!(file, "delta.vdelta", "{label}: a damaged delta built");
                assert_same_files(&x.s2, &dest);
            }
            Some(3) => {
                assert!(
                    files_of(&dest).is_empty(),
                    "{label}: a failed build leaves nothing"
                )
            }
            c => panic!(
                "{label}: build exit {c:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        }
        // The next save from the damaged entry, which reads its block and chunk digests.
        let wa = keep(&x.s2, &x.path(&format!("wa-{i}")));
        evolve(&wa, "disk.vmdk", 9);
        let o = r
            .cmd()
            .args(["--json", "save", s(&wa), "--parent", entry])
            .output()
            .unwrap();
        match o.status.code() {
            Some(0) => {
                assert_eq!(file, "delta.vdelta", "{label}: saved on damaged digests");
            }
            Some(3) => {}
            c => panic!(
                "{label}: save exit {c:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        }
        if file == "signature.zst" {
            r.fails(&["diff", "E1", "E2"], 3);
        }
    }
    x.intact();
}

// ---------------------------------------------------------------------------------------------
// 8. What build gives back besides bytes.

#[test]
fn build_keeps_mtimes_modes_and_holes_and_is_repeatable() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = t.path().join("wa");
    fs::create_dir(&wa).unwrap();
    let disk = wa.join("disk.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        s(&disk),
        "64M",
    ]);
    guest_write(&disk, 0, MIB, 61);
    guest_write(&disk, 40 * MIB, MIB, 62);
    write_vmx(&wa, "disk.vmdk");
    fs::write(wa.join("vm.nvram"), rand_bytes(63, 8684)).unwrap();
    fs::set_permissions(wa.join("vm.nvram"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(wa.join("vm.vmx"), fs::Permissions::from_mode(0o750)).unwrap();
    set_mtime(
        &wa.join("vm.nvram"),
        SystemTime::UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789),
    );
    let flat = wa.join("disk-flat.vmdk");
    let m = fs::metadata(&flat).unwrap();
    assert_eq!(m.len(), 64 * MIB);
    assert!(m.blocks() * 512 < 8 * MIB, "the source is sparse");
    repo.save(&wa, &[]);

    let dest = t.path().join("dest");
    repo.build("E1", &dest, &[]);
    assert_same_files(&wa, &dest);
    let m = fs::metadata(dest.join("disk-flat.vmdk")).unwrap();
    assert_eq!(m.len(), 64 * MIB);
    assert!(
        m.blocks() * 512 < 8 * MIB,
        "the built flat extent stays sparse: {} bytes allocated",
        m.blocks() * 512
    );
    assert_disk_ok(&disk, &dest.join("disk.vmdk"));

    // Again over itself, and over a damaged copy: the same files.
    repo.build("E1", &dest, &["--force"]);
    assert_same_files(&wa, &dest);
    fs::write(dest.join("vm.nvram"), b"scribbled").unwrap();
    fs::set_permissions(dest.join("vm.vmx"), fs::Permissions::from_mode(0o666)).unwrap();
    guest_write(&dest.join("disk.vmdk"), 20 * MIB, MIB, 64);
    repo.build("E1", &dest, &["--force"]);
    assert_same_files(&wa, &dest);
    let m = fs::metadata(dest.join("disk-flat.vmdk")).unwrap();
    assert!(m.blocks() * 512 < 8 * MIB, "still sparse after --force");
}

// ---------------------------------------------------------------------------------------------
// Quiet when piped, and the working area never touched by save.

#[test]
fn save_leaves_the_working_area_alone_and_prints_nothing_on_a_pipe() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 16);
    let before = keep(&wa, &t.path().join("before"));
    for args in [&["save", s(&wa)][..], &["save", s(&wa), "--full"]] {
        // No --quiet: progress is drawn only on a terminal.
        let o = run(Command::new(vrepo_bin())
            .arg("-r")
            .arg(&repo.root)
            .args(args));
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
        assert_same_files(&before, &wa);
    }
    let o = run(Command::new(vrepo_bin()).arg("-r").arg(&repo.root).args([
        "build",
        "E2",
        s(&t.path().join("b")),
    ]));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_files(&before, &t.path().join("b"));
}

// ---------------------------------------------------------------------------------------------
// Crash safety: save and build killed at many points.

fn kill9_after(mut cmd: Command, after: Duration) -> bool {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let done = child.try_wait().unwrap().is_some();
    if !done {
        child.kill().unwrap(); // SIGKILL
    }
    child.wait().unwrap();
    done
}

#[test]
fn killed_saves_and_builds_leave_no_half_entry() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 32);
    guest_write(&wa.join("disk.vmdk"), 4 * MIB, 8 * MIB, 71);
    let state = keep(&wa, &t.path().join("state"));

    let started = std::time::Instant::now();
    repo.save(&wa, &["--full"]);
    let save_time = started.elapsed();
    let mut expected = vec!["E1".to_owned()];
    for k in 1..=4u32 {
        let mut cmd = repo.cmd();
        cmd.args(["save", s(&wa), "--full"]);
        let finished = kill9_after(cmd, save_time * k / 4);
        let next = format!("E{}", expected.len() + 1);
        // Only whole entries are visible; leftovers are gone after the next command. A save
        // killed between its commit and its exit has landed, so its entry may be there even
        // when the kill came first; a save that finished must have landed.
        let names = repo.names();
        let mut landed = expected.clone();
        landed.push(next);
        if finished || names == landed {
            expected = landed;
        }
        assert_eq!(names, expected, "after a save killed at {k}/4");
        let tmp: Vec<_> = fs::read_dir(repo.root.join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "leftovers in tmp/: {tmp:?}");
    }
    let refs: Vec<(&str, &Path)> = expected
        .iter()
        .map(|n| (n.as_str(), state.as_path()))
        .collect();
    assert_entries_build(&repo, &refs, t.path());

    // Build killed: what is in the working area is whole files of the entry, never a torn
    // one; the next build cleans up and finishes the job.
    let dest = t.path().join("dest");
    let started = std::time::Instant::now();
    repo.build("E1", &dest, &[]);
    let build_time = started.elapsed();
    fs::remove_dir_all(&dest).unwrap();
    for k in 1..=3u32 {
        let mut cmd = repo.cmd();
        cmd.args(["build", "E1", s(&dest), "--force"]);
        kill9_after(cmd, build_time * k / 3);
        if dest.exists() {
            for rel in files_of(&dest).keys() {
                if rel.starts_with(".vrepo-") {
                    continue;
                }
                assert!(
                    cmp(&state.join(rel), &dest.join(rel)),
                    "{rel}: a torn file after a build killed at {k}/3"
                );
            }
        }
        repo.build("E1", &dest, &["--force"]);
        assert_same_files(&state, &dest);
        fs::remove_dir_all(&dest).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Usage errors, and saves running at the same time.

#[test]
fn usage_errors_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 16);
    for args in [
        &["frobnicate"][..],
        &["save", s(&wa), "--full", "--incremental"],
        &["save", s(&wa), "--incremental", "--differential"],
        &["save", s(&wa), "--full", "--parent", "E1"],
        &["save", s(&wa), "--tag", "no spaces"],
        &["save", s(&wa), "--tag", ""],
        &["save", s(&wa), "--level", "23"],
        &["save", s(&wa), "--level", "-8"],
        &["build", "E1"],
    ] {
        let o = repo.cmd().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(o.stdout.is_empty());
    }
    let r2 = Repo {
        root: t.path().join("r2"),
    };
    r2.fails(&["init", "--block-size", "1000"], 2);
    assert!(!r2.root.join("vrepo.json").exists());
    assert!(repo.names().is_empty(), "nothing saved");
}

#[test]
fn saves_at_the_same_time_each_get_their_own_entry() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let was: Vec<PathBuf> = (0..3)
        .map(|i| {
            let wa = make_vm(&t.path().join(format!("wa{i}")), 16);
            guest_write(&wa.join("disk.vmdk"), 4 * MIB, 2 * MIB, 80 + i);
            wa
        })
        .collect();
    let children: Vec<_> = was
        .iter()
        .map(|wa| {
            repo.cmd()
                .args(["--json", "save", s(wa)])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut built = Vec::new();
    for (wa, c) in was.iter().zip(children) {
        let o = c.wait_with_output().unwrap();
        match o.status.code() {
            Some(0) => {
                let e: Value = serde_json::from_slice(&o.stdout).unwrap();
                assert_eq!(e["source"].as_str(), Some(s(&wa.canonicalize().unwrap())));
                built.push((e["name"].as_str().unwrap().to_owned(), wa.clone()));
            }
            // The repository is locked by another save.
            Some(8) => {}
            c => panic!("save exit {c:?}: {}", String::from_utf8_lossy(&o.stderr)),
        }
    }
    assert!(!built.is_empty());
    let mut names: Vec<String> = built.iter().map(|b| b.0.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), built.len(), "distinct entries");
    assert_eq!(repo.names().len(), built.len());
    let refs: Vec<(&str, &Path)> = built
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_path()))
        .collect();
    assert_entries_build(&repo, &refs, t.path());
}

#[test]
fn swap_files_and_logs() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"));
    let wa = make_vm(&t.path().join("wa"), 16);
    fs::write(wa.join("vm-4f2a.vswp"), rand_bytes(90, 100_000)).unwrap();
    fs::write(wa.join("vmware.log"), b"log line\n").unwrap();
    let o = repo.ok(&["--json", "save", s(&wa)]);
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("vm-4f2a.vswp"), "skips are reported: {err}");
    assert_eq!(
        e["skipped"],
        serde_json::json!([{"path": "vm-4f2a.vswp", "reason": "swap file"}])
    );
    let b = t.path().join("b");
    repo.build("E1", &b, &[]);
    assert!(!b.join("vm-4f2a.vswp").exists());
    assert!(cmp(&wa.join("vmware.log"), &b.join("vmware.log")));
}

#[test]
fn other_block_sizes() {
    let t = tempfile::tempdir().unwrap();
    for bs in ["65536", "1048576"] {
        let root = t.path().join(format!("repo-{bs}"));
        let repo = Repo { root: root.clone() };
        repo.ok(&["init", "--block-size", bs]);
        let wa = make_vm(&t.path().join(format!("wa-{bs}")), 16);
        repo.save(&wa, &[]);
        let s1 = keep(&wa, &t.path().join(format!("s1-{bs}")));
        evolve(&wa, "disk.vmdk", 3);
        let e2 = repo.save(&wa, &[]);
        assert_eq!(e2["volume"]["block_size"].as_u64().unwrap().to_string(), bs);
        assert_entries_build(&repo, &[("E1", &s1), ("E2", &wa)], t.path());
    }
}

/// Write `len` bytes of text (compressible, but not trivially: numbered lines of words picked
/// at random) at guest offset `off` of `disk`.
fn guest_write_text(disk: &Path, off: u64, len: u64, seed: u64) {
    const WORDS: [&str; 16] = [
        "vmware", "disk", "sector", "kernel", "grain", "extent", "library", "symbol", "share",
        "locale", "font", "icon", "python", "module", "config", "backup",
    ];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut text = Vec::with_capacity(len as usize + 64);
    let mut n = 0u64;
    while (text.len() as u64) < len {
        n += 1;
        text.extend_from_slice(format!("{n:08} ").as_bytes());
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
            text.push(if x.is_multiple_of(5) { b'_' } else { b' ' });
        }
        text.extend_from_slice(format!("{:x}\n", x % 65521).as_bytes());
    }
    text.truncate(len as usize);
    let src = tempfile::NamedTempFile::new().unwrap();
    fs::write(src.path(), text).unwrap();
    qemu_io(
        disk,
        "vmdk",
        &[&format!("write -q -s {} {off} {len}", s(src.path()))],
    );
}

#[test]
fn new_data_is_stored_at_level_2_in_full_entries_and_at_minus_1_in_partial_ones() {
    // The same two states saved (full, then incremental) into repositories with and without
    // --level: the default must store exactly what --level 2 stores for the full entry and
    // what --level -1 stores for the incremental one (zstd's output is a function of its
    // level and input), and the two levels must differ on this data.
    let t = tempfile::tempdir().unwrap();
    let s1 = make_vm(&t.path().join("s1"), 16);
    guest_write_text(&s1.join("disk.vmdk"), 3 * MIB, 4 * MIB, 1);
    let s2 = keep(&s1, &t.path().join("s2"));
    guest_write_text(&s2.join("disk.vmdk"), 9 * MIB, 2 * MIB, 2);
    let delta_sizes = |name: &str, full: &[&str], incremental: &[&str]| -> (u64, u64) {
        let dir = t.path().join(name);
        let repo = Repo::init(&dir.join("repo"));
        let wa = keep(&s1, &dir.join("vm"));
        let e1 = repo.save_name(&wa, full);
        fs::copy(s2.join("disk.vmdk"), wa.join("disk.vmdk")).unwrap();
        let e2 = repo.save_name(&wa, incremental);
        assert_eq!(repo.show(&e2)["mode"], "incremental");
        let size = |e: &str| {
            let delta = dir.join("repo/entries").join(e).join("delta.vdelta");
            fs::metadata(delta).unwrap().len()
        };
        (size(&e1), size(&e2))
    };
    let default = delta_sizes("default", &[], &[]);
    let fast = delta_sizes("fast", &["--level", "-1"], &["--level", "-1"]);
    let two = delta_sizes("two", &["--level", "2"], &["--level", "2"]);
    assert_eq!(default.0, two.0, "a full entry's default level is 2");
    assert_eq!(default.1, fast.1, "a partial entry's default level is -1");
    // 4 MiB of text, the rest random: level 2 stores at least 50 kB less.
    assert!(
        two.0 + 50_000 < fast.0,
        "level 2 stores less: {two:?} {fast:?}"
    );
    assert!(two.1 < fast.1, "{two:?} {fast:?}");

    // Recompression: consolidate --level rewrites the full entry E1 of the level -1 repository
    // at level 19; it shrinks, and both entries (E2 stands on E1's volume) build as before.
    let repo = Repo {
        root: t.path().join("fast/repo"),
    };
    let before: Vec<PathBuf> = ["E1", "E2"]
        .iter()
        .map(|e| {
            let d = t.path().join(format!("before-{e}"));
            repo.build(e, &d, &[]);
            d
        })
        .collect();
    repo.ok(&["consolidate", "E1", "--level", "19"]);
    let e1 = fs::metadata(t.path().join("fast/repo/entries/E1/delta.vdelta"))
        .unwrap()
        .len();
    assert!(e1 + 100_000 < fast.0, "recompressed {e1}, was {}", fast.0);
    assert!(repo.show("E1")["parent"].is_null());
    for (e, b) in ["E1", "E2"].iter().zip(&before) {
        let d = t.path().join(format!("after-{e}"));
        repo.build(e, &d, &[]);
        for f in ["disk.vmdk", "vm.vmx", "vm.nvram"] {
            assert_eq!(
                fs::read(d.join(f)).unwrap(),
                fs::read(b.join(f)).unwrap(),
                "{e} {f}"
            );
        }
    }
    repo.ok(&["verify", "--read-data"]);
    // Without --level, consolidating a full entry changes nothing.
    let o = repo.ok(&["consolidate", "E1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("full entry already"));
}
