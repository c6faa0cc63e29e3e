//! Revocations: the event schema (`proto/veto/v1/revocation.proto`) and the revoked set.
//!
//! Pure: no NATS here (subjects and streams are named in `bus::names`). The feed decodes messages with [`decode_event`] and applies them with
//! [`RevokedSet::apply`]; the decision path asks [`RevokedSet::check`].

mod event;
mod freshness;
mod set;

pub use event::{
    decode_event, decode_heartbeat, valid_region, valid_token_name, EventError, Heartbeat, Kind,
    RevocationEvent, MAX_ID_BYTES,
};
pub use freshness::{Freshness, OriginMask, MAX_ORIGINS};
pub use set::snapshot;
pub use set::{
    Applied, RevokedBy, RevokedSet, SetStats, ShmMirror, ShmRevocations, DEFAULT_MAX_ENTRIES,
};

/// What the decision asks of the revocation state: the sidecar's own [`RevokedSet`] (and
/// its feed's [`Freshness`]), or, in-proxy, their mirror in shared memory
/// ([`ShmRevocations`]). One decision code path over both.
pub trait Revocations: Send + Sync + 'static {
    /// Is a token with these claims revoked at `now_ms`? ([`RevokedSet::check`])
    fn check(
        &self,
        issuer: &str,
        sid: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        iat_secs: i64,
        now_ms: i64,
    ) -> Option<RevokedBy>;

    /// The expected origins (bits of `freshness`) staler than `max_ms` at `now_ms`: by
    /// default what the feed marked in `freshness` itself.
    fn stale_mask(&self, freshness: &Freshness, now_ms: i64, max_ms: i64) -> OriginMask {
        freshness.stale_mask(now_ms, max_ms)
    }
}

impl Revocations for RevokedSet {
    fn check(
        &self,
        issuer: &str,
        sid: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        iat_secs: i64,
        now_ms: i64,
    ) -> Option<RevokedBy> {
        RevokedSet::check(self, issuer, sid, jti, sub, iat_secs, now_ms)
    }
}
