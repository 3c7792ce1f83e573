//! The files vrepo reads from a repository, on arbitrary bytes: `entry.json` (parsed and
//! validated, its VM named), a relative signature (applied to a small parent scan),
//! `journal.json`, the seal of the sealed files; and entry selectors (`VM:latest~N`...), parsed
//! and resolved against an entry that validated.
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
        if e.validate("E1").is_ok() {
            let vm = e.vm_name().to_owned();
            assert!(!vm.is_empty());
            let entries = [e];
            for spec in ["latest", "latest~1", "E1", &format!("{vm}:latest")] {
                let _ = vrepo::vms::resolve(&entries, spec, None);
            }
            let _ = vrepo::vms::summaries(&entries);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vrepo::vms::parse(text, None);
        let _ = vrepo::vms::parse(text, Some("web"));
    }
    if let Ok(s) = vrepo::store::read_relative(data, parent(), "E2") {
        assert_eq!(s.blocks.len() as u64, s.size.div_ceil(4096));
    }
    let _ = vrepo::rewrite::parse_journal(data, Path::new("journal.json"));
    // Sealed files (last-entry, working-area records, the journal): any bytes unseal or not
    // without a panic, and a seal always opens to what it sealed.
    if let Ok(p) = vrepo::repo::unseal(data) {
        let _ = vrepo::rewrite::parse_journal(p, Path::new("journal.json"));
    }
    let sealed = vrepo::repo::seal(data);
    assert_eq!(vrepo::repo::unseal(&sealed), Ok(data));
});
