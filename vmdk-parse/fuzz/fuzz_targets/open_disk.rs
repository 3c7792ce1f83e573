//! A whole disk file from arbitrary bytes: open it (sparse header, grain directory and tables,
//! streamOptimized footer and markers, COWD, seSparse, embedded descriptor), then `info`, the
//! map, `check`, and a read of every byte (capped), exactly what the tools do with a hostile file.
//!
//! The first byte picks a template the rest of the input is laid over, so the fuzzer starts from
//! structures deep enough to reach the table and stream code: 0 as is, 1 over a monolithicSparse
//! header, 2 over a streamOptimized header.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;

const MAX_READ: u64 = 64 << 20;

fn template(kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    let put32 = |h: &mut Vec<u8>, at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_le_bytes());
    match kind {
        1 => {
            put32(&mut h, 4, 1);
            put32(&mut h, 8, 3);
            put64(&mut h, 12, 2048);
            put64(&mut h, 20, 8);
            put32(&mut h, 44, 16);
            put64(&mut h, 48, 1);
            put64(&mut h, 56, 2);
            put64(&mut h, 64, 3);
        }
        _ => {
            put32(&mut h, 4, 3);
            put32(&mut h, 8, 0x30001);
            put64(&mut h, 12, 2048);
            put64(&mut h, 20, 8);
            put32(&mut h, 44, 16);
            put64(&mut h, 56, u64::MAX);
            put64(&mut h, 64, 1);
            h[77] = 1;
        }
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let bytes = match kind % 3 {
        0 => rest.to_vec(),
        k => {
            let mut t = template(k);
            // Mutations land after the magic, so the template's kind survives.
            for (i, b) in rest.iter().enumerate() {
                match t.get_mut(4 + i) {
                    Some(x) => *x ^= b,
                    None => t.push(*b),
                }
            }
            t
        }
    };
    let dir = std::env::temp_dir().join(format!("vmdk-parse-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("disk.vmdk");
    let Ok(mut f) = std::fs::File::create(&path) else { return };
    if f.write_all(&bytes).is_err() {
        return;
    }
    drop(f);
    let _ = vmdk_parse::check::check_path(&path, &Default::default());
    let Ok(disk) = vmdk_parse::Disk::open(&path) else { return };
    let _ = vmdk_parse::info::info(&disk);
    let mut buf = vec![0u8; 1 << 16];
    let end = disk.capacity().min(MAX_READ);
    let mut pos = 0;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        if disk.read_at(&mut buf[..n], pos).is_err() {
            break;
        }
        pos += n as u64;
    }
});
