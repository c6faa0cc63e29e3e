//! Applies one message from any path (durable stream, fast path, direct catch-up read) to
//! the revoked set, counting what happened, and announces every newly applied revocation on
//! a broadcast ([`Applier::subscribe`]). Idempotent: the same event from two paths is
//! applied once, announced once, and counted once as a duplicate.

use super::FeedMetrics;
use crate::bus::names::{self, Subject};
use crate::revocation::{
    decode_event, decode_heartbeat, Applied as SetOutcome, Freshness, Kind, RevokedSet,
};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::broadcast;

/// Which path delivered a message: the `path` label of the event and lag metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// This region's stream (own origin and, by sourcing, every other).
    Durable,
    /// Core NATS: every origin's events as they cross the gateways.
    Fast,
    /// The catch-up reader's direct read of a lagging origin's stream.
    Direct,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::Durable => "durable",
            Path::Fast => "fast",
            Path::Direct => "direct",
        }
    }
}

/// What became of one message: the `result` label of `veto_revocation_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A revocation the set did not hold yet.
    Applied,
    /// Already held (same event from another path, or the same revocation again).
    Duplicate,
    /// Expired before it arrived.
    Expired,
    /// Not a valid event or heartbeat, or on a subject that does not name it.
    Invalid,
    /// A valid heartbeat (freshness marked; not counted).
    Heartbeat,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Expired => "expired",
            Outcome::Invalid => "invalid",
            Outcome::Heartbeat => "heartbeat",
        }
    }
}

/// One newly applied revocation, as announced to [`Applier::subscribe`]rs: what the
/// forced-logout push needs, and what tests and benchmarks observe instead of log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub event_id: String,
    pub kind: Kind,
    /// The revoked session, token or subject id.
    pub id: String,
    /// `""`: every issuer.
    pub issuer: String,
    /// The region the revocation was published at.
    pub origin: String,
    /// When it was revoked, Unix µs as precisely as the publisher stamped it
    /// ([`RevocationEvent::revoked_at_micros`]): what latencies are measured from. Its
    /// millisecond is the event's `revoked_at` ([`Applied::revoked_at`]).
    pub revoked_at_us: i64,
    /// Why (`logout`, `admin`, `refresh_reuse`, `upstream_logout`, ... or empty).
    pub reason: String,
    /// The path that delivered it first.
    pub path: Path,
    /// When it was applied, Unix µs (comparable with `revoked_at_us`).
    pub at_us: i64,
    /// When it was applied, on this process's monotonic clock: in-process latency (the
    /// propagation benchmark) without the wall clock's millisecond grain.
    pub instant: Instant,
}

impl Applied {
    /// When it was revoked, Unix ms: the event's `revoked_at` (for a subject: tokens issued
    /// before it are revoked).
    pub fn revoked_at(&self) -> i64 {
        self.revoked_at_us.div_euclid(1000)
    }
}

/// How many announcements a slow subscriber may fall behind before it misses some
/// (`RecvError::Lagged`, never a blocked feed).
pub const APPLIED_CAPACITY: usize = 8192;

#[derive(Clone)]
pub struct Applier {
    pub revoked: Arc<RevokedSet>,
    /// Freshness per origin from any path: what the stale policy and metric use.
    pub freshness: Arc<Freshness>,
    /// Freshness per origin as delivered by this region's own stream (i.e. by sourcing):
    /// tells the catch-up reader when a source lags and when it has caught up.
    pub sourced: Arc<Freshness>,
    pub metrics: FeedMetrics,
    /// Every newly applied revocation; nothing is built or sent while nobody subscribes.
    applied: broadcast::Sender<Applied>,
}

impl Applier {
    pub fn new(
        revoked: Arc<RevokedSet>,
        freshness: Arc<Freshness>,
        metrics: FeedMetrics,
    ) -> Applier {
        Applier {
            revoked,
            freshness,
            sourced: Arc::new(Freshness::default()),
            metrics,
            applied: broadcast::channel(APPLIED_CAPACITY).0,
        }
    }

    /// Every revocation newly applied from now on, whichever path delivered it.
    pub fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.applied.subscribe()
    }

    fn count(&self, path: Path, outcome: Outcome) {
        self.metrics.events(path, outcome).inc();
    }

    /// Applies a message published on `subject` that arrived through `path`.
    pub fn apply(&self, subject: &str, payload: &[u8], path: Path) -> Outcome {
        let now_us = crate::now_us();
        let now = now_us.div_euclid(1000);
        let (origin, id) = match names::parse(subject) {
            Some(Subject::Heartbeat { origin }) => {
                return match decode_heartbeat(payload, Some(origin)) {
                    Ok(hb) => {
                        let at = hb.sent_at.min(now);
                        self.freshness.mark(&hb.origin_region, at);
                        if path == Path::Durable {
                            self.sourced.mark(&hb.origin_region, at);
                        }
                        Outcome::Heartbeat
                    }
                    Err(e) => {
                        self.count(path, Outcome::Invalid);
                        tracing::warn!(error = %e, "invalid heartbeat skipped");
                        Outcome::Invalid
                    }
                };
            }
            Some(Subject::Event { origin, id }) => (origin, id),
            None => {
                self.count(path, Outcome::Invalid);
                tracing::warn!(subject, "message on a subject that is not ours; skipped");
                return Outcome::Invalid;
            }
        };
        let ev = match decode_event(payload, Some(origin)) {
            Ok(ev) if ev.event_id == id => ev,
            Ok(_) => {
                self.count(path, Outcome::Invalid);
                tracing::warn!(
                    "revocation event on a subject that does not name its event_id; skipped"
                );
                return Outcome::Invalid;
            }
            Err(e) => {
                self.count(path, Outcome::Invalid);
                tracing::warn!(error = %e, "invalid revocation event skipped");
                return Outcome::Invalid;
            }
        };
        let outcome = match self.revoked.apply(&ev, now) {
            SetOutcome::New => {
                let revoked_at_us = ev.revoked_at_micros();
                let lag = (now_us - revoked_at_us).max(0) as f64 / 1e6;
                self.metrics
                    .propagation(&ev.origin_region, path)
                    .observe(lag);
                tracing::debug!(event_id = %ev.event_id, origin = %ev.origin_region, path = path.label(), "revocation applied");
                if self.applied.receiver_count() > 0 {
                    let _ = self.applied.send(Applied {
                        kind: Kind::try_from(ev.kind).unwrap_or(Kind::Unspecified),
                        event_id: ev.event_id,
                        id: ev.id,
                        issuer: ev.issuer,
                        origin: ev.origin_region,
                        revoked_at_us,
                        reason: ev.reason,
                        path,
                        at_us: now_us,
                        instant: Instant::now(),
                    });
                }
                Outcome::Applied
            }
            SetOutcome::Duplicate => Outcome::Duplicate,
            SetOutcome::Expired => Outcome::Expired,
        };
        self.count(path, outcome);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::names::{event_subject, heartbeat_subject};
    use crate::revocation::{Heartbeat, RevocationEvent};
    use prost::Message;
    use tokio::sync::broadcast::error::TryRecvError;

    fn applier() -> Applier {
        Applier::new(
            Arc::new(RevokedSet::new()),
            Arc::new(Freshness::default()),
            FeedMetrics::register(&prometheus::Registry::new()),
        )
    }

    fn ev(event_id: &str, id: &str, origin: &str, revoked_at: i64) -> RevocationEvent {
        RevocationEvent {
            event_id: event_id.into(),
            kind: Kind::Token as i32,
            id: id.into(),
            issuer: "https://iss".into(),
            revoked_at,
            expires_at: revoked_at + 60_000,
            origin_region: origin.into(),
            reason: "test".into(),
            urgent: false,
            revoked_at_us: 0,
        }
    }

    fn send(a: &Applier, e: &RevocationEvent, path: Path) -> Outcome {
        a.apply(
            &event_subject(&e.origin_region, &e.event_id),
            &e.encode_to_vec(),
            path,
        )
    }

    #[test]
    fn lag_is_measured_from_the_microsecond_stamp() {
        let a = applier();
        let mut rx = a.subscribe();
        // stamped in the last µs of a millisecond 1-2 ms ago: measured from the ms, the lag
        // would be 999 µs longer than the time since the stamp
        let stamp = (crate::now_us() - 1000).div_euclid(1000) * 1000 + 999;
        let mut e = ev("e1", "j1", "eu", stamp.div_euclid(1000));
        e.revoked_at_us = stamp;
        assert_eq!(send(&a, &e, Path::Fast), Outcome::Applied);
        let since = (crate::now_us() - stamp) as f64 / 1e6;
        let h = a.metrics.propagation("eu", Path::Fast);
        assert_eq!(h.get_sample_count(), 1);
        let lag = h.get_sample_sum();
        assert!(
            lag > 0.0 && lag <= since,
            "lag {lag} s, {since} s since the stamp"
        );
        let got = rx.try_recv().expect("announced");
        assert_eq!(got.revoked_at_us, stamp);
        assert_eq!(got.revoked_at(), e.revoked_at);
        assert!(got.at_us > got.revoked_at_us);
    }

    #[test]
    fn every_new_revocation_is_announced_once_with_its_path() {
        let a = applier();
        let mut rx = a.subscribe();
        let now = crate::now_ms();
        let e = ev("e1", "j1", "eu", now);
        let before = crate::now_ms();
        assert_eq!(send(&a, &e, Path::Fast), Outcome::Applied);
        let got = rx.try_recv().expect("announced");
        assert_eq!(
            (got.event_id.as_str(), got.kind, got.id.as_str()),
            ("e1", Kind::Token, "j1")
        );
        assert_eq!(
            (got.issuer.as_str(), got.origin.as_str(), got.path),
            ("https://iss", "eu", Path::Fast)
        );
        assert!(got.at_us >= before * 1000 && got.at_us <= crate::now_us());
        assert_eq!(
            got.revoked_at_us,
            now * 1000,
            "a ms-only event measures from its ms"
        );
        // the same event through the durable path: a duplicate, not announced again
        assert_eq!(send(&a, &e, Path::Durable), Outcome::Duplicate);
        // the same revocation under another event id: also a duplicate
        assert_eq!(
            send(&a, &ev("e2", "j1", "eu", now), Path::Direct),
            Outcome::Duplicate
        );
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn expired_invalid_and_heartbeats_are_not_announced() {
        let a = applier();
        let mut rx = a.subscribe();
        let now = crate::now_ms();
        let mut old = ev("old", "j-old", "us", now - 120_000);
        old.expires_at = now - 60_000;
        assert_eq!(send(&a, &old, Path::Durable), Outcome::Expired);
        // a subject that does not name the event's id, or not its origin
        let e = ev("e3", "j3", "us", now);
        assert_eq!(
            a.apply(
                &event_subject("us", "other"),
                &e.encode_to_vec(),
                Path::Durable
            ),
            Outcome::Invalid
        );
        assert_eq!(
            a.apply(
                &event_subject("eu", "e3"),
                &e.encode_to_vec(),
                Path::Durable
            ),
            Outcome::Invalid
        );
        assert_eq!(
            a.apply(
                "veto.revocations.us.ev.e3.x",
                &e.encode_to_vec(),
                Path::Fast
            ),
            Outcome::Invalid
        );
        assert_eq!(
            a.apply(&event_subject("us", "e4"), b"\xff\xff", Path::Fast),
            Outcome::Invalid
        );
        let hb = Heartbeat {
            origin_region: "us".into(),
            sent_at: now,
        };
        assert_eq!(
            a.apply(&heartbeat_subject("us"), &hb.encode_to_vec(), Path::Durable),
            Outcome::Heartbeat
        );
        assert_eq!(
            a.apply(&heartbeat_subject("eu"), &hb.encode_to_vec(), Path::Durable),
            Outcome::Invalid
        );
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert!(a.revoked.is_empty());
    }

    #[test]
    fn without_subscribers_nothing_is_sent_and_late_subscribers_see_only_what_follows() {
        let a = applier();
        let now = crate::now_ms();
        assert_eq!(
            send(&a, &ev("a", "s-a", "us", now), Path::Durable),
            Outcome::Applied
        );
        let mut rx = a.subscribe();
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(
            send(&a, &ev("b", "s-b", "us", now), Path::Durable),
            Outcome::Applied
        );
        assert_eq!(rx.try_recv().map(|x| x.event_id), Ok("b".to_string()));
        // clones share the one stream
        let b = a.clone();
        assert_eq!(
            send(&b, &ev("c", "s-c", "us", now), Path::Durable),
            Outcome::Applied
        );
        assert_eq!(rx.try_recv().map(|x| x.event_id), Ok("c".to_string()));
    }
}
