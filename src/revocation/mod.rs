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
pub use set::{Applied, RevokedBy, RevokedSet, SetStats, DEFAULT_MAX_ENTRIES};
