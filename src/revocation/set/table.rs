//! One table of the set: an open-addressing map from [`Key`] to a small entry. Its shard's
//! Bloom filter ([`super::bloom`]) stands in front of it.
//!
//! Plain hashbrown (through `std::collections::HashMap`) keyed by the digest itself: the key
//! is already uniformly random, so the hasher passes 64 of its bits through instead of hashing
//! again. A session or token slot is `([u32; 4] digest, u32 expiry-seconds)` — 20 bytes plus
//! one control byte.

use super::key::Key;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

/// What a table entry is: something that expires, can be made stronger by a later event for
/// the same key, and decides whether it revokes a token.
pub(super) trait Entry: Copy {
    /// Folds `other` into `self`, keeping the stronger of each part; true if `self` changed.
    fn merge(&mut self, other: Self) -> bool;
    /// Live at `now_ms`?
    fn live(&self, now_ms: i64) -> bool;
    /// Does it revoke a token issued at `iat_secs`, at `now_ms`?
    fn revokes(&self, iat_secs: i64, now_ms: i64) -> bool;
}

/// What [`Table::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upsert {
    /// A key the table did not hold.
    Inserted,
    /// An existing entry made stronger.
    Strengthened,
    /// The table already held this or a stronger entry.
    Unchanged,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly random: hand the table 64 bits that are not the shard bits.
        state.write_u64(self.table_bits());
    }
}

/// A hasher that passes the (already random) key through.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default, Clone, Copy)]
struct BuildPassThrough;

impl BuildHasher for BuildPassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

pub(super) struct Table<V> {
    map: HashMap<Key, V, BuildPassThrough>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            map: HashMap::default(),
        }
    }
}

impl<V: Entry> Table<V> {
    /// The entry under `k`; an empty table answers without a probe.
    fn get(&self, k: &Key) -> Option<&V> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get(k)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Every key held, for the shard's filter.
    pub(super) fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.map.keys().copied()
    }

    /// Every entry held, for a snapshot.
    pub(super) fn entries(&self) -> impl Iterator<Item = (Key, V)> + '_ {
        self.map.iter().map(|(k, v)| (*k, *v))
    }

    /// Does the entry under `k` (if any) revoke a token issued at `iat_secs`, at `now_ms`?
    pub(super) fn revokes(&self, k: &Key, iat_secs: i64, now_ms: i64) -> bool {
        self.get(k).is_some_and(|e| e.revokes(iat_secs, now_ms))
    }

    /// Stores `v` under `k`, or merges it into the entry already there.
    pub(super) fn upsert(&mut self, k: Key, v: V) -> Upsert {
        if let Some(e) = self.map.get_mut(&k) {
            return if e.merge(v) {
                Upsert::Strengthened
            } else {
                Upsert::Unchanged
            };
        }
        self.map.insert(k, v);
        Upsert::Inserted
    }

    /// Forgets the entries not live at `now_ms`; returns how many. When it forgot any, the
    /// map is rebuilt at the size its live entries need, so the table does not grow under
    /// churn (the shard then rebuilds its filter, so forgotten keys stop costing probes).
    ///
    /// Why rebuild instead of only `retain`: hashbrown's removals leave tombstones that use
    /// up the room for inserts, and when the room runs out with the table more than half
    /// full it doubles instead of rehashing in place. A set whose entry count is flat (as
    /// many revocations expire as arrive) then doubled its tables once, at a steady count
    /// (the one-hour soak: 2.9 → 5.5 MiB of tables at 90k entries). A rebuild costs one
    /// pass, like the filter's rebuild after it, and it is what `retain` + `shrink_to_fit`
    /// did when the set had shrunk.
    pub(super) fn prune(&mut self, now_ms: i64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| e.live(now_ms));
        let removed = before - self.map.len();
        if removed > 0 {
            let mut map = HashMap::with_capacity_and_hasher(self.map.len(), BuildPassThrough);
            map.extend(self.map.drain());
            self.map = map;
        }
        removed
    }

    /// Bytes held: slots × (slot + control byte); not allocator slack.
    pub(super) fn bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Key, V)>() + 1;
        buckets(self.map.capacity()) * slot
    }
}

/// hashbrown's bucket count for a given capacity (7/8 load factor, power of two).
fn buckets(cap: usize) -> usize {
    if cap == 0 {
        0
    } else if cap < 8 {
        if cap < 4 {
            4
        } else {
            8
        }
    } else {
        (cap * 8 / 7).next_power_of_two()
    }
}
