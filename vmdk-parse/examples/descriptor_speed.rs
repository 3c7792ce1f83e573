//! Time `Descriptor::parse` on a large synthetic descriptor (issue 19: the nom grammar must be
//! no slower than the hand-written one). Run in release:
//! `cargo run --release -p vmdk-parse --example descriptor_speed [ROUNDS]`.
//! Prints the best and median time per parse, and a digest of the parse result so two builds
//! can be compared for identical output.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::time::Instant;
use vmdk_parse::descriptor::Descriptor;

fn synthetic() -> Vec<u8> {
    let mut t = String::from(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=0172e8a4\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n# Extent description\n",
    );
    for i in 0..4000 {
        match i % 4 {
            0 => t.push_str(&format!("RW 4192256 SPARSE \"disk-s{i:04}.vmdk\"\n")),
            1 => t.push_str(&format!("RDONLY 2048 FLAT \"disk-f{i:04}.vmdk\" {i}\r\n")),
            2 => t.push_str("NOACCESS 8 ZERO\n"),
            _ => t.push_str(&format!("  rw   16  vmfs   \"a b {i}.vmdk\"   0 \n")),
        }
    }
    t.push_str("\n# The Disk Data Base \n#DDB\n\n");
    for i in 0..5000 {
        match i % 5 {
            0 => t.push_str(&format!("ddb.key{i} = \"value number {i}\"\n")),
            1 => t.push_str(&format!(
                "ddb.uuid{i}=\"60 00 C2 98 5d 08 de f2-a0 14 2e 05 94 9d d8 38\"\n"
            )),
            2 => t.push_str(&format!("# comment {i}\n")),
            3 => t.push_str("   \n"),
            _ => t.push_str(&format!("odd line {i} without equals\n")),
        }
    }
    t.into_bytes()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let bytes = synthetic();
    let path = Path::new("synthetic.vmdk");
    let d = Descriptor::parse(path, &bytes).expect("synthetic descriptor parses");
    let mut h = DefaultHasher::new();
    format!("{:?}", d.lines).hash(&mut h);
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let d = Descriptor::parse(path, std::hint::black_box(&bytes)).expect("parses");
        std::hint::black_box(&d);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "descriptor: {} bytes, {} lines, {} rounds: best {:?}, median {:?}, digest {:016x}",
        bytes.len(),
        d.lines.len(),
        rounds,
        times[0],
        times[rounds / 2],
        h.finish()
    );
}
