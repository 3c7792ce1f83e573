//! The delta stream decoder on arbitrary bytes: every record, every literal inflated, and for
//! small targets the whole reference apply (which checks the target digest); and the same
//! bytes as a signature file. Nothing may panic or allocate past the format's caps.
//! Seeds: `../tests/golden/*.delta`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdiff::format::{apply_bytes, literal_bytes, Decoder, Record};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = vdiff::signature::read(data) {
        let _ = (s.size, s.blocks.len());
    }
    let Ok(mut d) = Decoder::new(data) else {
        return;
    };
    let h = d.header().clone();
    let _ = (h.is_full(), d.stream_position());
    let mut buf = Vec::new();
    loop {
        match d.next_record() {
            Ok(Some(Record::Literal {
                length,
                stored,
                payload,
                ..
            })) => {
                let _ = literal_bytes(stored, &payload, length, &mut buf);
            }
            Ok(Some(r)) => {
                let _ = (r.offset(), r.length());
            }
            Ok(None) => {
                let _ = d.totals();
                break;
            }
            Err(_) => break,
        }
    }
    if h.target_size <= 1 << 20 && h.source_size <= 1 << 20 {
        let source = vec![0x5au8; h.source_size as usize];
        let _ = apply_bytes(&source, data);
    }
});
