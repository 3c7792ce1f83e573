//! Time `Document::parse` on a large synthetic `.vmx` (issue 19: the nom grammar must be no
//! slower than the hand-written one). Run in release:
//! `cargo run --release -p vmx-parse --example vmx_speed [ROUNDS]`.
//! Prints the best and median time per parse, and a digest of the parse result (lines,
//! warnings, problems) so two builds can be compared for identical output.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::time::Instant;
use vmx_parse::Document;

fn synthetic() -> Vec<u8> {
    let mut t: Vec<u8> = b"\xEF\xBB\xBF.encoding = \"UTF-8\"\r\nconfig.version = \"8\"\n".to_vec();
    for i in 0..10_000 {
        let line = match i % 10 {
            0 => format!("scsi0:{i}.fileName = \"disk-{i}.vmdk\"\n"),
            1 => format!(
                "  ethernet{i}.address\t=\t\"00:50:56:aa:bb:{:02x}\"\r\n",
                i % 256
            ),
            2 => format!("annotation{i} = \"line one|0Aline two |22quoted|22 |7C pipe\"\n"),
            3 => format!("# comment number {i}\n"),
            4 => "\t  \n".to_string(),
            5 => format!("unquoted{i}=TRUE   \n"),
            6 => format!("trailing{i} = \"v\" junk after\n"),
            7 => format!("not a pair line {i}\n"),
            8 => format!("unterminated{i} = \"to the end   \n"),
            _ => format!("displayName{i} = \"caf\u{e9} {i}\"\n"),
        };
        t.extend_from_slice(line.as_bytes());
        if i % 1000 == 999 {
            t.extend_from_slice(b"damaged = \"cut \xE3\x81\"\n");
        }
    }
    t.extend_from_slice(b"last = \"no newline\"");
    t
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let bytes = synthetic();
    let path = Path::new("synthetic.vmx");
    let d = Document::parse(path, &bytes).expect("synthetic vmx parses");
    assert_eq!(d.to_bytes(), bytes, "round trip");
    let mut h = DefaultHasher::new();
    format!("{:?}", d.lines()).hash(&mut h);
    format!("{:?}", d.warnings()).hash(&mut h);
    format!("{:?}", d.problems()).hash(&mut h);
    format!("{:?}", d.duplicates()).hash(&mut h);
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let d = Document::parse(path, std::hint::black_box(&bytes)).expect("parses");
        std::hint::black_box(&d);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "vmx: {} bytes, {} lines, {} rounds: best {:?}, median {:?}, digest {:016x}",
        bytes.len(),
        d.lines().len(),
        rounds,
        times[0],
        times[rounds / 2],
        h.finish()
    );
}
