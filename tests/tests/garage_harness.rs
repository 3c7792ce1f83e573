//! The Garage harness of the S3 tests (issue 17, `common::garage`): a real single node and a
//! real 3-node cluster (replication factor 3) on loopback serve signed S3 requests; with one
//! node of the cluster killed, the two others still take writes and serve reads, and the killed
//! node's own endpoint refuses connections; restarted, it serves what was written meanwhile.
//! (The first request after the kill may take up to ~10 s: see `Garage::kill`.)

mod common;

use common::garage::{self, Garage, BUCKET, REGION};
use std::path::PathBuf;

/// Bytes that differ from object to object (a mix-up would show).
fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[test]
fn single_node_serves_signed_put_get_list_delete() {
    let g = Garage::single();
    assert_eq!(g.running(), vec![0]);
    let port = g.endpoint().rsplit(':').next().unwrap().to_string();
    assert!(port.parse::<u16>().unwrap() > 0);
    assert_eq!(g.endpoint(), format!("http://127.0.0.1:{port}"));
    assert_eq!(
        g.repo_url("r1/x"),
        format!("s3:http://127.0.0.1:{port}/{BUCKET}/r1/x")
    );
    let env = g.env();
    assert!(env.contains(&("AWS_ACCESS_KEY_ID", g.key_id().to_string())));
    assert!(env.contains(&("AWS_SECRET_ACCESS_KEY", g.secret().to_string())));
    assert!(env.contains(&("AWS_DEFAULT_REGION", REGION.to_string())));
    assert!(g.key_id().starts_with("GK"), "{}", g.key_id());

    // 3 MiB: more than one of Garage's 1 MiB blocks.
    let big = data(1, 3 << 20);
    let r = g.put(0, "a/big", &big);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("etag").is_some(), "{r:?}");
    g.put(0, "a/small", b"hello");
    g.put(0, "b/other", b"x");
    let r = g.get(0, "a/big");
    assert_eq!(r.status, 200);
    assert!(
        r.body == big,
        "GET returned other bytes ({} bytes)",
        r.body.len()
    );
    assert_eq!(g.list(0, "a/"), ["a/big", "a/small"]);
    assert_eq!(g.delete(0, "a/big").status, 204);
    let r = g.get(0, "a/big");
    assert_eq!((r.status, r.code().as_deref()), (404, Some("NoSuchKey")));
    assert_eq!(g.list(0, "a/"), ["a/small"]);

    // A second bucket, for the same key.
    g.create_bucket("second");
    let r = g.request(0, "PUT", "/second/k", Some(b"in the second"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        g.request(0, "GET", "/second/k", None, &[]).body,
        b"in the second"
    );
    assert_eq!(g.get(0, "k").status, 404);

    // Requests signed with a wrong secret are refused: the signing is checked.
    let mut bad = std::process::Command::new("curl");
    bad.args(["-sS", "--aws-sigv4"])
        .arg(format!("aws:amz:{REGION}:s3"))
        .arg("--user")
        .arg(format!("{}:{}", g.key_id(), "0".repeat(64)));
    let r = g.request_with(bad, 0, "GET", &format!("/{BUCKET}/a/small"), None, &[]);
    assert_eq!(r.status, 403, "{r:?}");

    // Dropped: the server is gone and so is its folder.
    let dir = g.dir().to_path_buf();
    let endpoint = g.endpoint();
    drop(g);
    assert!(!dir.exists(), "{} is left", dir.display());
    let o = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", &endpoint])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(7),
        "something still answers on {endpoint}"
    );
}

#[test]
fn three_nodes_keep_serving_with_one_killed() {
    let mut c = Garage::cluster(3);
    assert_eq!(c.running(), vec![0, 1, 2]);
    let before = data(2, 1 << 20);
    assert_eq!(c.put(0, "r/before", &before).status, 200);
    // Every node serves what one took.
    for i in 0..3 {
        let r = c.get(i, "r/before");
        assert_eq!(r.status, 200, "node {i}: {r:?}");
        assert!(r.body == before, "node {i} returned other bytes");
    }

    c.kill(2);
    assert_eq!(c.running(), vec![0, 1]);
    // The killed node's own endpoint: nothing listens (curl's exit 7, no HTTP status).
    let r = c.get(2, "r/before");
    assert_eq!(r.status, 0, "{r:?}");
    let err = r.curl_error.as_deref().unwrap_or("");
    assert!(err.contains("exit status: 7"), "{err}");
    // The two others: writes (a quorum of 2 of 3), reads, lists, deletes.
    let during = data(3, 200_000);
    for i in 0..2 {
        let r = c.put(i, &format!("r/during-{i}"), &during);
        assert_eq!(
            r.status, 200,
            "PUT through node {i} with node 2 down: {r:?}"
        );
    }
    for i in 0..2 {
        assert_eq!(c.get(i, "r/during-0").body, during, "node {i}");
        assert_eq!(c.get(i, "r/before").body, before, "node {i}");
        assert_eq!(
            c.list(i, "r/"),
            ["r/before", "r/during-0", "r/during-1"],
            "node {i}"
        );
    }
    assert_eq!(c.delete(1, "r/during-1").status, 204);
    assert_eq!(c.get(0, "r/during-1").status, 404);

    // Back: the restarted node serves what was written while it was down.
    c.restart(2);
    assert_eq!(c.running(), vec![0, 1, 2]);
    let r = c.get(2, "r/during-0");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body == during);
    assert_eq!(c.list(2, "r/"), ["r/before", "r/during-0"]);
}

#[test]
fn a_missing_binary_names_the_script_to_run() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().to_path_buf();
    let e = garage::locate(None, None, Some(home.clone())).unwrap_err();
    assert!(e.contains("run scripts/need-garage.sh"), "{e}");
    assert!(
        e.contains(&format!(
            "{}/.cache/vml/garage-2.5.0/bin/garage",
            home.display()
        )),
        "{e}"
    );
    let e = garage::locate(Some(home.join("nope")), None, Some(home.clone())).unwrap_err();
    assert!(e.starts_with(&format!("VML_GARAGE={}/nope is not a file", home.display())));
    // VML_CACHE comes before HOME, VML_GARAGE before both.
    let bin: PathBuf = t.path().join("c/garage-2.5.0/bin/garage");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, "").unwrap();
    assert_eq!(
        garage::locate(None, Some(t.path().join("c")), None).unwrap(),
        bin
    );
    let other = t.path().join("other");
    std::fs::write(&other, "").unwrap();
    assert_eq!(
        garage::locate(Some(other.clone()), Some(t.path().join("c")), None).unwrap(),
        other
    );
}
