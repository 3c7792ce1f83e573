//! VMware's `workingDir` layout (issue 19, item 2): the `.vmx` and the base disk in the VM's
//! folder, the snapshot links in `snapshots/`, each naming its parent `../disk.vmdk`.
//!
//! Before the fix `vrepo save` exited 0 and left the base disk out of the entry (the inventory
//! listed it as `snapshots/../disk.vmdk`, which save skipped as "a name vrepo cannot store"),
//! so the entry could not rebuild the VM. Here: both links are stored, the build gives every
//! file back byte for byte and the same guest contents; a parent that climbs out of the VM's
//! folder is still refused (exit 7); a chain file vrepo cannot store fails the save, naming it.

mod common;
mod vrepo_support;

use common::{fresh_bin, qemu_raw, run};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use vrepo_support::*;

const CHILD: &str = "snapshots/disk-000001.vmdk";

/// A VM in `dir` laid out as VMware does with `workingDir = "snapshots"`: `vm.vmx`, `vm.nvram`
/// and the base `disk.vmdk` in the folder; the running link `snapshots/disk-000001.vmdk`
/// (parent `../disk.vmdk`) and a snapshot state in `snapshots/`; the `.vmx` names the link.
fn make_working_dir_vm(dir: &Path, parent_hint: &str, seed: u64) -> PathBuf {
    let wa = make_vm(dir, 16, 2, seed);
    let snaps = wa.join("snapshots");
    fs::create_dir(&snaps).unwrap();
    qemu_child(&snaps, parent_hint, "disk-000001.vmdk");
    guest_write(&wa.join(CHILD), MIB, MIB, seed + 7);
    write_vmx(&wa, CHILD, "working dir");
    let mut vmx = fs::read_to_string(wa.join("vm.vmx")).unwrap();
    vmx.push_str("workingDir = \"snapshots\"\n");
    fs::write(wa.join("vm.vmx"), vmx).unwrap();
    fs::write(snaps.join("vm-Snapshot1.vmsn"), rand_bytes(seed + 9, 5000)).unwrap();
    wa
}

fn hint_of(link: &Path) -> String {
    let text = String::from_utf8_lossy(&fs::read(link).unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("parentFileNameHint"))
        .expect("a child link names its parent");
    line.split('"').nth(1).unwrap().to_owned()
}

fn vmdk_parse_bin() -> PathBuf {
    fresh_bin("vmdk-parse", "vmdk-parse")
}

fn paths(entry: &Value, key: &str) -> Vec<String> {
    entry[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_working_dir_vm_is_saved_whole_and_builds_back() {
    let t = tempdir();
    let wa = make_working_dir_vm(&t.path().join("vm"), "../disk.vmdk", 1);
    assert_eq!(
        hint_of(&wa.join(CHILD)),
        "../disk.vmdk",
        "the layout under test"
    );
    let state = keep(&wa, &t.path().join("state"));

    // vmx-parse lists the base once, by its plain name, and the workingDir's files.
    let files = run(Command::new(fresh_bin("vmx-parse", "vmx-parse"))
        .args(["files", "vm.vmx"])
        .current_dir(&wa))
    .stdout;
    let listed: Vec<Value> = String::from_utf8(files)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |p: &str| listed.iter().find(|r| r["path"] == p);
    let base = find("disk.vmdk").expect("the base is listed as disk.vmdk");
    assert_eq!(base["depth"], 1, "{base}");
    assert_eq!(base["disk"], "scsi0:0");
    assert_eq!(find(CHILD).expect("the leaf")["depth"], 0);
    assert!(find("snapshots/vm-Snapshot1.vmsn").is_some(), "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|r| !r["path"].as_str().unwrap().contains("..")),
        "{listed:?}"
    );

    let repo = Repo::init(&t.path().join("repo"), &[]);
    let e = repo.save(&wa, &[]);
    let stored = paths(&e, "files");
    for want in [
        "disk.vmdk",
        CHILD,
        "vm.vmx",
        "vm.nvram",
        "snapshots/vm-Snapshot1.vmsn",
    ] {
        assert!(
            stored.iter().any(|p| p == want),
            "{want} stored: {stored:?}"
        );
    }
    let skipped = paths(&e, "skipped");
    assert!(
        skipped.iter().all(|p| !p.ends_with(".vmdk")),
        "no disk file skipped: {skipped:?}"
    );

    // The build gives every file back, and the disk reads as the original.
    let dest = t.path().join("built");
    repo.build(e["name"].as_str().unwrap(), &dest, &[]);
    assert_same_files(&state, &dest, "working-dir VM");
    let want = qemu_raw(&state.join(CHILD), t.path());
    assert_eq!(qemu_raw(&dest.join(CHILD), t.path()), want, "qemu-img");
    let cat = run(Command::new(vmdk_parse_bin())
        .arg("--root")
        .arg(&dest)
        .arg("cat")
        .arg(dest.join(CHILD)))
    .stdout;
    assert!(cat == want, "vmdk-parse cat --root of the built disk");

    // An incremental save after a change stores it too, and builds back.
    guest_write(&wa.join(CHILD), 3 * MIB, MIB, 77);
    let state2 = keep(&wa, &t.path().join("state2"));
    let e2 = repo.save(&wa, &[]);
    assert_builds(&repo, e2["name"].as_str().unwrap(), &state2, &dest);
}

#[test]
fn a_parent_leaving_the_vm_folder_is_still_refused() {
    let t = tempdir();
    // `outside.vmdk` beside the VM's folder: `snapshots/../../outside.vmdk` from the link.
    make_vm(&t.path().join("elsewhere"), 16, 1, 5);
    fs::rename(
        t.path().join("elsewhere/disk.vmdk"),
        t.path().join("outside.vmdk"),
    )
    .unwrap();
    let wa = make_working_dir_vm(&t.path().join("vm"), "../../outside.vmdk", 2);
    assert_eq!(hint_of(&wa.join(CHILD)), "../../outside.vmdk");

    let repo = Repo::init(&t.path().join("repo"), &[]);
    let err = repo.fails(&["save", s(&wa)], 7);
    assert!(err.contains("../../outside.vmdk"), "names the path: {err}");
    assert!(err.contains("leaves the folder"), "{err}");
    assert!(
        err.contains("vrepo saves only VMs whose files are inside the working area"),
        "{err}"
    );
    assert!(repo.names().is_empty(), "nothing saved");

    // vmx-parse files and vmdk-parse --root DIR refuse it the same way.
    let o = Command::new(fresh_bin("vmx-parse", "vmx-parse"))
        .args(["files", "vm.vmx"])
        .current_dir(&wa)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let o = Command::new(vmdk_parse_bin())
        .arg("--root")
        .arg(&wa)
        .arg("info")
        .arg(wa.join(CHILD))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("vmdk-parse: ") && err.contains("leaves the folder"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_chain_file_vrepo_cannot_store_fails_the_save_naming_it() {
    let t = tempdir();
    let wa = make_working_dir_vm(&t.path().join("vm"), "../disk.vmdk", 3);
    // The base becomes a symbolic link to a file in the folder: vrepo stores regular files
    // only, so it cannot store `disk.vmdk` as such. It used to skip it and exit 0.
    fs::rename(wa.join("disk.vmdk"), wa.join("base-data.vmdk")).unwrap();
    std::os::unix::fs::symlink("base-data.vmdk", wa.join("disk.vmdk")).unwrap();

    let repo = Repo::init(&t.path().join("repo"), &[]);
    let err = repo.fails(&["save", s(&wa)], 7);
    assert!(
        err.starts_with("vrepo: disk.vmdk: "),
        "names the file: {err}"
    );
    assert!(
        err.contains("scsi0:0") && err.contains("not a regular file"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(repo.names().is_empty(), "nothing saved");
}
