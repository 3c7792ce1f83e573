//! Golden vectors of the delta format: small deltas committed under `tests/golden/` with the
//! source they apply to and the target they produce.
//!
//! Two checks per vector: the encoder still writes the committed bytes (the format and the
//! differ's choices are frozen), and the decoder still turns the committed bytes into the
//! committed target (old deltas stay readable). After a deliberate change, regenerate with
//! `VML_GOLDEN_WRITE=1 cargo test -p vdiff --test golden` and review the diff; a change of the
//! zstd library can change literal bytes too (then only the first check fails).

#[path = "common_gen.rs"]
mod common_gen;

use common_gen::*;
use std::fs;
use std::path::PathBuf;
use vdiff::format::{apply_bytes, Encoder, Header};
use vdiff::{diff, digest, DiffOptions, Image, MemImage};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

struct Vector {
    name: &'static str,
    source: Option<Vec<u8>>,
    target: Vec<u8>,
    delta: Vec<u8>,
}

/// Every record kind, written record by record.
fn every_kind() -> Vector {
    let source: Vec<u8> = (0..16384u32).map(|i| (i * 7 % 253) as u8).collect();
    let mut target = Vec::new();
    target.extend_from_slice(
        b"VML golden vector: literal text compresses well. "
            .repeat(20)
            .as_slice(),
    );
    let lit = target.len();
    target.extend_from_slice(&[0u8; 4096]);
    target.extend_from_slice(&[0u8; 8192]);
    target.extend_from_slice(&source[4096..12288]);
    target.extend_from_within(0..lit);
    let header = Header {
        flags: 0,
        block_size: 4096,
        source_size: source.len() as u64,
        target_size: target.len() as u64,
        source_digest: digest::digest_bytes(&source),
        target_digest: digest::digest_bytes(&target),
    };
    let mut e = Encoder::new(Vec::new(), header, 3).unwrap();
    e.literal(&target[..lit]).unwrap();
    e.zero(4096).unwrap();
    e.unallocated(8192).unwrap();
    e.copy_source(4096, 8192).unwrap();
    e.copy_target(0, lit as u64).unwrap();
    let (_, delta) = e.finish().unwrap();
    Vector {
        name: "every_kind",
        source: Some(source),
        target,
        delta,
    }
}

fn images() -> (MemImage, MemImage) {
    let a = build(
        &(
            vec![
                Block::Fresh(1),
                Block::Pattern(1),
                Block::Hole,
                Block::Fresh(2),
                Block::Zero,
                Block::Fresh(3),
            ],
            1,
            4,
        ),
        None,
    );
    let b = build(
        &(
            vec![
                Block::From(5),
                Block::From(0),
                Block::Fresh(7),
                Block::Fresh(7),
                Block::Hole,
                Block::Zero,
                Block::Pattern(1),
                Block::From(3),
            ],
            3,
            9,
        ),
        Some(&a),
    );
    (a, b)
}

fn differ(name: &'static str, full: bool) -> Vector {
    let (a, b) = images();
    let mut delta = Vec::new();
    let old = (!full).then_some(&a as &dyn Image);
    diff(old, &b, DiffOptions::default(), &mut delta).unwrap();
    Vector {
        name,
        source: (!full).then(|| a.data.clone()),
        target: b.data,
        delta,
    }
}

/// Content moved by 37 bytes: copies at unaligned target offsets.
fn shifted() -> Vector {
    shifted_as("shifted", false)
}

fn shifted_as(name: &'static str, index: bool) -> Vector {
    let a = build(&((0..6).map(|i| Block::Fresh(i + 1)).collect(), 0, 0), None);
    let mut b = MemImage::new(vec![0x42; 37]);
    b.data.extend_from_slice(&a.data[..5 * 4096]);
    b.data.resize(6 * 4096, 0x42);
    let mut delta = Vec::new();
    let opts = DiffOptions {
        index,
        ..DiffOptions::default()
    };
    diff(Some(&a), &b, opts, &mut delta).unwrap();
    Vector {
        name,
        source: Some(a.data),
        target: b.data,
        delta,
    }
}

fn vectors() -> Vec<Vector> {
    vec![
        every_kind(),
        differ("moves_holes", false),
        differ("full", true),
        shifted(),
        // The same delta with a trailing index.
        shifted_as("indexed", true),
    ]
}

#[test]
fn golden_vectors() {
    let write = std::env::var_os("VML_GOLDEN_WRITE").is_some();
    for v in vectors() {
        let base = dir().join(v.name);
        let delta_path = base.with_extension("delta");
        let source_path = base.with_extension("source");
        let target_path = base.with_extension("target");
        if write {
            fs::create_dir_all(dir()).unwrap();
            fs::write(&delta_path, &v.delta).unwrap();
            fs::write(&target_path, &v.target).unwrap();
            if let Some(s) = &v.source {
                fs::write(&source_path, s).unwrap();
            }
        }
        let committed = fs::read(&delta_path).expect("golden delta committed");
        let target = fs::read(&target_path).expect("golden target committed");
        let source = v
            .source
            .as_ref()
            .map(|_| fs::read(&source_path).expect("golden source"));
        // The decoder reads the committed bytes into the committed target.
        let got = apply_bytes(source.as_deref().unwrap_or(&[]), &committed).unwrap();
        assert!(got == target, "{}: decoded target differs", v.name);
        assert_eq!(v.target, target, "{}: generator changed", v.name);
        // The encoder still writes the committed bytes.
        assert!(
            v.delta == committed,
            "{}: encoder output changed ({} bytes, {} committed); regenerate with VML_GOLDEN_WRITE=1 if deliberate",
            v.name,
            v.delta.len(),
            committed.len()
        );
    }
}
