//! The feed's upkeep of what it feeds: prunes expired revocations from the revoked set,
//! reports the set's size and each origin's staleness, and holds the `revocations`
//! readiness latch (over `revocation.max_entries` the sidecar is unready: nothing is ever
//! dropped to make room).

use crate::readiness::Latch;
use crate::revocation::{Freshness, Kind, RevokedSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the upkeep reports: the revoked set's size and each origin's staleness.
#[derive(Clone)]
pub struct UpkeepMetrics {
    held: prometheus::IntGaugeVec,
    /// `veto_revocations_table_bytes`.
    pub table_bytes: prometheus::IntGauge,
    /// `veto_revocations_over_capacity`.
    pub over_capacity: prometheus::IntGauge,
    /// `veto_revocations_capacity`: `revocation.max_entries`, for a "near the bound" alert.
    pub capacity: prometheus::IntGauge,
    staleness: prometheus::GaugeVec,
}

impl UpkeepMetrics {
    pub fn register(r: &prometheus::Registry) -> UpkeepMetrics {
        UpkeepMetrics {
            held: crate::metrics::gauge_vec(
                r,
                "veto_revocations_held",
                "Live revocations held, by kind.",
                &["kind"],
            ),
            table_bytes: crate::metrics::gauge(
                r,
                "veto_revocations_table_bytes",
                "Bytes held by the revoked-set tables.",
            ),
            over_capacity: crate::metrics::gauge(
                r,
                "veto_revocations_over_capacity",
                "1 when revocations exceed revocation.max_entries (none are dropped).",
            ),
            capacity: crate::metrics::gauge(
                r,
                "veto_revocations_capacity",
                "Revocations the sidecar is configured to hold (revocation.max_entries).",
            ),
            staleness: crate::metrics::float_gauge_vec(
                r,
                "veto_feed_staleness_seconds",
                "Seconds since the feed from this origin was last known fresh.",
                &["origin_region"],
            ),
        }
    }

    /// `veto_revocations_held{kind}`.
    pub fn held(&self, kind: Kind) -> prometheus::IntGauge {
        self.held.with_label_values(&[kind.label()])
    }

    /// `veto_feed_staleness_seconds{origin_region}`.
    pub fn staleness(&self, origin: &str) -> prometheus::Gauge {
        self.staleness.with_label_values(&[origin])
    }
}

pub struct Upkeep {
    pub revoked: Arc<RevokedSet>,
    pub freshness: Arc<Freshness>,
    /// The revoked set within `max_entries` (`Component::Revocations`).
    pub capacity: Latch,
    pub metrics: UpkeepMetrics,
    pub max_entries: usize,
    pub prune_every: Duration,
}

impl Upkeep {
    /// Every 250 ms (so the gauges and the capacity latch follow within a quarter second)
    /// until `shutdown`; prunes every `prune_every`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = crate::now_ms();
            if last_prune.elapsed() >= self.prune_every {
                last_prune = tokio::time::Instant::now();
                let removed = self.revoked.prune(now);
                if removed > 0 {
                    tracing::debug!(removed, "expired revocations pruned");
                }
            }
            self.tick(now);
        }
    }

    /// One round of gauges and the capacity latch at `now`.
    fn tick(&self, now: i64) {
        let st = self.revoked.stats();
        let m = &self.metrics;
        m.held(Kind::Session).set(st.sessions as i64);
        m.held(Kind::Token).set(st.tokens as i64);
        m.held(Kind::Subject).set(st.subjects as i64);
        m.table_bytes.set(st.table_bytes as i64);
        m.capacity
            .set(i64::try_from(self.max_entries).unwrap_or(i64::MAX));
        let over = st.total() > self.max_entries;
        let was_over = m.over_capacity.get() == 1;
        m.over_capacity.set(i64::from(over));
        if over {
            if !was_over {
                tracing::error!(held = st.total(), max_entries = self.max_entries, "revocations over capacity; none are dropped, raise revocation.max_entries or memory");
            }
            self.capacity.unready("over capacity");
        } else {
            self.capacity.ready();
        }
        for (origin, stale) in self.freshness.staleness(now) {
            let secs = stale.map_or(f64::INFINITY, |ms| ms as f64 / 1000.0);
            m.staleness(&origin).set(secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::{Component, Readiness};
    use crate::revocation::RevocationEvent;

    #[test]
    fn over_capacity_is_unready_and_nothing_is_dropped() {
        let readiness = Readiness::default();
        let revoked = Arc::new(RevokedSet::new());
        let now = crate::now_ms();
        for i in 0..3 {
            revoked.apply(
                &RevocationEvent::new(
                    format!("e{i}"),
                    Kind::Session,
                    format!("s{i}"),
                    "us",
                    now,
                    Duration::from_secs(60),
                ),
                now,
            );
        }
        let up = Upkeep {
            revoked: revoked.clone(),
            freshness: Arc::new(Freshness::expecting(["us"])),
            capacity: readiness.latch(Component::Revocations, "not counted yet"),
            metrics: UpkeepMetrics::register(&prometheus::Registry::new()),
            max_entries: 2,
            prune_every: Duration::from_secs(60),
        };
        up.tick(now);
        assert!(!readiness.is_ready());
        assert_eq!(up.metrics.over_capacity.get(), 1);
        assert_eq!(revoked.len(), 3, "nothing dropped");
        assert_eq!(up.metrics.held(Kind::Session).get(), 3);
        assert!(
            up.metrics.staleness("us").get().is_infinite(),
            "never heard"
        );
    }
}
