//! A real VM whose `.vmx` has a bad byte is backed up (issue 19, item 1): VMware Workstation
//! wrote a CRLF `.vmx` with `.encoding = "UTF-8"` whose `sharedFolder0.hostPath` holds a
//! multibyte character cut in half and no closing quote, and runs the VM. `vrepo save` stores
//! it with a warning naming the line, and `vrepo build` gives the `.vmx` back byte for byte.
//! Only what cannot be saved is refused: a disk the damaged line hides.

mod common;
mod vrepo_support;

use std::fs;
use std::path::Path;
use vrepo_support::*;

/// The `.vmx` of the VM in `dir`, as Workstation writes it (CRLF), with line 13 damaged:
/// `日` (E6 97 A5) cut after two bytes, and no closing quote.
fn workstation_vmx(disk: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for line in [
        &b".encoding = \"UTF-8\""[..],
        b"config.version = \"8\"",
        b"virtualHW.version = \"19\"",
        b"displayName = \"ws\"",
        b"guestOS = \"otherlinux-64\"",
        b"uuid.bios = \"56 4d 0a 1b 2c 3d 4e 5f-60 71 82 93 a4 b5 c6 d7\"",
        b"nvram = \"vm.nvram\"",
        b"scsi0.present = \"TRUE\"",
        b"scsi0.virtualDev = \"pvscsi\"",
        b"scsi0:0.present = \"TRUE\"",
        &[b"scsi0:0.fileName = \"", disk, b"\""].concat(),
        b"sharedFolder0.present = \"TRUE\"",
        b"sharedFolder0.hostPath = \"C:\\Users\\me\\\xE6\x97",
        b"sharedFolder0.guestName = \"share\"",
    ] {
        v.extend_from_slice(line);
        v.extend_from_slice(b"\r\n");
    }
    v
}

#[test]
fn issue_19_a_vmx_with_a_cut_character_is_saved_with_a_warning_and_built_back() {
    let tmp = tempdir();
    let wa = make_vm(&tmp.path().join("ws"), 16, 2, 19);
    let vmx = workstation_vmx(b"disk.vmdk");
    fs::write(wa.join("vm.vmx"), &vmx).unwrap();
    let repo = Repo::init(&tmp.path().join("repo"), &[]);

    let o = repo.output(&["--json", "save", s(&wa)]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "save refused the VM: {err}");
    assert!(
        err.lines().any(|l| l.starts_with(
            "vrepo: warning: vm.vmx: line 13: \
                 sharedFolder0.hostPath: bytes not valid UTF-8"
        )),
        "the damaged line is reported: {err}"
    );
    let entry: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let name = entry["name"].as_str().unwrap().to_owned();
    let paths: Vec<&str> = entry["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        ["vm.vmx", "disk.vmdk", "vm.nvram"]
            .iter()
            .all(|p| paths.contains(p)),
        "{paths:?}"
    );
    assert_eq!(entry["vm"]["display_name"], "ws");

    let built = tmp.path().join("built");
    let o = repo.output(&["build", &name, s(&built)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::read(built.join("vm.vmx")).unwrap(),
        vmx,
        "the .vmx is built back byte for byte"
    );
    assert_same_files(&wa, &built, "build of the damaged VM");

    // A second save of the same working area is incremental and warns again.
    let o = repo.output(&["save", s(&wa)]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 13: sharedFolder0.hostPath"));
    assert_eq!(repo.list()[1].2, "incremental");
}

#[test]
fn a_damaged_disk_name_is_refused_not_saved_without_its_disk() {
    let tmp = tempdir();
    let wa = make_vm(&tmp.path().join("ws"), 16, 1, 20);
    // The disk's fileName is the damaged line: it names no file, so there is no chain to
    // follow and the VM cannot be saved whole.
    fs::write(wa.join("vm.vmx"), workstation_vmx(b"disk\xE6.vmdk")).unwrap();
    let repo = Repo::init(&tmp.path().join("repo"), &[]);
    let err = repo.fails(&["save", s(&wa)], 4);
    assert!(
        err.contains("disk scsi0:0") && err.contains("missing"),
        "{err}"
    );
    assert!(repo.names().is_empty());
    assert!(Path::new(&wa.join("disk.vmdk")).exists());
}
