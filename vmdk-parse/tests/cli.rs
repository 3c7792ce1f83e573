//! The `vmdk-parse` binary: JSON schemas pinned with mirror types that reject unknown fields,
//! an exit code for each kind of failure, and hostile inputs that must give one-line errors.

use assert_cmd::Command;
use serde::Deserialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

fn vp() -> Command {
    Command::cargo_bin("vmdk-parse").expect("binary built")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/vmware")
        .join(name)
}

fn qemu_img(args: &[&str]) {
    let st = Std::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img runs");
    assert!(st.success(), "qemu-img {args:?}");
}

fn qemu_io(file: &Path, cmds: &[&str]) {
    let mut c = Std::new("qemu-io");
    c.arg("-f").arg("vmdk").arg(file);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    assert!(c.output().expect("qemu-io runs").status.success());
}

/// A small monolithicSparse disk with some data, made by qemu-img.
fn sparse_disk(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&["create", "-q", "-f", "vmdk", p.to_str().unwrap(), "4M"]);
    qemu_io(&p, &["write -P 0x5a 0 128k", "write -P 0x6b 1M 64k"]);
    p
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Info {
    schema: String,
    path: String,
    create_type: String,
    capacity_bytes: u64,
    descriptor: Vec<KeyValue>,
    extents: Vec<Extent>,
    chain: Vec<Link>,
    totals: Totals,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct KeyValue {
    key: String,
    value: String,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Extent {
    #[serde(rename = "type")]
    kind: String,
    access: String,
    start_bytes: u64,
    size_bytes: u64,
    file: Option<String>,
    file_bytes: Option<u64>,
    header: Option<serde_json::Value>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Link {
    depth: usize,
    path: String,
    format: String,
    create_type: String,
    cid: Option<String>,
    parent_cid: Option<String>,
    parent_hint: Option<String>,
    capacity_bytes: u64,
    extents: Vec<Extent>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Totals {
    data_bytes: u64,
    zero_bytes: u64,
    unallocated_bytes: u64,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MapRecord {
    offset: u64,
    length: u64,
    state: String,
    depth: u32,
    file: Option<String>,
    file_offset: Option<u64>,
    compressed: bool,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Check {
    schema: String,
    path: String,
    clean: bool,
    links: usize,
    problems: Vec<Problem>,
    unlisted_problems: u64,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Problem {
    file: String,
    kind: String,
    message: String,
}

#[test]
fn info_schema_is_pinned() {
    let out = vp()
        .arg("info")
        .arg(fixture("monolithicSparse.vmdk"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let info: Info = serde_json::from_slice(&out.stdout).expect("info matches the pinned schema");
    assert_eq!(info.schema, "vmdk-parse.info/1");
    assert_eq!(info.create_type, "monolithicSparse");
    assert_eq!(info.capacity_bytes, 10485760);
    assert_eq!(info.chain.len(), 1);
    assert_eq!(info.chain[0].cid.as_deref(), Some("00000000"));
    assert_eq!(info.chain[0].parent_cid.as_deref(), Some("ffffffff"));
    assert_eq!(info.extents[0].kind, "SPARSE");
    let h = info.extents[0]
        .header
        .as_ref()
        .expect("sparse header fields");
    assert_eq!(h["version"], 1);
    assert_eq!(h["grain_size"], 128);
    assert_eq!(h["gd_offset"], 26);
    assert_eq!(h["rgd_offset"], 21);
    assert!(info
        .descriptor
        .iter()
        .any(|kv| kv.key == "ddb.adapterType" && kv.value == "buslogic"));
    let t = &info.totals;
    assert_eq!(
        t.data_bytes + t.zero_bytes + t.unallocated_bytes,
        info.capacity_bytes
    );

    // A flat disk: the extent has no header.
    let out = vp()
        .arg("info")
        .arg(fixture("vmfs_thick.vmdk"))
        .output()
        .unwrap();
    let info: Info = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info.create_type, "vmfs");
    assert_eq!(info.extents[0].kind, "VMFS");
    assert!(info.extents[0].header.is_none());
}

#[test]
fn map_schema_is_pinned_and_covers_the_disk() {
    let out = vp()
        .arg("map")
        .arg(fixture("streamOptimized.vmdk"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut next = 0;
    let mut compressed = 0;
    for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let r: MapRecord =
            serde_json::from_slice(line).expect("map record matches the pinned schema");
        assert_eq!(r.offset, next, "ranges are contiguous");
        assert!(["data", "zero", "unallocated"].contains(&r.state.as_str()));
        if r.compressed {
            compressed += 1;
            assert!(r.file_offset.is_none());
        }
        next = r.offset + r.length;
    }
    assert_eq!(next, 10485760);
    assert!(compressed > 0);
}

#[test]
fn check_schema_and_exit_codes() {
    let out = vp()
        .arg("check")
        .arg(fixture("monolithicSparse.vmdk"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let c: Check = serde_json::from_slice(&out.stdout).unwrap();
    assert!(c.clean && c.problems.is_empty());

    // Flip the dirty flag and the newline detector: exit 1 with both problems listed.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.vmdk");
    fs::copy(fixture("monolithicSparse.vmdk"), &p).unwrap();
    let mut b = fs::read(&p).unwrap();
    b[72] = 1;
    b[75] = b'\n';
    fs::write(&p, &b).unwrap();
    let out = vp().arg("check").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let c: Check = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<_> = c.problems.iter().map(|p| p.kind.as_str()).collect();
    assert!(
        kinds.contains(&"dirty") && kinds.contains(&"header_newline"),
        "{kinds:?}"
    );
}

#[test]
fn check_finds_redundant_directory_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let p = sparse_disk(dir.path(), "d.vmdk");
    let mut b = fs::read(&p).unwrap();
    // Redundant GD sector from the header; its first GT's first entry gets changed.
    let rgd = u64::from_le_bytes(b[48..56].try_into().unwrap()) as usize;
    let rgt = u32::from_le_bytes(b[rgd * 512..rgd * 512 + 4].try_into().unwrap()) as usize;
    b[rgt * 512] ^= 0x80;
    fs::write(&p, &b).unwrap();
    let out = vp().arg("check").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let c: Check = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        c.problems.iter().any(|p| p.kind == "rgd_mismatch"),
        "{:?}",
        c.problems
    );
    // Reading is unaffected: the primary directory is intact.
    vp().arg("cat")
        .arg(&p)
        .arg("-o")
        .arg(dir.path().join("o.raw"))
        .assert()
        .success();
}

#[test]
fn descriptor_prints_embedded_text() {
    let out = vp()
        .arg("descriptor")
        .arg(fixture("monolithicSparse.vmdk"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("# Disk DescriptorFile\nversion=1\n"));
    assert!(text.contains("RW 20480 SPARSE \"monolithicSparse.vmdk\""));
    assert!(!text.contains('\0'));
}

/// Run a command that must fail with `code` and a one-line message containing `needle`.
fn fails(args: &[&std::ffi::OsStr], code: i32, needle: &str) {
    let out = vp().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("vmdk-parse: "), "{err}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout for a failure");
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn missing_file_exit_4() {
    fails(
        &[os("info"), os("/nonexistent/disk.vmdk")],
        4,
        "/nonexistent/disk.vmdk",
    );
}

#[test]
fn missing_parent_names_the_child_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let base = sparse_disk(dir.path(), "base.vmdk");
    let child = dir.path().join("child.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        child.to_str().unwrap(),
    ]);
    fs::remove_file(&base).unwrap();
    fails(&[os("info"), child.as_os_str()], 4, "child.vmdk: parent ");
}

#[test]
fn usage_exit_2() {
    let out = vp().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn truncated_and_corrupt_sparse_files_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let src = fs::read(fixture("monolithicSparse.vmdk")).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        fs::write(&p, b).unwrap();
        p
    };
    // Truncated inside the header, inside the grain directory, inside the grains.
    for (name, len, needle) in [
        ("t1.vmdk", 100usize, "past the end of the file"),
        ("t2.vmdk", 26 * 512 + 10, "past the end of the file"),
        ("t3.vmdk", 200 * 1024, "past the end of the file"),
    ] {
        let p = write(name, &src[..len]);
        fails(
            &[
                os("cat"),
                p.as_os_str(),
                os("-o"),
                dir.path().join("o").as_os_str(),
            ],
            3,
            needle,
        );
        assert!(!dir.path().join("o").exists(), "no output left behind");
    }
    // A grain table entry pointing into the header.
    let mut b = src.clone();
    let gd = u64::from_le_bytes(b[56..64].try_into().unwrap()) as usize;
    let gt = u32::from_le_bytes(b[gd * 512..gd * 512 + 4].try_into().unwrap()) as usize;
    b[gt * 512..gt * 512 + 4].copy_from_slice(&3u32.to_le_bytes());
    let p = write("gte.vmdk", &b);
    fails(
        &[
            os("cat"),
            p.as_os_str(),
            os("-o"),
            dir.path().join("o").as_os_str(),
        ],
        3,
        "metadata",
    );
    // ... which check reports instead of failing.
    let out = vp().arg("check").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // A grain directory entry pointing past the end of the file.
    let mut b = src.clone();
    b[gd * 512..gd * 512 + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    let p = write("gd.vmdk", &b);
    fails(&[os("map"), p.as_os_str()], 3, "past the end of the file");
    // Absurd capacity, grain size, table size.
    for (at, val, needle) in [
        (12usize, u64::MAX, "capacity"),
        (20, 3, "grain size"),
        (20, 1 << 40, "grain size"),
    ] {
        let mut b = src.clone();
        b[at..at + 8].copy_from_slice(&val.to_le_bytes());
        let p = write("h.vmdk", &b);
        fails(&[os("info"), p.as_os_str()], 3, needle);
    }
    let mut b = src.clone();
    b[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
    let p = write("g.vmdk", &b);
    fails(&[os("info"), p.as_os_str()], 3, "grain table");
    // Unknown version: unsupported.
    let mut b = src;
    b[4..8].copy_from_slice(&9u32.to_le_bytes());
    let p = write("v.vmdk", &b);
    fails(&[os("info"), p.as_os_str()], 5, "version 9");
}

fn write_descriptor(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(
        &p,
        format!("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n{body}"),
    )
    .unwrap();
    p
}

#[test]
fn path_policy_refuses_escapes_exit_7() {
    let outer = tempfile::tempdir().unwrap();
    let vm = outer.path().join("vm");
    fs::create_dir(&vm).unwrap();
    fs::write(outer.path().join("secret"), vec![7u8; 4096]).unwrap();
    let secret = outer.path().join("secret");

    let p = write_descriptor(
        &vm,
        "up.vmdk",
        "createType=\"monolithicFlat\"\nRW 8 FLAT \"../secret\" 0\n",
    );
    fails(&[os("cat"), p.as_os_str()], 7, "leaves the folder");
    let p = write_descriptor(
        &vm,
        "abs.vmdk",
        &format!(
            "createType=\"monolithicFlat\"\nRW 8 FLAT \"{}\" 0\n",
            secret.display()
        ),
    );
    fails(&[os("cat"), p.as_os_str()], 7, "leaves the folder");
    let out = vp()
        .args(["--allow-outside", "cat"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, vec![7u8; 4096]);
}

/// VMware's `workingDir` layout: the base in the VM's folder, the link in `snapshots/` naming
/// `../disk.vmdk`. Refused by default (the link's folder is the root), opened with `--root`
/// the VM's folder, with the parent listed by its plain name; a parent leaving the root stays
/// refused.
#[test]
fn root_opens_a_working_dir_link_and_still_refuses_escapes() {
    let outer = tempfile::tempdir().unwrap();
    let vm = outer.path().join("vm");
    let snaps = vm.join("snapshots");
    fs::create_dir_all(&snaps).unwrap();
    let base = sparse_disk(&vm, "disk.vmdk");
    let child = snaps.join("disk-000001.vmdk");
    let mk_child = |parent: &str, child: &Path| {
        let st = Std::new("qemu-img")
            .args(["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", parent])
            .arg(child)
            .current_dir(&snaps)
            .status()
            .unwrap();
        assert!(st.success());
    };
    mk_child("../disk.vmdk", &child);
    qemu_io(&child, &["write -P 0x77 2M 64k"]);
    let want = {
        let raw = outer.path().join("want.raw");
        qemu_img(&[
            "convert",
            "-O",
            "raw",
            child.to_str().unwrap(),
            raw.to_str().unwrap(),
        ]);
        fs::read(raw).unwrap()
    };

    fails(
        &[os("cat"), child.as_os_str()],
        7,
        "(use --root DIR or --allow-outside",
    );
    let out = vp()
        .arg("--root")
        .arg(&vm)
        .arg("cat")
        .arg(&child)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == want, "guest contents as qemu-img reads them");
    // After the subcommand too (a global option), and the parent named without `..`.
    let out = vp()
        .arg("info")
        .arg(&child)
        .arg("--root")
        .arg(&vm)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Info = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info.chain.len(), 2);
    assert_eq!(
        info.chain[1].path,
        base.to_str().unwrap(),
        "the parent, `..` applied"
    );
    assert_eq!(info.chain[1].parent_hint, None);
    assert_eq!(info.chain[0].parent_hint.as_deref(), Some("../disk.vmdk"));

    // A crafted parent that climbs out of the root: refused, also with --root.
    fs::copy(&base, outer.path().join("outside.vmdk")).unwrap();
    let bad = snaps.join("bad.vmdk");
    mk_child("../../outside.vmdk", &bad);
    let args = [os("--root"), vm.as_os_str(), os("cat"), bad.as_os_str()];
    fails(&args, 7, "\"../../outside.vmdk\" leaves the folder");
    // A root the link is not in does not widen anything: `../disk.vmdk` leaves `snapshots/x`.
    let other = snaps.join("x");
    fs::create_dir(&other).unwrap();
    fails(
        &[
            os("--root"),
            other.as_os_str(),
            os("cat"),
            child.as_os_str(),
        ],
        7,
        "leaves the folder",
    );
    // A missing root is a missing input.
    let gone = outer.path().join("gone");
    fails(
        &[
            os("--root"),
            gone.as_os_str(),
            os("info"),
            child.as_os_str(),
        ],
        4,
        "gone",
    );
}

#[test]
fn allow_outside_follows_and_symlinks_are_caught() {
    let outer = tempfile::tempdir().unwrap();
    let vm = outer.path().join("vm");
    fs::create_dir(&vm).unwrap();
    fs::write(outer.path().join("secret"), vec![7u8; 4096]).unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret"), vm.join("link-flat.vmdk")).unwrap();
    let p = write_descriptor(
        &vm,
        "sym.vmdk",
        "createType=\"monolithicFlat\"\nRW 8 FLAT \"link-flat.vmdk\" 0\n",
    );
    fails(&[os("cat"), p.as_os_str()], 7, "leaves the folder");
    let out = vp()
        .args(["--allow-outside", "cat"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, vec![7u8; 4096]);
}

#[test]
fn descriptor_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("a-flat.vmdk"), vec![1u8; 4096]).unwrap();
    // Flat file shorter than the descriptor says.
    let p = write_descriptor(
        d,
        "short.vmdk",
        "createType=\"monolithicFlat\"\nRW 100 FLAT \"a-flat.vmdk\" 0\n",
    );
    fails(
        &[os("cat"), p.as_os_str()],
        3,
        "flat extent file is 4096 bytes",
    );
    // Missing extent file.
    let p = write_descriptor(
        d,
        "missing.vmdk",
        "createType=\"monolithicFlat\"\nRW 8 FLAT \"nope-flat.vmdk\" 0\n",
    );
    fails(&[os("cat"), p.as_os_str()], 4, "nope-flat.vmdk");
    // RDM: unsupported.
    let p = write_descriptor(
        d,
        "rdm.vmdk",
        "createType=\"vmfsRawDeviceMap\"\nRW 8 VMFSRDM \"a-flat.vmdk\"\n",
    );
    fails(&[os("info"), p.as_os_str()], 5, "unsupported");
    let p = write_descriptor(
        d,
        "rdm2.vmdk",
        "createType=\"custom\"\nRW 8 VMFSRAW \"a-flat.vmdk\"\n",
    );
    fails(&[os("info"), p.as_os_str()], 5, "unsupported");
    // Malformed extent line, absurd sizes.
    let p = write_descriptor(
        d,
        "bad.vmdk",
        "createType=\"custom\"\nRW eight FLAT \"a-flat.vmdk\" 0\n",
    );
    fails(&[os("info"), p.as_os_str()], 3, "bad extent size");
    let p = write_descriptor(
        d,
        "huge.vmdk",
        "createType=\"custom\"\nRW 18446744073709551615 ZERO\n",
    );
    fails(&[os("info"), p.as_os_str()], 3, "absurd");
    let p = write_descriptor(d, "none.vmdk", "createType=\"custom\"\n");
    fails(&[os("info"), p.as_os_str()], 3, "no extents");
}

#[test]
fn custom_multi_extent_descriptor_with_offsets_and_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    fs::write(d.join("data.bin"), &a).unwrap();
    // 2 sectors from byte 1024 of data.bin, 3 zero sectors, 4 sectors from byte 0.
    let p = write_descriptor(
        d,
        "custom.vmdk",
        "createType=\"custom\"\nRW 2 FLAT \"data.bin\" 2\nRW 3 ZERO\nRDONLY 4 FLAT \"data.bin\" 0\n",
    );
    let out = vp().arg("cat").arg(&p).output().unwrap();
    assert!(out.status.success());
    let mut want = a[1024..2048].to_vec();
    want.extend(vec![0u8; 1536]);
    want.extend_from_slice(&a[..2048]);
    assert_eq!(out.stdout, want);
    // The same file opened by qemu-img would skip the RDONLY extent; our map states the zero extent.
    let out = vp().arg("map").arg(&p).output().unwrap();
    let recs: Vec<MapRecord> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 3, "{recs:?}");
    assert_eq!(
        (recs[1].offset, recs[1].length, recs[1].state.as_str()),
        (1024, 1536, "zero")
    );
    assert_eq!(recs[0].file_offset, Some(1024));
}

#[test]
fn chain_loop_and_cid_mismatch_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("x-flat.vmdk"), vec![0u8; 4096]).unwrap();
    let body = |parent: &str| {
        format!("createType=\"monolithicFlat\"\nparentFileNameHint=\"{parent}\"\nRW 8 FLAT \"x-flat.vmdk\" 0\n")
    };
    let a = d.join("a.vmdk");
    fs::write(
        &a,
        format!(
            "version=1\nCID=0000000a\nparentCID=0000000b\n{}",
            body("b.vmdk")
        ),
    )
    .unwrap();
    fs::write(
        d.join("b.vmdk"),
        format!(
            "version=1\nCID=0000000b\nparentCID=0000000a\n{}",
            body("a.vmdk")
        ),
    )
    .unwrap();
    fails(&[os("info"), a.as_os_str()], 3, "loops");

    let base = sparse_disk(d, "base.vmdk");
    let child = d.join("child.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        child.to_str().unwrap(),
    ]);
    vp().arg("cat")
        .arg(&child)
        .arg("-o")
        .arg(d.join("ok.raw"))
        .assert()
        .success();
    qemu_io(&base, &["write -P 1 0 512"]); // a write gives the base a new CID
    fails(&[os("cat"), child.as_os_str()], 3, "content ID mismatch");
    let out = vp().arg("check").arg(&child).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let c: Check = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c.problems[0].kind, "chain");
    assert!(
        c.problems[0].message.contains("base.vmdk") && c.problems[0].file.contains("child.vmdk")
    );
}

#[test]
fn broken_pipe_is_quiet() {
    // `vmdk-parse cat | head -c 10`: the reader goes away; no error, exit 0.
    let out = Std::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' cat '{}' | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}",
            assert_cmd::cargo::cargo_bin("vmdk-parse").display(),
            fixture("monolithicSparse.vmdk").display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cat_output_is_sparse_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let p = sparse_disk(dir.path(), "d.vmdk");
    let o = dir.path().join("o.raw");
    vp().arg("cat").arg(&p).arg("-o").arg(&o).assert().success();
    let meta = fs::metadata(&o).unwrap();
    assert_eq!(meta.len(), 4 << 20);
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "holes kept: {} blocks",
        meta.blocks()
    );
    let b = fs::read(&o).unwrap();
    assert!(b[..128 << 10].iter().all(|&x| x == 0x5a));
    assert!(b[1 << 20..(1 << 20) + (64 << 10)]
        .iter()
        .all(|&x| x == 0x6b));
    // No temporary files left.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn refuses_binary_to_a_terminal() {
    // `script` gives the command a pseudo-terminal as stdout.
    if Std::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "util-linux `script` is needed in CI"
        );
        return;
    }
    let cmd = format!(
        "'{}' cat '{}'; echo \"rc=$?\"",
        assert_cmd::cargo::cargo_bin("vmdk-parse").display(),
        fixture("monolithicSparse.vmdk").display()
    );
    let out = Std::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refusing to write disk bytes to a terminal"),
        "{text}"
    );
    assert!(text.contains("rc=2"), "{text}");
    assert!(text.len() < 500, "no disk bytes reached the terminal");
}

#[test]
fn dash_means_stdout() {
    let want = vp()
        .arg("cat")
        .arg(fixture("vmfs_thick.vmdk"))
        .output()
        .unwrap()
        .stdout;
    let out = vp()
        .args(["cat", "-o", "-"])
        .arg(fixture("vmfs_thick.vmdk"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, want);
    assert_eq!(want.len(), 2097152);
}

#[test]
fn raw_image_is_a_plain_disk() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    fs::write(&p, &data).unwrap();
    let out = vp().arg("cat").arg(&p).output().unwrap();
    assert_eq!(out.stdout, data);
    let out = vp().arg("info").arg(&p).output().unwrap();
    let info: Info = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info.create_type, "raw");
    assert_eq!(info.capacity_bytes, 100_000);
    assert_eq!(info.chain[0].format, "raw");
    assert!(info.chain[0].cid.is_none());
    // A raw image has no descriptor: a "no" answer.
    let out = vp().arg("descriptor").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn cat_to_file_handles_unaligned_pieces_on_any_file_system() {
    // Pieces that start and end on 512-byte boundaries, not 4 KiB ones, and a disk size that is
    // not a multiple of 4 KiB: the O_DIRECT path must write the aligned middles and leave the
    // edges to ordinary writes. Written once to a disk file system and once to tmpfs, which
    // refuses O_DIRECT.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8 | 1).collect();
    fs::write(d.join("data.bin"), &data[..39_936]).unwrap(); // 78 sectors
    let p = write_descriptor(
        d,
        "odd.vmdk",
        "createType=\"custom\"\nRW 3 FLAT \"data.bin\" 1\nRW 5 ZERO\nRW 70 FLAT \"data.bin\" 7\nRW 1 ZERO\nRW 9 FLAT \"data.bin\" 0\n",
    );
    let mut want = data[512..512 * 4].to_vec();
    want.extend(vec![0u8; 5 * 512]);
    want.extend_from_slice(&data[7 * 512..77 * 512]);
    want.extend(vec![0u8; 512]);
    want.extend_from_slice(&data[..9 * 512]);
    assert_eq!(want.len(), 88 * 512);
    let shm = Path::new("/dev/shm");
    let shm_dir = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
    let mut outs = vec![d.join("o.raw")];
    if let Some(s) = &shm_dir {
        outs.push(s.path().join("o.raw"));
    }
    for o in outs {
        vp().arg("cat").arg(&p).arg("-o").arg(&o).assert().success();
        assert_eq!(fs::read(&o).unwrap(), want, "{}", o.display());
        vp().args(["cat", "--sync"])
            .arg(&p)
            .arg("-o")
            .arg(&o)
            .assert()
            .success();
        assert_eq!(fs::read(&o).unwrap(), want, "{} --sync", o.display());
    }
}
