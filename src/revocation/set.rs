//! The revoked set: a grow-only set of 128-bit digests with expiries.
//!
//! Why this shape: the set must hold millions of entries cheaply and never forget one before
//! it expires (no size-based eviction, ever), so it is a plain open-addressing table of
//! `([u32; 4] digest, u32 expiry-seconds)` — 20 bytes a slot plus one control byte — split
//! into shards so that pruning and writes never stall readers for long. moka would cost ~20x
//! the memory and may evict; it is used only for the verified-token cache.
//!
//! Digests are SipHash-1-3-128 under a per-process random key over (kind, issuer, id), so
//! nobody can craft collisions; a collision could only ever deny, never allow.

use super::event::{Kind, RevocationEvent};
use parking_lot::RwLock;
use siphasher::sip128::{Hasher128, SipHasher13};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

const SHARDS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u32; 4]);

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly random: hand the table 64 bits that are not the shard bits.
        state.write_u64(u64::from(self.0[1]) << 32 | u64::from(self.0[2]));
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

#[derive(Clone, Copy)]
struct SubjectEntry {
    /// Tokens with `iat` (in ms) before this are dead.
    not_before_ms: i64,
    expires: u32,
}

#[derive(Default)]
struct Shard {
    /// SESSION ([0]) and TOKEN ([1]) revocations: digest → expiry (seconds since the epoch,
    /// rounded up).
    exact: [HashMap<Key, u32, BuildPassThrough>; 2],
    subjects: HashMap<Key, SubjectEntry, BuildPassThrough>,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new entry, or an existing one made stronger (later expiry / not-before).
    New,
    /// Nothing changed: the set already held this or a stronger revocation.
    Duplicate,
    /// The event had already expired when it arrived; nothing stored.
    Expired,
}

/// Which kind of revocation matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedBy {
    Session,
    Token,
    Subject,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SetStats {
    pub sessions: usize,
    pub tokens: usize,
    pub subjects: usize,
    /// Bytes held by the tables (slots × slot size, not counting allocator slack).
    pub table_bytes: usize,
}

impl SetStats {
    pub fn total(&self) -> usize {
        self.sessions + self.tokens + self.subjects
    }
}

pub struct RevokedSet {
    shards: Box<[RwLock<Shard>]>,
    keys: (u64, u64),
    counts: [AtomicUsize; 3],
}

impl Default for RevokedSet {
    fn default() -> Self {
        Self::new()
    }
}

fn secs_ceil(ms: i64) -> u32 {
    let s = ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0);
    s.clamp(0, i64::from(u32::MAX)) as u32
}

/// An entry stored with expiry `exp` (seconds, rounded up) is live strictly before it.
fn live(exp: u32, now_ms: i64) -> bool {
    i64::from(exp) * 1000 > now_ms
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Session | Kind::Unspecified => 0,
        Kind::Token => 1,
        Kind::Subject => 2,
    }
}

impl RevokedSet {
    pub fn new() -> RevokedSet {
        let mut k = [0u8; 16];
        // A fixed key would still be correct, only collision-craftable; aws-lc's RNG does
        // not fail in practice.
        let _ = aws_lc_rs::rand::fill(&mut k);
        let k0 = u64::from_le_bytes(k[..8].try_into().unwrap_or_default());
        let k1 = u64::from_le_bytes(k[8..].try_into().unwrap_or_default());
        RevokedSet {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            keys: (k0, k1),
            counts: Default::default(),
        }
    }

    fn key(&self, kind: Kind, issuer: &str, id: &str) -> Key {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        h.write_u8(kind as u8);
        h.write_u32(issuer.len() as u32);
        h.write(issuer.as_bytes());
        h.write(id.as_bytes());
        let d = h.finish128();
        Key([
            d.h1 as u32,
            (d.h1 >> 32) as u32,
            d.h2 as u32,
            (d.h2 >> 32) as u32,
        ])
    }

    fn shard(&self, k: &Key) -> &RwLock<Shard> {
        &self.shards[k.0[0] as usize % SHARDS]
    }

    /// Applies a (validated) event at `now_ms`. Idempotent and order-independent: the set only
    /// ever grows until entries expire.
    pub fn apply(&self, ev: &RevocationEvent, now_ms: i64) -> Applied {
        if ev.expires_at <= now_ms {
            return Applied::Expired;
        }
        let kind = Kind::try_from(ev.kind).unwrap_or(Kind::Unspecified);
        let key = self.key(kind, &ev.issuer, &ev.id);
        let expires = secs_ceil(ev.expires_at);
        let mut shard = self.shard(&key).write();
        let result = if kind == Kind::Subject {
            match shard.subjects.get_mut(&key) {
                None => {
                    shard.subjects.insert(
                        key,
                        SubjectEntry {
                            not_before_ms: ev.revoked_at,
                            expires,
                        },
                    );
                    None
                }
                Some(e) => {
                    let changed = ev.revoked_at > e.not_before_ms || expires > e.expires;
                    e.not_before_ms = e.not_before_ms.max(ev.revoked_at);
                    e.expires = e.expires.max(expires);
                    Some(changed)
                }
            }
        } else {
            let table = &mut shard.exact[kind_index(kind)];
            match table.get_mut(&key) {
                None => {
                    table.insert(key, expires);
                    None
                }
                Some(e) => {
                    let changed = expires > *e;
                    *e = (*e).max(expires);
                    Some(changed)
                }
            }
        };
        match result {
            None => {
                self.counts[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
                Applied::New
            }
            Some(true) => Applied::New,
            Some(false) => Applied::Duplicate,
        }
    }

    /// Is a token with these claims revoked at `now_ms`? Checks the session, the token and
    /// the subject, each under the token's issuer and under "any issuer".
    pub fn check(
        &self,
        issuer: &str,
        sid: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        iat_secs: i64,
        now_ms: i64,
    ) -> Option<RevokedBy> {
        for iss in [issuer, ""] {
            if self.exact_live(Kind::Session, self.key(Kind::Session, iss, sid), now_ms) {
                return Some(RevokedBy::Session);
            }
            if let Some(jti) = jti {
                if self.exact_live(Kind::Token, self.key(Kind::Token, iss, jti), now_ms) {
                    return Some(RevokedBy::Token);
                }
            }
            if let Some(sub) = sub {
                let k = self.key(Kind::Subject, iss, sub);
                if let Some(e) = self.shard(&k).read().subjects.get(&k) {
                    if live(e.expires, now_ms) && iat_secs.saturating_mul(1000) < e.not_before_ms {
                        return Some(RevokedBy::Subject);
                    }
                }
            }
        }
        None
    }

    fn exact_live(&self, kind: Kind, k: Key, now_ms: i64) -> bool {
        self.shard(&k).read().exact[kind_index(kind)]
            .get(&k)
            .is_some_and(|&exp| live(exp, now_ms))
    }

    /// Forgets entries whose expiry has passed; returns how many. Never touches live ones.
    pub fn prune(&self, now_ms: i64) -> usize {
        let mut removed = [0usize; 3];
        for shard in self.shards.iter() {
            let mut s = shard.write();
            for (i, table) in s.exact.iter_mut().enumerate() {
                let before = table.len();
                table.retain(|_, exp| live(*exp, now_ms));
                removed[i] += before - table.len();
                if table.capacity() > 64 && table.len() < table.capacity() / 4 {
                    table.shrink_to_fit();
                }
            }
            let before = s.subjects.len();
            s.subjects.retain(|_, e| live(e.expires, now_ms));
            removed[2] += before - s.subjects.len();
        }
        for (count, n) in self.counts.iter().zip(removed) {
            count.fetch_sub(n, Ordering::Relaxed);
        }
        removed.iter().sum()
    }

    pub fn stats(&self) -> SetStats {
        let slot_exact = std::mem::size_of::<(Key, u32)>() + 1;
        let slot_subj = std::mem::size_of::<(Key, SubjectEntry)>() + 1;
        let table_bytes = self
            .shards
            .iter()
            .map(|s| {
                let s = s.read();
                s.exact
                    .iter()
                    .map(|t| buckets(t.capacity()) * slot_exact)
                    .sum::<usize>()
                    + buckets(s.subjects.capacity()) * slot_subj
            })
            .sum();
        SetStats {
            sessions: self.counts[0].load(Ordering::Relaxed),
            tokens: self.counts[1].load(Ordering::Relaxed),
            subjects: self.counts[2].load(Ordering::Relaxed),
            table_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, id: &str, issuer: &str, revoked_at: i64, expires_at: i64) -> RevocationEvent {
        RevocationEvent {
            event_id: format!("e-{id}-{revoked_at}"),
            kind: kind as i32,
            id: id.into(),
            issuer: issuer.into(),
            revoked_at,
            expires_at,
            origin_region: "us".into(),
            reason: String::new(),
            urgent: false,
        }
    }

    const T: i64 = 1_800_000_000_000;

    #[test]
    fn session_token_subject() {
        let s = RevokedSet::new();
        assert_eq!(
            s.apply(&ev(Kind::Session, "s1", "iss", T, T + 60_000), T),
            Applied::New
        );
        assert_eq!(
            s.apply(&ev(Kind::Token, "j1", "", T, T + 60_000), T),
            Applied::New
        );
        assert_eq!(
            s.apply(&ev(Kind::Subject, "u1", "iss", T, T + 60_000), T),
            Applied::New
        );
        let iat = T / 1000 - 5;
        assert_eq!(
            s.check("iss", "s1", None, None, iat, T),
            Some(RevokedBy::Session)
        );
        assert_eq!(
            s.check("other", "s1", None, None, iat, T),
            None,
            "issuer-scoped"
        );
        assert_eq!(
            s.check("any", "s2", Some("j1"), None, iat, T),
            Some(RevokedBy::Token),
            "any issuer"
        );
        assert_eq!(
            s.check("iss", "s2", None, Some("u1"), iat, T),
            Some(RevokedBy::Subject)
        );
        // a token issued after the subject revocation lives
        assert_eq!(
            s.check("iss", "s2", None, Some("u1"), T / 1000 + 1, T + 2000),
            None
        );
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn idempotent_order_independent_and_never_weakened() {
        let s = RevokedSet::new();
        let long = ev(Kind::Session, "s1", "", T, T + 120_000);
        let short = ev(Kind::Session, "s1", "", T, T + 60_000);
        assert_eq!(s.apply(&long, T), Applied::New);
        assert_eq!(s.apply(&long, T), Applied::Duplicate);
        assert_eq!(s.apply(&short, T), Applied::Duplicate);
        // still revoked after the short one's expiry
        assert!(s.check("x", "s1", None, None, 0, T + 90_000).is_some());
        assert!(s.check("x", "s1", None, None, 0, T + 120_000).is_none());
        assert_eq!(s.len(), 1);
        // subject: later revoked_at extends the not-before
        let a = ev(Kind::Subject, "u", "", T, T + 60_000);
        let b = ev(Kind::Subject, "u", "", T + 10_000, T + 70_000);
        assert_eq!(s.apply(&b, T), Applied::New);
        assert_eq!(s.apply(&a, T), Applied::Duplicate);
        assert!(s
            .check("x", "s", None, Some("u"), T / 1000 + 5, T + 11_000)
            .is_some());
    }

    #[test]
    fn expired_events_are_not_stored_and_prune_keeps_live_entries() {
        let s = RevokedSet::new();
        assert_eq!(
            s.apply(&ev(Kind::Session, "old", "", T - 10, T), T),
            Applied::Expired
        );
        for i in 0..1000 {
            let exp = if i % 2 == 0 { T + 1_000 } else { T + 100_000 };
            s.apply(&ev(Kind::Session, &format!("s{i}"), "", T, exp), T);
        }
        assert_eq!(s.prune(T + 500), 0, "nothing expired yet");
        assert_eq!(s.prune(T + 1_000), 500);
        assert_eq!(s.len(), 500);
        for i in (1..1000).step_by(2) {
            assert!(s
                .check("", &format!("s{i}"), None, None, 0, T + 50_000)
                .is_some());
        }
    }

    #[test]
    fn expiry_rounds_up_never_down() {
        let s = RevokedSet::new();
        s.apply(&ev(Kind::Session, "s", "", T, T + 1_500), T);
        assert!(s.check("", "s", None, None, 0, T + 1_499).is_some());
        // stored as whole seconds rounded up: gone at T+2s, not at T+1.5s
        assert!(s.check("", "s", None, None, 0, T + 1_999).is_some());
        assert!(s.check("", "s", None, None, 0, T + 2_000).is_none());
        s.prune(T + 1_499);
        assert!(s.check("", "s", None, None, 0, T + 1_499).is_some());
    }
}
