//! The revoked set in shared memory, for the in-proxy mode (`inproxy.shm_path`): the
//! sidecar's [`ShmMirror`] writes every entry the set stores into a `veto_shm` file, and the
//! Envoy module's [`ShmRevocations`] answers the decision's revocation and freshness
//! questions from it. Both sides derive keys with the set's own [`Hashers`] (the writer's
//! hash keys travel in the file) and judge entries with the set's own entry types, and the
//! reader walks the set's own lookup order ([`check_with`]): what the module finds revoked
//! is what the sidecar finds revoked.

use super::key::{Hashers, Key};
use super::table::Entry as _;
use super::{check_with, Expiry, RevokedBy, SubjectEntry};
use crate::revocation::{Freshness, OriginMask, Revocations};
use parking_lot::{Mutex, RwLock};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// The sidecar's side: the one writer of the file.
pub struct ShmMirror {
    writer: Mutex<veto_shm::Writer>,
    /// Set when a write failed (a full tmpfs): the heartbeat is no longer published, so
    /// readers turn stale after `revocation.max_staleness` and apply `on_stale`, rather than
    /// trusting a table that misses a revocation.
    broken: AtomicBool,
}

impl ShmMirror {
    /// A new, empty generation for `path` under `hashers`' keys, naming `origins`.
    pub(super) fn create(
        path: &Path,
        hashers: &Hashers,
        origins: &[String],
    ) -> std::io::Result<ShmMirror> {
        Ok(ShmMirror {
            writer: Mutex::new(veto_shm::Writer::create(path, hashers.keys(), origins)?),
            broken: AtomicBool::new(false),
        })
    }

    /// Mirrors an entry the set just inserted or strengthened (`table`: the set's table
    /// number, `kind * 2 + any_issuer`).
    pub(super) fn upsert(&self, table: usize, key: &Key, expires: u32, not_before: u32) {
        let e = veto_shm::Entry {
            expires,
            not_before,
        };
        if let Err(e) = self.writer.lock().upsert(table, key.digest(), e) {
            self.fail("write", &e);
        }
    }

    /// Drops expired entries (a new generation, when enough are dead).
    pub(super) fn prune(&self, now_ms: i64) {
        if let Err(e) = self.writer.lock().prune(now_ms) {
            self.fail("prune", &e);
        }
    }

    fn fail(&self, what: &str, e: &std::io::Error) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, what, "in-proxy shared memory write failed; its heartbeat stops, so the in-proxy module goes stale");
        }
    }

    /// Publishes the sidecar's status: heartbeat `now_ms`, its feed position, whether the
    /// feed has replayed, and each expected origin's last fresh time. Nothing once a write
    /// failed.
    pub fn publish(&self, freshness: &Freshness, feed_position: u64, ready: bool, now_ms: i64) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let status = veto_shm::Status {
            heartbeat_ms: now_ms,
            feed_position,
            ready,
            origins_fresh_ms: freshness.fresh_times().collect(),
        };
        if let Err(e) = self.writer.lock().publish(&status) {
            self.fail("publish", &e);
        }
    }

    /// False once a write failed: the file is no longer kept up to date (nor its heartbeat),
    /// until the sidecar restarts.
    pub fn healthy(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }

    /// The file's generation (it changes on growth and pruning).
    pub fn generation(&self) -> u64 {
        self.writer.lock().generation()
    }

    /// Announces new verification keys, already in place in the keys file beside this one
    /// (`crate::jwks::KeysPublisher`): bumps the header's keys generation, which readers
    /// watch. Returns it.
    pub fn bump_keys_generation(&self) -> u64 {
        self.writer.lock().bump_keys_generation()
    }

    /// The keys generation last announced (0: none yet).
    pub fn keys_generation(&self) -> u64 {
        self.writer.lock().keys_generation()
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.writer.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the current file.
    pub fn file_bytes(&self) -> usize {
        self.writer.lock().file_bytes()
    }
}

/// One mapped generation, with the hashers of its keys and where each expected origin is
/// named in it.
struct Attached {
    map: veto_shm::Mapping,
    hashers: Hashers,
    /// Per expected origin (the decider's `Freshness` order): its index in the file.
    origin_index: Vec<Option<usize>>,
}

/// How long a heartbeat may be silent before the reader also looks for a newer file at the
/// path (a writer that crashed mid-switch, or a restarted sidecar). Not a freshness bound:
/// staleness is `revocation.max_staleness`, as in the sidecar.
const REOPEN_AFTER_SILENCE_MS: i64 = 1000;
/// The least time between two attempts to open the path.
const REOPEN_EVERY_MS: i64 = 250;

/// The module's side: revocations and freshness read from the sidecar's file. No file, a
/// file not yet ready (the sidecar still replaying), or a heartbeat older than the bound is
/// stale for every origin, so `revocation.on_stale` applies exactly as in a sidecar whose
/// feed is stale.
pub struct ShmRevocations {
    path: PathBuf,
    /// The decider's expected origins, in its `Freshness` order.
    expected: Vec<String>,
    current: RwLock<Option<Attached>>,
    last_open_ms: AtomicI64,
}

impl ShmRevocations {
    /// Reads `path` (opened now if it is there, else on the first check that finds it);
    /// `freshness` is the decider's, whose expected origins the file's are matched to.
    pub fn new(path: &Path, freshness: &Freshness) -> ShmRevocations {
        let r = ShmRevocations {
            path: path.to_path_buf(),
            expected: freshness
                .names(freshness.all())
                .map(str::to_string)
                .collect(),
            current: RwLock::new(None),
            last_open_ms: AtomicI64::new(i64::MIN / 2),
        };
        r.reopen(crate::now_ms(), true);
        r
    }

    /// The generation mapped now (0: none).
    pub fn generation(&self) -> u64 {
        self.current
            .read()
            .as_ref()
            .map_or(0, |a| a.map.generation())
    }

    /// The keys generation of the file mapped now (0: none published, or no file): one read
    /// lock (shared) and one Acquire load on the request path; a superseded file is switched
    /// first, so the value is the current file's.
    pub fn keys_generation(&self, now_ms: i64) -> u64 {
        let superseded = match &*self.current.read() {
            Some(a) if !a.map.superseded() => return a.map.keys_generation(),
            Some(_) => true,
            None => false,
        };
        self.reopen(now_ms, superseded);
        self.current
            .read()
            .as_ref()
            .map_or(0, |a| a.map.keys_generation())
    }

    /// The sidecar's feed position (its last applied stream sequence) in the generation
    /// mapped now (0: none).
    pub fn feed_position(&self) -> u64 {
        self.current
            .read()
            .as_ref()
            .map_or(0, |a| a.map.feed_position())
    }

    /// Opens the path again if it holds a newer file than the one mapped. `urgent` (the
    /// mapped file is superseded: new entries go to the new one) always tries; otherwise (no
    /// file yet, a silent heartbeat) at most every [`REOPEN_EVERY_MS`].
    fn reopen(&self, now_ms: i64, urgent: bool) {
        let last = self.last_open_ms.load(Ordering::Relaxed);
        if !urgent
            && (now_ms - last < REOPEN_EVERY_MS
                || self
                    .last_open_ms
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err())
        {
            return;
        }
        let Ok(map) = veto_shm::Mapping::open(&self.path) else {
            return;
        };
        let mut current = self.current.write();
        if current
            .as_ref()
            .is_some_and(|a| a.map.generation() == map.generation() && !a.map.superseded())
        {
            return;
        }
        let origin_index = self
            .expected
            .iter()
            .map(|o| map.origins().iter().position(|m| m == o))
            .collect();
        *current = Some(Attached {
            hashers: Hashers::from_keys(map.keys()),
            origin_index,
            map,
        });
    }

    /// Runs `f` on the current generation (`None`: no usable file), switching to a newer one
    /// first when the current one is superseded or silent.
    /// One shared lock on the common path (the mapped file is current and heard from): the
    /// guard that looked is the one `f` runs under.
    fn with<T>(&self, now_ms: i64, f: impl FnOnce(Option<&Attached>) -> T) -> T {
        let superseded = {
            let current = self.current.read();
            match &*current {
                Some(a) if a.map.superseded() => true,
                Some(a) if now_ms - a.map.heartbeat_ms() <= REOPEN_AFTER_SILENCE_MS => {
                    return f(Some(a));
                }
                _ => false,
            }
        };
        self.reopen(now_ms, superseded);
        f(self.current.read().as_ref())
    }
}

impl Revocations for ShmRevocations {
    fn check(
        &self,
        issuer: &str,
        sid: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        iat_secs: i64,
        now_ms: i64,
    ) -> Option<RevokedBy> {
        self.with(now_ms, |a| {
            let a = a?;
            let map = &a.map;
            check_with(
                &a.hashers,
                (issuer, sid, jti, sub),
                |kind, scope| map.count(kind.table(scope)) > 0,
                |kind, scope, key| {
                    let Some(e) = map.lookup(kind.table(scope), key.digest()) else {
                        return false;
                    };
                    match kind {
                        RevokedBy::Session | RevokedBy::Token => {
                            Expiry(e.expires).revokes(iat_secs, now_ms)
                        }
                        RevokedBy::Subject => SubjectEntry {
                            not_before: e.not_before,
                            expires: e.expires,
                        }
                        .revokes(iat_secs, now_ms),
                    }
                },
            )
        })
    }

    fn stale_mask(&self, freshness: &Freshness, now_ms: i64, max_ms: i64) -> OriginMask {
        self.with(now_ms, |a| {
            let Some(a) = a else {
                return freshness.all();
            };
            if !a.map.ready() || now_ms - a.map.heartbeat_ms() > max_ms {
                return freshness.all();
            }
            let mut mask = 0;
            for (i, at) in a.origin_index.iter().enumerate().take(64) {
                let t = at.map_or(0, |j| a.map.origin_fresh_ms(j));
                if t == 0 || now_ms - t > max_ms {
                    mask |= 1 << i;
                }
            }
            mask
        })
    }
}
