//! The image digest (see the format doc): 4 KiB leaves, 1 MiB chunks, one BLAKE3 over the
//! chunk digests. Holes cost nothing: an all-zero chunk has a constant digest.

use crate::format::{Digest, CHUNK_BYTES, DIGEST_CONTEXT, LEAF_BYTES};
use byteorder::{ByteOrder, LittleEndian};
use std::sync::OnceLock;

/// Digest of one leaf (at most `LEAF_BYTES`).
pub fn leaf(bytes: &[u8]) -> Digest {
    if bytes.len() as u64 == LEAF_BYTES && is_zero(bytes) {
        return zero_leaf();
    }
    *blake3::hash(bytes).as_bytes()
}

pub fn zero_leaf() -> Digest {
    static Z: OnceLock<Digest> = OnceLock::new();
    *Z.get_or_init(|| *blake3::hash(&[0u8; LEAF_BYTES as usize]).as_bytes())
}

/// Digest of a full 1 MiB chunk of zeros.
pub fn zero_chunk() -> Digest {
    static Z: OnceLock<Digest> = OnceLock::new();
    *Z.get_or_init(|| hash_zero_chunk(CHUNK_BYTES))
}

/// Digest of a chunk of `len` zero bytes (the last chunk may be short).
pub fn zero_chunk_of(len: u64) -> Digest {
    if len == CHUNK_BYTES {
        zero_chunk()
    } else {
        hash_zero_chunk(len)
    }
}

fn hash_zero_chunk(len: u64) -> Digest {
    let zeros = [0u8; LEAF_BYTES as usize];
    let mut h = blake3::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(LEAF_BYTES);
        h.update(&leaf(&zeros[..n as usize]));
        left -= n;
    }
    *h.finalize().as_bytes()
}

/// Leaf digests of a chunk's bytes, in order: the same digests as [`leaf`] on each.
///
/// A full 4 KiB leaf is a BLAKE3 tree of four 1 KiB chunks. `blake3::hash` on one leaf can
/// compress only its four chunks side by side, a quarter of what AVX-512 does at once; here
/// the non-zero full leaves are hashed [`GROUP`] at a time, each tree level of all of them in
/// one call of BLAKE3's own multi-input compression (`blake3::platform`: chunk `j` of every
/// leaf, then the two parents of every leaf, then every root), about 2x faster on this kind of
/// machine. Zero leaves take their constant digest and a short last leaf is hashed alone.
pub fn leaves(chunk: &[u8], out: &mut Vec<Digest>) {
    const L: usize = LEAF_BYTES as usize;
    out.clear();
    let full = chunk.len() / L;
    out.resize(chunk.len().div_ceil(L), [0; 32]);
    let mut group = [0usize; GROUP];
    let mut n = 0;
    for i in 0..full {
        let bytes = &chunk[i * L..(i + 1) * L];
        if is_zero(bytes) {
            out[i] = zero_leaf();
            continue;
        }
        group[n] = i;
        n += 1;
        if n == GROUP {
            hash_leaves(chunk, &group, out);
            n = 0;
        }
    }
    hash_leaves(chunk, &group[..n], out);
    if full < out.len() {
        out[full] = leaf(&chunk[full * L..]);
    }
}

/// Leaves hashed together by [`leaves`]: the widest SIMD degree BLAKE3 has (AVX-512).
const GROUP: usize = 16;

/// BLAKE3's initial value (the hash mode's key words) and node flags, from the BLAKE3
/// specification (section 2.1, table 3 and 2.2).
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 2;
const PARENT: u8 = 4;
const ROOT: u8 = 8;
const CHUNK_LEN: usize = 1024;
const CHUNKS_PER_LEAF: usize = LEAF_BYTES as usize / CHUNK_LEN;

fn platform() -> blake3::platform::Platform {
    static P: OnceLock<blake3::platform::Platform> = OnceLock::new();
    *P.get_or_init(blake3::platform::Platform::detect)
}

/// Hash the full leaves `idx` of `chunk` into `out[idx[k]]`, level by level.
fn hash_leaves(chunk: &[u8], idx: &[usize], out: &mut [Digest]) {
    use blake3::IncrementCounter::No;
    const L: usize = LEAF_BYTES as usize;
    let m = idx.len();
    if m == 0 {
        return;
    }
    let p = platform();
    // cvs[k]: the four chunk chaining values of leaf k, side by side (two parent blocks).
    let mut cvs = [[0u8; 32 * CHUNKS_PER_LEAF]; GROUP];
    let mut o = [0u8; 32 * GROUP];
    for j in 0..CHUNKS_PER_LEAF {
        let inputs: [&[u8; CHUNK_LEN]; GROUP] = std::array::from_fn(|k| {
            let at = idx[k.min(m - 1)] * L + j * CHUNK_LEN;
            chunk[at..at + CHUNK_LEN].try_into().expect("a whole chunk")
        });
        // Chunk j of a leaf has chunk counter j.
        p.hash_many(
            &inputs[..m],
            &IV,
            j as u64,
            No,
            0,
            CHUNK_START,
            CHUNK_END,
            &mut o[..32 * m],
        );
        for k in 0..m {
            cvs[k][32 * j..32 * (j + 1)].copy_from_slice(&o[32 * k..32 * (k + 1)]);
        }
    }
    // The parents: (cv0 | cv1) and (cv2 | cv3) of each leaf, in that order.
    let flat = cvs.as_flattened();
    let parents: [&[u8; 64]; 2 * GROUP] = std::array::from_fn(|q| {
        let q = q.min(2 * m - 1);
        flat[64 * q..64 * (q + 1)].try_into().expect("64 bytes")
    });
    let mut par = [0u8; 64 * GROUP];
    p.hash_many(
        &parents[..2 * m],
        &IV,
        0,
        No,
        PARENT,
        0,
        0,
        &mut par[..64 * m],
    );
    // The roots: (p01 | p23) of each leaf; the root's chaining value is its 32-byte hash.
    let roots: [&[u8; 64]; GROUP] = std::array::from_fn(|k| {
        let k = k.min(m - 1);
        par[64 * k..64 * (k + 1)].try_into().expect("64 bytes")
    });
    p.hash_many(
        &roots[..m],
        &IV,
        0,
        No,
        PARENT | ROOT,
        0,
        0,
        &mut o[..32 * m],
    );
    for (k, &i) in idx.iter().enumerate() {
        out[i].copy_from_slice(&o[32 * k..32 * (k + 1)]);
    }
}

/// Chunk digest from its leaf digests.
pub fn chunk_from_leaves(leaves: &[Digest]) -> Digest {
    let mut h = blake3::Hasher::new();
    for l in leaves {
        h.update(l);
    }
    *h.finalize().as_bytes()
}

/// The outer hash: feed chunk digests in order, then finish.
pub struct ImageHasher {
    h: blake3::Hasher,
}

impl ImageHasher {
    pub fn new(size: u64) -> ImageHasher {
        let mut h = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
        let mut size_le = [0u8; 8];
        LittleEndian::write_u64(&mut size_le, size);
        h.update(&size_le);
        ImageHasher { h }
    }

    pub fn chunk(&mut self, d: &Digest) {
        self.h.update(d);
    }

    pub fn finish(&self) -> Digest {
        *self.h.finalize().as_bytes()
    }
}

/// The image digest of bytes in memory.
pub fn digest_bytes(data: &[u8]) -> Digest {
    let mut img = ImageHasher::new(data.len() as u64);
    let mut l = Vec::new();
    for c in data.chunks(CHUNK_BYTES as usize) {
        leaves(c, &mut l);
        img.chunk(&chunk_from_leaves(&l));
    }
    img.finish()
}

/// Whether every byte is zero (64 bytes at a time; the compiler vectorises the fold).
pub fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    blocks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_constants_match_hashing() {
        let z = vec![0u8; CHUNK_BYTES as usize];
        let mut l = Vec::new();
        leaves(&z, &mut l);
        assert_eq!(chunk_from_leaves(&l), zero_chunk());
        assert_eq!(zero_chunk_of(CHUNK_BYTES), zero_chunk());
        let short = vec![0u8; 5000];
        leaves(&short, &mut l);
        assert_eq!(chunk_from_leaves(&l), zero_chunk_of(5000));
    }

    #[test]
    fn grouped_leaves_are_blake3_of_each_leaf() {
        // Every group size from 0 to past two groups, zero leaves between, a short last leaf,
        // pseudo-random bytes: the same digests as blake3::hash on each leaf alone.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        for nleaves in [0usize, 1, 2, 15, 16, 17, 33, 256] {
            for tail in [0usize, 1, 1000, 4095] {
                let mut data = bytes(nleaves * 4096 + tail);
                if nleaves > 3 {
                    data[4096..8192].fill(0); // leaf 1 zero
                    data[3 * 4096 + 7] = 0; // not zero: one byte differs
                }
                let mut got = Vec::new();
                leaves(&data, &mut got);
                let want: Vec<Digest> = data
                    .chunks(4096)
                    .map(|l| *blake3::hash(l).as_bytes())
                    .collect();
                assert_eq!(got, want, "{nleaves} leaves, tail {tail}");
            }
        }
    }

    #[test]
    fn is_zero_finds_any_byte() {
        for len in [0usize, 1, 63, 64, 65, 4096, 4097] {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v));
            for i in 0..len {
                v[i] = 1;
                assert!(!is_zero(&v), "len {len} at {i}");
                v[i] = 0;
            }
        }
    }

    #[test]
    fn digest_depends_on_size_and_bytes() {
        assert_ne!(digest_bytes(&[0; 4096]), digest_bytes(&[0; 8192]));
        assert_ne!(digest_bytes(&[0; 4096]), digest_bytes(&[1; 4096]));
    }
}
