//! `vrepo mount` (issue 18) on a real FUSE mount: every file under `entries/E*` equals a build
//! of the entry (full, incremental, differential, a 50-link chain), random reads equal the
//! built bytes, `guest/E*/DISK.raw` equals `vmdk-parse cat` of the built disk and a file dumped
//! from it with debugfs equals what was written into the guest, a damaged record fails only
//! the reads that need it (EIO), a prune started while mounted waits for the mount, entries
//! saved while mounted appear, and bad mount points are refused with one line.
//!
//! Needs /dev/fuse and fusermount3 (Debian's fuse3, installed by scripts/need.sh); outside CI
//! the tests are skipped when they are missing.

mod common;
mod vrepo_support;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vrepo_support::*;

/// Whether FUSE can be used here; in CI it must be.
fn fuse_ok() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "FUSE (/dev/fuse, fusermount3 from fuse3) is needed in CI"
        );
        eprintln!("skipped: no FUSE here");
    }
    ok
}

/// With FUSE here: a repository holding one save (E1) of a VM made by `make_vm` with these
/// sizes and seed, in a temporary folder.
fn saved_vm(disk_mib: u64, data_mib: u64, seed: u64) -> Option<(tempfile::TempDir, Repo, PathBuf)> {
    if !fuse_ok() {
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"), &[]);
    let wa = make_vm(&t.path().join("vm"), disk_mib, data_mib, seed);
    repo.save(&wa, &[]);
    Some((t, repo, wa))
}

/// A running `vrepo mount`, unmounted (and killed if need be) when dropped.
struct Mounted {
    child: Option<Child>,
    at: PathBuf,
}

impl Mounted {
    fn start(repo: &Repo, at: &Path, extra: &[&str]) -> Mounted {
        fs::create_dir_all(at).unwrap();
        let mut args = vec!["mount", s(at)];
        args.extend_from_slice(extra);
        let child = repo
            .cmd()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let m = Mounted {
            child: Some(child),
            at: at.to_path_buf(),
        };
        let t0 = Instant::now();
        while !at.join("entries").exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the mount did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    /// Stop with SIGTERM; what it printed on stderr, and its exit code.
    fn stop(mut self) -> (String, Option<i32>) {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let o = wait_for(&mut child, Duration::from_secs(20));
        (
            String::from_utf8_lossy(&o.stderr).into_owned(),
            o.status.code(),
        )
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("fusermount3")
            .args(["-u", "-q", "-z"])
            .arg(&self.at)
            .status();
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> std::process::Output {
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("the process did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = Vec::new();
    let mut err = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut out).unwrap();
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut err).unwrap();
    }
    std::process::Output {
        status: child.wait().unwrap(),
        stdout: out,
        stderr: err,
    }
}

fn is_mounted(at: &Path) -> bool {
    let canon = at.canonicalize().unwrap();
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(canon.to_str().unwrap()))
}

/// Every file of the built entry `dest` equals the mounted `entries/E*` folder's, with the
/// same names, sizes and mtimes.
fn assert_mount_matches(mounted: &Path, built: &Path, label: &str) {
    let want = files_of(built);
    let got = files_of(mounted);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{label}: names"
    );
    for (rel, m) in &want {
        let g = &got[rel];
        assert_eq!(m.len(), g.len(), "{label}: {rel}: size");
        assert_eq!(
            m.modified().unwrap(),
            g.modified().unwrap(),
            "{label}: {rel}: mtime"
        );
        assert!(
            same_bytes(&built.join(rel), &mounted.join(rel)),
            "{label}: {rel}: bytes"
        );
    }
}

#[test]
fn every_entry_reads_as_its_build_full_incremental_differential_and_a_50_link_chain() {
    let Some((t, repo, wa)) = saved_vm(24, 4, 1) else {
        return;
    };
    for n in 2..=51u64 {
        guest_write(&wa.join("disk.vmdk"), (n % 20) * MIB, 64 * 1024, 100 + n);
        let mode: &[&str] = if n == 51 { &["--differential"] } else { &[] };
        repo.save(&wa, mode);
    }
    let modes: Vec<String> = ["E1", "E2", "E51"]
        .iter()
        .map(|e| repo.json(&["show", e])["mode"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(modes, ["full", "incremental", "differential"]);
    let chain = repo.json(&["deps", "E50"])["chain"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(chain, 50, "E50 stands on a chain of {chain}");
    let mnt = t.path().join("mnt");
    let m = Mounted::start(&repo, &mnt, &[]);
    for e in ["E1", "E2", "E25", "E50", "E51"] {
        let dest = t.path().join(format!("built-{e}"));
        repo.build(e, &dest, &[]);
        assert_mount_matches(&mnt.join("entries").join(e), &dest, e);
        fs::remove_dir_all(&dest).unwrap();
    }
    // The VM's links.
    let vm = mnt.join("vms/vm");
    assert_eq!(
        fs::read_link(vm.join("latest")).unwrap(),
        Path::new("../../entries/E51")
    );
    assert!(same_bytes(
        &vm.join("latest/disk.vmdk"),
        &mnt.join("entries/E51/disk.vmdk")
    ));
    // Read-only.
    let w = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("entries/E1/vm.nvram"));
    assert!(w.is_err(), "opened for writing");
    let (err, code) = m.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
}

#[test]
fn random_reads_guest_images_and_a_file_dumped_with_debugfs() {
    if !fuse_ok() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // A guest with an ext4 file system holding a known file, as a monolithicSparse VMDK.
    let tree = t.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    let marker = rand_bytes(7, 300_000);
    fs::write(tree.join("etc/config.bin"), &marker).unwrap();
    fs::write(tree.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    let raw = t.path().join("fs.raw");
    fs::File::create(&raw).unwrap().set_len(32 * MIB).unwrap();
    let o = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wa = t.path().join("vm");
    fs::create_dir_all(&wa).unwrap();
    common::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        s(&raw),
        s(&wa.join("disk.vmdk")),
    ]);
    write_vmx(&wa, "disk.vmdk", "vm");
    fs::write(wa.join("vm.nvram"), rand_bytes(3, 8684)).unwrap();
    // A file with 6 MiB of zeros between two MiB of data: stored as a zero range.
    let mut big = rand_bytes(8, MIB as usize);
    big.resize(7 * MIB as usize, 0);
    big.extend(rand_bytes(9, MIB as usize));
    fs::write(wa.join("vm.vmem"), &big).unwrap();
    let repo = Repo::init(&t.path().join("repo"), &[]);
    repo.save(&wa, &[]);
    guest_write(&wa.join("disk.vmdk"), 20 * MIB, 256 * 1024, 9);
    repo.save(&wa, &[]);
    let built = t.path().join("built");
    repo.build("E2", &built, &[]);
    let mnt = t.path().join("mnt");
    let _m = Mounted::start(&repo, &mnt, &["--cache-mib", "1"]);

    // Random reads (offset, length) of the stored disk equal the built file's bytes.
    let want = fs::read(built.join("disk.vmdk")).unwrap();
    let f = fs::File::open(mnt.join("entries/E2/disk.vmdk")).unwrap();
    let mut rng = Rng::new(11);
    for _ in 0..300 {
        let off = rng.below(want.len() as u64 + 4096);
        let len = 1 + rng.below(300_000) as usize;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let start = (off as usize).min(want.len());
        let end = (start + len).min(want.len());
        assert_eq!(got, end - start, "read of {len} at {off}");
        assert!(buf[..got] == want[start..end], "bytes of {len} at {off}");
    }

    // The guest image equals vmdk-parse cat of the built disk, and debugfs reads the file
    // written into the guest out of it.
    let guest = mnt.join("guest/E2/disk.raw");
    assert_eq!(
        fs::read(&guest).unwrap(),
        common::vmdk_parse_cat(&built.join("disk.vmdk"))
    );
    let out = t.path().join("dumped");
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /etc/config.bin {}", out.display()))
        .arg(&guest)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read(&out).unwrap(), marker);
    // E1's guest too (what the file system was before the second save wrote over it).
    assert_eq!(fs::read(mnt.join("guest/E1/disk.raw")).unwrap(), {
        let mut r = fs::read(&raw).unwrap();
        r.truncate(32 * MIB as usize);
        r
    });

    // SEEK_HOLE/SEEK_DATA on a stored file find the zero range, so `cp --sparse` and backup
    // tools can skip it.
    use rustix::fs::{seek, SeekFrom as Whence};
    let vmem = fs::File::open(mnt.join("entries/E2/vm.vmem")).unwrap();
    assert_eq!(seek(&vmem, Whence::Data(0)).unwrap(), 0);
    assert_eq!(seek(&vmem, Whence::Hole(0)).unwrap(), MIB);
    assert_eq!(seek(&vmem, Whence::Data(MIB)).unwrap(), 7 * MIB);
    assert_eq!(seek(&vmem, Whence::Hole(7 * MIB)).unwrap(), 8 * MIB);
    assert_eq!(fs::read(mnt.join("entries/E2/vm.vmem")).unwrap(), big);
    // On the guest image, the holes are the disk's unallocated grains: qemu-img map of the
    // built disk says where data is, and SEEK_DATA/SEEK_HOLE agree with it range by range.
    let img = fs::File::open(&guest).unwrap();
    let o = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "vmdk"])
        .arg(built.join("disk.vmdk"))
        .output()
        .unwrap();
    let map: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // qemu-img splits ranges by where they lie in the file: merged here by kind.
    let mut ranges: Vec<(u64, u64, bool)> = Vec::new();
    for r in map.as_array().unwrap() {
        let (start, len) = (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap());
        let data = r["data"].as_bool().unwrap() && !r["zero"].as_bool().unwrap();
        match ranges.last_mut() {
            Some((_, l, d)) if *d == data => *l += len,
            _ => ranges.push((start, len, data)),
        }
    }
    assert!(ranges.len() >= 3, "{map}");
    for &(start, len, data) in &ranges {
        let whence = if data {
            Whence::Data(start)
        } else {
            Whence::Hole(start)
        };
        assert_eq!(seek(&img, whence).unwrap(), start, "{ranges:?}");
        if start + len < 32 * MIB {
            let next = if data {
                Whence::Hole(start)
            } else {
                Whence::Data(start)
            };
            assert_eq!(seek(&img, next).unwrap(), start + len, "{ranges:?}");
        }
    }
    let mut f = fs::File::open(mnt.join("entries/E2/vm.nvram")).unwrap();
    assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 8684);
}

#[test]
fn a_damaged_record_fails_only_the_reads_that_need_it() {
    let Some((t, repo, wa)) = saved_vm(16, 8, 4) else {
        return;
    };
    let built = t.path().join("built");
    repo.build("E1", &built, &[]);
    // A second entry whose entry.json is damaged: left out of the mount, with a line.
    repo.save(&wa, &["--full"]);
    let manifest = repo.entry_file("E2", "entry.json");
    let text = fs::read_to_string(&manifest)
        .unwrap()
        .replacen("full", "fulL", 1);
    fs::write(&manifest, text).unwrap();
    let mnt = t.path().join("mnt");
    let m = Mounted::start(&repo, &mnt, &[]);
    // The entry is opened (a small file read), then damaged under the live mount: a byte
    // flipped in the middle of the delta, inside one literal record's payload.
    assert!(same_bytes(
        &mnt.join("entries/E1/vm.vmx"),
        &built.join("vm.vmx")
    ));
    let delta = repo.entry_file("E1", "delta.vdelta");
    let f = fs::OpenOptions::new().write(true).open(&delta).unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    fs::File::open(&delta)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0x55], at).unwrap();
    drop(f);
    let want = fs::read(built.join("disk.vmdk")).unwrap();
    let f = fs::File::open(mnt.join("entries/E1/disk.vmdk")).unwrap();
    let (mut good, mut bad) = (0, 0);
    for (i, piece) in want.chunks(1 << 20).enumerate() {
        let mut buf = vec![0u8; piece.len()];
        match f.read_exact_at(&mut buf, (i << 20) as u64) {
            Ok(()) => {
                assert!(buf == piece, "MiB {i}: wrong bytes instead of an error");
                good += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc_eio()), "MiB {i}: {e}");
                bad += 1;
            }
        }
    }
    assert!(bad >= 1, "no read failed");
    assert!(good >= 1, "every read failed");
    // The other files still read.
    assert!(same_bytes(
        &mnt.join("entries/E1/vm.vmx"),
        &built.join("vm.vmx")
    ));
    assert!(!mnt.join("entries/E2").exists());
    let (err, _) = m.stop();
    assert!(err.contains("entry E1"), "{err}");
    assert!(err.contains("entry E2 left out"), "{err}");
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn prune_waits_for_the_mount_and_new_entries_appear() {
    let Some((t, repo, wa)) = saved_vm(16, 2, 5) else {
        return;
    };
    guest_write(&wa.join("disk.vmdk"), 3 * MIB, MIB, 6);
    repo.save(&wa, &[]);
    let mnt = t.path().join("mnt");
    let m = Mounted::start(&repo, &mnt, &[]);
    let before = fs::read(mnt.join("entries/E1/disk.vmdk")).unwrap();
    // A prune does not wait by default: it exits 8 (locked), and changes nothing.
    let err = repo.fails(&["prune", "--keep-last", "1"], 8);
    assert!(
        err.contains("in use by other commands (save, build, mount"),
        "{err}"
    );
    assert_eq!(repo.names(), ["E1", "E2"]);
    // A save goes on beside the mount; its entry appears.
    guest_write(&wa.join("disk.vmdk"), 5 * MIB, MIB, 7);
    repo.save(&wa, &["--tag", "before-upgrade"]);
    let t0 = Instant::now();
    while !mnt.join("entries/E3").exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "E3 did not appear");
        std::thread::sleep(Duration::from_millis(200));
    }
    for link in ["latest", "before-upgrade", "E3"] {
        assert_eq!(
            fs::read_link(mnt.join("vms/vm").join(link)).unwrap(),
            Path::new("../../entries/E3"),
            "{link}"
        );
    }
    assert!(same_bytes(
        &mnt.join("entries/E3/disk.vmdk"),
        &wa.join("disk.vmdk")
    ));
    // A prune told to wait starts once the mount is gone.
    let mut prune = repo.spawn(&["--wait", "60", "prune", "--keep-last", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(prune.try_wait().unwrap().is_none(), "prune did not wait");
    assert_eq!(fs::read(mnt.join("entries/E1/disk.vmdk")).unwrap(), before);
    let (err, code) = m.stop();
    assert_eq!(code, Some(0), "{err}");
    let o = wait_for(&mut prune, Duration::from_secs(60));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(repo.names(), ["E3"]);
}

#[test]
fn kill_9_leaves_nothing_that_fusermount_and_the_repository_cannot_clear() {
    let Some((t, repo, wa)) = saved_vm(16, 2, 5) else {
        return;
    };
    repo.save(&wa, &["--full"]);
    let mnt = t.path().join("mnt");
    let mut m = Mounted::start(&repo, &mnt, &[]);
    assert!(same_bytes(
        &mnt.join("entries/E1/disk.vmdk"),
        &wa.join("disk.vmdk")
    ));
    let mut child = m.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The kernel keeps the dead mount until fusermount3 -u clears it.
    let o = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!is_mounted(&mnt));
    // The repository needs nothing: the lock went with the process.
    repo.ok(&["verify", "--read-data"]);
    repo.ok(&["prune", "--keep-last", "1"]);
    assert_eq!(repo.names(), ["E2"]);
    // And it mounts again on the same folder.
    let m2 = Mounted::start(&repo, &mnt, &[]);
    assert!(mnt.join("entries/E2/disk.vmdk").exists());
    let (err, code) = m2.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn bad_mount_points_are_refused_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(&t.path().join("repo"), &[]);
    let missing = t.path().join("nope");
    let err = repo.fails(&["mount", s(&missing)], 4);
    assert!(err.contains("does not exist"), "{err}");
    let full = t.path().join("full");
    fs::create_dir_all(&full).unwrap();
    fs::write(full.join("x"), b"x").unwrap();
    let err = repo.fails(&["mount", s(&full)], 2);
    assert!(err.contains("not empty"), "{err}");
    let file = t.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = repo.fails(&["mount", s(&file)], 2);
    assert!(err.contains("not a folder"), "{err}");
    for e in [&missing, &full, &file] {
        assert!(!is_mounted(e.parent().unwrap()));
    }
    // No fusermount3 (nor fusermount) on the PATH, or no /dev/fuse: unsupported, exit 5.
    let empty = t.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let o = repo
        .cmd()
        .env("PATH", t.path().join("no-bin"))
        .args(["mount", s(&empty)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    let why = if Path::new("/dev/fuse").exists() {
        "fusermount3 is missing"
    } else {
        "/dev/fuse"
    };
    assert!(err.contains(why), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn mount_vm_shows_only_that_vms_entries() {
    let Some((t, repo, _wa)) = saved_vm(16, 2, 8) else {
        return;
    };
    let other = make_vm(&t.path().join("db"), 16, 2, 9);
    repo.save(&other, &[]);
    let mnt = t.path().join("mnt");
    let m = Mounted::start(&repo, &mnt, &["--vm", "db"]);
    let names = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(mnt.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("entries"), ["E2"]);
    assert_eq!(names("guest"), ["E2"]);
    assert_eq!(names("vms"), ["db"]);
    let (err, code) = m.stop();
    assert_eq!(code, Some(0), "{err}");
    let err = repo.fails(&["mount", s(&mnt), "--vm", "nope"], 4);
    assert!(err.contains("no VM named \"nope\""), "{err}");
}
