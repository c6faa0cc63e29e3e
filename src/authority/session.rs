//! The session record and the rotation state machine, pure: given the record, the presented
//! (tag-verified) refresh token and the clock, [`decide`] says what the home does. The store
//! runs it inside a compare-and-set loop on the record's revision.
//!
//! `next_box` holds the current secret sealed (AES-256-GCM) under a key derived (HKDF-SHA-256)
//! from the previous secret: only a holder of the previous token can open it, so a replay in
//! the grace returns the byte-identical successor while the store holds no usable secret.

use super::refresh::{new_secret, same_hash, secret_hash, Presented, SECRET_BYTES};
use crate::token::b64;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Logout,
    Admin,
    RefreshReuse,
    UpstreamLogout,
    /// A revocation event from the feed (made in any region).
    Revoked,
}

impl EndReason {
    /// The reason a revocation event names, if it is one of the four the authority gives.
    pub fn parse(reason: &str) -> Option<EndReason> {
        match reason {
            "logout" => Some(EndReason::Logout),
            "admin" => Some(EndReason::Admin),
            "refresh_reuse" => Some(EndReason::RefreshReuse),
            "upstream_logout" => Some(EndReason::UpstreamLogout),
            _ => None,
        }
    }

    /// The reason of an event from anywhere: another publisher's is just `Revoked`.
    pub fn of(reason: &str) -> EndReason {
        EndReason::parse(reason).unwrap_or(EndReason::Revoked)
    }

    pub fn label(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::Admin => "admin",
            EndReason::RefreshReuse => "refresh_reuse",
            EndReason::UpstreamLogout => "upstream_logout",
            EndReason::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSession {
    pub iss: String,
    pub sid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Active,
    Revoked { at: i64, reason: EndReason },
}

/// One session, stored as JSON under `s.<sid>` in the home's bucket. Times in Unix ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub sub: String,
    pub aud: Vec<String>,
    /// Extra claims of every access token of the session.
    #[serde(default)]
    pub claims: Map<String, Value>,
    pub created_at: i64,
    /// Absolute end, refreshed or not.
    pub abs_exp: i64,
    /// Generation of the current refresh token.
    pub generation: u64,
    /// base64url SHA-256 of the current secret.
    pub cur_hash: String,
    /// base64url SHA-256 of the previous secret (generation − 1).
    #[serde(default)]
    pub prev_hash: Option<String>,
    /// When the current generation was issued.
    pub rotated_at: i64,
    /// Grace replays of the previous token counted so far.
    #[serde(default)]
    pub replays: u32,
    /// When the last counted replay happened (0: none): duplicates of one replay, like those
    /// of the rotation, count once.
    #[serde(default)]
    pub last_replay_at: i64,
    /// The current secret sealed under the previous one (see the module doc).
    #[serde(default)]
    pub next_box: Option<String>,
    #[serde(default)]
    pub upstream: Option<UpstreamSession>,
    #[serde(flatten)]
    pub state: State,
}

/// The rotation rules of the home.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// The previous token returns the same successor this long after the rotation (ms).
    pub grace_ms: i64,
    /// ... at most this many times ...
    pub max_replays: u32,
    /// ... not counting duplicates within this long of the rotation: concurrent copies of one
    /// request (two tabs, a retried request, a storm) are one rotation, not replays (ms).
    pub coalesce_ms: i64,
}

/// What the home does with a presented refresh token.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The current token: rotate. Write `record` (CAS); answer with `secret` at
    /// `record.generation`.
    Rotate {
        record: Record,
        secret: [u8; SECRET_BYTES],
    },
    /// The previous token within the grace: answer the same successor; write `record` first
    /// when it counts the replay.
    Replay {
        record: Option<Record>,
        secret: [u8; SECRET_BYTES],
    },
    /// A genuine rotated-out token: theft. Write the revoked `record`, publish the session's
    /// revocation, refuse.
    Reuse { record: Record },
    /// Refuse without touching anything.
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Revoked (logout, admin, reuse, upstream, a subject revocation after its creation).
    Revoked,
    /// Past its absolute lifetime.
    Expired,
    /// Tag valid but the secret or generation does not fit the record: only possible with a
    /// leaked MAC key (logged as a security event; the session is left alone).
    Inconsistent,
}

impl Refusal {
    pub fn description(self) -> &'static str {
        match self {
            Refusal::Revoked => "the session has ended",
            Refusal::Expired => "the session has expired",
            Refusal::Inconsistent => "refresh token not recognised",
        }
    }
}

/// Decides at `now` (ms). `not_before`: the subject's not-before (a subject revocation),
/// if any: sessions created before it are revoked.
pub fn decide(
    rec: &Record,
    p: &Presented,
    now: i64,
    not_before: Option<i64>,
    rules: Rules,
) -> Step {
    if let State::Revoked { .. } = rec.state {
        return Step::Refuse(Refusal::Revoked);
    }
    if not_before.is_some_and(|nb| rec.created_at <= nb) {
        return Step::Refuse(Refusal::Revoked);
    }
    if now >= rec.abs_exp {
        return Step::Refuse(Refusal::Expired);
    }
    let presented = b64().encode(p.secret_hash());
    if p.generation == rec.generation {
        if !same_hash(presented.as_bytes(), rec.cur_hash.as_bytes()) {
            return Step::Refuse(Refusal::Inconsistent);
        }
        let secret = new_secret();
        let mut next = rec.clone();
        next.generation = rec.generation + 1;
        next.prev_hash = Some(rec.cur_hash.clone());
        next.cur_hash = b64().encode(secret_hash(&secret));
        next.rotated_at = now;
        next.replays = 0;
        next.last_replay_at = 0;
        next.next_box = Some(seal(&p.secret, &p.sid, next.generation, &secret));
        return Step::Rotate {
            record: next,
            secret,
        };
    }
    if p.generation > rec.generation {
        return Step::Refuse(Refusal::Inconsistent);
    }
    let reuse = || {
        let mut dead = rec.clone();
        dead.state = State::Revoked {
            at: now,
            reason: EndReason::RefreshReuse,
        };
        Step::Reuse { record: dead }
    };
    if p.generation + 1 < rec.generation {
        // a grand-parent (or older): genuine by its tag, rotated out long ago
        return reuse();
    }
    let matches_prev = rec
        .prev_hash
        .as_ref()
        .is_some_and(|h| same_hash(presented.as_bytes(), h.as_bytes()));
    if !matches_prev {
        return Step::Refuse(Refusal::Inconsistent);
    }
    let Some(secret) = rec
        .next_box
        .as_deref()
        .and_then(|b| open(&p.secret, &p.sid, rec.generation, b))
    else {
        return Step::Refuse(Refusal::Inconsistent);
    };
    let age = now.saturating_sub(rec.rotated_at);
    let since_replay = now.saturating_sub(rec.last_replay_at);
    // a burst of copies of one request — of the rotation or of a counted replay — is one
    if age <= rules.coalesce_ms || (age <= rules.grace_ms && since_replay <= rules.coalesce_ms) {
        return Step::Replay {
            record: None,
            secret,
        };
    }
    if age <= rules.grace_ms && rec.replays < rules.max_replays {
        let mut counted = rec.clone();
        counted.replays += 1;
        counted.last_replay_at = now;
        return Step::Replay {
            record: Some(counted),
            secret,
        };
    }
    reuse()
}

/// The record of a new session: generation 0, secret `secret`.
pub fn new_record(
    sub: String,
    aud: Vec<String>,
    claims: Map<String, Value>,
    upstream: Option<UpstreamSession>,
    now: i64,
    lifetime_ms: i64,
    secret: &[u8],
) -> Record {
    Record {
        sub,
        aud,
        claims,
        created_at: now,
        abs_exp: now.saturating_add(lifetime_ms),
        generation: 0,
        cur_hash: b64().encode(secret_hash(secret)),
        prev_hash: None,
        rotated_at: now,
        replays: 0,
        last_replay_at: 0,
        next_box: None,
        upstream,
        state: State::Active,
    }
}

struct KeyLen;
impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn box_key(prev_secret: &[u8], sid: &str, generation: u64) -> Option<LessSafeKey> {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"veto refresh next_box v1");
    let prk = salt.extract(prev_secret);
    let info = aad(sid, generation);
    let info = [info.as_slice()];
    let okm = prk.expand(&info, KeyLen).ok()?;
    let mut key = [0u8; 32];
    okm.fill(&mut key).ok()?;
    UnboundKey::new(&AES_256_GCM, &key)
        .ok()
        .map(LessSafeKey::new)
}

fn aad(sid: &str, generation: u64) -> Vec<u8> {
    format!("{sid}.{generation}").into_bytes()
}

/// Seals `secret` (of `generation`) under a key derived from `prev_secret`.
fn seal(prev_secret: &[u8], sid: &str, generation: u64, secret: &[u8]) -> String {
    let Some(key) = box_key(prev_secret, sid, generation) else {
        return String::new();
    };
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&new_secret()[..NONCE_LEN]);
    let mut buf = secret.to_vec();
    if key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(sid, generation)),
            &mut buf,
        )
        .is_err()
    {
        return String::new();
    }
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    b64().encode(out)
}

/// Opens a `next_box` with the previous secret; `None` if it does not open.
fn open(
    prev_secret: &[u8],
    sid: &str,
    generation: u64,
    sealed: &str,
) -> Option<[u8; SECRET_BYTES]> {
    let raw = b64().decode(sealed).ok()?;
    if raw.len() <= NONCE_LEN {
        return None;
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let key = box_key(prev_secret, sid, generation)?;
    let mut buf = ct.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad(sid, generation)), &mut buf)
        .ok()?;
    plain.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        grace_ms: 30_000,
        max_replays: 2,
        coalesce_ms: 1_000,
    };

    fn start() -> (Record, [u8; 32]) {
        let s = new_secret();
        let r = new_record(
            "alice".into(),
            vec!["api".into()],
            Map::new(),
            None,
            1_000,
            3_600_000,
            &s,
        );
        (r, s)
    }

    fn p(gen: u64, secret: [u8; 32]) -> Presented {
        Presented {
            home: "us".into(),
            sid: "sid1".into(),
            generation: gen,
            secret,
        }
    }

    fn rotate(r: &Record, s: [u8; 32], now: i64) -> (Record, [u8; 32]) {
        match decide(r, &p(r.generation, s), now, None, RULES) {
            Step::Rotate { record, secret } => (record, secret),
            other => panic!("expected rotate, got {other:?}"),
        }
    }

    #[test]
    fn rotation_chain_and_reuse() {
        let (r0, s0) = start();
        let (r1, s1) = rotate(&r0, s0, 2_000);
        assert_eq!(r1.generation, 1);
        assert_ne!(s1, s0);
        let (r2, s2) = rotate(&r1, s1, 3_000);
        // grand-parent: theft
        match decide(&r2, &p(0, s0), 3_100, None, RULES) {
            Step::Reuse { record } => assert!(matches!(
                record.state,
                State::Revoked {
                    reason: EndReason::RefreshReuse,
                    ..
                }
            )),
            other => panic!("{other:?}"),
        }
        // the previous one within the coalesce window: the same successor, nothing written
        assert_eq!(
            decide(&r2, &p(1, s1), 3_500, None, RULES),
            Step::Replay {
                record: None,
                secret: s2
            }
        );
    }

    #[test]
    fn grace_is_bounded_by_count_and_time() {
        let (r0, s0) = start();
        let (mut r1, s1) = rotate(&r0, s0, 10_000);
        // counted replays, each more than the coalescing window after the last
        for i in 0..RULES.max_replays {
            match decide(&r1, &p(0, s0), 12_000 + 1_500 * i as i64, None, RULES) {
                Step::Replay {
                    record: Some(rec),
                    secret,
                } => {
                    assert_eq!(secret, s1);
                    assert_eq!(rec.replays, i + 1);
                    r1 = rec;
                }
                other => panic!("{other:?}"),
            }
        }
        // a copy of the last counted replay is that replay, not one more
        assert!(matches!(
            decide(&r1, &p(0, s0), 13_600, None, RULES),
            Step::Replay { record: None, .. }
        ));
        // the count is spent
        assert!(matches!(
            decide(&r1, &p(0, s0), 15_000, None, RULES),
            Step::Reuse { .. }
        ));
        // past the window: reuse, even with replays left
        let (r0, s0) = start();
        let (r1, _) = rotate(&r0, s0, 10_000);
        assert!(matches!(
            decide(&r1, &p(0, s0), 10_000 + RULES.grace_ms + 1, None, RULES),
            Step::Reuse { .. }
        ));
        // coalesced duplicates never count
        for t in [10_000, 10_500, 11_000] {
            assert!(matches!(
                decide(&r1, &p(0, s0), t, None, RULES),
                Step::Replay { record: None, .. }
            ));
        }
    }

    #[test]
    fn refusals_touch_nothing() {
        let (r0, s0) = start();
        let mut dead = r0.clone();
        dead.state = State::Revoked {
            at: 5,
            reason: EndReason::Logout,
        };
        assert_eq!(
            decide(&dead, &p(0, s0), 2_000, None, RULES),
            Step::Refuse(Refusal::Revoked)
        );
        assert_eq!(
            decide(&r0, &p(0, s0), 3_601_000, None, RULES),
            Step::Refuse(Refusal::Expired)
        );
        assert_eq!(
            decide(&r0, &p(0, s0), 2_000, Some(1_000), RULES),
            Step::Refuse(Refusal::Revoked)
        );
        assert!(matches!(
            decide(&r0, &p(0, s0), 2_000, Some(999), RULES),
            Step::Rotate { .. }
        ));
        // right generation, wrong secret; a future generation
        assert_eq!(
            decide(&r0, &p(0, [1; 32]), 2_000, None, RULES),
            Step::Refuse(Refusal::Inconsistent)
        );
        assert_eq!(
            decide(&r0, &p(1, s0), 2_000, None, RULES),
            Step::Refuse(Refusal::Inconsistent)
        );
        // previous generation with a wrong secret: not reuse, not replay
        let (r1, _) = rotate(&r0, s0, 2_000);
        assert_eq!(
            decide(&r1, &p(0, [1; 32]), 2_100, None, RULES),
            Step::Refuse(Refusal::Inconsistent)
        );
    }

    #[test]
    fn the_box_opens_only_with_the_previous_secret() {
        let sealed = seal(&[1; 32], "sid1", 4, &[9; 32]);
        assert_eq!(open(&[1; 32], "sid1", 4, &sealed), Some([9; 32]));
        assert_eq!(open(&[2; 32], "sid1", 4, &sealed), None);
        assert_eq!(open(&[1; 32], "sid2", 4, &sealed), None);
        assert_eq!(open(&[1; 32], "sid1", 5, &sealed), None);
        assert_eq!(open(&[1; 32], "sid1", 4, "garbage!"), None);
    }

    #[test]
    fn record_json_round_trip() {
        let (r0, s0) = start();
        let (r1, _) = rotate(&r0, s0, 2_000);
        let j = serde_json::to_string(&r1).unwrap();
        assert!(!j.contains(&b64().encode(s0)), "no secret stored");
        assert_eq!(serde_json::from_str::<Record>(&j).unwrap(), r1);
    }
}
