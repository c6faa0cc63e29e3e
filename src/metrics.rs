//! Prometheus metrics, registered on a registry the caller owns (no globals), so tests can
//! run many sidecars in one process.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

/// Children of the request-path metrics resolved once, so the hot path does no label lookups.
#[derive(Clone)]
pub struct Hot {
    pub cache_hit: IntCounter,
    pub cache_miss: IntCounter,
    /// `veto_checks_total{result="allow",reason="ok"}` per transport: [grpc, http].
    pub allow_ok: [IntCounter; 2],
    /// `veto_check_duration_seconds` per transport: [grpc, http].
    pub duration: [Histogram; 2],
}

#[derive(Clone)]
pub struct Metrics {
    pub hot: Hot,
    pub checks: IntCounterVec,
    pub check_duration: HistogramVec,
    pub propagation: HistogramVec,
    pub staleness: prometheus::GaugeVec,
    pub feed_connected: IntGauge,
    pub feed_ready: IntGauge,
    pub feed_last_sequence: IntGauge,
    pub feed_restarts: IntCounter,
    pub feed_stalls: IntCounter,
    pub revocations_held: IntGaugeVec,
    pub revocations_table_bytes: IntGauge,
    pub over_capacity: IntGauge,
    pub events: IntCounterVec,
    pub jwks_refresh: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub stale_decisions: IntCounterVec,
    pub served_while_origin_stale: IntCounterVec,
    pub token_cache: IntCounterVec,
    pub replay_duration: Histogram,
    pub catchup_reads: IntCounterVec,
    pub source_repairs: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Registration only fails on duplicate names, which is a programming error caught by the
    // unit test below; a failed registration still leaves a working (unexported) metric.
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

impl Metrics {
    pub fn register(r: &Registry) -> Metrics {
        let lag_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0, 300.0,
        ];
        let checks = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "veto_checks_total",
                    "Authorization checks by transport, result and reason.",
                ),
                &["transport", "result", "reason"],
            )
            .expect("static metric"),
        );
        let check_duration = reg(
            r,
            HistogramVec::new(
                HistogramOpts::new("veto_check_duration_seconds", "Time to decide one check.")
                    .buckets(exponential_buckets(0.000_005, 2.5, 12).expect("static buckets")),
                &["transport"],
            )
            .expect("static metric"),
        );
        let token_cache = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "veto_token_cache_lookups_total",
                    "Verified-token cache lookups by result.",
                ),
                &["result"],
            )
            .expect("static metric"),
        );
        Metrics {
            hot: Hot {
                cache_hit: token_cache.with_label_values(&["hit"]),
                cache_miss: token_cache.with_label_values(&["miss"]),
                allow_ok: ["grpc", "http"].map(|t| checks.with_label_values(&[t, "allow", "ok"])),
                duration: ["grpc", "http"].map(|t| check_duration.with_label_values(&[t])),
            },
            checks: checks.clone(),
            check_duration: check_duration.clone(),
            propagation: reg(r, HistogramVec::new(
                HistogramOpts::new(
                    "veto_revocation_propagation_seconds",
                    "Revocation propagation lag: time applied here minus revoked_at at the origin.",
                ).buckets(lag_buckets),
                &["origin_region", "path"],
            ).expect("static metric")),
            staleness: reg(r, prometheus::GaugeVec::new(
                Opts::new("veto_feed_staleness_seconds", "Seconds since the feed from this origin was last known fresh."),
                &["origin_region"],
            ).expect("static metric")),
            feed_connected: reg(r, IntGauge::new("veto_feed_connected", "1 while connected to NATS.").expect("static metric")),
            feed_ready: reg(r, IntGauge::new("veto_feed_ready", "1 once the revocation stream has been replayed.").expect("static metric")),
            feed_last_sequence: reg(r, IntGauge::new("veto_feed_last_sequence", "Last stream sequence applied.").expect("static metric")),
            feed_restarts: reg(r, IntCounter::new("veto_feed_consumer_restarts_total", "Times the stream consumer was recreated.").expect("static metric")),
            feed_stalls: reg(
                r,
                IntCounter::new(
                    "veto_feed_consumer_stalls_total",
                    "Times the stream consumer stopped delivering while the stream held more, and was recreated.",
                )
                .expect("static metric"),
            ),
            revocations_held: reg(r, IntGaugeVec::new(
                Opts::new("veto_revocations_held", "Live revocations held, by kind."),
                &["kind"],
            ).expect("static metric")),
            revocations_table_bytes: reg(r, IntGauge::new("veto_revocations_table_bytes", "Bytes held by the revoked-set tables.").expect("static metric")),
            over_capacity: reg(r, IntGauge::new("veto_revocations_over_capacity", "1 when revocations exceed revocation.max_entries (none are dropped).").expect("static metric")),
            events: reg(r, IntCounterVec::new(
                Opts::new(
                    "veto_revocation_events_total",
                    "Revocation events received, by path (durable/fast) and result.",
                ),
                &["path", "result"],
            ).expect("static metric")),
            jwks_refresh: reg(r, IntCounterVec::new(
                Opts::new("veto_jwks_refresh_total", "JWKS loads by issuer and result."),
                &["issuer", "result"],
            ).expect("static metric")),
            jwks_keys: reg(r, IntGaugeVec::new(
                Opts::new("veto_jwks_keys", "Verification keys currently loaded, by issuer."),
                &["issuer"],
            ).expect("static metric")),
            stale_decisions: reg(r, IntCounterVec::new(
                Opts::new("veto_stale_decisions_total", "Checks decided while the feed was stale, by policy."),
                &["policy"],
            ).expect("static metric")),
            served_while_origin_stale: reg(r, IntCounterVec::new(
                Opts::new("veto_served_while_origin_stale_total", "Checks allowed while this origin was stale, because the token does not depend on it (revocation.isolation = home), by stale origin."),
                &["origin"],
            ).expect("static metric")),
            token_cache: token_cache.clone(),
            replay_duration: reg(r, Histogram::with_opts(
                HistogramOpts::new("veto_feed_replay_seconds", "Time from feed start to caught up.")
                    .buckets(exponential_buckets(0.001, 4.0, 10).expect("static buckets")),
            ).expect("static metric")),
            catchup_reads: reg(r, IntCounterVec::new(
                Opts::new(
                    "veto_feed_catchup_reads_total",
                    "Times an origin's stream was read directly because its source lagged.",
                ),
                &["origin_region"],
            ).expect("static metric")),
            source_repairs: reg(r, IntCounterVec::new(
                Opts::new(
                    "veto_stream_source_repairs_total",
                    "Repairs of this region stream's source of an origin that stopped advancing while the origin did not, by result (healed/not_healed/not_applicable/error).",
                ),
                &["origin_region", "result"],
            ).expect("static metric")),
        }
    }

    /// Text exposition of `r`.
    pub fn render(r: &Registry) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if enc.encode(&r.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_without_duplicates() {
        let r = Registry::new();
        let m = Metrics::register(&r);
        m.checks.with_label_values(&["grpc", "allow", "ok"]).inc();
        let text = Metrics::render(&r);
        assert!(
            text.contains("veto_checks_total{reason=\"ok\",result=\"allow\",transport=\"grpc\"} 1")
        );
        // metrics are per registry (no globals): a second sidecar in the same process gets
        // its own complete set
        let r2 = Registry::new();
        let _ = Metrics::register(&r2);
        assert!(Metrics::render(&r2).contains("veto_feed_ready 0"));
        assert!(Metrics::render(&r2)
            .contains("veto_checks_total{reason=\"ok\",result=\"allow\",transport=\"grpc\"} 0"));
    }
}
