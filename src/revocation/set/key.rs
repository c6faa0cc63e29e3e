//! The digests entries are stored under, and the keyed hashes that make them.
//!
//! An entry's key is `H_id(id) XOR H_iss(issuer)`: two keyed 128-bit hashes under
//! independent per-process random keys, and a request hashes each claim once, whatever scope
//! it is then looked up under. The any-issuer scope uses `H_iss("")` as its issuer half.
//!
//! Each hash is XXH3-128 under a custom 192-byte secret expanded from a random 128-bit key
//! (SipHash-1-3-128 in counter mode, once per set). XXH3 costs a third of SipHash-1-3-128 on
//! the 20–60-byte ids tokens carry (`benches/decision.rs`, group `claim_hash`). It is not a
//! PRF, and it need not be one here: nobody outside can see a digest, ids are inserted only by
//! the region's authenticated publishers, and a lookup's claims come from a token whose
//! signature was already verified; a collision, crafted or not, could only ever deny a token,
//! never allow one. The secret still keeps an outsider from precomputing collisions.

use siphasher::sip128::{Hasher128, SipHasher13};
use std::cell::RefCell;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use xxhash_rust::xxh3::xxh3_128_with_secret;

/// An entry key: 102 uniformly random bits of a 128-bit keyed hash. Its four words are spent
/// on different jobs so they never correlate: word 0 picks the shard and holds nothing else
/// (its other bits are cleared, so a key is canonical and a table need not store it: it is
/// the table's shard), words 1–2 place it in its table, words 1–3 are its tag there and feed
/// the Bloom filter's block and bits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Key([u32; 4]);

/// Word 0 of a key: its shard's index (`SHARDS` is a power of two).
const SHARD_MASK: u32 = super::SHARDS as u32 - 1;
const _: () = assert!(super::SHARDS.is_power_of_two() && super::SHARDS <= 1 << 16);

impl Key {
    /// The key as four words, for a snapshot.
    pub(super) fn words(&self) -> [u32; 4] {
        self.0
    }

    /// A key from a snapshot's words (word 0 reduced to its shard bits: snapshots written
    /// before keys were canonical hold the whole word).
    pub(super) fn from_words(words: [u32; 4]) -> Key {
        Key([words[0] & SHARD_MASK, words[1], words[2], words[3]])
    }

    /// The key of `shard` with tag `tag` (a table's slot).
    pub(super) fn from_parts(shard: u32, tag: [u32; 3]) -> Key {
        Key::from_words([shard, tag[0], tag[1], tag[2]])
    }

    /// The shard's index.
    pub(super) fn shard(&self) -> usize {
        self.0[0] as usize
    }

    /// What a table tells keys of its shard apart by: words 1–3 (the first two also pick
    /// the slot a probe starts at).
    pub(super) fn tag(&self) -> [u32; 3] {
        [self.0[1], self.0[2], self.0[3]]
    }

    /// The filter's block selector and its two words of bit positions.
    pub(super) fn bloom_bits(&self) -> (u32, u32, u32) {
        (self.0[1], self.0[2], self.0[3])
    }

    /// The key as two words, as the shared-memory mirror stores it (`veto_shm::Digest`,
    /// whose first 96 bits are kept: the tag).
    pub(super) fn digest(&self) -> [u64; 2] {
        [
            u64::from(self.0[1]) | u64::from(self.0[2]) << 32,
            u64::from(self.0[3]) | u64::from(self.0[0]) << 32,
        ]
    }
}

/// One half of a key: the hash of an id or of an issuer.
#[derive(Clone, Copy)]
pub(super) struct Half([u64; 2]);

impl Half {
    /// The key of `self` (an id's half) under the issuer half `issuer`.
    pub(super) fn key(self, issuer: Half) -> Key {
        let (a, b) = (self.0[0] ^ issuer.0[0], self.0[1] ^ issuer.0[1]);
        Key::from_words([a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32])
    }
}

/// The hash keys of a set: what a snapshot stores so its digests stay valid in the next
/// process. Never logged (no `Debug`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct HashSecret {
    pub(super) id: (u64, u64),
    pub(super) issuer: (u64, u64),
}

/// The length of an XXH3 secret expanded from a key.
const SECRET_LEN: usize = 192;

/// One keyed hash: XXH3-128 under a secret expanded from a 128-bit key.
struct Keyed {
    /// The key the secret was expanded from (what [`Hashers::keys`] shares).
    key: (u64, u64),
    secret: Box<[u8; SECRET_LEN]>,
}

impl Keyed {
    fn new(key: (u64, u64)) -> Keyed {
        let mut secret = Box::new([0u8; SECRET_LEN]);
        for (i, block) in secret.chunks_exact_mut(16).enumerate() {
            let mut h = SipHasher13::new_with_keys(key.0, key.1);
            h.write_u64(i as u64);
            block.copy_from_slice(&h.finish128().as_bytes());
        }
        Keyed { key, secret }
    }

    fn hash(&self, bytes: &[u8]) -> Half {
        let d = xxh3_128_with_secret(bytes, &self.secret[..]);
        Half([d as u64, (d >> 64) as u64])
    }
}

/// The per-process hash keys of one set.
pub(super) struct Hashers {
    id: Keyed,
    issuer: Keyed,
    /// `H_iss("")`, computed once: every lookup under "any issuer" uses it.
    any_issuer: Half,
    /// Tells these keys apart from every other set's in the thread's issuer memo.
    tag: u64,
}

/// Tags of sets; 0 is nobody's.
static TAGS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The last issuer half a check on this thread computed, with the tag of the keys it
    /// was computed under: a sidecar's tokens come from a handful of issuers, so the
    /// issuer's hash is nearly always the previous check's.
    static LAST_ISSUER: RefCell<(u64, String, Half)> =
        const { RefCell::new((0, String::new(), Half([0, 0]))) };
}

impl Hashers {
    /// Fresh random keys.
    pub(super) fn random() -> Hashers {
        Hashers::from_secret(HashSecret {
            id: random_keys(),
            issuer: random_keys(),
        })
    }

    /// Hashers under the keys of `secret` (a snapshot's).
    pub(super) fn from_secret(secret: HashSecret) -> Hashers {
        let issuer = Keyed::new(secret.issuer);
        Hashers {
            id: Keyed::new(secret.id),
            any_issuer: issuer.hash(b""),
            issuer,
            tag: TAGS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The hashers of another set, from its [`Self::keys`] (the in-proxy reader derives the
    /// keys the sidecar stored its entries under).
    pub(super) fn from_keys(k: [u64; 4]) -> Hashers {
        Hashers::from_secret(HashSecret {
            id: (k[0], k[1]),
            issuer: (k[2], k[3]),
        })
    }

    /// The hash keys: id k0, id k1, issuer k0, issuer k1.
    pub(super) fn keys(&self) -> [u64; 4] {
        [
            self.id.key.0,
            self.id.key.1,
            self.issuer.key.0,
            self.issuer.key.1,
        ]
    }

    /// The keys themselves, for a snapshot (secret: whoever holds them can craft
    /// collisions, and they must only ever be written to a 0600 file).
    pub(super) fn secret(&self) -> HashSecret {
        HashSecret {
            id: self.id.key,
            issuer: self.issuer.key,
        }
    }

    pub(super) fn id(&self, id: &str) -> Half {
        self.id.hash(id.as_bytes())
    }

    /// The issuer half; `""` is the any-issuer scope.
    pub(super) fn issuer(&self, issuer: &str) -> Half {
        self.issuer.hash(issuer.as_bytes())
    }

    /// [`Self::issuer`], from this thread's memo of the last issuer when it is the same
    /// issuer under the same keys.
    pub(super) fn issuer_memo(&self, issuer: &str) -> Half {
        LAST_ISSUER.with(|last| {
            let mut last = last.borrow_mut();
            if last.0 == self.tag && last.1 == issuer {
                return last.2;
            }
            let half = self.issuer(issuer);
            last.0 = self.tag;
            last.1.clear();
            last.1.push_str(issuer);
            last.2 = half;
            half
        })
    }

    pub(super) fn any_issuer(&self) -> Half {
        self.any_issuer
    }
}

fn random_keys() -> (u64, u64) {
    let mut k = [0u8; 16];
    // A fixed key would still be correct, only collision-craftable; aws-lc's RNG does not
    // fail in practice.
    let _ = aws_lc_rs::rand::fill(&mut k);
    let (a, b) = k.split_at(8);
    (
        u64::from_le_bytes(a.try_into().unwrap_or_default()),
        u64::from_le_bytes(b.try_into().unwrap_or_default()),
    )
}
