//! A shard's blocked Bloom filter, read without the shard's lock.
//!
//! ~10 bits and one 64-byte block per entry probe, so the common case — a claim that is not
//! revoked — is answered from a structure small enough to stay in cache (1.25 MiB per million
//! entries) instead of a DRAM miss into a table, and without the shard lock's two atomic
//! read-modify-writes. One filter covers every table of its shard: a key's block is tweaked by
//! the table it belongs to, so the same digest in two tables (an id revoked as a session and
//! as a token) costs no extra false positives.
//!
//! Never a false negative. Writers hold the shard's write lock; readers hold nothing:
//! - an insert only sets bits (`fetch_or`), so a reader sees a key either not yet inserted
//!   (the apply has not returned) or inserted;
//! - a rebuild (the filter grows, or prune forgets keys) clears bits, so it runs inside a
//!   sequence lock: the counter is odd while it runs and moves on when it ends, and a reader
//!   whose probe overlapped one gets no answer ([`Filter::probe`] → `None`) and asks the table
//!   under the shard's read lock, which waits for the rebuild.
//!
//! Every access is atomic, so there is no unsafe code and no data race; the fences follow
//! Boehm, "Can seqlocks get along with programming language memory models?" (MSPC 2012).
//!
//! The words are allocated once, zeroed, for the most entries the shard is sized for
//! (`revocation.max_entries` / shards, with headroom): the memory never moves under a reader.
//! Pages the filter has not reached yet are never touched, so they cost address space, not
//! RSS. Past that size the filter stops growing and its false-positive rate rises (more
//! probes fall through to the table); it never answers "absent" for a key it holds.

use super::key::Key;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

/// Bits per entry the filter is sized for.
const BITS_PER_ENTRY: usize = 10;
/// Bits in a block: one cache line.
const BLOCK_BITS: usize = 512;
const WORDS_PER_BLOCK: usize = BLOCK_BITS / 64;
/// Entries a new or emptied filter is sized for.
const MIN_ENTRIES: usize = 64;

pub(super) struct Filter {
    /// 512-bit blocks as 8 words each: every block the filter may ever use.
    words: Box<[AtomicU64]>,
    /// Odd while a rebuild runs.
    seq: AtomicU64,
    /// Blocks in use − 1 (a power of two − 1).
    block_mask: AtomicUsize,
    /// Entries the blocks in use are sized for; past that the filter is rebuilt larger.
    capacity: AtomicUsize,
}

fn blocks_for(entries: usize) -> usize {
    (entries.max(1) * BITS_PER_ENTRY)
        .div_ceil(BLOCK_BITS)
        .next_power_of_two()
}

impl Filter {
    /// A filter that can grow to hold `max_entries` at its full bits per entry.
    pub(super) fn new(max_entries: usize) -> Filter {
        let max_blocks = blocks_for(max_entries.max(MIN_ENTRIES));
        let blocks = blocks_for(MIN_ENTRIES);
        Filter {
            words: bytemuck::allocation::zeroed_slice_box(max_blocks * WORDS_PER_BLOCK),
            seq: AtomicU64::new(0),
            block_mask: AtomicUsize::new(blocks - 1),
            capacity: AtomicUsize::new(blocks * BLOCK_BITS / BITS_PER_ENTRY),
        }
    }

    /// Bytes allocated: every block it may ever use (address space until used).
    #[cfg(test)]
    pub(super) fn reserved_bytes(&self) -> usize {
        self.words.len() * 8
    }

    fn max_blocks(&self) -> usize {
        self.words.len() / WORDS_PER_BLOCK
    }

    /// Entries the blocks in use are sized for.
    pub(super) fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Can it grow: are the blocks in use fewer than all it has?
    pub(super) fn can_grow(&self) -> bool {
        self.block_mask.load(Ordering::Relaxed) + 1 < self.max_blocks()
    }

    /// The first word of the key's block and its four bit positions (bits of the digest not
    /// used for the shard); `table` tweaks the block.
    fn positions(k: &Key, table: usize, block_mask: usize) -> (usize, [u32; 4]) {
        let (block, a, b) = k.bloom_bits();
        let block = (block ^ (table as u32).wrapping_mul(0x9e37_79b9)) as usize & block_mask;
        (
            block * WORDS_PER_BLOCK,
            [a & 511, (a >> 9) & 511, (a >> 18) & 511, b & 511],
        )
    }

    fn test(&self, k: &Key, table: usize, block_mask: usize) -> bool {
        let (base, bits) = Self::positions(k, table, block_mask);
        bits.iter().all(|&bit| {
            self.words[base + (bit as usize >> 6)].load(Ordering::Relaxed) & (1 << (bit & 63)) != 0
        })
    }

    /// Without any lock: may the shard hold `k` in `table`? `None` when a rebuild overlapped
    /// the probe: ask the table under the shard's read lock.
    pub(super) fn probe(&self, k: &Key, table: usize) -> Option<bool> {
        let before = self.seq.load(Ordering::Acquire);
        if before & 1 == 1 {
            return None;
        }
        let hit = self.test(k, table, self.block_mask.load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == before).then_some(hit)
    }

    /// Adds `k` of `table`. Only with the shard's write lock held.
    pub(super) fn insert(&self, k: &Key, table: usize) {
        let (base, bits) = Self::positions(k, table, self.block_mask.load(Ordering::Relaxed));
        for bit in bits {
            self.words[base + (bit as usize >> 6)].fetch_or(1 << (bit & 63), Ordering::Relaxed);
        }
    }

    /// Resizes the filter for `entries` (within its allocation) and fills it with `keys`,
    /// forgetting every other key. Only with the shard's write lock held.
    pub(super) fn rebuild(&self, entries: usize, keys: impl Iterator<Item = (Key, usize)>) {
        let blocks = blocks_for(entries.max(MIN_ENTRIES)).min(self.max_blocks());
        let old_blocks = self.block_mask.load(Ordering::Relaxed) + 1;
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for w in &self.words[..old_blocks.max(blocks) * WORDS_PER_BLOCK] {
            w.store(0, Ordering::Relaxed);
        }
        self.block_mask.store(blocks - 1, Ordering::Relaxed);
        self.capacity
            .store(blocks * BLOCK_BITS / BITS_PER_ENTRY, Ordering::Relaxed);
        for (k, table) in keys {
            self.insert(&k, table);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Bytes of the blocks in use (the rest of the allocation is address space only).
    pub(super) fn bytes(&self) -> usize {
        (self.block_mask.load(Ordering::Relaxed) + 1) * BLOCK_BITS / 8
    }
}

#[cfg(test)]
mod tests {
    use super::super::key::Hashers;
    use super::*;

    #[test]
    fn sized_in_whole_power_of_two_blocks_within_its_allocation() {
        let f = Filter::new(1_000_000);
        // 640 bits → 2 blocks → 102 entries
        assert_eq!((f.bytes(), f.capacity()), (128, 102));
        f.rebuild(1_000_000, std::iter::empty());
        assert_eq!(f.bytes(), 2 * 1024 * 1024);
        assert!(f.capacity() >= 1_000_000);
        assert!(!f.can_grow());
        // never past its allocation
        f.rebuild(5_000_000, std::iter::empty());
        assert_eq!(f.bytes(), 2 * 1024 * 1024);
    }

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let h = Hashers::random();
        let any = h.any_issuer();
        let n = 10_000;
        let f = Filter::new(n);
        let keys: Vec<Key> = (0..n).map(|i| h.id(&format!("in{i}")).key(any)).collect();
        f.rebuild(n, keys.iter().map(|&k| (k, 0)));
        assert!(keys.iter().all(|k| f.probe(k, 0) == Some(true)));
        let fp = (0..n)
            .filter(|i| f.probe(&h.id(&format!("out{i}")).key(any), 0) == Some(true))
            .count();
        // ~1.6 % expected at ~10–13 bits per entry with 4 probes; 5 % leaves room for luck
        assert!(fp < n / 20, "{fp} false positives in {n}");
        // the same digests under another table are mostly absent: the block is tweaked
        let other = keys.iter().filter(|k| f.probe(k, 3) == Some(true)).count();
        assert!(other < n / 20, "{other} of {n} seen under another table");
    }

    /// Readers racing rebuilds and inserts never see "absent" for a key that was in the
    /// filter before the race and stays in every rebuild.
    #[test]
    fn a_probe_racing_rebuilds_never_misses_a_kept_key() {
        let h = Hashers::random();
        let any = h.any_issuer();
        let kept: Vec<Key> = (0..2_000)
            .map(|i| h.id(&format!("k{i}")).key(any))
            .collect();
        let f = Filter::new(100_000);
        f.rebuild(kept.len(), kept.iter().map(|&k| (k, 1)));
        let stop = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                // grow and shrink over and over, with churn keys in and out
                for round in 0..300usize {
                    let churn =
                        (0..round % 7 * 500).map(|i| (h.id(&format!("c{round}-{i}")).key(any), 2));
                    let entries = kept.len() + round % 7 * 500 + (round % 3) * 20_000;
                    f.rebuild(entries, kept.iter().map(|&k| (k, 1)).chain(churn));
                    for i in 0..100 {
                        f.insert(&h.id(&format!("x{round}-{i}")).key(any), 0);
                    }
                }
                stop.store(1, Ordering::Relaxed);
            });
            let mut answered = 0u64;
            let mut deferred = 0u64;
            while stop.load(Ordering::Relaxed) == 0 {
                for k in &kept {
                    match f.probe(k, 1) {
                        Some(true) => answered += 1,
                        Some(false) => panic!("a kept key was reported absent"),
                        None => deferred += 1,
                    }
                }
            }
            assert!(answered > 0, "no probe was answered ({deferred} deferred)");
        });
    }
}
