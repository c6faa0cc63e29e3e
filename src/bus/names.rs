//! Every NATS name veto uses, in one place: subjects, stream names, message ids and the
//! JetStream API prefix of a domain. Publishers build subjects here and followers
//! [`parse`] them here, so the two can never disagree.
//!
//! ```text
//! veto.revocations.<origin>.ev.<event_id>   one revocation event (unique subject)
//! veto.revocations.<origin>.hb              the origin's heartbeat (one subject, newest kept)
//! veto.revocations.<origin>.>               everything of one origin: what its stream captures
//! veto.revocations.*.ev.>                   every origin's events: the fast path
//! <base>_<region>                           region's stream (base `VETO_REVOCATIONS`)
//! $JS.<domain>.API                          a domain's JetStream API (cross-domain sources)
//! veto.authority.<home>.refresh             refresh forwarded to the home's authorities (queue group)
//! veto.authority.<home>.upstream_logout     back-channel logout fan-out to every home
//! _VETO_AUTHORITY_INBOX.>                   authorities' reply inbox (sidecars may not read it)
//! KV_VETO_SESSIONS / $KV.VETO_SESSIONS.>   a home's session bucket (authorities only)
//! ```

use crate::revocation::{valid_region, valid_token_name};

/// Root of every revocation subject.
pub const SUBJECT_ROOT: &str = "veto.revocations";

/// Every origin's events, over core NATS: what the fast path subscribes to. Heartbeats are
/// left out on purpose (freshness must describe the durable path).
pub const FAST_PATH_SUBJECT: &str = "veto.revocations.*.ev.>";

/// The header JetStream deduplicates publishes on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Longest event id, in bytes (one subject token of `[A-Za-z0-9_-]`).
pub const MAX_EVENT_ID: usize = 128;

/// Root of the authorities' request subjects.
pub const AUTHORITY_ROOT: &str = "veto.authority";

/// Every authority request subject: what only authority users may subscribe to.
pub const AUTHORITY_SUBJECTS: &str = "veto.authority.>";

/// The queue group of a region's authority replicas.
pub const AUTHORITY_QUEUE: &str = "veto-authority";

/// The inbox prefix of authority connections: replies carry refresh tokens, so they go to an
/// inbox that sidecar users are not allowed to subscribe to (sidecars use `_INBOX`).
pub const AUTHORITY_INBOX_PREFIX: &str = "_VETO_AUTHORITY_INBOX";

/// The session bucket of a home region (one per JetStream domain).
pub const SESSION_BUCKET: &str = "VETO_SESSIONS";

/// A home's refresh endpoint.
pub fn refresh_subject(home: &str) -> String {
    format!("{AUTHORITY_ROOT}.{home}.refresh")
}

/// A home's upstream-logout endpoint (back-channel logout fan-out).
pub fn upstream_logout_subject(home: &str) -> String {
    format!("{AUTHORITY_ROOT}.{home}.upstream_logout")
}

/// The subject of one revocation event.
pub fn event_subject(origin: &str, event_id: &str) -> String {
    format!("{SUBJECT_ROOT}.{origin}.ev.{event_id}")
}

/// The subject of an origin's heartbeats.
pub fn heartbeat_subject(origin: &str) -> String {
    format!("{SUBJECT_ROOT}.{origin}.hb")
}

/// Everything published at one origin: the subjects its stream captures, and the filter of
/// every other region's source of it.
pub fn origin_subjects(origin: &str) -> String {
    format!("{SUBJECT_ROOT}.{origin}.>")
}

/// The message id of a revocation event: `<origin>.<event_id>`. Qualified by origin because
/// every region's stream also holds the others' messages (by sourcing) and dedupes them like
/// publishes: with a bare `event_id`, one id published at two origins made the second copy a
/// "duplicate" — silently not stored under its origin, or wedging the source that brought
/// the first (nats-io/nats-server#4459). `.` appears in neither a region nor an event id.
pub fn event_msg_id(origin: &str, event_id: &str) -> String {
    format!("{origin}.{event_id}")
}

/// The message id of a heartbeat (one per origin and millisecond).
pub fn heartbeat_msg_id(origin: &str, sent_at_ms: i64) -> String {
    format!("hb-{origin}-{sent_at_ms}")
}

/// The stream of `region`: `<base>_<region>` (region verbatim, so distinct regions never
/// share a name; why one name per region: [`crate::bus::stream`]).
pub fn stream_name(base: &str, region: &str) -> String {
    format!("{base}_{region}")
}

/// The JetStream API prefix of a domain.
pub fn domain_api_prefix(domain: &str) -> String {
    format!("$JS.{domain}.API")
}

/// The domain named by a JetStream API prefix (`$JS.<domain>.API`), if it is one.
pub fn api_prefix_domain(prefix: &str) -> Option<&str> {
    prefix.strip_prefix("$JS.")?.strip_suffix(".API")
}

/// A subject of ours, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// `veto.revocations.<origin>.ev.<id>`
    Event { origin: &'a str, id: &'a str },
    /// `veto.revocations.<origin>.hb`
    Heartbeat { origin: &'a str },
}

impl<'a> Subject<'a> {
    /// The origin region the subject names.
    pub fn origin(&self) -> &'a str {
        match *self {
            Subject::Event { origin, .. } | Subject::Heartbeat { origin } => origin,
        }
    }
}

/// Takes a subject apart. `None` for anything that is not exactly one of the shapes above
/// with a valid region name and event id (wildcards, empty or extra tokens, other roots).
pub fn parse(subject: &str) -> Option<Subject<'_>> {
    let rest = subject.strip_prefix(SUBJECT_ROOT)?.strip_prefix('.')?;
    let mut tokens = rest.split('.');
    let origin = tokens.next().filter(|o| valid_region(o))?;
    let parsed = match tokens.next()? {
        "hb" => Subject::Heartbeat { origin },
        "ev" => Subject::Event {
            origin,
            id: tokens
                .next()
                .filter(|id| valid_token_name(id, MAX_EVENT_ID))?,
        },
        _ => return None,
    };
    tokens.next().is_none().then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_we_build_parses_back() {
        assert_eq!(event_subject("us", "e-1"), "veto.revocations.us.ev.e-1");
        assert_eq!(
            parse(&event_subject("us", "e-1")),
            Some(Subject::Event {
                origin: "us",
                id: "e-1"
            })
        );
        assert_eq!(heartbeat_subject("eu_2"), "veto.revocations.eu_2.hb");
        assert_eq!(
            parse(&heartbeat_subject("eu_2")),
            Some(Subject::Heartbeat { origin: "eu_2" })
        );
        assert_eq!(parse("veto.revocations.ap.hb").unwrap().origin(), "ap");
        let long = "x".repeat(MAX_EVENT_ID);
        assert!(parse(&event_subject("us", &long)).is_some());
    }

    #[test]
    fn hostile_or_foreign_subjects_do_not_parse() {
        let long_id = format!("veto.revocations.us.ev.{}", "x".repeat(MAX_EVENT_ID + 1));
        let long_region = format!("veto.revocations.{}.hb", "r".repeat(65));
        for s in [
            "",
            "veto",
            "veto.revocations",
            "veto.revocations.",
            "veto.revocations.us",
            "veto.revocations.us.",
            "veto.revocations.us.ev",
            "veto.revocations.us.ev.",
            "veto.revocations.us.ev.a.b",
            "veto.revocations.us.ev.*",
            "veto.revocations.us.ev.>",
            "veto.revocations.*.ev.e1",
            "veto.revocations.>",
            "veto.revocations..ev.e1",
            "veto.revocations.us.hb.x",
            "veto.revocations.us.foo.hb",
            "veto.revocations.us.HB",
            "veto.revocations.us.ev.e 1",
            "veto.revocations.u s.hb",
            "veto.revocationsX.us.hb",
            "xveto.revocations.us.hb",
            " veto.revocations.us.hb",
            "veto.revocations.us.hb ",
            "other.revocations.us.ev.e1",
            "veto.revocations.us.ev.é",
            long_id.as_str(),
            long_region.as_str(),
            FAST_PATH_SUBJECT,
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn stream_and_domain_names() {
        assert_eq!(stream_name("VETO_REVOCATIONS", "us"), "VETO_REVOCATIONS_us");
        assert_eq!(origin_subjects("eu"), "veto.revocations.eu.>");
        assert_eq!(domain_api_prefix("ap"), "$JS.ap.API");
        assert_eq!(api_prefix_domain(&domain_api_prefix("ap")), Some("ap"));
        assert_eq!(api_prefix_domain("$JS.API"), None);
        assert_eq!(heartbeat_msg_id("us", 7), "hb-us-7");
        assert_eq!(event_msg_id("us", "e-1"), "us.e-1");
        // distinct origins never share a message id, whatever the event ids look like
        assert_ne!(event_msg_id("us-x", "1"), event_msg_id("us", "x-1"));
        // the fast path sees every origin's events and no heartbeat
        assert!(FAST_PATH_SUBJECT.starts_with(SUBJECT_ROOT));
    }
}
