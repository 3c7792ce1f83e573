//! The hand-written corpus (`tests/corpus/`, written from the syntax documented in
//! `vmdk-vmx-formats.md` §3): every file reads back byte for byte, survives edits that touch one
//! line only, and gives the structured view we expect.

use std::path::{Path, PathBuf};
use vmx_parse::{Document, SnapshotTree, VmConfig};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn open(name: &str) -> Document {
    Document::open(&corpus().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn all_files() -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(v.len() >= 15, "corpus is complete");
    v
}

#[test]
fn every_file_round_trips_byte_for_byte() {
    for p in all_files() {
        let bytes = std::fs::read(&p).unwrap();
        let doc = Document::parse(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc.to_bytes(), bytes, "{}", p.display());
    }
}

/// Setting every key to a new value, then back, changes exactly one line each time and
/// restores the original bytes.
#[test]
fn set_and_reset_every_key_moves_nothing_else() {
    for p in all_files() {
        let bytes = std::fs::read(&p).unwrap();
        let mut doc = Document::parse(&p, &bytes).unwrap();
        let keys: Vec<(String, String)> = doc
            .pairs()
            .map(|(_, k, v)| (k.to_string(), v.to_string()))
            .filter(|(k, _)| !k.eq_ignore_ascii_case(".encoding"))
            .collect();
        for (k, _) in &keys {
            let original = doc.get(k).unwrap().to_string();
            let before = doc.to_bytes();
            let target = doc.line_of(k).unwrap();
            // No spaces for unquoted values, so they stay unquoted and the reset restores them.
            let new = match doc.lines()[target].kind() {
                vmx_parse::LineKind::Pair(p) if !p.quoted => "new|\"value\"",
                _ => "new | \"value\"",
            };
            doc.set(k, new).unwrap();
            let after = doc.to_bytes();
            let (b, a): (Vec<_>, Vec<_>) = (
                before.split(|&c| c == b'\n').collect(),
                after.split(|&c| c == b'\n').collect(),
            );
            assert_eq!(b.len(), a.len(), "{}: {k}", p.display());
            let changed: Vec<usize> = (0..b.len()).filter(|&i| b[i] != a[i]).collect();
            assert_eq!(changed, [target], "{}: {k}", p.display());
            let reread = Document::parse(&p, &after).unwrap();
            assert_eq!(reread.get(k), Some(new));
            doc.set(k, &original).unwrap();
        }
        // Values set back through decode/encode may spell escapes differently
        // (`|45` becomes `E`), and a set writes a missing closing quote; everything else is
        // byte-identical.
        let expected = match p.file_name().and_then(|n| n.to_str()) {
            Some("odd-lines.vmx") => String::from_utf8(bytes.clone())
                .unwrap()
                .replace("\"unterminated quote\n", "\"unterminated quote\"\n")
                .into_bytes(),
            _ => bytes.clone(),
        };
        if !bytes.contains(&b'|') {
            assert_eq!(doc.to_bytes(), expected, "{}", p.display());
        }
    }
}

#[test]
fn esxi8() {
    let doc = open("esxi8.vmx");
    let vm = VmConfig::from_document(&doc);
    assert_eq!(vm.display_name.as_deref(), Some("web01"));
    assert_eq!(vm.guest_os.as_deref(), Some("debian12-64"));
    assert_eq!(vm.memory_mb, Some(8192), "memSize in any case");
    assert_eq!(vm.num_vcpus, Some(4));
    assert_eq!(vm.firmware.as_deref(), Some("efi"));
    assert_eq!(vm.hardware_version.as_deref(), Some("20"));
    assert_eq!(
        vm.uuid.bios.as_deref(),
        Some("42 1a 6b 2c 8d 3e 4f 50-61 72 83 94 a5 b6 c7 d8")
    );
    assert!(vm.uuid.vc.is_some() && vm.uuid.location.is_some());
    assert_eq!(vm.disks.len(), 2);
    assert_eq!(vm.disks[0].node, "scsi0:0");
    assert_eq!(vm.disks[0].controller_type.as_deref(), Some("pvscsi"));
    assert_eq!(vm.disks[1].file_name, "data/web01_1.vmdk");
    assert!(vm.disks[1].independent && !vm.disks[0].independent);
    assert_eq!(vm.cdroms.len(), 1);
    assert_eq!(vm.cdroms[0].bus, "sata");
    assert_eq!(vm.cdroms[0].start_connected, Some(false));
    assert_eq!(vm.nics[0].address_type.as_deref(), Some("vpx"));
    assert_eq!(vm.nics[0].mac.as_deref(), Some("00:50:56:9a:12:34"));
    assert_eq!(vm.suspend_state, None);
    assert_eq!(doc.get("checkpoint.vmState.readOnly"), Some("FALSE"));
    assert!(vm.swap_file.unwrap().starts_with("/vmfs/volumes/"));
    assert_eq!(vm.nvram.as_deref(), Some("web01.nvram"));
    assert!(doc.duplicates().is_empty() && doc.warnings().is_empty());
}

#[test]
fn workstation_and_its_vmsd() {
    let doc = open("workstation.vmx");
    assert_eq!(doc.lines()[0].text(), "#!/usr/bin/vmware");
    let vm = VmConfig::from_document(&doc);
    assert_eq!(
        vm.suspend_state.as_deref(),
        Some("Ubuntu 64-bit-d1b2c3e4.vmss")
    );
    assert_eq!(
        vm.extended_config_file.as_deref(),
        Some("Ubuntu 64-bit.vmxf")
    );
    assert_eq!(vm.disks.len(), 1, "the cdrom-raw is not a disk");
    assert_eq!(vm.cdroms[0].device_type, "cdrom-raw");
    assert_eq!(vm.nics[0].mac.as_deref(), Some("00:0c:29:5e:7a:1b"));

    let t = SnapshotTree::from_document(&open("workstation.vmsd"));
    assert_eq!(t.current_uid, Some(2));
    assert_eq!(t.snapshots.len(), 2);
    let s0 = &t.snapshots[0];
    assert_eq!(s0.description.as_deref(), Some("before \"apt upgrade\""));
    assert_eq!(s0.children, [2]);
    assert!(s0
        .create_time
        .as_deref()
        .unwrap()
        .starts_with("2022-11-28T15:24:12."));
    let s1 = &t.snapshots[1];
    assert!(s1.is_current);
    // A negative low half is read as u32.
    assert_eq!(
        s1.create_time_us,
        Some(389012 * (1i64 << 32) + (-1250036710i64 as u32 as i64))
    );
    assert_eq!(
        s1.disks[0].file_name.as_deref(),
        Some("Ubuntu 64-bit-000001.vmdk")
    );
}

#[test]
fn esxi_vmsd_with_a_branch() {
    let t = SnapshotTree::from_document(&open("esxi-4snap.vmsd"));
    assert_eq!(
        (t.last_uid, t.current_uid, t.num_snapshots),
        (Some(4), Some(4), Some(4))
    );
    let uids: Vec<_> = t.snapshots.iter().map(|s| s.uid.unwrap()).collect();
    assert_eq!(uids, [1, 2, 3, 4]);
    assert_eq!(t.snapshots[1].children, [3, 4]);
    assert_eq!(t.snapshots[0].parent_uid, None);
    assert_eq!(t.snapshots[3].parent_uid, Some(2));
    assert!(t.snapshots[3].is_current);
    assert_eq!(
        t.snapshots[3].file_name.as_deref(),
        Some("test flo-Snapshot4.vmsn")
    );
}

#[test]
fn fusion_gsx_and_case() {
    let vm = VmConfig::from_document(&open("fusion.vmx"));
    assert_eq!(vm.disks[0].bus, "nvme");
    assert_eq!(vm.disks[0].file_name, "Virtual Disk.vmdk");
    assert_eq!(vm.nics[0].mac.as_deref(), Some("00:50:56:3f:01:02"));

    let doc = open("gsx3.vmx");
    assert_eq!(doc.encoding().name(), "UTF-8");
    assert_eq!(doc.lines()[1].eol(), vmx_parse::Eol::CrLf);
    let vm = VmConfig::from_document(&doc);
    assert_eq!(vm.config_version.as_deref(), Some("7"));
    assert_eq!(vm.disks[0].node, "ide0:0");
    assert_eq!(vm.disks[0].mode.as_deref(), Some("undoable"));
    assert_eq!(vm.cdroms[0].file_name.as_deref(), Some("/dev/cdrom"));
    assert_eq!(vm.nics.len(), 1, "Ethernet0 in any case");
    assert_eq!(vm.memory_mb, Some(256));

    let vm = VmConfig::from_document(&open("case-insensitive.vmx"));
    assert_eq!(vm.display_name.as_deref(), Some("Fedora11"));
    assert_eq!(
        vm.disks[0].node, "scsi0:0",
        "nodes are spelled in lower case"
    );
    assert_eq!(vm.disks[0].file_name, "FEDORA11.VMDK");
    assert!(vm.disks[0].independent);
    assert_eq!(vm.extended_config_file.as_deref(), Some("FEDORA11.VMXF"));
}

#[test]
fn escapes_duplicates_unquoted() {
    let doc = open("annotation.vmx");
    assert_eq!(
        doc.get("annotation"),
        Some("Some |text| to test the \"escaping\": ||\"\"||\"| Escaped!")
    );

    let doc = open("duplicates.vmx");
    assert_eq!(doc.get("memsize"), Some("4096"));
    assert_eq!(doc.get("displayName"), Some("second name"));
    let d = doc.duplicates();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].key.as_str(), &d[0].lines[..]),
        ("displayname", &[2, 5][..])
    );
    assert_eq!(
        (d[1].key.as_str(), &d[1].lines[..]),
        ("memsize", &[3, 4, 7][..])
    );

    let doc = open("unquoted.vmx");
    assert_eq!(doc.get("sata0.present"), Some("TRUE"));
    assert_eq!(doc.get("memsize"), Some("1024"));
    assert_eq!(doc.get("numvcpus"), Some("2"));
    assert_eq!(doc.get("annotation"), Some("built by packer"));
    assert!(doc.warnings().is_empty());
    let mut doc = doc;
    doc.set("memsize", "2048").unwrap();
    doc.set("guestOS", "debian 12").unwrap();
    doc.set("displayName", " padded ").unwrap();
    doc.set("annotation", " padded ").unwrap();
    let text = String::from_utf8(doc.to_bytes()).unwrap();
    assert!(text.contains("\nmemsize=2048\n"), "unquoted stays unquoted");
    assert!(
        text.contains("\nguestOS = debian 12\n"),
        "spaces inside need no quotes"
    );
    assert!(text.contains("\ndisplayName = \" padded \"\n"));
    assert!(
        text.contains("\nannotation = \" padded \"\n"),
        "quoted when outer spaces would be lost"
    );
}

#[test]
fn non_ascii_names() {
    let doc = open("utf8-name.vmx");
    assert_eq!(
        doc.get("displayName"),
        Some("Serveur de fichiers – Zürich 日本語")
    );
    let doc = open("windows-1252.vmx");
    assert_eq!(doc.encoding().name(), "windows-1252");
    assert_eq!(doc.get("displayName"), Some("Café « Garçon » €"));
    assert_eq!(
        VmConfig::from_document(&doc).disks[0].file_name,
        "Café.vmdk"
    );
    let doc = open("shift_jis.vmx");
    assert_eq!(doc.encoding().name(), "Shift_JIS");
    assert_eq!(doc.get("displayName"), Some("テストポ"));
}

#[test]
fn odd_lines_are_kept_and_reported() {
    let doc = open("odd-lines.vmx");
    let w: Vec<usize> = doc.warnings().iter().map(|w| w.line).collect();
    assert_eq!(w, [3, 4, 5, 7]);
    assert_eq!(
        doc.get("annotation"),
        Some("unterminated quote"),
        "an unterminated value is read to the end of its line"
    );
    assert_eq!(doc.get("memsize"), Some("128"));
    assert_eq!(doc.get("numvcpus"), Some("1"));
    let doc = open("no-final-newline.vmx");
    assert_eq!(doc.lines().last().unwrap().eol(), vmx_parse::Eol::None);
    assert_eq!(doc.get("memsize"), Some("64"));
}
