//! Locks on object storage, where no `flock` exists: lock objects with a lease.
//!
//! A holder writes `locks/SCOPE/MODE-TAG-NANOS.json` (its pid, host, command and time), then
//! lists `locks/SCOPE/`. When it sees a live lock that conflicts with its own (an exclusive one
//! conflicts with every other, a shared one with exclusive ones), it removes its own and
//! fails, or with `--wait` tries again after a pause; two that arrive at once both step back,
//! so two conflicting holders never both go on. A holder rewrites its object every
//! [`REFRESH`]; one not rewritten for [`LEASE`] is dead (killed, or its host lost) and is
//! ignored and removed. Ages are measured by the store's own clock (the objects' times, ours
//! among them), so the hosts' clocks do not matter.
//!
//! The guarantee needs a store whose listing shows an object as soon as its PUT returned
//! (read-after-write consistency: AWS S3 since 2020, Garage, Ceph RGW, MinIO). A holder that
//! cannot refresh for a whole lease (a host frozen for a minute) may be taken for dead: a
//! save checks [`any_lost`] before it publishes its entry, and fails rather than publish
//! unprotected.

use super::Storage;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a lock object lives without being rewritten.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often a holder rewrites its lock object.
pub const REFRESH: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Exclusive => "exclusive",
        }
    }
}

/// A held lease; released (its object removed) when dropped.
pub struct Lease {
    store: Arc<dyn Storage>,
    key: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    lost: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    /// Whether a refresh failed for longer than the lease: another command may have taken
    /// the lock since.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let (m, c) = &*self.stop;
            *m.lock().expect("lease") = true;
            c.notify_all();
        }
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let _ = self.store.delete(&self.key);
    }
}

/// Set when a lease of this process went a whole lease without a refresh.
static LOST: AtomicBool = AtomicBool::new(false);

/// Whether a lease of this process may have been taken for dead (see the module's notes).
pub fn any_lost() -> bool {
    LOST.load(Ordering::Relaxed)
}

/// What a lock object holds.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct Holder {
    pub mode: String,
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub since: String,
    /// What the holder does: the working area a save reads, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn mode_of_key(name: &str) -> Option<Mode> {
    if name.starts_with("exclusive-") {
        Some(Mode::Exclusive)
    } else if name.starts_with("shared-") {
        Some(Mode::Shared)
    } else {
        None
    }
}

/// Whether the lock object `MODE-TAG-NANOS.json` names a process of this host that is gone.
fn holder_gone(name: &str) -> bool {
    let tag = name
        .split_once('-')
        .and_then(|(_, rest)| rest.strip_suffix(".json"))
        .and_then(|rest| rest.rsplit_once('-'))
        .map_or("", |(tag, _)| tag);
    // Only a whole PID-HOST-BOOT tag is judged: anything else is left to its lease.
    tag.split('-').count() == 3 && crate::owner::owner_of(tag) == crate::owner::Owner::Gone
}

/// Take a lease on `scope` in `mode`, trying until `wait` has passed (none: once). On a
/// conflict, the error is [`Error::Locked`] with `message(holder)`.
pub fn acquire(
    store: &Arc<dyn Storage>,
    scope: &str,
    mode: Mode,
    command: &str,
    detail: Option<&str>,
    wait: Option<Duration>,
    message: &dyn Fn(Option<&Holder>) -> String,
) -> Result<Lease> {
    let deadline = wait.map(|w| Instant::now() + w);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = format!("locks/{scope}/");
    let key = format!(
        "{dir}{}-{}-{nanos}.json",
        mode.as_str(),
        crate::owner::own_tag()
    );
    let body = serde_json::to_vec(&Holder {
        mode: mode.as_str().into(),
        pid: std::process::id(),
        host: crate::owner::hostname(),
        command: command.into(),
        since: crate::repo::now_rfc3339(),
        detail: detail.map(str::to_owned),
    })
    .expect("serializable");
    let mut attempt = 0u64;
    loop {
        store.put(&key, &body)?;
        let listed = store.list(&dir)?;
        let now = listed
            .iter()
            .find(|l| l.key == key)
            .and_then(|l| l.modified_ns);
        let mut conflict = None;
        for l in &listed {
            if l.key == key {
                continue;
            }
            let Some(theirs) = l.key.strip_prefix(&dir).and_then(mode_of_key) else {
                continue;
            };
            let age = match (now, l.modified_ns) {
                (Some(n), Some(t)) => Duration::from_nanos((n - t).max(0) as u64),
                _ => Duration::ZERO,
            };
            let name = l.key.strip_prefix(&dir).unwrap_or_default();
            if age > LEASE || holder_gone(name) {
                // Dead: its holder stopped refreshing it a lease ago, or it is a process of
                // this host that is gone (killed: nothing refreshes its lock any more).
                let _ = store.delete(&l.key);
                continue;
            }
            if mode == Mode::Exclusive || theirs == Mode::Exclusive {
                conflict = Some(l.key.clone());
            }
        }
        let Some(other) = conflict else {
            return Ok(start(store.clone(), key, body));
        };
        store.delete(&key)?;
        if deadline.is_none_or(|d| Instant::now() >= d) {
            let holder = store
                .get(&other, 1 << 16)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
            return Err(Error::Locked(message(holder.as_ref())));
        }
        attempt += 1;
        let jitter = (std::process::id() as u64 * 7919 + attempt * 104_729) % 700;
        std::thread::sleep(Duration::from_millis(300 + jitter));
    }
}

fn start(store: Arc<dyn Storage>, key: String, body: Vec<u8>) -> Lease {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let lost = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (store, key, stop, lost) = (store.clone(), key.clone(), stop.clone(), lost.clone());
        std::thread::Builder::new()
            .name("vrepo-lease".into())
            .spawn(move || {
                let mut last_ok = Instant::now();
                loop {
                    let (m, c) = &*stop;
                    let guard = m.lock().expect("lease");
                    let (guard, _) = c
                        .wait_timeout_while(guard, REFRESH, |stopped| !*stopped)
                        .expect("lease");
                    if *guard {
                        return;
                    }
                    drop(guard);
                    // A lock object removed by another command means we were taken for
                    // dead: never write it back.
                    if let Ok(None) = store.size(&key) {
                        lost.store(true, Ordering::Relaxed);
                        LOST.store(true, Ordering::Relaxed);
                        return;
                    }
                    if store.put(&key, &body).is_ok() {
                        last_ok = Instant::now();
                    } else if last_ok.elapsed() > LEASE {
                        lost.store(true, Ordering::Relaxed);
                        LOST.store(true, Ordering::Relaxed);
                    }
                }
            })
            .ok()
    };
    Lease {
        store,
        key,
        stop,
        lost,
        refresher,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_of_a_dead_process_of_this_host_is_known_dead() {
        let host = crate::owner::host_tag();
        let boot = crate::owner::boot_id();
        let dead = format!("exclusive-4000000-{host}-{boot}-123.json");
        assert!(holder_gone(&dead), "{dead}");
        let me = format!("shared-{}-5.json", crate::owner::own_tag());
        assert!(!holder_gone(&me), "{me}");
        assert!(!holder_gone("shared-12-otherhost-0123456789ab-5.json"));
        assert!(!holder_gone("shared-garbage.json"));
        assert!(!holder_gone("exclusive-12-5.json"));
    }
}
