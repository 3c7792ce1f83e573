//! Time `vmx_parse::document::classify` alone over 500k lines, against a copy of the
//! hand-written `classify` the nom grammar replaced (issue 19 item 5: no slower, same results).
//! Run in release:
//! `cargo run --release -p vmx-parse --example classify_speed [ROUNDS]`.
//! First checks that both give the same result for every timed line and for a million lines of
//! random pieces; then times the two alternately in the same run and prints best and median ms
//! per pass over all lines for each, and a fingerprint of every result (they must be equal).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};
use vmx_parse::document::classify;
use vmx_parse::{LineKind, Pair};

const LINES: usize = 500_000;

/// A mix like real `.vmx` files, with the odd lines a reader meets: escapes, comments, blank
/// lines, keys without values, unterminated quotes, ignored trailers, U+FEFF, U+FFFD, spaces
/// in keys, lines without `=`.
fn lines() -> Vec<String> {
    let mut out = Vec::with_capacity(LINES);
    for i in 0..LINES {
        let line = match i % 25 {
            0 => format!("scsi0:{}.fileName = \"disk-{i}-000001.vmdk\"", i % 16),
            1 => format!(
                "ethernet{}.address = \"00:50:56:aa:bb:{:02x}\"",
                i % 4,
                i % 256
            ),
            2 => format!("annotation = \"line one|0Aline two |22quoted|22 |7C pipe {i}\""),
            3 => format!("# comment number {i}"),
            4 => String::new(),
            5 => "\t  ".to_string(),
            6 => format!("unquoted{i}=TRUE   "),
            7 => format!("trailing{i} = \"v\" junk after"),
            8 => format!("not a pair line {i}"),
            9 => format!("unterminated{i} = \"to the end   "),
            10 => format!("displayName = \"caf\u{e9} {i} \u{65e5}\u{672c}\""),
            11 => format!("key.without.value{i} ="),
            12 => format!("  \t memsize\t=\t\"{}\"  ", 1024 + i),
            13 => format!("= \"no key {i}\""),
            14 => format!("bad key{i} = \"x\""),
            15 => format!("q\"uote{i} = \"x\""),
            16 => format!("\u{feff}bom.key = \"{i}\""),
            17 => format!("damaged = \"cut \u{fffd} {i}"),
            18 => "#!/usr/bin/vmware".to_string(),
            19 => format!("   # indented comment {i}"),
            20 => format!("a = \"=\" \"{i}\"  "),
            21 => format!("nbsp\u{a0}key = \"{i}\""),
            22 => format!(
                "guestinfo.long{i} = \"{}\" {}",
                "x".repeat(i % 97),
                "t".repeat(i % 113)
            ),
            23 => format!("sched.mem.pshare.enable = \"FALSE\"  # note {i}"),
            _ => format!("checkpoint.vmState{i}.readOnly = \"FALSE\""),
        };
        out.push(line);
    }
    out
}

/// Lines made of random pieces (blanks, `=`, quotes, `#`, U+FEFF, other white space, escapes,
/// U+FFFD), for the comparison of results only: every odd corner of the grammar.
fn random_lines(n: usize) -> Vec<String> {
    const PIECES: [&str; 18] = [
        " ", "\t", "=", "\"", "#", "\u{feff}", "\u{a0}", "\u{b}", "\r", "\u{3000}", "k", "key.x",
        "|22", "\u{fffd}", "\u{e9}", "\u{65e5}", "v", "\u{ef}",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|_| {
            let len = next() % 12;
            (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect()
        })
        .collect()
}

// ---- The hand-written classify the nom grammar replaced (git 89d13db^), verbatim. ----

const WS: [char; 2] = [' ', '\t'];
const LEAD: [char; 3] = [' ', '\t', '\u{feff}'];

fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

fn old_classify(text: &str) -> (LineKind, Option<String>) {
    let t = text.trim_start_matches(LEAD);
    if t.trim_end_matches(WS).is_empty() {
        return (LineKind::Blank, None);
    }
    if t.starts_with('#') {
        return (LineKind::Comment, None);
    }
    let Some(eq) = text.find('=') else {
        return (LineKind::Other("no '=' on the line".into()), None);
    };
    let key_start = text.len() - t.len();
    let key_end = key_start + text[key_start..eq].trim_end_matches(WS).len();
    let key = &text[key_start..key_end];
    if key.is_empty() {
        return (LineKind::Other("no key before '='".into()), None);
    }
    if key.contains(|c: char| c.is_whitespace() || c == '"') {
        return (
            LineKind::Other("the key contains spaces or quotes".into()),
            None,
        );
    }
    let after = &text[eq + 1..];
    let vstart = eq + 1 + (after.len() - after.trim_start_matches(WS).len());
    let rest = &text[vstart..];
    let mut warning = None;
    let (value, quoted) = if let Some(inner) = rest.strip_prefix('"') {
        let Some(n) = inner.find('"') else {
            // VMware runs VMs whose .vmx has such a line: read the value to the end of it.
            let value = vstart + 1..vstart + 1 + inner.trim_end_matches(WS).len();
            return (
                LineKind::Pair(Pair {
                    key: key_start..key_end,
                    value,
                    quoted: true,
                    closed: false,
                    decoded: String::new(),
                }),
                Some("unterminated quote; the value is read to the end of the line".into()),
            );
        };
        let trailer = inner[n + 1..].trim_matches(WS);
        if !trailer.is_empty() {
            warning = Some(format!(
                "text after the closing quote is ignored: {:?}",
                clip(trailer)
            ));
        }
        (vstart + 1..vstart + 1 + n, true)
    } else {
        (vstart..vstart + rest.trim_end_matches(WS).len(), false)
    };
    (
        LineKind::Pair(Pair {
            key: key_start..key_end,
            value,
            quoted,
            closed: true,
            decoded: String::new(),
        }),
        warning,
    )
}

// ---- Timing. ----

type Classify = fn(&str) -> (LineKind, Option<String>);

fn fingerprint(f: Classify, lines: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    for l in lines {
        format!("{:?}", f(l)).hash(&mut h);
    }
    h.finish()
}

/// One pass over every line; the results are dropped as they come, as `Document::parse` would
/// keep them, so allocation counts.
fn pass(f: Classify, lines: &[String]) -> Duration {
    let t = Instant::now();
    let mut acc = 0usize;
    for l in lines {
        let r = f(std::hint::black_box(l));
        acc += match &r.0 {
            LineKind::Pair(p) => p.value.end,
            LineKind::Other(s) => s.len(),
            _ => 1,
        } + r.1.map_or(0, |w| w.len());
    }
    std::hint::black_box(acc);
    t.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let lines = lines();
    let old_fp = fingerprint(old_classify, &lines);
    let new_fp = fingerprint(classify, &lines);
    let random = random_lines(1_000_000);
    for l in lines.iter().chain(&random) {
        assert_eq!(classify(l), old_classify(l), "{l:?}");
    }
    println!(
        "same results as the old classify on {} timed and {} random lines",
        lines.len(),
        random.len()
    );
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first, so neither always runs on a warm or cold cache.
        if r % 2 == 0 {
            old.push(pass(old_classify, &lines));
            new.push(pass(classify, &lines));
        } else {
            new.push(pass(classify, &lines));
            old.push(pass(old_classify, &lines));
        }
    }
    old.sort();
    new.sort();
    let (ob, om) = (ms(old[0]), ms(old[rounds / 2]));
    let (nb, nm) = (ms(new[0]), ms(new[rounds / 2]));
    println!("classify over {} lines, {rounds} rounds each", lines.len());
    println!("  old (hand-written): best {ob:.2} ms, median {om:.2} ms, fingerprint {old_fp:016x}");
    println!("  new (nom):          best {nb:.2} ms, median {nm:.2} ms, fingerprint {new_fp:016x}");
    println!(
        "  new/old: best {:.3}, median {:.3}; fingerprints {}",
        nb / ob,
        nm / om,
        if old_fp == new_fp { "equal" } else { "DIFFER" }
    );
    assert_eq!(old_fp, new_fp, "classify results differ");
}
