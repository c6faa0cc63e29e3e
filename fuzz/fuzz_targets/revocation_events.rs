//! Revocation events applied to the revoked set against a `BTreeMap` model: every lookup
//! agrees with the model; re-applying an event never changes anything; a batch applied in
//! another order (to a second set) gives the same answers; prune removes exactly the expired
//! entries (its count is the model's) and never a live one.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use veto::revocation::{Applied, Kind, RevocationEvent, RevokedBy, RevokedSet};

const T0: i64 = 1_700_000_000_000;
const IDS: [&str; 4] = ["a", "b", "c", "d"];
/// "" is an any-issuer revocation.
const ISSUERS: [&str; 3] = ["", "https://one", "https://two"];

#[derive(Arbitrary, Debug)]
struct Ev {
    kind: u8,
    id: u8,
    issuer: u8,
    /// revoked_at = now - back (ms)
    back: u16,
    /// expires_at = revoked_at + ttl (ms): short, so events expire within a run
    ttl: u16,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Apply(Ev),
    /// Applied in this order to one set and reversed and rotated to the other.
    Batch(Vec<Ev>, u8),
    Advance(u16),
    Prune,
    Check {
        issuer: u8,
        sid: u8,
        jti: u8,
        sub: u8,
        iat_back: u16,
    },
}

type Key = (u8, &'static str, &'static str);

#[derive(Default)]
struct Model {
    /// (kind, issuer, id) → (expires s, not_before s), as the set rounds them (up).
    m: BTreeMap<Key, (u32, u32)>,
}

fn secs_ceil(ms: i64) -> u32 {
    let s = ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0);
    s.clamp(0, i64::from(u32::MAX)) as u32
}

fn live(exp: u32, now: i64) -> bool {
    i64::from(exp) * 1000 > now
}

fn table(kind: Kind) -> u8 {
    match kind {
        Kind::Token => 1,
        Kind::Subject => 2,
        _ => 0,
    }
}

impl Model {
    fn apply(
        &mut self,
        e: &RevocationEvent,
        kind: Kind,
        id: &'static str,
        iss: &'static str,
        now: i64,
    ) -> Applied {
        if e.expires_at <= now {
            return Applied::Expired;
        }
        let (exp, nb) = (secs_ceil(e.expires_at), secs_ceil(e.revoked_at));
        let t = table(kind);
        let slot = self.m.entry((t, iss, id)).or_insert((0, 0));
        let before = *slot;
        slot.0 = slot.0.max(exp);
        if t == 2 {
            slot.1 = slot.1.max(nb);
        }
        if *slot == before {
            Applied::Duplicate
        } else {
            Applied::New
        }
    }

    fn prune(&mut self, now: i64) -> usize {
        let before = self.m.len();
        self.m.retain(|_, (exp, _)| live(*exp, now));
        before - self.m.len()
    }

    fn check(
        &self,
        iss: &str,
        sid: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        iat: i64,
        now: i64,
    ) -> Option<RevokedBy> {
        let hit = |t: u8, id: &str| {
            [iss, ""].iter().any(|i| {
                self.m.iter().any(|((tt, ii, dd), (exp, nb))| {
                    *tt == t
                        && ii == i
                        && *dd == id
                        && live(*exp, now)
                        && (t != 2 || iat < i64::from(*nb))
                })
            })
        };
        if hit(0, sid) {
            return Some(RevokedBy::Session);
        }
        if jti.is_some_and(|j| hit(1, j)) {
            return Some(RevokedBy::Token);
        }
        if sub.is_some_and(|s| hit(2, s)) {
            return Some(RevokedBy::Subject);
        }
        None
    }
}

fn event(e: &Ev, now: i64, n: usize) -> (RevocationEvent, Kind, &'static str, &'static str) {
    let kind =
        [Kind::Session, Kind::Token, Kind::Subject, Kind::Unspecified][usize::from(e.kind % 4)];
    let id = IDS[usize::from(e.id) % IDS.len()];
    let iss = ISSUERS[usize::from(e.issuer) % ISSUERS.len()];
    let revoked_at = now - i64::from(e.back);
    let mut ev = RevocationEvent::new(
        format!("e{n}"),
        kind,
        id,
        "r1",
        revoked_at,
        std::time::Duration::from_millis(u64::from(e.ttl) + 1),
    );
    ev.issuer = iss.to_string();
    (ev, kind, id, iss)
}

fn agree(a: &RevokedSet, b: &RevokedSet, model: &Model, now: i64) {
    for iss in &ISSUERS[1..] {
        for sid in IDS {
            for jti in [None, Some("a"), Some("c")] {
                for sub in [None, Some("b"), Some("d")] {
                    for iat in [now / 1000 - 70, now / 1000 - 1, now / 1000 + 1] {
                        let want = model.check(iss, sid, jti, sub, iat, now);
                        assert_eq!(
                            a.check(iss, sid, jti, sub, iat, now),
                            want,
                            "set vs model: {iss} {sid} {jti:?} {sub:?} iat {iat}"
                        );
                        assert_eq!(
                            b.check(iss, sid, jti, sub, iat, now),
                            want,
                            "reordered set vs model"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(a.len(), model.m.len(), "entry count");
    assert_eq!(b.len(), model.m.len(), "entry count (reordered)");
}

fuzz_target!(|ops: Vec<Op>| {
    let (a, b) = (
        RevokedSet::with_max_entries(20_000),
        RevokedSet::with_max_entries(20_000),
    );
    let mut model = Model::default();
    let mut now = T0;
    let mut n = 0;
    for op in ops.iter().take(64) {
        match op {
            Op::Apply(e) => {
                n += 1;
                let (ev, kind, id, iss) = event(e, now, n);
                let want = model.apply(&ev, kind, id, iss, now);
                assert_eq!(a.apply(&ev, now), want, "apply vs model");
                assert_eq!(b.apply(&ev, now), want);
                // re-applying never changes anything
                let again = a.apply(&ev, now);
                assert!(
                    matches!(again, Applied::Duplicate | Applied::Expired),
                    "re-apply gave {again:?}"
                );
                assert_eq!(model.apply(&ev, kind, id, iss, now), again);
            }
            Op::Batch(evs, rot) => {
                let evs: Vec<_> = evs
                    .iter()
                    .take(16)
                    .map(|e| {
                        n += 1;
                        event(e, now, n)
                    })
                    .collect();
                for (ev, kind, id, iss) in &evs {
                    model.apply(ev, *kind, id, iss, now);
                    a.apply(ev, now);
                }
                let mut other: Vec<_> = evs.iter().rev().collect();
                if !other.is_empty() {
                    let r = usize::from(*rot) % other.len();
                    other.rotate_left(r);
                }
                for (ev, ..) in other {
                    b.apply(ev, now);
                }
            }
            Op::Advance(ms) => now += i64::from(*ms) * 10,
            Op::Prune => {
                let want = model.prune(now);
                assert_eq!(a.prune(now), want, "prune removed other than the expired");
                assert_eq!(b.prune(now), want);
            }
            Op::Check {
                issuer,
                sid,
                jti,
                sub,
                iat_back,
            } => {
                let iss = ISSUERS[1 + usize::from(*issuer) % 2];
                let sid = IDS[usize::from(*sid) % 4];
                let jti = (jti % 5 < 4).then(|| IDS[usize::from(*jti) % 4]);
                let sub = (sub % 5 < 4).then(|| IDS[usize::from(*sub) % 4]);
                let iat = now / 1000 - i64::from(*iat_back) / 100;
                let want = model.check(iss, sid, jti, sub, iat, now);
                assert_eq!(a.check(iss, sid, jti, sub, iat, now), want);
            }
        }
        agree(&a, &b, &model, now);
    }
});
