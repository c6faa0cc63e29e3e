//! The authority for real: `veto authority` on a real nats-server (JetStream), HTTP clients
//! from outside, a real sidecar validating what it issues. Sessions, rotation, grace, reuse,
//! logout, admin revocations and the bad-input catalogue — each refusal checked for status,
//! body and "nothing half-written" (the bucket's last sequence, revocation events seen on the
//! bus).

#[path = "support/authority.rs"]
mod authority_support;
mod support;

use async_nats::jetstream;
use authority_support::{form, sidecar_issuer, Authority, Kit, ADMIN_TOKEN, ISSUER};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

struct Region {
    nats: NatsServer,
    kit: Kit,
    a: Authority,
    /// Every revocation event published while the test runs (core NATS view of the stream).
    events: Arc<Mutex<Vec<Value>>>,
    js: jetstream::Context,
}

async fn region_with(extra: &str) -> Region {
    let nats = NatsServer::start();
    let kit = Kit::new();
    let a = Authority::start(&Authority::config(&kit, &nats.url(), "us", &["us"], extra));
    a.wait_ready(Duration::from_secs(30)).await;
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut sub = client
        .subscribe("veto.revocations.*.ev.>")
        .await
        .expect("subscribe");
    let seen = events.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            use prost::Message;
            if let Ok(ev) = veto::revocation::RevocationEvent::decode(m.payload.as_ref()) {
                seen.lock().unwrap().push(json!({
                    "event_id": ev.event_id, "kind": ev.kind, "id": ev.id,
                    "issuer": ev.issuer, "reason": ev.reason, "urgent": ev.urgent,
                    "revoked_at": ev.revoked_at, "expires_at": ev.expires_at,
                }));
            }
        }
    });
    client.flush().await.expect("flush");
    let js = jetstream::new(client);
    Region {
        nats,
        kit,
        a,
        events,
        js,
    }
}

async fn region() -> Region {
    region_with("").await
}

impl Region {
    /// The session bucket's last sequence: any write moves it.
    async fn kv_seq(&self) -> u64 {
        let mut s = self
            .js
            .get_stream("KV_VETO_SESSIONS")
            .await
            .expect("bucket stream");
        s.info().await.expect("info").state.last_sequence
    }

    async fn record(&self, sid: &str) -> Value {
        let kv = self
            .js
            .get_key_value("VETO_SESSIONS")
            .await
            .expect("bucket");
        let v = kv
            .get(format!("s.{sid}"))
            .await
            .expect("get")
            .expect("record");
        serde_json::from_slice(&v).expect("json")
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// The events once those just published have reached this test's subscriber (delivery
    /// follows the publish acknowledgement by a moment).
    async fn events_settled(&self) -> Vec<Value> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.events()
    }

    /// A ready sidecar of this region trusting the authority.
    async fn sidecar(&self) -> Sidecar {
        let sc = Sidecar::start(&format!(
            "[log]\nlevel = \"info\"\n{}\n{}",
            sidecar_issuer(&self.a.jwks_url()),
            nats_section(&self.nats.url(), "us", &["us"], "")
        ));
        sc.wait_ready(Duration::from_secs(20)).await;
        sc
    }

    async fn login(&self, sub: &str) -> Value {
        let (st, t) = self.a.login(json!({ "sub": sub })).await;
        assert_eq!(st, 201, "{t}\n{}", self.a.log());
        t
    }

    /// Runs `f`, then checks nothing was written and nothing published (after a moment for
    /// stray writes to land).
    async fn nothing_written<F, Fut>(&self, what: &str, f: F)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (seq, n) = (self.kv_seq().await, self.events().len());
        f().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(self.kv_seq().await, seq, "{what}: the bucket was written");
        assert_eq!(self.events().len(), n, "{what}: an event was published");
    }
}

/// `n` refreshes of one token at once, spread over `urls`: every answer.
async fn storm(urls: &[String], rt: &str, n: usize) -> Vec<(u16, Value)> {
    let calls = (0..n).map(|i| {
        let (url, rt) = (urls[i % urls.len()].clone(), rt.to_string());
        tokio::spawn(async move {
            form(
                &url,
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
            )
            .await
        })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|x| x.expect("refresh task"))
        .collect()
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// A raw POST: status, headers, body.
async fn post(
    url: &str,
    ct: Option<&str>,
    auth: Option<&str>,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = reqwest::Client::new().post(url).body(body);
    if let Some(ct) = ct {
        r = r.header("content-type", ct);
    }
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = r.send().await.expect("post");
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

const FORM: &str = "application/x-www-form-urlencoded";

fn assert_oauth_error(
    what: &str,
    status: u16,
    h: &reqwest::header::HeaderMap,
    body: &Value,
    want_status: u16,
    want_error: &str,
) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(body["error"], want_error, "{what}: {body}");
    assert_eq!(
        h.get("cache-control").map(|v| v.to_str().unwrap_or("")),
        Some("no-store"),
        "{what}"
    );
    assert!(
        h.get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json")),
        "{what}: not JSON"
    );
}

#[tokio::test]
async fn login_refresh_rotate_and_logout_with_a_real_sidecar() {
    let r = region().await;
    let sc = r.sidecar().await;

    let t0 = r.login("alice").await;
    assert_eq!(t0["token_type"], "Bearer");
    assert!(t0["expires_in"].as_i64().unwrap_or(0) > 0);
    let rt0 = s(&t0, "refresh_token");
    assert!(rt0.starts_with("vrt1.us."), "{rt0}");
    let rec = r.record(&s(&t0, "session_id")).await;
    assert!(
        !rec.to_string().contains(rt0.rsplit('.').nth(1).unwrap()),
        "the secret is stored"
    );
    let ok = sc
        .check(Some(&format!("Bearer {}", s(&t0, "access_token"))))
        .await;
    assert_eq!(
        ok.status(),
        200,
        "the sidecar validates what the authority issues"
    );
    assert_eq!(ok.headers()["x-user-id"], "alice");

    let (st, t1) = r.a.refresh(&rt0).await;
    assert_eq!(st, 200, "{t1}");
    let rt1 = s(&t1, "refresh_token");
    assert_ne!(rt1, rt0);
    assert_eq!(
        sc.check(Some(&format!("Bearer {}", s(&t1, "access_token"))))
            .await
            .status(),
        200
    );
    // the previous token right away: the identical successor, nothing rotated
    let (st, again) = r.a.refresh(&rt0).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(s(&again, "refresh_token"), rt1);
    assert_eq!(r.record(&s(&t0, "session_id")).await["generation"], 1);

    let (st, _) = r.a.logout(&rt1).await;
    assert_eq!(st, 200);
    let (st, after) = r.a.refresh(&rt1).await;
    assert_eq!(st, 400, "{after}");
    assert_eq!(after["error"], "invalid_grant");
    let access = format!("Bearer {}", s(&t1, "access_token"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            sc.check(Some(&access)).await.status() == 401
        })
        .await
        .is_some(),
        "the sidecar still allows a logged-out session"
    );
    let ev = r.events_settled().await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["reason"], "logout");
    assert_eq!(ev[0]["issuer"], ISSUER);
}

#[tokio::test]
async fn the_admin_credential_is_required_and_compared_whole() {
    let r = region().await;
    let url = r.a.url("/v1/sessions");
    let body = || serde_json::to_vec(&json!({"sub": "mallory"})).unwrap();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        (
            "wrong",
            Some("Bearer not-the-admin-token-0123456789abcdef".into()),
        ),
        (
            "prefix",
            Some(format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1])),
        ),
        ("longer", Some(format!("Bearer {ADMIN_TOKEN}x"))),
        ("basic scheme", Some(format!("Basic {ADMIN_TOKEN}"))),
        ("no scheme", Some(ADMIN_TOKEN.to_string())),
        ("empty", Some("Bearer ".into())),
    ];
    for (what, auth) in cases {
        r.nothing_written(what, || async {
            let (st, h, b) = post(&url, Some("application/json"), auth.as_deref(), body()).await;
            assert_oauth_error(what, st, &h, &b, 401, "invalid_client");
            assert!(h.get("www-authenticate").is_some(), "{what}");
        })
        .await;
        let (st, h, b) = post(
            &r.a.url("/v1/revocations"),
            Some("application/json"),
            auth.as_deref(),
            serde_json::to_vec(&json!({"kind": "subject", "id": "alice"})).unwrap(),
        )
        .await;
        assert_oauth_error(what, st, &h, &b, 401, "invalid_client");
    }
    // the scheme is case-insensitive (RFC 6750)
    let (st, _, b) = post(
        &url,
        Some("application/json"),
        Some(&format!("bearer {ADMIN_TOKEN}")),
        body(),
    )
    .await;
    assert_eq!(st, 201, "{b}");
}

#[tokio::test]
async fn session_requests_are_checked_before_anything_is_written() {
    let r = region().await;
    let url = r.a.url("/v1/sessions");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut cases: Vec<(String, &str, Vec<u8>, u16)> = vec![];
    for c in [
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "sid",
        "veto_home",
    ] {
        cases.push((
            format!("reserved claim {c}"),
            "application/json",
            serde_json::to_vec(&json!({"sub": "a", "claims": {c: "x"}})).unwrap(),
            400,
        ));
    }
    let big = "x".repeat(70 * 1024);
    let more: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("not JSON", "application/json", b"{nope".to_vec(), 400),
        ("not an object", "application/json", b"[1,2]".to_vec(), 400),
        (
            "unknown field",
            "application/json",
            br#"{"sub":"a","admin":true}"#.to_vec(),
            400,
        ),
        (
            "missing sub",
            "application/json",
            br#"{"claims":{}}"#.to_vec(),
            400,
        ),
        (
            "numeric sub",
            "application/json",
            br#"{"sub":12345}"#.to_vec(),
            400,
        ),
        (
            "empty sub",
            "application/json",
            br#"{"sub":""}"#.to_vec(),
            400,
        ),
        (
            "empty aud list",
            "application/json",
            br#"{"sub":"a","aud":[]}"#.to_vec(),
            400,
        ),
        ("form body", FORM, b"sub=a".to_vec(), 400),
        (
            "non-UTF-8",
            "application/json",
            b"{\"sub\":\"\xff\xfe\"}".to_vec(),
            400,
        ),
        (
            "oversized",
            "application/json",
            format!("{{\"sub\":\"{big}\"}}").into_bytes(),
            413,
        ),
        (
            "upstream without sid",
            "application/json",
            br#"{"sub":"a","upstream":{"iss":"https://idp"}}"#.to_vec(),
            400,
        ),
    ];
    cases.extend(
        more.into_iter()
            .map(|(a, b, c, d)| (a.to_string(), b, c, d)),
    );
    for (what, ct, body, want) in cases {
        r.nothing_written(&what, || async {
            let (st, h, b) = post(&url, Some(ct), Some(&auth), body).await;
            assert_oauth_error(&what, st, &h, &b, want, "invalid_request");
            assert!(
                !b.to_string().contains("xxxxxxxx"),
                "{what}: the body echoes input"
            );
        })
        .await;
    }
    // extras and audiences that are fine, and reach the token
    let (st, t) =
        r.a.login(json!({"sub": "bob", "aud": ["api", "web"], "claims": {"tenant": "t1"}}))
            .await;
    assert_eq!(st, 201, "{t}");
    let payload = s(&t, "access_token")
        .split('.')
        .nth(1)
        .map(str::to_string)
        .unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["tenant"], "t1");
    assert_eq!(claims["aud"], json!(["api", "web"]));
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["veto_home"], "us");
    assert_eq!(claims["sid"], t["session_id"]);
}

#[tokio::test]
async fn the_token_endpoint_answers_rfc6749_errors_and_touches_nothing() {
    let r = region().await;
    let t = r.login("alice").await;
    let rt = s(&t, "refresh_token");
    let url = r.a.url("/v1/token");
    let enc = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).unwrap().into_bytes();
    // a well-formed token of the same session with another tag: a forged MAC
    let mut parts: Vec<&str> = rt.split('.').collect();
    let forged_tag = "A".repeat(parts[6].len());
    parts[6] = &forged_tag;
    let forged = parts.join(".");
    let next_gen = rt.replacen(".0.", ".1.", 1);
    // (what, content type, body, status, error)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "JSON body",
            Some("application/json"),
            br#"{"grant_type":"refresh_token"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "no content type",
            None,
            enc(&[("grant_type", "refresh_token"), ("refresh_token", &rt)]),
            400,
            "invalid_request",
        ),
        (
            "missing grant_type",
            Some(FORM),
            enc(&[("refresh_token", &rt)]),
            400,
            "invalid_request",
        ),
        (
            "duplicate grant_type",
            Some(FORM),
            enc(&[
                ("grant_type", "refresh_token"),
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
            ]),
            400,
            "invalid_request",
        ),
        (
            "duplicate refresh_token",
            Some(FORM),
            enc(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
                ("refresh_token", &rt),
            ]),
            400,
            "invalid_request",
        ),
        (
            "missing refresh_token",
            Some(FORM),
            enc(&[("grant_type", "refresh_token")]),
            400,
            "invalid_request",
        ),
        (
            "password grant",
            Some(FORM),
            enc(&[
                ("grant_type", "password"),
                ("username", "a"),
                ("password", "b"),
            ]),
            400,
            "unsupported_grant_type",
        ),
        (
            "client_credentials",
            Some(FORM),
            enc(&[("grant_type", "client_credentials")]),
            400,
            "unsupported_grant_type",
        ),
        (
            "oversized",
            Some(FORM),
            enc(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &"a".repeat(9000)),
            ]),
            413,
            "invalid_request",
        ),
        (
            "garbage token",
            Some(FORM),
            enc(&[("grant_type", "refresh_token"), ("refresh_token", "hello")]),
            400,
            "invalid_grant",
        ),
        (
            "truncated token",
            Some(FORM),
            enc(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt[..rt.len() - 4]),
            ]),
            400,
            "invalid_grant",
        ),
        (
            "forged MAC",
            Some(FORM),
            enc(&[("grant_type", "refresh_token"), ("refresh_token", &forged)]),
            400,
            "invalid_grant",
        ),
        (
            "generation edited",
            Some(FORM),
            enc(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &next_gen),
            ]),
            400,
            "invalid_grant",
        ),
        (
            "a JWT",
            Some(FORM),
            enc(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &s(&t, "access_token")),
            ]),
            400,
            "invalid_grant",
        ),
    ];
    for (what, ct, body, want, err) in cases {
        r.nothing_written(what, || async {
            let (st, h, b) = post(&url, ct, None, body).await;
            assert_oauth_error(what, st, &h, &b, want, err);
            assert!(
                !b.to_string().contains(&rt[10..40]),
                "{what}: the token is echoed"
            );
        })
        .await;
    }
    // non-UTF-8 bytes: a clean 400 in RFC 6749 form, whatever the parameter
    for raw in [
        &b"grant_type=refresh_token&refresh_token=\xff\xfe"[..],
        b"\xff=\xfe",
        b"grant_type=%FF",
    ] {
        r.nothing_written("non-UTF-8", || async {
            let (st, h, b) = post(&url, Some(FORM), None, raw.to_vec()).await;
            assert_eq!(st, 400, "{b}");
            assert!(
                ["invalid_request", "invalid_grant", "unsupported_grant_type"]
                    .contains(&b["error"].as_str().unwrap_or("")),
                "{b}"
            );
            assert_eq!(h["cache-control"], "no-store");
        })
        .await;
    }
    // wrong method and unknown paths: this API's JSON, not the framework's
    let g = reqwest::get(&url).await.unwrap();
    assert_eq!(g.status(), 405);
    assert_eq!(g.json::<Value>().await.unwrap()["error"], "invalid_request");
    let nf = reqwest::get(r.a.url("/v1/nope")).await.unwrap();
    assert_eq!(nf.status(), 404);
    // none of that touched the session: the real token still rotates
    let (st, b) = r.a.refresh(&rt).await;
    assert_eq!(st, 200, "a refusal hurt the session: {b}");
}

#[tokio::test]
async fn reuse_of_a_rotated_token_revokes_the_session_everywhere() {
    let r = region().await;
    let sc = r.sidecar().await;
    let t0 = r.login("alice").await;
    let sid = s(&t0, "session_id");
    let (_, t1) = r.a.refresh(&s(&t0, "refresh_token")).await;
    let (_, t2) = r.a.refresh(&s(&t1, "refresh_token")).await;
    let access = format!("Bearer {}", s(&t2, "access_token"));
    assert_eq!(sc.check(Some(&access)).await.status(), 200);

    // the grand-parent: theft
    let (st, b) = r.a.refresh(&s(&t0, "refresh_token")).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(b["error"], "invalid_grant");
    assert!(s(&b, "error_description").contains("reuse"), "{b}");
    // a retry of the same theft publishes the same event id (deduplicated)
    let (st, _) = r.a.refresh(&s(&t0, "refresh_token")).await;
    assert_eq!(st, 400);
    let ev = r.events_settled().await;
    assert!(!ev.is_empty(), "no revocation published");
    assert!(
        ev.iter().all(|e| e["event_id"] == ev[0]["event_id"]),
        "{ev:?}"
    );
    assert_eq!(ev[0]["id"], sid);
    assert_eq!(ev[0]["reason"], "refresh_reuse");
    assert_eq!(ev[0]["urgent"], true);
    // an hour? no: revoked for the longest token lifetime + leeway
    let held = ev[0]["expires_at"].as_i64().unwrap() - ev[0]["revoked_at"].as_i64().unwrap();
    assert_eq!(held, (15 * 60 + 30) * 1000);

    // afterwards nothing of the session works: the newest refresh token, the access token
    let (st, b) = r.a.refresh(&s(&t2, "refresh_token")).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(r.record(&sid).await["reason"], "refresh_reuse");
    assert!(
        eventually(Duration::from_secs(5), || async {
            sc.check(Some(&access)).await.status() == 401
        })
        .await
        .is_some(),
        "the access token of a stolen session still works"
    );
}

#[tokio::test]
async fn the_grace_returns_the_same_successor_a_bounded_number_of_times() {
    // coalescing window min(grace, 2 s) = 2 s; grace 5 s; one counted replay
    let r = region_with("refresh_grace = \"5s\"\nrefresh_max_replays = 1").await;
    let t0 = r.login("alice").await;
    let rt0 = s(&t0, "refresh_token");
    let rotated_at = Instant::now();
    let (_, t1) = r.a.refresh(&rt0).await;
    let rt1 = s(&t1, "refresh_token");
    // duplicates right after the rotation: coalesced, not counted, nothing written
    let seq = r.kv_seq().await;
    for _ in 0..5 {
        let (st, b) = r.a.refresh(&rt0).await;
        assert_eq!((st, s(&b, "refresh_token")), (200, rt1.clone()), "{b}");
    }
    assert_eq!(r.kv_seq().await, seq);
    // after the coalescing window: one counted replay, still the same successor; its copies
    // right after are the same replay
    tokio::time::sleep_until((rotated_at + Duration::from_millis(2300)).into()).await;
    for _ in 0..3 {
        let (st, b) = r.a.refresh(&rt0).await;
        assert_eq!((st, s(&b, "refresh_token")), (200, rt1.clone()), "{b}");
    }
    assert_eq!(r.record(&s(&t0, "session_id")).await["replays"], 1);
    // the count is spent: another replay (past the copies' window, inside the grace) is theft
    tokio::time::sleep_until((rotated_at + Duration::from_millis(4600)).into()).await;
    let (st, b) = r.a.refresh(&rt0).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(
        r.a.refresh(&rt1).await.0,
        400,
        "the chain survived a detected theft"
    );

    // the previous token after the window: theft too
    let t0 = r.login("bob").await;
    let (_, t1) = r.a.refresh(&s(&t0, "refresh_token")).await;
    tokio::time::sleep(Duration::from_millis(5300)).await;
    let (st, b) = r.a.refresh(&s(&t0, "refresh_token")).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(r.a.refresh(&s(&t1, "refresh_token")).await.0, 400);
}

#[tokio::test]
async fn fifty_parallel_refreshes_of_one_token_rotate_once() {
    let r = region().await;
    let t0 = r.login("alice").await;
    let sid = s(&t0, "session_id");
    let rt0 = s(&t0, "refresh_token");
    let answers = storm(&[r.a.url("/v1/token")], &rt0, 50).await;
    let first = s(&answers[0].1, "refresh_token");
    for (st, b) in &answers {
        assert_eq!(*st, 200, "{b}");
        assert_eq!(s(b, "refresh_token"), first);
    }
    assert_eq!(
        r.record(&sid).await["generation"],
        1,
        "more than one rotation"
    );
    assert!(
        r.events_settled().await.is_empty(),
        "a storm was taken for theft"
    );
    assert_eq!(r.a.refresh(&first).await.0, 200);
}

#[tokio::test]
async fn reuse_racing_a_legitimate_refresh_still_kills_the_whole_session() {
    let r = region().await;
    for round in 0..5 {
        let t0 = r.login(&format!("user{round}")).await;
        let (_, t1) = r.a.refresh(&s(&t0, "refresh_token")).await;
        let (_, t2) = r.a.refresh(&s(&t1, "refresh_token")).await;
        let (rt2, rt0) = (s(&t2, "refresh_token"), s(&t0, "refresh_token"));
        let (good, bad) = tokio::join!(r.a.refresh(&rt2), r.a.refresh(&rt0));
        assert_eq!(bad.0, 400, "{}", bad.1);
        // whichever won, no token of the session works afterwards
        for rt in [s(&t2, "refresh_token"), s(&good.1, "refresh_token")] {
            if !rt.is_empty() {
                assert_eq!(
                    r.a.refresh(&rt).await.0,
                    400,
                    "round {round}: a token survived the theft"
                );
            }
        }
    }
}

#[tokio::test]
async fn expired_idle_and_revoked_sessions_do_not_refresh() {
    let r = region_with("access_token_ttl = \"1s\"\nsession_lifetime = \"3s\"\nsession_idle_timeout = \"2s\"\nleeway = \"1s\"").await;
    // absolute expiry, refreshed or not
    let t = r.login("alice").await;
    let mut rt = s(&t, "refresh_token");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3300) {
        let (st, b) = r.a.refresh(&rt).await;
        if st != 200 {
            assert!(
                started.elapsed() >= Duration::from_millis(2900),
                "refused too early: {b}"
            );
            break;
        }
        rt = s(&b, "refresh_token");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (st, b) = r.a.refresh(&rt).await;
    assert_eq!(
        (st, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    // idle: not refreshed for longer than the idle timeout (the bucket's max_age)
    let t = r.login("bob").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (st, b) = r.a.refresh(&s(&t, "refresh_token")).await;
    assert_eq!(
        (st, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "idle session refreshed: {b}"
    );
    // logout with an access token that has already expired (well-signed): still ends it
    let t = r.login("carol").await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let (st, _) = r.a.logout(&s(&t, "access_token")).await;
    assert_eq!(st, 200);
    // the event reaches this test's subscriber a moment after the publish was acknowledged
    assert!(
        eventually(Duration::from_secs(3), || async {
            r.events().iter().any(|e| e["id"] == t["session_id"])
        })
        .await
        .is_some(),
        "the expired token's session was not revoked"
    );
}

#[tokio::test]
async fn logout_is_idempotent_and_quiet_about_unknown_tokens() {
    let r = region().await;
    let t = r.login("alice").await;
    for token in ["garbage", "vrt1.us.x.0.r1.AAAA.AAAA", "a.b.c"] {
        r.nothing_written(token, || async {
            let (st, _) = r.a.logout(token).await;
            assert_eq!(st, 200, "RFC 7009: unknown tokens are not an error");
        })
        .await;
    }
    r.nothing_written("no token", || async {
        let (st, b) = form(
            &r.a.url("/v1/logout"),
            &[("token_type_hint", "refresh_token")],
        )
        .await;
        assert_eq!((st, b["error"].as_str()), (400, Some("invalid_request")));
    })
    .await;
    // a well-signed access token of another issuer: not ours, nothing happens
    let other = Issuer::new(veto::token::Alg::ES256);
    r.nothing_written("foreign token", || async {
        assert_eq!(
            r.a.logout(&other.mint("alice", &s(&t, "session_id")))
                .await
                .0,
            200
        );
    })
    .await;
    // by access token, twice: one event id
    assert_eq!(r.a.logout(&s(&t, "access_token")).await.0, 200);
    assert_eq!(r.a.logout(&s(&t, "access_token")).await.0, 200);
    assert_eq!(r.a.logout(&s(&t, "refresh_token")).await.0, 200);
    let ev = r.events_settled().await;
    assert!(!ev.is_empty());
    assert!(
        ev.iter().all(|e| e["event_id"] == ev[0]["event_id"]),
        "{ev:?}"
    );
    assert_eq!(r.a.refresh(&s(&t, "refresh_token")).await.0, 400);
}

#[tokio::test]
async fn admin_revocations_publish_and_reach_the_records() {
    let r = region().await;
    let admin = |body: Value| {
        let url = r.a.url("/v1/revocations");
        async move {
            post(
                &url,
                Some("application/json"),
                Some(&format!("Bearer {ADMIN_TOKEN}")),
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let t_old = r.login("alice").await;
    let (st, _, b) = admin(json!({"kind": "subject", "id": "alice"})).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(b["kind"], "subject");
    assert_eq!(
        r.a.refresh(&s(&t_old, "refresh_token")).await.0,
        400,
        "a session of a revoked subject refreshed"
    );
    // a session created after the subject revocation is fine
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t_new = r.login("alice").await;
    assert_eq!(r.a.refresh(&s(&t_new, "refresh_token")).await.0, 200);

    let t = r.login("bob").await;
    let (st, _, b) =
        admin(json!({"kind": "session", "id": t["session_id"], "reason": "admin"})).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(r.a.refresh(&s(&t, "refresh_token")).await.0, 400);
    let (st, _, _) = admin(json!({"kind": "token", "id": "some-jti", "urgent": false})).await;
    assert_eq!(st, 202);
    for (what, body) in [
        ("bad kind", json!({"kind": "user", "id": "x"})),
        ("empty id", json!({"kind": "session", "id": ""})),
        (
            "bad reason",
            json!({"kind": "session", "id": "x", "reason": "a b"}),
        ),
        (
            "unknown field",
            json!({"kind": "session", "id": "x", "force": true}),
        ),
    ] {
        r.nothing_written(what, || async {
            let (st, h, b) = admin(body).await;
            assert_oauth_error(what, st, &h, &b, 400, "invalid_request");
        })
        .await;
    }
}

#[tokio::test]
async fn a_revocation_made_elsewhere_reaches_the_record_and_outlives_its_event() {
    let r = region().await;
    let t = r.login("alice").await;
    let sid = s(&t, "session_id");
    // published by someone else (the CLI, another region's authority), not through this API
    let (code, _, err) = veto(&[
        "revoke",
        "--session",
        &sid,
        "--issuer",
        ISSUER,
        "--nats",
        &r.nats.url(),
        "--region",
        "us",
        "--ttl",
        "2s",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            r.record(&sid).await["state"] == "revoked"
        })
        .await
        .is_some(),
        "the record was not marked"
    );
    // after the event itself expired, the session still never refreshes
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(r.a.refresh(&s(&t, "refresh_token")).await.0, 400);

    let t = r.login("bob").await;
    let (code, _, err) = veto(&[
        "revoke",
        "--subject",
        "bob",
        "--issuer",
        ISSUER,
        "--nats",
        &r.nats.url(),
        "--region",
        "us",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            r.a.refresh(&s(&t, "refresh_token")).await.0 == 400
        })
        .await
        .is_some(),
        "a subject revoked elsewhere still refreshes"
    );
}

#[tokio::test]
async fn jwks_and_discovery_are_served_with_cache_headers() {
    let r = region().await;
    let j = reqwest::get(r.a.jwks_url()).await.unwrap();
    assert_eq!(j.status(), 200);
    let cc = j.headers()["cache-control"].to_str().unwrap().to_string();
    assert!(
        cc.contains("max-age=300") && cc.contains("must-revalidate"),
        "{cc}"
    );
    let doc: Value = j.json().await.unwrap();
    let text = doc.to_string();
    for private in [
        "\"d\"", "\"p\"", "\"q\"", "\"dp\"", "\"dq\"", "\"qi\"", "\"k\"",
    ] {
        assert!(
            !text.contains(private),
            "private member {private} in the JWKS"
        );
    }
    assert_eq!(doc["keys"][0]["kid"], "k1");
    let d: Value = reqwest::get(r.a.url("/.well-known/openid-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], ISSUER);
    assert!(s(&d, "jwks_uri").ends_with("/.well-known/jwks.json"));
    assert!(s(&d, "token_endpoint").ends_with("/v1/token"));
    let _ = &r.kit;
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let kit = Kit::new();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.token");
    std::fs::write(&short, "too-short").unwrap();
    let badmac = dir.path().join("bad.keys");
    std::fs::write(&badmac, "r1=short").unwrap();
    let empty = dir.path().join("empty-keys");
    std::fs::create_dir(&empty).unwrap();
    let base = Authority::config(&kit, "nats://127.0.0.1:1", "us", &["us"], "").replacen(
        "[authority]\n",
        "[authority]\nlisten = \"127.0.0.1:0\"\n",
        1,
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "authority.admin_token_file",
            base.replace(
                &kit.dir.path().join("admin.token").display().to_string(),
                &short.display().to_string(),
            ),
        ),
        (
            "authority.refresh_key_file",
            base.replace(
                &kit.dir.path().join("refresh.keys").display().to_string(),
                &badmac.display().to_string(),
            ),
        ),
        (
            "authority.keys_dir",
            base.replace(
                &kit.keys_dir().display().to_string(),
                &empty.display().to_string(),
            ),
        ),
        (
            "authority.access_token_ttl",
            base.replace("[authority]\n", "[authority]\naccess_token_ttl = \"1h\"\n"),
        ),
        (
            "authority.refresh_grace",
            base.replace("[authority]\n", "[authority]\nrefresh_grace = \"10m\"\n"),
        ),
        (
            "authority.algorithms",
            base.replace(
                "[authority]\n",
                "[authority]\nalgorithms = [\"ES256\", \"none\"]\n",
            ),
        ),
        (
            "authority",
            base.replace("[authority]\n", "[authority]\nbogus = 1\n"),
        ),
    ];
    for (key, text) in cases {
        let path = dir.path().join("a.toml");
        std::fs::write(&path, format!("[http]\nlisten = \"127.0.0.1:0\"\n{text}")).unwrap();
        let (code, _, err) = veto(&["authority", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{key}: {err}");
        assert!(err.contains(key), "{key} not named: {err}");
    }
}

/// An upstream IdP: its RS256 key, JWKS file and logout tokens.
struct Idp {
    idp: Issuer,
}

impl Idp {
    fn new() -> Idp {
        Idp {
            idp: Issuer::new(veto::token::Alg::RS256),
        }
    }

    fn section(&self, jwks: &str) -> String {
        format!(
            "[[authority.upstreams]]\nname = \"idp\"\nissuer = \"{}\"\nclient_id = \"veto\"\n{jwks}\nalgorithms = [\"RS256\"]\n",
            self.idp.iss
        )
    }

    fn logout_token(&self, sid: Option<&str>, sub: Option<&str>, iat: i64) -> String {
        let mut c = json!({
            "iss": self.idp.iss, "aud": "veto", "iat": iat, "exp": iat + 120,
            "jti": format!("lt-{}-{}", veto::now_ms(), rand_suffix()),
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        });
        if let Some(s) = sid {
            c["sid"] = json!(s);
        }
        if let Some(s) = sub {
            c["sub"] = json!(s);
        }
        self.idp
            .key
            .sign_with_header(
                &json!({"alg": "RS256", "kid": "k1", "typ": "logout+jwt"}),
                &c,
            )
            .unwrap()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn back_channel_logout_revokes_the_upstream_sessions_for_real() {
    let idp = Idp::new();
    let jwks = format!("jwks_file = \"{}\"", idp.idp.jwks_path().display());
    let r = region_with(&idp.section(&jwks)).await;
    let up = json!({"iss": idp.idp.iss, "sid": "up-1"});
    let (_, a) = r.a.login(json!({"sub": "alice", "upstream": up})).await;
    let (_, b) = r.a.login(json!({"sub": "alice", "upstream": up})).await;
    let (_, other) =
        r.a.login(json!({"sub": "alice", "upstream": {"iss": idp.idp.iss, "sid": "up-2"}}))
            .await;
    let url = r.a.url("/v1/backchannel-logout/idp");
    let now = veto::now_ms() / 1000;

    let lt = idp.logout_token(Some("up-1"), None, now);
    let (st, body) = form(&url, &[("logout_token", &lt)]).await;
    assert_eq!(st, 200, "{body}\n{}", r.a.log());
    for t in [&a, &b] {
        assert_eq!(
            r.a.refresh(&s(t, "refresh_token")).await.0,
            400,
            "an upstream-logged-out session refreshed"
        );
        assert!(r
            .events_settled()
            .await
            .iter()
            .any(|e| e["id"] == t["session_id"] && e["reason"] == "upstream_logout"));
    }
    assert_eq!(
        r.a.refresh(&s(&other, "refresh_token")).await.0,
        200,
        "another upstream session was logged out"
    );
    // a replay of the same logout token is refused
    let (st, b) = form(&url, &[("logout_token", &lt)]).await;
    assert_eq!(st, 400, "{b}");
    // sub only: a subject revocation from the logout token's iat, not its receipt
    let (_, c) = r.a.login(json!({"sub": "carol"})).await;
    // issued just after carol's session was created (ceil to the next second)
    let iat = veto::now_ms() / 1000 + 1;
    let lt = idp.logout_token(None, Some("carol"), iat);
    assert_eq!(form(&url, &[("logout_token", &lt)]).await.0, 200);
    let ev = r.events_settled().await;
    let subj = ev
        .iter()
        .find(|e| e["id"] == "carol")
        .expect("subject revocation");
    assert_eq!(subj["revoked_at"], iat * 1000);
    assert!(
        eventually(Duration::from_secs(5), || async {
            r.a.refresh(&s(&c, "refresh_token")).await.0 == 400
        })
        .await
        .is_some(),
        "a session of the logged-out subject still refreshes"
    );
    // unknown IdP, forged token: refused, nothing revoked
    r.nothing_written("unknown idp", || async {
        assert_eq!(
            form(
                &r.a.url("/v1/backchannel-logout/nope"),
                &[("logout_token", &lt)]
            )
            .await
            .0,
            404
        );
    })
    .await;
    let forged = Idp::new().logout_token(Some("up-2"), None, now);
    r.nothing_written("forged", || async {
        assert_eq!(form(&url, &[("logout_token", &forged)]).await.0, 400);
    })
    .await;
}

#[tokio::test]
async fn back_channel_logout_answers_503_while_the_idps_keys_are_unreachable() {
    let idp = Idp::new();
    let dead = format!("jwks_url = \"http://127.0.0.1:{}/jwks\"", free_port());
    let nats = NatsServer::start();
    let kit = Kit::new();
    let a = Authority::start(&Authority::config(
        &kit,
        &nats.url(),
        "us",
        &["us"],
        &idp.section(&dead),
    ));
    // an IdP whose keys are unreachable does not make the authority unready (refresh must
    // keep working); its logout tokens get 503
    a.wait_ready(Duration::from_secs(20)).await;
    let lt = idp.logout_token(Some("up-1"), None, veto::now_ms() / 1000);
    let r = reqwest::Client::new()
        .post(a.url("/v1/backchannel-logout/idp"))
        .header("content-type", FORM)
        .body(serde_urlencoded::to_string([("logout_token", lt.as_str())]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "{}", a.log());
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn browsers_of_listed_origins_only_get_cors_answers() {
    let r = region_with("cors_origins = [\"https://app.example\"]").await;
    let c = reqwest::Client::new();
    for path in ["/v1/token", "/v1/logout"] {
        let pre = |origin: &'static str| {
            c.request(reqwest::Method::OPTIONS, r.a.url(path))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .send()
        };
        let ok = pre("https://app.example").await.unwrap();
        assert_eq!(ok.status(), 204, "{path}");
        assert_eq!(
            ok.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert!(ok.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST"));
        let evil = pre("https://evil.example").await.unwrap();
        assert!(
            evil.headers().get("access-control-allow-origin").is_none(),
            "{path}: CORS for an unlisted origin"
        );
    }
    let t = r.login("alice").await;
    let answer = c
        .post(r.a.url("/v1/token"))
        .header("origin", "https://app.example")
        .header("content-type", FORM)
        .body(
            serde_urlencoded::to_string([
                ("grant_type", "refresh_token"),
                ("refresh_token", &s(&t, "refresh_token")),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(answer.headers()["vary"], "Origin");
    assert_eq!(
        answer.headers()["access-control-expose-headers"],
        "Retry-After"
    );
    // a page of an unlisted origin cannot rotate (or log out) a session with a simple POST
    let rt = answer.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    for path in ["/v1/token", "/v1/logout"] {
        r.nothing_written(path, || async {
            let body = serde_urlencoded::to_string([
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
                ("token", rt.as_str()),
            ])
            .unwrap();
            let refused = c
                .post(r.a.url(path))
                .header("origin", "https://evil.example")
                .header("content-type", FORM)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), 403, "{path}");
        })
        .await;
    }
    assert_eq!(
        r.a.refresh(&rt).await.0,
        200,
        "the refused requests touched the session"
    );
}

#[tokio::test]
async fn two_replicas_of_one_region_share_every_session() {
    let r = region().await;
    let b = Authority::start(&Authority::config(&r.kit, &r.nats.url(), "us", &["us"], ""));
    b.wait_ready(Duration::from_secs(30)).await;
    let t = r.login("alice").await;
    let sid = s(&t, "session_id");
    // alternate replicas: each one's memory of what it wrote last is stale every other time
    let mut rt = s(&t, "refresh_token");
    for i in 0..6 {
        let at = if i % 2 == 0 { &b } else { &r.a };
        let (st, n) = at.refresh(&rt).await;
        assert_eq!(st, 200, "step {i}: {n}");
        rt = s(&n, "refresh_token");
    }
    assert_eq!(r.record(&sid).await["generation"], 6);
    // the previous token at the replica that did not rotate: still the same successor
    let (_, n) = r.a.refresh(&rt).await;
    let (st, again) = b.refresh(&rt).await;
    assert_eq!(
        (st, s(&again, "refresh_token")),
        (200, s(&n, "refresh_token"))
    );
    // a logout at one replica ends the session at the other, whatever it remembers
    let newest = s(&n, "refresh_token");
    assert_eq!(b.logout(&newest).await.0, 200);
    assert_eq!(
        r.a.refresh(&newest).await.0,
        400,
        "a replica refreshed a logged-out session"
    );
    // a storm split over both replicas rotates once
    let t = r.login("bob").await;
    let rt0 = s(&t, "refresh_token");
    let answers = storm(&[r.a.url("/v1/token"), b.url("/v1/token")], &rt0, 40).await;
    let first = s(&answers[0].1, "refresh_token");
    assert!(
        answers
            .iter()
            .all(|(st, v)| *st == 200 && s(v, "refresh_token") == first),
        "{answers:?}"
    );
    assert_eq!(r.record(&s(&t, "session_id")).await["generation"], 1);
}
