//! Model-based test of vrepo (issue 6): seeded random sequences of save (every mode, --parent,
//! --max-chain, the repository default), build (into a working area with --force, into fresh
//! folders, refused into a non-empty one), rm (refused while needed), rm --rebase,
//! consolidate [--full], prune (--keep-last and the calendar buckets, --dry-run) and verify,
//! checked after every step against an in-memory model: which entries exist, each one's parent
//! and mode, and the exact files each must build to (a `cp -a` copy of every saved state).
//! After every step `list` must match the model (times included), `tmp/` must be empty with no
//! journal, and a sample of entries (always including the ones the step rewrote) is built and
//! compared byte for byte; at the end of a case every entry is built and `verify --read-data`
//! passes.
//!
//! Entry times are spread out so that prune's calendar buckets mean something: after each save
//! the new entry's `time` in `entry.json` is set (with its `entry.json.b3`) to the model's clock,
//! which moves forward by seconds to weeks between saves from a start just before a year
//! boundary, an ISO week 53 or a February 29. The model's prune keeps, per bucket, the newest
//! entry of each of the newest N UTC days, ISO weeks or months, with its own calendar
//! (`Time` below, Python's `datetime` arithmetic), not vrepo's.
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
    /// Its time (the model's clock when it was saved: entry times are in creation order).
    time: Time,
    /// The VM it belongs to (`save --vm`).
    vm: String,
}

// ---------------------------------------------------------------------------------------------
// The model's calendar: proleptic Gregorian, UTC, written after Python's `datetime`
// (`_ymd2ord`, `isocalendar`), independently of vrepo's.

const DAY_US: i64 = 86_400 * 1_000_000;

/// A UTC instant: a civil date and the microseconds into that day. Ordered by time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Time {
    y: i64,
    m: i64,
    d: i64,
    us: i64,
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Python's `date.toordinal()`: 0001-01-01 is day 1.
fn ordinal(y: i64, m: i64, d: i64) -> i64 {
    let py = y - 1;
    let before_year = py * 365 + py / 4 - py / 100 + py / 400;
    let before_month: i64 = (1..m).map(|k| days_in_month(y, k)).sum();
    before_year + before_month + d
}

/// The ordinal of the Monday of ISO week 1 of `y` (the week holding the year's first Thursday).
fn iso_week1_monday(y: i64) -> i64 {
    let first = ordinal(y, 1, 1);
    let weekday = (first + 6) % 7; // Monday 0
    let monday = first - weekday;
    if weekday > 3 {
        monday + 7
    } else {
        monday
    }
}

impl Time {
    fn start(y: i64, m: i64, d: i64, us: i64) -> Time {
        Time { y, m, d, us }
    }

    fn next_day(&mut self) {
        self.d += 1;
        if self.d > days_in_month(self.y, self.m) {
            self.d = 1;
            self.m += 1;
            if self.m > 12 {
                self.m = 1;
                self.y += 1;
            }
        }
    }

    fn advance(&mut self, us: i64) {
        self.us += us;
        while self.us >= DAY_US {
            self.us -= DAY_US;
            self.next_day();
        }
    }

    fn day(&self) -> (i64, i64, i64) {
        (self.y, self.m, self.d)
    }

    fn month(&self) -> (i64, i64) {
        (self.y, self.m)
    }

    /// Python's `date.isocalendar()[:2]`: (ISO year, ISO week).
    fn iso_week(&self) -> (i64, i64) {
        let today = ordinal(self.y, self.m, self.d);
        let mut year = self.y;
        let mut monday = iso_week1_monday(year);
        let mut week = (today - monday).div_euclid(7);
        if week < 0 {
            year -= 1;
            monday = iso_week1_monday(year);
            week = (today - monday).div_euclid(7);
        } else if week >= 52 && today >= iso_week1_monday(year + 1) {
            year += 1;
            week = 0;
        }
        (year, week + 1)
    }

    /// RFC 3339, as vrepo writes entry times.
    fn rfc3339(&self) -> String {
        let secs = self.us / 1_000_000;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            self.y,
            self.m,
            self.d,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            self.us % 1_000_000
        )
    }
}

#[test]
fn the_model_calendar() {
    // Known ISO weeks, as `date(Y, M, D).isocalendar()` gives them.
    for ((y, m, d), want) in [
        ((2020, 12, 31), (2020, 53)),
        ((2021, 1, 3), (2020, 53)),
        ((2021, 1, 4), (2021, 1)),
        ((2024, 12, 29), (2024, 52)),
        ((2024, 12, 30), (2025, 1)),
        ((2026, 11, 22), (2026, 47)),
        ((2026, 11, 23), (2026, 48)),
        ((2027, 1, 1), (2026, 53)),
        ((2028, 2, 29), (2028, 9)),
    ] {
        assert_eq!(Time::start(y, m, d, 0).iso_week(), want, "{y}-{m}-{d}");
    }
    assert_eq!(ordinal(1970, 1, 1), 719_163);
    let mut t = Time::start(2028, 2, 28, DAY_US - 1);
    t.advance(1);
    assert_eq!(t.day(), (2028, 2, 29));
    t.advance(DAY_US);
    assert_eq!(t.day(), (2028, 3, 1));
    let mut t = Time::start(2027, 12, 31, 23 * 3_600_000_000);
    assert_eq!(t.rfc3339(), "2027-12-31T23:00:00.000000Z");
    t.advance(3_600_000_000 + 5);
    assert_eq!(t.rfc3339(), "2028-01-01T00:00:00.000005Z");
}

/// Set entry `name`'s time in its `entry.json`, keeping `entry.json.b3` right.
struct WorkArea {
    path: PathBuf,
    /// The entry it was last saved as or built from.
    record: Option<u64>,
}

struct Model {
    entries: BTreeMap<u64, ModelEntry>,
    /// The time of the newest save.
    clock: Time,
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
    /// Every entry below `n` in its tree, ascending.
    fn descendants(&self, n: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut todo = vec![n];
        while let Some(m) = todo.pop() {
            let c = self.children(m);
            out.extend(&c);
            todo.extend(c);
        }
        out.sort();
        out
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

    /// The newest entry of VM `vm`.
    fn newest_of(&self, vm: &str) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|(_, e)| e.vm == vm)
            .map(|(n, _)| *n)
    }

    /// What prune keeps: [`Model::kept_of`] applied to each VM's entries separately.
    fn kept(&self, last: u64, buckets: [u64; 3]) -> BTreeSet<u64> {
        let vms: BTreeSet<&String> = self.entries.values().map(|e| &e.vm).collect();
        let mut keep = BTreeSet::new();
        for vm in vms {
            keep.extend(self.kept_of(vm, last, buckets));
        }
        keep
    }

    /// What prune keeps (docs/vrepo.md, restic's rules): the `last` newest entries; for each
    /// calendar bucket with a count N (daily, weekly, monthly), the N newest UTC days (ISO
    /// weeks, months) that have entries, and of each the newest entry.
    fn kept_of(&self, vm: &str, last: u64, buckets: [u64; 3]) -> BTreeSet<u64> {
        let mut by_age: Vec<(Time, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.vm == vm)
            .map(|(n, e)| (e.time, *n))
            .collect();
        by_age.sort_unstable_by(|a, b| b.cmp(a));
        let mut keep: BTreeSet<u64> = by_age.iter().take(last as usize).map(|x| x.1).collect();
        type Key = fn(&Time) -> (i64, i64, i64);
        let keys: [Key; 3] = [
            |t| t.day(),
            |t| {
                let (y, w) = t.iso_week();
                (y, w, 0)
            },
            |t| {
                let (y, m) = t.month();
                (y, m, 0)
            },
        ];
        for (key, n) in keys.iter().zip(buckets) {
            let periods: BTreeSet<(i64, i64, i64)> = by_age.iter().map(|(t, _)| key(t)).collect();
            for p in periods.iter().rev().take(n as usize) {
                let newest = by_age
                    .iter()
                    .filter(|(t, _)| key(t) == *p)
                    .max()
                    .expect("a period with entries");
                keep.insert(newest.1);
            }
        }
        keep
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
    /// Prunes whose calendar buckets kept an entry that neither --keep-last nor "the newest"
    /// would have.
    calendar_prunes: u64,
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
        // The VM: working areas 0 and 2 save VM vm0, working area 1 VM vm1.
        let vm = format!("vm{}", wa % 2);
        args.push("--vm".into());
        args.push(vm.clone());
        // The prediction: --parent; the working area's record; its VM's newest entry; for a
        // VM's first entry, the entry sharing the most content, which the model does not
        // predict (`chosen`: what vrepo chose is taken, and checked to be one).
        let m = &self.model;
        let mut anchor = parent_flag.or(self.was[wa].record.filter(|r| m.entries.contains_key(r)));
        let mut chosen = false;
        if anchor.is_none() && mode != Some("full") {
            anchor = m.newest_of(&vm);
            chosen = anchor.is_none() && !m.entries.is_empty();
        }
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
        assert_eq!(e["vm"]["name"], vm.as_str(), "{label}");
        let (want_parent, want_mode) = if chosen && !e["based_on"].is_null() {
            // Based on another VM's entry: an incremental entry on it, or what --max-chain or
            // --differential makes of that.
            let b = num(e["based_on"]["entry"].as_str().unwrap());
            assert!(self.model.entries.contains_key(&b), "{label}: {e}");
            assert_ne!(self.model.entries[&b].vm, vm, "{label}: {e}");
            let p = e["parent"].as_str().map(num);
            let mode: &'static str = match e["mode"].as_str().unwrap() {
                "incremental" => {
                    assert_eq!(p, Some(b), "{label}: {e}");
                    "incremental"
                }
                "differential" => {
                    assert_eq!(p, Some(self.model.root(b)), "{label}: {e}");
                    "differential"
                }
                other => panic!("{label}: based on an entry, mode {other}: {e}"),
            };
            (p, mode)
        } else {
            assert!(e["based_on"].is_null(), "{label}: {e}");
            (want_parent, want_mode)
        };
        assert_eq!(
            e["parent"].as_str().map(num),
            want_parent,
            "{label}: parent"
        );
        assert_eq!(e["mode"], want_mode, "{label}: mode");
        let k = self.counter_next();
        let state = keep(&wa_path, &self.dir.join(format!("state-{k}")));
        let time = self.tick();
        set_time(&self.repo, &name(want_number), &time.rfc3339());
        self.model.entries.insert(
            want_number,
            ModelEntry {
                parent: want_parent,
                mode: want_mode,
                state,
                time,
                vm,
            },
        );
        self.was[wa].record = Some(want_number);
        self.model.last = want_number;
        self.touched.insert(want_number);
    }

    /// Move the clock forward for a new entry: a few seconds to a few hours (often the same
    /// day), about a day, a few days, one to three weeks, one to two months, or to a minute
    /// or so before or after the next midnight, Monday or first of a month (so that
    /// neighbouring entries straddle the edges of days, ISO weeks and months).
    fn tick(&mut self) -> Time {
        const S: i64 = 1_000_000;
        const H: i64 = 3600 * S;
        let r = &mut self.rng;
        let c = self.model.clock;
        let us = match r.below(100) {
            0..=24 => S + r.below(3 * H as u64) as i64,
            25..=44 => 20 * H + r.below(8 * H as u64) as i64,
            45..=59 => 2 * DAY_US + r.below(5 * DAY_US as u64) as i64,
            60..=69 => 7 * DAY_US + r.below(14 * DAY_US as u64) as i64,
            70..=74 => 25 * DAY_US + r.below(45 * DAY_US as u64) as i64,
            _ => {
                let days = match r.below(3) {
                    0 => 1,
                    1 => 7 - (ordinal(c.y, c.m, c.d) + 6) % 7,
                    _ => days_in_month(c.y, c.m) - c.d + 1,
                };
                let to_edge = days * DAY_US - c.us;
                let delta = S + r.below(90 * S as u64) as i64;
                if r.chance(50) && to_edge > delta {
                    to_edge - delta
                } else {
                    to_edge + delta
                }
            }
        };
        self.model.clock.advance(us);
        self.model.clock
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
            // "En is needed by A, B (and, through them, by C, D); rm --rebase ...": every
            // entry that needs n, and no other, when there are at most ten of each.
            let needers = self.model.descendants(n);
            let listed = err
                .split_once("is needed by ")
                .and_then(|(_, r)| r.split_once(';'))
                .map_or("", |(l, _)| l);
            let mut named: Vec<u64> = listed
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter_map(|w| w.strip_prefix('E').and_then(|d| d.parse().ok()))
                .collect();
            named.sort();
            if children.len() <= 10 && needers.len() - children.len() <= 10 {
                assert_eq!(
                    named, needers,
                    "{label}: the error names what needs it: {err}"
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
        // --keep-last in half the cases, each calendar bucket in 40%, at least one policy.
        let last = if self.rng.chance(50) {
            self.rng.below(names.len() as u64 + 1)
        } else {
            0
        };
        let mut buckets = [0u64; 3]; // daily, weekly, monthly
        for b in &mut buckets {
            if self.rng.chance(40) {
                *b = 1 + self.rng.below(4);
            }
        }
        if last == 0 && buckets == [0; 3] {
            buckets[self.rng.below(3) as usize] = 1 + self.rng.below(4);
        }
        let mut args: Vec<String> = vec!["prune".into()];
        if last > 0 {
            args.push("--keep-last".into());
            args.push(last.to_string());
        }
        for (flag, n) in ["--keep-daily", "--keep-weekly", "--keep-monthly"]
            .iter()
            .zip(buckets)
        {
            if n > 0 {
                args.push((*flag).into());
                args.push(n.to_string());
            }
        }
        let dry = self.rng.chance(20);
        if dry {
            args.push("--dry-run".into());
        }
        // In a quarter of the cases, only one VM's entries (--vm): the other VM keeps all.
        let vms: BTreeSet<String> = self.model.entries.values().map(|e| e.vm.clone()).collect();
        let scope: Option<String> = if self.rng.chance(25) {
            let v: Vec<String> = vms.into_iter().collect();
            Some(self.rng.pick(&v).clone())
        } else {
            None
        };
        if let Some(vm) = &scope {
            args.push("--vm".into());
            args.push(vm.clone());
        }
        let in_scope = |e: &ModelEntry| scope.as_ref().is_none_or(|v| *v == e.vm);
        let mut keep = self.model.kept(last, buckets);
        keep.extend(
            self.model
                .entries
                .iter()
                .filter(|(_, e)| !in_scope(e))
                .map(|(n, _)| *n),
        );
        let newest = self.model.kept(last.max(1), [0; 3]);
        if scope.is_none() && !keep.is_subset(&newest) {
            self.calendar_prunes += 1;
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
        // An entry left with no kept ancestor goes onto the earlier kept entry sharing the
        // most content with it, or is made full: the model takes vrepo's choice, checked to
        // be a kept, earlier entry.
        for (k, p) in &mut rewrite {
            if p.is_some() {
                continue;
            }
            let got = plan["rewrite"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r[0] == name(*k).as_str())
                .and_then(|r| r[1].as_str().map(num));
            if let Some(g) = got {
                assert!(g < *k && keep.contains(&g), "{label}: {k} onto {g}: {plan}");
                *p = Some(g);
            }
        }
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
        let times: Vec<String> = self
            .repo
            .stdout(&["--json", "list"])
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["time"].to_string())
            .collect();
        let want_times: Vec<String> = self
            .model
            .entries
            .values()
            .map(|e| format!("\"{}\"", e.time.rfc3339()))
            .collect();
        assert_eq!(times, want_times, "{label}: entry times against the model");
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

/// Where a case's clock starts (each just before a calendar edge): 22:30 UTC on 2026-11-15,
/// 2024-12-22 (2024-12-30 is in ISO week 1 of 2025), 2028-02-20 (a February 29 follows), or
/// 2020-12-20 (2020 has an ISO week 53).
fn start_time(seed: u64) -> Time {
    let (y, m, d) = [
        (2026, 11, 15),
        (2024, 12, 22),
        (2028, 2, 20),
        (2020, 12, 20),
    ][seed as usize % 4];
    Time::start(y, m, d, 22 * 3_600_000_000 + 30 * 60_000_000)
}

/// How often each kind of step is picked (percent, in the order of `run_case`'s match: save,
/// build into a working area, build into a new folder, rm, rm --rebase, consolidate, prune;
/// verify takes the rest).
type Mix = [u64; 7];

const MIX: Mix = [35, 8, 8, 12, 9, 10, 9];
/// Mostly saves and prunes, so prune's calendar buckets see many entry times.
const CALENDAR_MIX: Mix = [52, 3, 3, 3, 5, 4, 26];

fn run_case(seed: u64, steps: usize, default_max_chain: Option<u64>, mix: Mix) -> u64 {
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
            clock: start_time(seed),
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
        calendar_prunes: 0,
    };
    for step in 0..steps {
        c.step = step;
        let before: Vec<String> = c.model.names().into_iter().map(name).collect();
        let records: Vec<Option<u64>> = c.was.iter().map(|w| w.record).collect();
        eprintln!("step {step}: entries {before:?}, working-area records {records:?}");
        if c.model.entries.is_empty() {
            c.save();
        } else {
            let mut pick = c.rng.below(100);
            let kind = mix.iter().position(|&w| {
                let here = pick < w;
                pick = pick.saturating_sub(w);
                here
            });
            match kind {
                Some(0) => c.save(),
                Some(1) => c.build_into_workarea(),
                Some(2) => c.build_fresh(),
                Some(3) => c.rm(false),
                Some(4) => c.rm(true),
                Some(5) => c.consolidate(),
                Some(6) => c.prune(),
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
        "seed {seed}: {steps} steps, {} entries left, {} prunes kept entries by their \
         calendar buckets, clock {:?}",
        c.model.entries.len(),
        c.calendar_prunes,
        c.model.clock
    );
    c.calendar_prunes
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
        run_case(seed, 36, None, MIX);
    }
}

#[test]
fn model_random_sequences_with_a_repository_max_chain() {
    for seed in seeds(&[7]) {
        run_case(seed, 32, Some(3), MIX);
    }
}

#[test]
fn model_random_sequences_second_seed() {
    for seed in seeds(&[2]) {
        run_case(seed, 32, None, MIX);
    }
}

/// Prune's calendar buckets end to end: entry times spread over days, ISO weeks, months and a
/// year boundary, and many prunes with --keep-daily/--keep-weekly/--keep-monthly.
#[test]
fn model_random_sequences_calendar_buckets() {
    // Seeds 3 and 6 start before 2020's ISO week 53 and before 2028-02-29; each of them
    // catches weeks starting on Sunday or months keyed by year in vrepo's prune.
    for seed in seeds(&[3, 6]) {
        let n = run_case(seed, 40, None, CALENDAR_MIX);
        assert!(
            n >= 2,
            "seed {seed}: only {n} prunes kept entries by their calendar buckets"
        );
    }
}
