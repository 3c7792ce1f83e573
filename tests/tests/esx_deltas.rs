//! ESXi snapshot deltas (COWD / vmfsSparse and seSparse) end to end.
//!
//! Every generated chain is first read by the oracle, `qemu-img convert -O raw`, which must
//! give the bytes the generator meant; only then is vmdk-parse compared with it, through the
//! library and through `vmdk-parse cat`. Where vmdk-parse reads differently from qemu on
//! purpose (COWD GTE 1), the test pins both readings.

mod common;

use common::esxgen::{
    data_grain, edit_descriptor, patch, pattern, write_base, write_base_sparse, write_chain,
    write_delta, write_delta_with, DeltaKind, DeltaOptions, Grain, Grains, Link, GTES_PER_GT,
    SECTOR,
};
use std::path::Path;
use std::process::Command;
use vmdk_parse::{Disk, ErrorKind};

const MIB: u64 = 1 << 20;

/// Compare two images, reporting the first differing byte instead of dumping megabytes.
#[track_caller]
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (sector {}): got {:#04x}, want {:#04x}",
            i / 512,
            got[i],
            want[i]
        );
    }
}

/// The whole disk through the library, read in uneven pieces so reads start and end inside
/// grains and cross grain tables.
fn read_lib(path: &Path) -> Vec<u8> {
    let disk = Disk::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let cap = disk.capacity();
    let mut out = vec![0u8; cap as usize];
    let mut pos = 0u64;
    let mut step = 1000u64;
    while pos < cap {
        let n = step.min(cap - pos);
        disk.read_at(&mut out[pos as usize..(pos + n) as usize], pos)
            .unwrap_or_else(|e| panic!("read {} at {pos}: {e}", path.display()));
        pos += n;
        step = if step > 300_000 { 1000 } else { step * 3 + 1 };
    }
    out
}

/// The oracle agrees with the generator, then the library and the binary agree with both.
fn check_top(link: &Link, dir: &Path) {
    let qemu = common::qemu_raw(&link.descriptor, dir);
    assert_same(
        "qemu-img reading of the generated chain",
        &qemu,
        &link.expected,
    );
    assert_same(
        "vmdk-parse library",
        &read_lib(&link.descriptor),
        &link.expected,
    );
    assert_same(
        "vmdk-parse cat",
        &common::vmdk_parse_cat(&link.descriptor),
        &link.expected,
    );
}

fn grains(list: Vec<(u64, Grain)>) -> Grains {
    list.into_iter().collect()
}

/// Open must fail with `kind` and a message containing every needle.
#[track_caller]
fn expect_open_err(path: &Path, kind: ErrorKind, needles: &[&str]) {
    match Disk::open(path) {
        Ok(_) => panic!("{} opened, expected {kind:?}", path.display()),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            for n in needles {
                assert!(e.to_string().contains(n), "{e} lacks {n:?}");
            }
        }
    }
}

/// Open must succeed and reading the whole disk fail with a corrupt error containing `needle`.
#[track_caller]
fn expect_read_err(path: &Path, needle: &str) {
    let disk = Disk::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; disk.capacity() as usize];
    match disk.read_at(&mut buf, 0) {
        Ok(()) => panic!("reading {} succeeded, expected {needle:?}", path.display()),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
        }
    }
}

/// `vmdk-parse cat` must exit with `code` and name `needle` on stderr.
#[track_caller]
fn expect_cat_exit(path: &Path, code: i32, needle: &str) {
    let out = Command::new(common::bin("vmdk-parse"))
        .arg("cat")
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{stderr} lacks {needle:?}");
}

// COWD grains are one sector; a grain table covers 2 MiB.
const COWD_SPAN: u64 = GTES_PER_GT * SECTOR;
// seSparse grains are 4 KiB; a grain table covers 16 MiB.
const SES_GRAIN: u64 = 8 * SECTOR;
const SES_SPAN: u64 = GTES_PER_GT * SES_GRAIN;

#[test]
fn cowd_two_link_chain_reads_as_qemu_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    // Three full grain tables and a partial fourth.
    let cap = 3 * COWD_SPAN + 3 * SECTOR;
    let last = cap / SECTOR - 1;
    let k = DeltaKind::Cowd;
    let delta = grains(vec![
        (0, data_grain(k, 10)),
        (1, data_grain(k, 11)),
        (2, data_grain(k, 12)),
        (100, data_grain(k, 13)),
        (4095, data_grain(k, 14)), // last entry of table 0
        // table 1 has no grains: its directory entry is 0
        (2 * 4096, data_grain(k, 15)),
        (2 * 4096 + 1, data_grain(k, 16)),
        (last, data_grain(k, 17)),
    ]);
    let links = write_chain(dir.path(), "vm", &pattern(1, cap as usize), &[(k, delta)]);
    let top = &links[1];
    assert!(top.descriptor.ends_with("vm-000001.vmdk"));
    assert!(top.extent.ends_with("vm-000001-delta.vmdk"));
    assert_eq!(top.layout.gt_offset_bytes.len(), 3, "tables 0, 2 and 3");
    check_top(top, dir.path());
}

#[test]
fn sesparse_two_link_chain_reads_as_qemu_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    // Two full grain tables and a partial third.
    let cap = 2 * SES_SPAN + 3 * SES_GRAIN;
    let last = cap / SES_GRAIN - 1;
    let k = DeltaKind::SeSparse;
    let delta = grains(vec![
        (0, data_grain(k, 20)),
        (1, Grain::Zero),
        (2, Grain::Unmapped),
        // 3 unallocated: the base shows through
        (4, data_grain(k, 21)),
        (4095, Grain::Unmapped),
        // table 1 has no grains: its directory entry is 0
        (2 * 4096, Grain::Zero),
        (last, data_grain(k, 22)),
    ]);
    let base = pattern(2, cap as usize);
    let links = write_chain(dir.path(), "vm", &base, &[(k, delta)]);
    let top = &links[1];
    assert!(top.extent.ends_with("vm-000001-sesparse.vmdk"));
    // The zero and unmapped grains hide non-zero parent bytes, so the reading is tested.
    for g in [1, 2, 4095, 2 * 4096] {
        let r = (g * SES_GRAIN) as usize..((g + 1) * SES_GRAIN) as usize;
        assert!(base[r.clone()].iter().all(|&b| b != 0));
        assert!(top.expected[r].iter().all(|&b| b == 0));
    }
    // qemu reads type 1 (unmapped) as zeros, as vmdk-parse does: check_top compares all.
    check_top(top, dir.path());
}

#[test]
fn three_link_chains_fall_through_each_link() {
    for k in [DeltaKind::Cowd, DeltaKind::SeSparse] {
        let dir = tempfile::tempdir().unwrap();
        let g = k.grain_bytes();
        // One full grain table and the start of a second.
        let cap = GTES_PER_GT * g + 16 * g;
        // Zero grains only where qemu reads them as vmdk-parse does (seSparse); COWD GTE 1 has
        // its own test.
        let zero = if k == DeltaKind::SeSparse {
            Grain::Zero
        } else {
            data_grain(k, 39)
        };
        let first = grains(vec![
            (0, data_grain(k, 30)),
            (1, data_grain(k, 31)),
            (2, data_grain(k, 32)),
            (4096 + 7, data_grain(k, 33)),
        ]);
        let second = grains(vec![
            (1, data_grain(k, 34)), // overrides the first delta
            (2, zero),              // hides the first delta
            (3, data_grain(k, 35)), // over the base
            (4096 + 8, data_grain(k, 36)),
        ]);
        let links = write_chain(
            dir.path(),
            "three",
            &pattern(3, cap as usize),
            &[(k, first), (k, second)],
        );
        assert_eq!(links.len(), 3);
        let top = &links[2];
        assert!(top.descriptor.ends_with("three-000002.vmdk"));
        // Grain 0 comes from the first delta, grain 5 from the base.
        assert_eq!(top.expected[..g as usize], pattern(30, g as usize)[..]);
        let g5 = (5 * g) as usize..(6 * g) as usize;
        assert_eq!(top.expected[g5.clone()], links[0].expected[g5]);
        check_top(top, dir.path());
        // The middle link alone is a disk too.
        check_top(&links[1], dir.path());
        let disk = Disk::open(&top.descriptor).unwrap();
        assert_eq!(disk.links.len(), 3);
    }
}

#[test]
fn cowd_gte_1_reads_zeros_where_qemu_reads_header_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let k = DeltaKind::Cowd;
    let cap = COWD_SPAN;
    let base = write_base(dir.path(), "z", &pattern(4, cap as usize));
    let delta = grains(vec![(3, data_grain(k, 40)), (5, Grain::Zero)]);
    // A parentFileName long enough to reach header sector 1 (bytes 512..1024).
    let long_name = "p".repeat(1000);
    let top = write_delta_with(
        &base,
        k,
        &delta,
        &DeltaOptions {
            cowd_parent_file_name: Some(long_name),
        },
    );
    let grain5 = 5 * SECTOR as usize..6 * SECTOR as usize;
    assert!(base.expected[grain5.clone()].iter().all(|&b| b != 0));

    // vmdk-parse: a zeroed grain, never the parent's bytes.
    let ours = read_lib(&top.descriptor);
    assert_same("vmdk-parse library", &ours, &top.expected);
    assert!(ours[grain5.clone()].iter().all(|&b| b == 0));
    assert_same(
        "vmdk-parse cat",
        &common::vmdk_parse_cat(&top.descriptor),
        &top.expected,
    );

    // qemu (measured): GTE 1 is the sector number 1, read as data: the header bytes 512..1024.
    let qemu = common::qemu_raw(&top.descriptor, dir.path());
    let header = std::fs::read(&top.extent).unwrap();
    assert_eq!(qemu[grain5.clone()], header[512..1024]);
    assert!(qemu[grain5.clone()].iter().all(|&b| b == b'p'));
    // Everywhere else qemu and vmdk-parse agree.
    let mut qemu_elsewhere = qemu.clone();
    qemu_elsewhere[grain5].fill(0);
    assert_same("qemu-img outside grain 5", &qemu_elsewhere, &top.expected);
}

#[test]
fn cowd_gte_1_agrees_with_qemu_on_esxi_style_headers() {
    // ESXi leaves parentFileName empty, so header sector 1 is zeros and qemu's reading of GTE 1
    // happens to match ours.
    let dir = tempfile::tempdir().unwrap();
    let k = DeltaKind::Cowd;
    let links = write_chain(
        dir.path(),
        "esx",
        &pattern(5, COWD_SPAN as usize),
        &[(
            k,
            grains(vec![
                (0, Grain::Zero),
                (1, data_grain(k, 50)),
                (9, Grain::Zero),
            ]),
        )],
    );
    let top = &links[1];
    assert!(top.expected[..SECTOR as usize].iter().all(|&b| b == 0));
    check_top(top, dir.path());
}

#[test]
fn cid_mismatch_is_an_error_naming_both_files() {
    for k in [DeltaKind::Cowd, DeltaKind::SeSparse] {
        let dir = tempfile::tempdir().unwrap();
        let cap = 2 * GTES_PER_GT * k.grain_bytes();
        let links = write_chain(
            dir.path(),
            "cid",
            &pattern(6, cap as usize),
            &[(k, grains(vec![(0, data_grain(k, 60))]))],
        );
        let (base, top) = (&links[0], &links[1]);
        edit_descriptor(
            top,
            &format!("parentCID={:08x}", base.cid),
            &format!("parentCID={:08x}", base.cid ^ 1),
        );
        let child = top.descriptor.to_str().unwrap();
        let parent = base.descriptor.file_name().unwrap().to_str().unwrap();
        expect_open_err(
            &top.descriptor,
            ErrorKind::Corrupt,
            &[child, parent, "content ID mismatch"],
        );
        expect_cat_exit(&top.descriptor, 3, "content ID mismatch");
        // qemu refuses too, on the first read that falls through to the parent.
        let out = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&top.descriptor)
            .arg(dir.path().join("out.raw"))
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "qemu-img read a chain with a CID mismatch"
        );
    }
}

#[test]
fn truncated_deltas_are_errors() {
    for k in [DeltaKind::Cowd, DeltaKind::SeSparse] {
        let dir = tempfile::tempdir().unwrap();
        let cap = 2 * GTES_PER_GT * k.grain_bytes();
        let links = write_chain(
            dir.path(),
            "cut",
            &pattern(7, cap as usize),
            &[(
                k,
                grains(vec![(0, data_grain(k, 70)), (9, data_grain(k, 71))]),
            )],
        );
        let top = &links[1];
        // Grains are stored in reverse order: grain 0 is the last thing in the file.
        let grain0 = top.layout.grain_offset_bytes[&0];
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&top.extent)
            .unwrap();
        f.set_len(grain0 + 100).unwrap();
        expect_read_err(&top.descriptor, "lies past the end of the file");
        expect_cat_exit(&top.descriptor, 3, "past the end of the file");

        // Cut inside the tables: refused at open.
        let gt0 = top.layout.gt_offset_bytes[&0];
        f.set_len(gt0 + 100).unwrap();
        match k {
            // COWD opens (the directory is intact) and fails on the table.
            DeltaKind::Cowd => expect_read_err(&top.descriptor, "grain table 0"),
            // seSparse declares its table region, which no longer fits.
            DeltaKind::SeSparse => {
                expect_open_err(&top.descriptor, ErrorKind::Corrupt, &["grain tables"])
            }
        }
        // Cut inside the header.
        f.set_len(100).unwrap();
        expect_open_err(
            &top.descriptor,
            ErrorKind::Corrupt,
            &["past the end of the file"],
        );
    }
}

#[test]
fn cowd_grain_table_or_grain_past_eof_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let k = DeltaKind::Cowd;
    let links = write_chain(
        dir.path(),
        "eof",
        &pattern(8, 2 * COWD_SPAN as usize),
        &[(
            k,
            grains(vec![(0, data_grain(k, 80)), (4096, data_grain(k, 81))]),
        )],
    );
    let top = &links[1];
    let gd = top.layout.gd_offset_bytes;
    let len = std::fs::metadata(&top.extent).unwrap().len();
    let past = (len / SECTOR + 10) as u32;

    // Grain directory entry 1 points past the end of the file.
    patch(&top.extent, gd + 4, &past.to_le_bytes());
    expect_read_err(&top.descriptor, "COWD grain table 1");
    // Reads that do not touch table 1 still work.
    let disk = Disk::open(&top.descriptor).unwrap();
    let mut b = vec![0u8; SECTOR as usize];
    disk.read_at(&mut b, 0).unwrap();
    assert_eq!(b, pattern(80, SECTOR as usize));
    patch(
        &top.extent,
        gd + 4,
        &(top.layout.gt_offset_bytes[&1] as u32 / 512).to_le_bytes(),
    );
    assert_same("repaired", &read_lib(&top.descriptor), &top.expected);

    // A grain table entry points past the end of the file, then into the grain directory.
    let gt1 = top.layout.gt_offset_bytes[&1];
    patch(&top.extent, gt1, &past.to_le_bytes());
    expect_read_err(&top.descriptor, "lies past the end of the file");
    patch(&top.extent, gt1, &4u32.to_le_bytes());
    expect_read_err(&top.descriptor, "points into the header or grain directory");
}

#[test]
fn sesparse_table_or_grain_outside_its_region_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let k = DeltaKind::SeSparse;
    let links = write_chain(
        dir.path(),
        "eof",
        &pattern(9, 2 * SES_SPAN as usize),
        &[(
            k,
            grains(vec![(0, data_grain(k, 90)), (4096, data_grain(k, 91))]),
        )],
    );
    let top = &links[1];
    let gd = top.layout.gd_offset_bytes;
    // Two tables used, one spare: table index 3 is outside the region.
    patch(
        &top.extent,
        gd + 8,
        &((0x1000_0000u64 << 32) | 3).to_le_bytes(),
    );
    expect_read_err(&top.descriptor, "names grain table 3");
    patch(&top.extent, gd + 8, &(7u64 << 60).to_le_bytes());
    expect_read_err(&top.descriptor, "top 32 bits");
    // Back to the table the generator gave it (tables are handed out in reverse order).
    patch(&top.extent, gd + 8, &(0x1000_0000u64 << 32).to_le_bytes());
    assert_same("repaired", &read_lib(&top.descriptor), &top.expected);

    // A grain index past the grains region.
    let gt1 = top.layout.gt_offset_bytes[&1];
    let far = 1u64 << 40;
    let e = (3u64 << 60) | ((far & 0xFFF) << 48) | (far >> 12);
    patch(&top.extent, gt1, &e.to_le_bytes());
    expect_read_err(&top.descriptor, "grains region holds");
    // An unallocated entry with stray bits.
    patch(&top.extent, gt1, &5u64.to_le_bytes());
    expect_read_err(&top.descriptor, "not a known kind");
}

#[test]
fn sesparse_dirty_journal_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let k = DeltaKind::SeSparse;
    let links = write_chain(
        dir.path(),
        "dirty",
        &pattern(10, SES_SPAN as usize),
        &[(k, grains(vec![(0, data_grain(k, 100))]))],
    );
    let top = &links[1];
    // Volatile header at sector 1: replay_journal is its fourth word.
    patch(&top.extent, SECTOR + 24, &1u64.to_le_bytes());
    expect_open_err(
        &top.descriptor,
        ErrorKind::Unsupported,
        &["journal needs replaying"],
    );
    expect_cat_exit(&top.descriptor, 5, "journal needs replaying");
}

#[test]
fn a_bare_delta_file_opens_on_its_own() {
    // Opened directly, a delta is a disk without a parent: unallocated grains read as zeros.
    for k in [DeltaKind::Cowd, DeltaKind::SeSparse] {
        let dir = tempfile::tempdir().unwrap();
        let cap = GTES_PER_GT * k.grain_bytes();
        let base = write_base(dir.path(), "bare", &pattern(11, cap as usize));
        let top = write_delta(&base, k, &grains(vec![(2, data_grain(k, 110))]));
        let got = read_lib(&top.extent);
        let g = k.grain_bytes() as usize;
        let mut want = vec![0u8; cap as usize];
        want[2 * g..3 * g].copy_from_slice(&pattern(110, g));
        assert_same("bare delta", &got, &want);
    }
}

#[test]
fn two_tib_deltas_open_and_read_lazily() {
    // Near-2 TiB chains (COWD's capacity is a u32 of sectors) over a sparse base: opening reads
    // the grain directory only, and reads touch only the tables they need.
    for k in [DeltaKind::Cowd, DeltaKind::SeSparse] {
        let dir = tempfile::tempdir().unwrap();
        let cap: u64 = (2 << 40) - MIB;
        let base = write_base_sparse(dir.path(), "big", cap, &[1; 512]);
        let g = k.grain_bytes();
        let last = cap / g - 1;
        let top = write_delta(&base, k, &grains(vec![(last, data_grain(k, 120))]));
        assert!(top.expected.is_empty());
        let disk = Disk::open(&top.descriptor).unwrap();
        assert_eq!(disk.capacity(), cap);
        let mut b = vec![0u8; g as usize];
        disk.read_at(&mut b, last * g).unwrap();
        assert_eq!(b, pattern(120, g as usize));
        disk.read_at(&mut b, 0).unwrap();
        assert_eq!(b[..512], [1; 512]);
        disk.read_at(&mut b, cap / 2).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        // The delta file holds its directory, one table and one grain, nothing sized by the
        // capacity beyond the directory.
        let len = std::fs::metadata(&top.extent).unwrap().len();
        assert!(len < 64 * MIB, "{k:?} delta is {len} bytes");
    }
}

/// `vmdk-parse check` on `disk`: the exit code and the problem kinds it lists.
fn check_kinds(disk: &Path) -> (i32, Vec<String>) {
    let out = Command::new(common::bin("vmdk-parse"))
        .arg("check")
        .arg(disk)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check prints a report");
    let kinds = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    (out.status.code().unwrap(), kinds)
}

#[test]
fn check_walks_cowd_tables() {
    let dir = tempfile::tempdir().unwrap();
    let k = DeltaKind::Cowd;
    let links = write_chain(
        dir.path(),
        "chk",
        &pattern(3, 2 * COWD_SPAN as usize),
        &[(
            k,
            grains(vec![
                (0, data_grain(k, 30)),
                (1, Grain::Zero),
                (4096, data_grain(k, 31)),
            ]),
        )],
    );
    let top = &links[1];
    assert_eq!(check_kinds(&top.descriptor), (0, vec![]));
    // Two entries naming one grain.
    let g0 = (top.layout.grain_offset_bytes[&0] / SECTOR) as u32;
    patch(
        &top.extent,
        top.layout.gt_offset_bytes[&0] + 8,
        &g0.to_le_bytes(),
    );
    let (code, kinds) = check_kinds(&top.descriptor);
    assert_eq!(code, 1);
    assert!(kinds.contains(&"grain_overlap".to_string()), "{kinds:?}");
    // A grain inside a grain table.
    let gt1 = (top.layout.gt_offset_bytes[&1] / SECTOR) as u32;
    patch(
        &top.extent,
        top.layout.gt_offset_bytes[&0] + 8,
        &(gt1 + 1).to_le_bytes(),
    );
    let (_, kinds) = check_kinds(&top.descriptor);
    assert!(kinds.contains(&"grain_overlap".to_string()), "{kinds:?}");
    // A table past the end of the file: listed, and the read failure too.
    let past = (std::fs::metadata(&top.extent).unwrap().len() / SECTOR + 1) as u32;
    patch(
        &top.extent,
        top.layout.gd_offset_bytes + 4,
        &past.to_le_bytes(),
    );
    let (_, kinds) = check_kinds(&top.descriptor);
    assert!(kinds.contains(&"gt_out_of_range".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"unreadable".to_string()), "{kinds:?}");
}

#[test]
fn check_walks_sesparse_tables() {
    let dir = tempfile::tempdir().unwrap();
    let k = DeltaKind::SeSparse;
    let links = write_chain(
        dir.path(),
        "chk",
        &pattern(4, 2 * SES_SPAN as usize),
        &[(
            k,
            grains(vec![
                (0, data_grain(k, 40)),
                (1, Grain::Unmapped),
                (4096, data_grain(k, 41)),
            ]),
        )],
    );
    let top = &links[1];
    assert_eq!(check_kinds(&top.descriptor), (0, vec![]));
    let gd = top.layout.gd_offset_bytes;
    let gt0 = top.layout.gt_offset_bytes[&0];
    // Entry 1 of table 0 becomes a copy of entry 0: one grain index used twice.
    let e0 = std::fs::read(&top.extent).unwrap()[gt0 as usize..gt0 as usize + 8].to_vec();
    patch(&top.extent, gt0 + 8, &e0);
    let (code, kinds) = check_kinds(&top.descriptor);
    assert_eq!(code, 1);
    assert!(kinds.contains(&"grain_overlap".to_string()), "{kinds:?}");
    // An entry of no known type.
    patch(&top.extent, gt0 + 16, &(9u64 << 60).to_le_bytes());
    let (_, kinds) = check_kinds(&top.descriptor);
    assert!(
        kinds.contains(&"grain_entry_invalid".to_string()),
        "{kinds:?}"
    );
    // Both directory entries name the same table.
    let e = std::fs::read(&top.extent).unwrap()[gd as usize..gd as usize + 8].to_vec();
    patch(&top.extent, gd + 8, &e);
    let (_, kinds) = check_kinds(&top.descriptor);
    assert!(kinds.contains(&"gt_overlap".to_string()), "{kinds:?}");
}
