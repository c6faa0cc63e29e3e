//! The one place where a request is allowed or denied. Transports (`authz::grpc`,
//! `authz::http`) extract the `authorization` header, call [`Decider::decide`], and translate
//! the [`Decision`]; nothing else decides.
//!
//! Order per request: bearer extraction → verified-token cache (a repeat token skips the
//! signature) → on a miss, full validation (with one JWKS refetch on an unknown `kid`) →
//! revocation check (every request) → feed freshness (every request).

use crate::config::{DenyStatus, Isolation, OnStale};
use crate::jwks::Refetcher;
use crate::metrics::Metrics;
use crate::revocation::{Freshness, OriginMask, RevokedBy, RevokedSet};
use crate::token::{header_value, TokenError, Validator, VerifiedToken};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Why a request was denied. `reason()` strings are a stable contract (JSON body, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    MissingToken,
    Token(TokenError),
    Revoked(RevokedBy),
    FeedStale,
}

impl DenyReason {
    pub fn reason(&self) -> &'static str {
        match self {
            DenyReason::MissingToken => "missing_token",
            DenyReason::Token(e) => e.reason(),
            DenyReason::Revoked(_) => "revoked",
            DenyReason::FeedStale => "feed_stale",
        }
    }

    pub fn description(&self) -> String {
        match self {
            DenyReason::MissingToken => "no bearer token".into(),
            DenyReason::Token(e) => e.description(),
            DenyReason::Revoked(RevokedBy::Session) => "session has been revoked".into(),
            DenyReason::Revoked(RevokedBy::Token) => "token has been revoked".into(),
            DenyReason::Revoked(RevokedBy::Subject) => {
                "all sessions of the subject have been revoked".into()
            }
            DenyReason::FeedStale => "revocation feed is stale; try again shortly".into(),
        }
    }
}

/// How a transport should render a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    /// 401, 403 or 503.
    pub http_status: u16,
    /// RFC 6750 challenge.
    pub www_authenticate: String,
    /// `{"error":...,"reason":...}`
    pub body: String,
}

/// A verified token as cached: the token, plus each transport's allow answer, rendered once
/// per token instead of once per request (a repeat token's answer never changes; revocation
/// and freshness are still checked on every request before it is used).
pub struct Verified {
    pub token: VerifiedToken,
    /// Identity headers in their canonical form (`None`: remove the header), in the order of
    /// `authz.headers`; computed once, at verification.
    headers: Vec<(Box<str>, Option<Box<str>>)>,
    /// The issuer key-store generation at which this token's key was last seen published.
    key_checked: AtomicU64,
    /// The revocation origins this token's revocations can come from: when one of them is
    /// stale, `on_stale` applies to it (see `revocation.isolation`).
    deps: OriginMask,
    rendered: [OnceLock<Box<dyn Any + Send + Sync>>; 2],
}

/// Which transport a rendered answer belongs to.
#[derive(Clone, Copy)]
pub enum Transport {
    Grpc = 0,
    Http = 1,
}

impl Verified {
    /// Wraps a verified token with its identity headers (header → claim), refusing it when a
    /// mapped claim is present but not in its canonical form.
    fn new(
        token: VerifiedToken,
        mapping: &BTreeMap<String, String>,
        deps: OriginMask,
    ) -> Result<Verified, TokenError> {
        let headers = mapping
            .iter()
            .map(|(h, claim)| {
                let value = header_value(&token.claims.all, claim)?;
                Ok((h.as_str().into(), value.map(String::into_boxed_str)))
            })
            .collect::<Result<_, TokenError>>()?;
        Ok(Verified {
            key_checked: AtomicU64::new(token.key_generation),
            deps,
            token,
            headers,
            rendered: Default::default(),
        })
    }

    /// The transport's rendering of this token's allow answer, built on first use.
    pub fn rendered<T: Any + Send + Sync>(
        &self,
        transport: Transport,
        build: impl FnOnce() -> T,
    ) -> &T {
        let slot = self.rendered[transport as usize].get_or_init(|| Box::new(build()));
        // Each transport only ever stores its own type in its slot.
        slot.downcast_ref::<T>()
            .unwrap_or_else(|| unreachable!("one type per transport slot"))
    }
}

impl std::ops::Deref for Verified {
    type Target = VerifiedToken;
    fn deref(&self) -> &VerifiedToken {
        &self.token
    }
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.token.fmt(f)
    }
}

#[derive(Debug, Clone)]
pub enum Decision {
    Allow(Arc<Verified>),
    Deny(Denial),
    /// Veto cannot decide (e.g. the issuer's keys were never loaded). Transports answer with
    /// an error status so the proxy's own failure mode applies; the text is internal.
    Error(&'static str),
}

impl Decision {
    pub fn result_label(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(_) => "deny",
            Decision::Error(_) => "error",
        }
    }

    pub fn reason_label(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "ok",
            Decision::Deny(d) => d.reason.reason(),
            Decision::Error(e) => e,
        }
    }
}

pub struct DeciderConfig {
    /// header → claim
    pub headers: BTreeMap<String, String>,
    pub remove_authorization: bool,
    pub revoked_status: DenyStatus,
    pub on_stale: OnStale,
    pub isolation: Isolation,
    /// This sidecar's region (a dependency of every token under `Isolation::Home`).
    pub own_region: Option<String>,
    pub max_staleness: Duration,
    pub cache_capacity: u64,
    /// Leeway per issuer index (seconds), to bound cache entries by `exp + leeway`.
    pub leeway: Vec<i64>,
    /// Envoy dynamic-metadata key under which verified claims are put ("" = top level).
    pub metadata_namespace: String,
}

pub struct Decider {
    validator: Validator,
    cache: moka::sync::Cache<Box<str>, Arc<Verified>>,
    revoked: Arc<RevokedSet>,
    freshness: Arc<Freshness>,
    refetchers: Vec<Option<Arc<Refetcher>>>,
    pub config: DeciderConfig,
    metrics: Metrics,
}

struct UntilExp {
    leeway: Vec<i64>,
}

impl moka::Expiry<Box<str>, Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &Box<str>,
        v: &Arc<Verified>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        let leeway = self.leeway.get(v.issuer).copied().unwrap_or(0);
        let left_ms = (v.claims.exp + leeway) * 1000 - crate::now_ms();
        Some(Duration::from_millis(left_ms.max(0) as u64))
    }
}

/// Extracts an RFC 6750 bearer token from an `Authorization` header value. The scheme is
/// case-insensitive; a non-Bearer scheme counts as no bearer token.
pub fn bearer(authorization: Option<&str>) -> Result<&str, DenyReason> {
    let v = authorization.ok_or(DenyReason::MissingToken)?;
    let v = v.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = v.split_once([' ', '\t']).unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(DenyReason::MissingToken);
    }
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Err(DenyReason::Token(TokenError::Malformed(
            "empty bearer token",
        )));
    }
    Ok(token)
}

impl Decider {
    pub fn new(
        validator: Validator,
        revoked: Arc<RevokedSet>,
        freshness: Arc<Freshness>,
        refetchers: Vec<Option<Arc<Refetcher>>>,
        config: DeciderConfig,
        metrics: Metrics,
    ) -> Decider {
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_capacity)
            .expire_after(UntilExp {
                leeway: config.leeway.clone(),
            })
            .build();
        Decider {
            validator,
            cache,
            revoked,
            freshness,
            refetchers,
            config,
            metrics,
        }
    }

    /// Decides one request from its `Authorization` header value.
    pub async fn decide(&self, authorization: Option<&str>) -> Decision {
        let token = match bearer(authorization) {
            Ok(t) => t,
            Err(r) => return self.deny(r),
        };
        let now_ms = crate::now_ms();
        let verified = match self.verified(token, now_ms).await {
            Ok(v) => v,
            Err(TokenError::KeysUnavailable) => return Decision::Error("keys_unavailable"),
            Err(e) => return self.deny(DenyReason::Token(e)),
        };
        self.after_verification(verified, now_ms)
    }

    /// Synchronous variant for a token already in the cache (benchmarks, tests): `None` on a
    /// cache miss.
    pub fn decide_cached(&self, authorization: Option<&str>) -> Option<Decision> {
        let token = bearer(authorization).ok()?;
        let now_ms = crate::now_ms();
        let v = self.cache.get(token)?;
        Some(self.after_verification(v, now_ms))
    }

    fn after_verification(&self, v: Arc<Verified>, now_ms: i64) -> Decision {
        let c = &v.claims;
        if let Some(by) = self.revoked.check(
            &c.iss,
            &c.sid,
            c.jti.as_deref(),
            c.sub.as_deref(),
            c.iat,
            now_ms,
        ) {
            return self.deny(DenyReason::Revoked(by));
        }
        let max_ms = self.config.max_staleness.as_millis() as i64;
        let stale = self.freshness.stale_mask(now_ms, max_ms);
        if stale != 0 && stale & v.deps == 0 {
            // Served although some origin is stale: none this token depends on.
            for origin in self.freshness.names(stale) {
                self.metrics
                    .served_while_origin_stale
                    .with_label_values(&[origin])
                    .inc();
            }
        } else if stale != 0 {
            let policy = match self.config.on_stale {
                OnStale::Deny => "deny",
                OnStale::Allow => "allow",
            };
            self.metrics
                .stale_decisions
                .with_label_values(&[policy])
                .inc();
            if self.config.on_stale == OnStale::Deny {
                return self.deny(DenyReason::FeedStale);
            }
        }
        Decision::Allow(v)
    }

    async fn verified(&self, token: &str, now_ms: i64) -> Result<Arc<Verified>, TokenError> {
        let now = now_ms.div_euclid(1000);
        if let Some(v) = self.cache.get(token) {
            let leeway = self.config.leeway.get(v.issuer).copied().unwrap_or(0);
            if now >= v.claims.exp + leeway {
                self.cache.invalidate(token);
                return Err(TokenError::Expired);
            }
            // A key withdrawn (or replaced) by a JWKS refresh stops vouching for the tokens
            // it verified at that refresh, not at their `exp`.
            let checked = v.key_checked.load(Ordering::Relaxed);
            match self.validator.key_still_valid(&v.token, checked) {
                Some(generation) => {
                    if generation != checked {
                        v.key_checked.store(generation, Ordering::Relaxed);
                    }
                    self.metrics.hot.cache_hit.inc();
                    return Ok(v);
                }
                // Verify afresh against the current keys: the answer is what a new token
                // signed by the withdrawn key gets (unknown_kid or bad_signature).
                None => self.cache.invalidate(token),
            }
        }
        self.metrics.hot.cache_miss.inc();
        let result = match self.validator.validate(token, now) {
            Err(TokenError::UnknownKid) => {
                // One refetch of that issuer's JWKS (shared, rate-limited), then one retry.
                let refetcher = self
                    .validator
                    .unverified_issuer(token)
                    .and_then(|i| self.refetchers.get(i).cloned().flatten());
                match refetcher {
                    Some(r) if r.refetch_for_unknown_kid().await => {
                        self.validator.validate(token, now)
                    }
                    _ => Err(TokenError::UnknownKid),
                }
            }
            other => other,
        };
        let verified = result?;
        let deps = self.dependencies(&verified);
        let v = Arc::new(Verified::new(verified, &self.config.headers, deps)?);
        self.cache.insert(token.into(), v.clone());
        Ok(v)
    }

    /// The origins a token's revocations can come from. `Global`: every origin. `Home`: its
    /// home region's and this region's own (subject revocations are published in every
    /// region, session and token revocations in the session's home: README "Exposure"); a
    /// token whose home is unknown, or not an expected origin, depends on every origin.
    fn dependencies(&self, token: &VerifiedToken) -> OriginMask {
        let all = self.freshness.all();
        if self.config.isolation == Isolation::Global {
            return all;
        }
        let home = token
            .claims
            .home
            .as_deref()
            .map_or(0, |h| self.freshness.mask_of(h));
        if home == 0 {
            return all;
        }
        let own = self
            .config
            .own_region
            .as_deref()
            .map_or(0, |r| self.freshness.mask_of(r));
        home | own
    }

    /// The expected origins whose staleness makes this sidecar refuse (or, with `on_stale =
    /// allow`, count) every token, at `now_ms`: what readiness reports. `Global`: any stale
    /// origin; `Home`: this region's own (every token depends on it).
    pub fn blocking_stale_origins(&self, now_ms: i64) -> Vec<String> {
        let max_ms = self.config.max_staleness.as_millis() as i64;
        let stale = self.freshness.stale_mask(now_ms, max_ms);
        let scope = match (self.config.isolation, self.config.own_region.as_deref()) {
            (Isolation::Home, Some(own)) => self.freshness.mask_of(own),
            _ => self.freshness.all(),
        };
        self.freshness
            .names(stale & scope)
            .map(str::to_string)
            .collect()
    }

    /// Why this sidecar is not ready for freshness, at `now_ms` (`None`: ready). While
    /// `starting`, every expected origin must also have been heard from once (a replayed
    /// stream holds each source's newest heartbeat, so a cut-off origin counts as heard);
    /// the caller bounds `starting`, so a region that never published cannot hold
    /// readiness forever.
    pub fn freshness_blocker(&self, now_ms: i64, starting: bool) -> Option<String> {
        let stale = self.blocking_stale_origins(now_ms);
        if !stale.is_empty() {
            return Some(format!("revocations from {} are stale", stale.join(", ")));
        }
        let unheard = self.freshness.unheard_mask();
        if starting && unheard != 0 {
            let names: Vec<&str> = self.freshness.names(unheard).collect();
            return Some(format!("nothing heard from {} yet", names.join(", ")));
        }
        None
    }

    fn deny(&self, reason: DenyReason) -> Decision {
        let http_status = match &reason {
            DenyReason::FeedStale => 503,
            DenyReason::Revoked(_)
                if self.config.revoked_status == DenyStatus::PermissionDenied =>
            {
                403
            }
            _ => 401,
        };
        let (www_authenticate, error) = match &reason {
            DenyReason::MissingToken => ("Bearer realm=\"veto\"".to_string(), "unauthorized"),
            other => (
                format!(
                    "Bearer realm=\"veto\", error=\"invalid_token\", error_description=\"{}\"",
                    other.description().replace(['"', '\\'], "")
                ),
                "invalid_token",
            ),
        };
        let body = serde_json::json!({"error": error, "reason": reason.reason()}).to_string();
        Decision::Deny(Denial {
            reason,
            http_status,
            www_authenticate,
            body,
        })
    }

    /// Identity headers for an allowed request: (header, Some(value)) to set (overwriting any
    /// client-supplied value), (header, None) to remove because the token lacks the claim.
    /// Values are in their canonical form (`token::header_value`), checked at verification.
    pub fn identity_headers(v: &Verified) -> impl Iterator<Item = (&str, Option<&str>)> + '_ {
        v.headers.iter().map(|(h, value)| (&**h, value.as_deref()))
    }

    pub fn revoked(&self) -> &Arc<RevokedSet> {
        &self.revoked
    }

    pub fn cache_entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer(None), Err(DenyReason::MissingToken));
        assert_eq!(bearer(Some("Basic abc")), Err(DenyReason::MissingToken));
        assert_eq!(bearer(Some("Bearerabc")), Err(DenyReason::MissingToken));
        assert_eq!(bearer(Some("")), Err(DenyReason::MissingToken));
        assert!(matches!(bearer(Some("Bearer ")), Err(DenyReason::Token(_))));
        assert!(matches!(
            bearer(Some("Bearer    ")),
            Err(DenyReason::Token(_))
        ));
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bEaReR  abc ")), Ok("abc"));
        assert_eq!(bearer(Some("BEARER\tabc")), Ok("abc"));
    }

    mod isolation {
        use super::super::*;
        use crate::token::sign::{jwks, SigningKey};
        use crate::token::{Alg, IssuerPolicy, KeySet, KeyStore};
        use serde_json::json;

        fn decider(isolation: Isolation, key: &SigningKey) -> Decider {
            let (set, _) =
                KeySet::from_jwks(jwks(&[key]).to_string().as_bytes(), &[Alg::ES256]).unwrap();
            let validator = Validator {
                issuers: vec![IssuerPolicy {
                    issuer: "https://iss".into(),
                    audiences: vec!["api".into()],
                    algorithms: vec![Alg::ES256],
                    leeway: 5,
                    session_claim: "sid".into(),
                    max_token_lifetime: 900,
                    required_claims: vec![],
                    home_claim: Some("veto_home".into()),
                    home_region: None,
                    keys: Arc::new(KeyStore::new(Some(set))),
                }],
                max_token_bytes: 8192,
            };
            let freshness = Arc::new(Freshness::expecting(["us", "eu", "ap"]));
            let now = crate::now_ms();
            freshness.mark("us", now);
            freshness.mark("ap", now);
            freshness.mark("eu", now - 60_000); // eu is cut off
            Decider::new(
                validator,
                Arc::new(RevokedSet::new()),
                freshness,
                vec![None],
                DeciderConfig {
                    headers: BTreeMap::new(),
                    remove_authorization: false,
                    revoked_status: DenyStatus::Unauthenticated,
                    on_stale: OnStale::Deny,
                    isolation,
                    own_region: Some("us".into()),
                    max_staleness: Duration::from_secs(30),
                    cache_capacity: 100,
                    leeway: vec![5],
                    metadata_namespace: String::new(),
                },
                Metrics::register(&prometheus::Registry::new()),
            )
        }

        fn token(key: &SigningKey, home: Option<serde_json::Value>) -> String {
            let now = crate::now_ms() / 1000;
            let mut c = json!({"iss":"https://iss","aud":"api","sub":"u","sid":"s","iat":now,"exp":now+600});
            if let Some(h) = home {
                c["veto_home"] = h;
            }
            format!("Bearer {}", key.sign(&c).unwrap())
        }

        async fn outcome(d: &Decider, t: &str) -> &'static str {
            d.decide(Some(t)).await.reason_label()
        }

        #[tokio::test]
        async fn a_stale_origin_refuses_only_what_depends_on_it() {
            let key = SigningKey::generate(Alg::ES256, "k").unwrap();
            let home = decider(Isolation::Home, &key);
            let cases = [
                (Some(json!("us")), "ok"),
                (Some(json!("ap")), "ok"),
                (Some(json!("eu")), "feed_stale"),
                (None, "feed_stale"),              // no home: every origin
                (Some(json!("zz")), "feed_stale"), // a home nobody expects: every origin
                (Some(json!(5)), "invalid_claim"), // one canonical form
                (Some(json!("e.u")), "invalid_claim"),
            ];
            for (h, want) in &cases {
                let t = token(&key, h.clone());
                assert_eq!(outcome(&home, &t).await, *want, "home={h:?}");
                // the cached answer is the same
                assert_eq!(outcome(&home, &t).await, *want, "home={h:?}, cached");
            }
            assert!(
                home.blocking_stale_origins(crate::now_ms()).is_empty(),
                "us is fresh"
            );
            let global = decider(Isolation::Global, &key);
            for (h, want) in &cases {
                let want = if *want == "ok" { "feed_stale" } else { want };
                assert_eq!(
                    outcome(&global, &token(&key, h.clone())).await,
                    want,
                    "{h:?}"
                );
            }
            assert_eq!(global.blocking_stale_origins(crate::now_ms()), ["eu"]);
        }
    }
}
