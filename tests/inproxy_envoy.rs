//! The in-proxy mode end to end with real parts: real Envoy 1.40 loads the dynamic module
//! (`envoy-module/`, built here) from `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`; a real `veto
//! sidecar` follows a real nats-server and mirrors its revoked set into shared memory
//! (`inproxy.shm_path`); the module decides every request inside Envoy. A second Envoy in
//! front of the same sidecar over ext_authz is the reference: the module must answer every
//! token of the catalogue with the same status, challenge and body.

#[path = "support/inproxy.rs"]
mod inproxy_support;
mod support;

use base64::Engine as _;
use inproxy_support::*;
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;
use veto::token::Alg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_decides_like_the_sidecar_inside_envoy() {
    let module_dir = build_module();
    let nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let shm_dir = tempfile::tempdir().expect("tempdir");
    let shm = shm_dir.path().join("veto-revoked");
    let extra = inproxy_section(&shm, "2s");
    let mut sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), &extra));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    // the file appears at its path with the first heartbeat after the replay
    wait_shm(&shm).await;
    let (up, _h) = upstream().await;
    let inproxy = inproxy_envoy(
        &module_dir,
        &sidecar.dir.path().join("veto.toml"),
        up.port(),
    );
    let reference = Envoy::start(sidecar.grpc, up.port());
    let http = reqwest::Client::new();
    let path = "/orders/7";

    // valid token: 200, identity set from the token, the client's forged x-user-id gone
    let token = issuer.mint("alice", "sess-1");
    let r = http
        .get(inproxy.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("x-user-id", "admin")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "{}", inproxy.log());
    let seen: serde_json::Value = r.json().await.expect("echo");
    assert_eq!(seen["x-user-id"], "alice");

    // the hostile catalogue: the same answer as the ext_authz path
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let mut expired = issuer.claims("alice", "sess-2");
    expired["iat"] = json!(expired["iat"].as_i64().unwrap_or(0) - 1200);
    expired["exp"] = json!(expired["iat"].as_i64().unwrap_or(0) + 600);
    let expired = issuer.key.sign(&expired).expect("sign");
    let forged = veto::token::sign::SigningKey::generate(Alg::ES256, "k1")
        .expect("key")
        .sign(&issuer.claims("alice", "sess-3"))
        .expect("sign");
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(issuer.claims("alice", "sess-4"))
    );
    let mut wrong_aud = issuer.claims("alice", "sess-5");
    wrong_aud["aud"] = json!("other");
    let wrong_aud = issuer.key.sign(&wrong_aud).expect("sign");
    let mut no_sid = issuer.claims("alice", "x");
    no_sid.as_object_mut().map(|o| o.remove("sid"));
    let no_sid = issuer.key.sign(&no_sid).expect("sign");
    let catalogue: Vec<(Option<String>, &str)> = vec![
        (None, "missing_token"),
        (Some("Basic YWxhZGRpbjpvcGVu".into()), "missing_token"),
        (Some("Bearer ".into()), "malformed"),
        (Some("Bearer abc".into()), "malformed"),
        (Some(format!("Bearer {expired}")), "expired"),
        (Some(format!("Bearer {forged}")), "bad_signature"),
        (Some(format!("Bearer {alg_none}")), ""),
        (Some(format!("Bearer {wrong_aud}")), ""),
        (Some(format!("Bearer {no_sid}")), ""),
        (Some(format!("Bearer {token}")), "ok"),
    ];
    for (auth, reason) in &catalogue {
        let ours = see(&http, inproxy.url(path), auth.as_deref()).await;
        let theirs = see(&http, reference.url(path), auth.as_deref()).await;
        if ours.status == 200 {
            // the upstream's echo: compare the identity it was given
            assert_eq!(ours.body["x-user-id"], theirs.body["x-user-id"], "{auth:?}");
            assert_eq!(theirs.status, 200, "{auth:?}");
        } else {
            assert_eq!(ours, theirs, "{auth:?}");
        }
        if !reason.is_empty() && *reason != "ok" {
            assert_eq!(ours.body["reason"], *reason, "{auth:?}: {ours:?}");
        }
        if reason.is_empty() {
            assert_eq!(ours.status, 401, "{auth:?}: {ours:?}");
        }
    }

    // revoke the session with the CLI: once the sidecar has applied it, the very next
    // request through the module is refused
    let (code, out, err) = veto(&[
        "revoke",
        "--session",
        "sess-1",
        "--nats",
        &nats.url(),
        "--region",
        "us",
        "--reason",
        "test",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let bearer = format!("Bearer {token}");
    let applied = sidecar_answers(&sidecar, &bearer, 401, Duration::from_secs(2)).await;
    assert!(
        applied,
        "the sidecar did not apply the revocation:\n{}",
        sidecar.log()
    );
    let r = see(&http, inproxy.url(path), Some(&bearer)).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body["reason"], "revoked");
    assert_eq!(r, see(&http, reference.url(path), Some(&bearer)).await);
    let other = format!("Bearer {}", issuer.mint("alice", "sess-9"));
    assert_eq!(
        see(&http, inproxy.url(path), Some(&other)).await.status,
        200
    );

    // sidecar killed: allowed until the freshness bound (2 s), then on_stale = deny applies
    sidecar.kill();
    let killed = Instant::now();
    assert_eq!(
        see(&http, inproxy.url(path), Some(&other)).await.status,
        200,
        "within the bound"
    );
    let stale_at = loop {
        let r = see(&http, inproxy.url(path), Some(&other)).await;
        if r.status != 200 {
            assert_eq!(r.status, 503, "{r:?}");
            assert_eq!(r.body["reason"], "feed_stale", "{r:?}");
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "still allowed 6 s after the sidecar died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stale_at >= Duration::from_millis(1500),
        "stale too early: {stale_at:?}"
    );
    assert!(
        !inproxy.log().contains("panic"),
        "the module panicked:\n{}",
        inproxy.log()
    );
}
