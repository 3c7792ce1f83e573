//! Chains of 1 to 3 deltas applied in one pass equal the last image; a wrong base, a broken
//! chain and hostile streams are refused.

#[path = "../../vdiff/tests/common_gen.rs"]
mod common_gen;

use common_gen::*;
use proptest::prelude::*;
use std::io::{Seek, Write};
use vdiff::{diff, DiffOptions, Image, MemImage};
use vpatch::reader::Extent;
use vpatch::{
    apply, apply_verified, apply_with, check_base, read_headers, ApplyOptions, ChainReader,
    DeltaFile, DeltaInput, Error, MemSink, RecordCache, Report,
};

fn delta_file(a: Option<&MemImage>, b: &MemImage) -> DeltaInput {
    delta_file_with(a, b, false)
}

fn delta_file_with(a: Option<&MemImage>, b: &MemImage, index: bool) -> DeltaInput {
    DeltaInput {
        name: "delta".into(),
        file: DeltaFile::from_file(delta_raw(a, b, index)).unwrap(),
    }
}

/// The delta from `a` to `b` in a file, for tests that damage it.
fn delta_raw(a: Option<&MemImage>, b: &MemImage, index: bool) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    diff(
        a.map(|a| a as &dyn Image),
        b,
        DiffOptions {
            block_size: 4096,
            level: 1,
            index,
        },
        &mut f,
    )
    .unwrap();
    f.rewind().unwrap();
    f
}

/// Indexed deltas of a chain of images: the first one full, each next one against the one
/// before it.
fn chain_deltas(images: &[&MemImage]) -> Vec<DeltaInput> {
    let mut prev = None;
    images
        .iter()
        .map(|&b| {
            let d = delta_file_with(prev, b, true);
            prev = Some(b);
            d
        })
        .collect()
}

fn bytes_file(b: &[u8]) -> DeltaInput {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(b).unwrap();
    DeltaInput {
        name: "delta".into(),
        file: DeltaFile::from_file(f).unwrap(),
    }
}

/// What a read plan was told.
type Told = std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>;

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

    /// Random reads through a ChainReader (a full delta, then 0 to 3 more; indexed or not)
    /// equal the last image's bytes, with a cache too small to hold every record; its extents
    /// cover the range in order, and every range called a hole reads as zeros.
    #[test]
    fn chain_reader_reads_what_apply_produces(
        s0 in image_spec(), s1 in image_spec(), s2 in image_spec(), s3 in image_spec(),
        n in 0usize..=3, index in prop::collection::vec(any::<bool>(), 4),
        reads in prop::collection::vec((any::<u64>(), 0usize..200_000), 1..24),
        budget in prop_oneof![Just(0usize), Just(100_000), Just(64 << 20)],
    ) {
        let mut imgs = vec![build(&s0, None)];
        for s in [&s1, &s2, &s3] {
            let next = build(s, imgs.last());
            imgs.push(next);
        }
        let deltas: Vec<_> = (0..=n)
            .map(|k| {
                let mut d = delta_file_with(k.checked_sub(1).map(|p| &imgs[p]), &imgs[k], index[k]);
                d.name = format!("d{k}");
                d
            })
            .collect();
        let want = &imgs[n].data;
        let cache = std::sync::Arc::new(RecordCache::new(budget));
        let r = ChainReader::open(deltas, cache.clone()).expect("open");
        prop_assert_eq!(r.size(), want.len() as u64);
        for (off, len) in reads {
            let off = if want.is_empty() { off % 8 } else { off % (want.len() as u64 + 8) };
            let mut buf = vec![0xeeu8; len];
            let got = r.read_at(off, &mut buf).expect("read");
            let start = (off as usize).min(want.len());
            let end = (start + len).min(want.len());
            prop_assert_eq!(got, end - start);
            prop_assert_eq!(&buf[..got], &want[start..end]);
            let ext = r.extents(off, len as u64);
            let mut at = start as u64;
            for (o, l, k) in ext {
                prop_assert_eq!(o, at);
                if k == Extent::Hole {
                    prop_assert!(want[o as usize..(o + l) as usize].iter().all(|&b| b == 0));
                }
                at += l;
            }
            prop_assert_eq!(at, end as u64);
        }
        prop_assert!(cache.held() <= budget);
    }

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

    /// The same with indexed deltas (record tables from the trailing index, literals checked
    /// when read) mixed with plain ones, and the base digest checked on the way.
    #[test]
    fn indexed_chain_with_the_base_checked_on_the_way(
        s0 in image_spec(), s1 in image_spec(), s2 in image_spec(), s3 in image_spec(),
        n in 1usize..=3, index in prop::collection::vec(any::<bool>(), 3)
    ) {
        let mut imgs = vec![build(&s0, None)];
        for s in [&s1, &s2, &s3] {
            let next = build(s, imgs.last());
            imgs.push(next);
        }
        let deltas: Vec<_> = (0..n)
            .map(|k| delta_file_with(Some(&imgs[k]), &imgs[k + 1], index[k]))
            .collect();
        let (out, report) = run_with(Some(&imgs[0]), deltas, true).expect("apply");
        prop_assert_eq!(out, imgs[n].data.clone());
        prop_assert_eq!(report.indexed_deltas, index[..n].iter().filter(|&&i| i).count());
        prop_assert!(report.base_check_bytes <= imgs[0].data.len() as u64);
    }

    /// A source with a read plan (an object store) gets its indexed deltas' tables built
    /// without the literal headers, and is told every literal record the apply then reads,
    /// each once, in the order read; the output is the same.
    #[test]
    fn planned_sources_read_lazily_and_apply_the_same(
        s0 in image_spec(), s1 in image_spec(), s2 in image_spec(),
        n in 1usize..=2, index in prop::collection::vec(any::<bool>(), 3),
        cache in prop_oneof![Just(None), Just(Some(0usize)), Just(Some(100_000))],
    ) {
        let mut imgs = vec![build(&s0, None)];
        for s in [&s1, &s2] {
            let next = build(s, imgs.last());
            imgs.push(next);
        }
        let plans: Vec<Told> = (0..=n).map(|_| Default::default()).collect();
        let deltas: Vec<_> = (0..=n)
            .map(|k| {
                let mut d = delta_file_with(k.checked_sub(1).map(|p| &imgs[p]), &imgs[k], index[k]);
                let told = plans[k].clone();
                d.file = d.file.planned(std::sync::Arc::new(move |r| *told.lock().unwrap() = r));
                d
            })
            .collect();
        let (out, _) = run_cached(None, deltas, false, cache).expect("apply");
        prop_assert_eq!(&out, &imgs[n].data);
        for p in &plans {
            let p = p.lock().unwrap();
            let mut starts: Vec<u64> = p.iter().map(|r| r.0).collect();
            starts.sort_unstable();
            starts.dedup();
            prop_assert_eq!(starts.len(), p.len(), "each record once");
        }
    }
}

/// A damaged literal header is caught when a lazily indexed delta's record is read: flags
/// that are not a literal's, or any other field the index disagrees with.
#[test]
fn damaged_literal_headers_are_caught_in_a_lazy_table() {
    let a = MemImage::new(random(1, 2 << 20));
    let b = MemImage::new(random(2, 2 << 20));
    for (at, what) in [(1u64, "flags"), (8, "header")] {
        let f = delta_raw(Some(&a), &b, true);
        use std::os::unix::fs::FileExt;
        // The first record after the 120-byte stream header is a literal (random data).
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, 120 + at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x40], 120 + at).unwrap();
        let d = DeltaInput {
            name: "delta".into(),
            file: DeltaFile::from_file(f)
                .unwrap()
                .planned(std::sync::Arc::new(|_| {})),
        };
        match run_with(Some(&a), vec![d], true) {
            Err(Error::Delta { source, .. }) => {
                let m = source.to_string();
                assert!(m.contains("flags") || m.contains("header"), "{what}: {m}")
            }
            other => panic!("{what}: {:?}", other.map(|x| x.1)),
        }
    }
}

/// Apply with [`apply_with`]: the base's size checked up front, its digest on the way when
/// `verify_base`.
fn run_with(
    base: Option<&MemImage>,
    deltas: Vec<DeltaInput>,
    verify_base: bool,
) -> Result<(Vec<u8>, Report), Error> {
    run_cached(base, deltas, verify_base, None)
}

/// [`run_with`] with the literal cache limited to `cache` bytes.
fn run_cached(
    base: Option<&MemImage>,
    mut deltas: Vec<DeltaInput>,
    verify_base: bool,
    cache: Option<usize>,
) -> Result<(Vec<u8>, Report), Error> {
    let headers = read_headers(&mut deltas)?;
    check_base(base.map(|b| b as &dyn Image), &headers[0], "d0", false)?;
    let mut sink = MemSink::default();
    let opts = ApplyOptions {
        base_chunks: None,
        verify_base,
        literal_cache_bytes: cache,
    };
    let report = apply_with(base.map(|b| b as &dyn Image), deltas, &mut sink, &opts)?;
    assert_eq!(sink.data.len() as u64, headers.last().unwrap().target_size);
    Ok((sink.data, report))
}

/// Compressible bytes, so literals are zstd frames to inflate, not stored bytes.
fn text(seed: u64, len: usize) -> Vec<u8> {
    random(seed, len)
        .into_iter()
        .map(|b| b"abcdefgh"[(b % 8) as usize])
        .collect()
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

/// vrepo's case: a long chain of indexed deltas stored as files. Each stored literal byte is
/// read about once, whatever the chain length: a delta's record table comes from its index,
/// and a literal is read only where the target still needs it.
#[test]
fn long_indexed_chain_reads_each_literal_about_once() {
    const N: usize = 50;
    let mut imgs = vec![MemImage::new(random(1, 6 << 20))];
    for k in 0..N {
        let mut next = imgs[k].data.clone();
        // 64 KiB of new data per link, at a different place each time, and a move.
        let at = (k * 97 * 4096) % ((6 << 20) - (64 << 10));
        next[at..at + (64 << 10)].copy_from_slice(&random(100 + k as u64, 64 << 10));
        next.copy_within(0..8192, (5 << 20) + k * 8192);
        imgs.push(MemImage::new(next));
    }
    let deltas: Vec<_> = (0..N)
        .map(|k| delta_file_with(Some(&imgs[k]), &imgs[k + 1], true))
        .collect();
    let (out, r) = run_with(Some(&imgs[0]), deltas, true).unwrap();
    assert!(out == imgs[N].data, "the chain gives the last image");
    assert_eq!(r.indexed_deltas, N);
    assert!(
        r.delta_bytes_read * 100 <= r.delta_bytes * 125,
        "read {} of {} delta bytes",
        r.delta_bytes_read,
        r.delta_bytes
    );
    // Plain deltas are decoded whole first, then their literals read again.
    let deltas: Vec<_> = (0..N)
        .map(|k| delta_file_with(Some(&imgs[k]), &imgs[k + 1], false))
        .collect();
    let (out, plain) = run_with(Some(&imgs[0]), deltas, false).unwrap();
    assert!(out == imgs[N].data);
    assert_eq!(plain.indexed_deltas, 0);
    assert!(plain.delta_bytes_read >= plain.delta_bytes);
}

/// A record that windows far apart need (a block moved across the image, a piece of a full
/// delta's record that a later link copies elsewhere) is read and inflated once, whichever
/// threads produce those windows; with a cache too small to hold them all, or none, the
/// output is the same and records are read again.
#[test]
fn records_needed_by_distant_windows_are_read_once() {
    const MIB: usize = 1 << 20;
    let a = MemImage::new(text(1, 40 * MIB));
    let mut next = a.data.clone();
    // Pieces of the first 20 MiB copied 20 MiB or more away; new data around them.
    for j in 0..20 {
        next.copy_within(j * MIB..j * MIB + 8192, (39 - j) * MIB + 512 * 1024);
        let at = (39 - j) * MIB + 256 * 1024;
        next[at..at + 4096].copy_from_slice(&text(50 + j as u64, 4096));
    }
    let b = MemImage::new(next);
    let deltas = || chain_deltas(&[&a, &b]);
    let (out, r) = run_with(None, deltas(), false).unwrap();
    assert!(out == b.data);
    assert!(
        r.delta_bytes_read * 100 <= r.delta_bytes * 103,
        "read {} of {} delta bytes",
        r.delta_bytes_read,
        r.delta_bytes
    );
    for cache in [0, 2 * MIB] {
        let (out, small) = run_cached(None, deltas(), false, Some(cache)).unwrap();
        assert!(out == b.data, "cache of {cache} bytes");
        assert!(
            small.delta_bytes_read > r.delta_bytes_read,
            "cache of {cache} bytes: read {}, with the default {}",
            small.delta_bytes_read,
            r.delta_bytes_read
        );
    }
}

/// With a cache too small for every record needed again, the records kept are those needed
/// again soonest (the plan knows): 5 records of a full delta needed again in the same order
/// three times, 32 windows apart, with room for 4. Keeping the most recently used instead
/// misses every time (a loop one larger than the cache); the rule misses once per round.
#[test]
fn a_full_cache_keeps_the_records_needed_soonest() {
    const MIB: usize = 1 << 20;
    let a = MemImage::new(text(7, 101 * MIB));
    let mut next = a.data.clone();
    for round in 1..4 {
        for j in 0..5 {
            next.copy_within(j * MIB..(j + 1) * MIB, (32 * round + j) * MIB);
        }
    }
    let b = MemImage::new(next);
    let deltas = || chain_deltas(&[&a, &b]);
    let (out, all) = run_with(None, deltas(), false).unwrap();
    assert!(out == b.data);
    let (out, none) = run_cached(None, deltas(), false, Some(0)).unwrap();
    assert!(out == b.data);
    let (out, four) = run_cached(None, deltas(), false, Some(4 * MIB)).unwrap();
    assert!(out == b.data);
    let again = |r: &Report| r.delta_bytes_read - all.delta_bytes_read;
    // No cache: the 5 records are read 3 times again (15 reads). Room for 4: about 3.
    assert!(again(&none) > 0);
    assert!(
        again(&four) * 3 <= again(&none),
        "read again with room for 4 records: {} bytes; with none: {}",
        again(&four),
        again(&none)
    );
}

/// Literals that a later delta of the chain overwrites are never read.
#[test]
fn overwritten_literals_are_not_read() {
    let a = MemImage::new(random(1, 4 << 20));
    let b = MemImage::new(random(2, 4 << 20));
    let c = MemImage::new(random(3, 4 << 20));
    let deltas = chain_deltas(&[&a, &b, &c]);
    let last_len = deltas[2].file.len();
    let (out, r) = run_with(None, deltas, false).unwrap();
    assert!(out == c.data);
    assert!(
        r.delta_bytes_read < last_len + (64 << 10),
        "read {} bytes; the last delta alone has {last_len}",
        r.delta_bytes_read
    );
}

/// A damaged literal payload in an indexed delta is found when it is read: an error, never
/// output that the target digest would have to catch.
#[test]
fn damaged_literal_in_an_indexed_delta_is_a_checksum_error() {
    let a = MemImage::new(random(1, 2 << 20));
    let b = MemImage::new(random(2, 2 << 20));
    let f = delta_raw(Some(&a), &b, true);
    use std::os::unix::fs::FileExt;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, 5000).unwrap();
    f.write_all_at(&[byte[0] ^ 1], 5000).unwrap();
    let d = DeltaInput {
        name: "delta".into(),
        file: DeltaFile::from_file(f).unwrap(),
    };
    let r = run_with(Some(&a), vec![d], true);
    match r {
        Err(Error::Delta { source, .. }) => {
            assert!(source.to_string().contains("checksum"), "{source}")
        }
        other => panic!("{:?}", other.map(|x| x.1)),
    }
}

/// With the base digest checked on the way, a wrong base of the right size is still refused
/// as a wrong base (not only as a target mismatch), whether the target grows or shrinks, and
/// only the base's changed leaves are read for the check.
#[test]
fn base_checked_on_the_way() {
    let a = MemImage::new(random(1, (3 << 20) + 5000));
    for new_len in [(3 << 20) + 5000, (2 << 20) + 100, (5 << 20) + 4096] {
        let mut b = a.data.clone();
        b.resize(new_len, 0);
        b[10_000..30_000].copy_from_slice(&random(7, 20_000));
        b[(2 << 20) + 50..(2 << 20) + 90].fill(9);
        let b = MemImage::new(b);
        let (out, r) = run_with(Some(&a), vec![delta_file(Some(&a), &b)], true).unwrap();
        assert!(out == b.data, "size {new_len}");
        let past_target = (a.data.len() as u64).saturating_sub(new_len as u64);
        assert!(
            r.base_check_bytes <= 64 << 10 || r.base_check_bytes <= past_target + (2 << 20),
            "size {new_len}: read {} base bytes for the check",
            r.base_check_bytes
        );
        // The same size, other content: refused as a wrong base.
        let mut other = a.data.clone();
        other[3 << 20] ^= 1;
        let r = run_with(
            Some(&MemImage::new(other)),
            vec![delta_file(Some(&a), &b)],
            true,
        );
        assert!(
            matches!(r, Err(Error::WrongBase(_))),
            "size {new_len}: {:?}",
            r.map(|x| x.1)
        );
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
