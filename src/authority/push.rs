//! Forced logout pushed to browsers: `GET /v1/ws` on the authority.
//!
//! Authentication is at the handshake and never in the URL: the client offers the subprotocols
//! `veto.v1` and `veto.bearer.<access-jwt>`; the server selects and echoes only `veto.v1`
//! (Chromium fails a handshake whose offered protocols get no answer; echoing the bearer would
//! leak it). A browser's `Origin` must be on the allow-list (cross-site WebSocket hijacking);
//! a request without `Origin` is not a browser's and is let through to the token check.
//!
//! | answer | when | client |
//! |---|---|---|
//! | HTTP 403 before the upgrade | `Origin` not allowed | — |
//! | HTTP 400 before the upgrade | not a WebSocket upgrade, or `veto.v1` not offered | — |
//! | HTTP 401 before the upgrade | no bearer subprotocol, garbage, unsigned, another issuer | log in |
//! | close **4401** after `{"type":"expired"}` | the token expired (at connect or later) | refresh, reconnect |
//! | close **4403** after `{"type":"revoked",...}` | its session, its subject (for tokens issued before), or the token revoked (at connect or later) | log out, never reconnect |
//! | close **4429** | more than `push_max_per_session` sockets of the session, or `push_max_sockets` in all | reconnect later |
//! | close **4408** | no pong to the last ping | reconnect |
//! | close **1012** | the replica restarts or drains | reconnect (another replica) |
//!
//! Every replica follows the revocation feed (the applied stream: fast path and durable path,
//! whichever comes first) and indexes its sockets by session and by subject.

use super::metrics::AuthorityMetrics;
use super::oauth::OAuthError;
use crate::feed::Applied;
use crate::revocation::{Kind, RevokedSet};
use crate::token::Validator;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The subprotocol the server selects.
pub const PROTOCOL: &str = "veto.v1";
/// Prefix of the subprotocol carrying the access token.
pub const BEARER_PREFIX: &str = "veto.bearer.";
/// Largest message accepted from a client (it has nothing to say).
pub const MAX_MESSAGE_BYTES: usize = 4096;

pub const CLOSE_EXPIRED: u16 = 4401;
pub const CLOSE_REVOKED: u16 = 4403;
pub const CLOSE_NO_PONG: u16 = 4408;
pub const CLOSE_TOO_MANY: u16 = 4429;
pub const CLOSE_RESTART: u16 = 1012;

#[derive(Debug, Clone)]
pub struct PushConfig {
    pub origins: Vec<String>,
    pub ping_interval: Duration,
    pub max_per_session: usize,
    pub max_sockets: usize,
    /// The issuer's leeway on `exp`, in seconds.
    pub leeway_secs: i64,
}

/// What a socket task is told to do.
enum Cmd {
    Revoked(Value),
    Restart,
}

struct Socket {
    sid: String,
    iss: String,
    sub: Option<String>,
    jti: Option<String>,
    iat: i64,
    tx: mpsc::Sender<Cmd>,
}

#[derive(Default)]
struct Index {
    sockets: HashMap<u64, Socket>,
    by_sid: HashMap<String, HashSet<u64>>,
    by_sub: HashMap<(String, String), HashSet<u64>>,
}

/// The open sockets of this replica.
pub struct Hub {
    cfg: PushConfig,
    index: Mutex<Index>,
    next: AtomicU64,
    draining: std::sync::atomic::AtomicBool,
    validator: Arc<Validator>,
    revoked: Arc<RevokedSet>,
    metrics: AuthorityMetrics,
}

impl Hub {
    pub fn new(
        cfg: PushConfig,
        validator: Arc<Validator>,
        revoked: Arc<RevokedSet>,
        metrics: AuthorityMetrics,
    ) -> Hub {
        Hub {
            cfg,
            index: Mutex::default(),
            next: AtomicU64::new(1),
            draining: Default::default(),
            validator,
            revoked,
            metrics,
        }
    }

    pub fn open_sockets(&self) -> usize {
        self.index.lock().sockets.len()
    }

    /// Registers a socket, or says which cap refuses it.
    fn register(&self, s: Socket) -> Result<u64, &'static str> {
        let mut ix = self.index.lock();
        if self.draining.load(Ordering::Acquire) {
            return Err("draining");
        }
        if ix.sockets.len() >= self.cfg.max_sockets {
            return Err("max_sockets");
        }
        if ix.by_sid.get(&s.sid).map_or(0, HashSet::len) >= self.cfg.max_per_session {
            return Err("max_per_session");
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        ix.by_sid.entry(s.sid.clone()).or_default().insert(id);
        if let Some(sub) = &s.sub {
            ix.by_sub
                .entry((s.iss.clone(), sub.clone()))
                .or_default()
                .insert(id);
        }
        ix.sockets.insert(id, s);
        self.metrics.push_sockets.set(ix.sockets.len() as i64);
        Ok(id)
    }

    fn unregister(&self, id: u64) {
        let mut ix = self.index.lock();
        let Some(s) = ix.sockets.remove(&id) else {
            return;
        };
        if let Some(set) = ix.by_sid.get_mut(&s.sid) {
            set.remove(&id);
            if set.is_empty() {
                ix.by_sid.remove(&s.sid);
            }
        }
        if let Some(sub) = s.sub {
            let key = (s.iss, sub);
            if let Some(set) = ix.by_sub.get_mut(&key) {
                set.remove(&id);
                if set.is_empty() {
                    ix.by_sub.remove(&key);
                }
            }
        }
        self.metrics.push_sockets.set(ix.sockets.len() as i64);
    }

    /// A revocation applied by the feed: every socket it ends is told, once.
    pub fn on_applied(&self, a: &Applied) {
        let issuer_ok = |s: &Socket| a.issuer.is_empty() || a.issuer == s.iss;
        let ix = self.index.lock();
        let ids: Vec<u64> = match a.kind {
            Kind::Session => ix
                .by_sid
                .get(&a.id)
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default(),
            Kind::Subject => ix
                .by_sub
                .iter()
                .filter(|((_, sub), _)| *sub == a.id)
                .flat_map(|(_, set)| set.iter().copied())
                .collect(),
            Kind::Token => ix
                .sockets
                .iter()
                .filter(|(_, s)| s.jti.as_deref() == Some(a.id.as_str()))
                .map(|(id, _)| *id)
                .collect(),
            Kind::Unspecified => vec![],
        };
        let reason = super::session::EndReason::of(&a.reason).label();
        let msg = json!({
            "type": "revoked",
            "kind": a.kind.label(),
            "reason": reason,
            "revoked_at": a.revoked_at(),
            "origin_region": a.origin,
        });
        for id in ids {
            let Some(s) = ix.sockets.get(&id) else {
                continue;
            };
            if !issuer_ok(s) {
                continue;
            }
            // a subject revocation ends the tokens issued before it
            if a.kind == Kind::Subject && s.iat.saturating_mul(1000) >= a.revoked_at() {
                continue;
            }
            if s.tx.try_send(Cmd::Revoked(msg.clone())).is_ok() {
                self.metrics.pushes(reason).inc();
                let lag = (crate::now_us() - a.revoked_at_us).max(0) as f64 / 1e6;
                self.metrics.push_latency.observe(lag);
            }
        }
    }

    /// The replica drains: every open socket, and every one opened from now on, is told to go
    /// elsewhere (1012).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let ix = self.index.lock();
        for s in ix.sockets.values() {
            let _ = s.tx.try_send(Cmd::Restart);
        }
    }
}

/// `GET /v1/ws`.
pub fn routes(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/v1/ws", get(handshake))
        .with_state(hub)
}

/// The subprotocols offered: whether `veto.v1` is among them, and the bearer.
fn offered(h: &HeaderMap) -> (bool, Option<String>) {
    let mut v1 = false;
    let mut bearer = None;
    for value in h.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(text) = value.to_str() else { continue };
        for p in text.split(',').map(str::trim) {
            if p == PROTOCOL {
                v1 = true;
            } else if let Some(t) = p.strip_prefix(BEARER_PREFIX) {
                bearer = Some(t.to_string());
            }
        }
    }
    (v1, bearer)
}

fn refuse(status: u16, error: &str, description: &str) -> Response {
    let mut r = OAuthError::new(status, error, description).into_response();
    if status == 401 {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(
                "Bearer realm=\"veto-authority\", error=\"invalid_token\"",
            ),
        );
    }
    r
}

async fn handshake(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| hub.cfg.origins.iter().any(|x| x == o));
        if !allowed {
            hub.metrics.push_refused("origin").inc();
            return refuse(403, "forbidden", "origin not allowed");
        }
    }
    let (v1, bearer) = offered(&headers);
    if !v1 {
        hub.metrics.push_refused("protocol").inc();
        return refuse(400, "invalid_request", "offer the subprotocol veto.v1");
    }
    let Some(token) = bearer else {
        hub.metrics.push_refused("unauthenticated").inc();
        return refuse(
            401,
            "invalid_token",
            "offer the subprotocol veto.bearer.<access token>",
        );
    };
    let now = crate::now_ms();
    let Ok(v) = hub.validator.validate_for_logout(&token, now / 1000) else {
        hub.metrics.push_refused("unauthenticated").inc();
        return refuse(401, "invalid_token", "the access token is not valid");
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(_) => {
            hub.metrics.push_refused("not_websocket").inc();
            return refuse(400, "invalid_request", "not a WebSocket upgrade");
        }
    };
    let c = v.claims;
    let exp_ms = c
        .exp
        .saturating_add(hub.cfg.leeway_secs)
        .saturating_mul(1000);
    let revoked = hub.revoked.check(
        &c.iss,
        &c.sid,
        c.jti.as_deref(),
        c.sub.as_deref(),
        c.iat,
        now,
    );
    // small buffers: an idle socket costs a few KiB, not the 2 × 128 KiB defaults (nothing
    // big ever crosses it)
    let upgrade = upgrade
        .protocols([PROTOCOL])
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .read_buffer_size(MAX_MESSAGE_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    upgrade.on_upgrade(move |mut ws| async move {
        if let Some(by) = revoked {
            let kind = match by {
                crate::revocation::RevokedBy::Session => "session",
                crate::revocation::RevokedBy::Token => "token",
                crate::revocation::RevokedBy::Subject => "subject",
            };
            hub.metrics.push_refused("revoked").inc();
            let msg = json!({"type": "revoked", "kind": kind, "reason": "revoked"});
            say_and_close(&mut ws, Some(msg), CLOSE_REVOKED, "revoked").await;
            return;
        }
        if crate::now_ms() >= exp_ms {
            hub.metrics.push_refused("expired").inc();
            say_and_close(
                &mut ws,
                Some(json!({"type": "expired"})),
                CLOSE_EXPIRED,
                "expired",
            )
            .await;
            return;
        }
        let (tx, rx) = mpsc::channel(4);
        let socket = Socket {
            sid: c.sid,
            iss: c.iss,
            sub: c.sub,
            jti: c.jti,
            iat: c.iat,
            tx,
        };
        match hub.register(socket) {
            Ok(id) => {
                serve(&mut ws, &hub, rx, exp_ms).await;
                hub.unregister(id);
            }
            Err("draining") => {
                say_and_close(&mut ws, None, CLOSE_RESTART, "restarting").await;
            }
            Err(cap) => {
                hub.metrics.push_refused(cap).inc();
                say_and_close(&mut ws, None, CLOSE_TOO_MANY, "too many sockets").await;
            }
        }
    })
}

async fn say_and_close(ws: &mut WebSocket, msg: Option<Value>, code: u16, reason: &'static str) {
    if let Some(m) = msg {
        let _ = ws.send(Message::Text(m.to_string().into())).await;
    }
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// One open socket: pings, the token's expiry, what the feed says, the client's close.
async fn serve(ws: &mut WebSocket, hub: &Hub, mut rx: mpsc::Receiver<Cmd>, exp_ms: i64) {
    let until_exp = Duration::from_millis((exp_ms - crate::now_ms()).max(0) as u64);
    let expire = tokio::time::sleep(until_exp);
    tokio::pin!(expire);
    let mut ping = tokio::time::interval(hub.cfg.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                match cmd {
                    Some(Cmd::Revoked(msg)) => {
                        say_and_close(ws, Some(msg), CLOSE_REVOKED, "revoked").await;
                    }
                    Some(Cmd::Restart) | None => {
                        say_and_close(ws, None, CLOSE_RESTART, "restarting").await;
                    }
                }
                return;
            }
            _ = &mut expire => {
                say_and_close(ws, Some(json!({"type": "expired"})), CLOSE_EXPIRED, "expired").await;
                return;
            }
            _ = ping.tick() => {
                if awaiting_pong {
                    say_and_close(ws, None, CLOSE_NO_PONG, "no pong").await;
                    return;
                }
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                awaiting_pong = true;
            }
            msg = ws.recv() => {
                match msg {
                    Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                    // the client closes: answer its close frame (RFC 6455 §5.5.1)
                    Some(Ok(Message::Close(_))) => {
                        let _ = ws.send(Message::Close(None)).await;
                        return;
                    }
                    None | Some(Err(_)) => return,
                    // the client has nothing to say; pings are answered by the library
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}
