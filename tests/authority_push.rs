//! The forced-logout socket (`GET /v1/ws`) for real: `veto authority` on a real nats-server, a
//! real WebSocket client. Handshake refusals, the subprotocol echo, pushes on logout, subject
//! and admin revocations, revoked and expired at connect, expiry while open, the per-session
//! cap and the 1012 on shutdown — each with its documented close code.

#[path = "support/authority.rs"]
mod authority_support;
mod support;

use authority_support::{Authority, Kit, ADMIN_TOKEN, ISSUER};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const ORIGIN: &str = "https://app.example";

async fn authority(extra: &str) -> (NatsServer, Kit, Authority) {
    authority_with_drain(extra, "100ms").await
}

async fn authority_with_drain(extra: &str, drain: &str) -> (NatsServer, Kit, Authority) {
    let nats = NatsServer::start();
    let kit = Kit::new();
    let cfg = Authority::config(
        &kit,
        &nats.url(),
        "us",
        &["us"],
        &format!("cors_origins = [\"{ORIGIN}\"]\n{extra}"),
    )
    .replace(
        "drain = \"100ms\"\ngrace = \"3s\"",
        &format!("drain = \"{drain}\"\ngrace = \"10s\""),
    );
    assert!(cfg.contains(&format!("drain = \"{drain}\"")), "{cfg}");
    let a = Authority::start(&cfg);
    a.wait_ready(Duration::from_secs(30)).await;
    (nats, kit, a)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the socket with these subprotocols (and `Origin` if given): the socket and the
/// selected protocol, or the HTTP status of the refusal.
async fn open(
    a: &Authority,
    protocols: Option<&str>,
    origin: Option<&str>,
    query: &str,
) -> Result<(Ws, Option<String>), u16> {
    let mut req = format!("ws://127.0.0.1:{}/v1/ws{query}", a.api)
        .into_client_request()
        .unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let selected = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_string());
            Ok((ws, selected))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake: {e}"),
    }
}

fn bearer(t: &str) -> String {
    format!("veto.v1, veto.bearer.{t}")
}

/// The next data message and the close code, within `bound`.
async fn ends(ws: &mut Ws, bound: Duration) -> (Option<Value>, Option<u16>) {
    let mut msg = None;
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return (msg, None),
            Ok(None) => return (msg, None),
            Ok(Some(Ok(Message::Text(t)))) => msg = serde_json::from_str(&t).ok(),
            Ok(Some(Ok(Message::Close(f)))) => return (msg, f.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) => return (msg, None),
        }
    }
}

async fn admin(a: &Authority, body: Value) -> u16 {
    reqwest::Client::new()
        .post(a.url("/v1/revocations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn handshakes_are_refused_before_the_upgrade_and_never_echo_the_token() {
    let (_n, _k, a) = authority("").await;
    let (_, t) = a.login(json!({"sub": "alice"})).await;
    let at = s(&t, "access_token");
    assert_eq!(
        open(&a, None, Some(ORIGIN), "").await.err(),
        Some(400),
        "no subprotocol"
    );
    assert_eq!(
        open(&a, Some("veto.v1"), Some(ORIGIN), "").await.err(),
        Some(401),
        "no bearer"
    );
    assert_eq!(
        open(&a, Some("veto.v1, veto.bearer.garbage"), Some(ORIGIN), "")
            .await
            .err(),
        Some(401)
    );
    let foreign = Issuer::new(veto::token::Alg::ES256).mint("alice", "s1");
    assert_eq!(
        open(&a, Some(&bearer(&foreign)), Some(ORIGIN), "")
            .await
            .err(),
        Some(401),
        "another issuer"
    );
    // the token in the query string is ignored
    assert_eq!(
        open(
            &a,
            Some("veto.v1"),
            Some(ORIGIN),
            &format!("?access_token={at}")
        )
        .await
        .err(),
        Some(401)
    );
    assert_eq!(
        open(&a, Some(&bearer(&at)), Some("https://evil.example"), "")
            .await
            .err(),
        Some(403),
        "bad Origin"
    );
    assert_eq!(
        open(&a, Some(&format!("veto.bearer.{at}")), Some(ORIGIN), "")
            .await
            .err(),
        Some(400),
        "no veto.v1"
    );
    // accepted: only veto.v1 is echoed
    let (mut ws, selected) = open(&a, Some(&bearer(&at)), Some(ORIGIN), "")
        .await
        .expect("upgrade");
    assert_eq!(selected.as_deref(), Some("veto.v1"));
    // a non-browser client (no Origin) is judged by its token alone
    assert!(open(&a, Some(&bearer(&at)), None, "").await.is_ok());
    // a large message from the client ends the connection, nothing else happens
    let _ = ws.send(Message::Text("x".repeat(10_000).into())).await;
    let (_, code) = ends(&mut ws, Duration::from_secs(3)).await;
    assert_ne!(code, Some(4403));
    assert!(
        !a.log().contains(&at[at.len() - 20..]),
        "the token was logged"
    );
}

#[tokio::test]
async fn a_logout_anywhere_closes_every_socket_of_the_session_with_4403() {
    let (_n, _k, a) = authority("").await;
    let (_, t) = a.login(json!({"sub": "alice"})).await;
    let (_, other) = a.login(json!({"sub": "alice"})).await;
    let at = s(&t, "access_token");
    let (mut tab1, _) = open(&a, Some(&bearer(&at)), Some(ORIGIN), "")
        .await
        .unwrap();
    let (mut tab2, _) = open(&a, Some(&bearer(&at)), Some(ORIGIN), "")
        .await
        .unwrap();
    let (mut unrelated, _) = open(
        &a,
        Some(&bearer(&s(&other, "access_token"))),
        Some(ORIGIN),
        "",
    )
    .await
    .unwrap();
    // a token revocation of another jti of the session closes nothing
    assert_eq!(
        admin(&a, json!({"kind": "token", "id": "another-jti"})).await,
        202
    );
    let started = Instant::now();
    assert_eq!(a.logout(&s(&t, "refresh_token")).await.0, 200);
    for tab in [&mut tab1, &mut tab2] {
        let (msg, code) = ends(tab, Duration::from_secs(5)).await;
        assert_eq!(code, Some(4403), "{msg:?}");
        let msg = msg.expect("the revoked message");
        assert_eq!(msg["type"], "revoked");
        assert_eq!(msg["kind"], "session");
        assert_eq!(msg["reason"], "logout");
        assert_eq!(msg["origin_region"], "us");
        assert!(msg["revoked_at"].as_i64().unwrap() > 0);
    }
    eprintln!("logout -> both sockets closed in {:?}", started.elapsed());
    // the other session's socket stays open
    let (msg, code) = ends(&mut unrelated, Duration::from_millis(500)).await;
    assert_eq!((msg, code), (None, None));
    // and a subject revocation closes it
    assert_eq!(
        admin(&a, json!({"kind": "subject", "id": "alice"})).await,
        202
    );
    let (msg, code) = ends(&mut unrelated, Duration::from_secs(5)).await;
    assert_eq!(code, Some(4403));
    assert_eq!(msg.unwrap()["kind"], "subject");
    let m = a.metrics().await;
    assert!(
        metric_sum(&m, "veto_authority_pushes_total", &[]) >= 3.0,
        "{m}"
    );
}

#[tokio::test]
async fn revoked_or_expired_at_connect_and_expiry_while_open() {
    let (_n, _k, a) = authority("access_token_ttl = \"2s\"\nleeway = \"1s\"").await;
    let (_, t) = a.login(json!({"sub": "bob"})).await;
    let (mut ws, _) = open(&a, Some(&bearer(&s(&t, "access_token"))), Some(ORIGIN), "")
        .await
        .unwrap();
    // expiry while open: {"type":"expired"}, 4401
    let (msg, code) = ends(&mut ws, Duration::from_secs(6)).await;
    assert_eq!(code, Some(4401), "{msg:?}");
    assert_eq!(msg.unwrap()["type"], "expired");
    // expired at connect: upgraded, then 4401
    let (mut ws, _) = open(&a, Some(&bearer(&s(&t, "access_token"))), Some(ORIGIN), "")
        .await
        .expect("an expired but well-signed token upgrades");
    assert_eq!(ends(&mut ws, Duration::from_secs(3)).await.1, Some(4401));
    // revoked at connect: 4403
    let (_, t) = a.login(json!({"sub": "carol"})).await;
    assert_eq!(
        admin(&a, json!({"kind": "session", "id": t["session_id"]})).await,
        202
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut ws, _) = open(&a, Some(&bearer(&s(&t, "access_token"))), Some(ORIGIN), "")
        .await
        .unwrap();
    let (msg, code) = ends(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(code, Some(4403), "{msg:?}");
}

#[tokio::test]
async fn the_per_session_cap_and_a_restart_have_their_codes() {
    let (_n, _k, mut a) = authority_with_drain("push_max_per_session = 2", "3s").await;
    let (_, t) = a.login(json!({"sub": "dave"})).await;
    let p = bearer(&s(&t, "access_token"));
    let (mut s1, _) = open(&a, Some(&p), Some(ORIGIN), "").await.unwrap();
    let (mut s2, _) = open(&a, Some(&p), Some(ORIGIN), "").await.unwrap();
    let (mut s3, _) = open(&a, Some(&p), Some(ORIGIN), "").await.unwrap();
    assert_eq!(ends(&mut s3, Duration::from_secs(3)).await.1, Some(4429));
    // SIGTERM: every socket is told to reconnect elsewhere at once, at the start of the
    // drain (3 s here), while the proxy stops routing to this replica
    let term = Instant::now();
    a.process().terminate();
    for s in [&mut s1, &mut s2] {
        assert_eq!(
            ends(s, Duration::from_secs(10)).await.1,
            Some(u16::from(CloseCode::Restart))
        );
    }
    assert!(
        term.elapsed() < Duration::from_millis(2000),
        "1012 only after the drain: {:?}",
        term.elapsed()
    );
}

#[tokio::test]
async fn without_the_fast_path_the_durable_path_still_closes_the_socket() {
    let nats = NatsServer::start();
    let kit = Kit::new();
    let cfg = Authority::config(
        &kit,
        &nats.url(),
        "us",
        &["us"],
        &format!("cors_origins = [\"{ORIGIN}\"]"),
    )
    .replacen("[authority]\n", "fast_path = false\n[authority]\n", 1);
    let a = Authority::start(&cfg);
    a.wait_ready(Duration::from_secs(30)).await;
    let (_, t) = a.login(json!({"sub": "erin"})).await;
    let (mut ws, _) = open(&a, Some(&bearer(&s(&t, "access_token"))), Some(ORIGIN), "")
        .await
        .unwrap();
    let started = Instant::now();
    let (code, _, err) = veto(&[
        "revoke",
        "--session",
        &s(&t, "session_id"),
        "--issuer",
        ISSUER,
        "--nats",
        &nats.url(),
        "--region",
        "us",
        "--reason",
        "admin",
    ]);
    assert_eq!(code, 0, "{err}");
    let (msg, code) = ends(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(code, Some(4403), "{msg:?}");
    assert_eq!(msg.unwrap()["reason"], "admin");
    eprintln!(
        "durable path only: revoke -> close in {:?}",
        started.elapsed()
    );
}
