//! Feed freshness per origin region: when each origin was last known to be delivering.
//! The feed marks origins fresh; the decision path asks whether any expected origin is
//! staler than the bound.

use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Freshness {
    /// origin → last fresh time (unix ms; 0 = never).
    origins: RwLock<BTreeMap<String, Arc<AtomicI64>>>,
}

impl Freshness {
    /// Declares an origin the sidecar expects news from; it is stale until first marked.
    pub fn expect(&self, origin: &str) {
        self.origins.write().entry(origin.to_string()).or_default();
    }

    /// Records that `origin` was known fresh at `at_ms` (never moves backwards).
    pub fn mark(&self, origin: &str, at_ms: i64) {
        let slot = self.origins.read().get(origin).cloned();
        let slot = match slot {
            Some(s) => s,
            None => self
                .origins
                .write()
                .entry(origin.to_string())
                .or_default()
                .clone(),
        };
        slot.fetch_max(at_ms, Ordering::Relaxed);
    }

    /// Staleness per origin at `now_ms`, in milliseconds (`None` = never fresh).
    pub fn staleness(&self, now_ms: i64) -> Vec<(String, Option<i64>)> {
        self.origins
            .read()
            .iter()
            .map(|(o, t)| {
                let t = t.load(Ordering::Relaxed);
                (o.clone(), (t > 0).then(|| (now_ms - t).max(0)))
            })
            .collect()
    }

    /// True when any expected origin is staler than `max_ms` (or was never fresh). With no
    /// origin expected (no feed configured), nothing can be stale.
    pub fn is_stale(&self, now_ms: i64, max_ms: i64) -> bool {
        self.origins.read().values().any(|t| {
            let t = t.load(Ordering::Relaxed);
            t == 0 || now_ms - t > max_ms
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_until_marked_and_after_the_bound() {
        let f = Freshness::default();
        assert!(!f.is_stale(1000, 10), "nothing expected");
        f.expect("us");
        assert!(f.is_stale(1000, 10));
        f.mark("us", 1000);
        assert!(!f.is_stale(1005, 10));
        assert!(f.is_stale(1011, 10));
        f.mark("us", 900); // never backwards
        assert_eq!(f.staleness(1100), vec![("us".to_string(), Some(100))]);
    }
}
