//! The checks' metric families, by [`Transport`] and the decision's result and reason. The
//! allow path's children are resolved once per transport, so it does no label lookup.

use super::{Answers, Transport};
use crate::decision::Decision;
use crate::metrics;
use prometheus::{exponential_buckets, Histogram, IntCounter, IntCounterVec, Registry};
use std::time::Instant;

const TRANSPORTS: [Transport; 2] = [Transport::Grpc, Transport::Http];

#[derive(Clone)]
pub struct CheckMetrics {
    checks: IntCounterVec,
    /// `veto_checks_total{result="allow",reason="ok"}` per transport: [grpc, http].
    allow_ok: [IntCounter; 2],
    /// `veto_check_duration_seconds` per transport: [grpc, http].
    duration: [Histogram; 2],
}

impl CheckMetrics {
    pub fn register(r: &Registry) -> CheckMetrics {
        let checks = metrics::counter_vec(
            r,
            "veto_checks_total",
            "Authorization checks by transport, result and reason.",
            &["transport", "result", "reason"],
        );
        let duration = metrics::histogram_vec(
            r,
            "veto_check_duration_seconds",
            "Time to decide one check.",
            &["transport"],
            exponential_buckets(0.000_005, 2.5, 12).expect("static buckets"),
        );
        CheckMetrics {
            allow_ok: TRANSPORTS.map(|t| checks.with_label_values(&[t.label(), "allow", "ok"])),
            duration: TRANSPORTS.map(|t| duration.with_label_values(&[t.label()])),
            checks,
        }
    }

    /// `veto_checks_total{transport, result, reason}` of decision `d` (allows go through
    /// the pre-resolved child).
    pub fn checks<A>(&self, transport: Transport, d: &Decision<A>) -> IntCounter {
        match d {
            Decision::Allow(_) => self.allow_ok[transport as usize].clone(),
            _ => self.checks.with_label_values(&[
                transport.label(),
                d.result_label(),
                d.reason_label(),
            ]),
        }
    }

    /// `veto_checks_total{transport, result="allow", reason="ok"}`, resolved once.
    pub fn allowed(&self, transport: Transport) -> &IntCounter {
        &self.allow_ok[transport as usize]
    }

    /// `veto_check_duration_seconds{transport}`.
    pub fn duration(&self, transport: Transport) -> &Histogram {
        &self.duration[transport as usize]
    }

    /// Counts one check and its latency (allows through pre-resolved children: no label
    /// lookup, no clone on the common path).
    pub(crate) fn observe(&self, transport: Transport, started: Instant, d: &Decision<Answers>) {
        let t = transport as usize;
        match d {
            Decision::Allow(_) => self.allow_ok[t].inc(),
            _ => self.checks(transport, d).inc(),
        }
        self.duration[t].observe(started.elapsed().as_secs_f64());
    }
}
