//! Applies one message from any path (durable stream, fast path) to the revoked set,
//! counting what happened. Idempotent: the same event from two paths is applied once and
//! counted once as a duplicate.

use crate::metrics::Metrics;
use crate::revocation::{
    decode_event, decode_heartbeat, event_subject, Applied, Freshness, RevokedSet,
};
use std::sync::Arc;

#[derive(Clone)]
pub struct Applier {
    pub revoked: Arc<RevokedSet>,
    /// Freshness per origin from any path: what the stale policy and metric use.
    pub freshness: Arc<Freshness>,
    /// Freshness per origin as delivered by this region's own stream (i.e. by sourcing):
    /// tells the catch-up reader when a source lags and when it has caught up.
    pub sourced: Arc<Freshness>,
    pub metrics: Metrics,
}

impl Applier {
    /// Applies a message published on `subject`. `path` labels the lag metric.
    pub fn apply(&self, subject: &str, payload: &[u8], path: &'static str) {
        let now = crate::now_ms();
        if subject.ends_with(".hb") {
            match decode_heartbeat(payload, Some(subject)) {
                Ok(hb) => {
                    let at = hb.sent_at.min(now);
                    self.freshness.mark(&hb.origin_region, at);
                    if path == "durable" {
                        self.sourced.mark(&hb.origin_region, at);
                    }
                }
                Err(e) => {
                    self.metrics
                        .events
                        .with_label_values(&[path, "invalid"])
                        .inc();
                    tracing::warn!(error = %e, "invalid heartbeat skipped");
                }
            }
            return;
        }
        let ev = match decode_event(payload, Some(subject)) {
            Ok(ev) if subject == event_subject(&ev.origin_region, &ev.event_id) => ev,
            Ok(_) => {
                self.metrics
                    .events
                    .with_label_values(&[path, "invalid"])
                    .inc();
                tracing::warn!(
                    "revocation event on a subject that does not name its event_id; skipped"
                );
                return;
            }
            Err(e) => {
                self.metrics
                    .events
                    .with_label_values(&[path, "invalid"])
                    .inc();
                tracing::warn!(error = %e, "invalid revocation event skipped");
                return;
            }
        };
        let result = self.revoked.apply(&ev, now);
        let label = match result {
            Applied::New => {
                let lag = (now - ev.revoked_at).max(0) as f64 / 1000.0;
                self.metrics
                    .propagation
                    .with_label_values(&[ev.origin_region.as_str(), path])
                    .observe(lag);
                tracing::debug!(event_id = %ev.event_id, origin = %ev.origin_region, path, "revocation applied");
                "applied"
            }
            Applied::Duplicate => "duplicate",
            Applied::Expired => "expired",
        };
        self.metrics.events.with_label_values(&[path, label]).inc();
    }
}
