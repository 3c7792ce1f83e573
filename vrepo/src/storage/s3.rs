//! A repository in an S3-compatible bucket (AWS S3, Garage, Ceph RGW, MinIO), through the
//! Arrow project's `object_store` crate.
//!
//! `-r s3:http://HOST:PORT/BUCKET/PREFIX` (or `https://`); credentials and region from
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION` (or `AWS_REGION`), and
//! `AWS_SESSION_TOKEN` when set. Requests use path-style addressing, time out, and are
//! retried at most 8 times within 30 s (a cluster takes up to 10 s to notice a dead node), so
//! a store that does not answer gives an error within about half a minute rather than a hang.
//!
//! An entry's files are uploaded under `entries/EN/` while the save produces them: the
//! delta as a multipart upload of 8 MiB parts, several in flight, its first part held back
//! until the end (the delta's header is written again there). The entry exists once
//! `entry.json` is written, last. Its number is taken before the upload with a claim object,
//! `entries/EN/claim.TAG.json`: a save writes its claim, lists `entries/EN/`, and takes N only
//! when its claim is all there is (else it removes it and tries a higher number), so two
//! saves from two hosts never take one name. The claim names the save's multipart uploads, so
//! that a dead save's parts can be removed by whoever cleans up after it.

use super::late_hash::LateHasher;
use super::{Listed, Numbering, ReadAt, Stage, Storage, Upload};
use crate::error::{Error, Result};
use crate::manifest::{Entry, Stored};
use crate::repo::ENTRY_SUM;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, MultipartId, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Size of a multipart upload's parts. A power of two (the held-back first part is hashed
/// as one BLAKE3 subtree), and above S3's 5 MiB minimum.
pub const PART_BYTES: usize = 8 << 20;
/// Parts being sent at once by one upload.
const PARTS_IN_FLIGHT: usize = 4;

/// `http://HOST:PORT/BUCKET/PREFIX`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    /// `http://HOST:PORT` or `https://HOST`.
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix without slashes at either end (may be empty).
    pub prefix: String,
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "s3:{url}: {why} (write s3:http://HOST:PORT/BUCKET/PREFIX or s3:https://HOST/BUCKET/PREFIX)"
            ))
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no http:// or https://"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let (host, path) = rest.split_once('/').ok_or_else(|| bad("no bucket"))?;
        if host.is_empty() || host.contains(['@', '?', '#']) {
            return Err(bad("a bad host"));
        }
        let path = path.trim_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'));
        if !bucket_ok {
            return Err(bad(&format!("{bucket:?} is not a bucket name")));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|c| c.is_empty() && !prefix.is_empty())
            || prefix.split('/').any(|c| c == "." || c == "..")
            || prefix.contains(['?', '#', '\\'])
            || prefix.chars().any(char::is_control)
        {
            return Err(bad("a bad key prefix"));
        }
        Ok(S3Url {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.endpoint, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

struct Inner {
    /// Bytes fetched ahead by planned reads and not yet read, all objects together.
    ahead_held: AtomicU64,
    /// Bytes of objects fetched whole (see [`WHOLE_BYTES`]).
    whole_held: AtomicU64,
    store: AmazonS3,
    rt: tokio::runtime::Runtime,
    url: S3Url,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Inner {
    fn path(&self, key: &str) -> ObjPath {
        if self.url.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.url.prefix))
        }
    }

    /// `path` back to a repository key.
    fn key_of(&self, p: &ObjPath) -> Option<String> {
        let s = p.as_ref();
        if self.url.prefix.is_empty() {
            return Some(s.to_owned());
        }
        s.strip_prefix(self.url.prefix.as_str())?
            .strip_prefix('/')
            .map(str::to_owned)
    }

    fn err(&self, key: &str, e: object_store::Error) -> Error {
        map_err(&format!("s3:{}/{key}", self.url), e)
    }
}

/// One line for an `object_store` error, in our classes: missing bucket or object (exit 4),
/// refused credentials and everything else (exit 6). What the server said (its error code
/// and message) is kept; the client library's wording around it is not.
fn map_err(what: &str, e: object_store::Error) -> Error {
    let text = one_line(&e.to_string());
    let said = server_said(&text);
    let denied = |hint: &str| Error::Io {
        what: what.into(),
        source: io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "access denied ({}); check {hint}",
                said.clone().unwrap_or_else(|| "403 Forbidden".into())
            ),
        ),
    };
    match e {
        _ if text.contains("NoSuchBucket") => {
            Error::Missing(format!("{what}: the bucket does not exist"))
        }
        object_store::Error::NotFound { .. } => Error::Missing(format!("{what}: not found")),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            denied("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's permissions")
        }
        _ if text.contains("AuthorizationHeaderMalformed") => {
            denied("AWS_DEFAULT_REGION: it must be the store's region")
        }
        _ if text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("AccessDenied")
            || text.contains("403 Forbidden") =>
        {
            denied("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION")
        }
        _ if said.is_none()
            && (text.contains("error sending request")
                || text.contains("onnection refused")
                || text.contains("timed out")
                || text.contains("dns error")) =>
        {
            let retries = text
                .split(", ")
                .find(|p| p.starts_with("after ") && p.ends_with(" retries"))
                .map(|p| format!(", {p}"))
                .unwrap_or_default();
            Error::Io {
                what: what.into(),
                source: io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("the store does not answer{retries}"),
                ),
            }
        }
        _ => Error::Io {
            what: what.into(),
            source: io::Error::other(said.unwrap_or(text)),
        },
    }
}

/// `CODE: MESSAGE` from an S3 error body in `text`, when there is one.
fn server_said(text: &str) -> Option<String> {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find("</")? + start;
        Some(text[start..end].to_owned())
    };
    let code = tag("Code")?;
    Some(match tag("Message") {
        Some(m) => format!("{code}: {m}"),
        None => code,
    })
}

/// Errors of the store can span lines (a server's XML body): one line, at most 400 bytes.
fn one_line(s: &str) -> String {
    let mut out: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > 400 {
        let mut cut = 400;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// A repository in a bucket.
#[derive(Clone)]
pub struct S3 {
    inner: Arc<Inner>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3 {
    /// Set up the client (nothing is sent yet).
    pub fn connect(url: &S3Url) -> Result<S3> {
        let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(Error::Usage(format!(
                "s3:{url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_DEFAULT_REGION) for the store"
            )));
        };
        let region = env("AWS_DEFAULT_REGION")
            .or_else(|| env("AWS_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        // Client options first: they hold allow_http too, which a later call would reset.
        let mut b = AmazonS3Builder::new()
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            )
            .with_endpoint(&url.endpoint)
            .with_bucket_name(&url.bucket)
            .with_region(region)
            .with_access_key_id(id)
            .with_secret_access_key(secret)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                // About 20 s of retries: a cluster takes up to 10 s to notice a dead node.
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(250),
                    max_backoff: Duration::from_secs(4),
                    base: 2.0,
                },
                max_retries: 8,
                retry_timeout: Duration::from_secs(30),
            });
        if let Some(t) = env("AWS_SESSION_TOKEN") {
            b = b.with_token(t);
        }
        let store = b
            .build()
            .map_err(|e| Error::Usage(format!("s3:{url}: {}", one_line(&e.to_string()))))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vrepo-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                what: "starting the S3 client".into(),
                source: e,
            })?;
        Ok(S3 {
            inner: Arc::new(Inner {
                ahead_held: AtomicU64::new(0),
                whole_held: AtomicU64::new(0),
                store,
                rt,
                url: url.clone(),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
            }),
        })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.inner.rt.block_on(f)
    }

    /// Start a streaming upload to `key`; `on_multipart` is told its multipart upload's id
    /// when it starts one.
    fn upload_to(&self, key: &str, on_multipart: Option<OnMultipart>) -> S3Upload {
        S3Upload {
            s3: self.clone(),
            key: key.into(),
            path: self.inner.path(key),
            first: Vec::new(),
            cur: Vec::new(),
            id: None,
            next: 1,
            in_flight: Vec::new(),
            parts: Vec::new(),
            hasher: LateHasher::new(PART_BYTES as u64),
            total: 0,
            on_multipart,
            finished: false,
        }
    }
}

impl Storage for S3 {
    fn location(&self) -> String {
        format!("s3:{}", self.inner.url)
    }

    fn local_root(&self) -> Option<&Path> {
        None
    }

    fn get(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let p = self.inner.path(key);
        let r = match self.block_on(self.inner.store.get(&p)) {
            Ok(r) => r,
            Err(object_store::Error::NotFound { source, .. })
                if !source.to_string().contains("NoSuchBucket") =>
            {
                return Ok(None)
            }
            Err(e) => return Err(self.inner.err(key, e)),
        };
        if r.meta.size > cap {
            return Err(Error::Corrupt(format!(
                "s3:{}/{key}: larger than {cap} bytes",
                self.inner.url
            )));
        }
        let b = self
            .block_on(r.bytes())
            .map_err(|e| self.inner.err(key, e))?;
        self.inner
            .received
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(Some(b.to_vec()))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let p = self.inner.path(key);
        match self.block_on(self.inner.store.head(&p)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { source, .. })
                if !source.to_string().contains("NoSuchBucket") =>
            {
                Ok(None)
            }
            Err(e) => Err(self.inner.err(key, e)),
        }
    }

    fn open(&self, key: &str) -> Result<(Arc<dyn ReadAt>, u64)> {
        let len = self
            .size(key)?
            .ok_or_else(|| Error::Missing(format!("s3:{}/{key}: missing", self.inner.url)))?;
        Ok((
            Arc::new(S3Object {
                s3: self.clone(),
                path: self.inner.path(key),
                len,
                ahead: Default::default(),
                last: Mutex::new(None),
            }),
            len,
        ))
    }

    fn open_planned(&self, key: &str) -> Result<(Arc<dyn ReadAt>, u64, Option<vpatch::ReadPlan>)> {
        let len = self
            .size(key)?
            .ok_or_else(|| Error::Missing(format!("s3:{}/{key}: missing", self.inner.url)))?;
        // A small delta (a night's) is fetched whole, in parallel pieces, while the budget
        // of whole objects allows: its table and records then cost no request each.
        let held = &self.inner.whole_held;
        if len <= WHOLE_BYTES && held.fetch_add(len, Ordering::Relaxed) + len <= WHOLE_BYTES {
            let path = self.inner.path(key);
            let pieces: Vec<(u64, u64)> = (0..len)
                .step_by(PART_BYTES)
                .map(|at| (at, (at + PART_BYTES as u64).min(len)))
                .collect();
            let store = &self.inner.store;
            let got = self.block_on(futures::future::try_join_all(
                pieces.iter().map(|&(a, b)| store.get_range(&path, a..b)),
            ));
            let got = got.map_err(|e| self.inner.err(key, e))?;
            let mut all = Vec::with_capacity(len as usize);
            for b in got {
                all.extend_from_slice(&b);
            }
            if all.len() as u64 != len {
                return Err(Error::Io {
                    what: format!("s3:{}/{key}", self.inner.url),
                    source: io::Error::other("the object changed size while it was read"),
                });
            }
            self.inner.received.fetch_add(len, Ordering::Relaxed);
            return Ok((Arc::new(InMemory(all)), len, None));
        }
        if len <= WHOLE_BYTES {
            held.fetch_sub(len, Ordering::Relaxed);
        }
        let obj = Arc::new(S3Object {
            s3: self.clone(),
            path: self.inner.path(key),
            len,
            ahead: Default::default(),
            last: Mutex::new(None),
        });
        let planner = obj.clone();
        let plan: vpatch::ReadPlan = Arc::new(move |ranges| planner.plan(ranges));
        Ok((obj, len, Some(plan)))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let p = self.inner.path(key);
        self.block_on(self.inner.store.put(&p, PutPayload::from(bytes.to_vec())))
            .map_err(|e| self.inner.err(key, e))?;
        self.inner
            .sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        // object_store lists by whole path segments: list the folder part, filter the rest.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let base = if dir.is_empty() {
            (!self.inner.url.prefix.is_empty())
                .then(|| ObjPath::from(self.inner.url.prefix.as_str()))
        } else {
            Some(self.inner.path(dir))
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .block_on(self.inner.store.list(base.as_ref()).try_collect())
            .map_err(|e| self.inner.err(prefix, e))?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .filter_map(|m| {
                let key = self.inner.key_of(&m.location)?;
                key.starts_with(prefix).then(|| Listed {
                    key,
                    size: m.size,
                    modified_ns: m.last_modified.timestamp_nanos_opt().map(i128::from),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.inner.path(key);
        match self.block_on(self.inner.store.delete(&p)) {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.inner.err(key, e)),
        }
    }

    fn stage(&self, n: &dyn Numbering) -> Result<Box<dyn Stage>> {
        Ok(Box::new(S3Stage::claim(self, n)?))
    }

    fn abort_upload(&self, key: &str, id: &str) {
        let p = self.inner.path(key);
        let _ = self.block_on(self.inner.store.abort_multipart(&p, &id.to_string()));
    }

    fn bytes_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    fn bytes_received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }
}

/// An object read by ranged GETs. Ranges announced by a plan ([`S3Object::plan`]) are
/// fetched ahead, several at once, and served from memory.
struct S3Object {
    s3: S3,
    path: ObjPath,
    len: u64,
    ahead: Arc<Ahead>,
    /// The last block a small read fetched: its offset and bytes.
    last: Mutex<Option<(u64, bytes::Bytes)>>,
}

/// A read smaller than this asks for this much (up to the object's end), and the rest is kept
/// for the reads that follow: a GET costs a round trip whatever its size, and a tiny answer
/// can wait for a delayed ACK on top (40 ms on Linux), so the record headers an indexed delta's
/// table is built from come a block at a time.
const SMALL_READ: u64 = 64 << 10;

/// Deltas up to this size are fetched whole for a build, up to this many bytes in all.
const WHOLE_BYTES: u64 = 64 << 20;

/// An object fetched whole.
struct InMemory(Vec<u8>);

impl ReadAt for InMemory {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

/// Most GETs of a plan in flight at once.
const AHEAD_REQUESTS: usize = 6;
/// Most bytes fetched ahead and not yet read, all objects of a client together (each object
/// may still fetch one GET when it has none in flight, so a reader never waits on another's
/// budget).
const AHEAD_BYTES: u64 = 64 << 20;
/// Planned ranges closer than this are fetched by one GET (the bytes between come along:
/// a few records without payload, which the table has read already).
const AHEAD_GAP: u64 = 4 << 10;
/// The most one GET of a plan asks for.
const AHEAD_GET: u64 = 8 << 20;

#[derive(Default)]
struct Ahead {
    state: Mutex<AheadState>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct AheadState {
    /// The planned GETs, in plan order.
    gets: Vec<Get>,
    /// Indexes of `gets` by start offset.
    by_start: std::collections::BTreeMap<u64, usize>,
    /// The order to start them in: by the plan's first need of one of their ranges.
    order: Vec<usize>,
    /// The next of `order` to start.
    next: usize,
    in_flight: usize,
    /// Bytes fetched (or being fetched) and not yet read.
    held: u64,
}

struct Get {
    start: u64,
    end: u64,
    /// Planned reads inside it not yet served.
    reads: usize,
    started: bool,
    data: Option<std::result::Result<bytes::Bytes, String>>,
}

impl S3Object {
    /// Take a plan: coalesce its ranges into GETs and start the first ones.
    fn plan(&self, ranges: Vec<(u64, u64)>) {
        let mut st = self.ahead.state.lock().expect("ahead");
        self.s3
            .inner
            .ahead_held
            .fetch_sub(st.held, Ordering::Relaxed);
        *st = AheadState::default();
        // GETs are made of neighbouring ranges in offset order, and started in the order the
        // plan first needs one of their ranges.
        let mut ranked: Vec<(u64, u64, usize)> = ranges
            .into_iter()
            .enumerate()
            .map(|(rank, (at, len))| (at, (at + len).min(self.len), rank))
            .filter(|&(at, end, _)| at < end)
            .collect();
        ranked.sort_unstable();
        let mut first_need: Vec<usize> = Vec::new();
        for (at, end, rank) in ranked {
            if let Some(g) = st.gets.last_mut() {
                if at >= g.end && at - g.end <= AHEAD_GAP && end - g.start <= AHEAD_GET {
                    g.end = end;
                    g.reads += 1;
                    let f = first_need.last_mut().expect("one per get");
                    *f = (*f).min(rank);
                    continue;
                }
            }
            st.gets.push(Get {
                start: at,
                end,
                reads: 1,
                started: false,
                data: None,
            });
            first_need.push(rank);
        }
        let mut order: Vec<usize> = (0..st.gets.len()).collect();
        order.sort_unstable_by_key(|&i| first_need[i]);
        st.order = order;
        let starts: Vec<(u64, usize)> = st
            .gets
            .iter()
            .enumerate()
            .map(|(i, g)| (g.start, i))
            .collect();
        st.by_start = starts.into_iter().collect();
        self.start_more(&mut st);
    }

    /// Start planned GETs while the limits allow.
    fn start_more(&self, st: &mut AheadState) {
        while st.next < st.gets.len()
            && st.in_flight < AHEAD_REQUESTS
            && (self.s3.inner.ahead_held.load(Ordering::Relaxed) < AHEAD_BYTES || st.in_flight == 0)
        {
            let i = st.order[st.next];
            st.next += 1;
            if !st.gets[i].started {
                self.start(st, i);
            }
        }
    }

    fn start(&self, st: &mut AheadState, i: usize) {
        let g = &mut st.gets[i];
        g.started = true;
        let (start, end) = (g.start, g.end);
        st.in_flight += 1;
        st.held += end - start;
        self.s3
            .inner
            .ahead_held
            .fetch_add(end - start, Ordering::Relaxed);
        let (store, path, ahead, s3) = (
            self.s3.inner.store.clone(),
            self.path.clone(),
            self.ahead.clone(),
            self.s3.clone(),
        );
        self.s3.inner.rt.spawn(async move {
            let r = store
                .get_range(&path, start..end)
                .await
                .map_err(|e| one_line(&e.to_string()));
            if let Ok(b) = &r {
                s3.inner
                    .received
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            let mut st = ahead.state.lock().expect("ahead");
            st.in_flight -= 1;
            st.gets[i].data = Some(r);
            ahead.ready.notify_all();
        });
    }

    /// Serve `[offset, offset + buf.len())` from a planned GET, if one holds it.
    fn serve_planned(&self, buf: &mut [u8], offset: u64) -> Option<io::Result<usize>> {
        let end = offset + buf.len() as u64;
        let mut st = self.ahead.state.lock().expect("ahead");
        // GETs are disjoint but for the small gaps they span: the one holding the range is
        // among the last few starting at or before it.
        let i = st
            .by_start
            .range(..=offset)
            .rev()
            .take(256)
            .map(|(_, &i)| i)
            .find(|&i| end <= st.gets[i].end && st.gets[i].reads > 0)?;
        if !st.gets[i].started {
            // Needed before its turn: ask for it now.
            self.start(&mut st, i);
        }
        loop {
            if st.gets[i].data.is_some() {
                break;
            }
            st = self.ahead.ready.wait(st).expect("ahead");
        }
        let g = &mut st.gets[i];
        let r = match g.data.as_ref().expect("fetched") {
            Ok(b) if b.len() as u64 == g.end - g.start => {
                let from = (offset - g.start) as usize;
                buf.copy_from_slice(&b[from..from + buf.len()]);
                Ok(buf.len())
            }
            Ok(b) => Err(io::Error::other(format!(
                "{}: asked for {} bytes at {}, got {}",
                self.path,
                g.end - g.start,
                g.start,
                b.len()
            ))),
            Err(e) => Err(io::Error::other(e.clone())),
        };
        g.reads -= 1;
        if g.reads == 0 {
            let size = g.end - g.start;
            g.data = Some(Ok(bytes::Bytes::new()));
            st.held -= size;
            self.s3.inner.ahead_held.fetch_sub(size, Ordering::Relaxed);
            self.start_more(&mut st);
        }
        // A GET that failed is served as an error once; the reader's own request decides.
        Some(r)
    }
}

impl Drop for S3Object {
    fn drop(&mut self) {
        // What it fetched ahead and nobody read leaves the client's budget.
        if let Ok(st) = self.ahead.state.lock() {
            self.s3
                .inner
                .ahead_held
                .fetch_sub(st.held, Ordering::Relaxed);
        }
    }
}

impl ReadAt for S3Object {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - offset);
        if let Some(Ok(k)) = self.serve_planned(&mut buf[..n as usize], offset) {
            return Ok(k);
        }
        if let Some((at, b)) = &*self.last.lock().expect("last") {
            if offset >= *at && offset + n <= at + b.len() as u64 {
                let from = (offset - at) as usize;
                buf[..n as usize].copy_from_slice(&b[from..from + n as usize]);
                return Ok(n as usize);
            }
        }
        if n < SMALL_READ {
            let b = self.get_exact(offset, SMALL_READ.min(self.len - offset))?;
            buf[..n as usize].copy_from_slice(&b[..n as usize]);
            *self.last.lock().expect("last") = Some((offset, b));
            return Ok(n as usize);
        }
        let b = self.get_exact(offset, n)?;
        buf[..b.len()].copy_from_slice(&b);
        Ok(b.len())
    }
}

impl S3Object {
    /// Exactly `n` bytes at `offset`, by one ranged GET (counted as received).
    fn get_exact(&self, offset: u64, n: u64) -> io::Result<bytes::Bytes> {
        let b = self
            .s3
            .block_on(
                self.s3
                    .inner
                    .store
                    .get_range(&self.path, offset..offset + n),
            )
            .map_err(|e| io::Error::other(one_line(&e.to_string())))?;
        if b.len() as u64 != n {
            return Err(io::Error::other(format!(
                "{}: asked for {n} bytes at {offset}, got {}",
                self.path,
                b.len()
            )));
        }
        self.s3.inner.received.fetch_add(n, Ordering::Relaxed);
        Ok(b)
    }
}

/// Told a multipart upload's id when it starts (the stage records it in its claim).
type OnMultipart = Box<dyn Fn(&str) + Send>;

type PartTask = tokio::task::JoinHandle<object_store::Result<PartId>>;

/// A streaming upload (see the module's notes).
struct S3Upload {
    s3: S3,
    key: String,
    path: ObjPath,
    /// The first part, held back until the end.
    first: Vec<u8>,
    /// The part being filled.
    cur: Vec<u8>,
    id: Option<MultipartId>,
    /// Index of the next part to send (0 is the first, sent last).
    next: usize,
    in_flight: Vec<(usize, PartTask)>,
    parts: Vec<(usize, PartId)>,
    hasher: LateHasher,
    total: u64,
    on_multipart: Option<OnMultipart>,
    finished: bool,
}

impl S3Upload {
    fn io_err(&self, e: object_store::Error) -> io::Error {
        io::Error::other(format!(
            "s3:{}/{}: {}",
            self.s3.inner.url,
            self.key,
            one_line(&e.to_string())
        ))
    }

    /// Wait until at most `keep` parts are in flight.
    fn drain(&mut self, keep: usize) -> io::Result<()> {
        while self.in_flight.len() > keep {
            let (idx, task) = self.in_flight.remove(0);
            let r = self
                .s3
                .block_on(task)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let part = r.map_err(|e| self.io_err(e))?;
            self.parts.push((idx, part));
        }
        Ok(())
    }

    /// Send `bytes` as part `idx`.
    fn send(&mut self, idx: usize, bytes: Vec<u8>) -> io::Result<()> {
        if self.id.is_none() {
            let id = self
                .s3
                .block_on(self.s3.inner.store.create_multipart(&self.path))
                .map_err(|e| self.io_err(e))?;
            if let Some(f) = &self.on_multipart {
                f(&id);
            }
            self.id = Some(id);
        }
        self.drain(PARTS_IN_FLIGHT - 1)?;
        let store = self.s3.inner.store.clone();
        let (path, id) = (self.path.clone(), self.id.clone().expect("started"));
        let len = bytes.len() as u64;
        let task = self.s3.inner.rt.spawn(async move {
            store
                .put_part(&path, &id, idx, PutPayload::from(bytes))
                .await
        });
        self.s3.inner.sent.fetch_add(len, Ordering::Relaxed);
        self.in_flight.push((idx, task));
        Ok(())
    }
}

impl Write for S3Upload {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        self.total += n as u64;
        if self.first.len() < PART_BYTES {
            let k = buf.len().min(PART_BYTES - self.first.len());
            self.first.extend_from_slice(&buf[..k]);
            buf = &buf[k..];
        }
        while !buf.is_empty() {
            let k = buf.len().min(PART_BYTES - self.cur.len());
            self.cur.extend_from_slice(&buf[..k]);
            buf = &buf[k..];
            if self.cur.len() == PART_BYTES {
                let part = std::mem::replace(&mut self.cur, Vec::with_capacity(PART_BYTES));
                self.hasher.update(&part);
                let idx = self.next;
                self.next += 1;
                self.send(idx, part)?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl vdiff::diff::DeltaOut for S3Upload {
    fn rewrite_start(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.first.get_mut(..bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::other("rewriting more than was written")),
        }
    }
}

impl Upload for S3Upload {
    fn describe(&self) -> String {
        format!("s3:{}/{}", self.s3.inner.url, self.key)
    }

    fn finish(mut self: Box<Self>) -> Result<Stored> {
        let what = format!("s3:{}/{}", self.s3.inner.url, self.key);
        let io = |e: io::Error| Error::Io {
            what: what.clone(),
            source: e,
        };
        let hash = if self.id.is_none() {
            // Small enough for one PUT.
            let mut all = std::mem::take(&mut self.first);
            all.extend_from_slice(&self.cur);
            let h = blake3::hash(&all);
            self.s3.put(&self.key, &all)?;
            h
        } else {
            if !self.cur.is_empty() {
                let part = std::mem::take(&mut self.cur);
                self.hasher.update(&part);
                let idx = self.next;
                self.next += 1;
                self.send(idx, part).map_err(io)?;
            }
            let first = std::mem::take(&mut self.first);
            let h = std::mem::replace(&mut self.hasher, LateHasher::new(PART_BYTES as u64))
                .finish(&first);
            self.send(0, first).map_err(io)?;
            self.drain(0).map_err(io)?;
            let mut parts = std::mem::take(&mut self.parts);
            parts.sort_by_key(|(i, _)| *i);
            let ids = parts.into_iter().map(|(_, p)| p).collect();
            let id = self.id.clone().expect("started");
            self.s3
                .block_on(self.s3.inner.store.complete_multipart(&self.path, &id, ids))
                .map_err(|e| self.s3.inner.err(&self.key, e))?;
            h
        };
        self.finished = true;
        Ok(Stored {
            size: self.total,
            blake3: hash.to_hex().to_string(),
        })
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for (_, t) in self.in_flight.drain(..) {
            t.abort();
        }
        if let Some(id) = &self.id {
            let _ = self
                .s3
                .block_on(self.s3.inner.store.abort_multipart(&self.path, id));
        }
    }
}

/// The claim of an entry number by a save in progress.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Claim {
    pub tag: String,
    pub host: String,
    pub pid: u32,
    pub since: String,
    /// Multipart uploads started: key and upload id.
    #[serde(default)]
    pub uploads: Vec<(String, String)>,
}

/// The entry number of a key under `entries/`, if it is in an entry's folder.
pub fn entry_number_of_key(key: &str) -> Option<u64> {
    let rest = key.strip_prefix("entries/")?;
    let (name, _) = rest.split_once('/')?;
    crate::manifest::parse_entry_name(name)
}

struct S3Stage {
    s3: S3,
    number: u64,
    claim_key: String,
    claim: Arc<Mutex<Claim>>,
    /// Keys of the files finished so far.
    written: Vec<String>,
    published: bool,
}

impl S3Stage {
    /// Take the next free entry number (see the module's notes).
    fn claim(s3: &S3, n: &dyn Numbering) -> Result<S3Stage> {
        let tag = crate::owner::own_tag();
        let claim = Claim {
            tag: tag.clone(),
            host: crate::owner::hostname(),
            pid: std::process::id(),
            since: crate::repo::now_rfc3339(),
            uploads: Vec::new(),
        };
        for attempt in 0..40u32 {
            let seen = s3
                .list("entries/")?
                .iter()
                .filter_map(|l| entry_number_of_key(&l.key))
                .max()
                .unwrap_or(0);
            let number = seen.max(n.last_number()?) + 1;
            let claim_key = format!("entries/E{number}/claim.{tag}.json");
            s3.put(
                &claim_key,
                &serde_json::to_vec(&claim).expect("serializable"),
            )?;
            let others = s3
                .list(&format!("entries/E{number}/"))?
                .into_iter()
                .any(|l| l.key != claim_key);
            if !others {
                return Ok(S3Stage {
                    s3: s3.clone(),
                    number,
                    claim_key,
                    claim: Arc::new(Mutex::new(claim)),
                    written: Vec::new(),
                    published: false,
                });
            }
            // Another save took it, or claimed it at the same moment: both step back, and
            // try again after a pause that differs between them.
            s3.delete(&claim_key)?;
            let jitter = (std::process::id() as u64 * 7919 + attempt as u64 * 104_729) % 400;
            std::thread::sleep(Duration::from_millis(50 + jitter));
        }
        Err(Error::Io {
            what: format!("{}: choosing an entry name", s3.location()),
            source: io::Error::other("too many concurrent saves"),
        })
    }

    fn key(&self, file: &str) -> String {
        format!("entries/E{}/{file}", self.number)
    }
}

impl Stage for S3Stage {
    fn upload(&mut self, file: &str) -> Result<Box<dyn Upload>> {
        let key = self.key(file);
        self.written.push(key.clone());
        let (s3, claim, claim_key, k) = (
            self.s3.clone(),
            self.claim.clone(),
            self.claim_key.clone(),
            key.clone(),
        );
        // The claim names the upload, for the cleanup after a dead save.
        let note = Box::new(move |id: &str| {
            let bytes = {
                let mut c = claim.lock().expect("claim");
                c.uploads.push((k.clone(), id.to_owned()));
                serde_json::to_vec(&*c).expect("serializable")
            };
            let _ = s3.put(&claim_key, &bytes);
        });
        Ok(Box::new(self.s3.upload_to(&key, Some(note))))
    }

    fn publish(
        mut self: Box<Self>,
        entry: &mut Entry,
        n: &dyn Numbering,
    ) -> Result<Option<String>> {
        entry.number = self.number;
        entry.name = format!("E{}", self.number);
        n.check_tags(entry)?;
        let text = serde_json::to_string_pretty(entry).expect("serializable") + "\n";
        let sum = format!("{}\n", blake3::hash(text.as_bytes()).to_hex());
        self.s3.put(&self.key(ENTRY_SUM), sum.as_bytes())?;
        self.written.push(self.key(ENTRY_SUM));
        // entry.json last: from here on the entry exists.
        self.s3.put(&self.key("entry.json"), text.as_bytes())?;
        self.published = true;
        let after = self
            .s3
            .delete(&self.claim_key)
            .and_then(|_| n.bump_last(self.number));
        Ok(after.err().map(|e| {
            format!(
                "{} was saved, but the repository could not be updated after it: {e}",
                entry.name
            )
        }))
    }
}

impl Drop for S3Stage {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        for k in &self.written {
            let _ = self.s3.delete(k);
        }
        let _ = self.s3.delete(&self.claim_key);
    }
}
