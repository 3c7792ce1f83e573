//! `apply(a, diff(a, b)) == b` for generated images with moves, duplicates, zeros and holes,
//! decoded by the format's reference applier.

#[path = "common_gen.rs"]
mod common_gen;

use common_gen::*;
use proptest::prelude::*;
use vdiff::format::{apply_bytes, Decoder, Record};
use vdiff::{diff, DiffOptions, MemImage};

fn delta(a: Option<&MemImage>, b: &MemImage, block_size: u32) -> Vec<u8> {
    let mut out = Vec::new();
    diff(
        a.map(|a| a as &dyn vdiff::Image),
        b,
        DiffOptions {
            block_size,
            level: 1,
            index: false,
        },
        &mut out,
    )
    .expect("diff");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn apply_diff_is_identity(sa in image_spec(), sb in image_spec(), big in any::<bool>()) {
        let a = build(&sa, None);
        let b = build(&sb, Some(&a));
        let bs = if big { 8192 } else { 4096 };
        let d = delta(Some(&a), &b, bs);
        prop_assert_eq!(apply_bytes(&a.data, &d).expect("apply"), b.data.clone());
        let full = delta(None, &b, bs);
        prop_assert_eq!(apply_bytes(&[], &full).expect("apply full"), b.data.clone());
        // Holes stay holes: every unallocated block of b is in an unallocated record.
        let mut dec = Decoder::new(&d[..]).unwrap();
        let mut unalloc = 0;
        while let Some(r) = dec.next_record().unwrap() {
            if let Record::Unallocated { length, .. } = r { unalloc += length; }
        }
        if bs == 4096 {
            let holes: u64 = b.holes.iter().filter(|h| h.2 == vdiff::Kind::Unallocated).map(|h| h.1).sum();
            prop_assert_eq!(unalloc, holes);
        }
    }
}

#[test]
fn moved_and_duplicated_blocks_are_copies() {
    let a = build(
        &(
            vec![Block::Fresh(1), Block::Fresh(2), Block::Fresh(3)],
            0,
            0,
        ),
        None,
    );
    // b: a's blocks moved around, one duplicated fresh block, zeros.
    let b = build(
        &(
            vec![
                Block::From(2),
                Block::From(0),
                Block::Fresh(9),
                Block::Fresh(9),
                Block::Zero,
            ],
            0,
            0,
        ),
        Some(&a),
    );
    let mut out = Vec::new();
    let s = diff(Some(&a), &b, DiffOptions::default(), &mut out).unwrap();
    assert_eq!(s.totals.copy_source_bytes, 2 * 4096);
    assert_eq!(s.totals.copy_target_bytes, 4096);
    assert_eq!(s.totals.literal_bytes, 4096);
    assert_eq!(s.totals.zero_bytes, 4096);
    assert_eq!(apply_bytes(&a.data, &out).unwrap(), b.data);
}

#[test]
fn identical_images_are_one_copy() {
    let a = build(&(vec![Block::Fresh(1), Block::Fresh(2)], 3, 5), None);
    let mut out = Vec::new();
    let s = diff(Some(&a), &a, DiffOptions::default(), &mut out).unwrap();
    assert!(s.identical);
    assert_eq!(s.changed_bytes, 0);
    assert_eq!(s.totals.records, 1);
    assert_eq!(s.totals.copy_source_bytes, a.data.len() as u64);
}

#[test]
fn content_shifted_by_a_few_bytes_is_found() {
    let a = build(
        &((0..32).map(|i| Block::Fresh(i + 1)).collect(), 0, 0),
        None,
    );
    // b: 37 new bytes, then a's first 30 blocks: nothing block-aligned matches.
    let mut b = MemImage::new(vec![0x42; 37]);
    b.data.extend_from_slice(&a.data[..30 * 4096]);
    b.data.resize(31 * 4096, 0x42);
    let mut out = Vec::new();
    let s = diff(Some(&a), &b, DiffOptions::default(), &mut out).unwrap();
    assert!(s.totals.copy_source_bytes >= 29 * 4096, "{:?}", s.totals);
    assert!(s.totals.literal_bytes <= 2 * 4096, "{:?}", s.totals);
    assert_eq!(apply_bytes(&a.data, &out).unwrap(), b.data);
}
