//! Property tests of the revoked set against a plain model: under any interleaving of
//! duplicate, out-of-order and expiring events (sessions, tokens, subjects; several issuers
//! and the any-issuer scope) the set converges to the model's state whatever the order,
//! prune at `t` removes exactly the entries with expiry before `t`, and every lookup agrees
//! with the model. (`fuzz/fuzz_targets/revocation_events.rs` runs the same model under
//! libFuzzer.)

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;
use veto::revocation::{Applied, Kind, RevocationEvent, RevokedBy, RevokedSet};

const T0: i64 = 1_700_000_000_000;
const IDS: [&str; 3] = ["a", "b", "c"];
/// "" revokes under every issuer.
const ISSUERS: [&str; 3] = ["", "https://one", "https://two"];

#[derive(Debug, Clone)]
struct Ev {
    kind: Kind,
    id: &'static str,
    issuer: &'static str,
    /// ms after T0
    revoked_at: i64,
    /// ms of life
    ttl: i64,
}

impl Ev {
    fn event(&self, n: usize) -> RevocationEvent {
        let mut e = RevocationEvent::new(
            format!("e{n}"),
            self.kind,
            self.id,
            "r1",
            T0 + self.revoked_at,
            Duration::from_millis(self.ttl as u64),
        );
        e.issuer = self.issuer.to_string();
        e
    }
}

fn ev() -> impl Strategy<Value = Ev> {
    (
        prop::sample::select(vec![Kind::Session, Kind::Token, Kind::Subject]),
        prop::sample::select(IDS.to_vec()),
        prop::sample::select(ISSUERS.to_vec()),
        0i64..20_000,
        1i64..20_000,
    )
        .prop_map(|(kind, id, issuer, revoked_at, ttl)| Ev {
            kind,
            id,
            issuer,
            revoked_at,
            ttl,
        })
}

fn ceil_s(ms: i64) -> u32 {
    (ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0)) as u32
}

/// (kind, issuer, id) → (expiry s, not-before s), both rounded up as the set stores them.
#[derive(Default, Debug, Clone, PartialEq)]
struct Model(BTreeMap<(u8, &'static str, &'static str), (u32, u32)>);

fn table(k: Kind) -> u8 {
    match k {
        Kind::Token => 1,
        Kind::Subject => 2,
        _ => 0,
    }
}

impl Model {
    fn apply(&mut self, e: &Ev, now: i64) -> Applied {
        let exp_ms = T0 + e.revoked_at + e.ttl;
        if exp_ms <= now {
            return Applied::Expired;
        }
        let t = table(e.kind);
        let slot = self.0.entry((t, e.issuer, e.id)).or_insert((0, 0));
        let before = *slot;
        slot.0 = slot.0.max(ceil_s(exp_ms));
        if t == 2 {
            slot.1 = slot.1.max(ceil_s(T0 + e.revoked_at));
        }
        if *slot == before {
            Applied::Duplicate
        } else {
            Applied::New
        }
    }

    fn prune(&mut self, now: i64) -> usize {
        let n = self.0.len();
        self.0.retain(|_, (exp, _)| i64::from(*exp) * 1000 > now);
        n - self.0.len()
    }

    fn check(
        &self,
        iss: &str,
        id: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        iat: i64,
        now: i64,
    ) -> Option<RevokedBy> {
        let hit = |t: u8, id: &str| {
            self.0.iter().any(|((tt, i, d), (exp, nb))| {
                *tt == t
                    && (*i == iss || i.is_empty())
                    && *d == id
                    && i64::from(*exp) * 1000 > now
                    && (t != 2 || iat < i64::from(*nb))
            })
        };
        if hit(0, id) {
            Some(RevokedBy::Session)
        } else if jti.is_some_and(|j| hit(1, j)) {
            Some(RevokedBy::Token)
        } else if sub.is_some_and(|s| hit(2, s)) {
            Some(RevokedBy::Subject)
        } else {
            None
        }
    }
}

/// Every lookup of the grid agrees with the model at `now`.
fn agrees(set: &RevokedSet, model: &Model, now: i64) -> Result<(), TestCaseError> {
    for iss in &ISSUERS[1..] {
        for sid in IDS {
            for other in [None, Some("a"), Some("b"), Some("c")] {
                for iat in [T0 / 1000 - 1, (T0 + 10_000) / 1000] {
                    let want = model.check(iss, sid, other, other, iat, now);
                    prop_assert_eq!(
                        set.check(iss, sid, other, other, iat, now),
                        want,
                        "{} {} {:?} iat {} now {}",
                        iss,
                        sid,
                        other,
                        iat,
                        now
                    );
                }
            }
        }
    }
    prop_assert_eq!(set.len(), model.0.len());
    Ok(())
}

proptest! {
    /// Each event arrives at its own time (out of order, duplicated, some already expired),
    /// with prunes in between: the set follows the model step by step.
    #[test]
    fn set_follows_the_model(
        evs in prop::collection::vec(ev(), 1..32),
        arrivals in prop::collection::vec(0i64..25_000, 40),
        dups in prop::collection::vec(any::<bool>(), 40),
        prunes in prop::collection::vec(any::<bool>(), 40),
    ) {
        let set = RevokedSet::new();
        let mut model = Model::default();
        let mut order: Vec<usize> = (0..evs.len()).collect();
        order.sort_by_key(|&i| arrivals[i]);
        let mut now = T0;
        for (n, &i) in order.iter().enumerate() {
            now = now.max(T0 + arrivals[i]);
            let want = model.apply(&evs[i], now);
            prop_assert_eq!(set.apply(&evs[i].event(n), now), want);
            if dups[n] {
                // a duplicate delivery (another event id) never changes anything
                let again = set.apply(&evs[i].event(n + 1000), now);
                prop_assert!(matches!(again, Applied::Duplicate | Applied::Expired));
                prop_assert_eq!(model.apply(&evs[i], now), again);
            }
            if prunes[n] {
                prop_assert_eq!(set.prune(now), model.prune(now), "prune at {}", now);
            }
            agrees(&set, &model, now)?;
        }
        let end = now + 50_000;
        prop_assert_eq!(set.prune(end), model.prune(end));
        prop_assert!(set.is_empty(), "everything expired by {}", end);
    }

    /// The same events (with duplicates) applied at one time in two different orders give
    /// the same answers, before and after a prune, and prune removes exactly the entries
    /// whose expiry is before `t`, never a live one.
    #[test]
    fn order_does_not_matter_and_prune_is_exact(
        evs in prop::collection::vec(ev(), 1..32),
        perm in any::<u64>(),
        at in 0i64..10_000,
        prune_at in 0i64..45_000,
    ) {
        let now = T0 + at;
        let (a, b) = (RevokedSet::new(), RevokedSet::new());
        let mut model = Model::default();
        let mut doubled: Vec<&Ev> = evs.iter().chain(evs.iter().step_by(2)).collect();
        for (n, e) in doubled.iter().enumerate() {
            model.apply(e, now);
            a.apply(&e.event(n), now);
        }
        // a deterministic shuffle from the drawn seed
        let mut s = perm | 1;
        for i in (1..doubled.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            doubled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        for (n, e) in doubled.iter().enumerate() {
            b.apply(&e.event(n), now);
        }
        agrees(&a, &model, now)?;
        agrees(&b, &model, now)?;
        let t = T0 + prune_at;
        let expired = model.0.values().filter(|(exp, _)| i64::from(*exp) * 1000 <= t).count();
        prop_assert_eq!(a.prune(t), expired);
        prop_assert_eq!(b.prune(t), model.prune(t));
        agrees(&a, &model, t)?;
        agrees(&b, &model, t)?;
    }
}
