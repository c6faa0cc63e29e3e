//! Transports for the decision: Envoy ext_authz v3 over gRPC, and HTTP forward-auth. They
//! translate requests into [`crate::decision::Decider::decide`] and its answer back; they
//! decide nothing themselves.

pub mod grpc;
pub mod http;

use crate::decision::Decision;
use crate::metrics::Metrics;
use std::time::Instant;

/// Counts one check and its latency.
pub(crate) fn observe(metrics: &Metrics, transport: &str, started: Instant, d: &Decision) {
    metrics
        .checks
        .with_label_values(&[transport, d.result_label(), d.reason_label()])
        .inc();
    metrics
        .check_duration
        .with_label_values(&[transport])
        .observe(started.elapsed().as_secs_f64());
}
