//! Model-based test of vrepo (issue 6): seeded random sequences of save (every mode, --parent,
//! --max-chain, the repository default), build (into a working area with --force, into fresh
//! folders, refused into a non-empty one), rm (refused while needed), rm --rebase,
//! consolidate [--full], prune (--keep-last and the calendar buckets, --dry-run) and verify,
//! checked after every step against an in-memory model: which entries exist, each one's parent
//! and mode, and the exact files each must build to (a `cp -a` copy of every saved state).
//! After every step `list` must match the model, `tmp/` must be empty with no journal, and a
//! sample of entries (always including the ones the step rewrote) is built and compared byte
//! for byte; at the end of a case every entry is built and `verify --read-data` passes.
//!
//! A failing case prints its seed and step; `VREPO_MODEL_SEED=N` replays one seed.

mod common;
mod vrepo_support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use vrepo_support::*;

const DISK_MIB: u64 = 12;

#[derive(Clone, Debug)]
struct ModelEntry {
    parent: Option<u64>,
    mode: &'static str,
    /// The files it must build to.
    state: PathBuf,
    /// Order of creation (entry times are in creation order).
    seq: u64,
}

struct WorkArea {
    path: PathBuf,
    /// The entry it was last saved as or built from.
    record: Option<u64>,
}

struct Model {
    entries: BTreeMap<u64, ModelEntry>,
    seq: u64,
    default_max_chain: Option<u64>,
    /// The highest entry number given: names are never reused.
    last: u64,
}

fn name(n: u64) -> String {
    format!("E{n}")
}

fn num(s: &str) -> u64 {
    s.strip_prefix('E').unwrap().parse().unwrap()
}

impl Model {
    fn chain_len(&self, n: u64) -> u64 {
        match self.entries[&n].parent {
            None => 1,
            Some(p) => 1 + self.chain_len(p),
        }
    }
    fn root(&self, n: u64) -> u64 {
        match self.entries[&n].parent {
            None => n,
            Some(p) => self.root(p),
        }
    }
    fn children(&self, n: u64) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.parent == Some(n))
            .map(|(k, _)| *k)
            .collect()
    }
    /// The mode a rewritten entry gets (rewrite.rs: full without a parent; differential only
    /// when a differential entry is restaged onto a full entry; else incremental).
    fn rewritten_mode(&self, e: u64, new_parent: Option<u64>) -> &'static str {
        match new_parent {
            None => "full",
            Some(p)
                if self.entries[&p].parent.is_none() && self.entries[&e].mode == "differential" =>
            {
                "differential"
            }
            Some(_) => "incremental",
        }
    }
    fn names(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }
}

impl Case {
    /// Working areas whose entry is removed continue from its nearest surviving ancestor
    /// (docs/vrepo.md); call before the model forgets `removed`.
    fn repoint(&mut self, removed: &BTreeSet<u64>) {
        for w in &mut self.was {
            let Some(r) = w.record else { continue };
            if !removed.contains(&r) {
                continue;
            }
            let mut cur = self.model.entries[&r].parent;
            while let Some(c) = cur {
                if !removed.contains(&c) {
                    break;
                }
                cur = self.model.entries[&c].parent;
            }
            w.record = cur;
        }
    }
}

struct Case {
    seed: u64,
    rng: Rng,
    dir: PathBuf,
    repo: Repo,
    model: Model,
    was: Vec<WorkArea>,
    step: usize,
    /// Entries to build after the current step besides the random sample.
    touched: BTreeSet<u64>,
    counter: u64,
}

impl Case {
    fn label(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    fn scratch(&mut self, what: &str) -> PathBuf {
        self.counter += 1;
        self.dir.join(format!("{what}-{}", self.counter))
    }

    fn evolve(&mut self, wa: usize) {
        let p = self.was[wa].path.clone();
        if self.rng.chance(15) {
            return; // saved unchanged
        }
        let len = (1 + self.rng.below(16)) * 64 * 1024;
        let off = self.rng.below(DISK_MIB * MIB - len) & !511;
        let seed = self.rng.next();
        guest_write(&p.join("disk.vmdk"), off, len, seed);
        if self.rng.chance(50) {
            let mut nv = fs::read(p.join("vm.nvram")).unwrap();
            let at = self.rng.below(nv.len() as u64) as usize;
            nv[at] ^= 0x5a;
            fs::write(p.join("vm.nvram"), nv).unwrap();
        }
        if self.rng.chance(10) {
            let n = self.rng.below(1000);
            write_vmx(&p, "disk.vmdk", &format!("vm {n}"));
        }
    }

    fn save(&mut self) {
        let wa = self.rng.below(self.was.len() as u64) as usize;
        self.evolve(wa);
        let existing = self.model.names();
        let mut args: Vec<String> = Vec::new();
        let mut mode: Option<&str> = None;
        let mut parent_flag: Option<u64> = None;
        let mut max_chain: Option<u64> = None;
        match self.rng.below(100) {
            0..=29 => {}
            30..=39 => mode = Some("full"),
            40..=54 => mode = Some("incremental"),
            55..=69 => mode = Some("differential"),
            70..=84 if !existing.is_empty() => {
                let p = *self.rng.pick(&existing);
                parent_flag = Some(p);
                if self.rng.chance(30) {
                    mode = Some("differential");
                }
            }
            _ => {
                max_chain = Some(1 + self.rng.below(3));
                if self.rng.chance(50) {
                    mode = Some("incremental");
                }
            }
        }
        if let Some(m) = mode {
            args.push(format!("--{m}"));
        }
        if let Some(p) = parent_flag {
            args.push("--parent".into());
            args.push(name(p));
        }
        if let Some(m) = max_chain {
            args.push("--max-chain".into());
            args.push(m.to_string());
        }
        // The prediction.
        let m = &self.model;
        let anchor = parent_flag.or(self.was[wa].record.filter(|r| m.entries.contains_key(r)));
        let (want_parent, want_mode) = match (mode, anchor) {
            (Some("full"), _) | (_, None) => (None, "full"),
            (Some("differential"), Some(a)) => (Some(m.root(a)), "differential"),
            (_, Some(a)) => {
                let links = m.chain_len(a) + 1;
                match max_chain.or(m.default_max_chain) {
                    Some(mx) if links > mx && mx >= 2 => (Some(m.root(a)), "differential"),
                    Some(mx) if links > mx => (None, "full"),
                    _ => (Some(a), "incremental"),
                }
            }
        };
        let want_number = self.model.last + 1;
        let wa_path = self.was[wa].path.clone();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        eprintln!("  save wa{wa} {args:?}");
        let e = self.repo.save(&wa_path, &refs);
        let label = format!("{}: save {} {args:?}", self.label(), wa_path.display());
        assert_eq!(e["name"], name(want_number).as_str(), "{label}");
        assert_eq!(
            e["parent"].as_str().map(num),
            want_parent,
            "{label}: parent"
        );
        assert_eq!(e["mode"], want_mode, "{label}: mode");
        let k = self.counter_next();
        let state = keep(&wa_path, &self.dir.join(format!("state-{k}")));
        self.model.seq += 1;
        self.model.entries.insert(
            want_number,
            ModelEntry {
                parent: want_parent,
                mode: want_mode,
                state,
                seq: self.model.seq,
            },
        );
        self.was[wa].record = Some(want_number);
        self.model.last = want_number;
        self.touched.insert(want_number);
    }

    fn counter_next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn random_entry(&mut self) -> Option<u64> {
        let names = self.model.names();
        if names.is_empty() {
            None
        } else {
            Some(*self.rng.pick(&names))
        }
    }

    fn build_into_workarea(&mut self) {
        let Some(n) = self.random_entry() else { return };
        let wa = self.rng.below(self.was.len() as u64) as usize;
        let p = self.was[wa].path.clone();
        if self.rng.chance(25) {
            // Refused without --force; nothing changes.
            let before = files_of(&p)
                .into_iter()
                .map(|(k, m)| (k, m.len(), m.modified().unwrap()))
                .collect::<Vec<_>>();
            self.repo.fails(&["build", &name(n), s(&p)], 7);
            let after = files_of(&p)
                .into_iter()
                .map(|(k, m)| (k, m.len(), m.modified().unwrap()))
                .collect::<Vec<_>>();
            assert_eq!(
                before,
                after,
                "{}: a refused build changed files",
                self.label()
            );
            return;
        }
        eprintln!("  build {} wa{wa} --force", name(n));
        self.repo.build(&name(n), &p, &["--force"]);
        let state = self.model.entries[&n].state.clone();
        assert_same_files(
            &state,
            &p,
            &format!("{}: build --force {}", self.label(), name(n)),
        );
        self.was[wa].record = Some(n);
    }

    fn build_fresh(&mut self) {
        let Some(n) = self.random_entry() else { return };
        let dest = self.scratch("wa");
        self.repo.build(&name(n), &dest, &[]);
        let state = self.model.entries[&n].state.clone();
        assert_same_files(
            &state,
            &dest,
            &format!("{}: build {}", self.label(), name(n)),
        );
        if self.was.len() < 3 && self.rng.chance(50) {
            self.was.push(WorkArea {
                path: dest,
                record: Some(n),
            });
        } else {
            fs::remove_dir_all(&dest).unwrap();
        }
    }

    fn rm(&mut self, rebase: bool) {
        let Some(n) = self.random_entry() else { return };
        let children = self.model.children(n);
        let label = format!("{}: rm {} (rebase {rebase})", self.label(), name(n));
        eprintln!("  rm {} (rebase {rebase})", name(n));
        if !rebase && !children.is_empty() {
            let before = self.repo.list();
            let err = self.repo.fails(&["rm", &name(n)], 7);
            for c in &children {
                assert!(
                    err.contains(&name(*c)),
                    "{label}: the error names {c}: {err}"
                );
            }
            assert_eq!(
                self.repo.list(),
                before,
                "{label}: a refused rm changed entries"
            );
            self.touched.extend(children);
            return;
        }
        let mut args = vec!["rm"];
        if rebase {
            args.push("--rebase");
        }
        let nn = name(n);
        args.push(&nn);
        let r = self.repo.json(&args);
        self.repoint(&BTreeSet::from([n]));
        let np = self.model.entries[&n].parent;
        let mut want_rewritten = Vec::new();
        for c in &children {
            let mode = self.model.rewritten_mode(*c, np);
            want_rewritten.push(serde_json::json!([name(*c), np.map(name)]));
            let e = self.model.entries.get_mut(c).unwrap();
            e.parent = np;
            e.mode = mode;
            self.touched.insert(*c);
        }
        assert_eq!(r["removed"], serde_json::json!([nn]), "{label}: {r}");
        assert_eq!(r["rewritten"], Value::from(want_rewritten), "{label}: {r}");
        self.model.entries.remove(&n);
    }

    fn consolidate(&mut self) {
        let Some(n) = self.random_entry() else { return };
        let full = self.rng.chance(30);
        let nn = name(n);
        let mut args = vec!["consolidate", &nn];
        if full {
            args.push("--full");
        }
        let label = format!("{}: {args:?}", self.label());
        eprintln!("  {args:?}");
        let r = self.repo.json(&args);
        let m = &self.model;
        let Some(p) = m.entries[&n].parent else {
            assert_eq!(r["rewritten"], serde_json::json!([]), "{label}: {r}");
            return;
        };
        let np = match (m.entries[&p].parent, full) {
            (Some(gp), false) => Some(gp),
            _ => None,
        };
        let mode = m.rewritten_mode(n, np);
        assert_eq!(
            r["rewritten"],
            serde_json::json!([[nn, np.map(name)]]),
            "{label}: {r}"
        );
        let e = self.model.entries.get_mut(&n).unwrap();
        e.parent = np;
        e.mode = mode;
        self.touched.insert(n);
        self.touched.extend(self.model.children(n));
    }

    fn prune(&mut self) {
        let names = self.model.names();
        if names.is_empty() {
            return;
        }
        let last = self.rng.below(names.len() as u64 + 1);
        let bucket = ["--keep-daily", "--keep-weekly", "--keep-monthly"];
        let mut args: Vec<String> = vec!["prune".into()];
        if last > 0 {
            args.push("--keep-last".into());
            args.push(last.to_string());
        }
        let with_bucket = last == 0 || self.rng.chance(25);
        if with_bucket {
            args.push((*self.rng.pick(&bucket)).into());
            args.push((1 + self.rng.below(3)).to_string());
        }
        let dry = self.rng.chance(20);
        if dry {
            args.push("--dry-run".into());
        }
        // The model: newest `last` by time; every calendar bucket keeps the newest entry (all
        // entries are from today).
        let mut by_age: Vec<(u64, u64)> = self
            .model
            .entries
            .iter()
            .map(|(n, e)| (e.seq, *n))
            .collect();
        by_age.sort_unstable_by(|a, b| b.cmp(a));
        let mut keep: BTreeSet<u64> = by_age.iter().take(last as usize).map(|x| x.1).collect();
        if with_bucket {
            keep.insert(by_age[0].1);
        }
        let remove: Vec<u64> = names
            .iter()
            .copied()
            .filter(|n| !keep.contains(n))
            .collect();
        let mut rewrite = Vec::new();
        for &k in &keep {
            let Some(p) = self.model.entries[&k].parent else {
                continue;
            };
            if keep.contains(&p) {
                continue;
            }
            let mut cur = self.model.entries[&p].parent;
            while let Some(c) = cur {
                if keep.contains(&c) {
                    break;
                }
                cur = self.model.entries[&c].parent;
            }
            rewrite.push((k, cur));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let label = format!("{}: {args:?}", self.label());
        let before = self.repo.list();
        eprintln!("  {args:?}");
        let plan = self.repo.json(&refs);
        let names_of = |v: &[u64]| Value::from(v.iter().map(|n| name(*n)).collect::<Vec<_>>());
        assert_eq!(
            plan["keep"],
            names_of(&keep.iter().copied().collect::<Vec<_>>()),
            "{label}: {plan}"
        );
        assert_eq!(plan["remove"], names_of(&remove), "{label}: {plan}");
        let want_rw: Vec<Value> = rewrite
            .iter()
            .map(|(k, p)| serde_json::json!([name(*k), p.map(name)]))
            .collect();
        assert_eq!(plan["rewrite"], Value::from(want_rw), "{label}: {plan}");
        if dry || remove.is_empty() {
            assert_eq!(self.repo.list(), before, "{label}: changed nothing");
            return;
        }
        let modes: Vec<(u64, Option<u64>, &'static str)> = rewrite
            .iter()
            .map(|(k, p)| (*k, *p, self.model.rewritten_mode(*k, *p)))
            .collect();
        for (k, p, mode) in modes {
            let e = self.model.entries.get_mut(&k).unwrap();
            e.parent = p;
            e.mode = mode;
            self.touched.insert(k);
        }
        self.repoint(&remove.iter().copied().collect());
        for r in remove {
            self.model.entries.remove(&r);
        }
    }

    fn verify(&mut self) {
        let names = self.model.names();
        let mut args: Vec<String> = vec!["verify".into()];
        let mut want: BTreeSet<u64> = names.iter().copied().collect();
        match self.rng.below(4) {
            0 => {}
            1 => args.push("--read-data".into()),
            2 => args.push("--sample=40".into()),
            _ => {
                if let Some(n) = self.random_entry() {
                    args.push(name(n));
                    want.clear();
                    let mut cur = Some(n);
                    while let Some(c) = cur {
                        want.insert(c);
                        cur = self.model.entries[&c].parent;
                    }
                }
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = self.repo.json(&refs);
        let ok: BTreeSet<u64> = r["ok"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| num(v.as_str().unwrap()))
            .collect();
        assert_eq!(ok, want, "{}: {args:?}: {r}", self.label());
        assert_eq!(r["damaged"], serde_json::json!([]));
        assert_eq!(r["unbuildable"], serde_json::json!([]));
    }

    /// After every step: the repository is what the model says.
    fn check(&mut self) {
        let label = self.label();
        let list = self.repo.list();
        let want: Vec<(String, Option<String>, String)> = self
            .model
            .entries
            .iter()
            .map(|(n, e)| (name(*n), e.parent.map(name), e.mode.to_owned()))
            .collect();
        assert_eq!(list, want, "{label}: list against the model");
        assert!(
            !self.repo.root.join("journal.json").exists(),
            "{label}: a journal is left"
        );
        assert_eq!(
            tmp_contents(&self.repo),
            Vec::<String>::new(),
            "{label}: tmp/"
        );
        let mut sample: BTreeSet<u64> = std::mem::take(&mut self.touched);
        sample.retain(|n| self.model.entries.contains_key(n));
        for _ in 0..2 {
            if let Some(n) = self.random_entry() {
                sample.insert(n);
            }
        }
        for n in sample {
            let state = self.model.entries[&n].state.clone();
            let dest = self.dir.join("check");
            assert_builds(&self.repo, &name(n), &state, &dest);
        }
    }
}

fn run_case(seed: u64, steps: usize, default_max_chain: Option<u64>) {
    let t = tempdir();
    let dir = t.path().to_path_buf();
    let mc = default_max_chain.map(|m| m.to_string());
    let init: Vec<&str> = match &mc {
        Some(m) => vec!["--max-chain", m],
        None => vec![],
    };
    let repo = Repo::init(&dir.join("repo"), &init);
    let wa = make_vm(&dir.join("wa0"), DISK_MIB, 2, seed);
    let mut c = Case {
        seed,
        rng: Rng::new(seed),
        dir,
        repo,
        model: Model {
            entries: BTreeMap::new(),
            seq: 0,
            default_max_chain,
            last: 0,
        },
        was: vec![WorkArea {
            path: wa,
            record: None,
        }],
        step: 0,
        touched: BTreeSet::new(),
        counter: 0,
    };
    for step in 0..steps {
        c.step = step;
        let before: Vec<String> = c.model.names().into_iter().map(name).collect();
        let records: Vec<Option<u64>> = c.was.iter().map(|w| w.record).collect();
        eprintln!("step {step}: entries {before:?}, working-area records {records:?}");
        if c.model.entries.is_empty() {
            c.save();
        } else {
            match c.rng.below(100) {
                0..=34 => c.save(),
                35..=42 => c.build_into_workarea(),
                43..=50 => c.build_fresh(),
                51..=62 => c.rm(false),
                63..=71 => c.rm(true),
                72..=81 => c.consolidate(),
                82..=90 => c.prune(),
                _ => c.verify(),
            }
        }
        c.check();
    }
    // Everything builds, and the full check passes.
    for (n, e) in c.model.entries.clone() {
        assert_builds(&c.repo, &name(n), &e.state, &c.dir.join("final"));
    }
    let r = c.repo.json(&["verify", "--read-data"]);
    assert_eq!(r["damaged"], serde_json::json!([]), "{r}");
    assert_eq!(r["unbuildable"], serde_json::json!([]), "{r}");
    eprintln!(
        "seed {seed}: {steps} steps, {} entries left",
        c.model.entries.len()
    );
}

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("VREPO_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("VREPO_MODEL_SEED is a number")],
        Err(_) => default.to_vec(),
    }
}

#[test]
fn model_random_sequences() {
    for seed in seeds(&[1]) {
        run_case(seed, 36, None);
    }
}

#[test]
fn model_random_sequences_with_a_repository_max_chain() {
    for seed in seeds(&[7]) {
        run_case(seed, 32, Some(3));
    }
}

#[test]
fn model_random_sequences_second_seed() {
    for seed in seeds(&[2]) {
        run_case(seed, 32, None);
    }
}
