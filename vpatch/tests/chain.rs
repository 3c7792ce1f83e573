//! Chains of 1 to 3 deltas applied in one pass equal the last image; a wrong base, a broken
//! chain and hostile streams are refused.

#[path = "../../vdiff/tests/common_gen.rs"]
mod common_gen;

use common_gen::*;
use proptest::prelude::*;
use std::io::{Seek, Write};
use vdiff::{diff, DiffOptions, Image, MemImage};
use vpatch::{apply, apply_verified, check_base, read_headers, DeltaInput, Error, MemSink};

fn delta_file(a: Option<&MemImage>, b: &MemImage) -> DeltaInput {
    let mut f = tempfile::tempfile().unwrap();
    diff(
        a.map(|a| a as &dyn Image),
        b,
        DiffOptions {
            block_size: 4096,
            level: 1,
            index: false,
        },
        &mut f,
    )
    .unwrap();
    f.rewind().unwrap();
    DeltaInput {
        name: "delta".into(),
        file: f,
    }
}

fn bytes_file(b: &[u8]) -> DeltaInput {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(b).unwrap();
    DeltaInput {
        name: "delta".into(),
        file: f,
    }
}

fn run(base: Option<&MemImage>, mut deltas: Vec<DeltaInput>) -> Result<Vec<u8>, Error> {
    let headers = read_headers(&mut deltas)?;
    let chunks = check_base(base.map(|b| b as &dyn Image), &headers[0], "d0", true)?;
    let mut sink = MemSink::default();
    // The verified base's chunk digests stand in for hashing unchanged chunks.
    apply_verified(
        base.map(|b| b as &dyn Image),
        chunks.as_deref(),
        deltas,
        &mut sink,
    )?;
    assert_eq!(sink.data.len() as u64, headers.last().unwrap().target_size);
    Ok(sink.data)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn chain_applies_in_one_pass(
        s0 in image_spec(), s1 in image_spec(), s2 in image_spec(), s3 in image_spec(), n in 1usize..=3, full in any::<bool>()
    ) {
        let mut imgs = vec![build(&s0, None)];
        for s in [&s1, &s2, &s3] {
            let next = build(s, imgs.last());
            imgs.push(next);
        }
        let mut deltas = Vec::new();
        if full {
            deltas.push(delta_file(None, &imgs[0]));
        }
        for k in 0..n {
            deltas.push(delta_file(Some(&imgs[k]), &imgs[k + 1]));
        }
        let base = if full { None } else { Some(&imgs[0]) };
        let out = run(base, deltas).expect("apply");
        prop_assert_eq!(out, imgs[n].data.clone());
    }
}

fn img(seed: u64, blocks: usize) -> MemImage {
    build(
        &(
            (0..blocks).map(|i| Block::Fresh(seed + i as u64)).collect(),
            0,
            0,
        ),
        None,
    )
}

#[test]
fn wrong_base_is_refused_up_front() {
    let (a, b, c) = (img(1, 4), img(100, 4), img(200, 4));
    let d = delta_file(Some(&a), &b);
    // Same size, other content: refused by the digest check, before any output.
    let r = run(Some(&c), vec![d]);
    assert!(matches!(r, Err(Error::WrongBase(_))), "{r:?}");
    // Other size: refused by the size check even without the digest.
    let mut ds = vec![delta_file(Some(&a), &b)];
    let h = read_headers(&mut ds).unwrap();
    let r = check_base(Some(&img(1, 5)), &h[0], "d", false);
    assert!(matches!(r, Err(Error::WrongBase(_))), "{r:?}");
}

#[test]
fn wrong_base_without_the_digest_check_fails_the_target_digest() {
    let (a, b, c) = (img(1, 4), img(100, 4), img(200, 4));
    let mut ab = b.clone();
    ab.data[..4096].copy_from_slice(&a.data[..4096]); // one block copied from the source
    let mut ds = vec![delta_file(Some(&a), &ab)];
    let h = read_headers(&mut ds).unwrap();
    check_base(Some(&c), &h[0], "d", false).unwrap();
    let r = apply(Some(&c), ds, &mut MemSink::default());
    assert!(matches!(r, Err(Error::TargetDigest)), "{r:?}");
}

#[test]
fn broken_chain_is_refused() {
    let (a, b, c) = (img(1, 4), img(100, 4), img(200, 4));
    // a->b then a->c: the second delta is not made for b.
    let r = run(
        Some(&a),
        vec![delta_file(Some(&a), &b), delta_file(Some(&a), &c)],
    );
    assert!(matches!(r, Err(Error::WrongBase(_))), "{r:?}");
}

#[test]
fn hostile_streams_are_errors() {
    let (a, b) = (img(1, 4), img(100, 4));
    let mut good = Vec::new();
    diff(Some(&a), &b, DiffOptions::default(), &mut good).unwrap();
    for cut in [0, 10, 119, 120, 150, good.len() - 1] {
        let r = run(Some(&a), vec![bytes_file(&good[..cut])]);
        assert!(matches!(r, Err(Error::Delta { .. })), "cut {cut}: {r:?}");
    }
    for i in (0..good.len()).step_by(37) {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        let r = run(Some(&a), vec![bytes_file(&bad)]);
        assert!(r.is_err(), "flip at {i}");
    }
}

#[test]
fn zero_and_unallocated_ranges_reach_the_sink_as_such() {
    let a = build(&(vec![Block::Fresh(1), Block::Fresh(2)], 0, 0), None);
    let b = build(
        &(
            vec![Block::Hole, Block::From(0), Block::Zero, Block::Hole],
            0,
            0,
        ),
        Some(&a),
    );
    let mut ds = vec![delta_file(Some(&a), &b)];
    read_headers(&mut ds).unwrap();
    let mut sink = MemSink::default();
    apply(Some(&a), ds, &mut sink).unwrap();
    assert_eq!(sink.data, b.data);
    assert_eq!(sink.unallocated_bytes, 2 * 4096);
    assert_eq!(sink.zero_bytes, 4096);
}
