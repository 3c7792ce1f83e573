//! The VML delta stream, version 1: encoder ([`Encoder`]) and decoder ([`Decoder`]).
//!
//! This module doc and `docs/delta-format.md` are the specification; they must agree (a test
//! checks that the constants below appear in the doc).
//!
//! A delta turns a *source* image (the base, or nothing for a full delta) into a *target*
//! image. It is written and read strictly sequentially, so it works on pipes both ways:
//!
//! ```text
//! header (120 bytes)
//! record*            in target order, covering [0, target_size) exactly once
//! end record         required: totals and the target digest again
//! ```
//!
//! All integers are little-endian. Every checksum is XXH3-64 (seed 0).
//!
//! ## Header (`HEADER_LEN` = 120 bytes)
//!
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 8 | `magic` | `MAGIC` = `"VMLDELTA"` |
//! | 8 | 4 | `version` | `VERSION` = 1; other values are rejected |
//! | 12 | 4 | `flags` | bit 0 `FLAG_FULL`: no source (full delta); bit 1 `FLAG_INDEX`: a trailing index follows the end record. Other bits must be 0 |
//! | 16 | 4 | `block_size` | power of two, `MIN_BLOCK_SIZE` (4096) ..= `MAX_BLOCK_SIZE` (1 MiB); the granularity the differ matched at |
//! | 20 | 4 | `reserved` | 0 |
//! | 24 | 8 | `source_size` | bytes; 0 when `FLAG_FULL`; at most `MAX_IMAGE_BYTES` (2^48) |
//! | 32 | 8 | `target_size` | bytes; at most `MAX_IMAGE_BYTES` |
//! | 40 | 32 | `source_digest` | image digest of the source (all zero when `FLAG_FULL`) |
//! | 72 | 32 | `target_digest` | image digest of the target |
//! | 104 | 8 | `reserved` | 0 |
//! | 112 | 8 | `checksum` | XXH3-64 of bytes 0..112 |
//!
//! ## Records
//!
//! Each record is a 32-byte header, `payload_len` bytes of payload, and an 8-byte XXH3-64
//! checksum of the header and payload together.
//!
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 1 | `kind` | see below |
//! | 1 | 1 | `flags` | literal only: bit 0 `LITERAL_STORED` (payload is the bytes, not zstd). Otherwise 0 |
//! | 2 | 2 | `reserved` | 0 |
//! | 4 | 4 | `payload_len` | at most `MAX_LITERAL_BYTES` (4 MiB); 0 for all kinds but literal and end |
//! | 8 | 8 | `target_offset` | must equal the end of the previous record (0 for the first): no gap, no overlap |
//! | 16 | 8 | `length` | target bytes produced; at least 1 (0 for end); `target_offset + length <= target_size` |
//! | 24 | 8 | `arg` | copy-source: source offset; copy-target: earlier target offset; otherwise 0 |
//!
//! Kinds:
//! - `1` literal: the payload is one zstd frame inflating to exactly `length` bytes
//!   (`length <= MAX_LITERAL_BYTES`), or the bytes themselves when `LITERAL_STORED` (then
//!   `payload_len == length`). The encoder stores when zstd does not shrink the data.
//! - `2` zero: `length` bytes that read as zeros and are allocated (zero grains).
//! - `3` unallocated: `length` bytes that read as zeros and are not allocated; writers keep
//!   them sparse.
//! - `4` copy-source: `length` bytes from the source at `arg`; `arg + length <= source_size`.
//!   Not allowed in a full delta.
//! - `5` copy-target: `length` bytes from the target at `arg`, already produced:
//!   `arg + length <= target_offset`.
//! - `255` end: `target_offset == target_size`, `length == 0`, `arg == 0`, and a payload of
//!   `END_PAYLOAD_LEN` (96) bytes: eight u64 totals (records before the end, then target
//!   bytes by kind: literal, zero, unallocated, copy-source, copy-target, then literal payload
//!   bytes, then the whole stream length up to the end record) followed by the 32-byte target
//!   digest, equal to the header's. The decoder recomputes every total and compares. Nothing
//!   may follow the end record, except the index when `FLAG_INDEX` is set.
//!
//! ## Trailing index (optional)
//!
//! With `FLAG_INDEX`, the end record is followed by one 16-byte entry per record before it, in
//! order (`target_offset` u64, then `stream_offset` u64: where the record's header starts in
//! the stream), then a 32-byte trailer: `count` u64 (the number of entries, equal to the end
//! record's record total), `index_offset` u64 (where the first entry starts: the end of the
//! end record), an XXH3-64 of the entries, `count` and `index_offset`, and `INDEX_MAGIC`
//! (`"VMLDIDX\0"`). Nothing follows the trailer. A reader with random access reads the last
//! 32 bytes, then the entries, and reaches any record without reading the others
//! ([`read_index`], [`read_record_at`]); a sequential decoder checks the index against the
//! records it saw.
//!
//! ## Image digest
//!
//! The identity of an image (source and target) is a BLAKE3 tree over its guest-visible bytes,
//! built so that holes cost nothing to hash and every part hashes in parallel:
//! - a *leaf* is 4 KiB (`LEAF_BYTES`; the last may be shorter); leaf digest = BLAKE3(bytes);
//! - a *chunk* is 1 MiB (`CHUNK_BYTES`, 256 leaves; the last may be shorter);
//!   chunk digest = BLAKE3(concatenated leaf digests);
//! - image digest = BLAKE3 in derive-key mode with context `DIGEST_CONTEXT`, over
//!   `u64 size` then the concatenated chunk digests.
//!
//! An all-zero chunk has a constant digest, so a 3 TiB empty disk hashes in a second. A guest
//! cannot make two images share a digest without a BLAKE3 collision.
//!
//! ## What the stream does not promise
//! A decoder that has not reached the end record has not seen a valid delta: it must not
//! publish anything it produced. The target digest is checked by the applier over what it wrote.

use byteorder::{ByteOrder, LittleEndian, WriteBytesExt};
use std::io::{self, Read, Write};
use xxhash_rust::xxh3::Xxh3;

/// Stream magic: the first 8 bytes.
pub const MAGIC: [u8; 8] = *b"VMLDELTA";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 120;
pub const RECORD_HEADER_LEN: usize = 32;
pub const CHECKSUM_LEN: usize = 8;
/// Header flag: the delta has no source.
pub const FLAG_FULL: u32 = 1;
/// Header flag: a trailing index follows the end record.
pub const FLAG_INDEX: u32 = 2;
/// The last 8 bytes of an indexed stream.
pub const INDEX_MAGIC: [u8; 8] = *b"VMLDIDX\0";
pub const INDEX_ENTRY_LEN: usize = 16;
pub const INDEX_TRAILER_LEN: usize = 32;
/// Literal flag: the payload holds the bytes uncompressed.
pub const LITERAL_STORED: u8 = 1;
pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// The largest image a delta describes (vmdk-parse's capacity limit).
pub const MAX_IMAGE_BYTES: u64 = 1 << 48;
/// The largest literal record, inflated and stored.
pub const MAX_LITERAL_BYTES: u32 = 4 << 20;
pub const END_PAYLOAD_LEN: u32 = 96;
pub const LEAF_BYTES: u64 = 4096;
pub const CHUNK_BYTES: u64 = 1 << 20;
pub const DIGEST_CONTEXT: &str = "VML image digest v1";

pub const KIND_LITERAL: u8 = 1;
pub const KIND_ZERO: u8 = 2;
pub const KIND_UNALLOCATED: u8 = 3;
pub const KIND_COPY_SOURCE: u8 = 4;
pub const KIND_COPY_TARGET: u8 = 5;
pub const KIND_END: u8 = 255;

/// A 32-byte BLAKE3 image digest.
pub type Digest = [u8; 32];

/// Errors reading or writing a delta stream. Offsets are byte offsets in the stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a VML delta (bad magic)")]
    BadMagic,
    #[error("delta format version {0} is not supported (this tool reads version {VERSION})")]
    Version(u32),
    #[error("corrupt delta at stream byte {offset}: {what}")]
    Corrupt { offset: u64, what: String },
    #[error("delta stream cut short at byte {offset} (no end record)")]
    Truncated { offset: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Error {
    fn corrupt(offset: u64, what: impl Into<String>) -> Error {
        Error::Corrupt {
            offset,
            what: what.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The stream header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub block_size: u32,
    pub source_size: u64,
    pub target_size: u64,
    pub source_digest: Digest,
    pub target_digest: Digest,
}

impl Header {
    pub fn is_full(&self) -> bool {
        self.flags & FLAG_FULL != 0
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        LittleEndian::write_u32(&mut b[8..12], VERSION);
        LittleEndian::write_u32(&mut b[12..16], self.flags);
        LittleEndian::write_u32(&mut b[16..20], self.block_size);
        LittleEndian::write_u64(&mut b[24..32], self.source_size);
        LittleEndian::write_u64(&mut b[32..40], self.target_size);
        b[40..72].copy_from_slice(&self.source_digest);
        b[72..104].copy_from_slice(&self.target_digest);
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..112]);
        LittleEndian::write_u64(&mut b[112..120], sum);
        b
    }

    /// Parse and validate a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[0..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = LittleEndian::read_u32(&b[8..]);
        if version != VERSION {
            return Err(Error::Version(version));
        }
        if xxhash_rust::xxh3::xxh3_64(&b[..112]) != LittleEndian::read_u64(&b[112..]) {
            return Err(Error::corrupt(112, "header checksum mismatch"));
        }
        let h = Header {
            flags: LittleEndian::read_u32(&b[12..]),
            block_size: LittleEndian::read_u32(&b[16..]),
            source_size: LittleEndian::read_u64(&b[24..]),
            target_size: LittleEndian::read_u64(&b[32..]),
            source_digest: b[40..72].try_into().expect("32 bytes"),
            target_digest: b[72..104].try_into().expect("32 bytes"),
        };
        h.validate()?;
        if LittleEndian::read_u32(&b[20..]) != 0 || LittleEndian::read_u64(&b[104..]) != 0 {
            return Err(Error::corrupt(20, "reserved header bytes are not zero"));
        }
        Ok(h)
    }

    /// The rules every header obeys, for the encoder and the decoder alike.
    pub fn validate(&self) -> Result<()> {
        if self.flags & !(FLAG_FULL | FLAG_INDEX) != 0 {
            return Err(Error::corrupt(
                12,
                format!("unknown flags {:#x}", self.flags),
            ));
        }
        if !self.block_size.is_power_of_two()
            || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size)
        {
            return Err(Error::corrupt(
                16,
                format!(
                    "block size {} is not a power of two in 4 KiB..=1 MiB",
                    self.block_size
                ),
            ));
        }
        if self.source_size > MAX_IMAGE_BYTES || self.target_size > MAX_IMAGE_BYTES {
            return Err(Error::corrupt(24, "image size above 2^48 bytes"));
        }
        if self.is_full() && (self.source_size != 0 || self.source_digest != [0; 32]) {
            return Err(Error::corrupt(24, "full delta with a source"));
        }
        Ok(())
    }
}

/// One record as decoded. Literal payloads stay as stored; [`Record::literal_bytes`] inflates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Literal {
        offset: u64,
        length: u64,
        stored: bool,
        payload: Vec<u8>,
    },
    Zero {
        offset: u64,
        length: u64,
    },
    Unallocated {
        offset: u64,
        length: u64,
    },
    CopySource {
        offset: u64,
        length: u64,
        source_offset: u64,
    },
    CopyTarget {
        offset: u64,
        length: u64,
        target_offset: u64,
    },
}

impl Record {
    pub fn offset(&self) -> u64 {
        match *self {
            Record::Literal { offset, .. }
            | Record::Zero { offset, .. }
            | Record::Unallocated { offset, .. }
            | Record::CopySource { offset, .. }
            | Record::CopyTarget { offset, .. } => offset,
        }
    }

    pub fn length(&self) -> u64 {
        match *self {
            Record::Literal { length, .. }
            | Record::Zero { length, .. }
            | Record::Unallocated { length, .. }
            | Record::CopySource { length, .. }
            | Record::CopyTarget { length, .. } => length,
        }
    }
}

/// Inflate a literal payload into `out` (exactly `length` bytes).
pub fn literal_bytes(stored: bool, payload: &[u8], length: u64, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    if stored {
        out.extend_from_slice(payload);
        return Ok(());
    }
    if length > MAX_LITERAL_BYTES as u64 {
        return Err(Error::corrupt(0, "literal too long"));
    }
    // Room for one byte more than promised, so an over-long frame is caught (by zstd, when it
    // does not fit, or by the count), never more; inflated straight into the spare capacity
    // (nothing zeroed first).
    out.reserve_exact(length as usize + 1);
    let n = inflate(payload, out)?;
    check_inflated(n, length)
}

/// Inflate a literal payload into `out`, which must be exactly its length: the same checks
/// as [`literal_bytes`], with no buffer of its own (vpatch inflates straight into the
/// output window).
pub fn literal_into(stored: bool, payload: &[u8], out: &mut [u8]) -> Result<()> {
    if stored {
        if payload.len() != out.len() {
            return Err(Error::corrupt(0, "stored literal of the wrong length"));
        }
        out.copy_from_slice(payload);
        return Ok(());
    }
    let n = inflate(payload, out)?;
    check_inflated(n, out.len() as u64)
}

fn inflate<C: zstd::zstd_safe::WriteBuf + ?Sized>(payload: &[u8], out: &mut C) -> Result<usize> {
    thread_local! {
        // One decompression context per thread, reused (making one per record cost more
        // than inflating a small record).
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DCTX.with(|d| -> std::io::Result<usize> {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut()
            .expect("set above")
            .decompress_to_buffer(payload, out)
    })
    .map_err(|e| Error::corrupt(0, format!("literal does not inflate: {e}")))
}

fn check_inflated(n: usize, length: u64) -> Result<()> {
    if n as u64 != length {
        return Err(Error::corrupt(
            0,
            format!("literal inflates to {n} bytes, {length} expected"),
        ));
    }
    Ok(())
}

/// Totals carried by the end record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub records: u64,
    pub literal_bytes: u64,
    pub zero_bytes: u64,
    pub unallocated_bytes: u64,
    pub copy_source_bytes: u64,
    pub copy_target_bytes: u64,
    pub payload_bytes: u64,
    /// Stream bytes before the end record (header included).
    pub stream_bytes: u64,
}

impl Totals {
    fn encode(&self, digest: &Digest) -> [u8; END_PAYLOAD_LEN as usize] {
        let mut b = [0u8; END_PAYLOAD_LEN as usize];
        let v = [
            self.records,
            self.literal_bytes,
            self.zero_bytes,
            self.unallocated_bytes,
            self.copy_source_bytes,
            self.copy_target_bytes,
            self.payload_bytes,
            self.stream_bytes,
        ];
        LittleEndian::write_u64_into(&v, &mut b[..64]);
        b[64..96].copy_from_slice(digest);
        b
    }

    fn add(&mut self, kind: u8, length: u64, payload_len: u64) {
        self.records += 1;
        self.payload_bytes += payload_len;
        match kind {
            KIND_LITERAL => self.literal_bytes += length,
            KIND_ZERO => self.zero_bytes += length,
            KIND_UNALLOCATED => self.unallocated_bytes += length,
            KIND_COPY_SOURCE => self.copy_source_bytes += length,
            _ => self.copy_target_bytes += length,
        }
    }
}

fn record_header(
    kind: u8,
    flags: u8,
    payload_len: u32,
    offset: u64,
    length: u64,
    arg: u64,
) -> [u8; 32] {
    let mut b = [0u8; RECORD_HEADER_LEN];
    b[0] = kind;
    b[1] = flags;
    LittleEndian::write_u32(&mut b[4..8], payload_len);
    LittleEndian::write_u64(&mut b[8..16], offset);
    LittleEndian::write_u64(&mut b[16..24], length);
    LittleEndian::write_u64(&mut b[24..32], arg);
    b
}

/// A record's 32-byte header, decoded. The sequential [`Decoder`] and the random-access
/// readers ([`read_record_table`], [`read_record_at`]) check records with the same two steps:
/// [`RecordHead::parse`] (what is needed to read the record safely) and [`RecordHead::check`]
/// (its place and fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHead {
    pub kind: u8,
    pub flags: u8,
    /// Bytes 2..4, which must be zero.
    pub reserved: u16,
    pub payload_len: u32,
    /// `target_offset`: where the record lands in the target.
    pub offset: u64,
    pub length: u64,
    pub arg: u64,
    /// Where the record's header starts in the stream.
    pub stream_offset: u64,
}

/// The size of the end record: header, totals and digest, checksum.
pub const END_RECORD_LEN: u64 =
    (RECORD_HEADER_LEN + END_PAYLOAD_LEN as usize + CHECKSUM_LEN) as u64;

impl RecordHead {
    /// Decode a record header read at stream byte `at`, checking only the kind and the payload
    /// cap (so that reading the payload is safe).
    pub fn parse(h: &[u8; RECORD_HEADER_LEN], at: u64) -> Result<RecordHead> {
        let head = RecordHead {
            kind: h[0],
            flags: h[1],
            reserved: LittleEndian::read_u16(&h[2..]),
            payload_len: LittleEndian::read_u32(&h[4..]),
            offset: LittleEndian::read_u64(&h[8..]),
            length: LittleEndian::read_u64(&h[16..]),
            arg: LittleEndian::read_u64(&h[24..]),
            stream_offset: at,
        };
        let bad = |what: String| Err(Error::corrupt(at, what));
        let max_payload = match head.kind {
            KIND_LITERAL => MAX_LITERAL_BYTES,
            KIND_END => END_PAYLOAD_LEN,
            KIND_ZERO | KIND_UNALLOCATED | KIND_COPY_SOURCE | KIND_COPY_TARGET => 0,
            k => return bad(format!("unknown record kind {k}")),
        };
        if head.kind == KIND_END && head.payload_len != END_PAYLOAD_LEN {
            return bad(format!("end record payload of {} bytes", head.payload_len));
        }
        if head.payload_len > max_payload {
            return bad(format!(
                "payload of {} bytes exceeds the cap {max_payload}",
                head.payload_len
            ));
        }
        Ok(head)
    }

    /// The header bytes this record was decoded from.
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = record_header(
            self.kind,
            self.flags,
            self.payload_len,
            self.offset,
            self.length,
            self.arg,
        );
        LittleEndian::write_u16(&mut b[2..4], self.reserved);
        b
    }

    /// Stream bytes the whole record takes: header, payload, checksum.
    pub fn stream_len(&self) -> u64 {
        (RECORD_HEADER_LEN + CHECKSUM_LEN) as u64 + self.payload_len as u64
    }

    /// Every rule of a record's own fields, given `pos`, the target offset where it must start
    /// (the end of the previous record), and the stream header. The end record's totals are
    /// the caller's to compare.
    pub fn check(&self, pos: u64, header: &Header) -> Result<()> {
        let RecordHead {
            kind,
            flags,
            payload_len,
            offset,
            length,
            arg,
            ..
        } = *self;
        let bad = |what: String| Err(Error::corrupt(self.stream_offset, what));
        if self.reserved != 0 {
            return bad("reserved record bytes are not zero".into());
        }
        if flags != 0 && !(kind == KIND_LITERAL && flags == LITERAL_STORED) {
            return bad(format!("unknown record flags {flags:#x}"));
        }
        if offset != pos {
            return bad(format!(
                "record at target byte {offset}, expected {pos} (records overlap or leave a gap)"
            ));
        }
        let target_size = header.target_size;
        if kind == KIND_END {
            if offset != target_size || length != 0 || arg != 0 {
                return bad(format!(
                    "end record at target byte {offset} before the target end {target_size}"
                ));
            }
        } else if length == 0 || offset > target_size || length > target_size - offset {
            return bad(format!(
                "record of {length} bytes at {offset} runs past the target end {target_size}"
            ));
        }
        match kind {
            KIND_LITERAL => {
                if length > MAX_LITERAL_BYTES as u64
                    || (flags == LITERAL_STORED && payload_len as u64 != length)
                {
                    return bad(format!(
                        "literal of {length} bytes with a {payload_len}-byte payload"
                    ));
                }
                if arg != 0 {
                    return bad("argument of a literal record is not zero".into());
                }
            }
            KIND_COPY_SOURCE => {
                if header.is_full() {
                    return bad("copy from the source in a full delta".into());
                }
                if arg
                    .checked_add(length)
                    .is_none_or(|e| e > header.source_size)
                {
                    return bad(format!(
                        "copy of {length} bytes from source byte {arg} runs past the source end {}",
                        header.source_size
                    ));
                }
            }
            KIND_COPY_TARGET => {
                if arg.checked_add(length).is_none_or(|e| e > offset) {
                    return bad(format!(
                        "copy of {length} bytes from target byte {arg} reaches bytes not yet written ({offset})"
                    ));
                }
            }
            _ => {
                if arg != 0 {
                    return bad("argument of a zero, unallocated or end record is not zero".into());
                }
            }
        }
        Ok(())
    }
}

/// Writes a delta stream. Records must come in target order; [`Encoder::finish`] writes the
/// end record. Dropping an encoder without finishing leaves a stream every decoder rejects.
pub struct Encoder<W: Write> {
    out: W,
    header: Header,
    pos: u64,
    totals: Totals,
    level: i32,
    /// With `FLAG_INDEX`: (target offset, stream offset) of every record written.
    index: Vec<(u64, u64)>,
}

impl<W: Write> Encoder<W> {
    /// Write the header. `level` is the zstd level for literals.
    pub fn new(mut out: W, header: Header, level: i32) -> Result<Encoder<W>> {
        header.validate()?;
        out.write_all(&header.encode())?;
        Ok(Encoder {
            out,
            header,
            pos: 0,
            totals: Totals {
                stream_bytes: HEADER_LEN as u64,
                ..Totals::default()
            },
            level,
            index: Vec::new(),
        })
    }

    /// Where the next record starts in the target.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Set the target digest the end record carries, for a writer that learns it only at the
    /// end (it must then rewrite the header in place: [`Header::encode`] at offset 0).
    pub fn set_target_digest(&mut self, d: Digest) {
        self.header.target_digest = d;
    }

    fn check_len(&self, length: u64) -> Result<()> {
        if length == 0 || self.pos + length > self.header.target_size {
            return Err(Error::corrupt(
                self.totals.stream_bytes,
                format!(
                    "record of {length} bytes at {} does not fit the target",
                    self.pos
                ),
            ));
        }
        Ok(())
    }

    fn emit(&mut self, kind: u8, flags: u8, length: u64, arg: u64, payload: &[u8]) -> Result<()> {
        if kind != KIND_END && self.header.flags & FLAG_INDEX != 0 {
            self.index.push((self.pos, self.totals.stream_bytes));
        }
        let h = record_header(kind, flags, payload.len() as u32, self.pos, length, arg);
        let mut sum = Xxh3::new();
        sum.update(&h);
        sum.update(payload);
        self.out.write_all(&h)?;
        self.out.write_all(payload)?;
        self.out.write_u64::<LittleEndian>(sum.digest())?;
        if kind != KIND_END {
            self.totals.add(kind, length, payload.len() as u64);
            self.totals.stream_bytes += (RECORD_HEADER_LEN + payload.len() + CHECKSUM_LEN) as u64;
            self.pos += length;
        }
        Ok(())
    }

    /// Compress `data` (at most `MAX_LITERAL_BYTES`) into a literal payload: zstd, or the
    /// bytes as they are when zstd does not shrink them. Returns (stored, payload).
    pub fn compress(data: &[u8], level: i32) -> Result<(bool, Vec<u8>)> {
        thread_local! {
            // One compression context per thread and level, reused: making a context per
            // record cost more than compressing a small record.
            static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
                const { std::cell::RefCell::new(None) };
            // The output buffer too: a fresh one per record (zstd's bound, over 1 MiB) came
            // from the kernel each time, as new pages to clear.
            static OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let z = CCTX.with(|c| -> Result<Vec<u8>> {
            let mut c = c.borrow_mut();
            if !matches!(&*c, Some((l, _)) if *l == level) {
                *c = Some((level, zstd::bulk::Compressor::new(level)?));
            }
            let (_, cx) = c.as_mut().expect("set above");
            OUT.with(|o| {
                let mut o = o.borrow_mut();
                o.clear();
                o.reserve(zstd::zstd_safe::compress_bound(data.len()));
                let n = cx.compress_to_buffer(data, &mut *o)?;
                Ok(o[..n].to_vec())
            })
        })?;
        Ok(if z.len() < data.len() {
            (false, z)
        } else {
            (true, data.to_vec())
        })
    }

    /// A literal record; `data` is compressed here.
    pub fn literal(&mut self, data: &[u8]) -> Result<()> {
        let (stored, payload) = Self::compress(data, self.level)?;
        self.literal_payload(data.len() as u64, stored, &payload)
    }

    /// A literal record whose payload was made by [`Encoder::compress`] (on another thread).
    pub fn literal_payload(&mut self, length: u64, stored: bool, payload: &[u8]) -> Result<()> {
        self.check_len(length)?;
        if length > MAX_LITERAL_BYTES as u64 || (stored && payload.len() as u64 != length) {
            return Err(Error::corrupt(self.totals.stream_bytes, "literal too long"));
        }
        let flags = if stored { LITERAL_STORED } else { 0 };
        self.emit(KIND_LITERAL, flags, length, 0, payload)
    }

    pub fn zero(&mut self, length: u64) -> Result<()> {
        self.check_len(length)?;
        self.emit(KIND_ZERO, 0, length, 0, &[])
    }

    pub fn unallocated(&mut self, length: u64) -> Result<()> {
        self.check_len(length)?;
        self.emit(KIND_UNALLOCATED, 0, length, 0, &[])
    }

    pub fn copy_source(&mut self, source_offset: u64, length: u64) -> Result<()> {
        self.check_len(length)?;
        if self.header.is_full()
            || source_offset
                .checked_add(length)
                .is_none_or(|e| e > self.header.source_size)
        {
            return Err(Error::corrupt(
                self.totals.stream_bytes,
                "copy outside the source",
            ));
        }
        self.emit(KIND_COPY_SOURCE, 0, length, source_offset, &[])
    }

    pub fn copy_target(&mut self, target_offset: u64, length: u64) -> Result<()> {
        self.check_len(length)?;
        if target_offset
            .checked_add(length)
            .is_none_or(|e| e > self.pos)
        {
            return Err(Error::corrupt(
                self.totals.stream_bytes,
                "copy from a target range not yet written",
            ));
        }
        self.emit(KIND_COPY_TARGET, 0, length, target_offset, &[])
    }

    /// Write the end record and flush. Fails if the records do not cover the target.
    pub fn finish(mut self) -> Result<(Totals, W)> {
        if self.pos != self.header.target_size {
            return Err(Error::corrupt(
                self.totals.stream_bytes,
                format!(
                    "records cover {} of {} target bytes",
                    self.pos, self.header.target_size
                ),
            ));
        }
        let payload = self.totals.encode(&self.header.target_digest);
        let target_size = self.header.target_size;
        let h = record_header(KIND_END, 0, END_PAYLOAD_LEN, target_size, 0, 0);
        let mut sum = Xxh3::new();
        sum.update(&h);
        sum.update(&payload);
        self.out.write_all(&h)?;
        self.out.write_all(&payload)?;
        self.out.write_u64::<LittleEndian>(sum.digest())?;
        if self.header.flags & FLAG_INDEX != 0 {
            let index_offset = self.totals.stream_bytes
                + (RECORD_HEADER_LEN + END_PAYLOAD_LEN as usize + CHECKSUM_LEN) as u64;
            let mut x = Xxh3::new();
            for &(t, o) in &self.index {
                let mut e = [0u8; INDEX_ENTRY_LEN];
                LittleEndian::write_u64_into(&[t, o], &mut e);
                x.update(&e);
                self.out.write_all(&e)?;
            }
            let mut trailer = [0u8; 16];
            LittleEndian::write_u64_into(&[self.index.len() as u64, index_offset], &mut trailer);
            x.update(&trailer);
            self.out.write_all(&trailer)?;
            self.out.write_u64::<LittleEndian>(x.digest())?;
            self.out.write_all(&INDEX_MAGIC)?;
        }
        self.out.flush()?;
        Ok((self.totals, self.out))
    }
}

/// Reads a delta stream sequentially, checking every rule of the format as it goes.
pub struct Decoder<R: Read> {
    input: R,
    header: Header,
    pos: u64,
    /// Stream bytes consumed.
    read: u64,
    totals: Totals,
    done: bool,
    /// XXH3 of the index entries the records seen so far call for (with `FLAG_INDEX`).
    expect_index: Xxh3,
}

impl<R: Read> Decoder<R> {
    /// Read and check the header.
    pub fn new(mut input: R) -> Result<Decoder<R>> {
        let mut b = [0u8; HEADER_LEN];
        read_full(&mut input, &mut b, 0)?;
        let header = Header::decode(&b)?;
        Ok(Decoder {
            input,
            header,
            pos: 0,
            read: HEADER_LEN as u64,
            totals: Totals {
                stream_bytes: HEADER_LEN as u64,
                ..Totals::default()
            },
            done: false,
            expect_index: Xxh3::new(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Stream bytes consumed so far; for a literal just returned, its payload ends
    /// `CHECKSUM_LEN` bytes before this.
    pub fn stream_position(&self) -> u64 {
        self.read
    }

    /// The totals, once the end record has been read and checked.
    pub fn totals(&self) -> Option<Totals> {
        self.done.then_some(self.totals)
    }

    /// The next record, or `None` after a valid end record (and end of stream).
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let at = self.read;
        let mut h = [0u8; RECORD_HEADER_LEN];
        read_full(&mut self.input, &mut h, at)?;
        // Only what is needed to read the record safely is checked before its checksum:
        // the kind and the payload cap. A damaged record is then reported as such.
        let head = RecordHead::parse(&h, at)?;
        let RecordHead {
            kind,
            flags,
            payload_len,
            offset,
            length,
            arg,
            ..
        } = head;
        let bad = |what: String| Err(Error::corrupt(at, what));
        let mut payload = vec![0u8; payload_len as usize];
        read_full(&mut self.input, &mut payload, at + RECORD_HEADER_LEN as u64)?;
        let mut sum = [0u8; CHECKSUM_LEN];
        read_full(
            &mut self.input,
            &mut sum,
            at + (RECORD_HEADER_LEN as u64) + payload_len as u64,
        )?;
        let mut x = Xxh3::new();
        x.update(&h);
        x.update(&payload);
        if x.digest() != LittleEndian::read_u64(&sum) {
            return bad("record checksum mismatch".into());
        }
        head.check(self.pos, &self.header)?;
        self.read = at + (RECORD_HEADER_LEN + payload.len() + CHECKSUM_LEN) as u64;
        if kind == KIND_END {
            let expect = self.totals.encode(&self.header.target_digest);
            if payload[..] != expect[..] {
                return bad("end record totals or target digest disagree with the stream".into());
            }
            if self.header.flags & FLAG_INDEX != 0 {
                self.check_index()?;
            }
            // Nothing after the end record (and the index, if any).
            let mut one = [0u8; 1];
            loop {
                match self.input.read(&mut one) {
                    Ok(0) => break,
                    Ok(_) => {
                        return Err(Error::corrupt(self.read, "bytes after the end record"));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            self.done = true;
            return Ok(None);
        }
        let mut e = [0u8; INDEX_ENTRY_LEN];
        LittleEndian::write_u64_into(&[offset, at], &mut e);
        self.expect_index.update(&e);
        self.totals.add(kind, length, payload_len as u64);
        self.totals.stream_bytes = self.read;
        self.pos += length;
        Ok(Some(match kind {
            KIND_LITERAL => Record::Literal {
                offset,
                length,
                stored: flags == LITERAL_STORED,
                payload,
            },
            KIND_ZERO => Record::Zero { offset, length },
            KIND_UNALLOCATED => Record::Unallocated { offset, length },
            KIND_COPY_SOURCE => Record::CopySource {
                offset,
                length,
                source_offset: arg,
            },
            _ => Record::CopyTarget {
                offset,
                length,
                target_offset: arg,
            },
        }))
    }
}

impl<R: Read> Decoder<R> {
    /// Read the trailing index and check it names exactly the records seen.
    fn check_index(&mut self) -> Result<()> {
        let index_offset = self.read;
        let mut x = Xxh3::new();
        let mut e = [0u8; INDEX_ENTRY_LEN];
        for i in 0..self.totals.records {
            read_full(
                &mut self.input,
                &mut e,
                index_offset + i * INDEX_ENTRY_LEN as u64,
            )?;
            x.update(&e);
        }
        let entries = x.digest();
        let mut t = [0u8; INDEX_TRAILER_LEN];
        let at = index_offset + self.totals.records * INDEX_ENTRY_LEN as u64;
        read_full(&mut self.input, &mut t, at)?;
        let count = LittleEndian::read_u64(&t);
        let stated_offset = LittleEndian::read_u64(&t[8..]);
        x.update(&t[..16]);
        if t[24..32] != INDEX_MAGIC
            || x.digest() != LittleEndian::read_u64(&t[16..])
            || count != self.totals.records
            || stated_offset != index_offset
            || entries != self.expect_index.digest()
        {
            return Err(Error::corrupt(
                at,
                "trailing index does not match the records",
            ));
        }
        self.read = at + INDEX_TRAILER_LEN as u64;
        Ok(())
    }
}

/// Index entries read at a time (64 KiB): a hostile `count` never sizes an allocation.
const INDEX_BATCH: usize = 4096;
/// Bytes read at a time when walking record headers from the index: the headers of records
/// without payload sit next to each other, a literal's payload is skipped.
const HEAD_WINDOW: u64 = 1 << 10;

/// Read and check the trailer of an indexed delta file of `len` bytes, then hand every index
/// entry `(i, target_offset, stream_offset)` to `visit`, reading the entries in batches, and
/// finally check the index checksum. `visit` sees entries before the checksum is known to
/// hold: it may only check them and build tables, which the caller uses once this returns
/// `Ok`. Returns the header and `index_offset`.
fn visit_index(
    file: &impl std::os::unix::fs::FileExt,
    len: u64,
    mut visit: impl FnMut(u64, u64, u64) -> Result<()>,
) -> Result<(Header, u64)> {
    let mut hb = [0u8; HEADER_LEN];
    pread(file, &mut hb, 0, len)?;
    let header = Header::decode(&hb)?;
    if header.flags & FLAG_INDEX == 0 {
        return Err(Error::corrupt(12, "the delta has no trailing index"));
    }
    let smallest = HEADER_LEN as u64 + END_RECORD_LEN + INDEX_TRAILER_LEN as u64;
    if len < smallest {
        return Err(Error::Truncated { offset: len });
    }
    let at = len - INDEX_TRAILER_LEN as u64;
    let mut t = [0u8; INDEX_TRAILER_LEN];
    pread(file, &mut t, at, len)?;
    if t[24..32] != INDEX_MAGIC {
        return Err(Error::corrupt(
            at,
            "bad index trailer (no index magic at the end)",
        ));
    }
    let count = LittleEndian::read_u64(&t);
    let index_offset = LittleEndian::read_u64(&t[8..]);
    // Every record takes at least 40 stream bytes and 16 index bytes, after the header and
    // before the end record: the count is bounded by the file, and the entries end at the
    // trailer exactly.
    let per_record = (RECORD_HEADER_LEN + CHECKSUM_LEN + INDEX_ENTRY_LEN) as u64;
    if count > (len - smallest) / per_record
        || index_offset.checked_add(count * INDEX_ENTRY_LEN as u64) != Some(at)
        || index_offset < HEADER_LEN as u64 + END_RECORD_LEN
    {
        return Err(Error::corrupt(
            at,
            format!("bad index trailer (count {count}, index offset {index_offset})"),
        ));
    }
    let mut x = Xxh3::new();
    let mut raw = vec![0u8; (count as usize).min(INDEX_BATCH) * INDEX_ENTRY_LEN];
    let mut i = 0u64;
    while i < count {
        let n = (count - i).min(INDEX_BATCH as u64) as usize;
        let buf = &mut raw[..n * INDEX_ENTRY_LEN];
        pread(file, buf, index_offset + i * INDEX_ENTRY_LEN as u64, len)?;
        x.update(buf);
        for e in buf.chunks_exact(INDEX_ENTRY_LEN) {
            visit(
                i,
                LittleEndian::read_u64(e),
                LittleEndian::read_u64(&e[8..]),
            )?;
            i += 1;
        }
    }
    x.update(&t[..16]);
    if x.digest() != LittleEndian::read_u64(&t[16..]) {
        return Err(Error::corrupt(at, "index checksum mismatch"));
    }
    Ok((header, index_offset))
}

/// The trailing index of a delta stored as a file: (target offset, stream offset) of every
/// record, in order. Read from the end of the file, without reading the records. The index is
/// hostile input: entries must be in target and stream order (target offsets from 0, strictly
/// increasing, inside the target; stream offsets from the end of the header, at least a record
/// apart, before the end record), the count must fit the file, and the checksum must hold.
pub fn read_index(
    file: &impl std::os::unix::fs::FileExt,
    len: u64,
) -> Result<(Header, Vec<(u64, u64)>)> {
    let mut entries: Vec<(u64, u64)> = Vec::new();
    let mut hb = [0u8; HEADER_LEN];
    pread(file, &mut hb, 0, len)?;
    let target_size = Header::decode(&hb)?.target_size;
    let (header, index_offset) = visit_index(file, len, |i, t, s| {
        let min_stream = match entries.last() {
            None => HEADER_LEN as u64,
            Some(&(_, ps)) => ps.saturating_add((RECORD_HEADER_LEN + CHECKSUM_LEN) as u64),
        };
        let in_order = match entries.last() {
            None => t == 0,
            Some(&(pt, _)) => t > pt,
        };
        if !in_order || t >= target_size || s < min_stream || s >= len {
            return Err(Error::corrupt(
                s,
                format!(
                    "index entry {i} (target {t}, stream {s}) out of order or outside the target"
                ),
            ));
        }
        entries.push((t, s));
        Ok(())
    })?;
    let end_at = index_offset - END_RECORD_LEN;
    if let Some(&(_, s)) = entries.last() {
        let last_end = s.checked_add((RECORD_HEADER_LEN + CHECKSUM_LEN) as u64);
        if last_end.is_none_or(|e| e > end_at) {
            return Err(Error::corrupt(
                index_offset,
                "index entry past the end record",
            ));
        }
    }
    // The end record just before the index counts the records: one entry each.
    let mut end = [0u8; END_RECORD_LEN as usize];
    pread(file, &mut end, end_at, len)?;
    let body = END_RECORD_LEN as usize - CHECKSUM_LEN;
    if end[0] != KIND_END
        || xxhash_rust::xxh3::xxh3_64(&end[..body]) != LittleEndian::read_u64(&end[body..])
        || LittleEndian::read_u64(&end[RECORD_HEADER_LEN..]) != entries.len() as u64
    {
        return Err(Error::corrupt(
            end_at,
            "the index does not end at an end record counting its entries",
        ));
    }
    Ok((header, entries))
}

/// The records of a delta stored as a file, found through its trailing index without reading
/// literal payloads ([`read_record_table`]).
#[derive(Clone, Debug)]
pub struct RecordTable {
    pub header: Header,
    /// Every record before the end record, in target order; together they cover the target.
    pub records: Vec<RecordHead>,
    /// The totals, recomputed from the records and equal to the end record's.
    pub totals: Totals,
    /// Bytes read from the file to build the table.
    pub bytes_read: u64,
}

/// Build the record table of an indexed delta file of `len` bytes from its trailing index,
/// reading every record header but no literal payload. Checked here: the header, the index
/// trailer and checksum, that the records lie back to back from the end of the header to the
/// end record and cover the target exactly, every rule of every record header
/// ([`RecordHead::check`]), the checksum of every record without payload, and the end record
/// with its checksum, totals and digest. A literal's checksum covers its payload: it is
/// checked when the payload is read, with [`read_literal_at`]. Memory grows only with records
/// that pass these checks, whatever `count` the trailer states.
pub fn read_record_table(file: &impl std::os::unix::fs::FileExt, len: u64) -> Result<RecordTable> {
    let mut hb = [0u8; HEADER_LEN];
    pread(file, &mut hb, 0, len)?;
    let header = Header::decode(&hb)?;
    // Where the end record must start follows from the trailer: read it first (visit_index
    // checks it fully before the first entry).
    if len < INDEX_TRAILER_LEN as u64 {
        return Err(Error::Truncated { offset: len });
    }
    let mut t = [0u8; INDEX_TRAILER_LEN];
    pread(file, &mut t, len - INDEX_TRAILER_LEN as u64, len)?;
    let end_at = LittleEndian::read_u64(&t[8..]).saturating_sub(END_RECORD_LEN);
    let mut records: Vec<RecordHead> = Vec::new();
    let mut totals = Totals {
        stream_bytes: HEADER_LEN as u64,
        ..Totals::default()
    };
    let mut pos = 0u64;
    let mut win = Vec::new();
    let mut win_at = 0u64;
    let mut bytes_read = 2 * (HEADER_LEN + INDEX_TRAILER_LEN) as u64;
    let need = (RECORD_HEADER_LEN + CHECKSUM_LEN) as u64;
    visit_index(file, len, |i, t, s| {
        let expect_s = totals.stream_bytes;
        if s != expect_s || t != pos {
            return Err(Error::corrupt(
                s,
                format!(
                    "index entry {i} says target byte {t} at stream byte {s}; the records put \
                     it at target byte {pos}, stream byte {expect_s}"
                ),
            ));
        }
        // The header and, for a record without payload, its checksum: 40 bytes, read through
        // a window so that neighbouring small records cost one read.
        if s.checked_add(need).is_none_or(|e| e > end_at) {
            return Err(Error::corrupt(s, "record runs into the end record"));
        }
        if s < win_at || s + need > win_at + win.len() as u64 {
            let n = (end_at - s).min(HEAD_WINDOW).max(need) as usize;
            win.resize(n, 0);
            pread(file, &mut win, s, len)?;
            win_at = s;
            bytes_read += n as u64;
        }
        let w = &win[(s - win_at) as usize..(s - win_at + need) as usize];
        let h: &[u8; RECORD_HEADER_LEN] = w[..RECORD_HEADER_LEN].try_into().expect("32 bytes");
        let head = RecordHead::parse(h, s)?;
        if head.kind == KIND_END {
            return Err(Error::corrupt(s, "the index points at the end record"));
        }
        if s + head.stream_len() > end_at {
            return Err(Error::corrupt(s, "record runs into the end record"));
        }
        if head.payload_len == 0
            && xxhash_rust::xxh3::xxh3_64(h) != LittleEndian::read_u64(&w[RECORD_HEADER_LEN..])
        {
            return Err(Error::corrupt(s, "record checksum mismatch"));
        }
        head.check(pos, &header)?;
        totals.add(head.kind, head.length, head.payload_len as u64);
        totals.stream_bytes = s + head.stream_len();
        pos += head.length;
        records.push(head);
        Ok(())
    })?;
    if totals.stream_bytes != end_at {
        return Err(Error::corrupt(
            totals.stream_bytes,
            format!(
                "the records end at stream byte {}, the end record starts at {end_at}",
                totals.stream_bytes
            ),
        ));
    }
    check_end_record(file, len, end_at, pos, &header, &totals)?;
    bytes_read += END_RECORD_LEN + records.len() as u64 * INDEX_ENTRY_LEN as u64;
    Ok(RecordTable {
        header,
        records,
        totals,
        bytes_read,
    })
}

/// Check the end record at `end_at`: its kind, checksum and place (`pos`, where the records
/// ended in the target), and its totals and target digest against `totals` and `header`.
fn check_end_record(
    file: &impl std::os::unix::fs::FileExt,
    len: u64,
    end_at: u64,
    pos: u64,
    header: &Header,
    totals: &Totals,
) -> Result<()> {
    let mut end = [0u8; END_RECORD_LEN as usize];
    pread(file, &mut end, end_at, len)?;
    let h: &[u8; RECORD_HEADER_LEN] = end[..RECORD_HEADER_LEN].try_into().expect("32 bytes");
    let head = RecordHead::parse(h, end_at)?;
    let body = END_RECORD_LEN as usize - CHECKSUM_LEN;
    if head.kind != KIND_END {
        return Err(Error::corrupt(end_at, "no end record before the index"));
    }
    if xxhash_rust::xxh3::xxh3_64(&end[..body]) != LittleEndian::read_u64(&end[body..]) {
        return Err(Error::corrupt(end_at, "record checksum mismatch"));
    }
    head.check(pos, header)?;
    if end[RECORD_HEADER_LEN..body] != totals.encode(&header.target_digest)[..] {
        return Err(Error::corrupt(
            end_at,
            "end record totals or target digest disagree with the stream",
        ));
    }
    Ok(())
}

/// Read the whole record `head` describes (from a [`RecordTable`]) into `buf` and return its
/// payload, after checking that the header in the file is still `head` and that the record's
/// checksum holds.
pub fn read_literal_at<'a>(
    file: &impl std::os::unix::fs::FileExt,
    len: u64,
    head: &RecordHead,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let at = head.stream_offset;
    buf.resize(head.stream_len() as usize, 0);
    pread(file, buf, at, len)?;
    read_literal_checked(buf, head)
}

/// The payload of the literal record `buf` holds, after checking its header against `head`
/// and its checksum.
fn read_literal_checked<'a>(buf: &'a [u8], head: &RecordHead) -> Result<&'a [u8]> {
    let at = head.stream_offset;
    let body = buf.len() - CHECKSUM_LEN;
    if buf[..RECORD_HEADER_LEN] != head.encode()[..] {
        return Err(Error::corrupt(
            at,
            "record header differs from the one the index led to",
        ));
    }
    if xxhash_rust::xxh3::xxh3_64(&buf[..body]) != LittleEndian::read_u64(&buf[body..]) {
        return Err(Error::corrupt(at, "record checksum mismatch"));
    }
    Ok(&buf[RECORD_HEADER_LEN..body])
}

fn pread(file: &impl std::os::unix::fs::FileExt, buf: &mut [u8], at: u64, len: u64) -> Result<()> {
    if at.checked_add(buf.len() as u64).is_none_or(|e| e > len) {
        return Err(Error::Truncated { offset: len });
    }
    file.read_exact_at(buf, at).map_err(Error::Io)
}

/// The flags of a literal record in a table built by [`read_record_table_lazy`]: its header
/// was not read; [`read_literal_unread_at`] reads it with the record.
pub const FLAGS_UNREAD: u8 = 0xff;

/// [`read_record_table`] that reads no literal record's header: for a source where every
/// separate read costs a round trip (an object store). Each index entry's stream length tells
/// a literal (a payload) from a record without one; a literal's kind, place, length and payload
/// length follow from the index, its flags stay [`FLAGS_UNREAD`], and its header is checked
/// when the record is read ([`read_literal_unread_at`]). The headers of the records without
/// payload are read, each run of neighbours at once, and checked as [`read_record_table`]
/// checks them; the end record's totals are checked against all of them.
pub fn read_record_table_lazy(
    file: &impl std::os::unix::fs::FileExt,
    len: u64,
) -> Result<RecordTable> {
    let (header, entries) = read_index(file, len)?;
    let mut t = [0u8; INDEX_TRAILER_LEN];
    pread(file, &mut t, len - INDEX_TRAILER_LEN as u64, len)?;
    let end_at = LittleEndian::read_u64(&t[8..]).saturating_sub(END_RECORD_LEN);
    let mut bytes_read =
        2 * (HEADER_LEN + INDEX_TRAILER_LEN) as u64 + entries.len() as u64 * INDEX_ENTRY_LEN as u64;
    let bare = (RECORD_HEADER_LEN + CHECKSUM_LEN) as u64;
    let stream_len = |i: usize| -> Result<u64> {
        let s = entries[i].1;
        let next = entries.get(i + 1).map_or(end_at, |e| e.1);
        next.checked_sub(s)
            .filter(|&n| n >= bare)
            .ok_or_else(|| Error::corrupt(s, "index entries closer than a record"))
    };
    let mut records: Vec<RecordHead> = Vec::with_capacity(entries.len());
    let mut totals = Totals {
        stream_bytes: HEADER_LEN as u64,
        ..Totals::default()
    };
    let mut pos = 0u64;
    let mut run = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let (t, s) = entries[i];
        if stream_len(i)? == bare {
            // A run of records without payload, next to each other: one read (4096 at most).
            let mut j = i + 1;
            while j < entries.len() && j - i < 4096 && stream_len(j)? == bare {
                j += 1;
            }
            run.resize((j - i) * bare as usize, 0);
            pread(file, &mut run, s, len)?;
            bytes_read += run.len() as u64;
            for (k, w) in run.chunks_exact(bare as usize).enumerate() {
                let at = s + k as u64 * bare;
                let h: &[u8; RECORD_HEADER_LEN] = w[..RECORD_HEADER_LEN].try_into().expect("32");
                let head = RecordHead::parse(h, at)?;
                if head.kind == KIND_END || head.payload_len != 0 {
                    return Err(Error::corrupt(
                        at,
                        "the index's record lengths disagree with the stream",
                    ));
                }
                if xxhash_rust::xxh3::xxh3_64(h) != LittleEndian::read_u64(&w[RECORD_HEADER_LEN..])
                {
                    return Err(Error::corrupt(at, "record checksum mismatch"));
                }
                if head.offset != entries[i + k].0 {
                    return Err(Error::corrupt(
                        at,
                        "the index's target offset disagrees with the record",
                    ));
                }
                head.check(pos, &header)?;
                totals.add(head.kind, head.length, 0);
                pos += head.length;
                records.push(head);
            }
            i = j;
            continue;
        }
        let payload = stream_len(i)? - bare;
        if payload > MAX_LITERAL_BYTES as u64 {
            return Err(Error::corrupt(
                s,
                format!("payload of {payload} bytes exceeds the cap {MAX_LITERAL_BYTES}"),
            ));
        }
        let next_t = entries.get(i + 1).map_or(header.target_size, |e| e.0);
        let head = RecordHead {
            kind: KIND_LITERAL,
            flags: 0,
            reserved: 0,
            payload_len: payload as u32,
            offset: t,
            length: next_t.saturating_sub(t),
            arg: 0,
            stream_offset: s,
        };
        head.check(pos, &header)?;
        totals.add(KIND_LITERAL, head.length, payload);
        pos += head.length;
        records.push(RecordHead {
            flags: FLAGS_UNREAD,
            ..head
        });
        i += 1;
    }
    totals.stream_bytes = end_at;
    check_end_record(file, len, end_at, pos, &header, &totals)?;
    bytes_read += END_RECORD_LEN;
    Ok(RecordTable {
        header,
        records,
        totals,
        bytes_read,
    })
}

/// [`read_literal_at`] for a literal of a lazy table ([`FLAGS_UNREAD`]): its flags come from
/// the header read with it (0 or [`LITERAL_STORED`]), and the rest of the header must be what
/// the index led to. Returns whether the payload is stored (not compressed), and the payload.
pub fn read_literal_unread_at<'a>(
    file: &impl std::os::unix::fs::FileExt,
    len: u64,
    head: &RecordHead,
    buf: &'a mut Vec<u8>,
) -> Result<(bool, &'a [u8])> {
    let at = head.stream_offset;
    buf.resize(head.stream_len() as usize, 0);
    pread(file, buf, at, len)?;
    let flags = buf[1];
    if flags != 0 && flags != LITERAL_STORED {
        return Err(Error::corrupt(
            at,
            format!("unknown record flags {flags:#x}"),
        ));
    }
    let head = RecordHead { flags, ..*head };
    let payload = read_literal_checked(buf, &head)?;
    Ok((flags == LITERAL_STORED, payload))
}

/// Read the one record starting at `stream_offset` (from the index), checking its checksum and
/// its own fields against the header (not its place among the other records).
pub fn read_record_at(
    file: &impl std::os::unix::fs::FileExt,
    len: u64,
    header: &Header,
    stream_offset: u64,
) -> Result<Record> {
    let mut h = [0u8; RECORD_HEADER_LEN];
    pread(file, &mut h, stream_offset, len)?;
    let payload_len = LittleEndian::read_u32(&h[4..]) as u64;
    if payload_len > MAX_LITERAL_BYTES as u64 {
        return Err(Error::corrupt(stream_offset, "payload above the cap"));
    }
    let mut rest = vec![0u8; payload_len as usize + CHECKSUM_LEN];
    pread(
        file,
        &mut rest,
        stream_offset + RECORD_HEADER_LEN as u64,
        len,
    )?;
    let mut one = Vec::with_capacity(RECORD_HEADER_LEN + rest.len());
    one.extend_from_slice(&h);
    one.extend_from_slice(&rest);
    // Decode it as a stream of one record placed at its own target offset.
    let offset = LittleEndian::read_u64(&h[8..]);
    let mut d = Decoder {
        input: &one[..],
        header: Header {
            flags: header.flags & !FLAG_INDEX,
            ..header.clone()
        },
        pos: offset,
        read: stream_offset,
        totals: Totals::default(),
        done: false,
        expect_index: Xxh3::new(),
    };
    match d.next_record()? {
        Some(r) => Ok(r),
        None => Err(Error::corrupt(
            stream_offset,
            "the end record is not a data record",
        )),
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8], at: u64) -> Result<()> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Truncated { offset: at }),
        Err(e) => Err(e.into()),
    }
}

/// Decode a whole in-memory delta against an in-memory source: the reference applier, used by
/// tests and the fuzz target. Checks the target digest.
pub fn apply_bytes(source: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
    let mut d = Decoder::new(delta)?;
    let h = d.header().clone();
    if !h.is_full() && h.source_size != source.len() as u64 {
        return Err(Error::corrupt(
            24,
            "source size differs from the delta's source",
        ));
    }
    // target_size is capped, but an in-memory reference applier must not allocate on trust.
    let mut out: Vec<u8> = Vec::new();
    let mut lit = Vec::new();
    while let Some(r) = d.next_record()? {
        match r {
            Record::Literal {
                length,
                stored,
                payload,
                ..
            } => {
                literal_bytes(stored, &payload, length, &mut lit)?;
                out.extend_from_slice(&lit);
            }
            Record::Zero { length, .. } | Record::Unallocated { length, .. } => {
                if length > (1 << 30) {
                    return Err(Error::corrupt(
                        0,
                        "zero range too large for an in-memory apply",
                    ));
                }
                out.resize(out.len() + length as usize, 0);
            }
            Record::CopySource {
                length,
                source_offset,
                ..
            } => out.extend_from_slice(
                &source[source_offset as usize..(source_offset + length) as usize],
            ),
            Record::CopyTarget {
                length,
                target_offset,
                ..
            } => out.extend_from_within(target_offset as usize..(target_offset + length) as usize),
        }
    }
    if crate::digest::digest_bytes(&out) != h.target_digest {
        return Err(Error::corrupt(0, "target digest mismatch"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(full: bool, source: &[u8], target: &[u8]) -> Header {
        Header {
            flags: if full { FLAG_FULL } else { 0 },
            block_size: 4096,
            source_size: if full { 0 } else { source.len() as u64 },
            target_size: target.len() as u64,
            source_digest: if full {
                [0; 32]
            } else {
                crate::digest::digest_bytes(source)
            },
            target_digest: crate::digest::digest_bytes(target),
        }
    }

    /// A delta using every record kind: source "abcd...", target built from it.
    fn every_kind() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let source: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let mut target = Vec::new();
        target.extend_from_slice(&[7u8; 100]); // literal
        target.extend_from_slice(&[0u8; 50]); // zero
        target.extend_from_slice(&[0u8; 30]); // unallocated
        target.extend_from_slice(&source[1000..1500]); // copy-source
        target.extend_from_slice(&[7u8; 60]); // copy-target from 0
        let mut e = Encoder::new(Vec::new(), header(false, &source, &target), 3).unwrap();
        e.literal(&[7u8; 100]).unwrap();
        e.zero(50).unwrap();
        e.unallocated(30).unwrap();
        e.copy_source(1000, 500).unwrap();
        e.copy_target(0, 60).unwrap();
        let (totals, delta) = e.finish().unwrap();
        assert_eq!(totals.records, 5);
        assert_eq!(totals.copy_source_bytes, 500);
        (source, target, delta)
    }

    #[test]
    fn round_trip_every_kind() {
        let (source, target, delta) = every_kind();
        assert_eq!(apply_bytes(&source, &delta).unwrap(), target);
        let mut d = Decoder::new(&delta[..]).unwrap();
        let mut kinds = Vec::new();
        while let Some(r) = d.next_record().unwrap() {
            kinds.push(std::mem::discriminant(&r));
        }
        assert_eq!(kinds.len(), 5);
        assert_eq!(d.totals().unwrap().literal_bytes, 100);
    }

    #[test]
    fn header_layout_is_frozen() {
        let h = header(true, &[], &[1, 2, 3]);
        let b = h.encode();
        assert_eq!(&b[0..8], b"VMLDELTA");
        assert_eq!(LittleEndian::read_u32(&b[8..]), 1);
        assert_eq!(LittleEndian::read_u32(&b[12..]), FLAG_FULL);
        assert_eq!(LittleEndian::read_u32(&b[16..]), 4096);
        assert_eq!(LittleEndian::read_u64(&b[32..]), 3);
        assert_eq!(Header::decode(&b).unwrap(), h);
    }

    #[test]
    fn every_truncation_is_detected() {
        let (source, _, delta) = every_kind();
        for cut in 0..delta.len() {
            let r = apply_bytes(&source, &delta[..cut]);
            assert!(
                matches!(r, Err(Error::Truncated { .. })),
                "cut at {cut}: {r:?}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let (source, _, delta) = every_kind();
        for i in 0..delta.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = delta.clone();
                bad[i] ^= bit;
                assert!(apply_bytes(&source, &bad).is_err(), "byte {i} bit {bit:#x}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let (source, _, mut delta) = every_kind();
        delta.push(0);
        assert!(matches!(
            apply_bytes(&source, &delta),
            Err(Error::Corrupt { .. })
        ));
    }

    /// Re-sign a record header after editing it, so only the rule under test can fail.
    fn resign(delta: &mut [u8], at: usize, payload_len: usize) {
        let end = at + RECORD_HEADER_LEN + payload_len;
        let sum = xxhash_rust::xxh3::xxh3_64(&delta[at..end]);
        delta[end..end + 8].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn hostile_records_with_valid_checksums_are_rejected() {
        let (source, _, delta) = every_kind();
        // Records: literal at HEADER_LEN, then zero, unallocated, copy-source, copy-target.
        let lit_payload = LittleEndian::read_u32(&delta[HEADER_LEN + 4..]) as usize;
        let zero_at = HEADER_LEN + RECORD_HEADER_LEN + lit_payload + CHECKSUM_LEN;
        let unalloc_at = zero_at + RECORD_HEADER_LEN + CHECKSUM_LEN;
        let src_at = unalloc_at + RECORD_HEADER_LEN + CHECKSUM_LEN;
        let tgt_at = src_at + RECORD_HEADER_LEN + CHECKSUM_LEN;
        let cases: Vec<(&str, usize, usize, u64)> = vec![
            // (what, record start, field offset, new value)
            ("overlap", zero_at, 8, 99),
            ("gap", zero_at, 8, 101),
            ("past the target end", unalloc_at, 16, 1 << 40),
            ("copy past the source end", src_at, 24, 8000),
            ("copy from the future", tgt_at, 24, 700),
            ("zero length", zero_at, 16, 0),
        ];
        for (what, at, field, value) in cases {
            let mut bad = delta.clone();
            bad[at + field..at + field + 8].copy_from_slice(&value.to_le_bytes());
            resign(&mut bad, at, 0);
            let r = apply_bytes(&source, &bad);
            assert!(matches!(r, Err(Error::Corrupt { .. })), "{what}: {r:?}");
        }
        // A payload length above the cap is refused before anything is allocated.
        let mut bad = delta.clone();
        bad[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Decoder::new(&bad[..]).unwrap().next_record(),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn full_delta_cannot_copy_from_a_source() {
        let target = vec![1u8; 10];
        let mut e = Encoder::new(Vec::new(), header(true, &[], &target), 3).unwrap();
        assert!(e.copy_source(0, 10).is_err());
    }

    #[test]
    fn trailing_index_reaches_every_record() {
        use std::io::Write as _;
        let (source, target, _) = every_kind();
        let mut h = header(false, &source, &target);
        h.flags |= FLAG_INDEX;
        let mut e = Encoder::new(Vec::new(), h, 3).unwrap();
        e.literal(&[7u8; 100]).unwrap();
        e.zero(50).unwrap();
        e.unallocated(30).unwrap();
        e.copy_source(1000, 500).unwrap();
        e.copy_target(0, 60).unwrap();
        let (_, delta) = e.finish().unwrap();
        // The sequential decoder checks the index against the records.
        assert_eq!(apply_bytes(&source, &delta).unwrap(), target);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&delta).unwrap();
        let (hd, index) = read_index(&f, delta.len() as u64).unwrap();
        assert_eq!(index.len(), 5);
        let mut seq = Decoder::new(&delta[..]).unwrap();
        for &(t, o) in &index {
            let r = seq.next_record().unwrap().unwrap();
            assert_eq!(r.offset(), t);
            assert_eq!(read_record_at(&f, delta.len() as u64, &hd, o).unwrap(), r);
        }
        // Any damaged byte of the index or trailer is caught both ways.
        let index_start = delta.len() - INDEX_TRAILER_LEN - 5 * INDEX_ENTRY_LEN;
        for i in index_start..delta.len() {
            let mut bad = delta.clone();
            bad[i] ^= 0x20;
            assert!(apply_bytes(&source, &bad).is_err(), "sequential, byte {i}");
            let mut g = tempfile::tempfile().unwrap();
            g.write_all(&bad).unwrap();
            assert!(
                read_index(&g, bad.len() as u64).is_err(),
                "random access, byte {i}"
            );
        }
        // Cut anywhere: still detected.
        for cut in index_start..delta.len() {
            assert!(apply_bytes(&source, &delta[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// The every-kind delta with a trailing index, in a file.
    fn indexed_every_kind() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (source, target, _) = every_kind();
        let mut h = header(false, &source, &target);
        h.flags |= FLAG_INDEX;
        let mut e = Encoder::new(Vec::new(), h, 3).unwrap();
        e.literal(&[7u8; 100]).unwrap();
        e.zero(50).unwrap();
        e.unallocated(30).unwrap();
        e.copy_source(1000, 500).unwrap();
        e.copy_target(0, 60).unwrap();
        let (_, delta) = e.finish().unwrap();
        (source, target, delta)
    }

    fn file_of(b: &[u8]) -> std::fs::File {
        use std::io::Write as _;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b).unwrap();
        f
    }

    /// Rewrite the index entries and trailer fields of an indexed delta and sign them again,
    /// so that only the rule under test can fail.
    fn forge_index(delta: &[u8], entries: &[(u64, u64)], count: u64, index_offset: u64) -> Vec<u8> {
        let n = LittleEndian::read_u64(&delta[delta.len() - INDEX_TRAILER_LEN..]) as usize;
        let start = delta.len() - INDEX_TRAILER_LEN - n * INDEX_ENTRY_LEN;
        let mut out = delta[..start].to_vec();
        let mut x = Xxh3::new();
        for &(t, o) in entries {
            let mut e = [0u8; INDEX_ENTRY_LEN];
            LittleEndian::write_u64_into(&[t, o], &mut e);
            x.update(&e);
            out.extend_from_slice(&e);
        }
        x.update(&count.to_le_bytes());
        x.update(&index_offset.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&index_offset.to_le_bytes());
        out.extend_from_slice(&x.digest().to_le_bytes());
        out.extend_from_slice(&INDEX_MAGIC);
        out
    }

    #[test]
    fn record_table_matches_the_sequential_decoder() {
        let (_, _, delta) = indexed_every_kind();
        let f = file_of(&delta);
        let t = read_record_table(&f, delta.len() as u64).unwrap();
        let mut seq = Decoder::new(&delta[..]).unwrap();
        let mut buf = Vec::new();
        for head in &t.records {
            let r = seq.next_record().unwrap().unwrap();
            assert_eq!((head.offset, head.length), (r.offset(), r.length()));
            if let Record::Literal { payload, .. } = r {
                assert_eq!(
                    read_literal_at(&f, delta.len() as u64, head, &mut buf).unwrap(),
                    &payload[..]
                );
            }
        }
        assert_eq!(seq.next_record().unwrap(), None);
        assert_eq!(Some(t.totals), seq.totals());
        assert!(t.bytes_read <= delta.len() as u64 + 2 * (HEADER_LEN + INDEX_TRAILER_LEN) as u64);
    }

    #[test]
    fn hostile_indexes_are_refused() {
        let (_, _, delta) = indexed_every_kind();
        let len = delta.len() as u64;
        let (_, good) = read_index(&file_of(&delta), len).unwrap();
        let n = good.len() as u64;
        let index_offset = len - INDEX_TRAILER_LEN as u64 - n * INDEX_ENTRY_LEN as u64;
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        let mut overlap = good.clone();
        overlap[2].1 = overlap[1].1 + 8;
        let mut past_target = good.clone();
        past_target[4].0 = 1 << 40;
        let mut past_file = good.clone();
        past_file[4].1 = u64::MAX - 3;
        let mut same_target = good.clone();
        same_target[1].0 = 0;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "entries out of order",
                forge_index(&delta, &swapped, n, index_offset),
            ),
            (
                "overlapping records",
                forge_index(&delta, &overlap, n, index_offset),
            ),
            (
                "target offset past the end",
                forge_index(&delta, &past_target, n, index_offset),
            ),
            (
                "stream offset past the file end",
                forge_index(&delta, &past_file, n, index_offset),
            ),
            (
                "two entries at one target offset",
                forge_index(&delta, &same_target, n, index_offset),
            ),
            (
                "one entry missing",
                forge_index(&delta, &good[..4], n - 1, index_offset),
            ),
            (
                "huge count",
                forge_index(&delta, &good, u64::MAX / 16, index_offset),
            ),
            ("count fitting the offset", {
                let c = 1u64 << 40;
                forge_index(&delta, &good, c, (len - 32).wrapping_sub(c * 16))
            }),
            (
                "index offset past the file",
                forge_index(&delta, &good, n, u64::MAX - 100),
            ),
            (
                "index offset inside the records",
                forge_index(&delta, &good, n, HEADER_LEN as u64),
            ),
        ];
        for (what, bad) in cases {
            let f = file_of(&bad);
            let l = bad.len() as u64;
            assert!(read_index(&f, l).is_err(), "read_index: {what}");
            assert!(
                read_record_table(&f, l).is_err(),
                "read_record_table: {what}"
            );
        }
        // A huge sparse file whose trailer claims billions of entries: refused while reading
        // them, with no allocation sized by the count.
        let f = tempfile::tempfile().unwrap();
        use std::os::unix::fs::FileExt as _;
        f.write_all_at(&delta[..HEADER_LEN], 0).unwrap();
        let big = 1u64 << 40;
        let count = (big - 4096) / 64;
        let trailer = {
            let mut t = Vec::new();
            t.extend_from_slice(&count.to_le_bytes());
            t.extend_from_slice(&(big - 32 - count * 16).to_le_bytes());
            t.extend_from_slice(&0u64.to_le_bytes());
            t.extend_from_slice(&INDEX_MAGIC);
            t
        };
        f.write_all_at(&trailer, big - 32).unwrap();
        assert!(read_index(&f, big).is_err());
        assert!(read_record_table(&f, big).is_err());
        // Every damaged byte past the literal payload, and every cut, is refused by the table
        // reader; a damaged literal payload is caught when it is read.
        let f = file_of(&delta);
        let t = read_record_table(&f, len).unwrap();
        let lit = t.records[0];
        let payload_end = lit.stream_offset + lit.stream_len() - CHECKSUM_LEN as u64;
        for i in 0..delta.len() {
            let mut bad = delta.clone();
            bad[i] ^= 0x04;
            let g = file_of(&bad);
            let r = read_record_table(&g, len);
            let in_payload = (lit.stream_offset + RECORD_HEADER_LEN as u64..payload_end)
                .contains(&(i as u64))
                || (payload_end..payload_end + 8).contains(&(i as u64));
            if in_payload {
                let t = r.expect("payload damage is found on reading it");
                assert!(
                    read_literal_at(&g, len, &t.records[0], &mut Vec::new()).is_err(),
                    "byte {i}"
                );
            } else {
                assert!(r.is_err(), "byte {i}");
            }
        }
        for cut in 0..delta.len() {
            assert!(
                read_record_table(&file_of(&delta[..cut]), cut as u64).is_err(),
                "cut {cut}"
            );
        }
    }

    /// Fuzz finds, kept as regressions: each is refused without a panic.
    #[test]
    fn fuzz_regressions_are_refused() {
        // `index`: a stream offset near u64::MAX overflowed the order check.
        let b = include_bytes!("../fuzz/regressions/index-stream-offset-overflow.bin");
        let f = file_of(b);
        assert!(read_index(&f, b.len() as u64).is_err());
        assert!(read_record_table(&f, b.len() as u64).is_err());
    }

    #[test]
    fn doc_agrees_with_module() {
        let doc = include_str!("../../docs/delta-format.md");
        let lines: std::collections::HashSet<&str> = doc.lines().collect();
        let src = include_str!("format.rs");
        for l in src.lines().take_while(|l| l.starts_with("//!")) {
            let l = l
                .strip_prefix("//! ")
                .unwrap_or(l.trim_start_matches("//!"));
            assert!(
                lines.contains(l),
                "docs/delta-format.md lacks the module doc line {l:?}"
            );
        }
    }
}
