//! The VMDK writer (`vmdk-parse convert`, `vmdk_parse::write`) judged by outside oracles.
//!
//! Sources are made by qemu at test time (random data at unaligned offsets, zero grains from
//! `qemu-io write -z`, regions never written, a partial last grain, a 3-link snapshot chain, a
//! disk past 4 GiB for the split formats) plus the real VMware files of `fixtures/vmware/`.
//! Each is converted to every subformat, and the output must:
//! - pass `qemu-img check`;
//! - read as the source with qemu (`qemu-img compare`, and byte for byte for small disks);
//! - keep allocation: by `qemu-img map`, every grain that is unallocated in the source is
//!   unallocated in the output (a hole in flat extents), every zero grain of the source is a zero
//!   grain in hosted sparse outputs, and no grain holds data where the source had none;
//! - open in libvmdk's `vmdkinfo` with the right media size (skipped when vmdkinfo is missing,
//!   except under `CI`);
//! - and, as a self-check only, read back the same with `vmdk-parse cat` and pass
//!   `vmdk-parse check`.
//!
//! A convert that fails (a corrupt source, an output that cannot be renamed into place) must
//! leave no file under the output's names and no temporary file.

mod common;

use common::{bin, fixtures, qemu_img, qemu_io, qemu_raw, run};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmdk_parse::write::{Subformat, VmdkWriter, WriteOptions};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const GRAIN: u64 = 64 * KIB;

struct Lab {
    dir: tempfile::TempDir,
    seed: u64,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
            seed: 0x77,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn qemu_img_here(&self, args: &[&str]) {
        run(Command::new("qemu-img")
            .current_dir(self.dir.path())
            .args(args));
    }

    fn create(&self, name: &str, size: u64, opts: &str) -> PathBuf {
        let size = size.to_string();
        let mut args = vec!["create", "-q", "-f", "vmdk"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([name, &size]);
        self.qemu_img_here(&args);
        self.path(name)
    }

    fn child(&self, name: &str, parent: &str) -> PathBuf {
        self.qemu_img_here(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            "-b",
            parent,
            "-F",
            "vmdk",
            name,
        ]);
        self.path(name)
    }

    /// A qemu-io command writing `len` pseudo-random bytes at `off`.
    fn rnd(&mut self, off: u64, len: u64) -> String {
        self.seed += 1;
        let p = self.path(&format!("random-{}.bin", self.seed));
        let mut s = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut bytes = Vec::with_capacity(len as usize + 8);
        while (bytes.len() as u64) < len {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        bytes.truncate(len as usize);
        std::fs::write(&p, bytes).unwrap();
        format!("write -s {} {off} {len}", p.display())
    }

    fn io(&self, disk: &Path, cmds: &[String]) {
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(disk, "vmdk", &refs);
    }
}

/// A single-link disk with zero grains, data at unaligned offsets, holes, two grain tables and a
/// partial last grain (the size is not a multiple of the grain).
fn single(lab: &mut Lab) -> PathBuf {
    let size = 40 * MIB + 5 * 512;
    let d = lab.create("single.vmdk", size, "zeroed_grain=on");
    let cmds = vec![
        lab.rnd(1000, 100_000),
        "write -P 0xab 192k 64k".into(),
        "write -z 320k 128k".into(),
        "write -z 500k 10k".into(),
        "write -P 0x77 330k 4k".into(),
        format!("write -P 0x5a {} {}", 2 * MIB + 512, MIB),
        "write -z 8M 4M".into(),
        lab.rnd(32 * MIB - 5000, 70_000),
        lab.rnd(size - 1536, 1536),
    ];
    lab.io(&d, &cmds);
    d
}

/// base <- mid <- top, with writes overlapping across the links and zero grains in the children.
fn chain(lab: &mut Lab) -> PathBuf {
    let size = 4 * MIB;
    let base = lab.create("base.vmdk", size, "");
    let cmds = vec![
        lab.rnd(0, MIB),
        "write -P 0x02 2M 256k".into(),
        lab.rnd(size - 10_000, 10_000),
    ];
    lab.io(&base, &cmds);
    let mid = lab.child("mid.vmdk", "base.vmdk");
    let cmds = vec![
        lab.rnd(512 * KIB + 100, 100_000),
        "write -z 2112k 64k".into(),
        "write -z 2240k 8k".into(),
        "write -P 0x03 3M 64k".into(),
    ];
    lab.io(&mid, &cmds);
    let top = lab.child("top.vmdk", "mid.vmdk");
    let cmds = vec![
        lab.rnd(600 * KIB, 200 * KIB),
        "write -P 0x04 2080k 64k".into(),
        "write -z 0 64k".into(),
        lab.rnd(size - 4096, 4096),
    ];
    lab.io(&top, &cmds);
    top
}

fn convert(src: &Path, format: &str, out: &Path) {
    run(Command::new(bin("vmdk-parse"))
        .args(["convert", "-O", format, "-o"])
        .arg(out)
        .arg(src));
}

/// Per grain: bytes (unallocated, zero, data) by `qemu-img map`.
fn qemu_grains(disk: &Path, capacity: u64) -> Vec<[u64; 3]> {
    let out = qemu_img(&["map", "--output=json", disk.to_str().unwrap()]);
    let map: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut g = vec![[0u64; 3]; capacity.div_ceil(GRAIN) as usize];
    for r in &map {
        let (start, len) = (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap());
        let state = if !r["present"].as_bool().unwrap() {
            0
        } else if r["zero"].as_bool().unwrap() {
            1
        } else {
            2
        };
        let mut at = start;
        while at < start + len {
            let end = ((at / GRAIN + 1) * GRAIN).min(start + len);
            g[(at / GRAIN) as usize][state] += end - at;
            at = end;
        }
    }
    g
}

fn vmdkinfo_size(disk: &Path) -> Option<u64> {
    if Command::new("vmdkinfo").arg("-V").output().is_err() {
        let ci = std::env::var("CI").unwrap_or_default();
        assert!(
            ci.is_empty() || ci == "false" || ci == "0",
            "vmdkinfo is not installed, and CI={ci}: install libvmdk-utils"
        );
        eprintln!("SKIPPED: vmdkinfo is not installed (apt-get install libvmdk-utils)");
        return None;
    }
    let out = run(Command::new("vmdkinfo").arg(disk));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let size = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Media size:"))
        .and_then(|v| v.split_once('(')?.1.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("vmdkinfo {}: no media size in {text}", disk.display()));
    Some(size)
}

/// The disk's bytes as libvmdk reads them, through `vmdkmount` (FUSE); None, with a note, where
/// FUSE or vmdkmount is not available.
fn vmdkmount_read(disk: &Path, work: &Path) -> Option<Vec<u8>> {
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut child = match Command::new("vmdkmount")
        .arg(disk)
        .arg(&mnt)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: vmdkmount: {e}");
            return None;
        }
    };
    let image = mnt.join("vmdk1");
    let start = std::time::Instant::now();
    while !image.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "SKIPPED: vmdkmount {} exited with {status} (no FUSE?)",
                disk.display()
            );
            return None;
        }
        assert!(
            start.elapsed().as_secs() < 20,
            "vmdkmount {}: no image after 20 s",
            disk.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let bytes = std::fs::read(&image);
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = child.wait();
    Some(bytes.unwrap_or_else(|e| panic!("reading {} through vmdkmount: {e}", disk.display())))
}

fn vp_info(disk: &Path) -> Value {
    let out = run(Command::new(bin("vmdk-parse")).arg("info").arg(disk));
    serde_json::from_slice(&out.stdout).unwrap()
}

const FORMATS: [&str; 5] = [
    "monolithicSparse",
    "streamOptimized",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
];

/// Convert `src` to every subformat in `work` and judge each output. `bytes`: also compare the
/// whole contents byte for byte (small disks).
fn judge_all(src: &Path, work: &Path, bytes: bool) {
    let capacity = vp_info(src)["capacity_bytes"].as_u64().unwrap();
    let src_grains = qemu_grains(src, capacity);
    let src_raw = bytes.then(|| qemu_raw(src, work));
    for format in FORMATS {
        let name = src.file_stem().unwrap().to_string_lossy();
        let out = work.join(format!("{name}-{format}.vmdk"));
        convert(src, format, &out);
        let what = format!("{} as {format}", src.display());

        let check = Command::new("qemu-img")
            .args(["check", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{what}: qemu-img check: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        qemu_img(&["compare", src.to_str().unwrap(), out.to_str().unwrap()]);
        if let Some(raw) = &src_raw {
            assert!(
                qemu_raw(&out, work) == *raw,
                "{what}: qemu reads other bytes"
            );
            let ours = run(Command::new(bin("vmdk-parse")).arg("cat").arg(&out)).stdout;
            assert!(ours == *raw, "{what}: vmdk-parse reads other bytes");
        }

        let flat = format.ends_with("Flat");
        let out_grains = qemu_grains(&out, capacity);
        for (g, (s, o)) in src_grains.iter().zip(&out_grains).enumerate() {
            let len = (capacity - g as u64 * GRAIN).min(GRAIN);
            let at = g as u64 * GRAIN;
            if s[0] == len {
                if flat {
                    assert_eq!(o[1], len, "{what}: unallocated grain at {at} is not a hole");
                } else {
                    assert_eq!(o[0], len, "{what}: unallocated grain at {at} is allocated");
                }
            }
            // Zero grains become holes in flat extents and unallocated grains elsewhere (the
            // writer's default: libvmdk misreads zero grains).
            if s[1] == len {
                if flat {
                    assert_eq!(o[1], len, "{what}: zero grain at {at} is not a hole: {o:?}");
                } else {
                    assert_eq!(o[0], len, "{what}: zero grain at {at} is stored: {o:?}");
                }
            }
            if s[2] == 0 {
                assert_eq!(o[2], 0, "{what}: data invented in grain at {at}");
            }
        }

        if let Some(size) = vmdkinfo_size(&out) {
            assert_eq!(size, capacity, "{what}: vmdkinfo media size");
        }
        // libvmdk reads every type but monolithicFlat ("Unsupported disk type", also for
        // qemu's own monolithicFlat disks).
        if let (Some(raw), true) = (&src_raw, format != "monolithicFlat") {
            if let Some(bytes) = vmdkmount_read(&out, work) {
                assert!(
                    bytes == *raw,
                    "{what}: libvmdk (vmdkmount) reads other bytes"
                );
            }
        }
        let info = vp_info(&out);
        assert_eq!(info["create_type"], format, "{what}");
        assert_eq!(info["capacity_bytes"].as_u64(), Some(capacity), "{what}");
        let link = &info["chain"][0];
        assert_eq!(link["parent_cid"], "ffffffff", "{what}");
        let cid = link["cid"].as_str().unwrap();
        assert!(cid != "ffffffff" && cid != "fffffffe", "{what}: CID {cid}");
        let long_id = info["descriptor"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == "ddb.longContentID")
            .map(|kv| kv["value"].as_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(long_id.ends_with(cid), "{what}: longContentID {long_id}");
        for e in info["extents"].as_array().unwrap() {
            if format.starts_with("twoGb") {
                assert!(e["size_bytes"].as_u64().unwrap() < 2 * GIB, "{what}: {e}");
                assert!(e["file_bytes"].as_u64().unwrap() <= 2 * GIB, "{what}: {e}");
            }
        }
        let check = Command::new(bin("vmdk-parse"))
            .arg("check")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{what}: vmdk-parse check: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    assert_no_temp_files(work);
}

fn assert_no_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temporary file left: {name}");
    }
}

#[test]
fn single_link_disk_in_every_subformat() {
    let mut lab = Lab::new();
    let src = single(&mut lab);
    let work = tempfile::tempdir().unwrap();
    judge_all(&src, work.path(), true);
    // No zero grains by default: header version 1 without the flag, as qemu-img writes.
    let h = &vp_info(&work.path().join("single-monolithicSparse.vmdk"))["extents"][0]["header"];
    assert_eq!(h["version"], 1);
    assert_eq!(h["flags"].as_u64().unwrap() & 4, 0);
}

#[test]
fn zero_grains_when_asked() {
    // WriteOptions::zero_grains: zero ranges become zero grains (GTE 1), header version 2 with
    // the flag; qemu maps them as zero and reads them as zeros, and checks the image clean.
    let mut lab = Lab::new();
    let src = single(&mut lab);
    let disk = vmdk_parse::Disk::open(&src).unwrap();
    let opts = WriteOptions {
        zero_grains: true,
        ..WriteOptions::default()
    };
    for sub in [Subformat::MonolithicSparse, Subformat::TwoGbMaxExtentSparse] {
        let out = lab.path(&format!("zg-{}.vmdk", sub.create_type()));
        vmdk_parse::write::write_disk(&disk, &out, sub, &opts).unwrap();
        qemu_img(&["check", out.to_str().unwrap()]);
        qemu_img(&["compare", src.to_str().unwrap(), out.to_str().unwrap()]);
        let cap = disk.capacity();
        let (s, o) = (qemu_grains(&src, cap), qemu_grains(&out, cap));
        let zero_grains = s.iter().filter(|g| g[1] == GRAIN).count();
        assert!(zero_grains >= 64, "recipe: the source has zero grains");
        for (g, (s, o)) in s.iter().zip(&o).enumerate() {
            if s[1] == GRAIN {
                assert_eq!(
                    o[1], GRAIN,
                    "{sub:?}: zero grain {g} is not a zero grain: {o:?}"
                );
            }
        }
        let info = vp_info(&out);
        let h = &info["extents"][0]["header"];
        assert_eq!(
            (h["version"].as_u64(), h["flags"].as_u64()),
            (Some(2), Some(7)),
            "{sub:?}"
        );
    }
}

#[test]
fn three_link_chain_in_every_subformat() {
    let mut lab = Lab::new();
    let top = chain(&mut lab);
    let work = tempfile::tempdir().unwrap();
    judge_all(&top, work.path(), true);
}

#[test]
fn vmware_fixtures_in_every_subformat() {
    let dir = fixtures().join("vmware");
    for name in [
        "monolithicSparse.vmdk",
        "streamOptimized.vmdk",
        "vmfs_thick.vmdk",
    ] {
        let work = tempfile::tempdir().unwrap();
        judge_all(&dir.join(name), work.path(), true);
    }
}

#[test]
fn disk_past_4_gib_splits_into_extents() {
    // 4 GiB + 3 MiB: three 2047 MiB extents for the split formats, grains on both sides of
    // each extent boundary, and a hosted sparse extent past 4 GiB of grain numbers.
    let mut lab = Lab::new();
    let size = 4 * GIB + 3 * MIB;
    let src = lab.create("big.vmdk", size, "zeroed_grain=on");
    let edge = 2047 * MIB;
    let cmds = vec![
        lab.rnd(0, 200 * KIB),
        lab.rnd(edge - 70_000, 140_000),
        "write -z 3G 1M".into(),
        lab.rnd(2 * edge - 512, 1024),
        lab.rnd(size - 4096, 4096),
    ];
    lab.io(&src, &cmds);
    let work = tempfile::tempdir().unwrap();
    judge_all(&src, work.path(), false);
    let split = vp_info(&work.path().join("big-twoGbMaxExtentSparse.vmdk"));
    let sizes: Vec<u64> = split["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["size_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![edge, edge, size - 2 * edge]);
    for f in [
        "big-twoGbMaxExtentFlat-f003.vmdk",
        "big-twoGbMaxExtentSparse-s003.vmdk",
    ] {
        assert!(work.path().join(f).exists(), "{f}");
    }
}

#[test]
fn raw_output_is_cat() {
    let mut lab = Lab::new();
    let src = chain(&mut lab);
    let out = lab.path("out.raw");
    convert(&src, "raw", &out);
    assert_eq!(std::fs::read(&out).unwrap(), qemu_raw(&src, lab.dir.path()));
}

/// Every file in `dir` whose name starts with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) || n.starts_with(&format!(".{prefix}")))
        .collect()
}

#[test]
fn corrupt_source_mid_way_leaves_no_output() {
    // The last grain of a 20 MiB disk points past the end of its file: the first windows are
    // written before the read fails.
    let mut lab = Lab::new();
    let src = lab.create("cut.vmdk", 20 * MIB, "");
    let cmds = vec![lab.rnd(0, MIB), lab.rnd(18 * MIB, 64 * KIB)];
    lab.io(&src, &cmds);
    let len = std::fs::metadata(&src).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(len - GRAIN)
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    for format in FORMATS.iter().chain(&["raw"]) {
        let out = work.path().join(format!("o-{format}.vmdk"));
        let res = Command::new(bin("vmdk-parse"))
            .args(["convert", "-O", format, "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .unwrap();
        assert_eq!(
            res.status.code(),
            Some(3),
            "{format}: exit code for corrupt input"
        );
        let left = files_named(work.path(), &format!("o-{format}"));
        assert!(left.is_empty(), "{format}: left {left:?}");
    }
}

#[test]
fn failed_rename_takes_back_the_extents_already_in_place() {
    // The third extent's name is taken by a directory: the first two were renamed into place
    // and must be removed again, and nothing else may remain.
    let lab = Lab::new();
    let src = lab.create("big.vmdk", 4 * GIB + MIB, "");
    lab.io(&src, &[lab_write(0)]);
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("o-f003.vmdk")).unwrap();
    let res = Command::new(bin("vmdk-parse"))
        .args(["convert", "-O", "twoGbMaxExtentFlat", "-o"])
        .arg(work.path().join("o.vmdk"))
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(
        res.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut left = files_named(work.path(), "o");
    left.sort();
    assert_eq!(left, vec!["o-f003.vmdk".to_string()]);
}

fn lab_write(off: u64) -> String {
    format!("write -P 0x42 {off} 64k")
}

/// Makes a folder unwritable for as long as it lives: mode 0555, and for root (whom modes do
/// not stop) the ext4 immutable attribute.
struct ReadOnly {
    dir: PathBuf,
    immutable: bool,
}

impl ReadOnly {
    fn new(dir: &Path) -> Option<ReadOnly> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let mut ro = ReadOnly {
            dir: dir.to_path_buf(),
            immutable: false,
        };
        let writable = || {
            let probe = dir.join("probe");
            let ok = std::fs::File::create(&probe).is_ok();
            let _ = std::fs::remove_file(probe);
            ok
        };
        if writable() {
            ro.immutable = Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ro.immutable || writable() {
                return None;
            }
        }
        Some(ro)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(&self.dir).status();
        }
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn read_only_output_folder_leaves_nothing() {
    let mut lab = Lab::new();
    let src = chain(&mut lab);
    let work = tempfile::tempdir().unwrap();
    let ro = work.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let Some(_guard) = ReadOnly::new(&ro) else {
        eprintln!("SKIPPED: cannot make a folder read-only here (root without chattr +i)");
        return;
    };
    for format in FORMATS.iter().chain(&["raw"]) {
        let res = Command::new(bin("vmdk-parse"))
            .args(["convert", "-O", format, "-o"])
            .arg(ro.join("o.vmdk"))
            .arg(&src)
            .output()
            .unwrap();
        assert_eq!(res.status.code(), Some(6), "{format}");
        assert!(std::fs::read_dir(&ro).unwrap().next().is_none(), "{format}");
    }
}

// ---------------------------------------------------------------------------------------------
// The library API
// ---------------------------------------------------------------------------------------------

#[test]
fn api_gaps_are_unallocated_and_drop_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 10 * MIB;
    for sub in Subformat::ALL {
        let p = dir.path().join(format!("api-{}.vmdk", sub.create_type()));
        let mut w = VmdkWriter::create(&p, sub, cap, &WriteOptions::default()).unwrap();
        w.write_data(1000, &[0x11; 5000]).unwrap();
        // 6000..1 MiB is a gap.
        w.write_zero(MIB, MIB).unwrap();
        w.write_data(3 * MIB - 7, &[0x22; 70_000]).unwrap();
        w.write_unallocated(4 * MIB, MIB).unwrap();
        assert!(
            w.write_data(MIB, &[1]).is_err(),
            "{sub:?}: a range before the last one is refused"
        );
        w.write_data(cap - 512, &[0x33; 512]).unwrap();
        assert!(w.write_zero(cap, 1).is_err(), "{sub:?}: past the end");
        assert!(!p.exists(), "{sub:?}: nothing visible before finish");
        w.finish().unwrap();

        let mut want = vec![0u8; cap as usize];
        want[1000..6000].fill(0x11);
        want[(3 * MIB - 7) as usize..(3 * MIB - 7 + 70_000) as usize].fill(0x22);
        want[(cap - 512) as usize..].fill(0x33);
        assert!(qemu_raw(&p, dir.path()) == want, "{sub:?}");
        let g = qemu_grains(&p, cap);
        // Flat extents keep unallocated ranges as holes, which qemu maps as zero.
        let state = if sub.create_type().ends_with("Flat") {
            1
        } else {
            0
        };
        assert_eq!(
            g[(2 * MIB / GRAIN) as usize][state],
            GRAIN,
            "{sub:?}: gap unallocated"
        );
        assert_eq!(
            g[(4 * MIB / GRAIN) as usize][state],
            GRAIN,
            "{sub:?}: unallocated"
        );

        let q = dir
            .path()
            .join(format!("dropped-{}.vmdk", sub.create_type()));
        let mut w = VmdkWriter::create(&q, sub, cap, &WriteOptions::default()).unwrap();
        w.write_data(0, &[0x44; 100_000]).unwrap();
        drop(w);
    }
    let mut left = files_named(dir.path(), "dropped");
    left.extend(files_named(dir.path(), ".dropped"));
    assert!(left.is_empty(), "{left:?}");
    assert_no_temp_files(dir.path());
}

#[test]
fn three_tib_disk_holding_little() {
    // Sector numbers past 2^32, 1536 split extents, a stream whose tables are mostly left out;
    // monolithicSparse cannot address it and says so (exit 5) without leaving a file.
    let lab = Lab::new();
    let size = 3 * 1024 * GIB;
    let src = lab.create("huge.vmdk", size, "");
    lab.io(
        &src,
        &[
            "write -P 0x11 0 1M".into(),
            "write -P 0x22 2T 1M".into(),
            "write -P 0x33 3070G 64k".into(),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    for format in ["streamOptimized", "twoGbMaxExtentSparse", "monolithicFlat"] {
        let out = work.path().join(format!("h-{format}.vmdk"));
        convert(&src, format, &out);
        qemu_img(&["check", out.to_str().unwrap()]);
        let fmt = "vmdk";
        qemu_io(
            &out,
            fmt,
            &[
                "read -P 0x11 0 1M",
                "read -P 0 1M 1M",
                "read -P 0x22 2T 1M",
                "read -P 0x33 3070G 64k",
                "read -P 0 3071G 1M",
            ],
        );
        // qemu maps a 3 TiB split disk in minutes: map the neighbourhood of each write only.
        let mut data = 0;
        for (start, len) in [
            (0, 4 * MIB),
            (2 * 1024 * GIB - MIB, 4 * MIB),
            (3070 * GIB, GIB),
        ] {
            let map = qemu_img(&[
                "map",
                "--output=json",
                "--start-offset",
                &start.to_string(),
                "--max-length",
                &len.to_string(),
                out.to_str().unwrap(),
            ]);
            let map: Vec<Value> = serde_json::from_slice(&map.stdout).unwrap();
            data += map
                .iter()
                .filter(|r| r["data"] == true && r["zero"] == false)
                .map(|r| r["length"].as_u64().unwrap())
                .sum::<u64>();
        }
        assert_eq!(data, 2 * MIB + 64 * KIB, "{format}");
        if let Some(n) = vmdkinfo_size(&out) {
            assert_eq!(n, size, "{format}");
        }
    }
    let out = work.path().join("x-mono.vmdk");
    let res = Command::new(bin("vmdk-parse"))
        .args(["convert", "-O", "monolithicSparse", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(5));
    assert!(files_named(work.path(), "x-mono").is_empty());
}

#[test]
fn cli_adapter_type_odd_raw_sizes_and_exit_codes() {
    let lab = Lab::new();
    // A raw image whose size is not a whole number of sectors is padded to one, as qemu-img
    // pads it; the data survives.
    let raw = lab.path("odd.img");
    let mut bytes = vec![0u8; (5 * MIB + 1000) as usize];
    bytes[(5 * MIB) as usize..].fill(0x5c);
    bytes[..4096].fill(0x17);
    std::fs::write(&raw, &bytes).unwrap();
    let out = lab.path("odd.vmdk");
    run(Command::new(bin("vmdk-parse"))
        .args([
            "convert",
            "-O",
            "monolithicSparse",
            "--adapter-type",
            "ide",
            "-o",
        ])
        .arg(&out)
        .arg(&raw));
    qemu_img(&["check", out.to_str().unwrap()]);
    let back = qemu_raw(&out, lab.dir.path());
    assert_eq!(back.len() as u64, 5 * MIB + 1024);
    assert!(back[..bytes.len()] == bytes[..] && back[bytes.len()..].iter().all(|&b| b == 0));
    let info = vp_info(&out);
    let ddb = |key: &str| {
        info["descriptor"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == key)
            .map(|kv| kv["value"].as_str().unwrap().to_string())
    };
    assert_eq!(ddb("ddb.adapterType").as_deref(), Some("ide"));
    assert_eq!(ddb("ddb.geometry.heads").as_deref(), Some("16"));

    let code = |args: &[&str]| {
        Command::new(bin("vmdk-parse"))
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
    };
    let o = lab.path("x.vmdk");
    let o = o.to_str().unwrap();
    let r = raw.to_str().unwrap();
    assert_eq!(
        code(&["convert", "-O", "qcow2", "-o", o, r]),
        Some(2),
        "unknown format"
    );
    assert_eq!(code(&["convert", "-O", "raw", r]), Some(2), "no -o");
    let missing = lab.path("missing.vmdk");
    assert_eq!(
        code(&[
            "convert",
            "-O",
            "streamOptimized",
            "-o",
            o,
            missing.to_str().unwrap()
        ]),
        Some(4),
        "missing source"
    );
    assert!(!lab.path("x.vmdk").exists());
}
