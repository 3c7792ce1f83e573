//! BLAKE3 of a stream whose first bytes are only final at its end.
//!
//! A delta's header carries the target digest, known when the whole volume was read, so the
//! header is written again at the end. An upload holds its first part back for that, while the
//! rest is sent as it is produced, and the stored file's BLAKE3 must still come out without
//! reading anything twice. BLAKE3 is a tree: the first `2^k` bytes of a longer input form one
//! complete subtree, and so does each range `[2^j, 2^(j+1))` after it, up to the last one,
//! which holds the rest. Each subtree is hashed as its bytes pass (`blake3::hazmat`), the
//! held-back start at the end, and the chaining values are merged the way the tree merges them.

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

/// Hashes every byte after the first `prefix` (a power of two, at least 1 KiB), in order; the
/// first `prefix` bytes are given to [`LateHasher::finish`].
pub struct LateHasher {
    prefix: u64,
    /// Bytes after the prefix hashed so far.
    after: u64,
    /// Chaining values of the completed subtrees `[2^j, 2^(j+1))` after the prefix.
    done: Vec<ChainingValue>,
    /// The subtree being hashed: it starts at `start` and ends at `2 * start` at most.
    open: blake3::Hasher,
    start: u64,
}

impl LateHasher {
    pub fn new(prefix: u64) -> LateHasher {
        assert!(prefix.is_power_of_two() && prefix >= 1024);
        let mut open = blake3::Hasher::new();
        open.set_input_offset(prefix);
        LateHasher {
            prefix,
            after: 0,
            done: Vec::new(),
            open,
            start: prefix,
        }
    }

    /// Hash the next bytes after the prefix.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let pos = self.prefix + self.after;
            let end = 2 * self.start;
            if pos == end {
                // A byte beyond the open subtree: it is complete, and not the last one.
                self.done.push(self.open.finalize_non_root());
                self.start = end;
                self.open = blake3::Hasher::new();
                self.open.set_input_offset(end);
                continue;
            }
            let n = bytes.len().min((end - pos) as usize);
            self.open.update(&bytes[..n]);
            self.after += n as u64;
            bytes = &bytes[n..];
        }
    }

    /// The BLAKE3 of `start` (the first `prefix` bytes, now final; all of the input when it
    /// is shorter) followed by what [`LateHasher::update`] was given.
    pub fn finish(self, start: &[u8]) -> blake3::Hash {
        if self.after == 0 {
            return blake3::hash(start);
        }
        assert_eq!(
            start.len() as u64,
            self.prefix,
            "the held-back start is whole"
        );
        let mut first = blake3::Hasher::new();
        first.update(start);
        // [0, prefix) merged with each completed subtree gives the perfect tree [0, 2^k).
        let mut left = first.finalize_non_root();
        for cv in &self.done {
            left = merge_subtrees_non_root(&left, cv, Mode::Hash);
        }
        merge_subtrees_root(&left, &self.open.finalize_non_root(), Mode::Hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(prefix: u64, len: usize, pieces: usize) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let split = (prefix as usize).min(len);
        let mut h = LateHasher::new(prefix);
        let rest = &data[split..];
        let step = rest.len().div_ceil(pieces.max(1)).max(1);
        for c in rest.chunks(step) {
            h.update(c);
        }
        assert_eq!(
            h.finish(&data[..split]),
            blake3::hash(&data),
            "prefix {prefix} len {len}"
        );
    }

    #[test]
    fn equals_blake3_of_the_whole_at_every_boundary() {
        for prefix in [1024u64, 4096] {
            let p = prefix as usize;
            for len in [
                0,
                1,
                p - 1,
                p,
                p + 1,
                2 * p - 1,
                2 * p,
                2 * p + 1,
                3 * p,
                4 * p,
                4 * p + 7,
                8 * p,
                8 * p + 1024,
                13 * p + 5,
                32 * p,
                33 * p + 100,
            ] {
                for pieces in [1, 3, 64] {
                    check(prefix, len, pieces);
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn equals_blake3_of_the_whole(len in 0usize..300_000, pieces in 1usize..50) {
            check(1024, len, pieces);
            check(16384, len, pieces);
        }
    }
}
