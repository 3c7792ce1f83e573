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
