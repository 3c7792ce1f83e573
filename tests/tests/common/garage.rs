//! Garage 2.5.0 (<https://garagehq.deuxfleurs.fr>), the S3-compatible store the tests of S3
//! repositories run against: real servers on loopback, started by the test in a temporary
//! folder, killed and removed when the handle is dropped. No mock.
//!
//! ```ignore
//! let g = Garage::single();                      // one node, a key, a bucket: ~1 s
//! let repo = g.repo_url("r1");                   // s3:http://127.0.0.1:PORT/vml-test/r1
//! Command::new(bin("vrepo")).envs(g.env()).args(["-r", &repo, "init"]);
//! let mut c = Garage::cluster(3);                // three nodes, replication factor 3
//! c.kill(2);                                     // SIGKILL; c.restart(2) brings it back
//! ```
//!
//! The binary: `VML_GARAGE` if set (scripts/test.sh sets it), else
//! `${VML_CACHE:-$HOME/.cache/vml}/garage-2.5.0/bin/garage`, which `scripts/need-garage.sh`
//! builds. A test never builds or downloads it: it panics naming the script.
//!
//! Each node has its own folder `nI/` (config.toml, meta/, data/, and log, the server's output),
//! three free loopback ports (RPC, S3 API, admin API) chosen by binding port 0 (a start that
//! loses a port to another process is retried with new ports), and runs with a death signal
//! tied to the test process: a test killed by a timeout leaves no server behind. Every wait is
//! bounded ([`STARTUP`]); a failure panics with the node's log tail. `VML_GARAGE_KEEP=1` keeps
//! the folder (logs, configs) and prints where it is.
//!
//! [`Garage::curl`] and [`Garage::request`] make signed S3 requests with curl's `--aws-sigv4`:
//! an outside view of the bucket for the tests.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The Garage release the tests are written against (scripts/need-garage.sh builds it).
pub const VERSION: &str = "2.5.0";
/// S3 region of the servers (Garage's default): requests must be signed for it.
pub const REGION: &str = "garage";
/// The bucket `single` and `cluster` create, with read, write and owner rights for the key.
pub const BUCKET: &str = "vml-test";
/// Bound on each wait: a node's start, the cluster's layout, a bucket becoming visible.
pub const STARTUP: Duration = Duration::from_secs(30);

/// Path of the Garage binary (see the module's doc); panics when it is missing.
pub fn binary() -> PathBuf {
    let var = |name| std::env::var_os(name).map(PathBuf::from);
    locate(var("VML_GARAGE"), var("VML_CACHE"), var("HOME")).unwrap_or_else(|e| panic!("{e}"))
}

/// Where the binary is given VML_GARAGE, VML_CACHE and HOME; the error says what to run.
pub fn locate(
    vml_garage: Option<PathBuf>,
    vml_cache: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf, String> {
    if let Some(p) = vml_garage {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "VML_GARAGE={} is not a file; unset it and run scripts/need-garage.sh to build Garage {VERSION}",
                p.display()
            ))
        };
    }
    let cache = vml_cache
        .or_else(|| home.map(|h| h.join(".cache/vml")))
        .ok_or("neither VML_CACHE nor HOME is set: cannot find Garage's cache")?;
    let p = cache.join(format!("garage-{VERSION}/bin/garage"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "Garage {VERSION} is not installed at {}: run scripts/need-garage.sh once (it builds it with cargo, 10-20 minutes), or set VML_GARAGE",
            p.display()
        ))
    }
}

/// One or more Garage nodes sharing a key and a bucket; dropped, it kills them and removes its
/// folder.
pub struct Garage {
    bin: PathBuf,
    nodes: Vec<Node>,
    key_id: String,
    secret: String,
    rpc_secret: String,
    admin_token: String,
    // Last: removed after the nodes are killed.
    dir: TempDir,
}

struct Node {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    ports: Ports,
    /// Full node id (hex public key).
    id: String,
    child: Option<Child>,
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    rpc: u16,
    s3: u16,
    admin: u16,
}

/// The line that opens each start's part of a node's log.
const START_MARK: &str = "==== vml-tests: garage server";

/// A node's start that lost one of its ports to another process.
struct PortTaken;

/// The reply to a signed S3 request made with curl.
pub struct Reply {
    /// HTTP status; 0 when no HTTP reply came (see `curl_error`).
    pub status: u16,
    /// Response headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// curl's error line when it failed before a reply (connection refused: exit 7).
    pub curl_error: Option<String>,
}

impl std::fmt::Debug for Reply {
    /// The body as text, cut at 600 bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(600)]);
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &body)
            .field("body_len", &self.body.len())
            .field("curl_error", &self.curl_error)
            .finish()
    }
}

impl Reply {
    /// The first header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The S3 error code of an error reply (`<Code>...</Code>`), if any.
    pub fn code(&self) -> Option<String> {
        xml_values(&self.text(), "Code").into_iter().next()
    }
}

/// `s` as SigV4 wants a query value: every byte but `A-Za-z0-9-_.~` as `%XX`.
pub fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of every `<tag>...</tag>` of `xml`, in order (enough for S3's flat replies).
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].to_string());
        rest = &rest[j + close.len()..];
    }
    out
}

impl Garage {
    /// One node (replication factor 1) with a key and the bucket [`BUCKET`].
    pub fn single() -> Garage {
        Garage::start(1)
    }

    /// `n` nodes connected to each other, replication factor `n` (every node stores every
    /// object), one zone, with a key and the bucket [`BUCKET`]. Returns once every node is
    /// healthy and serves the bucket through its own S3 endpoint.
    pub fn cluster(n: usize) -> Garage {
        assert!(n >= 1, "a cluster of {n} nodes");
        Garage::start(n)
    }

    fn start(n: usize) -> Garage {
        let bin = binary();
        let dir = tempfile::Builder::new()
            .prefix("vml-garage-")
            .tempdir()
            .expect("temporary folder for Garage");
        let mut g = Garage {
            bin,
            nodes: Vec::new(),
            key_id: String::new(),
            secret: String::new(),
            rpc_secret: random_hex(32),
            admin_token: random_hex(32),
            dir,
        };
        for i in 0..n {
            let node_dir = g.dir.path().join(format!("n{i}"));
            fs::create_dir_all(&node_dir).unwrap();
            g.nodes.push(Node {
                config: node_dir.join("config.toml"),
                log: node_dir.join("log"),
                dir: node_dir,
                ports: Ports {
                    rpc: 0,
                    s3: 0,
                    admin: 0,
                },
                id: String::new(),
                child: None,
            });
            g.first_start(i, n);
        }
        g.form_cluster();
        // The key and the bucket, made through the first node.
        let key = g.json_api(0, "CreateKey", r#"{"name":"vml-test"}"#);
        g.key_id = json_str(&key, "accessKeyId");
        g.secret = json_str(&key, "secretAccessKey");
        g.create_bucket(BUCKET);
        g
    }

    /// Start node `i` for the first time: new ports until it gets all three.
    fn first_start(&mut self, i: usize, replication: usize) {
        let deadline = Instant::now() + STARTUP;
        for _attempt in 0..5 {
            let [rpc, s3, admin] = free_ports();
            self.nodes[i].ports = Ports { rpc, s3, admin };
            self.write_config(i, replication, false);
            self.spawn(i);
            match self.wait_up(i, deadline) {
                Ok(()) => {
                    self.nodes[i].id = self.node_id(i);
                    return;
                }
                Err(PortTaken) => {
                    self.kill(i);
                    let log = &self.nodes[i].log;
                    let old = log.with_extension(format!("port-taken-{_attempt}"));
                    let _ = fs::rename(log, old);
                }
            }
        }
        panic!(
            "Garage node {i}: every start lost a port to another process\n{}",
            self.log_tail(i)
        );
    }

    /// Node `i`'s config.toml. With `peers`, the other nodes are its bootstrap peers: a
    /// restarted node connects to them at once, instead of waiting for their 30 s retry. (Not
    /// on a first start: the node would connect to the nodes started before it while those
    /// connect to it with `node connect`, two connections for a pair; see `form_cluster`.)
    fn write_config(&self, i: usize, replication: usize, peers: bool) {
        let n = &self.nodes[i];
        let p = n.ports;
        let peers: Vec<String> = (self.nodes.iter().enumerate())
            .filter(|(j, m)| *j != i && (peers || !m.id.is_empty()))
            .map(|(_, m)| format!("\"{}@127.0.0.1:{}\"", m.id, m.ports.rpc))
            .collect();
        let config = format!(
            r#"# Garage node {i} of a vml-tests harness (tests/tests/common/garage.rs)
metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "lmdb"
replication_factor = {replication}

rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
bootstrap_peers = [{peers}]

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
"#,
            meta = n.dir.join("meta").display(),
            data = n.dir.join("data").display(),
            rpc = p.rpc,
            s3 = p.s3,
            admin = p.admin,
            secret = self.rpc_secret,
            peers = peers.join(", "),
            token = self.admin_token,
        );
        fs::write(&n.config, config).unwrap();
    }

    /// Start node `i`'s server (its output appended to its log).
    fn spawn(&mut self, i: usize) {
        let n = &self.nodes[i];
        assert!(n.child.is_none(), "Garage node {i} is running");
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        writeln!(log, "{START_MARK} (node {i}) ====").unwrap();
        let mut cmd = self.command();
        cmd.arg("-c")
            .arg(&n.config)
            .arg("server")
            .env("RUST_LOG", "netapp=info,garage=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.nodes[i].child = Some(spawn_tied(cmd));
    }

    /// Wait until node `i` runs and its three ports are its own.
    fn wait_up(&mut self, i: usize, deadline: Instant) -> Result<(), PortTaken> {
        let ports = self.nodes[i].ports;
        loop {
            // This start's part of the log.
            let log = fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
            let log = log.rsplit(START_MARK).next().unwrap_or_default();
            let taken = log.contains("Address already in use") || log.contains("os error 98");
            let exited = self.nodes[i]
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
                .is_some();
            if taken {
                return Err(PortTaken);
            }
            if exited || log.contains("server exited with error") {
                panic!("Garage node {i} failed to start\n{}", self.log_tail(i));
            }
            // The admin API answers our token (so it is ours, not another's on that port), the
            // S3 port takes connections, and the CLI reaches the node over RPC (our secret).
            if admin_status(ports.admin, "/v2/GetClusterHealth", &self.admin_token) == Some(200)
                && TcpStream::connect(("127.0.0.1", ports.s3)).is_ok()
                && self
                    .cli(i)
                    .args(["json-api", "GetClusterHealth"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "Garage node {i} did not start within {STARTUP:?}\n{}",
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connect the nodes to each other, give each a role (zone dc1, 1 GB) and apply the
    /// layout; then wait until every node is healthy.
    fn form_cluster(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            for j in i + 1..n {
                let peer = format!("{}@127.0.0.1:{}", self.nodes[j].id, self.nodes[j].ports.rpc);
                self.cli_ok(i, &["node", "connect", &peer]);
            }
        }
        for i in 0..n {
            self.write_config(i, n, true);
        }
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", "1G"];
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        assign.extend(ids.iter().map(String::as_str));
        self.cli_ok(0, &assign);
        self.cli_ok(0, &["layout", "apply", "--version", "1"]);
        let deadline = Instant::now() + STARTUP;
        for i in 0..n {
            self.wait_healthy(i, n, deadline);
        }
    }

    /// Wait until node `i` sees the layout and `up` storage nodes, all partitions served.
    fn wait_healthy(&self, i: usize, up: usize, deadline: Instant) {
        loop {
            let h = self.json_api(i, "GetClusterHealth", "");
            let ok = h["storageNodes"] == self.nodes.len()
                && h["storageNodesUp"] == up
                && h["partitionsQuorum"] == h["partitions"]
                && h["partitions"] != 0
                && (up < self.nodes.len() || h["status"] == "healthy");
            if ok {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "Garage node {i}: cluster not healthy within {STARTUP:?}: {h}\n{}",
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Create bucket `name` (a global alias) with read, write and owner rights for the key;
    /// returns once every running node serves it to the key.
    pub fn create_bucket(&self, name: &str) {
        self.cli_ok(0, &["bucket", "create", name]);
        self.cli_ok(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                name,
                "--key",
                &self.key_id,
            ],
        );
        let deadline = Instant::now() + STARTUP;
        for i in self.running() {
            loop {
                let r = self.request(i, "HEAD", &format!("/{name}"), None, &[]);
                if r.status == 200 {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "bucket {name} not served by Garage node {i} within {STARTUP:?}: HEAD gave {} {:?}\n{}",
                        r.status,
                        r.curl_error,
                        self.log_tail(i)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL node `i` (no-op when it is not running) and reap it. Returns at once: the
    /// survivors may not know yet. A survivor with an outgoing connection to the killed node
    /// notices only when its next status exchange (every 10 s) fails; until then a request
    /// through it that involves the killed node (a GET or PUT) can stall, up to ~10 s, before it
    /// succeeds with the other nodes (docs/garage-notes.md, f).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start node `i` again (same folder, ports and identity) after [`kill`](Self::kill);
    /// returns once it is up and sees every running node.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.nodes[i].child.is_none(),
            "Garage node {i} is running: kill it first"
        );
        let deadline = Instant::now() + STARTUP;
        self.spawn(i);
        if self.wait_up(i, deadline).is_err() {
            panic!(
                "Garage node {i}: a port of its was taken while it was down\n{}",
                self.log_tail(i)
            );
        }
        let up = self.running().len();
        self.wait_healthy(i, up, deadline);
    }

    /// Wait (up to `within`) until node `i` sees `up` storage nodes up, and say whether it
    /// did. A node that kept a connection to a killed process notices it came back only at
    /// a later status exchange.
    pub fn sees_up(&self, i: usize, up: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let h = self.json_api(i, "GetClusterHealth", "");
            if h["storageNodesUp"] == up && h["partitionsQuorum"] == h["partitions"] {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// S3 endpoint of the first node, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.endpoint_of(0)
    }

    /// S3 endpoint of node `i`.
    pub fn endpoint_of(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].ports.s3)
    }

    pub fn region(&self) -> &str {
        REGION
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// A vrepo repository at `prefix` of the bucket, through the first node:
    /// `s3:http://127.0.0.1:PORT/vml-test/PREFIX`.
    pub fn repo_url(&self, prefix: &str) -> String {
        self.repo_url_of(0, prefix)
    }

    /// The same through node `i`'s endpoint.
    pub fn repo_url_of(&self, i: usize, prefix: &str) -> String {
        format!("s3:{}/{BUCKET}/{prefix}", self.endpoint_of(i))
    }

    /// The credentials as the environment of a command: AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and AWS_REGION.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("AWS_REGION", REGION.to_string()),
        ]
    }

    /// The temporary folder holding the nodes' folders.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s log (the server's stdout and stderr).
    pub fn log(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// The last 40 lines of node `i`'s log, for panic messages.
    pub fn log_tail(&self, i: usize) -> String {
        let log = fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "---- {} (last 40 lines) ----\n{tail}",
            self.nodes[i].log.display()
        )
    }

    /// The binary, without the caller's GARAGE_* variables (they would override the config:
    /// GARAGE_RPC_SECRET, GARAGE_ADMIN_TOKEN, GARAGE_RPC_HOST...).
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GARAGE_") {
                c.env_remove(k);
            }
        }
        c
    }

    /// `garage -c CONFIG` of node `i`: the admin CLI, talking to that node over RPC.
    pub fn cli(&self, i: usize) -> Command {
        let mut c = self.command();
        c.arg("-c")
            .arg(&self.nodes[i].config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    /// `garage ARGS` through node `i`, which must succeed.
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> Output {
        let out = self
            .cli(i)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        assert!(
            out.status.success(),
            "garage {} (node {i}) failed with {}: {}{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(i)
        );
        out
    }

    /// `garage json-api ENDPOINT [PAYLOAD]` through node `i` (no payload when it is empty):
    /// the admin API's JSON reply.
    pub fn json_api(&self, i: usize, endpoint: &str, payload: &str) -> serde_json::Value {
        let mut args = vec!["json-api", endpoint];
        if !payload.is_empty() {
            args.push(payload);
        }
        let out = self.cli_ok(i, &args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "garage json-api {endpoint}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Node `i`'s full id, from `garage node id -q` (`HEXID@127.0.0.1:PORT`).
    fn node_id(&self, i: usize) -> String {
        let out = self.cli_ok(i, &["node", "id", "-q"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .trim()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "garage node id -q: {text:?}"
        );
        id
    }

    /// curl with the key's SigV4 signing for Garage's region (`-sS`), the URL still to add.
    pub fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--aws-sigv4"])
            .arg(format!("aws:amz:{REGION}:s3"))
            .arg("--user")
            .arg(format!("{}:{}", self.key_id, self.secret));
        c
    }

    /// A signed S3 request to node `i`: `path` is the URL's path and query (`/BUCKET/KEY`,
    /// `/BUCKET?list-type=2`; curl 7.88 signs the query as written: its parameters must come
    /// sorted, each value through [`uri_encode`]), `body` is sent as is, `headers` are added (`If-None-Match: *`);
    /// the payload's SHA-256 goes in `x-amz-content-sha256` unless `headers` has one.
    pub fn request(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.request_with(self.curl(), i, method, path, body, headers)
    }

    /// [`request`](Self::request) with another curl (other credentials, another region).
    pub fn request_with(
        &self,
        mut c: Command,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Reply {
        static N: AtomicU64 = AtomicU64::new(0);
        let head = self.dir.path().join(format!(
            "curl-{}-{}.head",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let body_out = head.with_extension("body");
        c.arg("-D").arg(&head).arg("-o").arg(&body_out);
        if method == "HEAD" {
            c.arg("-I");
        } else {
            c.args(["-X", method]);
        }
        for (k, v) in headers {
            c.arg("-H").arg(format!("{k}: {v}"));
        }
        // Garage wants the payload's hash (curl 7.88 does not send it), and checks it.
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("x-amz-content-sha256"))
        {
            let hash = super::sha256_hex(body.unwrap_or_default());
            c.arg("-H").arg(format!("x-amz-content-sha256: {hash}"));
        }
        if body.is_some() {
            // Instead of curl's form type (removing it with `-H Content-Type:` breaks curl's
            // signature: it still names the header as signed).
            c.args(["--data-binary", "@-"]);
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                c.args(["-H", "Content-Type: application/octet-stream"]);
            }
        }
        c.arg(format!("{}{path}", self.endpoint_of(i)))
            .stdin(if body.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("cannot run curl");
        if let Some(b) = body {
            child.stdin.take().unwrap().write_all(b).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        reply(out, &head, &body_out)
    }

    /// PUT `body` at `key` of the bucket through node `i`.
    pub fn put(&self, i: usize, key: &str, body: &[u8]) -> Reply {
        self.request(i, "PUT", &format!("/{BUCKET}/{key}"), Some(body), &[])
    }

    /// GET `key` of the bucket through node `i`.
    pub fn get(&self, i: usize, key: &str) -> Reply {
        self.request(i, "GET", &format!("/{BUCKET}/{key}"), None, &[])
    }

    /// DELETE `key` of the bucket through node `i`.
    pub fn delete(&self, i: usize, key: &str) -> Reply {
        self.request(i, "DELETE", &format!("/{BUCKET}/{key}"), None, &[])
    }

    /// The keys under `prefix` (ListObjectsV2, one page of up to 1000) through node `i`.
    pub fn list(&self, i: usize, prefix: &str) -> Vec<String> {
        let r = self.request(
            i,
            "GET",
            &format!("/{BUCKET}?list-type=2&prefix={}", uri_encode(prefix)),
            None,
            &[],
        );
        assert_eq!(
            r.status,
            200,
            "ListObjectsV2 through node {i}: {}",
            r.text()
        );
        xml_values(&r.text(), "Key")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::env::var_os("VML_GARAGE_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, TempDir::new().unwrap());
            eprintln!(
                "VML_GARAGE_KEEP: Garage's folder kept: {}",
                dir.keep().display()
            );
        }
        // Otherwise the folder goes with `dir`, dropped after this.
    }
}

/// A curl run's output as a [`Reply`] (its header and body files are removed).
fn reply(out: Output, head: &Path, body: &Path) -> Reply {
    let head_text = fs::read_to_string(head).unwrap_or_default();
    let body = fs::read(body).unwrap_or_default();
    let _ = fs::remove_file(head);
    let _ = fs::remove_file(head.with_extension("body"));
    // The last header block (after a `100 Continue` there are two).
    let block = head_text
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Reply {
        status,
        headers,
        body,
        curl_error: (!out.status.success()).then(|| format!("{}: {err}", out.status)),
    }
}

/// Three distinct free loopback ports (bound at once, then released for Garage to take).
fn free_ports() -> [u16; 3] {
    let ls: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    let p: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
    [p[0], p[1], p[2]]
}

/// The HTTP status of `GET PATH` on the admin API at `port` with the bearer token; `None`
/// when nothing answers.
fn admin_status(port: u16, path: &str, token: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.split_whitespace().nth(1)?.parse().ok()
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn json_str(v: &serde_json::Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .to_string()
}

/// Spawn `cmd` so that it gets SIGKILL when this test process dies (a timeout, a kill): every
/// server is started from one thread that lives as long as the process, because the kernel's
/// parent-death signal follows the thread that forked, not the process.
fn spawn_tied(cmd: Command) -> Child {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("garage-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    let parent = rustix::process::getpid();
                    // SAFETY: only async-signal-safe system calls between fork and exec.
                    unsafe {
                        cmd.pre_exec(move || {
                            rustix::process::set_parent_process_death_signal(Some(
                                rustix::process::Signal::KILL,
                            ))?;
                            // The parent died before the prctl: nobody would kill us.
                            if rustix::process::getppid() != Some(parent) {
                                return Err(std::io::Error::other("parent gone"));
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("garage spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap()
        .send((cmd, reply_tx))
        .expect("garage spawner thread is gone");
    reply_rx
        .recv()
        .expect("garage spawner thread is gone")
        .expect("cannot start garage")
}
