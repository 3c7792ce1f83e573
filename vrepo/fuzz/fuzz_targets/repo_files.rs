//! The files vrepo reads from a repository, on arbitrary bytes: `entry.json` (parsed and
//! validated), a relative signature (applied to a small parent scan), `journal.json`.
//! Nothing may panic or allocate beyond what the input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;
use vdiff::diff::Scan;

fn parent() -> &'static Scan {
    static P: OnceLock<Scan> = OnceLock::new();
    P.get_or_init(|| {
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        vdiff::diff::scan(&vdiff::MemImage::new(data), 4096, true).expect("scan")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = serde_json::from_slice::<vrepo::Entry>(data) {
        let _ = e.validate("E1");
    }
    if let Ok(s) = vrepo::store::read_relative(data, parent(), "E2") {
        assert_eq!(s.blocks.len() as u64, s.size.div_ceil(4096));
    }
    let _ = vrepo::rewrite::parse_journal(data, Path::new("journal.json"));
});
