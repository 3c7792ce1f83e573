//! VMware's `|XX` value escapes.
//!
//! In a value, `|` followed by two hex digits stands for the byte 0xXX of the file's encoding:
//! `|22` is `"`, `|7C` is `|`, `|0A` a newline (virt-v2v `remove_vmx_escapes`, libvirt
//! `virVMXEscapeHexPipe`; libvirt's test `annotation.vmx` uses them). A `|` not followed by
//! two hex digits is an ordinary character.
//!
//! Decoding works on text already decoded from the file's encoding, so that a Shift_JIS trail
//! byte 0x7C is never taken for an escape; a run of escaped bytes is then decoded in the file's
//! encoding (so `|C3|A9` is `é` in a UTF-8 file). Encoding escapes `|`, `"` and control
//! characters, and nothing else, as libvirt does; `decode(encode(v)) == v` for every value.

use encoding_rs::Encoding;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn flush(out: &mut String, bytes: &mut Vec<u8>, encoding: &'static Encoding) {
    if !bytes.is_empty() {
        let (text, _) = encoding.decode_without_bom_handling(bytes);
        out.push_str(&text);
        bytes.clear();
    }
}

/// Decode the `|XX` escapes of a stored value. Escaped bytes that are not valid in `encoding`
/// become U+FFFD; the stored text is kept by the model, so nothing is lost on write.
pub fn decode(stored: &str, encoding: &'static Encoding) -> String {
    if !stored.contains('|') {
        return stored.to_string();
    }
    let mut out = String::with_capacity(stored.len());
    let mut bytes = Vec::new();
    let b = stored.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'|' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                bytes.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        flush(&mut out, &mut bytes, encoding);
        // `i` is on a char boundary: escapes are ASCII and we only skip whole escapes.
        let ch = stored[i..]
            .chars()
            .next()
            .expect("i < len on a char boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    flush(&mut out, &mut bytes, encoding);
    out
}

/// Whether a character is written as an escape.
fn needs_escape(c: char) -> bool {
    c == '|' || c == '"' || c.is_ascii_control()
}

/// Encode a value for storage: `|`, `"` and ASCII control characters as `|XX`.
pub fn encode(value: &str) -> String {
    if !value.chars().any(needs_escape) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if needs_escape(c) {
            out.push_str(&format!("|{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use encoding_rs::{UTF_8, WINDOWS_1252};

    #[test]
    fn libvirt_annotation_example() {
        let stored = "Some |7Ctext|7C to test the |22escaping|22: |7C|7C|22|22|7C|7C|22|7C |45|73|63|61|70|65|64|21";
        assert_eq!(
            decode(stored, UTF_8),
            "Some |text| to test the \"escaping\": ||\"\"||\"| Escaped!"
        );
    }

    #[test]
    fn escaped_bytes_use_the_file_encoding() {
        assert_eq!(decode("caf|C3|A9", UTF_8), "café");
        assert_eq!(decode("caf|E9", WINDOWS_1252), "café");
    }

    #[test]
    fn lone_pipes_and_short_escapes_are_text() {
        assert_eq!(decode("a|b", UTF_8), "a|b");
        assert_eq!(decode("end|4", UTF_8), "end|4");
        assert_eq!(decode("|", UTF_8), "|");
        assert_eq!(decode("|zz|41", UTF_8), "|zzA");
    }

    #[test]
    fn encode_then_decode() {
        for v in [
            "",
            "plain",
            "a|b",
            "q\"q",
            "line\nbreak\r\t",
            "|7C",
            "日本|語",
        ] {
            let e = encode(v);
            assert!(!e.contains('"') && !e.contains('\n'), "{e:?}");
            assert_eq!(decode(&e, UTF_8), v);
        }
        assert_eq!(encode("a\"b|c"), "a|22b|7Cc");
    }
}
