//! End-to-end tests of the `vmdk-parse` binary against outside oracles.
//!
//! Every disk here is made at test time by qemu (`qemu-img create/convert`, `qemu-io` writes)
//! in every VMDK subformat qemu writes, and then read back by qemu as the oracle:
//! - `vmdk-parse cat` (stdout) and `vmdk-parse cat -o OUT` must equal `qemu-img convert -O raw`
//!   byte for byte, and OUT must be no less sparse than qemu's raw file;
//! - `vmdk-parse map` must agree with `qemu-img map --output=json` byte for byte on the state
//!   (data, zero, unallocated), the chain depth, compression, and for plain data the file and
//!   the offset in it (the file comes from qemu's human-readable map);
//! - `vmdk-parse info` must agree with `qemu-img info --backing-chain` on size, createType,
//!   CIDs, and with qemu's map on the byte totals; `vmdk-parse check` must pass when
//!   `qemu-img check` does.
//!
//! A 3 TiB disk (sector numbers past 2^32) is checked by its map and by reads near the end
//! (`qemu-io read -v`), not by a full convert. Chains qemu refuses (a missing parent, a parent
//! changed after its child was made) must be refused with the documented exit codes. The places
//! where vmdk-parse reads differently from qemu on purpose are pinned by `divergence_*` tests.
//!
//! The real VMware files in `fixtures/vmware/` must read to the sha256 values in their NOTICE,
//! and `vmdkinfo` (libvmdk) must report the same media size and CIDs as `vmdk-parse info`
//! (skipped when vmdkinfo is missing, except under `CI`, where that is a failure).
//!
//! Translating qemu's map: `present:false` is "unallocated"; `present:true` with `zero:true`
//! is "zero" (this includes `data:true, zero:true`, which qemu reports for holes in a flat
//! extent's file, and which vmdk-parse documents as zero); `data:true, zero:false` is "data".

mod common;

use common::{bin, fixtures, qemu_img, qemu_io, run, sha256_hex};
use serde::Deserialize;
use serde_json::Value;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

// ---------------------------------------------------------------------------------------------
// Making disks with qemu
// ---------------------------------------------------------------------------------------------

/// A temporary folder where qemu makes disks; qemu runs inside it so names stay relative.
struct Lab {
    dir: tempfile::TempDir,
    next_seed: u64,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
            next_seed: 0x5eed,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn qemu_img_here(&self, args: &[&str]) -> Output {
        run(Command::new("qemu-img")
            .current_dir(self.dir.path())
            .args(args))
    }

    /// `qemu-img create -f vmdk [-o OPTS] NAME SIZE`.
    fn create(&self, name: &str, size: &str, opts: &str) -> PathBuf {
        let mut args = vec!["create", "-q", "-f", "vmdk"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([name, size]);
        self.qemu_img_here(&args);
        self.path(name)
    }

    /// `qemu-img create -f vmdk [-o OPTS] -b PARENT -F vmdk NAME`: a snapshot link.
    fn child(&self, name: &str, parent: &str, opts: &str) -> PathBuf {
        let mut args = vec!["create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.push(name);
        self.qemu_img_here(&args);
        self.path(name)
    }

    /// A file of `len` pseudo-random bytes, different for every call.
    fn random_file(&mut self, len: u64) -> PathBuf {
        self.next_seed += 1;
        let p = self.path(&format!("random-{}.bin", self.next_seed));
        std::fs::write(&p, random_bytes(self.next_seed, len as usize)).unwrap();
        p
    }

    /// A qemu-io command writing `len` random bytes at `off`.
    fn rnd(&mut self, off: u64, len: u64) -> String {
        let src = self.random_file(len);
        format!("write -s {} {off} {len}", src.display())
    }
}

/// splitmix64: reproducible bytes without a dependency.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn io(disk: &Path, cmds: &[String]) {
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(disk, "vmdk", &refs);
}

/// The writes every small single-link disk gets (`size` at least 6 MiB): random data at
/// unaligned offsets across grain boundaries, a pattern filling one grain exactly, zeroes over
/// whole grains and over part of one, an overwrite of part of a zeroed grain, a pattern over
/// many grains, the last sectors of the disk; the rest is never written.
fn standard_writes(lab: &mut Lab, size: u64) -> Vec<String> {
    vec![
        lab.rnd(1000, 100_000),
        "write -P 0xab 192k 64k".into(),
        "write -z 320k 128k".into(),
        "write -z 500k 10k".into(),
        "write -P 0x77 330k 4k".into(),
        format!("write -P 0x5a {} {}", 2 * MIB + 512, MIB),
        lab.rnd(size - 1536, 1536),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running vmdk-parse
// ---------------------------------------------------------------------------------------------

fn vp(flags: &[&str], args: &[&str], disk: &Path) -> Command {
    let mut c = Command::new(bin("vmdk-parse"));
    c.args(flags).args(args).arg(disk);
    c
}

#[derive(Debug, Deserialize)]
struct VpRange {
    offset: u64,
    length: u64,
    state: String,
    depth: u32,
    file: Option<String>,
    file_offset: Option<u64>,
    compressed: bool,
}

fn vp_map(disk: &Path, flags: &[&str]) -> Vec<VpRange> {
    let out = run(&mut vp(flags, &["map"], disk));
    String::from_utf8(out.stdout)
        .expect("map is UTF-8")
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("vmdk-parse map line {l:?} does not parse: {e}"))
        })
        .collect()
}

fn vp_info(disk: &Path, flags: &[&str]) -> Value {
    let out = run(&mut vp(flags, &["info"], disk));
    serde_json::from_slice(&out.stdout).expect("vmdk-parse info prints one JSON object")
}

// ---------------------------------------------------------------------------------------------
// qemu as the oracle
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct QemuRange {
    start: u64,
    length: u64,
    depth: u32,
    present: bool,
    zero: bool,
    data: bool,
    #[serde(default)]
    compressed: bool,
    offset: Option<u64>,
}

fn qemu_map_json(disk: &Path) -> Vec<QemuRange> {
    let out = qemu_img(&["map", "--output=json", disk.to_str().unwrap()]);
    serde_json::from_slice(&out.stdout).expect("qemu-img map JSON")
}

/// `qemu-img map` in human form: (start, length, offset in file, file) of every mapped range.
/// qemu refuses the human form for a whole disk holding compressed grains, so `ranges` (the
/// ranges of plain data) are then asked for one by one.
fn qemu_map_human(disk: &Path, ranges: &[(u64, u64)]) -> Vec<(u64, u64, u64, String)> {
    let whole = Command::new("qemu-img")
        .arg("map")
        .arg(disk)
        .output()
        .unwrap();
    if whole.status.success() {
        return parse_human_map(&whole.stdout);
    }
    let mut all = Vec::new();
    for (start, len) in ranges {
        let out = qemu_img(&[
            "map",
            &format!("--start-offset={start}"),
            &format!("--max-length={len}"),
            disk.to_str().unwrap(),
        ]);
        all.extend(parse_human_map(&out.stdout));
    }
    all
}

fn parse_human_map(stdout: &[u8]) -> Vec<(u64, u64, u64, String)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    String::from_utf8_lossy(stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let rest: Vec<&str> = l.split_whitespace().collect();
            assert!(rest.len() >= 4, "odd qemu-img map line {l:?}");
            (
                hex(rest[0]),
                hex(rest[1]),
                hex(rest[2]),
                rest[3..].join(" "),
            )
        })
        .collect()
}

/// `qemu-img info --backing-chain --output=json`: one object per link, top first.
fn qemu_chain(disk: &Path) -> Vec<Value> {
    let out = qemu_img(&[
        "info",
        "--backing-chain",
        "--output=json",
        disk.to_str().unwrap(),
    ]);
    match serde_json::from_slice(&out.stdout).expect("qemu-img info JSON") {
        Value::Array(a) => a,
        one => vec![one],
    }
}

/// The bytes qemu reads at `offset`, through `qemu-io -r -c 'read -v'` (no full convert).
/// Read-only, so it can run while `qemu-img map` holds the image's shared lock.
fn qemu_read(disk: &Path, offset: u64, len: u64) -> Vec<u8> {
    let out = run(Command::new("qemu-io")
        .args(["-r", "-f", "vmdk"])
        .arg(disk)
        .args(["-c", &format!("read -v {offset} {len}")]));
    let mut bytes = Vec::with_capacity(len as usize);
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let Some((addr, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        assert_eq!(addr, offset + bytes.len() as u64, "qemu-io dump: {line:?}");
        let n = (len - bytes.len() as u64).min(16) as usize;
        bytes.extend(
            rest.split_whitespace()
                .take(n)
                .map(|h| u8::from_str_radix(h, 16).unwrap()),
        );
    }
    assert_eq!(bytes.len() as u64, len, "qemu-io read -v {offset} {len}");
    bytes
}

// ---------------------------------------------------------------------------------------------
// Normalised maps: both sides become the same per-byte facts, merged
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Data,
    Zero,
    Unallocated,
}

/// One merged range of per-byte facts. `at` is (file name, byte in file) for plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seg {
    start: u64,
    len: u64,
    state: St,
    depth: u32,
    compressed: bool,
    at: Option<(String, u64)>,
}

#[derive(Default)]
struct Segs(Vec<Seg>);

impl Segs {
    fn push(&mut self, s: Seg) {
        if s.len == 0 {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            assert_eq!(
                last.start + last.len,
                s.start,
                "ranges must be contiguous: {last:?} then {s:?}"
            );
            let continues = last.state == s.state
                && last.depth == s.depth
                && last.compressed == s.compressed
                && match (&last.at, &s.at) {
                    (None, None) => true,
                    (Some((f1, o1)), Some((f2, o2))) => f1 == f2 && o1 + last.len == *o2,
                    _ => false,
                };
            if continues {
                last.len += s.len;
                return;
            }
        } else {
            assert_eq!(s.start, 0, "the map must start at byte 0: {s:?}");
        }
        self.0.push(s);
    }

    fn end(&self) -> u64 {
        self.0.last().map_or(0, |s| s.start + s.len)
    }

    fn totals(&self) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for s in &self.0 {
            match s.state {
                St::Data => t.0 += s.len,
                St::Zero => t.1 += s.len,
                St::Unallocated => t.2 += s.len,
            }
        }
        t
    }
}

fn base_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map_or_else(|| p.to_string(), |n| n.to_string_lossy().into_owned())
}

fn ours_normalised(map: &[VpRange]) -> Segs {
    let mut segs = Segs::default();
    for r in map {
        let state = match r.state.as_str() {
            "data" => St::Data,
            "zero" => St::Zero,
            "unallocated" => St::Unallocated,
            other => panic!("vmdk-parse map: unknown state {other:?} in {r:?}"),
        };
        let at = match (state, &r.file, r.file_offset) {
            (St::Data, Some(f), Some(o)) => Some((base_name(f), o)),
            (St::Data, None, _) => panic!("vmdk-parse map: data range without a file: {r:?}"),
            (St::Data, Some(_), None) if !r.compressed => {
                panic!("vmdk-parse map: uncompressed data without file_offset: {r:?}")
            }
            _ => None,
        };
        segs.push(Seg {
            start: r.offset,
            len: r.length,
            state,
            depth: r.depth,
            compressed: r.compressed,
            at,
        });
    }
    segs
}

/// qemu's map, translated (see the module comment); the files of plain data come from qemu's
/// human-readable map, which names them.
fn qemu_normalised(disk: &Path) -> Segs {
    let json = qemu_map_json(disk);
    let plain: Vec<(u64, u64)> = json
        .iter()
        .filter(|r| r.present && r.data && !r.zero && r.offset.is_some())
        .map(|r| (r.start, r.length))
        .collect();
    let human = if plain.is_empty() {
        Vec::new()
    } else {
        qemu_map_human(disk, &plain)
    };
    let mut segs = Segs::default();
    for r in &json {
        let state = match (r.present, r.zero, r.data) {
            (false, _, _) => St::Unallocated,
            (true, true, _) => St::Zero,
            (true, false, true) => St::Data,
            (true, false, false) => panic!("qemu-img map: present, not zero, not data: {r:?}"),
        };
        let seg = |start: u64, len: u64, at: Option<(String, u64)>| Seg {
            start,
            len,
            state,
            depth: r.depth,
            compressed: r.compressed,
            at,
        };
        match (state, r.offset) {
            (St::Data, Some(off)) => {
                // Split by the human map's entries, which carry the file names.
                let mut pos = r.start;
                let end = r.start + r.length;
                while pos < end {
                    let h = human
                        .iter()
                        .find(|h| h.0 <= pos && pos < h.0 + h.1)
                        .unwrap_or_else(|| {
                            panic!("qemu-img map (human) does not cover byte {pos}: {human:?}")
                        });
                    let to = end.min(h.0 + h.1);
                    let file_off = off + (pos - r.start);
                    assert_eq!(
                        h.2 + (pos - h.0),
                        file_off,
                        "qemu's two maps disagree at byte {pos}"
                    );
                    segs.push(seg(pos, to - pos, Some((base_name(&h.3), file_off))));
                    pos = to;
                }
            }
            _ => segs.push(seg(r.start, r.length, None)),
        }
    }
    segs
}

fn show(segs: &[Seg]) -> String {
    segs.iter()
        .map(|s| format!("  {s:?}\n"))
        .collect::<Vec<_>>()
        .concat()
}

fn assert_same_map(what: &str, ours: &Segs, qemu: &Segs) {
    if ours.0 == qemu.0 {
        return;
    }
    let i = ours
        .0
        .iter()
        .zip(&qemu.0)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.0.len().min(qemu.0.len()));
    let lo = i.saturating_sub(2);
    panic!(
        "{what}: vmdk-parse map disagrees with qemu-img map at range #{i}\n\
         vmdk-parse (normalised), from #{lo}:\n{}qemu-img (normalised), from #{lo}:\n{}",
        show(&ours.0[lo.min(ours.0.len())..(i + 3).min(ours.0.len())]),
        show(&qemu.0[lo.min(qemu.0.len())..(i + 3).min(qemu.0.len())]),
    );
}

// ---------------------------------------------------------------------------------------------
// Comparing bytes without holding whole disks in memory
// ---------------------------------------------------------------------------------------------

const CHUNK: u64 = 1 << 20;

/// Read until `buf` is full or the input ends; returns the bytes read.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// The first byte at or after `at` of `f` that is not in a hole; `u64::MAX` when only holes
/// follow. Where the file system cannot tell, `at`: everything is then read and compared.
fn next_data(f: &File, at: u64) -> u64 {
    use rustix::fs::{seek, SeekFrom};
    match seek(f, SeekFrom::Data(at)) {
        Ok(d) => d,
        Err(rustix::io::Errno::NXIO) => u64::MAX,
        Err(_) => at,
    }
}

/// Where `ours` first differs from `theirs` (same length), `pos` being the disk offset of both.
fn describe(pos: u64, ours: &[u8], theirs: &[u8]) -> Option<String> {
    if ours == theirs {
        return None;
    }
    let i = ours.iter().zip(theirs).position(|(a, b)| a != b).unwrap();
    Some(format!(
        "first difference at byte {}: ours {:#04x}, qemu {:#04x}",
        pos + i as u64,
        ours[i],
        theirs[i]
    ))
}

/// Where the stream `ours` first differs from the regular file `expected`, lengths included.
/// Holes of `expected` are compared as zeros without being read.
fn stream_difference(ours: &mut dyn Read, expected: &File) -> Option<String> {
    let len = expected.metadata().unwrap().len();
    let zeros = vec![0u8; CHUNK as usize];
    let (mut a, mut b) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut pos = 0;
    while pos < len {
        let want = CHUNK.min(len - pos) as usize;
        let n = fill(ours, &mut a[..want]);
        if n < want {
            return Some(format!(
                "ours ends at byte {}, qemu's at byte {len}",
                pos + n as u64
            ));
        }
        let theirs = if next_data(expected, pos) >= pos + want as u64 {
            &zeros[..want]
        } else {
            expected.read_exact_at(&mut b[..want], pos).unwrap();
            &b[..want]
        };
        if let Some(d) = describe(pos, &a[..want], theirs) {
            return Some(d);
        }
        pos += want as u64;
    }
    (fill(ours, &mut a[..1]) > 0).then(|| format!("ours is longer than qemu's {len} bytes"))
}

/// Where the regular file `ours` first differs from the regular file `expected`, lengths
/// included. Stretches that are holes in both read as zeros in both and are skipped.
fn file_difference(ours: &File, expected: &File) -> Option<String> {
    let la = ours.metadata().unwrap().len();
    let lb = expected.metadata().unwrap().len();
    if la != lb {
        return Some(format!("ours is {la} bytes, qemu's {lb}"));
    }
    let (mut a, mut b) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut pos = 0;
    loop {
        pos = next_data(ours, pos).min(next_data(expected, pos));
        if pos >= la {
            return None;
        }
        let want = CHUNK.min(la - pos) as usize;
        ours.read_exact_at(&mut a[..want], pos).unwrap();
        expected.read_exact_at(&mut b[..want], pos).unwrap();
        if let Some(d) = describe(pos, &a[..want], &b[..want]) {
            return Some(d);
        }
        pos += want as u64;
    }
}

fn open(p: &Path) -> File {
    File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `vmdk-parse cat DISK` to a pipe, compared as it streams with the file `expected`.
fn assert_cat_stdout_equals(disk: &Path, flags: &[&str], expected: &Path) {
    let mut child = vp(flags, &["cat"], disk)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmdk-parse cat");
    let mut stdout = child.stdout.take().unwrap();
    let diff = stream_difference(&mut stdout, &open(expected));
    drop(stdout);
    if diff.is_some() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    if let Some(d) = diff {
        panic!(
            "vmdk-parse cat {} (stdout) != qemu-img convert -O raw: {d} (exit {}, stderr {})",
            disk.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        out.status.success(),
        "vmdk-parse cat {} exited {}: {}",
        disk.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_files_equal(what: &str, ours: &Path, expected: &Path) {
    if let Some(d) = file_difference(&open(ours), &open(expected)) {
        panic!("{what}: {d}");
    }
}

fn allocated_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

// ---------------------------------------------------------------------------------------------
// The whole comparison of one disk
// ---------------------------------------------------------------------------------------------

/// Check `disk` end to end against qemu: cat (stdout and -o), map, info, check.
fn agree_with_qemu(disk: &Path, flags: &[&str]) {
    let name = disk.display().to_string();
    let work = tempfile::tempdir().unwrap();

    // Bytes.
    let raw = work.path().join("qemu.raw");
    qemu_img(&["convert", "-O", "raw", &name, raw.to_str().unwrap()]);
    assert_cat_stdout_equals(disk, flags, &raw);
    let out = work.path().join("ours.raw");
    run(&mut vp(flags, &["cat", "-o", out.to_str().unwrap()], disk));
    assert_files_equal(
        &format!("vmdk-parse cat -o OUT {name} vs qemu-img convert -O raw"),
        &out,
        &raw,
    );
    assert!(
        allocated_bytes(&out) <= allocated_bytes(&raw) + MIB,
        "{name}: cat -o OUT allocates {} bytes, qemu-img convert's raw file only {}",
        allocated_bytes(&out),
        allocated_bytes(&raw)
    );
    drop(work);

    // Map.
    let qemu = qemu_normalised(disk);
    let ours = ours_normalised(&vp_map(disk, flags));
    assert_same_map(&name, &ours, &qemu);

    // Info: size, createType, CIDs of every link, totals.
    let chain = qemu_chain(disk);
    let info = vp_info(disk, flags);
    assert_info_matches(&name, &info, &chain, &qemu);

    // Check: qemu finds the disk clean, so must we. (qemu has no check for raw images.)
    if chain[0]["format"] == "raw" {
        return;
    }
    let q = Command::new("qemu-img")
        .args(["check", "-q", &name])
        .output()
        .unwrap();
    assert!(
        q.status.success(),
        "qemu-img check {name} is not clean: {q:?}"
    );
    let c = vp(flags, &["check"], disk).output().unwrap();
    assert_eq!(
        c.status.code(),
        Some(0),
        "vmdk-parse check {name} is not clean though qemu-img check is: {}{}",
        String::from_utf8_lossy(&c.stdout),
        String::from_utf8_lossy(&c.stderr)
    );
}

fn assert_info_matches(name: &str, info: &Value, chain: &[Value], qemu: &Segs) {
    let top = &chain[0];
    assert_eq!(
        info["capacity_bytes"].as_u64(),
        top["virtual-size"].as_u64(),
        "{name}: info capacity_bytes vs qemu virtual-size"
    );
    assert_totals_match(name, info, qemu);
    if top["format"] == "raw" {
        assert_eq!(info["create_type"], "raw", "{name}: a raw image");
        return;
    }
    let spec = |v: &Value, k: &str| v["format-specific"]["data"][k].clone();
    assert_eq!(
        info["create_type"].as_str(),
        spec(top, "create-type").as_str(),
        "{name}: info create_type vs qemu create-type"
    );
    let links = info["chain"].as_array().expect("info has a chain array");
    assert_eq!(
        links.len(),
        chain.len(),
        "{name}: chain length, vmdk-parse {links:#?} vs qemu {chain:#?}"
    );
    let hex = |v: Value| v.as_u64().map(|c| format!("{c:08x}"));
    for (i, (ours, theirs)) in links.iter().zip(chain).enumerate() {
        assert_eq!(
            ours["path"].as_str().map(base_name),
            theirs["filename"].as_str().map(base_name),
            "{name}: link {i} path"
        );
        assert_eq!(
            ours["cid"].as_str().map(str::to_ascii_lowercase),
            hex(spec(theirs, "cid")),
            "{name}: link {i} CID"
        );
        assert_eq!(
            ours["parent_cid"].as_str().map(str::to_ascii_lowercase),
            hex(spec(theirs, "parent-cid")),
            "{name}: link {i} parentCID"
        );
    }
}

fn assert_totals_match(name: &str, info: &Value, qemu: &Segs) {
    let (data, zero, unalloc) = qemu.totals();
    let t = &info["totals"];
    assert_eq!(
        (
            t["data_bytes"].as_u64(),
            t["zero_bytes"].as_u64(),
            t["unallocated_bytes"].as_u64()
        ),
        (Some(data), Some(zero), Some(unalloc)),
        "{name}: info totals (data, zero, unallocated) vs qemu-img map"
    );
}

// ---------------------------------------------------------------------------------------------
// Single-link disks, one per subformat
// ---------------------------------------------------------------------------------------------

/// One small disk of `subformat` (with extra `-o` options) given the standard writes.
fn standard_disk(lab: &mut Lab, name: &str, size: u64, opts: &str) -> PathBuf {
    let disk = lab.create(name, &size.to_string(), opts);
    let cmds = standard_writes(lab, size);
    io(&disk, &cmds);
    disk
}

#[test]
fn monolithic_sparse() {
    let mut lab = Lab::new();
    // 40 MiB: past the 32 MiB one grain table covers, with writes across that boundary.
    let size = 40 * MIB;
    let disk = standard_disk(&mut lab, "sparse.vmdk", size, "");
    let gt = 32 * MIB;
    let cmds = [lab.rnd(gt - 5000, 70_000), "write -P 0x31 33M 64k".into()];
    io(&disk, &cmds);
    agree_with_qemu(&disk, &[]);
}

#[test]
fn monolithic_flat() {
    let mut lab = Lab::new();
    let disk = standard_disk(
        &mut lab,
        "flat.vmdk",
        6 * MIB,
        "subformat=monolithicFlat,adapter_type=lsilogic",
    );
    agree_with_qemu(&disk, &[]);
}

#[test]
fn two_gb_max_extent_sparse_small() {
    let mut lab = Lab::new();
    let disk = standard_disk(
        &mut lab,
        "split.vmdk",
        6 * MIB,
        "subformat=twoGbMaxExtentSparse,compat6=on",
    );
    agree_with_qemu(&disk, &[]);
}

#[test]
fn two_gb_max_extent_flat_small() {
    let mut lab = Lab::new();
    let disk = standard_disk(
        &mut lab,
        "splitflat.vmdk",
        6 * MIB,
        "subformat=twoGbMaxExtentFlat",
    );
    agree_with_qemu(&disk, &[]);
}

/// Writes across the boundary of the first two 2 GiB extents, and at the very end.
fn multi_extent_writes(lab: &mut Lab, size: u64) -> Vec<String> {
    let b = 2 * GIB;
    vec![
        lab.rnd(4096, 8192),
        lab.rnd(b - 100_000, 300_000),
        format!("write -P 0x42 {} 64k", b + MIB),
        format!("write -z {} 128k", b + 2 * MIB),
        lab.rnd(size - 512, 512),
    ]
}

#[test]
fn two_gb_max_extent_sparse_two_extents() {
    let mut lab = Lab::new();
    let size = 2 * GIB + 4 * MIB;
    let disk = lab.create(
        "split2.vmdk",
        &size.to_string(),
        "subformat=twoGbMaxExtentSparse",
    );
    let cmds = multi_extent_writes(&mut lab, size);
    io(&disk, &cmds);
    agree_with_qemu(&disk, &[]);
}

#[test]
fn two_gb_max_extent_flat_two_extents() {
    let mut lab = Lab::new();
    let size = 2 * GIB + 4 * MIB;
    let disk = lab.create(
        "splitflat2.vmdk",
        &size.to_string(),
        "subformat=twoGbMaxExtentFlat",
    );
    let cmds = multi_extent_writes(&mut lab, size);
    io(&disk, &cmds);
    agree_with_qemu(&disk, &[]);
}

#[test]
fn zeroed_grain_monolithic_sparse() {
    let mut lab = Lab::new();
    let size = 6 * MIB;
    let disk = standard_disk(&mut lab, "zg.vmdk", size, "zeroed_grain=on");
    // Zero grains over grains that held data (qemu turns them into zero GTEs), and zeroes
    // over a never-written range.
    io(
        &disk,
        &[
            "write -z 192k 64k".into(),
            "write -z 2M 1M".into(),
            "write -z 4M 256k".into(),
        ],
    );
    let header = std::fs::read(&disk).unwrap();
    assert_eq!(&header[..4], b"KDMV");
    assert_eq!(
        u32::from_le_bytes(header[4..8].try_into().unwrap()),
        2,
        "zeroed_grain=on writes header version 2"
    );
    assert_ne!(
        u32::from_le_bytes(header[8..12].try_into().unwrap()) & 4,
        0,
        "zeroed_grain=on sets the zero-GTE flag"
    );
    // The recipe must really have made zero grains, or this test proves nothing about them.
    assert!(
        qemu_map_json(&disk)
            .iter()
            .any(|r| r.present && r.zero && !r.data),
        "qemu made no zero grain"
    );
    agree_with_qemu(&disk, &[]);
}

#[test]
fn zeroed_grain_two_gb_max_extent_sparse() {
    let mut lab = Lab::new();
    let disk = standard_disk(
        &mut lab,
        "zgsplit.vmdk",
        6 * MIB,
        "subformat=twoGbMaxExtentSparse,zeroed_grain=on",
    );
    io(&disk, &["write -z 0 128k".into()]);
    agree_with_qemu(&disk, &[]);
}

/// A raw image with random data, explicit zeroes and holes; its size is not a whole number of
/// grains, and the last partial grain holds data.
fn raw_source(lab: &mut Lab, name: &str) -> PathBuf {
    let size = 5 * MIB + 1536;
    let p = lab.path(name);
    let f = File::create(&p).unwrap();
    f.set_len(size).unwrap();
    let mut seed = 100;
    let mut put = |off: u64, len: u64, random: bool| {
        seed += 1;
        let data = if random {
            random_bytes(seed, len as usize)
        } else {
            vec![0; len as usize]
        };
        f.write_all_at(&data, off).unwrap();
    };
    put(10 * KIB, 300 * KIB, true);
    put(MIB, 256 * KIB, false);
    put(MIB + 300 * KIB, 3, true);
    put(2 * MIB - 7, 70_000, true);
    put(3 * MIB, 512 * KIB, true);
    put(3 * MIB + 100 * KIB, 64 * KIB, false);
    put(size - 1000, 1000, true);
    p
}

#[test]
fn stream_optimized() {
    let mut lab = Lab::new();
    let src = raw_source(&mut lab, "source.raw");
    lab.qemu_img_here(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        src.to_str().unwrap(),
        "stream.vmdk",
    ]);
    let disk = lab.path("stream.vmdk");
    agree_with_qemu(&disk, &[]);
    // The oracle's own reading must be the source image, or the comparison means nothing.
    assert_eq!(
        sha256_hex(&common::qemu_raw(&disk, lab.dir.path())),
        sha256_hex(&std::fs::read(&src).unwrap())
    );
}

#[test]
fn stream_optimized_every_grain_stored() {
    // `-S 0`: every grain is written, compressed, including all-zero ones; `cat -o` must still
    // leave holes for them.
    let mut lab = Lab::new();
    let src = raw_source(&mut lab, "source.raw");
    lab.qemu_img_here(&[
        "convert",
        "-S",
        "0",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        src.to_str().unwrap(),
        "dense.vmdk",
    ]);
    agree_with_qemu(&lab.path("dense.vmdk"), &[]);
}

#[test]
fn stream_optimized_written_by_qemu_io() {
    // An empty streamOptimized disk as `qemu-img create` makes it, read first as it is, then
    // after qemu appends grains to it (qemu writes whole grains only, each once, in order).
    let mut lab = Lab::new();
    let size = 6 * MIB;
    let disk = lab.create(
        "appended.vmdk",
        &size.to_string(),
        "subformat=streamOptimized",
    );
    agree_with_qemu(&disk, &[]);
    let cmds = [
        lab.rnd(0, 64 * KIB),
        lab.rnd(192 * KIB, 192 * KIB),
        "write -P 0x6b 1M 256k".into(),
        lab.rnd(3 * MIB, 64 * KIB),
        lab.rnd(size - 64 * KIB, 64 * KIB),
    ];
    io(&disk, &cmds);
    agree_with_qemu(&disk, &[]);
}

#[test]
fn raw_image() {
    // vmdk-parse reads raw images too; qemu reads them as format raw (holes are zero).
    let mut lab = Lab::new();
    let src = raw_source(&mut lab, "disk.img");
    agree_with_qemu(&src, &[]);
}

// ---------------------------------------------------------------------------------------------
// Snapshot chains
// ---------------------------------------------------------------------------------------------

/// Writes to the middle link: over base data (partly, so qemu copies the rest of the grain up),
/// zeroes over base data (whole grains, one of which the top link leaves visible, and part of
/// a grain), data over unwritten base.
fn mid_writes(lab: &mut Lab) -> Vec<String> {
    vec![
        lab.rnd(512 * KIB + 100, 100_000),
        "write -z 2112k 64k".into(),
        "write -z 2176k 64k".into(),
        "write -z 2240k 8k".into(),
        "write -P 0x03 3M 64k".into(),
    ]
}

/// Writes to the top link: over both parents, over the middle link's zeroes, zeroes over base.
fn top_writes(lab: &mut Lab, size: u64) -> Vec<String> {
    vec![
        lab.rnd(600 * KIB, 200 * KIB),
        "write -P 0x04 2080k 64k".into(),
        "write -z 0 64k".into(),
        lab.rnd(size - 4096, 4096),
    ]
}

fn base_writes(lab: &mut Lab, size: u64) -> Vec<String> {
    vec![
        lab.rnd(0, MIB),
        "write -P 0x02 2M 256k".into(),
        lab.rnd(size - 10_000, 10_000),
    ]
}

/// base <- mid <- top, with writes overlapping across the three links.
fn three_links(lab: &mut Lab, base_opts: &str, child_opts: &str) -> PathBuf {
    let size = 4 * MIB;
    let base = lab.create("base.vmdk", &size.to_string(), base_opts);
    let cmds = base_writes(lab, size);
    io(&base, &cmds);
    let mid = lab.child("mid.vmdk", "base.vmdk", child_opts);
    let cmds = mid_writes(lab);
    io(&mid, &cmds);
    let top = lab.child("top.vmdk", "mid.vmdk", child_opts);
    let cmds = top_writes(lab, size);
    io(&top, &cmds);
    top
}

fn assert_depths_used(disk: &Path, want: &[u32]) {
    let q = qemu_map_json(disk);
    for d in want {
        assert!(
            q.iter().any(|r| r.depth == *d && r.present),
            "recipe problem: qemu maps nothing at depth {d}: {q:?}"
        );
    }
}

#[test]
fn chain_of_three_sparse() {
    let mut lab = Lab::new();
    let top = three_links(&mut lab, "", "");
    assert_depths_used(&top, &[0, 1, 2]);
    agree_with_qemu(&top, &[]);
    // Each link read on its own is a disk too.
    agree_with_qemu(&lab.path("mid.vmdk"), &[]);
}

#[test]
fn chain_of_three_zeroed_grain() {
    let mut lab = Lab::new();
    let top = three_links(&mut lab, "zeroed_grain=on", "zeroed_grain=on");
    assert!(
        qemu_map_json(&top)
            .iter()
            .any(|r| r.depth == 1 && r.present && r.zero && !r.data),
        "recipe problem: no zero grain in the middle link"
    );
    agree_with_qemu(&top, &[]);
}

#[test]
fn chain_over_flat_base() {
    let mut lab = Lab::new();
    let top = three_links(&mut lab, "subformat=monolithicFlat", "");
    agree_with_qemu(&top, &[]);
}

#[test]
fn chain_over_split_base() {
    let mut lab = Lab::new();
    let top = three_links(
        &mut lab,
        "subformat=twoGbMaxExtentFlat",
        "subformat=twoGbMaxExtentSparse",
    );
    agree_with_qemu(&top, &[]);
}

#[test]
fn chain_over_stream_optimized_base() {
    let mut lab = Lab::new();
    let src = raw_source(&mut lab, "source.raw");
    lab.qemu_img_here(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        src.to_str().unwrap(),
        "base.vmdk",
    ]);
    let mid = lab.child("mid.vmdk", "base.vmdk", "zeroed_grain=on");
    let cmds = mid_writes(&mut lab);
    io(&mid, &cmds);
    let top = lab.child("top.vmdk", "mid.vmdk", "");
    let cmds = top_writes(&mut lab, 5 * MIB + 1536);
    io(&top, &cmds);
    assert_depths_used(&top, &[0, 1, 2]);
    agree_with_qemu(&top, &[]);
}

#[test]
fn chain_with_absolute_parent_paths_inside_the_folder() {
    // qemu writes the parent hint as given: absolute here, but inside the disk's folder.
    let mut lab = Lab::new();
    let size = 4 * MIB;
    let base = lab.create("base.vmdk", &size.to_string(), "");
    let cmds = base_writes(&mut lab, size);
    io(&base, &cmds);
    let top = lab.child("top.vmdk", base.to_str().unwrap(), "");
    let cmds = top_writes(&mut lab, size);
    io(&top, &cmds);
    agree_with_qemu(&top, &[]);
}

#[test]
fn chain_with_parent_outside_the_folder() {
    let mut lab = Lab::new();
    std::fs::create_dir(lab.path("a")).unwrap();
    std::fs::create_dir(lab.path("b")).unwrap();
    let size = 4 * MIB;
    let base = lab.create("a/base.vmdk", &size.to_string(), "");
    let cmds = base_writes(&mut lab, size);
    io(&base, &cmds);
    // qemu resolves a relative hint from the child's folder, and so must we.
    let top = lab.child("b/top.vmdk", "../a/base.vmdk", "");
    let cmds = top_writes(&mut lab, size);
    io(&top, &cmds);

    // Refused by default (exit 7), with nothing on stdout.
    for cmd in [&["cat"][..], &["map"], &["info"]] {
        let out = vp(&[], cmd, &top).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(7),
            "vmdk-parse {cmd:?} on a chain leaving its folder: {out:?}"
        );
        assert!(out.stdout.is_empty(), "{cmd:?} wrote to stdout: {out:?}");
    }
    // Followed with --allow-outside, and then read as qemu reads it.
    agree_with_qemu(&top, &["--allow-outside"]);
}

/// `vmdk-parse CMD DISK` must fail with `code`, printing nothing on stdout.
fn assert_fails(disk: &Path, cmd: &[&str], code: i32) {
    let out = vp(&[], cmd, disk).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "vmdk-parse {cmd:?} {}: {out:?}",
        disk.display()
    );
    assert!(out.stdout.is_empty(), "{cmd:?} wrote to stdout: {out:?}");
}

fn qemu_cannot_read(disk: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("qemu-img")
        .arg("convert")
        .args(["-O", "raw"])
        .arg(disk)
        .arg(scratch.path().join("x.raw"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "recipe problem: qemu reads {} without complaint",
        disk.display()
    );
}

#[test]
fn chain_with_missing_parent() {
    let mut lab = Lab::new();
    let top = three_links(&mut lab, "", "");
    std::fs::remove_file(lab.path("base.vmdk")).unwrap();
    qemu_cannot_read(&top);
    for cmd in [&["cat"][..], &["map"], &["info"]] {
        assert_fails(&top, cmd, 4);
    }
}

#[test]
fn chain_whose_parent_changed() {
    // Writing to the parent after the child was made gives the parent a new CID: the child's
    // parentCID no longer matches. qemu refuses to read such a chain, and so must we.
    let mut lab = Lab::new();
    let top = three_links(&mut lab, "", "");
    io(&lab.path("mid.vmdk"), &["write -P 0x66 0 4k".into()]);
    qemu_cannot_read(&top);
    for cmd in [&["cat"][..], &["map"], &["info"]] {
        assert_fails(&top, cmd, 3);
    }
    let out = vp(&[], &["check"], &top).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "check: {out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("check prints a JSON report");
    assert_eq!(report["clean"], Value::Bool(false), "{report:#}");
}

// ---------------------------------------------------------------------------------------------
// Where vmdk-parse reads differently from qemu on purpose (see `disk.rs` and `sparse.rs`)
// ---------------------------------------------------------------------------------------------

#[test]
fn divergence_child_larger_than_parent() {
    // `qemu-img create -b base.vmdk top.vmdk 8M` over a 4 MiB base: qemu reads the chain,
    // with zeros past the parent's end. VMware refuses such chains, and so does vmdk-parse
    // (exit 3); `check` reports it.
    let lab = Lab::new();
    let base = lab.create("base.vmdk", "4M", "");
    io(&base, &["write -P 0x01 0 4M".into()]);
    lab.qemu_img_here(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "top.vmdk",
        "8M",
    ]);
    let top = lab.path("top.vmdk");
    io(&top, &["write -P 0x02 5M 64k".into()]);
    let scratch = tempfile::tempdir().unwrap();
    assert_eq!(common::qemu_raw(&top, scratch.path()).len() as u64, 8 * MIB);
    for cmd in [&["cat"][..], &["map"], &["info"]] {
        assert_fails(&top, cmd, 3);
    }
    let out = vp(&[], &["check"], &top).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "check: {out:?}");
}

#[test]
fn divergence_zero_gte_without_the_flag() {
    // A grain table entry of 1 in a disk without the zero-grain flag (qemu never writes one;
    // patched in here): qemu reads sector 1, the embedded descriptor, as guest data; vmdk-parse
    // reads zeros, as VMware's own reader does, and `check` reports the entry.
    let lab = Lab::new();
    let disk = lab.create("d.vmdk", "4M", "");
    io(&disk, &["write -P 0x01 0 64k".into()]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h, 0).unwrap();
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let le64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    assert_eq!(le32(&h, 8) & 4, 0, "no zero-grain flag");
    for gd_at in [le64(&h, 56), le64(&h, 48)] {
        let mut gd = [0u8; 4];
        f.read_exact_at(&mut gd, gd_at * 512).unwrap();
        let gt = le32(&gd, 0) as u64;
        assert_ne!(gt, 0);
        // Grain 2 (bytes 128 KiB to 192 KiB).
        f.write_all_at(&1u32.to_le_bytes(), gt * 512 + 2 * 4)
            .unwrap();
    }
    drop(f);
    let theirs = qemu_read(&disk, 128 * KIB, 64);
    assert!(
        theirs.starts_with(b"# Disk DescriptorFile"),
        "qemu reads the descriptor: {theirs:?}"
    );
    let ours = common::vmdk_parse_cat(&disk);
    assert!(ours[128 * KIB as usize..192 * KIB as usize]
        .iter()
        .all(|&b| b == 0));
    let map = vp_map(&disk, &[]);
    assert!(
        map.iter()
            .any(|r| r.offset == 128 * KIB && r.length == 64 * KIB && r.state == "zero"),
        "{map:?}"
    );
    let out = vp(&[], &["check"], &disk).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "check: {out:?}");
}

// ---------------------------------------------------------------------------------------------
// A disk over 2 TiB: sector numbers past 2^32
// ---------------------------------------------------------------------------------------------

const BIG: u64 = 3 * TIB;
const TWO_TIB: u64 = 2 * TIB; // sector 2^32

/// A 3 TiB monolithicSparse disk with a few grains written at sector 2^32 and near the end.
fn three_tib_disk(lab: &mut Lab) -> PathBuf {
    let disk = lab.create("big.vmdk", &BIG.to_string(), "");
    let cmds = [
        lab.rnd(TWO_TIB - 4096, 8192),
        lab.rnd(BIG - 100 * MIB + 7, 100_000),
        "write -P 0xcd 3145727M 64k".into(),
        lab.rnd(BIG - 1536, 1536),
    ];
    io(&disk, &cmds);
    disk
}

#[test]
fn three_tib_sparse_disk() {
    // No full convert: the map against qemu's, and reads around the written places and at the
    // end against qemu-io's.
    let mut lab = Lab::new();
    let disk = three_tib_disk(&mut lab);

    // qemu maps a 3 TiB disk one 64 KiB cluster at a time (~20 s): start it now.
    let disk2 = disk.clone();
    let qemu = std::thread::spawn(move || qemu_normalised(&disk2));

    let ours = ours_normalised(&vp_map(&disk, &[]));
    let out = lab.path("big.raw");
    run(&mut vp(&[], &["cat", "-o", out.to_str().unwrap()], &disk));
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        BIG,
        "cat -o OUT has the disk's size"
    );
    assert!(
        allocated_bytes(&out) < 16 * MIB,
        "cat -o OUT of a 3 TiB disk holding ~300 KiB allocates {} bytes",
        allocated_bytes(&out)
    );
    let f = open(&out);
    for (off, len) in [
        (TWO_TIB - 8192, 32 * KIB),
        (BIG - 100 * MIB, 128 * KIB),
        (3145727 * MIB - 4096, 72 * KIB),
        (BIG - 64 * KIB, 64 * KIB),
    ] {
        let mut ours = vec![0u8; len as usize];
        f.read_exact_at(&mut ours, off).unwrap();
        let theirs = qemu_read(&disk, off, len);
        if let Some(d) = describe(off, &ours, &theirs) {
            panic!("3 TiB disk, cat -o OUT at [{off}, +{len}): {d} (ours vs qemu-io read)");
        }
    }

    let qemu = qemu.join().expect("qemu-img map thread");
    assert_eq!(qemu.end(), BIG);
    assert_same_map("3 TiB monolithicSparse", &ours, &qemu);
    let info = vp_info(&disk, &[]);
    assert_info_matches("3 TiB", &info, &qemu_chain(&disk), &qemu);
}

#[test]
fn three_tib_cat_to_file_costs_about_what_its_map_costs() {
    // "Quickly": writing the sparse output of a nearly empty disk must cost about what walking
    // its map costs, not time proportional to the 3 TiB of holes. Measured against `map` on the
    // same machine, so a slow or busy machine does not make it fail.
    let mut lab = Lab::new();
    let disk = three_tib_disk(&mut lab);
    let t = Instant::now();
    run(&mut vp(&[], &["map"], &disk));
    let map_time = t.elapsed();
    let out = lab.path("big.raw");
    let t = Instant::now();
    run(&mut vp(&[], &["cat", "-o", out.to_str().unwrap()], &disk));
    let cat_time = t.elapsed();
    assert!(
        cat_time <= map_time * 3 + std::time::Duration::from_secs(3),
        "vmdk-parse cat -o of a 3 TiB disk holding ~300 KiB took {cat_time:?}, \
         but its map takes {map_time:?}: the holes are being processed byte by byte"
    );
}

// ---------------------------------------------------------------------------------------------
// Real VMware files
// ---------------------------------------------------------------------------------------------

/// (file, virtual size, sha256) from `fixtures/vmware/NOTICE`.
fn notice_hashes() -> Vec<(PathBuf, u64, String)> {
    let dir = fixtures().join("vmware");
    let notice = std::fs::read_to_string(dir.join("NOTICE")).unwrap();
    let rows: Vec<_> = notice
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w[..] {
                [file, "virtual", "size", n, "sha256", h] if h.len() == 64 => {
                    Some((dir.join(file), n.parse().unwrap(), h.to_string()))
                }
                _ => None,
            }
        })
        .collect();
    assert!(
        rows.len() >= 3,
        "NOTICE lists the fixtures' hashes: {rows:?}"
    );
    rows
}

#[test]
fn vmware_fixtures_read_to_their_notice_hashes() {
    let work = tempfile::tempdir().unwrap();
    for (disk, size, hash) in notice_hashes() {
        let name = disk.display();
        let bytes = common::vmdk_parse_cat(&disk);
        assert_eq!(bytes.len() as u64, size, "{name}: cat length");
        assert_eq!(sha256_hex(&bytes), hash, "{name}: sha256 of cat stdout");
        let out = work.path().join("out.raw");
        run(&mut vp(&[], &["cat", "-o", out.to_str().unwrap()], &disk));
        assert_eq!(
            sha256_hex(&std::fs::read(&out).unwrap()),
            hash,
            "{name}: sha256 of cat -o OUT"
        );
    }
}

#[test]
fn vmware_fixtures_map_like_qemu() {
    for (disk, _, _) in notice_hashes() {
        let name = disk.display().to_string();
        let qemu = qemu_normalised(&disk);
        let ours = ours_normalised(&vp_map(&disk, &[]));
        assert_same_map(&name, &ours, &qemu);
        let info = vp_info(&disk, &[]);
        assert_info_matches(&name, &info, &qemu_chain(&disk), &qemu);
    }
}

// ---------------------------------------------------------------------------------------------
// libvmdk's vmdkinfo
// ---------------------------------------------------------------------------------------------

/// `vmdkinfo DISK`: (media size, CID, parent CID).
fn vmdkinfo(disk: &Path) -> (u64, Option<String>, Option<String>) {
    let out = run(Command::new("vmdkinfo").arg(disk));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let size = field("Media size:")
        .and_then(|v| {
            let inner = v.split_once('(')?.1;
            inner.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("vmdkinfo {}: no media size in {text}", disk.display()));
    let cid = |key| field(key).map(|v| v.trim_start_matches("0x").to_ascii_lowercase());
    (
        size,
        cid("Content identifier:"),
        cid("Parent content identifier:"),
    )
}

fn vmdkinfo_available() -> bool {
    if Command::new("vmdkinfo").arg("-V").output().is_ok() {
        return true;
    }
    let ci = std::env::var("CI").unwrap_or_default();
    assert!(
        ci.is_empty() || ci == "false" || ci == "0",
        "vmdkinfo is not installed, and CI={ci}: install the Debian package libvmdk-utils \
         (.ci/run does) so libvmdk checks vmdk-parse"
    );
    eprintln!("SKIPPED: vmdkinfo is not installed (apt-get install libvmdk-utils)");
    false
}

#[test]
fn vmdkinfo_agrees_on_size_and_cids() {
    if !vmdkinfo_available() {
        return;
    }
    let mut lab = Lab::new();
    let mut disks = vec![
        standard_disk(&mut lab, "sparse.vmdk", 6 * MIB, ""),
        standard_disk(&mut lab, "flat.vmdk", 6 * MIB, "subformat=monolithicFlat"),
        standard_disk(&mut lab, "zg.vmdk", 6 * MIB, "zeroed_grain=on"),
        lab.create(
            "split.vmdk",
            &(2 * GIB + 4 * MIB).to_string(),
            "subformat=twoGbMaxExtentSparse",
        ),
        lab.create(
            "splitflat.vmdk",
            &(2 * GIB + 4 * MIB).to_string(),
            "subformat=twoGbMaxExtentFlat",
        ),
        lab.child("child.vmdk", "sparse.vmdk", ""),
    ];
    let src = raw_source(&mut lab, "source.raw");
    lab.qemu_img_here(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        src.to_str().unwrap(),
        "stream.vmdk",
    ]);
    disks.push(lab.path("stream.vmdk"));
    disks.extend(notice_hashes().into_iter().map(|(p, _, _)| p));
    for disk in &disks {
        let name = disk.display();
        let (size, cid, parent_cid) = vmdkinfo(disk);
        let info = vp_info(disk, &[]);
        assert_eq!(
            info["capacity_bytes"].as_u64(),
            Some(size),
            "{name}: vmdk-parse capacity_bytes vs vmdkinfo media size"
        );
        let link = &info["chain"][0];
        if cid.is_some() {
            assert_eq!(link["cid"].as_str(), cid.as_deref(), "{name}: CID");
        }
        if parent_cid.is_some() {
            assert_eq!(
                link["parent_cid"].as_str(),
                parent_cid.as_deref(),
                "{name}: parentCID"
            );
        }
    }
}
