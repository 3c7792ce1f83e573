//! vpatch's undo-file reader (`vpatch --restore`) on arbitrary bytes: every record, the end
//! record, nothing after it. Nothing may panic or allocate past one 1 MiB record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = vpatch::inplace::check_undo(data) {
        let _ = (s.target, s.base_size, s.target_size, s.saved_bytes);
    }
});
