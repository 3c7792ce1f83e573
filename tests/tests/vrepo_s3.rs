//! `vrepo` on S3-compatible object storage (issue 17), against a real Garage started on
//! loopback by `common::garage` (no mock): the whole workflow, `copy` local to S3 and back,
//! a save killed with SIGKILL mid-upload, two saves at once, the lock objects, bad credentials,
//! a missing bucket and a store that does not answer, and one node of a three-node cluster
//! killed during a save and during a build.
//!
//! Garage comes from scripts/need-garage.sh (built once and cached; `VML_GARAGE` names
//! another binary). A test never builds or downloads it.

mod common;
mod vrepo_support;

use common::garage::Garage;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};
use vrepo_support::*;

fn env_of(g: &Garage) -> Vec<(String, String)> {
    g.env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A repository under `prefix` of the bucket, made (`init`).
fn s3_repo(g: &Garage, prefix: &str) -> Repo {
    let r = Repo::on(&g.repo_url(prefix), env_of(g));
    r.ok(&["init"]);
    r
}

/// The keys of the bucket under `prefix` (through node 0).
fn keys(g: &Garage, prefix: &str) -> Vec<String> {
    g.list(0, prefix)
}

/// Multipart uploads in progress in the bucket (their keys).
fn uploads(g: &Garage) -> Vec<String> {
    let r = g.request(0, "GET", &format!("/{}?uploads=", g.bucket()), None, &[]);
    assert_eq!(r.status, 200, "ListMultipartUploads: {}", r.text());
    common::garage::xml_values(&r.text(), "Key")
}

#[test]
fn the_whole_workflow_on_s3_builds_every_entry_byte_for_byte() {
    let g = Garage::single();
    let t = tempdir();
    let repo = s3_repo(&g, "site/one");
    let wa = make_vm(&t.path().join("web"), 64, 12, 1);
    let st = t.path().join("states");
    fs::create_dir_all(&st).unwrap();
    let e1 = repo.save_name(&wa, &["--tag", "first"]);
    let s1 = keep(&wa, &st.join("1"));
    guest_write(&wa.join("disk.vmdk"), 3 * MIB, 2 * MIB, 11);
    let e2 = repo.save_name(&wa, &[]);
    let s2 = keep(&wa, &st.join("2"));
    guest_write(&wa.join("disk.vmdk"), 40 * MIB, 9 * MIB, 12);
    let e3 = repo.save_name(&wa, &["--differential"]);
    let s3 = keep(&wa, &st.join("3"));
    assert_eq!((e1.as_str(), e2.as_str(), e3.as_str()), ("E1", "E2", "E3"));
    // The layout's keys under the prefix; no entry without its entry.json.
    let k = keys(&g, "site/one/");
    for f in [
        "entry.json",
        "entry.json.b3",
        "delta.vdelta",
        "signature.zst",
        "chunks.bin",
    ] {
        assert!(
            k.contains(&format!("site/one/entries/E3/{f}")),
            "{f}: {k:?}"
        );
    }
    assert!(k.contains(&"site/one/vrepo.json".to_string()));
    assert!(!k.iter().any(|k| k.contains("claim.")), "{k:?}");
    for (e, s) in [("E1", &s1), ("E2", &s2), ("E3", &s3), ("first", &s1)] {
        assert_builds(&repo, e, s, &t.path().join("out"));
    }
    let v = repo.json(&["verify", "--read-data"]);
    assert_eq!(v["ok"].as_array().unwrap().len(), 3, "{v}");
    let tree = repo.stdout(&["tree"]);
    assert!(tree.contains("E3    differential"), "{tree}");
    assert_eq!(repo.json(&["show", "E2"])["parent"], "E1");
    let cat = repo.ok(&["cat", "E2", "vm.vmx"]).stdout;
    assert_eq!(cat, fs::read(s2.join("vm.vmx")).unwrap());
    // The rewrites say they need a local repository.
    let err = repo.fails(&["rm", "E3"], 5);
    assert!(err.contains("local repository"), "{err}");
    // A second init there is refused; a repository that is not there is exit 4.
    repo.fails(&["init"], 7);
    let none = Repo::on(&g.repo_url("site/none"), env_of(&g));
    let err = none.fails(&["list"], 4);
    assert!(err.contains("no repository there"), "{err}");
}

#[test]
fn copy_local_to_s3_and_back_gives_the_same_bytes_and_resumes() {
    let g = Garage::single();
    let t = tempdir();
    let local = Repo::init(&t.path().join("local"), &[]);
    let wa = make_vm(&t.path().join("db"), 48, 10, 2);
    let st = t.path().join("states");
    fs::create_dir_all(&st).unwrap();
    local.save_name(&wa, &["--tag", "monday"]);
    let s1 = keep(&wa, &st.join("1"));
    guest_write(&wa.join("disk.vmdk"), 5 * MIB, 3 * MIB, 21);
    local.save_name(&wa, &[]);
    let s2 = keep(&wa, &st.join("2"));
    guest_write(&wa.join("disk.vmdk"), 20 * MIB, MIB, 22);
    local.save_name(&wa, &[]);
    let s3 = keep(&wa, &st.join("3"));

    let remote = s3_repo(&g, "offsite");
    let to = |r: &Repo| r.root.to_str().unwrap().to_owned();
    // One entry brings its parent along.
    let mut c = local.cmd();
    c.args(["--json", "copy", "E2", "--to", &to(&remote)]);
    c.envs(env_of(&g));
    let out = common::run(&mut c);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["copied"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(remote.names(), ["E1", "E2"]);
    // --all copies only what is missing.
    let mut c = local.cmd();
    c.args(["--json", "copy", "--all", "--to", &to(&remote)]);
    c.envs(env_of(&g));
    let v: serde_json::Value = serde_json::from_slice(&common::run(&mut c).stdout).unwrap();
    assert_eq!(v["copied"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["present"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(remote.json(&["show", "monday"])["name"], "E1");
    for (e, s) in [("E1", &s1), ("E2", &s2), ("E3", &s3)] {
        assert_builds(&remote, e, s, &t.path().join("out"));
    }
    // And back, into a repository that already has an entry of its own: new names.
    let back = Repo::init(&t.path().join("back"), &[]);
    let other = make_vm(&t.path().join("other"), 16, 2, 3);
    back.save_name(&other, &[]);
    let mut c = remote.cmd();
    c.args(["copy", "--vm", "db", "--to", s(&back.root)]);
    let o = common::run(&mut c);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("E3 copied as E4"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    for (e, s) in [("E2", &s1), ("E3", &s2), ("E4", &s3)] {
        assert_builds(&back, e, s, &t.path().join("out"));
    }
    let v = back.json(&["verify", "--read-data"]);
    assert_eq!(v["ok"].as_array().unwrap().len(), 4, "{v}");
    // A damaged source file is caught on arrival and nothing is published.
    let fresh = Repo::init(&t.path().join("fresh"), &[]);
    flip(&local.entry_file("E3", "delta.vdelta"), 5000);
    let mut c = local.cmd();
    c.args(["copy", "E3", "--to", s(&fresh.root)]);
    let o = c.output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        fresh.names(),
        ["E1", "E2"],
        "the entries before it were copied whole"
    );
}

#[test]
fn a_save_killed_mid_upload_leaves_no_entry_and_the_next_command_cleans_up() {
    let g = Garage::single();
    let t = tempdir();
    let repo = s3_repo(&g, "k");
    let wa = make_vm(&t.path().join("vm"), 64, 4, 4);
    repo.save_name(&wa, &[]);
    // Enough new data for the save to be uploading parts for a while.
    fs::write(wa.join("big.log"), rand_bytes(44, 160 << 20)).unwrap();
    let mut child = repo.spawn(&["save", s(&wa)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let k = keys(&g, "k/entries/E2/");
        if !uploads(&g).is_empty() && k.iter().any(|k| k.contains("claim.")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the save never started uploading: {k:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!keys(&g, "k/entries/E2/").is_empty(), "the claim is left");
    // No entry; the listing cleans the dead save's folder and aborts its upload.
    assert_eq!(repo.names(), ["E1"]);
    assert!(keys(&g, "k/entries/E2/").is_empty(), "{:?}", keys(&g, "k/"));
    assert!(uploads(&g).is_empty(), "{:?}", uploads(&g));
    // The dead save's VM lock does not hold the next save back; the name it had claimed
    // was never published, so it is given again.
    assert_eq!(repo.save_name(&wa, &[]), "E2");
    assert_builds(&repo, "E2", &wa, &t.path().join("out"));
}

#[test]
fn two_saves_at_once_from_two_processes_both_land_whole() {
    let g = Garage::single();
    let t = tempdir();
    let repo = s3_repo(&g, "two");
    let a = make_vm(&t.path().join("a"), 64, 24, 5);
    let b = make_vm(&t.path().join("b"), 64, 24, 6);
    let (mut pa, mut pb) = (repo.spawn(&["save", s(&a)]), repo.spawn(&["save", s(&b)]));
    assert!(pa.wait().unwrap().success());
    assert!(pb.wait().unwrap().success());
    assert_eq!(repo.names(), ["E1", "E2"]);
    let vms: Vec<String> = ["E1", "E2"]
        .iter()
        .map(|e| {
            repo.json(&["show", e])["vm"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        vms.contains(&"a".into()) && vms.contains(&"b".into()),
        "{vms:?}"
    );
    for (e, vm) in ["E1", "E2"].iter().zip(&vms) {
        let src = if vm == "a" { &a } else { &b };
        assert_builds(&repo, e, src, &t.path().join("out"));
    }
    // Many saves of one VM at once: one at a time, each whole, none lost.
    let kids: Vec<_> = (0..3)
        .map(|_| repo.spawn(&["--wait", "120", "save", s(&a)]))
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    assert_eq!(repo.names().len(), 5);
    assert_eq!(repo.json(&["verify"])["ok"].as_array().unwrap().len(), 5);
}

#[test]
fn a_lock_object_of_another_host_is_named_and_respected() {
    let g = Garage::single();
    let t = tempdir();
    let repo = s3_repo(&g, "locked");
    let wa = make_vm(&t.path().join("vm"), 16, 2, 7);
    // An exclusive holder on another host, refreshing (its object is new).
    let holder = r#"{"mode":"exclusive","pid":4242,"host":"esx9","command":"prune","since":"2026-12-08T03:00:00Z"}"#;
    let key = "locked/locks/repo/exclusive-4242-esx9-0123456789ab-1.json";
    assert_eq!(g.put(0, key, holder.as_bytes()).status, 200);
    let err = repo.fails(&["save", s(&wa)], 8);
    assert!(err.contains("vrepo prune (pid 4242 on esx9"), "{err}");
    let err = repo.fails(&["list"], 8);
    assert!(err.contains("esx9"), "{err}");
    // With --wait, a command goes on once the holder is gone.
    let mut waiting = repo.spawn(&["--wait", "60", "save", s(&wa)]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(waiting.try_wait().unwrap().is_none(), "it waits");
    assert_eq!(g.delete(0, key).status, 204);
    assert!(waiting.wait().unwrap().success());
    assert_eq!(repo.names(), ["E1"]);
    // Nothing of ours is left in locks/ once the commands are done.
    assert!(
        keys(&g, "locked/locks/").is_empty(),
        "{:?}",
        keys(&g, "locked/locks/")
    );
}

#[test]
fn bad_credentials_a_missing_bucket_and_a_dead_endpoint_fail_in_one_line() {
    let g = Garage::single();
    let t = tempdir();
    s3_repo(&g, "ok");
    let run = |url: &str, env: Vec<(String, String)>, code: i32| -> (String, Duration) {
        let started = Instant::now();
        let o = Command::new(vrepo_bin())
            .args(["-r", url, "list"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .envs(env)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code), "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(o.stdout.is_empty());
        (err, started.elapsed())
    };
    let with = |k: &str, v: &str| {
        let mut e = env_of(&g);
        e.retain(|(x, _)| x != k);
        e.push((k.into(), v.into()));
        e
    };
    let (err, _) = run(&g.repo_url("ok"), with("AWS_SECRET_ACCESS_KEY", "0000"), 6);
    assert!(err.contains("access denied"), "{err}");
    let (err, _) = run(
        &g.repo_url("ok"),
        with("AWS_ACCESS_KEY_ID", "GK00000000"),
        6,
    );
    assert!(err.contains("access denied"), "{err}");
    let (err, _) = run(&g.repo_url("ok"), with("AWS_DEFAULT_REGION", "mars-1"), 6);
    assert!(err.contains("AWS_DEFAULT_REGION"), "{err}");
    let missing = g.repo_url("ok").replace(g.bucket(), "no-such-bucket");
    let (err, _) = run(&missing, env_of(&g), 4);
    assert!(err.contains("the bucket does not exist"), "{err}");
    let (err, _) = run(&g.repo_url("ok"), Vec::new(), 2);
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    // Nothing listens on this port: refused at once, retried a bounded number of times.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (err, took) = run(
        &format!("s3:http://127.0.0.1:{dead}/bucket/x"),
        env_of(&g),
        6,
    );
    assert!(err.contains("does not answer"), "{err}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let _ = t;
}

/// Wait (up to a minute) until a save has a multipart upload open.
fn wait_uploading(g: &Garage) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while uploads(g).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the save never started uploading"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restart node `i` and wait until node 0, the client's, sees all three again.
fn restart_seen(g: &mut Garage, i: usize) {
    g.restart(i);
    assert!(
        g.sees_up(0, 3, Duration::from_secs(60)),
        "node 0 does not see node {i} back"
    );
}

#[test]
fn one_node_of_three_killed_during_a_save_and_a_build() {
    let mut g = Garage::cluster(3);
    let t = tempdir();
    let repo = s3_repo(&g, "ha");
    let wa = make_vm(&t.path().join("vm"), 96, 8, 8);
    repo.save_name(&wa, &[]);
    fs::write(wa.join("big.log"), rand_bytes(88, 96 << 20)).unwrap();
    let st = keep(&wa, &t.path().join("state"));
    // The client talks to node 0; node 2 dies while the save uploads.
    let child = repo.spawn(&["save", s(&wa)]);
    wait_uploading(&g);
    g.kill(2);
    let o = child.wait_with_output().unwrap();
    // Two of three nodes make a quorum: the save completes, whole.
    assert!(
        o.status.success(),
        "the save failed with one node of three down: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(repo.names(), ["E1", "E2"]);
    assert_builds(&repo, "E2", &st, &t.path().join("out"));
    restart_seen(&mut g, 2);
    // Node 1 dies during a build: it completes and is right.
    let out = t.path().join("out2");
    let b = repo.spawn(&["build", "E2", s(&out)]);
    std::thread::sleep(Duration::from_millis(200));
    g.kill(1);
    let o = b.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the build failed with one node of three down: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_files(&st, &out, "build with a node down");
    // The client's own node dies: a clear error, and nothing half-written a later command
    // would believe.
    restart_seen(&mut g, 1);
    fs::write(wa.join("big.log"), rand_bytes(89, 64 << 20)).unwrap();
    let child = repo.spawn(&["save", s(&wa)]);
    wait_uploading(&g);
    g.kill(0);
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    restart_seen(&mut g, 0);
    assert_eq!(repo.names(), ["E1", "E2"], "no entry from the failed save");
    let v = repo.json(&["verify", "--read-data"]);
    assert_eq!(v["ok"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(repo.save_name(&wa, &[]), "E3");
    assert_builds(&repo, "E3", &wa, &t.path().join("out3"));
}
