//! Who may use a repository at once (`docs/vrepo.md`, "Locking").
//!
//! One lock file, `REPO/lock`, held with `flock(2)`: shared by the commands that add entries or
//! only read (save, build, mount, list, tree, show, deps, diff, cat, verify), exclusive by the ones
//! that rewrite or remove entries (rm, consolidate, prune). The kernel releases a lock when its
//! process dies, so a lock is never left behind by a crash or a reboot, and there is nothing to
//! clear by hand. On NFS, Linux maps `flock` to byte-range locks that the server arbitrates
//! between hosts, so a live holder on another host is never overridden.
//!
//! For messages, an exclusive holder writes `REPO/lock.json` (pid, host, command, time) while
//! it holds the lock; a waiting command names it.

use crate::error::{Error, IoContext, Result};
use crate::repo::{now_rfc3339, Repo};
use rustix::fs::{flock, FlockOperation};
use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const LOCK: &str = "lock";
pub const LOCK_INFO: &str = "lock.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// A held lock; released when dropped (or when the process ends, however it ends).
pub struct RepoLock {
    _file: Option<File>,
    info: Option<PathBuf>,
    /// On object storage: the lock object (`crate::storage::lease`).
    _lease: Option<crate::storage::lease::Lease>,
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        if let Some(p) = &self.info {
            let _ = fs::remove_file(p);
        }
    }
}

/// Open (or make) a lock file for `flock`, its contents left as they are.
pub(crate) fn open_lock_file(path: &std::path::Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at(path)
}

/// Take `op` (a non-blocking `flock`) on `file`, trying again every 100 ms until `wait` has
/// passed (none: once). `Ok(false)`: another holder still had it.
pub(crate) fn flock_within(
    file: &File,
    op: FlockOperation,
    wait: Option<Duration>,
) -> std::io::Result<bool> {
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        match flock(file, op) {
            Ok(()) => return Ok(true),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                if deadline.is_some_and(|d| Instant::now() < d) {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Repo {
    /// Take the repository lock. `wait`: how long to wait for a conflicting holder (none: fail
    /// at once with the "locked" error).
    pub fn lock(&self, mode: LockMode, command: &str, wait: Option<Duration>) -> Result<RepoLock> {
        if self.store.local_root().is_none() {
            use crate::storage::lease;
            let m = match mode {
                LockMode::Shared => lease::Mode::Shared,
                LockMode::Exclusive => lease::Mode::Exclusive,
            };
            let message =
                |h: Option<&lease::Holder>| self.lock_message(mode, wait, h.map(describe));
            let l = lease::acquire(&self.store, "repo", m, command, None, wait, &message)?;
            return Ok(RepoLock {
                _file: None,
                info: None,
                _lease: Some(l),
            });
        }
        let path = self.root.join(LOCK);
        let file = open_lock_file(&path)?;
        let op = match mode {
            LockMode::Shared => FlockOperation::NonBlockingLockShared,
            LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        if !flock_within(&file, op, wait).at(&path)? {
            return Err(Error::Locked(self.holder_message(mode, wait)));
        }
        let info = if mode == LockMode::Exclusive {
            let p = self.root.join(LOCK_INFO);
            let v = serde_json::json!({
                "pid": std::process::id(),
                "host": crate::owner::hostname(),
                "command": command,
                "since": now_rfc3339(),
            });
            // Only for messages: failing to write it does not matter.
            let _ = fs::write(&p, v.to_string() + "\n");
            Some(p)
        } else {
            None
        };
        Ok(RepoLock {
            _file: Some(file),
            info,
            _lease: None,
        })
    }

    fn holder_message(&self, mode: LockMode, wait: Option<Duration>) -> String {
        let holder = fs::read_to_string(self.root.join(LOCK_INFO))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            // A holder killed with SIGKILL leaves lock.json behind: name only a live one.
            .filter(|v| crate::owner::holder_may_live(v["host"].as_str(), v["pid"].as_u64()))
            .map(|v| {
                format!(
                    "vrepo {} (pid {} on {}, since {})",
                    v["command"].as_str().unwrap_or("?"),
                    v["pid"],
                    v["host"].as_str().unwrap_or("?"),
                    v["since"].as_str().unwrap_or("?")
                )
            });
        self.lock_message(mode, wait, holder)
    }

    fn lock_message(
        &self,
        mode: LockMode,
        wait: Option<Duration>,
        holder: Option<String>,
    ) -> String {
        let waited = match wait {
            Some(w) => format!(" (waited {} s)", w.as_secs()),
            None => " (--wait SECONDS waits for it)".into(),
        };
        match (mode, holder) {
            (_, Some(h)) => {
                format!("{}: repository locked by {h}{waited}", self.root.display())
            }
            (LockMode::Shared, None) => format!(
                "{}: repository locked by a command that rewrites entries{waited}",
                self.root.display()
            ),
            (LockMode::Exclusive, None) => format!(
                "{}: repository in use by other commands (save, build, mount, list...){waited}",
                self.root.display()
            ),
        }
    }
}

/// A lock object's holder, as the local lock's messages name one.
fn describe(h: &crate::storage::lease::Holder) -> String {
    format!(
        "vrepo {} (pid {} on {}, since {})",
        h.command, h.pid, h.host, h.since
    )
}
