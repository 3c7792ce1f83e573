//! The first pass over a disk vmdk-parse opens takes chunks holding no data from the disk's
//! layout without reading them: its rows must be those of the same image read byte by byte.

use std::process::Command;
use vdiff::diff::scan;
use vdiff::{Kind, MemImage};

const MB: u64 = 1 << 20;

fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd} is needed by this test (Debian package qemu-utils): {e}")
    });
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn hole_chunks_scan_like_read_ones() {
    let t = tempfile::tempdir().unwrap();
    let vmdk = t.path().join("z.vmdk");
    let v = vmdk.to_str().unwrap();
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            v,
            "16M",
        ],
    );
    // Data in chunk 0 and half of chunk 7, zero grains over chunks 4 and 5 and half of 7.
    run(
        "qemu-io",
        &[
            "-f",
            "vmdk",
            "-c",
            "write -P 0x11 0 1M",
            "-c",
            "write -z 4M 2M",
            "-c",
            "write -P 0x22 7M 512k",
            "-c",
            "write -z 7680k 512k",
            v,
        ],
    );
    let disk = vmdk_parse::Disk::open(&vmdk).unwrap();
    let mut mem = MemImage::new(vec![0; 16 * MB as usize]);
    mem.data[..MB as usize].fill(0x11);
    mem.data[7 * MB as usize..7 * MB as usize + 512 * 1024].fill(0x22);
    mem.holes = vec![
        (MB, 3 * MB, Kind::Unallocated),
        (4 * MB, 2 * MB, Kind::Zero),
        (6 * MB, MB, Kind::Unallocated),
        (7 * MB + 512 * 1024, 512 * 1024, Kind::Zero),
        (8 * MB, 8 * MB, Kind::Unallocated),
    ];
    let (a, b) = (
        scan(&disk, 4096, true).unwrap(),
        scan(&mem, 4096, true).unwrap(),
    );
    assert_eq!(a.digest, b.digest);
    let n = (16 * MB / 4096) as usize;
    for i in 0..n {
        assert_eq!(a.kind(i), b.kind(i), "block {i}");
        assert_eq!(a.blocks[i], b.blocks[i], "block {i}");
        assert_eq!(a.weak(i), b.weak(i), "block {i}");
    }
    // The three kinds are all there.
    let kinds: std::collections::BTreeSet<u8> = (0..n).map(|i| a.kind(i)).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
}
