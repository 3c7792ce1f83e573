//! The snapshot tree of a `.vmsd` (snapshot database), same dictionary syntax as the `.vmx`.
//!
//! `snapshotN.*` keys describe one snapshot each; N is only the position in the file, the tree
//! is made by `uid` and `parent`. `snapshot.current` is the uid the VM runs from.
//! `createTimeHigh`/`createTimeLow` make microseconds since the Unix epoch as
//! `high * 2^32 + (low as u32)`: the low half is written as a *signed* 32-bit number
//! (`vmdk-vmx-formats.md` §3.3, checked against a known date).

use crate::document::Document;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotTree {
    /// `snapshot.lastUID`.
    pub last_uid: Option<u64>,
    /// `snapshot.current`: the uid of the snapshot the VM currently runs from.
    pub current_uid: Option<u64>,
    /// `snapshot.numSnapshots` as written (the list below is what the file holds).
    pub num_snapshots: Option<u64>,
    /// In file order (`snapshot0`, `snapshot1`, ...).
    pub snapshots: Vec<Snapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// N of `snapshotN`.
    pub index: u32,
    pub uid: Option<u64>,
    /// The parent's uid; `None` for a root.
    pub parent_uid: Option<u64>,
    /// Uids of the snapshots whose parent this is, in file order.
    pub children: Vec<u64>,
    /// `filename`: the `.vmsn` state file.
    pub file_name: Option<String>,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// Microseconds since the Unix epoch.
    pub create_time_us: Option<i64>,
    /// The same as RFC 3339 UTC, `2022-11-28T15:24:12.123456Z`.
    pub create_time: Option<String>,
    /// This is `snapshot.current`.
    pub is_current: bool,
    /// The disks as of the snapshot (each becomes the parent of the next delta).
    pub disks: Vec<SnapshotDisk>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotDisk {
    /// M of `diskM`.
    pub index: u32,
    /// `node`: the device, `scsi0:0`.
    pub node: Option<String>,
    pub file_name: Option<String>,
}

/// `prefix` followed by a small decimal number then a dot: `snapshot12.uid` → 12.
fn numbered(key: &str, prefix: &str) -> Option<(u32, String)> {
    let lower = key.to_ascii_lowercase();
    let rest = lower.strip_prefix(prefix)?;
    let (n, attr) = rest.split_once('.')?;
    if n.is_empty() || n.len() > 6 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((n.parse().ok()?, attr.to_string()))
}

fn num(v: Option<&str>) -> Option<u64> {
    v.and_then(|v| v.trim().parse().ok())
}

/// Microseconds since the epoch from the two halves; `None` if they do not fit.
pub fn create_time_us(high: i64, low: i64) -> Option<i64> {
    let low = low as u32 as i64;
    high.checked_mul(1 << 32)?.checked_add(low)
}

/// RFC 3339 UTC with microseconds (civil-from-days, after H. Hinnant's algorithm).
pub fn rfc3339_from_us(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

impl SnapshotTree {
    pub fn from_document(doc: &Document) -> SnapshotTree {
        // One pass: snapshot index -> its disk indexes.
        let mut indexes: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (_, key, _) in doc.pairs() {
            if let Some((n, attr)) = numbered(key, "snapshot") {
                let disks = indexes.entry(n).or_default();
                if let Some((d, _)) = numbered(&attr, "disk") {
                    disks.insert(d);
                }
            }
        }
        let current_uid = num(doc.get("snapshot.current"));
        let mut snapshots: Vec<Snapshot> = indexes
            .into_iter()
            .map(|(n, disk_indexes)| {
                let p = format!("snapshot{n}.");
                let attr = |a: &str| doc.get(&format!("{p}{a}"));
                let time = match (attr("createTimeHigh"), attr("createTimeLow")) {
                    (Some(h), Some(l)) => match (h.trim().parse(), l.trim().parse()) {
                        (Ok(h), Ok(l)) => create_time_us(h, l),
                        _ => None,
                    },
                    _ => None,
                };
                let uid = num(attr("uid"));
                Snapshot {
                    index: n,
                    uid,
                    parent_uid: num(attr("parent")),
                    children: Vec::new(),
                    file_name: attr("filename").map(str::to_string),
                    display_name: attr("displayName").map(str::to_string),
                    description: attr("description").map(str::to_string),
                    create_time_us: time,
                    create_time: time.map(rfc3339_from_us),
                    is_current: uid.is_some() && uid == current_uid,
                    disks: disk_indexes
                        .into_iter()
                        .map(|d| SnapshotDisk {
                            index: d,
                            node: attr(&format!("disk{d}.node")).map(str::to_string),
                            file_name: attr(&format!("disk{d}.fileName")).map(str::to_string),
                        })
                        .collect(),
                }
            })
            .collect();
        let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
        for s in &snapshots {
            if let (Some(uid), Some(parent)) = (s.uid, s.parent_uid) {
                children.entry(parent).or_default().push(uid);
            }
        }
        for s in &mut snapshots {
            if let Some(c) = s.uid.and_then(|uid| children.get(&uid)) {
                s.children = c.clone();
            }
        }
        SnapshotTree {
            last_uid: num(doc.get("snapshot.lastUID")),
            current_uid,
            num_snapshots: num(doc.get("snapshot.numSnapshots")),
            snapshots,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn create_time_of_the_reference_example() {
        // vmdk-vmx-formats.md §3.3: (388745, 1991180826) is 2022-11-28 15:24:12 UTC.
        let us = create_time_us(388745, 1991180826).unwrap();
        assert!(rfc3339_from_us(us).starts_with("2022-11-28T15:24:12."));
        // The low half written as a negative int32 is its unsigned value.
        assert_eq!(
            create_time_us(1, -1).unwrap(),
            (1i64 << 32) + u32::MAX as i64
        );
        assert_eq!(rfc3339_from_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_from_us(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(create_time_us(i64::MAX, 0), None);
    }

    #[test]
    fn tree_from_uids_not_positions() {
        let doc = Document::parse(
            Path::new("t.vmsd"),
            b"snapshot.lastUID = \"3\"\nsnapshot.current = \"3\"\n\
              snapshot1.uid = \"3\"\nsnapshot1.parent = \"1\"\nsnapshot1.disk0.fileName = \"d-000001.vmdk\"\n\
              snapshot1.disk0.node = \"scsi0:0\"\nsnapshot0.uid = \"1\"\nsnapshot0.filename = \"a.vmsn\"\n\
              snapshot0.disk0.fileName = \"d.vmdk\"\nsnapshot0.disk1.fileName = \"e.vmdk\"\n",
        )
        .unwrap();
        let t = SnapshotTree::from_document(&doc);
        assert_eq!(t.snapshots.len(), 2);
        assert_eq!(t.snapshots[0].uid, Some(1));
        assert_eq!(t.snapshots[0].children, [3]);
        assert_eq!(t.snapshots[0].disks.len(), 2);
        assert_eq!(t.snapshots[1].parent_uid, Some(1));
        assert!(t.snapshots[1].is_current && !t.snapshots[0].is_current);
        assert_eq!(t.snapshots[1].disks[0].node.as_deref(), Some("scsi0:0"));
    }
}
