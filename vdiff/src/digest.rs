//! The image digest (see the format doc): 4 KiB leaves, 1 MiB chunks, one BLAKE3 over the
//! chunk digests. Holes cost nothing: an all-zero chunk has a constant digest.

use crate::format::{Digest, CHUNK_BYTES, DIGEST_CONTEXT, LEAF_BYTES};
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

/// Leaf digests of a chunk's bytes, in order.
pub fn leaves(chunk: &[u8], out: &mut Vec<Digest>) {
    out.clear();
    out.extend(chunk.chunks(LEAF_BYTES as usize).map(leaf));
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
        h.update(&size.to_le_bytes());
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
