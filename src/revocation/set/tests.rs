//! The set's unit tests: the cases it was built against, then a model-based property test
//! of convergence and pruning.

use super::*;

/// An event of `kind` for `id`, as the feed would hand it to the set (also the snapshot
/// tests').
pub(super) fn ev(
    kind: Kind,
    id: &str,
    issuer: &str,
    revoked_at: i64,
    expires_at: i64,
) -> RevocationEvent {
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
        revoked_at_us: 0,
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
fn bloom_filters_never_hide_an_entry_across_growth_and_prune() {
    let s = RevokedSet::new();
    // 64 shards x several filter rebuilds each
    for i in 0..40_000 {
        let exp = if i % 3 == 0 { T + 1_000 } else { T + 100_000 };
        s.apply(&ev(Kind::Session, &format!("s{i}"), "iss", T, exp), T);
    }
    for i in 0..40_000 {
        assert!(
            s.check("iss", &format!("s{i}"), None, None, 0, T).is_some(),
            "s{i}"
        );
    }
    s.prune(T + 1_000);
    for i in 0..40_000 {
        let held = s
            .check("iss", &format!("s{i}"), None, None, 0, T + 2_000)
            .is_some();
        assert_eq!(held, i % 3 != 0, "s{i}");
    }
    // and unknown ids are (almost always) answered by the filter: nothing to assert on
    // timing here, only that misses stay misses
    assert!((0..1000).all(|i| s.check("iss", &format!("x{i}"), None, None, 0, T).is_none()));
}

#[test]
fn issuer_and_id_do_not_mix() {
    let s = RevokedSet::new();
    s.apply(&ev(Kind::Session, "a", "b", T, T + 60_000), T);
    assert!(s.check("b", "a", None, None, 0, T).is_some());
    // swapped issuer and id, and the same id as a token or subject: all distinct
    assert!(s.check("a", "b", None, None, 0, T).is_none());
    assert!(s.check("b", "x", Some("a"), Some("a"), 0, T).is_none());
    // an any-issuer subject entry applies to every issuer
    s.apply(&ev(Kind::Subject, "u", "", T, T + 60_000), T);
    assert_eq!(
        s.check("zzz", "x", None, Some("u"), T / 1000 - 1, T),
        Some(RevokedBy::Subject)
    );
    let st = s.stats();
    assert_eq!((st.sessions, st.tokens, st.subjects), (1, 0, 1));
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

// --- convergence and pruning, against a model -------------------------------------------

use std::collections::HashMap;

/// xorshift64: seeded, so a failing case is reproducible from its seed without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }
    fn shuffle<X>(&mut self, xs: &mut [X]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// Issuers events name; `""` is "any issuer". Checks also ask for an issuer nobody revoked.
const ISSUERS: [&str; 3] = ["", "iss-a", "iss-b"];
const TOKEN_ISSUERS: [&str; 3] = ["iss-a", "iss-b", "iss-c"];
/// Applications happen in `T..T + WINDOW`; every stored entry outlives the window, so each
/// stored event is live whenever it is applied and order cannot matter; the rest expired
/// before `T` and are refused whenever they arrive.
const WINDOW: i64 = 10_000;
/// Checks and prunes happen in `T + WINDOW..T + HORIZON`, across the entries' expiries.
const HORIZON: i64 = 130_000;

/// What the set must hold: per (kind, id, issuer), the strongest of the stored events, in
/// whole seconds rounded up — written from the contract, not from the set's code.
#[derive(Default)]
struct Model(HashMap<(RevokedBy, String, String), (i64, i64)>);

impl Model {
    fn kind(ev: &RevocationEvent) -> RevokedBy {
        match Kind::try_from(ev.kind) {
            Ok(Kind::Token) => RevokedBy::Token,
            Ok(Kind::Subject) => RevokedBy::Subject,
            _ => RevokedBy::Session,
        }
    }

    fn add(&mut self, ev: &RevocationEvent, now_ms: i64) {
        if ev.expires_at <= now_ms {
            return;
        }
        let ceil = |ms: i64| (ms + 999).div_euclid(1000);
        let k = (Self::kind(ev), ev.id.clone(), ev.issuer.clone());
        let e = self.0.entry(k).or_insert((i64::MIN, i64::MIN));
        e.0 = e.0.max(ceil(ev.revoked_at));
        e.1 = e.1.max(ceil(ev.expires_at));
    }

    fn revokes(&self, kind: RevokedBy, id: &str, issuer: &str, iat: i64, now: i64) -> bool {
        [issuer, ""].iter().any(|iss| {
            self.0
                .get(&(kind, id.to_string(), iss.to_string()))
                .is_some_and(|&(nb, exp)| {
                    exp * 1000 > now && (kind != RevokedBy::Subject || iat < nb)
                })
        })
    }

    fn check(&self, q: &Query, now: i64) -> Option<RevokedBy> {
        let claims = [
            (RevokedBy::Session, Some(q.sid.as_str())),
            (RevokedBy::Token, q.jti.as_deref()),
            (RevokedBy::Subject, q.sub.as_deref()),
        ];
        claims.into_iter().find_map(|(kind, id)| {
            id.filter(|id| self.revokes(kind, id, q.issuer, q.iat, now))
                .map(|_| kind)
        })
    }

    fn expired_by(&self, now: i64) -> usize {
        self.0
            .values()
            .filter(|&&(_, exp)| exp * 1000 <= now)
            .count()
    }

    fn live_at(&self, now: i64) -> usize {
        self.0.len() - self.expired_by(now)
    }

    fn count(&self, kind: RevokedBy) -> usize {
        self.0.keys().filter(|k| k.0 == kind).count()
    }
}

struct Query {
    issuer: &'static str,
    sid: String,
    jti: Option<String>,
    sub: Option<String>,
    iat: i64,
}

fn query(r: &mut Rng, ids: u64) -> Query {
    let id = |r: &mut Rng| format!("id{}", r.below(ids));
    let opt = |r: &mut Rng| (r.below(4) != 0).then(|| id(r));
    Query {
        issuer: TOKEN_ISSUERS[r.below(3) as usize],
        sid: format!("id{}", r.below(ids)),
        jti: opt(r),
        sub: opt(r),
        iat: T / 1000 + r.range(-120, 120),
    }
}

fn ask(s: &RevokedSet, q: &Query, now: i64) -> Option<RevokedBy> {
    s.check(
        q.issuer,
        &q.sid,
        q.jti.as_deref(),
        q.sub.as_deref(),
        q.iat,
        now,
    )
}

/// A random event: kind (an unknown kind number counts as a session), id, issuer and times;
/// one in four already expired before `T`.
fn random_event(r: &mut Rng, ids: u64, n: usize) -> RevocationEvent {
    let kind = [0, 1, 2, 3, 99][r.below(5) as usize];
    let revoked_at = T + r.range(-100_000, 100_000);
    let expires_at = if r.below(4) == 0 {
        T - r.range(0, 50_000)
    } else {
        T + WINDOW + 1 + r.range(0, HORIZON - WINDOW)
    };
    RevocationEvent {
        event_id: format!("e{n}"),
        kind,
        id: format!("id{}", r.below(ids)),
        issuer: ISSUERS[r.below(3) as usize].into(),
        revoked_at,
        expires_at,
        origin_region: ["us", "eu"][r.below(2) as usize].into(),
        reason: String::new(),
        urgent: false,
        revoked_at_us: 0,
    }
}

/// One case: `events` distinct events over `ids` ids, delivered with duplicates, shuffled and
/// at increasing times, must leave the same set as applying each once, in order, at `T`; and
/// a prune must remove exactly the expired entries.
fn converges(seed: u64, events: usize, ids: u64, queries: usize) {
    let r = &mut Rng::new(seed);
    let evs: Vec<RevocationEvent> = (0..events).map(|n| random_event(r, ids, n)).collect();
    let mut model = Model::default();
    let once = RevokedSet::new();
    for ev in &evs {
        model.add(ev, T);
        let expect_expired = ev.expires_at <= T;
        assert_eq!(
            once.apply(ev, T) == Applied::Expired,
            expect_expired,
            "seed {seed}"
        );
    }

    // Every event one to three times, in any order, at increasing times within the window.
    let mut deliveries: Vec<&RevocationEvent> = evs
        .iter()
        .flat_map(|ev| std::iter::repeat_n(ev, 1 + r.below(3) as usize))
        .collect();
    r.shuffle(&mut deliveries);
    let mut times: Vec<i64> = deliveries.iter().map(|_| T + r.range(0, WINDOW)).collect();
    times.sort_unstable();
    let shuffled = RevokedSet::new();
    let mut new = 0;
    for (ev, &at) in deliveries.iter().zip(&times) {
        match shuffled.apply(ev, at) {
            Applied::Expired => assert!(ev.expires_at <= at, "seed {seed}: live event refused"),
            Applied::New => new += 1,
            Applied::Duplicate => {}
        }
    }
    assert!(new >= model.0.len(), "seed {seed}: every entry is new once");

    for s in [&once, &shuffled] {
        assert_eq!(s.len(), model.0.len(), "seed {seed}");
        let st = s.stats();
        assert_eq!(
            (st.sessions, st.tokens, st.subjects),
            (
                model.count(RevokedBy::Session),
                model.count(RevokedBy::Token),
                model.count(RevokedBy::Subject)
            ),
            "seed {seed}"
        );
    }
    assert_eq!(
        once.prune(T + WINDOW),
        0,
        "seed {seed}: nothing expires in the window"
    );

    let mut answers = [0usize; 2];
    for _ in 0..queries {
        let q = query(r, ids);
        let now = T + r.range(WINDOW, HORIZON + 2_000);
        let want = model.check(&q, now);
        answers[usize::from(want.is_some())] += 1;
        assert_eq!(ask(&once, &q, now), want, "seed {seed}: in order, once");
        assert_eq!(ask(&shuffled, &q, now), want, "seed {seed}: shuffled");
    }
    if ids <= 8 && queries >= 100 {
        assert!(
            answers.iter().all(|&n| n > 0),
            "seed {seed}: hits and misses both {answers:?}"
        );
    }

    // Prune at a random time: exactly the expired entries go; answers from then on are those
    // of the set that was never pruned.
    let at = T + r.range(WINDOW, HORIZON + 2_000);
    assert_eq!(shuffled.prune(at), model.expired_by(at), "seed {seed}");
    assert_eq!(shuffled.len(), model.live_at(at), "seed {seed}");
    assert_eq!(shuffled.prune(at), 0, "seed {seed}: prune is idempotent");
    for _ in 0..queries {
        let q = query(r, ids);
        let now = at + r.range(0, HORIZON - WINDOW);
        assert_eq!(
            ask(&shuffled, &q, now),
            ask(&once, &q, now),
            "seed {seed}: pruned vs not"
        );
    }
    // What survived is held whole: redelivering everything only finds duplicates.
    for ev in &evs {
        let got = shuffled.apply(ev, at);
        let want = if ev.expires_at <= at {
            Applied::Expired
        } else {
            Applied::Duplicate
        };
        assert_eq!(got, want, "seed {seed}: redelivered after prune");
    }
}

#[test]
fn any_delivery_order_converges_and_prune_removes_exactly_the_expired() {
    for seed in 0..300 {
        converges(seed, 1 + (seed as usize % 40), 6, 300);
    }
}

#[test]
fn convergence_holds_across_shards_and_filter_rebuilds() {
    for seed in 1000..1004 {
        converges(seed, 5_000, 2_000, 5_000);
    }
}

/// A set at a steady count (as many revocations expire as arrive, pruned every step) keeps
/// its tables' size: the one-hour soak saw hashbrown double them at a flat 90k entries once
/// removals' tombstones had used up the room for inserts. A table grows by half when its
/// shard's share of the plateau first peaks above 7/8 of its slots (a share is random, so
/// some do, once, after the plateau is reached) and never shrinks while 1/3 live: never
/// above 1.5 times the plateau's size.
#[test]
fn tables_do_not_grow_under_churn_at_a_steady_count() {
    const PER_STEP: i64 = 1_000; // revocations per step (a step: one prune interval)
    const TTL_STEPS: i64 = 20; // each held for 20 steps: a plateau of 20k entries
    const STEP_MS: i64 = 60_000;
    let s = RevokedSet::new();
    let mut plateau_bytes = None;
    for step in 0..120 {
        let now = T + step * STEP_MS;
        for i in 0..PER_STEP {
            let id = format!("s-{step}-{i}");
            let e = ev(
                Kind::Session,
                &id,
                "iss",
                now,
                now + TTL_STEPS * STEP_MS - 1,
            );
            s.apply(&e, now);
        }
        s.prune(now);
        let stats = s.stats();
        if step == TTL_STEPS {
            assert_eq!(s.len() as i64, PER_STEP * TTL_STEPS, "at the plateau");
            plateau_bytes = Some(stats.table_bytes);
        }
        if let Some(b) = plateau_bytes {
            assert_eq!(s.len() as i64, PER_STEP * TTL_STEPS, "step {step}");
            assert!(
                stats.table_bytes <= b * 3 / 2,
                "step {step}: tables grew from {b} to {} B at a flat {} entries",
                stats.table_bytes,
                s.len()
            );
        }
    }
}

/// Checks read the filters without a lock while applies grow them and prunes rebuild them:
/// a revocation that is held is never missed by a check running beside either.
#[test]
fn checks_racing_applies_and_prunes_never_miss_a_held_revocation() {
    let s = RevokedSet::new();
    let kept: Vec<String> = (0..3_000).map(|i| format!("kept{i}")).collect();
    for id in &kept {
        s.apply(&ev(Kind::Session, id, "iss", T, T + 3_600_000), T);
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // waves of short-lived revocations: every wave grows filters, every prune
            // rebuilds every shard's filter
            for wave in 0..400i64 {
                let now = T + wave * 1_000;
                for i in 0..200 {
                    let id = format!("w{wave}-{i}");
                    s.apply(&ev(Kind::Token, &id, "", now, now + 1_500), now);
                }
                s.prune(now);
            }
            done.store(true, Ordering::Relaxed);
        });
        let mut rounds = 0;
        while !done.load(Ordering::Relaxed) || rounds == 0 {
            for id in &kept {
                assert_eq!(
                    s.check("iss", id, Some("j"), Some("u"), 0, T),
                    Some(RevokedBy::Session),
                    "{id} missed beside a rebuild (round {rounds})"
                );
            }
            rounds += 1;
        }
    });
}

/// Past the entries its filters were sized for, the set still holds and finds everything:
/// only the filters' false-positive rate rises.
#[test]
fn over_the_sized_entries_nothing_is_missed() {
    let s = RevokedSet::with_max_entries(1_000);
    for i in 0..50_000 {
        s.apply(
            &ev(Kind::Session, &format!("s{i}"), "iss", T, T + 60_000),
            T,
        );
    }
    assert_eq!(s.len(), 50_000);
    assert!((0..50_000).all(|i| s.check("iss", &format!("s{i}"), None, None, 0, T).is_some()));
    assert!((0..1_000).all(|i| s.check("iss", &format!("x{i}"), None, None, 0, T).is_none()));
}

/// The thread's memo of the last issuer hash is per set: two sets (two sets of keys)
/// checked in turn on one thread each find their own entries under the same issuer.
#[test]
fn the_issuer_memo_never_crosses_sets() {
    let (a, b) = (RevokedSet::new(), RevokedSet::new());
    a.apply(&ev(Kind::Session, "s1", "iss", T, T + 60_000), T);
    b.apply(&ev(Kind::Session, "s2", "iss", T, T + 60_000), T);
    for _ in 0..3 {
        assert!(a.check("iss", "s1", None, None, 0, T).is_some());
        assert!(b.check("iss", "s2", None, None, 0, T).is_some());
        assert!(a.check("iss", "s2", None, None, 0, T).is_none());
        assert!(b.check("iss", "s1", None, None, 0, T).is_none());
        assert!(a.check("other", "s1", None, None, 0, T).is_none());
        assert!(a.check("iss", "s1", None, None, 0, T).is_some());
    }
}

/// Any `revocation.max_entries` makes a set: the filters are sized for at most
/// `MAX_FILTER_ENTRIES` (a larger bound reserved tens of GiB, or overflowed, at start).
#[test]
fn any_bound_makes_a_set_and_the_filters_stay_capped() {
    for bound in [0, 1, 1_000_000_000_000, usize::MAX] {
        let s = RevokedSet::with_max_entries(bound);
        s.apply(&ev(Kind::Session, "s1", "iss", T, T + 60_000), T);
        assert!(
            s.check("iss", "s1", None, None, 0, T).is_some(),
            "bound {bound}"
        );
        let reserved: usize = s.shards.iter().map(|c| c.filter.reserved_bytes()).sum();
        assert!(
            reserved <= 512 << 20,
            "bound {bound}: {reserved} B reserved"
        );
    }
}

/// A mirror whose writes fail (here: growth cannot create the next generation, its
/// directory is gone; in a pod, a full tmpfs) says so and stops its heartbeat, so the module
/// turns stale and applies `on_stale` instead of trusting a table that misses revocations;
/// the set itself keeps every revocation.
#[test]
fn a_mirror_that_cannot_write_stops_its_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("shm-dir");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("veto-revoked");
    let s = RevokedSet::new();
    let m = s.mirror_to(&path, &["us".to_string()]).unwrap();
    let fresh = crate::revocation::Freshness::expecting(["us"]);
    m.publish(&fresh, 1, true, T);
    let reader = veto_shm::Mapping::open(&path).unwrap();
    assert_eq!(reader.heartbeat_ms(), T);
    assert!(m.healthy());
    std::fs::remove_dir_all(&sub).unwrap();
    let n = 50_000;
    for i in 0..n {
        s.apply(
            &ev(Kind::Session, &format!("s{i}"), "iss", T, T + 60_000),
            T,
        );
    }
    assert!(!m.healthy(), "growth into a missing directory must fail");
    m.publish(&fresh, 2, true, T + 5_000);
    assert_eq!(
        reader.heartbeat_ms(),
        T,
        "no heartbeat from a broken mirror"
    );
    let iat = T / 1000 - 5;
    assert_eq!(
        s.check("iss", &format!("s{}", n - 1), None, None, iat, T),
        Some(RevokedBy::Session),
        "the set itself holds every revocation"
    );
}
