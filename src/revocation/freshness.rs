//! Feed freshness per origin region: when each origin was last known to be delivering.
//! The feed marks origins fresh; the decision path asks which expected origins are staler
//! than the bound, as a bit mask it can intersect with what a token depends on.

use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A set of expected origins: bit `i` is the `i`-th origin given to [`Freshness::expecting`].
pub type OriginMask = u64;

/// Most origins one sidecar can expect (one bit each in an [`OriginMask`]).
pub const MAX_ORIGINS: usize = 64;

#[derive(Default)]
pub struct Freshness {
    /// Expected origins, in a fixed order (index = bit), with their last fresh time (unix ms;
    /// 0 = never). Fixed at construction: the request path reads it without a lock.
    expected: Vec<(String, AtomicI64)>,
    /// Origins heard from without being expected: reported, never counted as stale.
    others: RwLock<BTreeMap<String, Arc<AtomicI64>>>,
}

impl Freshness {
    /// Expects news from each of `origins` (duplicates ignored, at most [`MAX_ORIGINS`]; the
    /// rest are not tracked — config validation keeps lists below that). Each is stale until
    /// first marked.
    pub fn expecting<I, S>(origins: I) -> Freshness
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut expected: Vec<(String, AtomicI64)> = Vec::new();
        for o in origins {
            let o = o.into();
            if expected.len() < MAX_ORIGINS && !expected.iter().any(|(e, _)| *e == o) {
                expected.push((o, AtomicI64::new(0)));
            }
        }
        Freshness {
            expected,
            others: RwLock::default(),
        }
    }

    /// The bit of an expected origin (`0` for an origin not expected).
    pub fn mask_of(&self, origin: &str) -> OriginMask {
        self.expected
            .iter()
            .position(|(o, _)| o == origin)
            .map_or(0, |i| 1 << i)
    }

    /// Every expected origin.
    pub fn all(&self) -> OriginMask {
        match self.expected.len() {
            MAX_ORIGINS => OriginMask::MAX,
            n => (1 << n) - 1,
        }
    }

    /// The names of the origins in `mask`, in order.
    pub fn names(&self, mask: OriginMask) -> impl Iterator<Item = &str> + '_ {
        self.expected
            .iter()
            .enumerate()
            .filter(move |(i, _)| mask & (1 << i) != 0)
            .map(|(_, (o, _))| o.as_str())
    }

    /// Each expected origin's last fresh time (Unix ms; 0 = never), in order: what the
    /// in-proxy mirror publishes.
    pub fn fresh_times(&self) -> impl Iterator<Item = i64> + '_ {
        self.expected.iter().map(|(_, t)| t.load(Ordering::Relaxed))
    }

    /// Records that `origin` was known fresh at `at_ms` (never moves backwards).
    pub fn mark(&self, origin: &str, at_ms: i64) {
        if let Some((_, t)) = self.expected.iter().find(|(o, _)| o == origin) {
            t.fetch_max(at_ms, Ordering::Relaxed);
            return;
        }
        let slot = self.others.read().get(origin).cloned();
        let slot = match slot {
            Some(s) => s,
            None => self
                .others
                .write()
                .entry(origin.to_string())
                .or_default()
                .clone(),
        };
        slot.fetch_max(at_ms, Ordering::Relaxed);
    }

    /// Staleness per origin at `now_ms`, in milliseconds (`None` = never fresh): the
    /// expected ones, then any other heard from, by name.
    pub fn staleness(&self, now_ms: i64) -> Vec<(String, Option<i64>)> {
        let age = |t: &AtomicI64| {
            let t = t.load(Ordering::Relaxed);
            (t > 0).then(|| (now_ms - t).max(0))
        };
        let mut out: Vec<_> = self
            .expected
            .iter()
            .map(|(o, t)| (o.clone(), age(t)))
            .collect();
        out.extend(self.others.read().iter().map(|(o, t)| (o.clone(), age(t))));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The expected origins staler than `max_ms` at `now_ms` (or never fresh). Lock-free: one
    /// atomic load per expected origin.
    pub fn stale_mask(&self, now_ms: i64, max_ms: i64) -> OriginMask {
        let mut mask = 0;
        for (i, (_, t)) in self.expected.iter().enumerate() {
            let t = t.load(Ordering::Relaxed);
            if t == 0 || now_ms - t > max_ms {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// The expected origins never heard from.
    pub fn unheard_mask(&self) -> OriginMask {
        self.stale_mask(0, i64::MAX)
    }

    /// True when any expected origin is staler than `max_ms` (or was never fresh). With no
    /// origin expected (no feed configured), nothing can be stale.
    pub fn is_stale(&self, now_ms: i64, max_ms: i64) -> bool {
        self.stale_mask(now_ms, max_ms) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_until_marked_and_after_the_bound() {
        assert!(!Freshness::default().is_stale(1000, 10), "nothing expected");
        let f = Freshness::expecting(["us"]);
        assert!(f.is_stale(1000, 10));
        f.mark("us", 1000);
        assert!(!f.is_stale(1005, 10));
        assert!(f.is_stale(1011, 10));
        f.mark("us", 900); // never backwards
        assert_eq!(f.staleness(1100), vec![("us".to_string(), Some(100))]);
    }

    #[test]
    fn masks_name_each_expected_origin() {
        let f = Freshness::expecting(["us", "eu", "ap", "eu"]);
        assert_eq!(f.all(), 0b111);
        assert_eq!(f.mask_of("eu"), 0b010);
        assert_eq!(f.mask_of("zz"), 0);
        f.mark("us", 1000);
        f.mark("ap", 1000);
        assert_eq!(f.stale_mask(1005, 10), 0b010, "eu never heard from");
        assert_eq!(f.unheard_mask(), 0b010);
        f.mark("eu", 1000);
        assert_eq!(f.stale_mask(1005, 10), 0);
        f.mark("us", 2000);
        assert_eq!(f.stale_mask(2005, 10), 0b110);
        assert_eq!(f.names(0b110).collect::<Vec<_>>(), ["eu", "ap"]);
        // an origin nobody expects is reported, never stale
        f.mark("zz", 1);
        assert_eq!(f.stale_mask(2005, 10), 0b110);
        assert!(f.staleness(2005).iter().any(|(o, _)| o == "zz"));
        let many = Freshness::expecting((0..70).map(|i| format!("r{i}")));
        assert_eq!(many.all(), u64::MAX);
    }
}
