//! Many VMs in one repository (issue 16): every entry belongs to a VM (`save --vm`, by default
//! the working area's folder name), selectors `VM:latest`, `VM:latest~N`, `VM:TAG`, per-VM
//! views (`list`, `tree`, `verify`, `diff`, `vms`), retention applied to each VM separately,
//! `rm --vm NAME --all`, clones of a template stored as what differs from it, a moved folder
//! keeping its chain, one save per VM at a time, four saves of different VMs at once, and
//! entries of older versions (no VM name) read as before.

mod common;
mod vrepo_support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use vrepo_support::*;

/// A full clone of the VM in `src`, as VMware makes one: the folder copied under the new
/// name, the disk renamed after it, its own `.vmx` and `.nvram`.
fn clone_vm(src: &Path, dst: &Path, seed: u64) -> PathBuf {
    let name = dst.file_name().unwrap().to_str().unwrap().to_owned();
    keep(src, dst);
    fs::rename(dst.join("disk.vmdk"), dst.join(format!("{name}.vmdk"))).unwrap();
    write_vmx(dst, &format!("{name}.vmdk"), &name);
    fs::write(dst.join("vm.nvram"), rand_bytes(seed, 8684)).unwrap();
    dst.to_path_buf()
}

/// The VM's disk (its only `.vmdk`).
fn disk_of(wa: &Path) -> PathBuf {
    fs::read_dir(wa)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "vmdk"))
        .unwrap()
}

/// Change a VM a little: `kib` KiB of new data at a place depending on `seed`.
fn evolve(wa: &Path, kib: u64, seed: u64) {
    guest_write(&disk_of(wa), (1 + seed % 6) * MIB, kib * 1024, seed);
}

fn list(repo: &Repo, extra: &[&str]) -> Vec<Value> {
    let mut a = vec!["--json", "list"];
    a.extend_from_slice(extra);
    repo.stdout(&a)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Entry names by VM, from `list --json`.
fn by_vm(repo: &Repo) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in list(repo, &[]) {
        m.entry(e["vm"]["name"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["name"].as_str().unwrap().to_owned());
    }
    m
}

/// A site: template `tmpl` (16 MiB of data) and its clones `web1`, `web2`, each changed a
/// little, plus `other`, a VM of unrelated content.
struct Site {
    dir: tempfile::TempDir,
    repo: Repo,
}

impl Site {
    fn new() -> Site {
        let dir = tempdir();
        let repo = Repo::init(&dir.path().join("repo"), &[]);
        let tmpl = make_vm(&dir.path().join("vms/tmpl"), 64, 16, 1);
        for (i, c) in ["web1", "web2"].iter().enumerate() {
            let wa = clone_vm(&tmpl, &dir.path().join("vms").join(c), 50 + i as u64);
            evolve(&wa, 256, 60 + i as u64);
        }
        make_vm(&dir.path().join("vms/other"), 64, 12, 7);
        Site { dir, repo }
    }

    fn wa(&self, name: &str) -> PathBuf {
        self.dir.path().join("vms").join(name)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `save --json` with stderr: (entry, stderr).
    fn save(&self, vm: &str, extra: &[&str]) -> (Value, String) {
        let wa = self.wa(vm);
        let mut a = vec!["--json", "save", s(&wa)];
        a.extend_from_slice(extra);
        let o = self.repo.output(&a);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "save {vm}: {err}");
        (serde_json::from_slice(&o.stdout).unwrap(), err)
    }
}

fn stored(e: &Value) -> u64 {
    ["delta", "signature", "chunks"]
        .iter()
        .map(|k| e["stored"][k]["size"].as_u64().unwrap())
        .sum()
}

#[test]
fn clones_are_stored_once_each_vm_keeps_its_own_history_and_prune_is_per_vm() {
    let site = Site::new();
    let (t, _) = site.save("tmpl", &[]);
    assert_eq!(t["mode"], "full");
    assert_eq!(t["vm"]["name"], "tmpl");
    assert_eq!(t["schema"], "vrepo.entry/2");
    let mut states: BTreeMap<String, PathBuf> = BTreeMap::new();
    states.insert("E1".into(), keep(&site.wa("tmpl"), &site.path("st-E1")));
    for c in ["web1", "web2"] {
        let (e, err) = site.save(c, &[]);
        let name = e["name"].as_str().unwrap().to_owned();
        // Based on the template's entry (not on the other clone: on a tie, the shorter chain).
        assert_eq!(e["parent"], "E1", "{c}: {e}");
        assert_eq!(e["mode"], "incremental");
        assert_eq!(e["based_on"]["entry"], "E1");
        assert_eq!(e["based_on"]["vm"], "tmpl");
        let pct = e["based_on"]["shared_percent"].as_f64().unwrap();
        assert!(pct > 50.0, "{c}: {pct}% shared");
        assert!(
            err.contains("based on E1 of VM \"tmpl\""),
            "{c}: the choice is printed: {err}"
        );
        // What the clone stores is what differs, not a second copy of the template.
        assert!(
            stored(&e) * 8 < stored(&t),
            "{c}: {} stored for a clone of {}",
            stored(&e),
            stored(&t)
        );
        // It read a sample to choose: a small share of the VM.
        let sampled = e["based_on"]["sampled_bytes"].as_u64().unwrap();
        assert!(sampled > 0 && sampled <= 64 * MIB, "{sampled}");
        states.insert(
            name.clone(),
            keep(&site.wa(c), &site.path(&format!("st-{name}"))),
        );
    }
    // An unrelated VM shares nothing with them: a full entry, no based_on.
    let (o, _) = site.save("other", &[]);
    assert_eq!(o["mode"], "full", "{o}");
    assert!(o.get("based_on").is_none(), "{o}");
    states.insert("E4".into(), keep(&site.wa("other"), &site.path("st-E4")));

    // Two more nights: each VM goes on from its own entry.
    for night in 0..2u64 {
        for (i, vm) in ["tmpl", "web1", "web2", "other"].iter().enumerate() {
            evolve(&site.wa(vm), 128, 100 + night * 10 + i as u64);
            let (e, _) = site.save(vm, &[]);
            let name = e["name"].as_str().unwrap().to_owned();
            assert_eq!(e["mode"], "incremental", "{vm}: {e}");
            assert_eq!(e["vm"]["name"], *vm);
            assert!(e.get("based_on").is_none());
            let prev = site.repo.json(&["show", &format!("{vm}:latest~1")]);
            assert_eq!(e["parent"], prev["name"], "{vm} night {night}");
            states.insert(
                name.clone(),
                keep(&site.wa(vm), &site.path(&format!("st-{name}"))),
            );
        }
    }
    let vms = by_vm(&site.repo);
    assert_eq!(
        vms.keys().collect::<Vec<_>>(),
        ["other", "tmpl", "web1", "web2"]
    );
    assert!(vms.values().all(|v| v.len() == 3), "{vms:?}");

    // vms: counts, newest, and the template's first entry shared with its clones.
    let rows: Vec<Value> = site
        .repo
        .stdout(&["--json", "vms"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        // Pinned: the keys of `vms --json`.
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "entries",
                "newest",
                "newest_time",
                "own_bytes",
                "shared_bytes",
                "stands_on",
                "vm"
            ]
        );
        let vm = r["vm"].as_str().unwrap();
        assert_eq!(r["entries"], 3, "{r}");
        assert_eq!(r["newest"].as_str().unwrap(), vms[vm].last().unwrap());
        let shared = r["shared_bytes"].as_u64().unwrap();
        match vm {
            "other" => {
                assert_eq!(shared, 0, "{r}");
                assert_eq!(r["stands_on"], serde_json::json!([]));
            }
            "tmpl" => assert_eq!(shared, stored(&t), "{r}"),
            _ => {
                assert_eq!(shared, stored(&t), "{r}");
                assert_eq!(r["stands_on"], serde_json::json!(["tmpl"]));
            }
        }
    }
    // tree: grouped by VM, a clone's first entry names what it stands on.
    let tree = site.repo.stdout(&["tree"]);
    assert!(tree.contains("vm web1\n"), "{tree}");
    assert!(tree.contains("(on E1 of vm tmpl)"), "{tree}");
    let only = site.repo.stdout(&["tree", "--vm", "web2"]);
    assert!(
        only.starts_with("vm web2\n") && !only.contains("vm tmpl\n"),
        "{only}"
    );

    // Retention per VM: --keep-last 1 keeps each VM's newest, whatever the others did.
    let plan = site.repo.json(&["prune", "--keep-last", "1", "--dry-run"]);
    let mut pk: Vec<&str> = plan
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    pk.sort_unstable();
    assert_eq!(
        pk,
        ["dry_run", "keep", "remove", "rewrite", "vms"],
        "{plan}"
    );
    let kept: BTreeSet<String> = plan["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = vms.values().map(|v| v.last().unwrap().clone()).collect();
    assert_eq!(kept, want, "{plan}");
    for (vm, v) in &vms {
        assert_eq!(
            plan["vms"][vm]["keep"],
            serde_json::json!([v.last().unwrap()]),
            "{plan}"
        );
    }
    // --vm limits it: only web1 loses entries.
    let p1 = site
        .repo
        .json(&["prune", "--keep-last", "1", "--vm", "web1", "--dry-run"]);
    let removed: Vec<&str> = p1["remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        removed,
        vms["web1"][..2]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );

    let before = fs::read_dir(site.repo.root.join("entries"))
        .unwrap()
        .count();
    site.repo.ok(&["prune", "--keep-last", "1"]);
    assert_eq!(by_vm(&site.repo).values().map(Vec::len).sum::<usize>(), 4);
    assert!(before > 4);
    for e in &want {
        assert_builds(&site.repo, e, &states[e], &site.path("out"));
    }
    // The clones' kept entries still stand on the template's kept entry, not made full.
    for e in list(&site.repo, &["--vm", "web1", "--vm", "web2"]) {
        assert_eq!(e["parent"].as_str(), Some(vms["tmpl"][2].as_str()), "{e}");
    }
    site.repo.ok(&["verify", "--read-data"]);
}

#[test]
fn the_site_scripts_first_night_keeps_every_vm() {
    // The data loss: three VMs saved once, then prune --keep-daily 7.
    let site = Site::new();
    for vm in ["tmpl", "web1", "other"] {
        site.save(vm, &[]);
    }
    let out = site.repo.stdout(&["prune", "--keep-daily", "7"]);
    assert!(!out.contains("remove"), "{out}");
    assert_eq!(site.repo.names(), ["E1", "E2", "E3"]);
    // A policy that keeps no entry of a VM is refused; --allow-empty says it is meant.
    let err = site.repo.fails(&["prune", "--vm", "other"], 2);
    assert!(err.contains("--allow-empty"), "{err}");
    let r = site.repo.json(&["prune", "--vm", "other", "--allow-empty"]);
    assert_eq!(r["remove"], serde_json::json!(["E3"]));
    assert_eq!(site.repo.names(), ["E1", "E2"]);
}

#[test]
fn selectors_and_per_vm_views() {
    let site = Site::new();
    site.save("tmpl", &["--tag", "base"]);
    site.save("web1", &["--tag", "monday"]);
    evolve(&site.wa("web1"), 64, 5);
    site.save("web1", &["--tag", "tuesday"]);
    site.save("other", &["--tag", "monday"]);
    let r = &site.repo;
    let name = |sel: &str| r.json(&["show", sel])["name"].as_str().unwrap().to_owned();
    assert_eq!(name("latest"), "E4");
    assert_eq!(name("latest~1"), "E3");
    assert_eq!(name("web1:latest"), "E3");
    assert_eq!(name("web1:latest~1"), "E2");
    assert_eq!(name("web1:monday"), "E2");
    assert_eq!(name("other:monday"), "E4");
    assert_eq!(name("base"), "E1");
    assert_eq!(name("tmpl:E1"), "E1");
    // A tag on entries of two VMs is ambiguous alone: exit 2, naming both.
    let err = r.fails(&["show", "monday"], 2);
    assert!(
        err.contains("web1:monday") && err.contains("other:monday"),
        "{err}"
    );
    // A tag is unique within its VM, not across VMs.
    let err = r.fails(&["save", s(&site.wa("web1")), "--tag", "tuesday"], 2);
    assert!(err.contains("tuesday"), "{err}");
    // Unknown VM: exit 4 with the names there are; the same for every --vm.
    for args in [
        &["show", "nope:latest"][..],
        &["list", "--vm", "nope"],
        &["tree", "--vm", "nope"],
        &["verify", "--vm", "nope"],
        &["prune", "--keep-last", "1", "--vm", "nope"],
        &["diff", "--vm", "nope"],
        &["rm", "--vm", "nope", "--all"],
    ] {
        let err = r.fails(args, 4);
        assert!(
            err.contains("\"nope\"") && err.contains("other, tmpl, web1"),
            "{args:?}: {err}"
        );
    }
    let err = r.fails(&["show", "web1:latest~2"], 4);
    assert!(err.contains("only 2 entries"), "{err}");
    let err = r.fails(&["show", "tmpl:E2"], 4);
    assert!(err.contains("of VM \"web1\""), "{err}");
    for bad in ["web1:latest~x", ":latest", "latest~"] {
        r.fails(&["show", bad], 2);
    }
    // Per-VM views.
    let l: Vec<String> = list(r, &["--vm", "web1"])
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(l, ["E2", "E3"]);
    let l2 = list(r, &["--vm", "web1", "--vm", "other"]);
    assert_eq!(l2.len(), 3);
    let v = r.json(&["verify", "--vm", "web1"]);
    let checked: Vec<&str> = v["checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["entry"].as_str().unwrap())
        .collect();
    // web1's entries and the template's entry they need.
    assert_eq!(checked, ["E1", "E2", "E3"], "{v}");
    let d = r.stdout(&["--json", "diff", "--vm", "web1"]);
    let changed: Vec<Value> = d
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|x| x["status"] != "same")
        .collect();
    assert_eq!(changed.len(), 1, "{d}");
    assert_eq!(changed[0]["path"], "web1.vmdk");
    let d2 = r.stdout(&["--json", "diff", "--vm", "web1", "latest~1", "latest"]);
    assert_eq!(d, d2);
    r.fails(&["diff", "E1"], 2);
    // build by selector.
    let out = site.path("b");
    r.build("web1:tuesday", &out, &[]);
    assert!(same_bytes(
        &out.join("web1.vmdk"),
        &site.wa("web1").join("web1.vmdk")
    ));
}

#[test]
fn vm_names_are_checked_and_given_with_vm() {
    let site = Site::new();
    let (e, _) = site.save("tmpl", &["--vm", "template-A"]);
    assert_eq!(e["vm"]["name"], "template-A");
    for bad in ["a/b", "E5", "", "x\ty"] {
        let err = site
            .repo
            .fails(&["save", s(&site.wa("tmpl")), "--vm", bad], 2);
        assert!(err.contains("VM name"), "{bad:?}: {err}");
    }
    // A folder whose name cannot name a VM: told to give one.
    let odd = site.path("E9");
    keep(&site.wa("other"), &odd);
    let err = site.repo.fails(&["save", s(&odd)], 2);
    assert!(err.contains("--vm NAME"), "{err}");
    let (e, _) = site.save("other", &["--vm", "E9-renamed"]);
    assert_eq!(e["vm"]["name"], "E9-renamed");
}

#[test]
fn a_moved_or_renamed_folder_keeps_its_chain_and_forced_choices_win() {
    let site = Site::new();
    site.save("tmpl", &[]);
    site.save("web1", &[]);
    // web1 moves to another datastore: same folder name, no record for the new path.
    let moved = site.path("datastore2/web1");
    fs::create_dir_all(moved.parent().unwrap()).unwrap();
    fs::rename(site.wa("web1"), &moved).unwrap();
    evolve(&moved, 64, 9);
    let o = site.repo.output(&["--json", "save", s(&moved)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["parent"], "E2", "{e}");
    assert_eq!(e["mode"], "incremental");
    assert!(
        err.contains("continuing VM \"web1\" from its newest entry E2"),
        "{err}"
    );
    // Renamed: --vm keeps it in its VM.
    let renamed = site.path("datastore2/web1-new");
    fs::rename(&moved, &renamed).unwrap();
    let e = site.repo.save(&renamed, &["--vm", "web1"]);
    assert_eq!(e["parent"], "E3");
    // --full forces a full entry, --parent any parent, even for a VM's first save.
    let (f, _) = site.save("web2", &["--full"]);
    assert_eq!(f["mode"], "full");
    assert!(f.get("based_on").is_none());
    let (p, _) = site.save("other", &["--parent", "tmpl:latest"]);
    assert_eq!(p["parent"], "E1");
    assert!(p.get("based_on").is_none());
}

#[test]
fn retiring_a_template_rewrites_the_clones_that_stand_on_it() {
    let site = Site::new();
    site.save("tmpl", &[]);
    let mut states = BTreeMap::new();
    for c in ["web1", "web2"] {
        let (e, _) = site.save(c, &[]);
        assert_eq!(e["parent"], "E1");
        let n = e["name"].as_str().unwrap().to_owned();
        states.insert(n.clone(), keep(&site.wa(c), &site.path(&format!("st-{n}"))));
    }
    let dry = site
        .repo
        .json(&["rm", "--vm", "tmpl", "--all", "--dry-run"]);
    assert_eq!(dry["remove"], serde_json::json!(["E1"]));
    assert_eq!(site.repo.names(), ["E1", "E2", "E3"]);
    let r = site.repo.json(&["rm", "--vm", "tmpl", "--all"]);
    assert_eq!(r["remove"], serde_json::json!(["E1"]));
    // E2 has no kept ancestor and shares nothing earlier: full; E3 goes onto E2 (a clone of
    // the same template) rather than becoming a second full copy.
    assert_eq!(
        r["rewrite"],
        serde_json::json!([["E2", null], ["E3", "E2"]]),
        "{r}"
    );
    assert_eq!(site.repo.names(), ["E2", "E3"]);
    for (n, st) in &states {
        assert_builds(&site.repo, n, st, &site.path("out"));
    }
    site.repo.ok(&["verify", "--read-data"]);
    site.repo.fails(&["show", "tmpl:latest"], 4);
    assert_eq!(site.repo.output(&["rm", "--all"]).status.code(), Some(2));
}

#[test]
fn four_saves_of_different_vms_at_once_all_land() {
    let dir = tempdir();
    let repo = Repo::init(&dir.path().join("repo"), &[]);
    let mut was = Vec::new();
    for i in 0..4u64 {
        was.push(make_vm(&dir.path().join(format!("vm{i}")), 32, 6, 20 + i));
    }
    let children: Vec<_> = was
        .iter()
        .map(|wa| repo.spawn(&["--json", "save", "--full", s(wa)]))
        .collect();
    let mut names = BTreeSet::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let e: Value = serde_json::from_slice(&o.stdout).unwrap();
        names.insert(e["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(names.len(), 4);
    let vms = by_vm(&repo);
    assert_eq!(vms.len(), 4, "{vms:?}");
    for (i, wa) in was.iter().enumerate() {
        let sel = format!("vm{i}:latest");
        assert_builds(&repo, &sel, wa, &dir.path().join("out"));
    }
}

#[test]
fn two_working_areas_cannot_save_one_vm_at_once() {
    let site = Site::new();
    site.save("web1", &[]);
    // Another save of VM web1 holds its lock (as a save in progress does).
    let key = blake3::hash(b"web1").to_hex();
    let lock = site
        .repo
        .root
        .join("locks")
        .join(format!("vm-{}.lock", &key[..32]));
    assert!(lock.exists(), "the save made its VM's lock file");
    let mut holder = Command::new("flock")
        .args(["-x", "--no-fork"])
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let err = site
        .repo
        .fails(&["save", s(&site.wa("web2")), "--vm", "web1"], 8);
    assert!(err.contains("VM \"web1\" is being saved"), "{err}");
    // Other VMs save meanwhile.
    site.save("web2", &[]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let (e, _) = site.save("web2", &["--vm", "web1"]);
    assert_eq!(e["vm"]["name"], "web1");
    assert_eq!(site.repo.names().len(), 3);
}

#[test]
fn entries_of_older_versions_are_named_after_their_folder() {
    let site = Site::new();
    site.save("tmpl", &[]);
    site.save("web1", &[]);
    // Make both vrepo.entry/1 entries, as an older vrepo wrote them.
    for n in ["E1", "E2"] {
        site.repo.edit_entry_json(n, |v| {
            v["schema"] = "vrepo.entry/1".into();
            v["vm"].as_object_mut().unwrap().remove("name");
            v.as_object_mut().unwrap().remove("based_on");
        });
    }
    // Read as this version's, the VM named after the folder it was saved from.
    assert_eq!(
        by_vm(&site.repo).keys().collect::<Vec<_>>(),
        ["tmpl", "web1"]
    );
    assert_eq!(list(&site.repo, &[])[0]["schema"], "vrepo.entry/1");
    let rows = site.repo.stdout(&["vms"]);
    assert!(rows.contains("tmpl") && rows.contains("web1"), "{rows}");
    assert_eq!(site.repo.json(&["show", "web1:latest"])["name"], "E2");
    // Saves go on; a rewrite writes the entry as this version's.
    evolve(&site.wa("web1"), 64, 3);
    let (e, _) = site.save("web1", &[]);
    assert_eq!(e["parent"], "E2");
    site.repo.ok(&["consolidate", "E2"]);
    let e2 = site.repo.json(&["show", "E2"]);
    assert_eq!(e2["schema"], "vrepo.entry/2");
    assert_eq!(e2["vm"]["name"], "web1");
    site.repo.ok(&["verify", "--read-data"]);
    // A /1 entry with a VM name is not what an older version wrote: refused as damaged.
    site.repo
        .edit_entry_json("E1", |v| v["vm"]["name"] = "x".into());
    site.repo.fails(&["show", "E1"], 3);
}

#[test]
fn a_locks_folder_that_is_a_link_is_refused() {
    let site = Site::new();
    site.save("web1", &[]);
    let locks = site.repo.root.join("locks");
    let elsewhere = site.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::remove_dir_all(&locks).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &locks).unwrap();
    let err = site.repo.fails(&["save", s(&site.wa("web1"))], 3);
    assert!(err.contains("locks/"), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}
