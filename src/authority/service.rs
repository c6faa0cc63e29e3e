//! What the authority does, independent of transport: create a session, refresh (here when
//! this is the session's home, else forwarded to the home over NATS request-reply), log out,
//! revoke, and apply revocations made anywhere to the sessions homed here.

use super::config::Authority as Cfg;
use super::metrics::AuthorityMetrics;
use super::oauth::{OAuthError, TokenResponse, WireError};
use super::refresh::{self, MacKeys, Presented};
use super::session::{self, EndReason, Record, Rules, State, Step, UpstreamSession};
use super::store::{Sessions, StoreError};
use crate::bus::{self, names};
use crate::revocation::{Freshness, Kind, RevocationEvent};
use crate::token::sign::SigningKey;
use crate::token::{b64, Validator};
use async_nats::jetstream;
use aws_lc_rs::digest;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Claims a session request may not set: they are the authority's.
pub const RESERVED_CLAIMS: [&str; 11] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "sid",
    "veto_home",
    "cnf",
    "azp",
];

/// The key that signs now (the keyring's current key).
pub type CurrentKey = Arc<dyn Fn() -> Arc<SigningKey> + Send + Sync>;

/// Longest access token minted: what the sidecars accept by default (`authz.max_token_bytes`).
pub const MAX_ACCESS_TOKEN_BYTES: usize = 8192;

/// A session request (`POST /v1/sessions`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    pub sub: String,
    /// One audience or several; default `authority.audiences`.
    #[serde(default)]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub claims: Map<String, Value>,
    #[serde(default)]
    pub upstream: Option<UpstreamSession>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// An admin revocation (`POST /v1/revocations`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    pub kind: RevokeKind,
    pub id: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default = "yes")]
    pub urgent: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeKind {
    Session,
    Token,
    Subject,
}

#[derive(Debug, Serialize)]
pub struct Published {
    pub event_id: String,
    pub kind: &'static str,
    pub revoked_at: i64,
    pub expires_at: i64,
    pub origin_region: String,
}

/// Where a revocation is published besides this authority's own origin.
#[derive(Debug, Clone, Copy)]
pub enum Also<'a> {
    Nowhere,
    /// The session's home region.
    Home(&'a str),
    /// Every region (a session or token whose home is unknown, a subject).
    Everywhere,
}

/// The reason label of the metric: the known reasons, else `other` (admin input is free).
fn reason_label(reason: &str) -> &'static str {
    EndReason::parse(reason).map_or("other", EndReason::label)
}

/// A request from one authority to the home of a session, over NATS.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HomeRequest {
    Refresh {
        refresh_token: String,
        /// Unix ms after which the sender has stopped waiting and answered its client 503
        /// ("nothing happened, retry"): the home must not rotate any more. A request can
        /// arrive arbitrarily late (e.g. buffered by a frozen hub); rotating then would leave
        /// the client holding the previous token, a reuse once the grace is over. Absent
        /// (older senders): no limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<i64>,
    },
    UpstreamLogout {
        iss: String,
        sid: String,
    },
}

/// The home's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HomeReply {
    Token(TokenResponse),
    Error(WireError),
    Done { sessions: usize },
}

pub struct Service {
    pub cfg: Cfg,
    pub region: String,
    pub regions: Vec<String>,
    pub mac: MacKeys,
    /// The home's bucket, once opened (JetStream may come up after the authority).
    pub sessions: std::sync::OnceLock<Sessions>,
    /// Subjects' not-befores from a watch of the bucket (one KV read per refresh, not two).
    pub not_befores: Arc<super::store::NotBefores>,
    /// The records this replica wrote last, with their revision: a refresh that writes tries
    /// its compare-and-set against it without reading first (a stale entry only costs a
    /// conflict, since every change of a record moves its revision). An answer that writes
    /// nothing is never given from it.
    pub recent: moka::sync::Cache<String, Arc<(Record, u64)>>,
    pub key: CurrentKey,
    /// Validates this authority's own access tokens (logout by access token).
    pub validator: Arc<Validator>,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    /// Per origin, when its heartbeat last arrived (the embedded feed's).
    pub freshness: Arc<Freshness>,
    pub metrics: AuthorityMetrics,
    pub rules: Rules,
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

fn store_err(e: StoreError) -> OAuthError {
    match e {
        StoreError::Corrupt(what) => {
            tracing::error!(error = %what, "session record unreadable");
            OAuthError::server_error("session record unreadable")
        }
        other => {
            tracing::warn!(error = %other, "session store");
            OAuthError::unavailable("the session store is unavailable; retry")
        }
    }
}

/// A deterministic event id: retries of one revocation dedupe in JetStream.
pub fn event_id(kind: &str, issuer: &str, id: &str, extra: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [kind, issuer, id, extra] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    format!(
        "{}-{}",
        &kind[..1],
        b64().encode(&ctx.finish().as_ref()[..18])
    )
}

/// A fresh session id: 128 random bits, base64url (22 characters).
fn new_sid() -> String {
    b64().encode(&refresh::new_secret()[..16])
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= crate::revocation::MAX_ID_BYTES
}

impl Service {
    fn now() -> i64 {
        crate::now_ms()
    }

    /// Now in Unix µs, and its millisecond: what a revocation is stamped with.
    fn now_us() -> (i64, i64) {
        let us = crate::now_us();
        (us, us.div_euclid(1000))
    }

    /// The bucket, or 503 while it is not open yet.
    fn store(&self) -> Result<&Sessions, OAuthError> {
        self.sessions
            .get()
            .ok_or_else(|| OAuthError::unavailable("the session store is not open yet; retry"))
    }

    fn bucket(&self) -> Result<&Sessions, StoreError> {
        self.sessions
            .get()
            .ok_or_else(|| StoreError::Unavailable("the session store is not open yet".into()))
    }

    /// Signs an access token of session `sid`.
    fn access_token(
        &self,
        sid: &str,
        rec: &Record,
        home: &str,
        now_ms: i64,
    ) -> Result<(String, i64), OAuthError> {
        let iat = now_ms / 1000;
        let ttl = self.cfg.access_token_ttl.as_secs() as i64;
        // never beyond the session's absolute end
        let exp = (iat + ttl).min(rec.abs_exp / 1000).max(iat + 1);
        let mut claims = rec.claims.clone();
        let aud = match rec.aud.as_slice() {
            [one] => Value::String(one.clone()),
            many => json!(many),
        };
        for (k, v) in [
            ("iss", json!(self.cfg.issuer)),
            ("sub", json!(rec.sub)),
            ("aud", aud),
            ("sid", json!(sid)),
            ("jti", json!(new_sid())),
            ("iat", json!(iat)),
            ("exp", json!(exp)),
            ("veto_home", json!(home)),
        ] {
            claims.insert(k.into(), v);
        }
        let key = (self.key)();
        let token = key
            .sign(&Value::Object(claims))
            .map_err(|e| OAuthError::server_error(e.to_string()))?;
        Ok((token, exp - iat))
    }

    fn token_response(
        &self,
        sid: &str,
        rec: &Record,
        home: &str,
        secret: &[u8],
        now: i64,
    ) -> Result<TokenResponse, OAuthError> {
        let (access_token, expires_in) = self.access_token(sid, rec, home, now)?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in,
            refresh_token: refresh::mint(&self.mac, home, sid, rec.generation, secret),
            session_id: sid.to_string(),
            home_region: home.to_string(),
        })
    }

    /// `POST /v1/sessions`: a session homed in this region.
    pub async fn create_session(&self, req: NewSession) -> Result<TokenResponse, OAuthError> {
        if !valid_id(&req.sub) {
            return Err(OAuthError::invalid_request(
                "sub: a string of 1 to 1024 bytes",
            ));
        }
        if let Some(r) = RESERVED_CLAIMS
            .iter()
            .find(|r| req.claims.contains_key(**r))
        {
            return Err(OAuthError::invalid_request(format!(
                "claims: {r} is reserved (set by the authority)"
            )));
        }
        let aud = match req.aud {
            None => self.cfg.audiences.clone(),
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(a)) => a,
        };
        if aud.is_empty() || aud.iter().any(|a| a.is_empty() || a.len() > 1024) || aud.len() > 16 {
            return Err(OAuthError::invalid_request(
                "aud: 1 to 16 non-empty strings",
            ));
        }
        if let Some(u) = &req.upstream {
            if !valid_id(&u.iss) || !valid_id(&u.sid) {
                return Err(OAuthError::invalid_request(
                    "upstream: iss and sid, 1 to 1024 bytes each",
                ));
            }
        }
        let now = Self::now();
        let sid = new_sid();
        let secret = refresh::new_secret();
        let rec = session::new_record(
            req.sub,
            aud,
            req.claims,
            req.upstream.clone(),
            now,
            ms(self.cfg.session_lifetime),
            &secret,
        );
        let answer = self.token_response(&sid, &rec, &self.region, &secret, now)?;
        if answer.access_token.len() > MAX_ACCESS_TOKEN_BYTES {
            return Err(OAuthError::invalid_request(format!(
                "claims: the access token would exceed {MAX_ACCESS_TOKEN_BYTES} bytes"
            )));
        }
        // the index first: an upstream logout can then never miss a session that exists
        if let Some(u) = &req.upstream {
            self.store()?
                .link_upstream(&u.iss, &u.sid, &sid)
                .await
                .map_err(store_err)?;
        }
        let rev = self.store()?.create(&sid, &rec).await.map_err(store_err)?;
        self.recent.insert(sid.clone(), Arc::new((rec, rev)));
        self.metrics.sessions_created.inc();
        Ok(answer)
    }

    /// `POST /v1/token` in any region: checks the tag, then refreshes here or at the home.
    pub async fn refresh(&self, token: &str) -> Result<TokenResponse, OAuthError> {
        let started = Instant::now();
        let presented = match refresh::parse(&self.mac, token) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.refresh("garbled").inc();
                tracing::debug!(error = %e, "refresh token refused before lookup");
                return Err(OAuthError::invalid_grant("refresh token not recognised"));
            }
        };
        let (result, path) = if presented.home == self.region {
            (self.refresh_at_home(presented).await, "local")
        } else {
            (
                self.forward(
                    &presented.home.clone(),
                    HomeRequest::Refresh {
                        refresh_token: token.to_string(),
                        deadline_ms: Some(Self::now() + ms(self.cfg.home_timeout)),
                    },
                )
                .await
                .and_then(|reply| match reply {
                    HomeReply::Token(t) => Ok(t),
                    HomeReply::Error(e) => Err(e.into()),
                    HomeReply::Done { .. } => {
                        Err(OAuthError::server_error("unexpected home reply"))
                    }
                }),
                "forwarded",
            )
        };
        self.metrics
            .refresh_seconds(path)
            .observe(started.elapsed().as_secs_f64());
        // the 5xx answers, counted where the client got them (VetoAuthorityRefreshErrors)
        if let Err(e) = &result {
            match e.status {
                503 => self.metrics.refresh("unavailable").inc(),
                500..=599 => self.metrics.refresh("error").inc(),
                _ => {}
            }
        }
        result
    }

    /// Sends `req` to the authorities of `home` within `home_timeout`; 503 at once when the
    /// home's heartbeat is stale.
    async fn forward(&self, home: &str, req: HomeRequest) -> Result<HomeReply, OAuthError> {
        if !self.regions.iter().any(|r| r == home) {
            self.metrics.refresh("unknown_home").inc();
            return Err(OAuthError::invalid_grant("refresh token not recognised"));
        }
        let now = Self::now();
        let mask = self.freshness.mask_of(home);
        if mask != 0
            && self
                .freshness
                .stale_mask(now, ms(self.cfg.home_stale_after))
                & mask
                != 0
        {
            self.metrics.home_unavailable(home, "stale").inc();
            return Err(OAuthError::unavailable(format!(
                "the session's home region {home} is unreachable; retry"
            )));
        }
        let body = serde_json::to_vec(&req).map_err(|e| OAuthError::server_error(e.to_string()))?;
        let request = self
            .client
            .request(names::refresh_subject(home), body.into());
        let msg = match tokio::time::timeout(self.cfg.home_timeout, request).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                self.metrics.home_unavailable(home, "error").inc();
                tracing::warn!(home, error = %e, "home authority request failed");
                return Err(OAuthError::unavailable(format!(
                    "the session's home region {home} did not answer; retry"
                )));
            }
            Err(_) => {
                self.metrics.home_unavailable(home, "timeout").inc();
                return Err(OAuthError::unavailable(format!(
                    "the session's home region {home} did not answer in time; retry"
                )));
            }
        };
        serde_json::from_slice(&msg.payload)
            .map_err(|_| OAuthError::server_error("the home authority's answer is not understood"))
    }

    /// The rotation at the home: read, decide, compare-and-set, retried on conflicts.
    pub async fn refresh_at_home(&self, p: Presented) -> Result<TokenResponse, OAuthError> {
        // set once this request has detected reuse and published the revocation: the home's
        // feed follower may then mark the record first (the event reaches it before the
        // publish ack returns), and the re-read below finds it revoked — still this
        // request's reuse, to answer and count as such
        let mut reuse_published = false;
        let mut cached = self.recent.get(&p.sid);
        for _ in 0..8 {
            let from_cache = cached.is_some();
            let (rec, rev) = match cached.take() {
                Some(c) => (c.0.clone(), c.1),
                None => match self.store()?.get(&p.sid).await.map_err(store_err)? {
                    Some(found) => found,
                    None => {
                        self.metrics.refresh("unknown").inc();
                        return Err(OAuthError::invalid_grant(
                            "the session has ended or expired",
                        ));
                    }
                },
            };
            let nb = match rec.state {
                State::Active => match self.not_befores.get(&self.cfg.issuer, &rec.sub) {
                    Some(known) => known,
                    None => self
                        .store()?
                        .not_before(&self.cfg.issuer, &rec.sub)
                        .await
                        .map_err(store_err)?,
                },
                State::Revoked { .. } => None,
            };
            let (now_us, now) = Self::now_us();
            let step = session::decide(&rec, &p, now, nb, self.rules);
            let writes = matches!(
                step,
                Step::Rotate { .. }
                    | Step::Replay {
                        record: Some(_),
                        ..
                    }
            );
            if from_cache && !writes {
                // decided on what this replica last wrote: confirm on a fresh read
                self.recent.invalidate(&p.sid);
                continue;
            }
            match step {
                Step::Rotate { record, secret } => {
                    match self.store()?.update(&p.sid, &record, rev).await {
                        Ok(new_rev) => {
                            self.recent
                                .insert(p.sid.clone(), Arc::new((record.clone(), new_rev)));
                            self.metrics.refresh("rotated").inc();
                            return self.token_response(
                                &p.sid,
                                &record,
                                &self.region,
                                &secret,
                                now,
                            );
                        }
                        Err(StoreError::Conflict) => {
                            self.recent.invalidate(&p.sid);
                            continue;
                        }
                        Err(e) => return Err(store_err(e)),
                    }
                }
                Step::Replay { record, secret } => {
                    if let Some(counted) = &record {
                        match self.store()?.update(&p.sid, counted, rev).await {
                            Ok(new_rev) => self
                                .recent
                                .insert(p.sid.clone(), Arc::new((counted.clone(), new_rev))),
                            Err(StoreError::Conflict) => {
                                self.recent.invalidate(&p.sid);
                                continue;
                            }
                            Err(e) => return Err(store_err(e)),
                        }
                    }
                    self.metrics
                        .refresh(if record.is_some() {
                            "grace_replay"
                        } else {
                            "coalesced"
                        })
                        .inc();
                    let current = record.unwrap_or(rec);
                    return self.token_response(&p.sid, &current, &self.region, &secret, now);
                }
                Step::Reuse { record } => {
                    tracing::warn!(sid = %p.sid, generation = p.generation, current = rec.generation, "refresh token reuse: revoking the session");
                    // the revocation first (idempotent by its id): if the write below
                    // fails, the home's feed follower still marks the record
                    self.publish(
                        Kind::Session,
                        &p.sid,
                        EndReason::RefreshReuse.label(),
                        true,
                        now_us,
                        Also::Nowhere,
                    )
                    .await?;
                    self.recent.invalidate(&p.sid);
                    match self.store()?.update(&p.sid, &record, rev).await {
                        Ok(_) => {}
                        Err(StoreError::Conflict) => {
                            reuse_published = true;
                            continue;
                        }
                        Err(e) => return Err(store_err(e)),
                    }
                    self.metrics.refresh("reuse").inc();
                    return Err(OAuthError::invalid_grant(
                        "refresh token reuse detected; the session is revoked",
                    ));
                }
                Step::Refuse(session::Refusal::Revoked) if reuse_published => {
                    self.metrics.refresh("reuse").inc();
                    return Err(OAuthError::invalid_grant(
                        "refresh token reuse detected; the session is revoked",
                    ));
                }
                Step::Refuse(r) => {
                    if r == session::Refusal::Inconsistent {
                        tracing::error!(sid = %p.sid, generation = p.generation, current = rec.generation, "refresh token with a valid tag does not match its session: is the refresh MAC key leaked?");
                    }
                    self.metrics
                        .refresh(match r {
                            session::Refusal::Revoked => "revoked",
                            session::Refusal::Expired => "expired",
                            session::Refusal::Inconsistent => "inconsistent",
                        })
                        .inc();
                    return Err(OAuthError::invalid_grant(r.description()));
                }
            }
        }
        Err(OAuthError::unavailable(
            "too many concurrent refreshes of this session; retry",
        ))
    }

    /// Publishes a revocation at this origin and waits for the stream's ack (else 503); then,
    /// best effort, at the origins `also` names (through the gateways): with
    /// `revocation.isolation = home` a session's tokens depend on their home's origin, so a
    /// region that hears the home but not this one still learns of it. The other copies carry
    /// the same event id. Session and token ids get deterministic event ids (retries dedupe);
    /// subject revocations are keyed by their not-before too.
    pub async fn publish(
        &self,
        kind: Kind,
        id: &str,
        reason: &str,
        urgent: bool,
        revoked_at_us: i64,
        also: Also<'_>,
    ) -> Result<RevocationEvent, OAuthError> {
        let revoked_at = revoked_at_us.div_euclid(1000);
        let extra = match kind {
            Kind::Subject => revoked_at.to_string(),
            _ => String::new(),
        };
        let event = |origin: &str| {
            let mut ev = RevocationEvent::new_at_us(
                event_id(kind.label(), &self.cfg.issuer, id, &extra),
                kind,
                id,
                origin,
                revoked_at_us,
                self.cfg.revocation_ttl(),
            );
            ev.issuer = self.cfg.issuer.clone();
            ev.reason = reason.to_string();
            ev.urgent = urgent;
            ev
        };
        let ev = event(&self.region);
        if let Err(e) = bus::publish::publish_event(&self.js, &ev, Duration::from_secs(2)).await {
            tracing::warn!(error = %e, kind = kind.label(), "revocation publish failed");
            return Err(OAuthError::unavailable(
                "the revocation could not be published; retry",
            ));
        }
        self.metrics
            .revocations(kind.label(), reason_label(reason))
            .inc();
        let others: Vec<&String> = match also {
            Also::Nowhere => vec![],
            Also::Home(h) => self.regions.iter().filter(|r| *r == h).collect(),
            Also::Everywhere => self.regions.iter().collect(),
        };
        let copies = others
            .into_iter()
            .filter(|r| **r != self.region)
            .map(|origin| {
                let copy = event(origin);
                async move {
                    let r =
                        bus::publish::publish_event(&self.js, &copy, Duration::from_millis(500))
                            .await;
                    (origin, r)
                }
            });
        for (origin, r) in futures::future::join_all(copies).await {
            if let Err(e) = r {
                // this origin's copy reaches that region by sourcing once it is linked again
                self.metrics.copies_failed(origin).inc();
                tracing::warn!(origin = %origin, error = %e, "revocation copy at another origin not acknowledged");
            }
        }
        Ok(ev)
    }

    /// Marks a session homed here revoked (idempotent). `false`: not homed here.
    pub async fn end_session(
        &self,
        sid: &str,
        reason: EndReason,
        at: i64,
    ) -> Result<bool, StoreError> {
        for _ in 0..8 {
            let Some((mut rec, rev)) = self.bucket()?.get(sid).await? else {
                return Ok(false);
            };
            if let State::Revoked { .. } = rec.state {
                return Ok(true);
            }
            rec.state = State::Revoked { at, reason };
            self.recent.invalidate(sid);
            match self.bucket()?.update(sid, &rec, rev).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable("too many write conflicts".into()))
    }

    /// The session a logout token names: a refresh token (tag checked) or an access token
    /// of this issuer (signature checked, expiry not: a user whose token just expired can
    /// still log out).
    fn logout_session(&self, token: &str) -> Option<(String, Option<String>)> {
        if let Ok(p) = refresh::parse(&self.mac, token) {
            return Some((p.sid, Some(p.home)));
        }
        let v = self
            .validator
            .validate_for_logout(token, Self::now() / 1000)
            .ok()?;
        Some((v.claims.sid, v.claims.home))
    }

    /// `POST /v1/logout`: revokes the token's session everywhere. Unknown or invalid tokens
    /// are not an error (RFC 7009 §2.2).
    pub async fn logout(&self, token: &str) -> Result<bool, OAuthError> {
        let Some((sid, home)) = self.logout_session(token) else {
            self.metrics.logouts("unknown").inc();
            return Ok(false);
        };
        let (now_us, now) = Self::now_us();
        let also = match &home {
            Some(h) => Also::Home(h),
            None => Also::Everywhere,
        };
        self.publish(
            Kind::Session,
            &sid,
            EndReason::Logout.label(),
            true,
            now_us,
            also,
        )
        .await?;
        // the home marks its record from the feed; here at once when homed here
        if let Err(e) = self.end_session(&sid, EndReason::Logout, now).await {
            tracing::warn!(error = %e, "session record not marked yet (the feed will)");
        }
        self.metrics.logouts("revoked").inc();
        Ok(true)
    }

    /// `POST /v1/revocations`.
    pub async fn revoke(&self, req: RevocationRequest) -> Result<Published, OAuthError> {
        if !valid_id(&req.id) {
            return Err(OAuthError::invalid_request(
                "id: a string of 1 to 1024 bytes",
            ));
        }
        let reason = req
            .reason
            .unwrap_or_else(|| EndReason::Admin.label().into());
        if reason.len() > 64 || !reason.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(OAuthError::invalid_request(
                "reason: up to 64 visible ASCII characters",
            ));
        }
        let kind = match req.kind {
            RevokeKind::Session => Kind::Session,
            RevokeKind::Token => Kind::Token,
            RevokeKind::Subject => Kind::Subject,
        };
        let (now_us, now) = Self::now_us();
        let ev = self
            .publish(kind, &req.id, &reason, req.urgent, now_us, Also::Everywhere)
            .await?;
        match kind {
            Kind::Session => {
                let _ = self.end_session(&req.id, EndReason::Admin, now).await;
            }
            Kind::Subject => {
                let _ = self
                    .store()?
                    .raise_not_before(&self.cfg.issuer, &req.id, now)
                    .await;
            }
            _ => {}
        }
        Ok(Published {
            event_id: ev.event_id,
            kind: kind.label(),
            revoked_at: ev.revoked_at,
            expires_at: ev.expires_at,
            origin_region: ev.origin_region,
        })
    }

    /// A revocation applied by the feed (made in any region): sessions homed here are marked,
    /// subjects get a not-before, so they never refresh again — also after the revocation
    /// entry itself expires.
    pub async fn apply_to_records(&self, a: &crate::feed::Applied) -> Result<(), StoreError> {
        if !(a.issuer.is_empty() || a.issuer == self.cfg.issuer) {
            return Ok(());
        }
        match a.kind {
            Kind::Session => self
                .end_session(&a.id, EndReason::of(&a.reason), a.revoked_at())
                .await
                .map(|_| ()),
            Kind::Subject => {
                self.bucket()?
                    .raise_not_before(&self.cfg.issuer, &a.id, a.revoked_at())
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Back-channel logout of upstream session `(iss, sid)` at this home: every session
    /// created under it is revoked (published and marked).
    pub async fn upstream_logout_here(&self, iss: &str, sid: &str) -> Result<usize, OAuthError> {
        let ours = self
            .store()?
            .upstream_sessions(iss, sid)
            .await
            .map_err(store_err)?;
        let (now_us, now) = Self::now_us();
        for s in &ours {
            self.publish(
                Kind::Session,
                s,
                EndReason::UpstreamLogout.label(),
                true,
                now_us,
                Also::Nowhere,
            )
            .await?;
            if let Err(e) = self.end_session(s, EndReason::UpstreamLogout, now).await {
                tracing::warn!(error = %e, "session record not marked yet (the feed will)");
            }
        }
        Ok(ours.len())
    }

    /// Back-channel logout of `(iss, sid)` in every region: each home revokes its sessions.
    /// Err (503) if any home did not confirm: the IdP may retry, and what was done is
    /// idempotent.
    pub async fn upstream_logout_everywhere(
        &self,
        iss: &str,
        sid: &str,
    ) -> Result<usize, OAuthError> {
        let mut total = 0;
        let mut missing = Vec::new();
        let calls = self.regions.iter().map(|r| async move {
            let res = if *r == self.region {
                self.upstream_logout_here(iss, sid).await
            } else {
                self.forward(
                    r,
                    HomeRequest::UpstreamLogout {
                        iss: iss.to_string(),
                        sid: sid.to_string(),
                    },
                )
                .await
                .and_then(|reply| match reply {
                    HomeReply::Done { sessions } => Ok(sessions),
                    HomeReply::Error(e) => Err(e.into()),
                    HomeReply::Token(_) => Err(OAuthError::server_error("unexpected reply")),
                })
            };
            (r.clone(), res)
        });
        for (region, res) in futures::future::join_all(calls).await {
            match res {
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(region = %region, error = %e.error, "upstream logout not confirmed");
                    missing.push(region);
                }
            }
        }
        if missing.is_empty() {
            Ok(total)
        } else {
            Err(OAuthError::unavailable(format!(
                "not confirmed by region(s) {}; retry",
                missing.join(",")
            )))
        }
    }

    /// Serves one request from another authority.
    pub async fn serve_home(&self, req: HomeRequest) -> HomeReply {
        let result = match req {
            HomeRequest::Refresh {
                deadline_ms: Some(d),
                ..
            } if Self::now() > d => {
                // the sender has given up on it: nothing may be written behind its 503
                self.metrics.refresh("late").inc();
                tracing::warn!(
                    late_ms = Self::now() - d,
                    "refresh request arrived after its deadline; not served"
                );
                Err(OAuthError::unavailable(
                    "the request reached the home too late; retry",
                ))
            }
            HomeRequest::Refresh { refresh_token, .. } => {
                match refresh::parse(&self.mac, &refresh_token) {
                    Ok(p) if p.home == self.region => {
                        self.refresh_at_home(p).await.map(HomeReply::Token)
                    }
                    Ok(_) | Err(_) => {
                        Err(OAuthError::invalid_grant("refresh token not recognised"))
                    }
                }
            }
            HomeRequest::UpstreamLogout { iss, sid } => self
                .upstream_logout_here(&iss, &sid)
                .await
                .map(|sessions| HomeReply::Done { sessions }),
        };
        result.unwrap_or_else(|e| HomeReply::Error(e.to_wire()))
    }
}

/// What a validated back-channel logout token does: `sid` → every session created under that
/// upstream session, in every region; `sub` only → a subject revocation whose not-before is
/// the logout token's `iat` (never its receipt time: a replayed token cannot end sessions
/// created after it).
impl super::backchannel::LogoutEffect for Service {
    fn apply(
        &self,
        order: super::backchannel::LogoutOrder,
    ) -> futures::future::BoxFuture<'_, Result<(), super::backchannel::EffectError>> {
        use super::backchannel::EffectError;
        Box::pin(async move {
            let result = match (&order.sid, &order.sub) {
                (Some(sid), _) => self
                    .upstream_logout_everywhere(&order.issuer, sid)
                    .await
                    .map(|n| {
                        tracing::info!(idp = %order.idp, sessions = n, "back-channel logout applied");
                    }),
                (None, Some(sub)) => {
                    let at = order.iat.saturating_mul(1000);
                    self.publish(
                        Kind::Subject,
                        sub,
                        EndReason::UpstreamLogout.label(),
                        true,
                        at.saturating_mul(1000),
                        Also::Everywhere,
                    )
                        .await
                        .map(|_| ())
                }
                (None, None) => Ok(()),
            };
            result.map_err(|_| EffectError::Unavailable)
        })
    }
}
