//! End to end through real Envoy: HTTP client → Envoy (ext_authz, failure_mode_allow: false)
//! → veto sidecar (gRPC) → upstream, with a real nats-server carrying revocations.

mod support;

use std::time::Duration;
use support::*;
use veto::token::Alg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_revoke_and_fail_closed_through_envoy() {
    let nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let mut sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), ""));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let (up, _h) = upstream().await;
    let envoy = Envoy::start(sidecar.grpc, up.port());
    let http = reqwest::Client::new();
    let get = |auth: Option<String>, extra: Option<(&'static str, &'static str)>| {
        let mut r = http.get(envoy.url("/orders/7"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.send()
    };

    // valid token: 200, identity injected, a client-sent x-user-id does not survive
    let token = issuer.mint("alice", "sess-1");
    let r = get(
        Some(format!("Bearer {token}")),
        Some(("x-user-id", "admin")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", envoy.log());
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["x-user-id"], "alice");

    // missing: 401, challenge without an error attribute
    let r = get(None, None).await.unwrap();
    assert_eq!(r.status(), 401);
    let www = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        www.starts_with("Bearer") && !www.contains("error="),
        "{www}"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "missing_token");

    // expired and forged: 401 invalid_token with the reason
    let mut c = issuer.claims("alice", "sess-2");
    c["iat"] = serde_json::json!(c["iat"].as_i64().unwrap() - 1200);
    c["exp"] = serde_json::json!(c["iat"].as_i64().unwrap() + 600);
    let expired = issuer.key.sign(&c).unwrap();
    let forged = veto::token::sign::SigningKey::generate(Alg::ES256, "k1")
        .unwrap()
        .sign(&issuer.claims("alice", "sess-3"))
        .unwrap();
    for (t, reason) in [(expired, "expired"), (forged, "bad_signature")] {
        let r = get(Some(format!("Bearer {t}")), None).await.unwrap();
        assert_eq!(r.status(), 401);
        let www = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(www.contains("error=\"invalid_token\""), "{www}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], reason);
    }

    // revoke the session with the CLI: the same token is refused within 1 s
    revoke(&nats.url(), &["--session", "sess-1"]);
    let took = eventually(Duration::from_secs(1), || async {
        get(Some(format!("Bearer {token}")), None)
            .await
            .map(|r| r.status() == 401)
            .unwrap_or(false)
    })
    .await;
    assert!(
        took.is_some(),
        "revocation not enforced within 1 s:\n{}",
        sidecar.log()
    );
    let r = get(Some(format!("Bearer {token}")), None).await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "revoked");

    // another session of the same user is unaffected
    let other = issuer.mint("alice", "sess-9");
    assert_eq!(
        get(Some(format!("Bearer {other}")), None)
            .await
            .unwrap()
            .status(),
        200
    );

    // sidecar down: Envoy fails closed
    sidecar.kill();
    let r = get(Some(format!("Bearer {other}")), None).await.unwrap();
    assert!(
        r.status() == 503 || r.status() == 403,
        "fail closed, got {}",
        r.status()
    );
    drop(envoy);
}
