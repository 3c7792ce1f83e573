//! # vdiff
//!
//! Block deltas between disk images, as a documented binary stream.
//!
//! - [`format`]: the delta stream, version 1 (specification in its module doc and in
//!   `docs/delta-format.md`), with a sequential [`format::Encoder`] and [`format::Decoder`].
//! - [`digest`]: the image digest that names a delta's source and target.
//! - [`image`]: what is diffed: any disk vmdk-parse opens, or bytes in memory.
//! - [`diff`]: the two-pass differ and its memory cost per block.
//! - [`signature`]: block digests of an image, for diffing against an image on another host.
//!
//! The library never prints; the `vdiff` binary is a thin layer over [`diff::diff`].
//! Applying deltas (one or a chain, to files) is the `vpatch` crate's job; it decodes with
//! this crate's [`format::Decoder`].

pub mod diff;
pub mod digest;
pub mod format;
pub mod image;
pub mod signature;

pub use diff::{diff, DiffOptions, Summary};
pub use image::{Image, Kind, MemImage};

/// Errors of the differ.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Disk(#[from] vmdk_parse::Error),
    #[error(transparent)]
    Format(#[from] format::Error),
    #[error("writing the delta: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Input(String),
    #[error("the new image changed while it was read (block at byte {0} differs between passes)")]
    Changed(u64),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The `--stat` report: one JSON object, schema `vdiff-stat/1` (documented in `docs/vdiff.md`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stat {
    pub schema: &'static str,
    pub block_size: u32,
    pub source_size: u64,
    pub target_size: u64,
    pub identical: bool,
    pub changed_bytes: u64,
    pub unchanged_bytes: u64,
    pub snapshot_link: Option<u32>,
    pub copy_source_bytes: u64,
    pub copy_target_bytes: u64,
    pub zero_bytes: u64,
    pub unallocated_bytes: u64,
    pub literal_bytes: u64,
    pub compressed_bytes: u64,
    pub records: u64,
    pub delta_bytes: u64,
    pub source_digest: String,
    pub target_digest: String,
}

pub const STAT_SCHEMA: &str = "vdiff-stat/1";

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Stat {
    pub fn new(block_size: u32, s: &Summary, delta_bytes: u64) -> Stat {
        Stat {
            schema: STAT_SCHEMA,
            block_size,
            source_size: s.source_size,
            target_size: s.target_size,
            identical: s.identical,
            changed_bytes: s.changed_bytes,
            unchanged_bytes: s.unchanged_bytes,
            snapshot_link: s.snapshot_link,
            copy_source_bytes: s.totals.copy_source_bytes,
            copy_target_bytes: s.totals.copy_target_bytes,
            zero_bytes: s.totals.zero_bytes,
            unallocated_bytes: s.totals.unallocated_bytes,
            literal_bytes: s.totals.literal_bytes,
            compressed_bytes: s.totals.payload_bytes,
            records: s.totals.records,
            delta_bytes,
            source_digest: hex(&s.source_digest),
            target_digest: hex(&s.target_digest),
        }
    }
}

/// A writer that counts what it is given and keeps nothing (for `--stat`).
#[derive(Default)]
pub struct CountingSink(pub u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
