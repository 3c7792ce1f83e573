// Shared by vdiff's and vpatch's property tests (included with `#[path]`): images made of
// 4 KiB blocks with moves, duplicates, zeros and holes, plus an odd tail.
#![allow(dead_code)] // each test file uses a part

use proptest::prelude::*;
use vdiff::{Kind, MemImage};

pub const B: usize = 4096;

#[derive(Clone, Debug)]
pub enum Block {
    /// One of a few fixed patterns: duplicates inside and across images.
    Pattern(u8),
    /// Bytes nobody else has.
    Fresh(u64),
    /// Allocated zeros.
    Zero,
    /// Unallocated (reads as zeros).
    Hole,
    /// Block `i` (mod length) of the previous image: a move.
    From(usize),
    /// The previous image's bytes at this block's offset plus a shift: content moved by a few
    /// bytes, found only by unaligned matching.
    Shift(usize),
}

pub fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        (0u8..4).prop_map(Block::Pattern),
        any::<u64>().prop_map(Block::Fresh),
        Just(Block::Zero),
        Just(Block::Hole),
        any::<usize>().prop_map(Block::From),
        prop_oneof![Just(100usize), Just(1000)].prop_map(Block::Shift),
    ]
}

/// An image description: blocks and a tail of 0..8 sectors.
pub fn image_spec() -> impl Strategy<Value = (Vec<Block>, usize, u64)> {
    (
        prop::collection::vec(block(), 0..40),
        0usize..8,
        any::<u64>(),
    )
}

fn fill(seed: u64, out: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// Build an image from its description, taking `From` blocks from `prev`.
pub fn build(spec: &(Vec<Block>, usize, u64), prev: Option<&MemImage>) -> MemImage {
    let (blocks, tail_sectors, tail_seed) = spec;
    let mut img = MemImage::default();
    let prev_blocks = prev.map_or(0, |p| p.data.len() / B);
    for (i, b) in blocks.iter().enumerate() {
        let mut buf = vec![0u8; B];
        let off = (i * B) as u64;
        match b {
            Block::Pattern(p) => buf.fill(*p + 1),
            Block::Fresh(s) => fill(*s, &mut buf),
            Block::Zero => img.holes.push((off, B as u64, Kind::Zero)),
            Block::Hole => img.holes.push((off, B as u64, Kind::Unallocated)),
            Block::From(j) => match prev {
                Some(p) if prev_blocks > 0 => {
                    let j = j % prev_blocks;
                    buf.copy_from_slice(&p.data[j * B..(j + 1) * B]);
                }
                _ => fill(*j as u64, &mut buf),
            },
            Block::Shift(s) => {
                let from = i * B + s;
                match prev {
                    Some(p) if from + B <= p.data.len() => {
                        buf.copy_from_slice(&p.data[from..from + B])
                    }
                    _ => fill(from as u64, &mut buf),
                }
            }
        }
        img.data.extend_from_slice(&buf);
    }
    let mut tail = vec![0u8; tail_sectors * 512];
    fill(*tail_seed, &mut tail);
    img.data.extend_from_slice(&tail);
    img
}
