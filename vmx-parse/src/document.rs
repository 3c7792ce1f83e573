//! The lossless model of a dictionary file (`.vmx`, `.vmsd`, `.vmxf`-style `key = "value"`).
//!
//! A [`Document`] is the ordered list of the file's lines. Every line keeps its original bytes
//! and its end-of-line (`\n`, `\r\n`, or none for a last line without newline), so writing an
//! unchanged document gives back the input byte for byte, whatever its encoding. A line is
//! blank, a comment, a `key = value` pair (with the byte ranges of key and value in its text,
//! and whether the value was quoted), or an *other* line kept raw with a [`Warning`].
//!
//! A line whose bytes are not valid in the file's encoding (VMware Workstation writes a
//! multibyte character cut in half at the end of a long value and runs the VM all the same) is
//! *damaged*: it is decoded with U+FFFD for what does not decode, keeps its bytes, and is
//! reported as a [`Problem`]. A backup must store what is there, so damage is never an error.
//!
//! Edits ([`Document::set`], [`Document::unset`]) rewrite only the lines concerned: `set`
//! replaces the value part of the last line with that key and keeps its spacing and quoting,
//! or appends `key = "value"`; `unset` removes every line with that key.
//!
//! Keys are matched ASCII-case-insensitively, the last of several equal keys wins (as packer,
//! govmx and dissect read them; VMware's own rule is undocumented), and the map is flat:
//! `checkpoint.vmState` and `checkpoint.vmState.readOnly` are two unrelated keys.

use crate::error::{Error, Result};
use crate::escape;
use encoding_rs::{Encoding, UTF_8};
use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

/// Largest file read. Real VMX files are a few KiB; a 16 MiB one is not a configuration.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Longest line accepted (an annotation with escaped newlines stays on one line, so this is
/// generous).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most lines accepted. A real `.vmx` has a few hundred; the cap bounds the memory a hostile
/// file of 16 MiB of newlines could take (each line is a small struct).
pub const MAX_LINES: usize = 1 << 18;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// How a line ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eol {
    /// The last line of a file without a final newline.
    None,
    Lf,
    CrLf,
}

impl Eol {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Eol::None => b"",
            Eol::Lf => b"\n",
            Eol::CrLf => b"\r\n",
        }
    }
}

/// A `key = value` line: where key and stored value sit in the line's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub key: Range<usize>,
    /// The stored value, escapes included, without its quotes.
    pub value: Range<usize>,
    pub quoted: bool,
    /// A quoted value has its closing quote. Without it (`key = "value` to the end of the
    /// line), the value is read to the end of the line, trailing spaces dropped, and
    /// [`Document::set`] of the key writes the closing quote.
    pub closed: bool,
    /// The value with its `|XX` escapes decoded.
    pub decoded: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineKind {
    Blank,
    /// A line whose first non-blank character is `#` (also `#!/usr/bin/vmware`).
    Comment,
    Pair(Pair),
    /// A line that is none of the above, kept as it is; the string says why.
    Other(String),
}

/// One line of the file.
#[derive(Clone, Debug)]
pub struct Line {
    /// The original bytes, in the file's encoding, without the end-of-line.
    raw: Vec<u8>,
    /// The same, decoded.
    text: String,
    eol: Eol,
    kind: LineKind,
    /// Set when the bytes are not valid in the file's encoding: what is wrong. `text` then
    /// holds U+FFFD for what did not decode.
    damage: Option<String>,
}

impl Line {
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
    pub fn text(&self) -> &str {
        &self.text
    }
    pub fn eol(&self) -> Eol {
        self.eol
    }
    pub fn kind(&self) -> &LineKind {
        &self.kind
    }
    /// Whether the line's bytes are not valid in the file's encoding (its [`Line::text`] has
    /// U+FFFD for what did not decode; [`Line::raw`] keeps the bytes).
    pub fn is_damaged(&self) -> bool {
        self.damage.is_some()
    }
    /// The key as written, for a pair line.
    pub fn key(&self) -> Option<&str> {
        match &self.kind {
            LineKind::Pair(p) => Some(&self.text[p.key.clone()]),
            _ => None,
        }
    }
    /// The value as stored (escapes not decoded), for a pair line.
    pub fn stored_value(&self) -> Option<&str> {
        match &self.kind {
            LineKind::Pair(p) => Some(&self.text[p.value.clone()]),
            _ => None,
        }
    }
    /// The decoded value, for a pair line.
    pub fn value(&self) -> Option<&str> {
        match &self.kind {
            LineKind::Pair(p) => Some(&p.decoded),
            _ => None,
        }
    }
}

/// Something odd in a file that the reader tolerated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// A damaged line: bytes that are not valid in the file's encoding. The line keeps its bytes
/// (written back unchanged) and is read with U+FFFD for what does not decode.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// 1-based line number.
    pub line: usize,
    /// The key, for a `key = value` line (as read, U+FFFD included).
    pub key: Option<String>,
    pub message: String,
}

/// A key that appears on more than one line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Duplicate {
    /// The key as written on the line that wins (the last).
    pub key: String,
    /// 1-based line numbers, in file order; the last one wins.
    pub lines: Vec<usize>,
}

/// A parsed dictionary file.
#[derive(Clone, Debug)]
pub struct Document {
    lines: Vec<Line>,
    encoding: &'static Encoding,
    /// The file had a UTF-8 byte order mark (kept on write).
    bom: bool,
    /// Lower-cased key → index of the last line with it.
    index: HashMap<String, usize>,
    warnings: Vec<Warning>,
}

/// Read at most [`MAX_FILE_BYTES`] (+1, to detect more) from `r`; `path` names it in errors.
pub fn read_capped(mut r: impl Read, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    r.by_ref()
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::corrupt(
            path,
            format!("larger than {MAX_FILE_BYTES} bytes; not a VMware configuration file"),
        ));
    }
    Ok(bytes)
}

/// The line grammar, in nom combinators over bytes. Every delimiter (`\n`, `=`, `"`, `#`, space,
/// tab, and U+FEFF's bytes) is ASCII or a whole UTF-8 sequence, so the ranges it returns are
/// char boundaries of the decoded text, and the same grammar reads a raw line before decoding.
///
/// `classify` runs it on every line of a file, so it is written for speed (issue 19: no slower
/// than the hand-written reader it replaced; `examples/classify_speed.rs` times both): the
/// parsers fail with `()` and return ranges, so nothing is allocated; `=` and `"` are found with
/// `take_until` (memchr); the kind of a line and of a value is a dispatch on one byte, not an
/// `alt`. The input is `Src`, a byte slice whose `nom::Input` methods can be inlined: nom's own
/// impl for `&[u8]` has a `take_from` (and a `find_substring`) that is not `#[inline]`, so
/// without LTO every parser step was a call.
mod grammar {
    use super::Eol;
    use nom::branch::alt;
    use nom::bytes::complete::{tag, tag_no_case, take_until, take_while};
    use nom::combinator::rest;
    use nom::multi::many0_count;
    use nom::sequence::{pair, terminated};
    use nom::{Compare, CompareResult, FindSubstring, IResult, Input, Needed, Offset, Parser};
    use std::iter::{Copied, Enumerate};
    use std::ops::Range;
    use std::slice::Iter;

    /// The grammar's input: a byte slice, as nom reads `&[u8]`, with every method inlinable.
    #[derive(Clone, Copy, Debug)]
    pub struct Src<'a>(pub &'a [u8]);

    impl<'a> Input for Src<'a> {
        type Item = u8;
        type Iter = Copied<Iter<'a, u8>>;
        type IterIndices = Enumerate<Self::Iter>;

        #[inline]
        fn input_len(&self) -> usize {
            self.0.len()
        }
        #[inline]
        fn take(&self, index: usize) -> Self {
            Src(&self.0[..index])
        }
        #[inline]
        fn take_from(&self, index: usize) -> Self {
            Src(&self.0[index..])
        }
        #[inline]
        fn take_split(&self, index: usize) -> (Self, Self) {
            let (prefix, suffix) = self.0.split_at(index);
            (Src(suffix), Src(prefix))
        }
        #[inline]
        fn position<P: Fn(u8) -> bool>(&self, predicate: P) -> Option<usize> {
            self.0.iter().position(|&b| predicate(b))
        }
        #[inline]
        fn iter_elements(&self) -> Self::Iter {
            self.0.iter().copied()
        }
        #[inline]
        fn iter_indices(&self) -> Self::IterIndices {
            self.iter_elements().enumerate()
        }
        #[inline]
        fn slice_index(&self, count: usize) -> Result<usize, Needed> {
            self.0.slice_index(count)
        }
    }

    impl<'b> Compare<&'b [u8]> for Src<'_> {
        #[inline]
        fn compare(&self, t: &'b [u8]) -> CompareResult {
            self.0.compare(t)
        }
        #[inline]
        fn compare_no_case(&self, t: &'b [u8]) -> CompareResult {
            self.0.compare_no_case(t)
        }
    }

    impl<'b> FindSubstring<&'b [u8]> for Src<'_> {
        /// The grammar looks only for single bytes: memchr's search, without nom's
        /// (not inlinable) wrapper around it.
        #[inline]
        fn find_substring(&self, substr: &'b [u8]) -> Option<usize> {
            match substr {
                [b] => memchr::memchr(*b, self.0),
                _ => self.0.find_substring(substr),
            }
        }
    }

    impl Offset for Src<'_> {
        #[inline]
        fn offset(&self, second: &Self) -> usize {
            second.0.as_ptr() as usize - self.0.as_ptr() as usize
        }
    }

    /// The parsers report only "no match": the caller says what the line is instead.
    type PResult<'a, O> = IResult<Src<'a>, O, ()>;

    /// U+FEFF in UTF-8.
    const FEFF: &[u8] = "\u{feff}".as_bytes();

    #[inline]
    fn is_ws(b: u8) -> bool {
        b == b' ' || b == b'\t'
    }

    /// One line and how it ends. A last line without `\n` keeps a final `\r` as text.
    pub fn line(i: &[u8]) -> IResult<&[u8], (&[u8], Eol), ()> {
        let (i, (body, eol)) = alt((
            terminated(take_until(&b"\n"[..]), tag(&b"\n"[..])).map(|body: Src| {
                match body.0.strip_suffix(b"\r") {
                    Some(body) => (body, Eol::CrLf),
                    None => (body.0, Eol::Lf),
                }
            }),
            rest.map(|body: Src| (body.0, Eol::None)),
        ))
        .parse(Src(i))?;
        Ok((i.0, (body, eol)))
    }

    /// Spaces and tabs.
    #[inline]
    fn ws(i: Src<'_>) -> PResult<'_, Src<'_>> {
        take_while(is_ws).parse(i)
    }

    /// What may precede a key: spaces, tabs, and U+FEFF, which is a byte order mark when its
    /// line becomes the first one (after `unset` removes the lines above it), so a key must
    /// read the same with or without it. Blanks, then any number of U+FEFF each followed by
    /// blanks; only a line whose first byte can start one of them is parsed.
    #[inline]
    fn lead(i: Src<'_>) -> PResult<'_, ()> {
        match i.0.first() {
            Some(b' ' | b'\t' | 0xEF) => {
                let (i, _) = (ws, many0_count(pair(tag(FEFF), ws))).parse(i)?;
                Ok((i, ()))
            }
            _ => Ok((i, ())),
        }
    }

    /// The rest of the input without its trailing blanks; what is left is those blanks.
    #[inline]
    fn words(i: Src<'_>) -> PResult<'_, Src<'_>> {
        let end = i.0.iter().rposition(|&b| !is_ws(b)).map_or(0, |at| at + 1);
        Ok(i.take_split(end))
    }

    /// The shape of a line, as byte ranges of it.
    #[derive(Debug)]
    pub enum Shape {
        Blank,
        Comment,
        NoEquals,
        NoKey,
        Pair {
            key: Range<usize>,
            value: Range<usize>,
            quoted: bool,
            closed: bool,
            /// After the closing quote, blanks trimmed (empty when there is none).
            trailer: Range<usize>,
        },
    }

    #[inline]
    fn span(full: Src, part: Src) -> Range<usize> {
        let start = full.offset(&part);
        start..start + part.0.len()
    }

    /// `key = value`, `key = "value"`, `key = "value` (unterminated) or `key = "value" trailer`.
    /// `i` is `full` after its lead.
    #[inline]
    fn key_value<'a>(full: Src, i: Src<'a>) -> PResult<'a, Shape> {
        let (i, key) = terminated(take_until(&b"="[..]), tag(&b"="[..])).parse(i)?;
        let (_, key) = words(key)?;
        if key.0.is_empty() {
            return Ok((i, Shape::NoKey));
        }
        let key = span(full, key);
        let (i, _) = ws(i)?;
        // A quote opens a quoted value; anything else is an unquoted one.
        let Some((&b'"', inner)) = i.0.split_first() else {
            let (i, value) = words(i)?;
            let shape = Shape::Pair {
                key,
                value: span(full, value),
                quoted: false,
                closed: true,
                trailer: 0..0,
            };
            return Ok((i, shape));
        };
        let inner = Src(inner);
        let Ok((i, value)) =
            terminated(take_until::<_, _, ()>(&b"\""[..]), tag(&b"\""[..])).parse(inner)
        else {
            let (i, value) = words(inner)?;
            let shape = Shape::Pair {
                key,
                value: span(full, value),
                quoted: true,
                closed: false,
                trailer: 0..0,
            };
            return Ok((i, shape));
        };
        let (i, (_, trailer)) = (ws, words).parse(i)?;
        let shape = Shape::Pair {
            key,
            value: span(full, value),
            quoted: true,
            closed: true,
            trailer: span(full, trailer),
        };
        Ok((i, shape))
    }

    /// The shape of a line (decoded text's bytes, or a raw line).
    #[inline]
    pub fn shape(line: &[u8]) -> Shape {
        let full = Src(line);
        let Ok((i, ())) = lead(full) else {
            return Shape::NoEquals;
        };
        // The lead took every blank: what follows decides, by its first byte.
        match i.0.first() {
            None => Shape::Blank,
            Some(b'#') => Shape::Comment,
            Some(_) => match key_value(full, i) {
                Ok((_, shape)) => shape,
                Err(_) => Shape::NoEquals,
            },
        }
    }

    /// Whether a raw line can be the `.encoding` line: its key is `.encoding` (any case).
    pub fn may_be_encoding(line: &[u8]) -> bool {
        (lead, tag_no_case(&b".encoding"[..]), ws, tag(&b"="[..]))
            .parse(Src(line))
            .is_ok()
    }

    /// Whether a key has a character that `char::is_whitespace` calls white space, or a quote.
    /// ASCII keys (all real ones) are read by bytes; from the first non-ASCII byte on, by chars.
    #[inline]
    pub fn bad_key(key: &str) -> bool {
        let plain = |b: u8| b < 0x80 && !matches!(b, b' ' | b'\t'..=b'\r' | b'"');
        let Ok((tail, _)) = take_while::<_, _, ()>(plain).parse(Src(key.as_bytes())) else {
            return false;
        };
        match tail.0.first() {
            None => false,
            Some(&b) if b < 0x80 => true,
            // `tail` starts at a char boundary: every byte before it is ASCII.
            Some(_) => {
                key[key.len() - tail.0.len()..].contains(|c: char| c.is_whitespace() || c == '"')
            }
        }
    }
}

fn split_lines(bytes: &[u8]) -> Vec<(&[u8], Eol)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Ok((tail, line)) = grammar::line(rest) else {
            break;
        };
        out.push(line);
        rest = tail;
    }
    out
}

/// Classify a decoded line; the second value is a warning for a pair with trailing text.
pub fn classify(text: &str) -> (LineKind, Option<String>) {
    use grammar::Shape;
    match grammar::shape(text.as_bytes()) {
        Shape::Blank => (LineKind::Blank, None),
        Shape::Comment => (LineKind::Comment, None),
        Shape::NoEquals => (LineKind::Other("no '=' on the line".into()), None),
        Shape::NoKey => (LineKind::Other("no key before '='".into()), None),
        Shape::Pair {
            key,
            value,
            quoted,
            closed,
            trailer,
        } => {
            if grammar::bad_key(&text[key.clone()]) {
                return (
                    LineKind::Other("the key contains spaces or quotes".into()),
                    None,
                );
            }
            let warning = if !closed {
                // VMware runs VMs whose .vmx has such a line: read the value to the end of it.
                Some("unterminated quote; the value is read to the end of the line".into())
            } else if !trailer.is_empty() {
                Some(format!(
                    "text after the closing quote is ignored: {:?}",
                    crate::clip(&text[trailer])
                ))
            } else {
                None
            };
            (
                LineKind::Pair(Pair {
                    key,
                    value,
                    quoted,
                    closed,
                    decoded: String::new(),
                }),
                warning,
            )
        }
    }
}

/// The `.encoding` value on a raw line, if it is that line. Looked for before decoding; the
/// line itself is ASCII in every encoding we accept.
fn encoding_label(raw: &[u8]) -> Option<String> {
    if !grammar::may_be_encoding(raw) {
        return None;
    }
    match grammar::shape(raw) {
        grammar::Shape::Pair { value, .. } => {
            Some(String::from_utf8_lossy(&raw[value]).trim().to_string())
        }
        _ => None,
    }
}

impl Document {
    /// Read and parse a file (`path` is read, not `-`; the binary handles stdin).
    pub fn open(path: &Path) -> Result<Document> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let bytes = read_capped(f, path)?;
        Document::parse(path, &bytes)
    }

    /// Parse the bytes of a file; `path` only names it in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Document> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(Error::corrupt(
                path,
                format!("larger than {MAX_FILE_BYTES} bytes; not a VMware configuration file"),
            ));
        }
        if let Some(at) = bytes.iter().position(|&b| b == 0) {
            return Err(Error::corrupt(
                path,
                format!("binary data (a NUL byte at offset {at}); not a VMware configuration file"),
            ));
        }
        let (bom, body) = match bytes.strip_prefix(UTF8_BOM) {
            Some(rest) => (true, rest),
            None => (false, bytes),
        };
        let lines_count = body.iter().filter(|&&b| b == b'\n').count();
        if lines_count > MAX_LINES {
            return Err(Error::corrupt(
                path,
                format!("more than {MAX_LINES} lines; not a VMware configuration file"),
            ));
        }
        let raw_lines = split_lines(body);
        let mut label = None;
        for (n, (raw, _)) in raw_lines.iter().enumerate() {
            if raw.len() > MAX_LINE_BYTES {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "line {} is {} bytes long, over the {MAX_LINE_BYTES}-byte limit",
                        n + 1,
                        raw.len()
                    ),
                ));
            }
            if let Some(l) = encoding_label(raw) {
                label = Some(l);
            }
        }
        let encoding = match &label {
            None => UTF_8,
            Some(l) => {
                let e = Encoding::for_label(l.as_bytes()).ok_or_else(|| {
                    Error::unsupported(path, format!(".encoding {l:?} is not a known encoding"))
                })?;
                if !e.is_ascii_compatible() {
                    return Err(Error::unsupported(
                        path,
                        format!(".encoding {l:?} is not ASCII-compatible"),
                    ));
                }
                e
            }
        };
        if bom && encoding != UTF_8 {
            return Err(Error::corrupt(
                path,
                format!(
                    "starts with a UTF-8 byte order mark but .encoding says {}",
                    encoding.name()
                ),
            ));
        }
        let mut lines = Vec::with_capacity(raw_lines.len());
        let mut warnings = Vec::new();
        for (n, (raw, eol)) in raw_lines.into_iter().enumerate() {
            let (text, damage) = match encoding
                .decode_without_bom_handling_and_without_replacement(raw)
            {
                Some(text) => (text.into_owned(), None),
                None => {
                    let (text, _) = encoding.decode_without_bom_handling(raw);
                    let what = match &label {
                        None => "bytes not valid UTF-8 (the file has no .encoding line)".into(),
                        Some(_) => {
                            format!("bytes not valid {} (the file's .encoding)", encoding.name())
                        }
                    };
                    (
                        text.into_owned(),
                        Some(format!(
                            "{what}, read as U+FFFD; the line is kept byte for byte"
                        )),
                    )
                }
            };
            let (mut kind, warning) = classify(&text);
            if let Some(w) = warning {
                warnings.push(Warning {
                    line: n + 1,
                    message: w,
                });
            }
            match &mut kind {
                LineKind::Pair(p) => p.decoded = escape::decode(&text[p.value.clone()], encoding),
                LineKind::Other(why) => warnings.push(Warning {
                    line: n + 1,
                    message: format!("{why}: {:?}", crate::clip(&text)),
                }),
                _ => {}
            }
            lines.push(Line {
                raw: raw.to_vec(),
                text,
                eol,
                kind,
                damage,
            });
        }
        let mut doc = Document {
            lines,
            encoding,
            bom,
            index: HashMap::new(),
            warnings,
        };
        doc.reindex();
        Ok(doc)
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (i, l) in self.lines.iter().enumerate() {
            if let Some(k) = l.key() {
                self.index.insert(k.to_ascii_lowercase(), i);
            }
        }
    }

    /// The bytes of the file: the input itself when nothing was changed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.raw.len() + 2).sum());
        if self.bom {
            out.extend_from_slice(UTF8_BOM);
        }
        for l in &self.lines {
            out.extend_from_slice(&l.raw);
            out.extend_from_slice(l.eol.as_bytes());
        }
        out
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// The encoding the file was read with: its `.encoding`, or UTF-8.
    pub fn encoding(&self) -> &'static Encoding {
        self.encoding
    }

    /// Oddities tolerated while reading, in line order (duplicates are not warnings; see
    /// [`Document::duplicates`]).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Damaged lines (bytes not valid in the file's encoding), in line order, numbered as the
    /// document is now. They are read with U+FFFD and written back byte for byte; setting a
    /// damaged key replaces its line.
    pub fn problems(&self) -> Vec<Problem> {
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                l.damage.as_ref().map(|why| Problem {
                    line: i + 1,
                    key: l.key().map(str::to_string),
                    message: why.clone(),
                })
            })
            .collect()
    }

    /// The decoded value of `key` (any case); the last line with it wins.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.line_of(key).and_then(|i| self.lines[i].value())
    }

    /// Index in [`Document::lines`] of the line that gives `key` its value.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.index.get(&key.to_ascii_lowercase()).copied()
    }

    /// Every pair in file order: (1-based line number, key as written, decoded value).
    pub fn pairs(&self) -> impl Iterator<Item = (usize, &str, &str)> {
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match &l.kind {
                LineKind::Pair(p) => Some((i + 1, &l.text[p.key.clone()], p.decoded.as_str())),
                _ => None,
            })
    }

    /// Keys that appear more than once, in order of their first line.
    pub fn duplicates(&self) -> Vec<Duplicate> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out: Vec<Duplicate> = Vec::new();
        for (line, key, _) in self.pairs() {
            let lower = key.to_ascii_lowercase();
            match seen.get(&lower) {
                Some(&slot) => {
                    out[slot].key = key.to_string();
                    out[slot].lines.push(line);
                }
                None => {
                    seen.insert(lower, out.len());
                    out.push(Duplicate {
                        key: key.to_string(),
                        lines: vec![line],
                    });
                }
            }
        }
        out.retain(|d| d.lines.len() > 1);
        out
    }

    fn encode_text(&self, text: &str) -> Result<Vec<u8>> {
        if self.encoding == UTF_8 {
            return Ok(text.as_bytes().to_vec());
        }
        let (bytes, _, had_errors) = self.encoding.encode(text);
        if had_errors {
            return Err(Error::bad_request(format!(
                "{text:?} cannot be written in the file's encoding ({})",
                self.encoding.name()
            )));
        }
        Ok(bytes.into_owned())
    }

    /// The end-of-line new lines get: the file's first one, or `\n`.
    fn default_eol(&self) -> Eol {
        self.lines
            .iter()
            .map(|l| l.eol)
            .find(|e| *e != Eol::None)
            .unwrap_or(Eol::Lf)
    }

    /// Set `key` to `value`. The last line with the key (any case) gets the new value in
    /// place, keeping the key's spelling, the spacing and the quoting (an unquoted value with
    /// leading or trailing spaces gets quotes, which it needs to read back; a missing closing
    /// quote is written); without such a line, `key = "value"` is appended. A value equal to
    /// the current one changes nothing, unless the line is damaged or lacks its closing quote:
    /// setting a key repairs its line. Returns whether the document changed.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        check_key(key)?;
        if key.eq_ignore_ascii_case(".encoding") {
            return Err(Error::bad_request(
                "changing .encoding is not supported (it would re-encode the whole file)",
            ));
        }
        let stored = escape::encode(value);
        if let Some(i) = self.line_of(key) {
            let line = &self.lines[i];
            let LineKind::Pair(p) = &line.kind else {
                unreachable!("the index holds pair lines only")
            };
            if p.decoded == value && p.closed && !line.is_damaged() {
                return Ok(false);
            }
            // An unquoted value is read up to the end of the line, trimmed: only outer
            // spaces would be lost.
            let needs_quotes =
                stored.starts_with(char::is_whitespace) || stored.ends_with(char::is_whitespace);
            let new_value = if p.quoted || !needs_quotes {
                stored
            } else {
                format!("\"{stored}\"")
            };
            let mut suffix = &line.text[p.value.end..];
            // Ignored text after the closing quote that did not decode is dropped, not
            // written as U+FFFD.
            if line.is_damaged() && suffix.contains('\u{fffd}') {
                suffix = if p.closed { "\"" } else { "" };
            }
            let text = format!(
                "{}{}{}{}",
                &line.text[..p.value.start],
                new_value,
                if p.closed { "" } else { "\"" },
                suffix
            );
            let raw = self.encode_text(&text)?;
            let (mut kind, _) = classify(&text);
            if let LineKind::Pair(np) = &mut kind {
                np.decoded = value.to_string();
            }
            debug_assert!(matches!(kind, LineKind::Pair(_)), "{text:?}");
            let line = &mut self.lines[i];
            line.text = text;
            line.raw = raw;
            line.kind = kind;
            line.damage = None;
        } else {
            let text = format!("{key} = \"{stored}\"");
            let raw = self.encode_text(&text)?;
            let (mut kind, _) = classify(&text);
            if let LineKind::Pair(np) = &mut kind {
                np.decoded = value.to_string();
            }
            let eol = self.default_eol();
            // Keep the file's "no final newline" style: the new line becomes the one without.
            let new_eol = match self.lines.last_mut() {
                Some(last) if last.eol == Eol::None => {
                    last.eol = eol;
                    Eol::None
                }
                _ => eol,
            };
            self.lines.push(Line {
                raw,
                text,
                eol: new_eol,
                kind,
                damage: None,
            });
            self.index
                .insert(key.to_ascii_lowercase(), self.lines.len() - 1);
        }
        Ok(true)
    }

    /// Remove every line with `key` (any case). Returns how many lines were removed.
    pub fn unset(&mut self, key: &str) -> usize {
        let lower = key.to_ascii_lowercase();
        let before = self.lines.len();
        let last_had_no_eol = self.lines.last().is_some_and(|l| l.eol == Eol::None);
        self.lines
            .retain(|l| l.key().is_none_or(|k| !k.eq_ignore_ascii_case(&lower)));
        let removed = before - self.lines.len();
        if removed > 0 {
            if last_had_no_eol {
                if let Some(last) = self.lines.last_mut() {
                    last.eol = Eol::None;
                }
            }
            self.reindex();
        }
        removed
    }
}

/// Keys we write must read back as the same key.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.starts_with(['#', '\u{feff}'])
        || key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '"')
    {
        return Err(Error::bad_request(format!(
            "{key:?} is not a valid key (no spaces, '=', '\"' or leading '#')"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use encoding_rs::WINDOWS_1252;
    use proptest::prelude::*;

    fn p(s: &[u8]) -> Document {
        Document::parse(Path::new("t.vmx"), s).expect("parses")
    }

    #[test]
    fn round_trip_keeps_odd_bytes() {
        for input in [
            &b""[..],
            b"\n",
            b"a = \"b\"",
            b"a = \"b\"\r\nc=d\r\n",
            b"  key\t=\t\"v\"   \n#c\n\n\t\n",
            b"\xEF\xBB\xBF.encoding = \"UTF-8\"\nx = \"y\"\n",
            b"weird line\nk = \"unterminated\nk2 = \"v\" trailing\n",
            b"a=\"b\"\r\n\r\nno-newline-at-end = 1",
        ] {
            assert_eq!(
                p(input).to_bytes(),
                input,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn lines_are_classified() {
        let d = p(b"#!/usr/bin/vmware\n\nA = \"1\"\nb=2 \nnoequals\nc = \"x\n=v\n");
        let kinds: Vec<_> = d.lines().iter().map(|l| l.kind().clone()).collect();
        assert_eq!(kinds[0], LineKind::Comment);
        assert_eq!(kinds[1], LineKind::Blank);
        assert!(matches!(&kinds[2], LineKind::Pair(p) if p.quoted));
        assert!(matches!(&kinds[3], LineKind::Pair(p) if !p.quoted));
        assert_eq!(d.get("b"), Some("2"));
        assert!(matches!(kinds[4], LineKind::Other(_)));
        assert!(matches!(&kinds[5], LineKind::Pair(p) if p.quoted && !p.closed));
        assert_eq!(
            d.get("c"),
            Some("x"),
            "an unterminated value is read to the end"
        );
        assert!(matches!(kinds[6], LineKind::Other(_)));
        let lines: Vec<_> = d.warnings().iter().map(|w| w.line).collect();
        assert_eq!(lines, [5, 6, 7]);
    }

    #[test]
    fn keys_are_case_insensitive_and_last_wins() {
        let d = p(b"memSize = \"1024\"\nMEMSIZE = \"2048\"\nx = \"1\"\nmemsize = \"4096\"\n");
        assert_eq!(d.get("memsize"), Some("4096"));
        assert_eq!(d.get("MemSize"), Some("4096"));
        let dups = d.duplicates();
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].key, "memsize");
        assert_eq!(dups[0].lines, [1, 2, 4]);
    }

    #[test]
    fn a_key_can_be_a_value_and_a_prefix() {
        let d = p(b"checkpoint.vmState = \"\"\ncheckpoint.vmState.readOnly = \"FALSE\"\n");
        assert_eq!(d.get("checkpoint.vmState"), Some(""));
        assert_eq!(d.get("checkpoint.vmState.readOnly"), Some("FALSE"));
    }

    #[test]
    fn set_changes_only_the_value() {
        let input = b"# c\r\nA  =\t\"1\"  \r\nb = 2\r\na = \"3\" # note\r\nz = \"\"";
        let mut d = p(input);
        assert!(d.set("A", "new \"v\"").unwrap());
        assert!(d.set("b", " padded").unwrap());
        assert!(!d.set("z", "").unwrap());
        assert_eq!(
            String::from_utf8(d.to_bytes()).unwrap(),
            "# c\r\nA  =\t\"1\"  \r\nb = \" padded\"\r\na = \"new |22v|22\" # note\r\nz = \"\""
        );
        assert_eq!(d.get("a"), Some("new \"v\""));
        assert!(d.set("new.key", "x").unwrap());
        assert!(d.to_bytes().ends_with(b"z = \"\"\r\nnew.key = \"x\""));
        assert_eq!(d.get("NEW.KEY"), Some("x"));
    }

    #[test]
    fn unset_removes_every_line_of_the_key() {
        let mut d = p(b"a = \"1\"\nb = \"2\"\nA = \"3\"\nc = \"4\"");
        assert_eq!(d.unset("a"), 2);
        assert_eq!(d.to_bytes(), b"b = \"2\"\nc = \"4\"");
        assert_eq!(d.unset("missing"), 0);
        assert_eq!(d.unset("c"), 1);
        assert_eq!(d.to_bytes(), b"b = \"2\"");
        assert_eq!(d.get("a"), None);
    }

    #[test]
    fn windows_1252_is_decoded_and_written_back() {
        let input = b".encoding = \"windows-1252\"\ndisplayName = \"Caf\xE9 \xA9\"\nx = \"1\"\n";
        let mut d = p(input);
        assert_eq!(d.encoding(), WINDOWS_1252);
        assert_eq!(d.get("displayName"), Some("Café ©"));
        assert_eq!(d.to_bytes(), input);
        d.set("x", "Ü").unwrap();
        assert_eq!(
            d.to_bytes(),
            b".encoding = \"windows-1252\"\ndisplayName = \"Caf\xE9 \xA9\"\nx = \"\xDC\"\n"
        );
        let err = d.set("x", "日本").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::BadRequest);
    }

    #[test]
    fn shift_jis_trail_bytes_are_not_escapes() {
        // "ポ" is 0x83 0x7C in Shift_JIS; the 0x7C must not start a |XX escape.
        let input = b".encoding = \"Shift_JIS\"\ndisplayName = \"\x83\x7C41\"\n";
        let d = p(input);
        assert_eq!(d.get("displayName"), Some("ポ41"));
        assert_eq!(d.to_bytes(), input);
    }

    #[test]
    fn bad_input_gives_typed_errors() {
        let e = |b: &[u8]| Document::parse(Path::new("x"), b).unwrap_err().kind();
        use crate::ErrorKind::*;
        assert_eq!(e(b"\x7FELF\x02\x01\x01\x00\x00"), Corrupt);
        assert_eq!(e(b".encoding = \"klingon\"\n"), Unsupported);
        assert_eq!(e(b".encoding = \"UTF-16LE\"\n"), Unsupported);
        assert_eq!(e(&vec![b'\n'; MAX_LINES + 1]), Corrupt);
        assert!(Document::parse(Path::new("x"), &vec![b'\n'; MAX_LINES]).is_ok());
        let mut long = b"a = \"".to_vec();
        long.resize(MAX_LINE_BYTES + 10, b'x');
        assert_eq!(e(&long), Corrupt);
    }

    /// Issue 19: VMware Workstation wrote a multibyte character cut in half and no closing
    /// quote, in a CRLF file with `.encoding = "UTF-8"`, and runs the VM.
    const WORKSTATION_CUT: &[u8] = b".encoding = \"UTF-8\"\r\ndisplayName = \"ws\"\r\n\
        sharedFolder0.hostPath = \"C:\\Users\\me\\\xE6\x97\r\nmemsize = \"1024\"\r\n";

    #[test]
    fn issue_19_damaged_line_is_read_repaired_and_kept() {
        let d = p(WORKSTATION_CUT);
        assert_eq!(d.to_bytes(), WORKSTATION_CUT, "every byte is kept");
        assert_eq!(
            d.get("sharedFolder0.hostPath"),
            Some("C:\\Users\\me\\\u{fffd}")
        );
        assert_eq!(d.get("memsize"), Some("1024"));
        assert!(d.lines()[2].is_damaged());
        assert!(!d.lines()[3].is_damaged());
        let probs = d.problems();
        assert_eq!(probs.len(), 1);
        assert_eq!(probs[0].line, 3);
        assert_eq!(probs[0].key.as_deref(), Some("sharedFolder0.hostPath"));
        assert!(probs[0].message.contains("not valid UTF-8"), "{probs:?}");
        let w: Vec<_> = d
            .warnings()
            .iter()
            .map(|w| (w.line, &w.message[..18]))
            .collect();
        assert_eq!(w, [(3, "unterminated quote")]);
    }

    #[test]
    fn issue_19_set_of_another_key_keeps_the_damaged_line() {
        let mut d = p(WORKSTATION_CUT);
        assert!(d.set("memsize", "2048").unwrap());
        assert!(d.set("new.key", "v").unwrap());
        let out = d.to_bytes();
        assert_eq!(
            out,
            [
                &WORKSTATION_CUT[..WORKSTATION_CUT.len() - 7],
                b"2048\"\r\nnew.key = \"v\"\r\n"
            ]
            .concat()
        );
        assert_eq!(d.unset("displayName"), 1);
        assert_eq!(
            d.problems()[0].line,
            2,
            "problems are numbered as the document is now"
        );
    }

    #[test]
    fn issue_19_set_of_the_damaged_key_replaces_its_line() {
        let mut d = p(WORKSTATION_CUT);
        assert!(d.set("sharedfolder0.hostpath", "D:\\share").unwrap());
        let out = d.to_bytes();
        assert_eq!(
            out,
            b".encoding = \"UTF-8\"\r\ndisplayName = \"ws\"\r\n\
              sharedFolder0.hostPath = \"D:\\share\"\r\nmemsize = \"1024\"\r\n"
        );
        assert!(d.problems().is_empty());
        let again = p(&out);
        assert!(again.problems().is_empty() && again.warnings().is_empty());
        // Setting the repaired text itself repairs the line too.
        let mut d = p(WORKSTATION_CUT);
        let repaired = d.get("sharedFolder0.hostPath").unwrap().to_string();
        assert!(d.set("sharedFolder0.hostPath", &repaired).unwrap());
        assert!(p(&d.to_bytes()).problems().is_empty());
    }

    #[test]
    fn damaged_lines_anywhere_are_kept() {
        for input in [
            &b"a = \"\xE9\"\n"[..],
            b".encoding = \"Shift_JIS\"\nx = \"\x81\"\n",
            b"# comment \xFF\nk = \"v\"",
            b"k\xC3 = \"v\" \xFE trailer\r\n",
            b"\xF0\x9F\x98 = 1",
        ] {
            let d = p(input);
            assert_eq!(d.to_bytes(), input);
            assert_eq!(
                d.problems().len(),
                1,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let d = p(b"a = \"\xE9\"\n");
        assert!(d.problems()[0].message.contains("no .encoding line"));
        let d = p(b".encoding = \"Shift_JIS\"\nx = \"\x81\"\n");
        assert!(d.problems()[0].message.contains("Shift_JIS"));
        // Ignored text after the quote that did not decode is dropped by a set, not written
        // as U+FFFD; a damaged key is written as read.
        let mut d = p(b"k\xC3 = \"v\" \xFE trailer\r\n");
        d.set("k\u{fffd}", "w").unwrap();
        assert_eq!(d.to_bytes(), "k\u{fffd} = \"w\"\r\n".as_bytes());
    }

    #[test]
    fn unterminated_quote_is_closed_by_set() {
        let mut d = p(b"a = \"one two  \nb = 1\n");
        assert_eq!(d.get("a"), Some("one two"));
        assert!(
            d.set("a", "one two").unwrap(),
            "setting the same value closes the quote"
        );
        assert_eq!(d.to_bytes(), b"a = \"one two\"  \nb = 1\n");
        let mut d = p(b"a = \"x");
        d.set("a", "y\"z").unwrap();
        assert_eq!(d.to_bytes(), b"a = \"y|22z\"");
    }

    /// Fuzz crash-04ddd991: unsetting the first line made a U+FEFF that started the second
    /// line a byte order mark, and the key after it changed on reading back.
    #[test]
    fn fuzz_crash_04ddd991_bom_in_the_middle() {
        let input = b"id&\x06\x1d2\x1d=\n\xef\xbb\xbfA}=`\n\x10\xd8\xb8m=&&";
        let mut d = p(input);
        assert_eq!(d.to_bytes(), input);
        assert_eq!(d.get("A}"), Some("`"));
        assert_eq!(d.unset("id&\x06\x1d2\x1d"), 1);
        d.set("A}", "v").unwrap();
        let again = p(&d.to_bytes());
        assert_eq!(again.get("A}"), Some("v"));
        assert!(d.set("\u{feff}k", "v").is_err());
    }

    #[test]
    fn set_refuses_bad_keys() {
        let mut d = p(b"");
        for k in ["", "a b", "a=b", "#x", "q\"", ".ENCODING"] {
            assert!(d.set(k, "v").is_err(), "{k:?}");
        }
        d.set("k", "v").unwrap();
        assert_eq!(d.to_bytes(), b"k = \"v\"\n");
    }

    fn line_strategy() -> impl Strategy<Value = String> {
        let ws = "[ \t]{0,2}";
        let key = "[A-Za-z.][A-Za-z0-9_.:]{0,12}";
        let value = "[ -!#-~é日|]{0,12}";
        prop_oneof![
            Just(String::new()),
            "#[ -~]{0,20}".prop_map(|s| s),
            (ws, key, ws, ws, value, ws)
                .prop_map(|(a, k, b, c, v, d)| format!("{a}{k}{b}={c}\"{v}\"{d}")),
            (key, value).prop_map(|(k, v)| format!("{k} = {}", v.trim())),
            "[ -~]{0,20}",
        ]
    }

    fn file_strategy() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec((line_strategy(), any::<bool>()), 0..20),
            any::<bool>(),
        )
            .prop_map(|(lines, final_newline)| {
                let mut s = String::new();
                let n = lines.len();
                for (i, (l, crlf)) in lines.into_iter().enumerate() {
                    s.push_str(&l);
                    if i + 1 < n || final_newline {
                        s.push_str(if crlf { "\r\n" } else { "\n" });
                    }
                }
                s.into_bytes()
            })
    }

    /// Pieces that make damaged lines when put together.
    const DAMAGE_PIECES: [&[u8]; 9] = [
        b"k",
        b" = ",
        b"\"",
        b"\xE6\x97",
        b"\xFF",
        b"\r\n",
        b"\n",
        b"|22",
        b"v",
    ];

    proptest! {
        #[test]
        fn generated_files_round_trip(bytes in file_strategy()) {
            let d = p(&bytes);
            prop_assert_eq!(d.to_bytes(), bytes);
        }

        #[test]
        fn set_touches_one_line(bytes in file_strategy(), key in "[a-z]{1,3}", value in "[ -~é\n]{0,10}") {
            let mut d = p(&bytes);
            let before: Vec<Vec<u8>> = d.lines().iter().map(|l| l.raw().to_vec()).collect();
            let target = d.line_of(&key);
            d.set(&key, &value).unwrap();
            prop_assert_eq!(d.get(&key), Some(value.as_str()));
            let again = p(&d.to_bytes());
            prop_assert_eq!(again.get(&key), Some(value.as_str()));
            let after: Vec<Vec<u8>> = d.lines().iter().map(|l| l.raw().to_vec()).collect();
            match target {
                Some(i) => {
                    prop_assert_eq!(after.len(), before.len());
                    for (j, (a, b)) in before.iter().zip(&after).enumerate() {
                        if j != i { prop_assert_eq!(a, b); }
                    }
                }
                None => {
                    prop_assert_eq!(after.len(), before.len() + 1);
                    prop_assert_eq!(&after[..before.len()], &before[..]);
                }
            }
        }

        #[test]
        fn damaged_values_survive_edits_of_other_keys(
            bytes in file_strategy(),
            junk in proptest::collection::vec(0x80u8..=0xFF, 1..6),
            crlf in any::<bool>(),
        ) {
            let mut input = bytes.clone();
            if !input.is_empty() && !input.ends_with(b"\n") {
                input.push(b'\n');
            }
            let at = input.len();
            input.extend_from_slice(b"damaged.key = \"x");
            input.extend_from_slice(&junk);
            input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            let end = input.len();
            input.extend_from_slice(b"last = \"1\"\n");
            let mut d = p(&input);
            prop_assert_eq!(d.to_bytes(), input.clone());
            prop_assert!(d.get("damaged.key").is_some_and(|v| v.starts_with('x')));
            d.set("last", "2").unwrap();
            d.set("zz.new", "3").unwrap();
            let out = d.to_bytes();
            prop_assert_eq!(&out[at..end], &input[at..end]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(d) = Document::parse(Path::new("x"), &bytes) {
                prop_assert_eq!(d.to_bytes(), bytes);
            }
        }

        /// What the fuzz target checks, on lines built to be damaged (high bytes anywhere,
        /// quotes left open): every key set reads back, damaged lines of other keys keep
        /// their bytes.
        #[test]
        fn edits_of_damaged_files_read_back(
            parts in proptest::collection::vec(
                proptest::sample::select(DAMAGE_PIECES.to_vec()),
                0..40),
            shift_jis in any::<bool>(),
        ) {
            let mut bytes = if shift_jis { b".encoding = \"Shift_JIS\"\n".to_vec() } else { Vec::new() };
            bytes.extend(parts.concat());
            let mut d = p(&bytes);
            prop_assert_eq!(d.to_bytes(), bytes.clone());
            let keys: Vec<String> = d.pairs().map(|(_, k, _)| k.to_string()).collect();
            for k in &keys {
                if k.eq_ignore_ascii_case(".encoding") {
                    continue;
                }
                let target = d.line_of(k);
                let damaged: Vec<(usize, Vec<u8>)> = d.lines().iter().enumerate()
                    .filter(|(i, l)| l.is_damaged() && Some(*i) != target)
                    .map(|(i, l)| (i, l.raw().to_vec()))
                    .collect();
                if d.set(k, "new |\"v\"").is_ok() {
                    for (i, raw) in &damaged {
                        prop_assert_eq!(d.lines()[*i].raw(), &raw[..]);
                    }
                    let again = p(&d.to_bytes());
                    prop_assert_eq!(again.get(k), Some("new |\"v\""));
                    prop_assert!(!d.lines()[d.line_of(k).unwrap()].is_damaged());
                }
            }
        }
    }
}
