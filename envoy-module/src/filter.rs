//! The filter's logic, without Envoy: the configuration (the sidecar's own `veto` TOML, read
//! with the same loader and turned into the same [`Decider`] the sidecar builds, its
//! revocations and freshness read from the sidecar's shared memory), and what to do with a
//! request — which headers to set or remove on allow, which response to send on deny,
//! rendered by `veto::authz::render` as the sidecar renders it — and what to count: each
//! check's outcome (an index into `veto::decision::outcomes`, the one list of results and
//! reasons), added to the counters file beside the shared memory that the sidecar exports.
//!
//! Keys: the sidecar publishes the keys it trusts beside its shared-memory file
//! (`<shm_path>.jwks`, see `veto::jwks::KeysPublisher`) and bumps the header's keys
//! generation; each request loads that word and, when it changed, the keys file is read again
//! and the issuers' key sets swapped ([`Keys::refresh`]). Until the sidecar has published
//! keys, an issuer's `jwks_file` (or this filter's `jwks_files`) is used.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use veto::authz::{render, Identity};
use veto::config::Settings;
use veto::decision::{
    outcomes, Credential, Decider, Decision, DecisionMetrics, IssuerHooks, Verified,
};
use veto::revocation::ShmRevocations;
use veto::sidecar::{decider_config, expected_origins, hmac_secret, issuer_policy};
use veto::token::{Alg, KeySet, KeyStore, Validator};

/// The filter's JSON configuration (`filter_config` of the Envoy filter, a
/// `google.protobuf.StringValue`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleConfig {
    /// The sidecar's configuration file: issuers, audiences, algorithms, leeway, lifetimes,
    /// identity headers, `revocation.*` and `inproxy.shm_path` are read from it, so the
    /// module decides under exactly the sidecar's policy. (`VETO__*` environment overrides
    /// apply as for the sidecar — Envoy's environment, so keep them out of it or the same.)
    veto_config: PathBuf,
    /// JWKS files by issuer, read once at configuration: the keys used until the sidecar has
    /// published its own (`<shm_path>.jwks`), for an issuer whose keys the sidecar fetches
    /// from a `jwks_url` (an issuer's own `jwks_file` needs no entry here). Optional: without
    /// one, such an issuer's tokens are refused `unknown_kid` until the sidecar publishes.
    #[serde(default)]
    jwks_files: BTreeMap<String, PathBuf>,
}

/// What the transports' cache keeps per verified token, for this transport: the identity
/// headers and the dynamic metadata, rendered once per token.
#[derive(Default)]
pub struct Answers {
    headers: OnceLock<Vec<(String, Option<String>)>>,
    metadata: OnceLock<Metadata>,
}

/// A value of Envoy dynamic metadata, as the ABI's setters can put it.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    Str(String),
    Num(f64),
    Bool(bool),
    /// A list of scalars (a nested array or object in it is its JSON text).
    List(Vec<Meta>),
}

/// The verified claims as dynamic metadata under one namespace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metadata {
    pub namespace: Arc<str>,
    pub entries: Vec<(String, Meta)>,
}

/// An allowed request's token, whose dynamic metadata (rendered once per token, in its
/// cache entry) the FFI layer sets: the decision's own reference, moved here, so an allow
/// costs no extra reference count.
#[derive(Clone)]
pub struct Allowed(Arc<Verified<Answers>>);

impl Allowed {
    pub fn metadata(&self) -> Option<&Metadata> {
        self.0.answers.metadata.get()
    }
}

impl PartialEq for Allowed {
    fn eq(&self, other: &Allowed) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Allowed").field(&self.metadata()).finish()
    }
}

impl Metadata {
    /// The claims as the sidecar puts them into ext_authz `dynamic_metadata` (every verified
    /// claim, by name): strings, numbers and booleans as such, arrays as lists, an object
    /// (which the ABI's scalar setters cannot nest) as its JSON text; nulls are left out.
    pub fn of(namespace: &Arc<str>, claims: &serde_json::Map<String, Value>) -> Metadata {
        fn scalar(v: &Value) -> Option<Meta> {
            match v {
                Value::Null => None,
                Value::Bool(b) => Some(Meta::Bool(*b)),
                Value::Number(n) => n.as_f64().map(Meta::Num),
                Value::String(s) => Some(Meta::Str(s.clone())),
                other => Some(Meta::Str(other.to_string())),
            }
        }
        let entries = claims
            .iter()
            .filter_map(|(k, v)| {
                let m = match v {
                    Value::Array(a) => Meta::List(a.iter().filter_map(scalar).collect()),
                    v => scalar(v)?,
                };
                Some((k.clone(), m))
            })
            .collect();
        Metadata {
            namespace: namespace.clone(),
            entries,
        }
    }
}

/// One configured filter (shared by Envoy's workers).
pub struct InProxy {
    decider: Decider<Answers, ShmRevocations>,
    /// The decider's revocations, also asked for the keys generation.
    revocations: Arc<ShmRevocations>,
    keys: Keys,
    identity: Identity,
    remove_authorization: bool,
    /// `authz.metadata_namespace` (empty: no dynamic metadata).
    namespace: Arc<str>,
    /// Every check outcome's `(result, reason)` (`veto::decision::outcomes`), the label
    /// values of Envoy's counter and the slots of the counters file.
    pub outcomes: Vec<(&'static str, &'static str)>,
    /// The counters file beside the shared memory (`None`: it could not be opened; the
    /// checks are then counted in Envoy's stats only).
    counters: Option<veto_shm::counters::Counters>,
    /// When Envoy's gauges of what the module sees (table generation, feed position) are
    /// next refreshed (Unix ms): at most once a second, by whichever worker gets there.
    gauges_due_ms: AtomicI64,
}

/// One check: what the request gets, and its outcome (index into [`InProxy::outcomes`]).
#[derive(Debug)]
pub struct Checked {
    pub verdict: Verdict,
    pub outcome: Option<usize>,
    /// The table generation and feed position for Envoy's gauges, when they are due
    /// ([`InProxy::gauges_due`]): `None` on most requests.
    pub gauges: Option<(u64, u64)>,
    /// This request found a new keys generation whose file could not be read (counted in
    /// the counters file already; Envoy's counter is the caller's).
    pub key_reload_failed: bool,
}

/// The issuers' key stores (the validator's, shared) and what reloading them needs.
struct Keys {
    /// The sidecar's keys file (`<shm_path>.jwks`).
    path: PathBuf,
    issuers: Vec<IssuerKeys>,
    /// The keys generation last loaded — or whose load failed: each generation is tried
    /// once, so a bad file costs one read and one log line, not one per request.
    applied: AtomicU64,
    /// Serialises reloads: a worker that sees a new generation while another is reloading
    /// waits for it, so no request is decided with keys older than the generation it saw.
    /// Taken only when the generation changed.
    reload: Mutex<()>,
    /// Reloads that failed (missing or corrupt file), kept keys in use.
    failures: AtomicU64,
}

struct IssuerKeys {
    issuer: String,
    algorithms: Vec<Alg>,
    /// The HS* secret, read from the issuer's `hmac_secret_file` here (never published).
    secret: Option<Arc<[u8]>>,
    store: Arc<KeyStore>,
}

impl Keys {
    /// Brings the key sets up to the sidecar's keys `generation` (0: none published; the
    /// configured files stay). One atomic load when nothing changed; on a change, the keys
    /// file is read once and every published issuer's set swapped in its [`KeyStore`] (as
    /// the sidecar's refresher does). A file that cannot be read or parsed keeps the keys in
    /// use, is counted and logged once for that generation. True when this call's reload
    /// failed.
    fn refresh(&self, generation: u64) -> bool {
        if generation == 0 || self.applied.load(Ordering::Acquire) == generation {
            return false;
        }
        let _one = self.reload.lock().unwrap_or_else(|e| e.into_inner());
        if self.applied.load(Ordering::Acquire) == generation {
            return false;
        }
        let mut failed = false;
        let asked: Vec<(&str, &[Alg])> = self
            .issuers
            .iter()
            .map(|i| (i.issuer.as_str(), i.algorithms.as_slice()))
            .collect();
        match veto::jwks::read_published(&self.path, &asked) {
            Ok(sets) => {
                for (i, set) in self.issuers.iter().zip(sets) {
                    if let Some(set) = set {
                        i.store.replace(set.with_hmac_secret(i.secret.clone()));
                    }
                }
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                failed = true;
                crate::log(&format!(
                    "keys generation {generation}: {e}; keeping the keys in use"
                ));
            }
        }
        self.applied.store(generation, Ordering::Release);
        failed
    }
}

/// What the request gets.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Continue upstream with these request headers set (`Some`) or removed (`None`), and
    /// the token's claims set as dynamic metadata (`None`: no `authz.metadata_namespace`).
    Allow(Vec<(String, Option<String>)>, Option<Allowed>),
    /// Answer locally.
    Respond {
        status: u32,
        headers: Vec<(&'static str, String)>,
        body: String,
        /// Envoy's response code details (access logs): `veto_<reason>`.
        details: String,
    },
}

impl InProxy {
    /// Builds the filter from its JSON configuration; the error is for Envoy's log (the
    /// filter configuration is then refused).
    pub fn from_json(json: &[u8]) -> Result<InProxy, String> {
        let cfg: ModuleConfig =
            serde_json::from_slice(json).map_err(|e| format!("filter_config: {e}"))?;
        let s = Settings::load(&cfg.veto_config).map_err(|e| e.to_string())?;
        let Some(shm) = s.inproxy.shm_path.clone() else {
            return Err(format!(
                "{}: inproxy.shm_path is not set (the sidecar must mirror its revocations)",
                cfg.veto_config.display()
            ));
        };
        if s.nats.is_none() {
            return Err("[nats] is required for the in-proxy mode".into());
        }
        let mut policies = Vec::new();
        let mut hooks = Vec::new();
        let mut keys = Vec::new();
        for (i, iss) in s.issuers.iter().enumerate() {
            let algorithms = iss
                .parsed_algorithms()
                .map_err(|a| format!("issuers[{i}].algorithms: unsupported {a:?}"))?;
            let secret = hmac_secret(iss, i).map_err(|e| format!("{e:#}"))?;
            // A `jwks_url`-only issuer starts without keys: its tokens are refused
            // `unknown_kid` (as the sidecar refuses a kid it does not know) until the sidecar
            // publishes the keys it fetched.
            let set = match cfg.jwks_files.get(&iss.issuer).or(iss.jwks_file.as_ref()) {
                Some(f) => read_jwks(f, &algorithms).map_err(|e| format!("issuers[{i}]: {e}"))?,
                None => KeySet::default(),
            };
            let store = Arc::new(KeyStore::new(Some(set.with_hmac_secret(secret.clone()))));
            keys.push(IssuerKeys {
                issuer: iss.issuer.clone(),
                algorithms: algorithms.clone(),
                secret,
                store: store.clone(),
            });
            policies.push(issuer_policy(iss, algorithms, store));
            hooks.push(IssuerHooks {
                leeway: iss.leeway.as_secs() as i64,
                refetch: None,
            });
        }
        let validator = Validator {
            issuers: policies,
            max_token_bytes: s.authz.max_token_bytes,
        };
        let freshness = Arc::new(expected_origins(&s));
        let revocations = Arc::new(ShmRevocations::new(&shm, &freshness));
        let keys = Keys {
            path: veto::jwks::published_keys_path(&shm),
            issuers: keys,
            applied: AtomicU64::new(0),
            reload: Mutex::new(()),
            failures: AtomicU64::new(0),
        };
        let identity = Identity::new(s.authz.headers.clone());
        let outcomes = outcomes();
        let counters_path = veto_shm::counters::path_beside(&shm);
        let counters = match veto_shm::counters::Counters::open_or_create(&counters_path, &outcomes)
        {
            Ok(c) => Some(c),
            Err(e) => {
                crate::log(&format!(
                    "{}: {e}; checks are counted in Envoy's stats only",
                    counters_path.display()
                ));
                None
            }
        };
        // keys the sidecar already published are in use from the first request
        if keys.refresh(revocations.keys_generation(veto::now_ms())) {
            if let Some(c) = &counters {
                c.add_key_reload_failure();
            }
        }
        let decider = Decider::new(
            validator,
            revocations.clone(),
            freshness,
            hooks,
            decider_config(&s, &identity),
            // cache and staleness counters: not exported in-proxy (checks are, by outcome)
            DecisionMetrics::register(&prometheus::Registry::new()),
        );
        Ok(InProxy {
            decider,
            revocations,
            keys,
            identity,
            remove_authorization: s.authz.remove_authorization,
            namespace: s.authz.metadata_namespace.as_str().into(),
            outcomes,
            counters,
            gauges_due_ms: AtomicI64::new(0),
        })
    }

    /// Decides one request and counts it in the counters file (one relaxed atomic add).
    pub fn check(&self, authorization: Option<(usize, &[u8])>) -> Checked {
        // one clock read for the keys generation's reopen and the gauges
        let now_ms = veto::now_ms();
        let key_reload_failed = self.keys.refresh(self.revocations.keys_generation(now_ms));
        if key_reload_failed {
            if let Some(c) = &self.counters {
                c.add_key_reload_failure();
            }
        }
        let (verdict, outcome) = self.decide_inner(authorization);
        self.count(outcome);
        Checked {
            verdict,
            outcome,
            gauges: self.gauges_due(now_ms),
            key_reload_failed,
        }
    }

    /// Counts a panic caught at the FFI boundary (the check itself is counted as
    /// `error/panic` by [`InProxy::count`]).
    pub fn count_panic(&self) {
        if let Some(c) = &self.counters {
            c.add_panic();
        }
    }

    /// Counts a check in the counters file (also one decided outside [`InProxy::check`]: a
    /// panic's 503).
    pub fn count(&self, outcome: Option<usize>) {
        if let (Some(c), Some(i)) = (&self.counters, outcome) {
            c.add(i);
        }
    }

    /// The outcome index of `(result, reason)`.
    pub fn outcome_of(&self, label: (&str, &str)) -> Option<usize> {
        self.outcomes.iter().position(|o| *o == label)
    }

    /// The table generation and feed position the module sees, when Envoy's gauges are due
    /// for a refresh (at most once a second per configuration): `None` on most requests.
    pub fn gauges_due(&self, now_ms: i64) -> Option<(u64, u64)> {
        let due = self.gauges_due_ms.load(Ordering::Relaxed);
        if now_ms < due
            || self
                .gauges_due_ms
                .compare_exchange(due, now_ms + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let r = self.decider.revoked();
        Some((r.generation(), r.feed_position()))
    }

    /// Decides one request (and counts it, as [`InProxy::check`]).
    pub fn decide(&self, authorization: Option<(usize, &[u8])>) -> Verdict {
        self.check(authorization).verdict
    }

    /// Decides one request. `authorization`: the header's values as Envoy holds them
    /// (`None`: absent; the count of values; the first value's bytes).
    fn decide_inner(&self, authorization: Option<(usize, &[u8])>) -> (Verdict, Option<usize>) {
        let credential = match authorization {
            None | Some((0, _)) => Credential::Absent,
            Some((1, bytes)) => match std::str::from_utf8(bytes) {
                Ok(v) => Credential::Authorization(v),
                Err(_) => Credential::NotText,
            },
            Some(_) => Credential::Ambiguous,
        };
        let decision = now_or_never(self.decider.decide(credential));
        let outcome = match &decision {
            Some(d) => d.outcome(),
            None => self.outcome_of(("error", "pending")),
        };
        let verdict = match decision {
            Some(Decision::Allow(v)) => {
                let mut set = v
                    .answers
                    .headers
                    .get_or_init(|| {
                        self.identity
                            .headers(&v.claims)
                            .map(|(h, value)| (h.to_string(), value))
                            .collect()
                    })
                    .clone();
                if self.remove_authorization {
                    set.push(("authorization".into(), None));
                }
                let allowed = if self.namespace.is_empty() {
                    None
                } else {
                    v.answers
                        .metadata
                        .get_or_init(|| Metadata::of(&self.namespace, &v.claims.all));
                    Some(Allowed(v))
                };
                Verdict::Allow(set, allowed)
            }
            Some(Decision::Deny(d)) => {
                let mut headers = vec![
                    ("www-authenticate", render::challenge(&d)),
                    ("content-type", "application/json".to_string()),
                    ("cache-control", "no-store".to_string()),
                ];
                if let Some(after) = render::retry_after(d.code) {
                    headers.push(("retry-after", after.to_string()));
                }
                Verdict::Respond {
                    status: u32::from(render::http_status(d.code)),
                    headers,
                    body: render::body(&d),
                    details: format!("veto_{}", d.reason.reason()),
                }
            }
            Some(Decision::Error(e)) => unavailable(e),
            // Only a JWKS refetch awaits, and the module has none: never pending. Fail closed.
            None => unavailable("pending"),
        };
        (verdict, outcome)
    }
}

impl InProxy {
    /// The sidecar's keys generation last loaded (or tried) here (0: the configured files).
    pub fn keys_generation(&self) -> u64 {
        self.keys.applied.load(Ordering::Acquire)
    }

    /// Reloads of the sidecar's keys file that failed (the keys in use were kept).
    pub fn key_reload_failures(&self) -> u64 {
        self.keys.failures.load(Ordering::Relaxed)
    }
}

/// A JWKS file's keys for `algorithms`.
fn read_jwks(f: &Path, algorithms: &[Alg]) -> Result<KeySet, String> {
    let doc = std::fs::read(f).map_err(|e| format!("JWKS {}: {e}", f.display()))?;
    KeySet::from_jwks(&doc, algorithms)
        .map(|(set, _)| set)
        .map_err(|e| format!("JWKS {}: {e}", f.display()))
}

/// The answer when Veto cannot decide (a panic, keys never loaded): 503, fail closed.
pub fn unavailable(why: &str) -> Verdict {
    Verdict::Respond {
        status: 503,
        headers: vec![("content-type", "application/json".to_string())],
        body: render::UNAVAILABLE_BODY.to_string(),
        details: format!("veto_error_{why}"),
    }
}

/// Polls `f` once: the decision never awaits without a key refetcher.
fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
