//! The JSON documents of `vmdk-parse info` and `vmdk-parse map`.
//!
//! These are serialization types, kept apart from the reader's internal types so the schemas
//! (documented in `docs/vmdk-parse.md`, pinned by `vmdk-parse/tests/cli.rs`) change only on
//! purpose. `schema` names the document and its version.

use crate::disk::{Disk, ExtentData, Link};
use crate::error::Result;
use crate::map::{MapRange, Totals};
use serde::Serialize;

pub const INFO_SCHEMA: &str = "vmdk-parse.info/1";

#[derive(Serialize)]
pub struct Info {
    pub schema: &'static str,
    pub path: String,
    pub create_type: String,
    pub capacity_bytes: u64,
    /// Every descriptor `key = value` of the opened link, in file order (duplicates kept).
    pub descriptor: Vec<KeyValue>,
    /// The extents of the opened link.
    pub extents: Vec<ExtentInfo>,
    /// The chain, from the opened link (depth 0) to the base.
    pub chain: Vec<LinkInfo>,
    pub totals: Totals,
}

#[derive(Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Serialize)]
pub struct ExtentInfo {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub access: crate::descriptor::Access,
    pub start_bytes: u64,
    pub size_bytes: u64,
    pub file: Option<String>,
    pub file_bytes: Option<u64>,
    /// Header fields, named as in the format's specification; `null` for flat and zero extents.
    pub header: Option<serde_json::Value>,
}

#[derive(Serialize)]
pub struct LinkInfo {
    pub depth: usize,
    pub path: String,
    pub format: crate::disk::LinkFormat,
    pub create_type: String,
    /// `CID` as 8 hex digits.
    pub cid: Option<String>,
    pub parent_cid: Option<String>,
    pub parent_hint: Option<String>,
    pub capacity_bytes: u64,
    pub extents: Vec<ExtentInfo>,
}

/// One line of `map`.
#[derive(Serialize)]
pub struct MapRecord<'a> {
    pub offset: u64,
    pub length: u64,
    pub state: crate::map::State,
    pub depth: u32,
    pub file: Option<&'a str>,
    pub file_offset: Option<u64>,
    pub compressed: bool,
}

impl<'a> MapRecord<'a> {
    pub fn new(disk: &'a Disk, r: &MapRange) -> MapRecord<'a> {
        MapRecord {
            offset: r.offset,
            length: r.length,
            state: r.state,
            depth: r.depth,
            file: r.file.and_then(|f| disk.files[f as usize].path.to_str()),
            file_offset: r.file_offset,
            compressed: r.compressed,
        }
    }
}

fn hex(c: Option<u32>) -> Option<String> {
    c.map(|c| format!("{c:08x}"))
}

fn extent_infos(disk: &Disk, link: &Link) -> Vec<ExtentInfo> {
    link.extents
        .iter()
        .map(|e| {
            let header = match &e.data {
                ExtentData::Sparse(s) => serde_json::to_value(&s.header).ok(),
                ExtentData::Cowd(c) => serde_json::to_value(&c.header).ok(),
                ExtentData::SeSparse(s) => serde_json::to_value(&s.header).ok().map(|mut v| {
                    if let (Some(obj), Ok(vol)) =
                        (v.as_object_mut(), serde_json::to_value(&s.volatile_header))
                    {
                        obj.insert("volatile".into(), vol);
                    }
                    v
                }),
                ExtentData::Flat(_) | ExtentData::Zero(_) => None,
            };
            let f = e.file.map(|f| &disk.files[f as usize]);
            ExtentInfo {
                kind: e.kind.as_str(),
                access: e.access.clone(),
                start_bytes: e.start,
                size_bytes: e.size,
                file: f.map(|f| f.path.to_string_lossy().into_owned()),
                file_bytes: f.map(|f| f.len),
                header,
            }
        })
        .collect()
}

/// Gather the `info` document; walks the whole map for the totals.
pub fn info(disk: &Disk) -> Result<Info> {
    let mut totals = Totals::default();
    for r in disk.map() {
        totals.add(&r?);
    }
    let top = &disk.links[0];
    Ok(Info {
        schema: INFO_SCHEMA,
        path: top.path.to_string_lossy().into_owned(),
        create_type: top.create_type.clone(),
        capacity_bytes: disk.capacity(),
        descriptor: top
            .descriptor
            .iter()
            .flat_map(|d| d.pairs())
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        extents: extent_infos(disk, top),
        chain: disk
            .links
            .iter()
            .enumerate()
            .map(|(depth, l)| LinkInfo {
                depth,
                path: l.path.to_string_lossy().into_owned(),
                format: l.format,
                create_type: l.create_type.clone(),
                cid: hex(l.cid),
                parent_cid: hex(l.parent_cid),
                parent_hint: l.parent_hint.clone(),
                capacity_bytes: l.capacity,
                extents: extent_infos(disk, l),
            })
            .collect(),
        totals,
    })
}
