//! Variants qemu-img does not create directly, derived from files it does make (or from the real
//! VMware fixtures), with qemu-img still the oracle wherever it reads the result:
//! ESXi vmfs / vmfsThin disks (flat data files, holes in thin ones), a version 3 (ESXi, CBT)
//! uncompressed sparse header, and a twoGbMaxExtentSparse disk of several extents.

mod common;

use common::{bin, fixtures, qemu_img, qemu_io, qemu_raw, run};
use std::fs;
use std::path::Path;
use std::process::Command;

fn vp(args: &[&str], disk: &Path) -> std::process::Output {
    run(Command::new(bin("vmdk-parse")).args(args).arg(disk))
}

fn map_states(disk: &Path) -> Vec<(u64, u64, String)> {
    let out = vp(&["map"], disk);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["offset"].as_u64().unwrap(),
                v["length"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn vmfs_thin_with_holes_reads_as_qemu_reads_vmfs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An ESXi thin disk: the data file is sparse on the datastore.
    let flat = d.join("thin-flat.vmdk");
    let f = fs::File::create(&flat).unwrap();
    f.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xa5; 65536], 1 << 20).unwrap();
    f.write_all_at(&[0x5a; 4096], 7 << 20).unwrap();
    drop(f);
    let desc = |ct: &str| {
        format!("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=0172e8a4\nparentCID=ffffffff\ncreateType=\"{ct}\"\n\n# Extent description\nRW 16384 VMFS \"thin-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.thinProvisioned = \"1\"\nddb.adapterType = \"lsilogic\"\n")
    };
    fs::write(d.join("thin.vmdk"), desc("vmfsThin")).unwrap();
    fs::write(d.join("thick.vmdk"), desc("vmfs")).unwrap();
    let want = fs::read(&flat).unwrap();
    // qemu reads createType vmfs (it refuses the name vmfsThin); same data file.
    assert_eq!(qemu_raw(&d.join("thick.vmdk"), d), want);
    assert_eq!(vp(&["cat"], &d.join("thin.vmdk")).stdout, want);
    // Holes of the data file are zero ranges in the map, like qemu-img map's "zero".
    let states = map_states(&d.join("thin.vmdk"));
    assert!(
        states
            .iter()
            .any(|(o, l, s)| s == "data" && *o <= 1 << 20 && o + l >= (1 << 20) + 65536),
        "{states:?}"
    );
    assert!(
        states.iter().any(|(o, _, s)| s == "zero" && *o == 0),
        "{states:?}"
    );
    // cat -o keeps them as holes.
    let o = d.join("o.raw");
    run(Command::new(bin("vmdk-parse"))
        .arg("cat")
        .arg(d.join("thin.vmdk"))
        .arg("-o")
        .arg(&o));
    assert_eq!(fs::read(&o).unwrap(), want);
    use std::os::unix::fs::MetadataExt;
    assert!(fs::metadata(&o).unwrap().blocks() * 512 <= 1 << 20);
}

#[test]
fn real_esxi_vmfs_fixture_as_vmfs_thin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::copy(
        fixtures().join("vmware/vmfs_thick-flat.vmdk"),
        d.join("vmfs_thick-flat.vmdk"),
    )
    .unwrap();
    let text = fs::read_to_string(fixtures().join("vmware/vmfs_thick.vmdk")).unwrap();
    fs::write(
        d.join("thin.vmdk"),
        text.replace("createType=\"vmfs\"", "createType=\"vmfsThin\""),
    )
    .unwrap();
    let out = vp(&["cat"], &d.join("thin.vmdk")).stdout;
    assert_eq!(
        common::sha256_hex(&out),
        "8d43c795d24bce01b49f92744f934c1072210dcac170bb1c83a5aa56df46ab7d"
    );
}

#[test]
fn version_3_uncompressed_sparse_header() {
    // ESXi-era hosted sparse files with changed block tracking carry header version 3.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("v3.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", p.to_str().unwrap(), "16M"]);
    qemu_io(
        &p,
        "vmdk",
        &[
            "write -P 0x31 0 1M",
            "write -P 0x32 5M 64k",
            "write -P 0x33 16320k 64k",
        ],
    );
    let mut b = fs::read(&p).unwrap();
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 1);
    b[4..8].copy_from_slice(&3u32.to_le_bytes());
    fs::write(&p, &b).unwrap();
    // qemu opens version 3 read-only and still reads it: the oracle.
    let want = qemu_raw(&p, d);
    assert_eq!(vp(&["cat"], &p).stdout, want);
    let info: serde_json::Value = serde_json::from_slice(&vp(&["info"], &p).stdout).unwrap();
    assert_eq!(info["extents"][0]["header"]["version"], 3);
    assert!(vp(&["check"], &p).status.success());
}

#[test]
fn two_gb_max_extent_sparse_with_several_extents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("split.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        p.to_str().unwrap(),
        "5G",
    ]);
    // Writes in the first, across the first/second boundary, and in the last extent.
    qemu_io(
        &p,
        "vmdk",
        &[
            "write -P 0x41 0 64k",
            "write -P 0x42 2047M 2M",
            "write -P 0x43 5119M 1M",
        ],
    );
    let info: serde_json::Value = serde_json::from_slice(&vp(&["info"], &p).stdout).unwrap();
    assert_eq!(info["create_type"], "twoGbMaxExtentSparse");
    assert_eq!(info["extents"].as_array().unwrap().len(), 3);
    assert_eq!(
        info["totals"]["data_bytes"],
        (64 << 10) + (2 << 20) + (1 << 20)
    );
    // Read the written ranges through both readers (not the whole 5 GiB).
    let o = d.join("o.raw");
    run(Command::new(bin("vmdk-parse"))
        .arg("cat")
        .arg(&p)
        .arg("-o")
        .arg(&o));
    let q = d.join("q.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        p.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let (a, b) = (fs::File::open(&o).unwrap(), fs::File::open(&q).unwrap());
    use std::os::unix::fs::FileExt;
    for (off, len) in [
        (0u64, 1usize << 20),
        ((2047u64 << 20) - 4096, (2 << 20) + 8192),
        (5119 << 20, 1 << 20),
    ] {
        let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
        a.read_exact_at(&mut x, off).unwrap();
        b.read_exact_at(&mut y, off).unwrap();
        assert_eq!(x, y, "range at {off}");
        assert!(x.iter().any(|&v| v != 0));
    }
    assert_eq!(fs::metadata(&o).unwrap().len(), 5 << 30);
}
