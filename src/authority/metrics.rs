//! The authority's metric families (sessions, refreshes, revocations, homes).

use crate::metrics;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

#[derive(Clone)]
pub struct AuthorityMetrics {
    /// `veto_authority_sessions_created_total`.
    pub sessions_created: IntCounter,
    refreshes: IntCounterVec,
    refresh_seconds: HistogramVec,
    home_unavailable: IntCounterVec,
    revocations: IntCounterVec,
    logouts: IntCounterVec,
    records: IntCounterVec,
    copies_failed: IntCounterVec,
    /// `veto_authority_home_request_seconds`: serving another region's request.
    pub home_requests: Histogram,
    /// `veto_authority_push_sockets`: forced-logout sockets open on this replica.
    pub push_sockets: IntGauge,
    pushes: IntCounterVec,
    push_refused: IntCounterVec,
    /// `veto_authority_push_latency_seconds`: push sent − `revoked_at`.
    pub push_latency: Histogram,
}

const LATENCY: [f64; 14] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl AuthorityMetrics {
    pub fn register(r: &Registry) -> AuthorityMetrics {
        let m = AuthorityMetrics {
            sessions_created: metrics::counter(
                r,
                "veto_authority_sessions_created_total",
                "Sessions created (homed in this region).",
            ),
            refreshes: metrics::counter_vec(
                r,
                "veto_authority_refreshes_total",
                "Refresh requests by result: rotated, coalesced, grace_replay, reuse, revoked, expired, unknown, garbled, inconsistent, unknown_home, late (a forwarded request that reached the home after its deadline); unavailable (answered 503) and error (other 5xx), counted by the authority that answered the client.",
                &["result"],
            ),
            refresh_seconds: metrics::histogram_vec(
                r,
                "veto_authority_refresh_seconds",
                "Refresh latency at this authority, by path (local home or forwarded).",
                &["path"],
                LATENCY.to_vec(),
            ),
            home_unavailable: metrics::counter_vec(
                r,
                "veto_authority_home_unavailable_total",
                "Requests answered 503 because the home region could not be reached, by home and why (stale heartbeat, timeout, error).",
                &["home_region", "why"],
            ),
            revocations: metrics::counter_vec(
                r,
                "veto_authority_revocations_published_total",
                "Revocation events published, by kind and reason.",
                &["kind", "reason"],
            ),
            logouts: metrics::counter_vec(
                r,
                "veto_authority_logouts_total",
                "Logout requests by result (revoked, unknown).",
                &["result"],
            ),
            records: metrics::counter_vec(
                r,
                "veto_authority_feed_records_total",
                "Revocations from the feed applied to this home's records, by result (ok, failed, lagged).",
                &["result"],
            ),
            copies_failed: metrics::counter_vec(
                r,
                "veto_authority_revocation_copies_failed_total",
                "Revocation copies at another origin (the session's home, every region) not acknowledged; the own-origin copy still reaches it by sourcing.",
                &["origin_region"],
            ),
            home_requests: metrics::histogram(
                r,
                "veto_authority_home_request_seconds",
                "Time to serve a request forwarded by another region's authority.",
                LATENCY.to_vec(),
            ),
            push_sockets: metrics::gauge(
                r,
                "veto_authority_push_sockets",
                "Forced-logout WebSocket connections open on this replica.",
            ),
            pushes: metrics::counter_vec(
                r,
                "veto_authority_pushes_total",
                "Forced logouts pushed to open sockets, by reason (logout, admin, refresh_reuse, upstream_logout, revoked).",
                &["reason"],
            ),
            push_refused: metrics::counter_vec(
                r,
                "veto_authority_push_refused_total",
                "WebSocket handshakes refused or closed at once, by why (origin, protocol, unauthenticated, not_websocket, revoked, expired, max_per_session, max_sockets).",
                &["why"],
            ),
            push_latency: metrics::histogram(
                r,
                "veto_authority_push_latency_seconds",
                "Forced-logout push latency: the push sent here minus the revocation's revoked_at at its origin.",
                LATENCY.to_vec(),
            ),
        };
        // The series the refresh alert divides are there, at 0, from the start: a counter
        // born at its first increment is invisible to rate() (Prometheus has no earlier
        // sample), so the first 5xx of an outage would not count.
        for result in ["rotated", "unavailable", "error"] {
            m.refresh(result);
        }
        for path in ["local", "forwarded"] {
            m.refresh_seconds(path);
        }
        m
    }

    pub fn refresh(&self, result: &str) -> IntCounter {
        self.refreshes.with_label_values(&[result])
    }
    pub fn refresh_seconds(&self, path: &str) -> Histogram {
        self.refresh_seconds.with_label_values(&[path])
    }
    pub fn home_unavailable(&self, home: &str, why: &str) -> IntCounter {
        self.home_unavailable.with_label_values(&[home, why])
    }
    pub fn revocations(&self, kind: &str, reason: &str) -> IntCounter {
        self.revocations.with_label_values(&[kind, reason])
    }
    pub fn logouts(&self, result: &str) -> IntCounter {
        self.logouts.with_label_values(&[result])
    }
    pub fn copies_failed(&self, origin: &str) -> IntCounter {
        self.copies_failed.with_label_values(&[origin])
    }
    pub fn pushes(&self, reason: &str) -> IntCounter {
        self.pushes.with_label_values(&[reason])
    }
    pub fn push_refused(&self, why: &str) -> IntCounter {
        self.push_refused.with_label_values(&[why])
    }
    pub fn records(&self, result: &str) -> IntCounter {
        self.records.with_label_values(&[result])
    }
}
