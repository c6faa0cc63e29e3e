//! Readiness as a set of named latches: the sidecar is ready only while every component
//! reports ready. A component that dies sets itself unready (and says why).

use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<RwLock<BTreeMap<String, Option<String>>>>,
}

impl Readiness {
    /// Registers a component as not ready yet, with the reason.
    pub fn register(&self, component: impl Into<String>, why: &str) {
        self.inner
            .write()
            .insert(component.into(), Some(why.to_string()));
    }

    pub fn set_ready(&self, component: impl Into<String>) {
        self.inner.write().insert(component.into(), None);
    }

    pub fn set_unready(&self, component: impl Into<String>, why: &str) {
        self.inner
            .write()
            .insert(component.into(), Some(why.to_string()));
    }

    pub fn is_ready(&self) -> bool {
        self.inner.read().values().all(Option::is_none)
    }

    /// Components not ready, with their reasons.
    pub fn blockers(&self) -> Vec<(String, String)> {
        self.inner
            .read()
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|why| (k.clone(), why.clone())))
            .collect()
    }
}
