//! One table of the set: an open-addressing map from [`Key`] to a small entry. Its shard's
//! Bloom filter ([`super::bloom`]) stands in front of it.
//!
//! Why not hashbrown: a general map stores the whole key and a control byte per slot and
//! doubles as it grows — 21 bytes a session slot, 39–46 B per entry at 10M. Here a slot is
//! only what tells entries of one table apart and the entry itself: a key's shard is implied
//! by the table (words 0 of every key in it are the shard's index, [`Key`]), so a slot keeps
//! the other 96 bits as its tag and the expiry after them — 16 bytes a session or token slot,
//! 20 a subject's. A vacant slot is one whose entry is [`Entry::VACANT`] (expiry 0: no live
//! entry expires at the epoch). Linear probing from a fast-range index of 64 key bits, so the
//! slot count need not be a power of two and the table grows by half at a 7/8 load: between
//! 16/(7/8) = 18.3 and 18.3 × 1.5 = 27.4 bytes a session entry, whatever the count. The
//! key is already uniformly random (a keyed hash), so it is used as it is.
//!
//! Removal is by rebuilding ([`Table::prune`]): no tombstones, so a lookup stops at the first
//! vacant slot and a table under churn never fills up with the dead.

use super::key::Key;

/// What a table entry is: something that expires, can be made stronger by a later event for
/// the same key, and decides whether it revokes a token.
pub(super) trait Entry: Copy {
    /// The entry of a vacant slot; never [`Self::live`].
    const VACANT: Self;
    /// Is this [`Self::VACANT`]?
    fn is_vacant(&self) -> bool;
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
    /// The table already held this or a stronger entry (or the entry was vacant: dead).
    Unchanged,
}

/// A slot: the key's 96 bits after the shard's, and the entry.
#[derive(Clone, Copy)]
#[repr(C)]
struct Slot<V> {
    tag: [u32; 3],
    v: V,
}

/// The fewest slots a table that holds anything has.
const MIN_SLOTS: usize = 8;

/// Most entries `slots` slots take before the table grows (7/8).
fn max_load(slots: usize) -> usize {
    slots - slots / 8
}

pub(super) struct Table<V> {
    slots: Box<[Slot<V>]>,
    len: usize,
    /// The shard this table belongs to: word 0 of every key in it.
    shard: u32,
}

impl<V: Entry> Table<V> {
    /// An empty table of shard `shard` (no memory until the first insert).
    pub(super) fn new(shard: u32) -> Table<V> {
        Table {
            slots: Box::new([]),
            len: 0,
            shard,
        }
    }

    /// An empty table with `slots` vacant slots.
    fn with_slots(shard: u32, slots: usize) -> Table<V> {
        Table {
            slots: vec![
                Slot {
                    tag: [0; 3],
                    v: V::VACANT
                };
                slots
            ]
            .into_boxed_slice(),
            len: 0,
            shard,
        }
    }

    /// The slot a probe for `tag` starts at: fast range (`h × n / 2^64`) of the tag's first
    /// 64 bits.
    fn home(&self, tag: &[u32; 3]) -> usize {
        let h = u64::from(tag[0]) << 32 | u64::from(tag[1]);
        ((u128::from(h) * self.slots.len() as u128) >> 64) as usize
    }

    /// The index of the slot holding `tag`, or of the vacant slot where it would go. The
    /// table must have a vacant slot (its load is below 1).
    fn find(&self, tag: &[u32; 3]) -> usize {
        let n = self.slots.len();
        let mut i = self.home(tag);
        loop {
            #[cfg(test)]
            PROBES.with(|p| p.set(p.get() + 1));
            let s = &self.slots[i];
            if s.v.is_vacant() || s.tag == *tag {
                return i;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// The entry under `k`; an empty table answers without a probe.
    fn get(&self, k: &Key) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        let s = &self.slots[self.find(&k.tag())];
        (!s.v.is_vacant()).then_some(&s.v)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Every entry held, for a snapshot.
    pub(super) fn entries(&self) -> impl Iterator<Item = (Key, V)> + '_ {
        self.slots
            .iter()
            .filter(|s| !s.v.is_vacant())
            .map(|s| (Key::from_parts(self.shard, s.tag), s.v))
    }

    /// Every key held, for the shard's filter.
    pub(super) fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.entries().map(|(k, _)| k)
    }

    /// Does the entry under `k` (if any) revoke a token issued at `iat_secs`, at `now_ms`?
    pub(super) fn revokes(&self, k: &Key, iat_secs: i64, now_ms: i64) -> bool {
        self.get(k).is_some_and(|e| e.revokes(iat_secs, now_ms))
    }

    /// Stores `v` under `k`, or merges it into the entry already there. `k` must be of this
    /// table's shard.
    pub(super) fn upsert(&mut self, k: Key, v: V) -> Upsert {
        debug_assert_eq!(k.words()[0], self.shard);
        if v.is_vacant() {
            return Upsert::Unchanged;
        }
        let tag = k.tag();
        if self.len + 1 > max_load(self.slots.len()) {
            // look first: a merge into a full table must not grow it
            if self.len > 0 {
                let i = self.find(&tag);
                if !self.slots[i].v.is_vacant() {
                    return merged(&mut self.slots[i].v, v);
                }
            }
            let grown = (self.slots.len() + self.slots.len() / 2).max(MIN_SLOTS);
            self.rebuild(grown, |_| true);
        }
        let i = self.find(&tag);
        let s = &mut self.slots[i];
        if s.v.is_vacant() {
            *s = Slot { tag, v };
            self.len += 1;
            Upsert::Inserted
        } else {
            merged(&mut s.v, v)
        }
    }

    /// Makes room for `more` entries beyond those held, so inserting them never grows the
    /// table. A bulk load must call it first when its keys come in table order (a snapshot):
    /// the fast-range home is monotonic in the key, so keys arriving sorted into a table
    /// sized for fewer would all crowd its first slots, one long cluster every insert
    /// walks (measured: 1M loaded in 4 s instead of 0.2 s).
    pub(super) fn reserve(&mut self, more: usize) {
        let want = self.len.saturating_add(more);
        if want <= max_load(self.slots.len()) {
            return;
        }
        // the least slots whose 7/8 holds `want`
        let slots = (want + want / 7 + 1).max(MIN_SLOTS);
        self.rebuild(slots, |_| true);
    }

    /// Moves the entries `keep` keeps into a new table of `slots` slots.
    fn rebuild(&mut self, slots: usize, keep: impl Fn(&V) -> bool) {
        let mut t = Table::with_slots(self.shard, slots);
        for s in self.slots.iter().filter(|s| !s.v.is_vacant() && keep(&s.v)) {
            let i = t.find(&s.tag);
            t.slots[i] = *s;
            t.len += 1;
        }
        *self = t;
    }

    /// Forgets the entries not live at `now_ms`; returns how many. When it forgot any, the
    /// table is rebuilt without them (so lookups still stop at the first vacant slot, and
    /// the shard then rebuilds its filter, so forgotten keys stop costing probes): at the
    /// same size while the live entries load it to at least 1/3, so a table at a steady
    /// count keeps its size under churn; smaller (loaded to 2/3) once they no longer do.
    pub(super) fn prune(&mut self, now_ms: i64) -> usize {
        let live = self
            .slots
            .iter()
            .filter(|s| !s.v.is_vacant() && s.v.live(now_ms))
            .count();
        let removed = self.len - live;
        if removed > 0 {
            let slots = match live {
                0 => 0,
                _ if live >= self.slots.len() / 3 => self.slots.len(),
                _ => (live + live / 2).max(MIN_SLOTS),
            };
            self.rebuild(slots, |v| v.live(now_ms));
        }
        removed
    }

    /// Bytes held: slots × slot size.
    pub(super) fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot<V>>()
    }
}

fn merged<V: Entry>(e: &mut V, v: V) -> Upsert {
    if e.merge(v) {
        Upsert::Strengthened
    } else {
        Upsert::Unchanged
    }
}

#[cfg(test)]
thread_local! {
    /// Slots looked at by [`Table::find`] on this thread (tests: the work a load costs).
    pub(super) static PROBES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct E(u32);

    impl Entry for E {
        const VACANT: E = E(0);
        fn is_vacant(&self) -> bool {
            self.0 == 0
        }
        fn merge(&mut self, o: E) -> bool {
            let c = o.0 > self.0;
            self.0 = self.0.max(o.0);
            c
        }
        fn live(&self, now_ms: i64) -> bool {
            i64::from(self.0) * 1000 > now_ms
        }
        fn revokes(&self, _: i64, now_ms: i64) -> bool {
            self.live(now_ms)
        }
    }

    fn key(shard: u32, i: u64) -> Key {
        // spread like a hash would
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7);
        Key::from_parts(shard, [(h >> 32) as u32, h as u32, i as u32])
    }

    #[test]
    fn holds_every_key_through_growth_and_prune() {
        let mut t = Table::<E>::new(5);
        assert!(!t.revokes(&key(5, 1), 0, 0), "empty");
        for i in 0..10_000u64 {
            let exp = if i % 3 == 0 { 10 } else { 1000 };
            assert_eq!(t.upsert(key(5, i), E(exp)), Upsert::Inserted, "{i}");
            assert!(t.len() <= max_load(t.slots.len()));
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.upsert(key(5, 7), E(5)), Upsert::Unchanged);
        assert_eq!(t.upsert(key(5, 7), E(2000)), Upsert::Strengthened);
        assert_eq!(t.upsert(key(5, 8), E::VACANT), Upsert::Unchanged);
        for i in 0..10_000u64 {
            assert!(t.revokes(&key(5, i), 0, 5_000), "{i}");
        }
        assert!(!t.revokes(&key(5, 10_001), 0, 5_000));
        // between 16 / (7/8) and 1.5 times that, per entry
        let per = t.bytes() as f64 / t.len() as f64;
        assert!((18.0..=27.5).contains(&per), "{per} B/entry");
        let dead = (0..10_000u64).filter(|i| i % 3 == 0).count();
        let slots = t.slots.len();
        assert_eq!(t.prune(20_000), dead);
        assert_eq!(t.len(), 10_000 - dead);
        assert_eq!(t.slots.len(), slots, "2/3 still live: the same size");
        for i in 0..10_000u64 {
            let want = i % 3 != 0;
            assert_eq!(t.revokes(&key(5, i), 0, 20_000), want, "{i}");
        }
        let mut keys: Vec<_> = t.keys().map(|k| k.words()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), t.len());
        assert!(keys.iter().all(|w| w[0] == 5));
        let n = t.len();
        assert_eq!(t.prune(10_000_000), n);
        assert_eq!((t.len(), t.bytes()), (0, 0));
    }

    #[test]
    fn probes_wrap_around_the_end() {
        // every tag homes on the last slot: the probe must wrap to the first
        let mut t = Table::<E>::with_slots(0, 8);
        let tag = |i: u32| [u32::MAX, u32::MAX, i];
        for i in 0..7 {
            let k = Key::from_parts(0, tag(i));
            assert_eq!(t.home(&k.tag()), 7);
            assert_eq!(t.upsert(k, E(100)), Upsert::Inserted);
        }
        for i in 0..7 {
            assert!(t.revokes(&Key::from_parts(0, tag(i)), 0, 0), "{i}");
        }
        assert!(!t.revokes(&Key::from_parts(0, tag(99)), 0, 0));
    }
}
