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

/// With OLD's bytes at hand, copies grow byte by byte into the literal bytes around them: a
/// few bytes edited inside a block cost those bytes, and a file shifted by a header line
/// costs the header line (not the partial blocks at its ends). From a signature (digests
/// only) the same pair costs whole blocks.
#[test]
fn copies_are_extended_byte_by_byte_with_old_bytes() {
    let a = build(
        &((0..16).map(|i| Block::Fresh(i + 1)).collect(), 0, 0),
        None,
    );
    let literal = |d: &[u8]| {
        let mut dec = Decoder::new(d).unwrap();
        let (mut lit, mut recs) = (0, 0);
        while let Some(r) = dec.next_record().unwrap() {
            recs += 1;
            if let Record::Literal { length, .. } = r {
                lit += length;
            }
        }
        (lit, recs)
    };
    // Ten bytes edited in the middle of block 5, and the last block cut short by 100 bytes
    // that differ.
    let mut b = MemImage::new(a.data.clone());
    b.data[5 * 4096 + 1000..5 * 4096 + 1010].fill(0xEE);
    let n = b.data.len();
    b.data[n - 100..].fill(0x11);
    let d = delta(Some(&a), &b, 4096);
    assert_eq!(apply_bytes(&a.data, &d).unwrap(), b.data);
    let (lit, recs) = literal(&d);
    assert!(lit <= 10 + 100, "literal {lit}");
    // copy, literal, copy, literal: the extensions joined the copies they continue.
    assert_eq!(recs, 4);
    let sig = two_passes_from_digests(Some(&a), &b);
    assert_eq!(apply_bytes(&a.data, &sig).unwrap(), b.data);
    assert_eq!(literal(&sig).0, 2 * 4096);
    // A header line, then blocks 0..12 of a and the tail of block 12: the shifted data is
    // found at its unaligned offset, then grown to the header line at the front and to the
    // end of the tail.
    let mut c = MemImage::new(b"rewritten by the test\n".to_vec());
    let h = c.data.len();
    c.data.extend_from_slice(&a.data[..12 * 4096 + 777]);
    c.data.resize(14 * 4096, 0x5A);
    let d = delta(Some(&a), &c, 4096);
    assert_eq!(apply_bytes(&a.data, &d).unwrap(), c.data);
    let (lit, _) = literal(&d);
    let tail = 14 * 4096 - (h + 12 * 4096 + 777);
    assert!(
        lit <= (h + tail) as u64,
        "literal {lit}, want at most {}",
        h + tail
    );
    assert!(literal(&two_passes_from_digests(Some(&a), &c)).0 > (h + tail + 700) as u64);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// OLD's bytes never cost literal bytes: the delta applies, and holds at most the
    /// literal bytes of the delta made from OLD's digests alone.
    #[test]
    fn extension_only_removes_literal_bytes(sa in image_spec(), sb in image_spec()) {
        let a = build(&sa, None);
        let b = build(&sb, Some(&a));
        let with = delta(Some(&a), &b, 4096);
        let without = two_passes_from_digests(Some(&a), &b);
        prop_assert_eq!(apply_bytes(&a.data, &with).expect("apply"), b.data.clone());
        let lit = |d: &[u8]| {
            let mut dec = Decoder::new(d).unwrap();
            let mut n = 0;
            while let Some(r) = dec.next_record().unwrap() {
                if let Record::Literal { length, .. } = r { n += length; }
            }
            n
        };
        prop_assert!(lit(&with) <= lit(&without));
    }
}

/// The one-pass differ, into a temporary file.
fn delta_one_pass(a: Option<&MemImage>, b: &MemImage, block_size: u32) -> Vec<u8> {
    let f = tempfile::tempfile().unwrap();
    let old = a.map(|a| vdiff::diff::scan(a, block_size, true).unwrap());
    let none = |_: u64| -> vdiff::Result<Option<vdiff::diff::ChunkScan>> { Ok(None) };
    let opts = DiffOptions {
        block_size,
        level: 1,
        index: true,
    };
    let (_, scan, _) = vdiff::diff::diff_one_pass(old.as_ref(), b, &none, opts, &f).unwrap();
    assert_eq!(scan.digest, vdiff::diff::image_digest(b).unwrap());
    // The rows it returns (rolling checksums partly taken from OLD's) are those of a scan.
    let want = vdiff::diff::scan(b, block_size, true).unwrap();
    for i in 0..b.data.len().div_ceil(block_size as usize) {
        assert_eq!(
            (scan.kind(i), scan.blocks[i], scan.weak(i)),
            (want.kind(i), want.blocks[i], want.weak(i)),
            "block {i}"
        );
    }
    read_all(&f)
}

/// The two-pass differ with OLD known by its digests only (as from a signature, and as vrepo
/// saves): what the one-pass and batched differs must match byte for byte. (`diff` with OLD's
/// bytes also extends copies byte by byte, so its literals can only be fewer.)
fn two_passes_from_digests(a: Option<&MemImage>, b: &MemImage) -> Vec<u8> {
    let old = a.map(|a| vdiff::diff::scan(a, 4096, true).unwrap());
    let new_scan = vdiff::diff::scan_new(b, 4096).unwrap();
    let opts = DiffOptions {
        block_size: 4096,
        level: 1,
        index: true,
    };
    let mut out = Vec::new();
    vdiff::diff::diff_scanned(old, new_scan, b, opts, &mut out).unwrap();
    out
}

fn read_all(mut f: &std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    f.rewind().unwrap();
    let mut out = Vec::new();
    f.read_to_end(&mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// On images of one batch, one pass writes the very stream two passes write.
    #[test]
    fn one_pass_equals_two_passes(sa in image_spec(), sb in image_spec()) {
        let a = build(&sa, None);
        let b = build(&sb, Some(&a));
        let two = two_passes_from_digests(Some(&a), &b);
        let one = delta_one_pass(Some(&a), &b, 4096);
        prop_assert_eq!(&one, &two);
        prop_assert_eq!(apply_bytes(&a.data, &one).expect("apply"), b.data.clone());
    }
}

/// Several batches (32 MiB each): blocks moved and duplicated across batch boundaries, zero
/// and unallocated ranges, known chunks taken from OLD without reading them.
#[test]
fn one_pass_over_several_batches() {
    const MB: usize = 1 << 20;
    let mut old = vec![0u8; 70 * MB];
    for (i, b) in old.iter_mut().enumerate() {
        *b = ((i / 4096) as u32)
            .wrapping_mul(2_654_435_761)
            .to_le_bytes()[i % 4]
            ^ (i as u8);
    }
    let mut new = old.clone();
    new.copy_within(3 * MB..4 * MB, 40 * MB); // moved across batches
    new.copy_within(5 * MB..5 * MB + 8192, 66 * MB + 4096); // duplicated later
    new[33 * MB..33 * MB + 4096].copy_from_slice(&[7u8; 4096]); // changed
    new[35 * MB..36 * MB].fill(0); // zeroed
    let a = MemImage::new(old);
    let mut b = MemImage::new(new);
    b.holes = vec![(60 * MB as u64, 2 * MB as u64, vdiff::Kind::Unallocated)];
    b.data[60 * MB..62 * MB].fill(0);
    let d = delta_one_pass(Some(&a), &b, 4096);
    assert_eq!(apply_bytes(&a.data, &d).expect("apply"), b.data);
    // The same records as the two-pass differ, which flushes elsewhere (a copy from OLD
    // runs on over the one-pass differ's 8 MiB batches).
    assert!(
        d == two_passes_from_digests(Some(&a), &b),
        "one pass and two passes differ"
    );
    let full = delta_one_pass(None, &b, 4096);
    assert_eq!(apply_bytes(&[], &full).expect("apply full"), b.data);
    // Changed bytes only are literals: the one changed block (the duplicate is a copy).
    let mut dec = Decoder::new(&d[..]).unwrap();
    let mut literal = 0;
    while let Some(r) = dec.next_record().unwrap() {
        if let Record::Literal { length, .. } = r {
            literal += length;
        }
    }
    assert_eq!(literal, 4096);
    // Chunks supplied as known (the unchanged first 3 MiB) are not read and give the same
    // delta.
    let old_scan = vdiff::diff::scan(&a, 4096, true).unwrap();
    let (_, chunks) = vdiff::diff::scan_with_chunks(&a, 4096, true, true, None).unwrap();
    let known = |i: u64| -> vdiff::Result<Option<vdiff::diff::ChunkScan>> {
        Ok((i < 3).then(|| old_scan.chunk_rows(i, chunks[i as usize])))
    };
    let f = tempfile::tempfile().unwrap();
    let opts = DiffOptions {
        block_size: 4096,
        level: 1,
        index: true,
    };
    let again = vdiff::diff::scan(&a, 4096, true).unwrap();
    let (_, scan, _) = vdiff::diff::diff_one_pass(Some(&again), &b, &known, opts, &f).unwrap();
    assert_eq!(scan.digest, vdiff::diff::image_digest(&b).unwrap());
    assert_eq!(read_all(&f), d);
}

/// The batched differ (NEW handed over batch by batch, its scan known), into a vector.
fn delta_batched(a: Option<&MemImage>, b: &MemImage, block_size: u32) -> Vec<u8> {
    let old = a.map(|a| vdiff::diff::scan(a, block_size, true).unwrap());
    let new_scan = vdiff::diff::scan_new(b, block_size).unwrap();
    let opts = DiffOptions {
        block_size,
        level: 1,
        index: true,
    };
    let mut next = 0u64;
    let mut fill = |start: u64, len: usize, buf: &mut Vec<u8>| -> vdiff::Result<()> {
        assert_eq!(start, next, "batches in order");
        buf.clear();
        buf.extend_from_slice(&b.data[start as usize..start as usize + len]);
        next += len as u64;
        Ok(())
    };
    let mut out = Vec::new();
    vdiff::diff::diff_scanned_batches(old, new_scan, opts, &mut out, &mut fill).unwrap();
    assert_eq!(next, b.data.len() as u64, "every byte handed over");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// On images of one batch, the batched differ writes the very stream two passes write.
    #[test]
    fn batched_equals_two_passes(sa in image_spec(), sb in image_spec()) {
        let a = build(&sa, None);
        let b = build(&sb, Some(&a));
        let two = two_passes_from_digests(Some(&a), &b);
        prop_assert_eq!(&delta_batched(Some(&a), &b, 4096), &two);
        let mut full = Vec::new();
        diff(None, &b, DiffOptions { block_size: 4096, level: 1, index: true }, &mut full).unwrap();
        prop_assert_eq!(&delta_batched(None, &b, 4096), &full);
    }
}

/// Over several batches the batched differ writes a delta that applies, with the literal
/// records of the one-pass differ (records are cut at 1 MiB boundaries, whatever the
/// batches), and a batch handed over at the wrong length is an error.
#[test]
fn batched_over_several_batches_equals_one_pass() {
    const MB: usize = 1 << 20;
    let old: Vec<u8> = (0..70 * MB)
        .map(|i| {
            ((i / 4096) as u32)
                .wrapping_mul(2_654_435_761)
                .to_le_bytes()[i % 4]
                ^ (i as u8)
        })
        .collect();
    let mut new = old.clone();
    new.copy_within(3 * MB..4 * MB, 40 * MB);
    new.copy_within(5 * MB..5 * MB + 8192, 66 * MB + 4096);
    new[33 * MB..33 * MB + 4096].copy_from_slice(&[7u8; 4096]);
    new[31 * MB + 100..33 * MB + 100].reverse(); // literals across the first boundary
    new[35 * MB..36 * MB].fill(0);
    let a = MemImage::new(old);
    let mut b = MemImage::new(new);
    b.holes = vec![(60 * MB as u64, 2 * MB as u64, vdiff::Kind::Unallocated)];
    b.data[60 * MB..62 * MB].fill(0);
    // The literal records are the same (a copy may be cut at a batch boundary).
    let literals = |d: &[u8]| -> Vec<(u64, u64)> {
        let mut dec = Decoder::new(d).unwrap();
        let mut out = Vec::new();
        while let Some(r) = dec.next_record().unwrap() {
            if let Record::Literal { offset, length, .. } = r {
                out.push((offset, length));
            }
        }
        out
    };
    let batched = delta_batched(Some(&a), &b, 4096);
    assert_eq!(apply_bytes(&a.data, &batched).expect("apply"), b.data);
    assert_eq!(
        literals(&batched),
        literals(&delta_one_pass(Some(&a), &b, 4096))
    );
    let full = delta_batched(None, &b, 4096);
    assert_eq!(apply_bytes(&[], &full).expect("apply full"), b.data);
    assert_eq!(literals(&full), literals(&delta_one_pass(None, &b, 4096)));

    let new_scan = vdiff::diff::scan_new(&b, 4096).unwrap();
    let mut short = |_: u64, len: usize, buf: &mut Vec<u8>| -> vdiff::Result<()> {
        buf.resize(len - 1, 0);
        Ok(())
    };
    let err = vdiff::diff::diff_scanned_batches(
        None,
        new_scan,
        DiffOptions::default(),
        Vec::new(),
        &mut short,
    )
    .unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");
}
