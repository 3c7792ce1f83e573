//! The JSON documents of the `vmx-parse` binary, kept apart from the model so the model can
//! change without changing the schemas. Schemas: `docs/vmx-parse.md`, pinned by `tests/cli.rs`.

use crate::document::{Document, Duplicate, Problem, Warning};
use crate::view::VmConfig;
use crate::vmsd::SnapshotTree;
use serde::Serialize;

/// Version 2 added `problems` (damaged lines).
pub const SHOW_SCHEMA: &str = "vmx-parse.show/2";
/// Version 2 added `problems` (damaged lines).
pub const VMSD_SCHEMA: &str = "vmx-parse.vmsd/2";

/// One `key = value` line.
#[derive(Debug, Serialize)]
pub struct KeyValue {
    /// 1-based line number.
    pub line: usize,
    /// As written.
    pub key: String,
    /// Escapes decoded.
    pub value: String,
}

/// `vmx-parse show`.
#[derive(Debug, Serialize)]
pub struct Show {
    pub schema: &'static str,
    pub path: String,
    /// The encoding the file was read with (its `.encoding`, or UTF-8).
    pub encoding: &'static str,
    #[serde(flatten)]
    pub config: VmConfig,
    /// Every pair in file order, duplicates included.
    pub keys: Vec<KeyValue>,
    pub duplicates: Vec<Duplicate>,
    pub warnings: Vec<Warning>,
    /// Lines with bytes invalid in the file's encoding (read with U+FFFD, kept byte for byte).
    pub problems: Vec<Problem>,
}

/// `vmx-parse vmsd`.
#[derive(Debug, Serialize)]
pub struct Vmsd {
    pub schema: &'static str,
    pub path: String,
    pub encoding: &'static str,
    #[serde(flatten)]
    pub tree: SnapshotTree,
    pub duplicates: Vec<Duplicate>,
    pub warnings: Vec<Warning>,
    /// Lines with bytes invalid in the file's encoding (read with U+FFFD, kept byte for byte).
    pub problems: Vec<Problem>,
}

fn keys(doc: &Document) -> Vec<KeyValue> {
    doc.pairs()
        .map(|(line, key, value)| KeyValue {
            line,
            key: key.to_string(),
            value: value.to_string(),
        })
        .collect()
}

pub fn show(path: &str, doc: &Document) -> Show {
    Show {
        schema: SHOW_SCHEMA,
        path: path.to_string(),
        encoding: doc.encoding().name(),
        config: VmConfig::from_document(doc),
        keys: keys(doc),
        duplicates: doc.duplicates(),
        warnings: doc.warnings().to_vec(),
        problems: doc.problems(),
    }
}

pub fn vmsd(path: &str, doc: &Document) -> Vmsd {
    Vmsd {
        schema: VMSD_SCHEMA,
        path: path.to_string(),
        encoding: doc.encoding().name(),
        tree: SnapshotTree::from_document(doc),
        duplicates: doc.duplicates(),
        warnings: doc.warnings().to_vec(),
        problems: doc.problems(),
    }
}
