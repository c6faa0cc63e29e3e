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

/// The in-proxy module's checks, read at scrape time from the counters file it writes beside
/// the shared-memory mirror (`veto_shm::counters`): `veto_inproxy_checks_total{result,
/// reason}`, `veto_inproxy_panics_total` and `veto_inproxy_key_reload_failures_total`,
/// summed over every Envoy process sharing the file. No file yet (no module has started), or one this build cannot read: no series,
/// never a scrape error.
#[derive(Clone)]
pub struct InproxyChecks {
    path: std::path::PathBuf,
    descs: Vec<prometheus::core::Desc>,
}

const INPROXY_CHECKS: (&str, &str) = (
    "veto_inproxy_checks_total",
    "Checks decided by the in-proxy Envoy module(s), by result and reason.",
);
const INPROXY_PANICS: (&str, &str) = (
    "veto_inproxy_panics_total",
    "Panics caught by the in-proxy Envoy module(s) (each answered 503).",
);
const INPROXY_KEY_RELOAD_FAILURES: (&str, &str) = (
    "veto_inproxy_key_reload_failures_total",
    "Reloads of the sidecar's published keys that the in-proxy module(s) could not read (they kept the keys in use).",
);

impl InproxyChecks {
    /// Exports the counters file beside `shm_path`.
    pub fn new(shm_path: &std::path::Path) -> InproxyChecks {
        use prometheus::core::Collector;
        let (checks, panics, key_failures) = Self::families();
        let descs = checks
            .desc()
            .into_iter()
            .chain(panics.desc())
            .chain(key_failures.desc())
            .cloned()
            .collect();
        InproxyChecks {
            path: veto_shm::counters::path_beside(shm_path),
            descs,
        }
    }

    fn families() -> (IntCounterVec, IntCounter, IntCounter) {
        let checks = IntCounterVec::new(
            prometheus::Opts::new(INPROXY_CHECKS.0, INPROXY_CHECKS.1),
            &["result", "reason"],
        )
        .expect("static metric");
        let panics = IntCounter::new(INPROXY_PANICS.0, INPROXY_PANICS.1).expect("static metric");
        let key_failures =
            IntCounter::new(INPROXY_KEY_RELOAD_FAILURES.0, INPROXY_KEY_RELOAD_FAILURES.1)
                .expect("static metric");
        (checks, panics, key_failures)
    }
}

impl prometheus::core::Collector for InproxyChecks {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let Ok(snapshot) = veto_shm::counters::read(&self.path) else {
            return Vec::new();
        };
        let (checks, panics, key_failures) = Self::families();
        for (result, reason, n) in &snapshot.checks {
            checks.with_label_values(&[result, reason]).inc_by(*n);
        }
        panics.inc_by(snapshot.panics);
        key_failures.inc_by(snapshot.key_reload_failures);
        let mut out = checks.collect();
        out.extend(panics.collect());
        out.extend(key_failures.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::outcomes;

    fn scrape(shm: &std::path::Path) -> String {
        let r = Registry::new();
        metrics::register(&r, InproxyChecks::new(shm));
        metrics::render(&r)
    }

    #[test]
    fn the_modules_counters_file_is_exported_at_scrape_time() {
        let d = tempfile::tempdir().unwrap();
        let shm = d.path().join("veto-revoked");
        // no module yet: no series, no error
        assert_eq!(scrape(&shm), "");
        let labels = outcomes();
        let c = veto_shm::counters::Counters::open_or_create(
            &veto_shm::counters::path_beside(&shm),
            &labels,
        )
        .unwrap();
        let revoked = labels
            .iter()
            .position(|l| *l == ("deny", "revoked"))
            .unwrap();
        c.add(0);
        c.add(revoked);
        c.add(revoked);
        c.add_panic();
        c.add_key_reload_failure();
        let text = scrape(&shm);
        assert!(
            text.contains("veto_inproxy_checks_total{reason=\"ok\",result=\"allow\"} 1"),
            "{text}"
        );
        assert!(text.contains("veto_inproxy_checks_total{reason=\"revoked\",result=\"deny\"} 2"));
        assert!(text.contains("veto_inproxy_checks_total{reason=\"feed_stale\",result=\"deny\"} 0"));
        assert!(text.contains("veto_inproxy_panics_total 1"));
        assert!(text.contains("veto_inproxy_key_reload_failures_total 1"));
        // read at each scrape
        c.add(0);
        assert!(
            scrape(&shm).contains("veto_inproxy_checks_total{reason=\"ok\",result=\"allow\"} 2")
        );
    }

    #[test]
    fn a_foreign_counters_file_exports_nothing() {
        let d = tempfile::tempdir().unwrap();
        let shm = d.path().join("veto-revoked");
        std::fs::write(
            veto_shm::counters::path_beside(&shm),
            b"VETOCNT1 but not really",
        )
        .unwrap();
        assert_eq!(scrape(&shm), "");
    }
}
