//! Damaged repositories (issue 6): a flipped byte or a truncation in every kind of repository
//! file. `verify --read-data` must report the damaged entry (exit 1), naming the entries that
//! can no longer be built and the ones still fine; `build` of an affected entry must fail with
//! exit 3 (or, for files build does not read and for descendants that do not need the damaged
//! bytes, give exactly the saved bytes) and never leave
//! wrong bytes in the working area: a working area built into with `--force` keeps its files
//! as they were, a fresh one stays empty. Unaffected entries still build.
//!
//! The repository: E1 full, E2 on E1, E3 on E2, E4 on E1. Damage to E2 makes E3 unbuildable
//! and leaves E1 and E4 fine; damage to E1 leaves nothing buildable.
//!
//! The bookkeeping files (`last-entry`, working-area records, a journal) are sealed: damaged,
//! each is reported by verify apart from the entries (exit 1, every entry fine), never
//! believed (a damaged journal's rewrite is given up, not carried out), and mended or
//! cleared by the next command that writes it.

mod common;
mod vrepo_support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use vrepo_support::*;

struct Fixture {
    _t: tempfile::TempDir,
    dir: PathBuf,
    template: PathBuf,
    states: BTreeMap<String, PathBuf>,
    counter: std::cell::Cell<u32>,
}

fn fixture() -> Fixture {
    let t = tempdir();
    let dir = t.path().to_path_buf();
    let template = dir.join("template");
    let repo = Repo::init(&template, &[]);
    let wa = make_vm(&dir.join("wa"), 12, 4, 9);
    let mut states = BTreeMap::new();
    let mut save = |wa: &Path, n: u32, extra: &[&str]| {
        let name = repo.save_name(wa, extra);
        assert_eq!(name, format!("E{n}"));
        states.insert(name.clone(), keep(wa, &dir.join(format!("state-{name}"))));
    };
    save(&wa, 1, &[]);
    guest_write(&wa.join("disk.vmdk"), 5 * MIB, 2 * MIB, 91);
    save(&wa, 2, &[]);
    guest_write(&wa.join("disk.vmdk"), 8 * MIB, MIB, 92);
    fs::write(wa.join("vm.nvram"), rand_bytes(93, 8684)).unwrap();
    save(&wa, 3, &[]);
    guest_write(&wa.join("disk.vmdk"), 3 * MIB, MIB, 94);
    save(&wa, 4, &["--parent", "E1"]);
    Fixture {
        _t: t,
        dir,
        template,
        states,
        counter: Default::default(),
    }
}

impl Fixture {
    fn path(&self, what: &str) -> PathBuf {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        self.dir.join(format!("{what}-{n}"))
    }

    fn copy(&self) -> Repo {
        let to = self.path("repo");
        common::run(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(&self.template)
                .arg(&to),
        );
        Repo::at(&to)
    }
}

/// Where things are in a delta (docs/delta-format.md): the header, the payload of the first
/// literal record, the end record, the index entries, the index trailer.
struct DeltaPlaces {
    header: u64,
    literal: u64,
    end: u64,
    index: u64,
    trailer: u64,
}

fn delta_places(path: &Path) -> DeltaPlaces {
    let b = fs::read(path).unwrap();
    let len = b.len();
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    assert_eq!(&b[len - 8..], b"VMLDIDX\0", "an indexed delta");
    let count = u64_at(len - 32) as usize;
    let index_offset = u64_at(len - 24) as usize;
    let mut literal = None;
    for i in 0..count {
        let so = u64_at(index_offset + 16 * i + 8) as usize;
        if b[so] == 1 {
            let plen = u32::from_le_bytes(b[so + 4..so + 8].try_into().unwrap()) as usize;
            literal = Some((so + 32 + plen / 2) as u64);
            break;
        }
    }
    DeltaPlaces {
        header: 20,
        literal: literal.expect("a literal record"),
        // The end record: 32-byte header, 96-byte payload, 8-byte checksum.
        end: (index_offset - 136 + 32 + 40) as u64,
        index: (index_offset + 16 * (count / 2) + 9) as u64,
        trailer: (len - 20) as u64,
    }
}

enum Damage {
    Flip(u64),
    Truncate(u64),
}

fn damage(path: &Path, d: &Damage) {
    match d {
        Damage::Flip(at) => flip(path, *at),
        Damage::Truncate(len) => truncate(path, *len),
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Run one damage case on a fresh copy: `file` of `entry` damaged; `affected`: the entries
/// that must not build; `fine`: the ones that must. `build_reads`: whether build reads this
/// file (then an affected build must fail; otherwise it may succeed with the exact bytes).
fn case(fx: &Fixture, entry: &str, file: &str, d: Damage, build_reads: bool) {
    let label = format!(
        "{entry}/{file} {}",
        match &d {
            Damage::Flip(at) => format!("byte {at} flipped"),
            Damage::Truncate(l) => format!("cut to {l} bytes"),
        }
    );
    let repo = fx.copy();
    damage(&repo.entry_file(entry, file), &d);
    let (damaged, unbuildable, fine) = match entry {
        "E1" => (strs(&["E1"]), strs(&["E2", "E3", "E4"]), strs(&[])),
        "E2" => (strs(&["E2"]), strs(&["E3"]), strs(&["E1", "E4"])),
        _ => unreachable!(),
    };
    // verify --read-data finds it and names everything.
    let o = repo.output(&["--json", "verify", "--read-data"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{label}: verify: {err}");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(names(&r["damaged"]), damaged, "{label}: {r}");
    assert_eq!(names(&r["unbuildable"]), unbuildable, "{label}: {r}");
    assert_eq!(names(&r["ok"]), fine, "{label}: {r}");
    assert_eq!(
        r["files"],
        serde_json::json!([]),
        "{label}: only entries are damaged: {r}"
    );
    let line = err.lines().last().unwrap_or("");
    for (what, list) in [("damaged: ", &damaged), ("cannot be built: ", &unbuildable)] {
        assert!(
            line.contains(&format!("{what}{}", list.join(", "))),
            "{label}: {line}"
        );
    }
    assert!(line.contains("fine: "), "{label}: {line}");
    // The damaged entry's problems name the file.
    let own = r["checked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["entry"] == entry)
        .unwrap();
    assert!(
        own["problems"].to_string().contains(file) || file == "entry.json",
        "{label}: problems {}",
        own["problems"]
    );
    // A shorter verify of just the damaged entry's descendants finds it too.
    if entry == "E2" {
        let o = repo.output(&["--json", "verify", "--read-data", "E3"]);
        assert_eq!(o.status.code(), Some(1), "{label}: verify E3");
    }

    // Build of every affected entry: exit 3, nothing wrong written.
    for name in damaged.iter().chain(&unbuildable) {
        let fresh = fx.path("fresh");
        let o = repo.output(&["build", name, s(&fresh)]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        match o.status.code() {
            Some(3) => {
                assert!(
                    files_of(&fresh).is_empty(),
                    "{label}: build {name} left files"
                );
                assert_eq!(err.lines().count(), 1, "{label}: {err}");
                assert!(err.starts_with("vrepo: "), "{label}: {err}");
            }
            // A descendant may not need the damaged bytes (its own delta replaced them),
            // and build of a file it does not read may succeed: then with the exact bytes.
            Some(0) if !build_reads || name.as_str() != entry => {
                assert_same_files(&fx.states[name], &fresh, &format!("{label}: build {name}"));
                continue;
            }
            c => panic!("{label}: build {name}: exit {c:?}: {err}"),
        }
        // Into a working area holding another entry's state: --force must leave it as it was.
        let wa = keep(&fx.states["E4"], &fx.path("wa"));
        let o = repo.output(&["build", name, s(&wa), "--force"]);
        assert_eq!(
            o.status.code(),
            Some(3),
            "{label}: build --force {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_same_files(
            &fx.states["E4"],
            &wa,
            &format!("{label}: build --force {name}"),
        );
    }
    // The others still build.
    for name in &fine {
        assert_builds(&repo, name, &fx.states[name], &fx.path("ok"));
    }
    eprintln!("{label}: found");
}

#[test]
fn damaged_deltas() {
    let fx = fixture();
    for entry in ["E2", "E1"] {
        let p = Repo::at(&fx.template).entry_file(entry, "delta.vdelta");
        let places = delta_places(&p);
        let len = fs::metadata(&p).unwrap().len();
        for at in [
            places.header,
            places.literal,
            places.end,
            places.index,
            places.trailer,
        ] {
            case(&fx, entry, "delta.vdelta", Damage::Flip(at), true);
        }
        for cut in [len / 2, len - 1] {
            case(&fx, entry, "delta.vdelta", Damage::Truncate(cut), true);
        }
        if entry == "E1" {
            case(&fx, entry, "delta.vdelta", Damage::Truncate(0), true);
        }
    }
}

#[test]
fn damaged_signatures_and_chunk_digests() {
    let fx = fixture();
    for entry in ["E2", "E1"] {
        for file in ["signature.zst", "chunks.bin"] {
            let len = fs::metadata(Repo::at(&fx.template).entry_file(entry, file))
                .unwrap()
                .len();
            for d in [
                Damage::Flip(len / 2),
                Damage::Flip(len - 1),
                Damage::Truncate(len - 1),
                Damage::Truncate(0),
            ] {
                case(&fx, entry, file, d, false);
            }
        }
    }
}

/// Offsets in an entry.json of the first occurrence of `pat`, plus `plus`.
fn json_offset(path: &Path, pat: &str, plus: u64) -> u64 {
    let t = fs::read_to_string(path).unwrap();
    t.find(pat).unwrap_or_else(|| panic!("{pat} in {t}")) as u64 + plus
}

#[test]
fn damaged_entry_json() {
    let fx = fixture();
    for entry in ["E2", "E1"] {
        let p = Repo::at(&fx.template).entry_file(entry, "entry.json");
        let len = fs::metadata(&p).unwrap().len();
        let mut places = vec![
            // A field name, the mode, a number, a digest, a file's offset in the volume.
            json_offset(&p, "\"schema\"", 2),
            json_offset(&p, "\"mode\": \"", 10),
            json_offset(&p, "\"size\": ", 9),
            json_offset(&p, "\"digest\": \"", 12),
            json_offset(&p, "\"offset\": ", 11),
            len - 2,
        ];
        if entry == "E2" {
            places.push(json_offset(&p, "\"parent\": \"E", 12));
        }
        for at in places {
            case(&fx, entry, "entry.json", Damage::Flip(at), true);
        }
        for cut in [len / 2, 0] {
            case(&fx, entry, "entry.json", Damage::Truncate(cut), true);
        }
    }
}

/// A flipped bit in a stored file's name in entry.json (`vm.nvram` -> `vm.nvbam`) leaves
/// valid JSON and a valid name: only entry.json's own checksum (entry.json.b3) catches it.
#[test]
fn damaged_stored_path_in_entry_json() {
    let fx = fixture();
    let p = Repo::at(&fx.template).entry_file("E2", "entry.json");
    let at = json_offset(&p, "\"path\": \"vm.nvram\"", 14);
    case(&fx, "E2", "entry.json", Damage::Flip(at), true);
}

#[test]
fn damaged_repository_and_working_area_records() {
    let fx = fixture();
    // vrepo.json: the repository cannot be opened; every command says so (exit 3) and no
    // build writes anything.
    let len = fs::metadata(fx.template.join("vrepo.json")).unwrap().len();
    for (i, d) in [
        Damage::Flip(json_offset(
            &fx.template.join("vrepo.json"),
            "\"schema\"",
            2,
        )),
        Damage::Flip(json_offset(
            &fx.template.join("vrepo.json"),
            "\"block_size\": ",
            15,
        )),
        Damage::Truncate(len / 2),
        Damage::Truncate(0),
    ]
    .into_iter()
    .enumerate()
    {
        let repo = fx.copy();
        damage(&repo.root.join("vrepo.json"), &d);
        let label = format!("vrepo.json case {i}");
        let err = repo.fails(&["verify", "--read-data"], 3);
        assert!(err.contains("vrepo.json"), "{label}: {err}");
        let fresh = fx.path("fresh");
        repo.fails(&["build", "E2", s(&fresh)], 3);
        assert!(files_of(&fresh).is_empty(), "{label}");
        let wa = keep(&fx.states["E4"], &fx.path("wa"));
        repo.fails(&["build", "E2", s(&wa), "--force"], 3);
        assert_same_files(&fx.states["E4"], &wa, &label);
    }
    // A working-area record only names a default parent: damaged, verify reports it (exit
    // 1, every entry fine), the record is ignored (the next save is full and says why) and
    // written anew.
    let rec_dir = fx.template.join("workareas");
    let rec = fs::read_dir(&rec_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let rec_name = format!("workareas/{}", rec.file_name().unwrap().to_string_lossy());
    let text = fs::read_to_string(&rec).unwrap();
    let len = text.len() as u64;
    // Still valid JSON naming an entry that exists, under the old seal.
    let other_entry = text.replacen("\"entry\": \"E4\"", "\"entry\": \"E2\"", 1);
    assert_ne!(other_entry, text, "the record names E4: {text}");
    let damages = vec![
        Damage::Flip(json_offset(&rec, "\"entry\": \"E", 11)),
        Damage::Flip(2),
        Damage::Flip(len - 10),
        Damage::Truncate(len / 2),
        Damage::Truncate(len - 1),
        Damage::Truncate(0),
    ];
    each_damage(
        &fx,
        &rec_name,
        &text,
        damages,
        &other_entry,
        |repo, label| {
            verify_finds_file(repo, &rec_name, label);
            for (name, state) in &fx.states {
                assert_builds(repo, name, state, &fx.path("ok"));
            }
            // The recorded working area saves again: the record is not believed, so the save
            // continues its VM's newest entry and says why; the record is whole again.
            let wa = fx.dir.join("wa");
            let newest = repo.json(&["show", "wa:latest"])["name"].clone();
            let o = repo.output(&["--json", "save", s(&wa)]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{label}: {err}");
            let e: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(e["mode"], "incremental", "{label}: {e}");
            assert_eq!(e["parent"], newest, "{label}: {e}");
            assert!(
                err.contains("record") && err.contains("damaged") && err.contains("continuing"),
                "{label}: {err}"
            );
            let st = keep(&wa, &fx.path("st"));
            assert_builds(repo, "E5", &st, &fx.path("ok"));
            repo.ok(&["verify"]);
        },
    );
}

/// `verify --read-data` of a repository whose entries are all sound but whose bookkeeping
/// file `file` is damaged: exit 1, every entry fine, `files` names exactly `file`.
fn verify_finds_file(repo: &Repo, file: &str, label: &str) {
    let o = repo.output(&["--json", "verify", "--read-data"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{label}: verify: {err}");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        names(&r["ok"]),
        strs(&["E1", "E2", "E3", "E4"]),
        "{label}: {r}"
    );
    assert_eq!(r["damaged"], serde_json::json!([]), "{label}: {r}");
    assert_eq!(r["unbuildable"], serde_json::json!([]), "{label}: {r}");
    let files: Vec<&str> = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, [file], "{label}: {r}");
    assert!(err.contains(file), "{label}: {err}");
    // The text report names it too.
    let o = repo.output(&["verify"]);
    assert_eq!(o.status.code(), Some(1), "{label}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("file  {file} damaged")));
}

#[test]
fn damaged_last_entry() {
    let fx = fixture();
    let path = fx.template.join("last-entry");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("4\n"), "{text}");
    let len = text.len() as u64;
    let damages = vec![
        Damage::Flip(0),
        Damage::Flip(len - 10),
        Damage::Truncate(2),
        Damage::Truncate(len / 2),
        Damage::Truncate(0),
    ];
    // Another number under the old seal.
    let other = text.replacen('4', "9", 1);
    each_damage(&fx, "last-entry", &text, damages, &other, |repo, label| {
        let p = repo.root.join("last-entry");
        verify_finds_file(repo, "last-entry", label);
        for (name, state) in &fx.states {
            assert_builds(repo, name, state, &fx.path("ok"));
        }
        // The next save follows the newest entry present, says why, and mends the record.
        let wa = keep(&fx.states["E3"], &fx.path("wa"));
        let o = repo.output(&["--json", "save", "--full", s(&wa)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{label}: {err}");
        let e: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(e["name"], "E5", "{label}: {e}");
        assert!(err.contains("last-entry is damaged"), "{label}: {err}");
        repo.ok(&["verify"]);
        assert!(
            fs::read_to_string(&p).unwrap().starts_with("5\n"),
            "{label}"
        );
    });
}

#[test]
fn damaged_journal() {
    let fx = fixture();
    // The journal an `rm E3` (a leaf) writes before it changes anything.
    let payload =
        "{\"schema\": \"vrepo.journal/1\", \"op\": \"rm\", \"swaps\": [], \"remove\": [\"E3\"]}\n";
    let whole = sealed(payload);
    let len = whole.len() as u64;
    // Sound, it is finished by the next command: E3 goes.
    let repo = fx.copy();
    fs::write(repo.root.join("journal.json"), &whole).unwrap();
    assert_eq!(repo.names(), strs(&["E1", "E2", "E4"]));
    assert!(!repo.root.join("journal.json").exists());
    // Damaged, it is never acted on: had the flipped name been believed, E2 (which E3 needs)
    // would go.
    let wrong_entry = whole.replacen("\"E3\"", "\"E2\"", 1);
    let damages = vec![
        Damage::Flip(json_offset_in(&whole, "\"op\"", 2)),
        Damage::Flip(len - 10),
        Damage::Truncate(payload.len() as u64),
        Damage::Truncate(len / 2),
        Damage::Truncate(0),
    ];
    each_damage(
        &fx,
        "journal.json",
        &whole,
        damages,
        &wrong_entry,
        |repo, label| {
            let p = repo.root.join("journal.json");
            // A folder its rewrite staged, from a process that is gone.
            let staged = repo.root.join("tmp").join("stage-1-nohost-000000000000-1");
            fs::create_dir(&staged).unwrap();
            // Readers and saves go on and leave it for verify to report.
            verify_finds_file(repo, "journal.json", label);
            assert_eq!(repo.names(), strs(&["E1", "E2", "E3", "E4"]), "{label}");
            for (name, state) in &fx.states {
                assert_builds(repo, name, state, &fx.path("ok"));
            }
            assert!(p.exists(), "{label}: a reader acted on a damaged journal");
            // The next exclusive command gives its rewrite up and says so; every entry stays.
            let o = repo.output(&["consolidate", "E1"]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{label}: {err}");
            assert!(
                err.contains("journal.json was damaged") && err.contains("given up"),
                "{label}: {err}"
            );
            assert!(!p.exists(), "{label}");
            assert_eq!(tmp_contents(repo), Vec::<String>::new(), "{label}");
            assert_eq!(repo.names(), strs(&["E1", "E2", "E3", "E4"]), "{label}");
            repo.ok(&["verify", "--read-data"]);
            for (name, state) in &fx.states {
                assert_builds(repo, name, state, &fx.path("ok"));
            }
        },
    );
}

/// A sound journal vrepo does not understand (another version's schema) is neither carried
/// out nor given up: every command refuses (exit 3) naming it, and `tmp/` is left as it is.
#[test]
fn a_journal_of_another_version_stops_every_command() {
    let fx = fixture();
    let repo = fx.copy();
    let payload =
        "{\"schema\": \"vrepo.journal/9\", \"op\": \"rm\", \"swaps\": [], \"remove\": [\"E3\"]}\n";
    fs::write(repo.root.join("journal.json"), sealed(payload)).unwrap();
    // A staged folder of a process that is gone (a pid-only tag: this host).
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let staged = format!("stage-{dead}-1");
    fs::create_dir(repo.root.join("tmp").join(&staged)).unwrap();
    for args in [
        &["list"][..],
        &["verify"],
        &["rm", "E3"],
        &["consolidate", "E1"],
    ] {
        let err = repo.fails(args, 3);
        assert!(
            err.contains("journal.json") && err.contains("schema"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(tmp_contents(&repo), [staged]);
    fs::remove_file(repo.root.join("journal.json")).unwrap();
    assert_eq!(repo.names(), strs(&["E1", "E2", "E3", "E4"]));
}

fn json_offset_in(text: &str, pat: &str, plus: u64) -> u64 {
    text.find(pat).unwrap_or_else(|| panic!("{pat} in {text}")) as u64 + plus
}

/// For each of `damages`, and for `other` (other content that parses, under the old seal):
/// a fresh copy of the fixture's repository whose bookkeeping file `file` holds `whole`
/// damaged that way, handed to `check` with a label.
fn each_damage(
    fx: &Fixture,
    file: &str,
    whole: &str,
    damages: Vec<Damage>,
    other: &str,
    check: impl Fn(&Repo, &str),
) {
    let n = damages.len();
    for (i, d) in damages.into_iter().map(Some).chain([None]).enumerate() {
        let repo = fx.copy();
        let p = repo.root.join(file);
        fs::write(&p, whole).unwrap();
        let label = match d {
            Some(d) => {
                damage(&p, &d);
                format!("{file} case {i}")
            }
            None => {
                fs::write(&p, other).unwrap();
                format!("{file} case {n}: other content under the old seal")
            }
        };
        check(&repo, &label);
    }
}
