//! Readiness as a set of latches plus live checks: the sidecar is ready only while every latch
//! reports ready and every live check passes. Each component holds a typed [`Latch`] for its
//! own entry (no string keys handed around); a component that dies sets itself unready, and
//! says why. A live check is evaluated when readiness is asked, so `/readyz` agrees with the
//! decision path at that instant instead of trailing it by a tick.

use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// What can hold the sidecar unready. Its [`fmt::Display`] is the key in `/readyz`'s
/// `waiting_for` (a contract: `jwks:<issuer>`, `feed`, `freshness`, `revocations`, `shutdown`,
/// or a task's name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// An issuer's keys.
    Jwks(String),
    /// The revocation stream's replay.
    Feed,
    /// Every origin the decision depends on is fresh (a live check).
    Freshness,
    /// The revoked set within its memory bound.
    Revocations,
    /// SIGTERM received: draining.
    Shutdown,
    /// A background task that stopped unexpectedly.
    Task(&'static str),
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Jwks(issuer) => write!(f, "jwks:{issuer}"),
            Component::Feed => f.write_str("feed"),
            Component::Freshness => f.write_str("freshness"),
            Component::Revocations => f.write_str("revocations"),
            Component::Shutdown => f.write_str("shutdown"),
            Component::Task(name) => f.write_str(name),
        }
    }
}

/// A check evaluated on every readiness query: `Some(why)` while not ready.
pub type LiveCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Default)]
struct Inner {
    latches: BTreeMap<Component, Option<String>>,
    live: BTreeMap<Component, LiveCheck>,
}

#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<RwLock<Inner>>,
}

/// One component's entry in [`Readiness`].
#[derive(Clone)]
pub struct Latch {
    readiness: Readiness,
    component: Component,
}

impl Latch {
    pub fn ready(&self) {
        self.readiness
            .inner
            .write()
            .latches
            .insert(self.component.clone(), None);
    }

    pub fn unready(&self, why: &str) {
        self.readiness
            .inner
            .write()
            .latches
            .insert(self.component.clone(), Some(why.to_string()));
    }
}

impl Readiness {
    /// The latch of `component`, which starts unready with `why` (or keeps its state if it
    /// was registered before).
    pub fn latch(&self, component: Component, why: &str) -> Latch {
        self.inner
            .write()
            .latches
            .entry(component.clone())
            .or_insert_with(|| Some(why.to_string()));
        Latch {
            readiness: self.clone(),
            component,
        }
    }

    /// Registers a live check under `component` (replacing any earlier one).
    pub fn register_live(&self, component: Component, check: LiveCheck) {
        self.inner.write().live.insert(component, check);
    }

    pub fn is_ready(&self) -> bool {
        let inner = self.inner.read();
        inner.latches.values().all(Option::is_none) && inner.live.values().all(|c| c().is_none())
    }

    /// Components not ready, with their reasons, by key.
    pub fn blockers(&self) -> Vec<(String, String)> {
        let inner = self.inner.read();
        let mut out: Vec<(String, String)> = inner
            .latches
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|why| (k.to_string(), why.clone())))
            .collect();
        out.extend(
            inner
                .live
                .iter()
                .filter_map(|(k, c)| c().map(|why| (k.to_string(), why))),
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
        let feed = r.latch(Component::Feed, "not replayed");
        assert_eq!(r.blockers(), vec![("feed".into(), "not replayed".into())]);
        feed.ready();
        let stale = Arc::new(AtomicBool::new(true));
        let s = stale.clone();
        r.register_live(
            Component::Freshness,
            Arc::new(move || s.load(Ordering::Relaxed).then(|| "us is stale".to_string())),
        );
        assert!(!r.is_ready());
        assert_eq!(
            r.blockers(),
            vec![("freshness".into(), "us is stale".into())]
        );
        stale.store(false, Ordering::Relaxed);
        assert!(r.is_ready(), "a live check follows at once, no tick");
        // a second latch of the same component keeps the first one's state
        let again = r.latch(Component::Feed, "ignored");
        assert!(r.is_ready());
        again.unready("lost");
        assert_eq!(r.blockers(), vec![("feed".into(), "lost".into())]);
        assert_eq!(
            Component::Jwks("https://a".into()).to_string(),
            "jwks:https://a"
        );
    }
}
