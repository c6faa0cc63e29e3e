//! The one place where a request is allowed or denied. Transports (`authz::grpc`,
//! `authz::http`) turn their request into a [`Credential`], call [`Decider::decide`], and
//! render the [`Decision`]; nothing else decides, and nothing here knows a transport: a
//! denial is a typed [`DenyCode`], and each transport's cached allow answer lives in a
//! struct the transports own (the `A` of [`Decider<A>`]).
//!
//! Order per request: bearer extraction → verified-token cache (a repeat token skips the
//! signature) → on a miss, full validation (with one JWKS refetch on an unknown `kid`), on
//! the verify pool when there is one ([`crate::verify`]: the sidecar; in-proxy, inline) →
//! revocation check (every request) → feed freshness (every request).

use crate::config::{DenyStatus, Isolation, OnStale};
use crate::metrics;
use crate::revocation::{Freshness, OriginMask, Revocations, RevokedBy, RevokedSet};
use crate::token::{header_value, TokenError, Validator, VerifiedToken};
use prometheus::{IntCounter, IntCounterVec, Registry};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a transport found where the credential should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// No `authorization` header.
    Absent,
    /// The one `authorization` header's value.
    Authorization(&'a str),
    /// More than one `authorization` header: ambiguous, refused rather than picked from.
    Ambiguous,
    /// An `authorization` header whose bytes are not text.
    NotText,
}

/// Fetches an issuer's keys again when a token names an unknown `kid` (single flight and
/// rate-limited by the implementation); true when new keys were installed. `crate::jwks`
/// implements it; tests use a fake.
pub trait KeyRefetch: Send + Sync {
    fn refetch_for_unknown_kid(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

/// How a denial is answered, independent of the transport (each maps it to its own codes:
/// 401/403/503, gRPC UNAUTHENTICATED/PERMISSION_DENIED/UNAVAILABLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCode {
    Unauthenticated,
    PermissionDenied,
    /// Try again shortly (a stale feed).
    Unavailable,
}

/// Why a request was denied. `reason()` strings are a stable contract (JSON body, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    MissingToken,
    Token(TokenError),
    Revoked(RevokedBy),
    FeedStale,
}

impl DenyReason {
    /// One exemplar of every reason a denial can carry, in [`DenyReason::index`] order.
    pub fn exemplars() -> impl Iterator<Item = DenyReason> {
        std::iter::once(DenyReason::MissingToken)
            .chain(
                TokenError::ALL[..DENYING_TOKEN_ERRORS]
                    .iter()
                    .cloned()
                    .map(DenyReason::Token),
            )
            .chain([
                DenyReason::Revoked(RevokedBy::Session),
                DenyReason::FeedStale,
            ])
    }

    /// This reason's position among [`DenyReason::exemplars`] (one per `reason()` label).
    pub fn index(&self) -> usize {
        const TOKEN: usize = DENYING_TOKEN_ERRORS;
        match self {
            DenyReason::MissingToken => 0,
            DenyReason::Token(e) => 1 + e.index(),
            DenyReason::Revoked(_) => 1 + TOKEN,
            DenyReason::FeedStale => 2 + TOKEN,
        }
    }

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

/// A denial: why, and how it is answered (the transports render both, in `authz::render`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    pub code: DenyCode,
}

/// A verified token as cached: the token, plus `answers` — what the transports keep per
/// token (their rendered allow answers, built once per token instead of once per request: a
/// repeat token's answer never changes; revocation and freshness are still checked on every
/// request before it is used).
pub struct Verified<A> {
    pub token: VerifiedToken,
    pub answers: A,
    /// The issuer key-store generation at which this token's key was last seen published.
    key_checked: AtomicU64,
    /// The revocation origins this token's revocations can come from: when one of them is
    /// stale, `on_stale` applies to it (see `revocation.isolation`).
    deps: OriginMask,
}

impl<A: Default> Verified<A> {
    /// Wraps a verified token, refusing it when a claim a transport copies into a header is
    /// present but not in its canonical form (`token::header_value`).
    fn new(
        token: VerifiedToken,
        header_claims: &[String],
        deps: OriginMask,
    ) -> Result<Verified<A>, TokenError> {
        for claim in header_claims {
            header_value(&token.claims.all, claim)?;
        }
        Ok(Verified {
            key_checked: AtomicU64::new(token.key_generation),
            deps,
            token,
            answers: A::default(),
        })
    }
}

impl<A> std::ops::Deref for Verified<A> {
    type Target = VerifiedToken;
    fn deref(&self) -> &VerifiedToken {
        &self.token
    }
}

impl<A> std::fmt::Debug for Verified<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.token.fmt(f)
    }
}

pub enum Decision<A> {
    Allow(Arc<Verified<A>>),
    Deny(Denial),
    /// Veto cannot decide (e.g. the issuer's keys were never loaded). Transports answer with
    /// an error status so the proxy's own failure mode applies; the text is internal.
    Error(&'static str),
}

impl<A> std::fmt::Debug for Decision<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Allow(v) => f.debug_tuple("Allow").field(v).finish(),
            Decision::Deny(d) => f.debug_tuple("Deny").field(d).finish(),
            Decision::Error(e) => f.debug_tuple("Error").field(e).finish(),
        }
    }
}

impl<A> Decision<A> {
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

    /// This decision's position in [`outcomes`] (no label lookup: the module's hot path).
    /// `None` only for an error whose reason is not in [`ERROR_REASONS`].
    pub fn outcome(&self) -> Option<usize> {
        const DENY: usize = 3 + DENYING_TOKEN_ERRORS;
        match self {
            Decision::Allow(_) => Some(0),
            // never built (the decider answers it as an error), counted as one if it were
            Decision::Deny(Denial {
                reason: DenyReason::Token(TokenError::KeysUnavailable),
                ..
            }) => Some(1 + DENY),
            Decision::Deny(d) => Some(1 + d.reason.index()),
            Decision::Error(e) => ERROR_REASONS
                .iter()
                .position(|r| r == e)
                .map(|i| 1 + DENY + i),
        }
    }
}

/// The reasons of [`Decision::Error`] (Veto could not decide), stable `reason` labels: the
/// issuer's keys were never loaded; in-proxy, a decision that would have had to wait (the
/// module has no JWKS refetcher) and a panic caught at the module's FFI boundary; a token
/// the verify pool refused to verify (its queue full, or the wait too long: `[verify]`).
pub const ERROR_REASONS: [&str; 4] = ["keys_unavailable", "pending", "panic", "overloaded"];

/// What a token that did not verify got: a token error (a denial, or `KeysUnavailable`), or
/// no verification at all.
enum Unverified {
    Token(TokenError),
    /// Not verified: the pool shed it (`veto_verify_jobs_total` says why).
    Shed,
}

impl From<TokenError> for Unverified {
    fn from(e: TokenError) -> Self {
        Unverified::Token(e)
    }
}

/// The token errors that are denials: all but the last, `KeysUnavailable`, which is an error
/// (`ERROR_REASONS[0]`: Veto could not decide), so the outcomes list no `deny/keys_unavailable`
/// that could never count.
const DENYING_TOKEN_ERRORS: usize = TokenError::ALL.len() - 1;

/// Every outcome of a check as its `(result, reason)` labels, in a fixed order that
/// [`Decision::outcome`] indexes: `allow/ok`, every deny reason, every error reason. Built
/// from the reasons' own exemplars, so it is the one list of them (the in-proxy module
/// counts by it, and so does the counters file the sidecar exports).
pub fn outcomes() -> Vec<(&'static str, &'static str)> {
    std::iter::once(("allow", "ok"))
        .chain(DenyReason::exemplars().map(|r| ("deny", r.reason())))
        .chain(ERROR_REASONS.iter().map(|e| ("error", *e)))
        .collect()
}

pub struct DeciderConfig {
    /// Claims a transport copies into identity headers: a token whose such claim is present
    /// in another shape than its canonical form is refused (`invalid_claim`).
    pub header_claims: Vec<String>,
    pub revoked_status: DenyStatus,
    pub on_stale: OnStale,
    pub isolation: Isolation,
    /// This sidecar's region (a dependency of every token under `Isolation::Home`).
    pub own_region: Option<String>,
    pub max_staleness: Duration,
    pub cache_capacity: u64,
}

/// What the decider keeps per issuer besides the validator's policy.
#[derive(Clone)]
pub struct IssuerHooks {
    /// Clock skew tolerated (seconds): bounds cache entries by `exp + leeway`.
    pub leeway: i64,
    /// Where an unknown `kid` is refetched (none: a file or a fixed secret).
    pub refetch: Option<Arc<dyn KeyRefetch>>,
}

/// `R`: where revocations and freshness are read — the sidecar's own set (the default), or
/// in-proxy their shared-memory mirror ([`crate::revocation::ShmRevocations`]).
pub struct Decider<A, R: Revocations = RevokedSet> {
    validator: Arc<Validator>,
    /// Where cache misses are verified; none: on the caller's thread.
    pool: Option<Arc<crate::verify::Pool>>,
    cache: moka::sync::Cache<Box<str>, Arc<Verified<A>>>,
    revoked: Arc<R>,
    freshness: Arc<Freshness>,
    /// Per issuer, in the validator's order.
    issuers: Arc<[IssuerHooks]>,
    pub config: DeciderConfig,
    metrics: DecisionMetrics,
}

/// The decision's metric families: token-cache lookups (both children resolved once, so the
/// hot path does no label lookup) and the checks decided while an origin is stale.
#[derive(Clone)]
pub struct DecisionMetrics {
    /// `veto_token_cache_lookups_total{result="hit"}`.
    pub cache_hit: IntCounter,
    /// `veto_token_cache_lookups_total{result="miss"}`.
    pub cache_miss: IntCounter,
    stale_decisions: IntCounterVec,
    served_while_origin_stale: IntCounterVec,
}

impl DecisionMetrics {
    pub fn register(r: &Registry) -> DecisionMetrics {
        let token_cache = metrics::counter_vec(
            r,
            "veto_token_cache_lookups_total",
            "Verified-token cache lookups by result.",
            &["result"],
        );
        DecisionMetrics {
            cache_hit: token_cache.with_label_values(&["hit"]),
            cache_miss: token_cache.with_label_values(&["miss"]),
            stale_decisions: metrics::counter_vec(
                r,
                "veto_stale_decisions_total",
                "Checks decided while the feed was stale, by policy.",
                &["policy"],
            ),
            served_while_origin_stale: metrics::counter_vec(
                r,
                "veto_served_while_origin_stale_total",
                "Checks allowed while this origin was stale, because the token does not depend on it (revocation.isolation = home), by stale origin.",
                &["origin"],
            ),
        }
    }

    /// `veto_stale_decisions_total{policy}`: `policy` is `revocation.on_stale`.
    pub fn stale_decisions(&self, policy: OnStale) -> IntCounter {
        let policy = match policy {
            OnStale::Deny => "deny",
            OnStale::Allow => "allow",
        };
        self.stale_decisions.with_label_values(&[policy])
    }

    /// `veto_served_while_origin_stale_total{origin}`.
    pub fn served_while_origin_stale(&self, origin: &str) -> IntCounter {
        self.served_while_origin_stale.with_label_values(&[origin])
    }
}

struct UntilExp {
    issuers: Arc<[IssuerHooks]>,
}

impl<A> moka::Expiry<Box<str>, Arc<Verified<A>>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &Box<str>,
        v: &Arc<Verified<A>>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        let leeway = self.issuers.get(v.issuer).map_or(0, |i| i.leeway);
        let left_ms = (v.claims.exp + leeway) * 1000 - crate::now_ms();
        Some(Duration::from_millis(left_ms.max(0) as u64))
    }
}

/// Extracts an RFC 6750 bearer token from the credential. The scheme is case-insensitive; a
/// non-Bearer scheme counts as no bearer token; two headers or undecodable bytes are
/// malformed.
pub fn bearer(credential: Credential<'_>) -> Result<&str, DenyReason> {
    let v = match credential {
        Credential::Absent => return Err(DenyReason::MissingToken),
        Credential::Authorization(v) => v,
        Credential::Ambiguous => {
            return Err(DenyReason::Token(TokenError::Malformed(
                "more than one authorization header",
            )))
        }
        Credential::NotText => {
            return Err(DenyReason::Token(TokenError::Malformed(
                "authorization header is not text",
            )))
        }
    };
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

impl<A: Default + Send + Sync + 'static, R: Revocations> Decider<A, R> {
    /// `issuers` holds one entry per validator issuer, in order.
    pub fn new(
        validator: Validator,
        revoked: Arc<R>,
        freshness: Arc<Freshness>,
        issuers: Vec<IssuerHooks>,
        config: DeciderConfig,
        metrics: DecisionMetrics,
    ) -> Decider<A, R> {
        let issuers: Arc<[IssuerHooks]> = issuers.into();
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_capacity)
            .expire_after(UntilExp {
                issuers: issuers.clone(),
            })
            .build();
        Decider {
            validator: Arc::new(validator),
            pool: None,
            cache,
            revoked,
            freshness,
            issuers,
            config,
            metrics,
        }
    }

    /// Decides one request from its credential.
    pub async fn decide(&self, credential: Credential<'_>) -> Decision<A> {
        let token = match bearer(credential) {
            Ok(t) => t,
            Err(r) => return self.deny(r),
        };
        let now_ms = crate::now_ms();
        let verified = match self.verified(token, now_ms).await {
            Ok(v) => v,
            Err(Unverified::Token(TokenError::KeysUnavailable)) => {
                return Decision::Error(ERROR_REASONS[0])
            }
            Err(Unverified::Token(e)) => return self.deny(DenyReason::Token(e)),
            // queue full or waited too long (or a bug: a panic while verifying)
            Err(Unverified::Shed) => return Decision::Error(ERROR_REASONS[3]),
        };
        self.after_verification(verified, now_ms)
    }

    /// Synchronous variant for a token already in the cache (benchmarks, tests): `None` on a
    /// cache miss.
    pub fn decide_cached(&self, credential: Credential<'_>) -> Option<Decision<A>> {
        let token = bearer(credential).ok()?;
        let now_ms = crate::now_ms();
        let v = self.cache.get(token)?;
        Some(self.after_verification(v, now_ms))
    }

    fn after_verification(&self, v: Arc<Verified<A>>, now_ms: i64) -> Decision<A> {
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
        let stale = self.revoked.stale_mask(&self.freshness, now_ms, max_ms);
        if stale != 0 && stale & v.deps == 0 {
            // Served although some origin is stale: none this token depends on.
            for origin in self.freshness.names(stale) {
                self.metrics.served_while_origin_stale(origin).inc();
            }
        } else if stale != 0 {
            self.metrics.stale_decisions(self.config.on_stale).inc();
            if self.config.on_stale == OnStale::Deny {
                return self.deny(DenyReason::FeedStale);
            }
        }
        Decision::Allow(v)
    }

    /// Verifies cache misses on `pool` from now on.
    pub fn with_pool(mut self, pool: Arc<crate::verify::Pool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// [`Validator::validate`], on the pool when there is one.
    async fn validate(&self, token: &str, now: i64) -> Result<VerifiedToken, Unverified> {
        let Some(pool) = &self.pool else {
            return Ok(self.validator.validate(token, now)?);
        };
        let validator = self.validator.clone();
        let token: Box<str> = token.into();
        match pool.run(move || validator.validate(&token, now)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Unverified::Shed),
        }
    }

    async fn verified(&self, token: &str, now_ms: i64) -> Result<Arc<Verified<A>>, Unverified> {
        let now = now_ms.div_euclid(1000);
        if let Some(v) = self.cache.get(token) {
            let leeway = self.issuers.get(v.issuer).map_or(0, |i| i.leeway);
            if now >= v.claims.exp + leeway {
                self.cache.invalidate(token);
                return Err(TokenError::Expired.into());
            }
            // A key withdrawn (or replaced) by a JWKS refresh stops vouching for the tokens
            // it verified at that refresh, not at their `exp`.
            let checked = v.key_checked.load(Ordering::Relaxed);
            match self.validator.key_still_valid(&v.token, checked) {
                Some(generation) => {
                    if generation != checked {
                        v.key_checked.store(generation, Ordering::Relaxed);
                    }
                    self.metrics.cache_hit.inc();
                    return Ok(v);
                }
                // Verify afresh against the current keys: the answer is what a new token
                // signed by the withdrawn key gets (unknown_kid or bad_signature).
                None => self.cache.invalidate(token),
            }
        }
        self.metrics.cache_miss.inc();
        let result = match self.validate(token, now).await {
            Err(Unverified::Token(TokenError::UnknownKid)) => {
                // One refetch of that issuer's JWKS (shared, rate-limited), then one retry.
                let refetcher = self
                    .validator
                    .unverified_issuer(token)
                    .and_then(|i| self.issuers.get(i)?.refetch.clone());
                match refetcher {
                    Some(r) if r.refetch_for_unknown_kid().await => self.validate(token, now).await,
                    _ => Err(TokenError::UnknownKid.into()),
                }
            }
            other => other,
        };
        let verified = result?;
        let deps = self.dependencies(&verified);
        let v = Arc::new(Verified::new(verified, &self.config.header_claims, deps)?);
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
        let stale = self.revoked.stale_mask(&self.freshness, now_ms, max_ms);
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

    fn deny(&self, reason: DenyReason) -> Decision<A> {
        let code = match &reason {
            DenyReason::FeedStale => DenyCode::Unavailable,
            DenyReason::Revoked(_)
                if self.config.revoked_status == DenyStatus::PermissionDenied =>
            {
                DenyCode::PermissionDenied
            }
            _ => DenyCode::Unauthenticated,
        };
        Decision::Deny(Denial { reason, code })
    }

    pub fn revoked(&self) -> &Arc<R> {
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
    fn outcomes_list_every_result_and_reason_once_at_its_index() {
        let list = outcomes();
        let mut decisions: Vec<Decision<()>> = DenyReason::exemplars()
            .map(|reason| {
                Decision::Deny(Denial {
                    reason,
                    code: DenyCode::Unauthenticated,
                })
            })
            .collect();
        decisions.extend(ERROR_REASONS.iter().map(|e| Decision::Error(e)));
        assert_eq!(decisions.len() + 1, list.len());
        for d in &decisions {
            let i = d.outcome().expect("listed");
            assert_eq!(list[i], (d.result_label(), d.reason_label()), "{d:?}");
        }
        assert_eq!(list[0], ("allow", "ok"));
        let mut unique = list.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), list.len());
        assert_eq!(Decision::<()>::Error("elsewhere").outcome(), None);
        // keys_unavailable is an error, never a denial: last of the token errors, not listed
        // as a deny reason, and where it is, counted as the error
        assert_eq!(
            TokenError::KeysUnavailable.index(),
            DENYING_TOKEN_ERRORS,
            "KeysUnavailable must stay the last of TokenError::ALL"
        );
        assert!(!list.contains(&("deny", "keys_unavailable")));
        let as_deny = Decision::<()>::Deny(Denial {
            reason: DenyReason::Token(TokenError::KeysUnavailable),
            code: DenyCode::Unauthenticated,
        });
        assert_eq!(
            list[as_deny.outcome().expect("listed")],
            ("error", "keys_unavailable")
        );
    }

    #[test]
    fn bearer_extraction() {
        use Credential::*;
        let auth = Authorization;
        assert_eq!(bearer(Absent), Err(DenyReason::MissingToken));
        assert_eq!(bearer(auth("Basic abc")), Err(DenyReason::MissingToken));
        assert_eq!(bearer(auth("Bearerabc")), Err(DenyReason::MissingToken));
        assert_eq!(bearer(auth("")), Err(DenyReason::MissingToken));
        assert!(matches!(bearer(auth("Bearer ")), Err(DenyReason::Token(_))));
        assert!(matches!(
            bearer(auth("Bearer    ")),
            Err(DenyReason::Token(_))
        ));
        assert!(matches!(
            bearer(Ambiguous),
            Err(DenyReason::Token(TokenError::Malformed(_)))
        ));
        assert!(matches!(
            bearer(NotText),
            Err(DenyReason::Token(TokenError::Malformed(_)))
        ));
        assert_eq!(bearer(auth("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(auth("bEaReR  abc ")), Ok("abc"));
        assert_eq!(bearer(auth("BEARER\tabc")), Ok("abc"));
    }

    mod isolation {
        use super::super::*;
        use crate::token::sign::{jwks, SigningKey};
        use crate::token::{Alg, IssuerPolicy, KeySet, KeyStore};
        use serde_json::json;

        pub(super) fn decider(isolation: Isolation, key: &SigningKey) -> Decider<()> {
            let (set, _) =
                KeySet::from_jwks(jwks(&[key]).to_string().as_bytes(), &[Alg::ES256]).unwrap();
            let validator = Validator {
                issuers: vec![IssuerPolicy::for_tests(
                    &[Alg::ES256],
                    Arc::new(KeyStore::new(Some(set))),
                )],
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
                vec![IssuerHooks {
                    leeway: 5,
                    refetch: None,
                }],
                DeciderConfig {
                    header_claims: vec![],
                    revoked_status: DenyStatus::Unauthenticated,
                    on_stale: OnStale::Deny,
                    isolation,
                    own_region: Some("us".into()),
                    max_staleness: Duration::from_secs(30),
                    cache_capacity: 100,
                },
                DecisionMetrics::register(&prometheus::Registry::new()),
            )
        }

        pub(super) fn token(key: &SigningKey, home: Option<serde_json::Value>) -> String {
            let now = crate::now_ms() / 1000;
            let mut c = json!({"iss":"https://iss","aud":"api","sub":"u","sid":"s","iat":now,"exp":now+600});
            if let Some(h) = home {
                c["veto_home"] = h;
            }
            format!("Bearer {}", key.sign(&c).unwrap())
        }

        async fn outcome(d: &Decider<()>, t: &str) -> &'static str {
            d.decide(Credential::Authorization(t)).await.reason_label()
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

    /// The verify pool (`[verify]`) seen from the decider: a saturated pool sheds what it
    /// would have to verify, never what the cache answers.
    mod pool {
        use super::super::*;
        use super::isolation::{decider, token};
        use crate::token::sign::SigningKey;
        use crate::token::Alg;
        use crate::verify::{Pool, PoolMetrics};
        use parking_lot::{Condvar, Mutex};
        use serde_json::json;

        async fn check(d: &Decider<()>, t: &str) -> &'static str {
            d.decide(Credential::Authorization(t)).await.reason_label()
        }

        #[tokio::test]
        async fn a_saturated_pool_sheds_misses_and_the_cache_still_answers() {
            let key = SigningKey::generate(Alg::ES256, "k").unwrap();
            let settings = crate::config::Verify {
                threads: 1,
                queue: 1,
                max_wait: Duration::from_secs(5),
                nice: 0,
            };
            let pool = Arc::new(
                Pool::start(
                    &settings,
                    PoolMetrics::register(&prometheus::Registry::new()),
                )
                .unwrap(),
            );
            let d = Arc::new(decider(Isolation::Home, &key).with_pool(pool.clone()));
            let cached = token(&key, Some(json!("us")));
            assert_eq!(check(&d, &cached).await, "ok", "verified on the pool");
            // hold the pool's one thread, then fill its one queue slot
            let gate = Arc::new((Mutex::new(false), Condvar::new(), Mutex::new(false)));
            let g = gate.clone();
            let held = tokio::spawn({
                let pool = pool.clone();
                async move {
                    pool.run(move || {
                        *g.2.lock() = true;
                        let mut open = g.0.lock();
                        while !*open {
                            g.1.wait(&mut open);
                        }
                    })
                    .await
                }
            });
            while !*gate.2.lock() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let queued = tokio::spawn({
                let d = d.clone();
                let t = token(&key, Some(json!("ap")));
                async move { d.decide(Credential::Authorization(&t)).await.reason_label() }
            });
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(!queued.is_finished(), "waits for the pool");
            // a token not cached: refused at once, as Veto cannot decide
            let other = token(&key, Some(json!("us")));
            let shed = d.decide(Credential::Authorization(&other)).await;
            assert_eq!(shed.result_label(), "error");
            assert_eq!(shed.reason_label(), "overloaded");
            // what the cache holds is answered, pool or no pool
            for _ in 0..100 {
                assert_eq!(check(&d, &cached).await, "ok");
            }
            // a forged token the cache cannot hold is shed too, never allowed
            let forged = {
                // one signature character changed (the tenth from the end: whole bits)
                let mut b = other.clone().into_bytes();
                let i = b.len() - 10;
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                String::from_utf8(b).unwrap()
            };
            assert_eq!(check(&d, &forged).await, "overloaded");
            *gate.0.lock() = true;
            gate.1.notify_all();
            held.await.unwrap().unwrap();
            assert_eq!(queued.await.unwrap(), "ok");
            assert_eq!(
                check(&d, &other).await,
                "ok",
                "verified once the pool is free"
            );
            assert_eq!(check(&d, &forged).await, "bad_signature");
        }
    }
    /// The decider with a fake JWKS refetcher: an unknown `kid` triggers exactly one refetch
    /// and one retry; a refetch that brings nothing leaves `unknown_kid`.
    mod refetch {
        use super::super::*;
        use crate::token::sign::{jwks, SigningKey};
        use crate::token::{Alg, IssuerPolicy, KeySet, KeyStore};
        use serde_json::json;
        use std::sync::atomic::AtomicUsize;

        struct FakeJwks {
            store: Arc<KeyStore>,
            next: parking_lot::Mutex<Option<KeySet>>,
            calls: AtomicUsize,
        }

        impl KeyRefetch for FakeJwks {
            fn refetch_for_unknown_kid(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
                Box::pin(async move {
                    self.calls.fetch_add(1, Ordering::SeqCst);
                    match self.next.lock().take() {
                        Some(set) => {
                            self.store.replace(set);
                            true
                        }
                        None => false,
                    }
                })
            }
        }

        fn set(keys: &[&SigningKey]) -> KeySet {
            KeySet::from_jwks(jwks(keys).to_string().as_bytes(), &[Alg::ES256])
                .unwrap()
                .0
        }

        #[tokio::test]
        async fn unknown_kid_refetches_once_then_retries() {
            let k1 = SigningKey::generate(Alg::ES256, "k1").unwrap();
            let k2 = SigningKey::generate(Alg::ES256, "k2").unwrap();
            let store = Arc::new(KeyStore::new(Some(set(&[&k1]))));
            let fake = Arc::new(FakeJwks {
                store: store.clone(),
                next: parking_lot::Mutex::new(Some(set(&[&k1, &k2]))),
                calls: AtomicUsize::new(0),
            });
            let validator = Validator {
                issuers: vec![IssuerPolicy {
                    home_claim: None,
                    ..IssuerPolicy::for_tests(&[Alg::ES256], store)
                }],
                max_token_bytes: 8192,
            };
            let d: Decider<()> = Decider::new(
                validator,
                Arc::new(RevokedSet::new()),
                Arc::new(Freshness::default()),
                vec![IssuerHooks {
                    leeway: 5,
                    refetch: Some(fake.clone()),
                }],
                DeciderConfig {
                    header_claims: vec![],
                    revoked_status: DenyStatus::Unauthenticated,
                    on_stale: OnStale::Deny,
                    isolation: Isolation::Home,
                    own_region: None,
                    max_staleness: Duration::from_secs(30),
                    cache_capacity: 100,
                },
                DecisionMetrics::register(&prometheus::Registry::new()),
            );
            let now = crate::now_ms() / 1000;
            let claims = json!({"iss":"https://iss","aud":"api","sub":"u","sid":"s","iat":now,"exp":now+600});
            let t2 = format!("Bearer {}", k2.sign(&claims).unwrap());
            let decide = |t: String| {
                let d = &d;
                async move { d.decide(Credential::Authorization(&t)).await.reason_label() }
            };
            assert_eq!(
                decide(t2.clone()).await,
                "ok",
                "k2 arrives with the refetch"
            );
            assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
            assert_eq!(decide(t2).await, "ok");
            assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "cached: no refetch");
            let k3 = SigningKey::generate(Alg::ES256, "k3").unwrap();
            let t3 = format!("Bearer {}", k3.sign(&claims).unwrap());
            assert_eq!(decide(t3).await, "unknown_kid");
            assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
            // a forged token never reaches the refetcher through a known kid
            let forged = SigningKey::generate(Alg::ES256, "k1").unwrap();
            let tf = format!("Bearer {}", forged.sign(&claims).unwrap());
            assert_eq!(decide(tf).await, "bad_signature");
            assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        }
    }
}
