//! Readiness as a set of named latches plus live checks: the sidecar is ready only while
//! every latch reports ready and every live check passes. A component that dies sets itself
//! unready (and says why). A live check is evaluated when readiness is asked, so `/readyz`
//! agrees with the decision path at that instant instead of trailing it by a tick.

use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A check evaluated on every readiness query: `Some(why)` while not ready.
pub type LiveCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Default)]
struct Inner {
    latches: BTreeMap<String, Option<String>>,
    live: BTreeMap<String, LiveCheck>,
}

#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<RwLock<Inner>>,
}

impl Readiness {
    /// Registers a component as not ready yet, with the reason.
    pub fn register(&self, component: impl Into<String>, why: &str) {
        self.inner
            .write()
            .latches
            .insert(component.into(), Some(why.to_string()));
    }

    /// Registers a live check under `component` (replacing any earlier one).
    pub fn register_live(&self, component: impl Into<String>, check: LiveCheck) {
        self.inner.write().live.insert(component.into(), check);
    }

    pub fn set_ready(&self, component: impl Into<String>) {
        self.inner.write().latches.insert(component.into(), None);
    }

    pub fn set_unready(&self, component: impl Into<String>, why: &str) {
        self.inner
            .write()
            .latches
            .insert(component.into(), Some(why.to_string()));
    }

    pub fn is_ready(&self) -> bool {
        let inner = self.inner.read();
        inner.latches.values().all(Option::is_none) && inner.live.values().all(|c| c().is_none())
    }

    /// Components not ready, with their reasons.
    pub fn blockers(&self) -> Vec<(String, String)> {
        let inner = self.inner.read();
        let mut out: Vec<(String, String)> = inner
            .latches
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|why| (k.clone(), why.clone())))
            .collect();
        out.extend(
            inner
                .live
                .iter()
                .filter_map(|(k, c)| c().map(|why| (k.clone(), why))),
        );
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn latches_and_live_checks_both_count() {
        let r = Readiness::default();
        assert!(r.is_ready());
        r.register("feed", "not replayed");
        assert_eq!(r.blockers(), vec![("feed".into(), "not replayed".into())]);
        r.set_ready("feed");
        let stale = Arc::new(AtomicBool::new(true));
        let s = stale.clone();
        r.register_live(
            "freshness",
            Arc::new(move || s.load(Ordering::Relaxed).then(|| "us is stale".to_string())),
        );
        assert!(!r.is_ready());
        assert_eq!(
            r.blockers(),
            vec![("freshness".into(), "us is stale".into())]
        );
        stale.store(false, Ordering::Relaxed);
        assert!(r.is_ready(), "a live check follows at once, no tick");
    }
}
