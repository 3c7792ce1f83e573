//! Helpers shared by the vrepo rewrite, model, corruption, locking and script tests: the
//! binary, a repository driven through it, sample VMs made with qemu-img and qemu-io, copies of
//! saved states and byte-for-byte comparisons.
#![allow(dead_code)]

use crate::common::{fresh_bin, qemu_img, qemu_io, run};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const MIB: u64 = 1 << 20;

pub fn vrepo_bin() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| fresh_bin("vrepo", "vrepo"))
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A repository, driven through the binary.
#[derive(Clone)]
pub struct Repo {
    /// The folder, or for one on object storage its `s3:URL` (see [`Repo::on`]).
    pub root: PathBuf,
    /// Set on every command (the store's credentials).
    pub env: Vec<(String, String)>,
}

impl Repo {
    pub fn init(root: &Path, extra: &[&str]) -> Repo {
        let r = Repo::at(root);
        let mut a = vec!["init"];
        a.extend_from_slice(extra);
        r.ok(&a);
        r
    }

    pub fn at(root: &Path) -> Repo {
        Repo {
            root: root.to_path_buf(),
            env: Vec::new(),
        }
    }

    /// A repository at `location` (`s3:URL`), reached with `env` (credentials, region); not
    /// made yet.
    pub fn on(location: &str, env: Vec<(String, String)>) -> Repo {
        Repo {
            root: PathBuf::from(location),
            env,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(vrepo_bin());
        c.arg("-r").arg(&self.root).arg("--quiet");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        run(self.cmd().args(args))
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run vrepo")
    }

    pub fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8(self.ok(args).stdout).expect("UTF-8 output")
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let text = self.stdout(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// `save --json WORKAREA EXTRA...`: the new entry.
    pub fn save(&self, wa: &Path, extra: &[&str]) -> Value {
        let mut a = vec!["save", s(wa)];
        a.extend_from_slice(extra);
        self.json(&a)
    }

    pub fn save_name(&self, wa: &Path, extra: &[&str]) -> String {
        self.save(wa, extra)["name"].as_str().unwrap().to_owned()
    }

    pub fn build(&self, entry: &str, dest: &Path, extra: &[&str]) -> Value {
        let mut a = vec!["build", entry, s(dest)];
        a.extend_from_slice(extra);
        self.json(&a)
    }

    /// Run `args`, which must fail with `code` and one line on stderr; returns it.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.output(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(code),
            "vrepo {args:?}: expected exit {code}; stderr: {err}"
        );
        assert!(o.stdout.is_empty(), "vrepo {args:?}: stdout on failure");
        assert!(err.starts_with("vrepo: "), "{args:?}: {err}");
        err.trim_end().to_owned()
    }

    /// `list --json`: (name, parent, mode) of every entry, oldest first.
    pub fn list(&self) -> Vec<(String, Option<String>, String)> {
        self.stdout(&["--json", "list"])
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["name"].as_str().unwrap().to_owned(),
                    v["parent"].as_str().map(str::to_owned),
                    v["mode"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.list().into_iter().map(|(n, _, _)| n).collect()
    }

    pub fn entry_file(&self, entry: &str, file: &str) -> PathBuf {
        self.root.join("entries").join(entry).join(file)
    }

    /// Start `vrepo ARGS` with stdout and stderr piped (for commands run at the same time).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.cmd()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start vrepo")
    }

    /// Change entry `name`'s `entry.json` by `f`, keeping `entry.json.b3` right (as an older
    /// version, or a hand edit that vrepo must still check, would leave it).
    pub fn edit_entry_json(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let p = self.entry_file(name, "entry.json");
        let mut v: Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
        self.write_entry_json(name, &text);
    }

    /// Write `text` as entry `name`'s `entry.json`, with its `entry.json.b3`.
    pub fn write_entry_json(&self, name: &str, text: &str) {
        fs::write(self.entry_file(name, "entry.json"), text).unwrap();
        fs::write(
            self.entry_file(name, "entry.json.b3"),
            format!("{}\n", blake3::hash(text.as_bytes()).to_hex()),
        )
        .unwrap();
    }
}

/// Set entry `name`'s time in its `entry.json` (the rest of the text as it is), keeping
/// `entry.json.b3` right: an entry saved at another time.
pub fn set_time(repo: &Repo, name: &str, time: &str) {
    let p = repo.entry_file(name, "entry.json");
    let text = fs::read_to_string(&p).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let old = format!("\"time\": {}", v["time"]);
    assert_eq!(text.matches(&old).count(), 1, "{name}: {old} in entry.json");
    repo.write_entry_json(name, &text.replace(&old, &format!("\"time\": \"{time}\"")));
}

/// Deterministic incompressible bytes.
pub fn rand_bytes(seed: u64, len: usize) -> Vec<u8> {
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

/// A small seeded RNG (xorshift64*), so a failing case is replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

pub fn write_vmx(dir: &Path, disk: &str, name: &str) {
    let text = format!(
        ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\n\
         displayName = \"{name}\"\nguestOS = \"otherlinux-64\"\n\
         uuid.bios = \"56 4d 0a 1b 2c 3d 4e 5f-60 71 82 93 a4 b5 c6 d7\"\n\
         nvram = \"vm.nvram\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n\
         scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"{disk}\"\n"
    );
    fs::write(dir.join("vm.vmx"), text).unwrap();
}

/// Write `len` incompressible bytes at guest offset `off` of `disk` (qemu-io).
pub fn guest_write(disk: &Path, off: u64, len: u64, seed: u64) {
    let src = tempfile::NamedTempFile::new().unwrap();
    fs::write(src.path(), rand_bytes(seed, len as usize)).unwrap();
    qemu_io(
        disk,
        "vmdk",
        &[&format!("write -q -s {} {off} {len}", s(src.path()))],
    );
}

/// A working area `dir`: `vm.vmx`, `vm.nvram` and `disk.vmdk` (monolithicSparse, `disk_mib`
/// MiB, with `data_mib` MiB of incompressible data from offset 0 and 1 MiB at the middle).
pub fn make_vm(dir: &Path, disk_mib: u64, data_mib: u64, seed: u64) -> PathBuf {
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
    // In pieces of at most 8 MiB, so qemu-io's source files stay small.
    let mut at = 0;
    while at < data_mib {
        let n = (data_mib - at).min(8);
        guest_write(&disk, at * MIB, n * MIB, seed * 1000 + at);
        at += n;
    }
    if disk_mib / 2 >= data_mib {
        guest_write(&disk, disk_mib / 2 * MIB, MIB, seed * 1000 + 999);
    }
    write_vmx(dir, "disk.vmdk", "vrepo test");
    fs::write(dir.join("vm.nvram"), rand_bytes(seed + 3, 8684)).unwrap();
    dir.to_path_buf()
}

/// Qemu-img: a child link `child` of `parent` in `dir`.
pub fn qemu_child(dir: &Path, parent: &str, child: &str) {
    run(Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk", child,
        ])
        .current_dir(dir));
}

/// A running VM: `disk.vmdk` frozen by snapshot "before" (uid 1), `disk-000001.vmdk` the
/// running delta the `.vmx` names, the snapshot's `.vmsn`, and a lock folder.
pub fn make_running_vm(dir: &Path, disk_mib: u64, seed: u64) -> PathBuf {
    let wa = make_vm(dir, disk_mib, 2, seed);
    qemu_child(&wa, "disk.vmdk", "disk-000001.vmdk");
    guest_write(&wa.join("disk-000001.vmdk"), 0, MIB, seed + 31);
    write_vmx(&wa, "disk-000001.vmdk", "vrepo test");
    fs::write(
        wa.join("vm.vmsd"),
        ".encoding = \"UTF-8\"\nsnapshot.lastUID = \"1\"\nsnapshot.current = \"1\"\n\
         snapshot0.uid = \"1\"\nsnapshot0.filename = \"vm-Snapshot1.vmsn\"\n\
         snapshot0.displayName = \"before\"\nsnapshot0.numDisks = \"1\"\n\
         snapshot0.disk0.fileName = \"disk.vmdk\"\nsnapshot0.disk0.node = \"scsi0:0\"\n\
         snapshot.numSnapshots = \"1\"\n",
    )
    .unwrap();
    fs::write(wa.join("vm-Snapshot1.vmsn"), rand_bytes(seed + 32, 30000)).unwrap();
    fs::create_dir(wa.join("vm.vmx.lck")).unwrap();
    fs::write(wa.join("vm.vmx.lck/M01234.lck"), b"lock").unwrap();
    wa
}

/// A copy of a working area as it is now (`cp -a`: mtimes, modes, holes).
pub fn keep(wa: &Path, to: &Path) -> PathBuf {
    run(Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(wa)
        .arg(to));
    to.to_path_buf()
}

/// Regular files under `dir`, relative, with their metadata.
pub fn files_of(dir: &Path) -> BTreeMap<String, fs::Metadata> {
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
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

pub fn same_bytes(a: &Path, b: &Path) -> bool {
    let (ma, mb) = (fs::metadata(a), fs::metadata(b));
    match (ma, mb) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => fs::read(a).unwrap() == fs::read(b).unwrap(),
        _ => false,
    }
}

/// `built` holds exactly the files of `expected`, byte for byte, with their mtimes and modes.
pub fn assert_same_files(expected: &Path, built: &Path, label: &str) {
    let (e, b) = (files_of(expected), files_of(built));
    assert_eq!(
        e.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{label}: {} against {}",
        built.display(),
        expected.display()
    );
    for (rel, me) in &e {
        let mb = &b[rel];
        assert!(
            same_bytes(&expected.join(rel), &built.join(rel)),
            "{label}: {rel}: bytes differ from the saved state"
        );
        assert_eq!(
            (me.mtime(), me.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "{label}: {rel}: mtime"
        );
        assert_eq!(
            me.permissions().mode() & 0o7777,
            mb.permissions().mode() & 0o7777,
            "{label}: {rel}: mode"
        );
    }
}

/// Build `entry` into a new folder `dest` (removed first), compare with `state`, remove it.
pub fn assert_builds(repo: &Repo, entry: &str, state: &Path, dest: &Path) {
    if dest.exists() {
        fs::remove_dir_all(dest).unwrap();
    }
    let o = repo.output(&["build", entry, s(dest)]);
    assert!(
        o.status.success(),
        "build {entry}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_files(state, dest, &format!("build {entry}"));
    fs::remove_dir_all(dest).unwrap();
}

/// `payload` as vrepo seals its small bookkeeping files (docs/vrepo.md, "Sealed files"): a
/// last line `{"b3":"HEX"}` with the BLAKE3 of every byte before it.
pub fn sealed(payload: &str) -> String {
    format!(
        "{payload}{{\"b3\":\"{}\"}}\n",
        blake3::hash(payload.as_bytes()).to_hex()
    )
}

/// Names of what is in `REPO/tmp`.
pub fn tmp_contents(repo: &Repo) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(repo.root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Flip one bit of the byte at `at` of `path`.
pub fn flip(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    let at = (at as usize).min(b.len() - 1);
    b[at] ^= 0x10;
    fs::write(path, b).unwrap();
}

/// Cut `path` to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// A temporary folder on tmpfs when there is one (fsync is free there, and these tests fsync
/// a lot), else in the default place.
pub fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new()
            .prefix("vrepo-test-")
            .tempdir_in(shm)
        {
            return t;
        }
    }
    tempfile::tempdir().unwrap()
}
