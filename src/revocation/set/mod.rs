//! The revoked set: a grow-only set of 128-bit digests with expiries.
//!
//! Why this shape: the set must hold millions of entries cheaply and never forget one before
//! it expires (no size-based eviction, ever), so it is plain open-addressing tables of small
//! fixed-size entries ([`table`]), split into shards so that pruning and writes never stall
//! readers for long, each shard behind one blocked Bloom filter ([`bloom`]) that a check
//! reads without taking the shard's lock: a claim that is not revoked (nearly every claim)
//! costs its hash and one cache line of filter, no lock and no table probe. moka would cost ~20x the
//! memory and may evict; it is used only for the verified-token cache.
//!
//! Entries are keyed by a digest of (id, issuer) under per-process random keys ([`key`]).
//! They live in one table per [`RevokedBy`] kind and [`Scope`] — "this issuer" or "any
//! issuer" — with a count each, so a request skips every table that is empty (typically the
//! token, subject and any-issuer ones) without touching memory.

mod bloom;
mod key;
mod shared;
pub mod snapshot;
mod table;

pub use shared::{ShmMirror, ShmRevocations};

use super::event::{Kind, RevocationEvent};
use bloom::Filter;
use key::{Hashers, Key};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use table::{Entry, Table, Upsert};

/// Shards of a set (a power of two: a key's word 0 is its shard's index).
const SHARDS: usize = 64;

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

/// Which kind of revocation matched; also the kinds the set keeps a table for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokedBy {
    Session,
    Token,
    Subject,
}

impl RevokedBy {
    /// In the order a check looks them up.
    const ALL: [RevokedBy; 3] = [RevokedBy::Session, RevokedBy::Token, RevokedBy::Subject];

    /// The filter's name for the table of this kind and `scope` (0–5).
    fn table(self, scope: Scope) -> usize {
        let kind = match self {
            RevokedBy::Session => 0,
            RevokedBy::Token => 1,
            RevokedBy::Subject => 2,
        };
        kind * 2 + usize::from(scope == Scope::AnyIssuer)
    }

    /// The table an event of `kind` goes to; an unspecified kind counts as a session.
    fn of(kind: Kind) -> RevokedBy {
        match kind {
            Kind::Session | Kind::Unspecified => RevokedBy::Session,
            Kind::Token => RevokedBy::Token,
            Kind::Subject => RevokedBy::Subject,
        }
    }
}

/// Whose tokens an entry applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The event named an issuer: its tokens only.
    Issuer,
    /// The event's issuer was empty: every issuer's.
    AnyIssuer,
}

impl Scope {
    /// In the order a check looks them up.
    const ALL: [Scope; 2] = [Scope::Issuer, Scope::AnyIssuer];

    fn of(issuer: &str) -> Scope {
        if issuer.is_empty() {
            Scope::AnyIssuer
        } else {
            Scope::Issuer
        }
    }
}

/// One value per [`Scope`].
#[derive(Default)]
struct PerScope<T> {
    issuer: T,
    any_issuer: T,
}

impl<T> PerScope<T> {
    fn get(&self, scope: Scope) -> &T {
        match scope {
            Scope::Issuer => &self.issuer,
            Scope::AnyIssuer => &self.any_issuer,
        }
    }

    fn get_mut(&mut self, scope: Scope) -> &mut T {
        match scope {
            Scope::Issuer => &mut self.issuer,
            Scope::AnyIssuer => &mut self.any_issuer,
        }
    }

    fn both(&self) -> [&T; 2] {
        [&self.issuer, &self.any_issuer]
    }
}

/// One value per kind of revocation.
#[derive(Default)]
struct PerKind<T> {
    session: T,
    token: T,
    subject: T,
}

impl<T> PerKind<T> {
    fn get(&self, kind: RevokedBy) -> &T {
        match kind {
            RevokedBy::Session => &self.session,
            RevokedBy::Token => &self.token,
            RevokedBy::Subject => &self.subject,
        }
    }

    fn all(&self) -> [&T; 3] {
        [&self.session, &self.token, &self.subject]
    }
}

/// A session or token revocation: until when (seconds since the epoch, rounded up).
#[derive(Clone, Copy)]
struct Expiry(u32);

impl Entry for Expiry {
    const VACANT: Expiry = Expiry(0);
    fn is_vacant(&self) -> bool {
        self.0 == 0
    }
    fn merge(&mut self, other: Expiry) -> bool {
        let changed = other.0 > self.0;
        self.0 = self.0.max(other.0);
        changed
    }
    fn live(&self, now_ms: i64) -> bool {
        live(self.0, now_ms)
    }
    fn revokes(&self, _iat_secs: i64, now_ms: i64) -> bool {
        self.live(now_ms)
    }
}

/// A subject revocation: every token of the subject issued before `not_before`.
#[derive(Clone, Copy)]
struct SubjectEntry {
    /// Tokens with `iat` (seconds) before this are dead: `ceil(revoked_at / 1000)`.
    not_before: u32,
    expires: u32,
}

impl Entry for SubjectEntry {
    const VACANT: SubjectEntry = SubjectEntry {
        not_before: 0,
        expires: 0,
    };
    fn is_vacant(&self) -> bool {
        self.expires == 0
    }
    fn merge(&mut self, other: SubjectEntry) -> bool {
        let changed = other.not_before > self.not_before || other.expires > self.expires;
        self.not_before = self.not_before.max(other.not_before);
        self.expires = self.expires.max(other.expires);
        changed
    }
    fn live(&self, now_ms: i64) -> bool {
        live(self.expires, now_ms)
    }
    fn revokes(&self, iat_secs: i64, now_ms: i64) -> bool {
        self.live(now_ms) && iat_secs < i64::from(self.not_before)
    }
}

/// One shard: a table per kind and scope.
struct Shard {
    session: PerScope<Table<Expiry>>,
    token: PerScope<Table<Expiry>>,
    subject: PerScope<Table<SubjectEntry>>,
}

impl<V: Entry> PerScope<Table<V>> {
    fn new(shard: u32) -> Self {
        PerScope {
            issuer: Table::new(shard),
            any_issuer: Table::new(shard),
        }
    }
}

impl Shard {
    /// The empty tables of shard `shard`.
    fn new(shard: u32) -> Shard {
        Shard {
            session: PerScope::new(shard),
            token: PerScope::new(shard),
            subject: PerScope::new(shard),
        }
    }

    /// Makes room in table `kind`/`scope` for `more` entries (a bulk load, see
    /// [`table::Table::reserve`]).
    fn reserve(&mut self, kind: RevokedBy, scope: Scope, more: usize) {
        match kind {
            RevokedBy::Session => self.session.get_mut(scope).reserve(more),
            RevokedBy::Token => self.token.get_mut(scope).reserve(more),
            RevokedBy::Subject => self.subject.get_mut(scope).reserve(more),
        }
    }

    /// Stores a revocation ending at `expires`; `not_before` matters to subjects only.
    fn upsert(
        &mut self,
        kind: RevokedBy,
        scope: Scope,
        key: Key,
        expires: u32,
        not_before: u32,
    ) -> Upsert {
        match kind {
            RevokedBy::Session => self.session.get_mut(scope).upsert(key, Expiry(expires)),
            RevokedBy::Token => self.token.get_mut(scope).upsert(key, Expiry(expires)),
            RevokedBy::Subject => self.subject.get_mut(scope).upsert(
                key,
                SubjectEntry {
                    not_before,
                    expires,
                },
            ),
        }
    }

    fn revokes(
        &self,
        kind: RevokedBy,
        scope: Scope,
        key: &Key,
        iat_secs: i64,
        now_ms: i64,
    ) -> bool {
        match kind {
            RevokedBy::Session => self.session.get(scope).revokes(key, iat_secs, now_ms),
            RevokedBy::Token => self.token.get(scope).revokes(key, iat_secs, now_ms),
            RevokedBy::Subject => self.subject.get(scope).revokes(key, iat_secs, now_ms),
        }
    }

    /// Forgets what is not live at `now_ms`, adding what it removed to `removed`.
    fn prune(&mut self, now_ms: i64, removed: &mut PerKind<PerScope<usize>>) {
        for scope in Scope::ALL {
            *removed.session.get_mut(scope) += self.session.get_mut(scope).prune(now_ms);
            *removed.token.get_mut(scope) += self.token.get_mut(scope).prune(now_ms);
            *removed.subject.get_mut(scope) += self.subject.get_mut(scope).prune(now_ms);
        }
    }

    /// Entries held, every table.
    fn len(&self) -> usize {
        Scope::ALL
            .into_iter()
            .map(|s| {
                self.session.get(s).len() + self.token.get(s).len() + self.subject.get(s).len()
            })
            .sum()
    }

    /// Every key held, with the filter's name for its table.
    fn keys(&self) -> impl Iterator<Item = (Key, usize)> + '_ {
        Scope::ALL.into_iter().flat_map(move |scope| {
            let (session, token, subject) = (
                RevokedBy::Session.table(scope),
                RevokedBy::Token.table(scope),
                RevokedBy::Subject.table(scope),
            );
            let session = self.session.get(scope).keys().map(move |k| (k, session));
            let token = self.token.get(scope).keys().map(move |k| (k, token));
            let subject = self.subject.get(scope).keys().map(move |k| (k, subject));
            session.chain(token).chain(subject)
        })
    }

    fn bytes(&self) -> usize {
        let exact = self.session.both().into_iter().chain(self.token.both());
        exact.map(Table::bytes).sum::<usize>()
            + self
                .subject
                .both()
                .into_iter()
                .map(Table::bytes)
                .sum::<usize>()
    }
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

/// A shard's tables behind their lock, and the filter in front that checks read without it.
struct ShardCell {
    filter: Filter,
    tables: RwLock<Shard>,
}

impl ShardCell {
    /// Files a key [`Shard::upsert`] just inserted into the filter, growing the filter
    /// (rebuilt from every key) when the shard has outgrown it. With the write lock held.
    fn filed(&self, shard: &Shard, key: &Key, table: usize) {
        let held = shard.len();
        if held > self.filter.capacity() && self.filter.can_grow() {
            // the next power-of-two blocks: 10–20 bits per entry, doubling as the shard grows
            self.filter.rebuild(held + 1, shard.keys());
        } else {
            self.filter.insert(key, table);
        }
    }
}

pub struct RevokedSet {
    shards: Box<[ShardCell]>,
    hashers: Hashers,
    /// Live entries per kind and scope: a check skips the tables these say are empty.
    counts: PerKind<PerScope<AtomicUsize>>,
    /// The in-proxy mode's copy in shared memory (`inproxy.shm_path`), written with every
    /// entry stored here.
    mirror: OnceLock<Arc<ShmMirror>>,
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

/// The one lookup order of a check, over any store of the set's entries (this set's shards,
/// or their mirror in shared memory): the session, the token and the subject, each under the
/// token's issuer and then under "any issuer"; `held(kind, scope)` false skips a table
/// without hashing, `revokes(kind, scope, key)` answers for one key.
fn check_with(
    hashers: &Hashers,
    (issuer, sid, jti, sub): (&str, &str, Option<&str>, Option<&str>),
    held: impl Fn(RevokedBy, Scope) -> bool,
    mut revokes: impl FnMut(RevokedBy, Scope, &Key) -> bool,
) -> Option<RevokedBy> {
    let mut issuer_half = None;
    let claims = [
        (RevokedBy::Session, Some(sid)),
        (RevokedBy::Token, jti),
        (RevokedBy::Subject, sub),
    ];
    for (kind, id) in claims {
        let Some(id) = id else { continue };
        if !Scope::ALL.into_iter().any(|scope| held(kind, scope)) {
            continue;
        }
        let id = hashers.id(id);
        for scope in Scope::ALL {
            if !held(kind, scope) {
                continue;
            }
            let tweak = match scope {
                Scope::AnyIssuer => hashers.any_issuer(),
                Scope::Issuer => *issuer_half.get_or_insert_with(|| hashers.issuer_memo(issuer)),
            };
            if revokes(kind, scope, &id.key(tweak)) {
                return Some(kind);
            }
        }
    }
    None
}

/// `revocation.max_entries` by default, and what [`RevokedSet::new`] sizes its filters for.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000_000;

/// The most entries the filters are ever sized for, whatever the bound (~160 MiB of address
/// space): a larger `revocation.max_entries` is a bound on what the set may hold, not a
/// reason to reserve more; past it only the filters' false-positive rate rises.
const MAX_FILTER_ENTRIES: usize = 100_000_000;

impl RevokedSet {
    /// A set whose filters can grow to [`DEFAULT_MAX_ENTRIES`] (10M) at full strength.
    pub fn new() -> RevokedSet {
        RevokedSet::with_max_entries(DEFAULT_MAX_ENTRIES)
    }

    /// A set whose filters can grow to `max_entries` at full strength
    /// (`revocation.max_entries`). It holds more than that all the same (nothing is ever
    /// evicted); past it only its filters' false-positive rate rises.
    pub fn with_max_entries(max_entries: usize) -> RevokedSet {
        RevokedSet::with_hashers(max_entries, Hashers::random())
    }

    fn with_hashers(max_entries: usize, hashers: Hashers) -> RevokedSet {
        // headroom for shards above the mean (a shard's share of random keys varies)
        let per_shard = max_entries.min(MAX_FILTER_ENTRIES).div_ceil(SHARDS) * 5 / 4;
        RevokedSet {
            shards: (0..SHARDS)
                .map(|i| ShardCell {
                    filter: Filter::new(per_shard),
                    tables: RwLock::new(Shard::new(i as u32)),
                })
                .collect(),
            hashers,
            counts: PerKind::default(),
            mirror: OnceLock::new(),
        }
    }

    /// Mirrors this set into a shared-memory file for the in-proxy module from now on:
    /// every entry stored is also written there, pruning prunes there too. Attach it before
    /// the feed applies anything (the set must be empty, so the mirror misses nothing), once.
    pub fn mirror_to(
        &self,
        path: &std::path::Path,
        origins: &[String],
    ) -> std::io::Result<Arc<ShmMirror>> {
        let refused = |why| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
        if !self.is_empty() {
            return refused("the revoked set already holds entries");
        }
        if self.mirror.get().is_some() {
            return refused("the revoked set is already mirrored");
        }
        let m = Arc::new(ShmMirror::create(path, &self.hashers, origins)?);
        if self.mirror.set(m.clone()).is_err() {
            return refused("the revoked set is already mirrored");
        }
        Ok(m)
    }

    fn shard(&self, k: &Key) -> &ShardCell {
        &self.shards[k.shard()]
    }

    fn count(&self, kind: RevokedBy, scope: Scope) -> usize {
        self.counts.get(kind).get(scope).load(Ordering::Relaxed)
    }

    /// Entries of `kind` in both scopes.
    fn count_kind(&self, kind: RevokedBy) -> usize {
        self.count(kind, Scope::Issuer) + self.count(kind, Scope::AnyIssuer)
    }

    /// Applies a (validated) event at `now_ms`. Idempotent and order-independent: the set only
    /// ever grows until entries expire.
    pub fn apply(&self, ev: &RevocationEvent, now_ms: i64) -> Applied {
        if ev.expires_at <= now_ms {
            return Applied::Expired;
        }
        let kind = RevokedBy::of(Kind::try_from(ev.kind).unwrap_or(Kind::Unspecified));
        let scope = Scope::of(&ev.issuer);
        let key = self.hashers.id(&ev.id).key(self.hashers.issuer(&ev.issuer));
        let (expires, not_before) = (secs_ceil(ev.expires_at), secs_ceil(ev.revoked_at));
        self.put(kind, scope, key, expires, not_before)
    }

    /// Stores one entry (from [`Self::apply`] or a snapshot): the one place an entry goes
    /// into a table, its filter and the counts.
    fn put(
        &self,
        kind: RevokedBy,
        scope: Scope,
        key: Key,
        expires: u32,
        not_before: u32,
    ) -> Applied {
        let cell = self.shard(&key);
        let mut shard = cell.tables.write();
        let done = shard.upsert(kind, scope, key, expires, not_before);
        if done == Upsert::Inserted {
            cell.filed(&shard, &key, kind.table(scope));
        }
        drop(shard);
        if done != Upsert::Unchanged {
            if let Some(m) = self.mirror.get() {
                // the same values: the mirror merges by max as the table did
                m.upsert(kind.table(scope), &key, expires, not_before);
            }
        }
        match done {
            Upsert::Inserted => {
                self.counts
                    .get(kind)
                    .get(scope)
                    .fetch_add(1, Ordering::Relaxed);
                Applied::New
            }
            Upsert::Strengthened => Applied::New,
            Upsert::Unchanged => Applied::Duplicate,
        }
    }

    /// Is a token with these claims revoked at `now_ms`? Checks the session, the token and
    /// the subject, each under the token's issuer and under "any issuer"; tables that hold
    /// nothing are skipped, and a key the shard's filter does not hold is answered without
    /// the shard's lock.
    pub fn check(
        &self,
        issuer: &str,
        sid: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        iat_secs: i64,
        now_ms: i64,
    ) -> Option<RevokedBy> {
        check_with(
            &self.hashers,
            (issuer, sid, jti, sub),
            |kind, scope| self.count(kind, scope) > 0,
            |kind, scope, key| {
                let cell = self.shard(key);
                if cell.filter.probe(key, kind.table(scope)) == Some(false) {
                    return false;
                }
                cell.tables
                    .read()
                    .revokes(kind, scope, key, iat_secs, now_ms)
            },
        )
    }

    /// Forgets entries whose expiry has passed; returns how many. Never touches live ones.
    pub fn prune(&self, now_ms: i64) -> usize {
        let mut removed = PerKind::<PerScope<usize>>::default();
        for cell in self.shards.iter() {
            let mut shard = cell.tables.write();
            let before = shard.len();
            shard.prune(now_ms, &mut removed);
            let held = shard.len();
            if held < before {
                cell.filter.rebuild(held, shard.keys());
            }
        }
        let mut total = 0;
        for (counts, removed) in self.counts.all().into_iter().zip(removed.all()) {
            for (c, &n) in counts.both().into_iter().zip(removed.both()) {
                c.fetch_sub(n, Ordering::Relaxed);
                total += n;
            }
        }
        if let Some(m) = self.mirror.get() {
            m.prune(now_ms);
        }
        total
    }

    pub fn stats(&self) -> SetStats {
        let table_bytes = self
            .shards
            .iter()
            .map(|c| c.tables.read().bytes() + c.filter.bytes())
            .sum();
        SetStats {
            sessions: self.count_kind(RevokedBy::Session),
            tokens: self.count_kind(RevokedBy::Token),
            subjects: self.count_kind(RevokedBy::Subject),
            table_bytes,
        }
    }

    pub fn len(&self) -> usize {
        RevokedBy::ALL.into_iter().map(|k| self.count_kind(k)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
