//! The feed's metric families, labelled by the typed [`Path`] and [`Outcome`].

use super::snapshot::Fallback;
use super::{Outcome, Path};
use crate::metrics;
use prometheus::{
    exponential_buckets, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry,
};

#[derive(Clone)]
pub struct FeedMetrics {
    events: IntCounterVec,
    propagation: HistogramVec,
    catchup_reads: IntCounterVec,
    /// `veto_feed_connected`: 1 while connected to NATS.
    pub connected: IntGauge,
    /// `veto_feed_ready`: 1 once the stream has been replayed.
    pub ready: IntGauge,
    /// `veto_feed_last_sequence`.
    pub last_sequence: IntGauge,
    /// `veto_feed_consumer_restarts_total`.
    pub restarts: IntCounter,
    /// `veto_feed_consumer_stalls_total`.
    pub stalls: IntCounter,
    /// `veto_feed_replay_seconds`.
    pub replay: Histogram,
    snapshot_fallbacks: IntCounterVec,
    snapshot_writes: IntCounterVec,
    /// `veto_revocation_snapshot_loaded_entries`.
    pub snapshot_loaded: IntGauge,
    /// `veto_revocation_snapshot_sequence`.
    pub snapshot_sequence: IntGauge,
}

impl FeedMetrics {
    pub fn register(r: &Registry) -> FeedMetrics {
        // From 100 µs: the fast path delivers in well under a millisecond (revoked_at_us).
        let lag_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ];
        FeedMetrics {
            events: metrics::counter_vec(
                r,
                "veto_revocation_events_total",
                "Revocation events received, by path (durable/fast) and result.",
                &["path", "result"],
            ),
            propagation: metrics::histogram_vec(
                r,
                "veto_revocation_propagation_seconds",
                "Revocation propagation lag: time applied here minus revoked_at at the origin.",
                &["origin_region", "path"],
                lag_buckets,
            ),
            catchup_reads: metrics::counter_vec(
                r,
                "veto_feed_catchup_reads_total",
                "Times an origin's stream was read directly because its source lagged.",
                &["origin_region"],
            ),
            connected: metrics::gauge(r, "veto_feed_connected", "1 while connected to NATS."),
            ready: metrics::gauge(
                r,
                "veto_feed_ready",
                "1 once the revocation stream has been replayed.",
            ),
            last_sequence: metrics::gauge(
                r,
                "veto_feed_last_sequence",
                "Last stream sequence applied.",
            ),
            restarts: metrics::counter(
                r,
                "veto_feed_consumer_restarts_total",
                "Times the stream consumer was recreated.",
            ),
            stalls: metrics::counter(
                r,
                "veto_feed_consumer_stalls_total",
                "Times the stream consumer stopped delivering while the stream held more, and was recreated.",
            ),
            replay: metrics::histogram(
                r,
                "veto_feed_replay_seconds",
                "Time from feed start to caught up.",
                exponential_buckets(0.001, 4.0, 10).expect("static buckets"),
            ),
            snapshot_fallbacks: metrics::counter_vec(
                r,
                "veto_revocation_snapshot_fallbacks_total",
                "Starts with revocation.snapshot.path set that replayed the whole stream instead of loading the snapshot, by reason.",
                &["reason"],
            ),
            snapshot_writes: metrics::counter_vec(
                r,
                "veto_revocation_snapshot_writes_total",
                "Revocation snapshot writes, by result (ok/error).",
                &["result"],
            ),
            snapshot_loaded: metrics::gauge(
                r,
                "veto_revocation_snapshot_loaded_entries",
                "Revocations loaded from the snapshot at start (0: none loaded).",
            ),
            snapshot_sequence: metrics::gauge(
                r,
                "veto_revocation_snapshot_sequence",
                "Stream sequence covered by the last snapshot loaded or written.",
            ),
        }
    }

    /// `veto_revocation_snapshot_fallbacks_total{reason}`.
    pub fn snapshot_fallback(&self, reason: Fallback) -> IntCounter {
        self.snapshot_fallbacks.with_label_values(&[reason.label()])
    }

    /// `veto_revocation_snapshot_writes_total{result}` (`ok` or `error`).
    pub fn snapshot_writes(&self, result: &str) -> IntCounter {
        self.snapshot_writes.with_label_values(&[result])
    }

    /// `veto_revocation_events_total{path, result}`.
    pub fn events(&self, path: Path, outcome: Outcome) -> IntCounter {
        self.events
            .with_label_values(&[path.label(), outcome.label()])
    }

    /// `veto_revocation_propagation_seconds{origin_region, path}`.
    pub fn propagation(&self, origin: &str, path: Path) -> Histogram {
        self.propagation.with_label_values(&[origin, path.label()])
    }

    /// `veto_feed_catchup_reads_total{origin_region}`.
    pub fn catchup_reads(&self, origin: &str) -> IntCounter {
        self.catchup_reads.with_label_values(&[origin])
    }
}
