//! Transports for the decision: Envoy ext_authz v3 over gRPC, and HTTP forward-auth. They
//! translate requests into [`crate::decision::Decider::decide`] and its answer back; they
//! decide nothing themselves.

pub mod grpc;
pub mod http;

use crate::decision::{Decision, Transport};
use crate::metrics::Metrics;
use std::time::Instant;

/// Counts one check and its latency (allows through pre-resolved children: no label lookup
/// on the common path).
pub(crate) fn observe(metrics: &Metrics, transport: Transport, started: Instant, d: &Decision) {
    let t = transport as usize;
    match d {
        Decision::Allow(_) => metrics.hot.allow_ok[t].inc(),
        _ => {
            let name = ["grpc", "http"][t];
            metrics
                .checks
                .with_label_values(&[name, d.result_label(), d.reason_label()])
                .inc();
        }
    }
    metrics.hot.duration[t].observe(started.elapsed().as_secs_f64());
}
