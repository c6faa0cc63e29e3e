//! The digests entries are stored under, and the keyed hashes that make them.
//!
//! An entry's key is `H_id(id) XOR H_iss(issuer)`: two SipHash-1-3-128 functions under
//! independent per-process random keys, so nobody can craft collisions (a collision could
//! only ever deny, never allow) and a request hashes each claim once, whatever scope it is
//! then looked up under. The any-issuer scope uses `H_iss("")` as its issuer half.

use siphasher::sip128::{Hasher128, SipHasher13};
use std::cell::RefCell;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// A 128-bit entry key, uniformly random. Its four words are spent on different jobs so they
/// never correlate: word 0 picks the shard, words 1–2 feed the table's hasher, words 1–3 the
/// Bloom filter's block and bits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Key([u32; 4]);

impl Key {
    /// The key as four words, for a snapshot.
    pub(super) fn words(&self) -> [u32; 4] {
        self.0
    }

    /// A key from a snapshot's words.
    pub(super) fn from_words(words: [u32; 4]) -> Key {
        Key(words)
    }

    /// The bits that choose the shard.
    pub(super) fn shard_bits(&self) -> u32 {
        self.0[0]
    }

    /// The 64 bits the table hashes by (not the shard bits).
    pub(super) fn table_bits(&self) -> u64 {
        u64::from(self.0[1]) << 32 | u64::from(self.0[2])
    }

    /// The filter's block selector and its two words of bit positions.
    pub(super) fn bloom_bits(&self) -> (u32, u32, u32) {
        (self.0[1], self.0[2], self.0[3])
    }
}

/// One half of a key: the hash of an id or of an issuer.
#[derive(Clone, Copy)]
pub(super) struct Half([u64; 2]);

impl Half {
    /// The key of `self` (an id's half) under the issuer half `issuer`.
    pub(super) fn key(self, issuer: Half) -> Key {
        let (a, b) = (self.0[0] ^ issuer.0[0], self.0[1] ^ issuer.0[1]);
        Key([a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32])
    }
}

/// The SipHash keys of a set: what a snapshot stores so its digests stay valid in the next
/// process. Never logged (no `Debug`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct HashSecret {
    pub(super) id: (u64, u64),
    pub(super) issuer: (u64, u64),
}

/// The per-process hash keys of one set.
pub(super) struct Hashers {
    id: (u64, u64),
    issuer: (u64, u64),
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
        Hashers {
            id: secret.id,
            issuer: secret.issuer,
            any_issuer: sip(secret.issuer, b""),
            tag: TAGS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The keys themselves, for a snapshot (secret: whoever holds them can craft
    /// collisions, and they must only ever be written to a 0600 file).
    pub(super) fn secret(&self) -> HashSecret {
        HashSecret {
            id: self.id,
            issuer: self.issuer,
        }
    }

    pub(super) fn id(&self, id: &str) -> Half {
        sip(self.id, id.as_bytes())
    }

    /// The issuer half; `""` is the any-issuer scope.
    pub(super) fn issuer(&self, issuer: &str) -> Half {
        sip(self.issuer, issuer.as_bytes())
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

fn sip(keys: (u64, u64), bytes: &[u8]) -> Half {
    let mut h = SipHasher13::new_with_keys(keys.0, keys.1);
    h.write(bytes);
    let d = h.finish128();
    Half([d.h1, d.h2])
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
