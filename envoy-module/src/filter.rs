//! The filter's logic, without Envoy: the configuration (the sidecar's own `veto` TOML, read
//! with the same loader and turned into the same [`Decider`] the sidecar builds, its
//! revocations and freshness read from the sidecar's shared memory), and what to do with a
//! request — which headers to set or remove on allow, which response to send on deny,
//! rendered by `veto::authz::render` as the sidecar renders it.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use veto::authz::{render, Identity};
use veto::config::Settings;
use veto::decision::{Credential, Decider, Decision, DecisionMetrics, IssuerHooks};
use veto::revocation::ShmRevocations;
use veto::sidecar::{decider_config, expected_origins, hmac_secret, issuer_policy};
use veto::token::{KeySet, KeyStore, Validator};

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
    /// JWKS files by issuer, for issuers whose keys the sidecar fetches from a URL: until the
    /// sidecar publishes the current keys in shared memory, the module reads keys from files
    /// only (an issuer's own `jwks_file` needs no entry here). Read once, at configuration.
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
    identity: Identity,
    remove_authorization: bool,
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
        for (i, iss) in s.issuers.iter().enumerate() {
            let algorithms = iss
                .parsed_algorithms()
                .map_err(|a| format!("issuers[{i}].algorithms: unsupported {a:?}"))?;
            let secret = hmac_secret(iss, i).map_err(|e| format!("{e:#}"))?;
            let file = cfg.jwks_files.get(&iss.issuer).or(iss.jwks_file.as_ref());
            let set = match (file, &iss.jwks_url) {
                (Some(f), _) => {
                    let doc = std::fs::read(f)
                        .map_err(|e| format!("issuers[{i}]: JWKS {}: {e}", f.display()))?;
                    KeySet::from_jwks(&doc, &algorithms)
                        .map_err(|e| format!("issuers[{i}]: JWKS {}: {e}", f.display()))?
                        .0
                }
                (None, Some(_)) => {
                    return Err(format!(
                        "issuers[{i}] ({}) has only a jwks_url: give its keys in jwks_files (the sidecar does not publish keys to the module yet)",
                        iss.issuer
                    ))
                }
                (None, None) => KeySet::default(),
            };
            let store = Arc::new(KeyStore::new(Some(set.with_hmac_secret(secret))));
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
        let identity = Identity::new(s.authz.headers.clone());
        let decider = Decider::new(
            validator,
            revocations,
            freshness,
            hooks,
            decider_config(&s, &identity),
            // not exported yet (the module's metrics are a later step)
            DecisionMetrics::register(&prometheus::Registry::new()),
        );
        Ok(InProxy {
            decider,
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
