//! The `vmx-parse` binary: JSON schemas pinned with mirror types that reject unknown fields,
//! an exit code for each kind of failure, edits that move nothing else, and hostile inputs that
//! must give one-line errors or documented warnings.

use assert_cmd::Command;
use serde::Deserialize;
use std::fs;
use std::path::{Path, PathBuf};

fn vx() -> Command {
    Command::cargo_bin("vmx-parse").expect("binary built")
}

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Show {
    schema: String,
    path: String,
    encoding: String,
    display_name: Option<String>,
    guest_os: Option<String>,
    config_version: Option<String>,
    hardware_version: Option<String>,
    memory_mb: Option<u64>,
    num_vcpus: Option<u64>,
    firmware: Option<String>,
    uuid: Uuids,
    disks: Vec<DiskDevice>,
    cdroms: Vec<Cdrom>,
    nics: Vec<Nic>,
    nvram: Option<String>,
    suspend_state: Option<String>,
    extended_config_file: Option<String>,
    swap_file: Option<String>,
    encrypted: bool,
    keys: Vec<KeyValue>,
    duplicates: Vec<Duplicate>,
    warnings: Vec<Warning>,
    problems: Vec<Problem>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Uuids {
    bios: Option<String>,
    location: Option<String>,
    vc: Option<String>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct DiskDevice {
    node: String,
    bus: String,
    controller: u32,
    unit: u32,
    file_name: String,
    device_type: Option<String>,
    mode: Option<String>,
    independent: bool,
    present: bool,
    controller_type: Option<String>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Cdrom {
    node: String,
    bus: String,
    controller: u32,
    unit: u32,
    file_name: Option<String>,
    device_type: String,
    present: bool,
    start_connected: Option<bool>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Nic {
    index: u32,
    present: bool,
    virtual_dev: Option<String>,
    address_type: Option<String>,
    mac: Option<String>,
    network_name: Option<String>,
    connection_type: Option<String>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct KeyValue {
    line: usize,
    key: String,
    value: String,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Duplicate {
    key: String,
    lines: Vec<usize>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Warning {
    line: usize,
    message: String,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Problem {
    line: usize,
    key: Option<String>,
    message: String,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Vmsd {
    schema: String,
    path: String,
    encoding: String,
    last_uid: Option<u64>,
    current_uid: Option<u64>,
    num_snapshots: Option<u64>,
    snapshots: Vec<Snapshot>,
    duplicates: Vec<Duplicate>,
    warnings: Vec<Warning>,
    problems: Vec<Problem>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Snapshot {
    index: u32,
    uid: Option<u64>,
    parent_uid: Option<u64>,
    children: Vec<u64>,
    file_name: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
    create_time_us: Option<i64>,
    create_time: Option<String>,
    is_current: bool,
    disks: Vec<SnapshotDisk>,
}
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SnapshotDisk {
    index: u32,
    node: Option<String>,
    file_name: Option<String>,
}

fn stderr_line(out: &std::process::Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(s.lines().count(), 1, "one line on stderr: {s:?}");
    assert!(s.starts_with("vmx-parse: "), "{s:?}");
    s
}

#[test]
fn show_schema_is_pinned() {
    let out = vx().arg("show").arg(corpus("esxi8.vmx")).output().unwrap();
    assert!(out.status.success());
    let s: Show = serde_json::from_slice(&out.stdout).expect("show matches the pinned schema");
    assert_eq!(s.schema, "vmx-parse.show/2");
    assert!(s.problems.is_empty());
    assert_eq!(s.encoding, "UTF-8");
    assert_eq!(s.display_name.as_deref(), Some("web01"));
    assert_eq!(s.disks.len(), 2);
    assert_eq!(s.cdroms.len(), 1);
    assert_eq!(s.nics.len(), 1);
    assert_eq!(s.keys[0].key, ".encoding");
    assert_eq!(s.keys[0].line, 1);
    assert_eq!(s.keys.len(), 57);

    let out = vx()
        .arg("show")
        .arg(corpus("odd-lines.vmx"))
        .output()
        .unwrap();
    assert!(out.status.success(), "odd lines are tolerated");
    let s: Show = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.warnings.len(), 4);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 4, "{err}");
    assert!(err.lines().all(|l| l.starts_with("vmx-parse: warning: ")));
    assert!(err.contains("line 4: unterminated quote"), "{err}");

    let out = vx()
        .arg("show")
        .arg(corpus("duplicates.vmx"))
        .output()
        .unwrap();
    let s: Show = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.duplicates.len(), 2);
    assert_eq!(s.memory_mb, Some(4096));
}

#[test]
fn vmsd_schema_is_pinned() {
    let out = vx()
        .arg("vmsd")
        .arg(corpus("esxi-4snap.vmsd"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Vmsd = serde_json::from_slice(&out.stdout).expect("vmsd matches the pinned schema");
    assert_eq!(v.schema, "vmx-parse.vmsd/2");
    assert!(v.problems.is_empty());
    assert_eq!(v.snapshots.len(), 4);
    assert_eq!(v.snapshots[1].children, [3, 4]);
    assert_eq!(
        v.snapshots[0].create_time.as_deref().map(|t| &t[..19]),
        Some("2022-11-28T15:24:12")
    );
    assert_eq!(v.snapshots[3].disks[0].node.as_deref(), Some("scsi0:0"));
}

#[test]
fn get_prints_values_and_exits_1_for_absent_keys() {
    let out = vx()
        .args(["get"])
        .arg(corpus("annotation.vmx"))
        .args(["ANNOTATION", "displayname"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "Some |text| to test the \"escaping\": ||\"\"||\"| Escaped!\nannotation\n"
    );
    let out = vx()
        .arg("get")
        .arg(corpus("annotation.vmx"))
        .args(["displayName", "no.such.key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout, b"annotation\n");
    assert!(stderr_line(&out).contains("no such key: no.such.key"));
}

#[test]
fn set_without_assignments_reproduces_every_corpus_file() {
    for e in fs::read_dir(corpus("")).unwrap() {
        let p = e.unwrap().path();
        let out = vx().arg("set").arg(&p).output().unwrap();
        assert!(out.status.success(), "{}", p.display());
        assert_eq!(out.stdout, fs::read(&p).unwrap(), "{}", p.display());
    }
}

#[test]
fn set_and_unset_change_only_their_lines() {
    let input = fs::read(corpus("gsx3.vmx")).unwrap();
    let out = vx()
        .arg("set")
        .arg(corpus("gsx3.vmx"))
        .args([
            "MEMSIZE=512",
            "annotation=a \"quoted\" |pipe|",
            "displayName=W2K",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let want = String::from_utf8(input.clone())
        .unwrap()
        .replace("memsize = \"256\"", "memsize = \"512\"")
        .replace("\"Windows 2000 Server\"", "\"W2K\"")
        + "annotation = \"a |22quoted|22 |7Cpipe|7C\"\r\n";
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);

    let out = vx()
        .arg("unset")
        .arg(corpus("gsx3.vmx"))
        .args(["ide1:0.fileName", "IDE1:0.DEVICETYPE", "absent.key"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let want = String::from_utf8(input)
        .unwrap()
        .replace("ide1:0.fileName = \"/dev/cdrom\"\r\n", "")
        .replace("ide1:0.deviceType = \"atapi-cdrom\"\r\n", "");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}

#[test]
fn set_keeps_windows_1252_bytes() {
    let input = fs::read(corpus("windows-1252.vmx")).unwrap();
    let out = vx()
        .arg("set")
        .arg(corpus("windows-1252.vmx"))
        .arg("guestOS=Gar\u{e7}on")
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut want = input.clone();
    let at = want.windows(8).position(|w| w == b"winxppro").unwrap();
    want.splice(at..at + 8, b"Gar\xe7on".iter().copied());
    assert_eq!(out.stdout, want);
    let out = vx()
        .arg("set")
        .arg(corpus("windows-1252.vmx"))
        .arg("guestOS=\u{65e5}")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "not representable in windows-1252"
    );
    assert!(stderr_line(&out).contains("windows-1252"));
}

#[test]
fn output_file_and_in_place_are_atomic_and_keep_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let vmx = dir.path().join("vm.vmx");
    fs::copy(corpus("fusion.vmx"), &vmx).unwrap();
    fs::set_permissions(&vmx, fs::Permissions::from_mode(0o640)).unwrap();
    let out_path = dir.path().join("copy.vmx");
    let out = vx()
        .arg("set")
        .arg(&vmx)
        .arg("memsize=1024")
        .arg("-o")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty());
    let mode = fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "a new OUT gets the input's permissions");
    assert_eq!(
        fs::read(&out_path).unwrap(),
        fs::read_to_string(&vmx)
            .unwrap()
            .replace("memsize = \"8192\"", "memsize = \"1024\"")
            .into_bytes()
    );

    let out = vx()
        .arg("unset")
        .arg(&vmx)
        .arg("board-id.reflectHost")
        .arg("--in-place")
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty());
    let text = fs::read_to_string(&vmx).unwrap();
    assert!(!text.contains("board-id") && text.contains("smc.present"));
    let mode = fs::metadata(&vmx).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 2, "no temporary file left behind");
}

#[test]
fn stdin_is_read_with_dash() {
    let out = vx()
        .args(["get", "-", "memsize"])
        .write_stdin("memsize = \"77\"\n")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"77\n");
    let out = vx()
        .args(["set", "-", "a=2"])
        .write_stdin("a = \"1\"\r\nb = \"x\"")
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"a = \"2\"\r\nb = \"x\"");
    let out = vx()
        .args(["set", "-", "a=2", "--in-place"])
        .write_stdin("a = \"1\"\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = vx().args(["files", "-"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn exit_codes_for_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        fs::write(&p, bytes).unwrap();
        p
    };
    let cases: Vec<(PathBuf, i32, &str)> = vec![
        (dir.path().join("absent.vmx"), 4, "No such file"),
        (
            write("junk.vmx", b"\x7fELF\x02\x01\x01\x00\x00\x00junk"),
            3,
            "binary data",
        ),
        (
            write("klingon.vmx", b".encoding = \"klingon\"\n"),
            5,
            "not a known encoding",
        ),
        (
            write("huge-line.vmx", &{
                let mut v = b"annotation = \"".to_vec();
                v.resize(2 << 20, b'a');
                v
            }),
            3,
            "over the",
        ),
    ];
    for (path, code, what) in cases {
        let out = vx().arg("show").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", path.display());
        assert!(out.stdout.is_empty());
        let line = stderr_line(&out);
        assert!(line.contains(what), "{line}");
    }
    let big = dir.path().join("big.vmx");
    let f = fs::File::create(&big).unwrap();
    f.set_len(17 << 20).unwrap();
    let out = vx().arg("get").arg(&big).arg("x").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_line(&out).contains("larger than"));

    let out = vx()
        .arg("set")
        .arg(corpus("fusion.vmx"))
        .arg("no-equals-sign")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    stderr_line(&out);
    let out = vx()
        .arg("set")
        .arg(corpus("fusion.vmx"))
        .arg("bad key=1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    stderr_line(&out);
}

/// Issue 19: the `.vmx` VMware Workstation wrote (CRLF, `.encoding = "UTF-8"`) with a
/// multibyte character cut in half and no closing quote in `sharedFolder0.hostPath`.
const WORKSTATION_CUT: &[u8] = b".encoding = \"UTF-8\"\r\ndisplayName = \"ws\"\r\n\
    sharedFolder0.hostPath = \"C:\\Users\\me\\\xE6\x97\r\nmemsize = \"1024\"\r\n";

fn warnings_of(out: &std::process::Output) -> Vec<String> {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.lines().all(|l| l.starts_with("vmx-parse: warning: ")),
        "{err}"
    );
    err.lines().map(str::to_owned).collect()
}

#[test]
fn issue_19_damaged_line_is_a_problem_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let vmx = dir.path().join("ws.vmx");
    fs::write(&vmx, WORKSTATION_CUT).unwrap();

    let out = vx().arg("show").arg(&vmx).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let s: Show = serde_json::from_slice(&out.stdout).expect("show matches the pinned schema");
    assert_eq!(s.problems.len(), 1);
    assert_eq!(s.problems[0].line, 3);
    assert_eq!(s.problems[0].key.as_deref(), Some("sharedFolder0.hostPath"));
    assert!(s.problems[0].message.contains("not valid UTF-8"));
    assert_eq!(s.warnings.len(), 1, "the missing closing quote");
    assert_eq!(s.keys[2].value, "C:\\Users\\me\\\u{fffd}");
    assert_eq!(s.memory_mb, Some(1024));
    let w = warnings_of(&out);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("line 3: unterminated quote"), "{w:?}");
    assert!(
        w[1].contains("ws.vmx: line 3: sharedFolder0.hostPath: bytes not valid UTF-8"),
        "{w:?}"
    );

    // get: the repaired text, and a warning.
    let out = vx()
        .arg("get")
        .arg(&vmx)
        .args(["sharedfolder0.hostpath", "memsize"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap(),
        "C:\\Users\\me\\\u{fffd}\n1024\n"
    );
    assert!(warnings_of(&out)
        .iter()
        .any(|l| l.contains("sharedFolder0.hostPath: bytes not valid UTF-8")));

    // set of another key: the damaged line keeps its bytes.
    let out = vx()
        .arg("set")
        .arg(&vmx)
        .args(["memsize=2048", "new.key=v"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let mut expected = WORKSTATION_CUT[..WORKSTATION_CUT.len() - 7].to_vec();
    expected.extend_from_slice(b"2048\"\r\nnew.key = \"v\"\r\n");
    assert_eq!(out.stdout, expected);
    let out = vx().arg("set").arg(&vmx).output().unwrap();
    assert_eq!(
        out.stdout, WORKSTATION_CUT,
        "no assignment: the input itself"
    );

    // set of the damaged key: its line is replaced, in place; the file reads clean after.
    let out = vx()
        .arg("set")
        .arg(&vmx)
        .arg("sharedFolder0.hostPath=D:\\share")
        .arg("--in-place")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        fs::read(&vmx).unwrap(),
        b".encoding = \"UTF-8\"\r\ndisplayName = \"ws\"\r\n\
          sharedFolder0.hostPath = \"D:\\share\"\r\nmemsize = \"1024\"\r\n"
    );
    let out = vx().arg("show").arg(&vmx).output().unwrap();
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Show = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s.problems.is_empty() && s.warnings.is_empty());
}

#[test]
fn damaged_lines_in_other_files_and_encodings() {
    // No .encoding and a windows-1252 byte: read, kept, reported (this was exit 3).
    let out = vx()
        .arg("show")
        .arg("-")
        .write_stdin(&b"displayName = \"Caf\xe9\"\n"[..])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let s: Show = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.display_name.as_deref(), Some("Caf\u{fffd}"));
    assert!(s.problems[0]
        .message
        .contains("not valid UTF-8 (the file has no .encoding line)"));
    assert_eq!(warnings_of(&out).len(), 1);

    // A .vmsd: problems in its schema too; unset of another key keeps the bytes.
    let vmsd = b".encoding = \"Shift_JIS\"\nsnapshot.lastUID = \"1\"\n\
        snapshot0.uid = \"1\"\nsnapshot0.displayName = \"\x83\"\n";
    let out = vx()
        .arg("vmsd")
        .arg("-")
        .write_stdin(&vmsd[..])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: Vmsd = serde_json::from_slice(&out.stdout).expect("vmsd matches the pinned schema");
    assert_eq!(v.problems.len(), 1);
    assert_eq!(v.problems[0].line, 4);
    assert!(v.problems[0].message.contains("Shift_JIS"));
    let out = vx()
        .args(["unset", "-", "snapshot.lastUID"])
        .write_stdin(&vmsd[..])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        out.stdout,
        b".encoding = \"Shift_JIS\"\nsnapshot0.uid = \"1\"\nsnapshot0.displayName = \"\x83\"\n"
    );
}
