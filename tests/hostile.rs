//! Hostile and malformed input against a running sidecar, over HTTP forward-auth and over the
//! ext_authz gRPC API (with the generated Envoy client, i.e. an independent client).

mod support;

use base64::Engine;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use veto::token::sign::{jwks, SigningKey};
use veto::token::{b64, Alg};

fn enc(s: &str) -> String {
    b64().encode(s)
}

async fn reason(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["reason"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_forged_tokens_get_clean_401s() {
    let issuer = Issuer::new(Alg::RS256);
    let sidecar = Sidecar::start(&sidecar_config(&issuer, None, ""));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let good = issuer.mint("u", "s");
    let parts: Vec<&str> = good.split('.').collect();
    let claims = issuer.claims("u", "s");
    let pubjwk = issuer.key.public_jwk();
    let hs_confusion = SigningKey::from_pkcs8(Alg::HS256, "k1", pubjwk.to_string().as_bytes())
        .unwrap()
        .sign(&claims)
        .unwrap();
    let none = format!("{}.{}.", enc(r#"{"alg":"none","kid":"k1"}"#), parts[1]);
    let none_sig = format!(
        "{}.{}.{}",
        enc(r#"{"alg":"none","kid":"k1"}"#),
        parts[1],
        parts[2]
    );
    let attacker = SigningKey::generate(Alg::RS256, "k1").unwrap();
    let embedded_jwk = attacker
        .sign_with_header(
            &json!({"alg":"RS256","kid":"k1","jwk":attacker.public_jwk()}),
            &claims,
        )
        .unwrap();
    let jku = attacker
        .sign_with_header(&json!({"alg":"RS256","kid":"k1","jku":"http://127.0.0.1:1/x","x5u":"http://127.0.0.1:1/y"}), &claims)
        .unwrap();
    let crit = issuer
        .key
        .sign_with_header(&json!({"alg":"RS256","kid":"k1","crit":["exp"]}), &claims)
        .unwrap();
    let mut c = claims.clone();
    c["iss"] = json!("https://evil.test");
    let wrong_iss = issuer.key.sign(&c).unwrap();
    let mut c = claims.clone();
    c["aud"] = json!(["other"]);
    let wrong_aud = issuer.key.sign(&c).unwrap();
    let mut c = claims.clone();
    c["nbf"] = json!(c["iat"].as_i64().unwrap() + 300);
    let nbf = issuer.key.sign(&c).unwrap();
    let mut c = claims.clone();
    c.as_object_mut().unwrap().remove("exp");
    let no_exp = issuer.key.sign(&c).unwrap();
    let mut c = claims.clone();
    c.as_object_mut().unwrap().remove("sid");
    let no_sid = issuer.key.sign(&c).unwrap();
    let mut c = claims.clone();
    c["pad"] = json!("x".repeat(9000));
    let huge = issuer.key.sign(&c).unwrap();
    let nested = format!(
        "{}.{}.{}",
        parts[0],
        enc(&format!(
            "{{\"iss\":\"{ISS}\",\"x\":{}{}}}",
            "[".repeat(1500),
            "]".repeat(1500)
        )),
        parts[2]
    );
    let junk_kids: Vec<String> = [
        "../../../etc/passwd",
        "' OR '1'='1",
        "k1\u{0}",
        "%00",
        &"k".repeat(300),
    ]
    .iter()
    .map(|kid| {
        issuer
            .key
            .sign_with_header(&json!({"alg":"RS256","kid":kid}), &claims)
            .unwrap()
    })
    .collect();

    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (None, 401, "missing_token"),
        (Some("Basic dXNlcjpwYXNz".into()), 401, "missing_token"),
        (Some("Bearer".into()), 401, "malformed"),
        (Some("Bearer ".into()), 401, "malformed"),
        (Some("Bearer garbage".into()), 401, "malformed"),
        (
            Some(format!("Bearer {}.{}", parts[0], parts[1])),
            401,
            "malformed",
        ),
        (Some(format!("Bearer {good}.extra")), 401, "malformed"),
        (
            Some(format!("Bearer {}.{}.{}", parts[0], "***", parts[2])),
            401,
            "malformed",
        ),
        (
            Some(format!(
                "Bearer {}.{}.{}",
                enc("not json"),
                parts[1],
                parts[2]
            )),
            401,
            "malformed",
        ),
        (
            Some(format!("Bearer {}.{}.{}", parts[0], enc("[1]"), parts[2])),
            401,
            "malformed",
        ),
        (Some(format!("Bearer {none}")), 401, "malformed"),
        (Some(format!("Bearer {none_sig}")), 401, "unsupported_alg"),
        (
            Some(format!("Bearer {hs_confusion}")),
            401,
            "unsupported_alg",
        ),
        (Some(format!("Bearer {embedded_jwk}")), 401, "bad_signature"),
        (Some(format!("Bearer {jku}")), 401, "bad_signature"),
        (Some(format!("Bearer {crit}")), 401, "unsupported_crit"),
        (Some(format!("Bearer {wrong_iss}")), 401, "wrong_issuer"),
        (Some(format!("Bearer {wrong_aud}")), 401, "wrong_audience"),
        (Some(format!("Bearer {nbf}")), 401, "not_yet_valid"),
        (Some(format!("Bearer {no_exp}")), 401, "missing_claim"),
        (Some(format!("Bearer {no_sid}")), 401, "missing_claim"),
        (Some(format!("Bearer {huge}")), 401, "token_too_large"),
        (Some(format!("Bearer {nested}")), 401, "malformed"),
        (Some(format!("bearer {good}")), 200, ""),
    ];
    for (auth, status, want) in &cases {
        let (s, r) = reason(sidecar.check(auth.as_deref()).await).await;
        assert_eq!(
            (s, r.as_str()),
            (*status, *want),
            "case {:?}",
            auth.as_deref().map(|a| &a[..a.len().min(60)])
        );
    }
    for t in &junk_kids {
        let (s, r) = reason(sidecar.check(Some(&format!("Bearer {t}"))).await).await;
        assert_eq!(s, 401);
        assert!(r == "unknown_kid" || r == "malformed", "{r}");
    }
    // Two Authorization headers are refused, not guessed between.
    let r = reqwest::Client::new()
        .get(format!("{}/check", sidecar.base()))
        .header("authorization", format!("Bearer {good}"))
        .header("authorization", "Bearer other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Nothing the client sent ends up in the log.
    let log = sidecar.log();
    assert!(
        !log.contains(&good[..40]) && !log.contains(parts[2]),
        "token material in the log"
    );
    // And every check was counted by reason.
    let m = sidecar.metrics().await;
    assert!(
        metric(
            &m,
            "veto_checks_total{reason=\"malformed\",result=\"deny\",transport=\"http\"}"
        )
        .unwrap()
            >= 5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_follow_the_ext_authz_contract() {
    let issuer = Issuer::new(Alg::EdDSA);
    let sidecar = Sidecar::start(&sidecar_config(
        &issuer,
        None,
        "[authz]\nremove_authorization = true\n[authz.headers]\nx-user-id = \"sub\"\nx-user-email = \"email\"\n",
    ));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{}", sidecar.grpc))
        .await
        .unwrap();

    let token = issuer.mint("bob", "s1");
    let resp = client
        .check(check_request(Some(&format!("Bearer {token}"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
        panic!("no ok_response")
    };
    let set: Vec<(String, String, i32)> = ok
        .headers
        .iter()
        .map(|h| {
            let hv = h.header.as_ref().unwrap();
            (hv.key.clone(), hv.value.clone(), h.append_action)
        })
        .collect();
    // overwrite, not append (OVERWRITE_IF_EXISTS_OR_ADD = 2)
    assert_eq!(set, vec![("x-user-id".to_string(), "bob".to_string(), 2)]);
    // the token has no email: a client-sent x-user-email is removed; authorization is removed
    assert!(ok.headers_to_remove.contains(&"x-user-email".to_string()));
    assert!(ok.headers_to_remove.contains(&"authorization".to_string()));
    let md = resp.dynamic_metadata.unwrap();
    assert!(
        md.fields.contains_key("veto"),
        "claims under the veto namespace"
    );

    // deny is a successful RPC with UNAUTHENTICATED (16) and a denied_response
    let resp = client
        .check(check_request(Some("Bearer x.y.z")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status.as_ref().unwrap().code, 16);
    let Some(HttpResponse::DeniedResponse(d)) = resp.http_response else {
        panic!("no denied_response")
    };
    assert_eq!(d.status.unwrap().code, 401);
    let names: Vec<&str> = d
        .headers
        .iter()
        .map(|h| h.header.as_ref().unwrap().key.as_str())
        .collect();
    assert!(names.contains(&"www-authenticate"));
    assert!(d.body.contains("\"reason\":\"malformed\""));
    // no attributes at all: still a clean deny
    let resp = client
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status.unwrap().code, 16);
}

/// A JWKS endpoint that counts requests and can be switched off or rotated.
struct JwksServer {
    port: u16,
    hits: Arc<AtomicUsize>,
    doc: Arc<parking_lot::Mutex<Option<String>>>,
}

async fn jwks_server(doc: String) -> JwksServer {
    let hits = Arc::new(AtomicUsize::new(0));
    let doc = Arc::new(parking_lot::Mutex::new(Some(doc)));
    let (h, d) = (hits.clone(), doc.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (h, d) = (h.clone(), d.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                match d.lock().clone() {
                    Some(doc) => (
                        axum::http::StatusCode::OK,
                        [("cache-control", "max-age=300")],
                        doc,
                    ),
                    None => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [("cache-control", "no-store")],
                        String::new(),
                    ),
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    JwksServer { port, hits, doc }
}

/// An issuer whose JWKS is at `port`, with the given refetch bounds.
fn url_config(port: u16, min_refetch: &str, refresh: &str) -> String {
    format!(
        r#"
[[issuers]]
issuer = "{ISS}"
audiences = ["api"]
algorithms = ["ES256"]
jwks_url = "http://127.0.0.1:{port}/jwks.json"
jwks_min_refetch_interval = "{min_refetch}"
jwks_refresh_interval = "{refresh}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_refetch_on_rotation_is_single_and_rate_limited() {
    let k1 = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let k2 = SigningKey::generate(Alg::ES256, "k2").unwrap();
    let server = jwks_server(jwks(&[&k1]).to_string()).await;
    let sidecar = Sidecar::start(&url_config(server.port, "60s", "5m"));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let issuer = Issuer::new(Alg::ES256);
    let claims = issuer.claims("u", "s");
    assert_eq!(
        sidecar
            .check(Some(&format!("Bearer {}", k1.sign(&claims).unwrap())))
            .await
            .status(),
        200
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // rotation: k2 appears at the endpoint; the first k2 token triggers one refetch and passes
    *server.doc.lock() = Some(jwks(&[&k1, &k2]).to_string());
    assert_eq!(
        sidecar
            .check(Some(&format!("Bearer {}", k2.sign(&claims).unwrap())))
            .await
            .status(),
        200
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // a flood of unknown kids, concurrently: 401s, and no further fetch inside the interval
    // One client, built up front: building one is tens of milliseconds of CPU (its TLS
    // roots), and 200 of them inside the tasks kept connected sockets silent for longer than
    // limits.header_read_timeout.
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let k = SigningKey::from_pkcs8(Alg::ES256, &format!("junk-{i}"), k1.pkcs8_der()).unwrap();
        let t = k.sign(&claims).unwrap();
        let base = sidecar.base();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .get(format!("{base}/check"))
                .header("authorization", format!("Bearer {t}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        2,
        "unknown kids must not flood the JWKS endpoint"
    );

    // endpoint down mid-run: last good keys keep working
    *server.doc.lock() = None;
    assert_eq!(
        sidecar
            .check(Some(&format!(
                "Bearer {}",
                k1.sign(&issuer.claims("u", "s2")).unwrap()
            )))
            .await
            .status(),
        200
    );
    assert!(sidecar.ready().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_at_start_is_unready_then_recovers() {
    let k1 = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let server = jwks_server(String::new()).await;
    *server.doc.lock() = None;
    let sidecar = Sidecar::start(&url_config(server.port, "5s", "5m"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = reqwest::get(format!("{}/readyz", sidecar.base()))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["waiting_for"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("jwks:")),
        "{body}"
    );
    // a check now cannot be decided: an error, not a client-blaming 401
    let issuer = Issuer::new(Alg::ES256);
    let t = k1.sign(&issuer.claims("u", "s")).unwrap();
    assert_eq!(
        sidecar.check(Some(&format!("Bearer {t}"))).await.status(),
        503
    );
    // the endpoint comes back: ready, and the token passes
    *server.doc.lock() = Some(jwks(&[&k1]).to_string());
    sidecar.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(
        sidecar.check(Some(&format!("Bearer {t}"))).await.status(),
        200
    );
}

/// Claims of a token issued a minute ago (a subject revocation covers tokens issued before it).
fn issued_before_the_revocations(issuer: &Issuer) -> serde_json::Value {
    let mut c = issuer.claims("u-ok", "s-ok");
    c["iat"] = json!(c["iat"].as_i64().unwrap() - 60);
    c
}

/// Issue: a revocation keyed on `sub`/`jti`/the session was skipped when the claim was not a
/// canonical string (a numeric `sub`), while `x-user-id` was still set from the raw value.
/// Every shape of every claim the revoked set or a header keys on is tried, over both
/// transports, with the string forms revoked first: nothing but the canonical string passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_revocation_keys_on_have_one_form_or_the_token_is_refused() {
    let nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let sidecar = Sidecar::start(&sidecar_config(
        &issuer,
        Some(&nats.url()),
        "[authz.headers]\nx-user-id = \"sub\"\nx-roles = \"roles\"\n",
    ));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    for (what, id) in [
        ("--subject", "12345"),
        ("--token", "7"),
        ("--session", "42"),
    ] {
        revoke(&nats.url(), &[what, id]);
    }
    let mut grpc = AuthorizationClient::connect(format!("http://127.0.0.1:{}", sidecar.grpc))
        .await
        .unwrap();
    let long = "x".repeat(veto::revocation::MAX_ID_BYTES + 1);
    let shapes = |canonical: &str| {
        let n: i64 = canonical.parse().unwrap();
        vec![
            json!(n),
            json!(n as f64),
            json!([canonical]),
            json!({ "id": canonical }),
            json!(true),
            json!(null),
            json!(""),
            json!(long),
        ]
    };
    let mut tried = 0;
    for (claim, revoked) in [("sub", "12345"), ("jti", "7"), ("sid", "42")] {
        for shape in shapes(revoked) {
            let mut c = issued_before_the_revocations(&issuer);
            c[claim] = shape.clone();
            let t = format!("Bearer {}", issuer.key.sign(&c).unwrap());
            let r = sidecar.check(Some(&t)).await;
            assert!(r.headers().get("x-user-id").is_none(), "{claim}={shape}");
            assert_eq!(
                reason(r).await,
                (401, "invalid_claim".into()),
                "{claim}={shape}"
            );
            let g = grpc
                .check(check_request(Some(&t)))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(g.status.unwrap().code, 16, "{claim}={shape} over gRPC");
            let Some(HttpResponse::DeniedResponse(d)) = g.http_response else {
                panic!("{claim}={shape}: not denied over gRPC")
            };
            assert!(d.body.contains("invalid_claim"), "{}", d.body);
            tried += 1;
        }
        // the canonical string form of the same id is revoked, as `veto revoke` said
        let mut c = issued_before_the_revocations(&issuer);
        c[claim] = json!(revoked);
        let t = format!("Bearer {}", issuer.key.sign(&c).unwrap());
        let got = eventually(Duration::from_secs(5), || async {
            reason(sidecar.check(Some(&t)).await).await == (401, "revoked".into())
        })
        .await;
        assert!(
            got.is_some(),
            "{claim}={revoked:?} not revoked:\n{}",
            sidecar.log()
        );
    }
    assert_eq!(tried, 24);

    // a claim mapped to a header has one form too: strings, or arrays of strings
    for roles in [
        json!(5),
        json!(["a", 1]),
        json!(["a,b"]),
        json!({"r": 1}),
        json!("a\u{7f}"),
    ] {
        let mut c = issuer.claims("u-ok", "s-ok");
        c["roles"] = roles.clone();
        let t = format!("Bearer {}", issuer.key.sign(&c).unwrap());
        assert_eq!(
            reason(sidecar.check(Some(&t)).await).await,
            (401, "invalid_claim".into()),
            "{roles}"
        );
    }
    let mut c = issuer.claims("u-ok", "s-ok");
    c["roles"] = json!(["admin", "ops"]);
    let t = format!("Bearer {}", issuer.key.sign(&c).unwrap());
    let r = sidecar.check(Some(&t)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user-id"], "u-ok");
    assert_eq!(r.headers()["x-roles"], "admin,ops");

    // aud: an array with a non-string member is refused even though "api" is in it
    let mut c = issuer.claims("u-ok", "s-ok");
    c["aud"] = json!(["api", 1]);
    let t = format!("Bearer {}", issuer.key.sign(&c).unwrap());
    assert_eq!(
        reason(sidecar.check(Some(&t)).await).await,
        (401, "invalid_claim".into())
    );
}

/// Issue: a key withdrawn from the JWKS kept working for tokens already in the verified-token
/// cache, until their `exp`. Now the refresh that withdraws (or replaces) a key ends it; the
/// keys that stay keep their cached tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_key_stops_working_at_the_refresh_that_withdraws_it() {
    let k1 = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let k2 = SigningKey::generate(Alg::ES256, "k2").unwrap();
    let k3 = SigningKey::generate(Alg::ES256, "k3").unwrap();
    let server = jwks_server(jwks(&[&k1, &k2, &k3]).to_string()).await;
    let sidecar = Sidecar::start(&url_config(server.port, "1s", "1s"));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let issuer = Issuer::new(Alg::ES256);
    let claims = issuer.claims("u", "s");
    let t1 = format!("Bearer {}", k1.sign(&claims).unwrap());
    let t2 = format!("Bearer {}", k2.sign(&claims).unwrap());
    let t3 = format!("Bearer {}", k3.sign(&claims).unwrap());
    for t in [&t1, &t2, &t3] {
        // twice: the second answer comes from the verified-token cache
        assert_eq!(sidecar.check(Some(t)).await.status(), 200);
        assert_eq!(sidecar.check(Some(t)).await.status(), 200);
    }
    let hits = server.hits.load(Ordering::SeqCst);
    // k1 withdrawn; k3's kid now names other key material (a replaced key)
    let k3_new = SigningKey::generate(Alg::ES256, "k3").unwrap();
    *server.doc.lock() = Some(jwks(&[&k2, &k3_new]).to_string());
    assert!(
        eventually(Duration::from_secs(5), || async {
            server.hits.load(Ordering::SeqCst) > hits
        })
        .await
        .is_some(),
        "no scheduled JWKS refresh"
    );
    // the refresh is fetched; give the sidecar a moment to install it
    let refused = eventually(Duration::from_secs(3), || async {
        reason(sidecar.check(Some(&t1)).await).await.0 == 401
    })
    .await;
    assert!(
        refused.is_some(),
        "a token of a withdrawn key is still allowed"
    );
    assert_eq!(
        reason(sidecar.check(Some(&t1)).await).await,
        (401, "unknown_kid".into())
    );
    assert_eq!(
        reason(sidecar.check(Some(&t3)).await).await,
        (401, "bad_signature".into())
    );
    assert_eq!(
        sidecar.check(Some(&t2)).await.status(),
        200,
        "a kept key keeps working"
    );
    let m = sidecar.metrics().await;
    // the first answers really came from the cache (so the withdrawal reached cached entries)
    assert!(
        metric_sum(&m, "veto_token_cache_lookups_total", &["result=\"hit\""]) >= 3.0,
        "{m}"
    );
}

/// A flood of unique forged tokens (each costs a signature check, none can be cached) while
/// a user's token, already verified, keeps being checked: the verify pool (`[verify]`, here
/// one thread and a queue of 4) sheds what it cannot verify in time as 503 (Veto cannot
/// decide, never an allow), counted as `error/overloaded` exactly as often as the clients saw
/// it, and the cached token is answered 200 throughout: cache hits never wait for the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_flood_is_shed_while_cached_tokens_are_answered() {
    let issuer = Issuer::new(Alg::ES256);
    let extra = "[verify]\nthreads = 1\nqueue = 4\nmax_wait = \"1ms\"\n";
    let sidecar = Sidecar::start(&sidecar_config(&issuer, None, extra));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let user = issuer.mint("u", "s");
    assert_eq!(
        sidecar
            .check(Some(&format!("Bearer {user}")))
            .await
            .status(),
        200
    );
    // unique forged tokens: valid claims and kid, one signature character changed
    let forged: Vec<String> = (0..1200)
        .map(|i| {
            let mut b = issuer.mint("u", &format!("forged-{i}")).into_bytes();
            let at = b.len() - 10;
            b[at] = if b[at] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).unwrap()
        })
        .collect();
    let url = format!("{}/check", sidecar.base());
    let client = reqwest::Client::new();
    let statuses = Arc::new(parking_lot::Mutex::new(std::collections::BTreeMap::new()));
    let flood = forged.chunks(4).map(|chunk| {
        let (client, url, statuses) = (client.clone(), url.clone(), statuses.clone());
        let chunk = chunk.to_vec();
        tokio::spawn(async move {
            for t in chunk {
                let r = client
                    .get(&url)
                    .bearer_auth(&t)
                    .send()
                    .await
                    .expect("an answer");
                *statuses.lock().entry(r.status().as_u16()).or_insert(0) += 1;
            }
        })
    });
    let flood: Vec<_> = flood.collect();
    let mut user_answers = std::collections::BTreeMap::new();
    while flood.iter().any(|f| !f.is_finished()) {
        let r = client
            .get(&url)
            .bearer_auth(&user)
            .send()
            .await
            .expect("an answer");
        *user_answers.entry(r.status().as_u16()).or_insert(0u32) += 1;
    }
    for f in flood {
        f.await.unwrap();
    }
    let statuses = statuses.lock().clone();
    eprintln!("forged: {statuses:?}; the user's token: {user_answers:?}");
    assert_eq!(statuses.values().sum::<u32>(), 1200);
    assert!(
        statuses.keys().all(|s| *s == 401 || *s == 503),
        "a forged token is refused or shed, never allowed: {statuses:?}"
    );
    let shed = statuses.get(&503).copied().unwrap_or(0);
    assert!(shed > 0, "the pool shed nothing: {statuses:?}");
    assert_eq!(
        user_answers.keys().copied().collect::<Vec<_>>(),
        [200],
        "the cached token: {user_answers:?}"
    );
    let m = sidecar.metrics().await;
    let overloaded = metric_sum(
        &m,
        "veto_checks_total",
        &["transport=\"http\"", "reason=\"overloaded\""],
    );
    assert_eq!(
        overloaded,
        f64::from(shed),
        "every 503 counted as overloaded"
    );
    let refused = metric_sum(&m, "veto_verify_jobs_total", &["result=\"queue_full\""])
        + metric_sum(&m, "veto_verify_jobs_total", &["result=\"timed_out\""]);
    assert_eq!(
        refused,
        f64::from(shed),
        "every 503 is a job the pool refused"
    );
    // the flood over, the pool verifies again
    let fresh = issuer.mint("u", "s2");
    assert_eq!(
        sidecar
            .check(Some(&format!("Bearer {fresh}")))
            .await
            .status(),
        200
    );
    assert_eq!(metric(&m, "veto_verify_queue_depth"), Some(0.0));
}
