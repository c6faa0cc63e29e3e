//! The protobuf messages of `proto/veto/v1/revocation.proto`, written out with prost derives
//! (the schema is small and stable; this keeps protoc out of the build). A unit test below
//! pins the field numbers against hand-encoded bytes.

use prost::Message;

/// Longest revoked id (session, token or subject) an event carries, in bytes. A token whose
/// session, `jti` or `sub` is longer could never be revoked, so the validator refuses it.
pub const MAX_ID_BYTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    Unspecified = 0,
    Session = 1,
    Token = 2,
    Subject = 3,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Session => "session",
            Kind::Token => "token",
            Kind::Subject => "subject",
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct RevocationEvent {
    #[prost(string, tag = "1")]
    pub event_id: String,
    #[prost(enumeration = "Kind", tag = "2")]
    pub kind: i32,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(string, tag = "4")]
    pub issuer: String,
    #[prost(int64, tag = "5")]
    pub revoked_at: i64,
    #[prost(int64, tag = "6")]
    pub expires_at: i64,
    #[prost(string, tag = "7")]
    pub origin_region: String,
    #[prost(string, tag = "8")]
    pub reason: String,
    #[prost(bool, tag = "9")]
    pub urgent: bool,
    /// `revoked_at` in Unix microseconds; 0 when the publisher only knows milliseconds.
    #[prost(int64, tag = "10")]
    pub revoked_at_us: i64,
}

impl RevocationEvent {
    /// A revocation of `kind` `id` (every issuer, no reason, not urgent: set those fields on
    /// the result), published at `origin` at `revoked_at` (Unix ms) and held for `ttl`.
    pub fn new(
        event_id: impl Into<String>,
        kind: Kind,
        id: impl Into<String>,
        origin: impl Into<String>,
        revoked_at: i64,
        ttl: std::time::Duration,
    ) -> RevocationEvent {
        RevocationEvent {
            event_id: event_id.into(),
            kind: kind as i32,
            id: id.into(),
            issuer: String::new(),
            revoked_at,
            expires_at: revoked_at.saturating_add(ttl.as_millis() as i64),
            origin_region: origin.into(),
            reason: String::new(),
            urgent: false,
            revoked_at_us: 0,
        }
    }

    /// [`RevocationEvent::new`] stamped at `revoked_at_us` (Unix µs): `revoked_at` is its
    /// millisecond (floor) and `revoked_at_us` carries the rest, for propagation lag below a
    /// millisecond.
    pub fn new_at_us(
        event_id: impl Into<String>,
        kind: Kind,
        id: impl Into<String>,
        origin: impl Into<String>,
        revoked_at_us: i64,
        ttl: std::time::Duration,
    ) -> RevocationEvent {
        RevocationEvent {
            revoked_at_us,
            ..RevocationEvent::new(
                event_id,
                kind,
                id,
                origin,
                revoked_at_us.div_euclid(1000),
                ttl,
            )
        }
    }

    /// When it was revoked, Unix µs, as precisely as the publisher said: `revoked_at_us` when
    /// it is set and names an instant inside `revoked_at`'s millisecond, else `revoked_at`
    /// × 1000. A `revoked_at_us` that disagrees with `revoked_at` is ignored, never a reason
    /// to drop the revocation: it only ever feeds the lag measurement, while `revoked_at`
    /// stays the not-before of a subject revocation.
    pub fn revoked_at_micros(&self) -> i64 {
        if self.revoked_at_us != 0 && self.revoked_at_us.div_euclid(1000) == self.revoked_at {
            self.revoked_at_us
        } else {
            self.revoked_at.saturating_mul(1000)
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct Heartbeat {
    #[prost(string, tag = "1")]
    pub origin_region: String,
    #[prost(int64, tag = "2")]
    pub sent_at: i64,
}

/// Why an event was refused. Each is counted as `result="invalid"` and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not a valid protobuf message")]
    Undecodable,
    #[error("field `{0}` is missing or invalid")]
    BadField(&'static str),
    #[error("origin region does not match the subject")]
    OriginMismatch,
}

/// Is `s` usable as one NATS subject token and as an event id / region name?
pub fn valid_token_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Is `s` a valid region name (one subject token of [A-Za-z0-9_-], at most 64 bytes)?
pub fn valid_region(s: &str) -> bool {
    valid_token_name(s, 64)
}

/// Decodes and checks an event. `origin` (if known: the region its subject names, see
/// `bus::names::parse`) must be the event's own origin region.
pub fn decode_event(bytes: &[u8], origin: Option<&str>) -> Result<RevocationEvent, EventError> {
    let ev = RevocationEvent::decode(bytes).map_err(|_| EventError::Undecodable)?;
    if !valid_token_name(&ev.event_id, 128) {
        return Err(EventError::BadField("event_id"));
    }
    match Kind::try_from(ev.kind) {
        Ok(Kind::Session | Kind::Token | Kind::Subject) => {}
        _ => return Err(EventError::BadField("kind")),
    }
    if ev.id.is_empty() || ev.id.len() > MAX_ID_BYTES {
        return Err(EventError::BadField("id"));
    }
    if ev.issuer.len() > 1024 {
        return Err(EventError::BadField("issuer"));
    }
    if ev.revoked_at <= 0 {
        return Err(EventError::BadField("revoked_at"));
    }
    // u32 seconds hold expiries up to 2106; anything later is nonsense, not a revocation.
    if ev.expires_at <= ev.revoked_at || ev.expires_at / 1000 >= i64::from(u32::MAX) {
        return Err(EventError::BadField("expires_at"));
    }
    if !valid_token_name(&ev.origin_region, 64) {
        return Err(EventError::BadField("origin_region"));
    }
    if origin.is_some_and(|o| o != ev.origin_region) {
        return Err(EventError::OriginMismatch);
    }
    Ok(ev)
}

/// Decodes and checks a heartbeat. `origin`, as for [`decode_event`].
pub fn decode_heartbeat(bytes: &[u8], origin: Option<&str>) -> Result<Heartbeat, EventError> {
    let hb = Heartbeat::decode(bytes).map_err(|_| EventError::Undecodable)?;
    if !valid_token_name(&hb.origin_region, 64) {
        return Err(EventError::BadField("origin_region"));
    }
    if hb.sent_at <= 0 {
        return Err(EventError::BadField("sent_at"));
    }
    if origin.is_some_and(|o| o != hb.origin_region) {
        return Err(EventError::OriginMismatch);
    }
    Ok(hb)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ev() -> RevocationEvent {
        RevocationEvent {
            event_id: "e1".into(),
            kind: Kind::Session as i32,
            id: "s1".into(),
            issuer: "".into(),
            revoked_at: 1_000,
            expires_at: 2_000,
            origin_region: "us".into(),
            reason: "logout".into(),
            urgent: false,
            revoked_at_us: 0,
        }
    }

    #[test]
    fn microseconds_are_field_10_and_only_refine_the_millisecond() {
        // field 5 revoked_at 2, field 10 revoked_at_us 2345 (varint 0xa9 0x12)
        let bytes = [0x28, 2, 0x50, 0xa9, 0x12];
        let e = RevocationEvent::decode(&bytes[..]).unwrap();
        assert_eq!((e.revoked_at, e.revoked_at_us), (2, 2345));
        assert_eq!(e.revoked_at_micros(), 2345);
        assert_eq!(e.encode_to_vec(), bytes);
        // a ms-only publisher (field 10 absent) measures at ms grain
        let ms_only = ev();
        assert_eq!(ms_only.revoked_at_micros(), 1_000_000);
        // a µs value outside revoked_at's millisecond is ignored, and the event stays valid
        for us in [999_999, 1_001_000, -5] {
            let e = RevocationEvent {
                revoked_at_us: us,
                ..ev()
            };
            assert_eq!(e.revoked_at_micros(), 1_000_000, "{us}");
            assert!(decode_event(&e.encode_to_vec(), None).is_ok());
        }
        let e = RevocationEvent::new_at_us(
            "e",
            Kind::Session,
            "s",
            "us",
            1_700_000_000_123_456,
            std::time::Duration::from_secs(1),
        );
        assert_eq!(
            (e.revoked_at, e.revoked_at_micros()),
            (1_700_000_000_123, 1_700_000_000_123_456)
        );
        assert_eq!(e.expires_at, 1_700_000_001_123);
        // an older sidecar skips field 10 as unknown: the same event without it
        let old = RevocationEvent {
            revoked_at_us: 0,
            ..e.clone()
        };
        assert_eq!(RevocationEvent::decode(&e.encode_to_vec()[..]).unwrap(), e);
        assert_ne!(old, e);
    }

    #[test]
    fn wire_format_matches_the_proto_field_numbers() {
        // Hand-encoded: field 1 (event_id) "e", field 2 (kind) 3, field 3 (id) "x",
        // field 5 revoked_at 1, field 6 expires_at 2, field 7 origin "u", field 9 urgent true.
        let bytes = [
            0x0a, 1, b'e', 0x10, 3, 0x1a, 1, b'x', 0x28, 1, 0x30, 2, 0x3a, 1, b'u', 0x48, 1,
        ];
        let e = RevocationEvent::decode(&bytes[..]).unwrap();
        assert_eq!(e.event_id, "e");
        assert_eq!(e.kind, Kind::Subject as i32);
        assert_eq!(e.id, "x");
        assert_eq!((e.revoked_at, e.expires_at), (1, 2));
        assert_eq!(e.origin_region, "u");
        assert!(e.urgent);
        assert_eq!(e.encode_to_vec(), bytes);
    }

    #[test]
    fn poison_events_are_refused() {
        assert_eq!(
            decode_event(b"\xff\xff\xff", None),
            Err(EventError::Undecodable)
        );
        type Mutation = fn(&mut RevocationEvent);
        let cases: Vec<(Mutation, &str)> = vec![
            (|e| e.event_id.clear(), "event_id"),
            (|e| e.event_id = "a.b".into(), "event_id"),
            (|e| e.event_id = "*".into(), "event_id"),
            (|e| e.kind = 0, "kind"),
            (|e| e.kind = 42, "kind"),
            (|e| e.id.clear(), "id"),
            (|e| e.revoked_at = 0, "revoked_at"),
            (|e| e.expires_at = e.revoked_at, "expires_at"),
            (|e| e.expires_at = i64::MAX, "expires_at"),
            (|e| e.origin_region = "u s".into(), "origin_region"),
        ];
        for (mutate, field) in cases {
            let mut e = ev();
            mutate(&mut e);
            assert_eq!(
                decode_event(&e.encode_to_vec(), None),
                Err(EventError::BadField(field))
            );
        }
        let ok = ev().encode_to_vec();
        assert!(decode_event(&ok, Some("us")).is_ok());
        assert_eq!(
            decode_event(&ok, Some("eu")),
            Err(EventError::OriginMismatch)
        );
    }
}
