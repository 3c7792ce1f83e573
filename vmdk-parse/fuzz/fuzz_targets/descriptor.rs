//! The descriptor parser and every accessor, on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vmdk_parse::descriptor::{looks_like_descriptor, Descriptor};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_descriptor(data);
    let p = Path::new("fuzz.vmdk");
    if let Ok(d) = Descriptor::parse(p, data) {
        let _ = d.pairs().count();
        let _ = d.extents().count();
        let _ = d.create_type();
        let _ = d.parent_hint();
        let _ = d.cid(p);
        let _ = d.parent_cid(p);
        let _ = d.get("ddb.uuid");
    }
});
