//! `vmx-parse files`: the inventory of a VM folder built with qemu-img snapshot chains, the
//! path policy, missing files, lock folders, and the time for a 30-link chain.

use assert_cmd::Command;
use serde::Deserialize;
use std::fs;
use std::path::Path;
use std::process::Command as Std;
use std::time::{Duration, Instant};

fn vx() -> Command {
    Command::cargo_bin("vmx-parse").expect("binary built")
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Record {
    path: String,
    role: String,
    size_bytes: Option<u64>,
    exists: Option<bool>,
    inside_folder: bool,
    disk: Option<String>,
    depth: Option<u32>,
    problem: Option<String>,
}

/// Run qemu-img in `dir`, so the names it writes into descriptors are relative.
fn qemu_img(dir: &Path, args: &[&str]) {
    let st = Std::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .status()
        .expect("qemu-img runs");
    assert!(st.success(), "qemu-img {args:?}");
}

/// `name.vmdk` then `name-000001.vmdk` ... `name-00000N.vmdk`, each over the previous.
fn chain(dir: &Path, name: &str, links: usize) -> String {
    qemu_img(
        dir,
        &["create", "-q", "-f", "vmdk", &format!("{name}.vmdk"), "1M"],
    );
    let mut parent = format!("{name}.vmdk");
    for i in 1..=links {
        let child = format!("{name}-{i:06}.vmdk");
        qemu_img(
            dir,
            &[
                "create", "-q", "-f", "vmdk", "-b", &parent, "-F", "vmdk", &child,
            ],
        );
        parent = child;
    }
    parent
}

fn files(vmx: &Path, extra: &[&str]) -> (Vec<Record>, std::process::Output) {
    let out = vx().arg("files").args(extra).arg(vmx).output().unwrap();
    let recs = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("record matches the pinned schema"))
        .collect();
    (recs, out)
}

fn find<'a>(recs: &'a [Record], path_end: &str) -> &'a Record {
    recs.iter()
        .find(|r| r.path.ends_with(path_end))
        .unwrap_or_else(|| panic!("no record for {path_end}: {recs:#?}"))
}

#[test]
fn a_whole_vm_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let leaf = chain(dir, "disk", 2);
    fs::create_dir(dir.join("data")).unwrap();
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            "data/second.vmdk",
            "1M",
        ],
    );
    let vmx = dir.join("vm.vmx");
    fs::write(
        &vmx,
        format!(
            ".encoding = \"UTF-8\"\ndisplayName = \"vm\"\nnvram = \"vm.nvram\"\n\
             extendedConfigFile = \"vm.vmxf\"\ncheckpoint.vmState = \"vm.vmss\"\n\
             sched.swap.derivedName = \"/vmfs/volumes/5f1b/vm/vm-1.vswp\"\n\
             scsi0:0.fileName = \"{leaf}\"\nscsi0:1.fileName = \"data/second.vmdk\"\n\
             scsi0:2.fileName = \"gone.vmdk\"\nide1:0.deviceType = \"cdrom-image\"\n\
             ide1:0.fileName = \"/iso/x.iso\"\n"
        ),
    )
    .unwrap();
    fs::write(
        dir.join("vm.vmsd"),
        ".encoding = \"UTF-8\"\nsnapshot.current = \"1\"\nsnapshot0.uid = \"1\"\n\
         snapshot0.filename = \"vm-Snapshot1.vmsn\"\nsnapshot0.disk0.fileName = \"disk.vmdk\"\n\
         snapshot0.disk0.node = \"scsi0:0\"\n",
    )
    .unwrap();
    for f in [
        "vm.nvram",
        "vm.vmss",
        "vm-Snapshot1.vmsn",
        "vm-Snapshot1.vmem",
        "vmware.log",
        "vmware-1.log",
        "vmx-vm-42.vswp",
        "notes.txt",
    ] {
        fs::write(dir.join(f), b"x").unwrap();
    }
    fs::create_dir(dir.join("vm.vmx.lck")).unwrap();

    let (recs, out) = files(&vmx, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vm.vmx.lck: the VM may be running"),
        "locks are reported: {err}"
    );

    let r = &recs[0];
    assert_eq!((r.role.as_str(), r.exists), ("config", Some(true)));
    assert!(r.path.ends_with("vm.vmx"));
    // The chain, leaf first: qemu-img makes monolithicSparse links (their own extent).
    for (depth, name) in ["disk-000002.vmdk", "disk-000001.vmdk", "disk.vmdk"]
        .iter()
        .enumerate()
    {
        let r = find(&recs, &format!("/{name}"));
        assert_eq!(r.role, "disk-extent", "{r:?}");
        assert_eq!(r.depth, Some(depth as u32));
        assert_eq!(r.disk.as_deref(), Some("scsi0:0"));
        assert!(r.inside_folder && r.exists == Some(true) && r.size_bytes.unwrap() > 0);
    }
    let r = find(&recs, "data/second.vmdk");
    assert_eq!((r.role.as_str(), r.depth), ("disk-descriptor", Some(0)));
    let r = find(&recs, "data/second-flat.vmdk");
    assert_eq!(
        (r.role.as_str(), r.size_bytes),
        ("disk-extent", Some(1 << 20))
    );
    assert_eq!(r.disk.as_deref(), Some("scsi0:1"));
    let r = find(&recs, "/gone.vmdk");
    assert_eq!((r.role.as_str(), r.exists), ("disk-link", Some(false)));
    assert!(r.problem.is_some());
    let r = find(&recs, "/vm.vmxf");
    assert_eq!((r.role.as_str(), r.exists), ("vmxf", Some(false)));
    assert!(r.inside_folder, "a missing file in the folder is inside it");
    assert!(find(&recs, "/gone.vmdk").inside_folder);
    let r = find(&recs, "vm-1.vswp");
    assert_eq!(r.exists, None, "outside the folder: not looked at");
    assert!(!r.inside_folder);
    assert_eq!(r.path, "/vmfs/volumes/5f1b/vm/vm-1.vswp");
    for (name, role) in [
        ("/vm.nvram", "nvram"),
        ("/vm.vmss", "suspend"),
        ("/vm.vmsd", "vmsd"),
        ("/vm-Snapshot1.vmsn", "snapshot-state"),
        ("/vm-Snapshot1.vmem", "memory"),
        ("/vmware.log", "log"),
        ("/vmware-1.log", "log"),
        ("/vmx-vm-42.vswp", "swap"),
        ("/notes.txt", "other"),
        ("/vm.vmx.lck", "lock"),
    ] {
        let r = find(&recs, name);
        assert_eq!(r.role, role, "{name}");
        assert!(r.inside_folder && r.exists == Some(true), "{name}");
    }
    assert_eq!(find(&recs, "/vm.vmx.lck").size_bytes, None, "a folder");
    let mut paths: Vec<_> = recs.iter().map(|r| r.path.clone()).collect();
    let n = paths.len();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), n, "each file once");
    assert!(
        !recs.iter().any(|r| r.path.ends_with("x.iso")),
        "CD-ROMs are not VM files"
    );
}

#[test]
fn disk_paths_leaving_the_folder_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let vmdir = tmp.path().join("vm");
    let other = tmp.path().join("other");
    fs::create_dir_all(&vmdir).unwrap();
    fs::create_dir_all(&other).unwrap();
    qemu_img(&other, &["create", "-q", "-f", "vmdk", "base.vmdk", "1M"]);
    let vmx = vmdir.join("vm.vmx");
    fs::write(&vmx, "scsi0:0.fileName = \"../other/base.vmdk\"\n").unwrap();
    let (recs, out) = files(&vmx, &[]);
    assert_eq!(out.status.code(), Some(7));
    assert!(recs.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("leaves the VM's folder") && err.lines().count() == 1,
        "{err}"
    );

    let (recs, out) = files(&vmx, &["--allow-outside"]);
    assert!(out.status.success());
    let r = find(&recs, "base.vmdk");
    assert!(!r.inside_folder && r.exists == Some(true));

    // A link inside the folder whose parent is outside: vmdk-parse's policy refuses it too.
    qemu_img(
        &vmdir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "../other/base.vmdk",
            "-F",
            "vmdk",
            "child.vmdk",
        ],
    );
    fs::write(&vmx, "scsi0:0.fileName = \"child.vmdk\"\n").unwrap();
    let (_, out) = files(&vmx, &[]);
    assert_eq!(out.status.code(), Some(7));
    // A symbolic link leading out is refused like `..`.
    std::os::unix::fs::symlink(other.join("base.vmdk"), vmdir.join("link.vmdk")).unwrap();
    fs::write(&vmx, "scsi0:0.fileName = \"link.vmdk\"\n").unwrap();
    let (_, out) = files(&vmx, &[]);
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn a_broken_chain_is_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let leaf = chain(dir, "d", 2);
    fs::remove_file(dir.join("d-000001.vmdk")).unwrap();
    let vmx = dir.join("vm.vmx");
    fs::write(&vmx, format!("scsi0:0.fileName = \"{leaf}\"\n")).unwrap();
    let (recs, out) = files(&vmx, &[]);
    assert!(out.status.success());
    let r = find(&recs, &format!("/{leaf}"));
    assert_eq!(
        (r.role.as_str(), r.depth, r.exists),
        ("disk-link", Some(0), Some(true))
    );
    assert!(r.problem.as_deref().unwrap().contains("d-000001.vmdk"));
    let r = find(&recs, "/d-000001.vmdk");
    assert_eq!(r.exists, Some(false));
    // The orphaned base is still listed, as a file of the folder.
    assert_eq!(find(&recs, "/d.vmdk").role, "other");

    // A descriptor whose extent is missing.
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            "f.vmdk",
            "1M",
        ],
    );
    fs::remove_file(dir.join("f-flat.vmdk")).unwrap();
    fs::write(&vmx, "scsi0:0.fileName = \"f.vmdk\"\n").unwrap();
    let (recs, out) = files(&vmx, &[]);
    assert!(out.status.success());
    let r = find(&recs, "/f-flat.vmdk");
    assert_eq!((r.role.as_str(), r.exists), ("disk-extent", Some(false)));
    assert_eq!(r.disk.as_deref(), Some("scsi0:0"));
}

#[test]
fn thirty_link_chain_is_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let leaf = chain(dir, "big", 30);
    let vmx = dir.join("vm.vmx");
    fs::write(&vmx, format!("scsi0:0.fileName = \"{leaf}\"\n")).unwrap();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let (recs, out) = files(&vmx, &[]);
        best = best.min(t.elapsed());
        assert!(out.status.success());
        let depths: Vec<_> = recs.iter().filter_map(|r| r.depth).collect();
        assert_eq!(depths, (0..=30).collect::<Vec<u32>>());
    }
    // Loose bound for a debug build, process start included; the release figure is in
    // docs/vmx-parse.md.
    assert!(best < Duration::from_millis(500), "files took {best:?}");
}

#[test]
fn a_cid_mismatch_is_on_the_leaf_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let leaf = chain(dir, "c", 1);
    // Writing to the base after the child was made changes the base's CID.
    let st = Std::new("qemu-io")
        .current_dir(dir)
        .args(["-f", "vmdk", "c.vmdk", "-c", "write 0 512"])
        .output()
        .expect("qemu-io runs");
    assert!(st.status.success());
    let vmx = dir.join("vm.vmx");
    fs::write(&vmx, format!("scsi0:0.fileName = \"{leaf}\"\n")).unwrap();
    let (recs, out) = files(&vmx, &[]);
    assert!(out.status.success());
    let r = find(&recs, &format!("/{leaf}"));
    assert!(
        r.problem
            .as_deref()
            .unwrap()
            .contains("content ID mismatch"),
        "{r:?}"
    );
    assert_eq!(find(&recs, "/c.vmdk").depth, Some(1), "followed anyway");
}

#[test]
fn a_bare_vmx_name_gives_bare_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let leaf = chain(dir, "b", 1);
    fs::write(
        dir.join("vm.vmx"),
        format!("scsi0:0.fileName = \"{leaf}\"\n"),
    )
    .unwrap();
    let out = vx()
        .current_dir(dir)
        .args(["files", "vm.vmx"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let paths: Vec<String> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<Record>(l).unwrap().path)
        .collect();
    assert_eq!(paths, ["vm.vmx", "b-000001.vmdk", "b.vmdk"]);
}

#[test]
fn a_disk_in_a_subfolder_may_name_its_parent_in_the_vm_folder() {
    // vm/base.vmdk, and vm/snaps/top.vmdk whose parentFileNameHint is "../base.vmdk": inside
    // the VM's folder, so followed without --allow-outside; a parent above the VM's folder
    // is still refused.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    fs::create_dir_all(dir.join("snaps")).unwrap();
    qemu_img(&dir, &["create", "-q", "-f", "vmdk", "base.vmdk", "1M"]);
    qemu_img(
        &dir.join("snaps"),
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "../base.vmdk",
            "-F",
            "vmdk",
            "top.vmdk",
        ],
    );
    fs::write(
        dir.join("vm.vmx"),
        "scsi0:0.fileName = \"snaps/top.vmdk\"\n",
    )
    .unwrap();
    let (recs, out) = files(&dir.join("vm.vmx"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = find(&recs, "base.vmdk");
    assert_eq!(
        (base.depth, base.exists, base.inside_folder),
        (Some(1), Some(true), true)
    );
    assert!(find(&recs, "top.vmdk").problem.is_none());

    // The same layout one level up: the parent leaves the VM's folder.
    let outer = tmp.path().join("outer");
    fs::create_dir_all(outer.join("vm2")).unwrap();
    qemu_img(&outer, &["create", "-q", "-f", "vmdk", "base.vmdk", "1M"]);
    qemu_img(
        &outer.join("vm2"),
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "../base.vmdk",
            "-F",
            "vmdk",
            "top.vmdk",
        ],
    );
    fs::write(
        outer.join("vm2/vm.vmx"),
        "scsi0:0.fileName = \"top.vmdk\"\n",
    )
    .unwrap();
    let (_, out) = files(&outer.join("vm2/vm.vmx"), &[]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(
        text.contains("parent path \"../base.vmdk\" leaves"),
        "{text}"
    );
}

/// VMware's `workingDir` (issue 19): links and snapshot states in `snapshots/`, a link naming
/// its parent `../disk.vmdk`. Every path is listed with its `..` applied (vrepo stores these
/// names: `snapshots/../disk.vmdk` made it leave the base disk out), the workingDir's files are
/// listed, and a workingDir outside the VM's folder is reported, not looked at.
#[test]
fn a_working_dir_layout_is_listed_with_plain_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    fs::create_dir_all(dir.join("snapshots")).unwrap();
    qemu_img(&dir, &["create", "-q", "-f", "vmdk", "disk.vmdk", "1M"]);
    qemu_img(
        &dir.join("snapshots"),
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "../disk.vmdk",
            "-F",
            "vmdk",
            "disk-000001.vmdk",
        ],
    );
    fs::write(dir.join("snapshots/vm-Snapshot1.vmsn"), b"state").unwrap();
    let vmx = dir.join("vm.vmx");
    fs::write(
        &vmx,
        "workingDir = \"snapshots\"\nscsi0:0.fileName = \"snapshots/disk-000001.vmdk\"\n",
    )
    .unwrap();
    let (recs, out) = files(&vmx, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exact = |recs: &[Record], p: &Path| {
        let p = p.to_str().unwrap();
        recs.iter()
            .find(|r| r.path == p)
            .unwrap_or_else(|| panic!("no record {p}: {recs:#?}"))
            .clone()
    };
    let base = exact(&recs, &dir.join("disk.vmdk"));
    assert_eq!(
        (base.depth, base.disk.as_deref()),
        (Some(1), Some("scsi0:0"))
    );
    assert_eq!(
        exact(&recs, &dir.join("snapshots/disk-000001.vmdk")).depth,
        Some(0)
    );
    assert_eq!(
        exact(&recs, &dir.join("snapshots/vm-Snapshot1.vmsn")).role,
        "snapshot-state"
    );
    assert!(recs.iter().all(|r| !r.path.contains("..")), "{recs:#?}");

    // A workingDir elsewhere on the host: reported, its folder not listed.
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("secret.vmsn"), b"x").unwrap();
    fs::write(
        &vmx,
        format!(
            "workingDir = \"{}\"\nscsi0:0.fileName = \"snapshots/disk-000001.vmdk\"\n",
            elsewhere.display()
        ),
    )
    .unwrap();
    let (recs, out) = files(&vmx, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wd = exact(&recs, &elsewhere);
    assert_eq!((wd.exists, wd.inside_folder), (None, false));
    assert!(wd.problem.unwrap().contains("workingDir outside"));
    assert!(recs.iter().all(|r| !r.path.ends_with("secret.vmsn")));

    // A parent leaving the VM's folder: refused, suggesting vmx-parse's own option only.
    fs::copy(dir.join("disk.vmdk"), tmp.path().join("disk.vmdk")).unwrap();
    qemu_img(
        &dir.join("snapshots"),
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "../../disk.vmdk",
            "-F",
            "vmdk",
            "bad.vmdk",
        ],
    );
    fs::write(&vmx, "scsi0:0.fileName = \"snapshots/bad.vmdk\"\n").unwrap();
    let (_, out) = files(&vmx, &[]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(text.contains("\"../../disk.vmdk\" leaves"), "{text}");
    assert!(
        text.contains("(use --allow-outside to follow it)"),
        "{text}"
    );
    assert!(!text.contains("--root"), "{text}");
}
