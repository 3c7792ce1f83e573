//! The random-access readers of an indexed delta on arbitrary bytes: the trailing index
//! (`read_index`), the record table built from it (`read_record_table`), and every literal it
//! leads to (`read_literal_at`, then inflated). Nothing may panic or allocate by a stated count.
//! Seeds: `../tests/golden/*.delta` (the indexed one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::FileExt;
use vdiff::format::{
    literal_bytes, read_index, read_literal_at, read_record_at, read_record_table, KIND_LITERAL,
    LITERAL_STORED,
};

/// The fuzz input as a file.
struct Mem<'a>(&'a [u8]);

impl FileExt for Mem<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let Some(rest) = usize::try_from(offset).ok().and_then(|o| self.0.get(o..)) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<usize> {
        Err(std::io::Error::other("read only"))
    }
}

fuzz_target!(|data: &[u8]| {
    let f = Mem(data);
    let len = data.len() as u64;
    if let Ok((h, entries)) = read_index(&f, len) {
        for &(_, at) in entries.iter().take(64) {
            let _ = read_record_at(&f, len, &h, at);
        }
    }
    if let Ok(t) = read_record_table(&f, len) {
        let _ = (t.totals, t.bytes_read, &t.header);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for r in t.records.iter().filter(|r| r.kind == KIND_LITERAL).take(64) {
            if let Ok(p) = read_literal_at(&f, len, r, &mut buf) {
                let _ = literal_bytes(r.flags == LITERAL_STORED, p, r.length, &mut out);
            }
        }
    }
});
