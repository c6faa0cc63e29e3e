//! The filter's logic, without Envoy: the configuration (the sidecar's own `veto` TOML, read
//! with the same loader and turned into the same [`Decider`] the sidecar builds, its
//! revocations and freshness read from the sidecar's shared memory), and what to do with a
//! request — which headers to set or remove on allow, which response to send on deny,
//! rendered by `veto::authz::render` as the sidecar renders it.
//!
//! Keys: the sidecar publishes the keys it trusts beside its shared-memory file
//! (`<shm_path>.jwks`, see `veto::jwks::KeysPublisher`) and bumps the header's keys
//! generation; each request loads that word and, when it changed, the keys file is read again
//! and the issuers' key sets swapped ([`Keys::refresh`]). Until the sidecar has published
//! keys, an issuer's `jwks_file` (or this filter's `jwks_files`) is used.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use veto::authz::{render, Identity};
use veto::config::Settings;
use veto::decision::{Credential, Decider, Decision, DecisionMetrics, IssuerHooks};
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
/// headers, rendered once per token.
#[derive(Default)]
pub struct Answers {
    headers: OnceLock<Vec<(String, Option<String>)>>,
}

/// One configured filter (shared by Envoy's workers).
pub struct InProxy {
    decider: Decider<Answers, ShmRevocations>,
    /// The decider's revocations, also asked for the keys generation.
    revocations: Arc<ShmRevocations>,
    keys: Keys,
    identity: Identity,
    remove_authorization: bool,
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
    /// use, is counted and logged once for that generation.
    fn refresh(&self, generation: u64) {
        if generation == 0 || self.applied.load(Ordering::Acquire) == generation {
            return;
        }
        let _one = self.reload.lock().unwrap_or_else(|e| e.into_inner());
        if self.applied.load(Ordering::Acquire) == generation {
            return;
        }
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
                crate::KEY_RELOAD_FAILURES.fetch_add(1, Ordering::Relaxed);
                crate::log(&format!(
                    "keys generation {generation}: {e}; keeping the keys in use"
                ));
            }
        }
        self.applied.store(generation, Ordering::Release);
    }
}

/// What the request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Continue upstream with these request headers set (`Some`) or removed (`None`).
    Allow(Vec<(String, Option<String>)>),
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
        // keys the sidecar already published are in use from the first request
        keys.refresh(revocations.keys_generation(veto::now_ms()));
        let identity = Identity::new(s.authz.headers.clone());
        let decider = Decider::new(
            validator,
            revocations.clone(),
            freshness,
            hooks,
            decider_config(&s, &identity),
            // not exported yet (the module's metrics are a later step)
            DecisionMetrics::register(&prometheus::Registry::new()),
        );
        Ok(InProxy {
            decider,
            revocations,
            keys,
            identity,
            remove_authorization: s.authz.remove_authorization,
        })
    }

    /// Decides one request. `authorization`: the header's values as Envoy holds them
    /// (`None`: absent; the count of values; the first value's bytes).
    pub fn decide(&self, authorization: Option<(usize, &[u8])>) -> Verdict {
        let credential = match authorization {
            None | Some((0, _)) => Credential::Absent,
            Some((1, bytes)) => match std::str::from_utf8(bytes) {
                Ok(v) => Credential::Authorization(v),
                Err(_) => Credential::NotText,
            },
            Some(_) => Credential::Ambiguous,
        };
        self.keys
            .refresh(self.revocations.keys_generation(veto::now_ms()));
        match now_or_never(self.decider.decide(credential)) {
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
                Verdict::Allow(set)
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
        }
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
