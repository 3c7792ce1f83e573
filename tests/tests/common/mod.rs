//! Helpers shared by the end-to-end tests: finding the built binaries, running outside
//! oracles (qemu-img, qemu-io, vmdkinfo), and hashing files.
#![allow(dead_code)]

pub mod esxgen;
pub mod garage;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of a workspace binary, built next to this test executable.
///
/// `cargo test --workspace` and `cargo nextest run --workspace` build every package's binaries
/// before running tests (each tool crate has integration tests of its own). Running this crate
/// alone needs `cargo build --workspace --bins` first; the panic says so.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/this-test -> target/debug/NAME
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run the whole workspace (`cargo nextest run --workspace`) or `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// Path of the binary `name` of workspace package `package`, built first (`cargo build -p
/// PACKAGE --bin NAME`, a no-op when it is up to date) so that running this crate alone
/// (`cargo nextest run -p vml-tests`) tests the current sources, not a stale binary.
///
/// Cargo builds a package's binaries for tests only when that package has integration tests of
/// its own; this does not depend on it. Under nextest (one process per test) the build is done
/// once per run: a stamp named after `NEXTEST_RUN_ID` records it.
pub fn fresh_bin(package: &str, name: &str) -> PathBuf {
    let stamp = std::env::var("NEXTEST_RUN_ID").ok().map(|id| {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fresh-{package}-{name}-{id}"))
    });
    if stamp.as_deref().is_some_and(Path::exists) {
        return bin(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/PROFILE/deps/this-test -> target/PROFILE
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", package, "--bin", name])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    run(&mut cmd);
    if let Some(s) = stamp {
        std::fs::write(s, b"").expect("stamp in CARGO_TARGET_TMPDIR");
    }
    bin(name)
}

/// Run a command, panicking with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img ARGS...`, which must succeed.
pub fn qemu_img(args: &[&str]) -> Output {
    run(Command::new("qemu-img").args(args))
}

/// `qemu-io -f vmdk FILE -c CMD...`, which must succeed.
pub fn qemu_io(file: &Path, fmt: &str, cmds: &[&str]) -> Output {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg(fmt).arg(file);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = run(&mut c);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("error") && !text.contains("failed"),
        "qemu-io {cmds:?}: {text}"
    );
    out
}

/// The guest-visible bytes of `disk` as qemu-img reads them (the oracle).
pub fn qemu_raw(disk: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.qemu.raw",
        disk.file_name().unwrap().to_string_lossy()
    ));
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        disk.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    std::fs::read(&out).unwrap()
}

/// The guest-visible bytes of `disk` as `vmdk-parse cat` writes them to stdout.
pub fn vmdk_parse_cat(disk: &Path) -> Vec<u8> {
    run(Command::new(bin("vmdk-parse")).arg("cat").arg(disk)).stdout
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the project's committed fixtures are.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A tmpfs mounted for a test (unmounted when dropped): a file system that can be filled.
pub struct Mount(pub PathBuf);

impl Mount {
    /// `None` (with a SKIPPED line) when mounting is not allowed here.
    pub fn tmpfs(at: &Path, bytes: u64) -> Option<Mount> {
        fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0755"))
            .arg("tmpfs")
            .arg(at)
            .output()
            .ok()?;
        if !o.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Some(Mount(at.to_path_buf()))
    }

    /// Bytes free for files.
    pub fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        st.f_bavail * st.f_frsize
    }

    /// Fill the file system with `filler` so that `free` bytes stay free.
    pub fn leave_free(&self, filler: &Path, free: u64) {
        let _ = fs::remove_file(filler);
        let n = self.free().saturating_sub(free);
        let f = fs::File::create(filler).unwrap();
        // tmpfs allocates pages as they are written.
        let chunk = vec![0x5au8; (1 << 20) as usize];
        let mut w = std::io::BufWriter::new(f);
        let mut left = n;
        while left > 0 {
            let k = left.min(1 << 20);
            std::io::Write::write_all(&mut w, &chunk[..k as usize]).unwrap();
            left -= k;
        }
        w.into_inner().unwrap().sync_all().unwrap();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
