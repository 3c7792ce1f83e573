//! vdiff and vpatch end to end, through the real binaries and real pipes:
//! `vdiff a b | vpatch a - -o c` over raw images and qemu-made VMDKs (monolithicSparse and
//! streamOptimized), chains and full deltas, with `qemu-img compare` as the judge; hostile
//! streams each give one clear line, exit code 3 and no output file; the `--stat` schema.

mod common;

use common::{bin, qemu_img, qemu_io};
use serde::Deserialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fill(seed: u64, out: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// A raw image of 8 MiB: random data with a hole in the middle.
fn raw_old(dir: &Path) -> PathBuf {
    let mut a = vec![0u8; 8 << 20];
    fill(1, &mut a[..3 << 20]);
    fill(2, &mut a[5 << 20..]);
    let p = dir.join("a.raw");
    fs::write(&p, &a).unwrap();
    p
}

/// NEW from OLD: a changed range, a moved range, a duplicated new block, zeros, and a larger size.
fn raw_new(dir: &Path, old: &Path) -> PathBuf {
    let mut b = fs::read(old).unwrap();
    fill(3, &mut b[100 << 12..110 << 12]);
    let moved = b[6 << 20..(6 << 20) + (256 << 10)].to_vec();
    b[1 << 20..(1 << 20) + (256 << 10)].copy_from_slice(&moved);
    let dup = b[100 << 12..101 << 12].to_vec();
    b[2 << 20..(2 << 20) + 4096].copy_from_slice(&dup);
    b[5 << 20..(5 << 20) + (64 << 10)].fill(0);
    b.resize(10 << 20, 0);
    let p = dir.join("b.raw");
    fs::write(&p, &b).unwrap();
    p
}

/// `vdiff ARGS | vpatch PARGS`: both statuses and vpatch's stderr.
fn pipe(vdiff_args: &[&Path], vpatch_args: &[&Path]) -> (bool, std::process::Output) {
    let mut d = Command::new(bin("vdiff"))
        .args(vdiff_args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new(bin("vpatch"))
        .args(vpatch_args)
        .stdin(Stdio::from(d.stdout.take().unwrap()))
        .output()
        .unwrap();
    (d.wait().unwrap().success(), out)
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn compare(fmt: &str, new: &Path, out: &Path) {
    qemu_img(&[
        "compare",
        "-f",
        fmt,
        "-F",
        "raw",
        new.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
}

fn no_temp_files(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !n.starts_with(".vpatch-") && !n.starts_with(".vdiff-"),
            "left over: {n}"
        );
    }
}

#[test]
fn raw_pipe_round_trip_is_sparse() {
    let t = tempfile::tempdir().unwrap();
    let a = raw_old(t.path());
    let b = raw_new(t.path(), &a);
    let c = t.path().join("c.raw");
    let (ok, out) = pipe(&[&a, &b], &[&a, p("-"), p("-o"), &c]);
    assert!(
        ok && out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    compare("raw", &b, &c);
    // The 2 MiB hole of the old image and the 2 MiB of growth are not written.
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(&c).unwrap();
    assert!(
        m.blocks() * 512 <= (10 << 20) - (3 << 20),
        "{} bytes allocated",
        m.blocks() * 512
    );
    no_temp_files(t.path());
}

/// OLD and NEW as VMDKs of `subformat`, edited with qemu-io.
fn vmdk_pair(dir: &Path, subformat: &str) -> (PathBuf, PathBuf) {
    let a0 = dir.join("a0.vmdk");
    let s = a0.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "vmdk", s, "16M"]);
    qemu_io(
        &a0,
        "vmdk",
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 4M 512k",
            "write -P 0x33 9M 64k",
        ],
    );
    let b0 = dir.join("b0.vmdk");
    qemu_img(&["convert", "-q", "-O", "vmdk", s, b0.to_str().unwrap()]);
    qemu_io(
        &b0,
        "vmdk",
        &[
            "write -P 0x44 512k 64k",
            "write -P 0x22 12M 512k",
            "write -z 4M 128k",
        ],
    );
    let (a, b) = (dir.join("a.vmdk"), dir.join("b.vmdk"));
    for (from, to) in [(&a0, &a), (&b0, &b)] {
        qemu_img(&[
            "convert",
            "-q",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={subformat}"),
            from.to_str().unwrap(),
            to.to_str().unwrap(),
        ]);
    }
    (a, b)
}

fn vmdk_round_trip(subformat: &str) {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = vmdk_pair(t.path(), subformat);
    let c = t.path().join("c.raw");
    let (ok, out) = pipe(&[&a, &b], &[&a, p("-"), p("-o"), &c]);
    assert!(
        ok && out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    compare("vmdk", &b, &c);
    // The moved 512 KiB (0x22 at 4M, now also at 12M) came from the source, not as a literal.
    let stat = Command::new(bin("vdiff"))
        .arg("--stat")
        .args([&a, &b])
        .output()
        .unwrap();
    let s: Stat = serde_json::from_slice(&stat.stdout).unwrap();
    assert!(s.copy_source_bytes >= 512 << 10, "{s:?}");
    assert!(s.literal_bytes <= 64 << 10, "{s:?}");
}

#[test]
fn monolithic_sparse_pipe() {
    vmdk_round_trip("monolithicSparse");
}

#[test]
fn stream_optimized_pipe() {
    vmdk_round_trip("streamOptimized");
}

#[test]
fn chain_and_full_deltas() {
    let t = tempfile::tempdir().unwrap();
    let a = raw_old(t.path());
    let b = raw_new(t.path(), &a);
    let mut cbytes = fs::read(&b).unwrap();
    fill(9, &mut cbytes[7 << 20..(7 << 20) + 8192]);
    cbytes.truncate(9 << 20);
    let c = t.path().join("c.raw");
    fs::write(&c, &cbytes).unwrap();
    let d = |args: &[&Path], out: &Path| {
        let st = Command::new(bin("vdiff"))
            .args(args)
            .arg("-o")
            .arg(out)
            .status()
            .unwrap();
        assert!(st.success());
    };
    let (ab, bc, full) = (
        t.path().join("ab"),
        t.path().join("bc"),
        t.path().join("full"),
    );
    // The first delta carries a trailing index: vpatch reads it like any other.
    d(&[p("--index"), &a, &b], &ab);
    d(&[&b, &c], &bc);
    d(&[p("--full"), &a], &full);
    let out = t.path().join("out.raw");
    let st = Command::new(bin("vpatch"))
        .args([&a, &ab, &bc])
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    compare("raw", &c, &out);
    fs::remove_file(&out).unwrap();
    // A full delta, then the chain on top of it, no base at all.
    let st = Command::new(bin("vpatch"))
        .arg("--full")
        .args([&full, &ab, &bc])
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    compare("raw", &c, &out);
}

fn vpatch_fails(args: &[&Path], dir: &Path, out: &Path, code: i32, needle: &str) {
    let o = Command::new(bin("vpatch"))
        .args(args)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("vpatch: ") && err.contains(needle), "{err}");
    assert!(!out.exists(), "output left behind");
    no_temp_files(dir);
}

#[test]
fn hostile_streams_leave_no_output() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let a = raw_old(dir);
    let b = raw_new(dir, &a);
    let good = dir.join("good");
    let st = Command::new(bin("vdiff"))
        .args([&a, &b])
        .arg("-o")
        .arg(&good)
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = fs::read(&good).unwrap();
    let out = dir.join("out.raw");
    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        fs::write(&p, b).unwrap();
        p
    };
    let cut = write("cut", &bytes[..bytes.len() - 50]);
    vpatch_fails(&[&a, &cut], dir, &out, 3, "cut short");
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let flipped = write("flipped", &flipped);
    vpatch_fails(&[&a, &flipped], dir, &out, 3, "checksum");
    let notdelta = write("notdelta", b"hello, this is not a delta stream at all, not even close.....................................................................");
    vpatch_fails(&[&a, &notdelta], dir, &out, 3, "bad magic");
    // Wrong base, same size: refused up front by the digest; other size: by the size.
    let mut other = fs::read(&a).unwrap();
    other[12345] ^= 1;
    let other = write("other.raw", &other);
    vpatch_fails(&[&other, &good], dir, &out, 3, "another base");
    vpatch_fails(&[&b, &good], dir, &out, 3, "base of");
    // --trust-base skips the digest; the target digest check at the end still refuses.
    let o = Command::new(bin("vpatch"))
        .arg("--trust-base")
        .args([&other, &good])
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    // The flipped byte of `other` lies in an unchanged block the delta copies.
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("target digest"));
    assert!(!out.exists());
    no_temp_files(dir);
    // The base digest is checked while the output is produced: a wrong base into a VMDK
    // leaves no VMDK either.
    let vmdk_out = dir.join("out.vmdk");
    let o = Command::new(bin("vpatch"))
        .args([&other, &good])
        .arg("-o")
        .arg(&vmdk_out)
        .args(["--format", "monolithicSparse"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another base"));
    assert!(!vmdk_out.exists());
    // An indexed delta is read through its index: damage in a literal is found when the
    // literal is read, damage in the index up front; a cut file has no trailer.
    let indexed = dir.join("indexed");
    let st = Command::new(bin("vdiff"))
        .args([&a, &b])
        .arg("--index")
        .arg("-o")
        .arg(&indexed)
        .status()
        .unwrap();
    assert!(st.success());
    let ibytes = fs::read(&indexed).unwrap();
    let mut lit = ibytes.clone();
    lit[ibytes.len() / 2] ^= 0x40;
    let lit = write("indexed-flipped", &lit);
    vpatch_fails(&[&a, &lit], dir, &out, 3, "checksum");
    let mut idx = ibytes.clone();
    let n = idx.len();
    idx[n - 40] ^= 0x01; // the last index entry
    let idx = write("indexed-bad-index", &idx);
    vpatch_fails(&[&a, &idx], dir, &out, 3, "index");
    let icut = write("indexed-cut", &ibytes[..ibytes.len() - 3]);
    vpatch_fails(&[&a, &icut], dir, &out, 3, "corrupt");
    // Missing delta: exit 4.
    vpatch_fails(&[&a, &dir.join("nope")], dir, &out, 4, "nope");
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Stat {
    schema: String,
    block_size: u32,
    source_size: u64,
    target_size: u64,
    identical: bool,
    changed_bytes: u64,
    unchanged_bytes: u64,
    snapshot_link: Option<u32>,
    copy_source_bytes: u64,
    copy_target_bytes: u64,
    zero_bytes: u64,
    unallocated_bytes: u64,
    literal_bytes: u64,
    compressed_bytes: u64,
    records: u64,
    delta_bytes: u64,
    source_digest: String,
    target_digest: String,
}

#[test]
fn stat_schema_and_quiet_answers() {
    let t = tempfile::tempdir().unwrap();
    let a = raw_old(t.path());
    let b = raw_new(t.path(), &a);
    let o = Command::new(bin("vdiff"))
        .arg("--stat")
        .args([&a, &b])
        .output()
        .unwrap();
    assert!(o.status.success());
    let s: Stat = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s.schema, "vdiff-stat/1");
    assert_eq!(s.target_size, 10 << 20);
    assert!(!s.identical);
    assert_eq!(
        s.literal_bytes
            + s.copy_source_bytes
            + s.copy_target_bytes
            + s.zero_bytes
            + s.unallocated_bytes,
        s.target_size
    );
    assert_eq!(s.copy_target_bytes, 4096, "{s:?}");
    assert!(s.literal_bytes <= 11 * 4096, "{s:?}");
    // The delta written for real has the size --stat announced.
    let d = t.path().join("d");
    assert!(Command::new(bin("vdiff"))
        .args([&a, &b])
        .arg("-o")
        .arg(&d)
        .status()
        .unwrap()
        .success());
    assert_eq!(fs::metadata(&d).unwrap().len(), s.delta_bytes);
    let q = |x: &Path, y: &Path| {
        Command::new(bin("vdiff"))
            .arg("-q")
            .args([x, y])
            .output()
            .unwrap()
    };
    let same = q(&a, &a);
    assert_eq!(same.status.code(), Some(0));
    assert!(same.stdout.is_empty());
    assert_eq!(q(&a, &b).status.code(), Some(1));
    assert_eq!(q(&a, &t.path().join("missing")).status.code(), Some(4));
}

#[test]
fn vmdk_output_in_every_subformat() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = vmdk_pair(t.path(), "monolithicSparse");
    let d = t.path().join("d");
    assert!(Command::new(bin("vdiff"))
        .args([&a, &b])
        .arg("-o")
        .arg(&d)
        .status()
        .unwrap()
        .success());
    for sub in [
        "monolithicSparse",
        "streamOptimized",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        let out = t.path().join(format!("out-{sub}.vmdk"));
        let o = Command::new(bin("vpatch"))
            .args([&a, &d])
            .arg("-o")
            .arg(&out)
            .args(["--format", sub])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{sub}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (o_s, b_s) = (out.to_str().unwrap(), b.to_str().unwrap());
        if !sub.ends_with("Flat") {
            qemu_img(&["check", "-q", "-f", "vmdk", o_s]);
        }
        qemu_img(&["compare", "-q", "-f", "vmdk", "-F", "vmdk", b_s, o_s]);
    }
    // A failed apply leaves no VMDK and no temporary file behind.
    let mut other = fs::read(&d).unwrap();
    let n = other.len();
    other.truncate(n - 10);
    let cut = t.path().join("cut");
    fs::write(&cut, &other).unwrap();
    let out = t.path().join("bad.vmdk");
    let o = Command::new(bin("vpatch"))
        .args([&a, &cut])
        .arg("-o")
        .arg(&out)
        .args(["--format", "monolithicSparse"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(!out.exists());
    for e in fs::read_dir(t.path()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains("bad"), "left over: {n}");
    }
}

#[test]
fn signature_then_against_gives_a_delta_that_applies() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = vmdk_pair(t.path(), "streamOptimized");
    let sig = t.path().join("a.sig");
    let run = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(bin("vdiff")).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "--signature".as_ref(),
        a.as_os_str(),
        "-o".as_ref(),
        sig.as_os_str(),
    ]);
    // 16 MiB at 4 KiB blocks: 4096 entries of 21 bytes plus framing.
    let n = fs::metadata(&sig).unwrap().len();
    assert!((4096 * 21..4096 * 21 + 256).contains(&n), "{n}");
    let (d1, d2) = (t.path().join("d1"), t.path().join("d2"));
    run(&[
        "--against".as_ref(),
        sig.as_os_str(),
        b.as_os_str(),
        "-o".as_ref(),
        d1.as_os_str(),
    ]);
    run(&[a.as_os_str(), b.as_os_str(), "-o".as_ref(), d2.as_os_str()]);
    // Both build b. With OLD at hand vdiff also grows copies byte by byte, so the delta from
    // the signature may hold more literal bytes, never fewer.
    for d in [&d1, &d2] {
        let c = t.path().join("c-from-file.raw");
        let o = Command::new(bin("vpatch"))
            .arg(&a)
            .arg(d)
            .arg("-o")
            .arg(&c)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        compare("vmdk", &b, &c);
    }
    let literal = |args: &[&std::ffi::OsStr]| -> u64 {
        let o = Command::new(bin("vdiff"))
            .arg("--stat")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["literal_bytes"].as_u64().unwrap()
    };
    let from_sig = literal(&["--against".as_ref(), sig.as_os_str(), b.as_os_str()]);
    let direct = literal(&[a.as_os_str(), b.as_os_str()]);
    assert!(from_sig >= direct, "{from_sig} < {direct}");
    // Signature from stdin, through the pipes.
    let mut s = Command::new(bin("vdiff"))
        .args(["--signature".as_ref(), a.as_os_str()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut d = Command::new(bin("vdiff"))
        .args(["--against", "-"])
        .arg(&b)
        .stdin(Stdio::from(s.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let c = t.path().join("c.raw");
    let o = Command::new(bin("vpatch"))
        .arg(&a)
        .args(["-", "-o"])
        .arg(&c)
        .stdin(Stdio::from(d.stdout.take().unwrap()))
        .output()
        .unwrap();
    assert!(s.wait().unwrap().success() && d.wait().unwrap().success());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    compare("vmdk", &b, &c);
    // A damaged signature is one line and exit 3.
    let mut bad = fs::read(&sig).unwrap();
    bad[100] ^= 1;
    fs::write(&sig, &bad).unwrap();
    let o = Command::new(bin("vdiff"))
        .arg("--against")
        .arg(&sig)
        .arg(&b)
        .arg("-o")
        .arg(&d1)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("checksum"));
}

#[test]
fn snapshot_child_is_diffed_from_its_grain_tables() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base.vmdk");
    let child = t.path().join("child.vmdk");
    let (bs, cs) = (base.to_str().unwrap(), child.to_str().unwrap());
    qemu_img(&["create", "-q", "-f", "vmdk", bs, "32M"]);
    qemu_io(
        &base,
        "vmdk",
        &["write -P 0x11 0 8M", "write -P 0x22 20M 2M"],
    );
    qemu_img(&["create", "-q", "-f", "vmdk", "-b", bs, "-F", "vmdk", cs]);
    qemu_io(
        &child,
        "vmdk",
        &[
            "write -P 0x33 1M 64k",
            "write -P 0x11 24M 1M",
            "write -z 20M 64k",
        ],
    );
    let o = Command::new(bin("vdiff"))
        .arg("--stat")
        .args([&base, &child])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: Stat = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s.snapshot_link, Some(1), "{s:?}");
    // The new 64 KiB is one pattern block and 15 copies of it.
    assert_eq!(s.literal_bytes, 4096, "{s:?}");
    assert_eq!(s.copy_target_bytes, 60 << 10, "{s:?}");
    assert!(s.copy_source_bytes >= (8 << 20) + (1 << 20), "{s:?}");
    let out = t.path().join("out.raw");
    let (ok, o) = pipe(&[&base, &child], &[&base, p("-"), p("-o"), &out]);
    assert!(
        ok && o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    compare("vmdk", &child, &out);
    // Not a link of the chain: an unrelated copy of the base gets the ordinary two-image diff.
    let copy = t.path().join("copy.vmdk");
    qemu_img(&["convert", "-q", "-O", "vmdk", bs, copy.to_str().unwrap()]);
    let o = Command::new(bin("vdiff"))
        .arg("--stat")
        .args([&copy, &child])
        .output()
        .unwrap();
    let s2: Stat = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s2.snapshot_link, None);
    assert_eq!(s2.target_digest, s.target_digest);
    assert_eq!(s2.literal_bytes, s.literal_bytes);
}

#[test]
fn in_place_updates_raw_images_and_puts_them_back_on_failure() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let a = raw_old(dir);
    let b = raw_new(dir, &a);
    let (ab, ba) = (dir.join("ab"), dir.join("ba"));
    for (x, y, d) in [(&a, &b, &ab), (&b, &a, &ba)] {
        assert!(Command::new(bin("vdiff"))
            .args([x, y])
            .arg("-o")
            .arg(d)
            .status()
            .unwrap()
            .success());
    }
    let undo_left = || {
        fs::read_dir(dir)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains("undo"))
    };
    // Growing (8 -> 10 MiB) and shrinking (10 -> 8 MiB) in place.
    let x = dir.join("x.raw");
    fs::copy(&a, &x).unwrap();
    let o = Command::new(bin("vpatch"))
        .args([&x, &ab])
        .arg("--in-place")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        fs::read(&x).unwrap() == fs::read(&b).unwrap(),
        "grown in place"
    );
    let o = Command::new(bin("vpatch"))
        .args([&x, &ba])
        .arg("--in-place")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        fs::read(&x).unwrap() == fs::read(&a).unwrap(),
        "shrunk in place"
    );
    assert!(!undo_left());
    // A cut delta: refused before the base is touched.
    let bytes = fs::read(&ab).unwrap();
    let cut = dir.join("cut");
    fs::write(&cut, &bytes[..bytes.len() - 20]).unwrap();
    let o = Command::new(bin("vpatch"))
        .args([&x, &cut])
        .arg("--in-place")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(fs::read(&x).unwrap() == fs::read(&a).unwrap());
    assert!(!undo_left());
    // A wrong base let through with --trust-base: written, found wrong by the target digest,
    // and put back from the undo file.
    let mut other = fs::read(&a).unwrap();
    other[12345] ^= 1;
    fs::write(&x, &other).unwrap();
    let o = Command::new(bin("vpatch"))
        .args([&x, &ab])
        .args(["--in-place", "--trust-base"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("target digest"));
    assert!(fs::read(&x).unwrap() == other, "base put back");
    assert!(!undo_left());
    // --restore refuses a damaged undo file; a VMDK base is not updated in place.
    let junk = dir.join("junk.undo");
    fs::write(&junk, b"VMLUNDO\0 not really").unwrap();
    let o = Command::new(bin("vpatch"))
        .arg("--restore")
        .arg(&junk)
        .arg(&x)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(fs::read(&x).unwrap() == other);
    let vm = dir.join("v.vmdk");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "vmdk",
        a.to_str().unwrap(),
        vm.to_str().unwrap(),
    ]);
    let o = Command::new(bin("vpatch"))
        .args([&vm, &ab])
        .arg("--in-place")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `--in-place` on flat VMDKs made by qemu-img (monolithicFlat, twoGbMaxExtentFlat, and a
/// vmfs descriptor over the same flat file): the flat extents are written through the
/// descriptor, qemu-img reads the target, and a failure puts the extents back.
#[test]
fn in_place_updates_flat_vmdks() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let a = raw_old(dir);
    let b = raw_new(dir, &a);
    // Flat VMDKs keep their size: the same 8 MiB target.
    let mut b8 = fs::read(&b).unwrap();
    b8.truncate(8 << 20);
    let b8p = dir.join("b8.raw");
    fs::write(&b8p, &b8).unwrap();
    let ab = dir.join("ab");
    assert!(Command::new(bin("vdiff"))
        .args([&a, &b8p])
        .arg("-o")
        .arg(&ab)
        .status()
        .unwrap()
        .success());
    let a_bytes = fs::read(&a).unwrap();
    for sub in [
        "monolithicFlat",
        "twoGbMaxExtentFlat",
        "vmfs",
        "two extents",
    ] {
        let d = dir.join(sub);
        fs::create_dir(&d).unwrap();
        let vm = d.join("v.vmdk");
        if sub == "two extents" {
            // Two FLAT extents: writes are split between them.
            fs::write(d.join("x1.bin"), &a_bytes[..4 << 20]).unwrap();
            fs::write(d.join("x2.bin"), &a_bytes[4 << 20..]).unwrap();
            fs::write(
                &vm,
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"twoGbMaxExtentFlat\"\n\n# Extent description\n\
                 RW 8192 FLAT \"x1.bin\" 0\nRW 8192 FLAT \"x2.bin\" 0\n\n\
                 # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n\
                 ddb.geometry.cylinders = \"16\"\nddb.geometry.heads = \"16\"\n\
                 ddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n",
            )
            .unwrap();
            compare("vmdk", &vm, &a);
        }
        let qsub = if sub == "vmfs" { "monolithicFlat" } else { sub };
        if sub != "two extents" {
            qemu_img(&[
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={qsub}"),
                a.to_str().unwrap(),
                vm.to_str().unwrap(),
            ]);
        }
        if sub == "vmfs" {
            let desc = fs::read_to_string(&vm).unwrap();
            let desc = desc
                .replace("createType=\"monolithicFlat\"", "createType=\"vmfs\"")
                .replace(" FLAT \"v-flat.vmdk\" 0", " VMFS \"v-flat.vmdk\"");
            assert!(desc.contains("VMFS"), "{desc}");
            fs::write(&vm, desc).unwrap();
        }
        let o = Command::new(bin("vpatch"))
            .args([&vm, &ab])
            .arg("--in-place")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{sub}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        compare("vmdk", &vm, &b8p);
        assert!(!d.join("v.vmdk.vpatch-undo").exists());
        // A wrong base let through with --trust-base: written, found wrong, put back.
        let extent = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let p = p.to_string_lossy();
                p.contains("-f001") || p.ends_with("-flat.vmdk") || p.ends_with("x1.bin")
            })
            .unwrap();
        let mut wrong = fs::read(&extent).unwrap();
        wrong[12345] ^= 1; // in a block the delta copies unchanged
        fs::write(&extent, &wrong).unwrap();
        let before = fs::read(&extent).unwrap();
        let descriptor = fs::read(&vm).unwrap();
        let o = Command::new(bin("vpatch"))
            .args([&vm, &ab])
            .args(["--in-place", "--trust-base"])
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(3),
            "{sub}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            fs::read(&extent).unwrap() == before,
            "{sub}: extent put back"
        );
        assert!(
            fs::read(&vm).unwrap() == descriptor,
            "{sub}: descriptor untouched"
        );
        assert!(!d.join("v.vmdk.vpatch-undo").exists());
    }
    // A flat VMDK keeps its size: a growing delta is refused (exit 5) before anything is
    // written.
    let grow = dir.join("grow");
    assert!(Command::new(bin("vdiff"))
        .args([&b8p, &b])
        .arg("-o")
        .arg(&grow)
        .status()
        .unwrap()
        .success());
    let vm = dir.join("monolithicFlat").join("v.vmdk");
    let o = Command::new(bin("vpatch"))
        .args([&vm, &grow])
        .args(["--in-place", "--trust-base"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Unix tools read stdin when no input is named (`patch`, `xdelta3 -d`, `zstd -d`): so does
/// vpatch, for a delta against a base, a full delta, and an in-place update; `-` still works.
#[test]
fn vpatch_reads_the_delta_from_stdin_when_none_is_named() {
    let t = tempfile::tempdir().unwrap();
    let a = raw_old(t.path());
    let b = raw_new(t.path(), &a);
    let out = t.path().join("out.raw");
    let (ok, o) = pipe(&[&a, &b], &[&a, p("-o"), &out]);
    assert!(
        ok && o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fs::read(&out).unwrap(), fs::read(&b).unwrap());
    let full = t.path().join("full.raw");
    let (ok, o) = pipe(&[p("--full"), &b], &[p("--full"), p("-o"), &full]);
    assert!(
        ok && o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fs::read(&full).unwrap(), fs::read(&b).unwrap());
    let dash = t.path().join("dash.raw");
    let (ok, o) = pipe(&[&a, &b], &[&a, p("-"), p("-o"), &dash]);
    assert!(
        ok && o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fs::read(&dash).unwrap(), fs::read(&b).unwrap());
    // In place: BASE becomes NEW.
    let c = t.path().join("c.raw");
    fs::copy(&a, &c).unwrap();
    let (ok, o) = pipe(&[&a, &b], &[p("--in-place"), &c]);
    assert!(
        ok && o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fs::read(&c).unwrap(), fs::read(&b).unwrap());
}

/// With no delta named and stdin a terminal, vpatch does not wait for a delta to be typed:
/// exit 2, naming the choices.
#[test]
fn vpatch_with_no_delta_and_a_terminal_on_stdin_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let a = raw_old(t.path());
    let out = t.path().join("out.raw");
    let cmd = format!(
        "'{}' '{}' -o '{}'; echo \"rc=$?\"",
        bin("vpatch").display(),
        a.display(),
        out.display()
    );
    let Some(text) = on_a_terminal(&cmd) else {
        return;
    };
    assert!(text.contains("stdin is a terminal"), "{text}");
    assert!(text.contains("rc=2"), "{text}");
    assert!(!out.exists());
}

/// Run the shell command `cmd` with a pseudo-terminal as stdin and stdout (`script`); what
/// it printed. None when `script` is missing (never in CI).
fn on_a_terminal(cmd: &str) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "util-linux `script` is needed in CI"
        );
        return None;
    }
    let o = Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn deltas_and_signatures_are_refused_on_a_terminal() {
    let t = tempfile::tempdir().unwrap();
    let a = raw_old(t.path());
    for (args, what) in [
        (format!("'{}' '{}'", a.display(), a.display()), "a delta"),
        (format!("--signature '{}'", a.display()), "a signature"),
    ] {
        let cmd = format!("'{}' {args}; echo \"rc=$?\"", bin("vdiff").display());
        let Some(text) = on_a_terminal(&cmd) else {
            return;
        };
        assert!(
            text.contains(&format!("refusing to write {what} to a terminal")),
            "{text}"
        );
        assert!(text.contains("rc=2"), "{text}");
        assert!(text.len() < 500, "no binary reached the terminal");
    }
}

#[test]
fn usage_errors_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let a = raw_old(t.path());
    let d = t.path().join("d");
    let code = |bin_name: &str, args: &[&std::ffi::OsStr]| {
        let o = Command::new(bin(bin_name)).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.code(), err)
    };
    let (c, err) = code("vdiff", &[a.as_os_str(), "-o".as_ref(), d.as_os_str()]);
    assert_eq!(c, Some(2), "{err}");
    let (c, err) = code(
        "vdiff",
        &[
            "--block-size".as_ref(),
            "1000".as_ref(),
            a.as_os_str(),
            a.as_os_str(),
            "-o".as_ref(),
            d.as_os_str(),
        ],
    );
    assert_eq!(c, Some(2), "{err}");
    assert!(
        err.starts_with("vdiff: ") && err.contains("block size 1000"),
        "{err}"
    );
    assert!(!d.exists());
    // vpatch without a delta reads stdin: here an empty one, not a delta (exit 3, nothing
    // written); two deltas from stdin are a usage error.
    let (c, err) = code("vpatch", &[a.as_os_str(), "-o".as_ref(), d.as_os_str()]);
    assert_eq!(c, Some(3), "{err}");
    assert!(
        err.starts_with("vpatch: ") && err.contains("stdin"),
        "{err}"
    );
    assert!(!d.exists());
    let (c, _) = code(
        "vpatch",
        &[
            a.as_os_str(),
            "-".as_ref(),
            "-".as_ref(),
            "-o".as_ref(),
            d.as_os_str(),
        ],
    );
    assert_eq!(c, Some(2));
    // A plain delta given as --full, and a full delta given a base.
    let full = t.path().join("full");
    assert!(Command::new(bin("vdiff"))
        .arg("--full")
        .arg(&a)
        .arg("-o")
        .arg(&full)
        .status()
        .unwrap()
        .success());
    let (c, err) = code(
        "vpatch",
        &[
            a.as_os_str(),
            full.as_os_str(),
            "-o".as_ref(),
            d.as_os_str(),
        ],
    );
    assert_eq!(c, Some(2), "{err}");
    assert!(!d.exists());
}

/// `--root DIR` (issue 19): a snapshot link kept in VMware's `workingDir` (`vm/snapshots/`)
/// names its parent `../disk.vmdk`; vdiff and vpatch open it with the VM's folder as root, and
/// still refuse a crafted parent that leaves that folder (exit 7).
#[test]
fn root_opens_working_dir_links_in_vdiff_and_vpatch() {
    let t = tempfile::tempdir().unwrap();
    let vm = t.path().join("vm");
    let snaps = vm.join("snapshots");
    fs::create_dir_all(&snaps).unwrap();
    let base = vm.join("disk.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", base.to_str().unwrap(), "8M"]);
    qemu_io(&base, "vmdk", &["write -P 0x11 0 1M"]);
    let child = |hint: &str, name: &str| {
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", hint, name])
            .current_dir(&snaps)
            .status()
            .unwrap();
        assert!(st.success());
        snaps.join(name)
    };
    let link = child("../disk.vmdk", "disk-000001.vmdk");
    qemu_io(&link, "vmdk", &["write -P 0x22 2M 64k"]);
    // NEW: the link's guest bytes with a change.
    let new = t.path().join("new.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        link.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    let mut nb = fs::read(&new).unwrap();
    fill(3, &mut nb[5 << 20..(5 << 20) + 8192]);
    fs::write(&new, &nb).unwrap();

    let run = |tool: &str, args: &[&Path]| Command::new(bin(tool)).args(args).output().unwrap();
    let refused = |o: std::process::Output, tool: &str, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(7), "{tool}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("{tool}: ")) && err.contains(needle),
            "{err}"
        );
    };
    let delta = t.path().join("delta");
    let out = t.path().join("out.raw");

    // Without --root the link's own folder is the root: refused, pointing at --root.
    let o = run("vdiff", &[&link, &new, p("-o"), &delta]);
    refused(o, "vdiff", "use --root DIR or --allow-outside");
    assert!(!delta.exists());
    let o = run("vdiff", &[p("--root"), &vm, &link, &new, p("-o"), &delta]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = run("vpatch", &[&link, &delta, p("-o"), &out]);
    refused(o, "vpatch", "use --root DIR or --allow-outside");
    assert!(!out.exists());
    let o = run("vpatch", &[p("--root"), &vm, &link, &delta, p("-o"), &out]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    compare("raw", &new, &out);

    // A crafted parent leaving the VM's folder: refused with --root too.
    fs::copy(&base, t.path().join("outside.vmdk")).unwrap();
    let bad = child("../../outside.vmdk", "bad.vmdk");
    let o = run("vdiff", &[p("--root"), &vm, &bad, &new, p("--stat")]);
    refused(o, "vdiff", "\"../../outside.vmdk\" leaves the folder");
    let out2 = t.path().join("out2.raw");
    let o = run("vpatch", &[p("--root"), &vm, &bad, &delta, p("-o"), &out2]);
    refused(o, "vpatch", "\"../../outside.vmdk\" leaves the folder");
    assert!(!out2.exists());
}
