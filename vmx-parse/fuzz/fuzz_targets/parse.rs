//! The dictionary parser and every accessor on arbitrary bytes: the round trip must hold for
//! whatever parses, views must not panic, and edits must read back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vmx_parse::{report, Document, SnapshotTree, VmConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(mut doc) = Document::parse(Path::new("fuzz.vmx"), data) else {
        return;
    };
    assert_eq!(
        doc.to_bytes(),
        data,
        "an unchanged document writes its input back"
    );
    for l in doc.lines() {
        let _ = (l.key(), l.value(), l.stored_value(), l.kind(), l.eol());
        let _ = l.is_damaged();
    }
    let _ = doc.duplicates();
    let _ = doc.problems();
    let _ = doc.warnings();
    let _ = VmConfig::from_document(&doc);
    let _ = SnapshotTree::from_document(&doc);
    let _ = serde_json::to_vec(&report::show("fuzz.vmx", &doc));
    let _ = serde_json::to_vec(&report::vmsd("fuzz.vmsd", &doc));
    if data.len() > 1 << 16 {
        return; // an edit could push a line over the length limit
    }
    let keys: Vec<String> = doc.pairs().map(|(_, k, _)| k.to_string()).take(8).collect();
    for k in &keys {
        // A damaged line of another key keeps its bytes through the edit.
        let target = doc.line_of(k);
        let damaged: Vec<(usize, Vec<u8>)> = doc
            .lines()
            .iter()
            .enumerate()
            .filter(|(i, l)| l.is_damaged() && Some(*i) != target)
            .map(|(i, l)| (i, l.raw().to_vec()))
            .collect();
        if doc.set(k, "fuzz |\"value\"\n").is_ok() {
            for (i, raw) in &damaged {
                assert_eq!(
                    doc.lines()[*i].raw(),
                    &raw[..],
                    "a damaged line of another key moved"
                );
            }
            let again = Document::parse(Path::new("fuzz.vmx"), &doc.to_bytes())
                .expect("an edited document parses");
            assert_eq!(again.get(k), Some("fuzz |\"value\"\n"));
        }
        doc.unset(k);
        assert_eq!(doc.get(k), None);
    }
});
