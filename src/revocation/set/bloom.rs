//! A blocked Bloom filter in front of each table.
//!
//! ~10 bits and one 64-byte block per entry probe, so the common case — a claim that is not
//! revoked — is answered from a structure small enough to stay in cache (1.25 MiB per million
//! entries) instead of a DRAM miss into the table. Never a false negative: every key in the
//! table is in the filter (the table inserts into it, and rebuilds it when it grows past its
//! capacity or forgets entries).

use super::key::Key;

/// Bits per entry the filter is sized for.
const BITS_PER_ENTRY: usize = 10;
/// Bits in a block: one cache line.
const BLOCK_BITS: usize = 512;
const WORDS_PER_BLOCK: usize = BLOCK_BITS / 64;

pub(super) struct Bloom {
    /// 512-bit blocks as 8 words each.
    words: Vec<u64>,
    /// Number of blocks − 1 (a power of two − 1).
    block_mask: usize,
    /// Entries it was sized for; past that it is rebuilt larger.
    capacity: usize,
}

impl Bloom {
    pub(super) fn with_capacity(n: usize) -> Bloom {
        let blocks = (n.max(1) * BITS_PER_ENTRY)
            .div_ceil(BLOCK_BITS)
            .next_power_of_two();
        Bloom {
            words: vec![0; blocks * WORDS_PER_BLOCK],
            block_mask: blocks - 1,
            capacity: blocks * BLOCK_BITS / BITS_PER_ENTRY,
        }
    }

    /// Entries it was sized for.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The block and four bit positions of a key (bits of the digest not used for the shard).
    fn positions(&self, k: &Key) -> (usize, [u32; 4]) {
        let (block, a, b) = k.bloom_bits();
        let block = block as usize & self.block_mask;
        (block, [a & 511, (a >> 9) & 511, (a >> 18) & 511, b & 511])
    }

    pub(super) fn insert(&mut self, k: &Key) {
        let (block, bits) = self.positions(k);
        for bit in bits {
            self.words[block * WORDS_PER_BLOCK + (bit as usize >> 6)] |= 1 << (bit & 63);
        }
    }

    pub(super) fn may_contain(&self, k: &Key) -> bool {
        let (block, bits) = self.positions(k);
        bits.iter().all(|&bit| {
            self.words[block * WORDS_PER_BLOCK + (bit as usize >> 6)] & (1 << (bit & 63)) != 0
        })
    }

    /// Heap bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::super::key::Hashers;
    use super::*;

    #[test]
    fn sized_in_whole_power_of_two_blocks() {
        let b = Bloom::with_capacity(64);
        // 640 bits → 2 blocks → 102 entries
        assert_eq!((b.bytes(), b.capacity()), (128, 102));
        let b = Bloom::with_capacity(1_000_000);
        assert_eq!(b.bytes(), 2 * 1024 * 1024);
        assert!(b.capacity() >= 1_000_000);
    }

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let h = Hashers::random();
        let any = h.any_issuer();
        let n = 10_000;
        let mut b = Bloom::with_capacity(n);
        for i in 0..n {
            b.insert(&h.id(&format!("in{i}")).key(any));
        }
        assert!((0..n).all(|i| b.may_contain(&h.id(&format!("in{i}")).key(any))));
        let fp = (0..n)
            .filter(|i| b.may_contain(&h.id(&format!("out{i}")).key(any)))
            .count();
        // ~1.6 % expected at ~10–13 bits per entry with 4 probes; 5 % leaves room for luck
        assert!(fp < n / 20, "{fp} false positives in {n}");
    }
}
