//! Mutated and truncated real VMDK files: opening, mapping, checking and reading them must end
//! in a value or a typed error, never a panic, whatever the bytes. (The fuzz targets in
//! `fuzz/` explore further; this runs in every test run.)

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use vmdk_parse::{check, Disk, ErrorKind, OpenOptions};

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/vmware")
        .join(name);
    std::fs::read(p).unwrap()
}

fn exercise(path: &PathBuf) {
    let _ = check::check_path(path, &OpenOptions::default());
    let disk = match Disk::open(path) {
        Ok(d) => d,
        Err(e) => {
            assert_ne!(e.kind(), ErrorKind::OutOfRange, "{e}");
            assert!(!e.to_string().contains('\n'));
            return;
        }
    };
    let _ = vmdk_parse::info::info(&disk);
    let mut buf = vec![0u8; 1 << 16];
    let end = disk.capacity().min(32 << 20);
    let mut pos = 0;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        if let Err(e) = disk.read_at(&mut buf[..n], pos) {
            assert_ne!(e.kind(), ErrorKind::OutOfRange, "{e}");
            break;
        }
        pos += n as u64;
    }
}

fn mutate(
    mut b: Vec<u8>,
    flips: &[(usize, u8)],
    metadata_len: usize,
    cut: Option<usize>,
) -> Vec<u8> {
    for &(at, x) in flips {
        let at = at % metadata_len.min(b.len());
        b[at] ^= x | 1;
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mutated_monolithic_sparse(flips in prop::collection::vec((0usize..65536, any::<u8>()), 1..8),
                                 cut in prop::option::weighted(0.2, any::<usize>())) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.vmdk");
        // Mutations hit the header, descriptor, directories and tables (the first 64 KiB).
        std::fs::write(&p, mutate(fixture("monolithicSparse.vmdk"), &flips, 65536, cut)).unwrap();
        exercise(&p);
    }

    #[test]
    fn mutated_stream_optimized(flips in prop::collection::vec((0usize..1 << 20, any::<u8>()), 1..8),
                                cut in prop::option::weighted(0.2, any::<usize>())) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.vmdk");
        // Anywhere in the file: header, tables and compressed grains alike.
        std::fs::write(&p, mutate(fixture("streamOptimized.vmdk"), &flips, 1 << 20, cut)).unwrap();
        exercise(&p);
    }

    #[test]
    fn mutated_descriptor(flips in prop::collection::vec((0usize..442, any::<u8>()), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmfs_thick-flat.vmdk"), fixture("vmfs_thick-flat.vmdk")).unwrap();
        let p = dir.path().join("vmfs_thick.vmdk");
        std::fs::write(&p, mutate(fixture("vmfs_thick.vmdk"), &flips, 442, None)).unwrap();
        exercise(&p);
    }

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.vmdk");
        std::fs::write(&p, &bytes).unwrap();
        exercise(&p);
    }
}

/// Fuzz finding (scripts/fuzz.sh, open_disk, timeout): a streamOptimized header with no footer
/// claiming 64 TiB of 512-byte grains made `info` and `check` walk 137 billion grains one by
/// one (more than 30 s). The grains a scan found are few; the rest is unallocated in one step.
#[test]
fn a_huge_stream_of_tiny_grains_with_no_footer_is_mapped_at_once() {
    let mut h = vec![0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&0x30001u32.to_le_bytes());
    h[12..20].copy_from_slice(&(64u64 << 31).to_le_bytes()); // 64 TiB in sectors
    h[20..28].copy_from_slice(&1u64.to_le_bytes()); // 1-sector grains
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[56..64].copy_from_slice(&u64::MAX.to_le_bytes()); // the directory is in the footer
    h[64..72].copy_from_slice(&1u64.to_le_bytes());
    h[77] = 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.vmdk");
    std::fs::write(&path, &h).unwrap();
    let t = std::time::Instant::now();
    exercise(&path);
    if let Ok(disk) = Disk::open(&path) {
        let pieces: Vec<_> = disk.map().take(100).collect();
        assert!(pieces.len() < 10, "{} pieces", pieces.len());
    }
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}
