//! streamOptimized layouts that qemu-img does not write, made here from their specification:
//! the grain directory at the end with a footer (VMware's stream converter and OVF tool), the
//! same stream cut before its footer (read by scanning the grain markers), and the
//! no-embedded-LBA compressed layout. qemu-img is the oracle wherever it reads the layout.

mod common;

use common::{bin, qemu_raw, run};
use std::path::Path;
use std::process::Command;

const SECTOR: usize = 512;
const GRAIN_SECTORS: u64 = 128;
const GRAIN: usize = GRAIN_SECTORS as usize * SECTOR;
const GTES: usize = 512;

struct Layout {
    /// Write GT/GD markers, the GD and the footer at the end.
    footer: bool,
    /// Keep the GT/GD metadata (with markers) even without a footer.
    tables: bool,
    /// Write one grain twice (the later record must win when scanning).
    rewrite_grain: Option<u64>,
}

fn header(capacity_sectors: u64, gd_offset: u64, desc_sectors: u64, over_head: u64) -> Vec<u8> {
    let mut h = vec![0u8; SECTOR];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&0x30001u32.to_le_bytes());
    h[12..20].copy_from_slice(&capacity_sectors.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&desc_sectors.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES as u32).to_le_bytes());
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&over_head.to_le_bytes());
    h[73] = b'\n';
    h[74] = b' ';
    h[75] = b'\r';
    h[76] = b'\n';
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

fn marker(val: u64, kind: u32) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR];
    m[0..8].copy_from_slice(&val.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(SECTOR) * SECTOR, 0);
}

/// Write `raw` as a streamOptimized extent in VMware's stream-converter layout.
fn write_stream(raw: &[u8], path: &Path, layout: &Layout) {
    let capacity_sectors = (raw.len() / SECTOR) as u64;
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=2d4f6a10\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n# Extent description\nRDONLY {capacity_sectors} SPARSE \"{}\"\n\n#DDB\nddb.adapterType = \"lsilogic\"\n",
        path.file_name().unwrap().to_string_lossy()
    );
    let desc_sectors = 20u64;
    let over_head = 1 + desc_sectors;
    let mut out = header(capacity_sectors, u64::MAX, desc_sectors, over_head);
    let mut d = desc.into_bytes();
    d.resize(desc_sectors as usize * SECTOR, 0);
    out.extend_from_slice(&d);

    let grains = raw.len().div_ceil(GRAIN);
    let mut gtes = vec![0u32; grains.div_ceil(GTES) * GTES];
    let mut comp = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
    let mut write_grain = |out: &mut Vec<u8>, g: usize, data: &[u8]| {
        let mut buf = vec![0u8; comp.zlib_compress_bound(data.len())];
        let n = comp.zlib_compress(data, &mut buf).unwrap();
        gtes[g] = (out.len() / SECTOR) as u32;
        out.extend_from_slice(&(g as u64 * GRAIN_SECTORS).to_le_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&buf[..n]);
        pad(out);
    };
    for g in 0..grains {
        let data = &raw[g * GRAIN..((g + 1) * GRAIN).min(raw.len())];
        if data.iter().all(|&b| b == 0) {
            continue; // all-zero grains are left out of a stream
        }
        if layout.rewrite_grain == Some(g as u64) {
            write_grain(&mut out, g, &vec![0xee; data.len()]);
        }
        write_grain(&mut out, g, data);
    }
    if layout.tables || layout.footer {
        let mut gd = Vec::new();
        for t in gtes.chunks(GTES) {
            out.extend_from_slice(&marker((GTES * 4 / SECTOR) as u64, 1));
            gd.push((out.len() / SECTOR) as u32);
            for e in t {
                out.extend_from_slice(&e.to_le_bytes());
            }
        }
        let gd_sectors = (gd.len() * 4).div_ceil(SECTOR) as u64;
        out.extend_from_slice(&marker(gd_sectors, 2));
        let gd_offset = (out.len() / SECTOR) as u64;
        for e in &gd {
            out.extend_from_slice(&e.to_le_bytes());
        }
        pad(&mut out);
        if layout.footer {
            out.extend_from_slice(&marker(1, 3));
            out.extend_from_slice(&header(
                capacity_sectors,
                gd_offset,
                desc_sectors,
                over_head,
            ));
        }
    }
    if layout.footer {
        out.extend_from_slice(&marker(0, 0));
    }
    std::fs::write(path, out).unwrap();
}

/// A raw image with random-looking data, zero grains, and a partial last grain's worth.
fn sample_raw() -> Vec<u8> {
    let mut raw = vec![0u8; 6 * 1024 * 1024 + 3 * SECTOR * 8];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for (i, chunk) in raw.chunks_mut(GRAIN).enumerate() {
        if i % 3 == 1 {
            continue; // zero grain
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Compressible but not trivial.
            *b = if i % 2 == 0 {
                (x >> 56) as u8
            } else {
                (x % 4) as u8
            };
        }
    }
    raw
}

fn vp_cat(disk: &Path) -> Vec<u8> {
    run(Command::new(bin("vmdk-parse")).arg("cat").arg(disk)).stdout
}

fn lookup_source(disk: &Path) -> String {
    let out = run(Command::new(bin("vmdk-parse")).arg("info").arg(disk));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["extents"][0]["header"]["gd_offset"].to_string()
}

#[test]
fn gd_at_end_with_footer_matches_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_raw();
    let p = dir.path().join("footer.vmdk");
    write_stream(
        &raw,
        &p,
        &Layout {
            footer: true,
            tables: true,
            rewrite_grain: None,
        },
    );
    // The oracle reads our generated file as intended...
    assert_eq!(
        qemu_raw(&p, dir.path()),
        raw,
        "qemu-img reads the generated stream as the source"
    );
    // ...and so do we, through the footer's grain directory.
    assert_eq!(vp_cat(&p), raw);
    assert_ne!(
        lookup_source(&p),
        u64::MAX.to_string(),
        "info shows the footer's gdOffset"
    );
    let out = run(Command::new(bin("vmdk-parse")).arg("check").arg(&p));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The RDONLY extent of the embedded descriptor does not matter for a sparse file.
    let o = dir.path().join("o.raw");
    run(Command::new(bin("vmdk-parse"))
        .arg("cat")
        .arg(&p)
        .arg("-o")
        .arg(&o));
    assert_eq!(std::fs::read(&o).unwrap(), raw);
}

#[test]
fn stream_cut_before_its_footer_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_raw();
    // With GT/GD markers but no footer (a writer that stopped early or never writes one).
    let p = dir.path().join("nofooter.vmdk");
    write_stream(
        &raw,
        &p,
        &Layout {
            footer: false,
            tables: true,
            rewrite_grain: None,
        },
    );
    assert_eq!(vp_cat(&p), raw);
    // Only grain records (no tables at all, no end marker).
    let p2 = dir.path().join("grains-only.vmdk");
    write_stream(
        &raw,
        &p2,
        &Layout {
            footer: false,
            tables: false,
            rewrite_grain: None,
        },
    );
    assert_eq!(vp_cat(&p2), raw);
    // qemu-img refuses such files; we read them, which is the point of scanning.
    let q = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&p2)
        .arg(dir.path().join("q.raw"))
        .output()
        .unwrap();
    assert!(
        !q.status.success(),
        "qemu-img started reading footerless GD_AT_END streams: compare with it then"
    );
}

#[test]
fn scanned_stream_takes_the_later_copy_of_a_grain() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_raw();
    let p = dir.path().join("twice.vmdk");
    write_stream(
        &raw,
        &p,
        &Layout {
            footer: false,
            tables: false,
            rewrite_grain: Some(2),
        },
    );
    assert_eq!(vp_cat(&p), raw);
}

#[test]
fn footer_and_grain_markers_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_raw();
    let p = dir.path().join("f.vmdk");
    write_stream(
        &raw,
        &p,
        &Layout {
            footer: true,
            tables: true,
            rewrite_grain: None,
        },
    );
    let good = std::fs::read(&p).unwrap();
    // A grain record marked for another sector than the table says: corrupt, exit 3.
    let mut b = good.clone();
    let first_grain = 21 * SECTOR;
    b[first_grain] ^= 0x80; // lba field of grain 0
    std::fs::write(&p, &b).unwrap();
    let out = Command::new(bin("vmdk-parse"))
        .arg("cat")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("grain table says"));
    let out = Command::new(bin("vmdk-parse"))
        .arg("check")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("grain_lba"));
    // Corrupt compressed data: a clear error, not garbage.
    let mut b = good.clone();
    for x in &mut b[first_grain + 20..first_grain + 60] {
        *x ^= 0x5a;
    }
    std::fs::write(&p, &b).unwrap();
    let out = Command::new(bin("vmdk-parse"))
        .arg("cat")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("inflate"));
    // A footer whose magic is damaged: treated as no footer, and the stream is scanned.
    let mut b = good;
    let footer = b.len() - 1024;
    b[footer] = b'X';
    std::fs::write(&p, &b).unwrap();
    assert_eq!(vp_cat(&p), raw);
}
