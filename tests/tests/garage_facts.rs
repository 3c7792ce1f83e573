//! What Garage 2.5.0 does that vrepo's S3 repositories rely on or must work around (issue 17;
//! docs/garage-notes.md tells the same with curl commands). On a real node, so that an upgrade
//! that changes any of it fails here first:
//! - PUT and CompleteMultipartUpload ignore `If-None-Match: *` and `If-Match` (they overwrite):
//!   no create-only write, the lock cannot rest on one. GET honours both (304, 412).
//! - A LIST right after a PUT shows the key; a GET right after a DELETE is 404.
//! - Multipart parts of any size are taken (no 5 MiB floor), part numbers past 10000 too.
//! - CopyObject shares the source's blocks: no data is written.
//! - The error replies: status and S3 code for each way a request can be refused.

mod common;

use common::garage::{xml_values, Garage, Reply, BUCKET, REGION};
use std::path::Path;
use std::process::Command;

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

fn etag(r: &Reply) -> String {
    r.header("etag")
        .unwrap_or_else(|| panic!("no ETag: {r:?}"))
        .to_string()
}

/// Bytes of the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            bytes_under(&e.path())
        } else {
            m.len()
        };
    }
    n
}

/// Start a multipart upload of `key`; its upload id.
fn create_upload(g: &Garage, key: &str) -> String {
    let r = g.request(0, "POST", &format!("/{BUCKET}/{key}?uploads="), None, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    xml_values(&r.text(), "UploadId").remove(0)
}

fn upload_part(g: &Garage, key: &str, id: &str, n: u64, body: &[u8]) -> String {
    let r = g.request(
        0,
        "PUT",
        &format!("/{BUCKET}/{key}?partNumber={n}&uploadId={id}"),
        Some(body),
        &[],
    );
    assert_eq!(r.status, 200, "part {n}: {r:?}");
    etag(&r)
}

fn complete(
    g: &Garage,
    key: &str,
    id: &str,
    parts: &[(u64, String)],
    headers: &[(&str, &str)],
) -> Reply {
    let mut x = String::from("<CompleteMultipartUpload>");
    for (n, e) in parts {
        x += &format!("<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>");
    }
    x += "</CompleteMultipartUpload>";
    g.request(
        0,
        "POST",
        &format!("/{BUCKET}/{key}?uploadId={id}"),
        Some(x.as_bytes()),
        headers,
    )
}

#[test]
fn conditional_writes_are_ignored_conditional_reads_are_not() {
    let g = Garage::single();
    let p = format!("/{BUCKET}/lock");
    let star = [("If-None-Match", "*")];
    let r = g.request(0, "PUT", &p, Some(b"first"), &star);
    assert_eq!(r.status, 200, "{r:?}");
    // The key exists: S3 would answer 412; Garage overwrites.
    let r = g.request(0, "PUT", &p, Some(b"second"), &star);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(g.get(0, "lock").body, b"second");
    // If-Match with an ETag that is not the object's: overwritten too.
    let wrong = [("If-Match", "\"00000000000000000000000000000000\"")];
    assert_eq!(g.request(0, "PUT", &p, Some(b"third"), &wrong).status, 200);
    assert_eq!(g.get(0, "lock").body, b"third");
    let r = g.request(0, "PUT", &format!("/{BUCKET}/absent"), Some(b"x"), &wrong);
    assert_eq!(r.status, 200, "If-Match on a missing key: {r:?}");

    // CompleteMultipartUpload over an existing key with If-None-Match: * overwrites as well.
    let id = create_upload(&g, "lock");
    let e = upload_part(&g, "lock", &id, 1, b"from a multipart upload");
    let r = complete(&g, "lock", &id, &[(1, e)], &star);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(g.get(0, "lock").body, b"from a multipart upload");

    // Reads do honour the conditions.
    let cur = etag(&g.get(0, "lock"));
    let r = g.request(0, "GET", &p, None, &[("If-None-Match", &cur)]);
    assert_eq!(r.status, 304, "{r:?}");
    let r = g.request(0, "GET", &p, None, &wrong);
    assert_eq!(r.status, 412, "{r:?}");
    let r = g.request(0, "GET", &p, None, &[("If-Match", &cur)]);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn lists_parts_copies_and_errors() {
    let g = Garage::single();
    // A LIST right after each PUT shows the key; after a DELETE, GET is 404 and LIST is
    // without it (one node: no replica lags).
    for n in 0..20 {
        let k = format!("l/k{n}");
        assert_eq!(g.put(0, &k, b"v").status, 200);
        assert_eq!(g.list(0, &k), [k.as_str()]);
        assert_eq!(g.delete(0, &k).status, 204);
        assert_eq!(g.get(0, &k).status, 404);
        assert!(g.list(0, &k).is_empty());
    }

    // Parts of 1 MiB and 1000 bytes before the last one, numbers 1, 2 and 10001: taken.
    let (a, b, c) = (data(1, 1 << 20), data(2, 1000), data(3, 10));
    let id = create_upload(&g, "mp");
    let parts = vec![
        (1, upload_part(&g, "mp", &id, 1, &a)),
        (2, upload_part(&g, "mp", &id, 2, &b)),
        (10001, upload_part(&g, "mp", &id, 10001, &c)),
    ];
    let r = complete(&g, "mp", &id, &parts, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(etag(&g.get(0, "mp")).ends_with("-3\""));
    assert!(g.get(0, "mp").body == [a, b, c].concat());

    // CopyObject: the copy reads back, and the data folder does not grow (8 MiB object).
    let big = data(4, 8 << 20);
    assert_eq!(g.put(0, "big", &big).status, 200);
    let data_dir = g.dir().join("n0/data");
    let before = bytes_under(&data_dir);
    let src = format!("/{BUCKET}/big");
    let r = g.request(
        0,
        "PUT",
        &format!("/{BUCKET}/big-copy"),
        None,
        &[("x-amz-copy-source", &src)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("<CopyObjectResult>"), "{r:?}");
    assert_eq!(bytes_under(&data_dir), before, "the copy wrote data");
    assert!(g.get(0, "big-copy").body == big);

    // Refusals.
    let with = |user: String, region: &str| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--aws-sigv4"])
            .arg(format!("aws:amz:{region}:s3"))
            .arg("--user")
            .arg(user);
        c
    };
    let p = format!("/{BUCKET}/big");
    let r = g.request_with(
        with(format!("{}:{}", g.key_id(), "0".repeat(64)), REGION),
        0,
        "GET",
        &p,
        None,
        &[],
    );
    assert_eq!((r.status, r.code().as_deref()), (403, Some("AccessDenied")));
    assert!(r.text().contains("Invalid signature"), "{r:?}");
    let r = g.request_with(
        with(format!("GK000000000000000000000000:{}", g.secret()), REGION),
        0,
        "GET",
        &p,
        None,
        &[],
    );
    assert_eq!((r.status, r.code().as_deref()), (403, Some("AccessDenied")));
    assert!(r.text().contains("No such key"), "{r:?}");
    let r = g.request_with(
        with(format!("{}:{}", g.key_id(), g.secret()), "us-east-1"),
        0,
        "GET",
        &p,
        None,
        &[],
    );
    assert_eq!(
        (r.status, r.code().as_deref()),
        (400, Some("AuthorizationHeaderMalformed"))
    );
    let r = g.request(0, "GET", "/no-such-bucket/x", None, &[]);
    assert_eq!((r.status, r.code().as_deref()), (404, Some("NoSuchBucket")));
    let r = g.get(0, "no/such/key");
    assert_eq!((r.status, r.code().as_deref()), (404, Some("NoSuchKey")));
    // HEAD: the status alone.
    assert_eq!(
        g.request(0, "HEAD", &format!("/{BUCKET}/no"), None, &[])
            .status,
        404
    );
    // DELETE of a missing key succeeds.
    assert_eq!(g.delete(0, "no/such/key").status, 204);
    // A payload that does not match its x-amz-content-sha256.
    let r = g.request(
        0,
        "PUT",
        &p,
        Some(b"x"),
        &[("x-amz-content-sha256", &"0".repeat(64))],
    );
    assert_eq!(
        (r.status, r.code().as_deref()),
        (400, Some("InvalidDigest"))
    );
}
