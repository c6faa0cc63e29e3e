//! OIDC Back-Channel Logout 1.0 receiver (incorporating errata set 1, 2023-12-15):
//! `POST /v1/backchannel-logout/{idp}` from each configured upstream IdP.
//!
//! This module owns the validation of logout tokens ([`Receiver::validate`]), the replay
//! memory of their `(iss, jti)`, each upstream's key store and JWKS refresher (the sidecar's
//! [`crate::jwks::Refetcher`], not a second fetcher), the `veto_authority_backchannel_*`
//! metrics, and the HTTP translation ([`routes`]). What a valid logout *does* is not here: it
//! is a [`LogoutEffect`] the caller supplies (the authority revokes the sessions).
//!
//! Checks, in this order (§2.6 of the spec, ASVS 5 10.5.5), the first failure answering:
//! known upstream; a compact JWS (a JWE is refused, none is configured); `alg` in the
//! upstream's list (never `none`, never HS*); the key only from the upstream's JWKS by `kid`
//! (embedded `jwk`/`jku`/`x5u`/`x5c` are never read), bound to its algorithm; an unknown `kid`
//! costs one rate-limited refetch, then is refused; the signature; `typ`; `iss`; `aud`; `iat`;
//! `exp`; `jti`; `events`; `sub`/`sid`; no `nonce`; not a replay. Signature before claims: a
//! forged token never learns more than `bad_signature`.

use crate::authority::config::Upstream;
use crate::jwks::{JwksMetrics, Refetcher, RefetcherConfig, Source};
use crate::metrics;
use crate::readiness::{Component, Readiness};
use crate::token::{
    audiences, fingerprint, id_claim, numeric_date, verify_jws, Alg, Header, KeyStore, TokenError,
    VerifiedJws,
};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::future::BoxFuture;
use prometheus::{IntCounter, IntCounterVec, Registry};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The `events` member that makes a JWT a logout token (§2.4); its value is a JSON object.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Largest request body (and so logout token) accepted. Real logout tokens are < 2 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// `Retry-After` of a 503, in seconds.
pub const RETRY_AFTER_S: u64 = 5;

/// Replay memory per upstream, in entries (each a 128-bit hash and a deadline). Only tokens
/// that passed every other check are remembered, so only the IdP can fill it.
const REPLAY_CAPACITY: u64 = 100_000;

/// A validated logout: what the [`LogoutEffect`] acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutOrder {
    /// The upstream's configured name (the `{idp}` path segment).
    pub idp: String,
    pub issuer: String,
    /// Every session created with this upstream `{iss, sid}` ends.
    pub sid: Option<String>,
    /// Without `sid`: every session of this subject issued before `iat` ends.
    pub sub: Option<String>,
    /// Seconds since the epoch: the not-before of a subject revocation (never receipt time,
    /// so a delayed token cannot end sessions created after it was issued).
    pub iat: i64,
    pub jti: String,
}

/// Why a logout request was refused. Variants are stable: [`Refusal::reason`] is the log and
/// metric vocabulary, [`Refusal::error`] the OAuth `error` of the JSON body. No variant
/// carries token content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No upstream of that name (HTTP 404).
    #[error("unknown identity provider")]
    UnknownIdp,
    /// The form itself: content type, encoding, `logout_token` missing or repeated.
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request body is larger than 16 KiB")]
    BodyTooLarge,
    /// Five parts: a JWE. Encrypted logout tokens are not supported.
    #[error("encrypted logout tokens are not accepted")]
    Encrypted,
    /// Structure, algorithm, key, signature and registered-claim failures, in the token
    /// module's vocabulary.
    #[error(transparent)]
    Token(TokenError),
    /// `typ` other than `logout+jwt` (or `JWT` where the upstream is configured for it).
    #[error("typ is not logout+jwt")]
    WrongTyp,
    /// `iat` older than the upstream's `max_age` (+ leeway).
    #[error("logout token is too old")]
    TooOld,
    /// `events` absent, not an object, without the back-channel logout member, or that
    /// member's value not an object: not a logout token (an ID token, say).
    #[error("events does not carry the back-channel logout event")]
    NotLogoutToken,
    /// Neither `sub` nor `sid`.
    #[error("logout token names neither sub nor sid")]
    NoSubject,
    /// `nonce` is forbidden in a logout token (it tells it from an ID token).
    #[error("nonce is not allowed in a logout token")]
    Nonce,
    /// This `(iss, jti)` was accepted before.
    #[error("logout token was already used")]
    Replay,
    /// The upstream's keys were never loaded (or cannot be now), or the effect cannot be
    /// applied now: the IdP should retry (HTTP 503 + `Retry-After`).
    #[error("temporarily unavailable, retry later")]
    Unavailable,
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Refusal {
        match e {
            TokenError::KeysUnavailable => Refusal::Unavailable,
            e => Refusal::Token(e),
        }
    }
}

impl Refusal {
    /// Stable, low-cardinality reason code (logs; the token module's codes for `Token`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnknownIdp => "unknown_idp",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::Encrypted => "encrypted",
            Refusal::Token(e) => e.reason(),
            Refusal::WrongTyp => "wrong_typ",
            Refusal::TooOld => "too_old",
            Refusal::NotLogoutToken => "not_a_logout_token",
            Refusal::NoSubject => "no_sub_or_sid",
            Refusal::Nonce => "nonce_present",
            Refusal::Replay => "replay",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// The OAuth 2.0 `error` code of the JSON body (§2.8: `invalid_request` for a 400).
    pub fn error(&self) -> &'static str {
        match self {
            Refusal::UnknownIdp => "not_found",
            Refusal::Unavailable => "temporarily_unavailable",
            _ => "invalid_request",
        }
    }

    /// A description safe to return to the IdP: never token content.
    pub fn description(&self) -> String {
        match self {
            Refusal::Token(e) => e.description(),
            other => other.to_string(),
        }
    }

    /// The metric `result` this refusal counts as.
    pub fn outcome(&self) -> Outcome {
        match self {
            Refusal::Replay => Outcome::Replay,
            Refusal::Unavailable => Outcome::Unavailable,
            _ => Outcome::Invalid,
        }
    }
}

/// The `result` label of `veto_authority_backchannel_logouts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Invalid,
    Replay,
    Unavailable,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Invalid,
        Outcome::Replay,
        Outcome::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::Replay => "replay",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// The receiver's metric family, registered once.
#[derive(Clone)]
pub struct BackchannelMetrics {
    logouts: IntCounterVec,
}

impl BackchannelMetrics {
    pub fn register(r: &Registry) -> BackchannelMetrics {
        BackchannelMetrics {
            logouts: metrics::counter_vec(
                r,
                "veto_authority_backchannel_logouts_total",
                "Back-channel logout requests by upstream and result (unknown upstreams are not counted).",
                &["idp", "result"],
            ),
        }
    }

    /// `veto_authority_backchannel_logouts_total{idp, result}`.
    pub fn logouts(&self, idp: &str, result: Outcome) -> IntCounter {
        self.logouts.with_label_values(&[idp, result.label()])
    }
}

/// What a validated logout does; the authority's implementation revokes sessions in every
/// region. A `BoxFuture` keeps the trait object-safe without `async_trait`.
pub trait LogoutEffect: Send + Sync {
    fn apply(&self, order: LogoutOrder) -> BoxFuture<'_, Result<(), EffectError>>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EffectError {
    /// The revocations could not be durably published now; the IdP retries (HTTP 503).
    #[error("logout cannot be applied now")]
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream {0:?}: {1:?} is not an asymmetric JWS algorithm (never none or HS*)")]
    Algorithm(String, String),
    #[error("upstream {0:?}: set exactly one of jwks_url, jwks_file")]
    Source(String),
    #[error("upstream {0:?}: {1}")]
    Jwks(String, crate::jwks::FetchError),
}

/// One upstream: its policy, keys, refresher and replay memory.
struct Idp {
    name: String,
    issuer: String,
    client_id: String,
    algorithms: Vec<Alg>,
    max_age: i64,
    leeway: i64,
    accept_typ_jwt: bool,
    allow_missing_exp: bool,
    keys: Arc<KeyStore>,
    /// Loads `keys`: on a schedule, and once (rate-limited, single flight) on an unknown
    /// `kid` or while nothing is loaded.
    refetcher: Arc<Refetcher>,
    /// `hash(iss, jti)` → the second until which it counts as a replay (`iat + max_age +
    /// leeway`; after that the `iat` check refuses the token anyway).
    seen: moka::sync::Cache<u128, i64>,
}

/// The back-channel logout receiver: every configured upstream, by name.
pub struct Receiver {
    idps: Vec<Idp>,
    metrics: BackchannelMetrics,
}

fn secs(d: Duration) -> i64 {
    // bounded far from overflow in the additions below (≈ 31 years)
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX).min(1 << 30)
}

impl Receiver {
    /// Builds the receiver: one key store (empty until the first load) and one JWKS
    /// refresher per upstream. Nothing is fetched yet: run [`Receiver::run_refreshers`] (or
    /// [`Receiver::load_now`]).
    pub fn new(
        upstreams: &[Upstream],
        jwks: JwksMetrics,
        metrics: BackchannelMetrics,
    ) -> Result<Receiver, BuildError> {
        let mut idps = Vec::with_capacity(upstreams.len());
        for u in upstreams {
            let mut algorithms = Vec::with_capacity(u.algorithms.len());
            for a in &u.algorithms {
                match Alg::parse(a) {
                    Some(alg) if !alg.is_hmac() => algorithms.push(alg),
                    _ => return Err(BuildError::Algorithm(u.name.clone(), a.clone())),
                }
            }
            let source = match (&u.jwks_url, &u.jwks_file) {
                (Some(url), None) => Source::Url(url.clone()),
                (None, Some(f)) => Source::File(f.clone()),
                _ => return Err(BuildError::Source(u.name.clone())),
            };
            let keys = Arc::new(KeyStore::new(None));
            let refetcher = Refetcher::new(
                RefetcherConfig {
                    issuer: u.issuer.clone(),
                    source,
                    allowed: algorithms.clone(),
                    // never: HS* is not a logout-token algorithm
                    hmac_secret: None,
                    refresh: u.jwks_refresh_interval,
                    min_refetch: u.jwks_min_refetch_interval,
                    timeout: u.jwks_fetch_timeout,
                },
                keys.clone(),
                jwks.clone(),
            )
            .map_err(|e| BuildError::Jwks(u.name.clone(), e))?;
            let (max_age, leeway) = (secs(u.max_age), secs(u.leeway));
            let ttl = Duration::from_secs((max_age + 2 * leeway).max(1) as u64);
            for o in Outcome::ALL {
                metrics.logouts(&u.name, o).inc_by(0);
            }
            idps.push(Idp {
                name: u.name.clone(),
                issuer: u.issuer.clone(),
                client_id: u.client_id.clone(),
                algorithms,
                max_age,
                leeway,
                accept_typ_jwt: u.accept_typ_jwt,
                allow_missing_exp: u.allow_missing_exp,
                keys,
                refetcher: Arc::new(refetcher),
                seen: moka::sync::Cache::builder()
                    .max_capacity(REPLAY_CAPACITY)
                    .time_to_live(ttl)
                    .build(),
            });
        }
        Ok(Receiver { idps, metrics })
    }

    pub fn metrics(&self) -> &BackchannelMetrics {
        &self.metrics
    }

    /// Whether `idp` names a configured upstream.
    pub fn knows(&self, idp: &str) -> bool {
        self.idp(idp).is_some()
    }

    fn idp(&self, name: &str) -> Option<&Idp> {
        self.idps.iter().find(|i| i.name == name)
    }

    /// Loads every upstream's keys once, now; true when all loaded. For tests and for
    /// in-process use without [`Receiver::run_refreshers`].
    pub async fn load_now(&self) -> bool {
        let mut all = true;
        for i in &self.idps {
            all &= i.refetcher.load_now().await;
        }
        all
    }

    /// Keeps every upstream's keys loaded and refreshed until `stop`, each reporting on the
    /// readiness latch `jwks:<issuer>`. The caller owns the returned future (spawn it with
    /// the shutdown token and await its handle); it ends when `stop` is cancelled.
    pub fn run_refreshers(
        &self,
        readiness: &Readiness,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let runs: Vec<_> = self
            .idps
            .iter()
            .map(|i| {
                let latch = readiness.latch(
                    Component::Jwks(i.issuer.clone()),
                    "upstream JWKS not loaded yet",
                );
                i.refetcher.clone().run(latch, stop.clone())
            })
            .collect();
        async move {
            futures::future::join_all(runs).await;
        }
    }

    /// Validates one logout token from upstream `idp` at `now_s` (seconds since the epoch)
    /// and, when every check passed, remembers its `(iss, jti)` so it is accepted once.
    pub async fn validate(
        &self,
        idp: &str,
        logout_token: &str,
        now_s: i64,
    ) -> Result<LogoutOrder, Refusal> {
        let i = self.idp(idp).ok_or(Refusal::UnknownIdp)?;
        // Compact JWE has five parts; JWS three. Tell the IdP plainly rather than "malformed".
        if logout_token.bytes().filter(|b| *b == b'.').count() == 4 {
            return Err(Refusal::Encrypted);
        }
        let verified = match i.verify(logout_token) {
            // Only a token that is well-formed with an allowed `alg` gets here, so junk never
            // costs a fetch; the refetcher's rate limit bounds the rest.
            Err(TokenError::UnknownKid | TokenError::KeysUnavailable)
                if i.refetcher.refetch_for_unknown_kid().await =>
            {
                i.verify(logout_token)
            }
            r => r,
        }?;
        let order = i.check(verified, now_s)?;
        i.remember(&order, now_s)?;
        Ok(order)
    }

    /// [`Receiver::validate`], then `effect`, counted in the metrics: what the HTTP handler
    /// calls. When the effect fails, the `jti` is forgotten so the IdP's retry is accepted.
    pub async fn receive(
        &self,
        idp: &str,
        logout_token: &str,
        now_s: i64,
        effect: &dyn LogoutEffect,
    ) -> Result<LogoutOrder, Refusal> {
        let result = match self.validate(idp, logout_token, now_s).await {
            Ok(order) => match effect.apply(order.clone()).await {
                Ok(()) => Ok(order),
                Err(e) => {
                    tracing::warn!(idp, error = %e, "back-channel logout validated but not applied; the IdP is told to retry");
                    if let Some(i) = self.idp(idp) {
                        i.forget(&order);
                    }
                    Err(Refusal::Unavailable)
                }
            },
            Err(r) => Err(r),
        };
        match &result {
            Ok(order) => {
                self.metrics.logouts(idp, Outcome::Ok).inc();
                tracing::info!(
                    idp,
                    has_sid = order.sid.is_some(),
                    has_sub = order.sub.is_some(),
                    "back-channel logout applied"
                );
            }
            Err(Refusal::UnknownIdp) => {}
            Err(r) => {
                self.metrics.logouts(idp, r.outcome()).inc();
                tracing::info!(idp, reason = r.reason(), "back-channel logout refused");
            }
        }
        result
    }
}

impl Idp {
    fn verify(&self, token: &str) -> Result<VerifiedJws, TokenError> {
        verify_jws(token, MAX_BODY_BYTES, &self.algorithms, &self.keys)
    }

    /// Everything after the signature, in the spec's order.
    fn check(&self, v: VerifiedJws, now: i64) -> Result<LogoutOrder, Refusal> {
        self.check_typ(&v.header)?;
        let c = &v.claims;
        match c.get("iss") {
            None => return Err(TokenError::MissingClaim("iss").into()),
            Some(Value::String(s)) if *s == self.issuer => {}
            Some(_) => return Err(TokenError::WrongIssuer.into()),
        }
        let aud = c.get("aud").ok_or(TokenError::MissingClaim("aud"))?;
        let aud = audiences(aud).ok_or(TokenError::InvalidClaim("aud"))?;
        if !aud.contains(&self.client_id.as_str()) {
            return Err(TokenError::WrongAudience.into());
        }
        let iat = c.get("iat").ok_or(TokenError::MissingClaim("iat"))?;
        let iat = numeric_date(iat).ok_or(TokenError::InvalidClaim("iat"))?;
        if iat > now.saturating_add(self.leeway) {
            return Err(TokenError::NotYetValid.into());
        }
        if now.saturating_sub(iat) > self.max_age + self.leeway {
            return Err(Refusal::TooOld);
        }
        match c.get("exp") {
            None if self.allow_missing_exp => {}
            None => return Err(TokenError::MissingClaim("exp").into()),
            Some(exp) => {
                let exp = numeric_date(exp).ok_or(TokenError::InvalidClaim("exp"))?;
                if now >= exp.saturating_add(self.leeway) {
                    return Err(TokenError::Expired.into());
                }
            }
        }
        let jti = id_claim(c, "jti", "jti")?.ok_or(TokenError::MissingClaim("jti"))?;
        check_events(c)?;
        let sub = id_claim(c, "sub", "sub")?;
        let sid = id_claim(c, "sid", "sid")?;
        if sub.is_none() && sid.is_none() {
            return Err(Refusal::NoSubject);
        }
        if c.contains_key("nonce") {
            return Err(Refusal::Nonce);
        }
        Ok(LogoutOrder {
            idp: self.name.clone(),
            issuer: self.issuer.clone(),
            sid: sid.map(str::to_string),
            sub: sub.map(str::to_string),
            iat,
            jti: jti.to_string(),
        })
    }

    /// Explicit typing (§2.4, RFC 8725 §3.11): `logout+jwt`, with or without `application/`,
    /// any case; absent (RECOMMENDED, not required: `events` is what tells a logout token);
    /// `JWT` only where configured (Keycloak). Anything else (`at+jwt`, a number) is refused.
    fn check_typ(&self, h: &Header) -> Result<(), Refusal> {
        let typ = match &h.typ {
            None => return Ok(()),
            Some(Value::String(s)) => s.to_ascii_lowercase(),
            Some(_) => return Err(Refusal::WrongTyp),
        };
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        match typ {
            "logout+jwt" => Ok(()),
            "jwt" if self.accept_typ_jwt => Ok(()),
            _ => Err(Refusal::WrongTyp),
        }
    }

    /// The last check: refuses a `(iss, jti)` seen before, else records it (atomically, so
    /// two concurrent deliveries of one token are not both accepted).
    fn remember(&self, order: &LogoutOrder, now: i64) -> Result<(), Refusal> {
        let key = replay_key(&order.issuer, &order.jti);
        let until = order.iat + self.max_age + self.leeway;
        let entry = self.seen.entry(key).or_insert(until);
        if entry.is_fresh() {
            return Ok(());
        }
        if *entry.value() > now {
            return Err(Refusal::Replay);
        }
        // a stale record the cache has not evicted yet
        self.seen.insert(key, until);
        Ok(())
    }

    fn forget(&self, order: &LogoutOrder) {
        self.seen.invalidate(&replay_key(&order.issuer, &order.jti));
    }
}

fn check_events(c: &Map<String, Value>) -> Result<(), Refusal> {
    match c.get("events") {
        Some(Value::Object(events)) => match events.get(BACKCHANNEL_LOGOUT_EVENT) {
            Some(Value::Object(_)) => Ok(()),
            _ => Err(Refusal::NotLogoutToken),
        },
        _ => Err(Refusal::NotLogoutToken),
    }
}

/// A fixed-size key (the token module's truncated SHA-256 over length-prefixed parts), so the
/// replay memory's size does not depend on what the IdP puts in `jti`.
fn replay_key(iss: &str, jti: &str) -> u128 {
    fingerprint(&[iss.as_bytes(), jti.as_bytes()])
}

// ---- HTTP -----------------------------------------------------------------------------------

#[derive(Clone)]
struct Http {
    receiver: Arc<Receiver>,
    effect: Arc<dyn LogoutEffect>,
}

/// `POST /v1/backchannel-logout/{idp}`. Every answer carries `Cache-Control: no-store`
/// (§2.8); refusals are JSON `{"error", "error_description"}`, success an empty 200.
pub fn routes(receiver: Arc<Receiver>, effect: Arc<dyn LogoutEffect>) -> Router {
    Router::new()
        .route("/v1/backchannel-logout/{idp}", post(handle))
        .with_state(Http { receiver, effect })
        .layer(axum::middleware::map_response(no_store))
}

async fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn handle(
    State(s): State<Http>,
    idp: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Path(idp)) = idp else {
        return refuse(&Refusal::UnknownIdp);
    };
    if !s.receiver.knows(&idp) {
        return refuse(&Refusal::UnknownIdp);
    }
    let token = match logout_token(&headers, body).await {
        Ok(t) => t,
        Err(r) => {
            s.receiver.metrics.logouts(&idp, r.outcome()).inc();
            tracing::info!(idp, reason = r.reason(), "back-channel logout refused");
            return refuse(&r);
        }
    };
    let now_s = crate::now_ms() / 1000;
    match s
        .receiver
        .receive(&idp, &token, now_s, s.effect.as_ref())
        .await
    {
        Ok(_) => StatusCode::OK.into_response(),
        Err(r) => refuse(&r),
    }
}

/// The one `logout_token` of an `application/x-www-form-urlencoded` body of at most
/// [`MAX_BODY_BYTES`].
async fn logout_token(headers: &HeaderMap, body: Body) -> Result<String, Refusal> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(Refusal::BadRequest(
            "content type must be application/x-www-form-urlencoded",
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| Refusal::BodyTooLarge)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| Refusal::BadRequest("body is not a valid form"))?;
    let mut tokens = pairs.into_iter().filter(|(k, _)| k == "logout_token");
    match (tokens.next(), tokens.next()) {
        (Some((_, t)), None) if !t.is_empty() => Ok(t),
        (Some(_), Some(_)) => Err(Refusal::BadRequest("logout_token is given more than once")),
        _ => Err(Refusal::BadRequest("logout_token is missing")),
    }
}

fn status(r: &Refusal) -> StatusCode {
    match r {
        Refusal::UnknownIdp => StatusCode::NOT_FOUND,
        Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn refuse(r: &Refusal) -> Response {
    let body = serde_json::json!({"error": r.error(), "error_description": r.description()});
    let mut resp = (
        status(r),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if *r == Refusal::Unavailable {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::b64;
    use crate::token::sign::{jwks, SigningKey};
    use axum::http::Request;
    use base64::Engine;
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tower::ServiceExt;

    const ISS: &str = "https://idp.example/realms/main";
    const CLIENT: &str = "veto";
    const NOW: i64 = 1_800_000_000;

    struct Kit {
        rsa: SigningKey,
        ec: SigningKey,
        dir: tempfile::TempDir,
        receiver: Arc<Receiver>,
        jwks_metrics: JwksMetrics,
    }

    fn upstream(path: std::path::PathBuf) -> Upstream {
        Upstream {
            name: "kc".into(),
            issuer: ISS.into(),
            client_id: CLIENT.into(),
            jwks_url: None,
            jwks_file: Some(path),
            algorithms: vec!["RS256".into(), "ES256".into()],
            max_age: Duration::from_secs(300),
            leeway: Duration::from_secs(30),
            accept_typ_jwt: false,
            allow_missing_exp: false,
            jwks_refresh_interval: Duration::from_secs(300),
            jwks_min_refetch_interval: Duration::from_secs(10),
            jwks_fetch_timeout: Duration::from_secs(3),
        }
    }

    async fn kit_with(tune: impl FnOnce(&mut Upstream)) -> Kit {
        let rsa = SigningKey::generate(Alg::RS256, "rsa-1").unwrap();
        let ec = SigningKey::generate(Alg::ES256, "ec-1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks(&[&rsa, &ec]).to_string()).unwrap();
        let mut u = upstream(path);
        tune(&mut u);
        let r = Registry::new();
        let jwks_metrics = JwksMetrics::register(&r);
        let receiver =
            Receiver::new(&[u], jwks_metrics.clone(), BackchannelMetrics::register(&r)).unwrap();
        receiver.load_now().await;
        Kit {
            rsa,
            ec,
            dir,
            receiver: Arc::new(receiver),
            jwks_metrics,
        }
    }

    async fn kit() -> Kit {
        kit_with(|_| {}).await
    }

    fn claims(now: i64, jti: &str) -> Value {
        json!({
            "iss": ISS, "aud": CLIENT, "iat": now - 5, "exp": now + 120, "jti": jti,
            "sub": "user-1", "sid": "sess-1",
            "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
        })
    }

    /// `v` null removes `k`.
    fn with(mut c: Value, k: &str, v: Value) -> Value {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    }

    fn header(k: &SigningKey) -> Value {
        json!({"alg": k.alg.as_str(), "typ": "logout+jwt", "kid": k.kid})
    }

    fn sign(k: &SigningKey, c: &Value) -> String {
        k.sign_with_header(&header(k), c).unwrap()
    }

    impl Kit {
        async fn check(&self, token: &str) -> Result<LogoutOrder, Refusal> {
            self.receiver.validate("kc", token, NOW).await
        }
        async fn claims_err(&self, c: Value) -> Option<Refusal> {
            self.check(&sign(&self.rsa, &c)).await.err()
        }
        fn jwks_loads(&self) -> u64 {
            self.jwks_metrics.refresh(ISS, crate::jwks::Load::Ok).get()
        }
    }

    // ---- happy paths ----

    #[tokio::test]
    async fn sid_only_sub_only_and_both_are_accepted_with_both_algorithms() {
        let k = kit().await;
        let c = with(claims(NOW, "j-sid"), "sub", Value::Null);
        let o = k.check(&sign(&k.rsa, &c)).await.unwrap();
        assert_eq!(
            o,
            LogoutOrder {
                idp: "kc".into(),
                issuer: ISS.into(),
                sid: Some("sess-1".into()),
                sub: None,
                iat: NOW - 5,
                jti: "j-sid".into(),
            }
        );
        let c = with(claims(NOW, "j-sub"), "sid", Value::Null);
        let o = k.check(&sign(&k.ec, &c)).await.unwrap();
        assert_eq!((o.sid, o.sub.as_deref()), (None, Some("user-1")));
        let o = k
            .check(&sign(&k.rsa, &claims(NOW, "j-both")))
            .await
            .unwrap();
        assert_eq!(
            (o.sid.as_deref(), o.sub.as_deref()),
            (Some("sess-1"), Some("user-1"))
        );
        // aud as an array holding us, typ spelled as a media type, no typ at all
        let c = with(claims(NOW, "j-arr"), "aud", json!(["other", CLIENT]));
        let h = json!({"alg":"RS256","kid":"rsa-1","typ":"application/Logout+JWT"});
        assert!(k
            .check(&k.rsa.sign_with_header(&h, &c).unwrap())
            .await
            .is_ok());
        let h = json!({"alg":"RS256","kid":"rsa-1"});
        let c = claims(NOW, "j-notyp");
        assert!(k
            .check(&k.rsa.sign_with_header(&h, &c).unwrap())
            .await
            .is_ok());
    }

    // ---- forged and malformed tokens ----

    #[tokio::test]
    async fn alg_none_is_refused() {
        let k = kit().await;
        let body = b64().encode(claims(NOW, "j").to_string());
        for sig in ["", "AAAA"] {
            let t = format!(
                "{}.{}.{}",
                b64().encode(r#"{"alg":"none","kid":"rsa-1","typ":"logout+jwt"}"#),
                body,
                sig
            );
            let err = k.check(&t).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    Refusal::Token(TokenError::UnsupportedAlg | TokenError::Malformed(_))
                ),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn hs256_signed_with_the_rsa_public_key_is_refused() {
        let k = kit().await;
        let jwk = k.rsa.public_jwk();
        for secret in [
            jwk.to_string().into_bytes(),
            b64().decode(jwk["n"].as_str().unwrap()).unwrap(),
        ] {
            let hs = SigningKey::from_pkcs8(Alg::HS256, "rsa-1", &secret).unwrap();
            let t = hs
                .sign_with_header(&header(&hs), &claims(NOW, "j"))
                .unwrap();
            assert_eq!(
                k.check(&t).await.err(),
                Some(Refusal::Token(TokenError::UnsupportedAlg))
            );
        }
        // and HS* cannot be configured for an upstream at all
        let mut u = upstream(k.dir.path().join("jwks.json"));
        u.algorithms = vec!["HS256".into()];
        let r = Registry::new();
        assert!(matches!(
            Receiver::new(
                &[u],
                JwksMetrics::register(&r),
                BackchannelMetrics::register(&r)
            ),
            Err(BuildError::Algorithm(..))
        ));
    }

    #[tokio::test]
    async fn embedded_jwk_jku_x5u_x5c_are_ignored() {
        let k = kit().await;
        let attacker = SigningKey::generate(Alg::RS256, "rsa-1").unwrap();
        for extra in ["jwk", "jku", "x5u", "x5c"] {
            let mut h = header(&attacker);
            h[extra] = match extra {
                "jwk" => attacker.public_jwk(),
                "x5c" => json!(["MIIB"]),
                _ => json!("https://attacker.example/keys"),
            };
            let t = attacker.sign_with_header(&h, &claims(NOW, "j")).unwrap();
            assert_eq!(
                k.check(&t).await.err(),
                Some(Refusal::Token(TokenError::BadSignature)),
                "{extra}"
            );
        }
        // the attacker's key under a kid of its own: unknown, even with the key embedded
        let other = SigningKey::generate(Alg::RS256, "attacker").unwrap();
        let mut h = header(&other);
        h["jwk"] = other.public_jwk();
        let t = other.sign_with_header(&h, &claims(NOW, "j")).unwrap();
        assert_eq!(
            k.check(&t).await.err(),
            Some(Refusal::Token(TokenError::UnknownKid))
        );
    }

    #[tokio::test]
    async fn wrong_signature_is_refused() {
        let k = kit().await;
        let t = sign(&k.rsa, &claims(NOW, "j"));
        let mut bad = t.into_bytes();
        let i = bad.len() - 3;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(
            k.check(&bad).await.err(),
            Some(Refusal::Token(TokenError::BadSignature))
        );
        // claims swapped under a valid signature of other claims
        let good = sign(&k.rsa, &claims(NOW, "j"));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64().encode(with(claims(NOW, "j"), "sub", json!("admin")).to_string()),
            parts[2]
        );
        assert_eq!(
            k.check(&forged).await.err(),
            Some(Refusal::Token(TokenError::BadSignature))
        );
        // an ES256 header over the RSA kid (key bound to its family)
        let ec_as_rsa = SigningKey::from_pkcs8(Alg::ES256, "rsa-1", k.ec.pkcs8_der()).unwrap();
        assert_eq!(
            k.check(&sign(&ec_as_rsa, &claims(NOW, "j"))).await.err(),
            Some(Refusal::Token(TokenError::UnsupportedAlg))
        );
    }

    #[tokio::test]
    async fn unknown_kid_costs_one_rate_limited_refetch_then_is_refused() {
        let k = kit().await;
        assert_eq!(k.jwks_loads(), 1);
        let stranger = SigningKey::generate(Alg::RS256, "rotated-2").unwrap();
        let t = sign(&stranger, &claims(NOW, "j"));
        assert_eq!(
            k.check(&t).await.err(),
            Some(Refusal::Token(TokenError::UnknownKid))
        );
        assert_eq!(k.jwks_loads(), 2, "one refetch");
        // within jwks_min_refetch_interval: no second fetch, still refused
        assert_eq!(
            k.check(&t).await.err(),
            Some(Refusal::Token(TokenError::UnknownKid))
        );
        assert_eq!(k.jwks_loads(), 2, "rate-limited");
    }

    #[tokio::test]
    async fn a_rotated_key_is_found_by_the_refetch() {
        let k = kit().await;
        let next = SigningKey::generate(Alg::ES256, "ec-2").unwrap();
        let path = k.dir.path().join("jwks.json");
        std::fs::write(&path, jwks(&[&k.rsa, &k.ec, &next]).to_string()).unwrap();
        assert!(k.check(&sign(&next, &claims(NOW, "j"))).await.is_ok());
        assert_eq!(k.jwks_loads(), 2);
    }

    #[tokio::test]
    async fn jwe_is_refused() {
        let k = kit().await;
        let jwe = format!(
            "{}.{}.{}.{}.{}",
            b64().encode(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#),
            "a",
            "b",
            "c",
            "d"
        );
        assert_eq!(k.check(&jwe).await.err(), Some(Refusal::Encrypted));
    }

    #[tokio::test]
    async fn duplicate_json_members_are_refused() {
        let k = kit().await;
        let h = b64().encode(r#"{"alg":"RS256","kid":"rsa-1","typ":"logout+jwt"}"#);
        let p = format!(
            r#"{{"iss":"{ISS}","aud":"{CLIENT}","iat":{},"exp":{},"jti":"j","sid":"a","sid":"b","events":{{"{BACKCHANNEL_LOGOUT_EVENT}":{{}}}}}}"#,
            NOW - 5,
            NOW + 60
        );
        let input = format!("{h}.{}", b64().encode(p));
        let sig = k.rsa.sign_bytes(input.as_bytes()).unwrap();
        let t = format!("{input}.{}", b64().encode(sig));
        assert!(matches!(
            k.check(&t).await.err(),
            Some(Refusal::Token(TokenError::Malformed(_)))
        ));
        // and in the header
        let h = b64().encode(r#"{"alg":"RS256","kid":"rsa-1","typ":"logout+jwt","typ":"JWT"}"#);
        let input = format!("{h}.{}", b64().encode(claims(NOW, "j").to_string()));
        let sig = k.rsa.sign_bytes(input.as_bytes()).unwrap();
        let t = format!("{input}.{}", b64().encode(sig));
        assert!(matches!(
            k.check(&t).await.err(),
            Some(Refusal::Token(TokenError::Malformed(_)))
        ));
    }

    // ---- typ ----

    #[tokio::test]
    async fn typ_at_jwt_and_others_are_refused_jwt_only_when_configured() {
        let k = kit().await;
        for typ in [
            json!("at+jwt"),
            json!("JWT"),
            json!("application/jwt"),
            json!("secevent+jwt"),
            json!(1),
            json!(""),
        ] {
            let mut h = header(&k.rsa);
            h["typ"] = typ.clone();
            let t = k.rsa.sign_with_header(&h, &claims(NOW, "j")).unwrap();
            assert_eq!(k.check(&t).await.err(), Some(Refusal::WrongTyp), "{typ}");
        }
        let k = kit_with(|u| u.accept_typ_jwt = true).await;
        for (i, typ) in ["JWT", "jwt", "application/jwt"].into_iter().enumerate() {
            let mut h = header(&k.rsa);
            h["typ"] = json!(typ);
            let t = k
                .rsa
                .sign_with_header(&h, &claims(NOW, &format!("j{i}")))
                .unwrap();
            assert!(k.check(&t).await.is_ok(), "{typ}");
        }
        let mut h = header(&k.rsa);
        h["typ"] = json!("at+jwt");
        let t = k.rsa.sign_with_header(&h, &claims(NOW, "j-at")).unwrap();
        assert_eq!(k.check(&t).await.err(), Some(Refusal::WrongTyp));
    }

    // ---- claims ----

    #[tokio::test]
    async fn iss_and_aud_are_checked() {
        let k = kit().await;
        let c = || claims(NOW, "j");
        for iss in [
            json!("https://evil.example"),
            json!(format!("{ISS}/")),
            json!([ISS]),
        ] {
            assert_eq!(
                k.claims_err(with(c(), "iss", iss.clone())).await,
                Some(Refusal::Token(TokenError::WrongIssuer)),
                "{iss}"
            );
        }
        assert_eq!(
            k.claims_err(with(c(), "iss", Value::Null)).await,
            Some(Refusal::Token(TokenError::MissingClaim("iss")))
        );
        assert_eq!(
            k.claims_err(with(c(), "aud", json!("someone-else"))).await,
            Some(Refusal::Token(TokenError::WrongAudience))
        );
        assert_eq!(
            k.claims_err(with(c(), "aud", json!(["a", "b"]))).await,
            Some(Refusal::Token(TokenError::WrongAudience))
        );
        assert_eq!(
            k.claims_err(with(c(), "aud", json!([CLIENT, 1]))).await,
            Some(Refusal::Token(TokenError::InvalidClaim("aud")))
        );
        assert_eq!(
            k.claims_err(with(c(), "aud", Value::Null)).await,
            Some(Refusal::Token(TokenError::MissingClaim("aud")))
        );
    }

    #[tokio::test]
    async fn iat_and_exp_are_checked() {
        let k = kit().await;
        let c = |jti: &str| claims(NOW, jti);
        // too old: max_age 300 + leeway 30
        assert_eq!(
            k.claims_err(with(c("a"), "iat", json!(NOW - 331))).await,
            Some(Refusal::TooOld)
        );
        assert!(k
            .claims_err(with(c("b"), "iat", json!(NOW - 329)))
            .await
            .is_none());
        // in the future beyond leeway
        assert_eq!(
            k.claims_err(with(c("c"), "iat", json!(NOW + 31))).await,
            Some(Refusal::Token(TokenError::NotYetValid))
        );
        assert!(k
            .claims_err(with(c("d"), "iat", json!(NOW + 29)))
            .await
            .is_none());
        assert_eq!(
            k.claims_err(with(c("e"), "iat", Value::Null)).await,
            Some(Refusal::Token(TokenError::MissingClaim("iat")))
        );
        assert_eq!(
            k.claims_err(with(c("f"), "iat", json!("yesterday"))).await,
            Some(Refusal::Token(TokenError::InvalidClaim("iat")))
        );
        // expired (beyond leeway)
        assert_eq!(
            k.claims_err(with(c("g"), "exp", json!(NOW - 31))).await,
            Some(Refusal::Token(TokenError::Expired))
        );
        assert_eq!(
            k.claims_err(with(c("h"), "exp", json!("later"))).await,
            Some(Refusal::Token(TokenError::InvalidClaim("exp")))
        );
        // missing exp: refused by default
        assert_eq!(
            k.claims_err(with(c("i"), "exp", Value::Null)).await,
            Some(Refusal::Token(TokenError::MissingClaim("exp")))
        );
        // ... accepted with allow_missing_exp, the iat age still applying
        let k = kit_with(|u| u.allow_missing_exp = true).await;
        assert!(k
            .claims_err(with(c("j"), "exp", Value::Null))
            .await
            .is_none());
        let old = with(with(c("k"), "exp", Value::Null), "iat", json!(NOW - 400));
        assert_eq!(k.claims_err(old).await, Some(Refusal::TooOld));
        assert_eq!(
            k.claims_err(with(c("l"), "exp", json!(NOW - 31))).await,
            Some(Refusal::Token(TokenError::Expired)),
            "a present exp is still checked"
        );
    }

    #[tokio::test]
    async fn jti_is_required_in_canonical_form() {
        let k = kit().await;
        assert_eq!(
            k.claims_err(with(claims(NOW, "j"), "jti", Value::Null))
                .await,
            Some(Refusal::Token(TokenError::MissingClaim("jti")))
        );
        for bad in [json!(42), json!(""), json!(["j"])] {
            assert_eq!(
                k.claims_err(with(claims(NOW, "j"), "jti", bad.clone()))
                    .await,
                Some(Refusal::Token(TokenError::InvalidClaim("jti"))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn events_must_carry_the_logout_event_as_an_object() {
        let k = kit().await;
        let c = || claims(NOW, "j");
        for events in [
            Value::Null,
            json!({}),
            json!({"http://schemas.openid.net/event/other": {}}),
            json!({"https://schemas.openid.net/event/backchannel-logout": {}}),
            json!({ BACKCHANNEL_LOGOUT_EVENT: true }),
            json!({ BACKCHANNEL_LOGOUT_EVENT: "yes" }),
            json!({ BACKCHANNEL_LOGOUT_EVENT: [] }),
            json!([BACKCHANNEL_LOGOUT_EVENT]),
            json!(BACKCHANNEL_LOGOUT_EVENT),
        ] {
            assert_eq!(
                k.claims_err(with(c(), "events", events.clone())).await,
                Some(Refusal::NotLogoutToken),
                "{events}"
            );
        }
    }

    #[tokio::test]
    async fn an_id_token_is_not_a_logout_token() {
        let k = kit().await;
        let id_token = json!({
            "iss": ISS, "aud": CLIENT, "iat": NOW - 5, "exp": NOW + 300, "jti": "j",
            "sub": "user-1", "sid": "sess-1", "nonce": "n-0S6_WzA2Mj", "auth_time": NOW - 60,
        });
        assert_eq!(k.claims_err(id_token).await, Some(Refusal::NotLogoutToken));
        // even with the event added, the nonce gives it away
        let c = with(claims(NOW, "j"), "nonce", json!("n"));
        assert_eq!(k.claims_err(c).await, Some(Refusal::Nonce));
    }

    #[tokio::test]
    async fn sub_or_sid_in_canonical_form() {
        let k = kit().await;
        let neither = with(
            with(claims(NOW, "j"), "sub", Value::Null),
            "sid",
            Value::Null,
        );
        assert_eq!(k.claims_err(neither).await, Some(Refusal::NoSubject));
        let long = "x".repeat(crate::revocation::MAX_ID_BYTES + 1);
        for (claim, bad) in [
            ("sub", json!(248289761001u64)),
            ("sub", json!("")),
            ("sid", json!(7)),
            ("sid", json!(long)),
            ("sid", json!({"id": "s"})),
        ] {
            // a non-canonical sub is refused even when sid is fine, never treated as absent
            assert_eq!(
                k.claims_err(with(claims(NOW, "j"), claim, bad.clone()))
                    .await,
                Some(Refusal::Token(TokenError::InvalidClaim(claim))),
                "{claim} = {bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_replay_is_refused_and_a_failed_check_records_nothing() {
        let k = kit().await;
        let t = sign(&k.rsa, &claims(NOW, "once"));
        assert!(k.check(&t).await.is_ok());
        assert_eq!(k.check(&t).await.err(), Some(Refusal::Replay));
        // another token with the same jti from the same issuer is a replay too
        let t2 = sign(&k.ec, &with(claims(NOW, "once"), "sid", json!("other")));
        assert_eq!(k.check(&t2).await.err(), Some(Refusal::Replay));
        // a token refused late (nonce) leaves its jti unrecorded
        let bad = sign(&k.rsa, &with(claims(NOW, "late"), "nonce", json!("n")));
        assert_eq!(k.check(&bad).await.err(), Some(Refusal::Nonce));
        assert!(k.check(&sign(&k.rsa, &claims(NOW, "late"))).await.is_ok());
    }

    #[tokio::test]
    async fn unknown_idp_and_unavailable_keys() {
        let k = kit().await;
        let t = sign(&k.rsa, &claims(NOW, "j"));
        assert_eq!(
            k.receiver.validate("nope", &t, NOW).await.err(),
            Some(Refusal::UnknownIdp)
        );
        let k = kit_with(|u| u.jwks_file = Some("/nonexistent/veto/jwks.json".into())).await;
        assert_eq!(k.check(&t).await.err(), Some(Refusal::Unavailable));
    }

    // ---- HTTP ----

    #[derive(Default)]
    struct Recorder {
        orders: parking_lot::Mutex<Vec<LogoutOrder>>,
        fail: AtomicBool,
        calls: AtomicU64,
    }

    impl LogoutEffect for Recorder {
        fn apply(&self, order: LogoutOrder) -> BoxFuture<'_, Result<(), EffectError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.fail.load(Ordering::SeqCst) {
                    return Err(EffectError::Unavailable);
                }
                self.orders.lock().push(order);
                Ok(())
            })
        }
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap()
        }
    }

    async fn post(app: &Router, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
        let mut req = Request::post(path);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
        serde_urlencoded::to_string(pairs).unwrap().into_bytes()
    }

    fn real_now() -> i64 {
        crate::now_ms() / 1000
    }

    fn assert_refused(a: &Answer, status: StatusCode, error: &str, token: &str) {
        assert_eq!(a.status, status, "{}", a.body);
        assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(a.headers[header::CONTENT_TYPE], "application/json");
        let j = a.json();
        assert_eq!(j["error"], error, "{}", a.body);
        assert!(j["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
        if !token.is_empty() {
            // never echoes the token, nor any of its parts
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(!a.body.contains(part), "{}", a.body);
            }
        }
    }

    /// One well-formed delivery of `token` to upstream `kc`.
    async fn deliver(app: &Router, token: &str) -> Answer {
        let body = form(&[("logout_token", token)]);
        post(app, "/v1/backchannel-logout/kc", FORM, body).await
    }

    fn assert_unavailable(a: &Answer, token: &str) {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        assert_refused(a, status, "temporarily_unavailable", token);
        assert_eq!(a.headers[header::RETRY_AFTER], "5");
    }

    #[tokio::test]
    async fn http_success_and_every_refusal_applies_nothing() {
        let k = kit().await;
        let effect = Arc::new(Recorder::default());
        let app = routes(k.receiver.clone(), effect.clone());
        let path = "/v1/backchannel-logout/kc";
        let now = real_now();
        let good = sign(&k.rsa, &claims(now, "http-1"));

        let a = post(
            &app,
            path,
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            form(&[("logout_token", &good)]),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "");
        assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(effect.orders.lock().len(), 1);
        assert_eq!(effect.orders.lock()[0].jti, "http-1");

        let forged = SigningKey::generate(Alg::RS256, "rsa-1").unwrap();
        let forged = sign(&forged, &claims(now, "http-2"));
        let big = "a".repeat(MAX_BODY_BYTES + 1);
        let fresh = sign(&k.rsa, &claims(now, "http-3"));
        let json_body = json!({ "logout_token": fresh }).to_string().into_bytes();
        // (what, content type, body, status, error)
        type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, StatusCode, &'a str);
        let cases: Vec<Case> = vec![
            (
                "replay",
                FORM,
                form(&[("logout_token", &good)]),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "forged",
                FORM,
                form(&[("logout_token", &forged)]),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "missing",
                FORM,
                form(&[("state", "x")]),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "empty",
                FORM,
                Vec::new(),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "duplicate",
                FORM,
                form(&[("logout_token", &fresh), ("logout_token", &fresh)]),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "json body",
                Some("application/json"),
                json_body,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "no content type",
                None,
                form(&[("logout_token", &fresh)]),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "oversize",
                FORM,
                format!("logout_token={big}").into_bytes(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
            ),
            (
                "not a form",
                FORM,
                b"logout_token=%ZZ\xff".to_vec(),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
        ];
        for (what, ct, body, status, error) in cases {
            let a = post(&app, path, ct, body).await;
            assert_refused(&a, status, error, &fresh);
            assert_eq!(effect.orders.lock().len(), 1, "{what}: nothing applied");
        }
        // unknown upstream: 404, same JSON shape
        let a = post(
            &app,
            "/v1/backchannel-logout/nope",
            FORM,
            form(&[("logout_token", &fresh)]),
        )
        .await;
        assert_refused(&a, StatusCode::NOT_FOUND, "not_found", &fresh);
        assert_eq!(effect.calls.load(Ordering::SeqCst), 1);
        // the refused-then-valid token still works: nothing about it was recorded
        let a = post(&app, path, FORM, form(&[("logout_token", &fresh)])).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(effect.orders.lock().len(), 2);

        let m = k.receiver.metrics();
        assert_eq!(m.logouts("kc", Outcome::Ok).get(), 2);
        assert_eq!(m.logouts("kc", Outcome::Replay).get(), 1);
        assert_eq!(m.logouts("kc", Outcome::Invalid).get(), 8);
        assert_eq!(m.logouts("kc", Outcome::Unavailable).get(), 0);
    }

    #[tokio::test]
    async fn http_effect_unavailable_is_503_and_the_retry_is_accepted() {
        let k = kit().await;
        let effect = Arc::new(Recorder::default());
        effect.fail.store(true, Ordering::SeqCst);
        let app = routes(k.receiver.clone(), effect.clone());
        let t = sign(&k.rsa, &claims(real_now(), "retry-me"));
        let a = deliver(&app, &t).await;
        assert_unavailable(&a, &t);
        assert!(effect.orders.lock().is_empty());
        effect.fail.store(false, Ordering::SeqCst);
        let a = deliver(&app, &t).await;
        assert_eq!(a.status, StatusCode::OK, "the IdP's retry is not a replay");
        assert_eq!(effect.orders.lock().len(), 1);
        assert_eq!(
            k.receiver
                .metrics()
                .logouts("kc", Outcome::Unavailable)
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn http_jwks_unreadable_at_start_is_503() {
        let k = kit_with(|u| u.jwks_file = Some("/nonexistent/veto/jwks.json".into())).await;
        let effect = Arc::new(Recorder::default());
        let app = routes(k.receiver.clone(), effect.clone());
        let t = sign(&k.rsa, &claims(real_now(), "j"));
        let a = deliver(&app, &t).await;
        assert_unavailable(&a, &t);
        assert_eq!(effect.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn http_other_methods_also_carry_no_store() {
        let k = kit().await;
        let app = routes(k.receiver.clone(), Arc::new(Recorder::default()));
        let resp = app
            .oneshot(
                Request::get("/v1/backchannel-logout/kc")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn refreshers_run_until_stopped_and_report_readiness() {
        let k = kit().await;
        let readiness = Readiness::default();
        let stop = CancellationToken::new();
        let run = tokio::spawn(k.receiver.run_refreshers(&readiness, stop.clone()));
        for _ in 0..200 {
            if readiness.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(readiness.is_ready(), "{:?}", readiness.blockers());
        stop.cancel();
        run.await.unwrap();
    }
}
