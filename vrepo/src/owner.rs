//! Who made a temporary name, so the leftovers of dead processes can be told from the work of
//! live ones, on this host and on others sharing the repository (NFS).
//!
//! Every temporary name vrepo makes carries its maker's tag, `PID-HOST-BOOT`: the pid, this
//! host's name (letters and digits kept, anything else `_`, at most 32 characters) and the
//! first 12 hex digits of this boot's id. A pid alone cannot tell: after a reboot it may be
//! taken again, and a pid of another host (or of another container's pid namespace) means
//! nothing here. So:
//!
//! - same host, same boot: gone when no process has that pid;
//! - same host, another boot: gone (the machine rebooted);
//! - another host: not known here. It is left alone, except by a command holding the
//!   exclusive repository lock, which no other command anywhere can hold a lock beside.
//!
//! Tags of older versions (`PID-BOOT`, or `PID`) named this host.

use std::fs;
use std::path::Path;

/// What is known of the process that made a temporary name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// It has ended, or the name is not one vrepo makes.
    Gone,
    /// It is running on this host.
    Live,
    /// It ran on another host: alive or not, this host cannot tell.
    OtherHost,
}

/// The id of this boot, shortened (12 hex digits).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', "").chars().take(12).collect())
        .unwrap_or_else(|_| "noboot".into())
}

/// This host's name, as the kernel has it.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// This host's name as it appears in tags: ASCII letters and digits, anything else `_`, at
/// most 32 characters, so a tag splits on `-` and `.` unambiguously.
pub fn host_tag() -> String {
    let t: String = hostname()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    if t.is_empty() {
        "nohost".into()
    } else {
        t
    }
}

/// Whether a process with this pid exists on this host.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// This process's tag, `PID-HOST-BOOT`.
/// Whether a lock holder that wrote down its `host` and `pid` may still hold: one of another
/// host is taken as live (its pid means nothing here), one of this host only while its pid
/// runs (a holder killed with SIGKILL leaves its line behind).
pub fn holder_may_live(host: Option<&str>, pid: Option<u64>) -> bool {
    host != Some(hostname().as_str()) || pid.is_some_and(|p| pid_alive(p as u32))
}

pub fn own_tag() -> String {
    format!("{}-{}-{}", std::process::id(), host_tag(), boot_id())
}

/// What is known of the maker of a name tagged `tag` (`PID-HOST-BOOT`, `PID-BOOT` or `PID`).
pub fn owner_of(tag: &str) -> Owner {
    let parts: Vec<&str> = tag.split('-').collect();
    let Some(pid) = parts.first().and_then(|p| p.parse::<u32>().ok()) else {
        return Owner::Gone;
    };
    let boot = match parts[1..] {
        [] => None,
        [boot] => Some(boot),
        [host, boot] => {
            if host != host_tag() {
                return Owner::OtherHost;
            }
            Some(boot)
        }
        _ => return Owner::Gone,
    };
    if boot.is_some_and(|b| b != boot_id()) || !pid_alive(pid) {
        Owner::Gone
    } else {
        Owner::Live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn tags_say_who_is_gone_live_or_elsewhere() {
        let (me, dead, host, boot) = (std::process::id(), dead_pid(), host_tag(), boot_id());
        assert_eq!(owner_of(&own_tag()), Owner::Live);
        assert_eq!(owner_of(&format!("{dead}-{host}-{boot}")), Owner::Gone);
        // This host before a reboot: gone, even with a pid that is taken now.
        assert_eq!(owner_of(&format!("{me}-{host}-000000000000")), Owner::Gone);
        // Another host: never judged from here, whatever its pid and boot.
        for tag in [
            format!("{me}-{host}x-{boot}"),
            format!("{dead}-otherhost-{boot}"),
            format!("{dead}-otherhost-000000000000"),
        ] {
            assert_eq!(owner_of(&tag), Owner::OtherHost, "{tag}");
        }
        // Older tags name this host.
        assert_eq!(owner_of(&format!("{me}-{boot}")), Owner::Live);
        assert_eq!(owner_of(&format!("{me}-000000000000")), Owner::Gone);
        assert_eq!(owner_of(&me.to_string()), Owner::Live);
        assert_eq!(owner_of(&dead.to_string()), Owner::Gone);
        // Not a tag vrepo makes.
        for tag in ["", "x", "x-y-z", "1-2-3-4"] {
            assert_eq!(owner_of(tag), Owner::Gone, "{tag}");
        }
    }

    #[test]
    fn host_tags_have_no_separators() {
        let t = host_tag();
        assert!(!t.is_empty() && t.len() <= 32, "{t}");
        assert!(
            t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{t}"
        );
    }
}
